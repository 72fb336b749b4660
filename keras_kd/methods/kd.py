"""`method: kd` — a student distilled from one frozen teacher with any set of
registered losses (Hinton KD, FitNet, AT, LP, any Keras loss...)."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic

from keras_kd import losses as kd_losses
from keras_kd.distillers.logits import Distiller
from keras_kd.registry import BuildContext, NonNegative, register_method

#: A 0-based epoch.
Epoch = Annotated[int, pydantic.Field(ge=0)]

#: The default loss set: Hinton KD, T = 4, weight 0.9 (CE at 0.1), as the CRD protocol.
DEFAULT_LOSSES = ({"name": "kd", "weight": 0.9, "temperature": 4.0},)


def build_losses(specs: list[dict[str, Any]], num_examples: int | None = None) -> tuple[list, list[float]]:
    """`[{"name": "hint", "weight": 100, "teacher_layer_name": ...}, ...]` ->
    (loss objects, weights). Keys besides `name`/`weight` are the loss's
    constructor arguments; a loss with a per-example memory bank gets
    `num_samples=num_examples` unless its spec sets it.

    >>> built, weights = build_losses([{"name": "kd", "weight": 0.9, "temperature": 2.0}])
    >>> built[0].temperature, weights
    (2.0, [0.9])
    """
    built, weights = [], []
    for index, spec in enumerate(specs):
        spec = spec.model_dump() if isinstance(spec, pydantic.BaseModel) else spec
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"losses[{index}] must be a mapping with a `name`, got {spec!r}.")
        args = {key: value for key, value in spec.items() if key not in ("name", "weight")}
        if num_examples and getattr(kd_losses.loss_class(spec["name"]), "needs_sample_index", False):
            args.setdefault("num_samples", num_examples)
        try:
            built.append(kd_losses.get(spec["name"], **args))
        except (TypeError, ValueError) as error:
            raise ValueError(f"losses[{index}] ({spec['name']}): {error}") from error
        weights.append(spec.get("weight", 1.0))
    return built, weights


class LossSpec(pydantic.BaseModel):
    """One entry of `losses`: a registered loss `name`, its `weight` and its
    constructor arguments (checked by building the loss)."""

    model_config = pydantic.ConfigDict(extra="allow", allow_inf_nan=False)
    name: str
    weight: NonNegative = 1.0

    @pydantic.model_validator(mode="after")
    def _builds(self):
        build_losses([self.model_dump()])
        return self


@register_method("kd")
def build_kd(
    context: BuildContext,
    *,
    losses: tuple[LossSpec, ...] = DEFAULT_LOSSES,
    student_loss_weight: NonNegative = 0.1,
    student_loss_start_epoch: Epoch = 0,
) -> Distiller:
    """Distill `student` from the trained `teacher` with `losses` (each
    `{name, weight, **arguments}`, e.g. `{name: hint, weight: 100,
    teacher_layer_name: stage2, student_layer_name: stage2}`).

    Every loss takes `active_epochs: [start, end]` (end null: to the end);
    `student_loss_start_epoch` starts the cross-entropy later: together they
    run a pre-training stage inside the same run (`ab_fmnist.yaml`).
    """
    built, weights = build_losses(list(losses), context.num_examples)
    return Distiller(
        teacher=context.teacher(),
        student=context.prepare(context.student()),
        distillation_losses=built,
        distillation_loss_weights=weights,
        student_loss_weight=student_loss_weight,
        student_loss_start_epoch=student_loss_start_epoch,
    )
