"""Declared feature sets of tabular and image data sets, fitted on the training split.

A tabular or image data set's catalog entry says in ``features:`` how its silver rows
become a training table; nothing about it is coded per data set. Tabular::

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

Images (a column of bytes; every image becomes height x width x channels numbers in
[0, 1], decoded on the executors)::

    scans:
      kind: image
      roles: {id: scan_id, image: png}
      features:
        label: finding
        image: {column: png, encoding: encoded, height: 32, width: 32, channels: 3}
        # encoding: raw (uint8 bytes, row-major height x width x channels, exactly that
        # many) or encoded (PNG, JPEG, ... read with Pillow, converted to the channels
        # and resized to height x width); an image that cannot be read is left out
        split: {by: column, column: part, val_pct: 10}   # 10 % of train rows to val

Both kinds may give ``id:`` as SQL when the id role is not unique on its own (the
default is the ``id`` role); predictions are keyed by it.

What is learnt from data (each number's fill-in value, each category column's
vocabulary, the class labels of a string label, the width of array columns) is fitted
on the training split only and kept as a :class:`FeatureTransform`. The transform is
written with the gold table (the commit's ``userMetadata``), copied into every model
trained on it, and applied again when a model scores raw rows, so training and
scoring compute the same features. A category not seen in training is all zeros in
its one-hot columns but one in its column's ``other`` slot (index 0 when encoded as
an index); a missing number takes the fitted fill-in value.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    FloatType,
    IntegerType,
    IntegralType,
    StringType,
)

from lakehouse.config import Config
from lakehouse.datasets import Dataset
from lakehouse.errors import ConfigError, SchemaMismatchError
from lakehouse.featuresets import LABELLED, kind
from lakehouse.featuresets.contract import (
    ROW_FIELDS,
    FeatureSet,
    Kind,
    build_once,
    built_meta,
    first_line,
    silver_rows,
)
from lakehouse.problems import Problems
from lakehouse.session import local_session
from lakehouse.tables import TRAINING_TABLE_PROPERTIES, TableSpec, _f, register

TASKS = ("classification", "regression")
IMPUTE = ("mean", "median", "zero")
ENCODINGS = ("onehot", "index")
SPLITS = ("hash", "column", "time")
SPLIT_NAMES = ("train", "val", "test")
OTHER = "__other__"
_KEYS = ("label", "task", "where", "numeric", "impute", "categorical", "split", "class_names",
         "id")
_IMAGE_KEYS = ("label", "task", "where", "image", "split", "class_names", "id")
_IMAGE_INPUT_KEYS = ("column", "encoding", "height", "width", "channels")
IMAGE_ENCODINGS = ("raw", "encoded")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
log = logging.getLogger(__name__)
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
class ImageInput:
    """A column of images and the shape every image is given."""

    column: str
    encoding: str = "raw"
    height: int = 0
    width: int = 0
    channels: int = 1

    @property
    def shape(self) -> list[int]:
        """``[height, width, channels]``."""
        return [self.height, self.width, self.channels]


@dataclass(frozen=True)
class Split:
    """How rows are assigned to train / val / test.

    ``hash``: by a hash of ``key`` (the id), ``val_pct`` and ``test_pct`` percent (15
    each by default). ``column``: a column holding train / val / test, with ``val_pct``
    percent (default 0) of its train rows moved to val by the same hash. ``time``:
    before ``val_from`` train, before ``test_from`` val, then test.
    """

    by: str = "hash"
    key: str = ""
    column: str = ""
    val_pct: int = 15
    test_pct: int = 15
    val_from: str = ""
    test_from: str = ""


@dataclass(frozen=True)
class FeatureSpec:
    """A feature set as declared (nothing fitted yet): tabular columns, or an image column."""

    dataset: str
    id: str
    label: str
    task: str = "classification"
    where: str = ""
    numeric: tuple[NumericFeature, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()
    split: Split = field(default_factory=Split)
    class_names: tuple[str, ...] = ()
    image: ImageInput | None = None

    def digest(self) -> str:
        """A short hash of the declaration: a changed declaration is a new feature set."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FeatureTransform:
    """A declared feature set fitted on its training split.

    Attributes:
        spec: the declaration.
        widths: how many numbers each numeric feature gives (1, or an array's length);
            for images, one width: height x width x channels.
        fill: the fill-in value of every number, in feature order.
        vocabularies: each categorical feature's categories, most frequent first.
        classes: the class labels of a string label, in class-index order (empty when
            the label is already a class index or the task is regression).
        input_types: each silver column and its Spark type (``(name, "int")``), so
            rows outside Spark are typed as Spark typed them for the feature SQL.
    """

    spec: FeatureSpec
    widths: tuple[int, ...]
    fill: tuple[float, ...]
    vocabularies: tuple[tuple[str, ...], ...]
    classes: tuple[str, ...] = ()
    input_types: tuple[tuple[str, str], ...] = ()

    @property
    def feature_names(self) -> list[str]:
        """One name per number of the ``features`` vector."""
        if self.spec.image is not None:
            return [f"p{i}" for i in range(self.widths[0])]
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

    @property
    def class_names(self) -> tuple[str, ...]:
        """The name of each class index (empty for a regression or when not declared)."""
        if self.spec.task == "regression":
            return ()
        return self.classes or tuple(self.spec.class_names)

    def to_json(self) -> str:
        """The transform as JSON (stored with the gold table and with models)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureTransform:
        """Read a transform written by :meth:`to_json`."""
        raw = json.loads(text)
        spec = raw["spec"]
        spec = FeatureSpec(
            **{**spec, "numeric": tuple(NumericFeature(**n) for n in spec["numeric"]),
               "categorical": tuple(CategoricalFeature(**c) for c in spec["categorical"]),
               "split": Split(**spec["split"]), "class_names": tuple(spec["class_names"]),
               "image": ImageInput(**spec["image"]) if spec.get("image") else None})
        return cls(spec=spec, widths=tuple(raw["widths"]), fill=tuple(raw["fill"]),
                   vocabularies=tuple(tuple(v) for v in raw["vocabularies"]),
                   classes=tuple(raw["classes"]),
                   input_types=tuple(tuple(t) for t in raw.get("input_types", ())))

    def features(self, df: DataFrame) -> Column:
        """The ``features`` column (ARRAY<FLOAT>) of rows shaped like the silver table.

        NULL for an image that cannot be decoded to the declared shape.
        """
        image = self.spec.image
        if image is not None:
            decode = _decoder(image.encoding, image.height, image.width, image.channels)
            return decode(F.col(image.column)).alias("features")
        numbers = []
        values = iter(self.fill)
        for feature, width in zip(self.spec.numeric, self.widths, strict=True):
            for raw in _numbers(df, feature, width):
                numbers.append(F.coalesce(raw, F.lit(next(values))))
        for feature, vocabulary in zip(self.spec.categorical, self.vocabularies, strict=True):
            numbers += _encoded(_category(feature), feature.encode, vocabulary)
        return F.array(*[n.cast("float") for n in numbers]).alias("features")

    def features_of(self, rows: pd.DataFrame) -> np.ndarray:
        """The ``features`` matrix of rows shaped like the silver table, without Spark.

        The same numbers as :meth:`features` gives: a declared feature reads the column
        its ``expr`` names, or a column named by the feature's name holding its value;
        a feature declared as SQL over the row's columns is otherwise evaluated by Spark
        (the active session, or a bare local one started once: Spark's SQL is the
        only engine that computes it as training did). Missing numbers take the
        fitted fill-in; a category outside the vocabulary is the "other" one. An image
        that cannot be decoded gives a row of NaN.

        Raises:
            SchemaMismatchError: a feature's column is missing (the columns it may have
                are named).
        """
        n = len(rows)
        computed = {f.name: f.expr for f in (*self.spec.numeric, *self.spec.categorical)
                    if f.expr.strip("`") not in rows.columns and f.name not in rows.columns}
        if computed and n and self.spec.image is None:
            rows = rows.assign(**sql_values(rows, computed, dict(self.input_types)))
        image = self.spec.image
        if image is not None:
            decoded = [decode_image(b, image.encoding, image.height, image.width,
                                    image.channels) for b in _column(rows, image.column, "")]
            return np.stack([d if d is not None else np.full(self.widths[0], np.nan, np.float32)
                             for d in decoded]) if n else np.zeros((0, self.widths[0]), np.float32)
        parts: list[np.ndarray] = []
        values = iter(self.fill)
        for feature, width in zip(self.spec.numeric, self.widths, strict=True):
            column = _column(rows, feature.expr, feature.name)
            matrix = np.full((n, width), np.nan)
            for i, value in enumerate(column):
                cells = np.ravel(np.asarray(value, dtype=object))[:width] \
                    if value is not None else []
                matrix[i, :len(cells)] = [_number(c) for c in cells]
            for j in range(width):
                fill = next(values)
                matrix[np.isnan(matrix[:, j]), j] = fill
            parts.append(matrix)
        for feature, vocabulary in zip(self.spec.categorical, self.vocabularies, strict=True):
            text = [_spark_string(v) for v in _column(rows, feature.expr, feature.name)]
            if feature.encode == "index":
                index = {v: i + 1 for i, v in enumerate(vocabulary)}
                parts.append(np.array([[index.get(t, 0)] for t in text], dtype=float))
            else:
                onehot = np.array([[float(t == v) for v in vocabulary] for t in text],
                                  dtype=float).reshape(n, len(vocabulary))
                other = 1.0 - onehot.sum(axis=1, keepdims=True)
                parts.append(np.hstack([onehot, other]))
        return np.hstack(parts).astype(np.float32) if parts else np.zeros((n, 0), np.float32)

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


def parse_features(entry: Dataset, where: str = "",
                   problems: Problems | None = None) -> FeatureSpec | None:
    """The feature set a tabular or image catalog entry declares.

    Args:
        entry: the entry, its ``features`` holding one set's declaration
            (:meth:`lakehouse.datasets.Dataset.feature_sets`).
        where: the declaration's key for messages (default ``datasets.<entry>.features``).
        problems: where to add the declaration's problems (then None is returned when
            it has any); without it they are raised.

    Raises:
        ConfigError: every problem of the ``features`` block, each naming the data set,
            the key and the value (only without ``problems``).
    """
    where = where or f"datasets.{entry.name}.features"
    raw = entry.features
    image_kind = entry.kind == "image"
    known = _IMAGE_KEYS if image_kind else _KEYS
    found = Problems()
    spec = _parse(entry, raw, where, image_kind, known, found)
    if problems is None:
        found.raise_if_any(ConfigError, f"{entry.kind} features of data set {entry.name!r}")
    else:
        problems.extend(found)
    return None if found else spec


def _parse(entry: Dataset, raw: Mapping[str, Any], where: str, image_kind: bool,
           known: tuple[str, ...], problems: Problems) -> FeatureSpec:
    for key in raw:
        if key not in known:
            problems.add(f"{where}.{key}", f"unknown key; known keys here: {', '.join(known)}")
    label = raw.get("label")
    if not isinstance(label, str) or not label.strip():
        problems.add(f"{where}.label", f"expected a column or SQL expression, got {label!r}")
    task = raw.get("task", "classification")
    if task not in (("classification",) if image_kind else TASKS):
        problems.add(f"{where}.task", f"{task!r} is not one of "
                        f"{'classification' if image_kind else ', '.join(TASKS)}")
    numeric: tuple[NumericFeature, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()
    image = None
    if image_kind:
        image = _image(raw.get("image"), f"{where}.image", entry, problems)
    else:
        numeric, categorical = _columns(raw, where, problems)
    split = _split(raw.get("split"), f"{where}.split", problems)
    class_names = raw.get("class_names") or ()
    if not isinstance(class_names, list | tuple):
        problems.add(f"{where}.class_names", f"expected a list, got {class_names!r}")
        class_names = ()
    entity = raw.get("id") or entry.roles.get("id")
    if not isinstance(entity, str) or not entity:
        problems.add(f"datasets.{entry.name}.roles.id", "a feature set needs an id column "
                        "(or features.id as SQL); it keys the predictions")
        entity = ""
    if not split.key:
        split = replace(split, key=entity)
    return FeatureSpec(dataset=entry.name, id=entity, label=label, task=task,
                       where=str(raw.get("where") or ""), numeric=numeric,
                       categorical=categorical, split=split,
                       class_names=tuple(str(c) for c in class_names), image=image)


def _columns(raw: Mapping[str, Any], where: str, problems: Problems
             ) -> tuple[tuple[NumericFeature, ...], tuple[CategoricalFeature, ...]]:
    default_impute = raw.get("impute", "mean")
    if default_impute not in IMPUTE:
        problems.add(f"{where}.impute", f"{default_impute!r} is not one of {', '.join(IMPUTE)}")
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
            problems.add(f"{where}.numeric[{i}].impute", f"{f.impute!r} is not one of "
                            f"{', '.join(IMPUTE)}")
    for i, f in enumerate(categorical):
        if f.encode not in ENCODINGS:
            problems.add(f"{where}.categorical[{i}].encode", f"{f.encode!r} is not one of "
                            f"{', '.join(ENCODINGS)}")
        for key in ("max_categories", "min_count"):
            value = getattr(f, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.add(f"{where}.categorical[{i}].{key}", f"expected a whole number "
                                f">= 1, got {value!r}")
    names = [f.name for f in (*numeric, *categorical)]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.add(f"{where}", f"feature {name!r} is declared twice")
    if not names:
        problems.add(f"{where}", "declare at least one numeric or categorical feature")
    return numeric, categorical


def _image(raw: Any, where: str, entry: Dataset, problems: Problems) -> ImageInput | None:
    if not isinstance(raw, Mapping):
        problems.add(f"{where}", f"expected a mapping with height, width and channels, "
                        f"got {raw!r}")
        return None
    for key in raw:
        if key not in _IMAGE_INPUT_KEYS:
            problems.add(f"{where}.{key}", f"unknown key; known keys here: "
                            f"{', '.join(_IMAGE_INPUT_KEYS)}")
    column = raw.get("column") or entry.roles.get("image")
    if not isinstance(column, str) or not column:
        problems.add(f"{where}.column", "missing; name the column of images (or the image "
                        "role)")
    encoding = raw.get("encoding", "raw")
    if encoding not in IMAGE_ENCODINGS:
        problems.add(f"{where}.encoding", f"{encoding!r} is not one of "
                        f"{', '.join(IMAGE_ENCODINGS)}")
    for key in ("height", "width"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.add(f"{where}.{key}", f"expected a whole number of pixels, got {value!r}")
    channels = raw.get("channels", 1)
    if channels not in _MODES:
        problems.add(f"{where}.channels", f"{channels!r} is not one of 1, 3, 4")
    return ImageInput(column=str(column or ""), encoding=str(encoding),
                      height=raw.get("height") or 0, width=raw.get("width") or 0,
                      channels=channels)


def _list(value: Any, where: str, problems: Problems) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(f"{where}", f"expected a list, got {value!r}")
        return []
    return value


def _item(item: Any, where: str, known: tuple[str, ...], problems: Problems,
          defaults: dict[str, Any]) -> dict[str, Any]:
    """A feature given as a column name or as a mapping with a ``name``."""
    if isinstance(item, str):
        return {**defaults, "name": item, "expr": f"`{item}`"}
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        problems.add(f"{where}", f"expected a column name or a mapping with a name, got {item!r}")
        return {**defaults, "name": f"?{where}", "expr": "NULL"}
    for key in item:
        if key not in known:
            problems.add(f"{where}.{key}", f"unknown key; known keys here: {', '.join(known)}")
    body = {k: v for k, v in item.items() if k in known}
    return {**defaults, **body, "expr": str(body.get("expr") or f"`{body['name']}`")}


def _split(raw: Any, where: str, problems: Problems) -> Split:
    if raw is None:
        return Split()
    if not isinstance(raw, Mapping):
        problems.add(f"{where}", f"expected a mapping, got {raw!r}")
        return Split()
    for key in raw:
        if key not in _SPLIT_KEYS:
            problems.add(f"{where}.{key}", f"unknown key; known keys here: "
                            f"{', '.join(_SPLIT_KEYS)}")
    given = {k: v for k, v in raw.items() if k in _SPLIT_KEYS}
    if given.get("by") == "column":
        given.setdefault("val_pct", 0)     # the column says; move none of its train rows
        given["test_pct"] = 0
    split = Split(**given)
    if split.by not in SPLITS:
        problems.add(f"{where}.by", f"{split.by!r} is not one of {', '.join(SPLITS)}")
    if split.by in ("column", "time") and not split.column:
        problems.add(f"{where}.column", f"a split by {split.by} needs a column")
    if split.by == "time" and not (split.val_from and split.test_from):
        problems.add(f"{where}", "a split by time needs val_from and test_from")
    for key in ("val_pct", "test_pct"):
        value = getattr(split, key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 100:
            problems.add(f"{where}.{key}", f"expected a whole percentage, got {value!r}")
    if split.by == "hash" and isinstance(split.val_pct, int) and isinstance(split.test_pct, int) \
            and split.val_pct + split.test_pct >= 100:
        problems.add(f"{where}", "val_pct + test_pct leaves no training rows")
    return split


def split_column(split: Split) -> Column:
    """``train`` / ``val`` / ``test`` per row as the declaration says."""
    bucket = F.pmod(F.xxhash64(F.expr(split.key), F.lit("lakeforge-split")), F.lit(100))
    if split.by == "column":
        value = F.lower(F.col(split.column).cast("string"))
        moved = F.when((value == "train") & (bucket < split.val_pct), "val").otherwise(value)
        return F.when(value.isin(*SPLIT_NAMES), moved)
    if split.by == "time":
        at = F.col(split.column).cast("timestamp")
        return (F.when(at < F.lit(split.val_from).cast("timestamp"), "train")
                .when(at < F.lit(split.test_from).cast("timestamp"), "val")
                .when(at.isNotNull(), "test"))
    return (F.when(bucket < split.test_pct, "test")
            .when(bucket < split.test_pct + split.val_pct, "val").otherwise("train"))


def row_id(df: DataFrame, id_sql: str) -> Column:
    """The prediction key: the id itself when it is a whole number, else its 64-bit hash.

    Args:
        df: the rows.
        id_sql: the id column, or SQL over the columns.
    """
    value = F.expr(f"`{id_sql}`" if id_sql in df.columns else id_sql)
    if isinstance(df.select(value).schema[0].dataType, IntegralType):
        return value.cast("long").alias("row_id")
    return F.xxhash64(value).alias("row_id")


def _numbers(df: DataFrame, feature: NumericFeature, width: int) -> list[Column]:
    """The feature's numbers, NULL where missing (NaN counts as missing)."""
    value = F.expr(feature.expr)
    if width == 1 and not _is_array(df, feature):
        parts = [value.cast("double")]
    else:
        parts = [F.try_element_at(value, F.lit(i + 1)).cast("double") for i in range(width)]
    return [F.when(~F.isnan(p), p) for p in parts]


