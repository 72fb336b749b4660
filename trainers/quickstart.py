"""The main job: on real Fashion-MNIST (10% class-balanced training subset,
full test set), reuse or train a ResNet20 teacher, train a ResNet8 student
without and with Hinton KD, and print a comparison table."""

from __future__ import annotations

import json
from pathlib import Path

from trainers import runs
from trainers.config import load_config

CONFIGS = Path(__file__).parent / "configs"


def format_table(rows: list[dict]) -> str:
    header = f"| {'role':<19} | {'model':<9} | {'params':>8} | {'MACs':>11} | {'test acc':>8} | {'train s':>7} |"
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for row in rows:
        lines.append(
            f"| {row['role']:<19} | {row['model']:<9} | {row['params']:>8,} | {row['macs']:>11,} "
            f"| {100 * row['test_accuracy']:>7.2f}% | {row.get('train_time_s', 0):>7.1f} |"
        )
    return "\n".join(lines)


def run(output_dir: str = "saved_models", epochs: int | None = None, retrain_teacher: bool = False) -> dict:
    teacher_config = load_config(
        CONFIGS / "teacher_fmnist.yaml", [f"output_dir={output_dir}/reference"]
    )
    teacher_dir = teacher_config.run_dir
    if retrain_teacher or not (teacher_dir / "model.keras").is_file():
        print(f"Training the teacher into {teacher_dir} ...", flush=True)
        teacher = runs.train(teacher_config, overwrite=True)
        teacher["role"] = "teacher (trained)"
    else:
        print(f"Reusing the teacher in {teacher_dir}", flush=True)
        teacher = runs.evaluate(str(teacher_dir), teacher_config.data.name)
        recorded = teacher_dir / "results.json"
        if recorded.is_file():
            teacher["train_time_s"] = json.loads(recorded.read_text()).get("train_time_s", 0.0)
        teacher["role"] = "teacher (reused)"
    student_overrides = [f"output_dir={output_dir}/quickstart", f"teacher.path={teacher_dir}"]
    if epochs:
        student_overrides.append(f"train.epochs={epochs}")
    base_config = load_config(
        CONFIGS / "kd_fmnist.yaml",
        [*student_overrides, "run_name=student_baseline", "teacher.path=null", "method=ce"],
    )
    print("Training the student without distillation ...", flush=True)
    baseline = runs.train(base_config, overwrite=True)
    baseline["role"] = "student (CE only)"
    kd_config = load_config(CONFIGS / "kd_fmnist.yaml", [*student_overrides, "run_name=student_kd"])
    print("Distilling the student from the teacher ...", flush=True)
    kd = runs.train(kd_config, overwrite=True)
    kd["role"] = "student (Hinton KD)"
    table = format_table([teacher, baseline, kd])
    print("\nFashion-MNIST, 10% class-balanced training subset, full test set:\n" + table, flush=True)
    (Path(output_dir) / "quickstart" / "table.md").write_text(table + "\n")
    return {"teacher": teacher, "baseline": baseline, "kd": kd}
