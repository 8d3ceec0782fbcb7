"""What every parser shares: its settings and record-level parsing helpers.

Parsers run inside executors: each is a top-level function ``parse(path, options)``
that yields pandas frames holding the bronze data columns plus ``_record`` (the
record's number in its file), ``_error`` (why it was rejected, or None) and ``_raw``
(its raw text when rejected). A record is either parsed or rejected, never lost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

RECORD, ERROR, RAW = "_record", "_error", "_raw"
INT32 = (-(2**31), 2**31 - 1)


class RecordError(ValueError):
    """One record cannot be parsed; the message is the quarantine reason."""


@dataclass(frozen=True)
class ParseOptions:
    """Plain, picklable settings handed to parsers on executors."""

    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    nullable: tuple[bool, ...]
    batch_rows: int = 20000
    max_raw_chars: int = 20000
    extra: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str = "") -> str:
        """A source-specific setting (for example the bible command)."""
        return dict(self.extra).get(key, default)


def coerce(value: Any, kind: str, column: str, nullable: bool) -> Any:
    """Check and convert one value to a column's kind, or raise RecordError.

    Args:
        value: the raw value (string, number, bytes, date or None).
        kind: ``int``, ``long``, ``double``, ``string``, ``binary``, ``date``,
            ``timestamp`` or ``array<double>``.
        column: column name, for the error message.
        nullable: whether None (or an empty string) is allowed.

    Returns:
        The converted value.
    """
    try:
        converted = None if _missing(value) else _CONVERTERS[kind](value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecordError(f"column {column!r}: {str(value)[:60]!r} is not a valid {kind}") from exc
    if converted is None or (isinstance(converted, float) and math.isnan(converted)):
        if not nullable:
            raise RecordError(f"column {column!r}: value is missing")
        return None
    if isinstance(converted, float) and math.isinf(converted):
        raise RecordError(f"column {column!r}: {str(value)[:60]!r} is not finite")
    return converted


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    return isinstance(value, float) and math.isnan(value)


def _to_int(value: Any, lo: int = INT32[0], hi: int = INT32[1]) -> int:
    number = float(value) if isinstance(value, str) else value
    if isinstance(number, float):
        if not number.is_integer():
            raise ValueError("not a whole number")
        number = int(number)
    number = int(number)
    if not lo <= number <= hi:
        raise OverflowError("out of range")
    return number


def _to_double(value: Any) -> float:
    if isinstance(value, bytes | bool):
        raise TypeError("not a number")
    return float(value)


def _to_doubles(value: Any) -> list[float]:
    values = [_to_double(v) for v in value]
    if any(math.isnan(v) or math.isinf(v) for v in values):
        raise ValueError("not finite")
    return values


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "int": _to_int,
    "bigint": lambda v: _to_int(v, -(2**63), 2**63 - 1),
    "double": _to_double,
    "string": str,
    "binary": bytes,
    "date": lambda v: pd.Timestamp(v).date(),
    "timestamp": lambda v: pd.Timestamp(v).tz_localize(None)
    if pd.Timestamp(v).tzinfo is None else pd.Timestamp(v).tz_convert("UTC").tz_localize(None),
    "array<double>": _to_doubles,
}


def typed_row(values: dict[str, Any], options: ParseOptions) -> dict[str, Any]:
    """Convert a parsed record's values to the bronze column kinds.

    Args:
        values: column name to raw value; missing columns count as None.
        options: column names, kinds and nullability.

    Returns:
        Column name to typed value.
    """
    columns = zip(options.columns, options.kinds, options.nullable, strict=True)
    return {col: coerce(values.get(col), kind, col, nullable) for col, kind, nullable in columns}


class FrameBuilder:
    """Collects parsed and rejected records and cuts them into pandas frames."""

    def __init__(self, options: ParseOptions) -> None:
        self.options = options
        self.rows: list[dict[str, Any]] = []

    def ok(self, record: int, values: dict[str, Any], raw: Any = None) -> None:
        """Add a parsed record (values are typed here; a bad value rejects it).

        Args:
            record: the record's number in its file.
            values: column name to raw value.
            raw: the record as read, kept if the record is rejected (default: values).
        """
        try:
            row = typed_row(values, self.options)
        except RecordError as exc:
            self.reject(record, str(exc), values if raw is None else raw)
            return
        row[RECORD], row[ERROR], row[RAW] = record, None, None
        self.rows.append(row)

    def reject(self, record: int, reason: str, raw: Any) -> None:
        """Add a record that goes to quarantine."""
        row: dict[str, Any] = dict.fromkeys(self.options.columns)
        row[RECORD], row[ERROR] = record, reason
        row[RAW] = _raw_text(raw)[: self.options.max_raw_chars]
        self.rows.append(row)

    def full(self) -> bool:
        """Whether a frame's worth of rows is waiting."""
        return len(self.rows) >= self.options.batch_rows

    def frame(self) -> pd.DataFrame:
        """Hand out the waiting rows as a frame (with every output column)."""
        columns = [*self.options.columns, RECORD, ERROR, RAW]
        out = pd.DataFrame.from_records(self.rows, columns=columns)
        self.rows = []
        return out


def _raw_text(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="backslashreplace")
    if isinstance(raw, dict):
        return ",".join("" if v is None else str(v) for v in raw.values())
    return str(raw)


def read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Yield (line number from 1, raw line without the newline) of a text file."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            yield number, line.rstrip(b"\r\n")


def parse_lines(
    path: str,
    options: ParseOptions,
    parse_line: Callable[[str, int], dict[str, Any] | None],
    lines: Iterable[tuple[int, bytes]] | None = None,
) -> Iterator[pd.DataFrame]:
    """Parse a line-oriented file: one record per line, each parsed or rejected.

    Args:
        path: the file.
        options: parse options.
        parse_line: ``parse_line(text, number)`` returns the record's values, or None
            for a line that is not a record (header, comment, blank); it raises
            RecordError for a malformed record.
        lines: pre-read lines (defaults to the file's lines).

    Yields:
        Frames of parsed and rejected records; an empty file yields one rejection.
    """
    builder = FrameBuilder(options)
    seen = 0
    for number, raw in read_lines(path) if lines is None else lines:
        seen += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            why = f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            builder.reject(number, why, raw)
        else:
            try:
                values = parse_line(text, number)
            except RecordError as exc:
                builder.reject(number, str(exc), text)
            else:
                if values is not None:
                    builder.ok(number, values, raw=text)
        if builder.full():
            yield builder.frame()
    if seen == 0:
        builder.reject(0, "empty file: no records", "")
    yield builder.frame()


def reject_file(path: str, options: ParseOptions, reason: str) -> Iterator[pd.DataFrame]:
    """One frame with a single rejection standing for a file that cannot be read."""
    builder = FrameBuilder(options)
    builder.reject(0, reason, path)
    yield builder.frame()


def split_fields(text: str, sep: str, expected: int) -> list[str]:
    """Split a delimited line and check the field count."""
    fields = text.split(sep)
    if len(fields) != expected:
        raise RecordError(f"expected {expected} fields, found {len(fields)}")
    return fields
