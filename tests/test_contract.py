"""The refactored contract: keyword-only trainers, logits read before a final
softmax, dead terms refused at construction, value-based safety checks (XLA
included), the loss context (labels, progress, trainable parts)."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_kd
from keras_kd import Distiller, EnsembleDistiller, OnlineEnsembleDistiller, SFTNTrainer, Supervised, losses
from keras_kd.distillers.base import LabelRangeError, NonFiniteLossError, TrainingError
from keras_kd.losses import AttentionTransferLoss, DistillationLoss, HintLoss, LossContext, SoftTargetLoss
from keras_kd.models.native_ensemble import native_ensemble

from conftest import SubclassedNet, np_cross_entropy, np_log_softmax, np_soft_target, tiny_model

# -- 1. keyword-only trainers -------------------------------------------------------


@pytest.mark.parametrize(
    "make,keywords",
    [
        (lambda: Distiller(tiny_model(name="t"), tiny_model(name="s")), "Distiller(teacher=..., student=...)"),
        (lambda: EnsembleDistiller([tiny_model(name="t")], tiny_model(name="s")),
         "EnsembleDistiller(teachers=[...], student=...)"),
        (lambda: SFTNTrainer(tiny_model(name="t"), tiny_model(name="s")), "SFTNTrainer(teacher=..., student=...)"),
        (lambda: OnlineEnsembleDistiller("resnet8"), "OnlineEnsembleDistiller(network=...)"),
        (lambda: Supervised(tiny_model(name="m")), "Supervised(model=...)"),
    ],
    ids=["Distiller", "EnsembleDistiller", "SFTNTrainer", "OnlineEnsembleDistiller", "Supervised"],
)
def test_positional_models_are_refused_naming_the_keywords(make, keywords):
    with pytest.raises(TypeError, match=re.escape(keywords) + ".*positional"):
        make()


def test_teacher_outputs_reach_the_losses_without_gradient(batch):
    x, _ = batch
    teacher = tiny_model(width=8, name="teacher")
    distiller = Distiller(teacher=teacher, student=tiny_model(name="student"))
    watched = [v.value for v in teacher.weights if "kernel" in v.path]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(watched)
        stopped = ops.sum(distiller.teacher_pass(x)[0]["logits"])
        raw = ops.sum(distiller.teacher_view(x, training=False))
    assert all(g is None for g in tape.gradient(stopped, watched))
    assert all(g is not None for g in tape.gradient(raw, watched))  # the check above means something


# -- 2. softmax outputs ------------------------------------------------------------


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def test_logits_are_read_before_a_final_softmax():
    teacher = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=10, include_preprocessing=False
    )
    assert teacher.layers[-1].name == "predictions"  # softmax in its own Activation layer
    student = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax", name="probs")],
        name="softmax_student",
    )
    distiller = Distiller(
        teacher=teacher, student=student, distillation_losses=[SoftTargetLoss(4.0)],
        distillation_loss_weights=[0.9], student_loss_weight=0.1,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    y = np.array([0, 1, 2, 3], "int32")
    logs = distiller.evaluate(x, y, batch_size=4, return_dict=True, verbose=0)

    # Pre-softmax values, independently: the student's Dense by hand; the
    # teacher's from log-probabilities (softmax(log p / T) == softmax(z / T)).
    kernel, bias = (np.asarray(w, np.float64) for w in student.get_layer("probs").weights)
    z_s = x.reshape(4, -1).astype(np.float64) @ kernel + bias
    p_t = np.asarray(teacher(x, training=False), np.float64)
    np.testing.assert_allclose(np.asarray(student(x), np.float64), np_softmax(z_s), rtol=1e-4, atol=1e-6)
    kd = np_soft_target(np.log(p_t), z_s, 4.0)
    ce = np_cross_entropy(y, z_s)
    np.testing.assert_allclose(logs["distillation_loss"], kd, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], 0.1 * ce + 0.9 * kd, rtol=1e-4)
    # Treating the probabilities as logits would give another value.
    assert abs(np_soft_target(p_t, np_softmax(z_s), 4.0) - kd) > 1e-3 * kd
    np.testing.assert_allclose(distiller.predict(x, verbose=0), z_s, rtol=1e-4, atol=1e-5)

    before = [np.asarray(w) for w in teacher.weights]
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert not np.array_equal(np.asarray(student.get_layer("probs").kernel), kernel.astype("float32"))
    assert all(np.array_equal(b, np.asarray(w)) for b, w in zip(before, teacher.weights, strict=True))
    probabilities = np.asarray(student(x))  # the student itself still ends with its softmax
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


def test_softmax_models_round_trip_and_sigmoid_is_read_before_activation(tmp_path, batch):
    x, y = batch
    teacher = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10, activation="sigmoid", name="out")],
        name="sigmoid_teacher",
    )
    distiller = Distiller(teacher=teacher, student=tiny_model(name="student"))
    distiller.compile(optimizer="sgd")
    logs = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    kernel, bias = (np.asarray(w, np.float64) for w in teacher.get_layer("out").weights)
    z_t = x.reshape(len(x), -1).astype(np.float64) @ kernel + bias
    z_s = np.asarray(distiller.student(x, training=False), np.float64)
    np.testing.assert_allclose(logs["distillation_loss"], np_soft_target(z_t, z_s, 4.0), rtol=1e-4)
    distiller.fit(x, y, epochs=1, verbose=0)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    again = loaded.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    now = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    np.testing.assert_allclose(again["distillation_loss"], now["distillation_loss"], rtol=1e-5)


class SoftmaxNet(SubclassedNet):
    """Subclassed: the softmax is inside call(), so it cannot be bypassed."""

    def call(self, inputs, training=False):
        return ops.softmax(super().call(inputs, training=training))


def test_probabilities_that_cannot_be_bypassed_are_refused(batch):
    x, _ = batch
    built = SoftmaxNet(name="softmax_net")
    built(x[:1])
    with pytest.raises(ValueError, match="teacher 'softmax_net' returns probabilities"):
        Distiller(teacher=built, student=tiny_model(name="student"))
    with pytest.raises(ValueError, match="student 'softmax_student' returns probabilities.*logits"):
        Distiller(teacher=tiny_model(name="teacher"), student=SoftmaxNet(name="softmax_student"))
    with pytest.raises(ValueError, match="'softmax_model' returns probabilities"):
        model = SoftmaxNet(name="softmax_model")
        model(x[:1])
        Supervised(model=model)


# -- 3. dead terms -------------------------------------------------------------------


def squeezed_model(name):
    """8x8 input; `squeeze` is a 1x1 conv map, `pooled_map` a global pool reshaped to 1x1."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stage1")(inputs)
    squeeze = keras.layers.Conv2D(6, 8, strides=8, name="squeeze")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    pooled = keras.layers.Reshape((1, 1, 4), name="pooled_map")(pooled)
    merged = keras.layers.Concatenate()([squeeze, pooled])
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(merged)), name=name)


