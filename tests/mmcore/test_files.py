"""Atomic writes: the target appears whole with normal permissions, and a failed write leaves the old file."""

import fcntl
import json
import os
import stat
import time
from pathlib import Path

import pytest

from mmcore.files import atomic_write, remove_stale_temps, write_json, write_text


def test_atomic_write_replaces_whole_file_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text(target, "first")
    write_text(target, "second")
    assert target.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp file left behind


def test_failed_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"auc": 0.5})

    def crash(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write('{"auc": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_text() == '{\n  "auc": 0.5\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _stale(path, age_s: float):
    path.write_text("half-written")
    past = time.time() - age_s
    os.utime(path, (past, past))
    return path


def test_stale_temp_files_of_an_interrupted_write_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "metrics.json"
    stale = _stale(tmp_path / ".metrics.json.abcd1234.tmp", 3600)  # left by a writer killed mid-write
    fresh = _stale(tmp_path / ".metrics.json.efgh5678.tmp", 1)  # a concurrent writer's, just made
    locked = _stale(tmp_path / ".metrics.json.ijkl9012.tmp", 3600)  # old, but its (slow) writer still holds it
    others = [_stale(tmp_path / name, 3600) for name in (
        ".metrics.json.x.mnop3456.tmp",  # the temp file of target metrics.json.x
        ".metrics.jsonl.qrst7890.tmp",  # of metrics.jsonl
        ".metrics.json.toolongname.tmp",  # not a mkstemp name
        "metrics.json.abcd1234.tmp",  # no leading dot
    )]
    (tmp_path / ".metrics.json.uvwx1234.tmp").mkdir()  # a directory, not a file: never touched here
    victim = _stale(tmp_path / "victim.txt", 3600)
    (tmp_path / ".metrics.json.link1234.tmp").symlink_to(victim)
    os.utime(tmp_path / ".metrics.json.link1234.tmp", (0, 0), follow_symlinks=False)
    with open(locked, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        write_json(target, {"auc": 0.5})
    assert json.loads(target.read_text()) == {"auc": 0.5}
    assert not stale.exists()
    assert fresh.exists() and locked.exists() and all(p.exists() for p in others)
    assert (tmp_path / ".metrics.json.uvwx1234.tmp").is_dir()
    assert (tmp_path / ".metrics.json.link1234.tmp").is_symlink() and victim.read_text() == "half-written"


def test_a_writer_holds_a_lock_on_its_temp_file_so_no_cleanup_removes_it(tmp_path):
    target = tmp_path / "big.bin"
    seen = []

    def slow_write(tmp: str) -> None:
        past = time.time() - 3600
        Path(tmp).write_bytes(b"part")
        os.utime(tmp, (past, past))  # as if this write had been running for an hour
        with open(tmp, "rb") as other:  # another process's view: the lock is taken
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.extend(remove_stale_temps(tmp_path, target.name))  # a concurrent writer's cleanup
        assert Path(tmp).exists()
        Path(tmp).write_bytes(b"whole")

    atomic_write(target, slow_write)
    assert target.read_bytes() == b"whole" and seen == []
    assert remove_stale_temps(tmp_path / "no-such-directory", "x") == []  # never raises
