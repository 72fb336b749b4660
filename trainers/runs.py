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


def augmentation(config: RunConfig) -> data.Augmentation | None:
    """The run's seeded random views (`data.augment`), or None."""
    cfg = config.data
    if not cfg.augment:
        return None
    seed = config.seed if cfg.augmentation_seed is None else cfg.augmentation_seed
    return data.Augmentation(pad=cfg.pad, flip=data.info(cfg.name).horizontal_flip, seed=seed)


def datasets(config: RunConfig, teacher_cache=None, initial_epoch: int = 0, with_index: bool = False):
    """`(train, monitor, test, steps_per_epoch)` from the `data` section.

    `train` spans the run's epochs from `initial_epoch` (views reproducible
    per (seed, epoch, example); its batches carry the cached teacher outputs
    when `teacher_cache` is given, and each example's row with `with_index`).
    `monitor` is what `fit` validates on: the
    validation split when `data.validation_fraction` is set (hyper-parameters
    are chosen on it, never on the test set), else the test set."""
    cfg = config.data
    common = dict(data_dir=cfg.data_dir, subset_seed=cfg.subset_seed)
    epochs, per_epoch = data_epochs(config)
    steps = config.train.steps_per_epoch or per_epoch
    train = data.load(
        cfg.name,
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
    test = data.load(cfg.name, "test", 512, **common)
    monitor = test
    if cfg.validation_fraction:
        monitor = data.load(cfg.name, "validation", 512, validation_fraction=cfg.validation_fraction, **common)
    return train, monitor, test, steps


def training_arrays(config: RunConfig):
    """The run's uint8 training images and labels (before augmentation),
    read once per data section: a run asks for them several times (its
    size for the method, the number of batches, the teacher cache)."""
    cfg = config.data
    return _training_arrays(cfg.name, cfg.data_dir, cfg.subset_fraction, cfg.validation_fraction, cfg.subset_seed)


@functools.lru_cache(maxsize=1)
def _training_arrays(name, data_dir, subset_fraction, validation_fraction, subset_seed):
    images, labels = data.load_arrays(name, "train", data_dir=data_dir, subset_fraction=subset_fraction,
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
        meta = data.info(config.data.name)
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
        return models.get(section.arch, self.input_shape, self.num_classes, width_ratio=ratio)

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
            hparams = {**{f"method.{k}": v for k, v in self.config.method.model_dump().items()},
                       **self.config.train.model_dump()}
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


def _fit(model, config, train, steps, test, run_dir, model_file) -> float:
    """Compiles with the run's optimizer and XLA setting, trains with the run's
    callbacks (`steps` batches per epoch); returns the wall-clock seconds."""
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


def _results(run_dir: Path, trainer, test, train_time: float, extra: dict) -> dict:
    """Size and final test accuracy of the trained (deployable) model, plus
    every other accuracy the trainer reports (branches, students)."""
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
    }
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    LOG.info("results: %s", json.dumps(results))
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
        for folder, model, taps in trainer.projector_taps():
            write_run_projector(run_dir, model, test, taps, folder)
        extra = {"run_dir": str(run_dir), "epochs": _epochs_done(run_dir), "method": method.name, **cache_info}
        if config.teacher.path:
            extra["teacher"] = config.teacher.path
        if config.teachers:
            extra["teachers"] = [section.path for section in config.teachers]
        if monitor is not test:
            extra.update(_accuracies(trainer, monitor, "validation"))
        results = _results(run_dir, trainer, test, seconds, extra)
        reports = trainer.write_reports(run_dir, results)
        if reports:
            results.update(reports)
            atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
        return results
    finally:
        close_log()


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
            preprocess=lambda batch: data.standardize(batch, config.data.name),
            augmentation=views, epochs=epochs, dtype=cfg.dtype, top_k=cfg.top_k,
            max_bytes=cfg.max_gigabytes * 1e9, verbose=1 if config.train.verbose else 0,
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
