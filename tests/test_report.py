import datetime as dt

from jobs.report import write_report
from lakehouse.config import load_config
from models.evaluate import confusion, plot_confusion
from models.store import ModelRecord


def test_report_copies_plots_and_lists_models(tmp_path):
    import numpy as np

    artifact = tmp_path / "artifact"
    artifact.mkdir()
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    matrix = confusion(probs, np.array([0, 1, 1]))
    assert matrix.tolist() == [[1, 0], [1, 1]]
    plot_confusion(matrix, artifact / "confusion_matrix.png", "m", ["no", "yes"])
    record = ModelRecord("m", 3, "mlp", {}, {"accuracy": 0.6667, "test_rows": 48972.0},
                         "lakeforge.gold_x", 5, "run-1", str(artifact), dt.datetime(2026, 1, 1))
    cfg = load_config([f"home={tmp_path / 'home'}"], environ={})
    page = write_report(cfg, [record], [("SELECT 1", "1\n(1 row)")])
    html = page.read_text()
    assert "m v3 (mlp)" in html and "lakeforge.gold_x v5" in html
    assert "accuracy 0.6667, test_rows 48,972" in html
    assert (page.parent / "m_v3_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "<pre>SELECT 1</pre>" in html
