"""The results suite: every method on Fashion-MNIST, one page of tables and figures.

    python -m benchmarks.run --suite quick            # 2-core CPU: 10% subset, 5 epochs
    python -m benchmarks.run --suite full             # GPU: full schedules, both data regimes
    python -m benchmarks.run --suite quick --only ekd # one group; finished cells are reused
    python -m benchmarks.run --suite standard         # 2-core CPU, long schedules, validation split
    python -m benchmarks.run --suite standard --check # finished cells that changed code would retrain

Each cell is a CLI config (trainers/configs/*.yaml plus overrides) run for
several seeds; its run folder (config.yaml, train.log, history.csv,
results.json) lies under `saved_models/benchmarks/...`. A cell whose folder
already holds results for the same resolved config is not run again; one
that was interrupted (same config, same teachers) resumes from its last
epoch; one that raises leaves its traceback in `failed.txt` and the suite
goes on (exit status 1 at the end). `docs/results.md` is rewritten from the
results on disk.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import inspect
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import yaml  # noqa: E402

from keras_kd import _compat, registry  # noqa: E402
from trainers import runs  # noqa: E402
from trainers.config import dump, load_config  # noqa: E402
from trainers.quickstart import CONFIGS  # noqa: E402

REFERENCE = "saved_models/reference"
TEACHERS = {
    "resnet20": f"{REFERENCE}/teacher_resnet20_fmnist10",
    "wrn_16_1": f"{REFERENCE}/teacher_wrn_16_1_fmnist10",
    "cnn": f"{REFERENCE}/teacher_cnn_fmnist10",
}


#: Overrides that turn a distillation config into ResNet8 trained alone with cross-entropy.
RESNET8_ALONE = ("student.arch=resnet8", "teacher.path=null", "method=ce")


@dataclasses.dataclass(frozen=True)
class Protocol:
    epochs: int  # 10% regime
    full_data_epochs: int
    seeds: tuple[int, ...]
    root: str
    sftn_epochs: int  # SFTN fine-tuning of the (reference) teacher
    teacher_epochs: int  # teachers trained on the full data (full regime)
    full_data_groups: tuple[str, ...]  # groups also run on the full training set
    common: tuple[str, ...] = ()  # overrides of every cell (data split, optimizer protocol)
    own_teachers: bool = False  # the 10% regime's teachers are trained by the suite (group `teachers`)
    schedule_epochs: tuple[int, ...] = ()  # CE-baseline lengths of the `schedule` group (plateau check)
    tuning: bool = False  # run the `tuning` families (seed 0) and the rows chosen from them on validation
    distill_common: tuple[str, ...] = ()  # overrides of every cell with frozen teachers (the teacher cache)
    sftn_finetune: bool = True  # also the fine-tuning mode of SFTN (reference teacher + a quarter schedule)
    order: tuple[str, ...] = ()  # `group/key` prefixes run first, in this order (claims before extras)
    headline: bool = False  # full-data headline: ResNet8 alone, KD and the best 10% method (teacher on full data)


SUITES = {
    # 2-core CPU: the committed 20-epoch reference teachers, 5 student epochs;
    # only the from-scratch online ensemble also runs on the full data (1 epoch).
    "quick": Protocol(epochs=5, full_data_epochs=1, seeds=(0, 1, 2), root="saved_models/benchmarks",
                      sftn_epochs=5, teacher_epochs=20, full_data_groups=("online",)),
    # GPU: CRD-style 240-epoch schedules, every row in both regimes, teachers
    # of the full regime trained by the suite itself.
    "full": Protocol(epochs=240, full_data_epochs=240, seeds=(0, 1, 2), root="saved_models/benchmarks_full",
                     sftn_epochs=60, teacher_epochs=240,
                     full_data_groups=("features", "ekd", "sftn", "online"),
                     distill_common=("cache.teacher_outputs=auto",)),
    # 2-core CPU, long enough to tell (efficacy issue): validation split held out of the
    # training set (hyper-parameters are chosen on it), 10% of the rest for training,
    # SGD with plain momentum and coupled L2 as the papers, teachers trained by the
    # suite to convergence on the same images. `schedule` (run first) shows where the
    # CE baseline plateaus; `epochs` follows from it: 120 (its validation accuracy
    # moves 0.20 points over the last 10 epochs; 0.40 at 60, and 120 adds +0.9).
    "standard": Protocol(epochs=120, full_data_epochs=30, seeds=(0, 1, 2), root="saved_models/benchmarks_standard",
                         sftn_epochs=30, teacher_epochs=120, full_data_groups=(),
                         common=("data.validation_fraction=0.1", "train.weight_decay_mode=coupled",
                                 "train.nesterov=false"),
                         own_teachers=True, schedule_epochs=(15, 30, 60, 120), tuning=True,
                         distill_common=("cache.teacher_outputs=auto",), sftn_finetune=False,
                         order=("schedule/", "teachers/", "features/baseline", "tuning/kd_", "cache/", "tuned/kd",
                                "features/fitnet", "tuning/lp_", "tuned/lp", "sftn/scratch_teacher",
                                "sftn/scratch_kd", "tuning/sftn_", "tuned/sftn", "features/at", "sftn/scratch_at", "sftn/tuned_at",
                                "tuning/ekd_", "tuned/ekd",
                                "paper/ekd", "ekd/resnet20_alone", "ekd/ekd_ce", "tuning/oemc_", "tuned/oemc", "online/alone_w",
                                # the headline's rows that need no choice before the zoo its `best` waits for
                                "paper/", "headline/teacher", "headline/baseline", "headline/kd",
                                # the headline's best method (#16's last row) as soon as its candidates are done
                                "features/", "tuning/dist_", "tuned/dist", "headline/", "online/",
                                "ekd/resnet32_alone"),
                         headline=True),
}


#: SFTN teachers trained from scratch as the suite's CE teachers are (epochs: TEACHER_EPOCHS placeholder).
SFTN_SCRATCH = ("teacher.path=null", "teacher.arch=resnet20", "train.epochs={teacher_epochs}",
                "train.learning_rate=0.05")
#: lambda_KL candidates of SFTN's tuning family (3: the paper's, the config default).
SFTN_LAMBDAS = (1, 3, 10)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One row of a results table: a command (`kind`) on a config, over seeds."""

    group: str
    key: str
    label: str
    kind: str  # train-teacher | distill | train-online (what the row is; every cell runs runs.train)
    config: str
    overrides: tuple[str, ...] = ()
    regime: str = "10%"
    seeds: tuple[int, ...] | None = None  # None: the protocol's seeds
    family: str | None = None  # a candidate of this tuning family (judged on validation: `validation_score`)
    tuned: str | None = None  # this row takes the overrides of the best candidate of that family


