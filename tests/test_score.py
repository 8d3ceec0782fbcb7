"""Batch scoring into Delta and SQL views over predictions."""

import threading
import uuid

import numpy as np
import pytest
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.catalog import create_views, run_sql
from lakehouse.curate import curate
from lakehouse.errors import SchemaMismatchError
from lakehouse.featuresets import build_features
from lakehouse.ingest import ingest
from models.mlp import FAMILY
from models.scoring import score
from models.store import ModelNotFoundError, ModelStore
from tests.helpers import in_database


def _register(spark, cfg, table, tmp_path, run_id, seed):
    """A real (small) Keras MLP fitted in-process on the gold train split, then stored."""
    import tensorflow as tf

    train = spark.table(table).filter("split = 'train'").select("features", "label").toPandas()
    x, y = np.stack(train.features.to_numpy()), train.label.to_numpy()
    tf.keras.utils.set_random_seed(seed)
    model = FAMILY.trainer.build({**FAMILY.defaults, "hidden": [8]}, x.shape[1], 3,
                         x.mean(axis=0), x.var(axis=0))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    staged = tmp_path / run_id
    staged.mkdir()
    model.save(staged / "model.keras")
    return ModelStore(spark, cfg).register("wine_mlp", "mlp", staged, {"hidden": [8]}, {},
                                           table, delta.current_version(spark, table), run_id)


@pytest.fixture(scope="module")
def wine_gold(spark, base_cfg):
    """The wine gold table, built once in a database of this module's own: the tests only
    read it (their models, predictions and broken copies go to their own databases)."""
    db = f"t_{uuid.uuid4().hex[:10]}"
    spark.sql(f"CREATE DATABASE {db}")
    cfg = in_database(base_cfg, db)
    ingest(spark, cfg, ["wine"], "b1")
    curate(spark, cfg, ["wine"])
    yield build_features(spark, cfg, "wine", partitions=4)
    spark.sql(f"DROP DATABASE {db} CASCADE")


@pytest.fixture
def wine_model(spark, cfg, wine_gold, tmp_path):
    return wine_gold, _register(spark, cfg, wine_gold.table, tmp_path, "r1", seed=1)


def test_scores_every_row_with_lineage(spark, cfg, wine_model):
    gold, model = wine_model
    result = score(spark, cfg, "mlp", "wine_mlp")
    preds = spark.table(result.table).filter(F.col("run_id") == result.run_id)
    assert result.rows == 178 and preds.select("row_id").distinct().count() == 178
    first = preds.orderBy("row_id").first()
    assert (first.model_name, first.model_version, first.input_table, first.input_version) == \
        ("wine_mlp", 1, gold.table, gold.version)
    assert result.run_id == f"wine_mlp-v1@{gold.table}-v{gold.version}"
    rows = preds.orderBy("row_id").select("row_id", "prediction", "probability",
                                          "probabilities").toPandas()
    probs = np.stack(rows.probabilities.to_numpy())
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == rows.prediction.to_numpy()).all()
    assert np.allclose(probs.max(axis=1), rows.probability.to_numpy())
    # The same network in this process gives the same probabilities.
    keras_model, _ = ModelStore(spark, cfg).load("wine_mlp")
    feats = spark.table(gold.table).orderBy("row_id").select("features").toPandas()
    local = keras_model.predict(np.stack(feats.features.to_numpy()), verbose=0)
    assert np.allclose(local, probs, atol=1e-5)


def test_model_loads_once_per_worker_not_per_batch(spark, cfg, wine_model):
    gold, _ = wine_model
    many = f"{cfg.catalog.database}.wine_many_files"
    spark.table(gold.table).repartition(24).write.format("delta").saveAsTable(many)
    spark.conf.set("spark.sql.files.openCostInBytes", str(1 << 40))   # one task per file
    try:
        tasks = spark.table(many).rdd.getNumPartitions()
        result = score(spark, cfg, "mlp", "wine_mlp", input_table=many)
    finally:
        spark.conf.unset("spark.sql.files.openCostInBytes")
    assert tasks == 24 and result.rows == 178
    # Once per Python worker: loading per task (or batch) would load 24 times. Spark keeps
    # a pool of idle workers that can outnumber the cores after other jobs (six here
    # after a CNN scoring job), so the bound is a third of the tasks, not the cores.
    assert 1 <= result.model_loads <= tasks // 3


