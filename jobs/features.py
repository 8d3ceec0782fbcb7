"""spark-submit entry point: build gold feature tables from silver.

Usage: spark-submit [spark options] jobs/features.py --help
"""

import sys

from jobs.cli import main

sys.exit(main(["features", *sys.argv[1:]]))
