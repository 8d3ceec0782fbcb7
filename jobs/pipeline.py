"""``lakeforge run PIPELINE``: a pipeline definition's steps, in one process.

The steps are the ones the pipeline's Airflow DAG submits with spark-submit (see
:meth:`pipelines.definitions.Pipeline.steps`, the one place their order and command
lines are written); here each step calls its library function directly with typed
arguments taken from the same definition, and the steps share one SparkSession
instead of starting a JVM each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession

from lakehouse.catalog import create_views
from lakehouse.config import Config
from lakehouse.curate import curate
from lakehouse.errors import ConfigError
from lakehouse.featuresets import build_features
from lakehouse.stream import ingest_sources
from models.runner import train
from models.scoring import score
from pipelines.definitions import STEP_NAMES, Pipeline, get_pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    """A finished step, the command line it stands for, and how long it took."""

    name: str
    command: str
    seconds: float


def _score(spark: SparkSession, cfg: Config, p: Pipeline, batch: str) -> object:
    result = score(spark, cfg, p.family, p.model)
    create_views(spark, cfg)
    return result


# What each step of a definition runs, by step name.
STEP_FUNCTIONS: dict[str, Callable[[SparkSession, Config, Pipeline, str], object]] = {
    "ingest": lambda spark, cfg, p, batch: ingest_sources(spark, cfg, list(p.sources), batch),
    "curate": lambda spark, cfg, p, batch: curate(spark, cfg, list(p.sources), batch),
    "features": lambda spark, cfg, p, batch: build_features(spark, cfg, p.features,
                                                            params=p.feature_params),
    "train": lambda spark, cfg, p, batch: train(spark, cfg, p.family, p.features,
                                                params=p.params, name=p.model),
    "score": _score,
}


def run_pipeline(spark: SparkSession, cfg: Config, name: str, batch: str,
                 definitions: str | Path | None = None, start_at: str = STEP_NAMES[0]
                 ) -> list[StepResult]:
    """Run a pipeline's steps in order: ingest, curate, features, train, score.

    Every step is idempotent for the same batch and data (see the jobs), so running
    the same batch again leaves the tables as they are. ``start_at`` skips the steps
    before it, for example to train and score again after the data is in place.

    Args:
        spark: the session.
        cfg: configuration.
        name: pipeline name (``breast_cancer_mlp``, ...).
        batch: ingest batch id.
        definitions: definitions file (default ``pipelines/pipelines.yml``).
        start_at: the first step to run (one of ``STEP_NAMES``).

    Returns:
        One result per step run.

    Raises:
        ConfigError: unknown pipeline, malformed definition or unknown step (named).
    """
    if start_at not in STEP_NAMES:
        raise ConfigError(f"unknown pipeline step {start_at!r}; steps: {', '.join(STEP_NAMES)}")
    pipeline = get_pipeline(name, definitions)
    every, first = pipeline.steps(batch), STEP_NAMES.index(start_at)
    skipped, steps = every[:first], every[first:]
    if skipped:
        log.info("%s: starting at %s (skipping %s)", name, start_at,
                 ", ".join(s.name for s in skipped))
    results: list[StepResult] = []
    start = time.monotonic()
    for i, step in enumerate(steps, start=1):
        command = " ".join([step.job, *step.args])
        log.info("%s [%d/%d] %s: lakeforge %s", name, i, len(steps), step.name, command)
        began = time.monotonic()
        STEP_FUNCTIONS[step.name](spark, cfg, pipeline, batch)
        results.append(StepResult(step.name, command, time.monotonic() - began))
        log.info("%s [%d/%d] %s done in %.0f s", name, i, len(steps), step.name,
                 results[-1].seconds)
    log.info("pipeline %s (batch %s) finished in %.0f s", name, batch, time.monotonic() - start)
    return results
