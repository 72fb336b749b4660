"""Online ensembles of students of decreasing width sharing one stem (OEMC).

Walawalkar, Shen, Savvides, "Online Ensemble Model Compression using
Knowledge Distillation", ECCV 2020 (arXiv 2011.07449). One network holds a
shared base block (the zoo stem) feeding `S` branches: branch 1 is the
full-width network (the "pseudo teacher"), branch `j` has every stage layer
narrowed to `floor(C * ratio_j)` channels, with `ratio_j = (S - j + 1) / S`
by default. The network's output is the ensemble: the mean of the students'
logits. `extract_student` cuts out one student (base + its branch) as a
standalone model sharing the same layers.

Layer names inside the ensemble network: `base` (input -> stem),
`branch1` .. `branchS` (stem -> `[stage1, stage2, stage3, logits]`) and
`ensemble` (an `Average` of the branch logits).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fractions import Fraction

import keras

from keras_kd.checks import check_count, check_index
from keras_kd.models.layers import scale_channels
from keras_kd.models.zoo import get as zoo_get

#: Layers every branch network needs (zoo layer names).
STAGES = ("stage1", "stage2", "stage3")
REQUIRED_LAYERS = ("stem", *STAGES, "logits")
BASE = "base"
ENSEMBLE = "ensemble"
_BRANCH = re.compile(r"^branch(\d+)$")

Ratio = int | float | Fraction


def default_ratios(num_students: int) -> tuple[Fraction, ...]:
    """`(S - j) / S` for `j = 0 .. S-1` as exact fractions.

    Example:

    >>> [str(r) for r in default_ratios(4)]
    ['1', '3/4', '1/2', '1/4']
    """
    num_students = check_num_students(num_students)
    return tuple(Fraction(num_students - j, num_students) for j in range(num_students))


def check_num_students(num_students) -> int:
    """`num_students` as an int (numpy integers accepted), or a clear error unless it is at least 2."""
    try:
        return check_count("num_students", num_students, minimum=2)  # TypeError: not an integer
    except ValueError:
        raise ValueError(
            f"An online ensemble needs `num_students` >= 2 (a pseudo teacher and at least one "
            f"smaller student), got {num_students}."
        ) from None


def check_ratios(width_ratios: Sequence[Ratio]) -> tuple[Ratio, ...]:
    """Width ratios must start at 1, lie in (0, 1] and strictly decrease."""
    ratios = tuple(width_ratios)
    check_num_students(len(ratios))
    for ratio in ratios:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float, Fraction)):
            raise TypeError(f"Width ratios must be int, float or fractions.Fraction, got {ratio!r}.")
        if not 0 < ratio <= 1:
            raise ValueError(f"Width ratios must lie in (0, 1], got {ratio!r} in {list(ratios)}.")
    if ratios[0] != 1:
        raise ValueError(
            f"The first width ratio (the full-width pseudo teacher) must be 1, got {ratios[0]!r}."
        )
    if any(b >= a for a, b in zip(ratios, ratios[1:], strict=False)):
        raise ValueError(f"Width ratios must strictly decrease, got {list(ratios)}.")
    return ratios


def stage_widths(channels: Sequence[int], width_ratios: Sequence[Ratio]) -> list[list[int]]:
    """Per-student channel counts `max(1, floor(C * ratio))` of each stage.

    Example:

    >>> stage_widths((16, 32, 64), default_ratios(5))
    [[16, 32, 64], [12, 25, 51], [9, 19, 38], [6, 12, 25], [3, 6, 12]]
    """
    return [[scale_channels(c, r) for c in channels] for r in check_ratios(width_ratios)]


def _branch(model: keras.Model, index: int) -> keras.Model:
    names = {layer.name for layer in model.layers}
    missing = [name for name in REQUIRED_LAYERS if name not in names]
    if missing:
        raise ValueError(
            f"Model {model.name!r} cannot be split into an online-ensemble branch: it has no layer "
            f"named {', '.join(map(repr, missing))}. Needed: {', '.join(REQUIRED_LAYERS)} "
            "(every keras_kd zoo model has them)."
        )
    if len(model.outputs) != 1 or model.get_layer("logits").output is not model.outputs[0]:
        raise ValueError(f"Model {model.name!r} must have the single output `logits`.")
    stem = model.get_layer("stem").output
    outputs = [model.get_layer(name).output for name in STAGES] + [model.outputs[0]]
    return keras.Model(stem, outputs, name=f"branch{index}")


def online_ensemble(
    arch: str | Callable[[Ratio], keras.Model] = "resnet8",
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    num_students: int | None = None,
    width_ratios: Sequence[Ratio] | None = None,
    name: str = "online_ensemble",
) -> keras.Model:
    """Builds the OEMC network: shared stem, `S` branches, ensemble output.

    Args:
        arch: a zoo name (`resnet8`, `wrn_16_2`, `cnn`, ...) or a callable
            `arch(width_ratio) -> keras.Model` returning a Functional model
            with layers named `stem`, `stage1`, `stage2`, `stage3` and output
            layer `logits`, whose stage widths scale with `width_ratio` and
            whose stem does not.
        input_shape, num_classes: as for `keras_kd.models.get`.
        num_students: `S` >= 2 (default 5, or `len(width_ratios)`).
        width_ratios: per-student width ratios (int, float or
            `fractions.Fraction`), first 1, strictly decreasing, in (0, 1];
            default `Fraction(S - j, S)`. Student `j` gets
            `max(1, floor(C * ratio))` channels in every stage layer (exact
            for Fractions, floored float product for floats).
        name: name of the returned model.

    Returns:
        A Functional model `image -> ensemble logits` (mean of the students'
        logits) with layers `base`, `branch1` .. `branchS`, `ensemble`.

    Example:

    >>> net = online_ensemble("resnet8", (16, 16, 1), 10, num_students=3)
    >>> [layer.name for layer in net.layers]
    ['image', 'base', 'branch1', 'branch2', 'branch3', 'ensemble']
    >>> [net.get_layer(f"branch{j}").output[2].shape[-1] for j in (1, 2, 3)]
    [64, 42, 21]
    >>> extract_student(net, 3).output_shape
    (None, 10)
    """
    if width_ratios is None:
        ratios = default_ratios(5 if num_students is None else num_students)
    else:
        ratios = check_ratios(width_ratios)
        if num_students is not None and num_students != len(ratios):
            raise ValueError(
                f"`num_students`={num_students} disagrees with the {len(ratios)} width ratios given."
            )
    if isinstance(arch, str):
        input_shape = tuple(int(d) for d in input_shape)

        def build(ratio):
            return zoo_get(arch, input_shape, num_classes, width_ratio=ratio)

    elif callable(arch):
        build = arch
    else:
        raise TypeError(f"`arch` must be a zoo model name or a callable(width_ratio), got {arch!r}.")
    networks = [build(ratio) for ratio in ratios]
    branches = [_branch(net, j) for j, net in enumerate(networks, start=1)]
    full = networks[0]
    stem_shape = tuple(full.get_layer("stem").output.shape)
    for j, branch in enumerate(branches[1:], start=2):
        if tuple(branch.inputs[0].shape) != stem_shape:
            raise ValueError(
                f"Student {j}'s stem output {tuple(branch.inputs[0].shape)} differs from the pseudo "
                f"teacher's {stem_shape}: the width ratio must not change the shared stem."
            )
    base = keras.Model(full.inputs[0], full.get_layer("stem").output, name=BASE)
    inputs = keras.Input(shape=tuple(full.inputs[0].shape[1:]), name="image")
    stem = base(inputs)
    logits = [branch(stem)[-1] for branch in branches]
    ensemble = keras.layers.Average(name=ENSEMBLE, dtype="float32")(logits)
    return keras.Model(inputs, ensemble, name=name)


def _network(model) -> keras.Model:
    from keras_kd.distillers.base import BaseDistiller

    return model.student if isinstance(model, BaseDistiller) else model


def components(network: keras.Model) -> tuple[keras.Model, list[keras.Model], keras.layers.Layer]:
    """`(base, [branch1, .., branchS], ensemble_layer)` of an `online_ensemble` network."""
    network = _network(network)
    names = {layer.name: layer for layer in network.layers}
    numbers = sorted(int(m.group(1)) for m in map(_BRANCH.match, names) if m)
    if BASE not in names or ENSEMBLE not in names or len(numbers) < 2 or numbers != list(
        range(1, len(numbers) + 1)
    ):
        raise ValueError(
            f"Model {network.name!r} is not an online ensemble: expected layers 'base', "
            "'branch1' .. 'branchS' (S >= 2) and 'ensemble'; build it with "
            "keras_kd.models.online.online_ensemble."
        )
    return names[BASE], [names[f"branch{j}"] for j in numbers], names[ENSEMBLE]


def student_count(network: keras.Model) -> int:
    """The number of students `S` of an online ensemble (or its distiller)."""
    return len(components(network)[1])


def extract_student(network, index: int, name: str | None = None) -> keras.Model:
    """Standalone model `image -> logits` of student `index` (1 = pseudo teacher .. S).

    The model is the shared base followed by the student's branch; it shares
    their layers (and weights) with the ensemble, so its outputs equal the
    student's logits inside the ensemble. `network` is an `online_ensemble`
    model or an `OnlineEnsembleDistiller`. Save it (`.keras`) or export it
    (`keras_kd.export.export_tflite`) on its own.
    """
    base, branches, _ = components(network)
    index = check_index("index", index, len(branches), of=f"the students of {network.name!r}; 1 is the pseudo teacher")
    inputs = keras.Input(shape=tuple(base.inputs[0].shape[1:]), name="image")
    logits = branches[index - 1](base(inputs))[-1]
    return keras.Model(inputs, logits, name=name or f"student{index}")


def ensemble_view(network: keras.Model) -> keras.Model:
    """One-pass view of an online ensemble returning a dict: `logits` (the
    ensemble), `student{j}` (logits) and `student{j}_stage{b}` (stage maps),
    sharing every layer with `network`."""
    base, branches, average = components(network)
    inputs = keras.Input(shape=tuple(base.inputs[0].shape[1:]), name="image")
    stem = base(inputs)
    outputs = {}
    for j, branch in enumerate(branches, start=1):
        *maps, logits = branch(stem)
        outputs[f"student{j}"] = logits
        for stage, tensor in zip(STAGES, maps, strict=True):
            outputs[f"student{j}_{stage}"] = tensor
    outputs["logits"] = average([outputs[f"student{j}"] for j in range(1, len(branches) + 1)])
    return keras.Model(inputs, outputs, name=f"{_network(network).name}_view")