def sql_values(rows: pd.DataFrame, exprs: Mapping[str, str],
               types: Mapping[str, str]) -> dict[str, list[Any]]:
    """The values of SQL expressions over pandas rows, computed by Spark, in row order.

    Args:
        rows: the rows.
        exprs: result name -> Spark SQL expression over the rows' columns.
        types: column -> Spark type the rows had where the expressions were declared
            (columns without one are typed from pandas).

    Raises:
        SchemaMismatchError: an expression refers to a column the rows lack.
    """
    spark = SparkSession.getActiveSession() or local_session()
    frame = rows.reset_index(drop=True).assign(_lakeforge_row=np.arange(len(rows)))
    df = spark.createDataFrame(frame)
    df = df.select(*[F.col(f"`{c}`").cast(types[c]).alias(c) if c in types else F.col(f"`{c}`")
                     for c in df.columns])
    try:
        values = df.select("_lakeforge_row", *[F.expr(e).alias(n) for n, e in exprs.items()]) \
            .orderBy("_lakeforge_row").toPandas()
    except AnalysisException as exc:
        raise SchemaMismatchError(
            f"input rows: the features {', '.join(exprs)} are SQL over columns the rows lack "
            f"({str(exc).splitlines()[0]}); give those columns, or a column per feature") \
            from None
    return {n: values[n].tolist() for n in exprs}


