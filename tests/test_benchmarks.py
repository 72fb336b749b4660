"""The results suite's bookkeeping and page generation (no training)."""

import json
import os

import numpy as np
import pytest

from benchmarks import results_page, run, standard_page
from keras_kd.projector import plot_embeddings, project_2d


def test_pca_projection_matches_numpy_svd():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 5)) * np.array([5.0, 2.0, 0.1, 0.1, 0.1])
    projected = project_2d(points, "pca")
    centered = points - points.mean(0)
    eigenvalues = np.sort(np.linalg.eigvalsh(centered.T @ centered))[::-1]
    np.testing.assert_allclose((projected**2).sum(0), eigenvalues[:2], rtol=1e-8)


def test_embedding_plot_is_written(tmp_path):
    rng = np.random.default_rng(0)
    panels = {"a": (rng.normal(size=(40, 8)), np.arange(40) % 4), "b": (rng.normal(size=(40, 3)), np.arange(40) % 4)}
    path = plot_embeddings(panels, tmp_path / "fig.png", method="pca")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_cell_resolves_to_a_valid_config_and_finished_runs_are_reused(tmp_path):
    cells = run.cells("quick")
    assert len({(c.group, c.key) for c in cells}) == len(cells)
    cell = next(c for c in cells if c.key == "sftn_kd")
    config = run.resolve("quick", cell, 1)
    assert config.seed == 1 and config.teacher.path.endswith("sftn/sftn_teacher_seed0")
    for c in cells:
        run.resolve("quick", c, 0)  # raises on a bad override
    folder = tmp_path / "cell"
    folder.mkdir()
    (folder / "config.yaml").write_text(run.dump(config))
    (folder / "results.json").write_text(json.dumps({"test_accuracy": 0.5}))
    assert run.finished(folder, config) == {"test_accuracy": 0.5}
    changed = run.resolve("quick", cell, 2)
    assert run.finished(folder, changed) is None


def test_results_page_tables_from_fake_results(tmp_path):
    cells = run.cells("quick")
    table = {(c.group, c.key): [] for c in cells}
    fake = {"params": 1000, "macs": 2000, "train_time_s": 10.0, "epochs": 5}
    table[("features", "baseline")] = [dict(fake, test_accuracy=a) for a in (0.80, 0.82, 0.84)]
    students = [{"name": n, "params": p, "macs": p, "test_accuracy": a}
                for n, p, a in (("student1", 900, 0.83), ("student2", 500, 0.8), ("ensemble", 1400, 0.85))]
    table[("online", "oemc")] = [dict(fake, test_accuracy=0.85, students=students)]
    table[("online", "alone_w4")] = [dict(fake, test_accuracy=0.78)]
    docs = tmp_path / "results.md"
    results_page.write("quick", table, cells, str(docs))
    text = docs.read_text()
    assert "| features | ResNet8 alone (CE) | 82.00 ± 1.63 |" in text
    assert "| student2 | 500 | 500 | 78.00 | 80.00 | +2.56% |" in text
    assert "| student1 | 900 | 900 | 82.00 ± 1.63 | 83.00 | +1.22% |" in text
    assert "pending" in text


def test_tuned_rows_take_the_candidate_best_on_validation(tmp_path, monkeypatch):
    import dataclasses

    import pytest

    monkeypatch.setitem(run.SUITES, "standard", dataclasses.replace(run.SUITES["standard"], root=str(tmp_path)))
    cells = run.cells("standard")
    candidates = [c for c in cells if c.family == "kd"]
    tuned = next(c for c in cells if c.tuned == "kd")
    assert [c.key for c in candidates] == ["kd_t1", "kd_t2", "kd_t4", "kd_t8"]
    with pytest.raises(run.TuningPendingError, match="tuning family 'kd' is not finished"):
        run.resolve("standard", tuned, 0)
    for cell, accuracy in zip(candidates, (0.81, 0.84, 0.83, 0.80), strict=True):
        folder = run.cell_dir("standard", cell, 0)
        folder.mkdir(parents=True)
        # The test accuracy must play no part in the choice.
        (folder / "results.json").write_text(json.dumps({"validation_accuracy": accuracy, "test_accuracy": 1 - accuracy}))
    config = run.resolve("standard", tuned, 1)
    assert config.method.losses[0]["temperature"] == 2.0 and config.seed == 1
    assert config.data.validation_fraction == 0.1 and config.train.weight_decay_mode == "coupled"
    record = json.loads((tmp_path / "tuning" / "kd.json").read_text())
    assert record["chosen"] == "kd_t2" and record["validation_accuracy"]["kd_t8"] == 0.80
    for cell in cells:
        if not cell.tuned:
            run.resolve("standard", cell, 0)  # every other cell resolves to a valid config


