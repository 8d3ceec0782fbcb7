"""Build and run ``spark-submit`` command lines for the jobs in ``jobs/``.

A job started by spark-submit runs in a JVM that already exists when the job
builds its session, so Delta's jars and JVM options must be on the command line:
this module puts every setting of :func:`lakehouse.session.spark_conf` there.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pyspark

from lakehouse import endpoint
from lakehouse.config import DEFAULT_CONF_DIR, ENV_PREFIX, PROJECT_ROOT, Config
from lakehouse.errors import ConfigError
from lakehouse.session import delta_jars, executor_python, spark_conf

JOBS_DIR = PROJECT_ROOT / "jobs"
# The spark-submit entry points in jobs/ (the rest of jobs/ is the application: the
# command line, the pipeline runner, the demo and its report).
JOBS = ("ingest", "curate", "features", "train", "score", "maintain", "run")


def spark_home() -> Path:
    """The Spark installation that ships with pyspark."""
    return Path(pyspark.__file__).parent


def job_path(job: str) -> Path:
    """The entry point of a job, checked to exist."""
    if job not in JOBS:
        raise ConfigError(f"unknown job {job!r}; jobs: {', '.join(JOBS)}")
    return JOBS_DIR / f"{job}.py"


def submit_command(cfg: Config, job: str, job_args: Sequence[str] = (),
                   py_files: Sequence[str] = ()) -> list[str]:
    """The spark-submit command line that runs ``jobs/<job>.py`` with this config.

    Args:
        cfg: configuration (master, Delta jars, warehouse, metastore, interpreter).
        job: job name (``ingest``, ``curate``, ...).
        job_args: arguments for the job itself.
        py_files: code shipped to the executors (``dist/lakeforge.zip``), if any.

    Returns:
        The command as a list of arguments.
    """
    return [*submit_options(cfg, job, py_files), str(job_path(job)), *job_args]


def checked_py_files(py_files: Sequence[str]) -> list[str]:
    """Absolute paths of ``--py-files`` entries.

    Raises:
        ConfigError: naming a file that does not exist (build it with ``make dist``).
    """
    paths = [Path(p).expanduser().resolve() for p in py_files]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"--py-files {path} does not exist; build it with `make dist`")
    return [str(p) for p in paths]


def submit_options(cfg: Config, name: str, py_files: Sequence[str] = ()) -> list[str]:
    """spark-submit and its options (master, Delta jars, every lakeforge setting).

    Args:
        cfg: configuration.
        name: suffix of the application name.
        py_files: code shipped to the executors, if any.

    Returns:
        The command up to (not including) the application.
    """
    conf = spark_conf(cfg)
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", cfg.spark.master,
           "--name", f"{cfg.spark.app_name}-{name}"]
    if py_files:
        cmd += ["--py-files", ",".join(checked_py_files(py_files))]
    if "spark.jars" in conf:
        cmd += ["--jars", conf.pop("spark.jars")]
    if "spark.jars.packages" in conf:
        cmd += ["--packages", conf.pop("spark.jars.packages")]
    cmd += ["--driver-memory", conf.pop("spark.driver.memory")]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd


def job_env(cfg: Config, conf_dir: str | Path | None = None) -> dict[str, str]:
    """What spark-submit's environment must add: interpreter, Spark home, config, data.

    The config folder and the data directory are passed as absolute paths, so a
    driver that imports lakeforge from ``--py-files`` (where ``PROJECT_ROOT`` is the
    zip) still reads this checkout's ``conf/`` and the same ``LAKEFORGE_HOME``.
    """
    python = executor_python(cfg.spark)
    conf = Path(conf_dir or os.environ.get(ENV_PREFIX + "CONF_DIR") or DEFAULT_CONF_DIR)
    env = {"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python,
           "SPARK_HOME": str(spark_home()), ENV_PREFIX + "CONF_DIR": str(conf.resolve()),
           ENV_PREFIX + "HOME": str(cfg.home)}
    if cfg.spark.master.startswith("local"):
        env["SPARK_LOCAL_IP"] = os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")
    return env


def submit_env(cfg: Config, conf_dir: str | Path | None = None) -> dict[str, str]:
    """Environment for spark-submit: the project interpreter on driver and executors."""
    return {**os.environ, **job_env(cfg, conf_dir)}


def submit_settings(cfg: Config, job: str, py_files: Sequence[str] = (),
                    conf_dir: str | Path | None = None) -> dict[str, object]:
    """Everything a scheduler needs to submit a job, as plain values (JSON-ready).

    Airflow's SparkSubmitOperator takes these parts separately: the spark-submit
    binary, the master, the application, ``--conf`` pairs (Delta's jars, the driver's
    memory and ``--py-files`` included as ``spark.jars``, ``spark.driver.memory`` and
    ``spark.submit.pyFiles``) and the environment.

    Args:
        cfg: configuration.
        job: job name.
        py_files: code shipped to the executors, if any.
        conf_dir: config folder the job must read (default: this checkout's).

    Returns:
        ``spark_submit``, ``master``, ``name``, ``application``, ``conf``, ``env``.
    """
    conf = spark_conf(cfg)
    if py_files:
        conf["spark.submit.pyFiles"] = ",".join(checked_py_files(py_files))
    return {"spark_submit": str(spark_home() / "bin" / "spark-submit"),
            "master": cfg.spark.master, "name": f"{cfg.spark.app_name}-{job}",
            "application": str(job_path(job)), "conf": conf, "env": job_env(cfg, conf_dir)}


def run_job(cfg: Config, job: str, job_args: Sequence[str] = (), py_files: Sequence[str] = (),
            conf_dir: str | Path | None = None, **kwargs) -> int:
    """Run a job through spark-submit and return its exit code.

    Args:
        cfg: configuration.
        job: job name.
        job_args: the job's arguments.
        py_files: code shipped to the executors, if any.
        conf_dir: config folder the job reads (default: this checkout's).
        **kwargs: passed to :func:`subprocess.run` (for example ``capture_output``).

    Returns:
        spark-submit's exit code.
    """
    cmd = submit_command(cfg, job, job_args, py_files)
    return subprocess.run(cmd, env=submit_env(cfg, conf_dir), check=False, **kwargs).returncode


THRIFT_CLASS = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"
SQL_CLI_CLASS = "org.apache.spark.sql.hive.thriftserver.SparkSQLCLIDriver"


def thrift_command(cfg: Config, port: int, host: str = "127.0.0.1") -> list[str]:
    """spark-submit line of the Spark Thrift (JDBC/ODBC) server on this catalog.

    Args:
        cfg: configuration (the same warehouse, metastore and Delta settings as jobs;
            ``sql_server.auth`` decides whether logins are checked).
        port: TCP port to listen on.
        host: address to bind (loopback by default).

    Returns:
        The command as a list of arguments.
    """
    auth_jars, hiveconf = endpoint.server_settings(cfg)
    hiveconf = {"hive.server2.thrift.port": str(port), "hive.server2.thrift.bind.host": host,
                **hiveconf}
    return [*_hive_driver(cfg, THRIFT_CLASS, "sql-server", auth_jars),
            *[a for k, v in hiveconf.items() for a in ("--hiveconf", f"{k}={v}")]]


def spark_sql_command(cfg: Config, statements: str) -> list[str]:
    """Spark's own ``spark-sql -e`` on this catalog, with the settings jobs run with.

    The yardstick of a cold ``lakeforge sql`` or ``tables`` (the benchmarks run it).
    """
    return [*_hive_driver(cfg, SQL_CLI_CLASS, "spark-sql"), "-e", statements]


def _hive_driver(cfg: Config, main_class: str, name: str,
                 extra_jars: Sequence[str] = ()) -> list[str]:
    """spark-submit of one of Spark's Hive drivers, up to and including its application.

    Hive sessions resolve the catalog plugin through the system class loader, which
    ``--jars`` does not reach: Delta's jars must be on the driver class path too, with
    what the config puts there (the metastore's JDBC driver), in one setting.
    """
    extra = spark_conf(cfg).get("spark.driver.extraClassPath")
    cmd = submit_options(cfg, name)
    if extra:
        at = cmd.index(f"spark.driver.extraClassPath={extra}")
        del cmd[at - 1:at + 1]
    jars = [str(j) for j in delta_jars(cfg.spark)] + list(extra_jars) + ([extra] if extra else [])
    classpath = ["--driver-class-path", ":".join(jars)] if jars else []
    return [cmd[0], "--class", main_class, *classpath, *cmd[1:], "spark-internal"]


def beeline_command(port: int, query: str, host: str = "127.0.0.1", user: str = "",
                    password: str = "") -> list[str]:
    """A beeline (shipped with pyspark) call that runs one query and prints CSV."""
    login = ["-n", user, "-p", password] if user else []
    return [str(spark_home() / "bin" / "beeline"), "-u", f"jdbc:hive2://{host}:{port}/",
            *login, "--silent=true", "--outputformat=csv2", "-e", query]
