import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import models, tap_model
from keras_kd.adapters import HintRegressor
from keras_kd.distillers.sftn import SFTNTrainer
from keras_kd.models.blocks import split

from conftest import SubclassedNet, np_cross_entropy, np_log_softmax, np_standardize

SHAPE = (16, 16, 1)


def data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *SHAPE)).astype("float32"), (np.arange(n) % 10).astype("int32")


def np_kl(teacher, branch, temperature, standardize=False):
    """tau^2 * mean_batch sum_classes p log(p / q), float64 (of z-scored logits with `standardize`)."""
    if standardize:
        teacher, branch = np_standardize(teacher), np_standardize(branch)
    log_p = np_log_softmax(teacher.astype(np.float64) / temperature)
    log_q = np_log_softmax(branch.astype(np.float64) / temperature)
    return temperature**2 * np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))


def ids(variables):
    return {id(v) for v in variables}


@pytest.mark.parametrize("standardize", [False, True])
def test_terms_and_total_loss_match_numpy(standardize):
    teacher = models.get("resnet14", SHAPE, 10)
    student = models.get("cnn", SHAPE, 10)
    trainer = SFTNTrainer(teacher=teacher, student=student, lambda_t=0.5, lambda_kl=2.0, lambda_ce=1.5, temperature=3.0,
                          logit_standardization=standardize)
    trainer.compile(optimizer="sgd")
    x, y = data(8)
    logs = trainer.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)

    # Independent forward pass: teacher stage maps, transforms, then the student's later blocks.
    taps = tap_model(teacher, ["stage1", "stage2"])(x, training=False)
    z_t = taps["logits"].numpy()
    student_blocks = split(student, ("stage1", "stage2"))
    branches = []
    for i, stage in enumerate(("stage1", "stage2"), start=1):
        z = trainer.transforms[i - 1](taps[stage], training=False)
        for block in student_blocks[i:]:
            z = block(z, training=False)
        branches.append(z.numpy())

    teacher_ce = np_cross_entropy(y, z_t)
    kl = np.mean([np_kl(z_t, z, 3.0, standardize) for z in branches])
    if standardize:
        assert not np.isclose(kl, np.mean([np_kl(z_t, z, 3.0) for z in branches]), rtol=1e-2)
        assert trainer.get_config()["logit_standardization"] is True
    branch_ce = np.mean([np_cross_entropy(y, z) for z in branches])
    np.testing.assert_allclose(logs["teacher_loss"], teacher_ce, rtol=1e-4)
    np.testing.assert_allclose(logs["branch_kl_loss"], kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logs["branch_ce_loss"], branch_ce, rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], 0.5 * teacher_ce + 2.0 * kl + 1.5 * branch_ce, rtol=1e-4)
    for i, z in enumerate(branches, start=1):
        np.testing.assert_allclose(logs[f"branch{i}_accuracy"], np.mean(z.argmax(-1) == y))
    np.testing.assert_allclose(logs["accuracy"], np.mean(z_t.argmax(-1) == y))

    outputs = trainer(x, training=False, features=True)
    assert sorted(outputs) == ["branch1", "branch2", "logits"]
    np.testing.assert_allclose(outputs["logits"], z_t, atol=1e-5)
    np.testing.assert_allclose(outputs["branch2"], branches[1], atol=1e-5)


def teacher_block_variables(teacher):
    blocks = split(teacher, ("stage1", "stage2"))
    return [block.trainable_variables for block in blocks]


def branch_gradients(trainer, variables, x, y):
    with tf.GradientTape() as tape:
        outputs = trainer(x, training=True, features=True)
        terms = trainer.compute_terms(x, y, outputs, training=True)
        total = sum(term.weight * term.value for term in terms if term.weight)
    return tape.gradient(total, variables)


@pytest.mark.parametrize("lambda_kl, lambda_ce", [(1.0, 0.0), (0.0, 1.0)])
def test_branch_terms_alone_train_the_teacher(lambda_kl, lambda_ce):
    teacher = models.get("resnet8", SHAPE, 10)
    trainer = SFTNTrainer(
        teacher=teacher, student=models.get("resnet8", SHAPE, 10), lambda_t=0.0, lambda_kl=lambda_kl, lambda_ce=lambda_ce
    )
    x, y = data(8)
    first, second, head = teacher_block_variables(teacher)
    trainable = ids(trainer.trainable_variables)
    assert ids(teacher.trainable_variables) <= trainable
    gradients = branch_gradients(trainer, first + second + head, x, y)
    for variable, gradient in zip(first + second, gradients, strict=False):
        assert gradient is not None, variable.path
        assert np.any(np.asarray(gradient) != 0), variable.path
    head_gradients = gradients[len(first + second) :]
    if lambda_kl:  # the KL term also pulls z_T (no stop_gradient on the teacher's logits)
        assert all(g is not None and np.any(np.asarray(g) != 0) for g in head_gradients)
    else:  # CE of the branches alone does not depend on the teacher's head
        assert all(g is None or not np.any(np.asarray(g)) for g in head_gradients)


