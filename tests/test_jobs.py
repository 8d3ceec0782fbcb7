"""The command line, maintenance, the table list, and a real spark-submit run."""

import csv
import dataclasses
import io
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import main
from lakehouse import endpoint
from lakehouse.catalog import list_tables, run_sql
from lakehouse.config import MaintainConfig, load_config
from lakehouse.errors import ConfigError
from lakehouse.ingest import ingest
from lakehouse.maintain import maintain
from lakehouse.render import format_table
from lakehouse.submit import beeline_command, submit_command, submit_env
from tests.helpers import free_port, small_job_env, wait_listening, with_paths


def test_table_list_has_counts_and_versions(spark, cfg, tmp_path):
    cfg = with_paths(cfg, mitdb=tmp_path / "*.csv")
    for batch in ("b1", "b2"):
        (tmp_path / f"{batch}.csv").write_text("data,label\n1,0\n2,0\nx,0\n")
        ingest(spark, cfg, ["mitdb"], batch)
    db = cfg.catalog.database
    infos = {t.name: (t.rows, t.version) for t in list_tables(spark, cfg)}
    assert infos == {f"{db}.bronze_streams": (4, 2), f"{db}.ops_quarantine": (2, 2),
                     f"{db}.ops_ingest_files": (2, 2), f"{db}.ops_quality": (2, 2)}
    out = run_sql(spark, cfg, "SELECT _ingest_batch, count(*) AS n FROM bronze_streams "
                              "GROUP BY 1 ORDER BY 1")
    assert out.splitlines()[2:] == ["b1             2", "b2             2", "(2 rows)"]


def test_sql_prints_numbers_as_computed_and_writes_csv_and_json(spark, cfg):
    query = ("SELECT * FROM VALUES (80470.0D, CAST(4359.25 AS DECIMAL(10, 2)), 'a,b', "
             "DATE'2026-12-06', CAST(NULL AS INT)), (1.0E-7D, CAST(-0.5 AS DECIMAL(10, 2)), "
             "'x', DATE'2026-12-07', 3) AS t(price, avg_price, name, day, n)")
    table = run_sql(spark, cfg, query).splitlines()
    assert table[2].split() == ["80,470.0", "4,359.25", "a,b", "2026-12-06", "NULL"]
    assert table[3].split() == ["1e-07", "-0.50", "x", "2026-12-07", "3"]
    assert table[-1] == "(2 rows)"
    cut = run_sql(spark, cfg, query, limit=1).splitlines()
    assert cut[-1] == "(1 row; the first 1 shown, --limit N for more)"

    rows = list(csv.reader(io.StringIO(run_sql(spark, cfg, query, fmt="csv"))))
    assert rows == [["price", "avg_price", "name", "day", "n"],
                    ["80470.0", "4359.25", "a,b", "2026-12-06", ""],
                    ["1e-07", "-0.50", "x", "2026-12-07", "3"]]
    lines = [json.loads(ln) for ln in run_sql(spark, cfg, query, limit=1, fmt="json").splitlines()]
    assert lines == [{"price": 80470.0, "avg_price": "4359.25", "name": "a,b",
                      "day": "2026-12-06", "n": None},
                     {"price": 1e-07, "avg_price": "-0.50", "name": "x", "day": "2026-12-07",
                      "n": 3}]                                 # every row, not --limit's
    with pytest.raises(ConfigError, match="unknown format 'xml'"):
        run_sql(spark, cfg, query, fmt="xml")


def test_format_table_aligns_numbers_right():
    text = format_table(["name", "rows"], [("a", 5), ("bb", 1234567)])
    assert text.splitlines() == ["name       rows", "----  ---------", "a             5",
                                 "bb    1,234,567"]


def test_maintain_compacts_and_refuses_short_retention(spark, cfg, tmp_path):
    cfg = with_paths(cfg, mitdb=tmp_path / "*.csv")
    for batch in ("b1", "b2"):
        (tmp_path / f"{batch}.csv").write_text("data,label\n1,0\n2,1\n")
        ingest(spark, cfg, ["mitdb"], batch)
    [result] = maintain(spark, cfg, ["bronze_streams"])
    assert result.files_removed_by_optimize == 2 and result.files_added_by_optimize == 1
    covered = {r.table.split(".")[1] for r in maintain(spark, cfg)}
    assert covered == {"bronze_streams", "ops_quarantine", "ops_ingest_files", "ops_quality"}
    assert spark.table(f"{cfg.catalog.database}.bronze_streams").count() == 4
    short = dataclasses.replace(cfg, maintain=MaintainConfig(vacuum_retention_hours=1))
    with pytest.raises(ConfigError, match="maintain.vacuum_retention_hours=1"):
        maintain(spark, short, ["bronze_streams"])


