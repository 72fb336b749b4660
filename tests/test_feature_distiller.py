import keras
import numpy as np
import pytest
from test_feature_losses import np_at, np_cosine_similarity, np_kl_divergence, np_lp, np_mse

from keras_kd import Distiller, models, tap_model
from keras_kd.adapters import HintRegressor
from keras_kd.losses import (
    AttentionTransferLoss,
    FeatureLoss,
    HintLoss,
    LocalityPreservingLoss,
    SoftTargetLoss,
)

from conftest import CallCounter, SubclassedNet


def counted_model(width, name):
    inputs = keras.Input((16, 16, 1))
    counter = CallCounter(name="counter")
    x = counter(inputs)
    x = keras.layers.Conv2D(width, 3, padding="same", name="stage1")(x)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name="stage2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name), counter


def all_losses():
    return [
        SoftTargetLoss(4.0),
        HintLoss(teacher_layer_name="stage2", student_layer_name="stage2"),
        AttentionTransferLoss(teacher_layer_name="stage1", student_layer_name="stage1"),
        LocalityPreservingLoss(3, teacher_layer_name="embedding", student_layer_name="embedding"),
    ]


def test_each_network_runs_once_per_step_with_three_feature_terms():
    teacher, teacher_count = counted_model(8, "teacher")
    student, student_count = counted_model(4, "student")
    distiller = Distiller(
        teacher=teacher, student=student,
        distillation_losses=all_losses(), distillation_loss_weights=[0.9, 10.0, 100.0, 1.0],
    )
    assert distiller.loss_names == ["distillation_loss", "hint_loss", "at_loss", "lp_loss"]
    distiller.compile(optimizer="sgd")
    # Construction may probe each network once (the probability-output check): count from here.
    student_start, teacher_start = float(student_count.count), float(teacher_count.count)
    x = np.random.rand(40, 16, 16, 1).astype("float32")
    y = np.arange(40) % 10
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history  # 5 steps
    assert float(student_count.count) - student_start == 5
    assert float(teacher_count.count) - teacher_start == 5
    assert {"loss", "student_loss", "distillation_loss", "hint_loss", "at_loss", "lp_loss"} <= set(history)


