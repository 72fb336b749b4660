"""Coupled L2 (`l2_weight_decay`, PyTorch's SGD weight_decay) against a hand-written update."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import Supervised, losses
from trainers.config import load_config


def dense_model():
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(3, name="logits")(inputs)
    return keras.Model(inputs, outputs)


def test_two_momentum_steps_match_pytorch_style_coupled_weight_decay():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = np.arange(8) % 3
    lr, momentum, wd = 0.1, 0.9, 0.05
    model = dense_model()
    reference = [w.numpy().astype(np.float64) for w in model.trainable_weights]
    trainer = Supervised(model=model, l2_weight_decay=wd)
    trainer.compile(optimizer=keras.optimizers.SGD(lr, momentum=momentum))
    velocity = [np.zeros_like(w) for w in reference]
    for _ in range(2):
        with tf.GradientTape() as tape:
            variables = [tf.Variable(w) for w in reference]
            logits = tf.matmul(tf.constant(x, tf.float64), variables[0]) + variables[1]
            ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = [g.numpy() for g in tape.gradient(ce, variables)]
        for i, (w, g) in enumerate(zip(reference, grads, strict=True)):
            velocity[i] = momentum * velocity[i] + g + wd * w  # L2 joins the gradient before momentum
            reference[i] = w - lr * velocity[i]
        trainer.train_on_batch(x, y)
    for new, expected in zip(model.trainable_weights, reference, strict=True):
        np.testing.assert_allclose(new.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_run_option():
    trainer = Supervised(model=dense_model(), l2_weight_decay=5e-4)
    assert trainer.get_config()["l2_weight_decay"] == 5e-4
    with pytest.raises(ValueError, match="`l2_weight_decay` must be a finite number >= 0"):
        Supervised(model=dense_model(), l2_weight_decay=-1.0)
    config = load_config(overrides=["train.weight_decay_mode=coupled", "train.nesterov=false"])
    assert config.train.weight_decay_mode == "coupled" and config.train.nesterov is False
    from trainers import runs

    sgd = runs.optimizer(config, steps_per_epoch=10)
    assert sgd.weight_decay is None and sgd.nesterov is False  # the decay moves into the loss


def test_soft_target_without_temperature_scaling():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(2, 4, 5)).astype("float32")
    scaled = float(losses.SoftTargetLoss(3.0)(t, s))
    plain = float(losses.SoftTargetLoss(3.0, temperature_scaling=False)(t, s))
    assert scaled == pytest.approx(9.0 * plain, rel=1e-5)
