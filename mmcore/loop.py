"""The training-loop vocabulary both trainers share: helpers, not a framework.

- :class:`RunDir`: the file names of a run directory, the same for both models
  (``best.safetensors``, ``last.safetensors``, ``metrics.json``, ``config.json``, ``tensorboard/``,
  ``run.json``), and the rules for starting a run in one (:meth:`RunDir.start`): a directory that
  already holds a run is refused unless the run is resumed with the same config (a contradicting
  key is named) or ``overwrite`` clears it first; ``run.json`` says whether the run is running,
  stopped (``--stop-after``), interrupted or finished;
- :class:`EarlyStopping`: the best validation value so far and the epochs since it improved;
- :func:`epoch_seed`: the seed of epoch ``e``'s shuffle (and dropout), so a resumed run replays
  the same order;
- :func:`clip_gradients`, :func:`stop_requested` (``--stop-after N``).

The checkpoint format is :mod:`mmcore.checkpoint`; DDP wrapping and the device are
:mod:`mmcore.distributed`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mmcore import distributed
from mmcore.files import write_json


class RunDirError(ValueError):
    """A run directory cannot be used as asked (it holds another run, or the resume contradicts it)."""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


# keys a resumed run may change: more epochs extend a finished or stopped run
RESUMABLE_CHANGES = frozenset({"train.epochs"})


def first_difference(stored: dict, given: dict, ignore: frozenset[str] = frozenset()) -> tuple[str, Any, Any] | None:
    """The first dotted key (sorted) whose value differs between two nested mappings, or None."""
    a, b = _flatten(stored), _flatten(given)
    for key in sorted((set(a) | set(b)) - ignore):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            return key, a.get(key, "<unset>"), b.get(key, "<unset>")
    return None


@dataclass(frozen=True)
class RunDir:
    """Where a training run writes: one directory, the same names for both trainers."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def best(self) -> Path:
        """The best checkpoint (by the validation key), what evaluation and export read."""
        return self.path / "best.safetensors"

    @property
    def last(self) -> Path:
        """The latest checkpoint, with the optimizer and loop state, what ``--resume`` reads."""
        return self.path / "last.safetensors"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def state(self) -> Path:
        """``run.json``: the run's config and status (running, stopped, interrupted, finished)."""
        return self.path / "run.json"

    def predictions(self, split: str) -> Path:
        return self.path / f"predictions_{split}.csv"

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    RESULTS = ("best.safetensors", "last.safetensors", "metrics.json", "run.json", "tensorboard")

    def read_state(self) -> dict | None:
        """``run.json`` as written by :meth:`start` (None when there is none)."""
        if not self.state.is_file():
            return None
        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{self.state}: not readable ({exc}); pass --overwrite to start the run afresh") from None
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise RunDirError(f"{self.state}: not a run state file (expected status and config)")
        if state.get("status") == "running" and not _alive(state.get("pid")):
            state["status"] = "interrupted"  # its process is gone (killed) without saying so
        return state

    def start(self, config: dict, *, resume: bool = False, overwrite: bool = False) -> "RunDir":
        """Claim the directory for a run of ``config`` (the experiment as plain data).

        - ``resume``: the directory must hold this run's ``last.safetensors``, and ``config`` must
          equal the stored one (the first contradicting key is named);
        - otherwise a directory that holds a run (checkpoints, metrics, TensorBoard events) is
          refused, unless ``overwrite``, which removes that run first, so that ``metrics.json`` and
          the TensorBoard hparams always describe the checkpoints beside them.
        """
        if resume and overwrite:
            raise RunDirError(f"{self.path}: --resume and --overwrite contradict each other: choose one")
        state = self.read_state()
        if resume:
            if not self.last.is_file():
                raise FileNotFoundError(f"{self.last}: nothing to resume (no resume checkpoint in {self.path})")
            if state is not None and (diff := first_difference(state["config"], config, RESUMABLE_CHANGES)) is not None:
                key, old, new = diff
                raise RunDirError(f"{self.path}: --resume with {key}={new!r}, but the run was started with "
                                  f"{key}={old!r}; resume with the run's own config (leave out --config), or train "
                                  "into another --out")
            if state is not None:  # a run without run.json (written before it existed) resumes unrecorded
                self._write_state("running", config, started=state.get("started"))
            return self
        if self.holds_a_run():
            if not overwrite:
                status = (state or {}).get("status", "unfinished")
                raise RunDirError(f"{self.path}: holds a{'n' if status[0] in 'aeiou' else ''} {status} run; pass "
                                  "--overwrite to replace it or --resume to continue it, or choose another --out")
            self.clear()
        self.create()
        self._write_state("running", config)
        return self

    def holds_a_run(self) -> bool:
        return self.path.is_dir() and any((self.path / name).exists() for name in self.RESULTS)

    def clear(self) -> None:
        """Remove a previous run's files (checkpoints, metrics, predictions, TensorBoard, run.json)."""
        for name in self.RESULTS:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for pattern in ("predictions_*.csv", "metrics_*.json", "config.json"):
            for target in self.path.glob(pattern):
                target.unlink()

    def mark(self, status: Literal["stopped", "interrupted", "finished"]) -> None:
        """Record how this invocation ended."""
        state = self.read_state()
        if state is not None:
            self._write_state(status, state["config"], started=state.get("started"))

    def _write_state(self, status: str, config: dict, started: str | None = None) -> None:
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        write_json(self.state, {"status": status, "started": started or now, "updated": now,
                                "pid": os.getpid(), "config": config})


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file as given, or a run directory's best checkpoint (what evaluation and export read)."""
    path = Path(path)
    return RunDir(path).best if path.is_dir() else path


