"""The README's mobile recipe end to end on a generated image folder: teacher,
MobileNetV3Small student with KD + PKT, int8 TFLite export with its parity
report; TensorBoard HParams and a quiet console along the way."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainers import cli

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"
CLASSES = ("circle", "square", "stripes")


def write_images(root: Path, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (40, 40, 3)).astype(np.uint8)
            mask = [(yy - 20) ** 2 + (xx - 20) ** 2 < 120, (abs(yy - 20) < 10) & (abs(xx - 20) < 10), yy % 6 == 0][k]
            image[mask] = 230
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def events(folder: Path) -> list:
    return [event for path in sorted(folder.glob("events.out.tfevents.*"))
            for event in tf.compat.v1.train.summary_iterator(str(path))]


def test_mobile_recipe_end_to_end(tmp_path, capfd):
    images = write_images(tmp_path / "images")
    common = ["--output-dir", str(tmp_path / "runs"), "--set", f"data.path={images}",
              "--set", "data.image_size=[32, 32]", "--set", "data.batch_size=16", "--set", "train.epochs=2"]
    code = cli.main(["train-teacher", "--config", str(CONFIGS / "mobile_teacher_folder.yaml"), *common,
                     "--set", "teacher.arch=resnet20"])
    assert code == 0, capfd.readouterr().err
    capfd.readouterr()
    teacher = tmp_path / "runs" / "mobile_teacher"
    code = cli.main(["distill", "--config", str(CONFIGS / "mobile_kd_folder.yaml"), *common,
                     "--set", f"teacher.path={teacher}", "--set", f"cache.dir={tmp_path / 'cache'}"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    run = tmp_path / "runs" / "mobile_kd"
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == "mobilenetv3small" and results["teacher_cache"]
    assert set(results["test_class_accuracy"]) == set(CLASSES)
    history = (run / "history.csv").read_text().splitlines()
    assert {"distillation_loss", "pkt_loss"} <= set(history[0].split(",")) and len(history) == 3

    # Quiet console: one summary line, each epoch once (Keras' line), no full config dump.
    console = captured.out + captured.err
    assert console.count("Epoch 2/2") == 1 and "epoch 2:" not in console
    assert "run mobile_kd: kd (kd, pkt) | student MobileNetV3Small" in console
    assert "learning_rate: 0.001" not in console  # the YAML dump stays in config.yaml / train.log
    assert "epoch 2:" in (run / "train.log").read_text()
    assert "E0000" not in console and "DT_HALF" not in console  # reading the float16 cache logs no oneDNN error

    # HParams: the run's settings and final metrics, for TensorBoard's comparison views.
    found = events(run / "tensorboard")
    plugins = {v.metadata.plugin_data.plugin_name for e in found for v in e.summary.value}
    assert "hparams" in plugins
    finals = {v.tag: tf.make_ndarray(v.tensor) for e in found for v in e.summary.value if v.tag.startswith("final/")}
    assert finals["final/test_accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert finals["final/params"] == pytest.approx(results["params"], rel=1e-6)
    from tensorboard.plugins.hparams import plugin_data_pb2

    session = [plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
               for e in found for v in e.summary.value if v.metadata.plugin_data.plugin_name == "hparams"][0]
    hparams = session.session_start_info.hparams
    assert hparams["student.arch"].string_value == "MobileNetV3Small"
    assert hparams["train.learning_rate"].number_value == pytest.approx(0.001)

    # int8 export calibrated and checked on the run's own images (read from its config.yaml).
    assert cli.main(["export", str(run), "--quantize", "int8"]) == 0
    report = json.loads((run / "mobilenetv3small_int8.json").read_text())
    assert report["images"] == 6 and report["quantize"] == "int8"  # test_fraction 0.2 of 36 images
    assert 0 <= report["top1_agreement"] <= 1 and Path(report["file"]).stat().st_size > 100_000
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=report["file"])
    assert interpreter.get_input_details()[0]["shape"].tolist() == [1, 32, 32, 3]


def test_startup_noise_filter():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795483304.006731   27467 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
        "E0000 00:00:1795483572.991630   28790 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        "I0000 00:00:1795483291.634400   27440 port.cc:153] oneDNN custom operations are on.",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.",
    ]
    assert all(cli.STARTUP_NOISE.match(line) for line in noise)
    kept = ["E0000 00:00:1.0 1 cuda_dnn.cc:8] could not create cudnn handle", "keras-kd: error: boom",
            "Traceback (most recent call last):"]
    assert not any(cli.STARTUP_NOISE.match(line) for line in kept)


def test_cli_start_up_is_quiet_on_a_cpu_machine():
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "methods"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}, check=True)
    assert "kd:" in result.stdout
    assert result.stderr.strip() == "", result.stderr
