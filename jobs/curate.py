"""spark-submit entry point: validate bronze rows and MERGE them into silver tables.

Usage: spark-submit [spark options] jobs/curate.py --help
"""

import sys

from jobs.cli import main

sys.exit(main(["curate", *sys.argv[1:]]))
