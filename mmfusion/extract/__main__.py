"""``python -m mmfusion.extract``: see ``mmfusion/extract/cli.py`` (the same as ``mmfusion extract``)."""

import sys

from mmfusion.extract.cli import main

if __name__ == "__main__":
    sys.exit(main())
