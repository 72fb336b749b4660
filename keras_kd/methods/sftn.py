"""`method: sftn` — train a student-friendly teacher (Park et al., NeurIPS 2021)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from keras_kd import models
from keras_kd.distillers.sftn import SFTN_BOUNDARIES, SFTNTrainer
from keras_kd.registry import BuildContext, NonNegative, Positive, register_method


@register_method("sftn")
def build_sftn(
    context: BuildContext,
    *,
    student_arch: str,
    lambda_t: NonNegative = 1.0,
    lambda_kl: NonNegative = 1.0,
    lambda_ce: NonNegative = 1.0,
    temperature: Positive = 1.0,
    logit_standardization: bool = False,
    share_student_blocks: bool = True,
    warmup_epochs: Annotated[int, Field(ge=0)] = 0,
    teacher_boundaries: tuple[str, ...] = SFTN_BOUNDARIES,
    student_boundaries: tuple[str, ...] = SFTN_BOUNDARIES,
) -> SFTNTrainer:
    """Train the `teacher` section's model (fresh `arch`, or a trained `path`
    to fine-tune) jointly with branches of a `student_arch` student; the run
    saves the plain teacher as `model.keras`."""
    student = context.prepare(models.get(student_arch, context.input_shape, context.num_classes))
    return SFTNTrainer(
        teacher=context.prepare(context.trained_model()),
        student=student,
        teacher_boundaries=list(teacher_boundaries),
        student_boundaries=list(student_boundaries),
        lambda_t=lambda_t,
        lambda_kl=lambda_kl,
        lambda_ce=lambda_ce,
        temperature=temperature,
        logit_standardization=logit_standardization,
        share_student_blocks=share_student_blocks,
        warmup_epochs=warmup_epochs,
    )
