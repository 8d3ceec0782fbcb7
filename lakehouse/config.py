"""Typed configuration, loaded once at the entry point.

Layers, later wins: ``conf/base/*.yml`` < ``conf/local/*.yml`` < ``LAKEFORGE_*``
environment variables < ``--set key=value`` overrides, then the ``datasets`` of the
folders in ``catalog.dataset_dirs``. The result is a tree of frozen dataclasses;
unknown keys and values of the wrong type stop with a
:class:`~lakehouse.errors.ConfigError` that names the key. The ``datasets`` section
is the data catalog (:mod:`lakehouse.datasets`); all its problems are named at once.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lakehouse.datasets import Dataset, parse_datasets
from lakehouse.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONF_DIR = PROJECT_ROOT / "conf"
ENV_PREFIX = "LAKEFORGE_"
# LAKEFORGE_* variables that are not config keys: where config lives, and set-up's own.
ENV_NOT_CONFIG = frozenset({"CONF_DIR", "VENV", "CACHE", "PYTHON"})


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """Stop with a ConfigError naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"config value {key}={value!r}: expected one of {', '.join(choices)}")


@dataclass(frozen=True)
class SparkConfig:
    """How the SparkSession is built."""

    master: str = "local[*]"
    app_name: str = "lakeforge"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    ui_enabled: bool = True
    log_level: str = "WARN"
    delta_version: str = "4.0.1"
    scala_version: str = "2.13"
    maven_repo: str = "~/.m2/repository"
    python: str = ""
    log4j_config: str = "conf/log4j2.properties"
    console_log: bool = False
    java_options: str = ""
    class_archive: bool = True
    class_archive_dir: str = "~/.cache/lakeforge/jvm"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CatalogConfig:
    """Where tables live in the metastore, and more folders of data set entries."""

    database: str = "lakeforge"
    dataset_dirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class IngestConfig:
    """Bronze ingest settings."""

    max_raw_chars: int = 20000
    batch_rows: int = 20000
    stale_batch_minutes: float = 60.0


@dataclass(frozen=True)
class MaintainConfig:
    """OPTIMIZE and VACUUM settings."""

    vacuum_retention_hours: int = 168
    optimize: bool = True


METASTORE_KINDS = ("derby", "postgres")


@dataclass(frozen=True)
class MetastoreConfig:
    """Where the catalog's table definitions live.

    ``derby`` (the default) is embedded in the job's JVM: nothing to run, one process
    at a time. ``postgres`` is a PostgreSQL database that many jobs, the Thrift server
    and Airflow share; ``lakeforge metastore start`` runs one locally with its data
    under ``home``.
    """

    kind: str = "derby"
    host: str = "127.0.0.1"
    port: int = 5433
    database: str = "metastore"
    user: str = "lakeforge"
    password: str = "lakeforge"
    jdbc_version: str = "42.7.7"
    service_user: str = "postgres"

    def __post_init__(self) -> None:
        check_choice("metastore.kind", self.kind, METASTORE_KINDS)


@dataclass(frozen=True)
class S3Config:
    """How the lake reaches S3 or an S3-compatible store.

    Credentials come from AWS's standard chain (environment variables, a profile, the
    instance's role), never from here.

    Attributes:
        endpoint: the store's URL (``http://127.0.0.1:9090``); empty: AWS.
        region: the region requests are signed for (S3-compatible stores accept any).
        path_style: ``http://host/bucket/key`` instead of ``http://bucket.host/key``
            (most S3-compatible servers need it).
        hadoop_aws_version: ``org.apache.hadoop:hadoop-aws``, at the Hadoop version of
            Spark's own client jars.
        aws_sdk_version: ``software.amazon.awssdk:bundle``, the version that hadoop-aws
            release is built with.
    """

    endpoint: str = ""
    region: str = "us-east-1"
    path_style: bool = False
    hadoop_aws_version: str = "3.4.1"
    aws_sdk_version: str = "2.24.6"


@dataclass(frozen=True)
class LakeServerConfig:
    """The local S3-compatible server (S3Proxy) that ``lakeforge lake-server`` runs."""

    host: str = "127.0.0.1"
    port: int = 9090
    bucket: str = "lakeforge"
    s3proxy_version: str = "4.1.0"