def _column(rows: pd.DataFrame, expr: str, name: str) -> pd.Series:
    """The column a feature reads from pandas rows: its expression's, else its name's."""
    for column in (expr.strip("`"), name):
        if column and column in rows.columns:
            return rows[column]
    raise SchemaMismatchError(
        f"input rows have no column {expr!r}" + (f" or {name!r}" if name and name != expr
                                                 else "")
        + f"; columns: {', '.join(map(str, rows.columns))} (a feature declared as SQL needs "
          f"a column named by the feature's name, holding its value)")


def _number(value: Any) -> float:
    """A cell as a float, NaN when missing or not a number (Spark's cast gives NULL)."""
    if value is None:
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _spark_string(value: Any) -> str | None:
    """A value as Spark casts it to a string (``true``, ``1.0``); None stays None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    return str(value)


def _decoder(encoding: str, height: int, width: int, channels: int) -> Any:
    """A pandas UDF turning image bytes into height x width x channels floats in [0, 1]."""

    @F.pandas_udf(ArrayType(FloatType()))
    def decode(images: pd.Series) -> pd.Series:
        return images.map(lambda b: decode_image(b, encoding, height, width, channels))

    return decode


def decode_image(data: bytes | None, encoding: str, height: int, width: int,
                 channels: int) -> np.ndarray | None:
    """One image as floats in [0, 1] (row-major, channels last), or None if unreadable.

    ``raw`` bytes must hold exactly height x width x channels values; ``encoded`` ones
    are read with Pillow, converted to the channels and resized to the shape.
    """
    if data is None:
        return None
    if encoding == "raw":
        pixels = np.frombuffer(data, dtype=np.uint8)
        if pixels.size != height * width * channels:
            return None
        return pixels.astype(np.float32) / 255.0
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert(_MODES[channels])
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.float32).reshape(-1) / 255.0
    except (UnidentifiedImageError, OSError, ValueError):
        return None


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


def prepare(df: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Silver rows with ``row_id`` and ``split``, filtered by ``where`` (nothing fitted yet)."""
    if spec.where:
        df = df.filter(F.expr(spec.where))
    return df.select("*", row_id(df, spec.id).alias("_row_id"),
                     split_column(spec.split).alias("_split"))


