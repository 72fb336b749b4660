import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np


def errors(text: str) -> str:
    """The error lines of a worker's stderr (its tensor dumps are huge)."""
    return "\n".join(line for line in text.splitlines() if "Error" in line or "error:" in line)[-3000:]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_finish_with_identical_weights(tmp_path):
    script = Path(__file__).with_name("multiworker_worker.py")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   CUDA_VISIBLE_DEVICES="")
        processes.append(subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"w{index}.npy")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=240)
            outputs.append((process.returncode, out, errors(err)))
    finally:
        for process in processes:
            process.kill()
    for code, out, err in outputs:
        assert code == 0, out + err
        assert "iterations 8" in out  # 64 images, global batch 16 (8 per worker), 2 epochs
    a, b = np.load(tmp_path / "w0.npy"), np.load(tmp_path / "w1.npy")
    np.testing.assert_array_equal(a, b)


def test_cli_multiworker_distill(tmp_path):
    import keras

    from trainers import cli

    common = ["--set", "data.name=synthetic", "--set", "data.batch_size=100", "--set", "train.epochs=1",
              "--set", "train.verbose=0", "--output-dir", str(tmp_path)]
    assert cli.main(["train-teacher", "--run-name", "teacher", "--set", "teacher.arch=cnn", *common]) == 0
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   CUDA_VISIBLE_DEVICES="")
        command = [sys.executable, "-m", "trainers.cli", "distill", "--run-name", "mw",
                   "--set", "train.strategy=multiworker", "--set", "train.sync_batchnorm=true", "--set", f"teacher.path={tmp_path / 'teacher'}",
                   "--set", "student.arch=resnet8", *common]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, cwd=Path(__file__).parents[1]))
    try:
        results = [p.communicate(timeout=300) for p in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, out + errors(err)
    chief, other = tmp_path / "mw", tmp_path / "mw.worker1"
    assert (chief / "student.keras").is_file() and (other / "student.keras").is_file()
    student = keras.models.load_model(chief / "student.keras")
    assert student.get_layer("stem_bn").synchronized
    a = student.get_weights()  # BatchNorm moving statistics included: synchronized
    b = keras.models.load_model(other / "student.keras").get_weights()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
