"""The one way to get a SparkSession: built from :class:`~lakehouse.config.Config`."""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pyspark import inheritable_thread_target
from pyspark.sql import SparkSession

from lakehouse import logstore
from lakehouse.config import Config, SparkConfig, project_path
from lakehouse.errors import ConfigError, LakehouseBusyError, LakeUnreachableError
from lakehouse.jvm import archive_options, delta_jars, pinned_jars, s3_jars

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
LOCK_FILE = "lakehouse.lock"
LOG_FILE_PROPERTY = "lakeforge.log.file"         # read by conf/log4j2.properties
LOG_CONSOLE_PROPERTY = "lakeforge.log.console"
# PySpark's own Python loggers: each logs a failed query's Java stack trace as JSON.
QUERY_CONTEXT_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")
_HELD: dict[Path, int] = {}   # lock file -> open descriptor, for the process's lifetime
# The AWS SDK's own chain: environment variables, system properties, a profile, web
# identity, the container's or the instance's role.
AWS_DEFAULT_CHAIN = "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
_LOG_FILES: dict[Path, Path] = {}   # log folder -> this process's log file in it


def lake_conf(cfg: Config) -> dict[str, str]:
    """Hadoop settings of the lake's filesystem (``s3a://``: endpoint, region, credentials).

    Credentials come from the AWS SDK's default chain: the ``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY`` environment variables, a profile, the instance's role.

    Raises:
        ConfigError: an ``s3a://`` lake whose jars set-up has not fetched.
    """
    if cfg.lake_scheme != "s3a":
        return {}
    missing = [str(j) for j in s3_jars(cfg) if not j.is_file()]
    if missing:
        raise ConfigError(f"lake.root={cfg.lake_root!r} needs Hadoop's S3 jars, which are "
                          f"missing: {', '.join(missing)}; run `make setup`")
    s3 = cfg.lake.s3
    conf = {
        "spark.hadoop.fs.s3a.endpoint.region": s3.region,
        "spark.hadoop.fs.s3a.path.style.access": str(s3.path_style).lower(),
        "spark.hadoop.fs.s3a.aws.credentials.provider": AWS_DEFAULT_CHAIN,
        # Commits atomic across drivers: conditional writes of _delta_log files.
        "spark.delta.logStore.s3a.impl": logstore.CLASS_NAME,
        # Fail in seconds, not after the SDK's minutes of retries, when the store is down.
        "spark.hadoop.fs.s3a.attempts.maximum": "3",
        "spark.hadoop.fs.s3a.retry.limit": "3",
        "spark.hadoop.fs.s3a.connection.establish.timeout": "5s",
    }
    if s3.endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = s3.endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = \
            str(not s3.endpoint.startswith("http://")).lower()
    return conf


def postgres_jar(cfg: Config) -> Path:
    """The PostgreSQL JDBC driver in the local Maven repository (set-up fetches it)."""
    version = cfg.metastore.jdbc_version
    return (Path(os.path.expanduser(cfg.spark.maven_repo)) / "org" / "postgresql"
            / "postgresql" / version / f"postgresql-{version}.jar")


def metastore_conf(cfg: Config) -> dict[str, str]:
    """Spark settings of the configured metastore (embedded Derby or PostgreSQL)."""
    ms = cfg.metastore
    jar = postgres_jar(cfg)
    if ms.kind == "derby":
        return {
            "spark.hadoop.javax.jdo.option.ConnectionURL":
                f"jdbc:derby:;databaseName={cfg.metastore_dir};create=true",
            "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
            # Unused here; on the class path all the same, so that lakehouses on either
            # metastore start their drivers on one class path and share one class
            # archive (lakehouse.jvm).
            **({"spark.driver.extraClassPath": str(jar)} if jar.is_file() else {}),
        }
    if not jar.is_file():
        raise ConfigError(f"metastore.kind=postgres needs the JDBC driver {jar}; run "
                          f"scripts/setup.sh (or set metastore.jdbc_version)")
    return {
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:postgresql://{ms.host}:{ms.port}/{ms.database}",
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
        "spark.hadoop.javax.jdo.option.ConnectionUserName": ms.user,
        "spark.hadoop.javax.jdo.option.ConnectionPassword": ms.password,
        # The schema exists up front (`lakeforge metastore start`): creating it lazily
        # from several connections deadlocks on PostgreSQL.
        "spark.hadoop.datanucleus.schema.autoCreateAll": "false",
        # DataNucleus loads the driver from the JVM's class path, not from --jars.
        "spark.driver.extraClassPath": str(jar),
    }


