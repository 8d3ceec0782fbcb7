"""Parsers on small crafted files and on the real packaged files (no Spark)."""

import bz2
import gzip
import struct

import pandas as pd
import pytest

from lakehouse.config import load_config
from lakehouse.errors import SourceError
from lakehouse.landing import source_patterns
from lakehouse.sources import get_parser, parse_options
from lakehouse.sources.base import ERROR, RAW, RECORD

CFG = load_config(["ingest.batch_rows=7"], environ={})


@pytest.fixture(scope="module")
def fields(spark):
    """Each bundled entry's bronze columns, parsed from its DDL by Spark."""
    from lakehouse.dataset_check import parse_ddl

    return {name: parse_ddl(spark, e.source.schema) for name, e in CFG.datasets.items()}


@pytest.fixture
def parse(fields):
    def run(name: str, path) -> pd.DataFrame:
        entry = CFG.datasets[name]
        opts = parse_options(fields[name], dict(entry.source.options), 7, 20000)
        frames = get_parser(entry.source.parser)(str(path), opts)
        return pd.concat(list(frames), ignore_index=True)

    return run


def good(df):
    return df[df[ERROR].isna()]


def bad(df):
    return df[df[ERROR].notna()]


def test_sklearn_csv_rejects_bad_rows_with_reasons(parse, tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("4,2,no,yes\n1.0,2.0,0\n1.0,x,1\n1.0,2.0\n3.0,4.0,7\n5.5,6.5,1\n")
    df = parse("breast_cancer", f)
    assert good(df)["features"].tolist() == [[1.0, 2.0], [5.5, 6.5]]
    assert good(df)["label_name"].tolist() == ["no", "yes"]
    reasons = dict(zip(bad(df)[RECORD], bad(df)[ERROR], strict=True))
    assert set(reasons) == {3, 4, 5}
    assert "could not convert" in reasons[3] and "features" in reasons[3]
    assert reasons[4] == "expected 3 fields, found 2"
    assert "class index below 2" in reasons[5]
    assert bad(df).set_index(RECORD).loc[4, RAW] == "1.0,2.0"


def test_empty_file_is_one_quarantined_record(parse, tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("")
    df = parse("mitdb", f)
    assert len(df) == 1 and "empty file" in df[ERROR].iloc[0]


def test_undecodable_line_is_rejected_not_dropped(parse, tmp_path):
    f = tmp_path / "s.csv"
    f.write_bytes(b"data,label\n0.5,0\n\xff\xfe,1\nabc,0\n0.7,1\n")
    df = parse("mitdb", f)
    assert good(df)["value"].tolist() == [0.5, 0.7]
    assert good(df)["t"].tolist() == [0, 3]
    why = bad(df).set_index(RECORD)[ERROR]
    assert "not valid UTF-8" in why[3]
    assert why[4] == "column 'value': 'abc' is not a valid double"


def test_stream_header_must_be_known(parse, tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("x,y\n1,0\n")
    df = parse("mitdb", f)
    assert "unexpected header" in bad(df)[ERROR].iloc[0]


def _idx(path, magic, dims, payload, declared=None):
    header = struct.pack(">I", magic)
    header += struct.pack(f">{len(dims)}I", declared or dims[0], *dims[1:])
    with gzip.open(path, "wb") as fh:
        fh.write(header + payload)


def test_idx_truncated_images_are_quarantined(parse, tmp_path):
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    _idx(images, 2051, (5, 28, 28), bytes(range(256)) * 9, declared=5)
    _idx(labels, 2049, (5,), bytes([1, 2, 3, 4, 5]))
    df = parse("fashion_mnist", images)
    # 2304 bytes hold 2 complete 784-byte images; 3 declared images are missing.
    assert good(df)["label"].tolist() == [1, 2]
    assert all(len(p) == 784 for p in good(df)["pixels"])
    assert "header declares 5 images" in bad(df)[ERROR].iloc[0]
    assert "only 2 complete" in bad(df)[ERROR].iloc[0]


def test_damaged_gzip_keeps_what_was_readable(parse, tmp_path):
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    _idx(images, 2051, (3, 28, 28), bytes(784 * 3))
    _idx(labels, 2049, (3,), bytes([0, 1, 2]))
    images.write_bytes(images.read_bytes()[:-12])  # cut the gzip trailer and some data
    df = parse("fashion_mnist", images)
    assert len(good(df)) + len(bad(df)) >= 1
    assert bad(df)[ERROR].str.contains("truncated|damaged").all()
    assert len(good(df)) < 3


def test_not_an_idx_file(parse, tmp_path):
    images = tmp_path / "train-images-idx3-ubyte.gz"
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    images.write_bytes(b"plain text, not gzip")
    df = parse("fashion_mnist", images)
    assert len(df) == 1 and "cannot read IDX" in df[ERROR].iloc[0]


def test_truncated_wiki_dump_keeps_complete_pages(parse, tmp_path):
    page = "<page><title>T{0}</title><id>{0}</id><revision><text>body {0}</text></revision></page>"
    xml = "<mediawiki>" + "".join(page.format(i) for i in range(1, 4)) + "<page><title>cut"
    dump = tmp_path / "w.xml.bz2"
    dump.write_bytes(bz2.compress(xml.encode()))
    df = parse("enwiki", dump)
    assert good(df)["title"].tolist() == ["T1", "T2", "T3"]
    assert good(df)["text"].tolist() == ["body 1", "body 2", "body 3"]
    assert "unreadable after 3 pages" in bad(df)[ERROR].iloc[0]


def test_analogies_sections_and_bad_lines(parse, tmp_path):
    f = tmp_path / "q.txt"
    f.write_text("a b c d\n: capitals\nAthens Greece Oslo Norway\nonly three words\n")
    df = parse("analogies", f)
    assert good(df)[["section", "a", "d"]].values.tolist() == [["capitals", "Athens", "Norway"]]
    assert bad(df)[ERROR].tolist() == ["analogy before the first ': section' heading",
                                       "expected 4 fields, found 3"]


def test_frames_reject_non_numeric_cells(parse, tmp_path):
    import lzma
    import pickle

    frame = pd.DataFrame({"rownames": [1, 2, 3], "Month": ["2001 Jan", "2001 Feb", "someday"],
                          "Series_ID": ["A", "A", "A"], "Title": ["t"] * 3,
                          "Employed": [1.5, "lots", 3.0]})
    f = tmp_path / "p.pkl.compress"
    with lzma.open(f, "wb") as fh:
        pickle.dump(frame, fh)
    df = parse("us_employment", f)
    assert good(df)["period"].astype(str).tolist() == ["2001-01-01"]
    why = bad(df).set_index(RECORD)[ERROR]
    assert why[2] == "column 'value': value is not a valid double"
    assert why[3] == "column 'period': value is not a valid date"
    assert "someday" in bad(df).set_index(RECORD).loc[3, RAW]


def test_long_panel_joins_several_time_and_name_columns(fields, tmp_path):
    import lzma
    import pickle

    import numpy as np

    from lakehouse.sources.series import parse_long_panel

    frame = pd.DataFrame({"year": [2000, 2000, 2015], "month": [1, 12, 7],
                          "disease": ["Measles", "Measles", None], "state": ["Ohio"] * 3,
                          "count": [3.0, np.nan, 5.0]})
    f = tmp_path / "p.pkl.compress"
    with lzma.open(f, "wb") as fh:
        pickle.dump(frame, fh)
    spec = CFG.datasets["txhousing"].source
    options = parse_options(
        fields["txhousing"], {**spec.options, "time": "year, month",
                              "item_id": "disease,state", "title": "state", "value": "count"},
        100, 1000)
    df = pd.concat(parse_long_panel(str(f), options), ignore_index=True)
    assert good(df)["period"].astype(str).tolist() == ["2000-01-01", "2000-12-01"]
    assert good(df)["series_id"].tolist() == ["Measles / Ohio"] * 2
    assert np.isnan(good(df)["value"].tolist()[1])           # a missing target is kept
    # A missing part leaves the row without a name: rejected, the column named.
    assert bad(df)[ERROR].str.contains("series_id").tolist() == [True]


@pytest.mark.parametrize("name,expected", [
    ("breast_cancer", 569), ("wine", 178), ("mitdb", 7500), ("kdd_tsad_135", 8701),
    ("wordsim353", 353), ("simlex999", 999), ("visnights", 1520), ("lee", 300),
    ("analogies", 19544), ("txhousing", 8602), ("infant_mortality", 10545),
])
def test_real_source_parses_completely(parse, name, expected):
    files = source_patterns(CFG.datasets[name])
    df = pd.concat([parse(name, f) for f in files], ignore_index=True)
    assert len(good(df)) == expected
    assert bad(df).empty


def test_missing_package_is_named():
    import dataclasses

    entry = CFG.datasets["mitdb"]
    gone = dataclasses.replace(entry, source=dataclasses.replace(entry.source, package="nopkg"))
    with pytest.raises(SourceError, match="mitdb.*source.package 'nopkg' is not installed"):
        source_patterns(gone)


def test_unknown_parser_lists_known_ones():
    with pytest.raises(SourceError, match="unknown parser 'nope'; known parsers: sklearn_csv"):
        get_parser("nope")
