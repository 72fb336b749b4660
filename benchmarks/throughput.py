"""Training throughput of keras_kd vs plain training vs keras.distillation.

All configurations run in ONE process on the same in-memory data and models
(ResNet8 student <- ResNet20 teacher, batch 128), each after a warm-up epoch
that absorbs graph tracing. img/s comes from a low percentile of the step
times (the ensemble and cache tables: best of `--rounds` interleaved
measurements; the KD table: over all of a configuration's steps), and the KD
table's step cost of each method relative to logit KD from paired steps (each
timed next to a logit-KD step, `paired_step_costs`). The no-overhead floor of online
distillation is `1 / (1/student_fit + 1/teacher_inference)`.

    python -m benchmarks.throughput                   # both tables, one process -> docs/benchmarks.md
    python -m benchmarks.throughput --tables ensemble # EKD only: 1 vs 3 branches, online vs cached teachers
    python -m benchmarks.throughput --tables cache    # crop+flip views: cached teachers vs plain student fit
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.report import write_section  # noqa: E402
from keras_kd import Distiller, EnsembleDistiller, Supervised, data, losses, models, registry  # noqa: E402
from keras_kd.methods.kd import build_losses  # noqa: E402

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


#: The step time kept of each measurement: this machine's slow phases (a fixed ~2.5 s per
#: 20-step epoch, whatever the model) come and go within seconds, so whole-epoch timings are
#: often all slow; a low percentile of the individual steps is the fast-phase step.
STEP_PERCENTILE = 10


class StepClock(keras.callbacks.Callback):
    """Wall time of every training step."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def timed_fit(model, ds, images: int, epochs: int, initial_epoch: int = 0) -> float:
    """img/s of `model.fit` from `initial_epoch` (a distiller's epoch counter,
    which selects the stage of staged methods)."""
    model.fit(ds, initial_epoch=initial_epoch, epochs=initial_epoch + 1, verbose=0, shuffle=False)  # tracing
    clock = StepClock()
    model.fit(ds, initial_epoch=initial_epoch, epochs=initial_epoch + epochs, verbose=0, shuffle=False,
              callbacks=[clock])
    return images * epochs / len(clock.seconds) / np.percentile(clock.seconds, STEP_PERCENTILE)


def timed_predict(model, ds, images: int, epochs: int) -> float:
    step = tf.function(lambda x: model(x, training=False), jit_compile=JIT)
    for x, _ in ds:
        step(x)
    seconds = []
    for _ in range(epochs):
        for x, _ in ds:
            start = time.perf_counter()
            step(x).numpy()
            seconds.append(time.perf_counter() - start)
    return images * epochs / len(seconds) / np.percentile(seconds, STEP_PERCENTILE)


#: Rows timed again with a smaller setting of the user's cost lever: (loss name, loss arguments, label).
#: ReviewKD's fusion modules are 64 channels wide at every level by the benchmark code's rule.
COST_LEVERS = (("reviewkd", {"mid_channels": 16}, "mid_channels 16 instead of 64"),)


def configurations(teacher, input_shape):
    """name -> factory returning (model, kind) with kind 'fit' or 'predict'."""

    def student():
        return models.get("resnet8", input_shape, 10)

    def ours(distillation_losses=None, weights=None, student_loss_weight=0.1):
        def build():
            model = Distiller(teacher=teacher, student=student(), distillation_losses=distillation_losses,
                              distillation_loss_weights=weights, student_loss_weight=student_loss_weight)
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

    configs = {
        "plain student fit (resnet8)": (plain, "fit"),
        "teacher inference (resnet20)": (lambda: teacher, "predict"),
        "keras_kd logit KD": (ours(), "fit"),
    }
    for name, row in registry.suite_rows():
        if name == "kd" or getattr(losses.loss_class(name), "needs_sample_index", False):
            continue  # logit KD is the reference above; memory-bank losses need indexed batches (crd_configurations)
        built, weights = build_losses(row.loss_specs(name, epochs=4))
        stage = row.stage_epochs(4)
        # A staged method (AB's and FSP's initialisation, FT's paraphraser) is timed in each stage: the fit
        # starts at its first epoch (FT runs only the current stage's modules; after AB's and FSP's stage
        # the distiller drops their idle terms and, with them, the teacher's pass).
        configs[f"keras_kd {row.label}" + (", in its pre-training stage" if stage else "")] = (
            ours(built, weights, row.student_loss_weight), "fit")
        if stage:
            configs[f"keras_kd {row.label}, after its stage"] = (ours(built, weights, row.student_loss_weight),
                                                               "fit", stage)
    for name, overrides, suffix in COST_LEVERS:
        row = dict(registry.suite_rows())[name]
        specs = [{**spec, **overrides} for spec in row.loss_specs(name, epochs=4)]
        built, weights = build_losses(specs)
        configs[f"keras_kd {row.label}, {suffix}"] = (ours(built, weights, row.student_loss_weight), "fit")
    configs["keras.distillation logits"] = (keras_logits, "fit")
    configs["keras.distillation logits + FeatureDistillation"] = (keras_features, "fit")
    return configs


