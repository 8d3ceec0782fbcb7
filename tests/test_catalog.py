"""Data sets declared in the catalog: every source kind, landing folders, rules, checks."""

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from jobs.cli import main
from lakehouse import delta
from lakehouse.config import load_config
from lakehouse.curate import curate
from lakehouse.errors import CatalogError, ConfigError, QualityError, error_condition
from lakehouse.ingest import ingest
from tests.helpers import orders_entry, with_datasets


def _orders(folder: Path, **silver) -> dict:
    return {"orders": orders_entry(folder, **silver)}


def _t(spark, cfg, name):
    return spark.table(f"{cfg.catalog.database}.{name}")


def test_csv_landing_folder_ingests_each_file_once(spark, cfg, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "day1.csv").write_text(
        "order_id,placed_at,amount,status\n1,2026-11-01 10:00:00,10.5,NEW\n2,,7,PAID\n")
    (landing / "_in_progress.csv").write_text("order_id\n99\n")   # not landed yet: skipped
    cfg = with_datasets(cfg, _orders(landing))
    [first] = ingest(spark, cfg, ["orders"], "d1")
    assert (first.files, first.read, first.bronze, first.quarantined) == (1, 2, 2, 0)
    [again] = ingest(spark, cfg, ["orders"], "d2")
    assert again.skipped and again.files == 0
    (landing / "day2.csv").write_text("order_id,placed_at,amount,status\n3,,1.25,NEW\n")
    [second] = ingest(spark, cfg, ["orders"], "d3")
    assert (second.files, second.bronze) == (1, 1)
    bronze = _t(spark, cfg, "bronze_orders")
    rows = sorted((r.order_id, r._ingest_batch, Path(r._source_file).name)
                  for r in bronze.collect())
    assert rows == [(1, "d1", "day1.csv"), (2, "d1", "day1.csv"), (3, "d3", "day2.csv")]
    assert bronze.filter("order_id = 1").first().placed_at.hour == 10
    claimed = _t(spark, cfg, "ops_ingest_files").select("batch", "path").collect()
    assert sorted((r.batch, Path(r.path).name) for r in claimed) == [
        ("d1", "day1.csv"), ("d3", "day2.csv")]
    # A landed file that changes afterwards is reported, not ingested again.
    (landing / "day1.csv").write_text("order_id,placed_at,amount,status\n1,,99,NEW\n")
    [changed] = ingest(spark, cfg, ["orders"], "d4")
    assert changed.skipped and [Path(p).name for p in changed.changed] == ["day1.csv"]
    assert bronze.count() == 3