def test_standard_verdicts_follow_the_two_pooled_std_rule(tmp_path):
    # Hand-computed: difference 91 - 88.5 = 2.5; sample stds 1.0 and 0.5; pooled sqrt((1 + 0.25) / 2) = 0.7906.
    result = standard_page.verdict([90.0, 91.0, 92.0], [88.0, 88.5, 89.0], seeds=3)
    assert result == {"difference": 2.5, "pooled_std": 0.791, "verdict": "reproduces"}
    assert standard_page.verdict([89.0, 89.5, 90.0], [88.0, 88.5, 89.0], 3)["verdict"] == "does not reproduce"
    assert standard_page.verdict([88.0, 88.5, 89.0], [90.0, 91.0, 92.0], 3)["verdict"] == "does not reproduce"
    assert standard_page.verdict([90.0, 91.0], [88.0, 88.5, 89.0], 3)["verdict"] == "pending"

    cells = run.cells("standard")
    table = {(c.group, c.key): [] for c in cells}
    fake = {"params": 1000, "macs": 2000, "train_time_s": 10.0}
    table[("tuned", "kd")] = [dict(fake, test_accuracy=a, validation_accuracy=a) for a in (0.880, 0.885, 0.890)]
    table[("tuned", "lp")] = [dict(fake, test_accuracy=a, validation_accuracy=a) for a in (0.900, 0.910, 0.920)]
    docs = tmp_path / "results.md"
    standard_page.write("standard", table, cells, str(docs), str(tmp_path / "root"))
    report = json.loads((tmp_path / "results.json").read_text())
    claim = next(c for c in report["claims"] if c["claim"] == "LP beats KD" and c["setting"] == "tuned")
    assert claim == {"paper": "LP (Chen et al. 2020)", "claim": "LP beats KD", "setting": "tuned",
                     "row": "tuned/lp", "baseline_row": "tuned/kd", "difference": 2.5, "pooled_std": 0.791,
                     "verdict": "reproduces"}
    row = next(r for r in report["rows"] if r["row"] == "lp")
    assert row["mean"] == 91.0 and row["std"] == 1.0 and row["seeds"] == 3 and row["suite"] == "standard"
    page = docs.read_text()
    assert "| LP (Chen et al. 2020) | LP beats KD | tuned | 91.00 ± 1.00 | 88.50 ± 0.50 | +2.50 | 1.58 |" in page
    # A paper's note shows once one of its claims in that setting has a verdict.
    assert "* **LP (Chen et al. 2020), tuned setting.**" in page
    assert "LP (Chen et al. 2020), paper setting" not in page and "SFTN (Park et al. 2021), tuned" not in page


def test_headline_section_compares_kd_and_the_best_row_with_the_student_alone(tmp_path):
    def runs(*accuracies):
        return [{"test_accuracy": a / 100, "validation_accuracy": a / 100, "params": 78426} for a in accuracies]

    # Hand-computed: KD - alone = 93.5 - 93.0 = 0.5, sample stds 0.1 and 0.1: 2 x pooled = 0.2 -> better;
    # best - KD = 93.6 - 93.5 = 0.1 < 0.2 -> tie; best - alone = 0.6 -> better.
    table = {("headline", "baseline"): runs(92.9, 93.0, 93.1), ("headline", "kd"): runs(93.4, 93.5, 93.6),
             ("headline", "best"): runs(93.5, 93.6, 93.7), ("headline", "teacher_resnet20"): runs(94.2)}
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "headline_best.json").write_text(json.dumps({"chosen": "features/dkd"}))
    text = standard_page.headline_section(table, tmp_path, seeds=3)
    assert "| KD (T chosen on validation) vs ResNet8 alone (CE) | +0.50 (2 x pooled std 0.20): **better** |" in text
    assert "vs KD (T chosen on validation) | +0.10 (2 x pooled std 0.20): **tie** |" in text
    assert "| best 10% method, chosen on validation (`features/dkd`) | 3 | 93.60 ± 0.10 |" in text
    del table[("headline", "best")]
    assert text.count("pending") == 0 and standard_page.headline_section(table, tmp_path, 3).count("pending") == 4


def test_headline_takes_the_best_single_teacher_row_and_tuned_seed0_reuses_its_candidate(tmp_path, monkeypatch):
    import dataclasses

    import pytest

    monkeypatch.setitem(run.SUITES, "standard", dataclasses.replace(run.SUITES["standard"], root=str(tmp_path)))
    cells = run.cells("standard")
    best = next(c for c in cells if c.tuned == run.BEST)
    with pytest.raises(run.TuningPendingError, match="rows it chooses from are not finished"):
        run.resolve("standard", best, 0)

    def finish(cell, seed, accuracy):
        folder = run.cell_dir("standard", cell, seed)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(run.dump(run.resolve("standard", cell, seed)))
        (folder / "results.json").write_text(json.dumps({"validation_accuracy": accuracy, "test_accuracy": 0.5}))

    for cell in cells:  # every tuning candidate: lp_hint_layer wins its family on validation
        if cell.family:
            finish(cell, 0, 0.95 if cell.key == "lp_hint_layer" else 0.80)
    tuned_lp = next(c for c in cells if c.tuned == "lp")
    # Seed 0 of a tuned row is its winning candidate's run, found by config, not run again.
    assert run.same_run("standard", tuned_lp, 0, run.resolve("standard", tuned_lp, 0)) == run.cell_dir(
        "standard", next(c for c in cells if c.key == "lp_hint_layer"), 0)
    for cell in cells:
        if cell.regime == "10%" and cell.kind == "distill" and cell.group in ("features", "tuned", "paper"):
            if cell.key not in ("ekd", "oemc"):
                for seed in (0, 1, 2):
                    finish(cell, seed, 0.93 if (cell.group, cell.key) == ("tuned", "lp") else 0.90)
    config = run.resolve("standard", best, 1)
    assert config.method.losses[0]["teacher_layer_name"] == "stage2"  # the chosen LP variant
    assert config.teacher.path.endswith("headline/teacher_resnet20_seed0")
    assert config.data.subset_fraction is None and config.train.epochs == run.SUITES["standard"].full_data_epochs
    assert json.loads((tmp_path / "tuning" / "headline_best.json").read_text())["chosen"] == "tuned/lp"


