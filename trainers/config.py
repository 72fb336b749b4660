"""Typed, validated run configuration (YAML + `--set key=value` overrides).

Unknown keys and wrong types are rejected with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown, missing or of the wrong type."""


@dataclasses.dataclass
class DataConfig:
    name: Literal["fashion_mnist", "cifar10", "cifar100", "synthetic"] = "fashion_mnist"
    data_dir: str | None = None
    batch_size: int = 128
    subset_fraction: float | None = None
    validation_fraction: float | None = None
    subset_seed: int = 0
    augment: bool = True
    pad: int = 2


@dataclasses.dataclass
class ModelConfig:
    """A zoo architecture (`arch`, stage widths scaled by `width_ratio`) or a saved
    model (`path`: .keras file or run dir)."""

    arch: str | None = None
    path: str | None = None
    width_ratio: float = 1.0


@dataclasses.dataclass
class FeatureConfig:
    """One feature term: `loss` is a short name from `keras_kd.losses.REGISTRY`."""

    teacher_tap: str = "stage3"
    student_tap: str = "stage3"
    loss: Literal["hint", "at", "lp", "embedding"] = "hint"
    weight: float = 1.0
    loss_args: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EKDConfig:
    """Ensemble KD (`distill.method: ekd`): one student branch per entry of `teachers`."""

    beta: float = 1.0
    ensemble_weight: float = 1.0
    temperatures: list[float] | None = None
    shared_stem: bool = True
    ensemble: Literal["logits", "softmax"] = "logits"
    teacher_cache: bool = False
    accept_augmentation: bool = False


@dataclasses.dataclass
class DistillConfig:
    """`kd`: Hinton KD (+ `features`) from `teacher`; `ekd`: ensemble KD from `teachers`.

    For `ekd`, `alpha` weighs each branch's KD term and `ce_weight` (default 1)
    each branch's cross-entropy."""

    method: Literal["kd", "ekd"] = "kd"
    temperature: float = 4.0
    alpha: float = 0.9
    ce_weight: float | None = None
    features: list[FeatureConfig] = dataclasses.field(default_factory=list)
    ekd: EKDConfig = dataclasses.field(default_factory=EKDConfig)


@dataclasses.dataclass
class SFTNConfig:
    """Student-friendly teacher training (`train-teacher --method sftn`)."""

    student_arch: str | None = None
    lambda_t: float = 1.0
    lambda_kl: float = 3.0
    lambda_ce: float = 1.0
    temperature: float = 1.0
    share_student_blocks: bool = True
    teacher_boundaries: list[str] = dataclasses.field(default_factory=lambda: ["stage1", "stage2"])
    student_boundaries: list[str] = dataclasses.field(default_factory=lambda: ["stage1", "stage2"])


@dataclasses.dataclass
class OnlineConfig:
    """Online ensemble compression (`train-online`): `student.arch` is the widest student."""

    num_students: int = 5
    width_ratios: list[float] | None = None
    ce_weight: float = 0.7
    inter_weight: float = 0.15
    kd_weight: float = 0.15
    temperature: float = 2.0


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    steps_per_epoch: int | None = None
    validation_freq: int = 1
    mixed_precision: Literal["none", "mixed_float16", "mixed_bfloat16"] = "none"
    strategy: Literal["default", "mirrored", "multiworker"] = "default"
    sync_batchnorm: bool = False
    jit_compile: bool | Literal["auto"] = "auto"
    verbose: int = 2