ENSEMBLE_TEACHERS = ("resnet20", "wrn_16_1", "cnn")


def ensemble_configurations(ds, input_shape, cache_dir):
    """name -> (factory, kind, dataset): EKD online/cached vs plain multi-branch training."""
    teachers = [models.get(name, input_shape, 10) for name in ENSEMBLE_TEACHERS]
    images = tf.concat([x for x, _ in ds], axis=0).numpy()
    labels = tf.concat([y for _, y in ds], axis=0).numpy()
    batch = next(iter(ds))[0].shape[0]
    probe = EnsembleDistiller(teachers=teachers, student=models.multibranch("resnet8", 3, input_shape, 10))
    columns = {}
    for index, view in enumerate(probe.frozen_teachers(), start=1):  # what a cache puts in each batch
        outputs = view.predict(images, batch_size=512, verbose=0)
        columns.update({f"teacher{index}_{name}": value for name, value in outputs.items()})
    cached = tf.data.Dataset.from_tensor_slices(({"image": images, **columns}, labels))
    cached = cached.batch(batch, drop_remainder=True).cache().prefetch(tf.data.AUTOTUNE)

    def plain(branches):
        def build():
            model = Supervised(model=models.multibranch("resnet8", branches, input_shape, 10))
            model.compile(optimizer="sgd", jit_compile=JIT)
            return model
        return build

    def ekd(count):
        def build():
            model = EnsembleDistiller(teachers=teachers[:count], student=models.multibranch("resnet8", count, input_shape, 10))
            model.compile(optimizer="sgd", jit_compile=JIT)
            return model
        return build

    configs = {
        "plain 1-branch student fit (resnet8 + ensemble layer)": (plain(1), "fit", ds),
        "plain 3-branch student fit": (plain(3), "fit", ds),
        **{f"teacher inference ({name})": ((lambda t=t: t), "predict", ds) for name, t in zip(ENSEMBLE_TEACHERS, teachers, strict=True)},
        "EKD 1 branch, 1 online teacher (resnet20)": (ekd(1), "fit", ds),
        "EKD 3 branches, 3 online teachers": (ekd(3), "fit", ds),
        "EKD 3 branches, 3 cached teachers": (ekd(3), "fit", cached),
    }
    return configs


