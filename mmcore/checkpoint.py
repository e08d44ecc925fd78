"""Training checkpoints for both models: one safetensors file, tensors plus JSON metadata, no pickle.

Layout of a checkpoint file (``best.safetensors`` / ``last.safetensors`` in a run directory):

- tensors under a group prefix: ``model.<state_dict key>``, ``optim.<param index>.<state key>``
  (resume checkpoints), and whatever else a trainer stores (``slgm.*``, ``rng.*``, ``features.*``);
- metadata strings: ``format`` (the trainer's checkpoint kind, e.g. ``mmfusion-checkpoint-v2``),
  ``meta`` (JSON: config, metrics, loop state; ``optim_param_groups`` inside it when the optimizer
  is stored) and ``digest``: the SHA-256 of every tensor's name, dtype, shape and bytes, plus of
  ``format`` and ``meta``, so a flipped byte anywhere in the file is refused on load.

Written atomically (temp file, then rename). :func:`load_checkpoint` never unpickles, checks the
8-byte header length against the file size and :data:`MAX_HEADER_BYTES` before safetensors parses
anything, and reports every failure (absurd header, bad digest, ``meta`` that is not a JSON object
or is nested too deeply) as ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcore.files import write_bytes

MAX_HEADER_BYTES = 100_000_000  # safetensors' own bound on the JSON header


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupted or of another kind (the message names the file)."""


def _check_header_length(path: Path) -> None:
    """Refuse a file too short for the 8-byte header length, or whose header length is absurd."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
    except OSError as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc.strerror or type(exc).__name__})") from None
    if len(prefix) < 8:
        raise CheckpointError(f"{path}: not a readable checkpoint ({size} bytes, too short for the 8-byte header length)")
    length = int.from_bytes(prefix, "little")
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: not a readable checkpoint (header length {length} bytes, over the "
                              f"{MAX_HEADER_BYTES} a checkpoint header may have)")
    if length > size - 8:
        raise CheckpointError(f"{path}: not a readable checkpoint (header length {length} bytes, but the file has "
                              f"{size - 8} after the length: truncated or not a checkpoint)")


@dataclass
class Checkpoint:
    """A decoded checkpoint file: its kind, its tensors by group, and its JSON metadata."""

    kind: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors stored under ``prefix.`` with the prefix removed (e.g. the model's state dict)."""
        head = prefix + "."
        return {key[len(head):]: value for key, value in self.tensors.items() if key.startswith(head)}

    def optimizer_state(self) -> dict[str, Any] | None:
        """The optimizer's ``state_dict`` when the checkpoint stored one (resume checkpoints)."""
        groups = self.meta.get("optim_param_groups")
        if groups is None:
            return None
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in self.group("optim").items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        return {"state": state, "param_groups": groups}


def _digest(tensors: dict[str, torch.Tensor], kind: str, meta_json: str) -> str:
    digest = hashlib.sha256()
    digest.update(kind.encode())
    digest.update(meta_json.encode())
    for key in sorted(tensors):
        value = tensors[key]
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}".encode())
        if value.numel():
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` under ``prefix.``, each copied to a contiguous CPU tensor of its own."""
    return {f"{prefix}.{key}": value.detach().cpu().contiguous().clone() for key, value in tensors.items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as (``optim.*`` tensors, param groups for the metadata)."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    return tensors, state["param_groups"]


def save_checkpoint(path: str | Path, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write ``tensors`` (already prefixed by group) and ``meta`` as one checkpoint file, atomically."""
    from safetensors.torch import save

    tensors = dict(tensors)
    meta = dict(meta)
    if optimizer is not None:
        optim, groups = optimizer_tensors(optimizer)
        tensors.update(optim)
        meta["optim_param_groups"] = groups
    meta_json = json.dumps(meta, default=float)
    metadata = {"format": kind, "meta": meta_json, "digest": _digest(tensors, kind, meta_json)}
    write_bytes(Path(path), save(tensors, metadata=metadata))


def checkpoint_kind(path: str | Path) -> str | None:
    """The ``format`` a checkpoint file declares, or None for a file that is not one (no tensors read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format")
    except (SafetensorError, OSError, ValueError):
        return None


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...]) -> Checkpoint:
    """Read and verify a checkpoint of ``kind``; errors name the file and what is wrong."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    _check_header_length(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            found = metadata.get("format")
            if found not in kinds:
                raise CheckpointError(f"{path}: a {found or 'non'}-checkpoint file, expected {' or '.join(kinds)}")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        meta_json = metadata.get("meta", "")
        digest = _digest(tensors, found, meta_json)
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:  # RuntimeError: torch, on odd tensors
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    if metadata.get("digest") != digest:
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupted or was modified since it was written")
    try:
        meta = json.loads(meta_json)
    except RecursionError:
        raise CheckpointError(f"{path}: metadata is nested too deeply to parse") from None
    except ValueError as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata 'meta' is a JSON {type(meta).__name__}, expected an object")
    return Checkpoint(found, tensors, meta)
