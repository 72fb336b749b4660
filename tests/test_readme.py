"""The README's Python examples run as written, one after another as a reader
would paste them, on fewer images and epochs (the mobile recipe, which needs an
image folder, has its own test: test_mobile_recipe.py)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: What makes the examples small: (as written, as run). Each must occur in the README.
SMALLER = (
    ("subset_fraction=0.1", "subset_fraction=0.01"),
    ('data.load("fashion_mnist", "test", batch_size=512)', 'data.load("fashion_mnist", "test", batch_size=512).take(1)'),
    ("epochs=20", "epochs=1"),
    ("epochs=5", "epochs=1"),
    ("epochs=30", "epochs=2"),
    ("batches_per_epoch(train, 30)", "batches_per_epoch(train, 2)"),
    ('"saved_models/reference/', f'"{ROOT}/saved_models/reference/'),  # also inside the f-string
)


def python_examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [block for block in blocks if 'DataSource("folder"' not in block]


def test_python_examples_run_in_order(tmp_path):
    script = "\n".join(python_examples())
    for written, run in SMALLER:
        assert written in script, f"the README no longer contains {written!r}: update SMALLER"
        script = script.replace(written, run)
    script += "\nprint('README examples done', sorted(p.name for p in __import__('pathlib').Path('.').iterdir()))\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    done = result.stdout.strip().splitlines()[-1]
    for saved in ("student.keras", "branch2.keras", "sftn_teacher.keras", "logs", "saved_models"):
        assert saved in done, done
    assert (tmp_path / "saved_models" / "teacher_cache" / "kd_resnet20").is_dir()
