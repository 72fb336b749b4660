"""Correlation congruence (Peng et al., ICCV 2019), as the CRD benchmark runs it."""

from __future__ import annotations

from keras import ops

from keras_kd.adapters import PairEmbedding
from keras_kd.checks import check_count
from keras_kd.losses.base import DistillationLoss, LossContext, check_batched
from keras_kd.registry import SuiteRow, register_loss


@register_loss(
    "cc",
    SuiteRow("CC (embedding)", ({"weight": 0.02, "teacher_layer_name": "embedding",
                                "student_layer_name": "embedding"},), student_loss_weight=1.0, order=11),
)
class CorrelationCongruenceLoss(DistillationLoss):
    """Congruence of the sample-to-sample structure after a linear embedding.

    Peng, Jin, Liu, Li, Wu, Liu, Zhou, Zhang, "Correlation Congruence for
    Knowledge Distillation", ICCV 2019. Follows the CRD benchmark code
    (RepDistiller), which the published CRD-table numbers come from: both
    networks' pooled features are mapped by trainable linear layers to
    `dim` = 128 (`keras_kd.adapters.PairEmbedding`, owned by the distiller), and with
    `d_i = |e_s(i) - e_t(i)|` for the samples in batch order

        loss = mean_i sum_c d_i[c] * d_{i+1}[c]

    The paper's own formulation (a Gaussian-RBF correlation matrix of each
    network's embeddings, matched in Frobenius norm) differs; this is the
    variant its CRD-table row was measured with. Default weight 0.02 with
    cross-entropy at weight 1, as that benchmark.

    Example:

    >>> import numpy as np
    >>> loss = CorrelationCongruenceLoss()
    >>> part = loss.build_parts((None, 16), (None, 8))
    >>> value = loss(np.random.rand(4, 16).astype("float32"), np.random.rand(4, 8).astype("float32"), parts=part)
    >>> tuple(value.shape)
    ()
    """

    metric_name = "cc_loss"

    def __init__(self, dim: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.dim = check_count("dim", dim, minimum=1)

    def check_shapes(self, teacher_shape, student_shape):
        check_batched("CC", teacher_shape, student_shape)

    def build_parts(self, teacher_shape, student_shape):
        return PairEmbedding.for_shapes(self.dim, teacher_shape, student_shape)

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        if context.parts is None:
            raise ValueError("CorrelationCongruenceLoss needs its PairEmbedding: pass parts=loss.build_parts(...).")
        teacher, student = context.parts(teacher_output, student_output)
        delta = ops.abs(ops.cast(student, "float32") - ops.cast(teacher, "float32"))
        return ops.mean(ops.sum(delta[:-1] * delta[1:], axis=1))

    def get_config(self) -> dict:
        config = super().get_config()
        if self.dim != 128:
            config["dim"] = self.dim
        return config
