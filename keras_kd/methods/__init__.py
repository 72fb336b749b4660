"""Registered training methods: each module registers one builder with
`keras_kd.registry.register_method`; configs name it in `method.name`."""