def delta_packages(spark_cfg: SparkConfig) -> str:
    """Maven coordinates of Delta, for ``spark.jars.packages`` / ``--packages``."""
    return f"io.delta:delta-spark_{spark_cfg.scala_version}:{spark_cfg.delta_version}"


def executor_python(spark_cfg: SparkConfig) -> str:
    """The interpreter executors must run (the project's, so Horovod imports)."""
    return spark_cfg.python or sys.executable


def driver_log_file(cfg: Config) -> Path:
    """The log file of a driver this process starts: one per process, under ``log_dir``.

    Args:
        cfg: the loaded configuration.

    Returns:
        ``HOME/logs/spark-YYYYmmdd-HHMMSS-PID.log``; the file (and its folder) appears
        with its first line.
    """
    folder = cfg.log_dir
    if folder not in _LOG_FILES:
        now = dt.datetime.now(dt.UTC)
        _LOG_FILES[folder] = folder / f"spark-{now:%Y%m%d-%H%M%S}-{os.getpid()}.log"
    return _LOG_FILES[folder]


def spark_log_file(spark: SparkSession) -> Path | None:
    """The log file the session's driver writes (set when its JVM started), if any."""
    name = spark.sparkContext._jvm.java.lang.System.getProperty(LOG_FILE_PROPERTY)
    return Path(name) if name else None


