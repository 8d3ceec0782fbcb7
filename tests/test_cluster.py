"""A pipeline on a real Spark standalone cluster: a master and two 1-core workers on
127.0.0.1 started from the pyspark install, the whole pipeline one spark-submit
application (``lakeforge submit run``) with the code shipped as ``--py-files
dist/lakeforge.zip``, Horovod's two ranks on the two workers. (Per-step spark-submit,
as Airflow runs it, is tested in test_dags.)"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lakehouse.config import PROJECT_ROOT
from lakehouse.submit import spark_home
from pipelines.definitions import STEP_NAMES
from tests.conftest import FAST_START
from tests.helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else ""
    raise AssertionError(f"{text!r} not seen in {path}:\n{tail}")


@dataclasses.dataclass
class Cluster:
    master: str
    ui: str
    work_dirs: list[Path]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A standalone master and two 1-core workers; always killed afterwards."""
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(tmp_path / "logs"), "SPARK_WORKER_DIR": str(tmp_path / "work"),
           "SPARK_DAEMON_JAVA_OPTS": FAST_START}   # the master and workers only route work
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    master = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([spark_class, *args], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc, log

    try:
        proc, log = start("master", "org.apache.spark.deploy.master.Master", "--host",
                          "127.0.0.1", "--port", str(port), "--webui-port", str(ui))
        _wait_for(log, "I have been elected leader", proc)
        work_dirs = []
        for i in (1, 2):
            work = tmp_path / f"worker{i}"
            work_dirs.append(work)
            proc, log = start(f"worker{i}", "org.apache.spark.deploy.worker.Worker",
                              "--host", "127.0.0.1", "--cores", "1", "--memory", "2g",
                              "--webui-port", str(free_port()), "--work-dir", str(work), master)
            _wait_for(log, "Successfully registered with master", proc)
        yield Cluster(master, f"http://127.0.0.1:{ui}", work_dirs)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def dist_zip() -> Path:
    """dist/lakeforge.zip built by `make dist` (the code executors import)."""
    proc = subprocess.run(["make", "-s", "dist"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return PROJECT_ROOT / "dist" / "lakeforge.zip"


def test_pipeline_runs_on_a_standalone_cluster(cluster, dist_zip, tmp_path, spark):
    home = tmp_path / "home"
    definitions = tmp_path / "pipelines.yml"
    definitions.write_text(yaml.safe_dump({"pipelines": {"breast_cancer_mlp": {
        "sources": ["breast_cancer"], "features": "breast_cancer", "family": "mlp",
        "params": {"epochs": 3, "batch_size": 64}}}}))
    # The executors live as long as the application, like the driver: the same quick
    # start (the driver's options come from the config, the executors' from here).
    executors = {**json.loads(os.environ["LAKEFORGE_SPARK__CONF"]),
                 "spark.executor.extraJavaOptions": FAST_START}
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1",
           "LAKEFORGE_SPARK__CONF": json.dumps(executors)}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "submit", "--master", cluster.master,
         "--py-files", str(dist_zip), "--set", f"home={home}",
         "--set", "spark.ui_enabled=false", "--set", "spark.driver_memory=1g",
         "--set", "spark.shuffle_partitions=2", "run", "breast_cancer_mlp", "--batch", "c1",
         "--definitions", str(definitions)],
        env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    printed = [line.split()[0] for line in proc.stdout.splitlines() if line.split()]
    assert [w for w in printed if w in STEP_NAMES] == list(STEP_NAMES)   # the step table

    warehouse = home / "warehouse" / "lakeforge.db"
    predictions = spark.read.format("delta").load(str(warehouse / "predictions_mlp"))
    assert predictions.count() == 569
    lineage = predictions.select("model_name", "model_version", "input_table",
                                 "input_version").distinct().collect()
    assert [tuple(r) for r in lineage] == [("breast_cancer_mlp", 1, "lakeforge.gold_breast_cancer",
                                           lineage[0]["input_version"])]
    models = spark.read.format("delta").load(str(warehouse / "models")).collect()
    assert [(m["name"], m["version"], m["training_table"]) for m in models] == [
        ("breast_cancer_mlp", 1, "lakeforge.gold_breast_cancer")]
    assert json.loads(models[0]["metrics"])["accuracy"] > 0.8

    # The application ran on the cluster with an executor on each worker (one core
    # each, so Horovod's two ranks were on different workers), and the executors
    # fetched the code from --py-files.
    with urllib.request.urlopen(f"{cluster.ui}/json/", timeout=10) as answer:
        apps = json.load(answer)["completedapps"]
    assert len(apps) == 1
    app = apps[0]["id"]
    for work in cluster.work_dirs:
        executors = list((work / app).iterdir())
        assert len(executors) == 1, work
        assert (executors[0] / dist_zip.name).is_file(), executors[0]
    rank_logs = "".join(p.read_text(errors="replace")
                        for work in cluster.work_dirs for p in (work / app).glob("*/std*"))
    assert "epoch 3/3 (2 ranks" in rank_logs