def _probe_worker(batches, artifact):
    """Executor side: load the model as the scorer does, report the task's threads and GC."""
    import gc

    import pyarrow as pa

    from models.classifier.scoring import cached_model
    from models.scoring import task_threads

    for _ in batches:
        pass
    cached_model(artifact)
    yield pa.RecordBatch.from_arrays(
        [pa.array([task_threads()], pa.int64()), pa.array([gc.get_freeze_count() > 0])],
        names=["threads", "frozen"])


def test_workers_use_the_task_cores_and_freeze_the_loaded_model(spark, cfg, wine_model):
    import functools

    from models.scoring import task_threads

    _, model = wine_model
    probe = functools.partial(_probe_worker, artifact=model.artifact)
    rows = spark.range(2, numPartitions=2).mapInArrow(probe, "threads long, frozen boolean")
    cpus = int(spark.conf.get("spark.task.cpus", "1"))
    assert [tuple(r) for r in rows.collect()] == [(cpus, True), (cpus, True)]
    assert task_threads() == 0   # the driver is no task: TF keeps its defaults there


def test_rescoring_is_idempotent_and_new_versions_add_rows(spark, cfg, wine_model, tmp_path):
    gold, _ = wine_model
    first = score(spark, cfg, "mlp", "wine_mlp")
    version = delta.current_version(spark, first.table)
    again = score(spark, cfg, "mlp", "wine_mlp")
    assert again.skipped and delta.current_version(spark, first.table) == version
    _register(spark, cfg, gold.table, tmp_path, "r2", seed=2)
    second = score(spark, cfg, "mlp", "wine_mlp")
    counts = {r.model_version: r["count"] for r in
              spark.table(first.table).groupBy("model_version").count().collect()}
    assert counts == {1: 178, 2: 178} and not second.skipped


def test_failed_run_leaves_table_unchanged(spark, cfg, wine_model):
    gold, _ = wine_model
    score(spark, cfg, "mlp", "wine_mlp")
    target = f"{cfg.catalog.database}.predictions_mlp"
    version = delta.current_version(spark, target)
    broken = f"{cfg.catalog.database}.wine_broken"
    (spark.table(gold.table).withColumn(
        "features", F.when(F.col("row_id") == 100, F.slice("features", 1, 5))
        .otherwise(F.col("features")))
     .repartition(4).write.format("delta").saveAsTable(broken))
    with pytest.raises(Exception, match="row_id 100: features have length 5, the model expects 13"):
        score(spark, cfg, "mlp", "wine_mlp", input_table=broken)
    assert delta.current_version(spark, target) == version
    assert spark.table(target).filter(F.col("input_table") == broken).count() == 0


def test_concurrent_scoring_runs_both_land(spark, cfg, wine_model, tmp_path):
    gold, _ = wine_model
    _register(spark, cfg, gold.table, tmp_path, "r2", seed=2)
    score(spark, cfg, "mlp", "wine_mlp", model_version=1, run_id="warm")   # creates the table
    errors = []

    def run(version):
        try:
            score(spark, cfg, "mlp", "wine_mlp", model_version=version)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    table = spark.table(f"{cfg.catalog.database}.predictions_mlp").filter("run_id != 'warm'")
    assert table.count() == 2 * 178
    assert table.select("model_version", "row_id").distinct().count() == 2 * 178


def test_views_and_sql_over_predictions(spark, cfg, wine_model, tmp_path):
    gold, _ = wine_model
    score(spark, cfg, "mlp", "wine_mlp")
    _register(spark, cfg, gold.table, tmp_path, "r2", seed=2)
    score(spark, cfg, "mlp", "wine_mlp")
    assert sorted(create_views(spark, cfg)) == [f"{cfg.catalog.database}.models_latest",
                                                f"{cfg.catalog.database}.predictions_mlp_latest"]
    out = run_sql(spark, cfg, "SELECT model_version, count(*) AS n FROM predictions_mlp_latest "
                              "GROUP BY model_version")
    assert out.splitlines()[2:] == ["            2  178", "(1 row)"]


def test_scoring_errors_name_the_problem(spark, cfg, wine_model):
    gold, _ = wine_model
    with pytest.raises(ModelNotFoundError, match="model 'wine_mlp' has no version 7; versions: 1"):
        score(spark, cfg, "mlp", "wine_mlp", model_version=7)
    nofeat = f"{cfg.catalog.database}.wine_nofeat"
    spark.table(gold.table).drop("features").write.format("delta").saveAsTable(nofeat)
    with pytest.raises(SchemaMismatchError, match="column 'features' is missing"):
        score(spark, cfg, "mlp", "wine_mlp", input_table=nofeat)
