import keras
import numpy as np
import pytest
from test_feature_losses import np_at, np_lp

from keras_kd import Distiller, FeatureTerm, models, tap_model
from keras_kd.adapters import HintRegressor
from keras_kd.losses import AttentionTransferLoss, HintLoss, LocalityPreservingLoss

from conftest import SubclassedNet


class CallCounter(keras.layers.Layer):
    """Identity layer counting how many times the network runs."""

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False, name="count")

    def call(self, inputs):
        self.count.assign_add(1.0)
        return inputs


def counted_model(width, name):
    inputs = keras.Input((16, 16, 1))
    counter = CallCounter(name="counter")
    x = counter(inputs)
    x = keras.layers.Conv2D(width, 3, padding="same", name="stage1")(x)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name="stage2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name), counter


ALL_TERMS = [
    FeatureTerm("stage2", "stage2", HintLoss(), 10.0),
    FeatureTerm("stage1", "stage1", AttentionTransferLoss(), 100.0),
    FeatureTerm("embedding", "embedding", LocalityPreservingLoss(3), 1.0),
]


def test_each_network_runs_once_per_step_with_three_feature_terms():
    teacher, teacher_count = counted_model(8, "teacher")
    student, student_count = counted_model(4, "student")
    distiller = Distiller(student, teacher, features=ALL_TERMS)
    distiller.compile(optimizer="sgd")
    x = np.random.rand(40, 16, 16, 1).astype("float32")
    y = np.arange(40) % 10
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 5 steps
    assert float(student_count.count) == 5
    assert float(teacher_count.count) == 5


def test_feature_metrics_match_numpy_on_tapped_features():
    teacher = models.get("resnet14", (16, 16, 1), 10)
    student = models.get("resnet8", (16, 16, 1), 10)
    terms = [
        FeatureTerm("stage2", "stage3", AttentionTransferLoss(), 2.0),
        FeatureTerm("embedding", "embedding", LocalityPreservingLoss(4), 3.0),
    ]
    distiller = Distiller(student, teacher, alpha=0.0, ce_weight=1.0, features=terms)
    distiller.compile(optimizer="sgd")
    x = np.random.default_rng(1).normal(size=(12, 16, 16, 1)).astype("float32")
    y = np.arange(12) % 10
    logs = distiller.evaluate(x, y, batch_size=12, return_dict=True, verbose=0)
    t = tap_model(teacher, ["stage2", "embedding"])(x, training=False)
    s = tap_model(student, ["stage3", "embedding"])(x, training=False)
    at = np_at(t["stage2"].numpy(), s["stage3"].numpy())
    lp = np_lp(t["embedding"].numpy(), s["embedding"].numpy(), 4)
    np.testing.assert_allclose(logs["at_loss"], at, rtol=1e-4)
    np.testing.assert_allclose(logs["lp_loss"], lp, rtol=1e-3)
    np.testing.assert_allclose(logs["loss"], logs["student_loss"] + 2 * at + 3 * lp, rtol=1e-4)


def test_hint_regressor_is_trained_saved_and_not_in_student(tmp_path):
    teacher = models.get("resnet14", (16, 16, 1), 10)
    student = models.get("resnet8", (16, 16, 1), 10)
    student_weight_count = len(student.weights)
    distiller = Distiller(student, teacher, features=[FeatureTerm("stage3", "stage2", HintLoss(), 1.0)])
    regressor = distiller.adapters["hint_loss"]
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
    assert not any("adapter" in layer.name for layer in student.layers)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras", safe_mode=True)
    for a, b in zip(loaded.adapters["hint_loss"].weights, regressor.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert [t.loss.get_config() for t in loaded.features] == [{"regressor_activation": "relu"}]
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
        Distiller(student, teacher, features=[FeatureTerm("stage4", "stage3", HintLoss())])
    with pytest.raises(ValueError, match="ranks differ"):
        Distiller(student, teacher, features=[FeatureTerm("embedding", "stage3", HintLoss())])
    with pytest.raises(TypeError, match="DistillationLoss"):
        FeatureTerm("stage3", "stage3", "mse")
    with pytest.raises(ValueError, match="weight"):
        FeatureTerm("stage3", "stage3", HintLoss(), weight=-1.0)
    with pytest.raises(TypeError, match="FeatureTerm objects"):
        Distiller(student, teacher, features=[("stage3", "stage3")])

    sub = SubclassedNet()
    sub.build((None, 16, 16, 1))
    with pytest.raises(ValueError, match="cannot be tapped by layer name"):
        Distiller(sub, teacher, features=[FeatureTerm("stage3", "stage3", AttentionTransferLoss())])
    two = [FeatureTerm("stage2", "stage2", AttentionTransferLoss()), FeatureTerm("stage3", "stage3", AttentionTransferLoss())]
    assert Distiller(student, teacher, features=two).feature_names == ["at_loss_stage2", "at_loss_stage3"]
