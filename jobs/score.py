"""spark-submit entry point: score a table with a stored model into predictions_<family>.

Usage: spark-submit [spark options] jobs/score.py --help
"""

import sys

from jobs.cli import main

sys.exit(main(["score", *sys.argv[1:]]))
