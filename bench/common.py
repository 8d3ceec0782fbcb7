"""What the benchmark scripts share (run as `python bench/<name>.py`, so importable)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence

from jobs.cli import setup_logging
from lakehouse.config import Config, load_config
from lakehouse.session import build_spark


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``, after one untimed warm-up call."""
    fn()
    return min(timed(fn) for _ in range(max(1, repeats)))


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session(overrides: Sequence[str]) -> tuple[Config, object]:
    """Config (UI off, then ``--set`` overrides) and its SparkSession, with quiet logs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    setup_logging(verbose=False)
    cfg = load_config(["spark.ui_enabled=false", *overrides])
    return cfg, build_spark(cfg)
