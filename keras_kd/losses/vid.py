"""Variational information distillation (Ahn et al., CVPR 2019)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_kd.checks import check_count, check_positive
from keras_kd.losses.attention import _common_size, _pool_to, check_poolable_maps
from keras_kd.losses.base import DistillationLoss, LossContext
from keras_kd.registry import SuiteRow, register_loss


@keras.saving.register_keras_serializable(package="keras_kd")
class VIDPredictor(keras.layers.Layer):
    """The Gaussian `q(t | s)` of VID: a mean from three 1x1 convolutions of
    the student map (ReLU between them) and one variance per teacher channel,
    `softplus(log_scale) + eps`, initialised at `init_variance`."""

    def __init__(self, channels: int, mid_channels: int, init_variance: float = 5.0, eps: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.mid_channels = int(channels), int(mid_channels)
        self.init_variance, self.eps = float(init_variance), float(eps)
        self.convs = [
            keras.layers.Conv2D(self.mid_channels, 1, use_bias=False, name="conv1"),
            keras.layers.Conv2D(self.mid_channels, 1, use_bias=False, name="conv2"),
            keras.layers.Conv2D(self.channels, 1, use_bias=False, name="conv3"),
        ]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = (*shape[:-1], conv.filters)
        start = float(np.log(np.expm1(self.init_variance - self.eps)))  # softplus^-1(init - eps)
        self.log_scale = self.add_weight(shape=(self.channels,), initializer=keras.initializers.Constant(start),
                                         name="log_scale")

    def call(self, inputs):
        x = inputs
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < 2:
                x = ops.relu(x)
        return x, ops.softplus(self.log_scale) + self.eps

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.channels, "mid_channels": self.mid_channels,
                "init_variance": self.init_variance, "eps": self.eps}


@register_loss(
    "vid",
    SuiteRow("VID (stages 1-3)", tuple({"weight": 1.0, "teacher_layer_name": f"stage{i}",
                                        "student_layer_name": f"stage{i}"} for i in (1, 2, 3)),
             student_loss_weight=1.0, order=10),
)
class VIDLoss(DistillationLoss):
    """Negative log-likelihood of the teacher's map under a Gaussian predicted
    from the student's: a variational lower bound on their mutual information.

    Ahn, Hu, Damianou, Lawrence, Dai, "Variational Information Distillation
    for Knowledge Transfer", CVPR 2019:

        loss = mean over batch, positions, channels of
               0.5 * ((mu(s) - t)^2 / sigma^2 + log sigma^2)

    `mu` is three 1x1 convolutions of the student map (ReLU between, width
    `mid_channels`, default the teacher's channels) and `sigma^2 =
    softplus(alpha_c) + 1e-5` one learned variance per teacher channel,
    initialised at 5: both a `VIDPredictor` the distiller owns, trains and
    never exports. A larger map is average-pooled to the smaller. Defaults
    follow the CRD benchmark (RepDistiller): every intermediate stage, weight
    1, cross-entropy at weight 1, the 0.5 factor and the mean over all entries
    (the paper sums over channels and positions; the mean only rescales the
    weight).

    Example:

    >>> import numpy as np
    >>> loss = VIDLoss()
    >>> t = np.random.rand(2, 4, 4, 8).astype("float32")
    >>> part = loss.build_parts((None, 4, 4, 8), (None, 4, 4, 3))
    >>> bool(np.isfinite(loss(t, np.random.rand(2, 4, 4, 3).astype("float32"), parts=part)))
    True
    """

    metric_name = "vid_loss"

    def __init__(self, mid_channels: int | None = None, init_variance: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.mid_channels = check_count("mid_channels", mid_channels, minimum=1, optional=True)
        self.init_variance = check_positive("init_variance", init_variance)

    def check_shapes(self, teacher_shape, student_shape):
        check_poolable_maps("VID", teacher_shape, student_shape)

    def build_parts(self, teacher_shape, student_shape):
        channels = int(teacher_shape[-1])
        predictor = VIDPredictor(channels, self.mid_channels or channels, self.init_variance)
        size = _common_size(teacher_shape, student_shape)
        predictor.build((None, *size, int(student_shape[-1])))
        return predictor

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        if context.parts is None:
            raise ValueError("VIDLoss needs its VIDPredictor: pass parts=loss.build_parts(...) (distillers do).")
        size = _common_size(teacher_output.shape, student_output.shape)
        target = _pool_to(teacher_output, size)
        mean, variance = context.parts(_pool_to(student_output, size))
        mean, variance = ops.cast(mean, "float32"), ops.cast(variance, "float32")
        return ops.mean(0.5 * (ops.square(mean - target) / variance + ops.log(variance)))

    def get_config(self) -> dict:
        config = {**super().get_config(), "init_variance": self.init_variance}
        if self.mid_channels is not None:
            config["mid_channels"] = self.mid_channels
        return config
