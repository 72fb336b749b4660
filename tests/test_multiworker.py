import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np


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
            outputs.append((process.returncode, out, err[-3000:]))
    finally:
        for process in processes:
            process.kill()
    for code, out, err in outputs:
        assert code == 0, out + err
        assert "iterations 8" in out  # 64 images, global batch 16 (8 per worker), 2 epochs
    a, b = np.load(tmp_path / "w0.npy"), np.load(tmp_path / "w1.npy")
    np.testing.assert_array_equal(a, b)
