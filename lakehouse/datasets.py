"""The data catalog: data sets declared in YAML, parsed into typed entries.

A data set is one entry under ``datasets:`` in ``conf/base/*.yml`` (the bundled ones),
``conf/local/*.yml`` or a folder named by ``catalog.dataset_dirs`` (the user's own).
This module checks an entry's *shape* (known keys, types, required keys, kinds and
roles) without Spark; :mod:`lakehouse.dataset_check` checks what needs Spark (DDL,
SQL, paths). Every problem names the data set, the key and the value.

An entry::

    orders:
      kind: tabular                        # tabular, image, text, series or stream
      roles: {id: order_id, label: status}
      source:                              # files, a table, or a named parser
        files: /landing/orders/            # path, glob or directory (or a list)
        format: csv                        # csv, json, parquet, text, binaryFile
        options: {header: true}            # passed to Spark's reader as they are
        schema: "order_id BIGINT, placed_at TIMESTAMP, amount DOUBLE, status STRING"
      silver:
        keys: [order_id]
        select: ["*", "upper(status) AS status_code"]
        rules:
          - {name: amount_positive, expr: "amount > 0", on_fail: quarantine}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lakehouse.featuresets import KINDS, LABELLED, LIST_ROLES, ROLES
from lakehouse.problems import Problems

FORMATS = ("csv", "json", "parquet", "text", "binaryFile")
ACTIONS = ("warn", "quarantine", "fail")


@dataclass(frozen=True)
class SourceSpec:
    """Where a data set's raw records come from.

    Exactly one of: ``files`` with a ``format`` Spark reads, ``files`` with a named
    ``parser`` (formats Spark cannot read), an existing ``table`` (catalog name)
    or ``delta`` path, optionally at a ``version``, or a ``kafka`` topic whose records'
    values are ``json`` or ``csv`` (read by ``lakeforge stream ingest``).

    Attributes:
        files: paths, globs or directories; relative ones are taken inside
            ``package`` when given, else from the project root.
        format: Spark reader format.
        parser: name of a parser plug-in (``lakeforge catalog parsers`` lists them).
        package: installed Python distribution that holds ``files``.
        table: existing table to read.
        delta: existing Delta table path to read.
        version: Delta version of ``table``/``delta`` (default: the current one).
        options: reader options (Spark's, or the parser's), as strings.
        schema: the bronze columns as a DDL string.
        kafka: ``topic`` (required), ``bootstrap`` (brokers; default
            ``stream.kafka_bootstrap``) and ``starting_offsets`` (``earliest``, the
            default, or ``latest``: where a new stream starts).
    """

    files: tuple[str, ...] = ()
    format: str = ""
    parser: str = ""
    package: str = ""
    table: str = ""
    delta: str = ""
    version: int | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    schema: str = ""
    kafka: Mapping[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``files`` (Spark's reader), ``parser``, ``table`` or ``kafka``."""
        if self.kafka:
            return "kafka"
        if self.table or self.delta:
            return "table"
        return "parser" if self.parser else "files"

    def describe(self) -> str:
        """One line for listings."""
        if self.kind == "table":
            at = f" @v{self.version}" if self.version is not None else ""
            return f"table {self.table or 'delta.`' + self.delta + '`'}{at}"
        if self.kind == "kafka":
            return f"{self.format}: kafka topic {self.kafka.get('topic', '')}"
        where = ", ".join(self.files)
        how = f"parser {self.parser}" if self.parser else self.format
        return f"{how}: {self.package + ':' if self.package else ''}{where}"


@dataclass(frozen=True)
class Rule:
    """A named quality rule: a SQL boolean every silver row should meet."""

    name: str
    expr: str
    on_fail: str = "quarantine"


