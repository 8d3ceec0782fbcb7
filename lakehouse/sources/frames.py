"""Vectorised parsing of sources that arrive as whole pandas frames (pickles)."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from lakehouse.sources.base import ERROR, INT32, RAW, RECORD, ParseOptions

_INT_RANGE = {"int": INT32, "bigint": (-(2**63), 2**63 - 1)}
_NULLABLE_INT = {"int": "Int32", "bigint": "Int64"}


def _convert(series: pd.Series, kind: str) -> tuple[pd.Series, pd.Series]:
    """Convert a column; return (converted, mask of values that could not be)."""
    present = series.notna() & ~series.astype(str).str.strip().isin(["", "nan", "NaN", "None"])
    if kind in ("int", "bigint", "double"):
        converted = pd.to_numeric(series, errors="coerce")
        bad = present & converted.isna()
        if kind in _INT_RANGE:
            lo, hi = _INT_RANGE[kind]
            whole = converted.isna() | ((converted % 1 == 0) & converted.between(lo, hi))
            bad |= ~whole
            return converted.where(~bad).round().astype(_NULLABLE_INT[kind]), bad
        return converted.astype("float64"), bad
    if kind in ("timestamp", "date"):
        converted = pd.to_datetime(series, errors="coerce", utc=True).dt.tz_localize(None)
        bad = present & converted.isna()
        if kind == "date":
            converted = converted.dt.date
        return converted, bad
    if kind == "string":
        converted = series.where(present, None).map(lambda v: v if v is None else str(v))
        return converted, pd.Series(False, index=series.index)
    raise ValueError(f"column kind {kind!r} is not supported for frame sources")


def frames_from_pandas(
    df: pd.DataFrame, options: ParseOptions, records: pd.Series
) -> Iterator[pd.DataFrame]:
    """Type a frame's columns to the bronze kinds, rejecting rows that do not fit.

    Args:
        df: frame with (at least) the bronze data columns, as read.
        options: parse options (column names, kinds, nullability, batch size).
        records: each row's record number in its file.

    Yields:
        Frames with the bronze columns plus ``_record``, ``_error`` and ``_raw``.
    """
    missing = [c for c in options.columns if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} are missing from the file")
    df = df.reset_index(drop=True)
    out = pd.DataFrame(index=df.index)
    reason = pd.Series(None, index=df.index, dtype=object)
    for col, kind, nullable in zip(options.columns, options.kinds, options.nullable, strict=True):
        converted, bad = _convert(df[col], kind)
        reason = reason.where(reason.notna() | ~bad, f"column {col!r}: value is not a valid {kind}")
        if not nullable:
            missing_mask = converted.isna() & ~bad
            why = f"column {col!r}: value is missing"
            reason = reason.where(reason.notna() | ~missing_mask, why)
        out[col] = converted
    rejected = reason.notna().to_numpy()
    out[RECORD] = records.reset_index(drop=True).astype("int64")
    out[ERROR] = reason
    out[RAW] = pd.Series(None, index=df.index, dtype=object)
    if rejected.any():
        raw = df.loc[rejected, list(options.columns)].astype(str).agg(",".join, axis=1)
        out.loc[rejected, RAW] = raw.str.slice(0, options.max_raw_chars)
        for col in options.columns:
            out[col] = out[col].astype(object).where(~rejected, None)
    for start in range(0, max(len(out), 1), options.batch_rows):
        yield out.iloc[start : start + options.batch_rows]

