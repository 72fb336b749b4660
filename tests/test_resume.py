"""A run killed with SIGKILL mid-training resumes from its last epoch checkpoint."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras

from trainers import cli, runs

ROOT = Path(__file__).parents[1]


def test_sigkill_then_resume_finishes_with_continuing_optimizer(tmp_path):
    common = ["--output-dir", str(tmp_path), "--set", "data.name=synthetic", "--set", "data.batch_size=50",
              "--set", "train.verbose=0", "--set", "train.optimizer=adam"]
    assert cli.main(["train-teacher", "--run-name", "teacher", "--set", "teacher.arch=cnn",
                     "--set", "train.epochs=1", *common]) == 0
    command = [sys.executable, "-m", "trainers.cli", "distill", "--run-name", "kd", "--set", "train.epochs=6",
               "--set", f"teacher.path={tmp_path / 'teacher'}", "--set", "student.arch=resnet8", *common]
    run_dir = tmp_path / "kd"
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    deadline = time.time() + 240
    # Kill during the third epoch: two epochs are in the CSV log and the backup.
    while time.time() < deadline and process.poll() is None:
        history = run_dir / "history.csv"
        if history.exists() and len(history.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "student.keras").exists()
    assert (run_dir / "backup").is_dir()

    code = cli.main([*command[3:], "--resume"])
    assert code == 0
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    epochs = sorted({int(row["epoch"]) for row in rows})
    assert epochs == list(range(6))
    distiller = keras.models.load_model(run_dir / "distiller.keras")
    steps_per_epoch = 1000 // 50
    # The optimizer continued: exactly 6 epochs of steps, not 6 + the killed ones.
    assert int(distiller.optimizer.iterations) == 6 * steps_per_epoch
    assert "epoch 6:" in (run_dir / "train.log").read_text()
    # The training time counts the killed attempt's epochs too, not only the resumed attempt's:
    # the sum of the last logged duration of each of the 6 epochs.
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_at_epoch"] >= 2 and "train_time_partial" not in results
    last = {}
    for line in (run_dir / "train.log").read_text().splitlines():
        if " epoch " in line[23:31]:
            last[int(line[23:].split()[1].rstrip(":"))] = float(line.rsplit("seconds=", 1)[1])
    assert sorted(last) == list(range(1, 7))
    assert results["train_time_s"] == round(sum(last.values()), 1)


def test_logged_epoch_seconds_reads_every_attempt_and_keeps_an_epochs_last_run(tmp_path):
    (tmp_path / "train.log").write_text("\n".join([
        "2026-11-24 09:00:00,000 run kd: config",
        "train:",  # the config dump: no time
        "  epochs: 4",
        "2026-11-24 09:00:01,000 teacher cache: not used",
        "2026-11-24 09:00:04,500 epoch 1: accuracy=0.5000 loss=1.0000",  # an older log: time since the line before
        "2026-11-24 09:00:06,000 epoch 2: accuracy=0.6000 loss=0.9000 seconds=1.250",
        "2026-11-24 09:00:07,000 epoch 3: accuracy=0.6500 loss=0.8000 seconds=0.900",
        "2026-11-24 10:00:00,000 run kd: config",  # killed, resumed from the backup of epoch 2
        "2026-11-24 10:00:01,000 teacher cache: not used",
        "2026-11-24 10:00:03,000 epoch 3: accuracy=0.6600 loss=0.8000 seconds=1.750",
        "2026-11-24 10:00:03,100 some other message",
        "2026-11-24 10:00:05,000 epoch 4: accuracy=0.7000 loss=0.7000 seconds=1.800",
    ]) + "\n")
    assert runs.logged_epoch_seconds(tmp_path) == {0: 3.5, 1: 1.25, 2: 1.75, 3: 1.8}


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    common = ["--output-dir", str(tmp_path), "--run-name", "t", "--set", "data.name=synthetic",
              "--set", "train.epochs=1", "--set", "train.verbose=0", "--set", "teacher.arch=cnn"]
    assert cli.main(["train-teacher", *common]) == 0
    assert cli.main(["train-teacher", *common, "--set", "train.learning_rate=0.1", "--resume"]) == 2
    assert "config differs from the saved one in train.learning_rate" in capsys.readouterr().err


def test_a_run_killed_after_its_last_epoch_resumes_there_not_at_epoch_one(tmp_path, monkeypatch):
    """The backup outlives `fit` until the results are written: a kill while
    evaluating or saving the finished run costs no epoch."""
    common = ["--output-dir", str(tmp_path), "--set", "data.name=synthetic", "--set", "data.batch_size=50",
              "--set", "train.verbose=0", "--set", "teacher.arch=cnn", "--set", "train.epochs=2"]
    original = runs._results

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a SIGTERM/SIGINT after the last epoch does

    monkeypatch.setattr(runs, "_results", killed)
    try:
        cli.main(["train-teacher", "--run-name", "t", *common])
    except KeyboardInterrupt:
        pass
    run_dir = tmp_path / "t"
    assert not (run_dir / "results.json").exists()
    assert json.loads((run_dir / "backup" / "training_metadata.json").read_text())["epoch"] == 2
    monkeypatch.setattr(runs, "_results", original)
    assert cli.main(["train-teacher", "--run-name", "t", *common, "--resume"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_at_epoch"] == 2 and results["epochs"] == 2
    trainer = keras.models.load_model(run_dir / "distiller.keras")
    assert int(trainer.optimizer.iterations) == 2 * (1000 // 50)  # no epoch trained again
    assert "epoch 3:" not in (run_dir / "train.log").read_text()
    assert not (run_dir / "backup").exists()  # removed once the results are written