@dataclass(frozen=True)
class LakeConfig:
    """Where every durable table lives.

    Attributes:
        root: the lake's root: ``s3a://bucket/prefix``, ``hdfs://namenode/path``,
            ``file:/path`` or a local folder; empty: the home folder.
        s3: how ``s3a://`` roots are reached.
        server: the local S3 server.
    """

    root: str = ""
    s3: S3Config = field(default_factory=S3Config)
    server: LakeServerConfig = field(default_factory=LakeServerConfig)


@dataclass(frozen=True)
class KafkaServerConfig:
    """The local Kafka broker (KRaft, one node) that ``lakeforge kafka`` runs."""

    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "256m"


@dataclass(frozen=True)
class StreamConfig:
    """Structured Streaming settings of ``lakeforge stream``.

    Attributes:
        kafka_bootstrap: the brokers a Kafka source reads when its entry names none
            (``host:port,...``); empty: the local broker's.
        trigger_seconds: how often a running stream takes a micro-batch.
        max_records_per_batch: at most this many Kafka records per micro-batch
            (``maxOffsetsPerTrigger``); 0: no limit.
        max_files_per_batch: at most this many new files of a Delta table per
            micro-batch of a query reading one (the scoring query reads bronze;
            ``maxFilesPerTrigger``); 0: Delta's default, 1000.
        curate_seconds: a running stream curates its new bronze rows into silver at
            most this often (the first micro-batch of a run, and the end of a run,
            always curate); 0: every micro-batch.
        kafka_server: the local broker.
    """

    kafka_bootstrap: str = ""
    trigger_seconds: float = 10.0
    max_records_per_batch: int = 200_000
    max_files_per_batch: int = 0
    curate_seconds: float = 30.0
    kafka_server: KafkaServerConfig = field(default_factory=KafkaServerConfig)

    @property
    def bootstrap(self) -> str:
        """The brokers to read when an entry names none."""
        server = self.kafka_server
        return self.kafka_bootstrap or f"{server.host}:{server.port}"


@dataclass(frozen=True)
class TrainConfig:
    """Horovod training settings."""

    num_proc: int = 2
    start_timeout: int = 600
    seed: int = 7
    verbose: int = 1


@dataclass(frozen=True)
class TrackingConfig:
    """Where training runs and the model registry are kept (MLflow).

    Attributes:
        enabled: every ``train`` is an MLflow run and every model version is in
            MLflow's Model Registry; false: the ``models`` table only.
        uri: a tracking server or database (``http://mlflow.example:5000``,
            ``postgresql://...``); empty: ``sqlite`` under the home folder, or a
            database of its own (``database``) on the PostgreSQL service when the
            metastore is ``postgres``.
        database: that database's name on the PostgreSQL service.
        experiment: the experiment runs go to; empty: the catalog's database name.
        artifact_root: where a store created here keeps run artifacts; empty:
            ``mlflow`` under the lake's root (``s3://`` for an ``s3a://`` lake).
        ui_host: the interface ``lakeforge mlflow ui`` serves on.
        ui_port: its port.
        timeout: seconds to wait for a tracking server before training stops.
    """

    enabled: bool = True
    uri: str = ""
    database: str = "mlflow"
    experiment: str = ""
    artifact_root: str = ""
    ui_host: str = "127.0.0.1"
    ui_port: int = 5000
    timeout: float = 10.0


SQL_AUTH_MODES = ("none", "password")


