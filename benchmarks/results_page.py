"""Writes docs/results.md and its figures from the results suite's run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.report import write_results_json, write_section


def stats(values) -> tuple[float, float, int]:
    values = 100 * np.asarray(values, np.float64)
    return (float(values.mean()), float(values.std()), len(values)) if len(values) else (np.nan, np.nan, 0)


def fmt(values) -> str:
    mean, std, n = stats(values)
    if n == 0:
        return "pending"
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def accuracies(results: list[dict], key: str = "test_accuracy") -> list[float]:
    return [r[key] for r in results if key in r]


def reference_teachers() -> dict[str, dict]:
    from benchmarks.run import TEACHERS

    found = {}
    for arch, folder in TEACHERS.items():
        path = Path(folder) / "results.json"
        if path.is_file():
            found[arch] = json.loads(path.read_text())
    return found


def main_table(table: dict, cells: list) -> str:
    rows = [
        "| group | method | test acc. 10% (%) | test acc. full (%) | params | MACs | train s / run |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arch, result in reference_teachers().items():
        full = accuracies(table.get(("teachers_full", f"teacher_{arch}"), []))
        rows.append(
            f"| teacher | {arch} (reference, 1 run, 20 epochs) | {100 * result['test_accuracy']:.2f} "
            f"| {fmt(full) if full else 'not run'} | {result['params']:,} | {result['macs']:,} "
            f"| {result['train_time_s']:.0f} |"
        )
    for cell in cells:
        if cell.regime != "10%":
            continue
        results = table[(cell.group, cell.key)]
        full = table.get((f"{cell.group}_full", cell.key), [])
        first = (results or full or [{}])[0]
        seconds = f"{np.mean([r['train_time_s'] for r in results]):.0f}" if results else "—"
        size = f"{first['params']:,} | {first['macs']:,}" if first else "— | —"
        rows.append(
            f"| {cell.group} | {cell.label} | {fmt(accuracies(results))} | {fmt(accuracies(full)) if full else 'not run'} "
            f"| {size} | {seconds} |"
        )
    return "\n".join(rows)


def online_rows(results: list[dict]) -> dict[str, list[float]]:
    """Per deliverable (student1.., ensemble): test accuracies over seeds."""
    by_name: dict[str, list[float]] = {}
    for result in results:
        for row in result.get("students", []):
            by_name.setdefault(row["name"], []).append(row["test_accuracy"])
    return by_name


def online_table(table: dict, group: str, alone_keys: dict[str, str], regime: str) -> tuple[str, dict]:
    online = table.get((group, "oemc"), [])
    inside = online_rows(online)
    sizes = {row["name"]: row for row in (online[0]["students"] if online else [])}
    ablation = online_rows(table.get((group, "oemc_no_inter"), []))
    extra = " in OEMC without L_inter (%) |" if ablation else ""
    rows = [
        f"| {regime} data | params | MACs | alone (%) | in the online ensemble (%) | relative gain |{extra}",
        "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if ablation else ""),
    ]
    gains = {}
    for name, values in inside.items():
        alone = table.get(alone_keys.get(name, ("", "")), [])
        gain = "—"
        if alone and values:
            a, b = stats(accuracies(alone))[0], stats(values)[0]
            gains[name] = 100 * (b - a) / a
            gain = f"{gains[name]:+.2f}%"
        size = sizes.get(name, {})
        rows.append(
            f"| {name} | {size.get('params', 0):,} | {size.get('macs', 0):,} | "
            f"{fmt(accuracies(alone)) if alone else '—'} | {fmt(values)} | {gain} |"
            + (f" {fmt(ablation.get(name, []))} |" if ablation else "")
        )
    return "\n".join(rows), gains


def plot_points(table: dict, cells: list) -> list[tuple]:
    """(params, mean, std, label, marker, color) of every 10%-regime model."""
    colors = {"features": "tab:blue", "ekd": "tab:green", "sftn": "tab:purple", "online": "tab:orange"}
    points = [
        (r["params"], 100 * r["test_accuracy"], 0.0, f"teacher {arch}", "s", "black")
        for arch, r in reference_teachers().items()
    ]
    for cell in cells:
        results = table[(cell.group, cell.key)]
        if cell.regime != "10%" or not results or cell.key.endswith("_teacher") or cell.key == "oemc_no_inter":
            continue
        if cell.key == "oemc":
            sizes = {row["name"]: row["params"] for row in results[0]["students"]}
            for name, values in online_rows(results).items():
                mean, std, _ = stats(values)
                points.append((sizes[name], mean, std, f"OEMC {name}", "^", "tab:red"))
            continue
        mean, std, _ = stats(accuracies(results))
        points.append((results[0]["params"], mean, std, cell.key, "o", colors.get(cell.group, "gray")))
    return points


def accuracy_vs_params_plot(table: dict, cells: list, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = plot_points(table, cells)
    figure, axis = plt.subplots(figsize=(9, 6))
    for params, mean, std, _, marker, color in points:
        axis.errorbar(params, mean, yerr=std, fmt=marker, color=color, ms=5)
    low = min(p[1] for p in points)
    high = max(p[1] for p in points)
    step = (high - low) * 0.035
    by_size: dict[int, list] = {}
    for point in points:
        by_size.setdefault(point[0], []).append(point)
    for params, group in by_size.items():
        group.sort(key=lambda p: -p[1])
        # Models of the same size get a stack of labels on their left, linked by thin lines.
        for rank, (_, mean, _, label, _, color) in enumerate(group):
            y = mean if len(group) == 1 else min(group[0][1], high) - rank * step
            axis.annotate(label, (params, mean), xytext=(params / 1.25, y), textcoords="data", fontsize=6.5,
                          ha="right", va="center", color=color,
                          arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray"} if len(group) > 1 else None)
    axis.set_xscale("log")
    axis.set_xlim(min(by_size) / 4, max(by_size) * 1.6)
    axis.set_xlabel("parameters (deployed model)")
    axis.set_ylabel("test accuracy (%), last epoch, mean ± std")
    axis.set_title("Fashion-MNIST, 10% training subset (quick suite; teachers: 20 epochs, others: 5)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def embedding_figure(table: dict, path: Path) -> Path | None:
    """t-SNE of test-set embeddings (the EKD paper's figure): the 3-branch ResNet8
    trained without teachers, the EKD student, and the ResNet20 teacher."""
    import keras

    from benchmarks.run import TEACHERS
    from keras_kd import data
    from keras_kd.projector import collect_embeddings, plot_embeddings

    runs = {key: table.get(("ekd", key), []) for key in ("ekd_ce", "ekd")}
    files = [Path(r[0]["run_dir"]) / "student.keras" for r in runs.values() if r]
    files.append(Path(TEACHERS["resnet20"]) / "model.keras")
    if len(files) < 3 or not all(f.is_file() for f in files):
        print(f"embedding figure skipped: needs {', '.join(map(str, files))}")
        return None
    test = data.load("fashion_mnist", "test", 500)
    panels = {}
    for title, file in zip(("3-branch ResNet8, no teachers", "EKD 3-branch ResNet8", "teacher ResNet20"), files,
                           strict=True):
        model = keras.models.load_model(file)
        taps = [layer.name for layer in model.layers if layer.name.endswith("_embedding")] or ["embedding"]
        panels[title] = collect_embeddings(model, test, taps, max_images=1500)
    names = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
    return plot_embeddings(panels, path, method="tsne", class_names=names)


#: Why a method does not beat KD in the quick suite (row key -> note): facts of the 5-epoch runs, not verdicts.
QUICK_NOTES: dict[str, str] = {
    "baseline": "no teacher",
    "at": "also below CE alone",
    "ab": "CE starts after the 1-epoch initialisation stage: 4 CE epochs of 5",
    "ft": "CE starts after the 1-epoch paraphraser stage: 4 CE epochs of 5",
    "dkd": "20-epoch warm-up: at most 1/4 of its weight within 5 epochs",
    "reviewkd": "20-epoch warm-up: at most 1/4 of its weight within 5 epochs",
    "crd": "below CE alone; each memory row has had 5 momentum updates (one per epoch)",
    "lp": "at the level of CE alone",
    "vid": "at the level of CE alone",
    "cc": "at the level of CE alone",
    "lpkd": "LP in the paper's raw setting next to KD: below KD alone",
}


def write(suite: str, table: dict, cells: list, docs: str) -> None:
    figures = Path(docs).parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot = accuracy_vs_params_plot(table, cells, figures / f"accuracy_vs_params_{suite}.png")
    embeddings = embedding_figure(table, figures / "ekd_embeddings.png")
    body = [main_table(table, cells)]
    if plot:
        body.append(f"\n![accuracy vs parameters](figures/{plot.name})")
    write_section(docs, f"{suite}-table", f"All methods ({suite} suite)", "\n".join(body))
    from benchmarks.standard_page import methods_vs_kd, row_record

    records = [row_record(suite, cell, table[(cell.group, cell.key)]) for cell in cells
               if table.get((cell.group, cell.key))]
    write_results_json(Path(docs).with_suffix(".json"), suite, records)

    write_section(docs, f"{suite}-zoo", f"Every method against KD ({suite} suite)",
                  "Same rule as the claims: a row beats KD when its mean exceeds KD's by more than twice the pooled "
                  "std of the 3 seeds. Feature and relation rows train CE + their term without KD's soft targets "
                  "(the CRD table's convention). Five epochs on 6,000 images: what this says is that each method "
                  "runs end to end and where it starts, not whether it works (the standard suite decides that).\n\n"
                  + methods_vs_kd(table, cells, ("features", "kd"), 3, QUICK_NOTES))

    get = lambda group, key: accuracies(table.get((group, key), []))  # noqa: E731
    teachers = reference_teachers()
    ekd = table.get(("ekd", "ekd"), [])
    if ekd:
        branch_rows = "\n".join(
            f"| EKD branch {i} alone (inside the trained student) | {fmt(accuracies(ekd, f'test_branch{i}_accuracy'))} |"
            for i in (1, 2, 3)
        )
        text = [
            "| model | test acc. (%) |",
            "| --- | ---: |",
            *[f"| teacher {a} (reference, 20 epochs, {r['params']:,} params) | {100 * r['test_accuracy']:.2f} |"
              for a, r in teachers.items()],
            f"| ResNet8 alone ({table[('features', 'baseline')][0]['params']:,} params) | {fmt(get('features', 'baseline'))} |",
            f"| ResNet8 + KD from ResNet20 | {fmt(get('features', 'kd'))} |",
            *[
                f"| {name} alone, same 5-epoch schedule as the students ({table[('ekd', key)][0]['params']:,} params) "
                f"| {fmt(get('ekd', key))} |"
                for name, key in (("ResNet20", "resnet20_alone"), ("ResNet32", "resnet32_alone"))
                if table.get(("ekd", key))
            ],
            f"| 3-branch ResNet8, no teachers | {fmt(get('ekd', 'ekd_ce'))} |",
            f"| EKD 3-branch ResNet8, ensemble ({ekd[0]['params']:,} params, {ekd[0]['macs']:,} MACs) | "
            f"{fmt(get('ekd', 'ekd'))} |",
            branch_rows,
        ]
        if embeddings:
            text.append(f"\n![t-SNE of test embeddings](figures/{embeddings.name})")
        write_section(docs, "ekd", "Ensemble Knowledge Distillation (Asif et al. 2020)", "\n".join(text))
    sftn = table.get(("sftn", "sftn_teacher"), [])
    if sftn:
        reference = teachers.get("resnet20", {})
        text = [
            "| teacher | teacher acc. (%) | ResNet8 + KD (%) | ResNet8 + AT (%) |",
            "| --- | ---: | ---: | ---: |",
            f"| standard ResNet20 (reference, 20 epochs CE) | {100 * reference.get('test_accuracy', np.nan):.2f} "
            f"| {fmt(get('features', 'kd'))} | {fmt(get('features', 'at'))} |",
            f"| SFTN ResNet20 from scratch (same 20-epoch schedule as the reference) "
            f"| {fmt(get('sftn', 'scratch_teacher'))} | {fmt(get('sftn', 'scratch_kd'))} | {fmt(get('sftn', 'scratch_at'))} |",
            f"| control: reference + {sftn[0]['epochs']} CE epochs | {fmt(get('sftn', 'ce_teacher'))} "
            f"| {fmt(get('sftn', 'ce_kd'))} | {fmt(get('sftn', 'ce_at'))} |",
            f"| SFTN ResNet20 (reference + {sftn[0]['epochs']} SFTN epochs) | {fmt(accuracies(sftn))} "
            f"| {fmt(get('sftn', 'sftn_kd'))} | {fmt(get('sftn', 'sftn_at'))} |",
        ]
        write_section(docs, "sftn", "Student-Friendly Teacher Networks (Park et al. 2021)", "\n".join(text))
    sections = []
    for group, regime in (("online", "10%"), ("online_full", "full")):
        alone = {f"student{j}": (group, f"alone_w{6 - j}") for j in range(1, 6)}
        if group == "online":
            alone["student1"] = ("features", "baseline")  # the full-width student IS ResNet8
        if table.get((group, "oemc")):
            rows, _ = online_table(table, group, alone, regime)
            sections.append(rows)
    if sections:
        write_section(docs, "oemc", "Online Ensemble Model Compression (Walawalkar et al. 2020)", "\n\n".join(sections))