def loss_cells(p: Protocol) -> list[Cell]:
    """One `features` row per registered loss that declares a `SuiteRow`; a
    pre-training stage (AB, FT) of the row's fraction of the protocol's epochs
    comes before them: CE starts after it and still gets the protocol's epochs."""
    rows = []
    for name, row in registry.suite_rows():
        stage = row.stage_epochs(p.epochs)
        overrides = (_losses(*row.loss_specs(name, p.epochs)), f"method.student_loss_weight={row.student_loss_weight}",
                     *((f"method.student_loss_start_epoch={stage}", f"train.epochs={p.epochs + stage}") if stage else ()))
        rows.append(Cell("features", row.key or name, row.label, "distill", "kd_fmnist.yaml", overrides))
    return rows


def base_cells(p: Protocol) -> list[Cell]:
    """The rows of the 10% regime, in running order (later cells may read earlier ones)."""
    rows = [
        Cell("features", "baseline", "ResNet8 alone (CE)", "train-teacher", "kd_fmnist.yaml", RESNET8_ALONE),
        *loss_cells(p),
        Cell("features", "lpkd", "LP + KD", "distill", "lp_kd_fmnist.yaml"),
        Cell("ekd", "ekd", "EKD: 3-branch ResNet8 <- ResNet20, WRN-16-1, CNN", "distill", "ekd_fmnist.yaml"),
        Cell("ekd", "ekd_ce", "3-branch ResNet8, no teachers (alpha = beta = 0)", "distill", "ekd_fmnist.yaml",
             ("method.alpha=0.0", "method.beta=0.0")),
        # The paper's claim is against LARGER networks trained on the same data and schedule.
        Cell("ekd", "resnet20_alone", "ResNet20 alone (CE), student schedule", "train-teacher", "kd_fmnist.yaml",
             ("student.arch=resnet20", "teacher.path=null", "method=ce")),
        Cell("ekd", "resnet32_alone", "ResNet32 alone (CE), student schedule", "train-teacher", "kd_fmnist.yaml",
             ("student.arch=resnet32", "teacher.path=null", "method=ce")),
        # SFTN from scratch on the reference teacher's schedule: the reference is its control.
        Cell("sftn", "scratch_teacher", "SFTN ResNet20 from scratch (for ResNet8)", "train-teacher",
             "sftn_teacher_fmnist.yaml", (*SFTN_SCRATCH, "method.lambda_kl=3.0"), seeds=(0,)),  # the paper's
        Cell("sftn", "scratch_kd", "KD from the from-scratch SFTN teacher", "distill", "kd_fmnist.yaml",
             ("teacher.path={scratch_teacher}",)),
        Cell("sftn", "scratch_at", "AT from the from-scratch SFTN teacher", "distill", "at_fmnist.yaml",
             ("teacher.path={scratch_teacher}",)),
        Cell("online", "oemc", "OEMC: 5 ResNet8 students (widths 5/5..1/5)", "train-online", "online_fmnist.yaml"),
        # The online baselines OEMC is compared with in the literature.
        Cell("online", "dml", "DML: 2 ResNet8 peers (peer 1 reported)", "train-online", "dml_fmnist.yaml"),
        Cell("online", "one", "ONE: ResNet8, 3 gated branches from stage 2 (branch 1 reported)", "train-online",
             "one_fmnist.yaml"),
    ]
    if p.sftn_finetune:
        rows[-1:-1] = [
            # Fine-tuning mode: the reference + a quarter of its schedule, against the same epochs of CE.
            Cell("sftn", "sftn_teacher", "SFTN ResNet20 (for ResNet8)", "train-teacher", "sftn_teacher_fmnist.yaml",
                 (f"train.epochs={p.sftn_epochs}",), seeds=(0,)),
            Cell("sftn", "sftn_kd", "KD from the SFTN teacher", "distill", "kd_fmnist.yaml",
                 ("teacher.path={sftn_teacher}",)),
            Cell("sftn", "sftn_at", "AT from the SFTN teacher", "distill", "at_fmnist.yaml",
                 ("teacher.path={sftn_teacher}",)),
            Cell("sftn", "ce_teacher", "ResNet20 + the same epochs of plain CE (control)", "train-teacher",
                 "sftn_teacher_fmnist.yaml", (f"train.epochs={p.sftn_epochs}", "method=ce"), seeds=(0,)),
            Cell("sftn", "ce_kd", "KD from the CE-fine-tuned control teacher", "distill", "kd_fmnist.yaml",
                 ("teacher.path={ce_teacher}",)),
            Cell("sftn", "ce_at", "AT from the CE-fine-tuned control teacher", "distill", "at_fmnist.yaml",
                 ("teacher.path={ce_teacher}",)),
        ]
    if p.tuning:  # SFTN's students use the KD setting chosen on validation, like the KD row they face
        rows = [dataclasses.replace(c, tuned="kd") if (c.group, c.key) == ("sftn", "scratch_kd") else c for c in rows]
        # The feature-method half of SFTN's claim for the lambda_KL chosen on validation.
        rows.append(Cell("sftn", "tuned_at", "AT from the SFTN teacher of the lambda_KL chosen on validation",
                         "distill", "at_fmnist.yaml", tuned="sftn"))
    rows.append(Cell("online", "oemc_no_inter", "OEMC ablation: inter_weight = 0, otherwise the config's (CE weight 1)",
                     "train-online",
                     "online_fmnist.yaml", ("method.inter_weight=0.0",)))
    rows += [
        Cell("online", f"alone_w{j}", f"ResNet8 width {j}/5 alone (CE)", "train-teacher", "kd_fmnist.yaml",
             (*RESNET8_ALONE, f"student.width_ratio={j / 5}"))
        for j in (4, 3, 2, 1)
    ]
    return rows