@pytest.mark.parametrize("winner", ["ab", "dkd", "sftn"])
def test_headline_best_row_keeps_its_stage_and_warm_up_shares_of_the_shorter_schedule(tmp_path, monkeypatch,
                                                                                     winner):
    import dataclasses

    p = dataclasses.replace(run.SUITES["standard"], root=str(tmp_path))
    monkeypatch.setitem(run.SUITES, "standard", p)
    cells = run.cells("standard")
    for cell in cells:
        if cell.family:
            for seed in (0,):
                folder = run.cell_dir("standard", cell, seed)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "results.json").write_text(json.dumps({"validation_accuracy": 0.8}))
    for cell in cells:
        if cell.regime == "10%" and cell.kind == "distill" and cell.group in ("features", "tuned", "paper"):
            for seed in (0, 1, 2):
                folder = run.cell_dir("standard", cell, seed)
                folder.mkdir(parents=True, exist_ok=True)
                score = 0.99 if cell.key == winner else 0.90  # SFTN's rows are not candidates: KD etc. tie
                (folder / "results.json").write_text(json.dumps({"validation_accuracy": score}))
    config = run.resolve("standard", next(c for c in cells if c.tuned == run.BEST), 0)
    chosen = json.loads((tmp_path / "tuning" / "headline_best.json").read_text())["chosen"]
    full, reference = p.full_data_epochs, p.epochs  # 30 and 120: a quarter
    entry = config.method.losses[0]
    if winner == "ab":  # 30 stage epochs before 120 -> 8 before 30
        assert chosen == "features/ab" and entry["active_epochs"] == [0, 8]
        assert config.method.student_loss_start_epoch == 8 and config.train.epochs == full + 8
    elif winner == "dkd":  # DKD's default 20-epoch warm-up of a 120-epoch schedule -> 5 of 30
        assert chosen == "features/dkd" and entry["warmup_epochs"] == 5 and config.train.epochs == full
    else:
        assert "sftn" not in chosen and config.train.epochs == full
    assert config.teacher.path.endswith("headline/teacher_resnet20_seed0")
    assert config.train.validation_freq == config.train.epochs
    assert (full, reference) == (30, 120)


def test_at_schedule_scales_every_epoch_count_of_the_losses():
    config = {"method": {"losses": [{"name": "ft", "paraphraser_epochs": 30, "active_epochs": [10, None]},
                                    {"name": "kd"}, {"name": "reviewkd", "warmup_epochs": 2},
                                    {"name": "kd", "active_epochs": [2, 3]}],
                         "student_loss_start_epoch": 30},
              "train": {"epochs": 150}}
    moved = run.at_schedule(config, 30, 120)
    ft, kd, review, short = moved["method"]["losses"]
    assert short["active_epochs"] == [1, 2]  # round(0.5) -> 1 (at least one), end kept after the start
    assert ft == {"name": "ft", "paraphraser_epochs": 8, "active_epochs": [2, None]}  # round(7.5), round(2.5)
    assert kd == {"name": "kd"} and review["warmup_epochs"] == 1  # at least one epoch
    assert moved["method"]["student_loss_start_epoch"] == 8 and moved["train"]["epochs"] == 38
    assert config["train"]["epochs"] == 150  # the input is not changed


def test_sftn_lambda_family_is_judged_by_its_kd_students(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setitem(run.SUITES, "standard", dataclasses.replace(run.SUITES["standard"], root=str(tmp_path)))
    cells = {f"{c.group}/{c.key}": c for c in run.cells("standard")}
    scratch = run.resolve("standard", cells["sftn/scratch_teacher"], 0)
    assert scratch.train.epochs == 120 and scratch.method.options["lambda_kl"] == 3.0
    teacher = run.resolve("standard", cells["tuning/sftn_l10_teacher"], 0)
    assert teacher.method.options["lambda_kl"] == 10.0 and teacher.train.epochs == 120
    assert teacher.teacher.arch == "resnet20" and teacher.train.learning_rate == 0.05
    students = {lam: run.resolve("standard", cells[f"tuning/sftn_l{lam}"], 0) for lam in (1, 3, 10)}
    assert students[3].teacher.path == str(tmp_path / "sftn" / "scratch_teacher_seed0")
    assert students[1].teacher.path == str(tmp_path / "tuning" / "sftn_l1_teacher_seed0")
    for key, accuracy in (("kd_t1", 0.80), ("kd_t2", 0.81), ("kd_t4", 0.83), ("kd_t8", 0.82)):
        folder = run.cell_dir("standard", cells[f"tuning/{key}"], 0)
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"validation_accuracy": accuracy}))
    # lambda_KL = 3's candidate is the sftn/scratch_kd run (KD with the validated T = 4): not trained twice.
    assert run._located_elsewhere(students[3]) == run._located_elsewhere(
        run.resolve("standard", cells["sftn/scratch_kd"], 0))
    for lam, accuracy in ((1, 0.80), (3, 0.82), (10, 0.81)):
        folder = run.cell_dir("standard", cells[f"tuning/sftn_l{lam}"], 0)
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"validation_accuracy": accuracy}))
    tuned = run.resolve("standard", cells["tuned/sftn"], 2)
    assert tuned.teacher.path == str(tmp_path / "sftn" / "scratch_teacher_seed0") and tuned.seed == 2
    order = [f"{c.group}/{c.key}" for c in run.ordered("standard")]
    assert order.index("sftn/scratch_kd") < order.index("tuning/sftn_l1_teacher") < order.index("tuning/sftn_l1")


