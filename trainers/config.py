"""Typed, validated run configuration (YAML + `--set key=value` overrides).

Validation is pydantic v2: unknown keys are refused (with "Did you mean"),
numbers must be finite and in range, and the `method` section is checked
against the registered method's own options (`keras_kd.registry`).
"""

from __future__ import annotations

import difflib
import inspect
import typing
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from keras_kd import registry


class ConfigError(ValueError):
    """A configuration key is unknown, missing or has a bad value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class DataConfig(Section):
    """`name`: fashion_mnist, cifar10, cifar100, synthetic, `folder` (`path`: one
    sub-folder of images per class), `npz` (`path`: x_train/y_train/x_test/y_test)
    or `tfds:NAME` (any tensorflow-datasets image dataset; `data_dir` for a
    prepared copy). See `keras_kd.data.DataSource`."""

    name: str = "fashion_mnist"
    data_dir: str | None = None
    path: str | None = None
    #: A folder with the same class sub-folders as `path`, used as the test set.
    test_path: str | None = None
    #: Class-balanced fraction of the training images held out as the test set
    #: (chosen by `subset_seed`), for sources without a test split of their own.
    test_fraction: float | None = Field(None, gt=0, lt=1)
    #: [height, width]: every image is resized to it (required for folders).
    image_size: tuple[int, int] | None = None
    #: Folders only: convert every image to 1 (grayscale) or 3 (RGB) channels.
    channels: Literal[1, 3] | None = None
    #: Whether random views may mirror images (default: yes).
    flip: bool | None = None
    batch_size: int = Field(128, ge=1)
    subset_fraction: float | None = Field(None, gt=0, le=1)
    validation_fraction: float | None = Field(None, gt=0, lt=1)
    subset_seed: int = Field(0, ge=0)
    augment: bool = True
    pad: int = Field(2, ge=0)
    #: Seed of the random views (`keras_kd.data.Augmentation`); null: the run's `seed`.
    augmentation_seed: int | None = Field(None, ge=0)

    @pydantic.model_validator(mode="after")
    def _valid_source(self):
        self.source()  # raises ValueError naming the problem
        return self

    def source(self):
        """The `keras_kd.data.DataSource` this section describes."""
        from keras_kd.data import DataSource

        return DataSource(
            self.name, data_dir=self.data_dir, path=self.path, test_path=self.test_path,
            test_fraction=self.test_fraction, image_size=self.image_size, channels=self.channels,
            split_seed=self.subset_seed, flip=self.flip,
        )


class ModelConfig(Section):
    """A fresh architecture (`arch`: a zoo name with stage widths scaled by
    `width_ratio`, a `keras.applications` name such as MobileNetV3Small, or
    `kerashub:<preset dir>`), optionally with a local `weights` file, or a
    saved model (`path`: .keras file or run dir)."""

    arch: str | None = None
    path: str | None = None
    width_ratio: float = Field(1.0, gt=0, le=1)
    #: A local weights file for `arch`: an ImageNet "no top" `.h5` of a
    #: keras.applications backbone, or a `.weights.h5` of the whole model.
    weights: str | None = None

    @pydantic.model_validator(mode="after")
    def _one_source(self):
        if self.arch and self.path:
            raise ValueError("give either `arch` or `path`, not both")
        if self.weights and not self.arch:
            raise ValueError("`weights` loads into an `arch`; a saved model (`path`) has its own")
        return self


class MethodConfig(BaseModel):
    """`name` of a registered method plus its options (checked against the
    builder's keyword-only parameters)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str = "kd"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    learning_rate: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    #: `decoupled`: Keras' optimizer option (w -= lr*wd*w); `coupled`: L2 added to the
    #: gradient before momentum, PyTorch's SGD(weight_decay=...) as the KD papers used.
    weight_decay_mode: Literal["decoupled", "coupled"] = "decoupled"
    schedule: Literal["cosine", "constant"] = "cosine"
    steps_per_epoch: int | None = Field(None, ge=1)
    validation_freq: int = Field(1, ge=1)
    mixed_precision: Literal["none", "mixed_float16", "mixed_bfloat16"] = "none"
    strategy: Literal["default", "mirrored", "multiworker"] = "default"
    sync_batchnorm: bool = False
    jit_compile: bool | Literal["auto"] = "auto"
    verbose: int = Field(2, ge=0, le=2)


class CacheConfig(Section):
    """The frozen teachers' outputs for every view the student sees, computed
    once and replayed (`keras_kd.data.TeacherOutputCache`)."""

    #: `online`: teachers run every step; `auto`: cached when the method has frozen
    #: teachers and the cache fits `max_gigabytes`, else online (logged why);
    #: `cached`: cached or the run fails.
    teacher_outputs: Literal["online", "auto", "cached"] = "online"
    #: Caches live in `<dir>/<fingerprint>`: runs on the same images, teachers and
    #: augmentation share one.
    dir: str = "saved_models/teacher_cache"
    dtype: Literal["float16", "float32"] = "float16"
    top_k: int | None = Field(None, ge=1)
    max_gigabytes: float = Field(4.0, gt=0)


class RunConfig(Section):
    run_name: str = Field("run", min_length=1, pattern=r"^[^/]+$")
    output_dir: str = "saved_models"
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: ModelConfig = Field(default_factory=ModelConfig)
    teachers: list[ModelConfig] = Field(default_factory=list)
    student: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _fields_at(model: type[BaseModel], location: tuple) -> list[str]:
    """Field names of the (nested) section at `location`, for "Did you mean"."""
    for key in location:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(key)
        if field is None:
            return []
        annotation = field.annotation
        inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type)]
        candidates = [annotation, *inner]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)


