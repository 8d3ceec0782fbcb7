"""The feature-set contract: what every kind provides, and the one way a gold table is built.

A kind of data set (``tabular``, ``image``, ``text``, ``series``, ``stream``) is one
module of this package holding a :class:`Kind`: the typed settings of its ``features:``
declaration (a frozen dataclass loaded with the configuration's own loader), how its
gold table is built from the silver rows, what is fitted on the training split, and
the gold table's schema. Every builder writes through :func:`build_once`, which owns
the build key, the overwrite, the partition count and the snapshot handed to training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType

from lakehouse import delta
from lakehouse.config import Config, load_typed
from lakehouse.datasets import Dataset
from lakehouse.errors import ConfigError, SourceError
from lakehouse.problems import Problems, SettingError
from lakehouse.tables import TableSpec, _f, layer_table

log = logging.getLogger(__name__)

# Every gold table starts with these: the row's key, and the split it belongs to (the
# table is partitioned by it, so each Horovod rank reads a split's files through Petastorm).
ROW_FIELDS = (_f("row_id", LongType(), False), _f("split", StringType(), False))


@dataclass(frozen=True)
class FeatureSet:
    """A gold feature table as built.

    Attributes:
        name: the feature set (a data set, ``<data set>_<set>``, or ``corpus``).
        table: the gold table's catalog name.
        version: the table's data version training pins.
        rows: rows in that version.
        n_features: numbers per row (a window's or shingle's length, a vocabulary's
            size for text).
        n_classes: classes of a classification (0 otherwise).
        feature_names: one name per number, where they have names.
    """

    name: str
    table: str
    version: int
    rows: int
    n_features: int
    n_classes: int
    feature_names: tuple[str, ...]


@dataclass(frozen=True)
class Build:
    """What :func:`build_once` did.

    Attributes:
        table: the gold table's catalog name.
        snapshot: its snapshot after the build (what training pins).
        built: whether this call wrote a new version (False: the key matched).
        meta: the commit metadata of the snapshot's data version (``key`` and the
            builder's own values).
    """

    table: str
    snapshot: delta.Snapshot
    built: bool
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self, spark: SparkSession) -> DataFrame:
        """The table's rows at the snapshot."""
        return delta.read_version(spark, self.table, self.snapshot.version)