def test_student_blocks_shared_by_default_and_copied_on_request():
    x, y = data(4)
    teacher = models.get("resnet8", SHAPE, 10)
    student = models.get("cnn", SHAPE, 10)
    stem, middle, head = (block.trainable_variables for block in split(student, ("stage1", "stage2")))
    shared = SFTNTrainer(teacher=teacher, student=student)
    transforms = [v for t in shared.transforms for v in t.trainable_variables]
    variables = shared.trainable_variables
    assert len(variables) == len(ids(variables))
    assert ids(variables) == ids(teacher.trainable_variables) | ids(transforms) | ids(middle + head)
    assert not ids(stem) & ids(variables)  # the student's first block is never used

    teacher = models.get("resnet8", SHAPE, 10)
    separate = SFTNTrainer(teacher=teacher, student=student, share_student_blocks=False)
    transforms = [v for t in separate.transforms for v in t.trainable_variables]
    variables = separate.trainable_variables
    branch_variables = ids(variables) - ids(teacher.trainable_variables) - ids(transforms)
    assert len(branch_variables) == len(middle) + 2 * len(head)  # branch1: blocks 2-3, branch2: block 3
    assert not branch_variables & ids(student.trainable_variables)
    separate.compile(optimizer="sgd")
    before = [v.numpy() for v in student.weights]
    separate.fit(x, y, epochs=1, verbose=0)
    for old, new in zip(before, student.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())


def test_extracted_teacher_is_plain_trained_and_matches_trainer(tmp_path):
    teacher = models.get("resnet8", SHAPE, 10)
    layer_names = [layer.name for layer in teacher.layers]
    before = [v.numpy() for v in teacher.trainable_variables]
    trainer = SFTNTrainer(teacher=teacher, student=models.get("cnn", SHAPE, 10), lambda_t=0.0)
    trainer.compile(optimizer="sgd")
    x, y = data(8)
    trainer.fit(x, y, batch_size=4, epochs=1, verbose=0)

    plain = trainer.teacher
    assert plain is teacher
    assert [layer.name for layer in plain.layers] == layer_names
    assert not any(isinstance(layer, HintRegressor) for layer in plain._flatten_layers())
    assert plain.output_shape == (None, 10)
    assert ids(plain.trainable_variables) <= ids(trainer.trainable_variables)
    changed = [
        not np.allclose(old, new.numpy()) for old, new in zip(before, plain.trainable_variables, strict=True)
    ]
    assert all(changed)  # every teacher variable trained, with lambda_t = 0

    expected = trainer(x, training=False, features=True)["logits"]
    np.testing.assert_allclose(plain(x, training=False), expected, atol=1e-5)
    np.testing.assert_allclose(trainer.predict(x, verbose=0), expected, atol=1e-5)

    path = tmp_path / "teacher.keras"
    plain.save(path)
    loaded = keras.models.load_model(path)
    assert len(loaded.weights) == len(models.get("resnet8", SHAPE, 10).weights)
    np.testing.assert_allclose(loaded(x, training=False), expected, atol=1e-5)


@pytest.mark.parametrize(
    "teacher_name, student_name", [("wrn_16_1", "resnet8"), ("resnet8", "cnn"), ("cnn", "resnet8")]
)
def test_heterogeneous_pairs_train(teacher_name, student_name):
    teacher = models.get(teacher_name, SHAPE, 10)
    student = models.get(student_name, SHAPE, 10)
    trainer = SFTNTrainer(teacher=teacher, student=student)
    for transform, stage in zip(trainer.transforms, ("stage1", "stage2"), strict=True):
        assert transform.teacher_shape == tuple(student.get_layer(stage).output.shape[1:])
    trainer.compile(optimizer="sgd")
    x, y = data(4)
    history = trainer.fit(x, y, epochs=1, verbose=0).history
    assert all(np.isfinite(values[-1]) for values in history.values())


