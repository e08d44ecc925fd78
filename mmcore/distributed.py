"""PyTorch's own distributed runtime for both trainers: ``torchrun`` env vars in, a few collectives out.

``torchrun --nproc_per_node=N train.py --config ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each. :func:`init` reads them
and joins the process group (``nccl`` when CUDA is available, else ``gloo``); without them (a
plain ``python train.py``) it returns a one-process context and every helper here is a no-op
that returns its input unchanged, so single-process runs take exactly the code path they always
took.

Helpers: :func:`is_rank0`, :func:`barrier`, :func:`rank0_first` (rank 0 does a step that fills a
cache or writes a file, the others follow), :func:`all_gather_cat` (variable-length tensors
concatenated in rank order), :func:`gather_objects`, :func:`broadcast_object`, :func:`sum_floats`,
and :func:`shard_positions` / :func:`gather_rows` (split an evaluation set across ranks and put
the predictions back in their original order).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of processes, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"


def select_device(spec: str = "auto", *, local_rank: int | None = None, cuda_available: bool | None = None,
                  cuda_count: int | None = None) -> torch.device:
    """The device ``train.device`` names: ``auto`` (CUDA when available, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``.

    Under torchrun (``local_rank`` given) ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK``, one GPU per
    process; an explicit ``cuda:N`` is refused there, since every process would take the same GPU.
    ``cuda_available`` and ``cuda_count`` default to what torch sees (tests pass them).
    """
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    count = (torch.cuda.device_count() if available else 0) if cuda_count is None else cuda_count
    spec = spec.strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto" and not available:
        return torch.device("cpu")
    if spec in ("auto", "cuda"):
        index = local_rank or 0
    elif spec.startswith("cuda:") and spec[5:].isdigit():
        if local_rank is not None:
            raise ValueError(f"train.device: {spec!r} under torchrun: use 'auto' or 'cuda' (each process takes "
                             "cuda:LOCAL_RANK)")
        index = int(spec[5:])
    else:
        raise ValueError(f"train.device: {spec!r} is not one of {DEVICE_CHOICES}")
    if not available:
        raise ValueError(f"train.device: {spec!r} but CUDA is not available on this machine (use 'auto' or 'cpu')")
    if index >= count:
        raise ValueError(f"train.device: {spec!r} but this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def init(device: str = "auto", timeout_s: float = 1800.0) -> Context:
    """This process's context: the device ``device`` names (:func:`select_device`) and, under torchrun,
    the process group it describes (idempotent).

    Backend: ``nccl`` when the processes train on CUDA (one GPU each, ``LOCAL_RANK`` picks it), else
    ``gloo`` on the CPU.
    """
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return Context(device=select_device(device))
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {missing} are not: launch with torchrun (see README, multi-process training)")
    rank, world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    chosen = select_device(device, local_rank=local_rank)
    cuda = chosen.type == "cuda"
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(chosen)
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        log.info("process group: rank %d of %d (%s, %s)", rank, world, backend, chosen)
    return Context(rank, world, local_rank, chosen)


def shutdown() -> None:
    """Leave the process group (end of a torchrun process); nothing to do without one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank0() -> bool:
    return not _active() or dist.get_rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


@contextlib.contextmanager
def rank0_first() -> Iterator[None]:
    """Rank 0 runs the block first (it may write a file or a cache), then the other ranks run it."""
    if not is_rank0():
        barrier()
    yield
    if is_rank0():
        barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (same trailing shape, any length along dim 0) concatenated in rank order."""
    if not _active():
        return tensor
    device = _comm_device()
    local = tensor.detach().to(device).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.long, device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)]).to(tensor.device)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in a single process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (decisions taken on rank 0: early stopping, the best epoch)."""
    if not _active():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_floats(*values: float) -> tuple[float, ...]:
    """Each value summed over the ranks (unchanged in a single process)."""
    if not _active():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(total)
    return tuple(float(v) for v in total.cpu())


def shard_positions(n: int, ctx: Context) -> np.ndarray:
    """Rows ``rank, rank + world, ...`` of ``range(n)``: this rank's share of an evaluation set."""
    return np.arange(ctx.rank, n, ctx.world_size)


def gather_rows(positions: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every rank's rows of ``arrays`` (first axis), gathered and put in the order of ``positions``.

    ``positions`` are the rows' places in the whole set (from :func:`shard_positions` or a global
    row id); the result is each array over the whole set, sorted by position, on every rank.
    """
    if not _active():
        order = np.argsort(positions, kind="stable")
        return tuple(np.asarray(a)[order] for a in arrays)
    parts = gather_objects((np.asarray(positions), *map(np.asarray, arrays)))
    all_positions = np.concatenate([p[0] for p in parts])
    if len(np.unique(all_positions)) != len(all_positions):
        raise RuntimeError("gather_rows: two ranks returned the same row (the shards overlap)")
    order = np.argsort(all_positions, kind="stable")
    return tuple(np.concatenate([p[i + 1] for p in parts])[order] for i in range(len(arrays)))


def check_divisible(batch_size: int, ctx: Context, key: str) -> int:
    """The per-rank batch: ``batch_size`` (the global batch) split evenly over the ranks."""
    if batch_size % ctx.world_size:
        raise ValueError(f"{key}={batch_size} is the global batch and must be divisible by the {ctx.world_size} processes")
    return batch_size // ctx.world_size


class NullWriter:
    """Stands in for the TensorBoard ``SummaryWriter`` on ranks other than 0: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None



def wrap_ddp(model: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under torchrun (one device per process); ``model`` itself otherwise."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