def test_pre_training_stages_scale_with_the_suite_schedule_and_come_before_it():
    for suite, stage, epochs in (("standard", 30, 120), ("quick", 1, 5)):
        cells = {c.key: c for c in run.cells(suite) if c.group == "features"}
        ab, ft = run.resolve(suite, cells["ab"], 0), run.resolve(suite, cells["ft"], 0)
        assert ab.method.options["losses"][0]["active_epochs"] == [0, stage]
        assert ft.method.options["losses"][0]["paraphraser_epochs"] == stage
        assert ab.method.options["student_loss_start_epoch"] == ft.method.options["student_loss_start_epoch"] == stage
        # CE gets the suite's whole schedule after the stage, as every other row gets it
        assert ab.train.epochs == ft.train.epochs == stage + epochs
        assert ab.train.validation_freq == stage + epochs  # one evaluation, after the last epoch
        kd = run.resolve(suite, cells["fitnet"], 0)
        assert kd.method.options["student_loss_start_epoch"] == 0
        assert kd.train.epochs == epochs


def test_results_json_keeps_the_other_suites_rows(tmp_path):
    from benchmarks.report import write_results_json

    path = tmp_path / "results.json"
    claim = {"paper": "p", "verdict": "pending"}
    write_results_json(path, "standard", [{"suite": "standard", "row": "kd"}], [claim])
    write_results_json(path, "quick", [{"suite": "quick", "row": "kd"}, {"suite": "quick", "row": "ce"}])
    write_results_json(path, "quick", [{"suite": "quick", "row": "kd"}])
    data = json.loads(path.read_text())
    assert data["rows"] == [{"suite": "quick", "row": "kd"}, {"suite": "standard", "row": "kd"}]
    assert data["claims"] == [claim]
    write_results_json(path, "standard", [{"suite": "standard", "row": "ce"}, {"suite": "standard", "row": "kd"}])
    assert json.loads(path.read_text())["rows"] == [  # suites keep their places whichever was written last
        {"suite": "quick", "row": "kd"}, {"suite": "standard", "row": "ce"}, {"suite": "standard", "row": "kd"}]


def test_only_names_an_unknown_group_or_row(capsys):
    with pytest.raises(SystemExit):
        run.main(["--suite", "quick", "--only", "features/nope", "--report-only"])
    assert "--only: no group or row features/nope in the quick suite (groups: " in capsys.readouterr().err


def test_an_interrupted_cell_resumes_only_with_its_config_and_teachers(tmp_path):
    cell = next(c for c in run.cells("quick") if c.key == "sftn_kd")
    config = run.resolve("quick", cell, 0)
    teacher = tmp_path / "teacher.keras"
    teacher.write_text("weights")
    folder = tmp_path / "cell"
    (folder / "backup").mkdir(parents=True)
    assert run.interrupted_epoch(folder, config, {str(teacher)}) == 0  # no config yet
    (folder / "config.yaml").write_text(run.dump(config))
    assert run.interrupted_epoch(folder, config, {str(teacher)}) == 0  # no backup metadata
    (folder / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 3}))
    assert run.interrupted_epoch(folder, config, {str(teacher)}) == 3
    assert run.interrupted_epoch(folder, run.resolve("quick", cell, 1), {str(teacher)}) == 0
    started = (folder / "config.yaml").stat().st_mtime
    os.utime(teacher, (started + 10, started + 10))  # teacher rewritten after the run started
    assert run.interrupted_epoch(folder, config, {str(teacher)}) == 0
    os.utime(teacher, (started - 10, started - 10))
    run.RETRAINED[str(teacher)] = 0
    try:
        assert run.interrupted_epoch(folder, config, {str(teacher)}) == 0
    finally:
        run.RETRAINED.pop(str(teacher))


