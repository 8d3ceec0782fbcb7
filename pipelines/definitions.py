"""Pipeline definitions: which sources feed which features, model and prediction table.

The definitions live in ``pipelines/pipelines.yml``. ``lakeforge run`` and the Airflow
DAGs both turn a :class:`Pipeline` into the same list of :class:`Step` (a job of
``jobs/`` and its arguments), so the in-process run and the scheduled one cannot
drift apart. This module needs only the standard library and PyYAML: the DAG files
import it inside Airflow's own virtualenv, where Spark and TensorFlow are absent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lakehouse.errors import ConfigError
from models.family import FAMILY_NAMES

DEFINITIONS_FILE = Path(__file__).resolve().parent / "pipelines.yml"
STEP_NAMES = ("ingest", "curate", "features", "train", "score")
REQUIRED = ("sources", "features", "family")
# Batch id of a scheduled run: its data interval's date, so re-running the same run
# ingests the same batch (which the ingest job skips); runs without one use the run id.
AIRFLOW_BATCH = "{{ ds_nodash | default(run_id, true) }}"


@dataclass(frozen=True)
class Step:
    """One step of a pipeline: ``jobs/<job>.py`` (or ``lakeforge <job>``) with arguments."""

    name: str
    job: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Pipeline:
    """One use case, from raw sources to a prediction table."""

    name: str
    sources: tuple[str, ...]
    features: str
    family: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    feature_params: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    predictions: str = ""
    schedule: str | None = "@daily"
    retries: int = 2
    retry_delay_minutes: int = 5

    def steps(self, batch: str) -> tuple[Step, ...]:
        """The steps in order, with the arguments each job gets.

        Args:
            batch: ingest batch id (a date, or Airflow's ``{{ ds_nodash }}``); re-running
                a batch changes nothing.

        Returns:
            ingest, curate, features, train and score steps.
        """
        return (
            Step("ingest", "ingest", (*self.sources, "--batch", batch)),
            Step("curate", "curate", (*self.sources, "--batch", batch)),
            Step("features", "features", (self.features, *_param_args(self.feature_params))),
            Step("train", "train", (self.family, "--dataset", self.features,
                                    "--name", self.model, *_param_args(self.params))),
            Step("score", "score", (self.family, "--model", self.model)),
        )


def _param_args(params: Mapping[str, Any]) -> list[str]:
    """``--param key=value`` pairs; values as JSON, which the jobs read back as YAML."""
    out: list[str] = []
    for key, value in sorted(params.items()):
        out += ["--param", f"{key}={json.dumps(value)}"]
    return out


def load_pipelines(path: str | Path | None = None) -> dict[str, Pipeline]:
    """Read and check the pipeline definitions.

    Args:
        path: definitions file (default ``pipelines/pipelines.yml``).

    Returns:
        Pipelines by name, in file order.

    Raises:
        ConfigError: the file is missing or not valid YAML, or a pipeline has an
            unknown or missing key, a value of the wrong type or an unknown family
            (the pipeline and the key are named).
    """
    path = Path(path or DEFINITIONS_FILE)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"pipeline definitions {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline definitions {path} are not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("pipelines"), dict):
        raise ConfigError(f"pipeline definitions {path}: expected a 'pipelines' mapping")
    defaults = data.get("defaults") or {}
    return {name: _pipeline(name, {**defaults, **(body or {})}, path)
            for name, body in data["pipelines"].items()}


def get_pipeline(name: str, path: str | Path | None = None) -> Pipeline:
    """One pipeline by name.

    Raises:
        ConfigError: no such pipeline (the known names are listed).
    """
    pipelines = load_pipelines(path)
    if name not in pipelines:
        raise ConfigError(f"unknown pipeline {name!r}; pipelines: {', '.join(pipelines)}")
    return pipelines[name]


_TYPES: dict[str, type | tuple[type, ...]] = {
    "description": str, "sources": list, "features": str, "family": str, "params": dict,
    "feature_params": dict, "model": str, "predictions": str, "schedule": (str, type(None)),
    "retries": int, "retry_delay_minutes": int,
}


def _pipeline(name: str, body: dict[str, Any], path: Path) -> Pipeline:
    where = f"pipeline {name!r} in {path}"
    unknown = sorted(set(body) - set(_TYPES))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(_TYPES)}")
    missing = [k for k in REQUIRED if not body.get(k)]
    if missing:
        raise ConfigError(f"{where}: {missing[0]!r} is required")
    for key, value in body.items():
        if not isinstance(value, _TYPES[key]) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key}={value!r} has the wrong type")
    if body["family"] not in FAMILY_NAMES:
        raise ConfigError(f"{where}: unknown family {body['family']!r}; "
                          f"families: {', '.join(FAMILY_NAMES)}")
    expected = f"predictions_{body['family']}"
    if body.setdefault("predictions", expected) != expected:
        raise ConfigError(f"{where}: predictions={body['predictions']!r}, but a "
                          f"{body['family']} model writes {expected}")
    body.setdefault("model", name)
    return Pipeline(name=name, **{**body, "sources": tuple(map(str, body["sources"]))})
