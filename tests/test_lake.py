"""A lake on object storage: every table on a real S3 server (S3Proxy), through s3a://."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from pyarrow import fs

from lakehouse import objectstore
from lakehouse.config import load_config
from models.tracking import Tracker
from tests.helpers import free_port, small_job_env

ORDERS = """
datasets:
  orders:
    kind: tabular
    roles: {id: order_id, label: status}
    source: {files: "%s", format: csv, options: {header: true},
             schema: "order_id BIGINT NOT NULL, amount DOUBLE, status STRING"}
    silver:
      keys: [order_id]
      rules: [{name: amount_positive, expr: "amount > 0", on_fail: quarantine}]
    features: {label: "status = 'RETURNED'", numeric: [amount]}
"""

NOTES = """
datasets:
  notes:
    kind: text
    roles: {id: doc_id, text: text, group: corpus}
    source: {parser: line_documents, files: "%s", options: {corpus: notes},
             schema: "corpus STRING NOT NULL, doc_id STRING NOT NULL, title STRING, text STRING"}
    silver: {keys: [corpus, doc_id]}
    features: {min_count: 1}
"""
WORDS = ("river", "stone", "bridge", "lantern", "harbour", "meadow", "copper", "willow")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 server, started once for this file on a port of its own."""
    home = tmp_path_factory.mktemp("s3-home")
    cfg = load_config([f"home={home}", f"lake.server.port={free_port()}"], environ={})
    objectstore.start(cfg)
    yield cfg
    objectstore.stop(cfg)


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env,
                          capture_output=True, text=True, timeout=900, check=False)


def _ok(env: dict[str, str], *args: str) -> str:
    done = _run(env, *args)
    assert done.returncode == 0, f"{args}:\n{done.stderr[-4000:]}"
    return done.stdout


def _row(out: str) -> list[str]:
    """The values of the one row a `lakeforge sql` printed (its table's last line)."""
    return [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("(")][-1].split()


def test_ingest_curate_and_features_write_every_table_to_the_s3_server(s3, tmp_path):
    landing, entries, home = tmp_path / "landing", tmp_path / "entries", tmp_path / "home"
    landing.mkdir()
    entries.mkdir()
    rows = [f"{i},{(i % 9) - 1}.5,{'RETURNED' if i % 4 == 0 else 'KEPT'}" for i in range(1, 41)]
    (landing / "day1.csv").write_text("order_id,amount,status\n" + "\n".join(rows) + "\n")
    (entries / "orders.yml").write_text(ORDERS % (landing / "*.csv"))
    env = {**small_job_env(home, entries), **objectstore.environment(s3, "lake1")}

    # (A batch run again on S3 adds nothing: the landing-folder test below.)
    _ok(env, "ingest", "orders", "--batch", "b1")
    _ok(env, "curate", "orders")
    _ok(env, "features", "orders")
    counts = _ok(env, "sql", "SELECT (SELECT count(*) FROM bronze_orders) AS bronze, "
                             "(SELECT count(*) FROM silver_orders) AS silver, "
                             "(SELECT count(*) FROM ops_quarantine) AS quarantined, "
                             "(SELECT count(*) FROM gold_orders) AS gold, "
                             "(SELECT input_file_name() FROM silver_orders LIMIT 1) AS read_from")
    bad = sum(1 for i in range(1, 41) if (i % 9) - 1 + 0.5 <= 0)
    *numbers, read_from = _row(counts)
    assert numbers == ["40", str(40 - bad), str(bad), str(40 - bad)], counts

    store = objectstore.filesystem(s3)
    database = f"{s3.lake.server.bucket}/lake1/warehouse/lakeforge.db"
    tables = {info.base_name for info in store.get_file_info(fs.FileSelector(database))}
    assert {"bronze_orders", "silver_orders", "gold_orders", "ops_quarantine", "ops_quality",
            "ops_ingest_files", "ops_curations"} <= tables
    log = store.get_file_info(fs.FileSelector(f"{database}/silver_orders/_delta_log"))
    assert any(i.base_name.endswith(".json") for i in log)
    assert read_from.startswith(f"s3a://{database}/silver_orders/part-"), counts  # via the catalog
    # Train with two Horovod ranks reading gold from S3; kill the job after its first
    # epoch's checkpoint, run it again: it resumes from the checkpoint on S3.
    train = ("train", "mlp", "--dataset", "orders", "--run-id", "r1", "--param", "epochs=6",
             "--param", "patience=100")
    killed = subprocess.Popen([sys.executable, "-m", "jobs.cli", *train], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    checkpoints = f"{s3.lake.server.bucket}/lake1/checkpoints/train/r1"
    try:
        for line in killed.stdout:
            if "epoch 2/6" in line:
                break
        _wait_for(lambda: _names(store, checkpoints))
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    saved = _names(store, checkpoints)
    assert saved and all(n.startswith("epoch-") for n in saved), saved
    again = _run(env, *train)
    resumed = again.stdout + again.stderr                   # the ranks' lines are on stderr
    assert again.returncode == 0, resumed[-4000:]
    assert "epoch 1/6" not in resumed and "epoch 6/6" in resumed, resumed[-3000:]
    artifact = f"{database.rsplit('/', 2)[0]}/models/lakeforge/orders_mlp/r1"
    assert {"model.keras", "meta.json", "history.json"} <= set(_names(store, artifact))
    assert not _names(store, f"{s3.lake.server.bucket}/lake1/runs")   # gathered, removed
    # The killed training's MLflow run is the one its resume finished; the model's files
    # are run artifacts on S3, and the version is MLflow's v1 too.
    tracker = Tracker(load_config([f"home={home}"], environ=env))
    [run] = tracker.client.search_runs([tracker.experiment_id])
    assert (run.info.run_name, run.info.status) == ("r1", "FINISHED")
    assert run.info.artifact_uri.startswith(f"s3://{s3.lake.server.bucket}/lake1/mlflow/")
    logged = run.info.artifact_uri.removeprefix("s3://") + "/model/artifacts/lakeforge"
    assert {"model.keras", "history.json"} <= set(_names(store, logged))
    assert list(tracker.versions("orders_mlp")) == [1]

    _ok(env, "score", "mlp", "--model", "orders_mlp")
    scored = _ok(env, "sql", "SELECT count(*), count(DISTINCT row_id), min(model_version) "
                             "FROM predictions_mlp")
    assert _row(scored) == [str(40 - bad), str(40 - bad), "1"], scored
    assert not (home / "warehouse").exists() and not (home / "models").exists() \
        and not (home / "checkpoints").exists()           # nothing of the lake is local


def _names(store: fs.FileSystem, folder: str) -> list[str]:
    return sorted(i.base_name for i in store.get_file_info(
        fs.FileSelector(folder, allow_not_found=True)))


def _wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_a_wrong_endpoint_or_credentials_stop_with_one_line(s3, tmp_path):
    env = {**small_job_env(tmp_path / "home"), **objectstore.environment(s3, "lake2")}
    for broken in ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
                   {"LAKEFORGE_LAKE__S3__ENDPOINT": f"http://127.0.0.1:{free_port()}"}):
        done = _run({**env, **broken}, "tables")
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("lakeforge tables")]
        assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
        assert f"lake s3a://{s3.lake.server.bucket}/lake2" in errors[0]
        assert "cannot be reached" in errors[0] and "at org.apache" not in done.stderr