@dataclasses.dataclass
class RunConfig:
    run_name: str = "run"
    output_dir: str = "saved_models"
    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    teacher: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    teachers: list[ModelConfig] = dataclasses.field(default_factory=list)
    student: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    teacher_method: Literal["ce", "sftn"] = "ce"
    sftn: SFTNConfig = dataclasses.field(default_factory=SFTNConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    online: OnlineConfig = dataclasses.field(default_factory=OnlineConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_number(value) -> bool:
    """Numbers, and strings such as "1e-3" that YAML 1.1 leaves unparsed."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: annotation -> (accepts value?, conversion, what the message asks for)
SCALARS = {
    bool: (lambda v: isinstance(v, bool), bool, "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), int, "an integer"),
    float: (_is_number, float, "a number"),
    str: (lambda v: isinstance(v, str), str, "a string"),
    dict: (lambda v: isinstance(v, dict), dict, "a mapping"),
}


def _check_value(path: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _check_value(path, value, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"`{path}`: {value!r} is not valid ({'; '.join(errors)}).")
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value in choices and type(value) is type(next(c for c in choices if c == value)):
            return value
        raise ConfigError(f"`{path}` must be one of {list(choices)}, got {value!r}.")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"`{path}` must be null, got {value!r}.")
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"`{path}` must be a list, got {value!r}.")
        if dataclasses.is_dataclass(item):
            return [_build(item, v, f"{path}[{i}].") for i, v in enumerate(value)]
        return [_check_value(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if annotation in SCALARS:
        accepts, convert, expected = SCALARS[annotation]
        if accepts(value):
            return convert(value)
        raise ConfigError(f"`{path}` must be {expected}, got {value!r}.")
    raise ConfigError(f"`{path}`: unsupported type {annotation}.")


def _build(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"`{prefix or 'config'}` must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1)
            hint = f" Did you mean `{prefix}{close[0]}`?" if close else ""
            raise ConfigError(
                f"Unknown config key `{path}`.{hint} Valid keys here: {', '.join(sorted(fields))}."
            )
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, f"{path}.")
        else:
            kwargs[key] = _check_value(path, value, annotation)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.epochs=3"` -> (["train", "epochs"], 3) (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like key.sub=value.")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """Reads a YAML config (or `base`), applies overrides, validates everything."""
    raw: dict = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"Config file {path} is not valid YAML: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"Config file {path} must hold a mapping at the top level.")
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"Override {text!r}: `{key}` is not a section.")
            node = child
        node[keys[-1]] = value
    return validate(_build(RunConfig, raw, ""))


def validate(config: RunConfig) -> RunConfig:
    """Cross-field and range checks."""
    train, data = config.train, config.data
    if train.epochs < 1:
        raise ConfigError(f"`train.epochs` must be >= 1, got {train.epochs}.")
    if train.learning_rate <= 0:
        raise ConfigError(f"`train.learning_rate` must be > 0, got {train.learning_rate}.")
    if train.weight_decay < 0:
        raise ConfigError(f"`train.weight_decay` must be >= 0, got {train.weight_decay}.")
    if train.steps_per_epoch is not None and train.steps_per_epoch < 1:
        raise ConfigError("`train.steps_per_epoch` must be >= 1 or null.")
    if train.validation_freq < 1:
        raise ConfigError(f"`train.validation_freq` must be >= 1, got {train.validation_freq}.")
    if data.batch_size < 1:
        raise ConfigError(f"`data.batch_size` must be >= 1, got {data.batch_size}.")
    if config.distill.temperature <= 0:
        raise ConfigError(f"`distill.temperature` must be > 0, got {config.distill.temperature}.")
    for i, feature in enumerate(config.distill.features):
        if feature.weight < 0:
            raise ConfigError(f"`distill.features[{i}].weight` must be >= 0, got {feature.weight}.")
        from keras_kd import losses

        try:
            losses.get(feature.loss, **feature.loss_args)
        except ValueError as error:
            raise ConfigError(f"`distill.features[{i}].loss_args`: {error}") from error
    for section, model in [("teacher", config.teacher), ("student", config.student)] + [
        (f"teachers[{i}]", model) for i, model in enumerate(config.teachers)
    ]:
        if model.arch and model.path:
            raise ConfigError(f"`{section}`: give either `arch` or `path`, not both.")
    if config.distill.method == "ekd" and config.distill.ekd.temperatures is not None:
        if len(config.distill.ekd.temperatures) != len(config.teachers):
            raise ConfigError(
                f"`distill.ekd.temperatures` has {len(config.distill.ekd.temperatures)} values for "
                f"{len(config.teachers)} `teachers`."
            )
    for section in (config.teacher, config.student):
        if not 0 < section.width_ratio <= 1:
            raise ConfigError(f"`width_ratio` must be in (0, 1], got {section.width_ratio}.")
    if config.online.num_students < 2:
        raise ConfigError(f"`online.num_students` must be >= 2, got {config.online.num_students}.")
    if not config.run_name or "/" in config.run_name:
        raise ConfigError(f"`run_name` must be a non-empty name without '/', got {config.run_name!r}.")
    return config


def dump(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