def test_malformed_csv_is_quarantined_with_reasons_and_nothing_is_lost(spark, cfg, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    header = "order_id,placed_at,amount,status\n"
    (landing / "a.csv").write_text(
        header + "1,,10,NEW\n"          # good
        "2,,3.5\n"                      # short row
        "3,,4,PAID,extra\n"             # long row
        "4,,lots,NEW\n"                 # bad type
        "\n"                            # blank line: skipped
        '5,"unterminated,6,NEW\n'       # unterminated quote swallows the row
        ",,1,NEW\n"                     # NOT NULL key missing
        "6,,2,SHIPPED\n")               # good
    (landing / "b.csv").write_bytes(header.encode() + b"\x00\xff\xfe\x10garbage\x81\n7,,1,NEW\n")
    (landing / "c.csv").write_text("")  # empty file
    (landing / "d.csv").write_bytes((header + "8,,1,NEW\n").encode("utf-16"))
    cfg = with_datasets(cfg, _orders(landing))
    [result] = ingest(spark, cfg, ["orders"], "b1")
    bronze = _t(spark, cfg, "bronze_orders")
    quarantine = _t(spark, cfg, "ops_quarantine").filter("stage = 'ingest'")
    assert result.read == result.bronze + result.quarantined
    assert result.bronze == bronze.count() and result.quarantined == quarantine.count()
    assert sorted(r.order_id for r in bronze.collect()) == [1, 6, 7]
    reasons = {r.raw: r.reason for r in quarantine.collect()}
    assert reasons["2,,3.5"] == "expected 4 fields, found 3"
    assert reasons["3,,4,PAID,extra"] == "expected 4 fields, found 5"
    assert reasons["4,,lots,NEW"] == "column 'amount': 'lots' is not a valid double"
    assert reasons['5,"unterminated,6,NEW'].startswith("malformed CSV record")
    assert reasons['{"amount":1.0,"status":"NEW"}'] == "column 'order_id': value is missing"
    files = {Path(r.source_file).name for r in quarantine.collect()}
    assert {"b.csv", "d.csv"} <= files                # garbage and UTF-16 lines quarantined
    assert all(r.rules == ["well_formed"] for r in quarantine.collect())
    [quality] = _t(spark, cfg, "ops_quality").collect()
    assert (quality.rule, quality.checked, quality.passed, quality.quarantined) == (
        "well_formed", result.read, 3, result.quarantined)


def test_json_lines_with_nested_fields(spark, cfg, tmp_path):
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join([
        json.dumps({"id": 1, "user": {"name": "ann", "age": 31}, "tags": ["a", "b"]}),
        "",
        json.dumps({"id": "two", "user": {"name": "bob"}}),
        "{not json",
        json.dumps({"id": 3, "user": None, "tags": []}),
    ]) + "\n")
    cfg = with_datasets(cfg, {"events": {
        "source": {"files": str(f), "format": "json",
                   "schema": "id BIGINT, user STRUCT<name: STRING, age: INT>, tags ARRAY<STRING>"},
        "silver": {"keys": ["id"], "select": ["id", "user.name AS user_name", "user.age AS age",
                                              "size(tags) AS n_tags"]},
    }})
    [result] = ingest(spark, cfg, ["events"], "b1")
    assert (result.read, result.bronze, result.quarantined) == (4, 2, 2)
    reasons = sorted(r.reason for r in _t(spark, cfg, "ops_quarantine").collect())
    assert reasons[0] == "column 'id': \"two\" is not a valid bigint"
    assert reasons[1].startswith("not valid JSON")
    curate(spark, cfg, ["events"])
    silver = _t(spark, cfg, "silver_events")
    assert silver.columns == ["id", "user_name", "age", "n_tags"]
    assert sorted(tuple(r) for r in silver.collect()) == [(1, "ann", 31, 2), (3, None, None, 0)]


def test_parquet_text_and_binary_files(spark, cfg, tmp_path):
    spark.createDataFrame([(1, "x"), (2, "y")], "k INT, v STRING").write.parquet(
        str(tmp_path / "pq"))
    (tmp_path / "notes.txt").write_text("first line\n\n  \nsecond line\n")
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "one.bin").write_bytes(b"\x00\x01\x02")
    cfg = with_datasets(cfg, {
        "pq": {"source": {"files": str(tmp_path / "pq"), "format": "parquet"},
               "silver": {"keys": ["k"]}},
        "notes": {"source": {"files": str(tmp_path / "notes.txt"), "format": "text"},
                  "silver": {"keys": ["value"]}},
        "blobs": {"source": {"files": str(tmp_path / "blobs"), "format": "binaryFile"},
                  "silver": {"keys": ["path"]}},
    })
    results = {r.source: r for r in ingest(spark, cfg, ["pq", "notes", "blobs"], "b1")}
    assert {n: r.bronze for n, r in results.items()} == {"pq": 2, "notes": 2, "blobs": 1}
    assert sorted(r.value for r in _t(spark, cfg, "bronze_notes").collect()) == [
        "first line", "second line"]
    blob = _t(spark, cfg, "bronze_blobs").first()
    assert blob.content == b"\x00\x01\x02" and blob.length == 3
    assert sorted(r.v for r in _t(spark, cfg, "bronze_pq").collect()) == ["x", "y"]


