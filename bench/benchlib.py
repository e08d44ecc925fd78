"""What every bench shares: a description of the machine and the rewrite of its own doc section."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def write_section(doc: Path, heading: str, name: str, section: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``doc``, atomically.

    The file is read right before the rename so concurrent edits of other sections are kept; a
    missing file is created with just this section, a file without the markers gets it appended.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{heading}\n\n{start}\n{section.rstrip()}\n{end}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=doc.parent, prefix=f".{doc.name}.", suffix=".tmp")
    try:
        text = doc.read_text() if doc.exists() else ""
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = f"{head}{start}\n{section.rstrip()}\n{end}{rest.split(end, 1)[1]}"
        else:
            text = (text.rstrip() + "\n\n" if text.strip() else "") + block
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, doc)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
