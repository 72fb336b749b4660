"""Training runs behind the CLI: each writes its resolved config, a log,
TensorBoard events, checkpoints, the final model and results under
`<output_dir>/<run_name>/`."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import keras
import yaml

import keras_kd
from keras_kd import _compat, data, models, registry
from keras_kd.io import atomic_save, atomic_write_text
from keras_kd.methods.oemc import exact_ratio
from trainers.config import RunConfig, check_method, dump

LOG = logging.getLogger("keras_kd")


class RunError(RuntimeError):
    """A run cannot start or its inputs are unusable."""


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


def config_changes(run_dir: Path, config: RunConfig) -> list[str]:
    """The dotted config keys where `config` differs from `run_dir/config.yaml`."""
    saved = _flatten(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    current = _flatten(yaml.safe_load(dump(config)))
    return sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))


def _check_same_config(run_dir: Path, config: RunConfig) -> None:
    changed = config_changes(run_dir, config)
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
    open_log(run_dir / "train.log")
    LOG.info("%s", config_summary(config))
    LOG.info("run %s: config\n%s", config.run_name, dump(config), extra=FILE_ONLY)
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    LOG.info("%s over %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync,
             extra=FILE_ONLY if strategy.num_replicas_in_sync == 1 else None)
    return run_dir


#: `extra=` of log records that go to train.log but not to the console (Keras
#: prints each epoch there already; the full config is in config.yaml).
FILE_ONLY = {"file_only": True}


def _console_record(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def open_log(path: Path) -> None:
    """Run log: every record in `path`; on the console (stderr) the records
    not marked `FILE_ONLY`. keras_kd's records do not propagate to the root
    logger, so nothing is printed twice whatever else configured logging."""
    close_log()
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("keras-kd: %(message)s"))
    console.addFilter(_console_record)
    console.keras_kd_console = True
    LOG.addHandler(file_handler)
    LOG.addHandler(console)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def close_log() -> None:
    for handler in list(LOG.handlers):
        if isinstance(handler, logging.FileHandler) or getattr(handler, "keras_kd_console", False):
            handler.close()
            LOG.removeHandler(handler)
    LOG.propagate = True


def _model_label(section) -> str:
    if section.path:
        return section.path
    ratio = f" x{section.width_ratio:g}" if section.width_ratio != 1 else ""
    return f"{section.arch}{ratio}" if section.arch else "-"


def config_summary(config: RunConfig) -> str:
    """One line describing a run (the full resolved config is in config.yaml)."""
    cfg, train = config.data, config.train
    options = config.method.options
    losses = options.get("losses")
    method = config.method.name + (f" ({', '.join(spec['name'] for spec in losses)})" if losses else "")
    teachers = ", ".join(_model_label(t) for t in config.teachers) or _model_label(config.teacher)
    data_text = cfg.source().label
    if cfg.image_size:
        data_text += f" {cfg.image_size[0]}x{cfg.image_size[1]}"
    if cfg.subset_fraction:
        data_text += f" ({cfg.subset_fraction:g} of train)"
    if cfg.test_fraction:
        data_text += f", test {cfg.test_fraction:g} of it"
    if cfg.validation_fraction:
        data_text += f", validation {cfg.validation_fraction:g}"
    return (f"run {config.run_name}: {method} | student {_model_label(config.student)} | teacher {teachers} | "
            f"data {data_text} | {train.epochs} epochs {train.optimizer} lr {train.learning_rate:g}, "
            f"batch {cfg.batch_size}, seed {config.seed} | {config.run_dir}")


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model at every epoch end through a temporary file + rename."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(self.model, self.path)


class EpochLogger(keras.callbacks.Callback):
    """Writes one line of metrics per epoch into the run log, with the
    epoch's duration (`seconds=`, monotonic clock, validation included)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        items = " ".join(f"{k}={float(v):.4f}" for k, v in sorted((logs or {}).items()))
        LOG.info("epoch %d: %s seconds=%.3f", epoch + 1, items, time.perf_counter() - self.start, extra=FILE_ONLY)


_LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