def test_existing_delta_table_read_at_a_version(spark, cfg, tmp_path):
    path = str(tmp_path / "upstream")
    spark.createDataFrame([(1, 5.0)], "id INT, x DOUBLE").write.format("delta").save(path)
    spark.createDataFrame([(2, 6.0)], "id INT, x DOUBLE").write.format("delta") \
        .mode("append").save(path)
    pinned = {"source": {"delta": path, "version": 0}, "silver": {"keys": ["id"]}}
    latest = {"source": {"delta": path}, "silver": {"keys": ["id"]}}
    cfg = with_datasets(cfg, {"up_v0": pinned, "up_latest": latest})
    ingest(spark, cfg, ["up_v0", "up_latest"], "b1")
    assert [r.id for r in _t(spark, cfg, "bronze_up_v0").collect()] == [1]
    assert sorted(r.id for r in _t(spark, cfg, "bronze_up_latest").collect()) == [1, 2]
    [same] = ingest(spark, cfg, ["up_latest"], "b2")       # no new table version: nothing
    assert same.skipped
    spark.sql(f"OPTIMIZE delta.`{path}`")                   # a version, but the same rows
    [compacted] = ingest(spark, cfg, ["up_latest"], "b2b")
    assert compacted.skipped
    spark.createDataFrame([(3, 7.0)], "id INT, x DOUBLE").write.format("delta") \
        .mode("append").save(path)
    [newer] = ingest(spark, cfg, ["up_latest"], "b3")
    assert newer.bronze == 3
    [result] = curate(spark, cfg, ["up_latest"])
    assert sorted(r.id for r in _t(spark, cfg, "silver_up_latest").collect()) == [1, 2, 3]
    assert result.inserted == 3


def test_rule_actions_warn_quarantine_and_fail(spark, cfg, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.csv").write_text("order_id,placed_at,amount,status\n"
                                   "1,,10,NEW\n2,,-5,PAID\n3,,4,LOST\n4,,-1,LOST\n")
    rules = [{"name": "amount_positive", "expr": "amount > 0", "on_fail": "quarantine"},
             {"name": "known_status", "expr": "status IN ('NEW','PAID','SHIPPED')",
              "on_fail": "warn"}]
    cfg = with_datasets(cfg, _orders(landing, rules=rules))
    ingest(spark, cfg, ["orders"], "b1")
    [result] = curate(spark, cfg, ["orders"], batch="b1")
    assert (result.valid, result.rejected) == (2, 2)
    assert sorted(r.order_id for r in _t(spark, cfg, "silver_orders").collect()) == [1, 3]
    q = {json.loads(r.raw)["order_id"]: r for r in
         _t(spark, cfg, "ops_quarantine").filter("stage = 'curate'").collect()}
    assert sorted(q) == [2, 4]
    assert q[2].rules == ["amount_positive"]
    assert q[4].rules == ["amount_positive", "known_status"]   # every rule it broke
    assert "amount_positive" in q[4].reason and "known_status" in q[4].reason
    counts = {r.rule: (r.checked, r.passed, r.warned, r.quarantined) for r in
              _t(spark, cfg, "ops_quality").filter("stage = 'curate'").collect()}
    assert counts == {"amount_positive": (4, 2, 0, 2), "known_status": (4, 2, 2, 0)}

    failing = [{"name": "amount_small", "expr": "amount < 8", "on_fail": "fail"}]
    strict = with_datasets(cfg, _orders(landing, rules=failing))
    version = delta.current_version(spark, f"{cfg.catalog.database}.silver_orders")
    with pytest.raises(QualityError, match=r"'orders', batch 'b1': rule 'amount_small' "
                                           r"\(amount < 8\) failed on 1 of 4 rows.*10"):
        curate(spark, strict, ["orders"], batch="b1")
    assert delta.current_version(spark, f"{cfg.catalog.database}.silver_orders") == version