class Kind(ABC):
    """A kind of data set and how its feature sets become gold tables.

    Attributes:
        name: the kind, as catalog entries declare ``kind:``.
        settings: the frozen dataclass of a ``features:`` declaration of this kind; its
            ``__post_init__`` checks ranges, and :meth:`settings_of` loads it with
            :func:`lakehouse.config.load_typed`.
        params: keys a command may give over the declaration (``--param``).
    """

    name: ClassVar[str]
    settings: ClassVar[type]
    params: ClassVar[tuple[str, ...]] = ()

    def sets(self, cfg: Config) -> dict[str, Dataset | None]:
        """The feature sets of this kind in the catalog, by name (default: each entry)."""
        return {n: e for n, e in cfg.datasets.items() if e.kind == self.name}

    def settings_of(self, entry: Dataset | None, params: Mapping[str, Any] | None = None,
                    where: str = "") -> Any:
        """The typed settings of a feature set: its declaration, ``params`` over it.

        Raises:
            ConfigError: an unknown key or a wrong value, named with ``where``.
        """
        where = where or (f"datasets.{entry.name}.features" if entry else "features")
        given = dict(params or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise ConfigError(f"{self.name} features: unknown parameter(s) "
                              f"{', '.join(unknown)}; known: {', '.join(self.params) or 'none'}")
        declared = dict(entry.features or {}) if entry is not None else {}
        return load_settings(self.settings, {**declared, **given}, where, self.name)

    def check(self, entry: Dataset, silver: DataFrame, problems: Problems) -> None:
        """Add every problem of ``entry``'s feature declaration to ``problems``.

        ``silver`` is an empty frame with the silver columns, for SQL to be analysed
        against. The default checks the typed settings.
        """
        load_settings(self.settings, dict(entry.features or {}),
                      f"datasets.{entry.name}.features", self.name, problems)

    @abstractmethod
    def gold_spec(self, name: str, settings: Any) -> TableSpec:
        """The gold table of a feature set (registered, so ``lakeforge tables`` knows it)."""

    @abstractmethod
    def build(self, spark: SparkSession, cfg: Config, name: str, entry: Dataset | None,
              settings: Any, partitions: int | None) -> FeatureSet:
        """Build the gold table through :func:`build_once` and describe it."""


def load_settings(cls: type, values: Mapping[str, Any], where: str, kind: str,
                  problems: Problems | None = None) -> Any:
    """A kind's settings dataclass from declared values, each problem named at ``where``.

    Whole-number fields must be whole numbers >= 1; the other fields are typed by
    :func:`lakehouse.config.load_typed`; the dataclass's ``__post_init__`` checks the
    rest, raising :class:`lakehouse.problems.SettingError`.

    Args:
        cls: the settings dataclass.
        values: the declared values, and given ones over them.
        where: the declaration's key (``datasets.sales.features``).
        kind: the kind, for messages.
        problems: where to add the problems found (then None is returned when there
            are any); without it the first is raised.

    Raises:
        ConfigError: ``<where>: unknown key(s) ...``, ``<where>.<key>: <value> is not a
            whole number >= 1``, or ``<where>.<key>: <what __post_init__ says>``.
    """
    found = Problems()
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        found.add(where, f"unknown key(s) {', '.join(unknown)}; {kind} features take "
                         f"{', '.join(names)}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and hints[key] is int and (isinstance(value, bool)
                                                   or not isinstance(value, int) or value < 1):
            found.add(f"{where}.{key}", f"{value!r} is not a whole number >= 1")
    settings = None
    if not found:
        try:
            settings = load_typed(cls, dict(values), f"{kind} features", f"{where}.")
        except SettingError as exc:
            found.add(f"{where}.{exc.key}", exc.what)
        except ConfigError as exc:
            found.add(where, str(exc))
    if problems is not None:
        problems.extend(found)
    elif found:
        raise ConfigError(found.items[0])
    return settings


def default_partitions(cfg: Config) -> int:
    """Parquet files per split of a gold table: twice the Horovod ranks, at least 4.

    Every rank then reads a shard of its own through Petastorm.
    """
    return max(4, 2 * cfg.train.num_proc)


def built_meta(spark: SparkSession, table: str, version: int | None = None) -> dict[str, Any]:
    """The builder's metadata in the commit that wrote ``version`` (default: the data version).

    Empty when the table does not exist or the commit carries none.
    """
    if not delta.table_exists(spark, table):
        return {}
    if version is None:
        version = delta.snapshot(spark, table).data_version
    return delta.commit_json(spark, table, int(version))


def build_once(spark: SparkSession, cfg: Config, spec: TableSpec, key: Mapping[str, Any],
               rows: Callable[[], DataFrame], *, partitions: int | None = None,
               by: tuple[str, ...] = ("split", "row_id"), order: Column | None = None,
               meta: Callable[[], Mapping[str, Any]] | None = None) -> Build:
    """Overwrite a gold table with ``rows()`` unless its current data carries ``key``.

    The key (what the table is a function of: the silver data version and the
    declaration) is kept in the writing commit's ``userMetadata`` with ``meta()``; the
    same key on the current data version builds nothing, a changed one overwrites, even
    back to an earlier declaration. A table whose column types differ from ``spec``
    (a declaration that turned a classification into a regression) is rewritten with
    the new schema; one missing columns the spec gained is given them first. A run
    killed before its commit leaves the table as it was.

    Args:
        spark: the session.
        cfg: configuration (database, Horovod ranks for the default partitions).
        spec: the gold table.
        key: the build key (JSON values).
        rows: the table's rows, computed only when a build is due.
        partitions: Parquet files per split (default :func:`default_partitions`).
        by: columns the rows are hash-partitioned by (empty: round robin).
        order: sort inside each file (default: none).
        meta: more values for the commit metadata, computed after ``rows()``.

    Returns:
        The table, its snapshot and what was done.
    """
    key = json.loads(json.dumps(dict(key), sort_keys=True))
    table = spec.full_name(cfg.catalog.database)
    retype = delta.table_exists(spark, table) and _retyped(spark.table(table).schema, spec)
    if retype:
        log.info("%s: column types change (%s); the table is rewritten with them (its "
                 "earlier versions keep theirs)", table, ", ".join(retype))
    else:
        delta.ensure_table(spark, spec, cfg.catalog.database)
        current = delta.snapshot(spark, table)
        written = delta.commit_json(spark, table, current.data_version)
        if written.get("key") == key:
            log.info("%s v%d is already built from the same input and declaration", table,
                     current.data_version)
            return Build(table, current, False, written)
    df = rows().select(*spec.schema.fieldNames())
    extra = dict(meta()) if meta is not None else {}
    count = partitions or default_partitions(cfg)
    df = df.repartition(count, *by) if by else df.repartition(count)
    if order is not None:
        df = df.sortWithinPartitions(order)
    written = {**extra, "key": key}
    (df.write.format("delta").mode("overwrite")
     .option("overwriteSchema", str(bool(retype)).lower())
     .option("userMetadata", json.dumps(written, sort_keys=True))
     # By path: an overwrite by name would go through the catalog's REPLACE TABLE.
     .save(delta.table_location(spark, table)))
    return Build(table, delta.snapshot(spark, table), True, json.loads(json.dumps(written)))


def _retyped(actual: Any, spec: TableSpec) -> list[str]:
    """Columns whose type in the table differs from the spec's."""
    have = {f.name: f.dataType for f in actual.fields}
    return [f"{f.name}: {have[f.name].simpleString()} -> {f.dataType.simpleString()}"
            for f in spec.schema.fields if f.name in have and have[f.name] != f.dataType]


def silver_rows(spark: SparkSession, cfg: Config, entry: Dataset,
                data_version: int | None = None) -> tuple[DataFrame, delta.Snapshot]:
    """A data set's rows of its silver table, read at one pinned snapshot.

    Entries that share a silver table are told apart by ``_source`` when silver keeps
    it, else by their ``group`` role (the column holding the data set's name).

    Args:
        spark: the session.
        cfg: configuration.
        entry: the catalog entry.
        data_version: read the rows as of this data version (default: the current).

    Returns:
        (the rows, the snapshot they were read at).
    """
    silver = layer_table(cfg.catalog.database, "silver", entry.table_name)
    pinned = delta.snapshot(spark, silver)
    if data_version is None:
        rows = delta.read_version(spark, silver, pinned.version)
    else:
        rows = delta.read_data_version(spark, silver, data_version)
    sharing = sorted(n for n, e in cfg.datasets.items()
                     if e.table_name == entry.table_name and n != entry.name)
    if sharing:
        group = entry.roles.get("group")
        if "_source" in rows.columns:
            rows = rows.filter(F.col("_source") == entry.name)
        elif isinstance(group, str) and group in rows.columns:
            rows = rows.filter(F.col(group) == entry.name)
        else:
            raise ConfigError(f"data set {entry.name!r} shares {silver} with "
                              f"{', '.join(sharing)}; declare roles.group: the column whose "
                              f"value is the data set's name in each row")
    return rows, pinned


def entry_of(cfg: Config, name: str, kind: str) -> Dataset:
    """The catalog entry ``name``, which must be of ``kind``.

    Raises:
        SourceError: no such entry, or one of another kind (both are named).
    """
    entry = cfg.datasets.get(name)
    if entry is None:
        known = sorted(n for n, e in cfg.datasets.items() if e.kind == kind)
        raise SourceError(f"no data set {name!r} in the catalog; {kind} data sets: "
                          f"{', '.join(known) or 'none'}")
    if entry.kind != kind:
        raise SourceError(f"data set {name!r} is of kind {entry.kind or 'none'!r}, "
                          f"not {kind!r}")
    return entry


def first_line(exc: Exception) -> str:
    """An error's first line (at most 300 characters), for a problem's text."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
