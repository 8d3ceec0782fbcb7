"""A shared metastore: a local PostgreSQL service, so many jobs can use one lakehouse.

Embedded Derby (the default) admits one process per ``LAKEFORGE_HOME``. With
``metastore.kind: postgres`` the catalog lives in a PostgreSQL database instead, and
jobs, the Thrift server and Airflow tasks run side by side. ``lakeforge metastore
start`` runs one on ``metastore.host:port`` with its data under ``home/postgres``
(Debian's ``postgresql`` package; as root it runs as ``metastore.service_user``,
since PostgreSQL refuses to run as root) and creates the whole Hive 2.3 metastore
schema once, up front, with DataNucleus' SchemaTool over the ``package.jdo`` inside
Spark's own ``hive-metastore`` jar: the exact tables Spark's built-in Hive client
expects. Creating it lazily from the jobs (``datanucleus.schema.autoCreateAll``)
deadlocks on PostgreSQL: one connection's ``ALTER TABLE ... ADD FOREIGN KEY`` waits for
another's open insert. Against a PostgreSQL you run yourself, ``lakeforge metastore
init`` creates the schema in the configured database.

``lakeforge metastore register`` adds every Delta table found under the warehouse to
the configured metastore: the way to move a lakehouse from Derby to PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pyspark
from pyspark.sql import SparkSession

from lakehouse.config import Config
from lakehouse.errors import ConfigError, LakeforgeError
from lakehouse.session import postgres_jar

log = logging.getLogger(__name__)
SCHEMA_TOOL = "org.datanucleus.store.schema.SchemaTool"
# DataNucleus settings of Hive's metastore (HiveConf defaults): identifiers such as
# "INTEGER_IDX" only come out right with the datanucleus1 identifier factory.
SCHEMA_PROPERTIES = {
    "javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
    "datanucleus.identifierFactory": "datanucleus1",
    "datanucleus.rdbms.useLegacyNativeValueStrategy": "true",
    "datanucleus.storeManagerType": "rdbms",
    "datanucleus.schema.autoCreateAll": "true",
    "datanucleus.schema.validateTables": "false",
    "datanucleus.schema.validateColumns": "false",
    "datanucleus.schema.validateConstraints": "false",
    "datanucleus.plugin.pluginRegistryBundleCheck": "LOG",
    "datanucleus.transactionIsolation": "read-committed",
}
# Tables DataNucleus makes at run time even with autoCreateAll off, and the schema
# version Hive records; created with the rest so no job creates anything.
EXTRA_DDL = """
CREATE TABLE IF NOT EXISTS "SEQUENCE_TABLE" (
  "SEQUENCE_NAME" varchar(255) PRIMARY KEY, "NEXT_VAL" int8 NOT NULL);
INSERT INTO "VERSION" ("VER_ID", "SCHEMA_VERSION", "VERSION_COMMENT")
  SELECT 1, '2.3.0', 'lakeforge: Hive 2.3 schema from package.jdo'
  WHERE NOT EXISTS (SELECT 1 FROM "VERSION");
"""


class MetastoreError(LakeforgeError):
    """The shared metastore service cannot be started, reached or set up."""


def pg_bin(tool: str) -> Path:
    """A PostgreSQL server program (``initdb``, ``pg_ctl``) of the newest installed major."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True):
        if (folder / tool).is_file():
            return folder / tool
    found = shutil.which(tool)
    if found:
        return Path(found)
    raise MetastoreError(f"PostgreSQL's {tool} is not installed (Debian package postgresql; "
                         f"scripts/setup.sh installs it)")


def data_dir(cfg: Config) -> Path:
    """The local service's data directory."""
    return cfg.home / "postgres"


