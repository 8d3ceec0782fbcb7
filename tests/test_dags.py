"""The Airflow DAGs, loaded and run by real Airflow in its own virtualenv.

Airflow 3 lives in ``.venv-airflow`` (scripts/setup-airflow.sh), apart from the
project's stack, so each check runs a short script with that interpreter: a real
DagBag over ``pipelines/dags``, and ``dag.test()`` running real spark-submit jobs
against a temporary LAKEFORGE_HOME with its own SQLite metadata DB. Then a real
scheduler runs two DAGs at once on a lakehouse with the shared PostgreSQL metastore,
and on that lakehouse several jobs run at once beside the Thrift server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lakehouse.config import PROJECT_ROOT
from pipelines.definitions import AIRFLOW_BATCH, STEP_NAMES, load_pipelines
from tests.helpers import (
    beeline,
    free_port,
    lakeforge,
    orders_entry,
    small_job_env,
    succeeded,
    wait_listening,
)

AIRFLOW_PYTHON = PROJECT_ROOT / ".venv-airflow" / "bin" / "python"
DAGS = PROJECT_ROOT / "pipelines" / "dags"

BAG_SCRIPT = textwrap.dedent("""
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    dags = {d.dag_id: {
        "schedule": d.schedule,
        "tasks": {t.task_id: {"upstream": sorted(t.upstream_task_ids), "job": t.job,
                              "args": t.application_args, "retries": t.retries,
                              "spark_binary": t._spark_binary}
                  for t in d.tasks}} for d in bag.dags.values()}
    heavy = sorted(m for m in ("pyspark", "tensorflow", "horovod", "lakehouse.session")
                   if m in sys.modules)
    print("RESULT " + json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                                  "dags": dags, "heavy": heavy}))
""")

RUN_SCRIPT = textwrap.dedent("""
    import datetime as dt, json, sys
    from airflow.dag_processing.dagbag import DagBag
    dag = DagBag(dag_folder=sys.argv[1]).get_dag(sys.argv[2])
    run = dag.test(logical_date=dt.datetime.fromisoformat(sys.argv[3]),
                   run_conf=json.loads(sys.argv[4]))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print("RESULT " + json.dumps({"state": str(run.state), "tasks": states}))
""")


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Airflow set up (venv once, a fresh metadata DB here), and the run's environment."""
    root = tmp_path_factory.mktemp("airflow")
    definitions = root / "pipelines.yml"
    env = {**small_job_env(root / "home"),
           "AIRFLOW_HOME": str(root / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW_LAKEFORGE_PIPELINES": str(definitions)}
    # The shipped definitions, with a short training run for breast_cancer_mlp.
    data = yaml.safe_load((PROJECT_ROOT / "pipelines" / "pipelines.yml").read_text())
    data["pipelines"]["breast_cancer_mlp"]["params"] = {"epochs": 3, "batch_size": 64}
    definitions.write_text(yaml.safe_dump(data))
    setup = subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "setup-airflow.sh")],
                           env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    return env