def headline_cells(p: Protocol) -> list[Cell]:
    """Full training set (the validation split held out), `full_data_epochs`:
    ResNet8 alone, KD with the T chosen on validation, and the single-teacher
    method with the best 10%-regime validation accuracy (`best_row`; its
    stage and warm-up lengths scaled to this schedule, `at_schedule`), all
    from a ResNet20 teacher trained by the suite on the same data."""
    full = ("data.subset_fraction=null", f"train.epochs={p.full_data_epochs}")
    teacher = ("teacher.path={headline_teacher}", *full)
    return [
        Cell("headline", "teacher_resnet20", "teacher ResNet20 (full data)", "train-teacher", "teacher_fmnist.yaml",
             ("teacher.arch=resnet20", *full, "train.validation_freq=1"), regime="full", seeds=(0,)),
        Cell("headline", "baseline", "ResNet8 alone (CE), full data", "train-teacher", "kd_fmnist.yaml",
             (*RESNET8_ALONE, *full), regime="full"),
        Cell("headline", "kd", "KD (T chosen on validation), full data", "distill", "kd_fmnist.yaml", teacher,
             regime="full", tuned="kd"),
        Cell("headline", "best", "the single-teacher method best on 10%-regime validation, full data", "distill",
             "kd_fmnist.yaml", teacher, regime="full", tuned=BEST),
    ]


#: `Cell.tuned` of a row that takes the config of the best single-teacher 10% row (`best_row`).
BEST = "best single-teacher row"


def best_row(suite: str) -> Cell | None:
    """The single-teacher, single-student distillation row of the 10% regime
    with the highest mean validation accuracy (SFTN's rows excluded: they need an
    SFTN teacher) over the seeds after the first; None while any of them is
    unfinished. Seed 0 is left out for every row: a tuning family chose its
    winner on seed 0's validation accuracy, and that run may stand for several
    rows (tuned, paper, features), which would favour them (the best of several
    noisy runs)."""
    p = SUITES[suite]
    # EKD and OEMC train other students; SFTN's rows distil from an SFTN teacher the headline does not train.
    candidates = [c for c in cells(suite) if c.regime == "10%" and c.kind == "distill"
                  and c.group in ("features", "tuned", "paper") and c.key not in ("ekd", "oemc", "sftn")]
    scores = {}
    for cell in candidates:
        found = [cell_dir(suite, cell, seed) / "results.json" for seed in (cell.seeds or p.seeds)]
        if not all(path.is_file() for path in found):
            return None
        scored = found[1:]
        scores[(cell.group, cell.key)] = sum(json.loads(path.read_text())["validation_accuracy"]
                                             for path in scored) / len(scored)
    best = max(candidates, key=lambda c: scores[(c.group, c.key)])
    record = Path(p.root) / "tuning" / "headline_best.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"mean_validation_accuracy": {f"{g}/{k}": v for (g, k), v in scores.items()},
                                  "scored_on": "seeds after the first (seed 0 chose the tuned settings)",
                                  "chosen": f"{best.group}/{best.key}"}, indent=2) + "\n")
    return best


def _losses(*entries: dict) -> str:
    """`method.losses=[...]` as a --set override (a str.format template, braces doubled)."""
    flow = yaml.safe_dump(list(entries), default_flow_style=True, width=10**6).strip()
    return "method.losses=" + flow.replace("{", "{{").replace("}", "}}")


