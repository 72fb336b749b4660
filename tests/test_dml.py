"""Deep Mutual Learning (Zhang et al., CVPR 2018): losses against a numpy
reference written from the paper, stop-gradient targets, one update of every
peer per step, saving, the builder and a CLI run."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_cli import TINY_ARGS, run_cli

from keras_kd import models, registry
from keras_kd.distillers.mutual import DMLTrainer

from conftest import np_cross_entropy, np_standardize, tiny_model

RNG = np.random.default_rng(0)


def peers(count, widths=(4, 6, 8)):
    return [tiny_model(width=widths[k], name=f"net{k + 1}") for k in range(count)]


def np_softmax(z, temperature):
    z = z.astype(np.float64) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_dml(logits, y, temperature=1.0, standardize=False):
    """Per peer k: CE(y, z_k) and T^2 / (N-1) * sum_{l != k} mean_batch KL(p_l || p_k)
    (p of z-scored logits with `standardize`)."""
    n = len(logits)
    p = [np_softmax(np_standardize(z) if standardize else z, temperature) for z in logits]
    ce = [np_cross_entropy(y, z) for z in logits]
    kl = []
    for k in range(n):
        total = 0.0
        for other in range(n):
            if other != k:
                total += np.mean(np.sum(p[other] * (np.log(p[other]) - np.log(p[k])), axis=-1))
        kl.append(temperature**2 * total / (n - 1))
    return ce, kl


@pytest.mark.parametrize("count, temperature, standardize", [(2, 1.0, False), (3, 1.0, False), (3, 3.0, False),
                                                             (3, 2.0, True)])
def test_terms_match_numpy(count, temperature, standardize):
    nets = peers(count)
    trainer = DMLTrainer(peers=nets, ce_weight=0.5, kl_weight=2.0, temperature=temperature,
                         logit_standardization=standardize)
    trainer.compile(optimizer="sgd")
    x, y = RNG.normal(size=(6, 28, 28, 1)).astype("float32"), np.array([0, 3, 9, 1, 1, 5])
    logits = [net(x, training=False).numpy() for net in nets]
    ce, kl = np_dml(logits, y, temperature, standardize)
    if standardize:  # the z-scored mimicry differs from the plain one on these logits
        assert not np.allclose(kl, np_dml(logits, y, temperature)[1], rtol=1e-2)
        assert DMLTrainer.from_config(trainer.get_config()).logit_standardization
    terms = trainer.compute_terms(x, y, trainer(x, training=False, features=True), training=False)
    values = {term.name: float(term.value) for term in terms}
    for k in range(count):
        np.testing.assert_allclose(values[f"peer{k + 1}_ce_loss"], ce[k], rtol=1e-4)
        np.testing.assert_allclose(values[f"peer{k + 1}_kl_loss"], kl[k], rtol=1e-4, atol=1e-7)
        assert kl[k] > 0
    logs = trainer.evaluate(x, y, batch_size=6, return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["loss"], 0.5 * sum(ce) + 2.0 * sum(kl), rtol=1e-4)
    for k in range(count):
        accuracy = np.mean(np.argmax(logits[k], axis=-1) == y)
        np.testing.assert_allclose(logs[f"peer{k + 1}_accuracy"], accuracy)
    assert logs["accuracy"] == logs["peer1_accuracy"]
    expected = {"loss", "accuracy"} | {f"peer{k}_{m}" for k in range(1, count + 1)
                                       for m in ("ce_loss", "kl_loss", "accuracy")}
    assert set(logs) == expected
    np.testing.assert_allclose(trainer.predict(x, verbose=0), logits[0], atol=1e-6)  # peer 1 is deployed


def test_kl_reaches_only_the_mimicking_peer_and_each_peer_gets_its_own_loss():
    nets = peers(3)
    trainer = DMLTrainer(peers=nets)
    x, y = RNG.normal(size=(4, 28, 28, 1)).astype("float32"), np.arange(4)
    with tf.GradientTape(persistent=True) as tape:
        terms = {t.name: t.value for t in trainer.compute_terms(x, y, trainer(x, training=True, features=True), True)}
        total = sum(terms.values())
        own_losses = [terms[f"peer{k}_ce_loss"] + terms[f"peer{k}_kl_loss"] for k in range(1, 4)]
    for k, net in enumerate(nets, start=1):
        own = tape.gradient(terms[f"peer{k}_kl_loss"], net.trainable_variables)
        assert all(g is not None for g in own) and any(float(tf.reduce_max(tf.abs(g))) > 0 for g in own)
        for other, other_net in enumerate(nets, start=1):
            if other != k:  # the targets are constants: no gradient into the peers being mimicked
                assert all(g is None for g in tape.gradient(terms[f"peer{k}_kl_loss"], other_net.trainable_variables))
        # The gradient of the summed objective w.r.t. peer k is that of L_k alone.
        expected = tape.gradient(own_losses[k - 1], net.trainable_variables)
        for a, b in zip(tape.gradient(total, net.trainable_variables), expected, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_one_step_updates_every_peer_and_save_load_round_trip(tmp_path):
    nets = peers(2)
    trainer = DMLTrainer(peers=nets, ce_weight=0.7, kl_weight=1.5, temperature=2.0)
    assert {id(v) for v in trainer.trainable_variables} == {id(v) for n in nets for v in n.trainable_variables}
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    x, y = RNG.normal(size=(8, 28, 28, 1)).astype("float32"), np.arange(8) % 10
    before = [[w.numpy().copy() for w in net.weights] for net in nets]
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(trainer.optimizer.iterations) == 1
    for old, net in zip(before, nets, strict=True):
        changed = [not np.array_equal(o, w.numpy()) for o, w in zip(old, net.weights, strict=True)]
        assert all(changed), net.name  # kernels, biases and BatchNorm statistics of every peer
    assert trainer.get_config()["peers"][1]["config"]["name"] == "net2"
    clone = DMLTrainer.from_config(trainer.get_config())
    assert (clone.ce_weight, clone.kl_weight, clone.temperature, clone.num_peers) == (0.7, 1.5, 2.0, 2)
    trainer.save(tmp_path / "dml.keras")
    loaded = keras.models.load_model(tmp_path / "dml.keras")
    assert isinstance(loaded, DMLTrainer) and loaded.num_peers == 2
    for new, old in zip(loaded.peers, trainer.peers, strict=True):
        np.testing.assert_allclose(new(x, training=False).numpy(), old(x, training=False).numpy(), atol=1e-6)
    for new, old in zip(loaded.optimizer.variables, trainer.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    deliverables = trainer.deliverables()
    assert list(deliverables) == ["student", "peer1", "peer2"] and deliverables["student"] is nets[0]
    assert trainer.deployable() is nets[0]


def test_clear_errors():
    with pytest.raises(TypeError, match=re.escape("DMLTrainer(peers=[...])") + ".*positional"):
        DMLTrainer(peers(2))
    with pytest.raises(TypeError, match="at least two models"):
        DMLTrainer(peers=peers(1))
    net = tiny_model(name="a")
    with pytest.raises(ValueError, match="distinct peer models"):
        DMLTrainer(peers=[net, net])
    with pytest.raises(ValueError, match=r"Peer 2 \('b'\) predicts 5 classes but peer 1 \('a'\) predicts 10"):
        DMLTrainer(peers=[tiny_model(name="a"), tiny_model(num_classes=5, name="b")])
    with pytest.raises(ValueError, match=r"Peer 2 \('b'\) takes inputs of shape \(16, 16, 1\) but peer 1"):
        DMLTrainer(peers=[tiny_model(name="a"), tiny_model(input_shape=(16, 16, 1), name="b")])
    with pytest.raises(ValueError, match="zero"):
        DMLTrainer(peers=peers(2), ce_weight=0.0, kl_weight=0.0)
    with pytest.raises(ValueError, match="temperature"):
        DMLTrainer(peers=peers(2), temperature=0.0)


class Context(registry.BuildContext):
    input_shape, num_classes, sync_batchnorm = (16, 16, 1), 10, False

    def student(self):
        return models.get("resnet8", self.input_shape, self.num_classes)

    def student_arch(self):
        return "resnet8"

    def prepare(self, model):
        return model


def test_builder_options():
    build = registry.method("dml").build
    trainer = build(Context())
    assert [p.name for p in trainer.peers] == ["resnet8", "resnet8_peer2"]
    first, second = (p.get_layer("stem_conv").kernel.numpy() for p in trainer.peers)
    assert not np.array_equal(first, second)  # fresh, independent initialisations
    assert [p.name for p in build(Context(), num_peers=3).peers] == ["resnet8", "resnet8_peer2", "resnet8_peer3"]
    mixed = build(Context(), peers=["cnn", "resnet8"], temperature=2.0)
    assert [p.name for p in mixed.peers] == ["resnet8", "cnn", "resnet8_peer3"] and mixed.temperature == 2.0
    with pytest.raises(ValueError, match="`num_peers` is 2 but `peers` names 2 peer"):
        build(Context(), num_peers=2, peers=["cnn", "wrn_16_1"])
    with pytest.raises(ValueError, match="at least one name"):
        build(Context(), peers=[])


def test_cli_run_and_shipped_config(tmp_path, capfd):  # fd-level: the CLI filters stderr by file descriptor
    from trainers.config import ConfigError, load_config
    from trainers.quickstart import CONFIGS

    config = load_config(CONFIGS / "dml_fmnist.yaml")
    assert config.method.name == "dml" and config.method.num_peers == 2 and config.method.temperature == 1.0
    with pytest.raises(ConfigError, match="`method.num_peers`: Input should be greater than or equal to 2"):
        load_config(overrides=["method=dml", "method.num_peers=1"])
    code, out, err = run_cli(
        ["train", "--config", str(CONFIGS / "dml_fmnist.yaml"), "--output-dir", str(tmp_path), "--run-name", "dml",
         "--set", "method.num_peers=null", "--set", "method.peers=[cnn]", "--set", "train.steps_per_epoch=1",
         *TINY_ARGS],
        capfd,
    )
    assert code == 0, err
    result = json.loads(out)
    run = tmp_path / "dml"
    assert result["method"] == "dml" and result["model"] == "resnet8"
    assert result["test_accuracy"] == result["test_peer1_accuracy"] and "test_peer2_accuracy" in result
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype("float32")
    trainer = keras.models.load_model(run / "distiller.keras")
    assert isinstance(trainer, DMLTrainer) and int(trainer.optimizer.iterations) == 1
    for name, peer in (("student", trainer.peers[0]), ("peer1", trainer.peers[0]), ("peer2", trainer.peers[1])):
        saved = keras.models.load_model(run / f"{name}.keras")
        np.testing.assert_allclose(saved(x).numpy(), peer(x).numpy(), atol=1e-5)
    assert trainer.peers[1].name == "cnn"
    assert "peer2_kl_loss" in (run / "history.csv").read_text().splitlines()[0]