def _airflow(env: dict[str, str], script: str, *args: str, timeout: int = 900) -> tuple[dict, str]:
    proc = subprocess.run([str(AIRFLOW_PYTHON), "-c", script, *args], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and results, output[-5000:]
    return json.loads(results[-1][len("RESULT "):]), output


def _run(env: dict[str, str], conf: dict | None = None,
         day: str = "2026-11-20") -> tuple[dict, str]:
    return _airflow(env, RUN_SCRIPT, str(DAGS), "breast_cancer_mlp", f"{day}T00:00:00+00:00",
                    json.dumps(conf or {}))


def test_every_dag_imports_and_follows_its_definition(airflow_env):
    bag, _ = _airflow({**airflow_env, "AIRFLOW_LAKEFORGE_PIPELINES": ""}, BAG_SCRIPT, str(DAGS))
    assert bag["errors"] == {}
    assert bag["heavy"] == []          # the DAG file only wires: no Spark, TF or session
    pipelines = load_pipelines()
    assert sorted(bag["dags"]) == sorted(pipelines)
    for name, pipeline in pipelines.items():
        tasks = bag["dags"][name]["tasks"]
        steps = pipeline.steps(AIRFLOW_BATCH)
        assert list(STEP_NAMES) == [s.name for s in steps]
        assert sorted(tasks) == sorted(STEP_NAMES), name
        for previous, step in zip((None, *steps), steps, strict=False):
            task = tasks[step.name]
            assert task["upstream"] == ([previous.name] if previous else []), (name, step.name)
            assert (task["job"], task["args"]) == (step.job, list(step.args)), (name, step.name)
            assert task["retries"] == pipeline.retries
            assert Path(task["spark_binary"]).name == "spark-submit"
        assert bag["dags"][name]["schedule"] == pipeline.schedule, name
    assert "--batch" in bag["dags"]["breast_cancer_mlp"]["tasks"]["ingest"]["args"]


def test_bad_config_value_fails_the_first_task_and_names_it(airflow_env):
    run, output = _run(airflow_env, {"set": ["spark.shuffle_partitions=lots"]})
    assert run["state"] == "failed"
    assert run["tasks"]["ingest"] == "failed"
    assert {run["tasks"][t] for t in STEP_NAMES[1:]} == {"upstream_failed"}
    assert "spark.shuffle_partitions='lots': expected an integer" in output


@pytest.mark.slow
def test_job_failing_on_its_input_fails_without_retries(airflow_env, tmp_path):
    missing = tmp_path / "nothing-here.csv"
    run, output = _run(airflow_env, {"set": [f"datasets.breast_cancer.source.files={missing}"]},
                       day="2026-11-19")
    # retries=2 in the definition: a retry would leave ingest up_for_retry, not failed
    assert run["state"] == "failed" and run["tasks"]["ingest"] == "failed", output[-5000:]
    assert "failed on its input or config" in output
    assert str(missing) in output


SUBMIT_SCRIPT = textwrap.dedent("""
    import json, sys
    from airflow.sdk.exceptions import AirflowFailException
    from pipelines.dag_factory import LakeforgeSubmitOperator
    op = LakeforgeSubmitOperator(task_id="ingest", job="ingest", project=sys.argv[1],
                                 python=sys.argv[2], spark_binary=sys.argv[3],
                                 application_args=["nosuch", "--batch", "b1"])
    try:
        op.execute({"params": {"set": []}})
        failed = None
    except AirflowFailException as exc:
        failed = str(exc)
    print("RESULT " + json.dumps({"code": op.submit_exit_code(), "failed": failed}))
""")


def test_submit_exit_code_is_read_from_the_finished_spark_submit(airflow_env):
    """A real spark-submit of a job that stops on its input (exit code 2): the operator
    reads the code from the process, not from the provider's message."""
    spark_submit = Path(sys.executable).parent / "spark-submit"
    result, output = _airflow(airflow_env, SUBMIT_SCRIPT, str(PROJECT_ROOT), sys.executable,
                              str(spark_submit))
    assert result["code"] == 2, output[-5000:]
    assert result["failed"] and "failed on its input or config" in result["failed"]


class Scheduler:
    """A real Airflow: API server, DAG processor and scheduler (LocalExecutor), started
    as their own process groups on free ports, with SQLite metadata under ``home``. The
    scheduler starts on :meth:`start_scheduler`, so that runs triggered before it are all
    queued when it first looks."""

    COMPONENTS = ("api-server", "dag-processor")

    def __init__(self, env: dict[str, str], home: Path, parallelism: int) -> None:
        port = free_port()
        self.api = f"http://127.0.0.1:{port}"
        self.env = {**env, "AIRFLOW_HOME": str(home),
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
                    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                    "AIRFLOW__CORE__PARALLELISM": str(parallelism),
                    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                    "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
                    "AIRFLOW__API__WORKERS": "1", "AIRFLOW__API__BASE_URL": self.api,
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api}/execution/",
                    "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(16).hex(),
                    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())}
        self.home, self.procs = home, []

    def __enter__(self) -> Scheduler:
        self.home.mkdir(parents=True, exist_ok=True)
        airflow = str(AIRFLOW_PYTHON.parent / "airflow")
        subprocess.run([airflow, "db", "migrate"], env=self.env, capture_output=True,
                       check=True, timeout=600)
        for name in self.COMPONENTS:
            self._start(name)
        return self

    def _start(self, name: str) -> None:
        log = (self.home / f"{name}.log").open("w")
        self.procs.append(subprocess.Popen([str(AIRFLOW_PYTHON.parent / "airflow"), name],
                                           env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def start_scheduler(self) -> None:
        self._start("scheduler")

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.api + path, timeout=10) as response:
            return json.load(response)

    def wait_for_dags(self, dags: list[str], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in self.procs), self.logs()
            with contextlib.suppress(OSError, ValueError):
                if all(self.get(f"/api/v2/dags/{d}")["is_paused"] is False for d in dags):
                    return
            time.sleep(2)
        raise AssertionError(f"DAGs {dags} did not appear:\n{self.logs()}")

    def trigger(self, dag: str, run_id: str, logical_date: str) -> None:
        subprocess.run([str(AIRFLOW_PYTHON.parent / "airflow"), "dags", "trigger", dag, "-r",
                        run_id, "-l", logical_date], env=self.env, capture_output=True,
                       check=True, timeout=300)

    def wait_for_runs(self, runs: dict[str, str], timeout: float = 1800) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {d: self.get(f"/api/v2/dags/{d}/dagRuns/{r}") for d, r in runs.items()}
            if all(s["state"] in ("success", "failed") for s in states.values()):
                return states
            time.sleep(5)
        raise AssertionError(f"runs {runs} did not finish:\n{self.logs()}")

    def task_times(self, dag: str, run_id: str) -> list[tuple[str, float, float]]:
        rows = self.get(f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return [(r["task_id"], dt.datetime.fromisoformat(r["start_date"]).timestamp(),
                 dt.datetime.fromisoformat(r["end_date"]).timestamp()) for r in rows]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                         for p in sorted(self.home.glob("*.log")))


SOURCES = ("north", "south", "east", "west")
SMALL = {"epochs": 2, "batch_size": 64, "hidden": [8]}


@pytest.fixture(scope="module")
def shared_lake(airflow_env, spark):
    """A lakehouse on a local PostgreSQL metastore (started here) on which the scheduler
    runs two pipelines' DAGs side by side; the tables those runs left are read right
    after them. The lakehouse then hosts the jobs-at-once test.

    The home is outside pytest's private temp folder: as root, PostgreSQL runs as its own
    user, who must be able to reach its data directory.
    """
    root = Path(tempfile.mkdtemp(prefix="lakeforge-airflow-"))
    root.chmod(0o755)
    entries = root / "entries"
    entries.mkdir()
    regions = {}
    for i, name in enumerate(SOURCES):
        landing = root / "landing" / name
        landing.mkdir(parents=True)
        rows = "".join(f"{i * 1000 + n},,{n},NEW\n" for n in range(200 + 10 * i))
        (landing / "day1.csv").write_text("order_id,placed_at,amount,status\n" + rows)
        regions[name] = orders_entry(landing)
    (entries / "regions.yml").write_text(json.dumps({"datasets": regions}))
    definitions = root / "pipelines.yml"
    definitions.write_text(yaml.safe_dump({"defaults": {"schedule": None}, "pipelines": {
        "wine_mlp": {"sources": ["wine"], "features": "wine", "family": "mlp",
                     "params": SMALL},
        "breast_cancer_mlp": {"sources": ["breast_cancer"], "features": "breast_cancer",
                              "family": "mlp", "params": SMALL}}}))
    lake = {**airflow_env, "LAKEFORGE_HOME": str(root / "home"),
            "AIRFLOW_LAKEFORGE_PIPELINES": str(definitions),
            "LAKEFORGE_CATALOG__DATASET_DIRS": json.dumps([str(entries)]),
            "LAKEFORGE_METASTORE__KIND": "postgres",
            "LAKEFORGE_METASTORE__PORT": str(free_port())}
    succeeded(lakeforge(lake, "metastore", "start"), timeout=300)
    runs = {"wine_mlp": "both-1", "breast_cancer_mlp": "both-2"}
    warehouse = root / "home" / "warehouse" / "lakeforge.db"
    try:
        with Scheduler(lake, root / "airflow", parallelism=2) as airflow:
            airflow.wait_for_dags(list(runs))
            for dag, run_id in runs.items():
                airflow.trigger(dag, run_id, "2026-11-20T00:00:00+00:00")
            airflow.start_scheduler()   # both runs queued: its first loop starts both
            states = {d: s["state"] for d, s in airflow.wait_for_runs(runs).items()}
            logs = airflow.logs()
            times = {d: airflow.task_times(d, r) for d, r in runs.items()}
        yield SimpleNamespace(env=lake, root=root, warehouse=warehouse, states=states,
                              logs=logs, times=times,
                              after=_dag_outcome(spark, warehouse) if
                              set(states.values()) == {"success"} else None)
    finally:
        lakeforge(lake, "metastore", "stop").communicate(timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _delta(spark, warehouse: Path, name: str):
    """A table of the lakehouse, read by path (the test session has its own catalog)."""
    return spark.read.format("delta").load(str(warehouse / name))


def _dag_outcome(spark, warehouse: Path) -> dict:
    """What the two DAG runs left in the tables the test of those runs checks."""
    table = functools.partial(_delta, spark, warehouse)
    predictions = table("predictions_mlp")
    return {
        "batches": {d: sorted(tuple(b) for b in table(f"bronze_{d}").groupBy("_ingest_batch")
                              .count().collect()) for d in ("wine", "breast_cancer")},
        "silver": {d: table(f"silver_{d}").count() for d in ("wine", "breast_cancer")},
        "models": sorted((r.name, r.version) for r in table("models").collect()),
        "lineage": {r["model_name"]: (r["count"], r["model_version"], r["input_table"])
                    for r in predictions.groupBy("model_name", "model_version",
                                                 "input_table").count().collect()},
        "unscored": predictions.filter("prediction IS NULL OR probability IS NULL").count(),
    }


@pytest.mark.slow
def test_two_dags_at_once_under_the_scheduler_on_the_shared_metastore(shared_lake):
    """Parallelism 2, LocalExecutor, two pipelines' DAG runs side by side on one lakehouse
    whose catalog is the shared PostgreSQL metastore: five spark-submit tasks each, the
    data interval's date as the ingest batch, and predictions with their lineage. (That
    re-running a batch adds nothing is the jobs' property, tested on the jobs and
    pipelines themselves.)"""
    assert shared_lake.states == dict.fromkeys(shared_lake.states, "success"), shared_lake.logs
    (a, b) = shared_lake.times.values()
    overlap = max(min(x[2], y[2]) - max(x[1], y[1]) for x in a for y in b)
    assert overlap > 0, shared_lake.times                       # the two ran side by side
    after = shared_lake.after
    assert after["batches"] == {"wine": [("20261120", 178)],       # the data interval's date
                                "breast_cancer": [("20261120", 569)]}
    assert after["silver"] == {"wine": 178, "breast_cancer": 569}
    assert after["models"] == [("breast_cancer_mlp", 1), ("wine_mlp", 1)]
    assert after["lineage"] == {"wine_mlp": (178, 1, "lakeforge.gold_wine"),
                                "breast_cancer_mlp": (569, 1, "lakeforge.gold_breast_cancer")}
    assert after["unscored"] == 0


@pytest.mark.slow
def test_jobs_at_once_on_the_shared_lakehouse_all_land_exactly(spark, shared_lake):
    """On the lakehouse the two DAG runs left: four ingests, two scorings of their model
    into one predictions table and a training, all at once, with the Thrift server
    answering SQL alongside; every count is exact and no job met a lock.

    The server serves every interface, so it checks logins (sql_server.auth=password):
    beeline and lakeforge sql without a password or with a wrong one are refused, and
    with the right one get their answer."""
    assert shared_lake.after is not None, f"the DAG runs this builds on failed: " \
                                          f"{shared_lake.states}\n{shared_lake.logs}"
    root = shared_lake.root
    lake = {**shared_lake.env, "LAKEFORGE_SQL_SERVER__AUTH": "password",
            "LAKEFORGE_SQL_SERVER__USERS_FILE": str(root / "sql-users")}
    added = subprocess.run([sys.executable, "-m", "jobs.cli", "sql-server", "user", "analyst",
                            "--password-stdin"], input="s3cret-pass\n", env=lake,
                           capture_output=True, text=True, timeout=120, check=False)
    assert added.returncode == 0 and "added SQL user analyst" in added.stdout, added.stderr
    as_analyst = {**lake, "LAKEFORGE_SQL_SERVER__USER": "analyst"}
    port, server_log = free_port(), root / "thrift.log"
    server = subprocess.Popen(                                # the Thrift server alongside
        [sys.executable, "-m", "jobs.cli", "sql-server", "--host", "0.0.0.0", "--port",
         str(port)], env=lake,
        stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    count = "SELECT count(*) AS n FROM lakeforge.gold_wine"
    try:
        wait_listening(port, server, server_log)
        jobs = [lakeforge(lake, "ingest", name, "--batch", "b1") for name in SOURCES]
        jobs += [lakeforge(lake, "score", "mlp", "--model", "wine_mlp", "--run-id", run)
                 for run in ("again-1", "again-2")]
        jobs.append(lakeforge(lake, "train", "mlp", "--dataset", "wine", "--name",
                              "wine_mlp_2", "--param", "epochs=1", "--param", "hidden=[8]"))
        answer = beeline(lake, port, count, user="analyst", password="s3cret-pass")
        anonymous = beeline(lake, port, count, check=False)
        wrong = beeline(lake, port, count, user="analyst", password="guess", check=False)
        sql = [subprocess.run([sys.executable, "-m", "jobs.cli", "sql", count],
                              env={**as_analyst, "LAKEFORGE_SQL_SERVER__PASSWORD": password},
                              capture_output=True, text=True, timeout=300, check=False)
               for password in ("s3cret-pass", "guess", "")]
        outputs = [succeeded(job) for job in jobs]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=120)
    assert "178" in answer.splitlines(), answer + server_log.read_text()[-3000:]  # mid-jobs
    for refused in (anonymous, wrong):
        assert "Error validating the login" in refused and "178" not in refused.splitlines()
    right, bad, missing = sql
    assert right.returncode == 0 and right.stdout.split()[-3] == "178", right.stderr[-2000:]
    assert bad.returncode == 2 and "refused the login of 'analyst'" in bad.stderr, bad.stderr
    assert missing.returncode == 2 and "asks for a password" in missing.stderr, missing.stderr
    assert not any("Another instance of Derby" in out for out in outputs)

    table = functools.partial(_delta, spark, shared_lake.warehouse)

    for i, name in enumerate(SOURCES):
        bronze = table(f"bronze_{name}")
        assert bronze.count() == bronze.select("order_id").distinct().count() == 200 + 10 * i
    runs = {r["run_id"]: r["count"] for r in table("predictions_mlp").groupBy("run_id").count()
            .collect()}
    assert runs.pop("again-1") == runs.pop("again-2") == 178
    assert sorted(runs.values()) == [178, 569]                 # the DAG runs' own
    models = sorted((r.name, r.version) for r in table("models").collect())
    assert models == [("breast_cancer_mlp", 1), ("wine_mlp", 1), ("wine_mlp_2", 1)]

    listed = succeeded(lakeforge(lake, "tables"))
    assert all(f"lakeforge.bronze_{name}" in listed for name in SOURCES)
