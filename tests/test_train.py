"""Gold features, the Horovod training runner (2 real ranks) and the model store."""

import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.errors import SchemaMismatchError, TableNotFoundError
from lakehouse.featuresets import build_features
from lakehouse.featuresets.declared import gold_spec
from lakehouse.lakefs import LakeFS
from models.classifier.rank import train_rank
from models.rank import RankSpec, last_checkpoint, save_checkpoint
from models.runner import run_ranks, snapshot_files, train
from models.store import ModelNotFoundError, ModelStore, load_artifact
from tests.helpers import wine_features

FAST = {"hidden": [16], "batch_size": 16, "epochs": 3, "patience": 5, "learning_rate": 0.01}


@pytest.fixture
def wine(spark, cfg):
    return wine_features(spark, cfg)


def test_wine_features_cover_every_row_once(spark, cfg, wine):
    gold = spark.table(wine.table)
    assert (wine.rows, wine.n_features, wine.n_classes) == (178, 13, 3)
    assert gold.select("row_id").distinct().count() == 178
    splits = {r["split"]: r["count"] for r in gold.groupBy("split").count().collect()}
    assert set(splits) == {"train", "val", "test"} and sum(splits.values()) == 178
    assert splits["train"] > splits["val"] and splits["train"] > splits["test"]
    again = build_features(spark, cfg, "wine", partitions=4)
    assert again.version == wine.version        # same silver version: nothing rewritten


@pytest.mark.slow
def test_two_ranks_train_register_and_reload(spark, cfg, wine):
    result = train(spark, cfg, "mlp", "wine", params=FAST)
    ranks = sorted(result.ranks, key=lambda r: r["rank"])
    assert [(r["rank"], r["size"]) for r in ranks] == [(0, 2), (1, 2)]
    # Averaged gradients keep trainable weights identical; the final broadcast aligns
    # the per-rank batch-norm statistics too.
    assert ranks[0]["trainable_weights"] == ranks[1]["trainable_weights"]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["epochs_run"] == 3 and len(result.history["loss"]) == 3
    assert len(ranks[0]["epoch_seconds"]) == 3                # fit's time, split
    assert sum(ranks[0]["epoch_seconds"]) <= ranks[0]["fit_seconds"]
    model = result.model
    assert (model.name, model.version, model.family) == ("wine_mlp", 1, "mlp")
    assert model.training_version == wine.version
    assert model.metrics["accuracy"] >= 0.7                   # 3 balanced classes: chance 0.33
    assert model.metrics["test_rows"] == spark.table(wine.table).filter("split = 'test'").count()

    row = spark.table(f"{cfg.catalog.database}.models").filter("name = 'wine_mlp'").collect()
    assert len(row) == 1 and json.loads(row[0].metrics) == model.metrics
    artifact = Path(row[0].artifact)
    meta = json.loads((artifact / "meta.json").read_text())
    assert (meta["version"], meta["training_version"]) == (1, wine.version)
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (artifact / png).read_bytes()[:4] == b"\x89PNG"

    loaded, record = ModelStore(spark, cfg).load("wine_mlp", "latest")
    test = spark.table(wine.table).filter("split = 'test'").select("features", "label").toPandas()
    probs = loaded.predict(np.stack(test.features.to_numpy()), verbose=0)
    accuracy = float((probs.argmax(axis=1) == test.label.to_numpy()).mean())
    assert accuracy == pytest.approx(record.metrics["accuracy"], abs=1e-6)


def test_snapshot_stays_pinned_after_append(spark, cfg, wine):
    table = wine.table
    pinned = delta.read_version(spark, table, wine.version)
    before = snapshot_files(pinned)
    extra = spark.table(table).filter("split = 'train'").limit(5).withColumn(
        "row_id", F.col("row_id") + 10_000)
    extra.write.format("delta").mode("append").saveAsTable(table)
    assert delta.current_version(spark, table) == wine.version + 1
    assert snapshot_files(delta.read_version(spark, table, wine.version)) == before
    assert delta.read_version(spark, table, wine.version).count() == 178
    assert sum(len(f) for f in snapshot_files(spark.table(table)).values()) > \
        sum(len(f) for f in before.values())


@pytest.mark.slow
def test_restarted_run_resumes_at_next_epoch(spark, cfg, wine):
    # A run that stopped after 2 epochs: its checkpoints exist, no model was registered.
    df = delta.read_version(spark, wine.table, wine.version)
    rows = {r["split"]: r["count"] for r in df.groupBy("split").count().collect()}
    ckpt = Path(cfg.checkpoint_dir) / "train" / "resume-run"
    spec = RankSpec("mlp", {**FAST, "epochs": 2, "task": "classification", "dropout": 0.0},
                    snapshot_files(df), rows, 13, 3, str(ckpt), str(cfg.home / "scratch"),
                    mean=[0.0] * 13, variance=[1.0] * 13)
    first = run_ranks(spec, cfg, train_rank)
    assert {r["epochs_run"] for r in first} == {2}
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-001.weights.h5",
                                                      "epoch-002.weights.h5"]
    result = train(spark, cfg, "mlp", "wine", run_id="resume-run",
                   params={**FAST, "epochs": 4, "dropout": 0.0})
    assert {(r["initial_epoch"], r["epochs_run"]) for r in result.ranks} == {(2, 2)}
    assert result.model.metrics["epochs"] == 4


def test_training_input_errors_name_the_problem(spark, cfg, wine):
    with pytest.raises(TableNotFoundError, match="gold_flights does not exist"):
        train(spark, cfg, "mlp", "flights")
    with pytest.raises(TableNotFoundError, match=f"has no version {wine.version + 5}"):
        train(spark, cfg, "mlp", "wine", version=wine.version + 5)
    bad = gold_spec("wine_bad").full_name(cfg.catalog.database)
    spark.table(wine.table).withColumn("label", F.col("label").cast("string")) \
        .write.format("delta").saveAsTable(bad)
    with pytest.raises(SchemaMismatchError, match="column 'label' is string, expected int"):
        train(spark, cfg, "mlp", "wine_bad")


def test_store_errors_name_model_and_artifact(spark, cfg, tmp_path):
    store = ModelStore(spark, cfg)
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        store.get("nope")
    (tmp_path / "model.keras").write_bytes(b"not a model")
    with pytest.raises(ModelNotFoundError, match=f"{tmp_path}/model.keras cannot be loaded"):
        load_artifact(str(tmp_path))


def test_a_checkpoint_cut_short_is_never_resumed_from(tmp_path):
    """A rank killed while writing its checkpoint leaves the previous epoch's to resume."""
    folder, lake = str(tmp_path), LakeFS()
    first = save_checkpoint(lake, lambda path: Path(path).write_bytes(b"epoch one"), folder, 1)

    def killed_mid_write(path: str) -> None:
        Path(path).write_bytes(b"half an HDF5 fi")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(lake, killed_mid_write, folder, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-001.weights.h5"]
    # Killed while copying to the lake: the copy has a name no restart reads.
    (tmp_path / ".partial-0a1b2c3d-epoch-002.weights.h5").write_bytes(b"half an HDF5 fi")
    assert last_checkpoint(lake, folder) == (1, first)
    save_checkpoint(lake, lambda path: Path(path).write_bytes(b"epoch two"), folder, 2)
    assert last_checkpoint(lake, folder) == (2, str(tmp_path / "epoch-002.weights.h5"))
