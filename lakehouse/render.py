"""Query results as text: an aligned table, CSV or JSON Lines (no Spark needed here).

``lakeforge sql`` renders what a Spark session or a running SQL endpoint returns with
the same functions, so both print the same thing.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from lakehouse.errors import ConfigError

FORMATS = ("table", "csv", "json")


def check_format(fmt: str) -> None:
    """Stop on an output format other than :data:`FORMATS`.

    Raises:
        ConfigError: naming the format and the choices.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                 exact: bool = False) -> str:
    """Render rows as an aligned text table (numbers right-aligned, with separators).

    Args:
        header: column names.
        rows: the rows' values.
        exact: floats with every digit they have (Python's shortest round trip, digits
            grouped), as a query result should print; otherwise four significant
            digits, as summaries such as metrics read best.
    """
    def cell(v: Any) -> str:
        if v is None:
            return "NULL"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            if exact:
                return _grouped(repr(v))
            return f"{v:,.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        if exact and isinstance(v, decimal.Decimal):
            return _grouped(str(v))
        return str(v)

    text = [[cell(v) for v in r] for r in rows]
    numeric = [all(isinstance(r[i], int | float | decimal.Decimal) and not isinstance(r[i], bool)
                   for r in rows if r[i] is not None) and rows for i in range(len(header))]
    widths = [max([len(h), *(len(r[i]) for r in text)]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if numeric[i] else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in text)])


def _grouped(number: str) -> str:
    """A number's text with its integer digits grouped (``80470.25`` -> ``80,470.25``)."""
    if "e" in number or "E" in number or not number.lstrip("-").replace(".", "").isdigit():
        return number                                   # 1e-07, nan, inf: as they are
    sign, digits = ("-", number[1:]) if number.startswith("-") else ("", number)
    whole, dot, fraction = digits.partition(".")
    return f"{sign}{int(whole):,}{dot}{fraction}"


def render(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str = "table",
           limit: int = 50) -> Iterator[str]:
    """A result in pieces of text, each ending with a newline.

    Args:
        columns: the column names (none: a statement without a result, ``OK``).
        rows: the rows, read lazily (a table reads at most ``limit + 1``).
        fmt: ``table`` (aligned, digits grouped, a footer with the row count that says
            when rows were cut), ``csv`` (a header line, then RFC 4180 rows, NULL as an
            empty field) or ``json`` (JSON Lines; decimals, dates and timestamps as
            strings).
        limit: most rows in a table.

    Raises:
        ConfigError: an unknown format.
    """
    check_format(fmt)
    if fmt == "table":
        taken = [tuple(r) for r in itertools.islice(rows, limit + 1)]
        shown = taken[:limit]
        body = format_table(columns, shown, exact=True) if columns else "OK"
        more = f"; the first {limit} shown, --limit N for more" if len(taken) > limit else ""
        yield f"{body}\n({len(shown)} row{'s' if len(shown) != 1 else ''}{more})\n"
        return
    if fmt == "csv":
        buffer = io.StringIO()
        out = csv.writer(buffer, lineterminator="\n")
        out.writerow(columns)
        for row in rows:
            out.writerow(["" if v is None else _csv_value(v) for v in row])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        yield buffer.getvalue()
        return
    for row in rows:
        values = row.asDict(recursive=True) if hasattr(row, "asDict") \
            else dict(zip(columns, row, strict=True))
        yield json.dumps(values, default=_json_value) + "\n"


def _csv_value(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _json_value(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, bytes | bytearray):
        return v.hex()
    return str(v)                                        # Decimal: every digit, as text
