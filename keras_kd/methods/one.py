"""`method: one` — on-the-fly native ensemble (Lan, Zhu & Gong, NeurIPS 2018)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from keras_kd.distillers.native_ensemble import ONETrainer
from keras_kd.models.native_ensemble import native_ensemble
from keras_kd.registry import BuildContext, NonNegative, Positive, register_method


@register_method("one")
def build_one(
    context: BuildContext,
    *,
    num_branches: Annotated[int, Field(ge=2)] = 3,
    shared_until: Literal["stem", "stage1", "stage2", "stage3"] = "stage2",
    ce_weight: NonNegative = 1.0,
    ensemble_weight: NonNegative = 1.0,
    kl_weight: NonNegative = 1.0,
    temperature: Positive = 3.0,
    logit_standardization: bool = False,
    kl_rampup_epochs: Annotated[int, Field(ge=0)] = 0,
) -> ONETrainer:
    """From scratch, `num_branches` copies of the last layers of
    `student.arch` over its shared low-level layers, taught by their gated
    ensemble; the run saves branch 1 as `student.keras`, every branch
    (`branch{k}.keras`) and the ensemble (`ensemble.keras`)."""
    network = native_ensemble(
        context.student_arch(),
        num_branches,
        context.input_shape,
        context.num_classes,
        shared_until=shared_until,
    )
    return ONETrainer(
        network=context.prepare(network),
        ce_weight=ce_weight,
        ensemble_weight=ensemble_weight,
        kl_weight=kl_weight,
        temperature=temperature,
        logit_standardization=logit_standardization,
        kl_rampup_epochs=kl_rampup_epochs,
    )
