"""Evaluate a checkpoint: ``python evaluate.py --checkpoint RUN_DIR/model.pt --data DATA``."""

import sys

from mmfusion.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