def fit(prepared: DataFrame, spec: FeatureSpec) -> FeatureTransform:
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
    if spec.image is not None:
        if not train.limit(1).count():
            raise SchemaMismatchError(f"data set {spec.dataset}: no rows in the training split "
                                      "(check features.where and features.split)")
        image = spec.image
        return FeatureTransform(spec, (image.height * image.width * image.channels,), (), (),
                                _classes(prepared, train, spec))
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
    types = tuple((f.name, f.dataType.simpleString()) for f in prepared.schema.fields
                  if not f.name.startswith("_row_id") and f.name != "_split")
    return FeatureTransform(spec, tuple(widths), fill, tuple(vocabularies),
                            _classes(prepared, train, spec), types)


def _classes(prepared: DataFrame, train: DataFrame, spec: FeatureSpec) -> tuple[str, ...]:
    """The classes of a string label, sorted, from the training split (else empty)."""
    label_type = prepared.select(F.expr(spec.label)).schema[0].dataType
    if spec.task == "classification" and isinstance(label_type, StringType):
        labels = train.select(F.expr(spec.label).alias("y")).filter(F.col("y").isNotNull())
        return tuple(sorted(r["y"] for r in labels.distinct().collect()))
    if spec.task == "classification" and not isinstance(label_type, IntegralType | BooleanType):
        raise SchemaMismatchError(
            f"data set {spec.dataset}: label {spec.label!r} is {label_type.simpleString()}; a "
            "classification label is a string, a boolean or a class index (or set "
            "features.task: regression)")
    return ()