def test_the_page_shows_a_pending_cell_that_will_reuse_a_finished_run(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setitem(run.SUITES, "standard", dataclasses.replace(run.SUITES["standard"], root=str(tmp_path)))
    candidate = next(c for c in run.cells("standard") if (c.group, c.key) == ("tuning", "kd_t4"))
    paper = next(c for c in run.cells("standard") if (c.group, c.key) == ("paper", "kd"))
    folder = run.cell_dir("standard", candidate, 0)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"test_accuracy": 0.9}))
    assert run.collect("standard")[("paper", "kd")] == []  # no config.yaml: not known to be the same run
    (folder / "config.yaml").write_text(run.dump(run.resolve("standard", candidate, 0)))
    table = run.collect("standard")
    assert table[("tuning", "kd_t4")] == [{"test_accuracy": 0.9}]
    assert table[("paper", "kd")] == [{"test_accuracy": 0.9, "same_run_as": str(folder)}]
    assert run.same_run("standard", paper, 0, run.resolve("standard", paper, 0)) == folder
    # A copy written by the runner shows its source's record as it is now (e.g. a train time recounted since).
    copy = run.cell_dir("standard", paper, 0)
    copy.mkdir(parents=True)
    (copy / "config.yaml").write_text(run.dump(run.resolve("standard", paper, 0)))
    (copy / "results.json").write_text(json.dumps({"test_accuracy": 0.9, "train_time_s": 1.0,
                                                   "same_run_as": str(folder)}))
    (folder / "results.json").write_text(json.dumps({"test_accuracy": 0.9, "train_time_s": 2.0}))
    assert run.collect("standard")[("paper", "kd")] == [{"test_accuracy": 0.9, "train_time_s": 2.0,
                                                         "same_run_as": str(folder)}]


def test_a_cell_that_ran_on_another_recipe_is_left_off_the_page(tmp_path, monkeypatch, capsys):
    import dataclasses

    monkeypatch.setitem(run.SUITES, "standard", dataclasses.replace(run.SUITES["standard"], root=str(tmp_path)))
    cell = next(c for c in run.cells("standard") if (c.group, c.key) == ("features", "dist"))
    folder = run.cell_dir("standard", cell, 0)
    folder.mkdir(parents=True)
    config = run.resolve("standard", cell, 0)
    (folder / "config.yaml").write_text(run.dump(config))
    (folder / "results.json").write_text(json.dumps({"test_accuracy": 0.9}))
    assert run.collect("standard")[("features", "dist")] == [{"test_accuracy": 0.9}]
    import yaml

    changed = yaml.safe_load(run.dump(config))
    changed["method"]["losses"][0]["tau"] = 4.0  # the recipe it ran on differs from the row's current one
    (folder / "config.yaml").write_text(yaml.safe_dump(changed))
    assert run.runs.config_changes(folder, config) == ["method.losses"]  # a config that loads, one key apart
    assert run.collect("standard")[("features", "dist")] == []
    assert "1 finished cell(s) ran on another recipe" in capsys.readouterr().err


def test_a_failing_cell_is_recorded_and_the_suite_goes_on(tmp_path, monkeypatch, capsys):
    import dataclasses

    monkeypatch.setitem(run.SUITES, "quick", dataclasses.replace(run.SUITES["quick"], root=str(tmp_path)))
    attempted = []

    def fake_run_cell(suite, cell, seed):
        attempted.append((cell.key, seed))
        if (cell.key, seed) == ("kd", 1):
            raise RuntimeError("loss became NaN")
        return {}

    monkeypatch.setattr(run, "run_cell", fake_run_cell)
    with pytest.raises(SystemExit) as stop:
        run.main(["--suite", "quick", "--only", "features/kd", "features/baseline", "--docs",
                  str(tmp_path / "page.md")])
    assert stop.value.code == 1
    assert {("kd", 0), ("kd", 1), ("kd", 2), ("baseline", 0), ("baseline", 2)} <= set(attempted)
    failed = tmp_path / "features" / "kd_seed1" / run.FAILED
    assert "RuntimeError: loss became NaN" in failed.read_text()
    assert "features/kd seed 1: RuntimeError: loss became NaN" in capsys.readouterr().err


def test_paired_step_costs_divide_each_step_by_the_adjacent_reference_step(monkeypatch):
    import argparse

    from benchmarks import throughput

    # A clock that doubles every step time after the second sweep (a slow phase): the method costs 1.5x
    # the reference in both phases, which unpaired best-of timings would not tell from the phase.
    calls = []

    def timer(factory, kind, data_ds, epoch=0):
        def step():
            calls.append(factory)
            return factory * (2.0 if len(calls) > 12 else 1.0)
        return step

    monkeypatch.setattr(throughput, "_step_timer", timer)
    configs = {"reference": (0.1, "fit", None), "method": (0.15, "fit", None), "inference": (0.04, "predict", None)}
    args = argparse.Namespace(rounds=2, sweeps=3, batch_size=128)
    speed, costs = throughput.paired_step_costs(configs, "reference", args)
    np.testing.assert_allclose(costs["method"], [1.5, 1.5])
    np.testing.assert_allclose(costs["inference"], [0.4, 0.4])
    np.testing.assert_allclose(costs["reference"], [1.0, 1.0])
    assert speed["method"] == pytest.approx(128 / 0.15)  # the fast-phase step (10th percentile)
    # Each sweep alternates which of the pair runs first.
    assert calls[2:4] == [0.1, 0.15] and calls[8:10] == [0.15, 0.1]


