"""`keras-kd` command line: train (any registered method; train-teacher,
distill and train-online are the same with another default method),
methods, inspect, evaluate, export, quickstart."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: TensorFlow's start-up lines on a machine without a GPU driver (written by
#: C++ code before logging is configured, so TF_CPP_MIN_LOG_LEVEL cannot hide them).
STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWE]\d{4} [\d:. ]+\d+ (port\.cc|cudart_stub\.cc|cpu_feature_guard\.cc|cuda_platform\.cc|cuda_executor\.cc"
    r"|cuda_diagnostics\.cc|gpu_device\.cc)"
    r"|To enable the following instructions:)"
)


def import_tensorflow_quietly():
    """`import tensorflow` and its device discovery with the CPU-only start-up
    chatter (oneDNN notice, "Could not find cuda drivers", the failed cuInit)
    removed from stderr; every other line is passed through."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    stderr = 2  # the file descriptor C++ code writes to, whatever sys.stderr is
    saved = os.dup(stderr)
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), stderr)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, stderr)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not STARTUP_NOISE.match(line):
                    print(line, file=sys.stderr)
    return tf


def graph_error_summary(error: Exception) -> str:
    """The gist of a TensorFlow op error (e.g. TF's own label check when
    `check_labels` is off), without its traceback dump. keras_kd's own checks
    raise `TrainingError` instead."""
    text = str(error)
    match = re.search(r"Received a label value[^\n]*", text)
    return match.group(0) if match else text.strip().splitlines()[-1]


#: run command -> the method used when the config names none.
RUN_COMMANDS = {"train": "kd", "train-teacher": "ce", "distill": "kd", "train-online": "oemc"}


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
    parser.add_argument("--method", help="shortcut for --set method=NAME (see `keras-kd methods`): it replaces the "
                        "config's whole method section, options included; set options with --set method.OPTION=...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-kd", description="Knowledge distillation for Keras 3, from YAML configs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "train": "train with any registered method (config `method.name`, default kd).",
        "train-teacher": "train a teacher: cross-entropy (default), or --method sftn (student-friendly).",
        "distill": "distill a student: `method: kd` (default; any losses) or `method: ekd` (several teachers).",
        "train-online": "online ensemble compression (default `method: oemc`): S students and their ensemble.",
    }
    for command, text in helps.items():
        run = commands.add_parser(command, help=text)
        _add_run_args(run)
        run.add_argument("--student-arch", help="SFTN: the student architecture (--set method.student_arch=ARCH).")
    commands.add_parser("methods", help="list the registered methods with their options, and the losses.")
    inspect = commands.add_parser(
        "inspect", help="list a model's tappable layers (names for teacher_layer_name/student_layer_name)."
    )
    inspect.add_argument("model", help="an architecture (zoo name, keras.applications name, kerashub:DIR), "
                         "a .keras file or a run folder.")
    inspect.add_argument("--input-shape", help="H,W,C of a fresh architecture (default: the dataset's).")
    inspect.add_argument("--dataset", default="fashion_mnist", help="dataset whose image shape and classes "
                         "a fresh architecture is built for (default fashion_mnist).")
    inspect.add_argument("--num-classes", type=int, help="classes of a fresh architecture (default: the dataset's).")
    evaluate = commands.add_parser("evaluate", help="test accuracy, params and FLOPs of a model.")
    evaluate.add_argument("model", help="a .keras file or a run folder.")
    evaluate.add_argument("--dataset", help="default: the run's own data (its config.yaml), else fashion_mnist.")
    evaluate.add_argument("--data-dir")
    export = commands.add_parser("export", help="TFLite export with a Keras parity report.")
    export.add_argument("model", help="a .keras file or a run folder (a distiller exports its student).")
    export.add_argument("--format", choices=["tflite"], default="tflite")
    export.add_argument("--quantize", choices=["none", "dynamic", "int8"], default="none")
    export.add_argument("--dataset", help="test set of the report, int8 calibrates on its train split "
                        "(default: the run's own data from its config.yaml, else fashion_mnist).")
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


def describe_methods() -> str:
    """Every registered method with its options and defaults, then the losses."""
    import inspect

    from keras_kd import registry

    lines = ["methods (config `method.name`; options are keys of the `method` section):"]
    for name in registry.method_names():
        method = registry.method(name)
        lines.append(f"  {name}: {method.description}")
        for option, parameter in method.options.items():
            default = "required" if parameter.default is inspect.Parameter.empty else repr(parameter.default)
            lines.append(f"      {option} = {default}")
    lines.append("losses (entries of `method.losses` for `method: kd`):")
    for name in registry.loss_names():
        cls = registry.loss_class(name)
        summary = (inspect.getdoc(cls) or "").split("\n")[0]
        lines.append(f"  {name}: {cls.__name__} - {summary}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tf = import_tensorflow_quietly()

    from keras_kd.distillers.base import TrainingError
    from trainers import runs
    from trainers.config import ConfigError, load_config

    try:
        if args.command in RUN_COMMANDS:
            overrides = []
            if args.method:
                overrides.append(f"method={args.method}")
            overrides += list(args.overrides)
            if args.run_name:
                overrides.append(f"run_name={args.run_name}")
            if args.output_dir:
                overrides.append(f"output_dir={args.output_dir}")
            if args.student_arch:
                overrides.append(f"method.student_arch={args.student_arch}")
            config = load_config(args.config, overrides, default_method=RUN_COMMANDS[args.command])
            result = runs.train(config, overwrite=args.overwrite, resume=args.resume)
        elif args.command == "methods":
            print(describe_methods())
            return 0
        elif args.command == "inspect":
            print(runs.inspect_model(args.model, args.input_shape, args.dataset, args.num_classes))
            return 0
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
    except TrainingError as error:
        print(f"keras-kd: training stopped: {error}", file=sys.stderr)
        print("keras-kd: the last completed epoch is in the run's backup/ and checkpoints/; "
              "fix the cause and continue with --resume.", file=sys.stderr)
        return 3
    except tf.errors.InvalidArgumentError as error:
        print(f"keras-kd: training stopped: {graph_error_summary(error)}", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
