"""What every bench shares: a description of the machine and the rewrite of its own doc section."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mmcore.files import write_text  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    try:
        run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()  # noqa: E731
        rev, dirty = run("rev-parse", "--short", "HEAD"), run("status", "--porcelain")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{rev} (with uncommitted changes in the work tree)" if dirty else rev


def setup(threads: int, level: int = logging.INFO, quiet: tuple[str, ...] = ()) -> None:
    """What every bench does first: log with timestamps (``quiet`` loggers at WARNING), never reach a
    model hub, and fix torch's intra-op threads for the whole run."""
    import torch

    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def write_section(doc: Path, heading: str, name: str, section: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``doc``, atomically.

    A missing file is created with just this section; a file without the markers gets it appended.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{section.rstrip()}\n{end}{rest.split(end, 1)[1]}"
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + f"{heading}\n\n{start}\n{section.rstrip()}\n{end}\n"
    write_text(doc, text)


def run_wrk(url: str, script: Path, connections: int, duration: float, timeout: str = "60s") -> dict:
    """``wrk -t1`` on ``url/v1/rank`` with a Lua ``script`` whose ``done`` prints one ``WRKJSON {...}`` line;
    returns that object plus ``command`` (the wrk command line, with the script and port generalised)."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:.0f}s", "--timeout", timeout, "-s", str(script),
               f"{url}/v1/rank"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    match = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    result = json.loads(match.group(1))
    result["command"] = shlex.join(command[:-3] + ["-s", "rank.lua", "http://127.0.0.1:PORT/v1/rank"])
    return result
