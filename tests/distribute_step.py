"""Run by test_distribute.py in a fresh process: one training step on 2
logical CPUs under MirroredStrategy must equal the same step on one device,
for every trainer whose terms are batch means (Distiller + KD, AT and a hint
regressor; VID with its learned variances), Supervised, EnsembleDistiller,
OnlineEnsembleDistiller, and for
batches that carry cached teacher outputs (Distiller, EnsembleDistiller);
AB + FT parts across their stage boundary stay identical on both replicas.
BatchNorm-free models, so per-replica batch statistics cannot differ. Then a
NaN seen by ONE replica only must stop the step on BOTH (the checks are
all-reduced): no weight, slot or iteration count changes anywhere."""

import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_kd import (  # noqa: E402
    Distiller,
    EnsembleDistiller,
    OnlineEnsembleDistiller,
    Supervised,
    losses,
)
from keras_kd.data.cache import output_key  # noqa: E402
from keras_kd.distillers.base import LabelRangeError, NonFiniteLossError  # noqa: E402
from keras_kd.models.multibranch import BranchEnsemble  # noqa: E402
from keras_kd.models.online import online_ensemble  # noqa: E402


def bn_free(width, name):
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="stage1")(inputs)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name="stage2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


def bn_free_branches(count):
    """A multi-branch student with the layer names EnsembleDistiller reads."""
    inputs = keras.Input((12, 12, 1))
    stem = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="shared_stem")(inputs)
    logits = []
    for i in range(1, count + 1):
        x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name=f"branch{i}_conv")(stem)
        x = keras.layers.GlobalAveragePooling2D(name=f"branch{i}_embedding")(x)
        logits.append(keras.layers.Dense(10, name=f"branch{i}")(x))
    return keras.Model(inputs, BranchEnsemble(name="ensemble")(logits), name="student")


def bn_free_scaled(width_ratio):
    """The layer names online_ensemble reads; stage widths scale with the ratio."""
    width = max(1, int(8 * width_ratio))
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    for stage, stride in (("stage1", 1), ("stage2", 2), ("stage3", 1)):
        x = keras.layers.Conv2D(width, 3, strides=stride, padding="same", activation="relu", name=stage)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def make_distiller():
    student = bn_free(4, "student")
    distiller = Distiller(
        teacher=bn_free(8, "teacher"), student=student,
        distillation_losses=[
            losses.SoftTargetLoss(3.0),
            losses.AttentionTransferLoss(teacher_layer_name="stage2", student_layer_name="stage2"),
            losses.HintLoss(teacher_layer_name="stage1", student_layer_name="stage1", regressor_batchnorm=False),
        ],
        distillation_loss_weights=[0.7, 50.0, 1.0],
        student_loss_weight=0.3,
    )
    return distiller, student


def make_vid_distiller():
    """A loss with learned state (VID's regressor and per-channel variances)."""
    student = bn_free(4, "student")
    distiller = Distiller(
        teacher=bn_free(8, "teacher"), student=student,
        distillation_losses=[losses.VIDLoss(teacher_layer_name="stage2", student_layer_name="stage2")],
        distillation_loss_weights=[1.0], student_loss_weight=1.0,
    )
    return distiller, student


def make_supervised():
    student = bn_free(4, "student")
    return Supervised(model=student), student


def make_ensemble():
    student = bn_free_branches(2)
    teachers = [bn_free(8, "teacher_a"), bn_free(4, "teacher_b")]  # 8 != 4: one Dense adapter
    return EnsembleDistiller(teachers=teachers, student=student, temperature=[2.0, 3.0], alpha=0.5, beta=2.0), student


def make_online():
    network = online_ensemble(bn_free_scaled, (12, 12, 1), 10, num_students=3)
    return OnlineEnsembleDistiller(network=network), network


FACTORIES = (make_distiller, make_vid_distiller, make_supervised, make_ensemble, make_online)


def cached_columns(distiller, images) -> dict:
    """What a teacher-output cache puts in each batch: every frozen teacher's outputs."""
    columns = {}
    for index, view in enumerate(distiller.frozen_teachers(), start=1):
        outputs = view(images, training=False)
        outputs = outputs if isinstance(outputs, dict) else {"logits": outputs}
        columns.update({output_key(index, name): np.asarray(value) for name, value in outputs.items()})
    return columns


