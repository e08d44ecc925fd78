"""Train a model from a YAML config: ``python train.py --config configs/<name>.yaml [--out RUN_DIR] [--set KEY=VALUE]``."""

import sys

from mmapp.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