def _message(error: dict, root: type[BaseModel], prefix: str = "") -> str:
    location = tuple(error["loc"])
    path = prefix + ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in location).replace(".[", "[")
    if error["type"] == "extra_forbidden":
        fields = _fields_at(root, location[:-1])
        close = difflib.get_close_matches(str(location[-1]), fields, n=1)
        hint = f" Did you mean `{path.rsplit('.', 1)[0] + '.' if '.' in path else ''}{close[0]}`?" if close else ""
        return f"Unknown config key `{path}`.{hint} Valid keys here: {', '.join(fields)}."
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return f"`{path}`: {error['ctx']['error']}"  # our validators' messages name the problem
    return f"`{path}`: {error['msg']} (got {error.get('input')!r})."


def _method_options_model(method: registry.Method) -> type[BaseModel]:
    hints = typing.get_type_hints(method.build, include_extras=True)  # resolves postponed annotations
    fields = {}
    for name, parameter in method.options.items():
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[name] = (hints.get(name, Any), default)
    return pydantic.create_model(
        f"{method.name}_options", __config__=ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True), **fields
    )


def check_method(config: RunConfig) -> dict:
    """The validated options of the run's method (raises ConfigError)."""
    try:
        method = registry.method(config.method.name)
    except ValueError as error:
        raise ConfigError(f"`method.name`: {error}") from error
    schema = _method_options_model(method)
    try:
        options = schema.model_validate(config.method.options)
    except pydantic.ValidationError as error:
        raise ConfigError(
            " ".join(_message(e, schema, "method.") for e in error.errors(include_url=False))
        ) from None
    return options.model_dump(mode="json")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.epochs=3"` -> (["train", "epochs"], 3) (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like key.sub=value.")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def _method_section(value):
    """`method: NAME` is short for `method: {name: NAME}`."""
    return {"name": value} if isinstance(value, str) else value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] = (),
    base: dict | None = None,
    default_method: str | None = None,
) -> RunConfig:
    """Reads a YAML config (or `base`), applies overrides, validates everything.

    `method: NAME` is short for `method: {name: NAME}`; `default_method` is
    used when the config names none (the CLI's `train-teacher`, `distill`,
    `train-online` commands)."""
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
    if "method" in raw:
        raw["method"] = _method_section(raw["method"])
    if default_method:
        raw["method"] = {"name": default_method, **(raw.get("method") or {})}
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"Override {text!r}: `{key}` is not a section.")
            node[key] = child
            node = child
        node[keys[-1]] = _method_section(value) if keys == ["method"] else value
    try:
        config = RunConfig.model_validate(raw)
    except pydantic.ValidationError as error:
        raise ConfigError(" ".join(_message(e, RunConfig) for e in error.errors(include_url=False))) from None
    options = check_method(config)
    config.method = MethodConfig(name=config.method.name, **options)  # resolved: config.yaml shows every default
    return config


def dump(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
