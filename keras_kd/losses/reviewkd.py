"""Knowledge review: attention-based fusion + hierarchical context loss (Chen et al., CVPR 2021)."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_kd.checks import check_count, check_flag
from keras_kd.losses.base import LayerLevelsLoss, LossContext, describe
from keras_kd.models.layers import BN_EPSILON, BN_MOMENTUM
from keras_kd.registry import SuiteRow, register_loss

#: Output sizes of the pyramid pooling of the hierarchical context loss (mdistiller's `[4, 2, 1]`).
PYRAMID = (4, 2, 1)
#: mdistiller's cap on the ABF width: `mid = min(512, channels of the student's deepest level)`.
MAX_MID_CHANNELS = 512
#: The suite row's levels, shallow to deep: the student's stage outputs and pooled embedding; the
#: ResNet20 teacher's pre-activation stage outputs (the sum before the last block's ReLU, mdistiller's
#: `preact_feats`) and pooled embedding.
ZOO_STUDENT_LAYERS = ("stage1", "stage2", "stage3", "embedding")
RESNET20_TEACHER_LAYERS = ("stage1_block2_add", "stage2_block2_add", "stage3_block2_add", "embedding")


def _as_map(features):
    """(batch, C) -> (batch, 1, 1, C); (batch, H, W, C) unchanged."""
    if len(features.shape) == 2:
        return ops.reshape(features, (-1, 1, 1, features.shape[-1]))
    return features


def _map_size(shape) -> tuple[int, int]:
    """(H, W) of an output of `shape` (with batch); a (batch, C) vector is a 1x1 map."""
    return (1, 1) if len(shape) == 2 else (int(shape[1]), int(shape[2]))


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source rows of a nearest-neighbour resize, `floor(j * in / out)` (PyTorch's
    `F.interpolate(mode="nearest")`): integer up-sampling repeats each row,
    integer down-sampling keeps the first row of each block."""
    return np.minimum(np.arange(size_out) * size_in // size_out, size_in - 1).astype("int32")


def _upsample_axis(features, factor: int, axis: int):
    """Each row repeated `factor` times along `axis`: one broadcast and a reshape
    (its gradient one sum), where `ops.repeat` tiles and reshapes."""
    shape = list(features.shape)
    expanded = ops.expand_dims(features, axis + 1)
    target = [ops.shape(features)[0], *features.shape[1:axis + 1], factor, *features.shape[axis + 1:]]
    shape[axis] = shape[axis] * factor
    return ops.reshape(ops.broadcast_to(expanded, target), [-1, *shape[1:]])


def _resize_axis(features, size_in: int, size_out: int, axis: int):
    """Nearest-neighbour resize of one axis: a whole-number up-sampling factor repeats each row
    and a whole-number down-sampling factor keeps every k-th (both cheaper than a gather, whose
    gradient is a scatter); any other ratio gathers `nearest_indices` rows."""
    if size_out % size_in == 0:
        return _upsample_axis(features, size_out // size_in, axis)
    if size_in % size_out == 0:
        step = size_in // size_out
        return features[:, ::step] if axis == 1 else features[:, :, ::step]
    return ops.take(features, nearest_indices(size_in, size_out), axis=axis)


def resize_nearest(features, size: tuple[int, int]):
    """A (batch, H, W, C) map resized to `size` by nearest neighbour (`nearest_indices`)."""
    height, width = features.shape[1], features.shape[2]
    if height != size[0]:
        features = _resize_axis(features, height, size[0], axis=1)
    if width != size[1]:
        features = _resize_axis(features, width, size[1], axis=2)
    return features


def adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) averaging matrix of adaptive average pooling: output `i`
    averages inputs `floor(i * in / out)` to `ceil((i + 1) * in / out) - 1`
    (PyTorch's `adaptive_avg_pool2d` bins, which overlap when `in` is not a
    multiple of `out`, e.g. 14 -> 4: rows 0-3, 3-6, 7-10, 10-13)."""
    matrix = np.zeros((size_out, size_in), "float32")
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_average_pool(features, size: tuple[int, int]):
    """(batch, H, W, C) -> (batch, size[0], size[1], C), adaptive average pooling."""
    height, width, channels = features.shape[1], features.shape[2], features.shape[3]
    if height % size[0] == 0 and width % size[1] == 0:  # equal, disjoint bins: a reshape and a mean
        blocks = ops.reshape(features, (-1, size[0], height // size[0], size[1], width // size[1], channels))
        return ops.mean(blocks, axis=(2, 4))
    rows = adaptive_pool_matrix(height, size[0])
    cols = adaptive_pool_matrix(width, size[1])
    features = ops.einsum("ih,bhwc->biwc", ops.convert_to_tensor(rows, features.dtype), features)
    return ops.einsum("jw,biwc->bijc", ops.convert_to_tensor(cols, features.dtype), features)


def hcl_weights(height: int) -> list[tuple[int | None, float]]:
    """`[(pool size or None for the full map, weight), ...]` of one level of
    the hierarchical context loss: the full map at weight 1, then each pyramid
    size `l` in (4, 2, 1) smaller than the map's height at half the previous
    weight (mdistiller's `cnt /= 2`).

    >>> hcl_weights(8)
    [(None, 1.0), (4, 0.5), (2, 0.25), (1, 0.125)]
    >>> hcl_weights(2)
    [(None, 1.0), (1, 0.5)]
    """
    weights, weight = [(None, 1.0)], 1.0
    for size in PYRAMID:
        if size >= height:
            continue
        weight /= 2.0
        weights.append((size, weight))
    return weights


def hcl_loss(student_maps, teacher_maps):
    """Hierarchical context loss: sum over levels of
    `sum_k w_k * MSE(pool_k(F_s), pool_k(F_t)) / sum_k w_k` (`hcl_weights`;
    MSE = mean over batch, positions and channels; pool = adaptive average).

    >>> import numpy as np
    >>> float(hcl_loss([np.ones((2, 8, 8, 3), "float32")], [np.zeros((2, 8, 8, 3), "float32")]))
    1.0
    """
    total = 0.0
    for student, teacher in zip(student_maps, teacher_maps, strict=True):
        student, teacher = _as_map(student), _as_map(teacher)
        level, norm = 0.0, 0.0
        for size, weight in hcl_weights(int(student.shape[1])):
            s, t = (student, teacher) if size is None else (adaptive_average_pool(student, (size, size)),
                                                           adaptive_average_pool(teacher, (size, size)))
            level = level + weight * ops.mean(ops.square(s - t))
            norm += weight
        total = total + level / norm
    return total


def _kaiming_uniform_a1():
    """PyTorch's `kaiming_uniform_(w, a=1)` (mdistiller's ABF convolutions): U(+-sqrt(3 / fan_in))."""
    return keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionBasedFusion(keras.layers.Layer):
    """One ABF module of ReviewKD: student level `x` (+ the deeper level's fused map `y`) -> teacher channels.

        x = BN(conv1x1(x))                                    (mid channels)
        if fuse: y = nearest(y, size of x)
                 a = sigmoid(conv1x1([x, y]) + b)             (2 attention maps)
                 x = x * a[..., 0] + y * a[..., 1]
        x = nearest(x, teacher size)                          (when sizes differ)
        out = BN(conv3x3(x))                                  (teacher channels)

    `call` returns `(out, x)`: the output compared with the teacher and the
    fused map handed to the next (shallower) level.
    """

    def __init__(self, mid_channels: int, out_channels: int, out_size, fuse: bool, **kwargs):
        super().__init__(**kwargs)
        self.mid_channels, self.out_channels = int(mid_channels), int(out_channels)
        self.out_size = tuple(int(d) for d in out_size)
        self.fuse = check_flag("fuse", fuse)
        self.conv1 = keras.layers.Conv2D(self.mid_channels, 1, use_bias=False, name="conv1",
                                         kernel_initializer=_kaiming_uniform_a1())
        self.bn1 = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="bn1")
        self.conv2 = keras.layers.Conv2D(self.out_channels, 3, padding="same", use_bias=False, name="conv2",
                                         kernel_initializer=_kaiming_uniform_a1())
        self.bn2 = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="bn2")
        if self.fuse:
            # PyTorch's default Conv2d initialisation (mdistiller leaves att_conv at it).
            bound = 1.0 / math.sqrt(2 * self.mid_channels)
            self.att_conv = keras.layers.Conv2D(
                2, 1, name="att_conv", kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
                bias_initializer=keras.initializers.RandomUniform(-bound, bound))
        else:
            self.att_conv = None

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        self.conv1.build(input_shape)
        self.bn1.build((None, height, width, self.mid_channels))
        if self.att_conv is not None:
            self.att_conv.build((None, height, width, 2 * self.mid_channels))
        self.conv2.build((None, *self.out_size, self.mid_channels))
        self.bn2.build((None, *self.out_size, self.out_channels))

    def call(self, inputs, residual=None, training=None):
        x = self.bn1(self.conv1(inputs), training=training)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("This ABF fuses a deeper level: pass `residual`.")
            y = resize_nearest(ops.cast(residual, x.dtype), (x.shape[1], x.shape[2]))
            # att_conv([x, y]) as two products with the halves of its 1x1 kernel: the same values
            # without building (and, backward, splitting) the 2 x mid channel concatenation.
            kernel = ops.cast(self.att_conv.kernel[0, 0], x.dtype)
            logits = (ops.matmul(x, kernel[: self.mid_channels]) + ops.matmul(y, kernel[self.mid_channels:])
                      + ops.cast(self.att_conv.bias, x.dtype))
            attention = ops.sigmoid(logits)
            x = x * attention[..., 0:1] + y * attention[..., 1:2]
        x = resize_nearest(x, self.out_size)
        return self.bn2(self.conv2(x), training=training), x

    def get_config(self) -> dict:
        return {**super().get_config(), "mid_channels": self.mid_channels, "out_channels": self.out_channels,
                "out_size": self.out_size, "fuse": self.fuse}


@keras.saving.register_keras_serializable(package="keras_kd")
class ReviewKDFusion(keras.layers.Layer):
    """Every ABF of a ReviewKD term (the loss's trainable part, owned by the
    distiller): student levels, shallow to deep, -> one map per level in the
    teacher's shape, fused top-down (the deepest level has no residual).

    Args:
        teacher_shapes: per level, shallow to deep, the teacher's `(H, W, C)`
            (a pooled `(C,)` level is `(1, 1, C)`).
        mid_channels: width of every ABF.
    """

    def __init__(self, teacher_shapes, mid_channels: int, **kwargs):
        super().__init__(**kwargs)
        self.teacher_shapes = [tuple(int(d) for d in shape) for shape in teacher_shapes]
        self.mid_channels = int(mid_channels)
        last = len(self.teacher_shapes) - 1
        self.abfs = [AttentionBasedFusion(self.mid_channels, shape[-1], shape[:2], fuse=i < last, name=f"abf{i}")
                     for i, shape in enumerate(self.teacher_shapes)]

    def build(self, input_shape):
        """`input_shape`: the student's shape (with batch) of every level, shallow to deep."""
        if len(input_shape) != len(self.abfs):
            raise ValueError(f"ReviewKDFusion has {len(self.abfs)} levels, got {len(input_shape)} student shapes.")
        for abf, shape in zip(self.abfs, input_shape, strict=True):
            height, width = _map_size(shape)
            abf.build((None, height, width, int(shape[-1])))
        self.built = True

    def call(self, inputs, training=None):
        """Student features of every level, shallow to deep -> the fused outputs, same order."""
        outputs, residual = [None] * len(self.abfs), None
        for i in reversed(range(len(self.abfs))):
            outputs[i], residual = self.abfs[i](_as_map(inputs[i]), residual=residual, training=training)
        return outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "teacher_shapes": self.teacher_shapes, "mid_channels": self.mid_channels}


@register_loss(
    "reviewkd",
    SuiteRow("ReviewKD (stages 1-3 + embedding, 20-epoch warm-up)",
             ({"weight": 1.0, "teacher_layer_names": list(RESNET20_TEACHER_LAYERS),
               "student_layer_names": list(ZOO_STUDENT_LAYERS)},),
             student_loss_weight=1.0, order=14),
)
class ReviewKDLoss(LayerLevelsLoss):
    """Knowledge review: every student level, fused with the deeper ones,
    learns the teacher's map of that level.

    Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review", CVPR
    2021. With student features `S_1..S_L` and teacher features `T_1..T_L`
    (shallow to deep, `teacher_layer_names` / `student_layer_names`):

        F_L, R_L = ABF_L(S_L)                  (no residual at the deepest level)
        F_i, R_i = ABF_i(S_i, R_{i+1})         i = L-1 .. 1
        loss = ramp * sum_i HCL(F_i, T_i),     ramp = min((epoch + 1) / warmup_epochs, 1)
        HCL(F, T) = sum_k w_k MSE(pool_k(F), pool_k(T)) / sum_k w_k

    ABF (`AttentionBasedFusion`): a 1x1 conv + BN of `S_i` to `mid_channels`;
    the deeper fused map `R_{i+1}` up-sampled to its size (nearest
    neighbour); two attention maps `sigmoid(conv1x1([x, y]))` weighting the
    sum `x * a_0 + y * a_1` (= `R_i`); a 3x3 conv + BN to the teacher's
    channels (= `F_i`). HCL: `pool_k` is the full map (w = 1) and then
    adaptive average pooling to 4x4, 2x2, 1x1, each only when smaller than
    the map's height, at weights halving from 1/2 (1, 1/2, 1/4, 1/8 for a map
    of 8 rows or more), normalised by their sum; MSE is the mean over batch,
    positions and channels; a pooled `(batch, C)` level is a 1x1 map (its
    HCL is the plain MSE). All ABFs form one `ReviewKDFusion` the distiller
    creates, trains, saves with itself and never exports with the student.

    Defaults and conventions follow the benchmark code (mdistiller,
    `distillers/ReviewKD.py`, CIFAR): four levels, the student's stage outputs (post-ReLU `feats`) and
    pooled feature, the teacher's PRE-activation stage outputs
    (`preact_feats`) and pooled feature (the stem `f0` in mdistiller's
    student list is dropped by its `zip`); `mid_channels = min(512, channels
    of the student's deepest level)`; nearest-neighbour resizing
    (`floor(j * in / out)`, as `F.interpolate`); the HCL weights above; the
    linear warm-up over `warmup_epochs = 20` (mdistiller counts epochs from
    1, `context.epoch` from 0, hence `epoch + 1`); term weight
    `REVIEWKD_WEIGHT` 1.0 (mdistiller's default; its only CIFAR config,
    ResNet32x4 -> ResNet8x4, uses 5.0) and cross-entropy at `CE_WEIGHT` 1.0;
    conv1/conv2 initialised as `kaiming_uniform_(a=1)` and the attention
    conv as PyTorch's default; BatchNorm momentum 0.1 (PyTorch), eps 1e-5.
    On our zoo: student `stage1, stage2, stage3, embedding`; teacher
    `stage{i}_block{n-1}_add` (the sum before the last block's ReLU; `n`
    blocks per stage, e.g. `stage1_block2_add` for ResNet20; `keras-kd
    inspect` lists them) and `embedding`. The suite row and
    `reviewkd_fmnist.yaml` use exactly these for ResNet20 -> ResNet8 at
    weight 1 with CE 1.

    Differences from mdistiller: sizes and channels are read from the tapped
    layers (mdistiller takes `SHAPES`, `OUT_SHAPES`, `IN_CHANNELS`,
    `OUT_CHANNELS` from its config, set for ResNet32x4 -> ResNet8x4); any
    map sizes work: 28x28 Fashion-MNIST gives 28/14/7-pixel stages (CIFAR:
    32/16/8), and the 14 -> 4 and 7 -> 4 pools use PyTorch's overlapping
    adaptive bins, as `adaptive_avg_pool2d` would; a level's pyramid depends
    on its height only (mdistiller's `l >= h`); the loss is ONE term reading
    every level (`teacher_keys` / `student_keys`) and its metric
    `reviewkd_loss` is the ramped value before the term weight. The authors'
    code (dvlab-research/ReviewKD) has the same ABF and HCL but counts epochs
    from 0 in `min(epoch / 20, 1)` (its first epoch is not distilled) and
    tunes the weight per pair (0.6 ResNet56 -> 20, 1.0 ResNet110 -> 32, 5.0
    ResNet32x4 -> 8x4). Relative to the paper: the warm-up, the pyramid sizes
    and weights of HCL, the teacher's pre-activation maps and the pooled
    level are choices of the code, followed here as mdistiller makes them.

    Args:
        teacher_layer_names: teacher layers, shallow to deep.
        student_layer_names: student layers, shallow to deep, one per teacher layer.
        mid_channels: ABF width (None: `min(512, student's deepest channels)`).
        warmup_epochs: epochs of the linear ramp (0: none).

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = {"stage3": rng.normal(size=(2, 4, 4, 8)), "embedding": rng.normal(size=(2, 8))}
    >>> s = {"stage3": rng.normal(size=(2, 4, 4, 6)), "embedding": rng.normal(size=(2, 6))}
    >>> loss = ReviewKDLoss(teacher_layer_names=["stage3", "embedding"], student_layer_names=["stage3", "embedding"])
    >>> fusion = loss.build_fusion({k: v.shape for k, v in t.items()}, {k: v.shape for k, v in s.items()})
    >>> [abf.fuse for abf in fusion.abfs], fusion.mid_channels
    ([True, False], 6)
    >>> value = loss(t["stage3"], s["stage3"], teacher_outputs=t, student_outputs=s, parts=fusion, epoch=9)
    >>> bool(float(value) > 0)  # half the HCL: epoch 9 of a 20-epoch warm-up
    True
    """

    metric_name = "reviewkd_loss"
    levels_example = "['stage1', 'stage2', 'stage3', 'embedding']"
    parts_builder = "build_fusion"
    parts_noun = "its ABFs"

    def __init__(
        self,
        teacher_layer_names=None,
        student_layer_names=None,
        mid_channels: int | None = None,
        warmup_epochs: int = 20,
        name: str | None = None,
        active_epochs=None,
    ):
        super().__init__(teacher_layer_names, student_layer_names, name=name, active_epochs=active_epochs)
        self.mid_channels = check_count("mid_channels", mid_channels, minimum=1, optional=True)
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs)

    # -- shapes and parts --------------------------------------------------------

    method_label = "ReviewKD"

    def check_level_shape(self, role, name, shape):
        if len(shape) not in (2, 4):
            raise ValueError(
                f"ReviewKD needs (batch, H, W, C) maps or pooled (batch, C) features; the {role}'s "
                f"{name!r} is {describe(shape)}.")
        if any(d is None for d in shape[1:]):
            raise ValueError(f"ReviewKD needs fixed map sizes; the {role}'s {name!r} is {describe(shape)}.")

    def check_shapes(self, teacher_shape, student_shape):
        for role, shape, name in (("teacher", teacher_shape, self.teacher_key),
                                  ("student", student_shape, self.student_key)):
            if len(shape) not in (2, 4):
                raise ValueError(
                    f"ReviewKD needs (batch, H, W, C) maps or pooled (batch, C) features; the {role}'s {name!r} "
                    f"is {describe(shape)}.")

    def default_mid_channels(self, student_shapes) -> int:
        return self.mid_channels or min(MAX_MID_CHANNELS, int(student_shapes[-1][-1]))

    def build_fusion(self, teacher_shapes: dict, student_shapes: dict) -> ReviewKDFusion:
        """The built `ReviewKDFusion` for outputs of these shapes (`{layer name: shape with batch}`)."""
        teachers, students = self._level_shapes(teacher_shapes, student_shapes)
        fusion = ReviewKDFusion([(*_map_size(s), int(s[-1])) for s in teachers], self.default_mid_channels(students))
        fusion.build(students)
        return fusion

    # -- the loss ----------------------------------------------------------------

    def warmup_factor(self, epoch):
        """`min((epoch + 1) / warmup_epochs, 1)` for the 0-based `epoch` (1 without warm-up).

        >>> [round(float(ReviewKDLoss(["a"], ["a"]).warmup_factor(e)), 2) for e in (0, 9, 19, 50)]
        [0.05, 0.5, 1.0, 1.0]
        """
        if not self.warmup_epochs:
            return ops.convert_to_tensor(1.0)
        return ops.minimum((ops.cast(epoch, "float32") + 1.0) / float(self.warmup_epochs), 1.0)

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        if context.parts is None:
            raise ValueError("ReviewKDLoss needs its ABFs: pass parts=loss.build_fusion(...) (distillers do).")
        teachers = self.gather(teacher_output, context.teacher_outputs, self.teacher_layer_names, "teacher")
        students = self.gather(student_output, context.student_outputs, self.student_layer_names, "student")
        self._level_shapes(dict(zip(self.teacher_layer_names, (t.shape for t in teachers), strict=True)),
                           dict(zip(self.student_layer_names, (s.shape for s in students), strict=True)))
        fused = [ops.cast(f, "float32") for f in context.parts(students, training=context.training)]
        return self.warmup_factor(context.epoch) * hcl_loss(fused, teachers)

    def get_config(self) -> dict:
        config = {**super().get_config(), "warmup_epochs": self.warmup_epochs}
        if self.mid_channels is not None:
            config["mid_channels"] = self.mid_channels
        return config