def spark_conf(cfg: Config) -> dict[str, str]:
    """Every Spark setting lakeforge needs, as ``spark-submit --conf`` pairs.

    Args:
        cfg: the loaded configuration.

    Returns:
        Setting name to value; ``spark.*`` entries of ``cfg.spark.conf`` win.
    """
    sc = cfg.spark
    java_options = [f"-Dderby.system.home={cfg.home}"]
    log4j = project_path(sc.log4j_config)
    if log4j.is_file():
        java_options += [f"-Dlog4j2.configurationFile=file:{log4j}",
                         f"-D{LOG_FILE_PROPERTY}={driver_log_file(cfg)}",
                         f"-D{LOG_CONSOLE_PROPERTY}={'all' if sc.console_log else 'off'}"]
    java_options += sc.java_options.split()
    conf = {
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.warehouse.dir": str(cfg.warehouse_dir),
        "spark.sql.catalogImplementation": "hive",
        **metastore_conf(cfg),
        "spark.hadoop.hive.metastore.schema.verification": "false",
        # Delta keeps a table's schema in its own log; when a rebuild changes a column's
        # type, Hive's copy would refuse it and log an error although the change is done.
        "spark.hadoop.hive.metastore.disallow.incompatible.col.type.changes": "false",
        # Hive's session folders default to /tmp/<session id>_resources and /tmp/<user>,
        # and nothing removes them: one per job, for ever. They stay in the home instead.
        "spark.hadoop.hive.downloaded.resources.dir": str(cfg.home / "tmp" / "hive-resources"),
        "spark.hadoop.hive.exec.local.scratchdir": str(cfg.home / "tmp" / "hive-scratch"),
        "spark.driver.extraJavaOptions": " ".join(java_options),
        "spark.driver.memory": sc.driver_memory,
        "spark.sql.shuffle.partitions": str(sc.shuffle_partitions),
        # Delta's log replay and VACUUM's file listing default to 50 and 10,000 tasks;
        # sized like shuffles instead, small tables stay fast on a small machine.
        "spark.databricks.delta.snapshotPartitions": str(sc.shuffle_partitions),
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(sc.shuffle_partitions),
        # Bronze's _record numbers the rows of a batch: every value differs, so Parquet's
        # dictionary is built for nothing and dropped per page (4 % of a bronze append's time).
        "spark.hadoop.parquet.enable.dictionary#_record": "false",
        "spark.ui.enabled": str(sc.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.pyspark.python": executor_python(sc),
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
        # pandas warns about a concat inside PySpark's own applyInPandasWithState
        # serializer (the streaming RCF scorer); nothing a user can act on.
        "spark.executorEnv.PYTHONWARNINGS": "ignore::FutureWarning:pyspark.sql.pandas.serializers",
        **lake_conf(cfg),
    }
    jars = delta_jars(sc)
    if jars:
        lake_jars = [*s3_jars(cfg), logstore.build(cfg)] if cfg.lake_scheme == "s3a" else []
        # Spark's Kafka source, when set-up has fetched it (streams need it; nothing else).
        kafka = pinned_jars(cfg, "kafka-connector")
        kafka = kafka if all(j.is_file() for j in kafka) else []
        conf["spark.jars"] = ",".join(str(j) for j in [*jars, *lake_jars, *kafka])
    else:
        conf["spark.jars.packages"] = delta_packages(sc)
    conf.update(sc.conf)
    if conf["spark.driver.extraJavaOptions"] == " ".join(java_options):
        archive = archive_options(cfg, conf.get("spark.driver.extraClassPath", ""))
        conf["spark.driver.extraJavaOptions"] = " ".join([*archive, *java_options])
    return conf


def embedded_derby(cfg: Config) -> bool:
    """Whether the config keeps the metastore in embedded Derby (one process at a time)."""
    conf = spark_conf(cfg)
    url = conf.get("spark.hadoop.javax.jdo.option.ConnectionURL", "")
    return url.startswith("jdbc:derby:") and not conf.get("spark.hadoop.hive.metastore.uris")


def hold_lakehouse(cfg: Config) -> None:
    """Take the data directory for this process when its metastore is embedded Derby.

    Derby admits one JVM per database; a second one waits on its lock and floods the log
    with stack traces. The lock is taken before any JVM starts: a second lakeforge
    process stops at once with one line naming the holder. The operating system drops
    the lock when the holder exits, also when it is killed.

    Raises:
        LakehouseBusyError: another process holds the data directory.
    """
    if not embedded_derby(cfg):
        return
    cfg.home.mkdir(parents=True, exist_ok=True)
    path = cfg.home / LOCK_FILE
    if path in _HELD:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 1024).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise LakehouseBusyError(
            f"lakehouse {cfg.home} is in use by {holder}; its embedded Derby metastore "
            f"admits one process at a time: wait for that one to finish, or give the "
            f"lakehouse a shared metastore (README: 'Many jobs at once')") from None
    now = dt.datetime.now(dt.UTC)
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} ({command[:160]}; since {now:%Y-%m-%d %H:%M:%S} UTC)"
             .encode())
    _HELD[path] = fd


def build_spark(cfg: Config) -> SparkSession:
    """Build (or return the running) SparkSession for this config.

    The session has Delta's extensions and catalog, a Hive catalog on the configured
    metastore (embedded Derby by default, or a shared PostgreSQL), a warehouse under
    ``cfg.home``, and executors that run the project's interpreter. The catalog database
    is created if missing.

    Args:
        cfg: the loaded configuration.

    Returns:
        The SparkSession.

    Raises:
        LakehouseBusyError: another process holds an embedded-Derby lakehouse.
    """
    hold_lakehouse(cfg)
    os.environ.setdefault("PYSPARK_PYTHON", executor_python(cfg.spark))
    if cfg.spark.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.master(cfg.spark.master).appName(cfg.spark.app_name)
    for key, value in spark_conf(cfg).items():
        builder = builder.config(key, value)
    spark = builder.enableHiveSupport().getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    if not cfg.spark.console_log:
        _query_context_logs_to(spark_log_file(spark))
    if cfg.lake_scheme != "file":
        check_lake(spark, cfg)
    _ensure_database(spark, cfg)
    log.info("spark %s up: master=%s home=%s lake=%s", spark.version, cfg.spark.master,
             cfg.home, cfg.lake_root)
    return spark


