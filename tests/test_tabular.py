"""Declared tabular feature sets: a data set nobody bundled, declared in YAML, fitted on
its training split, trained with the MLP (classification and regression, 2 Horovod
ranks) and scored on raw rows with the stored transform."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.curate import curate
from lakehouse.dataset_check import check_datasets
from lakehouse.datasets import parse_datasets
from lakehouse.errors import CatalogError, ConfigError
from lakehouse.featuresets import build_features
from lakehouse.featuresets.declared import OTHER, parse_features, transform_of
from lakehouse.ingest import ingest
from models.runner import train
from models.scoring import score
from models.store import TRANSFORM_FILE
from tests.helpers import with_datasets

SHOPS_DDL = ("shop_id BIGINT NOT NULL, part STRING, city STRING, size DOUBLE, age INT, "
             "busy STRING, revenue DOUBLE")
CITIES = {"north": 4.0, "south": -2.0, "east": 1.0, "west": 0.0}
FAST = {"hidden": [16], "batch_size": 16, "epochs": 30, "patience": 30,
        "learning_rate": 0.01}


def _shops(folder: Path, n: int = 480, seed: int = 3) -> list[dict]:
    """Shops in a CSV: sizes sometimes missing, a city seen only in the test part."""
    rng = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        part = "test" if i % 5 == 0 else "val" if i % 5 == 1 else "train"
        city = "harbour" if part == "test" and i % 3 == 0 else rng.choice([*CITIES, None])
        size = round(rng.uniform(0, 10), 2)
        age = rng.randint(1, 40)
        revenue = 3 * size + CITIES.get(city or "", 0.0) + 0.2 * age + rng.gauss(0, 0.5)
        rows.append({"shop_id": i, "part": part, "city": city,
                     "size": None if i % 11 == 0 else size, "age": age,
                     "busy": "yes" if size > 5 else "no", "revenue": round(revenue, 3)})
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["shop_id,part,city,size,age,busy,revenue"]
    lines += [",".join("" if r[k] is None else str(r[k]) for k in
                       ("shop_id", "part", "city", "size", "age", "busy", "revenue"))
              for r in rows]
    (folder / "shops.csv").write_text("\n".join(lines) + "\n")
    return rows


def _entry(folder: Path, **features) -> dict:
    return {"kind": "tabular", "roles": {"id": "shop_id"},
            "source": {"files": str(folder), "format": "csv", "options": {"header": True},
                       "schema": SHOPS_DDL},
            "silver": {"keys": ["shop_id"]},
            "features": {"numeric": ["size", {"name": "age", "impute": "median"},
                                     {"name": "size_per_year", "expr": "size / age"}],
                         "categorical": ["city"],
                         "split": {"by": "column", "column": "part"}, **features}}


def _entries(folder: Path) -> dict:
    return {"shops": _entry(folder, label="busy"),
            "shop_revenue": _entry(folder, label="revenue", task="regression")}


@pytest.mark.parametrize(("features", "message"), [
    ({"label": "busy", "task": "ranking"}, r"features.task: 'ranking' is not one of"),
    ({"label": "busy", "colour": 1}, r"features.colour: unknown key"),
    ({"numeric": ["size"]}, r"features.label: expected a column or SQL expression"),
    ({"label": "busy", "categorical": [{"name": "city", "encode": "hash"}]},
     r"features.categorical\[0\].encode: 'hash' is not one of onehot, index"),
    ({"label": "busy", "numeric": ["size"], "split": {"by": "time", "column": "t"}},
     r"features.split: a split by time needs val_from and test_from"),
    ({"label": "busy", "numeric": ["size", "size"]}, r"feature 'size' is declared twice"),
    ({"label": "busy", "numeric": [{"name": "size", "impute": "mode"}]},
     r"features.numeric\[0\].impute: 'mode' is not one of mean, median, zero"),
])
def test_bad_declarations_name_the_data_set_and_key(tmp_path, features, message):
    entry = _entry(tmp_path)
    entry["features"] = features
    parsed, problems = parse_datasets({"shops": entry})
    assert not problems
    with pytest.raises(ConfigError, match=message) as err:
        parse_features(parsed["shops"])
    assert "data set 'shops'" in str(err.value)


def test_catalog_check_names_feature_sql_that_does_not_analyse(spark, cfg, tmp_path):
    _shops(tmp_path / "landing")
    entries = _entries(tmp_path / "landing")
    entries["shops"]["features"]["numeric"].append({"name": "bad", "expr": "sqrt(floor_area)"})
    entries["shops"]["features"]["where"] = "city ="
    with pytest.raises(CatalogError) as err:
        check_datasets(spark, with_datasets(cfg, entries), ["shops", "shop_revenue"])
    problems = str(err.value).splitlines()[1:]
    assert [p.split(":")[0].strip() for p in problems] == [
        "datasets.shops.features.numeric.bad", "datasets.shops.features.where"]


def test_fitted_on_the_training_split_only(spark, cfg, tmp_path):
    rows = _shops(tmp_path / "landing")
    cfg = with_datasets(cfg, _entries(tmp_path / "landing"))
    ingest(spark, cfg, ["shops"], "b1")
    curate(spark, cfg, ["shops"], "b1")
    built = build_features(spark, cfg, "shops", partitions=2)
    transform = transform_of(spark, built.table, built.version)

    train_rows = [r for r in rows if r["part"] == "train"]
    sizes = [r["size"] for r in train_rows if r["size"] is not None]
    assert transform.fill[0] == pytest.approx(np.mean(sizes))            # mean of train only
    ages = sorted(r["age"] for r in train_rows)
    assert abs(transform.fill[1] - ages[len(ages) // 2]) <= 1             # median
    assert set(transform.vocabularies[0]) == set(CITIES)                 # 'harbour': test only
    assert transform.classes == ("no", "yes")
    assert built.feature_names == (
        "size", "age", "size_per_year", *(f"city={c}" for c in transform.vocabularies[0]),
        f"city={OTHER}")

    gold = {r["row_id"]: r for r in spark.table(built.table).collect()}
    assert len(gold) == len(rows)
    by_id = {r["shop_id"]: r for r in rows}
    for shop_id, g in gold.items():
        source = by_id[shop_id]
        assert g["split"] == source["part"]
        assert g["label"] == (1 if source["busy"] == "yes" else 0)
        size = source["size"] if source["size"] is not None else transform.fill[0]
        assert g["features"][0] == pytest.approx(size, rel=1e-5)
        onehot = g["features"][3:]
        assert sum(onehot) == 1.0
        assert onehot[-1] == (1.0 if source["city"] in (None, "harbour") else 0.0)

    again = build_features(spark, cfg, "shops", partitions=2)           # same rows, same spec
    assert again.version == built.version
    other = dict(_entries(tmp_path / "landing"))
    other["shops"]["features"]["categorical"] = [{"name": "city", "encode": "index"}]
    rebuilt = build_features(spark, with_datasets(cfg, other), "shops", partitions=2)
    assert rebuilt.version > built.version and len(rebuilt.feature_names) == 4

    other["shops"]["features"].update(label="revenue", task="regression")   # task switch
    regression = build_features(spark, with_datasets(cfg, other), "shops", partitions=2)
    assert regression.version > rebuilt.version
    assert spark.table(built.table).schema["label"].dataType.simpleString() == "float"
    revenue = {r["shop_id"]: r["revenue"] for r in rows}
    assert all(g["label"] == pytest.approx(revenue[g["row_id"]], rel=1e-5)
               for g in spark.table(built.table).collect())
    pinned = delta.read_version(spark, built.table, built.version)      # earlier version kept
    assert pinned.schema["label"].dataType.simpleString() == "int"


@pytest.mark.slow
def test_mlp_trains_and_scores_a_declared_data_set(spark, cfg, tmp_path, monkeypatch):
    _shops(tmp_path / "landing")
    cfg = with_datasets(cfg, _entries(tmp_path / "landing"))
    ingest(spark, cfg, ["shops", "shop_revenue"], "b1")
    curate(spark, cfg, ["shops", "shop_revenue"], "b1")
    db = cfg.catalog.database

    # Classification of a string label, with categories and missing values.
    build_features(spark, cfg, "shops", partitions=2)
    result = train(spark, cfg, "mlp", "shops", params=FAST)
    model = result.model
    assert model.metrics["accuracy"] > 0.8 and model.metrics["roc_auc"] > 0.85
    stored = json.loads((Path(model.artifact) / TRANSFORM_FILE).read_text())
    assert stored["classes"] == ["no", "yes"]

    # A new shop in a city nobody trained on, its size missing: scored from raw rows.
    (tmp_path / "landing" / "day2.csv").write_text(
        "shop_id,part,city,size,age,busy,revenue\n9001,train,mars,,12,,\n")
    ingest(spark, cfg, ["shops"], "b2")
    curate(spark, cfg, ["shops"], "b2")
    scored = score(spark, cfg, "mlp", model.name, input_table=f"{db}.silver_shops")
    predictions = spark.table(scored.table).filter(F.col("run_id") == scored.run_id)
    assert predictions.count() == spark.table(f"{db}.silver_shops").count() == 481
    mars = predictions.filter(F.col("row_id") == 9001).first()
    assert mars["prediction"] in (0, 1) and 0.5 <= mars["probability"] <= 1.0
    named = predictions.select("prediction", "prediction_label").distinct().collect()
    assert named and all(r.prediction_label == ["no", "yes"][r.prediction] for r in named)

    # The same inputs again: the registered run is returned, no Horovod job starts.
    def no_ranks(*args, **kwargs):
        raise AssertionError("a registered run started Horovod again")

    monkeypatch.setattr("models.runner.run_ranks", no_ranks)
    assert train(spark, cfg, "mlp", "shops", params=FAST).model.version == model.version
    monkeypatch.undo()

    # Regression of a number: the target in its own units, RMSE against the spread.
    built = build_features(spark, cfg, "shop_revenue", partitions=2)
    assert dict(spark.table(built.table).dtypes)["label"] == "float"
    regression = train(spark, cfg, "mlp", "shop_revenue", params=FAST).model
    test = [r["label"] for r in spark.table(built.table).filter("split = 'test'").collect()]
    assert regression.metrics["rmse"] < 0.6 * np.std(test)
    assert regression.metrics["r2"] > 0.6
    assert (Path(regression.artifact) / "predicted_vs_actual.png").stat().st_size > 0
    values = score(spark, cfg, "mlp", regression.name)
    out = spark.table(values.table).filter(F.col("run_id") == values.run_id)
    assert out.filter(F.col("value").isNull() | F.col("prediction").isNotNull()
                      | F.col("prediction_label").isNotNull()).count() == 0
    assert out.count() == spark.table(built.table).count()

    with pytest.raises(ConfigError, match="task='classification', but feature set "
                                          "'shop_revenue' is a regression"):
        train(spark, cfg, "mlp", "shop_revenue", params={"task": "classification"})
    with pytest.raises(ConfigError, match=r"cnn trains on image data sets; 'shop_revenue' is a "
                                          r"tabular data set \(families for it: mlp\)"):
        train(spark, cfg, "cnn", "shop_revenue")
    for bad, message in (({"hidden": [0]}, r"mlp parameter hidden=\[0\]: must be a list of "
                                           r"whole numbers >= 1"),
                         ({"epochs": "many"}, "mlp parameter value epochs='many': expected an "
                                              "integer"),
                         ({"dropout": 1.5}, "mlp parameter dropout=1.5: must be >= 0.0 and < 1.0"),
                         ({"epochz": 3}, "unknown mlp parameter key 'epochz'")):
        with pytest.raises(ConfigError, match=message):
            train(spark, cfg, "mlp", "shops", params=bad)


def _two_sets(folder: Path) -> dict:
    """One entry of shops declaring two named feature sets: a class and a number."""
    entry = _entry(folder)
    base = entry.pop("features")
    entry["features"] = {"busy": {**base, "label": "busy"},
                         "revenue": {**base, "label": "revenue", "task": "regression"}}
    return entry


def test_named_feature_sets_are_checked_and_named_by_their_key(tmp_path):
    entry = _two_sets(tmp_path)
    entry["features"]["busy"]["task"] = "ranking"
    parsed, problems = parse_datasets({"shop": entry})
    assert not problems and list(parsed["shop"].feature_sets()) == ["shop_busy", "shop_revenue"]
    shop = parsed["shop"]
    with pytest.raises(ConfigError, match=r"datasets.shop.features.busy.task: 'ranking'"):
        parse_features(shop.feature_sets()["shop_busy"], shop.features_key("shop_busy"))
    _, problems = parse_datasets({"shop": _two_sets(tmp_path), "shop_busy": _entry(tmp_path)})
    assert problems == ["datasets.shop.features.busy: feature set 'shop_busy' has the name "
                        "of a data set"]


def test_one_data_set_trains_two_models_from_two_named_feature_sets(spark, cfg, tmp_path):
    _shops(tmp_path / "landing")
    cfg = with_datasets(cfg, {"shop": _two_sets(tmp_path / "landing")})
    ingest(spark, cfg, ["shop"], "b1")
    curate(spark, cfg, ["shop"])
    busy = build_features(spark, cfg, "shop_busy", partitions=2)
    revenue = build_features(spark, cfg, "shop_revenue", partitions=2)
    assert (dict(spark.table(busy.table).dtypes)["label"],
            dict(spark.table(revenue.table).dtypes)["label"]) == ("int", "float")
    assert busy.rows == revenue.rows == 480
    db = cfg.catalog.database
    tables = {r.tableName for r in spark.sql(f"SHOW TABLES IN {db}").collect()}
    assert {t for t in tables if "shop" in t} == {
        "bronze_shop", "silver_shop", "gold_shop_busy", "gold_shop_revenue"}
    quick = {**FAST, "epochs": 3, "patience": 3}
    classes = train(spark, cfg, "mlp", "shop_busy", params=quick).model
    values = train(spark, cfg, "mlp", "shop_revenue", params=quick).model
    assert (classes.name, values.name) == ("shop_busy_mlp", "shop_revenue_mlp")
    assert "roc_auc" in classes.metrics and "rmse" in values.metrics