def one_step(strategy, x, y, factory, cached=False):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        distiller, student = factory()
        distiller.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    initial = [w.numpy() for w in student.weights]
    features = {"image": x, **cached_columns(distiller, x)} if cached else x
    ds = tf.data.Dataset.from_tensor_slices((features, y)).batch(16)
    logs = distiller.fit(ds, epochs=1, verbose=0).history
    moved = max(float(np.abs(w.numpy() - i).max()) for w, i in zip(student.weights, initial, strict=True))
    assert moved > 1e-4, "the step must change the weights for the comparison to mean anything"
    trained = [w.numpy() for w in distiller.trainable_variables]  # adapters included
    return trained, logs


rng = np.random.default_rng(0)
x = rng.normal(size=(32, 12, 12, 1)).astype("float32")
y = (np.arange(32) % 10).astype("int32")
mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
ok = True
for factory in FACTORIES:
    single, single_logs = one_step(tf.distribute.get_strategy(), x, y, factory)
    mirrored, mirrored_logs = one_step(mirrored_strategy, x, y, factory)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored, strict=True))
    loss_gap = abs(single_logs["loss"][0] - mirrored_logs["loss"][0])
    print(f"{factory.__name__}: max weight difference {worst:.3g}, loss difference {loss_gap:.3g}")
    ok = ok and worst < 1e-5 and loss_gap < 1e-4

# Cached teacher outputs in the batches (the teacher-output cache): the
# mirrored step on cached batches equals the single-device online step.
for factory in (make_distiller, make_ensemble):
    single, single_logs = one_step(tf.distribute.get_strategy(), x, y, factory)
    mirrored, mirrored_logs = one_step(mirrored_strategy, x, y, factory, cached=True)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored, strict=True))
    loss_gap = abs(single_logs["loss"][0] - mirrored_logs["loss"][0])
    print(f"{factory.__name__} cached: max weight difference {worst:.3g}, loss difference {loss_gap:.3g}")
    ok = ok and worst < 1e-5 and loss_gap < 1e-4


def crd_memory_step():
    """CRD's memory banks under MirroredStrategy: each replica sees half the
    batch, yet after one step BOTH copies of each bank hold the momentum update
    of ALL the batch's rows (gathered across replicas) and nothing else changed."""
    with mirrored_strategy.scope():
        keras.utils.set_random_seed(0)
        distiller = Distiller(
            teacher=bn_free(8, "teacher"), student=bn_free(4, "student"), student_loss_weight=1.0,
            distillation_losses=[losses.CRDLoss(num_samples=40, num_negatives=16, feature_dim=8,
                                                teacher_layer_name="embedding", student_layer_name="embedding")],
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=False)  # lr 0: only the banks move
    part = distiller.loss_parts["crd_loss"]
    index = np.arange(16, dtype="int64") * 2  # rows 0, 2, ..., 30
    before = {name: np.asarray(getattr(part, name)).copy() for name in ("student_memory", "teacher_memory")}
    teacher_features = distiller.teacher_view(x[:16], training=False)["embedding"]
    student_features = distiller.student_view(x[:16], training=False)["embedding"]
    v_t, v_s = (np.asarray(v) for v in part.embed(teacher_features, student_features))
    ds = tf.data.Dataset.from_tensor_slices(({"image": x[:16], "index": index}, y[:16])).batch(16)
    distiller.fit(ds, epochs=1, verbose=0)
    ok = True
    for name, v in (("student_memory", v_s), ("teacher_memory", v_t)):
        copies = [np.asarray(c) for c in getattr(part, name).value.values]
        expected = before[name].copy()
        rows = 0.5 * expected[index] + 0.5 * v
        expected[index] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        worst = max(float(np.abs(c - expected).max()) for c in copies)
        print(f"crd {name}: {len(copies)} copies, max difference from the gathered update {worst:.3g}")
        ok = ok and len(copies) == 2 and worst < 1e-5
    expected_labels = np.full(40, -1)
    expected_labels[index] = y[:16]
    label_copies = [np.asarray(c) for c in part.memory_labels.value.values]
    same = all(np.array_equal(c, expected_labels) for c in label_copies)
    print(f"crd memory_labels: {len(label_copies)} copies, equal to the gathered labels: {same}")
    return ok and same


