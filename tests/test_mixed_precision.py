import keras
import numpy as np
import pytest

from keras_kd import Distiller, FeatureTerm, losses, models

from conftest import np_cross_entropy, np_soft_target


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("mixed_policy", ["mixed_float16", "mixed_bfloat16"])
def test_distiller_trains_under_mixed_precision(mixed_policy, restore_policy):
    teacher = models.get("resnet8", (16, 16, 1), 10)  # a float32 teacher
    keras.mixed_precision.set_global_policy(mixed_policy)
    student = models.get("cnn", (16, 16, 1), 10)  # built under the mixed policy
    distiller = Distiller(
        student, teacher, temperature=2.0, alpha=0.5,
        features=[FeatureTerm("stage3", "stage3", losses.HintLoss(), 1.0),
                  FeatureTerm("embedding", "embedding", losses.LocalityPreservingLoss(3), 1.0)],
    )
    distiller.compile(optimizer="sgd")
    if mixed_policy == "mixed_float16":
        assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.random.default_rng(0).normal(size=(16, 16, 16, 1)).astype("float32")
    y = np.arange(16) % 10
    history = distiller.fit(x, y, epochs=2, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
    logs = distiller.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    s = np.asarray(student(x, training=False), np.float32)
    t = np.asarray(teacher(x, training=False), np.float32)
    assert student.layers[1].compute_dtype == mixed_policy.split("_")[1]
    assert teacher.layers[1].compute_dtype == "float32"
    # Losses are computed in float32 from the low-precision logits.
    np.testing.assert_allclose(logs["student_loss"], np_cross_entropy(y, s), rtol=1e-3)
    np.testing.assert_allclose(logs["distillation_loss"], np_soft_target(t, s, 2.0), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["ekd", "sftn", "online"])
def test_ensemble_methods_train_under_mixed_float16(method, restore_policy):
    from keras_kd import EnsembleDistiller, OnlineEnsembleDistiller, SFTNTrainer

    teachers = [models.get(name, (16, 16, 1), 10) for name in ("resnet8", "cnn")]  # float32
    keras.mixed_precision.set_global_policy("mixed_float16")
    if method == "ekd":
        trainer = EnsembleDistiller(models.multibranch("resnet8", 2, (16, 16, 1), 10), teachers)
    elif method == "sftn":
        trainer = SFTNTrainer(models.get("resnet8", (16, 16, 1), 10), models.get("cnn", (16, 16, 1), 10))
    else:
        trainer = OnlineEnsembleDistiller("resnet8", input_shape=(16, 16, 1), num_classes=10, num_students=3)
    trainer.compile(optimizer="sgd")
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.random.default_rng(0).normal(size=(16, 16, 16, 1)).astype("float32")
    history = trainer.fit(x, np.arange(16) % 10, batch_size=8, epochs=1, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
