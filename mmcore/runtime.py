"""The process's runtime policy: offline model loading, logging, quiet third-party libraries.

Every command line calls :func:`setup_logging` first. It sets ``HF_HUB_OFFLINE=1`` (no code path
reaches a model hub at run time: every model is a local directory or a bundled package), gives
the other ranks of a torchrun job warnings and errors only, and turns transformers' own info
messages and weight-loading progress bars off unless the level is ``DEBUG``.
"""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def offline() -> None:
    """Never reach a model hub: Hugging Face libraries read local files only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger for a command line (and the offline policy)."""
    offline()
    if os.environ.get("RANK", "0") != "0":  # under torchrun the other ranks report warnings and errors only
        level = "WARNING"
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S")
    if str(level).upper() != "DEBUG":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for name in ("transformers", "huggingface_hub", "urllib3"):
            logging.getLogger(name).setLevel(logging.ERROR)