@dataclass(frozen=True)
class SqlServerConfig:
    """The SQL endpoint ``lakeforge sql-server`` runs (Spark's Thrift server), and its logins.

    Attributes:
        host: the interface it binds; any but loopback requires ``auth: password``.
        port: its port.
        auth: ``none`` (anyone who reaches the port; loopback only) or ``password``
            (HiveServer2's CUSTOM authentication against ``users_file``).
        users_file: user names and password digests, one per line, as ``lakeforge
            sql-server user NAME`` writes them; empty: ``HOME/sql-server/users``.
        user: the user ``lakeforge sql`` and ``tables`` log in as when ``auth`` is
            ``password``.
        password: its password; ``LAKEFORGE_SQL_SERVER__PASSWORD`` keeps it out of files.
    """

    host: str = "127.0.0.1"
    port: int = 10000
    auth: str = "none"
    users_file: str = ""
    user: str = ""
    password: str = ""

    def __post_init__(self) -> None:
        check_choice("sql_server.auth", self.auth, SQL_AUTH_MODES)


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``home`` is the one data directory."""

    home: Path = Path("data")
    spark: SparkConfig = field(default_factory=SparkConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    datasets: Mapping[str, Dataset] = field(default_factory=dict)
    # bundled data set -> the file of the user's own that overrides (part of) its entry
    overrides: Mapping[str, str] = field(default_factory=dict)
    maintain: MaintainConfig = field(default_factory=MaintainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metastore: MetastoreConfig = field(default_factory=MetastoreConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sql_server: SqlServerConfig = field(default_factory=SqlServerConfig)

    @property
    def lake_root(self) -> str:
        """The lake's root: a URI (``s3a://bucket/prefix``), or the home folder's path."""
        return self.lake.root.rstrip("/") if self.lake.root else str(self.home)

    @property
    def lake_scheme(self) -> str:
        """The lake's filesystem: ``s3a``, ``hdfs``, ``file``, ..."""
        root = self.lake_root
        return root.split("://", 1)[0] if "://" in root else "file"

    def lake_path(self, *parts: str) -> str:
        """A location under the lake's root (a URI, or a local path for a local lake)."""
        return "/".join([self.lake_root, *parts])

    @property
    def warehouse_dir(self) -> str:
        """Managed tables of the catalog, under the lake's root."""
        return self.lake_path("warehouse")

    @property
    def metastore_dir(self) -> Path:
        """The embedded Derby metastore."""
        return self.home / "metastore_db"

    @property
    def checkpoint_dir(self) -> str:
        """Training checkpoints, under the lake's root (Horovod ranks on any node write them)."""
        return self.lake_path("checkpoints")

    @property
    def stream_dir(self) -> str:
        """Structured Streaming checkpoints (source offsets, state), under the lake's root."""
        return self.lake_path("streams")

    @property
    def log_dir(self) -> Path:
        """Each driver's log file: Spark's own log, stack traces included."""
        return self.home / "logs"

    @property
    def sql_users_file(self) -> Path:
        """The SQL endpoint's users file (``sql_server.users_file``, or one in the home)."""
        configured = self.sql_server.users_file
        return project_path(configured) if configured else self.home / "sql-server" / "users"

    @property
    def model_dir(self) -> str:
        """Versioned model artifacts, under the lake's root."""
        return self.lake_path("models")


def project_path(path: str | Path) -> Path:
    """A configured path: ``~`` expanded, relative paths taken from the project root."""
    resolved = Path(os.path.expanduser(str(path)))
    return resolved if resolved.is_absolute() else PROJECT_ROOT / resolved


