"""Delta helpers: commit retries (no Spark session), creates that lose a race, versions."""

import threading
from pathlib import Path
from urllib.parse import urlparse

import delta.exceptions as dx
import pytest
from delta.tables import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException
from pyspark.sql.types import LongType

from lakehouse import delta
from lakehouse.delta import with_retries
from lakehouse.errors import CommitConflictError, error_condition, java_classes
from lakehouse.tables import TableSpec, _f


def test_commit_conflicts_are_retried_then_reported():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise dx.ConcurrentAppendException(message="files were added concurrently")
        return "committed"

    assert with_retries(flaky, "append", attempts=5, backoff=0) == "committed"
    assert len(calls) == 3

    def always():
        raise dx.ConcurrentTransactionException(message="same txnAppId committed")

    with pytest.raises(CommitConflictError, match="append to t: lost 2 commit conflicts"):
        with_retries(always, "append to t", attempts=2, backoff=0)

    def other():
        raise ValueError("not a conflict")

    with pytest.raises(ValueError):
        with_retries(other, "append", backoff=0)


def _create_at_once(spark, spec, full_name, create, jobs=3) -> tuple[list, list]:
    """``create`` called by ``jobs`` threads at the same moment: results and errors."""
    barrier, results, errors = threading.Barrier(jobs), [], []

    def one():
        barrier.wait()
        try:
            results.append(create(spark, spec, full_name))
        except Exception as exc:  # noqa: BLE001 - collected for the test to inspect
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_creates_that_lose_the_race_are_recognised_by_condition(spark, cfg):
    """Jobs on a fresh lakehouse create the same ops table at once (seen with two
    Airflow DAGs): the losers' commits of version 0 fail with DELTA_PROTOCOL_CHANGED,
    as a raw Py4JJavaError from DeltaTableBuilder.execute."""
    db = cfg.catalog.database
    errors = []
    for attempt in range(5):
        spec = TableSpec("ops", f"race{attempt}", (_f("id", LongType(), False),), ("id",))
        errors += _create_at_once(spark, spec, spec.full_name(db), delta._create)[1]
        if any(isinstance(e, Py4JJavaError) for e in errors):
            break
    # A thread that starts late meets the winner's table or folder instead: a race too.
    assert errors and {error_condition(e) for e in errors} <= delta.CREATE_RACES
    assert all(delta.is_create_race(e) for e in errors)
    lost_commit = [e for e in errors if isinstance(e, Py4JJavaError)]
    assert lost_commit, "no create lost the commit of version 0 in 5 tries"
    assert {error_condition(e) for e in lost_commit} == {"DELTA_PROTOCOL_CHANGED"}

    made = TableSpec("ops", "race0", (_f("id", LongType(), False),), ("id",))
    with pytest.raises(AnalysisException) as exists:      # a converted PySpark error
        DeltaTable.create(spark).tableName(made.full_name(db)).addColumns(made.schema) \
            .execute()
    assert error_condition(exists.value) == "TABLE_OR_VIEW_ALREADY_EXISTS"
    assert delta.is_create_race(exists.value)

    folder = Path(urlparse(spark.catalog.getDatabase(db).locationUri).path) / "ops_taken"
    folder.mkdir(parents=True)
    (folder / "part-0.parquet").write_text("another job's first file")
    taken = TableSpec("ops", "taken", made.fields, ("id",))
    with pytest.raises(AnalysisException) as non_empty:
        delta._create(spark, taken, taken.full_name(db))
    assert error_condition(non_empty.value) == "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION"
    assert delta.is_create_race(non_empty.value)

    bad = TableSpec("ops", "bad", (_f("a,b", LongType(), False),), ("a,b",))
    with pytest.raises(AnalysisException) as not_a_race:
        delta.ensure_table(spark, bad, db)                 # raised at once, not retried
    assert error_condition(not_a_race.value) == "DELTA_INVALID_CHARACTERS_IN_COLUMN_NAMES"
    assert not delta.is_create_race(not_a_race.value)


def test_the_metastores_refusal_of_a_second_registration_is_a_race(spark, cfg):
    """The race without a condition: the Hive metastore refuses a table it already
    holds (Spark does not convert that error for tables). Raised here by Spark's own
    metastore client, as Hive raises it below Spark's wrapper."""
    db = cfg.catalog.database
    spark.sql(f"CREATE TABLE {db}.plain (id BIGINT) USING parquet")
    hive = spark._jsparkSession.sharedState().externalCatalog().unwrapped()
    with pytest.raises(Py4JJavaError) as refused:
        hive.client().createTable(hive.getTable(db, "plain"), False)
    assert error_condition(refused.value) is None
    assert delta.HIVE_ALREADY_EXISTS in java_classes(refused.value)
    assert delta.is_create_race(refused.value)


def test_jobs_creating_one_table_at_once_all_end_with_it(spark, cfg):
    spec = TableSpec("ops", "race", (_f("id", LongType(), False),), ("id",))
    full_name = spec.full_name(cfg.catalog.database)
    results, errors = _create_at_once(
        spark, spec, full_name, lambda s, sp, _: delta.ensure_table(s, sp, cfg.catalog.database))
    assert errors == [] and results == [full_name] * 3
    assert delta.current_version(spark, full_name) == 0


def test_current_version_sees_commits_made_through_other_handles(spark, cfg):
    name = f"{cfg.catalog.database}.versions"
    spark.sql(f"CREATE TABLE {name} (id BIGINT) USING delta")
    assert delta.current_version(spark, name) == 0
    location = delta.table_location(spark, name)
    for i in range(3):      # by path, and by SQL: neither goes through the helper's handle
        spark.range(i, i + 1).write.format("delta").mode("append").save(location)
        spark.sql(f"INSERT INTO {name} VALUES ({i})")
    history = spark.sql(f"DESCRIBE HISTORY {name}").agg({"version": "max"}).first()[0]
    assert delta.current_version(spark, name) == history == 6