@pytest.mark.parametrize("rows, ddl, select, condition", [
    ("1,12\n2,x7", "id INT, code STRING", "CAST(code AS INT) AS code", "CAST_INVALID_INPUT"),
    ("1,12\n2,3000000", "id INT, code INT", "code * 1000 AS code", "ARITHMETIC_OVERFLOW"),
])
def test_select_that_fails_on_a_value_is_named(spark, cfg, tmp_path, rows, ddl, select,
                                                condition):
    f = tmp_path / "a.csv"
    f.write_text(f"id,code\n{rows}\n")
    cfg = with_datasets(cfg, {"codes": {
        "source": {"files": str(f), "format": "csv", "options": {"header": True},
                   "schema": ddl},
        "silver": {"keys": ["id"], "select": ["id", select]}}})
    ingest(spark, cfg, ["codes"], "b1")
    with pytest.raises(QualityError, match="'codes'.*silver.select.*try_cast") as err:
        curate(spark, cfg, ["codes"])
    assert error_condition(err.value.__cause__) == condition


def test_catalog_check_names_dataset_key_and_value(spark, cfg, tmp_path):
    cfg = with_datasets(cfg, {
        "bad_ddl": {"source": {"files": str(tmp_path), "format": "csv",
                               "schema": "id INTT, x"}, "silver": {"keys": ["id"]}},
        "bad_rule": {"source": {"files": str(tmp_path), "format": "json", "schema": "id INT"},
                     "silver": {"keys": ["id"], "rules": [
                         {"name": "r1", "expr": "nope > 1"}]}},
        "no_files": {"source": {"files": str(tmp_path / "missing" / "*.csv"), "format": "csv",
                                "schema": "id INT"}, "silver": {"keys": ["idx"]}},
        "bad_role": {"kind": "series", "roles": {"item_id": "id", "timestamp": "ts",
                                                 "target": "y"},
                     "source": {"files": str(tmp_path), "format": "json",
                                "schema": "id INT, ts DATE, value DOUBLE"}},
    })
    (tmp_path / "x.json").write_text("{}\n")
    with pytest.raises(CatalogError) as err:
        ingest(spark, cfg, ["bad_ddl", "bad_rule", "no_files", "bad_role"], "b1")
    text = str(err.value)
    assert "datasets.bad_ddl.source.schema: 'id INTT, x'" in text
    assert "datasets.bad_rule.silver.rules[0].expr: 'nope > 1' (rule 'r1')" in text
    assert "datasets.no_files.source.files" in text and "missing" in text
    assert "datasets.no_files.silver.keys: 'idx' is not a silver column" in text
    assert "datasets.bad_role.roles.target: 'y' is not a silver column" in text
    assert spark.sql(f"SHOW TABLES IN {cfg.catalog.database}").count() == 0  # nothing written


def test_catalog_structure_problems_are_all_named(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "d.yml").write_text("""
datasets:
  a:
    kind: series
    source: {files: /x, format: xml, schem: "id INT"}
    silver: {rules: [{name: r, expr: "1 = 1", on_fail: explode}]}
  b:
    source: {files: /y, format: csv}
""")
    with pytest.raises(ConfigError) as err:
        load_config(conf_dir=tmp_path, environ={})
    text = str(err.value)
    for expected in ("datasets.a.source.schem: unknown key",
                     "datasets.a.source.format: 'xml' is not one of csv",
                     "datasets.a.silver.rules[0].on_fail: 'explode'",
                     "datasets.a.roles.item_id: missing; a series data set needs the roles",
                     "datasets.b.source.schema: missing; csv files need a schema"):
        assert expected in text, text


