import json

import keras
import numpy as np
import pytest

from trainers import cli
from trainers.config import ConfigError, load_config

TINY = [
    "data.name=synthetic",
    "data.batch_size=100",
    "train.epochs=1",
    "train.optimizer=adam",
    "train.learning_rate=0.01",
    "train.verbose=0",
]
TINY_ARGS = [arg for override in TINY for arg in ("--set", override)]


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown config key `train.epoch`. Did you mean `train.epochs`"):
        load_config(overrides=["train.epoch=3"])
    with pytest.raises(ConfigError, match="Unknown config key `dat`"):
        load_config(overrides=["dat.name=x"])
    with pytest.raises(ConfigError, match="`train.epochs` must be an integer, got 'three'"):
        load_config(overrides=["train.epochs=three"])
    with pytest.raises(ConfigError, match="`train.epochs` must be an integer"):
        load_config(overrides=["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="`data.augment` must be true or false"):
        load_config(overrides=["data.augment=1"])
    with pytest.raises(ConfigError, match="`data.name` must be one of"):
        load_config(overrides=["data.name=imagenet"])
    with pytest.raises(ConfigError, match="`distill.temperature` must be > 0"):
        load_config(overrides=["distill.temperature=0"])
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(overrides=["train=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    config = load_config(overrides=["train.learning_rate=1", "data.subset_fraction=0.1"])
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert load_config(overrides=["train.weight_decay=5e-4"]).train.weight_decay == 5e-4  # YAML 1.1 string


def test_shipped_configs_are_valid():
    from trainers.quickstart import CONFIGS

    for path in sorted(CONFIGS.glob("*.yaml")):
        load_config(path)


def run_cli(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_distill_evaluate_end_to_end(tmp_path, capsys):
    out_dir = str(tmp_path / "runs")
    code, out, err = run_cli(
        ["train-teacher", "--output-dir", out_dir, "--run-name", "teacher",
         "--set", "teacher.arch=cnn", *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    teacher_dir = tmp_path / "runs" / "teacher"
    for name in ("config.yaml", "train.log", "history.csv", "results.json", "model.keras"):
        assert (teacher_dir / name).is_file(), name
    assert list((teacher_dir / "tensorboard").rglob("*tfevents*"))
    assert (teacher_dir / "checkpoints" / "trainer.keras").is_file()
    assert "epoch 1:" in (teacher_dir / "train.log").read_text()

    code, out, err = run_cli(
        ["distill", "--output-dir", out_dir, "--run-name", "kd",
         "--set", f"teacher.path={teacher_dir}", "--set", "student.arch=resnet8",
         *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    kd_dir = tmp_path / "runs" / "kd"
    assert result["model"] == "resnet8" and 0 <= result["test_accuracy"] <= 1
    student = keras.models.load_model(kd_dir / "student.keras")
    distiller = keras.models.load_model(kd_dir / "distiller.keras")
    x = np.zeros((2, 28, 28, 1), "float32")
    np.testing.assert_allclose(student.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6)

    code, out, err = run_cli(["evaluate", str(kd_dir), "--dataset", "synthetic"], capsys)
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)
    assert evaluated["params"] == result["params"]

    code, out, err = run_cli(
        ["export", str(kd_dir), "--quantize", "dynamic", "--dataset", "synthetic"], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    assert (kd_dir / "resnet8_dynamic.tflite").is_file() and (kd_dir / "resnet8_dynamic.json").is_file()
    assert report["images"] == 300 and report["top1_agreement"] >= 0.9

    # An existing run is never silently replaced.
    code, out, err = run_cli(
        ["distill", "--output-dir", out_dir, "--run-name", "kd",
         "--set", f"teacher.path={teacher_dir}", "--set", "student.arch=resnet8",
         *TINY_ARGS],
        capsys,
    )
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (kd_dir / "student.keras").is_file()


def test_cli_errors_name_the_problem(tmp_path, capsys):
    code, _, err = run_cli(["distill", "--set", "train.epohcs=1", "--output-dir", str(tmp_path)], capsys)
    assert code == 2 and "Unknown config key `train.epohcs`" in err
    code, _, err = run_cli(["distill", "--output-dir", str(tmp_path), "--set", "student.arch=resnet8"], capsys)
    assert code == 2 and "teacher.path" in err
    code, _, err = run_cli(
        ["distill", "--output-dir", str(tmp_path), "--set", "student.arch=resnet8",
         "--set", f"teacher.path={tmp_path / 'nope.keras'}"],
        capsys,
    )
    assert code == 2 and "does not exist" in err
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    code, _, err = run_cli(["evaluate", str(corrupt), "--dataset", "synthetic"], capsys)
    assert code == 2 and "Cannot load model" in err and "corrupt.keras" in err
    code, _, err = run_cli(["train-teacher", "--config", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "does not exist" in err


def test_feature_terms_from_yaml(tmp_path):
    from trainers.quickstart import CONFIGS

    config = load_config(CONFIGS / "at_fmnist.yaml")
    assert [f.student_tap for f in config.distill.features] == ["stage1", "stage2", "stage3"]
    assert config.distill.features[0].weight == 1000.0
    lp = load_config(CONFIGS / "lp_kd_fmnist.yaml").distill.features[0]
    assert (lp.loss, lp.loss_args) == ("lp", {"k": 5})
    with pytest.raises(ConfigError, match=r"`distill.features\[0\].loss_args`: Bad arguments for loss 'lp'"):
        load_config(overrides=["distill.features=[{loss: lp, loss_args: {kk: 3}}]"])
    with pytest.raises(ConfigError, match=r"Unknown config key `distill.features\[0\].tap`"):
        load_config(overrides=["distill.features=[{tap: stage3}]"])
    with pytest.raises(ConfigError, match=r"`distill.features\[0\].loss` must be one of"):
        load_config(overrides=["distill.features=[{loss: crd}]"])


def test_cli_feature_distillation_run(tmp_path, capsys):
    out_dir = str(tmp_path / "runs")
    code, _, err = run_cli(
        ["train-teacher", "--output-dir", out_dir, "--run-name", "t",
         "--set", "teacher.arch=resnet8", *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    code, out, err = run_cli(
        ["distill", "--output-dir", out_dir, "--run-name", "fitnet",
         "--set", f"teacher.path={tmp_path / 'runs' / 't'}", "--set", "student.arch=cnn",
         "--set", "distill.features=[{teacher_tap: stage2, student_tap: stage2, loss: hint, weight: 10.0}]",
         *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    header = (tmp_path / "runs" / "fitnet" / "history.csv").read_text().splitlines()[0]
    assert "hint_loss" in header and "val_hint_loss" in header
    code, _, err = run_cli(
        ["distill", "--output-dir", out_dir, "--run-name", "mirrored_bf16",
         "--set", f"teacher.path={tmp_path / 'runs' / 't'}", "--set", "student.arch=cnn",
         "--set", "train.strategy=mirrored", "--set", "train.mixed_precision=mixed_bfloat16",
         *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    student = keras.models.load_model(tmp_path / "runs" / "mirrored_bf16" / "student.keras")
    assert student.layers[1].compute_dtype == "bfloat16"
    assert "MirroredStrategy over 1 replica" in (tmp_path / "runs" / "mirrored_bf16" / "train.log").read_text()


def test_tensorboard_event_files_hold_the_expected_tags(tmp_path, capsys):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    out_dir = str(tmp_path / "runs")
    assert run_cli(["train-teacher", "--output-dir", out_dir, "--run-name", "t",
                    "--set", "teacher.arch=cnn", *TINY_ARGS], capsys)[0] == 0
    code, _, err = run_cli(
        ["distill", "--output-dir", out_dir, "--run-name", "at",
         "--set", f"teacher.path={tmp_path / 'runs' / 't'}", "--set", "student.arch=resnet8",
         "--set", "distill.features=[{teacher_tap: stage3, student_tap: stage3, loss: at, weight: 10.0}]",
         *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    board = tmp_path / "runs" / "at" / "tensorboard"
    train = EventAccumulator(str(board / "train"))
    train.Reload()
    tags = set(train.Tags()["tensors"])
    for tag in ("epoch_loss", "epoch_student_loss", "epoch_distillation_loss", "epoch_at_loss",
                "epoch_accuracy", "epoch_learning_rate", "config", "hparams"):
        assert tag in tags, (tag, sorted(tags))
    validation = EventAccumulator(str(board / "validation"))
    validation.Reload()
    assert {"epoch_at_loss", "epoch_accuracy"} <= set(validation.Tags()["tensors"])
    projector = board / "projector"
    assert (projector / "projector_config.pbtxt").is_file()
    assert len((projector / "metadata.tsv").read_text().splitlines()) == 300
