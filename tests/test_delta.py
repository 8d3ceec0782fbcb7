"""Delta helpers: commit retries (no Spark session), creates that lose a race, versions."""

import delta.exceptions as dx
import pytest
from pyspark.sql.types import LongType

from lakehouse import delta
from lakehouse.delta import with_retries
from lakehouse.errors import CommitConflictError
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


def test_a_create_that_loses_the_race_ends_with_the_winners_table(spark, cfg, monkeypatch):
    """Two jobs on a fresh lakehouse create the same ops table at once (seen with two
    Airflow DAGs): the loser's commit of version 0 fails with DELTA_PROTOCOL_CHANGED,
    as a raw Py4JJavaError. It must find the winner's table, not fail the job."""
    spec = TableSpec("ops", "race", (_f("id", LongType(), False),), ("id",))
    real, calls = delta._create, []

    def lose_to_another_job(spark, spec, full_name):
        calls.append(full_name)
        real(spark, spec, full_name)                       # the other job's create wins
        raise RuntimeError("An error occurred while calling o179.execute.\n: io.delta."
                           "exceptions.ProtocolChangedException: [DELTA_PROTOCOL_CHANGED] The "
                           "protocol version of the Delta table has been changed by a "
                           "concurrent update.")

    monkeypatch.setattr(delta, "_create", lose_to_another_job)
    name = delta.ensure_table(spark, spec, cfg.catalog.database)
    assert calls == [name] and delta.current_version(spark, name) == 0

    def broken(spark, spec, full_name):
        raise RuntimeError("[DELTA_INVALID_CHARACTERS_IN_COLUMN_NAME] not a race")

    monkeypatch.setattr(delta, "_create", broken)
    other = TableSpec("ops", "race_other", spec.fields, ("id",))
    with pytest.raises(RuntimeError, match="not a race"):
        delta.ensure_table(spark, other, cfg.catalog.database)


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
