"""Factor transfer: paraphraser + translator (Kim, Park, Kwak, NeurIPS 2018)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.checks import check_count, check_positive
from keras_kd.losses.base import DistillationLoss, LossContext, describe
from keras_kd.losses.reviewkd import adaptive_average_pool
from keras_kd.models.layers import BN_EPSILON, BN_MOMENTUM
from keras_kd.registry import PRETRAIN_EPOCHS, SuiteRow, register_loss

#: RepDistiller's factor rate `k` (factor channels = int(k * teacher channels)).
FACTOR_RATE = 0.5
#: RepDistiller's `init_epochs`: the paraphraser's stage.
PARAPHRASER_EPOCHS = 30
#: RepDistiller's `beta` for `--distill factor`.
FT_WEIGHT = 200.0
#: The suite row's reconstruction weight: 200 * 0.001 = 0.2 = RepDistiller's init lr 0.01 / our lr 0.05.
SUITE_RECONSTRUCTION_WEIGHT = 0.001
#: Slope of the LeakyReLUs of the paraphraser and translator.
LEAKY_SLOPE = 0.1


def _leaky(x):
    return ops.leaky_relu(x, negative_slope=LEAKY_SLOPE)


def l2_normalize(x, epsilon: float = 1e-12):
    """`x / max(||x||_2, eps)` along the last axis (PyTorch's `F.normalize`)."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


def factor_vector(factor):
    """RepDistiller's `factor(f)`: the channel mean of the squared factor,
    flattened over positions and L2-normalised, `(batch, H * W)`.

    >>> import numpy as np
    >>> np.asarray(factor_vector(np.ones((1, 2, 2, 3), "float32"))).round(3).tolist()
    [[0.5, 0.5, 0.5, 0.5]]
    """
    pooled = ops.mean(ops.square(factor), axis=-1)
    return l2_normalize(ops.reshape(pooled, (ops.shape(pooled)[0], -1)))


def factor_transfer_loss(student_factor, teacher_factor):
    """`mean_{b, j} |factor_vector(F_s) - factor_vector(F_t)|` (p = 1), the
    larger map first average-pooled to the smaller one's size."""
    s_size, t_size = student_factor.shape[1], teacher_factor.shape[1]
    if s_size > t_size:
        student_factor = adaptive_average_pool(student_factor, (t_size, t_size))
    elif t_size > s_size:
        teacher_factor = adaptive_average_pool(teacher_factor, (s_size, s_size))
    return ops.mean(ops.abs(factor_vector(student_factor) - factor_vector(teacher_factor)))


@keras.saving.register_keras_serializable(package="keras_kd")
class FactorTransferModules(keras.layers.Layer):
    """FT's trainable part: the paraphraser (encoder + decoder on the
    teacher's map) and the translator (encoder on the student's map).

    Paraphraser (RepDistiller's `Paraphraser`, `use_bn=False`): three 3x3
    convolutions `C -> C -> kC -> kC` (the encoder, output = the teacher's
    factor) and three 3x3 transposed convolutions `kC -> kC -> C -> C` (the
    decoder), each followed by LeakyReLU(0.1). Translator (`Translator`,
    `use_bn=True`): three 3x3 convolutions `C_s -> C_s -> kC -> kC`, each with
    BatchNorm and LeakyReLU(0.1). All convolutions have "same" padding, stride 1.

    A non-trainable copy of the encoder's weights follows the live encoder
    while `pretraining` is true and is frozen at its last value afterwards;
    the teacher's factor is computed with that copy, so nothing moves the
    factor after the paraphraser's stage (not momentum, not weight decay,
    both of which still move the live, now unused, weights).

    Args:
        teacher_shape, student_shape: `(H, W, C)` of the two maps.
        factor_rate: `k`.
    """

    def __init__(self, teacher_shape, student_shape, factor_rate: float = FACTOR_RATE, **kwargs):
        super().__init__(**kwargs)
        self.teacher_shape = tuple(int(d) for d in teacher_shape)
        self.student_shape = tuple(int(d) for d in student_shape)
        self.factor_rate = float(factor_rate)
        channels = self.teacher_shape[-1]
        self.factor_channels = int(channels * self.factor_rate)
        if self.factor_channels < 1:
            raise ValueError(f"factor_rate {factor_rate} leaves no factor channel of the teacher's {channels}.")
        widths = (channels, self.factor_channels, self.factor_channels)
        self.encoder = [keras.layers.Conv2D(w, 3, padding="same", name=f"paraphraser_enc{i}")
                        for i, w in enumerate(widths)]
        self.decoder = [keras.layers.Conv2DTranspose(w, 3, padding="same", name=f"paraphraser_dec{i}")
                        for i, w in enumerate((self.factor_channels, channels, channels))]
        self.translator = [keras.layers.Conv2D(w, 3, padding="same", use_bias=False, name=f"translator{i}")
                           for i, w in enumerate((self.student_shape[-1], self.factor_channels, self.factor_channels))]
        self.translator_norms = [keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                                                 name=f"translator_bn{i}") for i in range(3)]

    def build(self, input_shape=None):
        shape = (None, *self.teacher_shape[:2], self.teacher_shape[-1])
        for layer in self.encoder:
            layer.build(shape)
            shape = (*shape[:3], layer.filters)
        for layer in self.decoder:
            layer.build(shape)
            shape = (*shape[:3], layer.filters)
        shape = (None, *self.student_shape)
        for conv, norm in zip(self.translator, self.translator_norms, strict=True):
            conv.build(shape)
            shape = (*shape[:3], conv.filters)
            norm.build(shape)
        self.frozen_encoder = [
            (self.add_weight(name=f"frozen_enc{i}_kernel", shape=layer.kernel.shape, initializer="zeros",
                             trainable=False, aggregation="only_first_replica"),
             self.add_weight(name=f"frozen_enc{i}_bias", shape=layer.bias.shape, initializer="zeros",
                             trainable=False, aggregation="only_first_replica"))
            for i, layer in enumerate(self.encoder)
        ]
        self.frozen_final = self.add_weight(name="frozen_final", shape=(), initializer="zeros", trainable=False,
                                            aggregation="only_first_replica")
        self.built = True

    def paraphrase(self, teacher):
        """`(factor, reconstruction)` of the teacher's map by the live paraphraser."""
        factor = teacher
        for layer in self.encoder:
            factor = _leaky(layer(factor))
        reconstruction = factor
        for layer in self.decoder:
            reconstruction = _leaky(layer(reconstruction))
        return factor, reconstruction

    def freeze_encoder(self, pretraining):
        """Copies the live encoder to the frozen one while `pretraining`, and
        once more on the first call after it (the last update of the stage)."""
        pretraining = ops.convert_to_tensor(pretraining)
        copy = ops.logical_or(pretraining, self.frozen_final < 0.5)
        for layer, (kernel, bias) in zip(self.encoder, self.frozen_encoder, strict=True):
            kernel.assign(ops.where(copy, layer.kernel, kernel))
            bias.assign(ops.where(copy, layer.bias, bias))
        self.frozen_final.assign(ops.where(pretraining, 0.0, 1.0))

    def teacher_factor(self, teacher):
        """The teacher's factor by the frozen encoder copy (no gradient)."""
        factor = teacher
        for kernel, bias in self.frozen_encoder:
            factor = _leaky(ops.conv(factor, kernel, padding="same") + bias)
        return ops.stop_gradient(factor)

    def translate(self, student, training=None):
        """The student's factor by the translator."""
        for conv, norm in zip(self.translator, self.translator_norms, strict=True):
            student = _leaky(norm(conv(student), training=training))
        return student

    def get_config(self) -> dict:
        return {**super().get_config(), "teacher_shape": self.teacher_shape, "student_shape": self.student_shape,
                "factor_rate": self.factor_rate}