def _as_service(cfg: Config, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program as the service user when we are root."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", cfg.metastore.service_user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def _psql(cfg: Config, sql: str, database: str | None = None) -> str:
    ms = cfg.metastore
    proc = subprocess.run(
        ["psql", "-h", ms.host, "-p", str(ms.port), "-U", ms.user, "-d", database or ms.database,
         "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True, text=True, check=False, env={**os.environ, "PGPASSWORD": ms.password})
    if proc.returncode:
        raise MetastoreError(f"psql on {ms.host}:{ms.port}/{database or ms.database} failed: "
                             f"{proc.stderr.strip()}")
    return proc.stdout.strip()


def running(cfg: Config) -> bool:
    """Whether the local service of this home is running."""
    pgdata = data_dir(cfg)
    return (pgdata / "PG_VERSION").exists() and \
        _as_service(cfg, [str(pg_bin("pg_ctl")), "status", "-D", str(pgdata)]).returncode == 0


def start(cfg: Config) -> str:
    """Start (initialising on first use) the local service and create the schema.

    The service also holds MLflow's tracking store, in a database of its own
    (``tracking.database``), unless ``tracking.uri`` names another.

    Returns:
        The JDBC URL jobs use.

    Raises:
        ConfigError: the config does not select the PostgreSQL metastore.
        MetastoreError: PostgreSQL is missing, cannot use the folder, or fails to start.
    """
    ms = cfg.metastore
    if ms.kind != "postgres":
        raise ConfigError("config value metastore.kind='derby': the local PostgreSQL service "
                          "is for metastore.kind=postgres (LAKEFORGE_METASTORE__KIND=postgres)")
    pgdata = data_dir(cfg)
    if not (pgdata / "PG_VERSION").exists():
        _initdb(cfg, pgdata)
    if not running(cfg):
        proc = _as_service(cfg, [
            str(pg_bin("pg_ctl")), "start", "-w", "-D", str(pgdata), "-l", str(pgdata / "log"),
            "-o", f"-c listen_addresses={ms.host} -p {ms.port} "
                  f"-c unix_socket_directories={pgdata}"])
        if proc.returncode:
            tail = (pgdata / "log").read_text()[-1500:] if (pgdata / "log").exists() else ""
            raise MetastoreError(f"PostgreSQL did not start on {ms.host}:{ms.port}: "
                                 f"{proc.stderr.strip() or proc.stdout.strip()}\n{tail}")
        log.info("PostgreSQL metastore running on %s:%d (data in %s)", ms.host, ms.port, pgdata)
    databases = [ms.database]
    if cfg.tracking.enabled and not cfg.tracking.uri:   # MLflow's store: a database of its own
        databases.append(cfg.tracking.database)
    for database in databases:
        if not _psql(cfg, f"SELECT 1 FROM pg_database WHERE datname = '{database}'",
                     "postgres"):
            _psql(cfg, f'CREATE DATABASE "{database}"', "postgres")
    init_schema(cfg)
    return f"jdbc:postgresql://{ms.host}:{ms.port}/{ms.database}"


def _initdb(cfg: Config, pgdata: Path) -> None:
    ms = cfg.metastore
    pgdata.mkdir(parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    with tempfile.NamedTemporaryFile("w", dir=cfg.home, delete=False) as pw:
        pw.write(ms.password)
    if os.geteuid() == 0:
        shutil.chown(pgdata, ms.service_user, ms.service_user)
        shutil.chown(pw.name, ms.service_user)
        for parent in pgdata.parents:
            if _as_service(cfg, ["test", "-x", str(parent)]).returncode:
                shutil.rmtree(pgdata, ignore_errors=True)
                raise MetastoreError(
                    f"{parent} is not searchable by {ms.service_user!r}, who runs PostgreSQL "
                    f"(it refuses to run as root): chmod o+x {parent}, or use a home below "
                    f"a folder that user can reach")
    try:
        proc = _as_service(cfg, [str(pg_bin("initdb")), "-D", str(pgdata), "-U", ms.user,
                                 "--pwfile", pw.name, "--auth=scram-sha-256", "-E", "UTF8",
                                 "--locale=C.UTF-8"])
    finally:
        os.unlink(pw.name)
    if proc.returncode:
        shutil.rmtree(pgdata, ignore_errors=True)
        raise MetastoreError(f"initdb {pgdata} failed: {proc.stderr.strip()}")
    log.info("initialised PostgreSQL data directory %s", pgdata)


def init_schema(cfg: Config) -> bool:
    """Create the Hive metastore schema in the configured database unless it exists.

    Returns:
        Whether it was created now.
    """
    if _psql(cfg, "SELECT to_regclass('\"DBS\"') IS NOT NULL") == "t":
        return False
    jar = postgres_jar(cfg)
    if not jar.is_file():
        raise ConfigError(f"metastore.kind=postgres needs the JDBC driver {jar}; run "
                          f"scripts/setup.sh")
    jars = Path(pyspark.__file__).parent / "jars"
    hive = next(jars.glob("hive-metastore-*.jar"), None)
    if hive is None:
        raise MetastoreError(f"no hive-metastore jar in {jars}")
    ms = cfg.metastore
    with tempfile.TemporaryDirectory() as work:
        with zipfile.ZipFile(hive) as zf:
            zf.extract("package.jdo", work)
        props = {**SCHEMA_PROPERTIES, "javax.jdo.option.ConnectionUserName": ms.user,
                 "javax.jdo.option.ConnectionPassword": ms.password,
                 "javax.jdo.option.ConnectionURL":
                     f"jdbc:postgresql://{ms.host}:{ms.port}/{ms.database}"}
        Path(work, "schema.properties").write_text(
            "".join(f"{k}={v}\n" for k, v in props.items()))
        proc = subprocess.run(
            ["java", "-Xmx512m", "-cp", f"{jars}/*:{jar}", SCHEMA_TOOL, "-create", "-api", "JDO",
             "-props", "schema.properties", "package.jdo"],
            cwd=work, capture_output=True, text=True, check=False)
    if proc.returncode or _psql(cfg, "SELECT to_regclass('\"DBS\"') IS NOT NULL") != "t":
        raise MetastoreError(f"creating the metastore schema in {ms.database} failed:\n"
                             f"{(proc.stderr or proc.stdout)[-2000:]}")
    _psql(cfg, EXTRA_DDL)
    log.info("created the Hive metastore schema in %s:%d/%s", ms.host, ms.port, ms.database)
    return True


def stop(cfg: Config) -> bool:
    """Stop the local service; whether it was running."""
    if not running(cfg):
        return False
    proc = _as_service(cfg, [str(pg_bin("pg_ctl")), "stop", "-w", "-m", "fast",
                             "-D", str(data_dir(cfg))])
    if proc.returncode:
        raise MetastoreError(f"pg_ctl stop failed: {proc.stderr.strip()}")
    return True


def register_tables(spark: SparkSession, cfg: Config) -> list[str]:
    """Add every Delta table under the warehouse to the current metastore.

    Each ``<warehouse>/<database>.db/<table>`` folder with a ``_delta_log`` becomes
    ``<database>.<table>`` at that location (tables already defined are left alone). The
    warehouse is listed through Hadoop's filesystem, so a lake on object storage works too.

    Returns:
        The tables added.
    """
    jvm = spark.sparkContext._jvm
    warehouse = jvm.org.apache.hadoop.fs.Path(cfg.warehouse_dir)
    fs = warehouse.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    added = []
    if not fs.exists(warehouse):
        return added

    def folders(path):   # sub-folders, by name
        return sorted((s.getPath() for s in fs.listStatus(path) if s.isDirectory()),
                      key=lambda p: p.getName())

    for db_dir in folders(warehouse):
        if not db_dir.getName().endswith(".db"):
            continue
        database = db_dir.getName().removesuffix(".db")
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        for table_dir in folders(db_dir):
            if not fs.exists(jvm.org.apache.hadoop.fs.Path(table_dir, "_delta_log")):
                continue
            table = table_dir.getName()
            if spark.catalog.tableExists(f"{database}.{table}"):
                continue
            spark.sql(f"CREATE TABLE `{database}`.`{table}` USING delta "
                      f"LOCATION '{table_dir.toString()}'")
            added.append(f"{database}.{table}")
    log.info("registered %d table(s) in the metastore", len(added))
    return added