@dataclass(frozen=True)
class SilverSpec:
    """How bronze becomes silver: an optional select, MERGE keys and quality rules."""

    keys: tuple[str, ...] = ()
    select: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Dataset:
    """One catalog entry.

    Attributes:
        name: entry name; bronze rows carry it in ``_source``.
        table: bronze/silver table name (``bronze_<table>``); entries may share one
            table when they declare the same schema and silver settings.
        kind: ``tabular``, ``image``, ``text``, ``series``, ``stream``, or empty for
            reference data that no model family trains on.
        roles: which column plays which part for the kind (names or lists of names).
        description: one line for listings.
        source: where the records come from.
        silver: select, keys and rules.
        features: per-kind feature settings, read by the feature builders.
    """

    name: str
    source: SourceSpec
    silver: SilverSpec
    table: str = ""
    kind: str = ""
    roles: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    features: Mapping[str, Any] = field(default_factory=dict)

    @property
    def table_name(self) -> str:
        """The bronze/silver table's short name."""
        return self.table or self.name

    def feature_sets(self) -> dict[str, Dataset]:
        """The feature sets a tabular or image entry declares, by name.

        ``features: {label: ..., ...}`` declares one set, named like the entry. Named
        sets, ``features: {price: {label: ...}, cut: {label: ...}}``, are called
        ``<entry>_price`` and ``<entry>_cut``: each has its own gold table and models,
        over the entry's one bronze and silver table. Each set is returned as the entry
        with that set's declaration as its ``features``.
        """
        if self.kind not in LABELLED or not self.features:
            return {}
        if _named_sets(self.features):
            return {f"{self.name}_{key}": replace(self, features=dict(body))
                    for key, body in self.features.items()}
        return {self.name: self} if "label" in self.features else {}

    def features_key(self, feature_set: str) -> str:
        """Where a feature set is declared, for messages (``datasets.e.features.price``)."""
        named = feature_set != self.name and _named_sets(self.features)
        return f"datasets.{self.name}.features" + \
            (f".{feature_set[len(self.name) + 1:]}" if named else "")

    def role_columns(self) -> list[tuple[str, str]]:
        """(role, column) pairs, list roles expanded."""
        pairs: list[tuple[str, str]] = []
        for role, value in self.roles.items():
            for column in (value,) if isinstance(value, str) else value:
                pairs.append((role, column))
        return pairs


def _named_sets(features: Mapping[str, Any]) -> bool:
    """Whether ``features`` holds named feature sets: each a mapping with a label."""
    return "label" not in features and all(
        isinstance(body, Mapping) and "label" in body for body in features.values())


_ENTRY_KEYS = ("kind", "roles", "description", "table", "source", "silver", "features")
_SOURCE_KEYS = ("files", "format", "parser", "package", "table", "delta", "version",
                "options", "schema", "kafka")
_KAFKA_KEYS = ("topic", "bootstrap", "starting_offsets")
_SILVER_KEYS = ("keys", "select", "rules")
_RULE_KEYS = ("name", "expr", "on_fail")


def parse_datasets(raw: Any) -> tuple[dict[str, Dataset], list[str]]:
    """Parse the ``datasets`` section of the config.

    Args:
        raw: the merged YAML mapping (entry name -> entry).

    Returns:
        The entries by name, and every problem found (empty when all are well formed).
    """
    problems = Problems()
    entries: dict[str, Dataset] = {}
    for name, body in problems.mapping(raw, "datasets", tuple(raw or ())).items():
        where = f"datasets.{name}"
        if not isinstance(name, str) or not name.replace("_", "a").isalnum() \
                or not name[0].isalpha() or name != name.lower():
            problems.add(where, "a data set name is lower case letters, digits and _")
            continue
        entry = _parse_entry(name, body, where, problems)
        if entry is not None:
            entries[name] = entry
    _check_shared_tables(entries, problems)
    _check_feature_set_names(entries, problems)
    return entries, problems.items


