"""Driver side of training: the one template every family trains through.

:func:`train` pins one Delta snapshot of a gold table (a run reads exactly that
version, whatever is appended later; :func:`snapshot_files` gives its Parquet files
per split), asks the family's :class:`models.family.FamilyTrainer` to check and plan,
returns an already registered run before any Horovod job, and otherwise stages the
artifact, runs the family's rank function on ``num_proc`` ranks through
``horovod.spark.run`` and registers the model with its metrics in the model store.
With ``tracking.enabled`` the run is also an MLflow run (:mod:`models.tracking`): its
parameters, rank 0's history, the evaluation and the model as a pyfunc
(:mod:`models.pyfunc`), and the version is registered in MLflow with the same number.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.daemon import owner_gone, owner_line
from lakehouse.errors import ConfigError, TableNotFoundError
from lakehouse.lakefs import LakeFS, join
from models.family import RunPaths, check_kind, get_family
from models.pyfunc import save as save_pyfunc
from models.store import ModelRecord, ModelStore
from models.tracking import Tracker, sync

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """A finished training run."""

    model: ModelRecord
    history: dict[str, list[float]]
    ranks: list[dict[str, Any]]
    seconds: float


def snapshot_files(df: DataFrame) -> dict[str, list[str]]:
    """Parquet files of a pinned snapshot per split (partition-pruned file lists).

    Local files as ``file:///path``; files on an object store or HDFS keep their URI
    (``s3a://bucket/key``), which the ranks open through :class:`LakeFS`.
    """
    files = {}
    for split in ("train", "val", "test"):
        uris = df.filter(F.col("split") == split).inputFiles()
        files[split] = sorted(u.replace("file:/", "file:///", 1) if u.startswith("file:/")
                              and not u.startswith("file:///") else u for u in uris)
    return files


def default_run_id(name: str, family: str, table: str, version: int,
                   params: dict[str, Any]) -> str:
    """A run id derived from what is trained on what, so a re-run resumes it."""
    digest = hashlib.sha256(repr((family, table, version, sorted(params.items()))).encode())
    return f"{name}-v{version}-{digest.hexdigest()[:8]}"


def train(spark: SparkSession, cfg: Config, family_name: str, dataset: str,
          version: int | None = None, run_id: str | None = None,
          params: dict[str, Any] | None = None, name: str | None = None) -> TrainResult:
    """Train a model family on a data set's gold table with Horovod ranks: the template.

    The steps every family shares, in order: check the data set's kind and the typed
    parameters, pin the table's snapshot, let the family's trainer check the table
    and plan the run, derive the run id, return the registered model when that run
    already registered one (no Horovod job), stage, run the ranks, evaluate and
    register. What differs per family is its :class:`models.family.FamilyTrainer`.

    Args:
        spark: the session.
        cfg: configuration (``train.num_proc``; checkpoints and the model store on the lake).
        family_name: ``mlp``, ``cnn``, ``word2vec``, ``deepar`` or ``rcf``.
        dataset: the data set (or feature set) whose gold table to train on.
        version: Delta version to train on (default: the current rows, recorded as
            the table's data version).
        run_id: training run id; a run started again with the same id resumes
            from its last checkpoint (default: derived from family, table, version
            and params).
        params: overrides of the family's default parameters.
        name: model name (default ``<dataset>_<family>``).

    Returns:
        The registered model, the history and each rank's report.

    Raises:
        ConfigError: a data set of another kind, or a parameter that is unknown, of the
            wrong type or out of range (family, parameter and value named).
    """
    start = time.monotonic()
    family = get_family(family_name)
    check_kind(family, cfg, dataset)
    checked = family.check_params(params)
    trainer = family.trainer
    if trainer is None:
        raise ConfigError(f"{family_name} has no trainer")
    table = trainer.table(cfg, dataset)
    df, version = pin_table(spark, table, version)
    plan = trainer.plan(spark, cfg, dataset, df, table, version, checked)
    name = name or f"{dataset}_{family_name}"
    run_id = run_id or default_run_id(name, family_name, table, version, plan.params)
    done = registered_run(spark, cfg, name, run_id, start)
    if done is not None:
        return done
    trainer.ready(plan, table, version)
    tracker = Tracker(cfg) if cfg.tracking.enabled else None   # stops before any rank
    recorded = plan.recorded or plan.params
    mlrun = tracker.start(run_id, name, family_name, table, version, recorded,
                          delta.table_location(spark, table)) if tracker else None
    with tracker.running(mlrun) if tracker else contextlib.nullcontext():
        run = run_paths(cfg, run_id)
        spec = trainer.rank_spec(cfg, plan, run)
        log.info("training %s (%s) on %s v%d: %s; %d ranks, run %s", name, family_name,
                 table, version, plan.summary, cfg.train.num_proc, run_id)
        ranks = run_ranks(spec, cfg, type(trainer).rank_fn)
        gather(run)
        metrics = trainer.evaluate(spark, cfg, plan, ranks, run.staged, name)
        rank0 = next((r for r in ranks if r.get("rank") == 0), {})
        if tracker:
            tracker.log_training(mlrun, rank0.get("history") or {},
                                 int(rank0.get("initial_epoch") or 0), metrics)
            log_model(tracker, mlrun, family_name, run.staged,
                      trainer.example(spark, cfg, plan, run.staged),
                      trainer.pyfunc_options(plan))
        record = ModelStore(spark, cfg).register(name, family_name, run.staged, recorded,
                                                 metrics, table, version, run_id, mlrun)
        if tracker:
            tracker.register(record, mlrun)
            tracker.finish(mlrun)
    seconds = time.monotonic() - start
    log.info("registered %s v%d in %.0fs: %s", name, record.version, seconds,
             ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return TrainResult(record, rank0.get("history") or {}, ranks, seconds)


def log_model(tracker: Tracker, mlrun: str, family: str, staged: Path, example: Any,
              options: dict[str, Any]) -> None:
    """Log a model to its MLflow run: a pyfunc where its family has a predictor.

    A family without one (:mod:`models.pyfunc`) logs the model store's files as they are.
    """
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        if not save_pyfunc(folder, family, staged, example, options):
            folder = staged
        tracker.log_model(mlrun, folder)


def pin_table(spark: SparkSession, table: str, version: int | None) -> tuple[DataFrame, int]:
    """A training table read at one Delta version, and the version recorded for it.

    By default the current rows, recorded as the table's data version (the newest
    commit that changed rows), so OPTIMIZE or VACUUM of the table is not a new training
    input and does not start a new run.

    Raises:
        TableNotFoundError: the table does not exist (build its features first).
    """
    if not delta.table_exists(spark, table):
        raise TableNotFoundError(f"training table {table} does not exist; build features first")
    if version is not None:
        df = delta.read_version(spark, table, int(version))
        delta.check_files_exist(spark, df, f"training table {table} v{version}")
        return df, int(version)
    pinned = delta.snapshot(spark, table)
    return delta.read_version(spark, table, pinned.version), pinned.data_version


def run_paths(cfg: Config, run_id: str) -> RunPaths:
    """A run's local staging folder (fresh), its lake outputs folder (empty) and checkpoints."""
    lake = LakeFS.of(cfg)
    staged = staging_dir(cfg, run_id)
    outputs = cfg.lake_path("runs", run_id)
    lake.remove(outputs)
    return RunPaths(run_id, staged, outputs, join(cfg.checkpoint_dir, "train", run_id), lake)


def gather(run: RunPaths) -> None:
    """Bring rank 0's artifact files from the lake into the staging folder, then drop them."""
    for name in run.lake.names(run.outputs):
        run.lake.get(join(run.outputs, name), str(run.staged / name))
    run.lake.remove(run.outputs)


def staging_dir(cfg: Config, run_id: str) -> Path:
    """A fresh folder for a run's artifact, under ``LAKEFORGE_HOME/staging/<run id>``.

    The process that owns it is written beside it (``<run id>.owner``: host and pid)
    before it exists; folders of processes that are gone (killed runs) are removed
    here, with what their ranks left under the lake's ``runs/``, so a killed training
    leaves nothing behind once any training starts again on that host.
    """
    root = cfg.home / "staging"
    root.mkdir(parents=True, exist_ok=True)
    for folder in root.iterdir():
        if folder.suffix == ".owner" or folder.name == run_id:
            continue
        owner = root / f"{folder.name}.owner"
        if not owner.exists() or owner_gone(owner.read_text()):
            shutil.rmtree(folder, ignore_errors=True)
            LakeFS.of(cfg).remove(cfg.lake_path("runs", folder.name))
            owner.unlink(missing_ok=True)
    for owner in root.glob("*.owner"):
        if not owner.with_suffix("").exists() and owner_gone(owner.read_text()):
            owner.unlink(missing_ok=True)
    path = root / run_id
    (root / f"{run_id}.owner").write_text(owner_line())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def registered_run(spark: SparkSession, cfg: Config, name: str, run_id: str,
                   start: float) -> TrainResult | None:
    """The result of a run that already registered its model (no Horovod job), or None."""
    store = ModelStore(spark, cfg)
    done = store.find_run(name, run_id)
    if done is None:
        return None
    log.info("run %s already registered %s v%d; nothing to train", run_id, name, done.version)
    if cfg.tracking.enabled:   # a run killed after the models table took its version
        tracker = Tracker(cfg)
        if done.version not in tracker.versions(name):
            found = tracker.find_run(run_id)
            if found is not None and found.info.status != "FINISHED":
                tracker.finish(found.info.run_id)
            sync(tracker, [r for r in store.records() if r.name == name])
    return TrainResult(done, {}, [], time.monotonic() - start)


def run_ranks(spec: Any, cfg: Config, fn: Any) -> list[dict[str, Any]]:
    """Run ``fn(spec)`` on ``cfg.train.num_proc`` Horovod ranks.

    Each rank is a Spark task; the list holds every rank's return value.
    """
    import horovod.spark

    return horovod.spark.run(fn, args=(spec,), num_proc=cfg.train.num_proc,
                             start_timeout=cfg.train.start_timeout, use_gloo=True,
                             verbose=cfg.train.verbose)