def test_check_lists_finished_cells_whose_config_the_code_no_longer_resolves(tmp_path, monkeypatch, capsys):
    import dataclasses

    import yaml

    monkeypatch.setitem(run.SUITES, "standard", dataclasses.replace(run.SUITES["standard"], root=str(tmp_path)))
    found = {(c.group, c.key): c for c in run.cells("standard")}
    finished = [(found[("features", "baseline")], 0), (found[("features", "baseline")], 1),
                (found[("teachers", "teacher_resnet20")], 0), (found[("features", "kd")], 0)]
    for cell, seed in finished:
        folder = run.cell_dir("standard", cell, seed)
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(run.dump(run.resolve("standard", cell, seed)))
        (folder / "results.json").write_text(json.dumps({"test_accuracy": 0.9}))
    assert run.stale_cells("standard") == []
    for cell, seed in finished[1:3]:  # a student and a teacher changed
        changed = run.cell_dir("standard", cell, seed) / "config.yaml"
        saved = yaml.safe_load(changed.read_text())
        saved["train"]["learning_rate"] = 0.5
        changed.write_text(yaml.safe_dump(saved))
    with pytest.raises(SystemExit) as exit_code:
        run.main(["--suite", "standard", "--check"])
    assert exit_code.value.code == 1
    out = capsys.readouterr().out
    assert "3 finished cell(s) would train again" in out and "baseline_seed1: train.learning_rate" in out
    assert "teacher_resnet20_seed0: train.learning_rate" in out
    assert f"kd_seed0: its teacher {run.cell_dir('standard', finished[2][0], 0)} would train again" in out


def test_step_timer_times_one_training_step_at_the_stage_it_was_given():
    import keras
    import tensorflow as tf

    from benchmarks import throughput
    from keras_kd import Distiller

    from conftest import tiny_model

    rng = np.random.default_rng(0)
    ds = tf.data.Dataset.from_tensor_slices((rng.normal(size=(32, 28, 28, 1)).astype("float32"),
                                             rng.integers(0, 10, 32))).batch(16)
    teacher = tiny_model(width=8, name="teacher")
    built = []

    def factory():
        from keras_kd import losses

        built.append(Distiller(teacher=teacher, student=tiny_model(name="student"),
                               distillation_losses=[losses.SoftTargetLoss(active_epochs=(0, 2)),
                                                    losses.SoftTargetLoss(name="open")]))
        built[-1].compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=False)
        return built[-1]

    step = throughput._step_timer(factory, "fit", ds, 3)
    model = built[0]
    before = int(model.optimizer.iterations)  # the tracing epoch (2 steps) and the warm-up step
    assert before == 3 and int(model.epoch) == 3
    seconds = [step() for _ in range(5)]  # more steps than one pass over the data: the iterator repeats
    assert int(model.optimizer.iterations) == before + 5 and all(s > 0 for s in seconds)
    assert int(model.epoch) == 3
    assert model.idle_terms == {"distillation_loss"}  # the step fit runs at epoch 3: the closed term left out


def test_every_claim_note_belongs_to_a_claim():
    from benchmarks import standard_page

    claims = {(c.paper, c.setting) for c in standard_page.claims()}
    assert set(standard_page.CLAIM_NOTES) <= claims


def test_plan_lists_what_a_run_would_train_reuse_resume_or_wait_for(tmp_path, monkeypatch, capsys):
    import dataclasses

    monkeypatch.setitem(run.SUITES, "standard", dataclasses.replace(run.SUITES["standard"], root=str(tmp_path)))
    found = {(c.group, c.key): c for c in run.cells("standard")}

    def finish(cell, seed):
        folder = run.cell_dir("standard", cell, seed)
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(run.dump(run.resolve("standard", cell, seed)))
        (folder / "results.json").write_text(json.dumps({"test_accuracy": 0.9}))
        return folder

    everything = dict(run.plan("standard"))
    assert everything["teachers/teacher_resnet20 seed 0"] == "train"
    assert everything["tuned/kd seed 0"] == "wait for a choice on validation"
    # Two cells with one config: the later one reuses the run the plan trains first.
    first = next(name for name, action in run.plan("standard") if name.startswith(("features/kd ", "tuning/kd_t4 ")))
    assert everything[first] == "train" and first.endswith("seed 0")
    other = "features/kd seed 0" if first.startswith("tuning") else "tuning/kd_t4 seed 0"
    assert everything[other].startswith("reuse ") and everything[other].endswith("_seed0")

    teacher = finish(found[("teachers", "teacher_resnet20")], 0)
    student = finish(found[("features", "kd")], 0)
    steps = dict(run.plan("standard"))
    assert "teachers/teacher_resnet20 seed 0" not in steps and "features/kd seed 0" not in steps
    assert steps["tuning/kd_t4 seed 0"] == f"reuse {student}"
    # A finished student of a teacher the plan retrains is trained again, once: its twin
    # trained later from the new teacher stands for it.
    (teacher / "results.json").unlink()
    steps = dict(run.plan("standard"))
    assert steps["teachers/teacher_resnet20 seed 0"] == "train"
    group, key = first.split()[0].split("/")
    assert steps[first] == "train" and steps[other] == f"reuse {run.cell_dir('standard', found[(group, key)], 0)}"

    run.main(["--suite", "standard", "--plan"])
    out = capsys.readouterr().out
    assert f"{first}: train\n" in out and f"{other}: reuse " in out and "wait for a choice on validation" in out


