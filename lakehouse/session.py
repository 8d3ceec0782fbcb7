"""The one way to get a SparkSession: built from :class:`~lakehouse.config.Config`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from lakehouse.config import Config, SparkConfig, project_path

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def delta_jars(spark_cfg: SparkConfig) -> list[Path]:
    """Delta's jars in the local Maven repository, or ``[]`` if any is missing.

    Args:
        spark_cfg: the Spark section of the config (Delta and Scala versions, repo).

    Returns:
        Paths of ``delta-spark`` and ``delta-storage`` jars when both exist.
    """
    repo = Path(os.path.expanduser(spark_cfg.maven_repo)) / "io" / "delta"
    version = spark_cfg.delta_version
    jars = [
        repo / f"delta-spark_{spark_cfg.scala_version}" / version
        / f"delta-spark_{spark_cfg.scala_version}-{version}.jar",
        repo / "delta-storage" / version / f"delta-storage-{version}.jar",
    ]
    return jars if all(j.is_file() for j in jars) else []


def delta_packages(spark_cfg: SparkConfig) -> str:
    """Maven coordinates of Delta, for ``spark.jars.packages`` / ``--packages``."""
    return f"io.delta:delta-spark_{spark_cfg.scala_version}:{spark_cfg.delta_version}"


def executor_python(spark_cfg: SparkConfig) -> str:
    """The interpreter executors must run (the project's, so Horovod imports)."""
    return spark_cfg.python or sys.executable


def spark_conf(cfg: Config) -> dict[str, str]:
    """Every Spark setting lakeforge needs, as ``spark-submit --conf`` pairs.

    Args:
        cfg: the loaded configuration.

    Returns:
        Setting name to value; ``spark.*`` entries of ``cfg.spark.conf`` win.
    """
    sc = cfg.spark
    metastore = cfg.metastore_dir
    java_options = [f"-Dderby.system.home={cfg.home}"]
    log4j = project_path(sc.log4j_config)
    if log4j.is_file():
        java_options.append(f"-Dlog4j2.configurationFile=file:{log4j}")
    conf = {
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.warehouse.dir": str(cfg.warehouse_dir),
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={metastore};create=true",
        "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        "spark.driver.extraJavaOptions": " ".join(java_options),
        "spark.driver.memory": sc.driver_memory,
        "spark.sql.shuffle.partitions": str(sc.shuffle_partitions),
        # Delta's log replay and VACUUM's file listing default to 50 and 10,000 tasks;
        # sized like shuffles instead, small tables stay fast on a small machine.
        "spark.databricks.delta.snapshotPartitions": str(sc.shuffle_partitions),
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(sc.shuffle_partitions),
        "spark.ui.enabled": str(sc.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.pyspark.python": executor_python(sc),
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
        "spark.checkpoint.dir": str(cfg.checkpoint_dir / "spark"),
    }
    jars = delta_jars(sc)
    if jars:
        conf["spark.jars"] = ",".join(str(j) for j in jars)
    else:
        conf["spark.jars.packages"] = delta_packages(sc)
    conf.update(sc.conf)
    return conf


def build_spark(cfg: Config) -> SparkSession:
    """Build (or return the running) SparkSession for this config.

    The session has Delta's extensions and catalog, a Hive catalog on an embedded
    Derby metastore and a warehouse under ``cfg.home``, and executors that run the
    project's interpreter. The catalog database is created if missing.

    Args:
        cfg: the loaded configuration.

    Returns:
        The SparkSession.
    """
    cfg.home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", executor_python(cfg.spark))
    if cfg.spark.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.master(cfg.spark.master).appName(cfg.spark.app_name)
    for key, value in spark_conf(cfg).items():
        builder = builder.config(key, value)
    spark = builder.enableHiveSupport().getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {cfg.catalog.database}")
    log.info("spark %s up: master=%s home=%s", spark.version, cfg.spark.master, cfg.home)
    return spark
