"""Registries of losses and training methods.

Registering is the only step that makes a method available everywhere: a
loss decorated with `@register_loss("name")` is found by `keras_kd.losses.get`,
by YAML configs (`method.losses: [{name: ...}]`), by the CLI and by the
results suite (when it declares a `suite_row`); a builder decorated with
`@register_method("name")` becomes `method.name` in configs, with its
keyword-only parameters as the validated options. Modules under
`keras_kd.losses` and `keras_kd.methods` are imported automatically, so a new
method is one file plus its test.

Example:

>>> from keras_kd import registry
>>> "kd" in registry.loss_names() and "ekd" in registry.method_names()
True
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Annotated

import keras
from pydantic import Field

#: Type hints of method options that configs validate before anything is built.
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]

_LOSSES: dict[str, type] = {}
_METHODS: dict[str, Method] = {}


@dataclasses.dataclass(frozen=True)
class SuiteRow:
    """How the results suite runs a registered loss: one `method: kd` row with
    the loss entries `losses` (each a dict of `weight` and constructor
    arguments; the loss name is added) next to CE at `student_loss_weight`.
    `key` names the row's run folders (default: the loss name); `order`
    sorts the rows. Entries are the suite's; a config file gives any other setting."""

    label: str
    losses: tuple[dict, ...]
    student_loss_weight: float = 1.0
    key: str | None = None
    order: int = 100
    #: Methods with a pre-training stage (AB's initialisation, FT's paraphraser):
    #: its length as a fraction of the suite's epochs (at least 1 epoch). Entry
    #: values equal to `PRETRAIN_EPOCHS` become that epoch, the CE term starts
    #: after it (`student_loss_start_epoch`) and the row's schedule grows by it,
    #: so the student's CE stage is as long as every other row's schedule
    #: (RepDistiller: 30 initialisation epochs, then the full 240).
    pretrain_fraction: float = 0.0

    def stage_epochs(self, epochs: int) -> int:
        """Length of the pre-training stage in a schedule of `epochs` (0: none)."""
        return max(1, round(self.pretrain_fraction * epochs)) if self.pretrain_fraction else 0

    def loss_specs(self, name: str, epochs: int) -> list[dict]:
        """The row's `losses` entries for a schedule of `epochs`: each with the
        loss `name`, `PRETRAIN_EPOCHS` placeholders replaced by the stage length."""
        stage = self.stage_epochs(epochs)

        def fill(value):
            if isinstance(value, (list, tuple)):
                return [fill(v) for v in value]
            return stage if value == PRETRAIN_EPOCHS else value

        return [{"name": name, **{key: fill(value) for key, value in entry.items()}} for entry in self.losses]


#: Placeholder in `SuiteRow.losses` for the epoch the pre-training stage ends.
PRETRAIN_EPOCHS = "<pretrain_epochs>"


def register_loss(name: str, suite_row: SuiteRow | None = None) -> Callable[[type], type]:
    """Class decorator: registers a `DistillationLoss` under `name` (and as a
    Keras serializable in package `keras_kd`)."""

    def decorator(cls: type) -> type:
        if name in _LOSSES and _LOSSES[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"Loss name {name!r} is already registered by {_LOSSES[name].__name__}.")
        cls = keras.saving.register_keras_serializable(package="keras_kd")(cls)
        cls.registry_name = name
        cls.suite_row = suite_row
        _LOSSES[name] = cls
        return cls

    return decorator


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered training method: `build(context, **options)` returns a
    `keras_kd` trainer (a `BaseDistiller`); `options` are the builder's
    keyword-only parameters (name -> `inspect.Parameter`)."""

    name: str
    build: Callable
    description: str

    @property
    def options(self) -> dict[str, inspect.Parameter]:
        parameters = inspect.signature(self.build).parameters.values()
        return {p.name: p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


class BuildContext:
    """What a method builder gets from a run (the CLI runner implements it).

    Attributes:
        input_shape: image shape without batch.
        num_classes: number of classes of the dataset.
        sync_batchnorm: whether trained networks use synchronized BatchNorm.
        num_examples: size of the training set (losses with a per-example
            memory bank size it from this).
    """

    input_shape: tuple
    num_classes: int
    sync_batchnorm: bool
    num_examples: int | None = None

    def teacher(self) -> keras.Model:
        """The trained model of the `teacher` section (frozen by distillers)."""
        raise NotImplementedError

    def teachers(self) -> list[keras.Model]:
        """The trained models of the `teachers` list (distinct names)."""
        raise NotImplementedError

    def student(self) -> keras.Model:
        """A fresh model from the `student` section (arch or path)."""
        raise NotImplementedError

    def trained_model(self) -> keras.Model:
        """The model a plain training run trains: `teacher` when that section
        is set, else `student`."""
        raise NotImplementedError

    def student_arch(self) -> str:
        """The zoo name of the `student` section (methods that build their own
        multi-branch / multi-width networks from it)."""
        raise NotImplementedError

    def prepare(self, model: keras.Model) -> keras.Model:
        """`model` with synchronized BatchNorm when the run asks for it."""
        raise NotImplementedError


def register_method(name: str) -> Callable[[Callable], Callable]:
    """Function decorator: registers a method builder under `name`. The
    builder's first parameter is a `BuildContext` (models and data facts of
    the run); its keyword-only parameters, with type hints and defaults, are
    the method's config options."""

    def decorator(build: Callable) -> Callable:
        if name in _METHODS and _METHODS[name].build.__qualname__ != build.__qualname__:
            raise ValueError(f"Method name {name!r} is already registered.")
        description = (inspect.getdoc(build) or "").split("\n\n")[0].replace("\n", " ")
        _METHODS[name] = Method(name, build, description)
        return build

    return decorator


def _import_all(package: str) -> None:
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"{package}.{info.name}")


def _discover() -> None:
    _import_all("keras_kd.losses")
    _import_all("keras_kd.methods")


def loss_class(name: str) -> type:
    _discover()
    if name not in _LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Available: {', '.join(sorted(_LOSSES))}.")
    return _LOSSES[name]


def suite_rows() -> list[tuple[str, SuiteRow]]:
    """`(loss name, row)` of every registered loss that declares a suite row, in row order."""
    _discover()
    rows = [(name, cls.suite_row) for name, cls in _LOSSES.items() if cls.suite_row is not None]
    return sorted(rows, key=lambda item: (item[1].order, item[0]))


def loss_names() -> list[str]:
    _discover()
    return sorted(_LOSSES)


def method(name: str) -> Method:
    _discover()
    if name not in _METHODS:
        raise ValueError(f"Unknown method {name!r}. Available: {', '.join(sorted(_METHODS))}.")
    return _METHODS[name]


def method_names() -> list[str]:
    _discover()
    return sorted(_METHODS)
