"""Build the driver JVM's class-data-sharing archive (``python -m lakehouse.class_archive``).

Set-up runs this module. The archive is dumped by a child process that does a small
run of the work jobs do (a Hive database, a Delta table written, merged, read and its
history, a CSV read, a pandas UDF), so that the classes those need are in it. Which
archive a driver maps, and when, is :mod:`lakehouse.jvm`'s part.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lakehouse.config import Config, load_config
from lakehouse.jvm import archive_path
from lakehouse.session import build_spark, spark_conf

log = logging.getLogger(__name__)

KEEP_ARCHIVES = 3
"""Archives kept in ``spark.class_archive_dir``: one per JVM and class path in use."""


def driver_archive(cfg: Config) -> Path | None:
    """:func:`archive_path` of the driver that :func:`lakehouse.session.spark_conf` sets up."""
    return archive_path(cfg, spark_conf(cfg).get("spark.driver.extraClassPath", ""))


def build_archive(cfg: Config, force: bool = False, timeout: float = 900) -> Path | None:
    """Build the archive for ``cfg``'s driver if it is missing (or ``force``).

    The run happens in a child process with a lakehouse of its own in a temporary
    folder; its JVM writes the archive when it exits, to a temporary name that is then
    renamed, so that a driver never maps a half-written file and two set-ups at once
    do no harm.

    Args:
        cfg: configuration.
        force: rebuild even when the archive exists.
        timeout: seconds the run may take.

    Returns:
        The archive's path, or None when archives are off.

    Raises:
        RuntimeError: the run failed or wrote no archive.
    """
    path = driver_archive(cfg)
    if path is None or (path.is_file() and not force):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lakeforge-jvm-") as tmp:
        partial = path.parent / f".{path.name}.{os.getpid()}.partial"
        env = {**os.environ, "LAKEFORGE_HOME": str(Path(tmp) / "home"),
               "LAKEFORGE_SPARK__MASTER": "local[1]", "LAKEFORGE_SPARK__UI_ENABLED": "false",
               "LAKEFORGE_SPARK__CLASS_ARCHIVE": "false",
               "LAKEFORGE_SPARK__JAVA_OPTIONS":
                   f"-XX:ArchiveClassesAtExit={partial} -Xlog:cds=error"}
        run = subprocess.run([sys.executable, "-m", "lakehouse.class_archive", "--workload", tmp],
                             env=env, capture_output=True, text=True, timeout=timeout,
                             check=False)
        if run.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"building the JVM class archive failed (exit {run.returncode}):"
                               f"\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
        os.replace(partial, path)
    _prune(path.parent, keep=KEEP_ARCHIVES)
    log.info("JVM class archive %s (%.0f MB) built in %.0f s", path,
             path.stat().st_size / 2**20, time.monotonic() - started)
    return path


def _prune(folder: Path, keep: int) -> None:
    """Delete old archives and the partial files that killed builds left.

    The ``keep`` newest archives stay (each is about 200 MB); a partial file stays
    while the process building it is alive.
    """
    archives = sorted(folder.glob("spark-driver-*.jsa"), key=lambda p: p.stat().st_mtime,
                      reverse=True)
    for old in archives[keep:]:
        log.info("removing the older JVM class archive %s", old.name)
        old.unlink(missing_ok=True)
    for partial in folder.glob(".spark-driver-*.partial"):
        pid = partial.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or not _alive(int(pid)):
            log.info("removing %s, left by a build that did not finish", partial.name)
            partial.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's live process
        return True
    return True


def _workload(folder: Path) -> None:
    """What jobs do at start and on small tables, so that their classes are archived."""
    from delta.tables import DeltaTable
    from pyspark import SparkContext

    cfg = load_config()
    spark = build_spark(cfg)
    db = cfg.catalog.database
    csv = folder / "rows.csv"
    csv.write_text("id,v\n" + "".join(f"{i},{i * 0.5}\n" for i in range(100)))
    rows = spark.read.schema("id BIGINT, v DOUBLE").option("header", "true").csv(str(csv))
    rows.write.format("delta").saveAsTable(f"{db}.archive_rows")
    table = DeltaTable.forName(spark, f"{db}.archive_rows")
    (table.alias("t").merge(rows.alias("s"), "t.id = s.id").whenMatchedUpdateAll()
     .whenNotMatchedInsertAll().execute())
    table.history(1).collect()
    spark.sql(f"SELECT id % 3 AS k, count(*) FROM {db}.archive_rows GROUP BY k").collect()
    spark.table(f"{db}.archive_rows").mapInPandas(lambda it: it, rows.schema).count()
    spark.sql(f"SHOW TABLES IN {db}").collect()
    gateway = SparkContext._gateway
    spark.stop()
    # The gateway JVM exits when its stdin closes; it writes the archive as it exits.
    gateway.proc.stdin.close()
    gateway.proc.wait(timeout=600)


def main(argv: list[str] | None = None) -> int:
    """``python -m lakehouse.class_archive``: build the archive of this configuration's driver."""
    parser = argparse.ArgumentParser(prog="python -m lakehouse.class_archive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild an existing archive")
    parser.add_argument("--workload", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[setup] %(message)s")
    if args.workload:
        _workload(args.workload)
        return 0
    cfg = load_config()
    path = driver_archive(cfg)
    if path is None:
        print("[setup] JVM class archive off (spark.class_archive: false, or no java found)")
    elif path.is_file() and not args.force:
        print(f"[setup] JVM class archive up to date ({path.name})")
    else:
        build_archive(cfg, force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