def test_cli_catalog_list_and_check(spark, cfg, tmp_path, capsys):
    conf = tmp_path / "conf"
    (conf / "base").mkdir(parents=True)
    (conf / "local").mkdir()
    (conf / "base" / "x.yml").write_text(f"home: {cfg.home}\n")
    (tmp_path / "orders.csv").write_text("order_id\n1\n")
    (conf / "local" / "mine.yml").write_text(
        "datasets:\n  orders:\n    kind: tabular\n    roles: {id: order_id}\n"
        f"    source: {{files: {tmp_path}/orders.csv, format: csv, schema: 'order_id BIGINT'}}\n"
        "    silver: {keys: [order_id], rules: [{name: pos, expr: 'order_id > 0'}]}\n")
    assert main(["catalog", "--conf-dir", str(conf)]) == 0
    listing = capsys.readouterr().out
    assert "orders" in listing and "tabular" in listing and "pos" in listing
    (conf / "local" / "mine.yml").write_text(
        (conf / "local" / "mine.yml").read_text().replace("order_id > 0", "order_idd > 0"))
    assert main(["catalog", "check", "--conf-dir", str(conf),
                 "--set", f"catalog.database={cfg.catalog.database}"]) == 2
    err = capsys.readouterr().err
    assert "datasets.orders.silver.rules[0].expr: 'order_idd > 0'" in err


def test_crash_between_writes_finishes_the_batch_exactly_once(spark, cfg, tmp_path,
                                                              monkeypatch):
    import lakehouse.ingest as ingest_module

    landing = tmp_path / "landing"
    landing.mkdir()
    for day in (1, 2):
        (landing / f"d{day}.csv").write_text(
            f"order_id,placed_at,amount,status\n{day}1,,1,NEW\n{day}2,,x,NEW\n")
    cfg = with_datasets(cfg, _orders(landing))
    real_append = ingest_module.delta.append

    def crash_on_quarantine(df, name):
        if name.endswith("ops_quarantine"):
            raise RuntimeError("killed")
        return real_append(df, name)

    monkeypatch.setattr(ingest_module.delta, "append", crash_on_quarantine)
    with pytest.raises(RuntimeError, match="killed"):
        ingest(spark, cfg, ["orders"], "b1")
    monkeypatch.setattr(ingest_module.delta, "append", real_append)
    assert _t(spark, cfg, "bronze_orders").count() == 2      # bronze landed, quarantine not
    (landing / "d3.csv").write_text("order_id,placed_at,amount,status\n31,,1,NEW\n")
    [result] = ingest(spark, cfg, ["orders"], "b2")           # a new run, another batch id
    assert result.resumed == ("b1",) and result.bronze == 1
    bronze = _t(spark, cfg, "bronze_orders")
    assert sorted((r.order_id, r._ingest_batch) for r in bronze.collect()) == [
        (11, "b1"), (21, "b1"), (31, "b2")]
    assert _t(spark, cfg, "ops_quarantine").groupBy("batch").count().collect()[0]["count"] == 2
    batches = _t(spark, cfg, "ops_quality").select("batch").orderBy("batch").collect()
    assert [r.batch for r in batches] == ["b1", "b2"]
    assert bronze.groupBy("order_id").count().filter(F.col("count") > 1).count() == 0


def test_a_retry_that_loses_its_batch_to_another_run_leaves_the_batch_to_it(spark, cfg,
                                                                            tmp_path,
                                                                            monkeypatch):
    """A retry of b1 that read bronze before run 1's commit landed (so d1 looks new, and
    d2 landed since) loses the bronze commit of b1 and writes nothing; the next run
    finishes b1 with d1 only, from its commit, and takes d2 as new."""
    import lakehouse.ingest as ingest_module

    landing = tmp_path / "landing"
    landing.mkdir()
    header = "order_id,placed_at,amount,status\n"
    (landing / "d1.csv").write_text(header + "11,,1,NEW\n")
    cfg = with_datasets(cfg, _orders(landing))
    real_append = ingest_module.delta.append

    def killed(df, name):
        raise RuntimeError("killed")

    monkeypatch.setattr(ingest_module.delta, "append", killed)    # run 1: bronze, then dies
    with pytest.raises(RuntimeError, match="killed"):
        ingest(spark, cfg, ["orders"], "b1")
    monkeypatch.setattr(ingest_module.delta, "append", real_append)
    (landing / "d2.csv").write_text(header + "21,,1,NEW\n")
    monkeypatch.setattr(ingest_module, "_committed_batches", lambda *a: set())   # stale
    [retry] = ingest(spark, cfg, ["orders"], "b1")
    monkeypatch.undo()
    assert retry.skipped and (retry.files, retry.bronze) == (2, 0)
    assert _t(spark, cfg, "bronze_orders").count() == 1          # the retry wrote nothing
    [later] = ingest(spark, cfg, ["orders"], "b2")
    assert later.resumed == ("b1",) and (later.files, later.bronze) == (1, 1)
    bronze = _t(spark, cfg, "bronze_orders")
    assert sorted((r.order_id, r._ingest_batch) for r in bronze.collect()) == [
        (11, "b1"), (21, "b2")]
    claimed = _t(spark, cfg, "ops_ingest_files").select("batch", "path").collect()
    assert sorted((r.batch, Path(r.path).name) for r in claimed) == [
        ("b1", "d1.csv"), ("b2", "d2.csv")]


