"""Activation-boundary distillation (Heo, Lee, Yun, Choi, AAAI 2019)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.checks import check_flag, check_positive
from keras_kd.losses.base import LayerLevelsLoss, LossContext, describe
from keras_kd.registry import PRETRAIN_EPOCHS, SuiteRow, register_loss

#: RepDistiller's margin `m` (`ABLoss(margin=1.0)`).
MARGIN = 1.0
#: RepDistiller's scale of every level's loss: `/ 1000 * 3` after the batch mean.
SCALE = 3.0 / 1000.0
#: RepDistiller's `init_epochs`: length of the AB initialisation stage.
INIT_EPOCHS = 30
#: The suite row's levels: each stage's PRE-activation output (the sum before the last block's ReLU) of the
#: ResNet8 student (one block per stage) and the ResNet20 teacher (three).
RESNET8_STUDENT_LAYERS = ("stage1_block0_add", "stage2_block0_add", "stage3_block0_add")
RESNET20_TEACHER_LAYERS = ("stage1_block2_add", "stage2_block2_add", "stage3_block2_add")


def level_weights(levels: int) -> list[float]:
    """RepDistiller's per-level weights `2 ** (i - L + 1)`, shallow to deep: the deepest level 1, each
    shallower one half the next.

    >>> level_weights(3)
    [0.25, 0.5, 1.0]
    """
    return [2.0 ** (i - levels + 1) for i in range(levels)]


def activation_boundary_loss(student, teacher, margin: float = MARGIN):
    """`sum(1[t > 0] * relu(m - s)^2 + 1[t <= 0] * relu(m + s)^2) / batch`.

    The squared hinge of one level, summed over positions and channels and
    averaged over the batch: where the teacher's neuron is active (`t > 0`)
    the student's pre-activation `s` must exceed `+m`, where it is not it
    must stay below `-m`.

    >>> import numpy as np
    >>> t = np.array([[1.0, -1.0]], "float32")
    >>> float(activation_boundary_loss(np.array([[0.5, 0.5]], "float32"), t))  # (1 - .5)^2 + (1 + .5)^2
    2.5
    """
    student, teacher = ops.cast(student, "float32"), ops.cast(teacher, "float32")
    positive = ops.cast(teacher > 0, "float32")
    hinge = positive * ops.square(ops.relu(margin - student)) + (1.0 - positive) * ops.square(ops.relu(margin + student))
    batch = ops.cast(ops.shape(student)[0], "float32")
    return ops.sum(hinge) / batch


@keras.saving.register_keras_serializable(package="keras_kd")
class ABConnector(keras.layers.Layer):
    """AB's connectors, one per level: the student's pre-activation map ->
    the teacher's shape by a 1x1 convolution + BatchNorm (no activation: the
    targets' signs matter), or the identity where the shapes already agree
    (RepDistiller's `Connector`), unless `always=True`.

    Args:
        teacher_shapes: per level, the teacher's `(H, W, C)`.
        always: a convolution + BN at every level, also where shapes agree.
    """

    def __init__(self, teacher_shapes, always: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.teacher_shapes = [tuple(int(d) for d in shape) for shape in teacher_shapes]
        self.always = check_flag("always", always)
        self.connectors = []

    def build(self, input_shape):
        """`input_shape`: the student's shape (with batch) of every level."""
        from keras_kd.adapters import HintRegressor

        if len(input_shape) != len(self.teacher_shapes):
            raise ValueError(f"ABConnector has {len(self.teacher_shapes)} levels, got {len(input_shape)} shapes.")
        self.connectors = []
        for i, (shape, teacher) in enumerate(zip(input_shape, self.teacher_shapes, strict=True)):
            if not self.always and tuple(int(d) for d in shape[1:]) == teacher:
                self.connectors.append(None)
                continue
            connector = HintRegressor(teacher, activation=None, kernel_size=1, batchnorm=True, name=f"connector{i}")
            connector.build(tuple(shape))
            self.connectors.append(connector)
        self.built = True

    def call(self, inputs, training=None):
        return [x if c is None else c(x, training=training) for c, x in zip(self.connectors, inputs, strict=True)]

    def get_config(self) -> dict:
        return {**super().get_config(), "teacher_shapes": self.teacher_shapes, "always": self.always}


@register_loss(
    "ab",
    SuiteRow(
        "AB (pre-activation stages 1-3, after an init stage)",
        ({"weight": 1.0, "teacher_layer_names": list(RESNET20_TEACHER_LAYERS),
          "student_layer_names": list(RESNET8_STUDENT_LAYERS), "active_epochs": [0, PRETRAIN_EPOCHS]},),
        student_loss_weight=1.0, order=15, pretrain_fraction=0.25,
    ),
)
class ABLoss(LayerLevelsLoss):
    """Activation-boundary transfer: the student's neurons learn to be
    active exactly where the teacher's are, by a margin.

    Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons", AAAI 2019. With `T_i` the
    teacher's and `S_i` the student's PRE-activation map at level `i`
    (shallow to deep, `teacher_layer_names` / `student_layer_names`), `r_i`
    a connector and `m` the margin:

        L_i = sum_{h,w,c} 1[T_i > 0] relu(m - r_i(S_i))^2 + 1[T_i <= 0] relu(m + r_i(S_i))^2
        loss = sum_i 2^(i - L + 1) * (3 / 1000) * L_i / batch

    (the paper's eq. 5, `||rho(T) * sigma(m - r(S)) + (1 - rho(T)) *
    sigma(m + r(S))||_2^2`, with `rho` the step function and `sigma` ReLU).
    `r_i` (`ABConnector`) is a 1x1 convolution + BatchNorm from the student's
    channels to the teacher's, or the identity where the two maps already
    have the same shape (ResNet20 -> ResNet8 on our zoo); the distiller
    creates, trains and saves it and never exports it with the student.

    RepDistiller's conventions (`distiller_zoo/AB.py`, `helper/pretrain.py`,
    `train_student.py --distill abound`), followed here: margin `m = 1.0`;
    the level weights `2^(i - L + 1)` (1/4, 1/2, 1 for three levels); each
    level's sum over elements divided by the batch size and multiplied by
    3/1000; the levels are each stage's pre-activation output (`feat[1:-1]`
    with `preact=True`; on our zoo `stage{i}_block{n-1}_add`, the sum before
    the last block's ReLU, `keras-kd inspect` lists them) for BOTH networks;
    the connector is identity when the shapes agree, else convolution + BN
    without ReLU. RepDistiller trains AB as an initialisation stage of
    `init_epochs = 30` epochs (the student's feature layers and the
    connectors, AB alone, weight 1), then the classification stage trains
    the student on CE (`-a 0`: no KD) with no AB term. Here both stages are
    one `fit`: the term's `active_epochs=(0, 30)` and the distiller's
    `student_loss_start_epoch=30` (`ab_fmnist.yaml`); after the stage the
    distiller leaves the term and the teacher's pass out of the step, so the
    classification stage costs what training the student alone does. The
    results suite's row does the same with a stage of a quarter of the
    suite's epochs, added before them (`SuiteRow.pretrain_fraction`): 30 +
    120 in the standard suite.

    Differences from RepDistiller: ONE learning-rate schedule (cosine) spans
    both stages, where RepDistiller runs the init stage at a constant lr
    (0.05) with its own SGD optimizer and then restarts the schedule and the
    momentum for 240 epochs; the student's classifier also receives zero
    gradient during the init stage but its weights still decay if weight
    decay is on (RepDistiller's init optimizer holds only the feature
    layers and connectors), and momentum carries over the stage boundary;
    the init stage runs the student in training mode (BatchNorm statistics
    update; RepDistiller's `init_modules.train()` does the same for the
    feature layers); the connector is a 1x1 convolution without bias (BN
    follows) for maps of the same size, a strided 1x1 or a transposed
    convolution when sizes differ by an integer factor (RepDistiller's
    `ConvReg`: 3x3 stride 2 / 4x4 transposed stride 2 / a valid convolution);
    Keras' default initialisers. Relative to the paper: it
    trains only the initialisation this way too, but weights and normalises
    the levels as the authors' code (RepDistiller copies it).

    Args:
        teacher_layer_names: teacher pre-activation layers, shallow to deep.
        student_layer_names: student pre-activation layers, one per teacher layer.
        margin: `m` (> 0).
        always_connect: a connector at every level, also where shapes agree.
        active_epochs: see `DistillationLoss` (RepDistiller: `(0, 30)`).

    Example:

    >>> import numpy as np
    >>> t = {"a": np.ones((2, 4, 4, 3), "float32"), "b": -np.ones((2, 2, 2, 3), "float32")}
    >>> s = {"a": np.full((2, 4, 4, 3), 2.0, "float32"), "b": np.zeros((2, 2, 2, 3), "float32")}
    >>> loss = ABLoss(teacher_layer_names=["a", "b"], student_layer_names=["a", "b"])
    >>> round(float(loss(t["a"], s["a"], teacher_outputs=t, student_outputs=s)), 6)  # level b: 12 * 1^2 * 3/1000
    0.036
    """

    metric_name = "ab_loss"
    levels_description = "several pre-activation layers"
    levels_example = "['stage1_block2_add', 'stage2_block2_add', 'stage3_block2_add'] for a ResNet20"
    parts_builder = "build_connector"
    parts_noun = "its connectors"

    def __init__(
        self,
        teacher_layer_names=None,
        student_layer_names=None,
        margin: float = MARGIN,
        always_connect: bool = False,
        name: str | None = None,
        active_epochs=None,
    ):
        super().__init__(teacher_layer_names, student_layer_names, name=name, active_epochs=active_epochs)
        self.margin = check_positive("margin", margin)
        self.always_connect = check_flag("always_connect", always_connect)

    # -- shapes and parts --------------------------------------------------------

    method_label = "AB"

    def check_level_shape(self, role, name, shape):
        if len(shape) != 4 or any(d is None for d in shape[1:]):
            raise ValueError(f"AB needs fixed-size (batch, H, W, C) maps; the {role}'s {name!r} is "
                             f"{describe(shape)}.")

    def check_level_pairs(self, teachers, students):
        for name_t, name_s, t, s in zip(self.teacher_layer_names, self.student_layer_names, teachers, students,
                                        strict=True):
            ratios = {max(a, b) // min(a, b) if max(a, b) % min(a, b) == 0 else 0 for a, b in zip(t[1:3], s[1:3], strict=True)}
            same_direction = (t[1] >= s[1]) == (t[2] >= s[2])
            if 0 in ratios or len(ratios) != 1 or not same_direction:
                raise ValueError(
                    f"AB's connector cannot map the student's {name_s!r} {describe(s)} onto the teacher's "
                    f"{name_t!r} {describe(t)}: the map sizes must differ by one integer factor.")

    def check_shapes(self, teacher_shape, student_shape):
        for role, shape, name in (("teacher", teacher_shape, self.teacher_key),
                                  ("student", student_shape, self.student_key)):
            if len(shape) != 4:
                raise ValueError(f"AB needs (batch, H, W, C) pre-activation maps; the {role}'s {name!r} is "
                                 f"{describe(shape)}.")

    def build_connector(self, teacher_shapes: dict, student_shapes: dict) -> ABConnector | None:
        """The built `ABConnector` for outputs of these shapes (`{layer: shape with batch}`); None when
        every level is an identity."""
        teachers, students = self._level_shapes(teacher_shapes, student_shapes)
        if not self.always_connect and all(tuple(t[1:]) == tuple(s[1:]) for t, s in zip(teachers, students, strict=True)):
            return None
        connector = ABConnector([t[1:] for t in teachers], always=self.always_connect)
        connector.build(students)
        return connector

    # -- the loss ----------------------------------------------------------------

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        teachers = self.gather(teacher_output, context.teacher_outputs, self.teacher_layer_names, "teacher")
        students = self.gather(student_output, context.student_outputs, self.student_layer_names, "student")
        if context.parts is not None:
            students = [ops.cast(s, "float32") for s in context.parts(students, training=context.training)]
        total = 0.0
        for weight, student, teacher, name in zip(level_weights(len(teachers)), students, teachers,
                                                  self.teacher_layer_names, strict=True):
            if tuple(student.shape[1:]) != tuple(teacher.shape[1:]):
                raise ValueError(f"ABLoss needs the connected student map {tuple(student.shape[1:])} to match the "
                                 f"teacher's {name!r} {tuple(teacher.shape[1:])}: pass parts=loss.build_connector(...)"
                                 " (distillers do).")
            total = total + weight * SCALE * activation_boundary_loss(student, teacher, self.margin)
        return total

    def get_config(self) -> dict:
        return {**super().get_config(), "margin": self.margin, "always_connect": self.always_connect}