@pytest.mark.parametrize(
    "teacher_layer,student_layer,teacher_shape,student_shape",
    [("stage1", "squeeze", "(8, 8, 4)", "(1, 1, 6)"),
     ("pooled_map", "stage1", "(1, 1, 4)", "(8, 8, 4)")],
)
def test_attention_transfer_on_a_1x1_map_is_refused(teacher_layer, student_layer, teacher_shape, student_shape):
    teacher, student = squeezed_model("teacher"), squeezed_model("student")
    loss = AttentionTransferLoss(teacher_layer_name=teacher_layer, student_layer_name=student_layer)
    expected = (
        f"Term 'at_loss' (AttentionTransferLoss) between teacher output '{teacher_layer}' {teacher_shape} "
        f"and student output '{student_layer}' {student_shape} cannot train: .*1x1 maps"
    )
    with pytest.raises(ValueError, match=re.escape(expected).replace(re.escape(".*"), ".*")):
        Distiller(teacher=teacher, student=student, distillation_losses=[loss])


def test_hint_between_different_ranks_is_refused():
    teacher, student = tiny_model(name="teacher"), tiny_model(name="student")
    with pytest.raises(ValueError) as info:
        Distiller(teacher=teacher, student=student,
                  distillation_losses=[HintLoss(teacher_layer_name="stage1", student_layer_name="embedding")])
    message = str(info.value)
    for part in ("'hint_loss'", "teacher output 'stage1' (14, 14, 4)", "student output 'embedding' (4,)", "same rank"):
        assert part in message, message


# -- 4. safety checks are values: no update, XLA included ----------------------------


