"""A pipeline on a real Spark standalone cluster whose nodes share nothing but the lake and
the metastore: a master and two 1-core workers on 127.0.0.1 started from the pyspark
install, each worker in a mount namespace of its own where the driver's home is an
empty private folder, with work and temporary folders of its own; the lake on the S3
server, the catalog in the PostgreSQL metastore. The whole pipeline is one spark-submit
application (``lakeforge submit run``) with the code shipped as ``--py-files
dist/lakeforge.zip``, Horovod's two ranks on the two workers. A stray local path (a
table, a checkpoint or an artifact written to a worker's disk instead of the lake) ends
up in a folder the driver never sees, and the run fails loudly. (Per-step spark-submit,
as Airflow runs it, is tested in test_dags.)"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lakehouse import objectstore
from lakehouse.config import PROJECT_ROOT, Config, load_config
from lakehouse.submit import spark_home
from pipelines.definitions import STEP_NAMES
from tests.conftest import FAST_START
from tests.helpers import free_port, lakeforge, succeeded

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
    worker_pids: list[int]
    env: dict[str, str]         # a driver's: its home, the lake on S3, the shared metastore
    home: Path
    s3: Config                  # the S3 server's

    def servers(self) -> str:
        """Whether the S3 server still runs, where, and its log's end (for a failure's
        message: a job that cannot reach the lake names the endpoint it tried)."""
        state = "runs" if objectstore.running(self.s3) else "DOES NOT RUN"
        state += f" at {objectstore.endpoint(self.s3)}"
        log = objectstore.log_file(self.s3)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        return f"\n--- the S3 server {state}; its log ends:\n{tail}"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """The S3 server, the PostgreSQL metastore, a master and two private workers.

    Outside pytest's private temp folder: as root, PostgreSQL runs as its own user, who
    must be able to reach its data directory. Everything is stopped afterwards.
    """
    root = Path(tempfile.mkdtemp(prefix="lakeforge-cluster-"))
    root.chmod(0o755)
    home = root / "home"
    home.mkdir()
    s3 = load_config([f"home={root / 's3'}", f"lake.server.port={free_port()}"], environ={})
    objectstore.start(s3)
    driver = {**os.environ, "LAKEFORGE_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
              **objectstore.environment(s3, "cluster"),
              "LAKEFORGE_METASTORE__KIND": "postgres",
              "LAKEFORGE_METASTORE__PORT": str(free_port())}
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    master = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
        log = root / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        procs.append(proc)
        return proc, log

    daemons = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
               "SPARK_LOG_DIR": str(root / "logs"), "SPARK_DAEMON_JAVA_OPTS": FAST_START}
    try:
        succeeded(lakeforge(driver, "metastore", "start"), timeout=300)
        proc, log = start("master", [spark_class, "org.apache.spark.deploy.master.Master",
                                     "--host", "127.0.0.1", "--port", str(port),
                                     "--webui-port", str(ui)], daemons)
        _wait_for(log, "I have been elected leader", proc)
        work_dirs, pids = [], []
        for i in (1, 2):
            node = root / f"worker{i}"
            work, scratch = node / "work", node / "tmp"
            scratch.mkdir(parents=True)
            work_dirs.append(work)
            # Its own mount namespace, where the driver's home is an empty tmpfs; its own
            # work, Spark-local and temporary folders; the credentials an instance role
            # would give it (the AWS variables of the lake's environment).
            private = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f"mount -t tmpfs -o size=64m tmpfs '{home}' && exec \"$@\"", "sh"]
            proc, log = start(f"worker{i}", [
                *private, spark_class, "org.apache.spark.deploy.worker.Worker",
                "--host", "127.0.0.1", "--cores", "1", "--memory", "2g",
                "--webui-port", str(free_port()), "--work-dir", str(work), master],
                {**daemons, "SPARK_LOCAL_DIRS": str(scratch), "TMPDIR": str(scratch),
                 **{k: v for k, v in driver.items() if k.startswith("AWS_")}})
            _wait_for(log, "Successfully registered with master", proc)
            pids.append(proc.pid)
        yield Cluster(master, f"http://127.0.0.1:{ui}", work_dirs, pids, driver, home, s3)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        lakeforge(driver, "metastore", "stop").communicate(timeout=120)
        objectstore.stop(s3)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def dist_zip() -> Path:
    """dist/lakeforge.zip built by `make dist` (the code executors import)."""
    proc = subprocess.run(["make", "-s", "dist"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return PROJECT_ROOT / "dist" / "lakeforge.zip"


def _sql(env: dict[str, str], query: str) -> list[str]:
    """The one row a `lakeforge sql` run on the driver's machine prints."""
    out = succeeded(lakeforge({**env, "LAKEFORGE_SPARK__MASTER": "local[2]"}, "sql", query))
    lines = [ln for ln in out.splitlines() if ln.strip()]
    end = next(i for i, ln in enumerate(lines) if ln.startswith("(1 row"))
    return lines[end - 1].split()


def test_pipeline_runs_on_a_cluster_whose_nodes_share_only_the_lake(cluster, dist_zip):
    definitions = cluster.home.parent / "pipelines.yml"
    definitions.write_text(yaml.safe_dump({"pipelines": {"breast_cancer_mlp": {
        "sources": ["breast_cancer"], "features": "breast_cancer", "family": "mlp",
        "params": {"epochs": 3, "batch_size": 64}}}}))
    # The executors live as long as the application, like the driver: the same quick
    # start (the driver's options come from the config, the executors' from here).
    executors = {**json.loads(os.environ["LAKEFORGE_SPARK__CONF"]),
                 "spark.executor.extraJavaOptions": FAST_START}
    env = {**cluster.env, "LAKEFORGE_SPARK__CONF": json.dumps(executors)}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "submit", "--master", cluster.master,
         "--py-files", str(dist_zip), "--set", "spark.ui_enabled=false",
         "--set", "spark.driver_memory=1g", "--set", "spark.shuffle_partitions=2",
         "run", "breast_cancer_mlp", "--batch", "c1", "--definitions", str(definitions)],
        env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:] + cluster.servers()
    printed = [line.split()[0] for line in proc.stdout.splitlines() if line.split()]
    assert [w for w in printed if w in STEP_NAMES] == list(STEP_NAMES)   # the step table

    # Every table on the lake holds what the local run leaves: 569 rows in each layer,
    # predictions with their lineage, one registered model that learnt.
    counts = _sql(env, "SELECT (SELECT count(*) FROM bronze_breast_cancer), "
                       "(SELECT count(*) FROM silver_breast_cancer), "
                       "(SELECT count(*) FROM gold_breast_cancer), "
                       "(SELECT count(*) FROM predictions_mlp), "
                       "(SELECT count(DISTINCT model_name, model_version, input_version) "
                       "FROM predictions_mlp)")
    assert counts == ["569", "569", "569", "569", "1"], counts
    model = _sql(env, "SELECT name, version, training_table, "
                      "get_json_object(metrics, '$.accuracy') > 0.8, artifact FROM models")
    assert model[:4] == ["breast_cancer_mlp", "1", "lakeforge.gold_breast_cancer", "true"]
    assert model[4].startswith("s3a://"), model
    for layer in ("warehouse", "models", "checkpoints", "runs"):   # nothing of it is local
        assert not (cluster.home / layer).exists(), layer

    # Each worker saw an empty folder where the driver's home is.
    assert any(cluster.home.iterdir())
    for pid in cluster.worker_pids:
        seen = Path(f"/proc/{pid}/root") / cluster.home.relative_to("/")
        assert seen.is_dir() and not any(seen.iterdir()), seen

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
