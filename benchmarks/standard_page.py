"""docs/results.md and docs/results.json from the standard suite: every row
as mean ± std of its seeds (last epoch), the hyper-parameter search on the
validation split, and each seed paper's claims with a verdict.

Verdict rule: a claim *reproduces* when the difference in the claimed
direction exceeds twice the pooled standard deviation of the two rows
(sample std, ddof = 1, over seeds); *does not reproduce* otherwise;
*pending* while either row lacks its seeds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from benchmarks.report import write_results_json, write_section
from benchmarks.run import CRITERIA, validation_score


@dataclasses.dataclass(frozen=True)
class Ref:
    """One accuracy of one row: `metric` of the results of cell `group/key`."""

    group: str
    key: str
    metric: str = "test_accuracy"

    @property
    def name(self) -> str:
        suffix = "" if self.metric == "test_accuracy" else f" [{self.metric.removeprefix('test_').removesuffix('_accuracy')}]"
        return f"{self.group}/{self.key}{suffix}"


@dataclasses.dataclass(frozen=True)
class Claim:
    paper: str
    claim: str
    row: Ref
    baseline: Ref
    setting: str  # "paper" (the paper's own setting) or "tuned" (chosen on validation)


#: OEMC's students and the networks they face trained alone (the baselines of its claims).
OEMC_ALONE = {1: ("features", "baseline"), **{j: ("online", f"alone_w{6 - j}") for j in range(2, 6)}}


def _oemc_claims(group: str, key: str, setting: str) -> list[Claim]:
    paper = "OEMC (Walawalkar et al. 2020)"
    alone = {j: Ref(*row) for j, row in OEMC_ALONE.items()}
    claims = [
        Claim(paper, f"compressed student {j} beats the same network trained alone", Ref(group, key,
              f"test_student{j}_accuracy"), alone[j], setting)
        for j in range(1, 6)
    ]
    claims.append(Claim(paper, "the ensemble beats student 1", Ref(group, key),
                        Ref(group, key, "test_student1_accuracy"), setting))
    return claims


def claims() -> list[Claim]:
    """The seed papers' claims, each with the paper's setting and the validated one."""
    found = []
    for setting, group in (("paper", "paper"), ("tuned", "tuned")):
        found += [
            Claim("EKD (Asif et al. 2020)", "the multi-branch student beats single-teacher KD",
                  Ref(group, "ekd"), Ref(group, "kd"), setting),
            Claim("EKD (Asif et al. 2020)", "with little data it beats a larger network trained alone (ResNet20)",
                  Ref(group, "ekd"), Ref("ekd", "resnet20_alone"), setting),
            Claim("LP (Chen et al. 2020)", "LP beats KD", Ref(group, "lp"), Ref(group, "kd"), setting),
            Claim("LP (Chen et al. 2020)", "LP beats FitNet", Ref(group, "lp"), Ref("features", "fitnet"), setting),
            *_oemc_claims(group, "oemc", setting),
        ]
    found += [
        Claim("SFTN (Park et al. 2021)", "KD from an SFTN teacher beats KD from a standard teacher",
              Ref("paper", "sftn"), Ref("tuned", "kd"), "paper"),
        Claim("SFTN (Park et al. 2021)", "KD from an SFTN teacher beats KD from a standard teacher",
              Ref("tuned", "sftn"), Ref("tuned", "kd"), "tuned"),
        Claim("SFTN (Park et al. 2021)", "AT from an SFTN teacher beats AT from a standard teacher",
              Ref("sftn", "scratch_at"), Ref("features", "at"), "paper"),
        Claim("SFTN (Park et al. 2021)", "AT from an SFTN teacher beats AT from a standard teacher",
              Ref("sftn", "tuned_at"), Ref("features", "at"), "tuned"),
    ]
    return found


def values(table: dict, ref: Ref) -> list[float]:
    return [100 * r[ref.metric] for r in table.get((ref.group, ref.key), []) if ref.metric in r]


def mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def fmt(xs: list[float]) -> str:
    if not xs:
        return "pending"
    mean, std = mean_std(xs)
    return f"{mean:.2f}" if len(xs) == 1 else f"{mean:.2f} ± {std:.2f}"


def verdict(row: list[float], base: list[float], seeds: int) -> dict:
    """Difference (row - baseline, points), pooled std and the verdict."""
    if len(row) < seeds or len(base) < seeds:
        return {"difference": None, "pooled_std": None, "verdict": "pending"}
    difference = mean_std(row)[0] - mean_std(base)[0]
    pooled = float(np.sqrt((mean_std(row)[1] ** 2 + mean_std(base)[1] ** 2) / 2))
    holds = difference > 2 * pooled
    return {"difference": round(difference, 3), "pooled_std": round(pooled, 3),
            "verdict": "reproduces" if holds else "does not reproduce"}


def side(difference: float, pooled_std: float) -> int:
    """1 when a row is above its baseline by more than twice the pooled std,
    -1 when below by as much, else 0 (the verdict rule, in both directions)."""
    return 1 if difference > 2 * pooled_std else -1 if -difference > 2 * pooled_std else 0


def last_epochs_range(run_dir: Path, epochs: int = 10) -> tuple[list[float], float] | None:
    """Validation accuracy (%) per epoch and its range over the last `epochs`."""
    path = run_dir / "history.csv"
    if not path.is_file():
        return None
    curve = [100 * float(row["val_accuracy"]) for row in csv.DictReader(path.open()) if row.get("val_accuracy")]
    return (curve, max(curve[-epochs:]) - min(curve[-epochs:])) if len(curve) >= epochs else None


def schedule_section(table: dict, cells: list, root: Path, figures: Path) -> str:
    rows = ["| epochs | validation acc. (%) | test acc. (%) | val. range over the last 10 epochs |",
            "| ---: | ---: | ---: | ---: |"]
    curves = {}
    for cell in cells:
        if cell.group != "schedule" or not table.get((cell.group, cell.key)):
            continue
        result = table[(cell.group, cell.key)][0]
        curve = last_epochs_range(root / cell.group / f"{cell.key}_seed0")
        epochs = int(cell.key.removeprefix("baseline_").removesuffix("ep"))
        if curve:
            curves[epochs] = curve[0]
        spread = f"{curve[1]:.2f}" if curve else "—"
        rows.append(f"| {epochs} | {100 * result['validation_accuracy']:.2f} | {100 * result['test_accuracy']:.2f} "
                    f"| {spread} |")
    text = "\n".join(rows)
    plot = _curves_plot(curves, figures / "standard_schedule.png")
    return text + (f"\n\n![CE baseline validation curves](figures/{plot.name})" if plot else "")


def _curves_plot(curves: dict[int, list[float]], path: Path) -> Path | None:
    if not curves:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    for epochs, curve in sorted(curves.items()):
        axis.plot(range(1, len(curve) + 1), curve, label=f"{epochs} epochs (cosine)")
    axis.set_ylim(max(70.0, min(min(c) for c in curves.values())), None)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy (%)")
    axis.set_title("ResNet8 alone (CE), 10% of Fashion-MNIST: where the schedule plateaus")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


#: What a family's records show that their numbers alone do not (measured facts, by family).
FAMILY_NOTES = {
    "lp": "The paper's placement (hint layer `stage2`, raw features, weight 1.5) diverges here: the LP term "
          "starts at about 5e4 (squared distances between 14x14x32 maps), the first updates blow the weights "
          "up (the coupled-L2 part of the loss is still ~2.6e5 at the last epoch; `lp_loss` and `loss` in "
          "`tuning/lp_hint_layer_seed0/history.csv`), and the student ends at "
          "chance (10.00% validation and test) with the LP term at zero: collapsed features satisfy it. "
          "Scale is not the only cause: at `stage2` with L2-normalised maps and weight 10 the student trains "
          "but ends at 88.47% validation, below CE alone (90.18%). On the pooled embedding the raw loss "
          "trains (90.48%) and L2-normalised features with weight 10 do best (90.63%); none reaches KD with "
          "T = 4 (90.97%). The candidate named `paper` is the paper's loss (raw features, weight 1.5) on "
          "the embedding; the paper's own placement is `hint_layer`, the `paper/lp` row.",
    "sftn": "Each candidate is a ResNet20 trained from scratch with ResNet8 branches (120 epochs), judged by "
            "the validation accuracy of a KD student (T = 4) distilled from it. The KL term to the branches "
            "costs the teacher accuracy as lambda_KL grows: 90.44 / 89.98 / 87.64% test for lambda_KL = "
            "1 / 3 / 10, against 90.24% for the same ResNet20 trained with CE alone. The students follow: "
            "91.17 / 90.78 / 88.07% validation, against 90.97% from the CE teacher. lambda_KL = 1 is the "
            "library default since (the paper uses 3). Over three seeds its KD students reach 90.75 ± 0.12% "
            "test against 90.63 ± 0.12% from the CE teacher: the claimed direction, but within twice the "
            "pooled std; with the paper's 3 they are below (90.31 ± 0.15%).",
    "oemc": "Five variants of the loss, seed 0, judged on the mean validation accuracy of the five students "
            "(declared before they ran). The CE weight matters most: 1.0 instead of the authors' 0.7, the rest "
            "as their code, raises the mean by 0.58 points (88.81 -> 89.39), the narrowest student most "
            "(student 5: 85.55 -> 87.03% validation). Without L_inter the mean gains 0.38 (89.19), student 5 "
            "again most (87.00%). Both the 0.7 and L_inter cost the narrow students, which underfit: in the "
            "last epoch student 5 fits 85.9-87.9% of the augmented training views, student 1 95.3-96.2% "
            "(`student5_accuracy` / `student1_accuracy`, last row of each candidate's `history.csv`). The paper's "
            "equation (no T^2 on KD, L_inter training only the compressed branches) is the lowest (88.58); "
            "with T^2, 88.94. `ce_full` is the library's OEMC default since. These are single-seed "
            "differences; the claims are decided on the three-seed rows.",
}


def tuning_section(root: Path, table: dict | None = None, cells: list = ()) -> str:
    """Each family's candidates by validation accuracy (seed 0): the committed
    record of a finished family, the finished candidates of one in progress."""
    parts, recorded = [], set()
    for record in sorted((root / "tuning").glob("*.json")):
        if record.stem not in {c.family for c in cells} and cells:
            continue  # another record (e.g. headline_best.json)
        data = json.loads(record.read_text())
        recorded.add(record.stem)
        criterion = data.get("criterion", "validation accuracy")
        rows = [f"**{record.stem}** (chosen: `{data['chosen']}`)", "", f"| candidate | {criterion} (%) |",
                "| --- | ---: |"]
        rows += [f"| {key}{' (chosen)' if key == data['chosen'] else ''} | {100 * acc:.2f} |"
                 for key, acc in data["validation_accuracy"].items()]
        if record.stem in FAMILY_NOTES:
            rows += ["", FAMILY_NOTES[record.stem]]
        parts.append("\n".join(rows))
    families = dict.fromkeys(c.family for c in cells if c.family and c.family not in recorded)
    for family in families:
        candidates = [c for c in cells if c.family == family]
        done = [(c, (table or {}).get((c.group, c.key))) for c in candidates]
        done = [(c, r[0]) for c, r in done if r]
        if not done:
            continue
        criterion = CRITERIA.get(family, "validation accuracy")
        rows = [f"**{family}** (in progress: {len(done)} of {len(candidates)} candidates)", "",
                f"| candidate | {criterion} (%) |", "| --- | ---: |"]
        rows += [f"| {c.key.removeprefix(family + '_')} ({c.label.split(': ', 1)[-1]}) | "
                 f"{100 * validation_score(family, r):.2f} |" for c, r in done]
        parts.append("\n".join(rows))
    if not parts:
        return "No family has finished yet."
    return "\n\n".join([*noise_note(table or {}), *parts])


def noise_note(table: dict) -> list[str]:
    """How far apart two runs of one setting land on validation (the cache's control pair), when both ran."""
    cached, online = (table.get(key) for key in CACHE_CONTROL)
    if not (cached and online):
        return []
    gap = 100 * abs(cached[0]["validation_accuracy"] - online[0]["validation_accuracy"])
    return [f"Each choice is one seed's run per candidate. Two runs of one setting (seed 0, the same views; the "
            f"teacher online or read from its float16 cache, section below) land {gap:.2f} validation points "
            "apart, so margins of that size choose between settings this protocol cannot tell apart. The rule "
            "is applied as declared all the same; every claim is decided on three-seed rows."]


def row_record(suite: str, cell, results: list[dict]) -> dict:
    """The machine-readable row of a cell's finished seeds (docs/results.json)."""
    mean, std = mean_std([100 * r["test_accuracy"] for r in results])
    return {"suite": suite, "regime": cell.regime, "group": cell.group, "row": cell.key, "label": cell.label,
            "mean": round(mean, 3), "std": round(std, 3), "seeds": len(results), "params": results[0]["params"],
            "macs": results[0]["macs"]}


def rows_section(table: dict, cells: list) -> tuple[str, list[dict]]:
    lines = ["| data | group | row | seeds | test acc. (%) | validation acc. (%) | params | MACs | train s / run |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    records = []
    for cell in cells:
        if cell.family:  # candidates: in the tuning section (teachers of a family are rows)
            continue
        results = table.get((cell.group, cell.key), [])
        test = [100 * r["test_accuracy"] for r in results]
        val = [100 * r["validation_accuracy"] for r in results if "validation_accuracy" in r]
        if not results:
            lines.append(f"| {cell.regime} | {cell.group} | {cell.label} | 0 | pending | pending | — | — | — |")
            continue
        first = results[0]
        seconds = np.mean([r["train_time_s"] for r in results])
        lines.append(f"| {cell.regime} | {cell.group} | {cell.label} | {len(test)} | {fmt(test)} | {fmt(val)} "
                     f"| {first['params']:,} | {first['macs']:,} | {seconds:.0f} |")
        records.append(row_record("standard", cell, results))
    return "\n".join(lines), records


#: Why a method does not beat KD in the standard suite (zoo row key, or `Ref.name` of an
#: `OTHER_VS_KD` row -> note), written from its runs.
METHOD_NOTES: dict[str, str] = {
    "baseline": "no teacher",
    "fitnet": "also below CE alone: CE + the stage-2 hint, no soft targets (the convention of CRD's "
              "benchmark table, Tian et al. ICLR 2020, RepDistiller)",
    "at": "also below CE alone (90.06): CE + attention maps of stages 1-3 at weight 1000, no soft targets "
          "(CRD's benchmark convention); the ResNet20 teacher run is only 0.2 points above ResNet8 here "
          "(ResNet20 over three seeds: 90.37 ± 0.15, `ekd/resnet20_alone`)",
    "lp": "CE + LP on the embedding, no soft targets; also within 2x pooled std of CE alone (+0.26): LP moves "
          "the student neither way measurably (the claims section; LP next to KD is the row `LP + KD`)",
    "tuned/ekd [branch1]": "the setting was chosen on the ensemble's validation accuracy, not a branch's; with "
                           "the paper's setting branch 1 beats KD (two rows below)",
    "tuned/oemc [student1]": "trained from scratch without a teacher: at the level of ResNet8 alone "
                             "(+0.16 over it, within 2x pooled std; the OEMC section)",
    "tuned/oemc": "the ensemble does not beat its own student 1 (90.22 ± 0.26): the width-1/5 student pulls the "
                  "mean of the logits down (the OEMC section)",
    "dkd": "KD's T = 4 with the target-class and non-target terms reweighted (alpha 1, beta 8: mdistiller's "
           "CIFAR-100 setting, not tuned here): the same accuracy as KD within the seeds' spread",
    "sp": "CE + similarity-preserving Gram matrices of stage 3 at weight 3000 (the CRD benchmark's setting), no "
          "soft targets: at the level of CE alone (+0.09 over it, within 2x pooled std); the teacher's batch "
          "similarities add nothing measurable here",
    "pkt": "CE + probabilistic knowledge transfer on the pooled embedding at weight 30000 (the CRD benchmark's "
           "setting), no soft targets: +0.16 over CE alone, within 2x pooled std",
    "dist": "tau = 1, the released loss's default: on its own training views the ResNet20 teacher puts on "
            "average 99.4% of the probability on its top class at tau = 1 (89% of the views above 99%), 66% at "
            "tau = 4 (`python -m benchmarks.soft_targets saved_models/teacher_cache/8fd4fb8b83bdd839`), so at "
            "tau = 1 the relations it matches carry little beyond the label; family `dist` compares tau = 4 on "
            "validation",
}


def _runs(results: list[dict]) -> list[tuple]:
    """What identifies a finished run across the cells that reuse it."""
    return [(r["test_accuracy"], r.get("validation_accuracy"), r.get("train_time_s")) for r in results]


def methods_vs_kd(table: dict, cells: list, kd: tuple[str, str], seeds: int, notes: dict[str, str],
                  extra: tuple[tuple[str, Ref], ...] = ()) -> str:
    """Every `features` row, then the `extra` (label, accuracy) rows, against
    the KD row `kd` (`(group, key)`): the difference of the means and the
    same 2x pooled-std rule as the claims."""
    base = [100 * r["test_accuracy"] for r in table.get(kd, [])]
    lines = [f"| method | test acc. (%) | minus KD ({fmt(base)}) | pooled std | verdict | note |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    rows = [(cell.label, Ref(cell.group, cell.key)) for cell in cells
            if cell.group == "features" and cell.regime == "10%" and (cell.group, cell.key) != kd]
    for label, ref in [*rows, *extra]:
        results = table.get((ref.group, ref.key), [])
        row = values(table, ref)
        if results and ref.metric == "test_accuracy" and _runs(results) == _runs(table.get(kd, [])):
            lines.append(f"| {label} | {fmt(row)} | — | — | — | the same runs as the reference row |")
            continue
        result = verdict(row, base, seeds)
        if result["difference"] is None:
            lines.append(f"| {label} | {fmt(row)} | — | — | pending | |")
            continue
        difference, pooled = result["difference"], result["pooled_std"]
        word = {1: "beats KD", -1: "below KD", 0: "ties KD"}[side(difference, pooled)]
        twin = next((other for other, twin_ref in rows if twin_ref != ref and ref.metric == "test_accuracy"
                     and _runs(table.get((twin_ref.group, twin_ref.key), [])) == _runs(results)), None)
        note = (f"the same runs as the row {twin}" if twin else
                notes.get(ref.key if ref.group == "features" else ref.name, "") if word != "beats KD" else "")
        lines.append(f"| {label} | {fmt(row)} | {difference:+.2f} | {pooled:.2f} | {word} | {note} |")
    return "\n".join(lines)


#: Rows of other groups in the table against KD: a validated variant of a zoo row, then
#: what one deployed network of a multi-network method gets, next to the ensembles they come from.
OTHER_VS_KD = (
    ("DIST, tau chosen on validation (family `dist`)", Ref("tuned", "dist")),
    ("EKD: the ensemble of its 3 ResNet8 branches, validated setting", Ref("tuned", "ekd")),
    ("EKD: branch 1 alone (a ResNet8, taught by ResNet20), validated setting",
     Ref("tuned", "ekd", "test_branch1_accuracy")),
    ("EKD: the ensemble of its 3 ResNet8 branches, the paper's setting", Ref("paper", "ekd")),
    ("EKD: branch 1 alone (a ResNet8, taught by ResNet20), the paper's setting",
     Ref("paper", "ekd", "test_branch1_accuracy")),
    ("OEMC: student 1 (a ResNet8, no teacher), validated variant", Ref("tuned", "oemc", "test_student1_accuracy")),
    ("OEMC: the ensemble of its 5 students (widths 5/5 .. 1/5), validated variant", Ref("tuned", "oemc")),
    ("DML: peer 1 (a ResNet8, no teacher)", Ref("online", "dml")),
    ("ONE: branch 1 (a ResNet8, no teacher)", Ref("online", "one")),
)


#: What explains a claim's verdict (paper, setting) -> text: the ablations behind it, written from the runs.
#: Shown once one of that paper's claims in that setting has a verdict.
CLAIM_NOTES: dict[tuple[str, str], str] = {
    ("LP (Chen et al. 2020)", "paper"):
        "The paper's placement (teacher hint layer / student guided layer, `stage2`, raw features, weight 1.5) "
        "diverges: the LP term starts near 5e4, the first updates blow the weights up and the student ends at "
        "chance. With the same layer and L2-normalised maps it trains but stays below CE alone (88.47% vs "
        "90.18% validation), so the layer costs accuracy too, not only the scale (family `lp` above).",
    ("LP (Chen et al. 2020)", "tuned"):
        "Validated setting: the pooled embedding, L2-normalised, weight 10. It beats FitNet; against KD it "
        "was already behind on validation when it was chosen (90.63% vs 90.97%): LP alone carries no soft "
        "targets (LP + KD is the zoo row `features/lpkd`).",
    ("EKD (Asif et al. 2020)", "paper"):
        "Against KD it reproduces (+0.69). The student is the ensemble of three ResNet8 branches: 3x the "
        "parameters and MACs of KD's student. Its branch 1 alone (a ResNet8 taught by ResNet20, the KD row's "
        "teacher) also beats KD by the rule (90.91 ± 0.12, +0.28 against 2x pooled std 0.24); branches 2 and 3, "
        "taught by the weaker WRN-16-1 and CNN, do not (90.76 / 90.14). The branch terms are summed as in the "
        "paper, each branch carrying the full KD weight; averaging them (1/N per branch, our first reading) cost "
        "0.3-0.7 validation points (family `ekd` above). Against ResNet20 trained alone on the same images and "
        "schedule (273,754 parameters and 31.0M MACs, against the student's 234,862 and 27.8M; 90.37 ± 0.15, "
        "seed 0 is the suite's ResNet20 teacher run) it reproduces too (+0.94). The teachers are what "
        "helps, not only the ensemble: the same three branches trained without teachers (`ekd/ekd_ce`, "
        "alpha = beta = 0) reach 90.56 ± 0.15 as an ensemble and 89.1-89.6% per branch, against 91.23 ± 0.11 "
        "and 89.9-91.1% with them (the validated setting, the same 3 seeds): +0.67 against 2x pooled std 0.26.",
    ("EKD (Asif et al. 2020)", "tuned"):
        "Validated setting: summed branch terms and a 1x1 adapter on every embedding pair (91.82% validation, "
        "the paper's 91.60%). On test it matches the paper's setting (91.23 ± 0.11 vs 91.32 ± 0.02) and beats "
        "KD by +0.60 and ResNet20 alone by +0.85; its branch 1 alone ties KD (90.79 ± 0.31).",
    ("OEMC (Walawalkar et al. 2020)", "paper"):
        "The paper's equation: cross-entropy at 0.7 on every student, KD without T^2, L_inter training only the "
        "compressed branches. No claim reproduces. Student 1 ends below ResNet8 alone on every seed (89.67 / "
        "89.75 / 89.47%; -0.43 against 2x pooled std 0.25: here the paper's setting costs the full-width "
        "student); student 5 is -0.94 (within 1.01), students 2 and 3 -0.15 / -0.16, student 4 +0.01. The "
        "ensemble is above its student 1 by +0.23 (2x pooled std 0.28), the claimed direction short of the "
        "rule, and only because that student is weak: the ensemble (89.86 ± 0.13%) does not exceed ResNet8 alone (90.06 ± 0.11%; -0.20, within 2x "
        "pooled std 0.24). "
        "The 0.7 explains most of it: under SGD it is a CE step 30% smaller than training alone, and the narrow "
        "students underfit (family `oemc` above: CE weight 1.0 raises the seed-0 validation mean by 0.58, "
        "student 5 most). Over the same three seeds the validated variant (the authors' code with CE 1.0) "
        "puts students 1-5 above this setting by +0.59 / +0.48 / +0.43 / +0.44 / +1.22.",
    ("OEMC (Walawalkar et al. 2020)", "tuned"):
        "Validated variant: the authors' loss with CE weight 1.0 (family `oemc` above). Its student 1, a "
        "ResNet8 trained inside the ensemble without a teacher, ends +0.16 above ResNet8 alone: the claimed "
        "direction, within the seeds' spread (90.46 / 90.24 / 89.95 by seed). The ensemble, the plain mean of "
        "the five students' logits, does not beat its own student 1 (90.18 / 90.16 / 89.98 against the same "
        "seeds' 90.46 / 90.24 / 89.95): the width-1/5 student (86.2-86.6%) pulls the mean down; in the "
        "family's seed-0 runs the ensemble is below student 1 in three of five variants. Every compressed "
        "student ends above the same network trained alone (`online/alone_w*`, 120 epochs of CE): +0.33 / "
        "+0.27 / +0.45 / +0.27 for widths 4/5 .. 1/5, each within twice the pooled std (0.46-0.68). Five differences of one sign are "
        "a consistent lean, not five independent tests: the students share each run. The smallest does not "
        "gain the most (+0.27 for width 1/5; the paper's abstract reports +10.64% relative on CIFAR-100 for a 97% "
        "compressed ResNet110): on 5,400 Fashion-MNIST images a 3,671-parameter ResNet8 alone already reaches 86.10%.",
    ("SFTN (Park et al. 2021)", "paper"):
        "With lambda_KL = 3 the KL term to the student branches holds the ResNet20 teacher below the same "
        "network trained with CE (89.98% vs 90.24% test), and KD from it follows. The family `sftn` above "
        "shows the cost growing with lambda_KL (teachers 90.44 / 89.98 / 87.64% for 1 / 3 / 10). AT from the "
        "same teacher ties AT from the CE teacher (+0.07); AT from either stays below CE alone here (the zoo's "
        "note on AT).",
    ("SFTN (Park et al. 2021)", "tuned"):
        "lambda_KL = 1, chosen on the KD student's validation accuracy, moves KD the claimed way (+0.12) but "
        "within the seeds' spread. The CE teacher is only 0.2 points above ResNet8 alone in this regime, "
        "which leaves a friendlier teacher little to add; a stronger teacher is the untested question. AT from "
        "this teacher matches AT from the CE teacher to the hundredth (89.64%).",
}


def claims_section(table: dict, seeds: int) -> tuple[str, list[dict]]:
    lines = ["| paper | claim | setting | row (%) | baseline (%) | difference | 2 x pooled std | verdict |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    records = []
    for claim in claims():
        row, base = values(table, claim.row), values(table, claim.baseline)
        result = verdict(row, base, seeds)
        difference = "—" if result["difference"] is None else f"{result['difference']:+.2f}"
        pooled = "—" if result["pooled_std"] is None else f"{2 * result['pooled_std']:.2f}"
        lines.append(f"| {claim.paper} | {claim.claim} | {claim.setting} | {fmt(row)} | {fmt(base)} | {difference} "
                     f"| {pooled} | **{result['verdict']}** |")
        records.append({"paper": claim.paper, "claim": claim.claim, "setting": claim.setting, "row": claim.row.name,
                        "baseline_row": claim.baseline.name, **result})
    decided = {(r["paper"], r["setting"]) for r in records if r["verdict"] != "pending"}
    notes = [f"* **{paper}, {setting} setting.** {text}" for (paper, setting), text in CLAIM_NOTES.items()
             if (paper, setting) in decided]
    if notes:
        lines += ["", "**Why, paper by paper** (the ablations behind the verdicts):", "", *notes]
    return "\n".join(lines), records


#: The same KD run with its teacher read from the float16 cache and online (seed 0, the same views).
CACHE_CONTROL = (("tuning", "kd_t4"), ("cache", "kd_t4_online"))


#: Online / cached KD step time from the interleaved throughput table of docs/benchmarks.md
#: ("KD, online ResNet20 teacher" 2028 img/s vs "KD, cached ResNet20 teacher" 3248 img/s).
BENCHMARK_RATIO = 3248 / 2028


def cache_section(table: dict) -> str:
    """What the teacher-output cache saved: the control pair (the same run with
    the teacher online) and the estimate over every cached cell."""
    cached_run, online_run = (table.get(key, []) for key in CACHE_CONTROL)
    if not (cached_run and online_run):
        return "Pending: the control pair `tuning/kd_t4` (cached teacher) / `cache/kd_t4_online` has not finished."
    cached, online = cached_run[0], online_run[0]
    ratio = online["train_time_s"] / cached["train_time_s"]
    runs = [r for rows in table.values() for r in rows if r.get("teacher_cache") and "same_run_as" not in r]
    spent = sum(r["train_time_s"] for r in runs)
    building = sum(r.get("teacher_cache_s", 0.0) for r in runs)
    saved = spent * (BENCHMARK_RATIO - 1) - building
    return "\n".join([
        "| run (seed 0) | teacher | train s | validation acc. (%) | test acc. (%) |",
        "| --- | --- | ---: | ---: | ---: |",
        f"| KD T = 4 | cached (float16) | {cached['train_time_s']:.0f} | {100 * cached['validation_accuracy']:.2f} "
        f"| {100 * cached['test_accuracy']:.2f} |",
        f"| KD T = 4 | online | {online['train_time_s']:.0f} | {100 * online['validation_accuracy']:.2f} "
        f"| {100 * online['test_accuracy']:.2f} |",
        "",
        f"Same seed, same views: the two runs differ only by the float16 rounding of the stored logits. The "
        f"online run took {ratio:.2f}x the cached one's time (single runs on a machine that alternates between "
        f"two speeds; the benchmark's fast-step ratio, input pipeline included, is {BENCHMARK_RATIO:.2f}x: "
        "docs/benchmarks.md, `python -m benchmarks.throughput --tables cache`). "
        f"{len(runs)} runs of this suite read cached teachers: {spent / 3600:.2f} h of training plus {building / 60:.1f} min building or "
        f"checking caches. At the benchmark's ratio they would have taken {spent * BENCHMARK_RATIO / 3600:.2f} h "
        f"with online teachers: the cache {'saved' if saved >= 0 else 'cost'} about {abs(saved) / 3600:.2f} h"
        f"{'' if saved >= 0 else ' more'}, building included (an estimate: KD's ratio applied to every cached "
        "run; EKD's is 1.42x in the same table; the control pair above, one run each, measured 0.94x). A cache that one run reads saves nothing at best: building "
        "it is one teacher pass per view, what the online run spends. The savings come from runs that share "
        "a cache (same teacher, seed and views: the four KD tuning candidates).",
    ])


#: The headline's rows: (label, cell key) in the `headline` group, and what each is compared with.
HEADLINE_ROWS = (("ResNet20 teacher (1 run)", "teacher_resnet20"), ("ResNet8 alone (CE)", "baseline"),
                 ("KD (T chosen on validation)", "kd"), ("best 10% method, chosen on validation", "best"))
HEADLINE_COMPARISONS = (("kd", "baseline"), ("best", "baseline"), ("best", "kd"))


def _compared(table: dict, row: str, base: str, seeds: int) -> str:
    result = verdict(values(table, Ref("headline", row)), values(table, Ref("headline", base)), seeds)
    if result["difference"] is None:
        return "pending"
    difference, pooled = result["difference"], result["pooled_std"]
    word = {1: "better", -1: "worse", 0: "tie"}[side(difference, pooled)]
    return f"{difference:+.2f} (2 x pooled std {2 * pooled:.2f}): **{word}**"


def headline_section(table: dict, root: Path, seeds: int) -> str:
    """The full-data rows (all 54,000 training images, a teacher trained on them)
    and the three comparisons that matter, by the claims' 2x pooled-std rule."""
    record = root / "tuning" / "headline_best.json"
    chosen = json.loads(record.read_text())["chosen"] if record.is_file() else None
    lines = ["| row | seeds | test acc. (%) | validation acc. (%) | params |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, key in HEADLINE_ROWS:
        results = table.get(("headline", key), [])
        if key == "best" and chosen:
            label += f" (`{chosen}`)"
        val = [100 * r["validation_accuracy"] for r in results if "validation_accuracy" in r]
        params = f"{results[0]['params']:,}" if results else "—"
        lines.append(f"| {label} | {len(results)} | {fmt(values(table, Ref('headline', key)))} | {fmt(val)} "
                     f"| {params} |")
    names = dict((key, label) for label, key in HEADLINE_ROWS)
    lines += ["", "| comparison | difference of the means, test (points) |", "| --- | --- |"]
    lines += [f"| {names[row]} vs {names[base]} | {_compared(table, row, base, seeds)} |"
              for row, base in HEADLINE_COMPARISONS]
    choice = (f"The best method is `{chosen}` (`{record.relative_to(root)}` lists every candidate's mean "
              "validation accuracy)." if chosen else
              "The best method is chosen once every single-teacher 10% row has its three seeds.")
    return ("All 54,000 training images (the validation split held out), 30 epochs, the same SGD protocol; "
            "the teacher is a ResNet20 trained by the suite on the same images. The best method is the "
            "single-teacher 10%-regime row with the highest mean validation accuracy (SFTN's rows excluded: "
            "they need an SFTN teacher; every row scored on seeds 1 and 2, since seed 0's validation accuracy "
            "chose the tuned settings), its pre-training stage and warm-up scaled to a quarter with the "
            f"schedule. {choice}\n\n" + "\n".join(lines))


def oemc_section(table: dict, cells: list) -> str:
    """Each OEMC student (and the ensemble) inside the run against the same
    network trained alone: the paper's and the validated rows (their seeds),
    and every candidate of the family (seed 0), so the ablation is one table."""
    candidates = [c for c in cells if c.family == "oemc"]
    columns = [("paper's setting", ("paper", "oemc")), ("validated", ("tuned", "oemc")),
               *[(f"`{c.key.removeprefix('oemc_')}` (seed 0)", (c.group, c.key)) for c in candidates]]
    lines = ["| model | params | alone (%) | " + " | ".join(f"{name} (%)" for name, _ in columns) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in columns) + " |"]
    for j in [*range(1, 6), None]:
        metric = "test_accuracy" if j is None else f"test_student{j}_accuracy"
        alone = table.get(OEMC_ALONE[j], []) if j else []
        params = f"{alone[0]['params']:,}" if alone else "—"
        cells_text = [fmt(values(table, Ref(*key, metric))) for _, key in columns]
        name = "ensemble" if j is None else f"student {j} (width {6 - j}/5)"
        lines.append(f"| {name} | {params} | {fmt(values(table, Ref(*OEMC_ALONE[j]))) if j else '—'} | "
                     + " | ".join(cells_text) + " |")
    return ("Test accuracy of each student inside the run against the same network trained alone with CE "
            "(120 epochs; student 1 alone is the `features/baseline` row). The candidate columns are the "
            f"family's seed-0 runs, chosen on the {CRITERIA['oemc']} (above).\n\n"
            + "\n".join(lines))


def write(suite: str, table: dict, cells: list, docs: str, root: str, seeds: int = 3) -> None:
    """Rewrites the standard suite's sections of `docs` and `docs/results.json`."""
    root_path, figures = Path(root), Path(docs).parent / "figures"
    write_section(docs, f"{suite}-schedule", "Where the CE baseline plateaus (schedule check)",
                  schedule_section(table, cells, root_path, figures))
    teachers = ["| teacher | validation acc. (%) | test acc. (%) | params | train s |", "| --- | ---: | ---: | ---: | ---: |"]
    for cell in cells:
        if cell.group == "teachers" and table.get((cell.group, cell.key)):
            r = table[(cell.group, cell.key)][0]
            teachers.append(f"| {cell.key.removeprefix('teacher_')} | {100 * r['validation_accuracy']:.2f} "
                            f"| {100 * r['test_accuracy']:.2f} | {r['params']:,} | {r['train_time_s']:.0f} |")
    write_section(docs, f"{suite}-teachers", "Teachers (trained by the suite on the same 10%)", "\n".join(teachers))
    write_section(docs, f"{suite}-tuning", "Hyper-parameters chosen on the validation split (seed 0)",
                  tuning_section(root_path, table, cells))
    write_section(docs, f"{suite}-headline", "Full-data headline", headline_section(table, root_path, seeds))
    rows_text, rows = rows_section(table, cells)
    write_section(docs, f"{suite}-rows", f"Every row ({suite} suite, last epoch, mean ± std over seeds)", rows_text)
    write_section(docs, f"{suite}-cache", "Teacher-output cache: time saved", cache_section(table))
    write_section(docs, f"{suite}-zoo", "Every method against KD (validated T)",
                  "A row beats KD when its mean exceeds the validated KD row's (`tuned/kd`) by more than twice the "
                  "pooled std of the 3 seeds, and is below it by the same rule. After the feature and relation rows: "
                  "DIST with its temperature chosen on validation, then the multi-network "
                  "methods: one network of the size of KD's student, cut out of the run, and the ensemble it "
                  "comes from (larger than KD's student).\n\n"
                  + methods_vs_kd(table, cells, ("tuned", "kd"), seeds, METHOD_NOTES, OTHER_VS_KD))
    write_section(docs, f"{suite}-oemc", "OEMC: each student inside the run and alone", oemc_section(table, cells))
    claims_text, claim_records = claims_section(table, seeds)
    write_section(docs, f"{suite}-claims", "The seed papers' claims, tested", claims_text)
    write_results_json(Path(docs).with_suffix(".json"), suite, rows, claim_records)
