"""Text sources: a Wikipedia dump, the Lee corpus, the KJV Bible, and word-pair sets."""

from __future__ import annotations

import bz2
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pandas as pd

from lakehouse.sources.base import (
    FrameBuilder,
    ParseOptions,
    RecordError,
    parse_lines,
    reject_file,
    split_fields,
)

_CHAPTER = re.compile(r"^(?P<book>\S.*?) (?P<chapter>\d+)$")
_VERSE = re.compile(r"^\s+(?P<verse>\d+) (?P<text>.*)$")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_wiki_dump(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Parse a MediaWiki XML dump (bz2): one document per ``<page>`` (option ``corpus``).

    A damaged or truncated dump keeps the pages read before the damage and sends
    one record naming the damage to quarantine.
    """
    builder = FrameBuilder(options)
    corpus = options.get("corpus", "enwiki")
    pages = 0
    try:
        with bz2.open(path, "rb") as fh:
            for _, elem in ET.iterparse(fh, events=("end",)):
                if _local(elem.tag) != "page":
                    continue
                pages += 1
                fields = {_local(child.tag): child for child in elem}
                revision = {_local(c.tag): c for c in fields.get("revision", [])}
                text_elem = revision.get("text")
                builder.ok(pages, {
                    "corpus": corpus,
                    "doc_id": (fields["id"].text if "id" in fields else None),
                    "title": fields["title"].text if "title" in fields else None,
                    "text": text_elem.text if text_elem is not None else None,
                })
                elem.clear()
                if builder.full():
                    yield builder.frame()
    except (OSError, EOFError, ET.ParseError) as exc:
        builder.reject(pages + 1, f"dump unreadable after {pages} pages: {exc}", path)
    if pages == 0 and not builder.rows:
        builder.reject(0, "no <page> elements in the dump", path)
    yield builder.frame()


def parse_line_documents(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Parse a corpus with one document per line (option ``corpus``)."""
    corpus = options.get("corpus", "lee")

    def parse_line(text: str, number: int) -> dict[str, Any] | None:
        if not text.strip():
            raise RecordError("blank document")
        return {"corpus": corpus, "doc_id": str(number), "title": None, "text": text.strip()}

    yield from parse_lines(path, options, parse_line)


def parse_bible(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Read the KJV text through the ``bible`` tool (option ``command``): a document per chapter."""
    command = [options.get("command", "bible"), "-l100000", "-p",
               path.rsplit("/", 1)[0] or "/", "-d", path.rsplit("/", 1)[-1],
               "gen1:1-rev22:21"]
    try:
        out = subprocess.run(command, capture_output=True, check=True, timeout=600).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        yield from reject_file(path, options, f"cannot run {' '.join(command)}: {exc}")
        return
    builder = FrameBuilder(options)
    chapter: dict[str, Any] | None = None
    chapter_line = 0
    for number, raw in enumerate(out.decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        if _CHAPTER.match(raw) is not None:
            if chapter is not None:
                builder.ok(chapter_line, chapter)
            chapter = {"corpus": options.get("corpus", "bible"), "doc_id": raw, "title": raw,
                       "text": ""}
            chapter_line = number
        elif (verse := _VERSE.match(raw)) is not None and chapter is not None:
            chapter["text"] += (" " if chapter["text"] else "") + verse["text"]
        elif chapter is not None:
            chapter["text"] += " " + raw.strip()
        else:
            builder.reject(number, "text before the first chapter heading", raw)
    if chapter is not None:
        builder.ok(chapter_line, chapter)
    else:
        builder.reject(0, "the bible tool printed no chapters", path)
    yield builder.frame()


def parse_analogies(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Parse ``questions-words.txt``: ``: section`` headings and ``a b c d`` lines."""
    section: list[str | None] = [None]

    def parse_line(text: str, number: int) -> dict[str, Any] | None:
        if text.startswith(":"):
            section[0] = text[1:].strip()
            return None
        if section[0] is None:
            raise RecordError("analogy before the first ': section' heading")
        a, b, c, d = split_fields(text.strip(), " ", 4)
        return {"line_no": number, "section": section[0], "a": a, "b": b, "c": c, "d": d}

    yield from parse_lines(path, options, parse_line)


def parse_word_pairs(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Parse rated word pairs: ``word1<TAB>word2<TAB>score`` lines (option ``dataset``)."""
    dataset = options.get("dataset")

    def parse_line(text: str, number: int) -> dict[str, Any] | None:
        if text.startswith("#") or not text.strip():
            return None
        word1, word2, score = split_fields(text, "\t", 3)
        return {"dataset": dataset, "word1": word1.lower(), "word2": word2.lower(), "score": score}

    yield from parse_lines(path, options, parse_line)