def logged_epoch_seconds(run_dir: Path) -> dict[int, float]:
    """Seconds of each epoch (0-based) in `<run>/train.log`, across every
    attempt of a resumed run; an epoch trained twice counts its last attempt.
    The `seconds=` of an epoch line, or, in logs written before epoch lines
    carried it, the time since the log line before it."""
    import datetime
    import re

    seconds, previous = {}, None
    for line in (Path(run_dir) / "train.log").read_text().splitlines():
        try:
            stamp = datetime.datetime.strptime(line[:23], _LOG_TIME)
        except ValueError:
            continue  # the config dump's lines carry no time
        match = re.match(r" epoch (\d+): .*?(?: seconds=([0-9.]+))?$", line[23:])
        if match:
            if match.group(2) is not None:
                seconds[int(match.group(1)) - 1] = float(match.group(2))
            elif previous is not None:
                seconds[int(match.group(1)) - 1] = (stamp - previous).total_seconds()
        previous = stamp
    return seconds


def augmentation(config: RunConfig) -> data.Augmentation | None:
    """The run's seeded random views (`data.augment`), or None."""
    cfg = config.data
    if not cfg.augment:
        return None
    seed = config.seed if cfg.augmentation_seed is None else cfg.augmentation_seed
    return data.Augmentation(pad=cfg.pad, flip=data.info(cfg.source()).horizontal_flip, seed=seed)


