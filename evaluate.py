"""Evaluate a checkpoint: ``python evaluate.py --checkpoint RUN_DIR --data DATA``."""

import sys

from mmapp.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
