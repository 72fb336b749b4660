"""How soft a cached teacher's targets are at each temperature.

    python -m benchmarks.soft_targets saved_models/teacher_cache/8fd4fb8b83bdd839 --temperatures 1 4

Reads every stored epoch (augmented views) of a teacher-output cache and
prints, per temperature, the mean probability of the top class, the mean
probability mass on the other classes (what soft targets carry beyond the
label) and the share of views whose top class holds more than 99%.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

from keras_kd.data import TeacherOutputCache


def soft_target_stats(logits: np.ndarray, temperature: float) -> dict[str, float]:
    """Statistics of `softmax(logits / temperature)` over the rows of `(N, classes)` logits.

    >>> stats = soft_target_stats(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]), 1.0)
    >>> {k: round(v, 3) for k, v in stats.items()}
    {'mean_top_probability': 0.625, 'mean_other_mass': 0.375, 'share_top_above_0.99': 0.0}
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    scaled = np.asarray(logits, "float64") / temperature
    probabilities = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    top = probabilities.max(axis=1)
    return {"mean_top_probability": float(top.mean()), "mean_other_mass": float((1.0 - top).mean()),
            "share_top_above_0.99": float((top > 0.99).mean())}


def cache_stats(cache: TeacherOutputCache, temperatures: Sequence[float], column: str = "teacher1_logits") -> dict[str, dict]:
    """`soft_target_stats` of `column` over every stored epoch of `cache`, per temperature
    (for a `top_k` cache, of the logits as training reads them: the rest of the mass spread evenly)."""
    logits = np.concatenate([cache.epoch_outputs(epoch)[column] for epoch in range(cache.epochs)])
    return {f"T={t:g}": soft_target_stats(logits, t) for t in temperatures}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", help="a teacher-output cache folder")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--column", default="teacher1_logits")
    args = parser.parse_args(argv)
    cache = TeacherOutputCache.load(args.cache)
    print(json.dumps({"cache": args.cache, "epochs": cache.epochs, "examples": cache.num_examples,
                      **cache_stats(cache, args.temperatures, args.column)}, indent=2))


if __name__ == "__main__":
    main()
