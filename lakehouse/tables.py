"""The table registry: every table declared once (layer, name, schema, keys, partitions).

Tables live in the catalog as ``<database>.<layer>_<name>``. The operational tables
are declared here; a data set's bronze and silver tables are declared by its catalog
entry (:func:`dataset_specs`). Bronze tables hold what was read plus lineage columns;
silver tables are typed, validated and deduplicated on their keys; the quarantine
table keeps every record that could not be used, with the reason and its raw text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql.types import (
    ArrayType,
    DataType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from lakehouse.datasets import Dataset
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

# Petastorm reads a gold table's Parquet files directly, not through Delta: a file must
# hold exactly its rows (no deletion vectors) under its columns' own names (no column
# mapping), so that a snapshot's files are the table's rows.
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
    _f("rules", ArrayType(StringType())),
    _f("declaration", StringType()),     # the silver declaration's fingerprint (curate)
)
_QUALITY = (
    _f("dataset", StringType(), False),
    _f("target_table", StringType(), False),
    _f("stage", StringType(), False),
    _f("batch", StringType(), False),
    _f("rule", StringType(), False),
    _f("action", StringType(), False),
    _f("expr", StringType()),
    _f("checked", LongType(), False),
    _f("passed", LongType(), False),
    _f("warned", LongType(), False),
    _f("quarantined", LongType(), False),
    _f("failed", LongType(), False),
    _f("checked_at", TimestampType(), False),
    _f("declaration", StringType()),     # the silver declaration's fingerprint (curate)
)
_CURATIONS = (
    _f("dataset", StringType(), False),
    _f("target_table", StringType(), False),
    _f("batch", StringType(), False),
    _f("declaration", StringType(), False),
    _f("bronze_version", LongType(), False),
    _f("rows", LongType(), False),
    _f("valid", LongType(), False),
    _f("quarantined", LongType(), False),
    _f("curated_at", TimestampType(), False),
)
_INGEST_FILES = (
    _f("dataset", StringType(), False),
    _f("batch", StringType(), False),
    _f("path", StringType(), False),
    _f("size", LongType(), False),
    _f("modified_at", TimestampType()),
    _f("claimed_at", TimestampType(), False),
)
_ALERTS = (
    _f("dataset", StringType(), False),
    _f("stream_id", StringType(), False),
    _f("t", LongType(), False),                # the point's time (the stream's order)
    _f("score", DoubleType(), False),          # the point's own score (point_score)
    _f("threshold", DoubleType(), False),      # the alert threshold it crossed
    _f("model_name", StringType(), False),
    _f("model_version", IntegerType(), False),
    _f("alerted_at", TimestampType(), False),
    _f("split", StringType()),                 # the point's split (train or test)
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
    _f("mlflow_run_id", StringType()),   # the model's MLflow run (NULL: tracking was off)
)

def _registry() -> dict[str, TableSpec]:
    specs: dict[str, TableSpec] = {}
    specs["ops.quarantine"] = TableSpec(
        "ops", "quarantine", _QUARANTINE, ("source", "stage", "batch", "source_file", "record"),
        comment="records that could not be used, with the reason and the raw text",
    )
    specs["ops.quality"] = TableSpec(
        "ops", "quality", _QUALITY, ("dataset", "stage", "batch", "rule"),
        comment="per batch and quality rule: rows checked, passed, warned, quarantined, failed",
    )
    specs["ops.curations"] = TableSpec(
        "ops", "curations", _CURATIONS, ("dataset", "batch"),
        comment="per data set: the ingest batches its silver table holds, and the "
                "fingerprint of the silver declaration they were curated under",
    )
    specs["ops.alerts"] = TableSpec(
        "ops", "alerts", _ALERTS, ("model_name", "stream_id", "split", "t"),
        comment="one row per anomaly a streaming scorer found: the point that raised it",
    )
    specs["ops.ingest_files"] = TableSpec(
        "ops", "ingest_files", _INGEST_FILES, ("dataset", "path"),
        comment="every file (or table version) a data set ingested, with its batch",
    )
    specs["ops.models"] = TableSpec(
        "ops", "models", _MODELS, ("name", "version"), catalog_name="models",
        comment="trained models: params, metrics, training table and its Delta version",
    )
    return specs


REGISTRY: dict[str, TableSpec] = _registry()


def dataset_specs(entry: Dataset, bronze_fields: list[StructField],
                  silver_fields: list[StructField]) -> tuple[TableSpec, TableSpec]:
    """The bronze and silver table specs of a catalog entry.

    Args:
        entry: the catalog entry.
        bronze_fields: the bronze data columns (its source schema).
        silver_fields: the silver columns (the entry's silver select over bronze).

    Returns:
        (bronze spec, silver spec).
    """
    what = entry.description or entry.name
    keys = entry.silver.keys
    bronze = TableSpec("bronze", entry.table_name, tuple(bronze_fields), keys,
                       properties=BRONZE_PROPERTIES, comment=f"{what} (as read)")
    silver = TableSpec("silver", entry.table_name, tuple(silver_fields), keys,
                       comment=f"{what} (typed, validated, deduplicated)")
    return bronze, silver


def layer_table(database: str, layer: str, name: str) -> str:
    """The catalog name of a data set's table, e.g. ``db.silver_series``."""
    return f"{database}.{layer}_{name}"


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


def register(spec: TableSpec, replace: bool = False) -> TableSpec:
    """Add a table (for example a gold feature table) to the registry.

    Args:
        spec: the table's spec; a spec already registered under the same key
            must be identical, unless ``replace``.
        replace: the spec may replace another one of the same key (a table whose
            definition follows a declaration that can change).

    Returns:
        The spec.
    """
    key = f"{spec.layer}.{spec.name}"
    existing = REGISTRY.get(key)
    if existing is not None and existing != spec and not replace:
        raise ValueError(f"table {key!r} is already registered with another definition")
    REGISTRY[key] = spec
    return spec