def tuning_cells() -> list[Cell]:
    """Hyper-parameter candidates, seed 0, judged on the validation split only;
    per family, the row of the winner and the row of the paper's own setting
    (the protocol's seeds; seed 0 of each is its candidate's run)."""
    kd = "kd_fmnist.yaml"
    lp = {"name": "lp", "k": 5, "teacher_layer_name": "embedding", "student_layer_name": "embedding"}
    families = {
        "kd": ("KD, T chosen on validation", kd, "distill", "t4", [
            (f"t{t}", f"T = {t}", (_losses({"name": "kd", "weight": 0.9, "temperature": float(t)}),))
            for t in (1, 2, 4, 8)
        ]),
        "lp": ("LP (+ CE), variant chosen on validation", "lp_fmnist.yaml", "distill", "hint_layer", [
            ("paper", "embedding, raw features, weight 1.5", ()),
            *[(f"norm_w{w}", f"embedding, L2-normalised, weight {w}",
               (_losses({**lp, "normalize": True, "weight": float(w)}),)) for w in (10, 100)],
            ("hint_layer", "stage2 (hint/guided layer), weight 1.5",
             (_losses({**lp, "teacher_layer_name": "stage2", "student_layer_name": "stage2", "normalize": False,
                       "weight": 1.5}),)),
            # Separates the paper's layer from its raw scale: the raw stage2 run's first-epoch LP term
            # (~5e4) blows the weights up (the L2 term reaches ~9e5) and the student stays at chance.
            ("hint_layer_norm", "stage2 (hint/guided layer), L2-normalised, weight 10",
             (_losses({**lp, "teacher_layer_name": "stage2", "student_layer_name": "stage2", "normalize": True,
                       "weight": 10.0}),)),
        ]),
        "ekd": ("EKD, variant chosen on validation", "ekd_fmnist.yaml", "distill", "sum_if_needed", [
            (f"{w}_{a}", f"branch terms {w}, adapter {a}",
             (f"method.branch_weighting={w}", f"method.embedding_adapter={a}"))
            for w in ("mean", "sum") for a in ("if_needed", "always")
        ]),
        # DIST's released loss defaults to tau = 1; KD here is best at T = 4 (family `kd`). The tau = 1
        # candidate is the features row's very config (the same runs).
        "dist": ("DIST, tau chosen on validation", kd, "distill", "t1", [
            ("t1", "tau = 1 (the authors' released default)",
             (_losses({"name": "dist", "weight": 1.0}), "method.student_loss_weight=1.0")),
            ("t4", "tau = 4", (_losses({"name": "dist", "weight": 1.0, "tau": 4.0}), "method.student_loss_weight=1.0")),
        ]),
        # SFTN's lambda_KL is judged by what it is for: the validation accuracy of a KD student
        # (the validated T) of each candidate teacher; lambda_KL = 3 is sftn/scratch_teacher.
        "sftn": ("KD from an SFTN teacher, lambda_KL chosen on the KD student's validation", kd, "distill", "l3", [
            (f"l{lam}", f"lambda_KL = {lam}", (f"teacher.path={{sftn_l{lam}_teacher}}",)) for lam in SFTN_LAMBDAS
        ]),
        # Every candidate names its CE weight: the config's is the family's winner (1.0) since it was chosen.
        "oemc": ("OEMC, variant chosen on validation", "online_fmnist.yaml", "train-online", "paper", [
            ("code", "T^2 on KD (authors' code), L_inter also trains the stem", ("method.ce_weight=0.7",)),
            ("paper", "no T^2, L_inter trains the compressed branches only (the paper)",
             ("method.ce_weight=0.7", "method.kd_temperature_scaling=false", "method.inter_updates_stem=false")),
            ("paper_t2", "T^2 on KD, L_inter trains the compressed branches only",
             ("method.ce_weight=0.7", "method.inter_updates_stem=false")),
            ("no_inter", "without L_inter", ("method.ce_weight=0.7", "method.inter_weight=0.0")),
            # Under SGD the 0.7 on each student's CE is a 30% smaller CE step than training alone.
            ("ce_full", "CE weight 1 (not 0.7), otherwise the authors' code", ("method.ce_weight=1.0",)),
        ]),
    }
    rows = [
        # The same run as tuning/kd_t4 with the teacher online: what the cache saves, and that it changes nothing else.
        Cell("cache", "kd_t4_online", "KD T = 4, teacher online (control of the cached tuning/kd_t4)", "distill", kd,
             (_losses({"name": "kd", "weight": 0.9, "temperature": 4.0}), "cache.teacher_outputs=online"),
             seeds=(0,)),
    ]
    rows += [
        Cell("tuning", f"sftn_l{lam}_teacher", f"SFTN ResNet20 from scratch, lambda_KL = {lam}", "train-teacher",
             "sftn_teacher_fmnist.yaml", (*SFTN_SCRATCH, f"method.lambda_kl={float(lam)}"), seeds=(0,))
        for lam in SFTN_LAMBDAS if lam != 3
    ]
    for family, (label, config, kind, paper, candidates) in families.items():
        rows += [Cell("tuning", f"{family}_{key}", f"{family}: {text}", kind, config, overrides, seeds=(0,),
                      family=family) for key, text, overrides in candidates]
        rows.append(Cell("tuned", family, label, kind, config, tuned=family))
        key, text, overrides = next(c for c in candidates if c[0] == paper)
        rows.append(Cell("paper", family, f"{family}, the paper's setting: {text}", kind, config, overrides))
    return rows


#: What a tuning family maximises when it is not the row's own `validation_accuracy`
#: (a distilled student's, an ensemble's): OEMC is model compression, so its
#: variant is judged by the students it delivers, all of them alike.
CRITERIA = {"oemc": "mean validation accuracy of the students"}


def validation_score(family: str, results: dict) -> float | None:
    """The number `family` is chosen by (`CRITERIA`), from one run's results;
    None when the run has no validation split."""
    if family not in CRITERIA:
        return results.get("validation_accuracy")
    students = [value for name, value in results.items() if re.fullmatch(r"validation_student\d+_accuracy", name)]
    return sum(students) / len(students) if students else None


def best_candidate(suite: str, family: str) -> Cell | None:
    """The candidate of `family` with the highest validation score (seed 0;
    `validation_score`), or None while any candidate is unfinished. Writes the
    comparison to `<root>/tuning/<family>.json` (committed with the cells)."""
    candidates = [c for c in cells(suite) if c.family == family]
    scores = {}
    for cell in candidates:
        path = cell_dir(suite, cell, 0) / "results.json"
        if not path.is_file():
            return None
        scores[cell.key] = validation_score(family, json.loads(path.read_text()))
    if any(score is None for score in scores.values()):
        raise ValueError(f"Tuning family {family!r} needs data.validation_fraction: no validation accuracy.")
    best = max(candidates, key=lambda c: scores[c.key])  # first of equals
    record = Path(SUITES[suite].root) / "tuning" / f"{family}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"criterion": CRITERIA.get(family, "validation accuracy"),
                                  "validation_accuracy": scores, "chosen": best.key,
                                  "overrides": list(best.overrides)}, indent=2) + "\n")
    return best


