"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017)."""

from __future__ import annotations

from keras import ops

from keras_kd.checks import check_positive
from keras_kd.losses.base import DistillationLoss, LossContext, describe
from keras_kd.registry import SuiteRow, register_loss


def attention_map(features, p: float):
    """`l2_normalize(flatten(mean_c(|A|^p)))` per sample, shape (batch, H*W)."""
    # p = 2 is the common case: square avoids the slow element-wise pow kernel.
    magnitude = ops.square(features) if p == 2 else ops.power(ops.abs(features), p)
    a = ops.mean(magnitude, axis=-1)
    a = ops.reshape(a, (ops.shape(a)[0], -1))
    return a / ops.maximum(ops.norm(a, axis=-1, keepdims=True), 1e-12)


def _common_size(teacher_shape, student_shape) -> tuple[int, int]:
    return min(teacher_shape[1], student_shape[1]), min(teacher_shape[2], student_shape[2])


def check_poolable_maps(method: str, teacher_shape, student_shape, pair: str | None = None,
                        requirement: str = "(batch, H, W, C) feature maps") -> tuple[int, int]:
    """The common (H, W) two (batch, H, W, C) maps are average-pooled to;
    raises unless both are 4-D maps that pool to it evenly. `pair` names the
    two maps in errors (default: the teacher's and the student's shapes)."""
    pair = pair or f"teacher {describe(teacher_shape)} and student {describe(student_shape)}"
    if len(teacher_shape) != 4 or len(student_shape) != 4:
        raise ValueError(f"{method} needs {requirement}; got {pair}.")
    size = _common_size(teacher_shape, student_shape)
    for shape in (teacher_shape, student_shape):
        h, w = shape[1], shape[2]
        if h % size[0] or w % size[1] or h // size[0] != w // size[1]:
            raise ValueError(f"{method} cannot pool {pair} to a common {size[0]}x{size[1]} map.")
    return size


def _pool_to(features, size: tuple[int, int]):
    height, width = features.shape[1], features.shape[2]
    if (height, width) == size:
        return features
    if height % size[0] or width % size[1] or height // size[0] != width // size[1]:
        raise ValueError(f"Cannot average-pool a {height}x{width} map to {size[0]}x{size[1]} (needs an integer factor).")
    factor = height // size[0]
    return ops.average_pool(features, factor, factor, padding="valid")


@register_loss(
    "at",
    SuiteRow(
        "AT (stages 1-3)",
        tuple({"weight": 1000.0, "teacher_layer_name": f"stage{i}", "student_layer_name": f"stage{i}"} for i in (1, 2, 3)),
        order=2,
    ),
)
class AttentionTransferLoss(DistillationLoss):
    """`mean((Q(A_s) - Q(A_t))^2)` over batch and positions, Q = attention map.

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.
    Channel counts may differ (the map averages over channels); if spatial
    sizes differ the larger map is average-pooled to the smaller one. A
    pairing whose common size is 1x1 is refused: the normalized map of a
    single position is always 1, so the term would be 0 at every step. No
    trainable parameters.

    Example:

    >>> import numpy as np
    >>> a = np.random.rand(2, 8, 8, 16).astype("float32")
    >>> round(float(AttentionTransferLoss()(a, 3 * a)), 6)  # same attention up to scale
    0.0
    """

    metric_name = "at_loss"

    def __init__(self, p: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.p = check_positive("p", p)

    def check_shapes(self, teacher_shape, student_shape):
        size = check_poolable_maps("attention transfer", teacher_shape, student_shape)
        if size[0] * size[1] <= 1:
            pair = f"teacher {describe(teacher_shape)} and student {describe(student_shape)}"
            raise ValueError(
                f"attention transfer between {pair} compares {size[0]}x{size[1]} maps: one position, so the "
                "term is 0 at every step. Tap earlier layers with larger maps."
            )

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        for role, f in (("teacher", teacher_output), ("student", student_output)):
            if len(f.shape) != 4:
                raise ValueError(
                    f"AttentionTransferLoss needs (batch, H, W, C) feature maps; the {role} output "
                    f"has shape {tuple(f.shape)}."
                )
        size = _common_size(teacher_output.shape, student_output.shape)
        q_t = attention_map(_pool_to(teacher_output, size), self.p)
        q_s = attention_map(_pool_to(student_output, size), self.p)
        return ops.mean(ops.square(q_s - q_t))

    def get_config(self) -> dict:
        return {**super().get_config(), "p": self.p}
