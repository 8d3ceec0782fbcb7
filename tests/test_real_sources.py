"""Ingest and curate slices of every real source into Delta (slices keep the suite fast)."""

import gzip
import lzma
import pickle
import struct

import pytest

from lakehouse.curate import curate
from lakehouse.ingest import ingest
from lakehouse.landing import source_patterns
from tests.helpers import with_paths


def _slice_pickle(src: str, dst, rows: int) -> None:
    with lzma.open(src) as fh:
        frame = pickle.load(fh)
    with lzma.open(dst, "wb") as fh:
        pickle.dump(frame.head(rows), fh)


def _slice_idx(src: str, dst, items: int) -> None:
    with gzip.open(src, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    size = 1
    for d in dims[1:]:
        size *= d
    body = data[4 + 4 * ndim: 4 + 4 * ndim + items * size]
    with gzip.open(dst, "wb") as fh:
        fh.write(data[:4] + struct.pack(f">{ndim}I", items, *dims[1:]) + body)


@pytest.fixture
def sliced(cfg, tmp_path):
    """Config whose big sources point at small slices of the real files."""
    flights = tmp_path / "flights.pkl.compress"
    _slice_pickle(source_patterns(cfg.datasets["flights"])[0], flights, 2000)
    diamonds = tmp_path / "diamonds.pkl.compress"
    _slice_pickle(source_patterns(cfg.datasets["diamonds"])[0], diamonds, 1000)
    employment = tmp_path / "us_employment.pkl.compress"
    _slice_pickle(source_patterns(cfg.datasets["us_employment"])[0], employment, 3000)
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte.gz"
            _slice_idx(f"/usr/share/datasets/fashion-mnist/{name}", fashion / name, 50)
    return with_paths(cfg, flights=flights, diamonds=diamonds, us_employment=employment,
                      fashion_mnist=fashion / "*-images-idx3-ubyte.gz")


EXPECTED_BRONZE = {
    "breast_cancer": 569, "wine": 178, "flights": 2000, "diamonds": 1000, "fashion_mnist": 100,
    "enwiki": 206,
    "lee": 300, "bible": 1189, "analogies": 19544, "wordsim353": 353, "simlex999": 999,
    "us_employment": 3000, "visnights": 1520, "mitdb": 7500, "kdd_tsad_135": 8701,
    "txhousing": 8602, "infant_mortality": 10545,
}


@pytest.mark.slow
def test_all_real_sources_ingest_and_curate(spark, sliced):
    cfg, db = sliced, sliced.catalog.database
    results = {r.source: r for r in ingest(spark, cfg, ["all"], "real")}
    assert {s: r.bronze for s, r in results.items()} == EXPECTED_BRONZE
    assert all(r.quarantined == 0 for r in results.values())
    curated = {r.source: r for r in curate(spark, cfg, ["all"])}
    counts = {r["_source"]: r["count"] for r in spark.table(f"{db}.bronze_documents")
              .groupBy("_source").count().collect()}
    assert counts == {"enwiki": 206, "lee": 300, "bible": 1189}
    # Silver holds every valid row once; series values that are missing are quarantined.
    assert spark.table(f"{db}.silver_flights").count() == 2000
    assert spark.table(f"{db}.silver_diamonds").count() == 1000
    assert curated["diamonds"].rejected == 0
    assert spark.table(f"{db}.silver_fashion_mnist").count() == 100
    assert spark.table(f"{db}.silver_streams").count() == 7500 + 8701
    # WordSim-353 rates (money, cash) twice; silver keeps one row per pair (the last line).
    assert spark.table(f"{db}.silver_word_similarity").count() == 352 + 999
    employment = curated["us_employment"]
    assert employment.valid + employment.rejected == 3000
    assert spark.table(f"{db}.silver_series").filter("panel = 'us_employment'").count() == \
        employment.valid
    bible = spark.table(f"{db}.silver_documents").filter("corpus = 'bible'")
    genesis = bible.filter("doc_id = 'Genesis 1'").first()
    assert genesis.text.startswith("In the beginning God created the heaven and the earth.")
    first = spark.table(f"{db}.silver_flights").orderBy("row_id").first()
    assert (first.carrier, first.origin, first.dest, first.arr_delay) == ("UA", "EWR", "IAH", 11.0)
    labels = spark.table(f"{db}.silver_streams").groupBy("stream_id").sum("label").collect()
    assert {r["stream_id"]: r["sum(label)"] for r in labels} == {"mitdb": 352, "kdd_tsad_135": 12}
