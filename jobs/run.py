"""spark-submit entry point: a whole pipeline (ingest to score) in one application.

One driver and one set of executors for every step, e.g. on a cluster:
``lakeforge submit --master spark://host:7077 --py-files dist/lakeforge.zip run NAME``.

Usage: spark-submit [spark options] jobs/run.py --help
"""

import sys

from jobs.cli import main

sys.exit(main(["run", *sys.argv[1:]]))
