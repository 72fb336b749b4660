"""Config -> trainer builders, registered by method name (no if/elif over methods).

Each builder returns a compiled-ready `keras_kd` trainer; `runs.py` owns the
run folder, the datasets, `fit`, and the saved outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import keras

import keras_kd
from keras_kd import data, models
from trainers.config import RunConfig


def exact_ratio(value: float) -> Fraction:
    """A config width ratio (YAML float, e.g. 0.8) as the exact fraction it stands for (4/5)."""
    return Fraction(value).limit_denominator(1000)


def _teacher_models(config: RunConfig, build_model) -> list[keras.Model]:
    if not config.teachers:
        raise ValueError("`distill.method: ekd` needs a `teachers` list (one `path` per trained teacher).")
    missing = [i for i, section in enumerate(config.teachers) if not section.path]
    if missing:
        raise ValueError(f"`teachers[{missing[0]}]` needs `path` (a trained teacher), not `arch`.")
    teachers = [build_model(section, config, "teacher") for section in config.teachers]
    # Teachers loaded from runs of the same architecture share a name; the
    # distiller (one Keras graph) needs distinct ones.
    names = [t.name for t in teachers]
    for i, teacher in enumerate(teachers, start=1):
        if names.count(teacher.name) > 1:
            teacher.name = f"{teacher.name}_{i}"
    return teachers


def build_kd(config: RunConfig, build_model) -> keras_kd.Distiller:
    if not config.teacher.path:
        raise ValueError("`teacher.path` must name a trained teacher (.keras file or run folder).")
    teacher = build_model(config.teacher, config, "teacher")
    student = build_model(config.student, config, "student")
    cfg = config.distill
    features = [
        keras_kd.FeatureTerm(f.teacher_tap, f.student_tap, keras_kd.losses.get(f.loss, **f.loss_args), f.weight)
        for f in cfg.features
    ]
    return keras_kd.Distiller(
        student, teacher, temperature=cfg.temperature, alpha=cfg.alpha, ce_weight=cfg.ce_weight, features=features
    )


def build_ekd(config: RunConfig, build_model) -> keras_kd.EnsembleDistiller:
    teachers = _teacher_models(config, build_model)
    cfg, ekd = config.distill, config.distill.ekd
    if not config.student.arch:
        raise ValueError("`distill.method: ekd` builds its multi-branch student from `student.arch` (a zoo name).")
    meta = data.info(config.data.name)
    student = models.multibranch(
        config.student.arch,
        len(teachers),
        meta.input_shape,
        meta.num_classes,
        shared_stem=ekd.shared_stem,
        ensemble=ekd.ensemble,
    )
    if config.train.sync_batchnorm:
        student = models.synchronize_batchnorm(student)
    return keras_kd.EnsembleDistiller(
        student,
        teachers,
        temperature=ekd.temperatures or cfg.temperature,
        alpha=cfg.alpha,
        beta=ekd.beta,
        ce_weight=1.0 if cfg.ce_weight is None else cfg.ce_weight,
        ensemble_weight=ekd.ensemble_weight,
    )


def build_sftn(config: RunConfig, build_model) -> keras_kd.SFTNTrainer:
    cfg = config.sftn
    if not cfg.student_arch:
        raise ValueError("`teacher_method: sftn` needs `sftn.student_arch` (the student the teacher is trained for).")
    teacher = build_model(config.teacher, config, "trained model")
    meta = data.info(config.data.name)
    student = models.get(cfg.student_arch, meta.input_shape, meta.num_classes)
    if config.train.sync_batchnorm:  # the student's blocks are trained as branches
        student = models.synchronize_batchnorm(student)
    return keras_kd.SFTNTrainer(
        teacher,
        student,
        teacher_boundaries=cfg.teacher_boundaries,
        student_boundaries=cfg.student_boundaries,
        lambda_t=cfg.lambda_t,
        lambda_kl=cfg.lambda_kl,
        lambda_ce=cfg.lambda_ce,
        temperature=cfg.temperature,
        share_student_blocks=cfg.share_student_blocks,
    )


def build_online(config: RunConfig, build_model):
    from keras_kd.distillers.online import OnlineEnsembleDistiller

    cfg = config.online
    if not config.student.arch:
        raise ValueError("`train-online` builds its students from `student.arch` (a zoo name).")
    meta = data.info(config.data.name)
    ratios = [exact_ratio(r) for r in cfg.width_ratios] if cfg.width_ratios else None
    network = models.online_ensemble(
        config.student.arch,
        meta.input_shape,
        meta.num_classes,
        num_students=None if ratios else cfg.num_students,
        width_ratios=ratios,
    )
    if config.train.sync_batchnorm:
        network = models.synchronize_batchnorm(network)
    return OnlineEnsembleDistiller(
        network,
        ce_weight=cfg.ce_weight,
        inter_weight=cfg.inter_weight,
        kd_weight=cfg.kd_weight,
        temperature=cfg.temperature,
    )


#: `distill.method` -> builder of the distiller.
DISTILLERS: dict[str, Callable] = {"kd": build_kd, "ekd": build_ekd}
#: `teacher_method` -> builder of the teacher trainer (`ce` is `Supervised`, see runs.py).
TEACHER_TRAINERS: dict[str, Callable] = {"sftn": build_sftn}


def teacher_cache(config: RunConfig, distiller: keras_kd.EnsembleDistiller, run_dir: Path):
    """The run's teacher-output cache (built once under `<run>/teacher_cache`), or None."""
    if config.distill.method != "ekd" or not config.distill.ekd.teacher_cache:
        return None
    from keras_kd.data.cache import CacheError, TeacherOutputCache

    cfg = config.data
    images, _ = data.load_arrays(
        cfg.name,
        "train",
        data_dir=cfg.data_dir,
        subset_fraction=cfg.subset_fraction,
        validation_fraction=cfg.validation_fraction,
        subset_seed=cfg.subset_seed,
    )
    folder = run_dir / "teacher_cache"
    try:
        cache = TeacherOutputCache.load(folder)
        cache.check_images(images)
        distiller.check_cache(cache)
        return cache
    except CacheError:
        return distiller.build_cache(
            images,
            lambda batch: data.standardize(batch, cfg.name),
            folder,
            verbose=1 if config.train.verbose else 0,
        )