def test_cli_names_unknown_source(spark, cfg, capsys):
    code = main(["ingest", "nosuch", "--set", f"home={cfg.home}",
                 "--set", f"catalog.database={cfg.catalog.database}"])
    assert code == 2
    assert "unknown data set 'nosuch'" in capsys.readouterr().err


def test_cli_names_bad_config_value(capsys):
    assert main(["tables", "--set", "spark.shuffle_partitions=lots"]) == 2
    assert "spark.shuffle_partitions='lots'" in capsys.readouterr().err


CODES = """datasets:
  codes:
    source: {files: %s, format: csv, options: {header: true}, schema: "id INT, code STRING"}
    silver: {keys: [id], select: ["id", "CAST(code AS INT) AS code"]}
"""


def test_a_failing_spark_job_shows_one_line_and_logs_the_trace(tmp_path):
    """A blank value that silver.select casts (ANSI mode): the terminal gets lakeforge's
    one line naming the log file; Spark's stack traces are in that file."""
    landing, entries = tmp_path / "landing", tmp_path / "entries"
    landing.mkdir()
    entries.mkdir()
    (landing / "a.csv").write_text("id,code\n1,12\n2, \n")
    (entries / "codes.yml").write_text(CODES % (landing / "*.csv"))
    env = small_job_env(tmp_path / "home", entries)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env,
                              capture_output=True, text=True, timeout=600, check=False)

    ingested = run("ingest", "codes", "--batch", "b1")
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    curated = run("curate", "codes")
    assert curated.returncode == 2, curated.stderr[-3000:]
    errors = [ln for ln in curated.stderr.splitlines() if ln.startswith("lakeforge curate: error")]
    assert len(errors) == 1 and "CAST_INVALID_INPUT" in errors[0], curated.stderr[-3000:]
    assert "at org.apache.spark" not in curated.stderr
    logged = re.search(r"\(stack trace: (\S+)\)$", errors[0])
    assert logged and Path(logged[1]).parent == tmp_path / "home" / "logs"
    trace = Path(logged[1]).read_text()
    assert "ERROR Executor: Exception in task" in trace and "at org.apache.spark" in trace
    assert "Traceback" in trace and "QualityError" in trace


def test_submit_command_carries_delta_and_interpreter():
    cfg = load_config(["home=/srv/lake", "spark.master=spark://h:7077"], environ={})
    cmd = submit_command(cfg, "ingest", ["wine"])
    assert cmd[cmd.index("--master") + 1] == "spark://h:7077"
    assert "delta" in (cmd[cmd.index("--jars") + 1] if "--jars" in cmd
                       else cmd[cmd.index("--packages") + 1])
    assert f"spark.pyspark.python={sys.executable}" in cmd
    assert "spark.sql.warehouse.dir=/srv/lake/warehouse" in cmd
    assert cmd[-1] == "wine" and cmd[-2].endswith("jobs/ingest.py")
    with pytest.raises(ConfigError, match="unknown job 'nope'"):
        submit_command(cfg, "nope")