def _parse_entry(name: str, body: Any, where: str, problems: Problems) -> Dataset | None:
    if body is None:
        problems.add(where, "the entry is empty; it needs at least a source")
        return None
    body = problems.mapping(body, where, _ENTRY_KEYS)
    if "source" not in body:
        problems.add(f"{where}.source", "missing; say where the records come from")
    source = _parse_source(body.get("source"), f"{where}.source", problems)
    silver = _parse_silver(body.get("silver"), f"{where}.silver", problems)
    kind = problems.text(body.get("kind"), f"{where}.kind")
    if kind and kind not in KINDS:
        problems.add(f"{where}.kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    roles = _parse_roles(kind, body.get("roles"), f"{where}.roles", problems)
    features = body.get("features") or {}
    if not isinstance(features, Mapping):
        problems.add(f"{where}.features", f"expected a mapping, got {features!r}")
        features = {}
    table = problems.text(body.get("table"), f"{where}.table")
    if table and not table.replace("_", "a").isalnum():
        problems.add(f"{where}.table", f"{table!r} is not a plain table name")
    return Dataset(name=name, source=source, silver=silver, table=table, kind=kind, roles=roles,
                   description=problems.text(body.get("description"), f"{where}.description"),
                   features=dict(features))


def _parse_source(raw: Any, where: str, problems: Problems) -> SourceSpec:
    body = problems.mapping(raw, where, _SOURCE_KEYS)
    options = body.get("options") or {}
    if not isinstance(options, Mapping):
        problems.add(f"{where}.options", f"expected a mapping, got {options!r}")
        options = {}
    version = body.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or version < 0):
        problems.add(f"{where}.version", f"expected a table version (0, 1, ...), got {version!r}")
        version = None
    spec = SourceSpec(
        files=problems.texts(body.get("files"), f"{where}.files"),
        format=problems.text(body.get("format"), f"{where}.format"),
        parser=problems.text(body.get("parser"), f"{where}.parser"),
        package=problems.text(body.get("package"), f"{where}.package"),
        table=problems.text(body.get("table"), f"{where}.table"),
        delta=problems.text(body.get("delta"), f"{where}.delta"),
        version=version,
        options={str(k): _option_text(v) for k, v in options.items()},
        schema=problems.text(body.get("schema"), f"{where}.schema"),
        kafka=_parse_kafka(body.get("kafka"), f"{where}.kafka", problems),
    )
    if not body:
        return spec
    chosen = [k for k in ("files", "table", "delta", "kafka") if body.get(k)]
    if len(chosen) != 1:
        problems.add(where, "give exactly one of files, table, delta or kafka"
                     + (f" (found {', '.join(chosen)})" if chosen else ""))
    if spec.kafka and spec.format not in ("json", "csv"):
        problems.add(f"{where}.format", f"{spec.format or 'missing'}: a kafka source's record "
                                        "values are json or csv")
    if spec.files and bool(spec.format) == bool(spec.parser):
        problems.add(where, "files need either a format Spark reads "
                            f"({', '.join(FORMATS)}) or a parser, not both")
    if spec.format and spec.format not in FORMATS:
        problems.add(f"{where}.format", f"{spec.format!r} is not one of {', '.join(FORMATS)}; "
                                        "formats Spark cannot read need a parser")
    if spec.format in ("csv", "json") and not spec.schema:
        what = "records" if spec.kafka else "files"
        problems.add(f"{where}.schema", f"missing; {spec.format} {what} need a schema as a DDL "
                                        "string (no schema inference)")
    if spec.parser and not spec.schema:
        problems.add(f"{where}.schema", "missing; a parser fills the columns the schema declares")
    if spec.version is not None and spec.kind != "table":
        problems.add(f"{where}.version", "only a table or delta source has versions")
    if spec.package and not spec.files:
        problems.add(f"{where}.package", "needs files inside the package")
    return spec