APPEND = """
import sys, time
from pathlib import Path
from lakehouse.config import load_config
from lakehouse.session import build_spark

spark = build_spark(load_config())
path, writer, times, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
(barrier / writer).touch()                 # ready; every writer starts on "go" at once
while not (barrier / "go").exists():
    time.sleep(0.05)
for i in range(times):
    rows = [(writer, i, j) for j in range(10)]
    spark.createDataFrame(rows, "writer STRING, i INT, j INT").write.format("delta") \\
        .mode("append").save(path)
"""


def test_drivers_appending_to_one_s3_table_at_once_lose_no_commit(s3, tmp_path):
    """Three drivers (each its own home and metastore) append four times each to one
    Delta table on the S3 server at the same moment: every commit and row is there."""
    table = f"s3a://{s3.lake.server.bucket}/lake3/concurrent"
    env = {**small_job_env(tmp_path / "reader"), **objectstore.environment(s3, "lake3")}
    _ok(env, "sql", f"CREATE TABLE delta.`{table}` (writer STRING, i INT, j INT) USING delta")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    writers = [subprocess.Popen(
        [sys.executable, "-c", APPEND, table, f"w{k}", "4", str(barrier)],
        env={**small_job_env(tmp_path / f"home{k}"), **objectstore.environment(s3, "lake3"),
             "LAKEFORGE_SPARK__MASTER": "local[1]"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(3)]
    deadline = time.monotonic() + 600
    while len(list(barrier.iterdir())) < 3 and time.monotonic() < deadline:
        assert all(p.poll() is None for p in writers), "a writer stopped before the start"
        time.sleep(0.1)
    (barrier / "go").touch()
    for proc in writers:
        out = proc.communicate(timeout=900)[0]
        assert proc.returncode == 0, out[-4000:]
    seen = _ok(env, "sql", f"SELECT count(*), count(DISTINCT writer, i) FROM delta.`{table}`")
    assert _row(seen) == ["120", "12"], seen
    store = objectstore.filesystem(s3)
    log = [i.base_name for i in store.get_file_info(fs.FileSelector(
        f"{s3.lake.server.bucket}/lake3/concurrent/_delta_log")) if i.base_name.endswith(".json")]
    assert sorted(log) == [f"{v:020d}.json" for v in range(13)]     # the create, 12 appends


REFUSE = """
import sys
from lakehouse.config import load_config
from lakehouse.errors import java_classes
from lakehouse.session import build_spark

spark = build_spark(load_config())
jvm, conf = spark._jvm, spark.sparkContext._jsc.hadoopConfiguration()
print("store", spark.conf.get("spark.delta.logStore.s3a.impl"))
store = jvm.lakeforge.delta.S3ConditionalLogStore(conf)
path = jvm.org.apache.hadoop.fs.Path(sys.argv[1])

def write(text, overwrite):
    lines = jvm.java.util.ArrayList()
    lines.add(text)
    try:
        store.write(path, lines.iterator(), overwrite, conf)
        return "written"
    except Exception as exc:
        return java_classes(exc)[0]

print("first", write('{"a": 1}', False))
print("again", write('{"a": 2}', False))
print("overwrite", write('{"a": 3}', True))
print("read", list(store.read(path, conf)))
"""


def test_the_log_store_refuses_a_second_creation_of_a_commit_file(s3, tmp_path):
    """What keeps commits atomic across drivers, seen directly: the second creation of
    a commit file is refused with the exception Delta retries on; an overwrite is not."""
    env = {**small_job_env(tmp_path / "home"), **objectstore.environment(s3, "lake4")}
    commit = f"s3a://{s3.lake.server.bucket}/lake4/t/_delta_log/{0:020d}.json"
    done = subprocess.run([sys.executable, "-c", REFUSE, commit], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    said = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert said["store"] == "lakeforge.delta.S3ConditionalLogStore"
    assert said["first"] == "written" and said["overwrite"] == "written"
    assert said["again"] == "java.nio.file.FileAlreadyExistsException"
    assert said["read"] == "['{\"a\": 3}']"


def test_a_landing_folder_on_s3_is_ingested_file_by_file_exactly_once(s3, tmp_path):
    """CSV files landing under s3a://: each is ingested once, whichever batch runs again."""
    store = objectstore.filesystem(s3)
    landing = f"{s3.lake.server.bucket}/landing5/orders"
    entries = tmp_path / "entries"
    entries.mkdir()
    (entries / "orders.yml").write_text(ORDERS % f"s3a://{landing}/")
    env = {**small_job_env(tmp_path / "home", entries), **objectstore.environment(s3, "lake5")}

    def land(name: str, first: int) -> None:
        rows = [f"{i},{i}.5,KEPT" for i in range(first, first + 10)]
        with store.open_output_stream(f"{landing}/{name}") as out:
            out.write(("order_id,amount,status\n" + "\n".join(rows) + "\n").encode())

    land("day1.csv", 1)
    _ok(env, "ingest", "orders", "--batch", "b1")
    land("day2.csv", 11)
    _ok(env, "ingest", "orders", "--batch", "b2")
    _ok(env, "ingest", "orders", "--batch", "b1")          # a batch run again: nothing new
    seen = _ok(env, "sql", "SELECT count(*), count(DISTINCT order_id), "
                           "count(DISTINCT _source_file), min(_source_file), "
                           "(SELECT array_join(sort_array(collect_list(concat(batch, ':', "
                           "path))), ',') FROM ops_ingest_files) AS claims FROM bronze_orders")
    claims = ",".join(f"{b}:s3a://{landing}/{f}" for b, f in (("b1", "day1.csv"),
                                                               ("b2", "day2.csv")))
    assert _row(seen) == ["20", "20", "2", f"s3a://{landing}/day1.csv", claims], seen


def test_a_text_corpus_on_s3_is_parsed_trained_and_scored(s3, tmp_path):
    """A parser plug-in reads a landing file on S3 (a blank line quarantined with its
    reason); word2vec's ranks read the corpus from S3 and write checkpoints and
    embeddings there; scoring reads them back."""
    store = objectstore.filesystem(s3)
    landing = f"{s3.lake.server.bucket}/landing6/notes.txt"
    lines = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) for i in range(60)]
    lines[7] = "   "
    with store.open_output_stream(landing) as out:
        out.write(("\n".join(lines) + "\n").encode())
    entries = tmp_path / "entries"
    entries.mkdir()
    (entries / "notes.yml").write_text(NOTES % f"s3a://{landing}")
    env = {**small_job_env(tmp_path / "home", entries), **objectstore.environment(s3, "lake6")}
    definitions = tmp_path / "pipelines.yml"
    definitions.write_text(yaml.safe_dump({"pipelines": {"notes_word2vec": {
        "sources": ["notes"], "features": "notes", "family": "word2vec",
        "params": {"epochs": 2, "dim": 8, "neighbours": 3}}}}))

    # ingest, curate, features, train and score in one process, as a pipeline runs them
    _ok(env, "run", "notes_word2vec", "--batch", "b1", "--definitions", str(definitions))
    seen = _ok(env, "sql", "SELECT (SELECT count(*) FROM bronze_notes), "
                           "(SELECT count(*) FROM ops_quarantine WHERE source_file = "
                           f"'s3a://{landing}' AND reason LIKE '%blank document%'), "
                           "(SELECT count(*) FROM gold_word2vec_vocab_notes), "
                           "(SELECT count(*) FROM predictions_word2vec WHERE size(neighbours) = 3)")
    assert _row(seen) == ["59", "1", str(len(WORDS)), str(len(WORDS))], seen
    lake = f"{s3.lake.server.bucket}/lake6"
    [run] = _names(store, f"{lake}/checkpoints/train")
    assert _names(store, f"{lake}/checkpoints/train/{run}")
    assert "embeddings.npy" in _names(store, f"{lake}/models/lakeforge/notes_word2vec/{run}")
