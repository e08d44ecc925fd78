"""``python -m xdeepfm export|serve`` (see ``xdeepfm.cli``)."""

from xdeepfm.cli import main

raise SystemExit(main())
