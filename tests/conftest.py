"""Shared fixtures: one local SparkSession with Delta for the whole run, and a fresh
catalog database (and config) per test so tests never see each other's tables."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest

from lakehouse.config import Config, load_config
from tests.helpers import in_database

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The jobs tests start as processes live seconds on small data: the C1 compiler alone
# and the serial collector start their JVMs about a sixth faster. Not C1 for this
# process's session: it lives for the whole run and does real work (C2 pays off:
# test_catalog.py and test_score.py took 432 s with C1 only, 337-353 s without). The
# serial collector does pay off there too, with two test processes on two cores and
# G1's concurrent threads competing with them: 307 s.
FAST_START = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
SESSION_JVM = "-XX:+UseSerialGC"
os.environ.setdefault("LAKEFORGE_SPARK__JAVA_OPTIONS", FAST_START)
# The tests' inputs are a few hundred rows: compiling generated code for each new query
# plan costs more than it saves. Interpreted expressions and no whole-stage codegen (the
# same operators, evaluated without Janino) took a cold no-op ingest from 13.8 s to
# 10.3 s and tests/test_catalog.py from 197 s to 178 s. Production keeps codegen.
SMALL_DATA = {"spark.sql.codegen.factoryMode": "NO_CODEGEN",
              "spark.sql.codegen.wholeStage": "false"}
os.environ.setdefault("LAKEFORGE_SPARK__CONF", json.dumps(SMALL_DATA))


@pytest.fixture(scope="session")
def base_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    home = tmp_path_factory.mktemp("lakeforge-home")
    return load_config([
        f"home={home}", "spark.master=local[2]", "spark.ui_enabled=false",
        "spark.shuffle_partitions=2", "spark.driver_memory=2g", "ingest.batch_rows=500",
        f"spark.java_options={SESSION_JVM}",
    ], environ={"LAKEFORGE_SPARK__CONF": os.environ["LAKEFORGE_SPARK__CONF"]})


@pytest.fixture(scope="session")
def spark(base_cfg: Config):
    from lakehouse.session import build_spark

    session = build_spark(base_cfg)
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """The process's environment as it was before the test: code a test runs in-process
    may set variables (MLflow's artifact endpoint, for one), and a later test's child
    processes, started with a copy of ``os.environ``, must not inherit them."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def cfg(spark, base_cfg: Config) -> Config:
    """The session's config with a database of this test's own."""
    db = f"t_{uuid.uuid4().hex[:10]}"
    spark.sql(f"CREATE DATABASE {db}")
    yield in_database(base_cfg, db)
    spark.sql(f"DROP DATABASE {db} CASCADE")



# The files whose tests run several processes for minutes, longest first (their
# tests' `--durations` summed in a full run: 1056, 896, 717, 553 and 312 s).
LONGEST_FILES = ("test_lake.py", "test_dags.py", "test_stream.py", "test_reruns.py",
                 "test_cluster.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, then the other files with slow tests, then the rest.

    With ``-n 2 --dist loadfile`` each process takes the next file when it is free, so
    a long file started last would leave one process running it alone at the end.
    """
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if name in LONGEST_FILES:
            return LONGEST_FILES.index(name)
        return len(LONGEST_FILES) + (0 if slow_files.get(name) else 1)

    slow_files = {item.path.name: True for item in items if item.get_closest_marker("slow")}
    items.sort(key=rank)