def claim_run_dir(path: str | Path, config: dict, *, resume: bool, overwrite: bool) -> RunDir:
    """:meth:`RunDir.start` on rank 0, its refusal (if any) raised on every rank of a torchrun job."""
    run, problem = RunDir(path), None
    if distributed.is_rank0():
        try:
            run.start(config, resume=resume, overwrite=overwrite)
        except (RunDirError, FileNotFoundError) as exc:
            problem = exc
    problem = distributed.broadcast_object(problem)
    if problem is not None:
        raise problem
    distributed.barrier()  # the others see the directory only once rank 0 has claimed it
    return run


def mark_run(run: RunDir, status: Literal["stopped", "interrupted", "finished"]) -> None:
    """:meth:`RunDir.mark` on rank 0 only."""
    if distributed.is_rank0():
        run.mark(status)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_metrics(metrics: dict[str, float | int | None]) -> str:
    """One line of metrics to 4 decimals, e.g. ``auc=0.7852  logloss=0.4012  gauc=n/a`` (None is n/a)."""
    return "  ".join(f"{k}={'n/a' if v is None else f'{v:.4f}' if isinstance(v, float) else v}" for k, v in metrics.items())


def improves(new: float | None, best: float | None, mode: Literal["min", "max"]) -> bool:
    """Whether ``new`` is better than ``best`` (``None`` or NaN never improves; anything beats no best)."""
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if best is None:
        return True
    return new < best if mode == "min" else new > best


@dataclass
class EarlyStopping:
    """Best validation value so far and how many epochs have passed without improvement."""

    key: str
    patience: int
    mode: Literal["min", "max"] = "max"
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def step(self, value: float | None, epoch: int) -> bool:
        """Record an epoch; True when it is the new best."""
        if improves(value, self.best, self.mode):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def epoch_seed(seed: int, epoch: int, stride: int) -> int:
    """The seed of epoch ``epoch``'s shuffle: ``seed * stride + epoch``.

    Each trainer keeps the stride its published figures were made with (sentiment 100,003 over
    1-based epochs, ranking 1,000 over 0-based epochs), so those figures reproduce bit for bit.
    """
    return seed * stride + epoch


def clip_gradients(model: torch.nn.Module, max_norm: float | None) -> None:
    """Clip the global gradient norm to ``max_norm`` (no-op for None or 0)."""
    if max_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def stop_requested(epochs_run: int, stop_after: int | None, epoch: int, last_epoch: int) -> bool:
    """``--stop-after N``: this invocation has run its N epochs and the run is not finished."""
    return stop_after is not None and epochs_run >= stop_after and epoch < last_epoch
