import json

import keras
import numpy as np
import pytest

from trainers import cli
from trainers.config import ConfigError, load_config

TINY = [
    "data.name=synthetic",
    "data.batch_size=100",
    "train.epochs=1",
    "train.optimizer=adam",
    "train.learning_rate=0.01",
    "train.verbose=0",
]
TINY_ARGS = [arg for override in TINY for arg in ("--set", override)]


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown config key `train.epoch`. Did you mean `train.epochs`"):
        load_config(overrides=["train.epoch=3"])
    with pytest.raises(ConfigError, match="Unknown config key `dat`"):
        load_config(overrides=["dat.name=x"])
    with pytest.raises(ConfigError, match="`train.epochs`: Input should be a valid integer.*'three'"):
        load_config(overrides=["train.epochs=three"])
    with pytest.raises(ConfigError, match="`train.epochs`: Input should be a valid integer"):
        load_config(overrides=["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="`data.augment`: Input should be a valid boolean"):
        load_config(overrides=["data.augment=maybe"])
    with pytest.raises(ConfigError, match="`data`: Unknown dataset 'imagenet'. Available: fashion_mnist"):
        load_config(overrides=["data.name=imagenet"])
    with pytest.raises(ConfigError, match="`train`: Input should be a valid dictionary"):
        load_config(overrides=["train=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    config = load_config(overrides=["train.learning_rate=1", "data.subset_fraction=0.1"])
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert load_config(overrides=["train.weight_decay=5e-4"]).train.weight_decay == 5e-4  # YAML 1.1 string


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.learning_rate=.nan", "`train.learning_rate`: Input should be a finite number"),
        ("train.learning_rate=.inf", "`train.learning_rate`: Input should be a finite number"),
        ("train.learning_rate=0", "`train.learning_rate`: Input should be greater than 0"),
        ("train.momentum=-5", "`train.momentum`: Input should be greater than or equal to 0"),
        ("train.momentum=1.0", "`train.momentum`: Input should be less than 1"),
        ("data.pad=-3", "`data.pad`: Input should be greater than or equal to 0"),
        ("data.subset_fraction=3.0", "`data.subset_fraction`: Input should be less than or equal to 1"),
        ("data.batch_size=0", "`data.batch_size`: Input should be greater than or equal to 1"),
        ("student.width_ratio=1.5", "`student.width_ratio`: Input should be less than or equal to 1"),
        ("run_name=a/b", "`run_name`: String should match pattern"),
        ("method.student_loss_weight=-1", "`method.student_loss_weight`: Input should be greater than or equal to 0"),
        ("method.losses=[{name: kd, temperature: 0}]", r"`method.losses\[0\]`.*`temperature` must be a finite number > 0"),
        ("method.losses=[{name: kd, weight: .nan}]", r"`method.losses\[0\].weight`: Input should be a finite number"),
        ("method.losses=[{name: mgd}]", "Unknown loss 'mgd'. Available: ab, at, "),
        ("method.loses=[]", "Unknown config key `method.loses`. Did you mean `method.losses`"),
        ("method=nope", "`method.name`: Unknown method 'nope'. Available: ce, dml, ekd, kd, oemc, one, sftn"),
    ],
)
def test_config_rejects_bad_values_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_method_options_are_validated_and_resolved():
    config = load_config(overrides=["method=oemc", "method.temperature=3"])
    assert config.method.name == "oemc" and config.method.temperature == 3.0
    assert config.method.num_students == 5  # defaults are resolved into config.yaml
    with pytest.raises(ConfigError, match="`method.num_students`: Input should be greater than or equal to 2"):
        load_config(overrides=["method=oemc", "method.num_students=1"])
    with pytest.raises(ConfigError, match="`method.lambda_kl`: Input should be greater than or equal to 0"):
        load_config(overrides=["method=sftn", "method.student_arch=resnet8", "method.lambda_kl=-3"])
    with pytest.raises(ConfigError, match="`method.student_arch`: Field required"):
        load_config(overrides=["method=sftn"])
    with pytest.raises(ConfigError, match="Unknown config key `method.inter_weigth`. Did you mean `method.inter_weight`"):
        load_config(overrides=["method=oemc", "method.inter_weigth=0"])
    assert load_config(overrides=["method=ekd", "method.temperature=[2, 4]"]).method.temperature == [2.0, 4.0]


def test_shipped_configs_are_valid():
    from trainers.quickstart import CONFIGS

    for path in sorted(CONFIGS.glob("*.yaml")):
        load_config(path)


def run_cli(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_distill_evaluate_end_to_end(tmp_path, capsys):
    out_dir = str(tmp_path / "runs")
    code, out, err = run_cli(
        ["train-teacher", "--output-dir", out_dir, "--run-name", "teacher",
         "--set", "teacher.arch=cnn", *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    teacher_dir = tmp_path / "runs" / "teacher"
    for name in ("config.yaml", "train.log", "history.csv", "results.json", "model.keras"):
        assert (teacher_dir / name).is_file(), name
    assert list((teacher_dir / "tensorboard").rglob("*tfevents*"))
    assert (teacher_dir / "checkpoints" / "distiller.keras").is_file()
    assert "epoch 1:" in (teacher_dir / "train.log").read_text()

    code, out, err = run_cli(
        ["distill", "--output-dir", out_dir, "--run-name", "kd",
         "--set", f"teacher.path={teacher_dir}", "--set", "student.arch=resnet8",
         *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    kd_dir = tmp_path / "runs" / "kd"
    assert result["model"] == "resnet8" and 0 <= result["test_accuracy"] <= 1
    student = keras.models.load_model(kd_dir / "student.keras")
    distiller = keras.models.load_model(kd_dir / "distiller.keras")
    x = np.zeros((2, 28, 28, 1), "float32")
    np.testing.assert_allclose(student.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6)

    code, out, err = run_cli(["evaluate", str(kd_dir), "--dataset", "synthetic"], capsys)
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)
    assert evaluated["params"] == result["params"]

    code, out, err = run_cli(
        ["export", str(kd_dir), "--quantize", "dynamic", "--dataset", "synthetic"], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    assert (kd_dir / "resnet8_dynamic.tflite").is_file() and (kd_dir / "resnet8_dynamic.json").is_file()
    assert report["images"] == 300 and report["top1_agreement"] >= 0.9

    # An existing run is never silently replaced.
    code, out, err = run_cli(
        ["distill", "--output-dir", out_dir, "--run-name", "kd",
         "--set", f"teacher.path={teacher_dir}", "--set", "student.arch=resnet8",
         *TINY_ARGS],
        capsys,
    )
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (kd_dir / "student.keras").is_file()


def test_cli_errors_name_the_problem(tmp_path, capsys):
    code, _, err = run_cli(["distill", "--set", "train.epohcs=1", "--output-dir", str(tmp_path)], capsys)
    assert code == 2 and "Unknown config key `train.epohcs`" in err
    code, _, err = run_cli(["distill", "--output-dir", str(tmp_path), "--set", "student.arch=resnet8"], capsys)
    assert code == 2 and "teacher.path" in err
    code, _, err = run_cli(
        ["distill", "--output-dir", str(tmp_path), "--set", "student.arch=resnet8",
         "--set", f"teacher.path={tmp_path / 'nope.keras'}"],
        capsys,
    )
    assert code == 2 and "does not exist" in err
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    code, _, err = run_cli(["evaluate", str(corrupt), "--dataset", "synthetic"], capsys)
    assert code == 2 and "Cannot load model" in err and "corrupt.keras" in err
    code, _, err = run_cli(["train-teacher", "--config", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "does not exist" in err


def test_loss_lists_from_yaml():
    from trainers.quickstart import CONFIGS

    config = load_config(CONFIGS / "at_fmnist.yaml")
    assert [spec["student_layer_name"] for spec in config.method.losses] == ["stage1", "stage2", "stage3"]
    assert config.method.losses[0]["weight"] == 1000.0
    lp = load_config(CONFIGS / "lp_kd_fmnist.yaml").method.losses[1]
    assert (lp["name"], lp["k"]) == ("lp", 5)
    with pytest.raises(ConfigError, match=r"`method.losses\[0\]`.*Bad arguments for loss 'lp'.*kk"):
        load_config(overrides=["method.losses=[{name: lp, kk: 3}]"])


def test_cli_feature_distillation_run(tmp_path, capsys):
    out_dir = str(tmp_path / "runs")
    code, _, err = run_cli(
        ["train-teacher", "--output-dir", out_dir, "--run-name", "t",
         "--set", "teacher.arch=resnet8", *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    code, out, err = run_cli(
        ["distill", "--output-dir", out_dir, "--run-name", "fitnet",
         "--set", f"teacher.path={tmp_path / 'runs' / 't'}", "--set", "student.arch=cnn",
         "--set", "method.losses=[{name: hint, weight: 10.0, teacher_layer_name: stage2, student_layer_name: stage2}]",
         *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    header = (tmp_path / "runs" / "fitnet" / "history.csv").read_text().splitlines()[0]
    assert "hint_loss" in header and "val_hint_loss" in header
    code, _, err = run_cli(
        ["distill", "--output-dir", out_dir, "--run-name", "mirrored_bf16",
         "--set", f"teacher.path={tmp_path / 'runs' / 't'}", "--set", "student.arch=cnn",
         "--set", "train.strategy=mirrored", "--set", "train.mixed_precision=mixed_bfloat16",
         *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    student = keras.models.load_model(tmp_path / "runs" / "mirrored_bf16" / "student.keras")
    assert student.layers[1].compute_dtype == "bfloat16"
    assert "MirroredStrategy over 1 replica" in (tmp_path / "runs" / "mirrored_bf16" / "train.log").read_text()


def test_tensorboard_event_files_hold_the_expected_tags(tmp_path, capsys):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    out_dir = str(tmp_path / "runs")
    assert run_cli(["train-teacher", "--output-dir", out_dir, "--run-name", "t",
                    "--set", "teacher.arch=cnn", *TINY_ARGS], capsys)[0] == 0
    code, _, err = run_cli(
        ["distill", "--output-dir", out_dir, "--run-name", "at",
         "--set", f"teacher.path={tmp_path / 'runs' / 't'}", "--set", "student.arch=resnet8",
         "--set", "method.losses=[{name: kd, weight: 0.9}, {name: at, weight: 10.0, teacher_layer_name: stage3, student_layer_name: stage3}]",
         *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    board = tmp_path / "runs" / "at" / "tensorboard"
    train = EventAccumulator(str(board / "train"))
    train.Reload()
    tags = set(train.Tags()["tensors"])
    for tag in ("epoch_loss", "epoch_student_loss", "epoch_distillation_loss", "epoch_at_loss",
                "epoch_accuracy", "epoch_learning_rate"):
        assert tag in tags, (tag, sorted(tags))
    session = EventAccumulator(str(board))  # the HParams session: config text, hparams, final metrics
    session.Reload()
    assert {"config", "final/test_accuracy", "final/params"} <= set(session.Tags()["tensors"])
    assert "hparams" in session.PluginTagToContent("hparams") or session.PluginTagToContent("hparams")
    validation = EventAccumulator(str(board / "validation"))
    validation.Reload()
    assert {"epoch_at_loss", "epoch_accuracy"} <= set(validation.Tags()["tensors"])
    projector = board / "projector"
    assert (projector / "projector_config.pbtxt").is_file()
    assert len((projector / "metadata.tsv").read_text().splitlines()) == 300


def test_validation_split_is_monitored_and_reported_apart_from_test(tmp_path, capsys):
    code, out, err = run_cli(
        ["train-teacher", "--output-dir", str(tmp_path), "--run-name", "v", "--set", "teacher.arch=cnn",
         "--set", "data.validation_fraction=0.2", "--set", "train.weight_decay_mode=coupled", *TINY_ARGS],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    assert {"validation_accuracy", "test_accuracy"} <= result.keys()
    from trainers import runs

    config = load_config(overrides=["data.name=synthetic", "data.validation_fraction=0.2"])
    _, monitor, test, _ = runs.datasets(config)
    sizes = [sum(int(x.shape[0]) for x, _ in ds) for ds in (monitor, test)]
    assert sizes[0] != sizes[1]  # fit watches the validation split, never the test set
    saved = keras.models.load_model(tmp_path / "v" / "distiller.keras")
    assert saved.l2_weight_decay == 5e-4
