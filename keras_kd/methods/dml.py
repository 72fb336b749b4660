"""`method: dml` — deep mutual learning (Zhang et al., CVPR 2018)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from keras_kd import models
from keras_kd.distillers.mutual import DMLTrainer
from keras_kd.registry import BuildContext, NonNegative, Positive, register_method


@register_method("dml")
def build_dml(
    context: BuildContext,
    *,
    num_peers: Annotated[int, Field(ge=2)] | None = None,
    peers: list[str] | None = None,
    ce_weight: NonNegative = 1.0,
    kl_weight: NonNegative = 1.0,
    temperature: Positive = 1.0,
    logit_standardization: bool = False,
) -> DMLTrainer:
    """From scratch, peers that learn the labels and each other's
    posteriors: `num_peers` fresh copies of `student.arch` (default 2), or
    the `student` model plus one fresh model per zoo name in `peers`; the run
    saves each peer (`peer{k}.keras`) and peer 1 as `student.keras`."""
    if peers is not None and not peers:
        raise ValueError("`peers` lists the zoo architectures of peers 2..N: give at least one name.")
    if peers is not None and num_peers is not None and num_peers != 1 + len(peers):
        raise ValueError(
            f"`num_peers` is {num_peers} but `peers` names {len(peers)} peer(s) besides the student "
            f"({1 + len(peers)} in all); give one of them."
        )
    if peers is None:
        context.student_arch()  # copies need an architecture, not a trained file
        networks = [context.student() for _ in range(num_peers or 2)]
    else:
        networks = [context.student()]
        networks += [models.get(arch, context.input_shape, context.num_classes) for arch in peers]
    seen = set()
    for k, network in enumerate(networks, start=1):  # copies of one arch: "resnet8", "resnet8_peer2", ...
        if network.name in seen:
            network.name = f"{network.name}_peer{k}"
        seen.add(network.name)
    return DMLTrainer(
        peers=[context.prepare(network) for network in networks],
        ce_weight=ce_weight,
        kl_weight=kl_weight,
        temperature=temperature,
        logit_standardization=logit_standardization,
    )
