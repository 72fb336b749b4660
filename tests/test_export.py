import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import Distiller, data, export


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
         keras.layers.BatchNormalization(momentum=0.8), keras.layers.Flatten(), keras.layers.Dense(10)],
        name="small",
    )
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train = data.load("synthetic", "train", 100, augment=False)  # a deterministic fixture
    model.fit(train, epochs=10, verbose=0)
    x, y = data.synthetic_arrays("test", 2000)  # enough images for a 1-point tolerance
    x = (x.astype("float32") / 255.0 - 0.5) / 0.25
    test = tf.data.Dataset.from_tensor_slices((x, y)).batch(250)
    return model, train, test


def test_float_dynamic_and_int8_parity_targets(trained, tmp_path):
    model, train, test = trained
    accuracy = model.evaluate(test, return_dict=True, verbose=0)["accuracy"]
    assert accuracy > 0.8, "the fixture model must be trained for the targets to mean something"
    reports = {}
    for quantize in export.QUANTIZATIONS:
        path = export.export_tflite(model, tmp_path / f"m_{quantize}.tflite", quantize, representative_data=train,
                                     num_calibration=500)
        reports[quantize] = export.parity_report(model, path, test, latency_runs=5)
    float_report = reports["none"]
    # float32 TFLite differs from Keras only by operation order: ~1e-6 of the logits' range.
    scale = max(float(np.abs(model.predict(x, verbose=0)).max()) for x, _ in test)
    assert float_report["top1_agreement"] == 1.0 and float_report["max_abs_logit_diff"] < 1e-5 * scale
    assert float_report["tflite_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    int8 = reports["int8"]
    assert int8["top1_agreement"] >= 0.98
    assert abs(int8["tflite_accuracy"] - int8["keras_accuracy"]) <= 0.01
    assert reports["dynamic"]["size_bytes"] < 0.5 * float_report["size_bytes"]
    assert int8["images"] == 2000 and int8["latency_ms_median"] > 0


def test_distiller_exports_its_student(trained, tmp_path):
    model, train, test = trained
    student = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    distiller = Distiller(teacher=model, student=student)
    path = export.export_tflite(distiller, tmp_path / "student.tflite")
    x = next(iter(test))[0].numpy()[:4]
    runner = export.TFLiteRunner(path)
    np.testing.assert_allclose(runner.predict(x), student.predict(x, verbose=0), atol=1e-5)


def test_export_errors(trained, tmp_path):
    model, _, _ = trained
    with pytest.raises(ValueError, match="`quantize` must be one of"):
        export.convert(model, "int4")
    with pytest.raises(ValueError, match="needs representative_data"):
        export.convert(model, "int8")

    class Unconvertible(keras.layers.Layer):
        def call(self, x):
            import tensorflow as tf

            return tf.strings.to_number(tf.strings.as_string(x))

    inputs = keras.Input((4,))
    bad = keras.Model(inputs, Unconvertible()(inputs), name="bad")
    with pytest.raises(export.ExportError, match="TFLite conversion of 'bad' failed"):
        export.convert(bad)


def test_multi_output_model_outputs_read_by_name(tmp_path):
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, {"ensemble": keras.layers.Dense(3, name="ensemble")(features),
                                 "branch": keras.layers.Dense(5, name="branch")(features)})
    path = export.export_tflite(model, tmp_path / "multi.tflite")
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype("float32")
    expected = model(x)
    for name in ("ensemble", "branch"):
        got = export.TFLiteRunner(path, output=name).predict(x)
        np.testing.assert_allclose(got, expected[name], atol=1e-5)
    with pytest.raises(ValueError, match="name the one to read"):
        export.TFLiteRunner(path)
    with pytest.raises(ValueError, match="has no output 'logits'"):
        export.TFLiteRunner(path, output="logits")
