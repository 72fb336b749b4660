"""CLI runs of the ensemble methods: EKD (online and cached teachers), SFTN teachers."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from test_cli import TINY_ARGS, run_cli

from keras_kd import EnsembleDistiller, models


def _teachers(tmp_path, capsys, archs):
    paths = []
    for arch in archs:
        code, _, err = run_cli(
            ["train-teacher", "--output-dir", str(tmp_path), "--run-name", f"t_{arch}",
             "--set", f"teacher.arch={arch}", *TINY_ARGS],
            capsys,
        )
        assert code == 0, err
        paths.append(str(tmp_path / f"t_{arch}"))
    return paths


def test_cli_ekd_with_cache_saves_branches_and_ensemble(tmp_path, capsys):
    teachers = _teachers(tmp_path, capsys, ["cnn", "resnet8"])
    teacher_list = "[" + ", ".join(f"{{path: {p}}}" for p in teachers) + "]"
    args = ["distill", "--output-dir", str(tmp_path), "--run-name", "ekd",
            "--method", "ekd", "--set", f"teachers={teacher_list}", "--set", "student.arch=resnet8",
            "--set", "method.alpha=1.0", "--set", "cache.teacher_outputs=cached",
            "--set", f"cache.dir={tmp_path / 'caches'}", *TINY_ARGS]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out)
    run = tmp_path / "ekd"
    assert {"test_branch1_accuracy", "test_branch2_accuracy"} <= result.keys()
    assert (Path(result["teacher_cache"]) / "manifest.json").is_file()
    student = keras.models.load_model(run / "student.keras")
    x = np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype("float32")
    branches = [keras.models.load_model(run / f"branch{i}.keras") for i in (1, 2)]
    np.testing.assert_allclose(student(x), np.mean([b(x) for b in branches], axis=0), atol=1e-5)
    assert isinstance(keras.models.load_model(run / "distiller.keras"), EnsembleDistiller)
    for folder in ("projector", "projector_teacher1", "projector_teacher2"):
        assert (run / "tensorboard" / folder / "projector_config.pbtxt").is_file(), folder
    history = (run / "history.csv").read_text().splitlines()[0]
    for name in ("branch1_kd_loss", "branch2_embedding_loss", "ensemble_ce_loss", "branch2_accuracy"):
        assert name in history
    # The ensemble's export as ONE TFLite file is tested in test_ensemble.py (same exporter as the CLI).

    code, _, err = run_cli(
        ["distill", "--output-dir", str(tmp_path), "--run-name", "bad", "--method", "ekd",
         "--set", f"teachers=[{{path: {teachers[0]}}}]", "--set", "student.arch=resnet8",
         "--set", "method.temperature=[1.0, 2.0]", *TINY_ARGS],
        capsys,
    )
    assert code == 2 and "`temperature` has 2 values but there are 1 teachers" in err


def test_cli_sftn_teacher_then_kd_from_it(tmp_path, capsys):
    code, out, err = run_cli(
        ["train-teacher", "--method", "sftn", "--student-arch", "resnet8", "--output-dir", str(tmp_path),
         "--run-name", "sftn", "--set", "teacher.arch=wrn_16_1", *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == "wrn_16_1" and {"test_branch1_accuracy", "test_branch2_accuracy"} <= result.keys()
    teacher = keras.models.load_model(tmp_path / "sftn" / "model.keras")
    assert not [layer.name for layer in teacher.layers if "transform" in layer.name or "branch" in layer.name]
    assert teacher.count_params() == models.get("wrn_16_1", (28, 28, 1), 10).count_params()
    code, out, err = run_cli(
        ["distill", "--output-dir", str(tmp_path), "--run-name", "kd", "--set", f"teacher.path={tmp_path / 'sftn'}",
         "--set", "student.arch=resnet8", *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    code, _, err = run_cli(
        ["train-teacher", "--method", "sftn", "--output-dir", str(tmp_path), "--run-name", "x",
         "--set", "teacher.arch=resnet8", *TINY_ARGS],
        capsys,
    )
    assert code == 2 and "`method.student_arch`: Field required" in err


def test_cli_online_ensemble_writes_every_student_and_the_table(tmp_path, capsys):
    code, out, err = run_cli(
        ["train-online", "--output-dir", str(tmp_path), "--run-name", "oemc", "--set", "student.arch=resnet8",
         "--set", "method.num_students=2", *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    run = tmp_path / "oemc"
    rows = {row["name"]: row for row in result["students"]}
    assert list(rows) == ["student1", "student2", "ensemble"]
    for name in rows:
        assert (run / f"{name}.keras").is_file() and (run / f"{name}.tflite").is_file()
    assert rows["student1"]["params"] > rows["student2"]["params"]
    assert rows["ensemble"]["test_accuracy"] == result["test_accuracy"]
    assert rows["student2"]["test_accuracy"] == result["test_student2_accuracy"]
    assert "| student2 |" in (run / "students.md").read_text()
    code, out, err = run_cli(["evaluate", str(run), "--dataset", "synthetic"], capsys)  # the ensemble
    assert code == 0, err
    assert json.loads(out)["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)
