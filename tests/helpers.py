"""Helpers shared by tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lakehouse.config import Config


def with_paths(cfg: Config, **paths: Path | str) -> Config:
    """The config with some sources pointed at other files."""
    merged = {**cfg.sources.paths, **{k: str(v) for k, v in paths.items()}}
    return dataclasses.replace(cfg, sources=dataclasses.replace(cfg.sources, paths=merged))