def check_lake(spark: SparkSession, cfg: Config) -> None:
    """Reach the lake's root once, so a wrong endpoint or credentials stop with one line.

    Raises:
        LakeUnreachableError: naming the root, the endpoint and what the store answered.
    """
    jvm = spark.sparkContext._jvm
    root = jvm.org.apache.hadoop.fs.Path(cfg.lake_root + "/")
    try:
        fs = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        fs.exists(root)
    except Exception as exc:  # noqa: BLE001 - any JVM error of the store's client
        cause = exc
        java = getattr(exc, "java_exception", None)
        while java is not None and java.getCause() is not None:
            java = java.getCause()
        said = (java.toString() if java is not None else str(cause)).splitlines()[0][:300]
        where = f" at {cfg.lake.s3.endpoint}" if cfg.lake.s3.endpoint else ""
        raise LakeUnreachableError(f"lake {cfg.lake_root}{where} cannot be reached: {said}"
                                   ) from None


def _ensure_database(spark: SparkSession, cfg: Config) -> None:
    """Create the database under the lake's warehouse; warn when it lives elsewhere.

    A database keeps the location it was created with (and its tables theirs): after
    ``lake.root`` changes, the metastore still points at the old lake.
    """
    db = cfg.catalog.database
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    location = spark.catalog.getDatabase(db).locationUri
    lake = cfg.warehouse_dir
    if cfg.lake_scheme == "file":
        lake = "file:" + lake.removeprefix("file:").removeprefix("//")
    if not location.rstrip("/").startswith(lake.rstrip("/")):
        log.warning("database %s lives at %s, outside the lake's warehouse %s (it was "
                    "created before lake.root changed); its tables stay there", db, location,
                    cfg.warehouse_dir)


def _query_context_logs_to(log_file: Path | None) -> None:
    """Send PySpark's query-context loggers to the driver's log file, not the terminal.

    When a query fails, PySpark logs the error with its Java stack trace from Python,
    to stderr through a handler of its own (the loggers do not propagate).
    """
    from pyspark.logger import PySparkLogger

    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    for name in QUERY_CONTEXT_LOGGERS:
        logger = PySparkLogger.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.addHandler(logging.FileHandler(log_file, delay=True) if log_file
                          else logging.NullHandler())


def local_session() -> SparkSession:
    """A bare local session (one core, no lake, no catalog, no UI) for plain SQL.

    For evaluating a feature declaration's SQL where lakeforge's own session is not
    running (a model loaded as an MLflow pyfunc): started once per process, with the
    session time zone lakeforge's jobs use, so dates and times come out the same.
    """
    return (SparkSession.builder.master("local[1]").appName("lakeforge-sql")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .getOrCreate())


def side_by_side(spark: SparkSession, *calls: Callable[[], Any]) -> list[Any]:
    """Run independent calls that submit Spark jobs at the same time, one thread each.

    A small Delta read or commit spends much of its time on the driver (listing the
    log, planning, committing) and in short jobs, so two of them overlap somewhat even
    on two cores (three small reads of an ingest: 2.5 s side by side against 2.9 s one
    after another, in one profile). Every call has finished when this returns; the
    first exception, in the order of ``calls``, is raised then.

    Returns:
        Each call's result, in order.
    """
    with ThreadPoolExecutor(len(calls), thread_name_prefix="lakeforge") as pool:
        running = [pool.submit(inheritable_thread_target(spark)(call)) for call in calls]
    return [r.result() for r in running]
