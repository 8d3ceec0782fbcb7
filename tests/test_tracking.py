"""Training runs and the model registry in MLflow: a real MLflow store (SQLite), real
Spark and 2 Horovod ranks."""

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest

from jobs.cli import _cmd_models
from lakehouse.config import load_config
from lakehouse.errors import RegistryMismatchError
from models import tracking
from models.runner import train
from models.scoring import score
from models.store import ModelStore
from models.tracking import Disagreement, Tracker, TrackingError
from tests.helpers import free_port, wine_features
from tests.test_train import FAST


@pytest.fixture
def wine(spark, cfg):
    return wine_features(spark, cfg)


def _runs(tracker: Tracker) -> list:
    return tracker.client.search_runs([tracker.experiment_id])


@pytest.mark.slow
def test_a_training_is_a_run_and_its_version_is_the_same_in_mlflow(spark, cfg, wine, tmp_path,
                                                                   monkeypatch, capsys):
    result = train(spark, cfg, "mlp", "wine", params=FAST)
    model, tracker = result.model, Tracker(cfg)
    [run] = _runs(tracker)
    mlrun = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == model.run_id
    assert run.data.tags[tracking.TAG_RUN] == model.run_id
    assert run.data.tags[tracking.TAG_TABLE_VERSION] == str(wine.version)
    assert len(run.data.tags[tracking.TAG_REVISION].split("+")[0]) == 40    # a git commit
    assert (run.data.params["epochs"], run.data.params["hidden"]) == ("3", "[16]")
    losses = tracker.client.get_metric_history(mlrun, "epoch_loss")
    assert [m.step for m in losses] == [0, 1, 2]
    assert [m.value for m in losses] == pytest.approx(result.history["loss"])
    assert run.data.metrics["accuracy"] == pytest.approx(model.metrics["accuracy"])
    [used] = run.inputs.dataset_inputs
    source = json.loads(used.dataset.source)
    assert used.dataset.name == f"{wine.table}@v{wine.version}"
    assert source["path"].endswith("gold_wine") and used.dataset.source_type == "delta_table"
    files = {f.path for f in tracker.client.list_artifacts(mlrun, "model/artifacts/lakeforge")}
    assert {"model/artifacts/lakeforge/model.keras", "model/artifacts/lakeforge/"
            "confusion_matrix.png", "model/artifacts/lakeforge/training_curves.png"} <= files

    # The registry: lakeforge's v1 is MLflow's v1, linked both ways.
    assert model.mlflow_run_id == mlrun
    assert ModelStore(spark, cfg).get("wine_mlp", 1).mlflow_run_id == mlrun
    [mv] = tracker.versions("wine_mlp").values()
    assert (int(mv.version), mv.run_id, mv.tags[tracking.TAG_VERSION]) == (1, mlrun, "1")
    assert mv.tags[tracking.TAG_ARTIFACT] == model.artifact
    # The version as an MLflow pyfunc, in this process without Spark, on silver's raw
    # rows: lakeforge score's predictions, row for row.
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)      # as a user's shell would
    pyfunc = mlflow.pyfunc.load_model("models:/wine_mlp/1")
    assert pyfunc.metadata.get_input_schema().input_names() == ["features"]
    silver = f"{cfg.catalog.database}.silver_wine"
    raw = spark.table(silver).toPandas()
    got = pyfunc.predict(raw)
    scored = score(spark, cfg, "mlp", "wine_mlp", input_table=silver)
    want = {r["row_id"]: r for r in spark.table(scored.table)
            .filter(f"run_id = '{scored.run_id}'").collect()}
    assert len(got) == len(want) == 178
    for row_id, (_, row) in zip(raw["row_id"], got.iterrows(), strict=True):
        assert (row["prediction"], row["prediction_label"]) == \
            (want[row_id]["prediction"], want[row_id]["prediction_label"])
        assert list(row["probabilities"]) == pytest.approx(want[row_id]["probabilities"],
                                                           abs=1e-6)

    again = train(spark, cfg, "mlp", "wine", params=FAST)         # a re-run: no new run
    assert again.model.version == 1 and len(_runs(tracker)) == 1
    assert tracking.check(tracker, ModelStore(spark, cfg).records()) == []

    _cmd_models(spark, cfg, argparse.Namespace(action="alias", names=["wine_mlp@champion", "1"]))
    scored = score(spark, cfg, "mlp", "wine_mlp@champion")
    lineage = spark.table(scored.table).select("model_name", "model_version").distinct()
    assert [tuple(r) for r in lineage.collect()] == [("wine_mlp", 1)]
    with pytest.raises(TrackingError, match="has no alias 'best'; aliases: champion"):
        score(spark, cfg, "mlp", "wine_mlp@best")

    tracker.client.delete_model_version("wine_mlp", "1")         # deleted on one side
    records = ModelStore(spark, cfg).records()
    assert tracking.check(tracker, records) == [
        Disagreement("wine_mlp", 1, "missing in MLflow's registry")]
    assert tracking.sync(tracker, records) == []                 # MLflow would call it v2
    assert tracker.versions("wine_mlp") == {}
    with pytest.raises(RegistryMismatchError, match="1 disagreement"):     # exit code 2
        _cmd_models(spark, cfg, argparse.Namespace(action="check", names=[]))
    assert "wine_mlp        1  missing in MLflow's registry" in capsys.readouterr().out


