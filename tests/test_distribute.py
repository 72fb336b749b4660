import subprocess
import sys
from pathlib import Path


def test_mirrored_strategy_step_matches_single_device():
    script = Path(__file__).with_name("distribute_step.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.count("max weight difference") == 7
    assert result.stdout.count("unchanged True; iterations 1") == 2
    assert "label 17 at step 1" in result.stdout
    assert result.stdout.count("copies, max difference from the gathered update") == 2
    assert "crd memory_labels: 2 copies, equal to the gathered labels: True" in result.stdout
    assert "max difference between replicas 0; finite True" in result.stdout
