"""Bring your own models: keras.applications by name, local weights, KerasHub
presets, taps by layer name and `keras-kd inspect`."""

import importlib.util

import keras
import numpy as np
import pytest

from keras_kd import models, taps
from keras_kd.models.applications import stable_layer_names
from trainers import cli


@pytest.mark.parametrize("name", ["MobileNetV3Small", "EfficientNetV2B0"])
def test_applications_give_logits_and_named_taps(name):
    model = models.get(name, (32, 32, 1), 5)
    assert model.output_shape == (None, 5) and model.inputs[0].shape[1:] == (32, 32, 1)
    view = taps.tap_model(model, ["features", "embedding"])
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype("float32")
    out = view(x)
    # embedding = spatial mean of features; logits = the head applied to the embedding.
    np.testing.assert_allclose(out["embedding"], np.mean(out["features"], axis=(1, 2)), atol=1e-5)
    head = model.get_layer("logits")
    np.testing.assert_allclose(out["logits"], head(out["embedding"]), atol=1e-5)
    np.testing.assert_allclose(out["logits"], model(x), atol=1e-5)


def test_automatic_layer_names_do_not_depend_on_what_was_built_before():
    first = [layer.name for layer in models.get("MobileNetV3Small", (32, 32, 3), 3).layers]
    for _ in range(3):
        keras.layers.Activation("relu")  # advances Keras' process-wide name counters
    second = [layer.name for layer in models.get("MobileNetV3Small", (32, 32, 3), 3).layers]
    assert first == second and "activation_1" in first
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(3)(x)))
    renamed = stable_layer_names(model)
    assert [layer.name for layer in renamed.layers[1:]] == ["dense_1", "dense_2"]
    data = np.ones((1, 4), "float32")
    np.testing.assert_allclose(renamed(data), model(data))  # same weights


def test_weights_files_and_errors(tmp_path):
    model = models.get("MobileNetV2", (32, 32, 3), 4)
    path = tmp_path / "mine.weights.h5"
    model.save_weights(path)
    again = models.get("MobileNetV2", (32, 32, 3), 4, weights=str(path))
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(again(x), model(x), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        models.get("MobileNetV2", (32, 32, 3), 4, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="cannot be built for inputs \\(28, 28, 1\\)"):
        models.get("MobileNetV3Small", (28, 28, 1), 4)
    with pytest.raises(ValueError, match="`width_ratio` scales zoo models only"):
        models.get("MobileNetV2", (32, 32, 3), 4, width_ratio=0.5)
    resnet = models.get("resnet8", (28, 28, 1), 10)
    resnet.save_weights(tmp_path / "r.weights.h5")
    loaded = models.get("resnet8", (28, 28, 1), 10, weights=str(tmp_path / "r.weights.h5"))
    np.testing.assert_array_equal(loaded.get_weights()[0], resnet.get_weights()[0])


def test_inspect_lists_tappable_layers(capsys, tmp_path):
    assert cli.main(["inspect", "MobileNetV3Small", "--input-shape", "64,64,3", "--num-classes", "7"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv3small: input (None, 64, 64, 3)" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert lines["features"][1] == "Identity" and lines["embedding"][-2:] == ["576)", "0"]
    assert lines["logits"][-1] == f"{576 * 7 + 7:,}"
    model = models.get("resnet8", (28, 28, 1), 10)
    model.save(tmp_path / "m.keras")
    assert cli.main(["inspect", str(tmp_path / "m.keras")]) == 0
    assert "stage3" in capsys.readouterr().out
    assert cli.main(["inspect", "NoSuchNet"]) == 2
    assert "Unknown model 'nosuchnet'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("keras_hub") is None, reason="keras-hub not installed (extra `hub`)")
def test_keras_hub_backbone_from_a_local_preset(tmp_path):
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
    )
    backbone.save_to_preset(str(tmp_path / "preset"))
    model = models.get(f"kerashub:{tmp_path / 'preset'}", (32, 32, 3), 4)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    out = taps.tap_model(model, ["features"])(x)
    np.testing.assert_allclose(out["features"], backbone(x), atol=1e-5)  # the preset's own weights
    assert model.output_shape == (None, 4)
    with pytest.raises(FileNotFoundError, match="not a KerasHub preset directory"):
        models.get(f"kerashub:{tmp_path}", (32, 32, 3), 4)