ok = crd_memory_step() and ok


def staged_parts_step():
    """AB's connectors and FT's paraphraser/translator (with the encoder copy
    frozen at the end of the paraphraser stage) under MirroredStrategy: two
    epochs crossing the stage boundary leave every variable of the distiller
    identical on both replicas, and the stages switch (FT's metric changes meaning)."""
    with mirrored_strategy.scope():
        keras.utils.set_random_seed(0)
        distiller = Distiller(
            teacher=bn_free(8, "teacher"), student=bn_free(4, "student"), student_loss_weight=1.0,
            distillation_losses=[
                losses.get("ab", teacher_layer_names=["stage1", "stage2"], student_layer_names=["stage1", "stage2"],
                           always_connect=True, active_epochs=(0, 1)),
                losses.get("ft", teacher_layer_name="stage2", student_layer_name="stage2", paraphraser_epochs=1),
            ],
            distillation_loss_weights=[1.0, 1.0],
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    history = distiller.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=2, verbose=0).history
    # Plain BatchNormalization keeps per-replica moving statistics (PLATFORM_NOTES); everything
    # else (weights, optimizer-free state such as FT's frozen encoder copy) must agree exactly.
    checked = [v for v in distiller.variables if not v.path.endswith(("moving_mean", "moving_variance"))]
    worst, count = 0.0, 0
    for variable in checked:
        copies = [np.asarray(c) for c in mirrored_strategy.experimental_local_results(variable.value)]
        count += len(copies) == 2
        worst = max([worst] + [float(np.abs(c - copies[0]).max()) for c in copies[1:]])
    finite = all(np.isfinite(v).all() for v in history.values())
    frozen = [v for v in checked if "frozen_enc" in v.path]
    finite = finite and len(frozen) > 0 and all(np.abs(np.asarray(v)).max() > 0 for v in frozen)  # copied
    print(f"staged parts: {count} of {len(checked)} variables on 2 replicas, max difference between replicas {worst:.3g}; finite {finite}; "
          f"ab_loss by epoch {[round(v, 4) for v in history['ab_loss']]}")
    return (count == len(checked) and worst == 0.0 and finite and history["ab_loss"][1] == 0.0
            and history["ab_loss"][0] > 0)


ok = staged_parts_step() and ok


def linear(name):
    # No ReLU: oneDNN's fused conv+relu maps NaN to 0, which would hide the NaN.
    return keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Flatten(), keras.layers.Dense(10)], name=name)


def refused_step_on_one_replica(strategy, images, labels, error_type):
    """A bad batch whose bad half goes to the first replica only: the step is
    refused on both, nothing changes, and fit raises `error_type`."""
    with strategy.scope():
        keras.utils.set_random_seed(0)
        distiller = Distiller(teacher=linear("teacher"), student=linear("student"))
        distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    good = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(16)
    distiller.fit(good, epochs=1, verbose=0)  # momentum is non-zero from here
    state = [*distiller.trainable_variables, *distiller.optimizer.variables]
    before = [v.numpy() for v in state]
    try:
        distiller.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(16), epochs=1, verbose=0)
    except error_type as error:
        message = str(error)
    else:
        raise AssertionError(f"the bad batch was not refused ({error_type.__name__})")
    unchanged = all(np.array_equal(b, v.numpy()) for b, v in zip(before, state, strict=True))
    iterations = int(distiller.optimizer.iterations.numpy())
    print(f"refused step: {message}; unchanged {unchanged}; iterations {iterations}")
    return unchanged and "at step 1" in message and iterations == 1


nan_images = x[:16].copy()
nan_images[:4] = np.nan
ok = refused_step_on_one_replica(mirrored_strategy, nan_images, y[:16], NonFiniteLossError) and ok
bad_labels = y[:16].copy()
bad_labels[2] = 17
ok = refused_step_on_one_replica(mirrored_strategy, x[:16], bad_labels, LabelRangeError) and ok
sys.exit(0 if ok else 1)