def load_config(
    overrides: Sequence[str] = (),
    conf_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load the configuration from YAML, environment and ``key=value`` overrides.

    Args:
        overrides: ``dotted.key=value`` strings; values are parsed as YAML scalars.
        conf_dir: folder holding ``base/`` and ``local/``; defaults to the project's
            ``conf/`` (or ``LAKEFORGE_CONF_DIR``).
        environ: environment to read ``LAKEFORGE_*`` variables from (default
            ``os.environ``).

    Returns:
        The frozen configuration, with ``home`` made absolute.

    Raises:
        ConfigError: for unreadable YAML, unknown keys or values of the wrong type.
    """
    env = os.environ if environ is None else environ
    conf_dir = Path(conf_dir or env.get(ENV_PREFIX + "CONF_DIR") or DEFAULT_CONF_DIR)
    if not (conf_dir / "base").is_dir():
        raise ConfigError(f"config folder {conf_dir}/base does not exist")
    merged: dict[str, Any] = {}
    bundled: set[str] = set()
    overridden: dict[str, str] = {}
    for layer in ("base", "local"):
        for path in sorted((conf_dir / layer).glob("*.yml")):
            tree = _read_yaml(path)
            _note_datasets(tree, path, layer == "base", bundled, overridden)
            _deep_merge(merged, tree)
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):] not in ENV_NOT_CONFIG:
            dotted = key[len(ENV_PREFIX):].lower().replace("__", ".")
            _set_dotted(merged, dotted, _parse_scalar(value), f"environment variable {key}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        dotted, value = item.split("=", 1)
        _set_dotted(merged, dotted.strip(), _parse_scalar(value), f"override {item!r}")
    raw_datasets = merged.pop("datasets", None) or {}
    cfg = _build(Config, merged, "")
    for folder in cfg.catalog.dataset_dirs:
        for path in sorted(project_path(folder).glob("*.yml")):
            tree = _read_yaml(path)
            _note_datasets(tree, path, False, bundled, overridden)
            _deep_merge(raw_datasets, tree.get("datasets") or {})
    datasets, problems = parse_datasets(raw_datasets)
    if problems:
        raise ConfigError("the data catalog has problems:\n  " + "\n  ".join(problems))
    return dataclasses.replace(cfg, home=project_path(cfg.home).resolve(), datasets=datasets,
                               overrides=overridden, lake=_lake(cfg.lake))


def _lake(lake: LakeConfig) -> LakeConfig:
    """The lake section with a local root made absolute, and a root Hadoop can open.

    Raises:
        ConfigError: an ``s3://`` or ``s3n://`` root (Hadoop's S3 filesystem is ``s3a://``),
            or an object-store root without a bucket.
    """
    root = lake.root.strip()
    if not root:
        return lake
    scheme, _, rest = root.partition("://")
    if not rest:
        return dataclasses.replace(lake, root=str(project_path(root).resolve()))
    if scheme in ("s3", "s3n"):
        raise ConfigError(f"config value lake.root={root!r}: Hadoop reaches S3 as s3a://; "
                          f"write s3a://{rest}")
    if scheme == "s3a" and not rest.split("/", 1)[0]:
        raise ConfigError(f"config value lake.root={root!r}: name the bucket "
                          f"(s3a://bucket/prefix)")
    return dataclasses.replace(lake, root=root.rstrip("/"))


def _note_datasets(tree: Mapping[str, Any], path: Path, is_bundled: bool, bundled: set[str],
                   overrides: dict[str, str]) -> None:
    """Remember the bundled entries, and which user file overrides one of them."""
    entries = tree.get("datasets")
    if not isinstance(entries, Mapping):
        return
    if is_bundled:
        bundled.update(entries)
        return
    for name in entries:
        if name in bundled:
            overrides[name] = str(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    # Top-level ``x-...`` keys only hold YAML anchors for the rest of the file.
    return {k: v for k, v in data.items() if not str(k).startswith("x-")}


def _parse_scalar(text: str) -> Any:
    if not text.strip():
        return ""     # VAR= sets a string setting to empty (YAML would read it as null)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: config key {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_typed(cls: type, data: Any, what: str = "config", prefix: str = "") -> Any:
    """A frozen dataclass built from plain values, each checked against its type hint.

    The loader of the configuration, also used for other typed settings (a model
    family's training parameters). Fields not given keep their defaults.

    Args:
        cls: the dataclass.
        data: a mapping of field names to values (YAML or command-line scalars).
        what: what the values are, for messages (``config``, ``mlp parameter``).
        prefix: dotted path of ``data`` inside a larger tree.

    Raises:
        ConfigError: an unknown key or a value of the wrong type, named with ``what``,
            the key and the value.
    """
    return _build(cls, data, prefix, what)


def _build(cls: type, data: Any, prefix: str, what: str = "config") -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} section {prefix or '<root>'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {what} key {prefix + unknown[0]!r}; "
            f"known keys here: {', '.join(sorted(names))}"
        )
    kwargs = {name: _coerce(hints[name], data[name], prefix + name, what) for name in data}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str, what: str = "config") -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, key + ".", what)
    if hint is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{what} value {key}={value!r}: expected a path")
        return Path(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{what} value {key}={value!r}: expected a mapping")
        return {str(k): str(v) for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{what} value {key}={value!r}: expected a list")
        return tuple(str(v) for v in value)
    if origin is list or origin is types.UnionType:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{what} value {key}={value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{what} value {key}={value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{what} value {key}={value!r}: expected a number")
        return float(value)
    if hint is str:
        if value is None or isinstance(value, dict | list):
            raise ConfigError(f"{what} value {key}={value!r}: expected a string")
        return str(value)
    return value
