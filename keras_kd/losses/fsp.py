"""Flow of solution procedure (FSP) matrices (Yim et al., CVPR 2017)."""

from __future__ import annotations

from keras import ops

from keras_kd.losses.attention import _pool_to, check_poolable_maps
from keras_kd.losses.base import DistillationLoss, LossContext, describe
from keras_kd.registry import PRETRAIN_EPOCHS, SuiteRow, register_loss

#: The zoo layer pairs of the suite row: consecutive taps, as RepDistiller's feature list minus the embedding.
ZOO_PAIRS = (("stem", "stage1"), ("stage1", "stage2"), ("stage2", "stage3"))


def _pair_size(role: str, names: tuple[str, str], first_shape, second_shape) -> tuple[int, int]:
    """The common (H, W) of one network's two maps; raises unless both are
    (batch, H, W, C) maps and the larger pools evenly to the smaller."""
    pair = f"{role} {names[0]!r} {describe(first_shape)} and {names[1]!r} {describe(second_shape)}"
    return check_poolable_maps("FSP", first_shape, second_shape, pair,
                               requirement="two (batch, H, W, C) feature maps of each network")


def fsp_matrix(first, second):
    """`G[b, i, j] = sum_{h, w} F1[b, h, w, i] * F2[b, h, w, j] / (H * W)`.

    The Gram matrix between the channels of two (batch, H, W, C) maps of the
    same network, shape (batch, C1, C2); the larger map is average-pooled to
    the smaller one's H x W first.

    >>> import numpy as np
    >>> first, second = np.ones((1, 4, 4, 2), "float32"), np.full((1, 2, 2, 1), 3.0, "float32")
    >>> np.asarray(fsp_matrix(first, second)).tolist()  # first pooled to 2x2; (1 * 3) averaged over 4 positions
    [[[3.0], [3.0]]]
    """
    size = _pair_size("network", ("first", "second"), first.shape, second.shape)
    first, second = _pool_to(first, size), _pool_to(second, size)
    positions = size[0] * size[1]
    batch = ops.shape(first)[0]
    first = ops.reshape(first, (batch, positions, first.shape[-1]))
    second = ops.reshape(second, (batch, positions, second.shape[-1]))
    return ops.matmul(ops.transpose(first, (0, 2, 1)), second) / float(positions)


