"""spark-submit entry point: read raw sources into bronze Delta tables.

Usage: spark-submit [spark options] jobs/ingest.py --help
"""

import sys

from jobs.cli import main

sys.exit(main(["ingest", *sys.argv[1:]]))
