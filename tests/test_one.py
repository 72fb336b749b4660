"""On-the-fly Native Ensemble (Lan et al., NeurIPS 2018): the loss of a step
against a numpy reference written from the paper (gate, gated ensemble, CE
terms, T^2-scaled KL), stop-gradient targets, one update of every part,
saving, the extracted branches, the builder and a CLI run."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_cli import TINY_ARGS, run_cli

from keras_kd import ONETrainer, models, registry
from keras_kd.models.multibranch import extract_branch
from keras_kd.models.native_ensemble import branch_count, branch_model, ensemble_view, native_ensemble
from keras_kd.taps import tap_model

from conftest import np_cross_entropy, np_log_softmax, np_standardize

SHAPE = (16, 16, 1)
RNG = np.random.default_rng(0)
BN_EPSILON = 1e-5


def network(num_branches=3, **kwargs):
    return native_ensemble("resnet8", num_branches, SHAPE, 10, **kwargs)


def batch(n=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *SHAPE)).astype("float32"), np.array([0, 3, 9, 1, 1, 5, 7, 2][:n])


def probe(net):
    """The gate's input (pooled shared features), the gate and every branch's logits."""
    outputs = {"pool": net.get_layer("gate_pool").output, "gate": net.get_layer("gate").output}
    outputs.update({f"branch{k}": net.get_layer(f"branch{k}").output for k in range(1, branch_count(net) + 1)})
    return keras.Model(net.inputs[0], outputs)


def np_one(net, pool, logits, y, temperature, training, standardize=False):
    """Paper Eqs. 1-5: g = softmax(ReLU(BN(W . pool))), z_e = sum_k g_k z_k,
    CE of every branch and of z_e, T^2 * KL(p_e^T || p_k^T) per branch (p of
    z-scored logits with `standardize`)."""
    scores = np_standardize if standardize else (lambda z: z)
    kernel = net.get_layer("gate_dense").kernel.numpy().astype(np.float64)
    bn = net.get_layer("gate_bn")
    h = pool.astype(np.float64) @ kernel
    if training:  # batch statistics, biased variance
        mean, var = h.mean(axis=0), h.var(axis=0)
    else:
        mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    h = (h - mean) / np.sqrt(var + BN_EPSILON) * bn.gamma.numpy() + bn.beta.numpy()
    h = np.maximum(h, 0.0)
    gate = np.exp(h - h.max(axis=1, keepdims=True))
    gate /= gate.sum(axis=1, keepdims=True)
    z = [np.asarray(t, np.float64) for t in logits]
    ensemble = sum(gate[:, k : k + 1] * z[k] for k in range(len(z)))
    log_pe = np_log_softmax(scores(ensemble) / temperature)
    terms = {"ensemble_ce_loss": np_cross_entropy(y, ensemble)}
    for k, zk in enumerate(z, start=1):
        log_pk = np_log_softmax(scores(zk) / temperature)
        terms[f"branch{k}_ce_loss"] = np_cross_entropy(y, zk)
        terms[f"branch{k}_kl_loss"] = temperature**2 * np.mean(np.sum(np.exp(log_pe) * (log_pe - log_pk), axis=1))
    return gate, terms


def np_total(terms, ce_weight, ensemble_weight, kl_weight):
    return sum(
        value * (ensemble_weight if name == "ensemble_ce_loss" else ce_weight if "_ce_" in name else kl_weight)
        for name, value in terms.items()
    )


def test_step_loss_matches_numpy_reference():
    net = network(3)
    weights = dict(ce_weight=0.5, ensemble_weight=2.0, kl_weight=1.5)
    trainer = ONETrainer(network=net, temperature=3.0, **weights)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)  # one step: no tracing
    x, y = batch()
    view = probe(net)
    # The training step's loss: BatchNorm on batch statistics everywhere (gate included).
    out = {key: value.numpy() for key, value in view(x, training=True).items()}
    gate, terms = np_one(net, out["pool"], [out[f"branch{k}"] for k in (1, 2, 3)], y, 3.0, training=True)
    np.testing.assert_allclose(out["gate"], gate, rtol=1e-5, atol=1e-6)
    assert all(terms[f"branch{k}_kl_loss"] > 0 for k in (1, 2, 3))
    history = trainer.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    assert set(history) == {"loss", "accuracy", "ensemble_accuracy"} | set(terms) | {
        f"branch{k}_accuracy" for k in (1, 2, 3)}
    for name, value in terms.items():
        np.testing.assert_allclose(history[name][0], value, rtol=1e-4, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(history["loss"][0], np_total(terms, **weights), rtol=1e-4)
    # Evaluation: the gate's BatchNorm on its moving statistics.
    out = {key: value.numpy() for key, value in view(x, training=False).items()}
    gate, terms = np_one(net, out["pool"], [out[f"branch{k}"] for k in (1, 2, 3)], y, 3.0, training=False)
    logs = trainer.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["loss"], np_total(terms, **weights), rtol=1e-4)
    ensemble = sum(gate[:, k - 1 : k] * out[f"branch{k}"] for k in (1, 2, 3))
    np.testing.assert_allclose(logs["ensemble_accuracy"], np.mean(ensemble.argmax(1) == y))
    for k in (1, 2, 3):
        np.testing.assert_allclose(logs[f"branch{k}_accuracy"], np.mean(out[f"branch{k}"].argmax(1) == y))
    assert logs["accuracy"] == logs["branch1_accuracy"]
    np.testing.assert_allclose(trainer.predict(x, verbose=0), out["branch1"], atol=1e-5)  # branch 1 is deployed


def test_kl_terms_of_standardized_logits_match_numpy():
    net = network(3)
    trainer = ONETrainer(network=net, temperature=2.0, logit_standardization=True)
    x, y = batch()
    out = {key: value.numpy() for key, value in probe(net)(x, training=False).items()}
    logits = [out[f"branch{k}"] for k in (1, 2, 3)]
    _, expected = np_one(net, out["pool"], logits, y, 2.0, training=False, standardize=True)
    _, plain = np_one(net, out["pool"], logits, y, 2.0, training=False)
    terms = {t.name: float(t.value) for t in trainer.compute_terms(x, y, trainer(x, training=False, features=True), False)}
    for k in (1, 2, 3):
        name = f"branch{k}_kl_loss"
        np.testing.assert_allclose(terms[name], expected[name], rtol=1e-4, atol=1e-7, err_msg=name)
        assert not np.isclose(expected[name], plain[name], rtol=1e-2)
    assert ONETrainer.from_config(trainer.get_config()).logit_standardization


def test_kl_target_is_constant_and_the_gate_learns_from_the_ensemble_ce_only():
    net = network(3)
    trainer = ONETrainer(network=net)
    x, y = batch()
    gate = [*net.get_layer("gate_dense").trainable_variables, *net.get_layer("gate_bn").trainable_variables]
    shared = net.get_layer("shared_stem").trainable_variables
    branch = {k: [*net.get_layer(f"branch{k}_body").trainable_variables,
                  *net.get_layer(f"branch{k}_head").trainable_variables] for k in (1, 2, 3)}
    with tf.GradientTape(persistent=True) as tape:
        outputs = trainer(x, training=True, features=True)
        terms = {t.name: t.weight * t.value for t in trainer.compute_terms(x, y, outputs, training=True)}
        kl = sum(terms[f"branch{k}_kl_loss"] for k in (1, 2, 3))
        total = sum(terms.values())
    # No gradient reaches the ensemble (the gate, the other branches) through the KL target.
    assert all(g is None for g in tape.gradient(kl, gate))
    for k in (1, 2, 3):
        own = tape.gradient(terms[f"branch{k}_kl_loss"], branch[k] + shared)
        assert all(g is not None for g in own) and all(float(tf.reduce_max(tf.abs(g))) > 0 for g in own[:1])
        for other in (1, 2, 3):
            if other != k:
                assert all(g is None for g in tape.gradient(terms[f"branch{k}_kl_loss"], branch[other]))
    # The gate's gradient is that of the ensemble's cross-entropy alone, and it is not zero.
    expected = tape.gradient(terms["ensemble_ce_loss"], gate)
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in expected)
    for a, b in zip(tape.gradient(total, gate), expected, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-8)
    # The KL gradient equals the one with the ensemble's logits fed as a constant.
    constant = tf.constant(outputs["ensemble"].numpy())
    with tf.GradientTape() as tape2:
        z1 = trainer(x, training=True, features=True)["branch1"]
        reference = 9.0 * tf.reduce_mean(tf.reduce_sum(
            tf.nn.softmax(constant / 3.0) * (tf.nn.log_softmax(constant / 3.0) - tf.nn.log_softmax(z1 / 3.0)), -1))
    for a, b in zip(tape.gradient(terms["branch1_kl_loss"], branch[1]), tape2.gradient(reference, branch[1]),
                    strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)


def test_one_step_updates_every_part_and_save_load_round_trip(tmp_path):
    net = network(2)
    trainer = ONETrainer(network=net, ce_weight=0.7, ensemble_weight=1.2, kl_weight=1.5, temperature=2.0,
                         kl_rampup_epochs=5)
    ids = [id(v) for v in trainer.trainable_variables]
    assert len(ids) == len(set(ids)) and set(ids) == {id(v) for v in net.trainable_variables}
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), run_eagerly=True)
    x, y = batch()
    parts = {name: net.get_layer(name) for name in
             ("shared_stem", "gate_dense", "gate_bn", "branch1_body", "branch1_head", "branch2_body", "branch2_head")}
    before = {name: [w.numpy().copy() for w in layer.weights] for name, layer in parts.items()}
    trainer.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert int(trainer.optimizer.iterations) == 1
    for name, layer in parts.items():  # kernels, biases and BatchNorm statistics of every part
        changed = [not np.array_equal(old, w.numpy()) for old, w in zip(before[name], layer.weights, strict=True)]
        assert all(changed), name
    clone = ONETrainer.from_config(trainer.get_config())
    assert (clone.ce_weight, clone.ensemble_weight, clone.kl_weight, clone.temperature, clone.kl_rampup_epochs,
            clone.num_branches) == (0.7, 1.2, 1.5, 2.0, 5, 2)
    trainer.save(tmp_path / "one.keras")
    loaded = keras.models.load_model(tmp_path / "one.keras")
    assert isinstance(loaded, ONETrainer) and loaded.num_branches == 2
    new, old = loaded(x, training=False, features=True), trainer(x, training=False, features=True)
    assert set(new) == {"logits", "branch1", "branch2", "ensemble", "gate"}
    for key in new:
        np.testing.assert_allclose(new[key].numpy(), old[key].numpy(), atol=1e-5, err_msg=key)
    for a, b in zip(loaded.optimizer.variables, trainer.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert list(trainer.deliverables()) == ["student", "branch1", "branch2", "ensemble"]
    assert trainer.deliverables()["ensemble"] is net


def test_extracted_branches_are_plain_models_with_the_branch_logits(tmp_path):
    net = network(3)
    x, _ = batch(4)
    net(x, training=True)  # move the BatchNorm statistics off their initial values
    inside = ensemble_view(net)(x, training=False)
    plain = models.get("resnet8", SHAPE, 10)
    for k in (1, 2, 3):
        single = branch_model(net, k)
        assert [layer.name for layer in single.layers] == [layer.name for layer in plain.layers]
        assert single.count_params() == plain.count_params()
        assert not {id(w) for w in single.weights} & {id(w) for w in net.weights}  # a copy, not a view
        np.testing.assert_allclose(single(x, training=False), inside[f"branch{k}"], atol=1e-5)
        np.testing.assert_allclose(extract_branch(net, k)(x, training=False), inside[f"branch{k}"], atol=1e-5)
    assert sorted(tap_model(single, ["embedding"]).output) == ["embedding", "logits"]  # tappable like a zoo model
    single.save(tmp_path / "branch3.keras")
    reloaded = keras.models.load_model(tmp_path / "branch3.keras")
    np.testing.assert_allclose(reloaded(x, training=False), inside["branch3"], atol=1e-5)
    trainer = ONETrainer(network=net)
    np.testing.assert_allclose(trainer.deployable()(x, training=False), inside["branch1"], atol=1e-5)
    assert trainer.deployable().name == "resnet8_one_x3_branch1"


def test_kl_rampup_follows_the_sigmoid_schedule():
    trainer = ONETrainer(network=network(2), kl_rampup_epochs=4)
    plain = ONETrainer(network=trainer.network, kl_rampup_epochs=0)
    x, y = batch()
    outputs = trainer(x, training=False, features=True)

    def kl(model):
        return float(next(t.value for t in model.compute_terms(x, y, outputs, False) if t.name == "branch2_kl_loss"))

    for epoch, factor in ((0, np.exp(-5.0)), (2, np.exp(-5.0 / 4)), (4, 1.0), (9, 1.0)):
        trainer.epoch.assign(epoch)
        np.testing.assert_allclose(kl(trainer), factor * kl(plain), rtol=1e-5)


def test_clear_errors():
    with pytest.raises(TypeError, match=re.escape("ONETrainer(network=...)") + ".*positional"):
        ONETrainer(network())
    with pytest.raises(TypeError, match="needs `network=`"):
        ONETrainer()
    with pytest.raises(ValueError, match="not a native-ensemble network"):
        ONETrainer(network=models.multibranch("resnet8", 2, SHAPE, 10))
    with pytest.raises(ValueError, match="`num_branches` must be an integer >= 2"):
        network(1)
    with pytest.raises(ValueError, match="`shared_until` must be one of"):
        network(2, shared_until="embedding")
    net = network(2)
    with pytest.raises(ValueError, match="zero"):
        ONETrainer(network=net, ce_weight=0.0, ensemble_weight=0.0, kl_weight=0.0)
    with pytest.raises(ValueError, match="temperature"):
        ONETrainer(network=net, temperature=0.0)
    with pytest.raises(ValueError, match="kl_rampup_epochs"):
        ONETrainer(network=net, kl_rampup_epochs=-1)
    for bad in (3, 0, -1):
        with pytest.raises(ValueError, match=r"`index` must be in 1\.\.2 \(the branches of "):
            branch_model(net, bad)
    with pytest.raises(TypeError, match=r"`index` must be an integer in 1\.\.2"):
        branch_model(net, 1.0)
    with pytest.raises(TypeError, match=r"`index` must be an integer in 1\.\.2"):
        extract_branch(net, True)


class Context(registry.BuildContext):
    input_shape, num_classes, sync_batchnorm = SHAPE, 10, False

    def student_arch(self):
        return "resnet8"

    def prepare(self, model):
        return model


def test_builder_options():
    build = registry.method("one").build
    trainer = build(Context())
    assert trainer.num_branches == 3 and trainer.temperature == 3.0 and trainer.kl_weight == 1.0
    assert trainer.network.get_layer("shared_stem").output.shape == (None, 8, 8, 32)  # stem + stages 1-2 shared
    first, second = (trainer.network.get_layer(f"branch{k}_body").get_layer("stage3_block0_conv1").kernel.numpy()
                     for k in (1, 2))
    assert not np.array_equal(first, second)  # independently initialised branches
    other = build(Context(), num_branches=2, shared_until="stage1", kl_rampup_epochs=80)
    assert other.num_branches == 2 and other.kl_rampup_epochs == 80
    assert other.network.get_layer("shared_stem").output.shape == (None, 16, 16, 16)


def test_cli_run_and_shipped_config(tmp_path, capfd):  # fd-level: the CLI filters stderr by file descriptor
    from trainers.config import ConfigError, load_config
    from trainers.quickstart import CONFIGS

    config = load_config(CONFIGS / "one_fmnist.yaml")
    assert config.method.name == "one" and config.method.num_branches == 3 and config.method.temperature == 3.0
    with pytest.raises(ConfigError, match="`method.num_branches`: Input should be greater than or equal to 2"):
        load_config(overrides=["method=one", "method.num_branches=1"])
    code, out, err = run_cli(
        ["train", "--config", str(CONFIGS / "one_fmnist.yaml"), "--output-dir", str(tmp_path), "--run-name", "one",
         "--set", "method.num_branches=2", "--set", "train.steps_per_epoch=1", *TINY_ARGS],
        capfd,
    )
    assert code == 0, err
    result = json.loads(out)
    run = tmp_path / "one"
    assert result["method"] == "one" and result["model"] == "resnet8_one_x2_branch1"
    assert result["test_accuracy"] == result["test_branch1_accuracy"]
    assert {"test_branch2_accuracy", "test_ensemble_accuracy"} <= set(result)
    trainer = keras.models.load_model(run / "distiller.keras")
    assert isinstance(trainer, ONETrainer) and int(trainer.optimizer.iterations) == 1
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype("float32")
    inside = trainer(x, training=False, features=True)
    for name, key in (("student", "branch1"), ("branch1", "branch1"), ("branch2", "branch2"), ("ensemble", "ensemble")):
        saved = keras.models.load_model(run / f"{name}.keras")
        np.testing.assert_allclose(saved(x, training=False), inside[key], atol=1e-5, err_msg=name)
    assert "embedding" in [layer.name for layer in keras.models.load_model(run / "student.keras").layers]
    assert (run / "tensorboard" / "projector" / "metadata.tsv").is_file()
    assert "branch2_kl_loss" in (run / "history.csv").read_text().splitlines()[0]