@pytest.mark.slow
def test_spark_submit_ingest_then_beeline_through_a_thrift_server(spark, tmp_path):
    """A real spark-submit in its own process, with its own home (Derby allows one JVM);
    then a real Thrift server over that home on a free loopback port, queried with
    pyspark's beeline."""
    home = tmp_path / "home"
    overrides = [f"home={home}", "spark.master=local[1]", "spark.ui_enabled=false"]
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "submit", *[a for o in overrides for a in ("--set", o)],
         "ingest", "wine", "--batch", "s1"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # spark-submit's Python runner sends the job's stderr to its stdout.
    assert "wine: read 178 records from 1 file(s)" in proc.stdout + proc.stderr
    table_dir = home / "warehouse" / "lakeforge.db" / "bronze_wine"
    df = spark.read.format("delta").load(str(table_dir))
    assert df.count() == 178
    assert {r._ingest_batch for r in df.select("_ingest_batch").distinct().collect()} == {"s1"}

    cfg = load_config(overrides, environ={})
    port, log_path = free_port(), tmp_path / "thrift.log"
    settings = [a for o in overrides for a in ("--set", o)]
    query = ("SELECT label_name, count(*) AS n FROM lakeforge.bronze_wine "
             "GROUP BY label_name ORDER BY label_name")

    def lakeforge_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.cli", *args, *settings],
                              capture_output=True, text=True, timeout=300, check=False)

    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "jobs.cli", "sql-server", "--port",
                                   str(port), *settings], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, server, log_path, wait=240)
        # a view beside the table: `tables` lists tables only
        out = subprocess.run(beeline_command(port, "CREATE VIEW lakeforge.wine_labels AS "
                                                   f"{query}; {query}"),
                             capture_output=True, text=True, timeout=300, check=False,
                             env=submit_env(cfg))
        # lakeforge sql and tables answer through the running server (a session of their
        # own could not even start: the server holds the Derby metastore).
        table = lakeforge_cli("sql", query)
        csv_out = lakeforge_cli("sql", "--format", "csv", query)
        tables = lakeforge_cli("tables")
        bad = lakeforge_cli("sql", "SELECT * FROM no_such_table")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    # beeline echoes its prompt ("0: jdbc:hive2://...>"), the CSV header follows it.
    rows = [line for line in out.stdout.splitlines() if line.startswith("class_")]
    assert "label_name,n" in out.stdout
    assert rows == ["class_0,59", "class_1,71", "class_2,48"]
    assert table.returncode == 0 and "answered by the SQL endpoint" in table.stderr, \
        table.stderr[-2000:]
    assert [ln.split() for ln in table.stdout.splitlines()] == [
        ["label_name", "n"], ["----------", "--"], ["class_0", "59"], ["class_1", "71"],
        ["class_2", "48"], ["(3", "rows)"]]
    assert csv_out.stdout.splitlines() == ["label_name,n", "class_0,59", "class_1,71",
                                           "class_2,48"]
    assert tables.returncode == 0 and "lakeforge.bronze_wine" in tables.stdout, tables.stderr
    version = spark.sql(f"DESCRIBE HISTORY delta.`{table_dir}` LIMIT 1").first()["version"]
    assert [ln.split()[1:] for ln in tables.stdout.splitlines()
            if ln.startswith("lakeforge.bronze_wine")] == [["178", str(version)]]
    assert "wine_labels" not in tables.stdout
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("lakeforge sql: error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "no_such_table" in errors[0], bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (home / "sql-server.json").exists()          # withdrawn when it stopped


def test_sql_endpoint_serves_other_interfaces_only_with_logins(tmp_path, capsys):
    """Without sql_server.auth=password the server stays on loopback; the users file keeps
    PBKDF2 digests (owner-only), and removing and changing users works."""
    settings = ["--set", f"home={tmp_path}"]
    cfg = load_config([f"home={tmp_path}"], environ={})
    assert main(["sql-server", "--host", "0.0.0.0", *settings]) == 2
    assert "sql_server.auth=none" in capsys.readouterr().err
    assert not endpoint.state_file(cfg).exists()                 # nothing was started
    endpoint.check_serving(cfg, "127.0.0.1")
    endpoint.check_serving(cfg, "::1")
    secured = load_config([f"home={tmp_path}", "sql_server.auth=password"], environ={})
    with pytest.raises(ConfigError, match="names no user"):
        endpoint.check_serving(secured, "10.1.2.3")
    assert not endpoint.set_user(secured, "ana", "first")
    assert endpoint.set_user(secured, "ana", "second")            # a new password
    assert not endpoint.set_user(secured, "bo", "pw")
    endpoint.check_serving(secured, "10.1.2.3")
    assert endpoint.users(secured) == ["ana", "bo"]
    assert secured.sql_users_file.stat().st_mode & 0o777 == 0o600
    line = secured.sql_users_file.read_text().splitlines()[0]
    name, scheme, rounds, salt, digest = line.split(":")
    assert (name, scheme) == ("ana", "pbkdf2_sha256") and "second" not in line
    assert endpoint.password_line("ana", "second", int(rounds), bytes.fromhex(salt)) == line
    assert endpoint.password_line("ana", "first", int(rounds), bytes.fromhex(salt)) != line
    assert endpoint.set_user(secured, "ana", None)
    assert endpoint.users(secured) == ["bo"]
    with pytest.raises(ConfigError, match="user name"):
        endpoint.set_user(secured, "a:b", "pw")
    with pytest.raises(ConfigError, match="sql_server.auth"):
        load_config(["sql_server.auth=ldap"], environ={})


def test_hive_session_folders_stay_in_the_home_not_in_tmp(spark, base_cfg):
    spark.sql("SHOW DATABASES").collect()                  # the Hive client is up
    resources = base_cfg.home / "tmp" / "hive-resources"
    assert resources.is_dir()                             # Hive made it here, at its start
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    assert conf.get("hive.downloaded.resources.dir") == str(resources)
    assert conf.get("hive.exec.local.scratchdir") == str(base_cfg.home / "tmp" / "hive-scratch")
