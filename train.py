"""Train a model from a YAML config: ``python train.py --config configs/<name>.yaml [--out RUN_DIR]``."""

import sys

from mmfusion.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
