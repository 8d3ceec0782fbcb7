"""``lakeforge run PIPELINE``: a pipeline definition's steps, in one process.

Each step is the same job, with the same arguments, that the pipeline's Airflow DAG
submits with spark-submit (see :meth:`pipelines.definitions.Pipeline.steps`); here the
steps share one SparkSession instead of starting a JVM each.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession

from lakehouse.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    """A finished step and how long it took."""

    name: str
    command: str
    seconds: float


def run_pipeline(spark: SparkSession, cfg: Config, name: str, batch: str,
                 definitions: str | Path | None = None) -> list[StepResult]:
    """Run a pipeline's steps in order: ingest, curate, features, train, score.

    Every step is idempotent for the same batch and data (see the jobs), so running
    the same batch again leaves the tables as they are.

    Args:
        spark: the session.
        cfg: configuration.
        name: pipeline name (``breast_cancer_mlp``, ...).
        batch: ingest batch id.
        definitions: definitions file (default ``pipelines/pipelines.yml``).

    Returns:
        One result per step.

    Raises:
        ConfigError: unknown pipeline or malformed definition (named).
    """
    from lakehouse.cli import COMMANDS, build_parser
    from pipelines.definitions import get_pipeline

    pipeline = get_pipeline(name, definitions)
    parser = build_parser()
    steps = pipeline.steps(batch)
    results: list[StepResult] = []
    start = time.monotonic()
    for i, step in enumerate(steps, start=1):
        command = " ".join([step.job, *step.args])
        log.info("%s [%d/%d] %s: lakeforge %s", name, i, len(steps), step.name, command)
        began = time.monotonic()
        COMMANDS[step.job](spark, cfg, parser.parse_args([step.job, *step.args]))
        results.append(StepResult(step.name, command, time.monotonic() - began))
        log.info("%s [%d/%d] %s done in %.0f s", name, i, len(steps), step.name,
                 results[-1].seconds)
    log.info("pipeline %s (batch %s) finished in %.0f s", name, batch, time.monotonic() - start)
    return results