@register_loss(
    "ft",
    SuiteRow(
        "FT (stage3 factors, after a paraphraser stage)",
        ({"weight": FT_WEIGHT, "teacher_layer_name": "stage3", "student_layer_name": "stage3",
          "paraphraser_epochs": PRETRAIN_EPOCHS, "reconstruction_weight": SUITE_RECONSTRUCTION_WEIGHT},),
        student_loss_weight=1.0, order=16, pretrain_fraction=0.25,
    ),
)
class FTLoss(DistillationLoss):
    """Factor transfer: the student's translated factor learns the teacher's
    paraphrased factor.

    Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS 2018. A paraphraser `P` (encoder `E`, decoder
    `D`) is first trained to reconstruct the teacher's map `x_t`; then a
    translator `Tr` on the student's map `x_s` is trained with the student:

        stage 1 (epoch < paraphraser_epochs):  L = reconstruction_weight * mean((D(E(x_t)) - x_t)^2)
        stage 2:                               L = mean_{b,j} |phi(Tr(x_s)) - phi(E(x_t))|
        phi(F) = vec(mean_c F^2) / ||vec(mean_c F^2)||_2

    `E(x_t)` is computed with the encoder frozen at the end of stage 1 and
    `stop_gradient`: the paraphraser is only trained by the reconstruction,
    the translator and the student only by the transfer (a `cond` on
    `context.epoch` runs only the current stage's modules, so the other
    stage gives zero gradient and costs nothing).
    Paraphraser and translator (`FactorTransferModules`) are the loss's part:
    the distiller creates, trains and saves them and never exports them with
    the student. The metric `ft_loss` is the reconstruction term during
    stage 1 and the transfer term after.

    RepDistiller's conventions (`distiller_zoo/FT.py`, `models/util.py`,
    `helper/pretrain.py`, `train_student.py --distill factor`), followed:
    the teacher's and student's last feature maps (`feat[-2]`, post-ReLU;
    `stage3` on our zoo); factor rate `k = 0.5`; the paraphraser without
    BatchNorm and the translator with it, LeakyReLU(0.1); the paraphraser's
    stage of `init_epochs = 30` epochs with `nn.MSELoss` (mean); the factor
    `phi` as `FactorTransfer(p1=2, p2=1)`: channel mean of the squared
    factor, flattened, L2-normalised, then the MEAN absolute difference; the
    larger map average-pooled to the smaller's size; weight `beta = 200`
    (`FT_WEIGHT`) with CE at 1 and no KD (`-a 0`).

    Differences from the paper: its `phi` normalises the whole flattened
    factor (`F / ||vec(F)||_2`) and takes the p-norm of the difference
    (a sum); RepDistiller's channel-mean-of-squares and mean are used here.
    Differences from RepDistiller: both stages run in one `fit` with one
    learning-rate schedule and one optimizer (RepDistiller trains the
    paraphraser with its own SGD at lr 0.01 for CIFAR ResNets, then restarts
    lr and momentum for 240 epochs); the reconstruction is therefore scaled
    by `reconstruction_weight` inside the term (the term weight 200 also
    multiplies it): `ft_fmnist.yaml` and the suite row use 0.001, i.e.
    200 * 0.001 = 0.2 = 0.01 / 0.05, RepDistiller's init step at our lr
    0.05; both networks run during stage 1; after stage 1 the live paraphraser
    still receives momentum and weight decay, but the teacher's factor comes
    from the frozen copy (RepDistiller simply stops optimising it); Keras'
    default initialisers; the translator's convolutions have no bias (BN
    follows). As in RepDistiller, whose student waits for the paraphraser,
    cross-entropy starts after the stage: `ft_fmnist.yaml` sets
    `student_loss_start_epoch: 30`; the results suite's row puts a stage of
    a quarter of the suite's epochs before them (`SuiteRow.pretrain_fraction`:
    30 + 120 epochs in the standard suite, so the student trains as long as
    every other row's).
    Unlike the other losses, FT never passes gradient to the teacher's map.

    Args:
        teacher_layer_name, student_layer_name: (batch, H, W, C) maps.
        factor_rate: `k` (factor channels = int(k * teacher channels)).
        paraphraser_epochs: epochs of the reconstruction stage (>= 1).
        reconstruction_weight: scale of the reconstruction inside the term (> 0).

    Example:

    >>> import numpy as np
    >>> t, s = np.random.rand(2, 4, 4, 8).astype("float32"), np.random.rand(2, 4, 4, 4).astype("float32")
    >>> loss = FTLoss(teacher_layer_name="stage3", student_layer_name="stage3", paraphraser_epochs=2)
    >>> modules = loss.build_parts(t.shape, s.shape)
    >>> modules.factor_channels
    4
    >>> stage1, stage2 = (float(loss(t, s, parts=modules, epoch=e)) for e in (0, 2))
    >>> bool(stage1 > 0 and 0 <= stage2 <= 2)
    True
    """

    metric_name = "ft_loss"

    def __init__(
        self,
        factor_rate: float = FACTOR_RATE,
        paraphraser_epochs: int = PARAPHRASER_EPOCHS,
        reconstruction_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.factor_rate = check_positive("factor_rate", factor_rate)
        self.paraphraser_epochs = check_count("paraphraser_epochs", paraphraser_epochs, minimum=1)
        self.reconstruction_weight = check_positive("reconstruction_weight", reconstruction_weight)

    def check_shapes(self, teacher_shape, student_shape):
        if len(teacher_shape) != 4 or len(student_shape) != 4:
            raise ValueError(f"FT needs (batch, H, W, C) feature maps; got teacher {describe(teacher_shape)} and "
                             f"student {describe(student_shape)}.")
        if any(d is None for d in (*teacher_shape[1:], *student_shape[1:])):
            raise ValueError(f"FT needs fixed map sizes; got teacher {describe(teacher_shape)} and student "
                             f"{describe(student_shape)}.")
        if int(teacher_shape[-1] * self.factor_rate) < 1:
            raise ValueError(f"factor_rate {self.factor_rate} leaves no factor channel of the teacher's "
                             f"{teacher_shape[-1]}.")
        for shape in (teacher_shape, student_shape):
            if shape[1] != shape[2]:
                raise ValueError(f"FT pools square maps; got {describe(shape)}.")

    def build_parts(self, teacher_shape, student_shape):
        self.check_shapes(teacher_shape, student_shape)
        modules = FactorTransferModules(teacher_shape[1:], student_shape[1:], self.factor_rate)
        modules.build()
        return modules

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        if context.parts is None:
            raise ValueError("FTLoss needs its paraphraser and translator: pass parts=loss.build_parts(teacher_shape, "
                             "student_shape) (distillers do).")
        modules = context.parts
        pretraining = ops.cast(context.epoch, "float32") < float(self.paraphraser_epochs)
        modules.freeze_encoder(pretraining)

        def reconstruction_stage():
            _, reconstruction = modules.paraphrase(teacher_output)
            return self.reconstruction_weight * ops.mean(ops.square(ops.cast(reconstruction, "float32") - teacher_output))

        def transfer_stage():
            teacher_factor = ops.cast(modules.teacher_factor(teacher_output), "float32")
            student_factor = ops.cast(modules.translate(student_output, training=context.training), "float32")
            return factor_transfer_loss(student_factor, teacher_factor)

        # Only the current stage's modules run (a `cond`, one compiled step for both stages).
        return ops.cond(pretraining, reconstruction_stage, transfer_stage)

    def get_config(self) -> dict:
        return {**super().get_config(), "factor_rate": self.factor_rate,
                "paraphraser_epochs": self.paraphraser_epochs, "reconstruction_weight": self.reconstruction_weight}
