"""Training runs behind the CLI: each writes its resolved config, a log,
TensorBoard events, checkpoints, the final model and results under
`<output_dir>/<run_name>/`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import keras
import yaml

import keras_kd
from keras_kd import data, models
from trainers import methods
from trainers.config import RunConfig, dump

LOG = logging.getLogger("keras_kd")


class RunError(RuntimeError):
    """A run cannot start or its inputs are unusable."""


def atomic_save(model: keras.Model, path: Path) -> Path:
    """Saves to a temporary file then renames, so a crash never leaves a truncated model."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def worker_index() -> int:
    """This process' index among MultiWorkerMirroredStrategy workers (0 = chief)."""
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    return int(task.get("index", 0)) if task.get("type", "worker") in ("worker", "chief") else 0


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same_config(run_dir: Path, config: RunConfig) -> None:
    saved = _flatten(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    current = _flatten(yaml.safe_load(dump(config)))
    changed = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
    if changed:
        raise RunError(
            f"Cannot resume {run_dir}: the config differs from the saved one in "
            f"{', '.join(changed)}. Resume with the same settings or start a new run."
        )


def prepare_run_dir(config: RunConfig, overwrite: bool, resume: bool = False) -> Path:
    run_dir = config.run_dir
    if config.train.strategy == "multiworker" and worker_index() > 0:
        # Only the chief writes the run folder; other workers keep theirs apart.
        run_dir = run_dir.with_name(f"{config.run_name}.worker{worker_index()}")
    exists = run_dir.exists() and any(run_dir.iterdir())
    if exists and resume and (run_dir / "config.yaml").is_file():
        _check_same_config(run_dir, config)
    elif exists:
        if not overwrite:
            raise RunError(
                f"Run folder {run_dir} already exists. Pick another run_name "
                "(--run-name), pass --resume to continue it from its last checkpoint, "
                "or --overwrite to replace it."
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump(config))
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.info("run %s: config\n%s", config.run_name, dump(config))
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    LOG.info("%s over %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return run_dir


def close_log() -> None:
    for handler in list(LOG.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            LOG.removeHandler(handler)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model at every epoch end through a temporary file + rename."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(self.model, self.path)


class EpochLogger(keras.callbacks.Callback):
    """Writes one line of metrics per epoch into the run log."""

    def on_epoch_end(self, epoch, logs=None):
        items = " ".join(f"{k}={float(v):.4f}" for k, v in sorted((logs or {}).items()))
        LOG.info("epoch %d: %s", epoch + 1, items)


def datasets(config: RunConfig, teacher_cache=None):
    """(train, test) pipelines from the `data` section (training batches carry
    the cached teacher outputs when `teacher_cache` is given)."""
    cfg = config.data
    common = dict(data_dir=cfg.data_dir, subset_seed=cfg.subset_seed)
    train = data.load(
        cfg.name,
        "train",
        cfg.batch_size,
        subset_fraction=cfg.subset_fraction,
        validation_fraction=cfg.validation_fraction,
        augment=cfg.augment,
        pad=cfg.pad,
        seed=config.seed,
        teacher_cache=teacher_cache,
        accept_augmentation=config.distill.ekd.accept_augmentation,
        **common,
    )
    test = data.load(cfg.name, "test", 512, **common)
    return train, test


def optimizer(config: RunConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    cfg = config.train
    lr = cfg.learning_rate
    if cfg.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=cfg.epochs * steps_per_epoch)
    wd = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=True, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    return keras.optimizers.Adam(lr, weight_decay=wd)


def jit_setting(config: RunConfig) -> bool:
    """`train.jit_compile`; "auto" means XLA on GPUs only (on CPUs it is slower
    for these convnets, while Keras' own "auto" would enable it)."""
    import tensorflow as tf

    if config.train.jit_compile == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return config.train.jit_compile


def steps_in(dataset, config: RunConfig) -> int:
    if config.train.steps_per_epoch:
        return config.train.steps_per_epoch
    return int(dataset.cardinality())


#: The deployable model of a run folder, by kind of run (teacher, distillation, online ensemble).
RUN_MODELS = ("model.keras", "student.keras", "ensemble.keras")


def load_model_ref(ref: str) -> keras.Model:
    """A saved model from a `.keras` file or a run folder."""
    path = Path(ref)
    if path.is_dir():
        for name in RUN_MODELS:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise RunError(f"Run folder {ref} holds none of {', '.join(RUN_MODELS)}.")
    if not path.is_file():
        raise RunError(f"Model file {ref} does not exist.")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # keras raises several types for corrupt files
        raise RunError(f"Cannot load model {path}: {error}") from error


def build_model(section, config: RunConfig, role: str) -> keras.Model:
    """The model of a `teacher`/`student` section; the trained one gets
    synchronized BatchNorm when `train.sync_batchnorm` is set."""
    meta = data.info(config.data.name)
    if section.path:
        model = load_model_ref(section.path)
    elif not section.arch:
        raise RunError(f"`{role}` needs `arch` (a zoo name) or `path` (a saved model).")
    else:
        ratio = methods.exact_ratio(section.width_ratio)
        model = models.get(section.arch, meta.input_shape, meta.num_classes, width_ratio=ratio)
    if config.train.sync_batchnorm and role != "teacher":
        model = models.synchronize_batchnorm(model)
    return model


class RunSummaries(keras.callbacks.Callback):
    """TensorBoard text of the resolved config at the start of training."""

    def __init__(self, run_dir: Path, config: RunConfig):
        super().__init__()
        self.logdir = str(run_dir / "tensorboard" / "train")
        self.config = config

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        with tf.summary.create_file_writer(self.logdir).as_default():
            tf.summary.text("config", "```\n" + dump(self.config) + "```", step=0)
            hparams = {**dataclasses.asdict(self.config.distill), **dataclasses.asdict(self.config.train)}
            rows = "\n".join(f"| {k} | {v} |" for k, v in hparams.items())
            tf.summary.text("hparams", "| hparam | value |\n|---|---|\n" + rows, step=0)


def write_run_projector(
    run_dir: Path, model: keras.Model, test, taps=("embedding",), folder: str = "projector"
) -> None:
    """Test-set embeddings (the `taps` layers, concatenated) for the projector (zoo models),
    under `<run>/tensorboard/<folder>`."""
    from keras_kd.projector import collect_embeddings, write_projector

    names = [layer.name for layer in getattr(model, "layers", [])]
    if not all(tap in names for tap in taps):
        LOG.info("no %s layer: projector embeddings skipped", "/".join(taps))
        return
    embeddings, labels = collect_embeddings(model, test, list(taps))
    write_projector(run_dir / "tensorboard" / folder, embeddings, labels)


def callbacks(run_dir: Path, model_file: str, config: RunConfig) -> list:
    return [
        # Restores weights, optimizer state and epoch after a crash (--resume);
        # the previous copy is kept in case the process dies while writing.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
        EpochLogger(),
        RunSummaries(run_dir, config),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch"),
        AtomicCheckpoint(run_dir / "checkpoints" / model_file),
    ]


def _fit(model, config, train, test, run_dir, model_file) -> float:
    """Compiles with the run's optimizer and XLA setting, trains with the run's
    callbacks; returns the wall-clock seconds."""
    model.compile(optimizer=optimizer(config, steps_in(train, config)), jit_compile=jit_setting(config))
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    start = time.perf_counter()
    model.fit(
        train,
        epochs=config.train.epochs,
        steps_per_epoch=config.train.steps_per_epoch,
        validation_data=test,
        validation_freq=config.train.validation_freq,
        callbacks=callbacks(run_dir, model_file, config),
        verbose=config.train.verbose,
        shuffle=False,  # the tf.data pipeline already shuffles
    )
    return time.perf_counter() - start


def _epochs_done(run_dir: Path) -> int:
    """Epochs recorded in history.csv (one line each, across resumed attempts)."""
    lines = (run_dir / "history.csv").read_text().splitlines() if (run_dir / "history.csv").exists() else []
    return len({line.split(",", 1)[0] for line in lines[1:] if line and line[0].isdigit()})


def _results(run_dir: Path, trainer, test, train_time: float, extra: dict) -> dict:
    """Size and final test accuracy of the trained (deployable) model, plus
    every other accuracy the trainer reports (branches, students)."""
    model = trainer.deployable()
    summary = models.summarize(model)
    metrics = trainer.evaluate(test, return_dict=True, verbose=0)
    results = {
        "model": model.name,
        "params": summary.params,
        "trainable_params": summary.trainable_params,
        "macs": summary.macs,
        "test_accuracy": float(metrics["accuracy"]),
        **{
            f"test_{name}": float(value)
            for name, value in metrics.items()
            if name.endswith("_accuracy") and name != "accuracy"
        },
        "train_time_s": round(train_time, 1),
        **extra,
    }
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    LOG.info("results: %s", json.dumps(results))
    return results


def compile_for_evaluation(model: keras.Model) -> None:
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )


@contextlib.contextmanager
def run_context(config: RunConfig):
    """Applies `train.mixed_precision` and `train.strategy` to the models built
    inside (MirroredStrategy uses every local GPU, or the CPU), then restores
    float32."""
    import tensorflow as tf

    strategy = None
    if config.train.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif config.train.strategy == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise RunError("train.strategy=multiworker needs the TF_CONFIG environment variable of each worker.")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    policy = config.train.mixed_precision
    keras.mixed_precision.set_global_policy("float32" if policy == "none" else policy)
    try:
        if strategy is None:
            yield
        else:
            with strategy.scope():
                yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def train_teacher(config: RunConfig, overwrite: bool = False, resume: bool = False) -> dict:
    """Trains a plain model with cross-entropy (teacher, or a baseline student)."""
    with run_context(config):
        return _train_plain(config, overwrite, resume)


def distill(config: RunConfig, overwrite: bool = False, resume: bool = False) -> dict:
    """Distills `student` from the saved `teacher` with the `distill` section."""
    with run_context(config):
        return _distill(config, overwrite, resume)


def _train_plain(config: RunConfig, overwrite: bool, resume: bool) -> dict:
    keras.utils.set_random_seed(config.seed)
    section = config.teacher if (config.teacher.arch or config.teacher.path) else config.student
    if config.teacher_method == "ce":
        trainer = keras_kd.Supervised(build_model(section, config, "trained model"))
    else:
        trainer = methods.TEACHER_TRAINERS[config.teacher_method](config, build_model)
    model = trainer.deployable()
    run_dir = prepare_run_dir(config, overwrite, resume)
    try:
        train, test = datasets(config)
        seconds = _fit(trainer, config, train, test, run_dir, "trainer.keras")
        atomic_save(model, run_dir / "model.keras")
        write_run_projector(run_dir, model, test)
        return _results(run_dir, trainer, test, seconds, {"run_dir": str(run_dir), "epochs": _epochs_done(run_dir)})
    finally:
        close_log()


def _distill(config: RunConfig, overwrite: bool, resume: bool) -> dict:
    keras.utils.set_random_seed(config.seed)
    distiller = methods.DISTILLERS[config.distill.method](config, build_model)
    student = distiller.student
    run_dir = prepare_run_dir(config, overwrite, resume)
    try:
        train, test = datasets(config, methods.teacher_cache(config, distiller, run_dir))
        seconds = _fit(distiller, config, train, test, run_dir, "distiller.keras")
        atomic_save(distiller, run_dir / "distiller.keras")
        atomic_save(student, run_dir / "student.keras")
        extra = {"run_dir": str(run_dir), "epochs": _epochs_done(run_dir)}
        if isinstance(distiller, keras_kd.EnsembleDistiller):
            for index in range(1, distiller.num_teachers + 1):
                atomic_save(models.extract_branch(student, index), run_dir / f"branch{index}.keras")
            branches = [f"branch{i}_embedding" for i in range(1, distiller.num_teachers + 1)]
            write_run_projector(run_dir, student, test, branches)
            for index, teacher in enumerate(distiller.teachers, start=1):  # the paper's t-SNE compares them
                write_run_projector(run_dir, teacher, test, folder=f"projector_teacher{index}")
            extra["teachers"] = [section.path for section in config.teachers]
        else:
            write_run_projector(run_dir, student, test)
            extra["teacher"] = config.teacher.path
        return _results(run_dir, distiller, test, seconds, extra)
    finally:
        close_log()


def train_online(config: RunConfig, overwrite: bool = False, resume: bool = False) -> dict:
    """Online ensemble compression from scratch: every student and the ensemble
    saved as `.keras` + `.tflite`, with `students.md` (params, MACs, accuracy,
    size relative to student 1) beside them."""
    with run_context(config):
        return _train_online(config, overwrite, resume)


def _train_online(config: RunConfig, overwrite: bool, resume: bool) -> dict:
    keras.utils.set_random_seed(config.seed)
    distiller = methods.build_online(config, build_model)
    run_dir = prepare_run_dir(config, overwrite, resume)
    try:
        train, test = datasets(config)
        seconds = _fit(distiller, config, train, test, run_dir, "distiller.keras")
        atomic_save(distiller, run_dir / "distiller.keras")
        results = _results(
            run_dir, distiller, test, seconds, {"run_dir": str(run_dir), "epochs": _epochs_done(run_dir)}
        )
        results["students"] = _online_deliverables(distiller, run_dir, results)
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
        return results
    finally:
        close_log()


def _online_deliverables(distiller, run_dir: Path, results: dict) -> list[dict]:
    """Saves every student and the ensemble (.keras + .tflite); their test
    accuracies are the ones the distiller's evaluation already reported."""
    from keras_kd import export

    networks = {f"student{j}": distiller.student_model(j) for j in range(1, distiller.num_students + 1)}
    networks["ensemble"] = distiller.ensemble_model()
    accuracies = {name: results[f"test_{name}_accuracy"] for name in networks if name != "ensemble"}
    accuracies["ensemble"] = results["test_accuracy"]
    rows = []
    for name, model in networks.items():
        atomic_save(model, run_dir / f"{name}.keras")
        export.export_tflite(model, run_dir / f"{name}.tflite")
        summary = models.summarize(model)
        rows.append({"name": name, "params": summary.params, "macs": summary.macs, "test_accuracy": accuracies[name]})
    for row in rows:
        row["params_vs_student1"] = round(row["params"] / rows[0]["params"], 4)
    table = ["| model | params | MACs | test acc (%) | params / student 1 |", "| --- | ---: | ---: | ---: | ---: |"]
    table += [
        f"| {r['name']} | {r['params']:,} | {r['macs']:,} | {100 * r['test_accuracy']:.2f} | {r['params_vs_student1']:.3f} |"
        for r in rows
    ]
    atomic_write_text(run_dir / "students.md", "\n".join(table) + "\n")
    LOG.info("students:\n%s", "\n".join(table))
    return rows


def evaluate(ref: str, dataset: str, data_dir: str | None = None, batch_size: int = 512) -> dict:
    """Test accuracy, params and MACs of a saved model or run."""
    model = load_model_ref(ref)
    if isinstance(model, keras_kd.BaseDistiller):
        model = model.student
    meta = data.info(dataset)
    input_shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if input_shape is not None and tuple(input_shape) != meta.input_shape:
        raise RunError(
            f"Model {ref} takes inputs of shape {input_shape} but {dataset} images are {meta.input_shape}."
        )
    compile_for_evaluation(model)
    test = data.load(dataset, "test", batch_size, data_dir=data_dir)
    metrics = model.evaluate(test, return_dict=True, verbose=0)
    summary = models.summarize(model, meta.input_shape)
    return {
        "model": model.name,
        "test_accuracy": float(metrics["accuracy"]),
        "params": summary.params,
        "macs": summary.macs,
    }


def export_run(
    ref: str,
    quantize: str = "none",
    dataset: str = "fashion_mnist",
    data_dir: str | None = None,
    output: str | None = None,
    max_images: int | None = None,
) -> dict:
    """TFLite file of a saved model or run, plus its parity report (JSON beside it)."""
    from keras_kd import export

    model = export.deployable(load_model_ref(ref))
    source = Path(ref)
    folder = source if source.is_dir() else source.parent
    suffix = "" if quantize == "none" else f"_{quantize}"
    path = Path(output) if output else folder / f"{model.name}{suffix}.tflite"
    calibration = data.load(dataset, "train", 64, data_dir=data_dir, augment=False, shuffle=True, seed=0)
    try:
        export.export_tflite(model, path, quantize, representative_data=calibration)
    except export.ExportError as error:
        raise RunError(str(error)) from error
    test = data.load(dataset, "test", 256, data_dir=data_dir)
    report = export.parity_report(model, path, test, max_images=max_images)
    report["quantize"] = quantize
    atomic_write_text(path.with_suffix(".json"), json.dumps(report, indent=2))
    return report
