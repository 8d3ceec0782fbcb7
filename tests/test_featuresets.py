"""The feature-set contract: one module per kind, typed settings, one way to build once."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import pytest

from lakehouse import delta
from lakehouse.errors import ConfigError, SchemaMismatchError
from lakehouse.featuresets import KINDS, ROLES, build_features, feature_sets, kind
from lakehouse.featuresets.contract import Kind, default_partitions
from lakehouse.featuresets.declared import (
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    Split,
    features_for_scoring,
    fit,
    prepare,
)
from lakehouse.problems import Problems
from tests.helpers import silver_spec, with_datasets


def _months(n: int) -> list[dt.date]:
    return [dt.date(2020 + i // 12, i % 12 + 1, 1) for i in range(n)]


# Per kind: a tiny entry (its silver columns as DDL, its roles and declaration), its
# silver rows, and a change of declaration that must build a new version.
CASES = {
    "tabular": ("id BIGINT NOT NULL, x DOUBLE, y STRING", {"id": "id"},
                {"label": "y", "numeric": ["x"]},
                [(i, float(i % 7), "ab"[i % 2]) for i in range(40)],
                {"label": "y", "numeric": ["x"], "impute": "median"}),
    "image": ("id BIGINT NOT NULL, px BINARY, y INT", {"id": "id", "image": "px"},
              {"label": "y", "image": {"column": "px", "height": 2, "width": 2}},
              [(i, bytes([i % 256, 1, 2, 3]), i % 2) for i in range(40)],
              {"label": "y", "image": {"column": "px", "height": 2, "width": 2},
               "split": {"by": "hash", "val_pct": 20}}),
    "text": ("id BIGINT NOT NULL, body STRING", {"id": "id", "text": "body"},
             {"min_count": 1},
             [(i, "the cat sat on the mat " * (1 + i % 3)) for i in range(20)],
             {"min_count": 2}),
    "series": ("item STRING NOT NULL, month DATE NOT NULL, v DOUBLE",
               {"item_id": "item", "timestamp": "month", "target": "v"},
               {"freq": "month", "context_length": 3, "prediction_length": 2},
               [(s, m, float(k + i)) for k, s in enumerate(["a", "b"])
                for i, m in enumerate(_months(12))],
               {"freq": "month", "context_length": 4, "prediction_length": 2}),
    "stream": ("t BIGINT NOT NULL, v DOUBLE", {"order": "t", "values": "v"},
               {"shingle_size": 3}, [(i, float(i % 5)) for i in range(30)],
               {"shingle_size": 4}),
}


def _declare(spark, cfg, name: str, features: dict, write: bool = True):
    ddl, roles, _, rows, _ = CASES[name]
    keys = [ddl.split()[0]] if name != "series" else ["item", "month"]
    cfg = with_datasets(cfg, {f"tiny_{name}": {
        "kind": name, "roles": roles, "features": features,
        "source": {"files": "/landing/nowhere/*.csv", "format": "csv", "schema": ddl},
        "silver": {"keys": keys}}})
    if write:
        spec = silver_spec(spark, cfg, f"tiny_{name}")
        target = delta.ensure_table(spark, spec, cfg.catalog.database)
        spark.createDataFrame(rows, spec.schema).write.format("delta").mode("append") \
            .saveAsTable(target)
    return cfg


def test_every_kind_is_one_module_with_typed_settings_and_roles():
    assert set(KINDS) == set(ROLES)
    for name in KINDS:
        k = kind(name)
        assert isinstance(k, Kind) and k.name == name
        assert type(k).__module__ == f"lakehouse.featuresets.{name}"
        assert dataclasses.is_dataclass(k.settings) and k.settings.__dataclass_params__.frozen
    with pytest.raises(ConfigError, match="unknown kind 'graph'; kinds: tabular, image"):
        kind("graph")


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_builds_once_per_input_and_declaration(spark, cfg, name):
    """The same declaration on the same rows builds nothing; a changed one a new version,
    and going back to the first builds again (the key is the declaration, not a count)."""
    _, _, first, _, changed = CASES[name]
    cfg = _declare(spark, cfg, name, first)
    dataset = f"tiny_{name}"
    assert feature_sets(cfg)[dataset][0] is kind(name)
    built = build_features(spark, cfg, dataset)
    table = built.table
    assert built.rows > 0 and built.version == delta.snapshot(spark, table).data_version
    commits = delta.current_version(spark, table)
    key = delta.commit_json(spark, table, built.version)["key"]
    assert key["silver_version"] == delta.snapshot(
        spark, f"{cfg.catalog.database}.silver_{dataset}").data_version

    again = build_features(spark, cfg, dataset)
    assert again == built and delta.current_version(spark, table) == commits

    other = build_features(spark, _declare(spark, cfg, name, changed, write=False), dataset)
    assert other.version > built.version and other.table == table
    assert delta.commit_json(spark, table, other.version)["key"] != key
    back = build_features(spark, cfg, dataset)
    assert back.version > other.version and back.rows == built.rows
    files = delta.read_version(spark, table, back.version).inputFiles()
    per_split = Counter(path.split("split=")[1].split("/")[0] for path in files)
    assert 0 < max(per_split.values()) <= default_partitions(cfg)


def test_settings_problems_are_collected_with_their_keys(spark, cfg):
    """The catalog check collects every kind's problems in one structure, by key."""
    from lakehouse.dataset_check import check_dataset

    problems = Problems()
    for name, bad in (("series", {"freq": "fortnight", "context_length": 3,
                                  "prediction_length": 2}),
                      ("stream", {"shingle_size": 0}),
                      ("text", {"min_count": 1, "lags": 2}),
                      ("tabular", {"label": "y", "numeric": ["x"], "impute": "mode",
                                   "split": {"by": "coin"}})):
        entry = _declare(spark, cfg, name, bad, write=False).datasets[f"tiny_{name}"]
        check_dataset(spark, entry, problems)
    # (The entries' landing folder does not exist either: that is a problem of its own.)
    assert [p for p in problems.items if ".features" in p] == [
        "datasets.tiny_series.features.freq: 'fortnight' is not a frequency; write one of "
        "minute, hour, day, week, month, quarter, year, optionally after a whole number "
        "(for example '30 minutes')",
        "datasets.tiny_stream.features.shingle_size: 0 is not a whole number >= 1",
        "datasets.tiny_text.features: unknown key(s) lags; text features take min_count, "
        "max_sentence_length, corpora",
        "datasets.tiny_tabular.features.impute: 'mode' is not one of mean, median, zero",
        "datasets.tiny_tabular.features.split.by: 'coin' is not one of hash, column, time",
    ]