def cells(suite: str) -> list[Cell]:
    """Every cell of a suite: the 10% rows, then their full-data twins
    (group `<group>_full`; teachers of that regime first, trained by the suite)."""
    p = SUITES[suite]
    first = [
        Cell("schedule", f"baseline_{e}ep", f"ResNet8 alone (CE), {e} epochs", "train-teacher", "kd_fmnist.yaml",
             (*RESNET8_ALONE, f"train.epochs={e}", "train.validation_freq=1"), seeds=(0,))
        for e in p.schedule_epochs
    ]
    if p.own_teachers:
        first += [
            Cell("teachers", f"teacher_{arch}", f"teacher {arch}", "train-teacher", "teacher_fmnist.yaml",
                 (f"teacher.arch={arch}", f"train.epochs={p.teacher_epochs}", "train.validation_freq=1"),
                 seeds=(0,))
            for arch in TEACHERS
        ]
    rows = first + base_cells(p) + (tuning_cells() if p.tuning else []) + (headline_cells(p) if p.headline else [])
    twins = [c for c in rows if c.group in p.full_data_groups and c.key != "oemc_no_inter" and c.regime == "10%"]  # ablation: 10% only
    if "online" in p.full_data_groups:  # on the full data student 1 is not the features baseline
        twins.append(Cell("online", "alone_w5", "ResNet8 width 5/5 alone (CE)", "train-teacher", "kd_fmnist.yaml",
                          ("student.arch=resnet8", "teacher.path=null", "student.width_ratio=1.0", "method=ce")))
    needs_teachers = any(c.kind == "distill" or c.key in ("sftn_teacher", "ce_teacher") for c in twins)
    full = ("data.subset_fraction=null",)
    if needs_teachers:
        rows += [
            Cell("teachers_full", f"teacher_{arch}", f"teacher {arch} (full data)", "train-teacher",
                 "teacher_fmnist.yaml", (f"teacher.arch={arch}", f"train.epochs={p.teacher_epochs}", *full),
                 regime="full", seeds=(0,))
            for arch in TEACHERS
        ]
    for cell in twins:
        epochs = () if cell.kind == "train-teacher" and cell.key.endswith("_teacher") else (
            f"train.epochs={p.full_data_epochs}",)
        label = cell.label if "full" in cell.label else f"{cell.label} (full data)"
        rows.append(dataclasses.replace(cell, group=f"{cell.group}_full", label=label, regime="full",
                                        overrides=(*cell.overrides, *full, *epochs)))
    return rows


def ordered(suite: str) -> list[Cell]:
    """The suite's cells in running order: those matching the protocol's
    `order` prefixes first (claims before extras), then the rest, each group
    in its listed order."""
    every = cells(suite)
    order = SUITES[suite].order

    def rank(cell: Cell) -> int:
        name = f"{cell.group}/{cell.key}"
        return next((i for i, prefix in enumerate(order) if name.startswith(prefix)), len(order))

    return sorted(every, key=rank)  # stable: ties keep the listed order


def cell_dir(suite: str, cell: Cell, seed: int) -> Path:
    return Path(SUITES[suite].root) / cell.group / f"{cell.key}_seed{seed}"


def resolve(suite: str, cell: Cell, seed: int):
    """The resolved run config of one cell and seed. In the full-data regime
    the reference (10%) teachers are replaced by the suite's full-data ones."""
    p = SUITES[suite]
    folder = cell_dir(suite, cell, seed)
    suffix = "_full" if cell.regime == "full" else ""
    teachers = {
        key: cell_dir(suite, Cell(f"sftn{suffix}", key, "", "", ""), 0)
        for key in ("sftn_teacher", "ce_teacher", "scratch_teacher")
    }
    teachers["headline_teacher"] = cell_dir(suite, Cell("headline", "teacher_resnet20", "", "", ""), 0)
    teachers["teacher_epochs"] = p.teacher_epochs
    for lam in SFTN_LAMBDAS:
        key = "scratch_teacher" if lam == 3 else f"sftn_l{lam}_teacher"
        teachers[f"sftn_l{lam}_teacher"] = cell_dir(suite, Cell("sftn" if lam == 3 else "tuning", key, "", "", ""), 0)
    config_file, chosen = cell.config, ()
    if cell.tuned == BEST:
        row = best_row(suite)
        if row is None:
            raise TuningPendingError(f"{cell.group}/{cell.key}: the 10% rows it chooses from are not finished")
        config_file, chosen = row.config, row.overrides + (_tuned_overrides(suite, row) if row.tuned else ())
    overrides = [
        f"output_dir={folder.parent}",
        f"run_name={folder.name}",
        f"seed={seed}",
        f"train.epochs={p.epochs}",
        *p.common,
        *(p.distill_common if cell.kind == "distill" else ()),
        *(o.format(**teachers) for o in chosen),
        *(o.format(**teachers) for o in cell.overrides),
    ]
    if cell.tuned and cell.tuned != BEST:
        overrides += [o.format(**teachers) for o in _tuned_overrides(suite, cell)]
    config = load_config(CONFIGS / config_file, overrides)
    if cell.tuned == BEST:
        config = load_config(base=at_schedule(config.to_dict(), p.full_data_epochs, p.epochs))
    if not any(o.startswith("train.validation_freq=") for o in cell.overrides):
        config.train.validation_freq = config.train.epochs  # one evaluation, after the last epoch
    if cell.regime == "full" or p.own_teachers:
        group = "teachers_full" if cell.regime == "full" else "teachers"
        replacements = {
            path: str(cell_dir(suite, Cell(group, f"teacher_{arch}", "", "", ""), 0))
            for arch, path in TEACHERS.items()
        }
        for section in [config.teacher, *config.teachers]:
            section.path = replacements.get(section.path, section.path)
    return config


