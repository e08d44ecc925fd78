"""The process's runtime policy: offline model loading, logging, quiet third-party libraries.

Every command line calls :func:`setup_logging` first. It sets ``HF_HUB_OFFLINE=1`` (no code path
reaches a model hub at run time: every model is a local directory or a bundled package), gives
the other ranks of a torchrun job warnings and errors only, and turns transformers' own info
messages and weight-loading progress bars off unless the level is ``DEBUG``.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Callable

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
        for name in ("transformers", "huggingface_hub", "urllib3", "faiss"):  # faiss.loader: its CPU-feature probing
            logging.getLogger(name).setLevel(logging.ERROR)


USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError)  # config, data and path mistakes


def command_main(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                 run: Callable[[argparse.Namespace], int], argv: list[str] | None = None,
                 log_level: str = "INFO") -> int:
    """A module's own command line (``python -m PACKAGE.MODULE``): its options plus ``--log-level``;
    a user mistake is one logged error line and exit code 2 (the ``mmfusion`` command does the same)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    parser.add_argument("--log-level", default=log_level, type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), help="DEBUG adds third-party messages")
    parser.set_defaults(prog=prog)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return run(args)
    except USER_ERRORS as exc:
        logging.getLogger(prog.split()[-1]).error("%s", exc)
        return 2
