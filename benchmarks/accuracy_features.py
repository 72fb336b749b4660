"""Accuracy study: baseline, KD, FitNet, AT, LP, LP+KD on real Fashion-MNIST.

ResNet8 students distilled from the reference ResNet20 teacher, 10%
class-balanced training subset, full test set, several seeds, LAST-epoch test
accuracy (mean +- std). Every run keeps its config, log and history under
`saved_models/benchmarks/features/<method>_seed<k>/`.

    python -m benchmarks.accuracy_features --epochs 5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from benchmarks.report import write_section  # noqa: E402
from trainers import runs  # noqa: E402
from trainers.config import load_config  # noqa: E402
from trainers.quickstart import CONFIGS  # noqa: E402

#: label -> (run folder prefix, config file; None = the student trained alone)
METHODS = {
    "student alone (CE)": ("baseline", None),
    "KD": ("kd", "kd_fmnist.yaml"),
    "FitNet (hint, stage2)": ("fitnet", "fitnet_fmnist.yaml"),
    "AT (stages 1-3)": ("at", "at_fmnist.yaml"),
    "LP (embedding)": ("lp", "lp_fmnist.yaml"),
    "LP + KD": ("lpkd", "lp_kd_fmnist.yaml"),
}


def run_method(slug: str, config_file: str | None, seed: int, epochs: int, output_dir: str, teacher: str) -> dict:
    overrides = [
        f"output_dir={output_dir}",
        f"run_name={slug}_seed{seed}",
        f"seed={seed}",
        f"train.epochs={epochs}",
        f"train.validation_freq={epochs}",
        f"teacher.path={teacher}",
    ]
    if config_file is None:
        config = load_config(CONFIGS / "kd_fmnist.yaml", [*overrides, "teacher.path=null"])
        return runs.train_teacher(config, overwrite=True)
    config = load_config(CONFIGS / config_file, overrides)
    return runs.distill(config, overwrite=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher", default="saved_models/reference/teacher_resnet20_fmnist10")
    parser.add_argument("--output-dir", default="saved_models/benchmarks/features")
    parser.add_argument("--docs", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    teacher = runs.evaluate(args.teacher, "fashion_mnist")
    results = {}
    for label, (slug, config_file) in METHODS.items():
        for seed in args.seeds:
            result = run_method(slug, config_file, seed, args.epochs, args.output_dir, args.teacher)
            results.setdefault(label, []).append(result)
            print(f"{label} seed {seed}: {100 * result['test_accuracy']:.2f}%", flush=True)
    rows = ["| method | test accuracy (%) | per seed | train s / run |", "| --- | ---: | --- | ---: |"]
    rows.append(f"| teacher resnet20 ({teacher['params']:,} params) | {100 * teacher['test_accuracy']:.2f} | | |")
    for label, values in results.items():
        acc = 100 * np.array([r["test_accuracy"] for r in values])
        seconds = np.mean([r["train_time_s"] for r in values])
        per_seed = ", ".join(f"{a:.2f}" for a in acc)
        rows.append(f"| {label} | {acc.mean():.2f} +- {acc.std():.2f} | {per_seed} | {seconds:.0f} |")
    student = results["student alone (CE)"][0]
    text = (
        f"Command: `python -m benchmarks.accuracy_features --epochs {args.epochs} --seeds "
        f"{' '.join(map(str, args.seeds))}`. Fashion-MNIST, 10% class-balanced training subset "
        "(6,000 images, augmentation pad 2 + flip), full 10,000-image test set, ResNet8 student "
        f"({student['params']:,} params, {student['macs']:,} MACs) <- reference ResNet20 teacher, "
        f"SGD + cosine, {args.epochs} epochs, LAST-epoch accuracy, mean +- std over seeds "
        f"{args.seeds}. Weights: KD T=4 alpha=0.9 CE 0.1; FitNet 100; AT 1000 per stage; LP 1.5 "
        "(k=5, adaptive sigma2). Configs and logs of every cell: "
        f"`{args.output_dir}/<method>_seed<k>/`.\n\n" + "\n".join(rows)
    )
    write_section(args.docs, "accuracy-features", "Accuracy: feature distillation on Fashion-MNIST 10%", text)
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(text)


if __name__ == "__main__":
    main()