def at_schedule(config: dict, epochs: int, reference_epochs: int) -> dict:
    """A 10%-regime recipe (`config`, its CE stage `reference_epochs` long) moved
    to a CE stage of `epochs`: every epoch count of its losses (`active_epochs`,
    `warmup_epochs`, `paraphraser_epochs`, ...: given, or the loss's default)
    and its pre-training stage (`method.student_loss_start_epoch`) scaled by
    `epochs / reference_epochs`, so that each keeps its share of the schedule;
    the stage comes before the `epochs` CE epochs, as in the 10% regime."""
    from keras_kd.losses import loss_class

    def scaled(value):
        return value if value is None or value == 0 else max(1, round(value * epochs / reference_epochs))

    config = json.loads(json.dumps(config))
    method = config["method"]
    for entry in method.get("losses") or []:
        defaults = {name: parameter.default for name, parameter in
                    inspect.signature(loss_class(entry["name"])).parameters.items()}
        for name in dict.fromkeys([*defaults, *entry]):
            if not name.endswith("_epochs"):
                continue
            value = entry.get(name, defaults.get(name))
            if isinstance(value, (list, tuple)):  # a (start, end) window stays at least one epoch long
                start, end = scaled(value[0]), scaled(value[1])
                entry[name] = [start, None if end is None else max(end, start + 1)]
            elif isinstance(value, int) and not isinstance(value, bool):
                entry[name] = scaled(value)
    stage = scaled(method.get("student_loss_start_epoch", 0))
    if stage:
        method["student_loss_start_epoch"] = stage
    config["train"]["epochs"] = epochs + stage
    return config


def _tuned_overrides(suite: str, cell: Cell) -> tuple[str, ...]:
    best = best_candidate(suite, cell.tuned)
    if best is None:
        raise TuningPendingError(f"{cell.group}/{cell.key}: tuning family {cell.tuned!r} is not finished")
    return best.overrides


class TuningPendingError(RuntimeError):
    """A tuned row whose candidates have not all finished yet."""


def finished(folder: Path, config) -> dict | None:
    """The saved results of a run with this exact resolved config, else None."""
    results, saved = folder / "results.json", folder / "config.yaml"
    if not (results.is_file() and saved.is_file()):
        return None
    try:
        previous = load_config(base=yaml.safe_load(saved.read_text()))
    except Exception:  # an older schema: run again
        return None
    return json.loads(results.read_text()) if dump(previous) == dump(config) else None


def teacher_folders(config) -> set[str]:
    """The run folders of the teachers a resolved config reads."""
    return {str(Path(t.path)) for t in [config.teacher, *config.teachers] if t.path}


def stale_cells(suite: str) -> list[str]:
    """Finished cells (a results.json) that the suite would train again: their
    saved config differs from what the current code resolves (with the keys
    that differ), or a teacher they read would train again. Run before
    restarting a long study on new code."""
    done, stale = [], {}
    for cell in cells(suite):
        for seed in cell.seeds or SUITES[suite].seeds:
            folder = cell_dir(suite, cell, seed)
            if not (folder / "results.json").is_file():
                continue
            try:
                config = resolve(suite, cell, seed)
            except TuningPendingError:
                continue
            done.append((str(folder), teacher_folders(config)))
            if finished(folder, config) is None:
                if not (folder / "config.yaml").is_file():
                    stale[str(folder)] = "no config.yaml"
                    continue
                changes = runs.config_changes(folder, config)
                stale[str(folder)] = ", ".join(changes) or "the saved config does not load with the current code"
    grew = True
    while grew:  # students of a retrained teacher are retrained (run_cell), and theirs in turn
        grew = False
        for folder, teachers in done:
            hit = sorted(teachers & stale.keys())
            if hit and folder not in stale:
                stale[folder], grew = f"its teacher {hit[0]} would train again", True
    return [f"{folder}: {reason}" for folder, reason in stale.items()]


def plan(suite: str) -> list[tuple[str, str]]:
    """`(cell, what happens)` for every cell a run of the suite would not just
    read back, in running order: `train`, `resume at epoch N` (an interrupted
    run of the same config), `reuse <folder>` (a finished run, or one trained
    earlier in this plan, with the same config) or `wait for a choice on
    validation` (a tuned row whose family, or the headline's best row, is
    not decided yet). A
    finished cell whose teacher the plan trains again is trained again."""
    p = SUITES[suite]
    planned, steps = {}, []  # planned: folder -> training order
    finished_runs = {key: [str(folder) for folder in folders] for key, folders in finished_by_config(suite).items()}
    for cell in ordered(suite):
        for seed in cell.seeds or p.seeds:
            name, folder = f"{cell.group}/{cell.key} seed {seed}", cell_dir(suite, cell, seed)
            try:
                config = resolve(suite, cell, seed)
            except TuningPendingError:
                steps.append((name, "wait for a choice on validation"))
                continue
            teachers = teacher_folders(config)
            if str(folder) not in planned and finished(folder, config) is not None and trained_after(
                    folder, teachers, planned):
                continue
            key = _config_key(config)
            source = next((other for other in finished_runs.get(key, []) if other != str(folder)
                           and trained_after(other, teachers, planned)), None)
            if source is not None:
                steps.append((name, f"reuse {source}"))
                continue
            finished_runs.setdefault(key, []).insert(0, str(folder))
            planned[str(folder)] = len(planned)
            resume = 0 if teachers & planned.keys() else interrupted_epoch(folder, config, teachers)
            steps.append((name, f"resume at epoch {resume + 1}" if resume else "train"))
    return steps


