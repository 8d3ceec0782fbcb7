"""spark-submit entry point: train a model family with Horovod ranks on a pinned gold table version.

Usage: spark-submit [spark options] jobs/train.py --help
"""

import sys

from jobs.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