@pytest.mark.slow
def test_a_killed_run_shows_failed_and_its_resume_continues_it(spark, cfg, wine):
    # A training whose MLflow run had started when its process was killed.
    env = {**os.environ, "LAKEFORGE_HOME": str(cfg.home),
           "LAKEFORGE_TRACKING__URI": tracking.tracking_uri(cfg),
           "LAKEFORGE_TRACKING__EXPERIMENT": cfg.catalog.database}
    code = ("import os, signal; from lakehouse.config import load_config; "
            "from models.tracking import Tracker; "
            f"Tracker(load_config()).start('killed-run', 'wine_mlp', 'mlp', '{wine.table}', "
            f"{wine.version}, {{}}); os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    tracker = Tracker(cfg)
    [run] = _runs(tracker)
    assert run.info.status == "RUNNING"
    assert tracker.mark_gone() == [run.info.run_id]
    assert tracker.client.get_run(run.info.run_id).info.status == "FAILED"

    result = train(spark, cfg, "mlp", "wine", run_id="killed-run", params=FAST)
    [resumed] = _runs(tracker)
    assert resumed.info.run_id == run.info.run_id == result.model.mlflow_run_id
    assert resumed.info.status == "FINISHED"
    assert len(tracker.client.get_metric_history(run.info.run_id, "epoch_loss")) == 3


def test_an_unreachable_tracking_server_stops_training_before_any_rank(spark, cfg, wine,
                                                                        monkeypatch):
    port = free_port()
    down = dataclasses.replace(cfg, tracking=dataclasses.replace(
        cfg.tracking, uri=f"http://127.0.0.1:{port}", timeout=2))

    def no_horovod(*args, **kwargs):
        raise AssertionError("a rank started")

    monkeypatch.setattr("models.runner.run_ranks", no_horovod)
    with pytest.raises(TrackingError, match=f"tracking server http://127.0.0.1:{port} does "
                                            f"not answer .*tracking.uri"):
        train(spark, down, "mlp", "wine", params=FAST)
    assert spark.table(f"{cfg.catalog.database}.models").count() == 0


def test_parameters_flatten_and_store_passwords_stay_hidden():
    assert tracking.flat_params({"hidden": [16], "features": {"scale": "standard", "k": 2},
                                 "name": "x"}) == {
        "hidden": "[16]", "features.scale": "standard", "features.k": "2", "name": "x"}
    assert tracking.safe_uri("postgresql://lf:secret@db:5433/mlflow") == \
        "postgresql://lf:***@db:5433/mlflow"
    assert tracking.artifact_uri("s3a://bucket/models/x") == "s3://bucket/models/x"


def test_each_lake_gets_its_own_artifact_endpoint_and_the_users_is_kept(tmp_path, monkeypatch):
    """MLflow reads the S3 endpoint of run artifacts from the environment. A process that
    opens the tracking store of one lake on S3, then of another, writes the second
    lake's artifacts to the second store; an endpoint the user set is never replaced."""
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(tracking, "_SET_HERE", {})

    def lake(endpoint: str):
        return load_config([f"home={tmp_path}"] + ([f"lake.s3.endpoint={endpoint}"]
                                                    if endpoint else []), environ={})

    Tracker(lake("http://127.0.0.1:9001"))
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9001"
    Tracker(lake("http://127.0.0.1:9002"))
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9002"
    Tracker(lake(""))                                   # a lake on AWS itself: none
    assert "MLFLOW_S3_ENDPOINT_URL" not in os.environ
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://artifacts.example:9000")
    Tracker(lake("http://127.0.0.1:9003"))
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://artifacts.example:9000"