@register_loss(
    "fsp",
    SuiteRow(
        "FSP (stem-stage1, stage1-2, stage2-3, as an init stage)",
        tuple({"weight": 1.0, "teacher_first_layer_name": a, "teacher_layer_name": b,
               "student_first_layer_name": a, "student_layer_name": b, "active_epochs": [0, PRETRAIN_EPOCHS]}
              for a, b in ZOO_PAIRS),
        student_loss_weight=1.0, order=13, pretrain_fraction=0.25,
    ),
)
class FSPLoss(DistillationLoss):
    """`mean((G(F1_t, F2_t) - G(F1_s, F2_s))^2)`, G = FSP matrix (`fsp_matrix`).

    Yim, Joo, Bae, Kim, "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", CVPR 2017.
    The "flow of solution procedure" between two layers of one network is
    the Gram matrix of their channels, `G[i, j] = sum_{h, w} F1[h, w, i] *
    F2[h, w, j] / (H * W)`; the student learns the teacher's flow.

    Each term reads TWO layers of each network: the first map `F1`
    (`teacher_first_layer_name` / `student_first_layer_name`) and the second
    map `F2` (`teacher_layer_name` / `student_layer_name`, which names the
    metric when several FSP terms are used). All four names are required.
    Within each network the larger of the two maps is average-pooled to the
    smaller one's size (so consecutive stages can be paired), and the
    teacher's and student's matrices must have the same shape, i.e. the
    same channel counts at both layers (as RepDistiller requires): another
    pairing is refused at construction with every shape named. Spatial sizes
    may differ between the two networks.

    Conventions of the CRD benchmark (RepDistiller), which differ from the
    paper: the squared difference is averaged over the batch AND the matrix
    entries (the paper sums the entries, `||G_t - G_s||_2^2`, and averages
    over the batch: a rescaling of the weight); the pairs are consecutive
    stage outputs (stem-stage1, stage1-stage2, stage2-stage3), the larger
    pooled to the smaller (the paper takes both maps of a pair from within
    one group of residual blocks, where they have the same size); the pairs'
    terms are summed with equal weights (the paper's equal `lambda_i`).

    Stages, as the paper and RepDistiller: FSP is an initialisation stage
    (RepDistiller, `helper/pretrain.py`: `init_epochs = 30` epochs of the
    summed pair terms, weight 1, on the student's feature layers, at the
    main lr 0.05), then the student trains on cross-entropy alone (its
    classification stage adds no FSP term, `loss_kd = 0`). Here both stages
    are one `fit`: each term's `active_epochs=(0, 30)` and the distiller's
    `student_loss_start_epoch=30` (`fsp_fmnist.yaml`; after the stage the
    distiller runs no FSP term and no teacher pass; the results suite's
    row puts a stage of a quarter of its epochs before them,
    `SuiteRow.pretrain_fraction`: 30 + 120 in the standard suite). As for AB,
    one cosine schedule and one optimizer span both stages (RepDistiller
    restarts lr and momentum for 240 epochs), and the classifier, idle in
    the stage, still decays if weight decay is on. The term also works
    jointly with cross-entropy (no `active_epochs`, CE from epoch 0): no
    published weight exists for that use.

    Example:

    >>> import numpy as np
    >>> t1, t2 = np.random.rand(2, 8, 8, 4), np.random.rand(2, 4, 4, 6)
    >>> loss = FSPLoss(teacher_first_layer_name="stage1", teacher_layer_name="stage2",
    ...                student_first_layer_name="stage1", student_layer_name="stage2")
    >>> value = loss(t2, t2, teacher_outputs={"stage1": t1}, student_outputs={"stage1": t1})
    >>> float(value)
    0.0
    """

    metric_name = "fsp_loss"

    def __init__(
        self,
        teacher_first_layer_name: str | None = None,
        student_first_layer_name: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        names = {
            "teacher_first_layer_name": teacher_first_layer_name,
            "teacher_layer_name": self.teacher_layer_name,
            "student_first_layer_name": student_first_layer_name,
            "student_layer_name": self.student_layer_name,
        }
        missing = [key for key, value in names.items() if value is None]
        if missing:
            raise ValueError(
                "FSPLoss compares two layers of each network: give teacher_first_layer_name, teacher_layer_name, "
                f"student_first_layer_name and student_layer_name (e.g. 'stage1' and 'stage2'); missing "
                f"{', '.join(missing)}."
            )
        for key in ("teacher_first_layer_name", "student_first_layer_name"):
            if not isinstance(names[key], str) or not names[key]:
                raise ValueError(f"`{key}` must be a layer name, got {names[key]!r}.")
        self.teacher_first_layer_name = teacher_first_layer_name
        self.student_first_layer_name = student_first_layer_name

    @property
    def teacher_keys(self) -> tuple[str, ...]:
        return (self.teacher_key, self.teacher_first_layer_name)

    @property
    def student_keys(self) -> tuple[str, ...]:
        return (self.student_key, self.student_first_layer_name)

    def check_shapes(self, teacher_shape, student_shape):
        if len(teacher_shape) != 4 or len(student_shape) != 4:
            raise ValueError(
                f"FSP needs (batch, H, W, C) feature maps; got teacher {describe(teacher_shape)} and student "
                f"{describe(student_shape)}."
            )

    def check_tapped_shapes(self, teacher_shapes, student_shapes):
        found = []
        for role, shapes, first, second in (
            ("teacher", teacher_shapes, self.teacher_first_layer_name, self.teacher_key),
            ("student", student_shapes, self.student_first_layer_name, self.student_key),
        ):
            _pair_size(role, (first, second), shapes[first], shapes[second])
            matrix = (int(shapes[first][-1]), int(shapes[second][-1]))
            found.append((f"{role} {first!r} {describe(shapes[first])} x {second!r} {describe(shapes[second])} "
                          f"gives {matrix[0]}x{matrix[1]}", matrix))
        (teacher, teacher_matrix), (student, student_matrix) = found
        if teacher_matrix != student_matrix:
            raise ValueError(
                f"FSP compares (C1 x C2) matrices of the same shape, but the {teacher} and the {student}: both "
                "layers need the same channel counts in the two networks."
            )

    def _first_map(self, outputs: dict, key: str, role: str):
        if key not in outputs:
            raise ValueError(
                f"FSPLoss reads the {role}'s first map {key!r} from the context: pass "
                f"{role}_outputs={{{key!r}: ...}} (distillers do)."
            )
        return ops.cast(outputs[key], "float32")

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        first_t = self._first_map(context.teacher_outputs, self.teacher_first_layer_name, "teacher")
        first_s = self._first_map(context.student_outputs, self.student_first_layer_name, "student")
        teacher_shapes = {self.teacher_first_layer_name: first_t.shape, self.teacher_key: teacher_output.shape}
        student_shapes = {self.student_first_layer_name: first_s.shape, self.student_key: student_output.shape}
        self.check_shapes(teacher_output.shape, student_output.shape)
        self.check_tapped_shapes(teacher_shapes, student_shapes)
        return ops.mean(ops.square(fsp_matrix(first_t, teacher_output) - fsp_matrix(first_s, student_output)))

    def get_config(self) -> dict:
        return {**super().get_config(), "teacher_first_layer_name": self.teacher_first_layer_name,
                "student_first_layer_name": self.student_first_layer_name}