def test_a_parameter_over_the_declaration_is_typed_and_named(spark, cfg):
    cfg = _declare(spark, cfg, "stream", {"shingle_size": 3}, write=False)
    with pytest.raises(ConfigError, match="stream features: unknown parameter.*window"):
        build_features(spark, cfg, "tiny_stream", params={"window": 3})
    with pytest.raises(ConfigError, match=r"tiny_stream.features.shingle_size: 'x' is not "):
        build_features(spark, cfg, "tiny_stream", params={"shingle_size": "x"})
    with pytest.raises(ConfigError, match="partitions must be a whole number"):
        build_features(spark, cfg, "tiny_stream", params={"partitions": "many"})
    settings = kind("stream").settings_of(cfg.datasets["tiny_stream"], {"shingle_size": 5})
    assert settings == kind("stream").settings(shingle_size=5)


def test_the_transform_without_spark_gives_the_features_spark_gives(spark):
    rows = [(i, x, c, flag, arr) for i, (x, c, flag, arr) in enumerate(
        [(2.5, "a", True, [1.0, 2.0]), (None, "b", False, [3.0]),
         (float("nan"), "zz", None, None), (7.0, None, True, [5.0, 6.0]),
         (1.0, "a", False, [0.5, float("nan")])] * 4)]
    df = spark.createDataFrame(rows, "id BIGINT, x DOUBLE, c STRING, flag BOOLEAN, "
                                     "arr ARRAY<DOUBLE>")
    spec = FeatureSpec(
        dataset="t", id="id", label="id % 2",
        numeric=(NumericFeature("x", "x"), NumericFeature("twice", "x * 2 + 1"),
                 NumericFeature("arr", "arr")),
        categorical=(CategoricalFeature("c", "c", max_categories=2),
                     CategoricalFeature("flag", "flag", encode="index")),
        split=Split(key="id", val_pct=0, test_pct=0))
    transform = fit(prepare(df, spec), spec)
    assert transform.widths == (1, 1, 2)
    want = {r["row_id"]: r["features"] for r in features_for_scoring(df, transform).collect()}
    frame = df.toPandas()
    frame["twice"] = frame["x"] * 2 + 1        # a SQL feature's value, under its name
    got = transform.features_of(frame)
    assert got.shape == (20, len(transform.feature_names))
    for row_id, vector in zip(frame["id"], got, strict=True):
        assert list(vector) == pytest.approx(want[row_id], abs=1e-6)
    # Without the SQL feature's column, Spark's SQL computes it from the others.
    assert transform.features_of(frame.drop(columns=["twice"])).tolist() == got.tolist()
    with pytest.raises(SchemaMismatchError, match="x, twice are SQL over columns the rows lack"):
        transform.features_of(frame.drop(columns=["twice", "x"]))
