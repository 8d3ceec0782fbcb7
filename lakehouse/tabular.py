"""Declared tabular feature sets: parsed from the catalog, fitted on the training split.

A tabular data set's catalog entry says in ``features:`` how its silver rows become a
training table; nothing about it is coded per data set::

    orders:
      kind: tabular
      roles: {id: order_id}
      features:
        label: "status = 'RETURNED'"        # a column or a SQL expression
        task: classification                # or regression
        where: "status IS NOT NULL"         # rows that can be learnt from (optional)
        numeric:                            # columns, or {name, expr} for derived ones
          - amount                          # array columns count element by element
          - {name: hour, expr: "hour(placed_at)", impute: median}
        impute: mean                        # missing numbers: mean, median or zero
        categorical:                        # strings made into numbers
          - status_code                     # one-hot (the default) ...
          - {name: shop, encode: index, max_categories: 100, min_count: 5}
        split: {by: hash}                   # hash of the id (default), or
                                            # {by: column, column: split}, or
                                            # {by: time, column: placed_at,
                                            #  val_from: "2024-06-01", test_from: "2024-07-01"}
        class_names: [kept, returned]       # optional, for plots

What is learnt from data (each number's fill-in value, each category column's
vocabulary, the class labels of a string label, the width of array columns) is fitted
on the training split only and kept as a :class:`TabularTransform`. The transform is
written with the gold table (the commit's ``userMetadata``), copied into every model
trained on it, and applied again when a model scores raw rows, so training and
scoring compute the same features. A category not seen in training is all zeros in
its one-hot columns but one in its column's ``other`` slot (index 0 when encoded as
an index); a missing number takes the fitted fill-in value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BooleanType, IntegralType, StringType

from lakehouse.datasets import Dataset
from lakehouse.errors import ConfigError, SchemaMismatchError

TASKS = ("classification", "regression")
IMPUTE = ("mean", "median", "zero")
ENCODINGS = ("onehot", "index")
SPLITS = ("hash", "column", "time")
SPLIT_NAMES = ("train", "val", "test")
OTHER = "__other__"
_KEYS = ("label", "task", "where", "numeric", "impute", "categorical", "split", "class_names")
_NUMERIC_KEYS = ("name", "expr", "impute")
_CATEGORICAL_KEYS = ("name", "expr", "encode", "max_categories", "min_count")
_SPLIT_KEYS = ("by", "key", "column", "val_pct", "test_pct", "val_from", "test_from")


@dataclass(frozen=True)
class NumericFeature:
    """A number (or an array of numbers) from a column or a SQL expression."""

    name: str
    expr: str
    impute: str = "mean"


@dataclass(frozen=True)
class CategoricalFeature:
    """A column or SQL expression whose values are categories."""

    name: str
    expr: str
    encode: str = "onehot"
    max_categories: int = 50
    min_count: int = 1


@dataclass(frozen=True)
class Split:
    """How rows are assigned to train / val / test."""

    by: str = "hash"
    key: str = ""
    column: str = ""
    val_pct: int = 15
    test_pct: int = 15
    val_from: str = ""
    test_from: str = ""


@dataclass(frozen=True)
class TabularSpec:
    """A tabular feature set as declared (nothing fitted yet)."""

    dataset: str
    id: str
    label: str
    task: str = "classification"
    where: str = ""
    numeric: tuple[NumericFeature, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()
    split: Split = field(default_factory=Split)
    class_names: tuple[str, ...] = ()

    def digest(self) -> str:
        """A short hash of the declaration: a changed declaration is a new feature set."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TabularTransform:
    """A tabular feature set fitted on its training split.

    Attributes:
        spec: the declaration.
        widths: how many numbers each numeric feature gives (1, or an array's length).
        fill: the fill-in value of every number, in feature order.
        vocabularies: each categorical feature's categories, most frequent first.
        classes: the class labels of a string label, in class-index order (empty when
            the label is already a class index or the task is regression).
    """

    spec: TabularSpec
    widths: tuple[int, ...]
    fill: tuple[float, ...]
    vocabularies: tuple[tuple[str, ...], ...]
    classes: tuple[str, ...] = ()

    @property
    def feature_names(self) -> list[str]:
        """One name per number of the ``features`` vector."""
        names = []
        for feature, width in zip(self.spec.numeric, self.widths, strict=True):
            names += [feature.name] if width == 1 else [f"{feature.name}[{i}]"
                                                       for i in range(width)]
        for feature, vocabulary in zip(self.spec.categorical, self.vocabularies, strict=True):
            if feature.encode == "index":
                names.append(feature.name)
            else:
                names += [f"{feature.name}={v}" for v in (*vocabulary, OTHER)]
        return names

    @property
    def n_classes(self) -> int:
        """Classes of a classification (0 for a regression, or when not known from here)."""
        if self.spec.task == "regression":
            return 0
        return len(self.classes) or len(self.spec.class_names)

    def to_json(self) -> str:
        """The transform as JSON (stored with the gold table and with models)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TabularTransform:
        """Read a transform written by :meth:`to_json`."""
        raw = json.loads(text)
        spec = raw["spec"]
        spec = TabularSpec(
            **{**spec, "numeric": tuple(NumericFeature(**n) for n in spec["numeric"]),
               "categorical": tuple(CategoricalFeature(**c) for c in spec["categorical"]),
               "split": Split(**spec["split"]), "class_names": tuple(spec["class_names"])})
        return cls(spec=spec, widths=tuple(raw["widths"]), fill=tuple(raw["fill"]),
                   vocabularies=tuple(tuple(v) for v in raw["vocabularies"]),
                   classes=tuple(raw["classes"]))

    def features(self, df: DataFrame) -> Column:
        """The ``features`` column (ARRAY<FLOAT>) of rows shaped like the silver table."""
        numbers = []
        values = iter(self.fill)
        for feature, width in zip(self.spec.numeric, self.widths, strict=True):
            for raw in _numbers(df, feature, width):
                numbers.append(F.coalesce(raw, F.lit(next(values))))
        for feature, vocabulary in zip(self.spec.categorical, self.vocabularies, strict=True):
            numbers += _encoded(_category(feature), feature.encode, vocabulary)
        return F.array(*[n.cast("float") for n in numbers]).alias("features")

    def label(self) -> Column:
        """The ``label`` column: a class index (INT) or a target value (FLOAT)."""
        label = F.expr(self.spec.label)
        if self.spec.task == "regression":
            return label.cast("float").alias("label")
        if self.classes:
            index = F.coalesce(*[F.when(label.cast("string") == c, F.lit(i))
                                 for i, c in enumerate(self.classes)], F.lit(None))
            return index.cast("int").alias("label")
        return label.cast("int").alias("label")


def is_declared(entry: Dataset | None) -> bool:
    """Whether a catalog entry declares a tabular feature set (``kind: tabular`` + a label)."""
    return entry is not None and entry.kind == "tabular" and "label" in entry.features


def parse_tabular(entry: Dataset) -> TabularSpec:
    """The tabular feature set a catalog entry declares.

    Raises:
        ConfigError: every problem of the ``features`` block, each naming the data set,
            the key and the value.
    """
    where = f"datasets.{entry.name}.features"
    raw = entry.features
    problems: list[str] = []
    for key in raw:
        if key not in _KEYS:
            problems.append(f"{where}.{key}: unknown key; known keys here: {', '.join(_KEYS)}")
    label = raw.get("label")
    if not isinstance(label, str) or not label.strip():
        problems.append(f"{where}.label: expected a column or SQL expression, got {label!r}")
    task = raw.get("task", "classification")
    if task not in TASKS:
        problems.append(f"{where}.task: {task!r} is not one of {', '.join(TASKS)}")
    default_impute = raw.get("impute", "mean")
    if default_impute not in IMPUTE:
        problems.append(f"{where}.impute: {default_impute!r} is not one of {', '.join(IMPUTE)}")
        default_impute = "mean"
    numeric = tuple(
        NumericFeature(**_item(item, f"{where}.numeric[{i}]", _NUMERIC_KEYS, problems,
                               {"impute": default_impute}))
        for i, item in enumerate(_list(raw.get("numeric"), f"{where}.numeric", problems)))
    categorical = tuple(
        CategoricalFeature(**_item(item, f"{where}.categorical[{i}]", _CATEGORICAL_KEYS,
                                   problems, {}))
        for i, item in enumerate(_list(raw.get("categorical"), f"{where}.categorical",
                                       problems)))
    for i, f in enumerate(numeric):
        if f.impute not in IMPUTE:
            problems.append(f"{where}.numeric[{i}].impute: {f.impute!r} is not one of "
                            f"{', '.join(IMPUTE)}")
    for i, f in enumerate(categorical):
        if f.encode not in ENCODINGS:
            problems.append(f"{where}.categorical[{i}].encode: {f.encode!r} is not one of "
                            f"{', '.join(ENCODINGS)}")
        for key in ("max_categories", "min_count"):
            value = getattr(f, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{where}.categorical[{i}].{key}: expected a whole number "
                                f">= 1, got {value!r}")
    names = [f.name for f in (*numeric, *categorical)]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{where}: feature {name!r} is declared twice")
    if not names:
        problems.append(f"{where}: declare at least one numeric or categorical feature")
    split = _split(raw.get("split"), f"{where}.split", problems)
    class_names = raw.get("class_names") or ()
    if not isinstance(class_names, list | tuple):
        problems.append(f"{where}.class_names: expected a list, got {class_names!r}")
        class_names = ()
    entity = entry.roles.get("id")
    if not isinstance(entity, str) or not entity:
        problems.append(f"datasets.{entry.name}.roles.id: a tabular feature set needs an id "
                        "column (it keys the predictions)")
        entity = ""
    if problems:
        raise ConfigError("tabular features of data set "
                          f"{entry.name!r}:\n  " + "\n  ".join(problems))
    if split.by == "hash" and not split.key:
        split = replace(split, key=entity)
    return TabularSpec(dataset=entry.name, id=entity, label=label, task=task,
                       where=str(raw.get("where") or ""), numeric=numeric,
                       categorical=categorical, split=split,
                       class_names=tuple(str(c) for c in class_names))


def _list(value: Any, where: str, problems: list[str]) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{where}: expected a list, got {value!r}")
        return []
    return value


def _item(item: Any, where: str, known: tuple[str, ...], problems: list[str],
          defaults: dict[str, Any]) -> dict[str, Any]:
    """A feature given as a column name or as a mapping with a ``name``."""
    if isinstance(item, str):
        return {**defaults, "name": item, "expr": f"`{item}`"}
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        problems.append(f"{where}: expected a column name or a mapping with a name, got {item!r}")
        return {**defaults, "name": f"?{where}", "expr": "NULL"}
    for key in item:
        if key not in known:
            problems.append(f"{where}.{key}: unknown key; known keys here: {', '.join(known)}")
    body = {k: v for k, v in item.items() if k in known}
    return {**defaults, **body, "expr": str(body.get("expr") or f"`{body['name']}`")}


def _split(raw: Any, where: str, problems: list[str]) -> Split:
    if raw is None:
        return Split()
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping, got {raw!r}")
        return Split()
    for key in raw:
        if key not in _SPLIT_KEYS:
            problems.append(f"{where}.{key}: unknown key; known keys here: "
                            f"{', '.join(_SPLIT_KEYS)}")
    split = Split(**{k: v for k, v in raw.items() if k in _SPLIT_KEYS})
    if split.by not in SPLITS:
        problems.append(f"{where}.by: {split.by!r} is not one of {', '.join(SPLITS)}")
    if split.by in ("column", "time") and not split.column:
        problems.append(f"{where}.column: a split by {split.by} needs a column")
    if split.by == "time" and not (split.val_from and split.test_from):
        problems.append(f"{where}: a split by time needs val_from and test_from")
    for key in ("val_pct", "test_pct"):
        value = getattr(split, key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 100:
            problems.append(f"{where}.{key}: expected a whole percentage, got {value!r}")
    if split.by == "hash" and isinstance(split.val_pct, int) and isinstance(split.test_pct, int) \
            and split.val_pct + split.test_pct >= 100:
        problems.append(f"{where}: val_pct + test_pct leaves no training rows")
    return split


def split_column(split: Split) -> Column:
    """``train`` / ``val`` / ``test`` per row as the declaration says."""
    if split.by == "column":
        value = F.lower(F.col(split.column).cast("string"))
        return F.when(value.isin(*SPLIT_NAMES), value)
    if split.by == "time":
        at = F.col(split.column).cast("timestamp")
        return (F.when(at < F.lit(split.val_from).cast("timestamp"), "train")
                .when(at < F.lit(split.test_from).cast("timestamp"), "val")
                .when(at.isNotNull(), "test"))
    bucket = F.pmod(F.xxhash64(F.col(split.key), F.lit("lakeforge-split")), F.lit(100))
    return (F.when(bucket < split.test_pct, "test")
            .when(bucket < split.test_pct + split.val_pct, "val").otherwise("train"))


def row_id(df: DataFrame, column: str) -> Column:
    """The prediction key: the id itself when it is a whole number, else its 64-bit hash."""
    if column not in df.columns:
        raise SchemaMismatchError(f"id column {column!r} is not among {', '.join(df.columns)}")
    if isinstance(df.schema[column].dataType, IntegralType):
        return F.col(column).cast("long").alias("row_id")
    return F.xxhash64(F.col(column)).alias("row_id")


def _numbers(df: DataFrame, feature: NumericFeature, width: int) -> list[Column]:
    """The feature's numbers, NULL where missing (NaN counts as missing)."""
    value = F.expr(feature.expr)
    if width == 1 and not _is_array(df, feature):
        parts = [value.cast("double")]
    else:
        parts = [F.try_element_at(value, F.lit(i + 1)).cast("double") for i in range(width)]
    return [F.when(~F.isnan(p), p) for p in parts]


