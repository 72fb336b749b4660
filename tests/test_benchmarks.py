"""The results suite's bookkeeping and page generation (no training)."""

import json

import numpy as np

from benchmarks import results_page, run
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
