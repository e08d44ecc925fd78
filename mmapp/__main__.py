"""``python -m mmapp``: the ``mmfusion`` command (what ``RankingServer(module="mmapp")`` runs)."""

import sys

from mmapp.cli import main

sys.exit(main())
