"""On-the-fly Native Ensemble (ONE): branches over shared layers, taught by their gated ensemble."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.checks import check_count, check_flag, check_positive
from keras_kd.distillers.base import (
    BaseDistiller,
    LossTerm,
    check_weights,
    cross_entropy,
    deserialize_entries,
    images_of,
    reject_positional,
)
from keras_kd.losses.soft_target import SoftTargetLoss
from keras_kd.models.multibranch import branch_names, extract_branch
from keras_kd.models.native_ensemble import ENSEMBLE, branch_count, branch_model, ensemble_view


def sigmoid_rampup(epoch, length: int):
    """`exp(-5 (1 - min(epoch, length) / length)^2)`, 1 when `length` is 0
    (Laine & Aila, ICLR 2017; the ONE authors' code ramps the KL weight so)."""
    if not length:
        return 1.0
    phase = 1.0 - ops.minimum(ops.cast(epoch, "float32"), float(length)) / float(length)
    return ops.exp(-5.0 * phase * phase)


@keras.saving.register_keras_serializable(package="keras_kd")
class ONETrainer(BaseDistiller):
    """Knowledge distillation by On-the-Fly Native Ensemble inside `model.fit`.

    Lan, Zhu, Gong, "Knowledge Distillation by On-the-Fly Native Ensemble",
    NeurIPS 2018 (arXiv 1806.04606). One network trained from scratch,
    without a pre-trained teacher (`keras_kd.models.native_ensemble`): `N`
    branches over shared low-level layers, and a gate on the shared features
    whose softmax weights `g` combine the branch logits `z_k` into the
    ensemble `z_e = sum_k g_k z_k`, the on-the-fly teacher. With
    `p^T(z) = softmax(z / T)`:

    ```
    loss = ce_weight * sum_k CE(y, z_k) + ensemble_weight * CE(y, z_e)
           + kl_weight * r(epoch) * T^2 * sum_k KL(stop_gradient(p^T(z_e)) || p^T(z_k))
    ```

    The ensemble's probabilities are a constant target (the library's
    `SoftTargetLoss` on stop-gradient logits): the KL terms train each
    branch and the shared layers, never the gate or the other branches; the
    gate learns from the ensemble's cross-entropy only. `T = 3` and unit
    weights are the paper's (its Eq. 5). KL is summed over classes and
    averaged over the batch. `r(epoch) = 1` unless `kl_rampup_epochs > 0`:
    then the sigmoid ramp-up `exp(-5 (1 - epoch / R)^2)` of the authors'
    code (not in the paper; they use `R = 80` of 300 epochs), applied to the
    reported `branch{k}_kl_loss` too. Every branch and the gate come from
    ONE forward pass of the network per step.

    `call()`/`predict`/`evaluate` act on branch 1 (`self.student`, a view
    sharing the network's weights); `call(x, features=True)` returns
    `branch1` .. `branchN`, `ensemble`, `gate` and `logits` (= branch 1).
    Metrics: `loss`, `ensemble_ce_loss`, `branch{k}_ce_loss`,
    `branch{k}_kl_loss` (unweighted), `accuracy` (branch 1),
    `ensemble_accuracy` and `branch{k}_accuracy`. A run saves branch 1 as
    `student.keras`, every branch as `branch{k}.keras` (plain models of the
    zoo architecture, see `native_ensemble.branch_model`) and the gated
    ensemble network as `ensemble.keras`.

    Args:
        network: a `keras_kd.models.native_ensemble.native_ensemble(...)` model.
        ce_weight: weight of each branch's cross-entropy (paper: 1).
        ensemble_weight: weight of the ensemble's cross-entropy (paper: 1).
        kl_weight: weight of each branch's distillation term (paper: 1).
        temperature: softmax temperature `T` of the distillation term (> 0; paper: 3).
        logit_standardization: z-score every network's logits per sample before
            the temperature of the distillation term (Sun et al., CVPR 2024; `SoftTargetLoss`).
        kl_rampup_epochs: `R` of the ramp-up above (0, the default: no ramp-up).
        check_finite, check_labels: see `BaseDistiller`.

    Example:

    >>> import numpy as np
    >>> from keras_kd.models.native_ensemble import native_ensemble
    >>> network = native_ensemble("resnet8", num_branches=2, input_shape=(16, 16, 1), num_classes=10)
    >>> trainer = ONETrainer(network=network)
    >>> trainer.compile(optimizer="sgd")
    >>> x = np.random.rand(8, 16, 16, 1).astype("float32")
    >>> history = trainer.fit(x, np.arange(8) % 10, epochs=1, verbose=0)
    >>> sorted(history.history)  # doctest: +NORMALIZE_WHITESPACE
    ['accuracy', 'branch1_accuracy', 'branch1_ce_loss', 'branch1_kl_loss',
     'branch2_accuracy', 'branch2_ce_loss', 'branch2_kl_loss',
     'ensemble_accuracy', 'ensemble_ce_loss', 'loss']
    >>> list(trainer.deliverables())
    ['student', 'branch1', 'branch2', 'ensemble']
    """

    def __init__(
        self,
        *args,
        network: keras.Model | None = None,
        ce_weight: float = 1.0,
        ensemble_weight: float = 1.0,
        kl_weight: float = 1.0,
        temperature: float = 3.0,
        logit_standardization: bool = False,
        kl_rampup_epochs: int = 0,
        check_finite: bool = True,
        check_labels: bool = True,
        **kwargs,
    ):
        reject_positional("ONETrainer", args, "network=...")
        if not isinstance(network, keras.Model):
            raise TypeError(
                "ONETrainer needs `network=`: a keras_kd.models.native_ensemble.native_ensemble(...) model, "
                f"got {type(network).__name__}."
            )
        count = branch_count(network)  # clear error for other models
        weights = check_weights({"ce_weight": ce_weight, "ensemble_weight": ensemble_weight, "kl_weight": kl_weight})
        kl_rampup_epochs = check_count("kl_rampup_epochs", kl_rampup_epochs)
        keys = branch_names(count)
        kwargs.setdefault("name", "one_trainer")
        super().__init__(
            student=extract_branch(network, 1),
            num_classes=int(network.output_shape[-1]),
            term_names=["ensemble_ce_loss", *(f"{key}_{term}" for key in keys for term in ("ce_loss", "kl_loss"))],
            check_finite=check_finite,
            check_labels=check_labels,
            accuracy_outputs=[ENSEMBLE, *keys],
            **kwargs,
        )
        self.network = network  # tracked: the gate and every branch train, save and restore with the trainer
        self.view = ensemble_view(network)
        self.num_branches = count
        self.ce_weight = weights["ce_weight"]
        self.ensemble_weight = weights["ensemble_weight"]
        self.kl_weight = weights["kl_weight"]
        self.temperature = check_positive("temperature", temperature)
        self.logit_standardization = check_flag("logit_standardization", logit_standardization)
        self.kl_rampup_epochs = kl_rampup_epochs
        self.kl_losses = {
            key: SoftTargetLoss(
                self.temperature,
                logit_standardization=self.logit_standardization,
                teacher_layer_name=ENSEMBLE,
                student_layer_name=key,
            )
            for key in keys
        }
        self.mark_built()

    # -- models -----------------------------------------------------------------

    def branch_model(self, index: int) -> keras.Model:
        """Branch `index` (1..N) as a plain zoo-architecture model with a copy of the current weights."""
        return branch_model(self.network, index)

    def deployable(self) -> keras.Model:
        """Branch 1 as a plain model (a copy of the current weights)."""
        return self.branch_model(1)

    def deliverables(self) -> dict:
        branches = {f"branch{k}": self.branch_model(k) for k in range(1, self.num_branches + 1)}
        return {"student": branches["branch1"], **branches, "ensemble": self.network}

    def projector_taps(self) -> list:
        return [("projector", self.deployable(), ["embedding"])]

    # -- training ---------------------------------------------------------------

    def call(self, inputs, training=None, features=False):
        """Branch 1's logits; with `features=True`, the dict of every branch's
        logits (`branch{k}`), the ensemble's, the gate's weights and `logits`."""
        if not features:
            return super().call(inputs, training=training)
        return self.view(images_of(inputs), training=training)

    def compute_terms(self, x, y, student_outputs, training):
        # The ensemble teaches through its probabilities only: a constant target.
        target = {ENSEMBLE: ops.stop_gradient(student_outputs[ENSEMBLE])}
        ramp = sigmoid_rampup(self.epoch, self.kl_rampup_epochs)
        terms = [LossTerm("ensemble_ce_loss", self.ensemble_weight, cross_entropy(y, student_outputs[ENSEMBLE]))]
        for key, loss in self.kl_losses.items():
            kl = self.loss_value(f"{key}_kl_loss", loss, target, student_outputs, y, training)
            terms += [
                LossTerm(f"{key}_ce_loss", self.ce_weight, cross_entropy(y, student_outputs[key])),
                LossTerm(f"{key}_kl_loss", self.kl_weight, ramp * kl),
            ]
        return terms

    def forward_state(self) -> list:
        variables = [v for v in self.network.non_trainable_weights if v.trainable is False]
        return list({id(v): v for v in variables}.values())

    def trainable_losses(self) -> list:
        return list(self.network.losses)

    def get_config(self) -> dict:
        return {
            "network": keras.saving.serialize_keras_object(self.network),
            "ce_weight": self.ce_weight,
            "ensemble_weight": self.ensemble_weight,
            "kl_weight": self.kl_weight,
            "temperature": self.temperature,
            "logit_standardization": self.logit_standardization,
            "kl_rampup_epochs": self.kl_rampup_epochs,
            **self.base_config(),
        }

    @classmethod
    def from_config(cls, config: dict) -> ONETrainer:
        return cls(**deserialize_entries(config, ("network",)))
