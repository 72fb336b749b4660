"""`method: ekd` — ensemble knowledge distillation (Asif et al., ECAI 2020)."""

from __future__ import annotations

from typing import Literal

from keras_kd import models
from keras_kd.distillers.ensemble import EnsembleDistiller
from keras_kd.registry import BuildContext, NonNegative, Positive, register_method


@register_method("ekd")
def build_ekd(
    context: BuildContext,
    *,
    temperature: Positive | list[Positive] = 4.0,
    logit_standardization: bool = False,
    alpha: NonNegative = 1.0,
    beta: NonNegative = 1.0,
    ce_weight: NonNegative = 1.0,
    ensemble_weight: NonNegative = 1.0,
    embedding_layer: str = "embedding",
    embedding_adapter: Literal["if_needed", "always"] = "always",
    branch_weighting: Literal["mean", "sum"] = "sum",
    shared_stem: bool = True,
    ensemble: Literal["logits", "softmax"] = "logits",
) -> EnsembleDistiller:
    """One branch of a multi-branch `student.arch` per entry of `teachers`
    (defaults: the setting chosen on validation, see `EnsembleDistiller`)."""
    teachers = context.teachers()
    student = models.multibranch(
        context.student_arch(),
        len(teachers),
        context.input_shape,
        context.num_classes,
        shared_stem=shared_stem,
        ensemble=ensemble,
    )
    return EnsembleDistiller(
        teachers=teachers,
        student=context.prepare(student),
        temperature=temperature,
        logit_standardization=logit_standardization,
        alpha=alpha,
        beta=beta,
        ce_weight=ce_weight,
        ensemble_weight=ensemble_weight,
        embedding_layer=embedding_layer,
        embedding_adapter=embedding_adapter,
        branch_weighting=branch_weighting,
    )