def ensemble_main(args, ds, source, images) -> None:
    import tempfile

    configs = ensemble_configurations(ds, (28, 28, 1), tempfile.mkdtemp(prefix="kd_cache_"))
    best = best_of_rounds(configs, images, args)
    plain3 = best["plain 3-branch student fit"]
    teacher_time = sum(1.0 / best[f"teacher inference ({n})"] for n in ENSEMBLE_TEACHERS)
    floor = 1.0 / (1.0 / plain3 + teacher_time)
    rows = ["| configuration | img/s | x plain 3-branch fit |", "| --- | ---: | ---: |"]
    rows += [f"| {name} | {value:.0f} | {value / plain3:.2f} |" for name, value in best.items()]
    rows.append(f"| *online floor 1/(1/plain 3-branch + sum 1/teacher)* | {floor:.0f} | {floor / plain3:.2f} |")
    text = (
        measured_with("ensemble", args, source, images) + " Student: ResNet8 branches with a shared "
        "stem; teachers ResNet20, WRN-16-1, CNN (EKD terms: CE, KD and embedding mimicry per branch + ensemble "
        "CE). With the cache the teachers never run during training.\n\n" + "\n".join(rows)
    )
    write_section(args.output, "throughput-ensemble", "Training throughput: EKD, online vs cached teachers", text)
    print(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweeps", type=int, default=20, help="kd table: paired steps per configuration and round")
    parser.add_argument("--output", default="docs/benchmarks.md")
    parser.add_argument("--tables", nargs="+", choices=["kd", "ensemble", "cache"], default=["kd", "ensemble", "cache"])
    parser.add_argument("--match", nargs="+", help="kd table: only configurations whose name contains one of "
                        "these (plus the plain fit, teacher inference and logit KD); prints, writes no docs.")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    ds, source = dataset(args.images, args.batch_size)
    images = (args.images // args.batch_size) * args.batch_size
    if "kd" in args.tables:
        kd_main(args, ds, source, images)
    if "ensemble" in args.tables:
        ensemble_main(args, ds, source, images)
    if "cache" in args.tables:
        cache_main(args)


def crd_configurations(teacher, input_shape, ds):
    """CRD with its memory bank sized for this benchmark's images and for the
    full Fashion-MNIST training set (60,000 x 128): batches carry indices."""
    indexed = ds.unbatch().enumerate().map(lambda i, xy: ({"image": xy[0], "index": i}, xy[1]))
    indexed = indexed.batch(next(iter(ds))[0].shape[0], drop_remainder=True).cache().prefetch(tf.data.AUTOTUNE)

    def crd(num_samples):
        def build():
            loss = losses.CRDLoss(num_samples=num_samples, teacher_layer_name="embedding",
                                  student_layer_name="embedding")
            model = Distiller(teacher=teacher, student=models.get("resnet8", input_shape, 10),
                              distillation_losses=[loss], distillation_loss_weights=[0.8], student_loss_weight=1.0)
            model.compile(optimizer="sgd", jit_compile=JIT)
            return model
        return build

    return {
        "keras_kd CRD (memory 2,560 x 128)": (crd(2560), "fit", indexed),
        "keras_kd CRD (memory 60,000 x 128)": (crd(60000), "fit", indexed),
    }


#: The committed trained ResNet20: feature losses see a trained teacher's features (an untrained
#: ResNet20's pooled features are ~30x larger, enough to make unnormalised losses such as CC diverge).
REFERENCE_TEACHER = "saved_models/reference/teacher_resnet20_fmnist10/model.keras"


def kd_main(args, ds, source, images) -> None:
    teacher = (keras.models.load_model(REFERENCE_TEACHER) if os.path.isfile(REFERENCE_TEACHER)
               else models.get("resnet20", (28, 28, 1), 10))
    configs = {name: (factory, kind, ds, *start) for name, (factory, kind, *start)
               in configurations(teacher, (28, 28, 1)).items()}
    configs.update(crd_configurations(teacher, (28, 28, 1), ds))
    if args.match:
        keep = ("plain student fit (resnet8)", "teacher inference (resnet20)", "keras_kd logit KD")
        configs = {name: c for name, c in configs.items() if name in keep or any(m in name for m in args.match)}
    best, costs = paired_step_costs(configs, "keras_kd logit KD", args)
    floor = 1.0 / (1.0 / best["plain student fit (resnet8)"] + 1.0 / best["teacher inference (resnet20)"])
    rows = ["| configuration | img/s | x floor | step cost x logit KD (median of rounds) | range over rounds |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for name in configs:
        value = best[name]
        fitted = not (kind_of(configs, name) == "predict" or name.startswith("plain"))
        ratio = f"{value / floor:.2f}" if fitted else ""
        label = f"{name} (against itself: the control)" if name == "keras_kd logit KD" else name
        rows.append(f"| {label} | {value:.0f} | {ratio} | {np.median(costs[name]):.2f} "
                    f"| {min(costs[name]):.2f}-{max(costs[name]):.2f} |")
    rows.append(f"| *no-overhead floor 1/(1/student + 1/teacher)* | {floor:.0f} | 1.00 | | |")
    text = (
        measured_with("kd", args, source, images) + f" Step costs are paired: {args.sweeps} sweeps per round, "
        "each timing one step of every configuration next to one step of logit KD; a round's cost is the "
        "median of those ratios. Targets: keras_kd logit KD >= 0.95x the floor, each feature KD >= 0.85x, both "
        "faster than `keras.distillation`; every feature/relation method's step at most 1.2x logit KD's."
        "\n\n" + "\n".join(rows)
    )
    if not args.match:
        write_section(args.output, "throughput", "Training throughput (keras_kd vs keras.distillation)", text)
    print(text)


def cache_main(args) -> None:
    """Crop+flip views from `keras_kd.data.load` for every configuration;
    cached teachers read their outputs from a `TeacherOutputCache` of those views."""
    import tempfile

    fraction = min(1.0, args.images / 54000)
    epochs = 1 + args.epochs  # the first (tracing) epoch is not timed
    common = dict(subset_fraction=fraction, validation_fraction=0.1, epochs=epochs, drop_remainder=True)
    augmentation = data.Augmentation(pad=2, flip=True, seed=0)
    images, labels = data.load_arrays("fashion_mnist", "train", subset_fraction=fraction, validation_fraction=0.1)
    shape = (28, 28, 1)
    kd_teacher = models.get("resnet20", shape, 10)
    ekd_teachers = [models.get(name, shape, 10) for name in ENSEMBLE_TEACHERS]

    def kd():
        return Distiller(teacher=kd_teacher, student=models.get("resnet8", shape, 10))

    def ekd():
        return EnsembleDistiller(teachers=ekd_teachers, student=models.multibranch("resnet8", 3, shape, 10))

    def plain(branches):
        if branches == 1:
            return lambda: Supervised(model=models.get("resnet8", shape, 10))
        return lambda: Supervised(model=models.multibranch("resnet8", branches, shape, 10))

    build_seconds, caches = {}, {}
    for name, factory in (("kd", kd), ("ekd", ekd)):
        folder = tempfile.mkdtemp(prefix=f"kd_cache_{name}_")
        start = time.perf_counter()
        caches[name] = factory().build_teacher_cache(
            images, labels, folder, preprocess=lambda b: data.standardize(b, "fashion_mnist"),
            augmentation=augmentation, epochs=epochs, verbose=0)
        build_seconds[name] = time.perf_counter() - start

    def pipeline(cache=None):
        return data.load("fashion_mnist", "train", args.batch_size, augment=augmentation, teacher_cache=cache,
                         **common)

    configs = {
        "plain ResNet8 fit": (plain(1), None),
        "KD, online ResNet20 teacher": (kd, None),
        "KD, cached ResNet20 teacher": (kd, "kd"),
        "plain 3-branch fit": (plain(3), None),
        "EKD, 3 online teachers": (ekd, None),
        "EKD, 3 cached teachers": (ekd, "ekd"),
    }
    count = (len(images) // args.batch_size) * args.batch_size
    best = {name: 0.0 for name in configs}
    for round_index in range(args.rounds):
        for name, (factory, cache_name) in configs.items():
            model = factory()
            model.compile(optimizer="sgd", jit_compile=JIT)
            ds = pipeline(caches.get(cache_name))
            steps = data.batches_per_epoch(ds, epochs)
            clock = StepClock()
            model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[clock])
            value = args.batch_size / np.percentile(clock.seconds[steps:], STEP_PERCENTILE)  # epoch 1 traces
            best[name] = max(best[name], value)
            print(f"round {round_index + 1} {name}: {value:.0f} img/s (best {best[name]:.0f})", flush=True)
    baseline = {"KD": "plain ResNet8 fit", "EKD": "plain 3-branch fit", "plain": None}
    rows = ["| configuration | img/s | x plain fit of the same student |", "| --- | ---: | ---: |"]
    for name, value in best.items():
        reference = baseline[name.split(",")[0].split(" ")[0]] or name
        rows.append(f"| {name} | {value:.0f} | {value / best[reference]:.2f} |")
    views = len(images) * epochs
    text = (
        measured_with("cache", args, "Fashion-MNIST", count) + " Every configuration reads the same seeded "
        "pad-2 crop + flip views through `keras_kd.data.load`. Targets: cached KD and cached EKD >= 0.9x the "
        "plain fit of the same student.\n\n" + "\n".join(rows) + "\n\n"
        f"Building the caches ({epochs} epochs x {len(images)} views, float16): ResNet20 "
        f"{build_seconds['kd']:.1f} s ({views / build_seconds['kd']:.0f} views/s), the 3 EKD teachers "
        f"{build_seconds['ekd']:.1f} s ({views / build_seconds['ekd']:.0f} views/s); a cache is built once per "
        "(images, teachers, augmentation seed) and then shared by every run that matches."
    )
    write_section(args.output, "throughput-cache", "Training throughput: teacher-output cache with augmentation",
                  text)
    print(text)


def measured_with(table: str, args, source: str, images: int) -> str:
    """The command and conditions of a measurement, for the docs."""
    cpu = platform.processor() or platform.machine()
    timed = f"--rounds {args.rounds} --sweeps {args.sweeps}" if table == "kd" else (
        f"--epochs {args.epochs} --rounds {args.rounds}")
    if table == "kd" and args.match:
        timed += " --match " + " ".join(shlex.quote(m) for m in args.match)
    timing = (f"img/s from the {STEP_PERCENTILE}th-percentile time of all of a configuration's steps in the "
              "sweeps below" if table == "kd" else
              f"best of the rounds, each measurement's img/s from its {STEP_PERCENTILE}th-percentile step time "
              f"over {args.epochs} timed epochs")
    return (
        f"Measured with `python -m benchmarks.throughput --tables {table} --images {args.images} "
        f"{timed}` on {os.cpu_count()} CPU cores ({cpu}), TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}, XLA {'on' if JIT else 'off'} for every configuration; "
        f"{source} 28x28x1, {images} images, batch {args.batch_size}; {timing} (this machine has slow phases of "
        "seconds)."
    )


def kind_of(configs, name):
    return configs[name][1]


def best_of_rounds(configs: dict, images: int, args) -> dict[str, float]:
    """Best img/s of each `name -> (factory, "fit"|"predict", dataset[, initial
    epoch])` over `args.rounds` interleaved rounds (a fresh model per
    measurement), each measurement from its `STEP_PERCENTILE`-th percentile
    step time."""
    best = {name: 0.0 for name in configs}
    for round_index in range(args.rounds):
        for name, (factory, kind, data_ds, *start) in configs.items():
            if kind == "fit":
                value = timed_fit(factory(), data_ds, images, args.epochs, *start)
            else:
                value = timed_predict(factory(), data_ds, images, args.epochs)
            best[name] = max(best[name], value)
            print(f"round {round_index + 1} {name}: {value:.0f} img/s (best {best[name]:.0f})", flush=True)
    return best


def _step_timer(factory, kind: str, data_ds, epoch: int = 0):
    """A built, traced configuration as a function timing one step (a training
    step, or a forward pass for 'predict'), on its own endless iterator."""
    iterator = iter(data_ds.repeat())
    model = factory()
    if kind == "fit":
        model.fit(data_ds, initial_epoch=epoch, epochs=epoch + 1, verbose=0, shuffle=False)  # tracing; sets the stage
        if hasattr(model, "enter_epoch"):  # the end of fit restores the every-term step: time fit's step at `epoch`
            model.enter_epoch(epoch)
        train_step = model.make_train_function()

        def run():
            return train_step(iterator)["loss"]
    else:
        forward = tf.function(lambda x: model(x, training=False), jit_compile=JIT)

        def run():
            return forward(next(iterator)[0])

    def step():
        start = time.perf_counter()
        keras.ops.convert_to_numpy(run())
        seconds = time.perf_counter() - start
        if hasattr(model, "raise_if_failed"):  # a refused (non-finite) step is not a training step
            model.raise_if_failed()
        return seconds

    step()
    return step


def paired_step_costs(configs: dict, reference: str, args) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Each configuration's step time relative to `reference`'s, from adjacent
    steps: every configuration is built and traced once; each of
    `args.rounds` rounds runs `args.sweeps` sweeps, and a sweep times one
    step of every configuration right after one step of the reference (the
    order of the two alternates). A round's cost is the median over its
    sweeps of (step / adjacent reference step): this machine's slow phases
    last seconds, so both steps of a pair fall in the same phase and the
    ratio does not depend on which phase a measurement happened to catch.
    The reference is paired with itself too, as a control.

    Returns the img/s of each configuration (its `STEP_PERCENTILE`-th
    percentile step over all rounds) and its per-round costs."""
    steps = {}
    for name, (factory, kind, data_ds, *start) in configs.items():
        steps[name] = _step_timer(factory, kind, data_ds, *start)
        print(f"traced {name}", flush=True)
    seconds = {name: [] for name in configs}
    costs = {name: [] for name in configs}
    for round_index in range(args.rounds):
        ratios = {name: [] for name in configs}
        for sweep in range(args.sweeps):
            for name, step in steps.items():
                if sweep % 2:
                    own, ref = step(), steps[reference]()
                else:
                    ref, own = steps[reference](), step()
                seconds[name].append(own)
                ratios[name].append(own / ref)
        for name in configs:
            costs[name].append(float(np.median(ratios[name])))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {c[-1]:.3f}" for n, c in costs.items()), flush=True)
    speed = {name: args.batch_size / float(np.percentile(s, STEP_PERCENTILE)) for name, s in seconds.items()}
    return speed, costs


if __name__ == "__main__":
    main()
