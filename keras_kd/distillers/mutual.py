"""Deep Mutual Learning (DML): N peers trained from scratch, each taught by the others."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_kd.checks import check_flag, check_positive
from keras_kd.distillers.base import (
    BaseDistiller,
    LossTerm,
    check_weights,
    cross_entropy,
    deserialize_entries,
    images_of,
    reject_positional,
)
from keras_kd.distillers.checks import logits_model, model_io
from keras_kd.losses.base import LOGITS
from keras_kd.losses.soft_target import SoftTargetLoss


def peer_key(index: int) -> str:
    """Key of peer `index` (1-based) in the trainer's outputs dict and metric names."""
    return f"peer{index}"


@keras.saving.register_keras_serializable(package="keras_kd")
class DMLTrainer(BaseDistiller):
    """Deep Mutual Learning inside `model.fit`.

    Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018. `N >= 2`
    peer networks (any architectures with the same inputs and classes) train
    together from scratch, without a pre-trained teacher: each peer learns
    the labels and the other peers' class posteriors. With `z_k` the logits
    of peer `k` and `p_k = softmax(z_k / T)`:

    ```
    L_k = ce_weight * CE(y, z_k)
          + kl_weight * T^2 / (N - 1) * sum_{l != k} KL(stop_gradient(p_l) || p_k)
    loss = sum_k L_k
    ```

    The other peers' posteriors are constants in `L_k` (the library's
    `SoftTargetLoss`, given stop-gradient targets), so the gradient of the
    sum with respect to peer `k`'s weights is exactly that of `L_k`: ONE
    forward pass of every peer and one update of all of them per step. The
    paper's Algorithm 1 updates the peers in turn within an iteration
    (peer 2's targets are recomputed after peer 1's update); updating all
    peers from the same predictions is the usual implementation and costs
    one pass per peer instead of N. `T = 1` (default) is the paper's plain
    softmax; `T^2` only keeps gradients comparable for another `T`. KL is
    summed over classes and averaged over the batch.

    `call()`/`predict`/`evaluate`/`export` act on peer 1 (`self.student`, the
    deployable network); `call(x, features=True)` returns every peer's
    logits (`peer1` .. `peerN`, `logits` = peer 1). Metrics: `loss`,
    `peer{k}_ce_loss` and `peer{k}_kl_loss` (unweighted), `accuracy` (peer 1)
    and `peer{k}_accuracy` for every peer. A run saves `student.keras`
    (peer 1) and `peer{k}.keras` for every peer.

    Args:
        peers: at least two distinct, freshly built models returning logits
            for the same classes from the same images.
        ce_weight: weight of each peer's cross-entropy (paper: 1).
        kl_weight: weight of each peer's mimicry term (paper: 1).
        temperature: softmax temperature `T` of the mimicry term (> 0; paper: 1).
        logit_standardization: z-score every network's logits per sample before
            the temperature of the mimicry term (Sun et al., CVPR 2024; `SoftTargetLoss`).
        check_finite, check_labels: see `BaseDistiller`.

    Example:

    >>> import numpy as np
    >>> from keras_kd import models
    >>> peers = [models.get("resnet8", (16, 16, 1), 10), models.get("cnn", (16, 16, 1), 10)]
    >>> trainer = DMLTrainer(peers=peers)
    >>> trainer.compile(optimizer="sgd")
    >>> x = np.random.rand(8, 16, 16, 1).astype("float32")
    >>> history = trainer.fit(x, np.arange(8) % 10, epochs=1, verbose=0)
    >>> sorted(history.history)  # doctest: +NORMALIZE_WHITESPACE
    ['accuracy', 'loss', 'peer1_accuracy', 'peer1_ce_loss', 'peer1_kl_loss',
     'peer2_accuracy', 'peer2_ce_loss', 'peer2_kl_loss']
    >>> trainer.deployable() is peers[0]
    True
    """

    def __init__(
        self,
        *args,
        peers: Sequence[keras.Model] | None = None,
        ce_weight: float = 1.0,
        kl_weight: float = 1.0,
        temperature: float = 1.0,
        logit_standardization: bool = False,
        check_finite: bool = True,
        check_labels: bool = True,
        **kwargs,
    ):
        reject_positional("DMLTrainer", args, "peers=[...]")
        if peers is None or isinstance(peers, keras.Model) or len(peers) < 2:
            raise TypeError("DMLTrainer needs `peers=[...]`: a list of at least two models.")
        peers = list(peers)
        if len({id(peer) for peer in peers}) != len(peers):
            raise ValueError("DMLTrainer needs distinct peer models; the same model was given twice.")
        shapes = [model_io(peer, f"peer {k}") for k, peer in enumerate(peers, start=1)]
        for k, (shape, classes) in enumerate(shapes[1:], start=2):
            if classes != shapes[0][1]:
                raise ValueError(
                    f"Peer {k} ({peers[k - 1].name!r}) predicts {classes} classes but peer 1 "
                    f"({peers[0].name!r}) predicts {shapes[0][1]}; every peer must predict the same classes."
                )
            if shape and shapes[0][0] and tuple(shape) != tuple(shapes[0][0]):
                raise ValueError(
                    f"Peer {k} ({peers[k - 1].name!r}) takes inputs of shape {shape} but peer 1 "
                    f"({peers[0].name!r}) takes {shapes[0][0]}; every peer must see the same images."
                )
        weights = check_weights({"ce_weight": ce_weight, "kl_weight": kl_weight})
        keys = [peer_key(k) for k in range(1, len(peers) + 1)]
        kwargs.setdefault("name", "dml_trainer")
        super().__init__(
            student=peers[0],
            num_classes=shapes[0][1],
            term_names=[f"{key}_{term}" for key in keys for term in ("ce_loss", "kl_loss")],
            check_finite=check_finite,
            check_labels=check_labels,
            accuracy_outputs=keys,
            **kwargs,
        )
        self.other_peers = peers[1:]  # tracked: their weights train, save and restore with the trainer
        self.peer_logits = [self.student_logits] + [
            logits_model(peer, f"peer {k}") for k, peer in enumerate(peers[1:], start=2)
        ]
        self.ce_weight = weights["ce_weight"]
        self.kl_weight = weights["kl_weight"]
        self.temperature = check_positive("temperature", temperature)
        self.logit_standardization = check_flag("logit_standardization", logit_standardization)
        # kl_losses[k][l]: peer k+1 mimics peer l+1 (l != k).
        self.kl_losses = [
            {
                other: SoftTargetLoss(
                    self.temperature,
                    logit_standardization=self.logit_standardization,
                    teacher_layer_name=other,
                    student_layer_name=key,
                )
                for other in keys
                if other != key
            }
            for key in keys
        ]
        self.mark_built()

    @property
    def peers(self) -> list[keras.Model]:
        """Every peer, peer 1 (the deployable network) first."""
        return [self.student, *self.other_peers]

    @property
    def num_peers(self) -> int:
        return 1 + len(self.other_peers)

    # -- what a run saves -------------------------------------------------------

    def deliverables(self) -> dict:
        return {"student": self.student, **{peer_key(k): peer for k, peer in enumerate(self.peers, start=1)}}

    # -- training ---------------------------------------------------------------

    def call(self, inputs, training=None, features=False):
        """Peer 1's logits; with `features=True`, every peer's (`peer{k}`) too."""
        if not features:
            return super().call(inputs, training=training)
        images = images_of(inputs)
        outputs = {peer_key(k): model(images, training=training) for k, model in enumerate(self.peer_logits, start=1)}
        return {LOGITS: outputs[peer_key(1)], **outputs}

    def compute_terms(self, x, y, student_outputs, training):
        # Each peer mimics the others' current posteriors, taken as constants.
        targets = {key: ops.stop_gradient(value) for key, value in student_outputs.items()}
        share = 1.0 / (self.num_peers - 1)
        terms = []
        for k, losses in enumerate(self.kl_losses, start=1):
            key = peer_key(k)
            kl = [self.loss_value(f"{key}_kl_loss", loss, targets, student_outputs, y, training)
                  for loss in losses.values()]
            terms += [
                LossTerm(f"{key}_ce_loss", self.ce_weight, cross_entropy(y, student_outputs[key])),
                LossTerm(f"{key}_kl_loss", self.kl_weight, share * ops.sum(ops.stack(kl))),
            ]
        return terms

    def forward_state(self) -> list:
        variables = [v for peer in self.peers for v in peer.non_trainable_weights if v.trainable is False]
        return list({id(v): v for v in variables}.values())

    def trainable_losses(self) -> list:
        return [loss for peer in self.peers for loss in peer.losses]

    def get_config(self) -> dict:
        return {
            "peers": [keras.saving.serialize_keras_object(peer) for peer in self.peers],
            "ce_weight": self.ce_weight,
            "kl_weight": self.kl_weight,
            "temperature": self.temperature,
            "logit_standardization": self.logit_standardization,
            **self.base_config(),
        }

    @classmethod
    def from_config(cls, config: dict) -> DMLTrainer:
        return cls(**deserialize_entries(config, ("peers",)))
