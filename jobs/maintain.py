"""spark-submit entry point: OPTIMIZE and VACUUM the registry's Delta tables.

Usage: spark-submit [spark options] jobs/maintain.py --help
"""

import sys

from jobs.cli import main

sys.exit(main(["maintain", *sys.argv[1:]]))
