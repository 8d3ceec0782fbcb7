"""The model store: versioned artifacts plus the ``<database>.models`` Delta table.

Artifacts live on the lake under ``models/<database>/<name>/<run id>`` (a folder of the
home for a local lake); the table holds name, version, family, params, metrics,
training table and its Delta version, run id, artifact path and created_at.

A version is given by a MERGE that inserts ``(name, version)`` only if no row holds it:
two trainings of one model registering at once both read the table, so Delta makes the
second commit fail, and it retries with the next version. Versions stay unique and
gapless, and an artifact folder belongs to one run, so no registration overwrites
another's files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import CommitConflictError, LakeforgeError
from lakehouse.lakefs import LakeFS, join
from lakehouse.tables import table

log = logging.getLogger(__name__)
MODEL_FILE = "model.keras"
TRANSFORM_FILE = "transform.json"   # a declared feature set's fitted transform
REGISTER_ATTEMPTS = 8
META_FILE = "meta.json"


class ModelNotFoundError(LakeforgeError):
    """No model with that name and version, or its artifact cannot be loaded."""


@dataclass(frozen=True)
class ModelRecord:
    """One row of the models table."""

    name: str
    version: int
    family: str
    params: dict[str, Any]
    metrics: dict[str, float]
    training_table: str
    training_version: int
    run_id: str
    artifact: str
    created_at: dt.datetime
    mlflow_run_id: str | None = None

    def row(self) -> tuple:
        """The record as a models-table row (params and metrics as JSON objects)."""
        return (self.name, self.version, self.family, json.dumps(self.params, sort_keys=True),
                json.dumps(self.metrics, sort_keys=True), self.training_table,
                self.training_version, self.run_id, self.artifact, self.created_at,
                self.mlflow_run_id)


class ModelStore:
    """Register, look up and load models."""

    def __init__(self, spark: SparkSession, cfg: Config) -> None:
        self.spark, self.cfg = spark, cfg
        self.spec = table("ops.models")
        self.table = delta.ensure_table(spark, self.spec, cfg.catalog.database)
        self.lake = LakeFS.of(cfg)
        self.root = join(cfg.model_dir, cfg.catalog.database)

    def find_run(self, name: str, run_id: str) -> ModelRecord | None:
        """The model a run already registered, if any (re-runs do not register twice)."""
        rows = (self.spark.table(self.table)
                .filter((F.col("name") == name) & (F.col("run_id") == run_id)).collect())
        return _record(rows[0]) if rows else None

    def register(self, name: str, family: str, staged: Path, params: dict[str, Any],
                 metrics: dict[str, float], training_table: str, training_version: int,
                 run_id: str, mlflow_run_id: str | None = None) -> ModelRecord:
        """Move a staged artifact folder into the store on the lake and add its row.

        The staged folder is consumed: copied into the store on the lake, then deleted
        (also when this run had already registered its model).

        Args:
            name: model name.
            family: model family.
            staged: folder holding ``model.keras`` and companions.
            params: training parameters.
            metrics: test metrics.
            training_table: gold table trained from.
            training_version: its Delta version.
            run_id: the training run; a run registers one model only.
            mlflow_run_id: its MLflow run, when tracked.

        Returns:
            The new record (or the one this run registered before).
        """
        existing = self.find_run(name, run_id)
        if existing is not None:
            shutil.rmtree(staged, ignore_errors=True)
            return existing
        target = join(self.root, name, run_id)
        self.lake.remove(target)   # left by a registration killed before its commit
        self.lake.put(str(staged), target)
        shutil.rmtree(staged, ignore_errors=True)
        for attempt in range(1, REGISTER_ATTEMPTS + 1):
            latest = (self.spark.table(self.table).filter(F.col("name") == name)
                      .agg(F.max("version")).first()[0])
            record = ModelRecord(name, (latest or 0) + 1, family, params, metrics,
                                 training_table, training_version, run_id, target,
                                 dt.datetime.now(dt.UTC).replace(tzinfo=None), mlflow_run_id)
            self.lake.write_text(join(target, META_FILE), json.dumps(
                {**{k: v for k, v in record.__dict__.items() if k != "created_at"},
                 "created_at": record.created_at.isoformat()}, indent=2, default=str))
            try:
                if self._insert(record):
                    return record
            except Exception as exc:
                if not delta.is_commit_conflict(exc):
                    raise
            done = self.find_run(name, run_id)
            if done is not None:
                return done
            log.info("%s v%d was registered concurrently (attempt %d); taking the next",
                     name, record.version, attempt)
        raise CommitConflictError(f"register {name}: lost {REGISTER_ATTEMPTS} version races")

    def _insert(self, record: ModelRecord) -> bool:
        """Insert the record's row unless its (name, version) exists; whether it did."""
        rows = self.spark.createDataFrame([record.row()], self.spec.schema)
        (DeltaTable.forName(self.spark, self.table).alias("t")
         .merge(rows.alias("s"), "t.name = s.name AND t.version = s.version")
         .whenNotMatchedInsertAll().execute())
        return self.find_run(record.name, record.run_id) is not None

    def get(self, name: str, version: int | str = "latest") -> ModelRecord:
        """Look up a model by name and version (an int, or ``latest``).

        Raises:
            ModelNotFoundError: naming the model and the versions that exist.
        """
        rows = self.spark.table(self.table).filter(F.col("name") == name)
        versions = sorted(r["version"] for r in rows.select("version").collect())
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r} in {self.table}")
        wanted = versions[-1] if version == "latest" else int(version)
        if wanted not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version}; versions: "
                f"{', '.join(map(str, versions))}")
        return _record(rows.filter(F.col("version") == wanted).first())

    def records(self) -> list[ModelRecord]:
        """Every model version in the table, by name and version."""
        rows = self.spark.table(self.table).orderBy("name", "version").collect()
        return [_record(r) for r in rows]

    def load(self, name: str, version: int | str = "latest"):
        """Load a model's Keras network; returns ``(model, record)``.

        Raises:
            ModelNotFoundError: if the record is missing or the artifact cannot be
                loaded (the path and the reason are in the message).
        """
        record = self.get(name, version)
        return load_artifact(record.artifact, self.lake), record


def load_artifact(artifact: str, lake: LakeFS | None = None):
    """Load ``model.keras`` from an artifact folder on the lake (works on executors too)."""
    import tensorflow as tf

    try:
        path = Path((lake or LakeFS()).fetch(artifact)) / MODEL_FILE
    except FileNotFoundError:
        raise ModelNotFoundError(f"model artifact {artifact} does not exist") from None
    if not path.is_file():
        raise ModelNotFoundError(f"model artifact {path} does not exist")
    try:
        return tf.keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ModelNotFoundError(f"model artifact {path} cannot be loaded: {exc}") from exc


def _record(row) -> ModelRecord:
    return ModelRecord(row["name"], row["version"], row["family"], json.loads(row["params"]),
                       json.loads(row["metrics"]), row["training_table"],
                       row["training_version"], row["run_id"], row["artifact"],
                       row["created_at"], row["mlflow_run_id"])