def test_feature_metrics_match_numpy_on_tapped_features():
    teacher = models.get("resnet14", (16, 16, 1), 10)
    student = models.get("resnet8", (16, 16, 1), 10)
    distiller = Distiller(
        teacher=teacher, student=student,
        distillation_losses=[
            AttentionTransferLoss(teacher_layer_name="stage2", student_layer_name="stage3"),
            LocalityPreservingLoss(4, teacher_layer_name="embedding", student_layer_name="embedding"),
        ],
        distillation_loss_weights=[2.0, 3.0],
        student_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd")
    x = np.random.default_rng(1).normal(size=(12, 16, 16, 1)).astype("float32")
    y = np.arange(12) % 10
    logs = distiller.evaluate(x, y, batch_size=12, return_dict=True, verbose=0)
    t = tap_model(teacher, ["stage2", "embedding"])(x, training=False)
    s = tap_model(student, ["stage3", "embedding"])(x, training=False)
    at = np_at(t["stage2"].numpy(), s["stage3"].numpy())
    lp = np_lp(t["embedding"].numpy(), s["embedding"].numpy(), 4, normalize=True)
    np.testing.assert_allclose(logs["at_loss"], at, rtol=1e-4)
    np.testing.assert_allclose(logs["lp_loss"], lp, rtol=1e-3)
    np.testing.assert_allclose(logs["loss"], logs["student_loss"] + 2 * at + 3 * lp, rtol=1e-4)
    assert "distillation_loss" not in logs  # no soft-target term unless asked for


def test_plain_keras_losses_by_name_inside_a_distiller():
    teacher = models.get("resnet14", (16, 16, 1), 10)
    student = models.get("resnet8", (16, 16, 1), 10)
    distiller = Distiller(
        teacher=teacher, student=student,
        distillation_losses=[
            FeatureLoss("mse", teacher_layer_name="stage3", student_layer_name="stage3"),
            FeatureLoss("cosine_similarity", teacher_layer_name="embedding", student_layer_name="embedding",
                        name="cosine_loss"),
            FeatureLoss("kl_divergence", name="kl_loss"),  # on logits: Keras clips both sides to [1e-7, 1]
        ],
        distillation_loss_weights=[1.0, 0.5, 0.25],
        student_loss_weight=1.0,
    )
    assert distiller.loss_names == ["feature_loss", "cosine_loss", "kl_loss"]
    assert not distiller.loss_parts  # plain Keras losses have no trainable part
    distiller.compile(optimizer="sgd")
    x = np.random.default_rng(2).normal(size=(8, 16, 16, 1)).astype("float32")
    y = np.arange(8) % 10
    logs = distiller.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    t = tap_model(teacher, ["stage3", "embedding"])(x, training=False)
    s = tap_model(student, ["stage3", "embedding"])(x, training=False)
    mse = np_mse(t["stage3"].numpy(), s["stage3"].numpy())
    cosine = np_cosine_similarity(t["embedding"].numpy(), s["embedding"].numpy())
    kl = np_kl_divergence(t["logits"].numpy(), s["logits"].numpy())
    np.testing.assert_allclose(logs["feature_loss"], mse, rtol=1e-4)
    np.testing.assert_allclose(logs["cosine_loss"], cosine, rtol=1e-4)
    np.testing.assert_allclose(logs["kl_loss"], kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        logs["loss"], logs["student_loss"] + mse + 0.5 * cosine + 0.25 * kl, rtol=1e-4, atol=1e-6
    )
    history = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
    with pytest.raises(ValueError, match=r"'stage2' \(8, 8, 32\).*'stage3' \(4, 4, 64\).*same shape"):
        Distiller(teacher=teacher, student=student,
                  distillation_losses=[FeatureLoss("mse", teacher_layer_name="stage2", student_layer_name="stage3")])


def test_hint_regressor_is_trained_saved_and_not_in_student(tmp_path):
    teacher = models.get("resnet14", (16, 16, 1), 10)
    student = models.get("resnet8", (16, 16, 1), 10)
    student_weight_count = len(student.weights)
    hint = HintLoss(teacher_layer_name="stage3", student_layer_name="stage2")
    distiller = Distiller(teacher=teacher, student=student, distillation_losses=[hint])
    regressor = distiller.loss_parts["hint_loss"]
    assert isinstance(regressor, HintRegressor)
    assert regressor.compute_output_shape((None, 8, 8, 32)) == (None, 4, 4, 64)
    trainable = {id(v) for v in distiller.trainable_variables}
    assert all(id(v) in trainable for v in regressor.trainable_variables)
    assert len(distiller.trainable_variables) == len(student.trainable_variables) + len(regressor.trainable_variables)
    before = [v.numpy().copy() for v in regressor.trainable_variables]
    teacher_before = [v.numpy().copy() for v in teacher.weights]
    distiller.compile(optimizer="sgd")
    x = np.random.rand(16, 16, 16, 1).astype("float32")
    y = np.arange(16) % 10
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, regressor.trainable_variables, strict=True))
    for b, v in zip(teacher_before, teacher.weights, strict=True):
        np.testing.assert_array_equal(b, v.numpy())
    assert len(student.weights) == student_weight_count
    assert not {id(v) for v in regressor.weights} & {id(v) for v in student.weights}
    assert not any("regressor" in layer.name for layer in student.layers)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras", safe_mode=True)
    assert len(loaded.loss_parts["hint_loss"].weights) == len(regressor.weights)
    for a, b in zip(loaded.loss_parts["hint_loss"].weights, regressor.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert [loss.get_config() for loss in loaded.distillation_losses] == [hint.get_config()]
    assert hint.get_config()["teacher_layer_name"] == "stage3"
    x_check = x[:4]
    np.testing.assert_array_equal(loaded.predict(x_check, verbose=0), distiller.predict(x_check, verbose=0))
    student.save(tmp_path / "s.keras")
    assert len(keras.models.load_model(tmp_path / "s.keras").weights) == student_weight_count


@pytest.mark.parametrize(
    "student_shape,teacher_shape,layer",
    [((None, 8, 8, 4), (None, 4, 4, 16), "Conv2D"), ((None, 2, 2, 4), (None, 8, 8, 6), "Conv2DTranspose"),
     ((None, 4, 4, 4), (None, 4, 4, 8), "Conv2D"), ((None, 12), (None, 30), "Dense")],
)
def test_hint_regressor_shapes(student_shape, teacher_shape, layer):
    regressor = HintRegressor(teacher_shape[1:])
    out = regressor(np.ones((2, *student_shape[1:]), "float32"), training=False)
    assert tuple(out.shape[1:]) == teacher_shape[1:]
    assert type(regressor.transform).__name__ == layer
    with pytest.raises(ValueError, match="must divide each other"):
        HintRegressor((3, 3, 4)).build((None, 4, 4, 2))


def test_feature_configuration_errors():
    teacher = models.get("resnet14", (16, 16, 1), 10)
    student = models.get("resnet8", (16, 16, 1), 10)
    with pytest.raises(ValueError, match="no layer named 'stage4'.*Available layers: .*stage3"):
        Distiller(teacher=teacher, student=student,
                  distillation_losses=[HintLoss(teacher_layer_name="stage4", student_layer_name="stage3")])
    with pytest.raises(ValueError, match=r"'embedding' \(64,\).*'stage3' \(4, 4, 64\).*same rank"):
        Distiller(teacher=teacher, student=student,
                  distillation_losses=[HintLoss(teacher_layer_name="embedding", student_layer_name="stage3")])
    with pytest.raises(TypeError, match="DistillationLoss"):
        Distiller(teacher=teacher, student=student, distillation_losses=[("stage3", "stage3")])
    with pytest.raises(ValueError, match="weight"):
        Distiller(teacher=teacher, student=student, distillation_losses=[HintLoss()],
                  distillation_loss_weights=[-1.0])
    with pytest.raises(ValueError, match="layer name or None"):
        HintLoss(teacher_layer_name="")

    sub = SubclassedNet()
    sub.build((None, 16, 16, 1))
    with pytest.raises(ValueError, match="cannot be tapped by layer name"):
        Distiller(teacher=teacher, student=sub,
                  distillation_losses=[AttentionTransferLoss(teacher_layer_name="stage3", student_layer_name="stage3")])
    two = [AttentionTransferLoss(teacher_layer_name="stage2", student_layer_name="stage2"),
           AttentionTransferLoss(teacher_layer_name="stage3", student_layer_name="stage3")]
    assert Distiller(teacher=teacher, student=student, distillation_losses=two).loss_names == [
        "at_loss_stage2", "at_loss_stage3"]