def snapshot(distiller):
    """Every student weight (BatchNorm moving statistics included) and every
    optimizer variable (iterations, momentum)."""
    variables = [*distiller.student.weights, *distiller.optimizer.variables]
    assert any("moving_mean" in v.path for v in variables)
    assert any("momentum" in v.path for v in variables)
    return variables, [np.array(v.numpy()) for v in variables]


def assert_unchanged(variables, values):
    for variable, value in zip(variables, values, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


@pytest.mark.parametrize("jit_compile", [True, False], ids=["xla", "no_xla"])
def test_bad_step_applies_no_update_and_raises(jit_compile, batch):
    x, y = batch
    distiller = Distiller(teacher=tiny_model(width=8, name="teacher"), student=tiny_model(name="student"))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit_compile)
    assert distiller.jit_compile is jit_compile
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)  # one good step: momentum is non-zero now
    variables, values = snapshot(distiller)
    assert int(distiller.optimizer.iterations) == 1
    assert any(np.any(v != 0) for var, v in zip(variables, values, strict=True) if "momentum" in var.path)

    nan = x.copy()
    nan[3] = np.nan
    with pytest.raises(NonFiniteLossError, match=r"loss term student_loss is not finite \(NaN/Inf\) at step 1") as info:
        distiller.fit(nan, y, batch_size=16, epochs=1, verbose=0)
    assert (info.value.term, info.value.step) == ("student_loss", 1) and isinstance(info.value, TrainingError)
    assert keras_kd.NonFiniteLossError is NonFiniteLossError and keras_kd.TrainingError is TrainingError
    assert_unchanged(variables, values)

    labels = y.copy()
    labels[5] = 17
    with pytest.raises(LabelRangeError, match=r"label 17 at step 1 is outside \[0, 10\)") as info:
        distiller.fit(x, labels, batch_size=16, epochs=1, verbose=0)
    assert (info.value.label, info.value.num_classes, info.value.step) == (17, 10, 1)
    assert_unchanged(variables, values)

    with pytest.raises(NonFiniteLossError, match="student_loss"):
        distiller.evaluate(nan, y, batch_size=16, verbose=0)
    with pytest.raises(LabelRangeError, match="label 17"):
        distiller.evaluate(x, labels, batch_size=16, verbose=0)
    assert_unchanged(variables, values)

    # The record was cleared: training goes on from the same state.
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(distiller.optimizer.iterations) == 2


def test_checks_can_be_switched_off(batch):
    x, y = batch
    distiller = Distiller(teacher=tiny_model(width=8, name="teacher"), student=tiny_model(name="student"),
                          check_finite=False)
    distiller.compile(optimizer="sgd")
    nan = x.copy()
    nan[0] = np.nan
    history = distiller.fit(nan, y, batch_size=16, epochs=1, verbose=0).history
    assert np.isnan(history["loss"][0])
    assert int(distiller.optimizer.iterations) == 1


# -- 6. the loss context: labels, progress, trainable parts ---------------------------


class ProgressLoss(DistillationLoss):
    """`100 * epoch + mean(labels)` (or the optimizer step): what the context carries."""

    metric_name = "progress_loss"

    def __init__(self, read="epoch", **kwargs):
        super().__init__(**kwargs)
        self.read = read

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        assert context.teacher_outputs["logits"] is not None and "logits" in context.student_outputs
        labels = ops.mean(ops.cast(context.labels, "float32"))
        if self.read == "step":
            return ops.cast(context.step, "float32") + 0.0 * labels
        return 100.0 * ops.cast(context.epoch, "float32") + labels


def test_losses_see_labels_epoch_and_step(batch):
    x, y = batch  # labels 0..9, 0..5
    distiller = Distiller(
        teacher=tiny_model(width=8, name="teacher"), student=tiny_model(name="student"),
        distillation_losses=[SoftTargetLoss(), ProgressLoss("epoch"), ProgressLoss("step", name="step_loss")],
        distillation_loss_weights=[0.9, 0.0, 0.0],
    )
    distiller.compile(optimizer="sgd")
    history = distiller.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history  # 2 steps per epoch
    batch_means = [np.mean(y[:8]), np.mean(y[8:])]
    np.testing.assert_allclose(history["progress_loss"], [np.mean(batch_means), 100 + np.mean(batch_means)], rtol=1e-6)
    np.testing.assert_allclose(history["step_loss"], [0.5, 2.5])  # steps 0, 1 then 2, 3
    logs = distiller.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    assert logs["step_loss"] == 4.0  # evaluation sees the current step


