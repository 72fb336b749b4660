"""FitNet hint loss (MSE after a trainable regressor owned by the distiller)."""

from __future__ import annotations

from keras import ops

from keras_kd.checks import check_flag
from keras_kd.losses.base import DistillationLoss, LossContext, describe
from keras_kd.registry import SuiteRow, register_loss


@register_loss(
    "hint",
    SuiteRow(
        "FitNet (stage2 hint)",
        ({"weight": 100.0, "teacher_layer_name": "stage2", "student_layer_name": "stage2"},),
        key="fitnet",
        order=1,
    ),
)
class HintLoss(DistillationLoss):
    """`mean((r(v) - u)^2)`: FitNet hints (Romero et al., ICLR 2015).

    `u` is the teacher's hint map, `v` the student's guided map and `r` a
    trainable `keras_kd.adapters.HintRegressor` the loss declares in
    `build_parts`: the distiller creates it, trains it with the student and
    saves it with itself; the exported student never contains it. Called
    directly without `parts`, the loss expects `student_output` already in the
    teacher's shape.

    Args:
        teacher_layer_name, student_layer_name: the hint and guided layers.
        regressor_activation: `"relu"` (FitNet/CRD default) or None for
            targets that can be negative.
        regressor_kernel_size: 3 (FitNet/CRD) or 1 (a channel map only).
        regressor_batchnorm: BatchNorm after the convolution (CRD) or not.
        regressor: False compares the raw maps (shapes must then agree).

    Example:

    >>> import numpy as np
    >>> u = np.ones((2, 4, 4, 8), "float32")
    >>> float(HintLoss()(u, np.zeros_like(u)))
    1.0
    """

    metric_name = "hint_loss"

    def __init__(
        self,
        regressor_activation: str | None = "relu",
        regressor_kernel_size: int = 3,
        regressor_batchnorm: bool = True,
        regressor: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if regressor_kernel_size not in (1, 3):
            raise ValueError(f"`regressor_kernel_size` must be 1 or 3, got {regressor_kernel_size!r}.")
        self.regressor_activation = regressor_activation
        self.regressor_kernel_size = int(regressor_kernel_size)
        self.regressor_batchnorm = check_flag("regressor_batchnorm", regressor_batchnorm)
        self.regressor = check_flag("regressor", regressor)

    def check_shapes(self, teacher_shape, student_shape):
        if len(teacher_shape) != len(student_shape):
            raise ValueError(
                f"hint needs outputs of the same rank; got teacher {describe(teacher_shape)} and "
                f"student {describe(student_shape)}."
            )
        if not self.regressor and tuple(teacher_shape[1:]) != tuple(student_shape[1:]):
            raise ValueError(
                f"without a regressor the shapes must agree; got teacher {describe(teacher_shape)} and "
                f"student {describe(student_shape)}."
            )

    def build_parts(self, teacher_shape, student_shape):
        if not self.regressor:
            return None
        from keras_kd.adapters import HintRegressor

        regressor = HintRegressor(
            teacher_shape[1:],
            activation=self.regressor_activation,
            kernel_size=self.regressor_kernel_size,
            batchnorm=self.regressor_batchnorm,
        )
        regressor.build(student_shape)
        return regressor

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        if context.parts is not None:
            student_output = ops.cast(context.parts(student_output, training=context.training), "float32")
        if tuple(teacher_output.shape[1:]) != tuple(student_output.shape[1:]):
            raise ValueError(
                f"HintLoss needs the regressed student features {tuple(student_output.shape[1:])} "
                f"to match the teacher features {tuple(teacher_output.shape[1:])}."
            )
        return ops.mean(ops.square(student_output - teacher_output))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "regressor_activation": self.regressor_activation,
            "regressor_kernel_size": self.regressor_kernel_size,
            "regressor_batchnorm": self.regressor_batchnorm,
            "regressor": self.regressor,
        }
