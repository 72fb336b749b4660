"""`method: oemc` — online ensemble model compression (Walawalkar et al., ECCV 2020)."""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated

from pydantic import Field

from keras_kd import models
from keras_kd.distillers.online import OnlineEnsembleDistiller
from keras_kd.registry import BuildContext, NonNegative, Positive, register_method


def exact_ratio(value: float) -> Fraction:
    """A config width ratio (YAML float, e.g. 0.8) as the exact fraction it stands for (4/5)."""
    return Fraction(value).limit_denominator(1000)


@register_method("oemc")
def build_oemc(
    context: BuildContext,
    *,
    num_students: Annotated[int, Field(ge=2)] = 5,
    width_ratios: list[Annotated[float, Field(gt=0, le=1)]] | None = None,
    ce_weight: NonNegative = 1.0,
    inter_weight: NonNegative = 0.15,
    kd_weight: NonNegative = 0.15,
    temperature: Positive = 2.0,
    logit_standardization: bool = False,
    kd_temperature_scaling: bool = True,
    inter_updates_stem: bool = True,
) -> OnlineEnsembleDistiller:
    """From scratch, `num_students` students of decreasing width built from
    `student.arch` (or explicit `width_ratios`) and their ensemble; the run
    saves each student and the ensemble as `.keras` and `.tflite`."""
    if num_students < 2:
        raise ValueError(f"`num_students` must be >= 2, got {num_students}.")
    ratios = [exact_ratio(r) for r in width_ratios] if width_ratios else None
    network = models.online_ensemble(
        context.student_arch(),
        context.input_shape,
        context.num_classes,
        num_students=None if ratios else num_students,
        width_ratios=ratios,
    )
    return OnlineEnsembleDistiller(
        network=context.prepare(network),
        ce_weight=ce_weight,
        inter_weight=inter_weight,
        kd_weight=kd_weight,
        temperature=temperature,
        logit_standardization=logit_standardization,
        kd_temperature_scaling=kd_temperature_scaling,
        inter_updates_stem=inter_updates_stem,
    )
