"""Parser plug-ins: readers for formats Spark cannot read, chosen by name in the catalog.

A catalog entry with ``source.parser: NAME`` has its files parsed on executors by
``PARSERS[NAME]``, one task per file. A parser is a top-level function
``parse(path, options) -> Iterator[pandas.DataFrame]`` that fills the columns the
entry's schema declares (see :mod:`lakehouse.sources.base`); the entry's
``source.options`` reach it as :attr:`ParseOptions.extra`. Formats Spark reads
(CSV, JSON lines, Parquet, text, binary files) need no parser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pandas as pd
from pyspark.sql.types import StructField

from lakehouse.errors import SourceError
from lakehouse.sources.base import ParseOptions
from lakehouse.sources.images import parse_idx
from lakehouse.sources.series import parse_long_panel, parse_stream_csv, parse_wide_panel
from lakehouse.sources.tabular import parse_pickled_frame, parse_sklearn_csv
from lakehouse.sources.text import (
    parse_analogies,
    parse_bible,
    parse_line_documents,
    parse_wiki_dump,
    parse_word_pairs,
)

__all__ = ["PARSERS", "ParseOptions", "get_parser", "parse_options"]

Parser = Callable[[str, ParseOptions], Iterator[pd.DataFrame]]

PARSERS: dict[str, Parser] = {
    "sklearn_csv": parse_sklearn_csv,
    "pickled_frame": parse_pickled_frame,
    "idx": parse_idx,
    "wiki_dump": parse_wiki_dump,
    "line_documents": parse_line_documents,
    "bible": parse_bible,
    "analogies": parse_analogies,
    "word_pairs": parse_word_pairs,
    "long_panel": parse_long_panel,
    "wide_panel": parse_wide_panel,
    "stream_csv": parse_stream_csv,
}


def get_parser(name: str) -> Parser:
    """Look up a parser plug-in, or raise SourceError listing the known ones."""
    try:
        return PARSERS[name]
    except KeyError:
        raise SourceError(f"unknown parser {name!r}; known parsers: {', '.join(PARSERS)}") \
            from None


def parser_help(name: str) -> str:
    """The first line of a parser's docstring."""
    return (get_parser(name).__doc__ or "").strip().splitlines()[0]


def parse_options(fields: list[StructField], options: dict[str, str], batch_rows: int,
                  max_raw_chars: int) -> ParseOptions:
    """Plain, picklable parse options for executors.

    Args:
        fields: the bronze data columns the parser must fill.
        options: the entry's ``source.options``.
        batch_rows: rows per frame handed to Spark.
        max_raw_chars: longest raw text kept per rejected record.

    Returns:
        The parse options.
    """
    return ParseOptions(
        columns=tuple(f.name for f in fields),
        kinds=tuple(f.dataType.simpleString() for f in fields),
        nullable=tuple(f.nullable for f in fields),
        batch_rows=batch_rows,
        max_raw_chars=max_raw_chars,
        extra=tuple(sorted(options.items())),
    )