def _config_key(config) -> str:
    return json.dumps(_located_elsewhere(config), sort_keys=True, default=str)


#: While this file exists no new cell starts (set by `--pause-file`).
PAUSE_FILE = None

#: Run folders trained in this invocation, in training order: a run taught by
#: one of them is reused only if it was itself trained later (`trained_after`).
RETRAINED: dict[str, int] = {}


def trained_after(folder: Path | str, teachers: set[str], trained: dict[str, int]) -> bool:
    """Whether the finished run in `folder` can stand for a run taught by
    `teachers`, given the folders `trained` (in order) in this invocation:
    none of its teachers was trained, or it was trained after all of them."""
    retrained = [trained[t] for t in teachers if t in trained]
    return not retrained or trained.get(str(folder), -1) > max(retrained)


def _located_elsewhere(config) -> dict:
    """The resolved config without where it is saved and how often it was
    evaluated (neither changes training), to find the same run under another name."""
    values = config.to_dict()
    values["train"] = {k: v for k, v in values["train"].items() if k not in ("validation_freq", "verbose")}
    if values["method"]["name"] == "ce" and not values["teachers"]:
        # `method: ce` trains one network, the teacher section's if set, else the student's:
        # a teacher and a "larger network alone" of the same architecture are one run.
        teacher = values.pop("teacher")
        values["trained"] = teacher if teacher["arch"] or teacher["path"] else values["student"]
        del values["student"]
    return {key: value for key, value in values.items() if key not in ("run_name", "output_dir")}


def finished_by_config(suite: str) -> dict[str, list[Path]]:
    """The folders of every finished run (results of exactly its cell's
    resolved config), grouped by what they trained (`_config_key`), in the
    suite's cell order: where `collect` and `plan` find twins (`same_run`
    looks for one, and stops at the first)."""
    index = {}
    for cell in cells(suite):
        for seed in cell.seeds or SUITES[suite].seeds:
            try:
                config = resolve(suite, cell, seed)
            except TuningPendingError:
                continue
            folder = cell_dir(suite, cell, seed)
            if finished(folder, config) is not None:
                index.setdefault(_config_key(config), []).append(folder)
    return index


def same_run(suite: str, cell: Cell, seed: int, config, usable=lambda folder: True) -> Path | None:
    """A finished run folder of another cell with exactly this config (e.g. the
    tuning candidate a tuned row chose, for the seed it was tuned on) for
    which `usable(folder)` holds."""
    wanted = _config_key(config)
    for other in cells(suite):  # stops at the first twin: resolves only the cells listed before it
        if other == cell or seed not in (other.seeds or SUITES[suite].seeds):
            continue
        try:
            other_config = resolve(suite, other, seed)
        except TuningPendingError:
            continue
        folder = cell_dir(suite, other, seed)
        if _config_key(other_config) == wanted and finished(folder, other_config) is not None and usable(folder):
            return folder
    return None


def interrupted_epoch(folder: Path, config, teachers: set[str]) -> int:
    """The epoch an interrupted run of this very config in `folder` has
    reached (its last backup), or 0 when the cell must start over: no backup,
    another config, or a teacher retrained (in this process or since the run
    started)."""
    epoch = _compat.resumed_epoch(folder / "backup")
    if not epoch or teachers & RETRAINED.keys() or runs.config_changes(folder, config):
        return 0
    started = (folder / "config.yaml").stat().st_mtime
    if any(Path(t).exists() and Path(t).stat().st_mtime > started for t in teachers):
        return 0
    return epoch


#: A failed cell's traceback, beside its partial run.
FAILED = "failed.txt"


def record_failure(suite: str, cell: Cell, seed: int, error: Exception) -> str:
    """Writes the traceback of a cell that raised to `<cell folder>/failed.txt`
    (removed when the cell next runs) and returns its one-line summary."""
    folder = cell_dir(suite, cell, seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FAILED).write_text("".join(traceback.format_exception(error)))
    line = f"{cell.group}/{cell.key} seed {seed}: {type(error).__name__}: {error}"
    print(f"[{suite}] FAILED {line}", flush=True)
    return line


def run_cell(suite: str, cell: Cell, seed: int) -> dict:
    config = resolve(suite, cell, seed)
    folder = cell_dir(suite, cell, seed)
    teachers = teacher_folders(config)
    done = finished(folder, config)
    if done is not None and trained_after(folder, teachers, RETRAINED):
        return done
    source = same_run(suite, cell, seed, config, lambda other: trained_after(other, teachers, RETRAINED))
    if source is not None:
        results = {**json.loads((source / "results.json").read_text()), "same_run_as": str(source)}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(dump(config))
        (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"[{suite}] {cell.group}/{cell.key} seed {seed}: the same run as {source}", flush=True)
        return results
    while PAUSE_FILE and Path(PAUSE_FILE).exists():  # lets a timing benchmark run on a quiet machine
        time.sleep(5)
    start = time.perf_counter()
    (folder / FAILED).unlink(missing_ok=True)
    resume = interrupted_epoch(folder, config, teachers)
    if resume:
        print(f"[{suite}] {cell.group}/{cell.key} seed {seed}: resuming at epoch {resume + 1}", flush=True)
    result = runs.train(config, overwrite=not resume, resume=bool(resume))
    RETRAINED[str(folder)] = max(RETRAINED.values(), default=-1) + 1
    print(f"[{suite}] {cell.group}/{cell.key} seed {seed}: {100 * result['test_accuracy']:.2f}% "
          f"in {time.perf_counter() - start:.0f} s", flush=True)
    return result