@keras.saving.register_keras_serializable(package="keras_kd_tests")
class ProjectedLoss(DistillationLoss):
    """MSE after a trainable Dense projection declared in `build_parts`."""

    metric_name = "projected_loss"

    def build_parts(self, teacher_shape, student_shape):
        return keras.layers.Dense(teacher_shape[-1], name="projection")

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        return ops.mean(ops.square(context.parts(student_output) - teacher_output))


def test_loss_parts_are_trained_saved_and_never_in_the_student(tmp_path, batch):
    x, y = batch
    student = tiny_model(name="student")
    distiller = Distiller(
        teacher=tiny_model(width=8, name="teacher"), student=student,
        distillation_losses=[ProjectedLoss(teacher_layer_name="embedding", student_layer_name="embedding")],
    )
    part = distiller.loss_parts["projected_loss"]
    assert isinstance(part, keras.layers.Dense) and part.built and tuple(part.kernel.shape) == (4, 8)
    trainable = {id(v) for v in distiller.trainable_variables}
    assert {id(v) for v in part.trainable_variables} <= trainable
    assert not {id(v) for v in part.weights} & {id(v) for v in student.weights}
    assert len(trainable) == len(student.trainable_variables) + 2
    distiller.compile(optimizer="adam")
    logs = distiller.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    t = np.asarray(keras.Model(distiller.teacher.inputs[0], distiller.teacher.get_layer("embedding").output)(x))
    s = np.asarray(keras.Model(student.inputs[0], student.get_layer("embedding").output)(x))
    kernel, bias = (np.asarray(w, np.float64) for w in part.weights)
    np.testing.assert_allclose(logs["projected_loss"], np.mean((s @ kernel + bias - t) ** 2), rtol=1e-4)
    before = [np.array(v) for v in part.weights]
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(not np.array_equal(b, np.asarray(v)) for b, v in zip(before, part.weights, strict=True))
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    for a, b in zip(loaded.loss_parts["projected_loss"].weights, part.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(loaded.optimizer.iterations) == 2
    for a, b in zip(loaded.optimizer.variables, distiller.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(loaded.student.weights) == len(student.weights)
    student.save(tmp_path / "s.keras")
    assert len(keras.models.load_model(tmp_path / "s.keras").weights) == len(student.weights)


def test_direct_calls_build_a_context():
    seen = {}

    class Spy(DistillationLoss):
        def compute_loss(self, teacher_output, student_output, context):
            seen.update(labels=context.labels, step=context.step, epoch=context.epoch, training=context.training,
                        parts=context.parts, dtypes=(teacher_output.dtype, student_output.dtype))
            return ops.mean(student_output)

    dense = keras.layers.Dense(2)
    z = np.zeros((2, 3), "float16")
    Spy()(z, z, labels=np.array([1, 2]), step=7, epoch=3, parts=dense, training=True)
    assert (seen["step"], seen["epoch"], seen["training"], seen["parts"]) == (7, 3, True, dense)
    np.testing.assert_array_equal(seen["labels"], [1, 2])
    assert [keras.backend.standardize_dtype(d) for d in seen["dtypes"]] == ["float32", "float32"]  # losses always compute in float32


def test_bad_arguments_of_the_contract_are_named(batch):
    x, y = batch
    teacher, student = tiny_model(width=8, name="teacher"), tiny_model(width=4, name="student")
    with pytest.raises(TypeError, match="Distiller needs both `teacher=` and `student=`"):
        Distiller(teacher=teacher)
    with pytest.raises(ValueError, match="`regressor_kernel_size` must be 1 or 3, got 5"):
        losses.HintLoss(regressor_kernel_size=5)
    with pytest.raises(ValueError, match="`teacher_layer_name` must be a layer name or None"):
        losses.SoftTargetLoss(teacher_layer_name="")
    with pytest.raises(ValueError, match="`name` must be a non-empty string"):
        losses.SoftTargetLoss(name="")
    distiller = Distiller(teacher=teacher, student=student)
    with pytest.raises(ValueError, match="Term 'hint_loss': the teacher has no output 'logits_x'"):
        distiller.bind_loss("hint_loss", losses.HintLoss(teacher_layer_name="logits_x"),
                            {"logits": (None, 10)}, {"logits": (None, 10)})
    with pytest.raises(ValueError, match="Dict batches need an 'image' entry; got keys \\['pixels'\\]"):
        distiller({"pixels": x})


# -- 7. on/off options are booleans ---------------------------------------------------
# bool("false") is True: a coerced flag would silently switch the option on.


@pytest.mark.parametrize(
    "loss,flag",
    [("kd", "logit_standardization"), ("kd", "temperature_scaling"), ("dkd", "logit_standardization"),
     ("dist", "logit_standardization"), ("crd", "exclude_same_class"), ("lp", "normalize"),
     ("ab", "always_connect"), ("hint", "regressor"), ("hint", "regressor_batchnorm")],
)
@pytest.mark.parametrize("bad", ["false", 0, None])
def test_loss_flags_must_be_booleans(loss, flag, bad):
    cls = losses.loss_class(loss)
    levels = {"teacher_layer_names": ["stage1"], "student_layer_names": ["stage1"]} if loss == "ab" else {}
    with pytest.raises(TypeError, match=f"`{flag}` must be True or False, got {re.escape(repr(bad))}"):
        cls(**levels, **{flag: bad})
    cls(**levels, **{flag: np.bool_(True)})  # numpy booleans are booleans


@pytest.mark.parametrize(
    "make,flag",
    [
        (lambda **kw: Distiller(teacher=tiny_model(name="t"), student=tiny_model(name="s"), **kw), "check_finite"),
        (lambda **kw: Distiller(teacher=tiny_model(name="t"), student=tiny_model(name="s"), **kw), "check_labels"),
        (lambda **kw: EnsembleDistiller(teachers=[tiny_model(name="t")], student=keras_kd.models.multibranch(
            "cnn", 1, (28, 28, 1), 10), **kw), "logit_standardization"),
        (lambda **kw: SFTNTrainer(teacher=keras_kd.models.get("resnet8", (16, 16, 1), 10),
                                  student=keras_kd.models.get("cnn", (16, 16, 1), 10), **kw), "logit_standardization"),
        (lambda **kw: SFTNTrainer(teacher=keras_kd.models.get("resnet8", (16, 16, 1), 10),
                                  student=keras_kd.models.get("cnn", (16, 16, 1), 10), **kw), "share_student_blocks"),
        (lambda **kw: OnlineEnsembleDistiller(network="resnet8", input_shape=(16, 16, 1), **kw),
         "logit_standardization"),
        (lambda **kw: OnlineEnsembleDistiller(network="resnet8", input_shape=(16, 16, 1), **kw),
         "kd_temperature_scaling"),
        (lambda **kw: OnlineEnsembleDistiller(network="resnet8", input_shape=(16, 16, 1), **kw), "inter_updates_stem"),
        (lambda **kw: keras_kd.DMLTrainer(peers=[tiny_model(name="a"), tiny_model(name="b")], **kw),
         "logit_standardization"),
        (lambda **kw: keras_kd.ONETrainer(network=native_ensemble(
            "resnet8", 2, (16, 16, 1), 10), **kw), "logit_standardization"),
    ],
    ids=["Distiller-check_finite", "Distiller-check_labels", "EKD", "SFTN-standardization", "SFTN-share",
         "OEMC-standardization", "OEMC-kd_temperature_scaling", "OEMC-inter_updates_stem", "DML", "ONE"],
)
def test_trainer_flags_must_be_booleans(make, flag):
    with pytest.raises(TypeError, match=f"`{flag}` must be True or False, got 'false'"):
        make(**{flag: "false"})


def test_layer_and_model_flags_must_be_booleans():
    from keras_kd.adapters import HintRegressor

    with pytest.raises(TypeError, match="`batchnorm` must be True or False, got 1"):
        HintRegressor((4, 4, 8), batchnorm=1)
    with pytest.raises(TypeError, match="`shared_stem` must be True or False, got 'false'"):
        keras_kd.models.multibranch("resnet8", 2, (16, 16, 1), 10, shared_stem="false")
    with pytest.raises(TypeError, match="`flip` must be True or False, got 1"):
        keras_kd.data.Augmentation(flip=1)


@pytest.mark.parametrize("flag", ["normalize", "shuffle", "drop_remainder", "prefetch", "with_index"])
def test_data_flags_must_be_booleans(flag):
    with pytest.raises(TypeError, match=f"`{flag}` must be True or False, got 'false'"):
        keras_kd.data.load("synthetic", **{flag: "false"})
    keras_kd.data.load("synthetic", **{flag: np.bool_(False)})


def test_augment_is_a_boolean_or_an_augmentation():
    with pytest.raises(TypeError, match="`augment` must be True, False, None or a data.Augmentation, got 'false'"):
        keras_kd.data.load("synthetic", augment="false")
    with pytest.raises(TypeError, match="`normalize` must be True or False, got 0"):
        keras_kd.data.standardize(np.zeros((1, 28, 28, 1), "uint8"), "fashion_mnist", normalize=0)
    for augment in (None, False, np.bool_(True), keras_kd.data.Augmentation(pad=2)):
        keras_kd.data.load("synthetic", augment=augment)


# -- 8. counts are integers ---------------------------------------------------------
# 2.0 or True would otherwise pass as a count (True < 1 is False) and break later, far from the cause.


@pytest.mark.parametrize(
    "make,name,minimum",
    [
        (lambda v: losses.loss_class("dkd")(warmup_epochs=v), "warmup_epochs", 0),
        (lambda v: losses.loss_class("lp")(k=v), "k", 1),
        (lambda v: losses.loss_class("cc")(dim=v), "dim", 1),
        (lambda v: losses.loss_class("crd")(num_negatives=v), "num_negatives", 1),
        (lambda v: losses.loss_class("crd")(num_samples=v), "num_samples", 1),
        (lambda v: losses.loss_class("vid")(mid_channels=v), "mid_channels", 1),
        (lambda v: losses.loss_class("ft")(paraphraser_epochs=v), "paraphraser_epochs", 1),
        (lambda v: losses.loss_class("reviewkd")(["stage1"], ["stage1"], warmup_epochs=v), "warmup_epochs", 0),
        (lambda v: keras_kd.models.get("cnn", (16, 16, 1), v), "num_classes", 2),
        (lambda v: keras_kd.models.multibranch("cnn", v, (16, 16, 1), 10), "num_branches", 1),
        (lambda v: native_ensemble("resnet8", v, (16, 16, 1), 10), "num_branches", 2),
        (lambda v: keras_kd.ONETrainer(network=native_ensemble("resnet8", 2, (16, 16, 1), 10), kl_rampup_epochs=v),
         "kl_rampup_epochs", 0),
        (lambda v: keras_kd.data.load("synthetic", batch_size=v), "batch_size", 1),
        (lambda v: keras_kd.data.Augmentation(pad=v), "pad", 0),
    ],
)
def test_counts_must_be_integers(make, name, minimum):
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    for bad in (float(minimum + 2), True, str(minimum + 2)):
        with pytest.raises(TypeError, match=re.escape(f"`{name}` must be {wanted}")):
            make(bad)
    with pytest.raises(ValueError, match=re.escape(f"`{name}` must be {wanted}") + ".*got " + str(minimum - 1)):
        make(minimum - 1)
    make(np.int64(minimum + 2))  # numpy integers are integers


def test_check_count_returns_python_ints_and_passes_none_when_optional():
    from keras_kd.checks import check_count

    value = check_count("epochs", np.int32(3), minimum=1)
    assert value == 3 and type(value) is int
    assert check_count("top_k", None, minimum=1, optional=True) is None
    with pytest.raises(ValueError, match=re.escape("`k` must be a positive integer, got 0.")):
        check_count("k", np.int64(0), minimum=1)  # the number, not np.int64(0)
    with pytest.raises(TypeError, match=re.escape("`top_k` must be a positive integer, got None")):
        check_count("top_k", None, minimum=1)
    with pytest.raises(ValueError, match=re.escape("`top_k` must be a positive integer or None, got 0")):
        check_count("top_k", 0, minimum=1, optional=True)


def test_numbers_accept_numpy_scalars_and_refuse_booleans():
    from keras_kd.checks import check_non_negative, check_positive

    for check in (check_positive, check_non_negative):
        value = check("temperature", np.float32(4.0))
        assert value == 4.0 and type(value) is float
        assert check("temperature", np.int64(2)) == 2.0
        for bad in (True, np.bool_(True), "4", None):
            with pytest.raises(TypeError, match="`temperature` must be a number"):
                check("temperature", bad)
    with pytest.raises(ValueError, match="finite number > 0, got nan"):
        check_positive("temperature", np.float32("nan"))
    assert losses.loss_class("kd")(temperature=np.float32(2.0)).temperature == 2.0