def apply(prepared: DataFrame, transform: FeatureTransform) -> DataFrame:
    """Gold rows (``row_id``, ``split``, ``features``, ``label``) from prepared rows."""
    return prepared.select(F.col("_row_id").alias("row_id"), F.col("_split").alias("split"),
                           transform.features(prepared), transform.label())


def features_for_scoring(df: DataFrame, transform: FeatureTransform) -> DataFrame:
    """``row_id`` and ``features`` of raw rows (a silver-shaped table) for a stored model."""
    return df.select(row_id(df, transform.spec.id), transform.features(df))


GOLD_FIELDS = (
    *ROW_FIELDS,
    _f("features", ArrayType(FloatType())),
    _f("label", IntegerType()),
)


def gold_spec(name: str, regression: bool = False) -> TableSpec:
    """The registry entry of a labelled gold table (registered on first use).

    A regression's ``label`` is the target value (FLOAT), a classification's the class
    index (INT).
    """
    fields = GOLD_FIELDS if not regression else (*GOLD_FIELDS[:3], _f("label", FloatType()))
    return register(TableSpec(
        "gold", name, fields, ("row_id",), partition_by=("split",),
        properties=TRAINING_TABLE_PROPERTIES, comment=f"{name} features for training",
    ), replace=True)   # a declaration may switch between classification and regression