def _parse_kafka(raw: Any, where: str, problems: Problems) -> dict[str, str]:
    if raw is None:
        return {}
    body = problems.mapping(raw, where, _KAFKA_KEYS)
    out = {k: problems.text(v, f"{where}.{k}") for k, v in body.items()}
    if body and not out.get("topic"):
        problems.add(f"{where}.topic", "missing; name the topic to read")
    start = out.get("starting_offsets", "earliest")
    if start not in ("earliest", "latest"):
        problems.add(f"{where}.starting_offsets", f"{start!r} is not earliest or latest")
    return out


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _parse_silver(raw: Any, where: str, problems: Problems) -> SilverSpec:
    body = problems.mapping(raw, where, _SILVER_KEYS)
    rules: list[Rule] = []
    raw_rules = body.get("rules") or []
    if not isinstance(raw_rules, list):
        problems.add(f"{where}.rules", f"expected a list of rules, got {raw_rules!r}")
        raw_rules = []
    names: set[str] = set()
    for i, item in enumerate(raw_rules):
        at = f"{where}.rules[{i}]"
        rule = problems.mapping(item, at, _RULE_KEYS)
        name = problems.text(rule.get("name"), f"{at}.name")
        expr = problems.text(rule.get("expr"), f"{at}.expr")
        action = problems.text(rule.get("on_fail", "quarantine"), f"{at}.on_fail")
        if not name or not expr:
            problems.add(at, "a rule needs a name and an expr (a SQL boolean)")
            continue
        if name in names:
            problems.add(f"{at}.name", f"rule {name!r} is declared twice")
        names.add(name)
        if action not in ACTIONS:
            problems.add(f"{at}.on_fail", f"{action!r} is not one of {', '.join(ACTIONS)}")
        rules.append(Rule(name, expr, action))
    return SilverSpec(keys=problems.texts(body.get("keys"), f"{where}.keys"),
                      select=problems.texts(body.get("select"), f"{where}.select"),
                      rules=tuple(rules))


def _parse_roles(kind: str, raw: Any, where: str,
                 problems: Problems) -> dict[str, str | tuple[str, ...]]:
    required, optional = ROLES.get(kind, ((), ()))
    if not kind:
        if raw:
            problems.add(where, "roles need a kind")
        return {}
    body = problems.mapping(raw, where, (*required, *optional))
    roles: dict[str, str | tuple[str, ...]] = {}
    for role, value in body.items():
        if role in LIST_ROLES:
            roles[role] = problems.texts(value, f"{where}.{role}")
        else:
            roles[role] = problems.text(value, f"{where}.{role}")
    for role in required:
        if not roles.get(role):
            problems.add(f"{where}.{role}", f"missing; a {kind} data set needs the roles "
                                            f"{', '.join(required)}")
    return roles


def _check_shared_tables(entries: Mapping[str, Dataset], problems: Problems) -> None:
    first: dict[str, Dataset] = {}
    for entry in entries.values():
        other = first.setdefault(entry.table_name, entry)
        if other is entry:
            continue
        for what, mine, theirs in (
                ("source.schema", entry.source.schema, other.source.schema),
                ("silver.keys", entry.silver.keys, other.silver.keys),
                ("silver.select", entry.silver.select, other.silver.select)):
            if mine != theirs:
                problems.add(f"datasets.{entry.name}.{what}",
                             f"shares table {entry.table_name!r} with {other.name!r} but "
                             f"declares a different {what}")


def _check_feature_set_names(entries: Mapping[str, Dataset], problems: Problems) -> None:
    """A named feature set's name is a plain name that no data set or other set has."""
    declared_by: dict[str, str] = {}
    for entry in entries.values():
        for name in entry.feature_sets():
            if name == entry.name:      # the unnamed form: the data set's own name
                continue
            where = entry.features_key(name)
            if not name.replace("_", "a").isalnum() or name != name.lower():
                problems.add(where, "a feature set name is lower case letters, digits and _")
            elif name in entries:
                problems.add(where, f"feature set {name!r} has the name of a data set")
            elif name in declared_by:
                problems.add(where, f"feature set {name!r} is also declared by data set "
                                    f"{declared_by[name]!r}")
            declared_by[name] = entry.name