def datasets(config: RunConfig, teacher_cache=None, initial_epoch: int = 0, with_index: bool = False):
    """`(train, monitor, test, steps_per_epoch)` from the `data` section.

    `train` spans the run's epochs from `initial_epoch` (views reproducible
    per (seed, epoch, example); its batches carry the cached teacher outputs
    when `teacher_cache` is given, and each example's row with `with_index`).
    `monitor` is what `fit` validates on: the
    validation split when `data.validation_fraction` is set (hyper-parameters
    are chosen on it, never on the test set), else the test set."""
    cfg = config.data
    source = cfg.source()
    common = dict(subset_seed=cfg.subset_seed)
    epochs, per_epoch = data_epochs(config)
    steps = config.train.steps_per_epoch or per_epoch
    train = data.load(
        source,
        "train",
        cfg.batch_size,
        subset_fraction=cfg.subset_fraction,
        validation_fraction=cfg.validation_fraction,
        augment=augmentation(config) or False,
        seed=config.seed,
        epochs=epochs,
        initial_epoch=min(initial_epoch * steps // per_epoch, epochs - 1),
        teacher_cache=teacher_cache,
        with_index=with_index,
        **common,
    )
    test = data.load(source, "test", 512, **common)
    monitor = test
    if cfg.validation_fraction:
        monitor = data.load(source, "validation", 512, validation_fraction=cfg.validation_fraction, **common)
    return train, monitor, test, steps


def training_arrays(config: RunConfig):
    """The run's uint8 training images and labels (before augmentation),
    read once per data section: a run asks for them several times (its
    size for the method, the number of batches, the teacher cache)."""
    cfg = config.data
    return _training_arrays(cfg.source(), cfg.subset_fraction, cfg.validation_fraction, cfg.subset_seed)


@functools.lru_cache(maxsize=1)
def _training_arrays(source, subset_fraction, validation_fraction, subset_seed):
    images, labels = data.load_arrays(source, "train", subset_fraction=subset_fraction,
                                      validation_fraction=validation_fraction, subset_seed=subset_seed)
    images.flags.writeable = labels.flags.writeable = False  # shared by every caller
    return images, labels


def data_epochs(config: RunConfig) -> tuple[int, int]:
    """(passes over the training set the run makes, batches per pass). With
    `train.steps_per_epoch`, a Keras epoch need not be one pass."""
    count = len(training_arrays(config)[1])
    per_epoch = -(-count // config.data.batch_size)
    steps = config.train.steps_per_epoch or per_epoch
    return -(-config.train.epochs * steps // per_epoch), per_epoch


def optimizer(config: RunConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    cfg = config.train
    lr = cfg.learning_rate
    if cfg.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=cfg.epochs * steps_per_epoch)
    wd = (cfg.weight_decay or None) if cfg.weight_decay_mode == "decoupled" else None
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=wd or 0.0)
    return keras.optimizers.Adam(lr, weight_decay=wd)


def jit_setting(config: RunConfig) -> bool:
    """`train.jit_compile`; "auto" means XLA on GPUs only (on CPUs it is slower
    for these convnets, while Keras' own "auto" would enable it)."""
    import tensorflow as tf

    if config.train.jit_compile == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return config.train.jit_compile


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


class RunBuildContext(registry.BuildContext):
    """The models and data facts of one run, as method builders see them."""

    def __init__(self, config: RunConfig):
        self.config = config
        meta = data.info(config.data.source())
        self.input_shape = meta.input_shape
        self.num_classes = meta.num_classes
        self.sync_batchnorm = config.train.sync_batchnorm
        self.num_examples = len(training_arrays(config)[1])

    def _model(self, section, role: str) -> keras.Model:
        if section.path:
            return load_model_ref(section.path)
        if not section.arch:
            raise RunError(f"`{role}` needs `arch` (a zoo name) or `path` (a saved model).")
        ratio = exact_ratio(section.width_ratio)
        try:
            return models.get(section.arch, self.input_shape, self.num_classes, width_ratio=ratio,
                              weights=section.weights)
        except (ValueError, OSError, ImportError) as error:
            raise RunError(f"`{role}`: {error}") from error

    def teacher(self) -> keras.Model:
        if not self.config.teacher.path:
            raise RunError("`teacher.path` must name a trained teacher (.keras file or run folder).")
        return self._model(self.config.teacher, "teacher")

    def teachers(self) -> list[keras.Model]:
        sections = self.config.teachers
        if not sections:
            raise RunError("This method needs a `teachers` list (one `path` per trained teacher).")
        missing = [i for i, section in enumerate(sections) if not section.path]
        if missing:
            raise RunError(f"`teachers[{missing[0]}]` needs `path` (a trained teacher), not `arch`.")
        teachers = [self._model(section, f"teachers[{i}]") for i, section in enumerate(sections)]
        # Teachers loaded from runs of the same architecture share a name; the
        # distiller (one Keras graph) needs distinct ones.
        names = [t.name for t in teachers]
        for i, teacher in enumerate(teachers, start=1):
            if names.count(teacher.name) > 1:
                teacher.name = f"{teacher.name}_{i}"
        return teachers

    def student(self) -> keras.Model:
        return self._model(self.config.student, "student")

    def trained_model(self) -> keras.Model:
        teacher = self.config.teacher
        if teacher.arch or teacher.path:
            return self._model(teacher, "teacher")
        return self._model(self.config.student, "student")

    def student_arch(self) -> str:
        if not self.config.student.arch:
            raise RunError(f"`method: {self.config.method.name}` builds its networks from `student.arch` (a zoo name).")
        return self.config.student.arch

    def prepare(self, model: keras.Model) -> keras.Model:
        return models.synchronize_batchnorm(model) if self.sync_batchnorm else model


def hparams_of(config: RunConfig) -> dict:
    """The run's settings as flat scalar HParams (lists and mappings as JSON text)."""
    values = {}
    for key, value in _flatten(config.to_dict()).items():
        if key in ("run_name", "output_dir"):
            continue
        if value is None:
            value = "none"
        elif isinstance(value, (list, tuple, dict)):
            value = json.dumps(value, sort_keys=True)
        values[key] = value
    return values


class RunSummaries(keras.callbacks.Callback):
    """TensorBoard at the start of training: the resolved config as text and
    the run's settings for the HParams dashboard (`<run>/tensorboard`, the
    session whose `train`/`validation` curves Keras writes below it)."""

    def __init__(self, run_dir: Path, config: RunConfig):
        super().__init__()
        self.logdir = str(run_dir / "tensorboard")
        self.config = config

    def on_train_begin(self, logs=None):
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        with tf.summary.create_file_writer(self.logdir).as_default():
            tf.summary.text("config", "```\n" + dump(self.config) + "```", step=0)
            hp.hparams(hparams_of(self.config), trial_id=self.config.run_name)


#: results.json entries written as the final metrics of the HParams dashboard.
def _final_metric(key: str, value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (
        key.endswith("accuracy") or key in ("params", "macs", "train_time_s"))


def write_final_metrics(run_dir: Path, results: dict, step: int) -> None:
    """The run's final accuracies and size as scalars beside its HParams
    (`final/<key>`), so TensorBoard's HParams table compares runs by them."""
    import tensorflow as tf

    with tf.summary.create_file_writer(str(run_dir / "tensorboard")).as_default():
        for key, value in results.items():
            if _final_metric(key, value):
                tf.summary.scalar(f"final/{key}", float(value), step=step)
        rows = "\n".join(f"| {name} | {100 * acc:.2f} |" for name, acc in results.get("test_class_accuracy", {}).items())
        if rows:
            tf.summary.text("test_class_accuracy", "| class | test accuracy (%) |\n|---|---|\n" + rows, step=step)


def class_accuracies(model: keras.Model, dataset, class_names: tuple[str, ...]) -> dict:
    """Accuracy of `model` on each class of `dataset`, by class name."""
    import numpy as np

    hits = np.zeros(len(class_names))
    totals = np.zeros(len(class_names))
    for images, labels in dataset:
        predictions = np.argmax(np.asarray(model(images, training=False)), axis=-1)
        labels = np.asarray(labels)
        np.add.at(totals, labels, 1)
        np.add.at(hits, labels, predictions == labels)
    return {name: round(float(hits[i] / totals[i]), 4) for i, name in enumerate(class_names) if totals[i]}


def write_run_projector(
    run_dir: Path, model: keras.Model, test, taps=("embedding",), folder: str = "projector",
    class_names: tuple[str, ...] = (),
) -> None:
    """Test-set embeddings (the `taps` layers, concatenated) for the projector (zoo models),
    under `<run>/tensorboard/<folder>`."""
    from keras_kd.projector import collect_embeddings, write_projector

    names = [layer.name for layer in getattr(model, "layers", [])]
    if not all(tap in names for tap in taps):
        LOG.info("no %s layer: projector embeddings skipped", "/".join(taps))
        return
    embeddings, labels = collect_embeddings(model, test, list(taps))
    write_projector(run_dir / "tensorboard" / folder, embeddings, labels, class_names=list(class_names) or None)


def callbacks(run_dir: Path, model_file: str, config: RunConfig) -> list:
    return [
        # The epoch's log line before its backup: a kill between the two re-runs the epoch (and logs it
        # again) rather than restoring an epoch the log never saw.
        EpochLogger(),
        # Restores weights, optimizer state and epoch after a crash (--resume);
        # the previous copy is kept in case the process dies while writing. Kept
        # after the last epoch too, until the results are written (`_train`): a
        # kill while evaluating or saving resumes there, not at epoch 1.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True, delete_checkpoint=False),
        RunSummaries(run_dir, config),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch"),
        AtomicCheckpoint(run_dir / "checkpoints" / model_file),
    ]


def _fit(model, config, train, steps, test, run_dir, model_file) -> float:
    """Compiles with the run's optimizer and XLA setting, trains with the run's
    callbacks (`steps` batches per epoch); returns the wall-clock seconds of
    this attempt."""
    if config.train.weight_decay_mode == "coupled":
        model.l2_weight_decay = config.train.weight_decay
    model.compile(optimizer=optimizer(config, steps), jit_compile=jit_setting(config))
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    start = time.perf_counter()
    model.fit(
        train,
        epochs=config.train.epochs,
        steps_per_epoch=steps,
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


def _results(run_dir: Path, trainer, test, train_time: float, extra: dict, class_names: tuple[str, ...]) -> dict:
    """Size, final test accuracy and per-class test accuracy of the trained
    (deployable) model, plus every other accuracy the trainer reports
    (branches, students)."""
    model = trainer.deployable()
    summary = models.summarize(model)
    results = {
        "model": model.name,
        "params": summary.params,
        "trainable_params": summary.trainable_params,
        "macs": summary.macs,
        **_accuracies(trainer, test, "test"),
        "train_time_s": round(train_time, 1),
        **extra,
        "test_class_accuracy": class_accuracies(model, test, class_names),
    }
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    LOG.info("results: %s", json.dumps(results), extra=FILE_ONLY)
    validation = results.get("validation_accuracy")
    LOG.info("%s: test accuracy %.2f%%%s, %s params, %s MACs -> %s", model.name, 100 * results["test_accuracy"],
             f" (validation {100 * validation:.2f}%)" if validation is not None else "",
             f"{summary.params:,}", f"{summary.macs:,}", run_dir / "results.json")
    return results


def _accuracies(trainer, dataset, prefix: str) -> dict:
    """`{prefix}_accuracy` and every other accuracy the trainer reports
    (`{prefix}_branch1_accuracy`, ...) on `dataset`."""
    metrics = trainer.evaluate(dataset, return_dict=True, verbose=0)
    return {
        f"{prefix}_{name}": float(value) for name, value in metrics.items() if name.endswith("accuracy")
    }


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


def train(config: RunConfig, overwrite: bool = False, resume: bool = False) -> dict:
    """Runs `config.method` (any registered method): builds its trainer, fits
    it, saves the trainer and every network it delivers (`<name>.keras`),
    projector embeddings and `results.json`, plus the method's own reports."""
    with run_context(config):
        return _train(config, overwrite, resume)


def _train(config: RunConfig, overwrite: bool, resume: bool) -> dict:
    keras.utils.set_random_seed(config.seed)
    method = registry.method(config.method.name)
    try:
        trainer = method.build(RunBuildContext(config), **check_method(config))
    except (TypeError, ValueError) as error:
        raise RunError(f"method {method.name}: {error}") from error
    run_dir = prepare_run_dir(config, overwrite, resume)
    try:
        cache, cache_info = teacher_cache(config, trainer)
        initial_epoch = _compat.resumed_epoch(run_dir / "backup") if resume else 0
        train_data, monitor, test, steps = datasets(config, cache, initial_epoch, trainer.needs_sample_index)
        seconds = _fit(trainer, config, train_data, steps, monitor, run_dir, "distiller.keras")
        atomic_save(trainer, run_dir / "distiller.keras")
        for name, model in trainer.deliverables().items():
            atomic_save(model, run_dir / f"{name}.keras")
        class_names = data.info(config.data.source()).class_names
        for folder, model, taps in trainer.projector_taps():
            write_run_projector(run_dir, model, test, taps, folder, class_names)
        extra = {"run_dir": str(run_dir), "epochs": _epochs_done(run_dir), "method": method.name, **cache_info}
        if initial_epoch:  # the training time of every epoch, the earlier attempts' included
            timed = logged_epoch_seconds(run_dir)
            extra["resumed_at_epoch"] = initial_epoch
            if set(timed) >= set(range(config.train.epochs)):
                seconds = sum(timed[epoch] for epoch in range(config.train.epochs))
            else:  # an attempt's lines are missing: at least what was measured
                seconds = max(seconds, sum(timed.values()))
                extra["train_time_partial"] = True
        if config.teacher.path:
            extra["teacher"] = config.teacher.path
        if config.teachers:
            extra["teachers"] = [section.path for section in config.teachers]
        if monitor is not test:
            extra.update(_accuracies(trainer, monitor, "validation"))
        results = _results(run_dir, trainer, test, seconds, extra, class_names)
        reports = trainer.write_reports(run_dir, results)
        if reports:
            results.update(reports)
            atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
        write_final_metrics(run_dir, results, step=config.train.epochs)
        shutil.rmtree(run_dir / "backup", ignore_errors=True)  # the run is complete
        return results
    finally:
        close_log()


def _progress_verbosity(config: RunConfig) -> int:
    """A live progress bar on a terminal; one final line in a log file (no
    carriage-return updates filling it)."""
    import sys

    if not config.train.verbose:
        return 0
    return 1 if sys.stdout.isatty() else 2


def teacher_cache(config: RunConfig, trainer) -> tuple:
    """`(cache or None, results entries)`: the frozen teachers' outputs for
    every view of the run (`cache.teacher_outputs`), built once under
    `<cache.dir>/<fingerprint>` and shared by every run with the same images,
    teachers and augmentation."""
    from keras_kd.data.cache import CacheError, fingerprint, teacher_ids

    cfg = config.cache
    teachers = trainer.frozen_teachers()
    if cfg.teacher_outputs == "online":
        return None, {}
    if not teachers:
        if cfg.teacher_outputs == "cached":
            raise RunError(f"cache.teacher_outputs=cached, but method {config.method.name} has no frozen teacher.")
        return None, {}
    images, labels = training_arrays(config)
    views = augmentation(config)
    epochs = data_epochs(config)[0] if views is not None else 1
    recipe = json.dumps([fingerprint(images, labels), teacher_ids(teachers),
                         views.get_config() if views else None, cfg.dtype, cfg.top_k], sort_keys=True)
    folder = Path(cfg.dir) / hashlib.sha256(recipe.encode()).hexdigest()[:16]
    start = time.perf_counter()
    try:
        cache = trainer.build_teacher_cache(
            images, labels, folder,
            preprocess=lambda batch: data.standardize(batch, config.data.source()),
            augmentation=views, epochs=epochs, dtype=cfg.dtype, top_k=cfg.top_k,
            max_bytes=cfg.max_gigabytes * 1e9, verbose=_progress_verbosity(config),
        )
    except CacheError as error:
        if cfg.teacher_outputs == "cached":
            raise RunError(str(error)) from error
        LOG.info("teacher cache: not used, teachers run online (%s)", error)
        return None, {"teacher_cache": None}
    seconds = time.perf_counter() - start
    LOG.info("teacher cache: %s (%d epoch(s) x %d views, %.1f MB; %.1f s to build or check)",
             folder, cache.epochs, len(cache), cache.nbytes() / 1e6, seconds)
    return cache, {"teacher_cache": str(folder), "teacher_cache_s": round(seconds, 1)}


def inspect_model(ref: str, input_shape: str | None = None, dataset: str = "fashion_mnist",
                  num_classes: int | None = None) -> str:
    """A table of the tappable layers of a saved model or a fresh architecture."""
    from keras_kd.taps import describe_layers

    if Path(ref).exists():
        model = load_model_ref(ref)
        if isinstance(model, keras_kd.BaseDistiller):
            model = model.student
    else:
        meta = data.info(dataset) if dataset in data.DATASETS else None
        try:
            shape = tuple(int(d) for d in input_shape.split(",")) if input_shape else meta.input_shape
        except (AttributeError, ValueError):
            raise RunError(f"--input-shape must look like 224,224,3 (got {input_shape!r}).") from None
        classes = num_classes or (meta.num_classes if meta else 10)
        try:
            model = models.get(ref, shape, classes)
        except (ValueError, OSError, ImportError) as error:
            raise RunError(str(error)) from error
    rows = describe_layers(model)
    width = max(len(r["name"]) for r in rows)
    kinds = max(len(r["class"]) for r in rows)
    lines = [f"{model.name}: input {tuple(model.inputs[0].shape)}, {model.count_params():,} params; "
             "tap any layer below by name (teacher_layer_name / student_layer_name)",
             f"{'layer':<{width}}  {'class':<{kinds}}  {'output shape':<22}  params"]
    lines += [f"{r['name']:<{width}}  {r['class']:<{kinds}}  {str(r['output_shape']):<22}  {r['params']:,}" for r in rows]
    return "\n".join(lines)


def run_source(ref: str, dataset: str | None = None, data_dir: str | None = None) -> data.DataSource:
    """The data a saved model is evaluated or calibrated on: `dataset` when
    given, else the `data` section of the run folder holding `ref`
    (config.yaml), else Fashion-MNIST."""
    if dataset is not None:
        return data.as_source(dataset, data_dir)
    path = Path(ref)
    for folder in (path, path.parent) if path.is_dir() else (path.parent,):
        if (folder / "config.yaml").is_file():
            from trainers.config import load_config

            return load_config(folder / "config.yaml").data.source()
    return data.as_source("fashion_mnist", data_dir)


def evaluate(ref: str, dataset: str | None = None, data_dir: str | None = None, batch_size: int = 512) -> dict:
    """Test accuracy, params and MACs of a saved model or run (on the run's own
    test data unless `dataset` names one)."""
    model = load_model_ref(ref)
    if isinstance(model, keras_kd.BaseDistiller):
        model = model.student
    source = run_source(ref, dataset, data_dir)
    meta = data.info(source)
    input_shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if input_shape is not None and tuple(input_shape) != meta.input_shape:
        raise RunError(
            f"Model {ref} takes inputs of shape {input_shape} but {meta.name} images are {meta.input_shape}."
        )
    compile_for_evaluation(model)
    test = data.load(source, "test", batch_size)
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
    dataset: str | None = None,
    data_dir: str | None = None,
    output: str | None = None,
    max_images: int | None = None,
) -> dict:
    """TFLite file of a saved model or run, plus its parity report (JSON beside
    it) on the run's own test data unless `dataset` names one; int8
    calibrates on that source's training images."""
    from keras_kd import export

    model = export.deployable(load_model_ref(ref))
    source = Path(ref)
    folder = source if source.is_dir() else source.parent
    suffix = "" if quantize == "none" else f"_{quantize}"
    path = Path(output) if output else folder / f"{model.name}{suffix}.tflite"
    dataset = run_source(ref, dataset, data_dir)
    calibration = data.load(dataset, "train", 64, augment=False, shuffle=True, seed=0)
    try:
        export.export_tflite(model, path, quantize, representative_data=calibration)
    except export.ExportError as error:
        raise RunError(str(error)) from error
    test = data.load(dataset, "test", 256)
    report = export.parity_report(model, path, test, max_images=max_images)
    report["quantize"] = quantize
    atomic_write_text(path.with_suffix(".json"), json.dumps(report, indent=2))
    return report
