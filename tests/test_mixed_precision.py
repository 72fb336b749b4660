import keras
import numpy as np
import pytest

from keras_kd import Distiller, losses, models

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
        teacher=teacher, student=student,
        distillation_losses=[
            losses.SoftTargetLoss(2.0),
            losses.HintLoss(teacher_layer_name="stage3", student_layer_name="stage3"),
            losses.LocalityPreservingLoss(3, teacher_layer_name="embedding", student_layer_name="embedding"),
            losses.FeatureLoss("mse"),  # logits of both networks
        ],
        distillation_loss_weights=[0.5, 1.0, 1.0, 1.0],
        student_loss_weight=0.5,
    )
    distiller.compile(optimizer="sgd")
    if mixed_policy == "mixed_float16":
        assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.random.default_rng(0).normal(size=(16, 16, 16, 1)).astype("float32")
    y = np.arange(16) % 10
    history = distiller.fit(x, y, epochs=2, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
    logs = distiller.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    # The compiled inference pass, as in evaluate (bf16 kernels of eager and graph mode round differently).
    s = np.asarray(distiller.predict(x, batch_size=16, verbose=0), np.float32)
    t = np.asarray(teacher(x, training=False), np.float32)
    assert student.layers[1].compute_dtype == mixed_policy.split("_")[1]
    assert teacher.layers[1].compute_dtype == "float32"
    # Losses are computed in float32 from the low-precision logits.
    np.testing.assert_allclose(logs["student_loss"], np_cross_entropy(y, s), rtol=1e-3)
    np.testing.assert_allclose(logs["distillation_loss"], np_soft_target(t, s, 2.0), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(logs["feature_loss"], np.mean((t - s) ** 2), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["ekd", "sftn", "online"])
def test_ensemble_methods_train_under_mixed_float16(method, restore_policy):
    from keras_kd import EnsembleDistiller, OnlineEnsembleDistiller, SFTNTrainer

    teachers = [models.get(name, (16, 16, 1), 10) for name in ("resnet8", "cnn")]  # float32
    keras.mixed_precision.set_global_policy("mixed_float16")
    if method == "ekd":
        trainer = EnsembleDistiller(teachers=teachers, student=models.multibranch("resnet8", 2, (16, 16, 1), 10))
    elif method == "sftn":
        trainer = SFTNTrainer(teacher=models.get("resnet8", (16, 16, 1), 10), student=models.get("cnn", (16, 16, 1), 10))
    else:
        trainer = OnlineEnsembleDistiller(network="resnet8", input_shape=(16, 16, 1), num_classes=10, num_students=3)
    trainer.compile(optimizer="sgd")
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.random.default_rng(0).normal(size=(16, 16, 16, 1)).astype("float32")
    history = trainer.fit(x, np.arange(16) % 10, batch_size=8, epochs=1, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