def transform_of(spark: SparkSession, table: str, version: int) -> FeatureTransform | None:
    """The fitted transform a labelled gold table was written with, at ``version``."""
    meta = built_meta(spark, table, version)
    return FeatureTransform.from_json(meta["transform"]) if "transform" in meta else None


class LabelledKind(Kind):
    """A kind whose ``features:`` declares labelled sets (tabular and image).

    The settings are a :class:`FeatureSpec` (parsed with every problem named at once).
    Fitted on the training split: fill-in values, vocabularies, string classes and
    array widths (a :class:`FeatureTransform`, kept in the gold table's commit). The
    gold table holds ``row_id``, ``split``, ``features`` (ARRAY<FLOAT>) and ``label``
    (INT class index, or FLOAT for a regression), partitioned by ``split``.
    """

    settings = FeatureSpec

    def sets(self, cfg: Config) -> dict[str, Dataset | None]:
        """Each entry's declared sets: one named like it, or ``<entry>_<set>``."""
        return {name: view for entry in cfg.datasets.values() if entry.kind == self.name
                for name, view in entry.feature_sets().items()}

    def settings_of(self, entry: Dataset | None, params: Mapping[str, Any] | None = None,
                    where: str = "") -> FeatureSpec:
        """The parsed declaration; a labelled set takes no parameters."""
        if params:
            raise ConfigError(f"feature set {entry.name if entry else '?'!r} takes no "
                              f"parameters; got {', '.join(params)}")
        return parse_features(entry, where)

    def check(self, entry: Dataset, silver: DataFrame, problems: Problems) -> None:
        """Every set's keys, and its SQL analysed over the silver columns."""
        for name, view in entry.feature_sets().items():
            where = entry.features_key(name)
            spec = parse_features(view, where, problems)
            if spec is None:
                continue
            checks = [("label", spec.label),
                      *((f"numeric.{f.name}", f.expr) for f in spec.numeric),
                      *((f"categorical.{f.name}", f.expr) for f in spec.categorical)]
            if spec.where:
                checks.append(("where", f"CAST(({spec.where}) AS BOOLEAN)"))
            if spec.split.by in ("column", "time"):
                checks.append(("split.column", f"`{spec.split.column}`"))
            for key, expr in checks:
                try:
                    silver.select(F.expr(expr)).schema  # noqa: B018 - analyses
                except (ParseException, AnalysisException) as exc:
                    problems.add(f"{where}.{key}", f"{expr!r} is not SQL over the silver "
                                                   f"columns: {first_line(exc)}")

    def gold_spec(self, name: str, settings: FeatureSpec) -> TableSpec:
        """``gold_<set>`` (:func:`gold_spec`)."""
        return gold_spec(name, settings.task == "regression")

    def build(self, spark: SparkSession, cfg: Config, name: str, entry: Dataset | None,
              settings: FeatureSpec, partitions: int | None) -> FeatureSet:
        """Fit on the training split, write, keep the transform in the commit.

        Keyed on the silver table's data version and the declaration's digest.
        """
        spec = settings
        rows, pinned = silver_rows(spark, cfg, entry)
        fitted: dict[str, Any] = {}

        def gold_rows() -> DataFrame:
            prepared = prepare(rows, spec)
            fitted["prepared"], fitted["transform"] = prepared, fit(prepared, spec)
            out = apply(prepared, fitted["transform"])
            return out.filter(F.col("split").isNotNull() & F.col("label").isNotNull()
                              & F.col("features").isNotNull())

        build = build_once(spark, cfg, self.gold_spec(name, spec),
                           {"silver_version": pinned.data_version, "spec": spec.digest()},
                           gold_rows, partitions=partitions,
                           meta=lambda: {"transform": fitted["transform"].to_json()})
        transform = FeatureTransform.from_json(build.meta["transform"])
        shape = build.rows(spark).agg(F.count(F.lit(1)).alias("n"),
                                      F.max("label").alias("top")).first()
        if build.built:   # kept rows counted in the table, not by recomputing them
            left_out = fitted["prepared"].count() - shape["n"]
            if left_out:
                log.info("%s: %d rows have no split, no label or no readable image and are "
                         "left out", name, left_out)
        n_classes = transform.n_classes or (int(shape["top"]) + 1
                                            if spec.task == "classification"
                                            and shape["top"] is not None else 0)
        names = transform.feature_names
        log.info("%s: %s v%d holds %d rows x %d features (%s, from %s v%d)", name,
                 build.table, build.snapshot.data_version, shape["n"], len(names), spec.task,
                 pinned.table, pinned.data_version)
        return FeatureSet(name, build.table, build.snapshot.data_version, shape["n"],
                          len(names), n_classes, tuple(names))


def class_names(cfg: Config, feature_set: str) -> list[str] | None:
    """A labelled feature set's declared ``class_names`` (None when it declares none)."""
    for kind_name in LABELLED:
        entry = kind(kind_name).sets(cfg).get(feature_set)
        if entry is not None:
            names = entry.features.get("class_names")
            return [str(n) for n in names] if names else None
    return None
