"""`keras-kd` command line: train-teacher, distill, evaluate, export, quickstart."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def graph_error_summary(error: Exception) -> str:
    """The keras_kd message of an in-graph assertion, without TF's traceback dump."""
    text = str(error)
    for pattern in (r"keras_kd: [^\]\n]*\]? ?\[?-?\d*", r"labels must lie in [^\n]*", r"Received a label value[^\n]*"):
        match = re.search(pattern, text)
        if match:
            return match.group(0).replace("] [", " ").rstrip("]")
    return text.strip().splitlines()[-1]


#: command -> function of trainers.runs
RUNS = {"train-teacher": "train_teacher", "distill": "distill", "train-online": "train_online"}


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (see trainers/configs/).")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=3 (repeatable).",
    )
    parser.add_argument("--run-name", help="shortcut for --set run_name=NAME.")
    parser.add_argument("--output-dir", help="shortcut for --set output_dir=DIR.")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder.")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last epoch checkpoint."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-kd", description="Knowledge distillation for Keras 3, from YAML configs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    teacher = commands.add_parser(
        "train-teacher", help="train a teacher: cross-entropy, or SFTN (student-friendly, --method sftn)."
    )
    _add_run_args(teacher)
    teacher.add_argument(
        "--method", choices=["ce", "sftn"], help="shortcut for --set teacher_method=METHOD (default: config, ce)."
    )
    teacher.add_argument("--student-arch", help="SFTN: the student architecture (--set sftn.student_arch=ARCH).")
    distill = commands.add_parser(
        "distill", help="distill a student: KD/feature terms from a teacher, or EKD from several teachers."
    )
    _add_run_args(distill)
    online = commands.add_parser(
        "train-online", help="online ensemble compression: S students of decreasing width and their ensemble."
    )
    _add_run_args(online)
    evaluate = commands.add_parser("evaluate", help="test accuracy, params and FLOPs of a model.")
    evaluate.add_argument("model", help="a .keras file or a run folder.")
    evaluate.add_argument("--dataset", default="fashion_mnist")
    evaluate.add_argument("--data-dir")
    export = commands.add_parser("export", help="TFLite export with a Keras parity report.")
    export.add_argument("model", help="a .keras file or a run folder (a distiller exports its student).")
    export.add_argument("--format", choices=["tflite"], default="tflite")
    export.add_argument("--quantize", choices=["none", "dynamic", "int8"], default="none")
    export.add_argument("--dataset", default="fashion_mnist", help="test set of the report; int8 calibrates on its train split.")
    export.add_argument("--data-dir")
    export.add_argument("--output", help="path of the .tflite file (default: beside the model).")
    export.add_argument("--max-images", type=int, help="limit the parity report to N test images.")
    quick = commands.add_parser(
        "quickstart", help="the main job: teacher, baseline student and KD student on Fashion-MNIST."
    )
    quick.add_argument("--output-dir", default="saved_models")
    quick.add_argument("--epochs", type=int, default=None, help="student epochs (default: config).")
    quick.add_argument("--retrain-teacher", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    from trainers import runs
    from trainers.config import ConfigError, load_config

    try:
        if args.command in RUNS:
            overrides = list(args.overrides)
            if args.run_name:
                overrides.append(f"run_name={args.run_name}")
            if args.output_dir:
                overrides.append(f"output_dir={args.output_dir}")
            if getattr(args, "method", None):
                overrides.append(f"teacher_method={args.method}")
            if getattr(args, "student_arch", None):
                overrides.append(f"sftn.student_arch={args.student_arch}")
            config = load_config(args.config, overrides)
            run = getattr(runs, RUNS[args.command])
            result = run(config, overwrite=args.overwrite, resume=args.resume)
        elif args.command == "export":
            result = runs.export_run(
                args.model, args.quantize, args.dataset, args.data_dir, args.output, args.max_images
            )
        elif args.command == "evaluate":
            result = runs.evaluate(args.model, args.dataset, args.data_dir)
        else:
            from trainers import quickstart

            result = quickstart.run(args.output_dir, args.epochs, args.retrain_teacher)
    except (ConfigError, runs.RunError, ValueError, FileNotFoundError) as error:
        print(f"keras-kd: error: {error}", file=sys.stderr)
        return 2
    except tf.errors.InvalidArgumentError as error:
        # In-graph checks: non-finite loss terms, labels out of range.
        print(f"keras-kd: training stopped: {graph_error_summary(error)}", file=sys.stderr)
        print("keras-kd: the last completed epoch is in the run's backup/ and checkpoints/; "
              "fix the cause and continue with --resume.", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
