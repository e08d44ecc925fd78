"""File helpers: atomic writes (temp file beside the target, then rename) and content checksums.

A reader never sees a half-written file and a crash never destroys the previous version. The
temp file gets the permissions a plain ``open(path, "w")`` would (0666 less the umask), not
``mkstemp``'s private 0600.

Stale temp files: a writer killed mid-write leaves its ``.<name>.<8 random chars>.tmp`` beside the
target. The next :func:`atomic_write` to the same target removes such files, but only those that
are (1) regular files matching exactly that pattern for *its own* target name, (2) unmodified for
:data:`STALE_AFTER_S` seconds (mtime) and (3) not locked: every writer holds an exclusive
``flock`` on its temp file until the rename, and the lock dies with its process, so a concurrent
writer's live temp file is never removed, however slow it is. (Where ``fcntl`` is missing, e.g.
Windows, only the age rule applies.) :func:`remove_stale_temps` and :func:`hold_lock` are shared
with ``mmcore.artifact`` for its temp directories.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

STALE_AFTER_S = 60.0
"""A temp file or directory of an interrupted write is removed only when unmodified this long (and unlocked)."""


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def hold_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking ``flock`` on ``fd``: False when another process holds one.

    True without locking where ``fcntl`` is missing. The lock lasts until ``fd`` is closed or its
    process ends (a killed writer's lock is released by the kernel).
    """
    if fcntl is None:  # pragma: no cover - not on POSIX
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def temp_name_pattern(name: str, suffix: str) -> re.Pattern[str]:
    """The names ``tempfile.mkstemp``/``mkdtemp`` give with prefix ``.<name>.`` and ``suffix`` (8 random chars)."""
    return re.compile(re.escape(f".{name}.") + r"[a-z0-9_]{8}" + re.escape(suffix))


def remove_stale_temps(directory: str | Path, name: str, suffix: str = ".tmp", *, dirs: bool = False,
                       min_age: float = STALE_AFTER_S) -> list[Path]:
    """Remove leftovers of interrupted writes of ``name`` in ``directory``; returns what was removed.

    Only entries named ``.<name>.<8 random chars><suffix>``, of the kind asked for (regular files,
    or directories with ``dirs``; never symlinks), unmodified for ``min_age`` seconds and not
    locked by a live writer (:func:`hold_lock`). Errors (a file another cleaner removed first, no
    permission) are ignored: cleaning up never makes a write fail.
    """
    pattern, prefix = temp_name_pattern(name, suffix), f".{name}."
    removed = []
    try:
        with os.scandir(directory) as entries:
            candidates = [entry for entry in entries if entry.name.startswith(prefix) and pattern.fullmatch(entry.name)]
    except OSError:
        return removed
    now = time.time()
    for entry in candidates:
        try:
            info = entry.stat(follow_symlinks=False)
            if not (stat.S_ISDIR(info.st_mode) if dirs else stat.S_ISREG(info.st_mode)):
                continue
            if now - info.st_mtime < min_age:
                continue
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | (getattr(os, "O_DIRECTORY", 0) if dirs else 0)
            fd = os.open(entry.path, flags)
        except OSError:
            continue
        try:
            if not hold_lock(fd):
                continue  # a live writer holds it
            if dirs:
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)``, then rename the temp file to ``path`` (removed on failure).

    Stale temp files of earlier interrupted writes to ``path`` are removed first (module docstring);
    this write's own temp file is locked until the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name, ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if fcntl is None:  # pragma: no cover - no flock: nothing to hold (and an open file cannot be renamed there)
        os.close(fd)
        fd = -1
    try:
        hold_lock(fd)  # a fresh file: nobody else can hold it; marks it live for other cleaners
        write(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    """Indented JSON; numpy scalars and other non-JSON numbers are written as floats."""
    write_text(path, json.dumps(data, indent=2, default=float) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk``-sized blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