@pytest.mark.slow
def test_ingest_killed_with_sigkill_is_finished_exactly_once_by_the_next_run(spark, tmp_path):
    """A real `lakeforge ingest` process (own home: Derby admits one JVM) killed after its
    bronze commit; the next run, with another batch id, finishes that batch."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    home, conf, landing = tmp_path / "home", tmp_path / "conf", tmp_path / "landing"
    for folder in (conf / "base", conf / "local", landing):
        folder.mkdir(parents=True)
    (conf / "base" / "x.yml").write_text(
        f"home: {home}\nspark: {{master: 'local[1]', ui_enabled: false}}\n")
    (conf / "local" / "d.yml").write_text(json.dumps({"datasets": _orders(landing)}))
    header = "order_id,placed_at,amount,status\n"
    for f in range(3):
        rows = "".join(f"{f * 100 + i},,{i},NEW\n" for i in range(50)) + f"{f}x,,1,NEW\n"
        (landing / f"f{f}.csv").write_text(header + rows)

    def run(batch: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "jobs.cli", "ingest", "orders",
                                 "--batch", batch, "--conf-dir", str(conf)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)

    claim = home / "warehouse" / "lakeforge.db" / "bronze_orders" / "_delta_log" / \
        "00000000000000000001.json"
    first = run("k1")
    deadline = time.monotonic() + 300
    while not claim.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0, 1.0))                 # somewhere after the commit
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert claim.exists(), first.stdout.read().decode()[-3000:]
    second = run("k2")
    out = second.communicate(timeout=600)[0].decode()
    assert second.returncode == 0, out[-3000:]
    tables = home / "warehouse" / "lakeforge.db"
    bronze = spark.read.format("delta").load(str(tables / "bronze_orders"))
    quarantine = spark.read.format("delta").load(str(tables / "ops_quarantine"))
    assert bronze.count() == 150 and bronze.select("order_id").distinct().count() == 150
    assert {r._ingest_batch for r in bronze.select("_ingest_batch").distinct().collect()} \
        == {"k1"}
    assert quarantine.count() == 3 and {r.batch for r in quarantine.collect()} == {"k1"}


def test_select_star_keeps_every_column_and_latest_landing_wins(spark, cfg, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    header = "order_id,placed_at,amount,status\n"
    (landing / "a.csv").write_text(header + "1,2026-11-01 10:00:00,10,NEW\n2,,5,NEW\n")
    cfg = with_datasets(cfg, _orders(landing, select=["*", "amount * 2 AS doubled"]))
    ingest(spark, cfg, ["orders"], "b1")
    (landing / "b.csv").write_text(header + "1,2026-11-01 10:00:00,12,PAID\n")
    ingest(spark, cfg, ["orders"], "b2")
    [result] = curate(spark, cfg, ["orders"])
    silver = _t(spark, cfg, "silver_orders")
    assert silver.columns == ["order_id", "placed_at", "amount", "status", "doubled"]
    assert sorted((r.order_id, r.amount, r.status, r.doubled) for r in silver.collect()) == [
        (1, 12.0, "PAID", 24.0), (2, 5.0, "NEW", 10.0)]
    assert (result.valid, result.inserted) == (3, 2)
