"""AB: activation-boundary transfer (Heo et al. AAAI 2019) with RepDistiller's conventions."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from keras import ops

from keras_kd import Distiller, losses, models, registry
from keras_kd.losses.ab import (
    RESNET8_STUDENT_LAYERS,
    RESNET20_TEACHER_LAYERS,
    ABLoss,
    activation_boundary_loss,
)
from keras_kd.methods.kd import build_losses

LEVELS = ["l1", "l2", "l3"]


def np_ab_level(s, t, m=1.0):
    """Written from the formula: teacher active -> (s - m)^2 where s < m; inactive -> (s + m)^2 where s > -m."""
    total = 0.0
    for sv, tv in zip(s.ravel(), t.ravel(), strict=True):
        if tv > 0:
            total += (sv - m) ** 2 if sv < m else 0.0
        else:
            total += (sv + m) ** 2 if sv > -m else 0.0
    return total / s.shape[0]


def np_ab(students, teachers, m=1.0):
    weights = [2.0 ** (i - len(students) + 1) for i in range(len(students))]
    return sum(w * np_ab_level(s, t, m) * 3 / 1000 for w, s, t in zip(weights, students, teachers, strict=True))


def _maps(rng, shapes):
    return {name: rng.normal(size=shape).astype("float32") for name, shape in zip(LEVELS, shapes, strict=False)}


def test_hinge_terms_by_hand():
    t = np.array([[2.0, 0.5, -1.0, 0.0, -3.0]], "float32")
    s = np.array([[0.2, 1.5, 0.5, -2.0, -0.4]], "float32")
    # active: (1 - .2)^2 = .64, s=1.5 >= m -> 0; inactive: (1 + .5)^2 = 2.25, s=-2 <= -m -> 0, (1 - .4)^2 = .36
    assert float(activation_boundary_loss(s, t)) == pytest.approx(0.64 + 2.25 + 0.36)
    assert float(activation_boundary_loss(s, t, margin=0.5)) == pytest.approx(0.09 + 1.0 + 0.01)


@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_matches_numpy_reference(margin):
    rng = np.random.default_rng(1)
    shapes = [(3, 8, 8, 4), (3, 4, 4, 6), (3, 2, 2, 8)]
    t, s = _maps(rng, shapes), _maps(rng, shapes)
    loss = ABLoss(teacher_layer_names=LEVELS, student_layer_names=LEVELS, margin=margin)
    value = loss(t["l1"], s["l1"], teacher_outputs=t, student_outputs=s)
    expected = np_ab([s[k] for k in LEVELS], [t[k] for k in LEVELS], margin)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_connectors_only_where_shapes_differ_and_gradients():
    rng = np.random.default_rng(2)
    t = _maps(rng, [(2, 8, 8, 4), (2, 4, 4, 8)])
    s = _maps(rng, [(2, 8, 8, 4), (2, 4, 4, 5)])
    names = LEVELS[:2]
    loss = ABLoss(teacher_layer_names=names, student_layer_names=names)
    connector = loss.build_connector({k: v.shape for k, v in t.items()}, {k: v.shape for k, v in s.items()})
    assert connector.connectors[0] is None and connector.connectors[1] is not None
    assert ABLoss(names, names).build_connector({k: v.shape for k, v in t.items()},
                                                {k: v.shape for k, v in t.items()}) is None
    student = {k: tf.Variable(v) for k, v in s.items()}
    teacher = {k: tf.Variable(v) for k, v in t.items()}
    with tf.GradientTape(persistent=True) as tape:
        value = loss(ops.stop_gradient(teacher["l1"]), student["l1"], parts=connector, training=True,
                     teacher_outputs={k: ops.stop_gradient(v) for k, v in teacher.items()}, student_outputs=student)
    assert all(g is not None and np.any(ops.convert_to_numpy(g))
               for g in tape.gradient(value, [*student.values(), *connector.trainable_variables]))
    assert all(g is None for g in tape.gradient(value, list(teacher.values())))
    # Outside its window: zero value, zero gradient to the student and the connector.
    late = ABLoss(names, names, active_epochs=(0, 1))
    with tf.GradientTape() as tape:
        value = late(t["l1"], student["l1"], parts=connector, epoch=1, teacher_outputs=t, student_outputs=student)
    assert float(value) == 0.0
    grads = tape.gradient(value, [*student.values(), *connector.trainable_variables])
    assert all(g is None or not np.any(ops.convert_to_numpy(g)) for g in grads)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="teacher_layer_names"):
        ABLoss()
    with pytest.raises(ValueError, match="one student layer per level"):
        ABLoss(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="margin"):
        ABLoss(["a"], ["a"], margin=0.0)
    with pytest.raises(ValueError, match="integer factor"):
        ABLoss(["a"], ["a"]).build_connector({"a": (None, 8, 8, 4)}, {"a": (None, 6, 6, 4)})


def test_config_round_trip():
    loss = ABLoss(LEVELS, LEVELS, margin=0.5, always_connect=True, active_epochs=[0, 30], name="ab_init")
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(rebuilt, ABLoss) and rebuilt.get_config() == loss.get_config()
    assert rebuilt.active_epochs == (0, 30) and rebuilt.teacher_keys == tuple(LEVELS)


def test_distiller_fit_updates_connector_save_reload_and_export(tmp_path):
    names = list(RESNET8_STUDENT_LAYERS)
    teacher = models.get("resnet8", (28, 28, 1), 10)
    student = models.get("resnet8", (28, 28, 1), 10, width_ratio=0.5)
    distiller = Distiller(teacher=teacher, student=student,
                          distillation_losses=[losses.get("ab", teacher_layer_names=names, student_layer_names=names,
                                                          active_epochs=[0, 1])],
                          distillation_loss_weights=[1.0], student_loss_weight=1.0, student_loss_start_epoch=1)
    connector = distiller.loss_parts["ab_loss"]
    assert all(c is not None for c in connector.connectors)  # half-width student: channels differ
    before_c = [ops.convert_to_numpy(v) for v in connector.trainable_variables]
    before_t = [ops.convert_to_numpy(v) for v in teacher.weights]
    distiller.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 28, 28, 1)).astype("float32"), np.arange(16) % 10
    history = distiller.fit(x, y, epochs=2, batch_size=8, verbose=0).history
    assert history["ab_loss"][0] > 0 and history["ab_loss"][1] == 0.0 and history["student_loss"][0] == 0.0
    assert all(np.any(ops.convert_to_numpy(v) != b) for v, b in zip(connector.trainable_variables, before_c, strict=True))
    assert all(np.array_equal(ops.convert_to_numpy(v), b) for v, b in zip(teacher.weights, before_t, strict=True))
    path = tmp_path / "ab.keras"
    distiller.save(path)
    reloaded = keras.models.load_model(path)
    for a, b in zip(reloaded.loss_parts["ab_loss"].weights, connector.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-5)
    fresh = models.get("resnet8", (28, 28, 1), 10, width_ratio=0.5)
    assert len(distiller.student.weights) == len(fresh.weights)
    assert not any("connector" in w.path for w in distiller.student.weights)


def test_suite_row_and_config_name_zoo_layers():
    rows = dict(registry.suite_rows())
    (entry,) = rows["ab"].losses
    assert entry["active_epochs"] == [0, registry.PRETRAIN_EPOCHS] and rows["ab"].pretrain_fraction == 0.25
    assert entry["student_layer_names"] == list(RESNET8_STUDENT_LAYERS)
    teacher = models.get("resnet20", (28, 28, 1), 10)
    student = models.get("resnet8", (28, 28, 1), 10)
    for model, names in ((teacher, RESNET20_TEACHER_LAYERS), (student, RESNET8_STUDENT_LAYERS)):
        assert all(model.get_layer(name).output.shape[1:] for name in names)
    with open("trainers/configs/ab_fmnist.yaml") as handle:
        method = yaml.safe_load(handle)["method"]
    assert method["student_loss_start_epoch"] == 30
    (loss,), _ = build_losses(method["losses"])
    assert loss.active_epochs == (0, 30) and loss.teacher_layer_names == RESNET20_TEACHER_LAYERS
