"""Training throughput of keras_kd vs plain training vs keras.distillation.

All configurations run in ONE process on the same in-memory data and models
(ResNet8 student <- ResNet20 teacher, batch 128), each after a warm-up epoch
that absorbs graph tracing; the best of `--rounds` interleaved measurements is
kept. The no-overhead floor of online distillation is
`1 / (1/student_fit + 1/teacher_inference)`.

    python -m benchmarks.throughput            # writes docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.report import write_section  # noqa: E402
from keras_kd import Distiller, FeatureTerm, data, losses, models  # noqa: E402

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
# Keras' jit_compile="auto" turns XLA on for these models even on CPU, where
# it is slower; every configuration uses the same setting: XLA only on GPUs.
JIT = bool(tf.config.list_physical_devices("GPU"))


def dataset(num_images: int, batch_size: int) -> tuple[tf.data.Dataset, str]:
    try:
        x, y = data.load_arrays("fashion_mnist", "train")
        source = "Fashion-MNIST"
    except data.DatasetNotFoundError:
        x, y = data.synthetic_arrays("train", num_images)
        source = "synthetic"
    x = (x[:num_images].astype("float32") / 255.0 - 0.286) / 0.353
    ds = tf.data.Dataset.from_tensor_slices((x, y[:num_images])).batch(batch_size, drop_remainder=True)
    return ds.cache().prefetch(tf.data.AUTOTUNE), source


def timed_fit(model, ds, images: int, epochs: int) -> float:
    model.fit(ds, epochs=1, verbose=0, shuffle=False)  # warm-up: tracing
    start = time.perf_counter()
    model.fit(ds, epochs=epochs, verbose=0, shuffle=False)
    return images * epochs / (time.perf_counter() - start)


def timed_predict(model, ds, images: int, epochs: int) -> float:
    step = tf.function(lambda x: model(x, training=False), jit_compile=JIT)
    for x, _ in ds:
        step(x)
    start = time.perf_counter()
    for _ in range(epochs):
        for x, _ in ds:
            step(x).numpy()
    return images * epochs / (time.perf_counter() - start)


def configurations(teacher, input_shape):
    """name -> factory returning (model, kind) with kind 'fit' or 'predict'."""

    def student():
        return models.get("resnet8", input_shape, 10)

    def ours(features=(), alpha=0.9, ce_weight=0.1):
        def build():
            model = Distiller(student(), teacher, alpha=alpha, ce_weight=ce_weight, features=list(features))
            model.compile(optimizer="sgd", jit_compile=JIT)
            return model
        return build

    def plain():
        model = student()
        model.compile(optimizer="sgd", loss=CE, jit_compile=JIT)
        return model

    def keras_logits():
        model = keras.distillation.Distiller(
            teacher=teacher, student=student(),
            distillation_losses=keras.distillation.LogitsDistillation(temperature=4.0),
            student_loss_weight=0.1,
        )
        model.compile(optimizer="sgd", loss=CE, jit_compile=JIT)
        return model

    def keras_features():
        model = keras.distillation.Distiller(
            teacher=teacher, student=student(),
            distillation_losses=[
                keras.distillation.LogitsDistillation(temperature=4.0),
                keras.distillation.FeatureDistillation(teacher_layer_name="stage2", student_layer_name="stage2"),
            ],
            distillation_loss_weights=[0.9, 100.0],
            student_loss_weight=0.1,
        )
        model.compile(optimizer="sgd", loss=CE, jit_compile=JIT)
        return model

    return {
        "plain student fit (resnet8)": (plain, "fit"),
        "teacher inference (resnet20)": (lambda: teacher, "predict"),
        "keras_kd logit KD": (ours(), "fit"),
        "keras_kd FitNet hint (stage2)": (ours([FeatureTerm("stage2", "stage2", losses.HintLoss(), 100.0)], 0.0, 1.0), "fit"),
        "keras_kd attention transfer (stages 1-3)": (
            ours([FeatureTerm(f"stage{i}", f"stage{i}", losses.AttentionTransferLoss(), 1000.0) for i in (1, 2, 3)], 0.0, 1.0),
            "fit",
        ),
        "keras_kd locality-preserving (embedding)": (
            ours([FeatureTerm("embedding", "embedding", losses.LocalityPreservingLoss(5), 1.5)], 0.0, 1.0), "fit"
        ),
        "keras.distillation logits": (keras_logits, "fit"),
        "keras.distillation logits + FeatureDistillation": (keras_features, "fit"),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    ds, source = dataset(args.images, args.batch_size)
    images = (args.images // args.batch_size) * args.batch_size
    teacher = models.get("resnet20", (28, 28, 1), 10)
    configs = configurations(teacher, (28, 28, 1))
    best = {name: 0.0 for name in configs}
    for round_index in range(args.rounds):
        for name, (factory, kind) in configs.items():
            model = factory()
            measure = timed_fit if kind == "fit" else timed_predict
            best[name] = max(best[name], measure(model, ds, images, args.epochs))
            print(f"round {round_index + 1} {name}: {best[name]:.0f} img/s", flush=True)
    floor = 1.0 / (1.0 / best["plain student fit (resnet8)"] + 1.0 / best["teacher inference (resnet20)"])
    rows = ["| configuration | img/s | x floor |", "| --- | ---: | ---: |"]
    for name, value in best.items():
        ratio = "" if kind_of(configs, name) == "predict" or name.startswith("plain") else f"{value / floor:.2f}"
        rows.append(f"| {name} | {value:.0f} | {ratio} |")
    rows.append(f"| *no-overhead floor 1/(1/student + 1/teacher)* | {floor:.0f} | 1.00 |")
    cpu = platform.processor() or platform.machine()
    text = (
        f"Measured with `python -m benchmarks.throughput --images {args.images} --epochs {args.epochs} "
        f"--rounds {args.rounds}` on {os.cpu_count()} CPU cores ({cpu}), TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, XLA {'on' if JIT else 'off'} for every configuration; {source} 28x28x1, {images} images, batch {args.batch_size}, "
        "best of the rounds. Targets: keras_kd logit KD >= 0.95x the floor, each feature KD >= 0.85x, "
        "both faster than `keras.distillation`.\n\n" + "\n".join(rows)
    )
    write_section(args.output, "throughput", "Training throughput (keras_kd vs keras.distillation)", text)
    print(text)


def kind_of(configs, name):
    return configs[name][1]


if __name__ == "__main__":
    main()
