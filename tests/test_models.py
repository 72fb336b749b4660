import keras
import numpy as np
import pytest

from keras_kd import models, tap_model

from conftest import tiny_model

TAP_SHAPES_28 = {
    "resnet8": {"stem": (28, 28, 16), "stage1": (28, 28, 16), "stage2": (14, 14, 32),
                "stage3": (7, 7, 64), "embedding": (64,)},
    "resnet8x4": {"stem": (28, 28, 32), "stage1": (28, 28, 64), "stage2": (14, 14, 128),
                  "stage3": (7, 7, 256), "embedding": (256,)},
    "wrn_16_2": {"stem": (28, 28, 16), "stage1": (28, 28, 32), "stage2": (14, 14, 64),
                 "stage3": (7, 7, 128), "embedding": (128,)},
    "cnn": {"stem": (28, 28, 16), "stage1": (14, 14, 32), "stage2": (7, 7, 64),
            "stage3": (7, 7, 128), "embedding": (128,)},
}


@pytest.mark.parametrize("name", list(TAP_SHAPES_28))
def test_zoo_taps_from_one_pass(name):
    model = models.get(name, (28, 28, 1), 7)
    view = tap_model(model, models.FEATURE_TAPS)
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype("float32")
    out = view(x, training=False)
    for tap, shape in TAP_SHAPES_28[name].items():
        assert tuple(out[tap].shape[1:]) == shape, tap
    # The view shares the model's layers: same logits, no extra weights.
    np.testing.assert_allclose(out["logits"], model(x, training=False), atol=1e-6)
    assert len(view.weights) == len(model.weights)


@pytest.mark.parametrize("name", models.ZOO_NAMES)
def test_every_zoo_model_builds_with_logits(name):
    if name in ("resnet110", "resnet32x4", "wrn_40_2"):
        pytest.skip("large; covered by the parameter-count test below")
    model = models.get(name, (32, 32, 3), 100)
    assert model.output_shape == (None, 100)
    for tap in models.FEATURE_TAPS:
        model.get_layer(tap)


def resnet_trainable_params(depth, widths, in_channels, classes):
    """Independent count: conv kernels + BN gamma/beta + shortcut projections + fc."""
    n = (depth - 2) // 6
    total = 9 * in_channels * widths[0] + 2 * widths[0]
    prev = widths[0]
    for stage, c in enumerate(widths[1:]):
        for block in range(n):
            cin = prev if block == 0 else c
            total += 9 * cin * c + 9 * c * c + 4 * c
            if block == 0 and (stage > 0 or cin != c):
                total += cin * c + 2 * c
        prev = c
    return total + widths[-1] * classes + classes


@pytest.mark.parametrize(
    "name,depth,widths",
    [("resnet8", 8, (16, 16, 32, 64)), ("resnet20", 20, (16, 16, 32, 64)),
     ("resnet110", 110, (16, 16, 32, 64)), ("resnet8x4", 8, (32, 64, 128, 256)),
     ("resnet32x4", 32, (32, 64, 128, 256))],
)
def test_resnet_parameter_counts(name, depth, widths):
    summary = models.summarize(models.get(name, (32, 32, 3), 100))
    assert summary.trainable_params == resnet_trainable_params(depth, widths, 3, 100)


def test_crd_reference_sizes():
    # Published CIFAR-100 sizes (CRD / RepDistiller): 0.08M, 0.28M, 1.74M, 0.70M, 2.26M params.
    expected = {"resnet8": 0.08, "resnet20": 0.28, "resnet110": 1.74, "wrn_16_2": 0.70, "wrn_40_2": 2.26}
    for name, millions in expected.items():
        params = models.summarize(models.get(name, (32, 32, 3), 100)).trainable_params
        assert abs(params / 1e6 - millions) < 0.011, (name, params)


def test_macs_hand_computed_functional():
    model = tiny_model()  # conv 3x3 stride 2 on 28x28x1 -> 14x14x4, dense 4 -> 10
    assert models.count_macs(model) == 14 * 14 * 4 * 9 * 1 + 4 * 10


def test_macs_of_transposed_depthwise_and_subclassed():
    inputs = keras.Input((4, 4, 3))
    up = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")(inputs)  # 16*3 in, k 3x3x2
    dw = keras.layers.DepthwiseConv2D(3, padding="same")(up)  # 8x8x2 out, 9 each
    model = keras.Model(inputs, dw)
    assert models.count_macs(model) == 16 * 3 * 9 * 2 + 8 * 8 * 2 * 9

    class TwoDense(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Dense(3)
            self.b = keras.layers.Dense(2)

        def call(self, x, training=False):
            return self.b(self.a(x))

    sub = TwoDense()
    sub.build((None, 5))
    assert models.count_macs(sub, input_shape=(5,)) == 5 * 3 + 3 * 2
    with pytest.raises(ValueError, match="input_shape"):
        models.count_macs(sub)


def test_unknown_and_invalid_names():
    with pytest.raises(ValueError, match="Available: resnet8"):
        models.get("resnet9000x")
    with pytest.raises(ValueError, match="6n\\+2"):
        models.get("resnet10")
    with pytest.raises(ValueError, match="6n\\+4"):
        models.get("wrn_15_2")
    with pytest.raises(ValueError, match="num_classes"):
        models.get("resnet8", num_classes=1)
    with pytest.raises(ValueError, match="input_shape"):
        models.get("resnet8", input_shape=(28, 28))


def test_tap_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="no layer named 'stage9'.*Available layers: stem"):
        tap_model(model, ["stage9"])

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="cannot be tapped"):
        tap_model(Sub(), ["stage1"])


def test_synchronize_batchnorm_reaches_nested_branches():
    def batchnorms(model):
        found = []
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                found += batchnorms(layer)
            elif isinstance(layer, keras.layers.BatchNormalization):
                found.append(layer)
        return found

    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype("float32")
    for model in (models.multibranch("resnet8", 2, (16, 16, 1), 10),
                  models.online_ensemble("resnet8", (16, 16, 1), 10, num_students=2)):
        synced = models.synchronize_batchnorm(model)
        layers = batchnorms(synced)
        assert len(layers) == len(batchnorms(model)) > 10 and all(layer.synchronized for layer in layers)
        np.testing.assert_allclose(np.asarray(synced(x)), np.asarray(model(x)), atol=1e-6)