def _is_array(df: DataFrame, feature: NumericFeature) -> bool:
    return isinstance(df.select(F.expr(feature.expr)).schema[0].dataType, ArrayType)


def _category(feature: CategoricalFeature) -> Column:
    return F.expr(feature.expr).cast("string")


def _encoded(value: Column, encode: str, vocabulary: Sequence[str]) -> list[Column]:
    known = value.isin(*vocabulary) if vocabulary else F.lit(False)
    if encode == "index":
        return [F.coalesce(*[F.when(value == v, F.lit(i + 1)) for i, v in enumerate(vocabulary)],
                           F.lit(0)).cast("double")]
    onehot = [F.when(value == v, 1.0).otherwise(0.0) for v in vocabulary]
    return [*onehot, F.when(known, 0.0).otherwise(1.0)]


def prepare(df: DataFrame, spec: TabularSpec) -> DataFrame:
    """Silver rows with ``row_id`` and ``split``, filtered by ``where`` (nothing fitted yet)."""
    if spec.where:
        df = df.filter(F.expr(spec.where))
    return df.select("*", row_id(df, spec.id).alias("_row_id"),
                     split_column(spec.split).alias("_split"))


def fit(prepared: DataFrame, spec: TabularSpec) -> TabularTransform:
    """Fit fill-in values, vocabularies and string labels on the training split only.

    Args:
        prepared: rows from :func:`prepare`.
        spec: the declaration.

    Returns:
        The fitted transform.

    Raises:
        SchemaMismatchError: there are no training rows, or the label has a type that
            is neither a class nor a number.
    """
    train = prepared.filter(F.col("_split") == "train")
    widths = []
    sizes = [F.max(F.size(F.expr(f.expr))).alias(f.name) for f in spec.numeric
             if _is_array(prepared, f)]
    top = train.agg(*sizes, F.count(F.lit(1)).alias("_n")).first() if sizes else \
        train.agg(F.count(F.lit(1)).alias("_n")).first()
    if not top or not top["_n"]:
        raise SchemaMismatchError(f"data set {spec.dataset}: no rows in the training split "
                                  "(check features.where and features.split)")
    for f in spec.numeric:
        widths.append(int(top[f.name] or 0) if _is_array(prepared, f) else 1)
    stats = []
    for f, width in zip(spec.numeric, widths, strict=True):
        for i, n in enumerate(_numbers(prepared, f, width)):
            stat = (F.percentile_approx(n, 0.5) if f.impute == "median" else F.avg(n))
            stats.append((F.lit(0.0) if f.impute == "zero" else stat).alias(f"s{len(stats)}_{i}"))
    row = train.agg(*stats).first() if stats else None
    fill = tuple(float(v) if v is not None else 0.0 for v in (row or ()))
    vocabularies = []
    for f in spec.categorical:
        value = _category(f)
        counts = (train.select(value.alias("v")).filter(F.col("v").isNotNull())
                  .groupBy("v").count().filter(F.col("count") >= f.min_count)
                  .orderBy(F.desc("count"), "v").limit(f.max_categories).collect())
        vocabularies.append(tuple(r["v"] for r in counts))
    classes: tuple[str, ...] = ()
    label_type = prepared.select(F.expr(spec.label)).schema[0].dataType
    if spec.task == "classification" and isinstance(label_type, StringType):
        labels = train.select(F.expr(spec.label).alias("y")).filter(F.col("y").isNotNull())
        classes = tuple(sorted(r["y"] for r in labels.distinct().collect()))
    elif spec.task == "classification" and not isinstance(label_type,
                                                          IntegralType | BooleanType):
        raise SchemaMismatchError(
            f"data set {spec.dataset}: label {spec.label!r} is {label_type.simpleString()}; a "
            "classification label is a string, a boolean or a class index (or set "
            "features.task: regression)")
    return TabularTransform(spec, tuple(widths), fill, tuple(vocabularies), classes)


def apply(prepared: DataFrame, transform: TabularTransform) -> DataFrame:
    """Gold rows (``row_id``, ``split``, ``features``, ``label``) from prepared rows."""
    return prepared.select(F.col("_row_id").alias("row_id"), F.col("_split").alias("split"),
                           transform.features(prepared), transform.label())


def features_for_scoring(df: DataFrame, transform: TabularTransform) -> DataFrame:
    """``row_id`` and ``features`` of raw rows (a silver-shaped table) for a stored model."""
    return df.select(row_id(df, transform.spec.id), transform.features(df))