def test_a_run_stands_for_another_only_if_trained_after_the_teachers_retrained_now():
    trained = {"teacher": 0, "fresh_student": 1}
    assert run.trained_after("fresh_student", {"teacher"}, trained)
    assert not run.trained_after("old_student", {"teacher"}, trained)  # finished before this invocation
    assert run.trained_after("old_student", {"other_teacher"}, trained)
    assert not run.trained_after("fresh_student", {"teacher"}, {"fresh_student": 0, "teacher": 1})


def test_oemc_variant_is_chosen_by_its_students_mean_validation_accuracy(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setitem(run.SUITES, "standard", dataclasses.replace(run.SUITES["standard"], root=str(tmp_path)))
    cells = run.cells("standard")
    candidates = {c.key: c for c in cells if c.family == "oemc"}
    # `code` has the best ensemble, `no_inter` the best students on average (0.86 vs 0.85).
    students = {"oemc_code": (0.90, 0.86, 0.85, 0.82, 0.82), "oemc_paper": (0.90, 0.85, 0.84, 0.82, 0.79),
                "oemc_paper_t2": (0.89, 0.85, 0.84, 0.82, 0.80), "oemc_no_inter": (0.90, 0.87, 0.86, 0.84, 0.83),
                "oemc_ce_full": (0.90, 0.86, 0.85, 0.83, 0.81)}
    ensemble = {"oemc_code": 0.93, "oemc_paper": 0.92, "oemc_paper_t2": 0.92, "oemc_no_inter": 0.91,
                "oemc_ce_full": 0.92}
    for key, cell in candidates.items():
        folder = run.cell_dir("standard", cell, 0)
        folder.mkdir(parents=True)
        results = {"validation_accuracy": ensemble[key], "test_accuracy": 0.5,
                   **{f"validation_student{j}_accuracy": a for j, a in enumerate(students[key], 1)}}
        (folder / "results.json").write_text(json.dumps(results))
    tuned = next(c for c in cells if c.tuned == "oemc")
    assert run.resolve("standard", tuned, 1).method.options["inter_weight"] == 0.0
    record = json.loads((tmp_path / "tuning" / "oemc.json").read_text())
    assert record["chosen"] == "oemc_no_inter" and record["criterion"] == run.CRITERIA["oemc"]
    assert abs(record["validation_accuracy"]["oemc_code"] - 0.85) < 1e-12
    assert "mean validation accuracy of the students (%)" in standard_page.tuning_section(tmp_path, {}, cells)


def test_other_rows_against_kd_read_their_own_metric():
    kd = [{"test_accuracy": a} for a in (0.900, 0.905, 0.910)]
    ekd = [{"test_accuracy": 0.95, "test_branch1_accuracy": a} for a in (0.910, 0.915, 0.920)]
    table = {("tuned", "kd"): kd, ("tuned", "ekd"): ekd}
    extra = (("branch 1", standard_page.Ref("tuned", "ekd", "test_branch1_accuracy")),
             ("ensemble", standard_page.Ref("tuned", "ekd")), ("not run", standard_page.Ref("online", "dml")))
    text = standard_page.methods_vs_kd(table, [], ("tuned", "kd"), 3, {"tuned/ekd [branch1]": "a note"}, extra)
    # Hand-computed: 91.5 - 90.5 = +1.00, both sample stds 0.5 -> pooled 0.50; 1.00 is not > 2 x 0.50.
    assert "| branch 1 | 91.50 ± 0.50 | +1.00 | 0.50 | ties KD | a note |" in text
    assert "| ensemble | 95.00 ± 0.00 | +4.50 | 0.35 | beats KD |  |" in text
    assert "| not run | pending | — | — | pending | |" in text


def test_a_larger_network_alone_is_the_same_run_as_the_teacher_of_its_architecture(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setitem(run.SUITES, "standard", dataclasses.replace(run.SUITES["standard"], root=str(tmp_path)))
    found = {(c.group, c.key): c for c in run.cells("standard")}
    teacher, alone = found[("teachers", "teacher_resnet20")], found[("ekd", "resnet20_alone")]
    folder = run.cell_dir("standard", teacher, 0)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(run.dump(run.resolve("standard", teacher, 0)))
    (folder / "results.json").write_text(json.dumps({"test_accuracy": 0.9}))
    config = run.resolve("standard", alone, 0)
    assert config.student.arch == "resnet20" and config.teacher.arch is None  # spelled differently ...
    assert run.same_run("standard", alone, 0, config) == folder  # ... one run: method ce trains one network
    other = run.resolve("standard", found[("ekd", "resnet32_alone")], 0)
    assert run.same_run("standard", found[("ekd", "resnet32_alone")], 0, other) is None


def test_oemc_table_puts_each_student_next_to_itself_alone():
    cells = run.cells("standard")
    students = {f"test_student{j}_accuracy": a for j, a in enumerate((0.91, 0.90, 0.89, 0.88, 0.80), start=1)}
    table = {("features", "baseline"): [{"test_accuracy": a, "params": 78426} for a in (0.90, 0.90, 0.91)],
             ("online", "alone_w1"): [{"test_accuracy": 0.82, "params": 3671}],
             ("tuning", "oemc_no_inter"): [{"test_accuracy": 0.92, **students}]}
    lines = standard_page.oemc_section(table, cells).splitlines()
    header = lines[2].split(" | ")
    column = next(i for i, name in enumerate(header) if name.startswith("`no_inter`"))
    first = lines[4].split(" | ")
    assert first[0] == "| student 1 (width 5/5)" and first[2] == "90.33 ± 0.58" and first[column] == "91.00"
    last = lines[8].split(" | ")
    assert last[1:3] == ["3,671", "82.00"] and last[column] == "80.00"
    assert lines[9].split(" | ")[column] == "92.00"  # the ensemble


def test_soft_target_stats_hand_computed():
    from benchmarks.soft_targets import soft_target_stats

    logits = np.zeros((2, 10))
    logits[0, 3] = np.log(999.0)  # top: 999 / (999 + 9) at T = 1; sqrt(999) / (sqrt(999) + 9) at T = 2
    cold, warm = soft_target_stats(logits, 1.0), soft_target_stats(logits, 2.0)
    top_cold, top_warm = 999 / 1008, np.sqrt(999) / (np.sqrt(999) + 9)
    assert cold["mean_top_probability"] == pytest.approx((top_cold + 0.1) / 2)
    assert cold["mean_other_mass"] == pytest.approx((1 - top_cold + 0.9) / 2)
    assert cold["share_top_above_0.99"] == 0.5 and warm["share_top_above_0.99"] == 0.0
    assert warm["mean_top_probability"] == pytest.approx((top_warm + 0.1) / 2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_target_stats(logits, 0.0)


def test_tuning_section_in_progress_shows_validation_only_and_the_noise_of_one_seed(tmp_path):
    cells = run.cells("standard")
    table = {("tuning", "dist_t1"): [{"validation_accuracy": 0.9025, "test_accuracy": 0.8123}],
             ("tuning", "kd_t4"): [{"validation_accuracy": 0.9097, "test_accuracy": 0.9}],
             ("cache", "kd_t4_online"): [{"validation_accuracy": 0.9140, "test_accuracy": 0.9}]}
    (tmp_path / "tuning").mkdir()
    text = standard_page.tuning_section(tmp_path, table, cells)
    assert "**dist** (in progress: 1 of 2 candidates)" in text and "| t1 (tau = 1 (the authors' released default)) | 90.25 |" in text
    assert "81.23" not in text and "test acc" not in text  # the candidates' test accuracy is not shown
    assert "land 0.43 validation points apart" in text
    assert standard_page.noise_note({}) == []


def test_headline_best_scores_every_row_without_the_seed_the_tuning_used(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setitem(run.SUITES, "standard", dataclasses.replace(run.SUITES["standard"], root=str(tmp_path)))
    # The winning candidate's seed-0 run stands for tuned/kd, paper/kd and features/kd alike.
    scores = {(group, "kd"): (0.99, 0.905, 0.905) for group in ("tuned", "paper", "features")}
    scores[("features", "dkd")] = (0.89, 0.91, 0.91)
    for cell in run.cells("standard"):
        if cell.regime == "10%" and cell.kind == "distill" and cell.group in ("features", "tuned", "paper"):
            for seed, accuracy in enumerate(scores.get((cell.group, cell.key), (0.90, 0.90, 0.90))):
                folder = run.cell_dir("standard", cell, seed)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "results.json").write_text(json.dumps({"validation_accuracy": accuracy}))
    best = run.best_row("standard")  # with seed 0: KD 0.933 against DKD 0.903
    assert (best.group, best.key) == ("features", "dkd")
    record = json.loads((tmp_path / "tuning" / "headline_best.json").read_text())
    assert record["mean_validation_accuracy"]["tuned/kd"] == pytest.approx(0.905)
    assert record["mean_validation_accuracy"]["features/dkd"] == pytest.approx(0.91)


def test_a_validated_row_that_chose_the_features_setting_says_it_is_the_same_runs():
    kd = [{"test_accuracy": a, "train_time_s": 1.0} for a in (0.900, 0.905, 0.910)]
    dist = [{"test_accuracy": a, "train_time_s": 2.0} for a in (0.895, 0.900, 0.905)]
    table = {("tuned", "kd"): kd, ("features", "dist"): dist, ("tuned", "dist"): [dict(r) for r in dist]}
    cells = [run.Cell("features", "dist", "DIST", "distill", "kd_fmnist.yaml")]
    extra = (("DIST, validated", standard_page.Ref("tuned", "dist")),)
    text = standard_page.methods_vs_kd(table, cells, ("tuned", "kd"), 3, {"dist": "why", "tuned/dist": "other"}, extra)
    assert "| DIST | 90.00 ± 0.50 | -0.50 | 0.50 | ties KD | why |" in text
    assert "| DIST, validated | 90.00 ± 0.50 | -0.50 | 0.50 | ties KD | the same runs as the row DIST |" in text
    table[("tuned", "dist")] = [{**r, "train_time_s": 3.0} for r in dist]  # other runs, same accuracies
    assert "| DIST, validated | 90.00 ± 0.50 | -0.50 | 0.50 | ties KD | other |" in standard_page.methods_vs_kd(
        table, cells, ("tuned", "kd"), 3, {"dist": "why", "tuned/dist": "other"}, extra)
