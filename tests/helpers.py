"""Helpers shared by tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lakehouse.config import Config
from lakehouse.datasets import parse_datasets


def with_paths(cfg: Config, **paths: Path | str) -> Config:
    """The config with some catalog entries reading other files (outside any package)."""
    datasets = dict(cfg.datasets)
    for name, path in paths.items():
        entry = datasets[name]
        source = dataclasses.replace(entry.source, files=(str(path),), package="")
        datasets[name] = dataclasses.replace(entry, source=source)
    return dataclasses.replace(cfg, datasets=datasets)


def with_datasets(cfg: Config, entries: dict) -> Config:
    """The config with more catalog entries, given as they would be written in YAML."""
    parsed, problems = parse_datasets(entries)
    assert not problems, problems
    return dataclasses.replace(cfg, datasets={**cfg.datasets, **parsed})


def silver_spec(spark, cfg: Config, dataset: str):
    """The silver table spec of a catalog entry (for tests that write silver rows)."""
    from lakehouse.dataset_check import dataset_tables

    return dataset_tables(spark, cfg.datasets[dataset])[1]
