"""Bad input through the CLI, as a user would type it: exit codes and messages."""

import keras
import numpy as np
import pytest

from trainers import cli

SYNTH = ["--set", "data.name=synthetic", "--set", "data.batch_size=100", "--set", "train.epochs=1",
         "--set", "train.verbose=0"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fault")
    assert cli.main(["train-teacher", "--output-dir", str(out), "--run-name", "teacher",
                     "--set", "teacher.arch=cnn", *SYNTH]) == 0
    return out / "teacher"


def distill(tmp_path, teacher, *extra):
    return cli.main(["distill", "--output-dir", str(tmp_path), "--run-name", "kd",
                     "--set", f"teacher.path={teacher}", "--set", "student.arch=resnet8", *SYNTH, *extra])


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--set", "train.epoch=3"], "Unknown config key `train.epoch`. Did you mean `train.epochs`"),
        (["--set", "train.epochs=ten"], "`train.epochs`: Input should be a valid integer"),
        (["--set", "method.losses=[{name: kd, temperature: 0}]"], "`temperature` must be a finite number > 0"),
        (["--set", "method.losses=[{name: kd, temperature: -4}]"], "`temperature` must be a finite number > 0"),
        (["--set", "method.losses=[{name: kd, weight: 0}]", "--set", "method.student_loss_weight=0"],
         "All loss weights"),
        (["--set", "method.losses=[{name: kd, weight: -1}]"], "`method.losses[0].weight`: Input should be greater"),
        (["--set", "data.subset_fraction=0"], "`data.subset_fraction`: Input should be greater than 0"),
        (["--set", "method.losses=[{name: at, teacher_layer_name: stage9, student_layer_name: stage3}]"],
         "has no layer named 'stage9'. Available layers: "),
        (["--set", "method.losses=[{name: lp, k: 0, teacher_layer_name: stage3, student_layer_name: stage3}]"],
         "`k` must be a positive integer"),
        # A dead term is refused before training, naming both outputs and their shapes.
        (["--set", "method.losses=[{name: at, teacher_layer_name: stage3, student_layer_name: embedding}]"],
         "Term 'at_loss' (AttentionTransferLoss) between teacher output 'stage3' (7, 7, 128) and student "
         "output 'embedding' (64,) cannot train"),
        (["--set", "student.arch=resnet9"], "6n+2"),
        (["--set", "train.strategy=multiworker"], "needs the TF_CONFIG environment variable"),
    ],
)
def test_bad_config_exits_2_naming_the_problem(teacher_dir, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distill(tmp_path, teacher_dir, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-kd: error:") and message in err, err


def test_mismatched_teacher_and_student(teacher_dir, tmp_path, capsys):
    dense = keras.Sequential([keras.Input((10,)), keras.layers.Dense(10)], name="tabular")
    dense.save(tmp_path / "tabular.keras")
    assert distill(tmp_path, tmp_path / "tabular.keras") == 2
    assert "takes inputs of shape (10,) but student 'resnet8' takes (28, 28, 1)" in capsys.readouterr().err
    five = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(5)], name="five")
    five.save(tmp_path / "five.keras")
    assert distill(tmp_path, tmp_path / "five.keras") == 2
    assert "predicts 5 classes but student 'resnet8' predicts 10" in capsys.readouterr().err


def test_missing_and_corrupt_files(teacher_dir, tmp_path, capsys):
    assert distill(tmp_path, tmp_path / "nowhere.keras") == 2
    assert "nowhere.keras does not exist" in capsys.readouterr().err
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes((teacher_dir / "model.keras").read_bytes()[:500])
    assert distill(tmp_path, truncated) == 2
    assert "Cannot load model" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "empty_dir"), "--dataset", "synthetic"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("jit", ["false", "true"])
def test_diverging_run_stops_naming_the_loss_term_and_step(teacher_dir, tmp_path, capsys, jit):
    code = distill(tmp_path, teacher_dir, "--set", "train.learning_rate=1e12", "--set", "train.schedule=constant",
                   "--set", f"train.jit_compile={jit}")
    assert code == 3
    err = capsys.readouterr().err
    assert "is not finite (NaN/Inf) at step" in err and "--resume" in err
    assert not (tmp_path / "kd" / "student.keras").exists()
    assert (tmp_path / "kd" / "config.yaml").is_file()


def test_empty_training_split(tmp_path):
    from test_data import write_idx

    from keras_kd import data
    from keras_kd.data import sources

    for split in ("train", "test"):
        images, labels = sources.FASHION_MNIST_FILES[split]
        write_idx(tmp_path / images, np.zeros((0, 28, 28)))
        write_idx(tmp_path / labels, np.zeros((0,)))
    with pytest.raises(ValueError, match="training split has no examples"):
        data.load_arrays("fashion_mnist", "train", data_dir=tmp_path)
