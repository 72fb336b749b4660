"""Multi-branch networks with a gated native ensemble (ONE).

Lan, Zhu, Gong, "Knowledge Distillation by On-the-Fly Native Ensemble",
NeurIPS 2018 (arXiv 1806.04606). A zoo network is cut after its low-level
layers (default: stem, stage 1 and stage 2), which all branches share; each of
`num_branches` branches is a fresh copy of the remaining high-level layers
(the last stage, global pooling and the classifier). A gate on the shared
features weights the branch logits into the ensemble logits:

```
g   = softmax(relu(BN(W . GAP(h))))        # (batch, num_branches), W: Dense without bias
z_e = sum_k g_k * z_k                       # the "teacher" of every branch
```

Layer names follow `keras_kd.models.multibranch` (`shared_stem`,
`branch{k}_body`, `branch{k}_embedding`, `branch{k}_head`, `branch{k}`,
`ensemble`), so `multibranch.extract_branch` and `num_branches_of` work on
these networks too; the gate is `gate_pool`, `gate_dense`, `gate_bn`,
`gate_relu` and `gate` (the softmax weights). `branch_model` returns one
branch as a plain, standalone model of the zoo architecture (the zoo's
layer names at top level, so it can be tapped and exported like any zoo
model).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from keras_kd.checks import check_count, check_index
from keras_kd.losses.base import LOGITS
from keras_kd.models import zoo
from keras_kd.models.blocks import ZOO_BOUNDARIES, split
from keras_kd.models.layers import batch_norm, relu
from keras_kd.models.multibranch import branch_names, embedding_name, num_branches_of

SHARED = "shared_stem"
GATE = "gate"
ENSEMBLE = "ensemble"
GATE_LAYERS = ("gate_pool", "gate_dense", "gate_bn", "gate_relu", GATE)


@keras.saving.register_keras_serializable(package="keras_kd")
class GatedEnsemble(keras.layers.Layer):
    """`sum_k gate[:, k] * z_k` of inputs `[gate, z_1, ..., z_N]` (gate:
    `(batch, N)` weights, z_k: `(batch, classes)` logits).

    Example:

    >>> import numpy as np
    >>> gate = np.array([[0.25, 0.75]], "float32")
    >>> z1, z2 = np.array([[4.0, 0.0]], "float32"), np.array([[0.0, 4.0]], "float32")
    >>> GatedEnsemble()([gate, z1, z2]).numpy().tolist()
    [[1.0, 3.0]]
    """

    def call(self, inputs):
        gate, *logits = inputs
        stacked = ops.stack(logits, axis=1)  # (batch, N, classes)
        return ops.sum(ops.expand_dims(ops.cast(gate, stacked.dtype), -1) * stacked, axis=1)

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[1])


def _named(block: keras.Model, name: str) -> keras.Model:
    return keras.Model(block.inputs[0], block.outputs[0], name=name)


def native_ensemble(
    arch: str = "resnet8",
    num_branches: int = 3,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    shared_until: str = "stage2",
    name: str | None = None,
) -> keras.Model:
    """The ONE network: shared low-level layers, `num_branches` branches and
    their gated ensemble (the model's output).

    Args:
        arch: a zoo name (`resnet8`, `wrn_16_2`, `cnn`, ...): a Functional
            model with layers `stem`, `stage1` .. `stage3` and `embedding`.
        num_branches: number of branches (>= 2; the paper uses 3).
        input_shape, num_classes: as for `keras_kd.models.get`.
        shared_until: the last shared layer (`stem`, `stage1`, `stage2` or
            `stage3`); the default shares stem + stages 1-2 and gives every
            branch its own last stage, as the paper's CIFAR ResNets.
        name: model name (default `"{arch}_one_x{num_branches}"`).

    Returns:
        A Functional model `image -> ensemble logits`; the branch logits
        (`branch{k}`) and gate weights (`gate`) are named layers.

    Example:

    >>> net = native_ensemble("resnet8", 3, (16, 16, 1), 10)
    >>> net.output_shape, net.get_layer("gate").output.shape
    ((None, 10), (None, 3))
    >>> [layer.name for layer in net.layers if layer.name.startswith("branch1")]
    ['branch1_body', 'branch1_embedding', 'branch1_head', 'branch1']
    """
    num_branches = check_count("num_branches", num_branches, minimum=2)
    if shared_until not in ZOO_BOUNDARIES:
        raise ValueError(f"`shared_until` must be one of {ZOO_BOUNDARIES}, got {shared_until!r}.")
    input_shape = tuple(int(d) for d in input_shape)
    inputs = keras.Input(shape=input_shape, name="image")
    networks = [zoo.get(arch, input_shape, num_classes) for _ in range(num_branches)]
    shared = _named(split(networks[0], (shared_until,))[0], SHARED)(inputs)
    logits = []
    for branch, network in zip(branch_names(num_branches), networks, strict=True):
        _, body, head = split(network, (shared_until, "embedding"))
        features = keras.layers.Identity(name=embedding_name(branch))(_named(body, f"{branch}_body")(shared))
        logits.append(keras.layers.Identity(name=branch)(_named(head, f"{branch}_head")(features)))
    # The gate reads the features the branches read (the paper's "same input").
    gate = layers.GlobalAveragePooling2D(name="gate_pool")(shared)
    gate = layers.Dense(num_branches, use_bias=False, name="gate_dense")(gate)  # a bias would cancel in BN
    gate = relu(name="gate_relu")(batch_norm(name="gate_bn")(gate))
    gate = layers.Softmax(name=GATE, dtype="float32")(gate)
    output = GatedEnsemble(name=ENSEMBLE, dtype="float32")([gate, *logits])
    return keras.Model(inputs, output, name=name or f"{arch}_one_x{num_branches}")


def components(network: keras.Model) -> tuple[keras.Model, list[keras.Model], list[keras.Model]]:
    """`(shared layers, [branch bodies], [branch heads])` of a `native_ensemble` network."""
    names = {layer.name for layer in getattr(network, "layers", [])}
    count = num_branches_of(network) if "branch1" in names else 0
    needed = [SHARED, *GATE_LAYERS, ENSEMBLE]
    needed += [f"{branch}_{part}" for branch in branch_names(count) for part in ("body", "head")]
    missing = [name for name in needed if name not in names]
    if count < 2 or missing:
        raise ValueError(
            f"Model {getattr(network, 'name', network)!r} is not a native-ensemble network "
            f"(needs layers {SHARED!r}, 'branch1' .. 'branchN' with N >= 2, their bodies and heads, "
            f"{', '.join(map(repr, GATE_LAYERS))} and {ENSEMBLE!r}); build it with "
            "keras_kd.models.native_ensemble.native_ensemble()."
        )
    branches = branch_names(count)
    return (
        network.get_layer(SHARED),
        [network.get_layer(f"{b}_body") for b in branches],
        [network.get_layer(f"{b}_head") for b in branches],
    )


def branch_count(network: keras.Model) -> int:
    """The number of branches of a `native_ensemble` network."""
    return len(components(network)[1])


def ensemble_view(network: keras.Model) -> keras.Model:
    """One-pass view returning a dict: `logits` (branch 1), `branch{k}`
    (logits of branch k), `ensemble` (gated ensemble logits) and `gate`
    (the gate's weights), sharing every layer with `network`."""
    count = branch_count(network)
    outputs = {name: network.get_layer(name).output for name in branch_names(count)}
    outputs = {LOGITS: outputs["branch1"], **outputs, ENSEMBLE: network.outputs[0], GATE: network.get_layer(GATE).output}
    return keras.Model(network.inputs[0], outputs, name=f"{network.name}_view")


def _replay(block: keras.Model, x):
    """Calls the layers of the Functional `block` (not copies) on tensor `x`
    and returns its output in the caller's graph: the layers join that graph
    directly instead of through a nested model."""
    last = block.layers[-1]  # a single-output Functional model lists its output layer last
    produced = []

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if layer is last:
            produced.append(outputs)
        return outputs

    keras.models.clone_model(block, input_tensors=x, clone_function=lambda layer: layer, call_function=call)
    if len(produced) != 1:
        raise ValueError(f"Cannot replay block {block.name!r}: its output layer ran {len(produced)} times.")
    return produced[0]


def branch_model(network: keras.Model, index: int, name: str | None = None) -> keras.Model:
    """Branch `index` (1-based) as a plain, standalone `image -> logits` model
    of the zoo architecture: the shared layers, then the branch's own layers,
    with the zoo's layer names (`stem`, `stage1` .. `stage3`, `embedding`,
    `logits`) at top level and a COPY of the current weights (a model whose
    layers were shared could not be tapped by layer name).

    Example:

    >>> import numpy as np
    >>> net = native_ensemble("resnet8", 2, (16, 16, 1), 10)
    >>> single = branch_model(net, 2)
    >>> [layer.name for layer in single.layers] == [layer.name for layer in zoo.get("resnet8", (16, 16, 1)).layers]
    True
    >>> x = np.ones((1, 16, 16, 1), "float32")
    >>> bool(np.allclose(single(x), ensemble_view(net)(x)["branch2"], atol=1e-5))
    True
    """
    shared, bodies, heads = components(network)
    index = check_index("index", index, len(bodies), of=f"the branches of {network.name!r}")
    inputs = keras.Input(shape=tuple(network.inputs[0].shape[1:]), name="image")
    x = inputs
    for block in (shared, bodies[index - 1], heads[index - 1]):
        x = _replay(block, x)
    view = keras.Model(inputs, x)
    copy = keras.models.clone_model(view)  # fresh layers of the same configs and names
    copy.set_weights(view.get_weights())
    copy.name = name or f"{network.name}_branch{index}"
    return copy
