"""Declared image feature sets: images of shapes nobody bundled (8x8 grey raw bytes,
32x32 colour PNGs), made here, trained with the CNN on 2 Horovod ranks and scored from
the raw image column."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pyspark.sql import functions as F

from lakehouse.curate import curate
from lakehouse.datasets import parse_datasets
from lakehouse.errors import ConfigError
from lakehouse.featuresets import build_features
from lakehouse.featuresets.declared import decode_image, parse_features, transform_of
from lakehouse.ingest import ingest
from models import tracking
from models.runner import train
from models.scoring import score
from tests.helpers import with_datasets

FAST = {"filters": [8], "dense": 16, "dropout": 0.1, "batch_size": 16, "epochs": 8,
        "patience": 8, "learning_rate": 0.01}


def _marks(rng: random.Random, top: bool) -> bytes:
    """8x8 grey: the bright half is the top or the bottom one."""
    bright = [rng.randint(170, 255) for _ in range(32)]
    dark = [rng.randint(0, 80) for _ in range(32)]
    return bytes(bright + dark if top else dark + bright)


def _tile(rng: random.Random, red: bool) -> bytes:
    """32x32 colour PNG, mostly red or mostly blue, with noise."""
    pixels = np.array([[rng.randint(0, 90) for _ in range(3)] for _ in range(32 * 32)],
                      dtype=np.uint8).reshape(32, 32, 3)
    pixels[:, :, 0 if red else 2] += 150
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


def _write(folder: Path, rows: list[dict], name: str = "day1") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
        ("image_id", pa.int64()), ("part", pa.string()), ("label", pa.string()),
        ("image", pa.binary())])), folder / f"{name}.parquet")


def _entry(folder: Path, encoding: str, shape: tuple[int, int, int], split: dict) -> dict:
    height, width, channels = shape
    return {"kind": "image", "roles": {"id": "image_id", "image": "image", "label": "label"},
            "source": {"files": str(folder), "format": "parquet"},
            "silver": {"keys": ["image_id"]},
            "features": {"label": "label", "split": split,
                         "image": {"column": "image", "encoding": encoding, "height": height,
                                   "width": width, "channels": channels}}}


def test_decode_reads_raw_and_encoded_images_to_the_declared_shape():
    rng = random.Random(1)
    raw = decode_image(_marks(rng, True), "raw", 8, 8, 1)
    assert raw.shape == (64,) and raw[:32].min() > raw[32:].max()
    assert decode_image(b"\x00" * 63, "raw", 8, 8, 1) is None          # one byte short
    png = decode_image(_tile(rng, red=True), "encoded", 32, 32, 3).reshape(32, 32, 3)
    assert png[:, :, 0].mean() > png[:, :, 2].mean() + 0.4
    small = decode_image(_tile(rng, red=False), "encoded", 8, 8, 1)    # resized, grey
    assert small.shape == (64,)
    assert decode_image(b"not an image", "encoded", 8, 8, 1) is None


def test_bad_image_declarations_are_all_named(tmp_path):
    entry = _entry(tmp_path, "gif", (0, 8, 2), {"by": "hash"})
    entry["features"]["numeric"] = ["image"]
    parsed, problems = parse_datasets({"scans": entry})
    assert not problems
    with pytest.raises(ConfigError) as err:
        parse_features(parsed["scans"])
    assert [line.split(":")[0].strip() for line in str(err.value).splitlines()[1:]] == [
        "datasets.scans.features.numeric", "datasets.scans.features.image.encoding",
        "datasets.scans.features.image.height", "datasets.scans.features.image.channels"]
    assert "image features of data set 'scans'" in str(err.value)


def test_cnn_image_shape_must_hold_the_feature_count():
    from models.cnn import FAMILY

    params = FAMILY.check_params({"image_shape": [8, 8, 1]})
    FAMILY.trainer.check(params, 64)
    with pytest.raises(ConfigError, match=r"cnn: image_shape=\[8, 8, 1\] holds 64 numbers, "
                                          "but the feature set has 65 per row"):
        FAMILY.trainer.check(params, 65)
    with pytest.raises(ConfigError, match=r"cnn parameter image_shape=\[8, 8\]: must be 3 "
                                          "whole numbers >= 1"):
        FAMILY.check_params({"image_shape": [8, 8]})


@pytest.mark.slow
def test_cnn_trains_on_images_of_other_shapes_and_scores_raw_images(spark, cfg, tmp_path,
                                                                   monkeypatch):
    rng = random.Random(5)
    marks = [{"image_id": i, "part": "test" if i % 5 == 0 else "train",
              "label": "top" if i % 2 else "bottom", "image": _marks(rng, bool(i % 2))}
             for i in range(1, 241)]
    tiles = [{"image_id": 10_000 + i, "part": None, "label": "red" if i % 2 else "blue",
              "image": _tile(rng, bool(i % 2))} for i in range(200)]
    _write(tmp_path / "marks", marks)
    _write(tmp_path / "tiles", tiles)
    cfg = with_datasets(cfg, {
        "marks": _entry(tmp_path / "marks", "raw", (8, 8, 1),
                        {"by": "column", "column": "part", "val_pct": 20}),
        "tiles": _entry(tmp_path / "tiles", "encoded", (32, 32, 3), {"by": "hash"})})
    ingest(spark, cfg, ["marks", "tiles"], "b1")
    curate(spark, cfg, ["marks", "tiles"], "b1")

    built = build_features(spark, cfg, "marks", partitions=2)
    assert built.n_features == 64 and built.rows == 240
    splits = {r["split"]: r["count"] for r in spark.table(built.table).groupBy("split").count()
              .collect()}
    assert splits["test"] == 48 and splits["val"] > 0 and splits["train"] + splits["val"] == 192
    assert transform_of(spark, built.table, built.version).classes == ("bottom", "top")
    model = train(spark, cfg, "cnn", "marks", params=FAST).model
    assert model.params["image_shape"] == [8, 8, 1]          # from the declaration
    assert model.metrics["accuracy"] > 0.9

    tiles_built = build_features(spark, cfg, "tiles", partitions=2)
    assert tiles_built.n_features == 32 * 32 * 3
    colour = train(spark, cfg, "cnn", "tiles", params=FAST).model
    assert colour.params["image_shape"] == [32, 32, 3]
    assert colour.metrics["accuracy"] > 0.9

    # New images arrive, one of them unreadable: scored from silver's image bytes.
    _write(tmp_path / "tiles", [
        {"image_id": 20_001, "part": None, "label": None, "image": _tile(rng, True)},
        {"image_id": 20_002, "part": None, "label": None, "image": b"\x89PNG broken"}],
        name="day2")
    ingest(spark, cfg, ["tiles"], "b2")
    curate(spark, cfg, ["tiles"], "b2")
    silver = f"{cfg.catalog.database}.silver_tiles"
    result = score(spark, cfg, "cnn", colour.name, input_table=silver)
    predictions = spark.table(result.table).filter(F.col("run_id") == result.run_id)
    assert predictions.count() == spark.table(silver).count() - 1 == 201
    new = predictions.filter(F.col("row_id") == 20_001).first()
    assert new["prediction"] == 1                            # classes (blue, red): red
    # The same raw images through the model's MLflow pyfunc, in this process without
    # Spark: the unreadable one gets no prediction, the others lakeforge score's.
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(cfg))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{colour.name}/{colour.version}")
    images = spark.table(silver).select("image_id", "image").toPandas()
    got = pyfunc.predict(images[["image"]])
    assert len(got) == 202 and got["prediction"].isna().sum() == 1
    want = {r["row_id"]: r for r in predictions.collect()}
    for image_id, (_, row) in zip(images["image_id"], got.iterrows(), strict=True):
        if image_id == 20_002:
            assert row["prediction"] is None or row["prediction"] != row["prediction"]
            continue
        assert row["prediction"] == want[image_id]["prediction"]
        assert row["prediction_label"] == want[image_id]["prediction_label"]
        assert list(row["probabilities"]) == pytest.approx(want[image_id]["probabilities"],
                                                           abs=1e-6)


def test_a_folder_of_images_per_label_quarantines_a_stray_file(spark, cfg, tmp_path):
    rng = random.Random(3)
    for label, red in (("red", True), ("blue", False)):
        (tmp_path / "scans" / label).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "scans" / label / f"{i}.png").write_bytes(_tile(rng, red))
    (tmp_path / "scans" / "README.txt").write_text("scans of the tiles, one folder a colour")
    cfg = with_datasets(cfg, {"scans": {
        "kind": "image", "roles": {"id": "path", "image": "content", "label": "label"},
        "source": {"files": str(tmp_path / "scans"), "format": "binaryFile"},
        "silver": {"keys": ["path"],
                   "select": ["path", "content", "_ingest_batch AS batch",
                              "regexp_extract(path, '/([^/]+)/[^/]+$', 1) AS label"]}}})
    [ingested] = ingest(spark, cfg, ["scans"], "b1")
    assert (ingested.read, ingested.bronze, ingested.quarantined) == (5, 4, 1)
    [stray] = spark.table(f"{cfg.catalog.database}.ops_quarantine").collect()
    assert stray.reason.startswith("not an image Pillow can read: cannot identify image file")
    assert stray.source_file.endswith("README.txt") and '"length":39' in stray.raw
    curate(spark, cfg, ["scans"])
    silver = spark.table(f"{cfg.catalog.database}.silver_scans").collect()
    assert sorted((r.label, r.batch) for r in silver) == [("blue", "b1")] * 2 + [("red", "b1")] * 2
