"""bench-lake: the same ingest, curate, features, training and scoring, lake local and on S3.

Each lake gets a fresh home and one driver process (one SparkSession: the JVM's start
is not timed); the S3 lake is on the local S3 server (S3Proxy, `lakeforge lake-server`),
so the ratio is the cost of going through S3A and an S3 API rather than a local disk:
requests per commit, listings, and many small files; for training, the ranks reading
gold and writing checkpoints and the artifact through s3fs; for scoring, the executors
fetching the model. Run with `make bench-lake` (`ARGS="--dataset flights --epochs 3"`);
the data set must be tabular (the MLP trains on it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import free_port
from pyarrow import fs

from lakehouse import objectstore
from lakehouse.config import load_config
from lakehouse.render import format_table

STEPS = """
import json, sys, time
from lakehouse.config import load_config
from lakehouse.curate import curate
from lakehouse.featuresets import build_features
from lakehouse.ingest import ingest
from lakehouse.session import build_spark
from models.runner import train
from models.scoring import score

name, epochs = sys.argv[1], int(sys.argv[2])
cfg = load_config()
spark = build_spark(cfg)
gold = {}

def features():
    gold["rows"] = build_features(spark, cfg, name).rows
    return gold["rows"]

def train_mlp():
    train(spark, cfg, "mlp", name, params={"epochs": epochs})
    return gold["rows"]

steps = {"ingest": lambda: ingest(spark, cfg, [name], "b1")[0].read,
         "curate": lambda: curate(spark, cfg, [name])[0].valid,
         "features": features, "train mlp": train_mlp,
         "score mlp": lambda: score(spark, cfg, "mlp", f"{name}_mlp").rows}
seconds = {}
for step, run in steps.items():
    start = time.perf_counter()
    rows = run()
    seconds[step] = (time.perf_counter() - start, rows)
print("RESULT " + json.dumps(seconds))
"""


def _env(home: Path) -> dict[str, str]:
    """A driver of its own on two local cores, its home (and so its metastore) fresh."""
    return {**os.environ, "LAKEFORGE_HOME": str(home), "LAKEFORGE_SPARK__MASTER": "local[2]",
            "LAKEFORGE_SPARK__UI_ENABLED": "false"}



def _run(env: dict[str, str], dataset: str, epochs: int) -> dict[str, list[float]]:
    done = subprocess.run([sys.executable, "-c", STEPS, dataset, str(epochs)], env=env, text=True,
                          capture_output=True, check=False)
    if done.returncode:
        sys.exit(f"the steps failed:\n{done.stderr[-4000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    """Run the steps on both lakes and print seconds, rows/s and the S3/local ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="flights", help="a tabular catalog entry (flights)")
    parser.add_argument("--epochs", type=int, default=3, help="MLP training epochs (3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lake-") as work:
        root = Path(work)
        s3 = load_config([f"home={root / 's3'}", f"lake.server.port={free_port()}"])
        objectstore.start(s3)
        try:
            local = _run(_env(root / "local"), args.dataset, args.epochs)
            remote = _run({**_env(root / "remote"),
                           **objectstore.environment(s3, "bench")}, args.dataset, args.epochs)
            objects = [i for i in objectstore.filesystem(s3).get_file_info(
                fs.FileSelector(f"{s3.lake.server.bucket}/bench", recursive=True))
                if i.type == fs.FileType.File]
        finally:
            objectstore.stop(s3)
    rows = []
    for step, (seconds, count) in local.items():
        s3_seconds = remote[step][0]
        rows.append((step, f"{count:,}", f"{seconds:.1f}", f"{s3_seconds:.1f}",
                     f"{count / seconds:,.0f}", f"{count / s3_seconds:,.0f}",
                     f"{s3_seconds / seconds:.2f}"))
    print(format_table(["step", "rows", "local s", "s3 s", "local rows/s", "s3 rows/s",
                        "s3 / local"], rows))
    logs = sum(1 for o in objects if "/_delta_log/" in o.path)
    print("(train: gold rows; its time is the Horovod job, two ranks)")
    print(f"\nthe S3 lake holds {len(objects)} objects ({sum(o.size for o in objects):,} "
          f"bytes), {logs} of them Delta log files; each commit writes one log file with a "
          f"conditional PUT after listing _delta_log")


if __name__ == "__main__":
    main()