def collect(suite: str) -> dict:
    """{(group, key): [results per seed]} of every finished cell on disk, and
    of every cell not run yet whose config is exactly that of a finished run
    (the runner will reuse that run: `same_run`), so the page shows it now.
    A cell whose saved config is not what the current code resolves (its
    recipe changed since it ran) is left out, with a warning: its numbers
    would stand under a row that now means something else."""
    index, results, stale = finished_by_config(suite), {}, []
    current = {folder for folders in index.values() for folder in folders}  # results of the row's own config
    for cell in cells(suite):
        for seed in cell.seeds or SUITES[suite].seeds:
            folder = cell_dir(suite, cell, seed)
            if (folder / "results.json").is_file():
                if folder not in current:
                    stale.append(str(folder))
                    continue
                found = json.loads((folder / "results.json").read_text())
                source = Path(found.get("same_run_as", "")) / "results.json"
                if "same_run_as" in found and source.is_file():  # the run's own record, as it is now
                    found = {**json.loads(source.read_text()), "same_run_as": found["same_run_as"]}
                results[(cell, seed)] = found
                continue
            try:
                twins = index.get(_config_key(resolve(suite, cell, seed)))
            except TuningPendingError:
                continue
            if twins:
                results[(cell, seed)] = {**json.loads((twins[0] / "results.json").read_text()),
                                         "same_run_as": str(twins[0])}
    if stale:
        print(f"[{suite}] {len(stale)} finished cell(s) ran on another recipe than their row's current one and "
              f"are left off the page until they run again (`--check` says what changed): "
              + ", ".join(stale[:5]) + (" ..." if len(stale) > 5 else ""), file=sys.stderr, flush=True)
    return {(cell.group, cell.key): [results[(cell, seed)] for seed in cell.seeds or SUITES[suite].seeds
                                     if (cell, seed) in results]
            for cell in cells(suite)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick")
    parser.add_argument("--only", nargs="+", help="groups (features, ekd, sftn, online, online_full) or rows "
                        "(online/dml) to run.")
    parser.add_argument("--report-only", action="store_true", help="rewrite docs/results.md from disk only.")
    parser.add_argument("--docs", help="results page (default: docs/results.md for the standard and quick "
                        "suites (their own sections), docs/results_full.md for the full suite).")
    parser.add_argument("--pause-file", help="wait before each cell while this file exists.")
    parser.add_argument("--check", action="store_true", help="list finished cells the current code would train "
                        "again (their resolved config changed) and exit 1 if there are any; trains nothing.")
    parser.add_argument("--plan", action="store_true", help="list the cells a run would train, resume, reuse "
                        "from a finished run with the same config, or wait for a choice on validation, in running order; "
                        "trains nothing.")
    args = parser.parse_args(argv)
    if args.plan:
        steps = plan(args.suite)
        counts = collections.Counter(action.split(" ")[0] for _, action in steps)
        for name, action in steps:
            print(f"{name}: {action}")
        print(f"[{args.suite}] {counts['train'] + counts['resume']} run(s) to train ({counts['resume']} resumed), "
              f"{counts['reuse']} reuse a finished run, {counts['wait']} wait for a choice on validation", flush=True)
        return
    if args.check:
        stale = stale_cells(args.suite)
        print(f"[{args.suite}] {len(stale)} finished cell(s) would train again" + "".join(f"\n  {s}" for s in stale))
        sys.exit(1 if stale else 0)
    global PAUSE_FILE
    PAUSE_FILE = args.pause_file
    if args.only:
        known = {name for cell in cells(args.suite) for name in (cell.group, f"{cell.group}/{cell.key}")}
        unknown = [selected for selected in args.only if selected not in known]
        if unknown:
            parser.error(f"--only: no group or row {', '.join(unknown)} in the {args.suite} suite "
                         f"(groups: {', '.join(sorted({c.group for c in cells(args.suite)}))}).")
    if args.suite == "full" and SUITES["full"].teacher_epochs:
        print("full suite: teachers are the committed references unless retrained with "
              "`keras-kd train-teacher --set train.epochs=...` (see docs/results.md)")
    failed = []
    if not args.report_only:
        for cell in ordered(args.suite):
            if args.only and not any(selected in (cell.group, f"{cell.group}/{cell.key}") for selected in args.only):
                continue
            for seed in cell.seeds or SUITES[args.suite].seeds:
                try:
                    run_cell(args.suite, cell, seed)
                except TuningPendingError as pending:
                    print(f"[{args.suite}] skipped: {pending}", flush=True)
                    break
                except Exception as error:  # one failed cell must not stop an unattended suite
                    failed.append(record_failure(args.suite, cell, seed, error))
    if failed:
        print(f"[{args.suite}] {len(failed)} cell(s) failed (their error is in failed.txt):\n  " + "\n  ".join(failed),
              file=sys.stderr, flush=True)
    if args.suite == "standard":
        from benchmarks import standard_page

        standard_page.write(args.suite, collect(args.suite), cells(args.suite), args.docs or "docs/results.md",
                            SUITES[args.suite].root, len(SUITES[args.suite].seeds))
    else:
        from benchmarks import results_page

        docs = args.docs or ("docs/results.md" if args.suite == "quick" else f"docs/results_{args.suite}.md")
        results_page.write(args.suite, collect(args.suite), cells(args.suite), docs)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
