"""`method: ce` — plain cross-entropy training (teachers, baseline students)."""

from __future__ import annotations

from keras_kd.distillers.supervised import Supervised
from keras_kd.registry import BuildContext, register_method


@register_method("ce")
def build_ce(context: BuildContext) -> Supervised:
    """Train one model with cross-entropy: the `teacher` section's when set
    (teachers), else the `student` section's (baselines)."""
    return Supervised(model=context.prepare(context.trained_model()))