def test_fine_tuning_starts_from_the_pretrained_teacher():
    teacher = models.get("resnet8", SHAPE, 10)
    rng = np.random.default_rng(3)
    pretrained = [rng.normal(scale=0.1, size=v.shape).astype("float32") for v in teacher.trainable_variables]
    for variable, value in zip(teacher.trainable_variables, pretrained, strict=True):
        variable.assign(value)
    x, _ = data(4)
    reference = teacher(x, training=False).numpy()
    trainer = SFTNTrainer(teacher=teacher, student=models.get("resnet8", SHAPE, 10))
    for variable, value in zip(trainer.teacher.trainable_variables, pretrained, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    np.testing.assert_allclose(trainer.predict(x, verbose=0), reference, atol=1e-5)


def test_clear_errors():
    teacher = models.get("resnet8", SHAPE, 10)
    with pytest.raises(ValueError, match="predicts 10 classes but student"):
        SFTNTrainer(teacher=teacher, student=models.get("cnn", SHAPE, 5))
    with pytest.raises(ValueError, match="same input shape|same images"):
        SFTNTrainer(teacher=teacher, student=models.get("cnn", (32, 32, 1), 10))
    with pytest.raises(ValueError, match="same length"):
        SFTNTrainer(teacher=teacher, student=models.get("cnn", SHAPE, 10), student_boundaries=("stage2",))
    with pytest.raises(ValueError, match="at least one block boundary"):
        SFTNTrainer(teacher=teacher, student=models.get("cnn", SHAPE, 10), teacher_boundaries=(), student_boundaries=())
    with pytest.raises(ValueError, match="no layer named 'stage9'"):
        SFTNTrainer(teacher=teacher, student=models.get("cnn", SHAPE, 10), teacher_boundaries=("stage1", "stage9"))
    with pytest.raises(TypeError, match="sequence of layer names"):
        SFTNTrainer(teacher=teacher, student=models.get("cnn", SHAPE, 10), teacher_boundaries="stage1")
    with pytest.raises(ValueError, match="all zero|are zero"):
        SFTNTrainer(teacher=teacher, student=models.get("cnn", SHAPE, 10), lambda_t=0, lambda_kl=0, lambda_ce=0)
    with pytest.raises(ValueError, match="temperature"):
        SFTNTrainer(teacher=teacher, student=models.get("cnn", SHAPE, 10), temperature=0.0)
    subclassed = SubclassedNet()
    subclassed(np.zeros((1, *SHAPE), "float32"))
    with pytest.raises(ValueError, match="not Functional"):
        SFTNTrainer(teacher=teacher, student=subclassed)


@pytest.mark.parametrize("share", [True, False])
def test_save_load_round_trip(tmp_path, share):
    trainer = SFTNTrainer(
        teacher=models.get("resnet8", SHAPE, 10),
        student=models.get("cnn", SHAPE, 10),
        lambda_kl=2.0,
        temperature=4.0,
        share_student_blocks=share,
    )
    trainer.compile(optimizer="adam")
    x, y = data(8)
    trainer.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = tmp_path / "sftn.keras"
    trainer.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, SFTNTrainer)
    settings = {
        key: value for key, value in trainer.get_config().items() if key not in ("teacher", "student")
    }
    assert {key: loaded.get_config()[key] for key in settings} == settings
    assert loaded.get_config()["share_student_blocks"] is share
    expected = trainer(x, training=False, features=True)
    actual = loaded(x, training=False, features=True)
    for key in ("logits", "branch1", "branch2"):
        np.testing.assert_allclose(actual[key], expected[key], atol=1e-5)
    np.testing.assert_allclose(loaded.teacher(x, training=False), expected["logits"], atol=1e-5)
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0, return_dict=True)["loss"],
        trainer.evaluate(x, y, verbose=0, return_dict=True)["loss"],
        rtol=1e-5,
    )


def test_frozen_teacher_is_refused():
    teacher = models.get("resnet8", (16, 16, 1), 10)
    teacher.trainable = False
    with pytest.raises(ValueError, match="frozen"):
        SFTNTrainer(teacher=teacher, student=models.get("cnn", (16, 16, 1), 10))


def test_warmup_trains_the_branches_with_the_teacher_frozen_then_everything():
    teacher = models.get("resnet8", SHAPE, 10)
    trainer = SFTNTrainer(teacher=teacher, student=models.get("cnn", SHAPE, 10), warmup_epochs=1)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=True)
    x, y = data(8)
    teacher_weights = [w.numpy().copy() for w in teacher.weights]  # kernels and BN statistics
    transform = trainer.transforms[0].trainable_variables[0]
    transform_before = transform.numpy().copy()
    epochs_seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs_seen.append([w.numpy().copy() for w in teacher.weights])

    trainer.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[Probe()])
    for before, after in zip(teacher_weights, epochs_seen[0], strict=True):  # epoch 1: frozen
        np.testing.assert_array_equal(before, after)
    assert not np.array_equal(transform_before, transform.numpy())
    assert any(not np.array_equal(a, b) for a, b in zip(epochs_seen[0], epochs_seen[1], strict=True))
    assert teacher.trainable and trainer.get_config()["warmup_epochs"] == 1
    with pytest.raises(ValueError, match="`warmup_epochs` must be an integer >= 0"):
        SFTNTrainer(teacher=models.get("resnet8", SHAPE, 10), student=models.get("cnn", SHAPE, 10), warmup_epochs=-1)
