"""The demo report: a folder with the models' plots and an index page."""

from __future__ import annotations

import html
import shutil
from collections.abc import Sequence
from pathlib import Path

from lakehouse.config import Config
from lakehouse.lakefs import LakeFS


def write_report(cfg: Config, models: Sequence, queries: Sequence[tuple[str, str]]) -> Path:
    """Copy each model's PNGs into ``<home>/report`` and write ``index.html``.

    Args:
        cfg: configuration (the report goes under ``cfg.home``).
        models: model records (``name``, ``version``, ``metrics``, ``artifact``, ...).
        queries: (SQL, rendered result) pairs shown on the page.

    Returns:
        The path of ``index.html``.
    """
    folder = cfg.home / "report"
    folder.mkdir(parents=True, exist_ok=True)
    sections = []
    for m in models:
        pngs = []
        for png in sorted(Path(LakeFS.of(cfg).fetch(m.artifact)).glob("*.png")):
            target = folder / f"{m.name}_v{m.version}_{png.name}"
            shutil.copyfile(png, target)
            pngs.append(f'<img src="{html.escape(target.name)}" alt="{html.escape(png.stem)}">')
        metrics = ", ".join(f"{k} {_number(v)}" for k, v in sorted(m.metrics.items()))
        sections.append(
            f"<h2>{html.escape(m.name)} v{m.version} ({html.escape(m.family)})</h2>"
            f"<p>trained on {html.escape(m.training_table)} v{m.training_version}, "
            f"run {html.escape(m.run_id)}<br>{html.escape(metrics)}</p>{''.join(pngs)}")
    for sql, result in queries:
        sections.append(f"<h2>SQL</h2><pre>{html.escape(sql)}</pre><pre>{html.escape(result)}</pre>")
    page = folder / "index.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>lakeforge demo report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "img{max-width:100%;margin:0.5em 0;border:1px solid #ddd}pre{background:#f6f6f6;"
        "padding:0.6em;overflow-x:auto}</style><h1>lakeforge demo report</h1>"
        + "".join(sections))
    return page


def _number(value: float) -> str:
    """Whole numbers with thousands separators, others to four significant digits."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:.4g}"
