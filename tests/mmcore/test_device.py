"""Device selection (``train.device``), tested on the CPU by stating what CUDA the machine has."""

from __future__ import annotations

import pytest
import torch

from mmcore.distributed import Context, init, select_device


@pytest.mark.parametrize("spec, available, count, local_rank, expected", [
    ("auto", False, 0, None, "cpu"),
    ("auto", True, 2, None, "cuda:0"),
    ("cpu", True, 2, None, "cpu"),
    ("cuda", True, 1, None, "cuda:0"),
    ("cuda:1", True, 2, None, "cuda:1"),
    ("CUDA:1", True, 2, None, "cuda:1"),
    ("auto", True, 4, 3, "cuda:3"),  # torchrun: one GPU per process, LOCAL_RANK picks it
    ("cuda", True, 4, 2, "cuda:2"),
    ("auto", False, 0, 1, "cpu"),  # torchrun on CPUs (gloo)
])
def test_selection(spec, available, count, local_rank, expected):
    chosen = select_device(spec, local_rank=local_rank, cuda_available=available, cuda_count=count)
    assert chosen == torch.device(expected)


@pytest.mark.parametrize("spec, available, count, local_rank, message", [
    ("cuda", False, 0, None, "'cuda' but CUDA is not available on this machine"),
    ("cuda:2", True, 2, None, "'cuda:2' but this machine has 2 CUDA device(s)"),
    ("gpu", True, 1, None, "'gpu' is not one of auto | cpu | cuda | cuda:N"),
    ("cuda:x", True, 1, None, "is not one of"),
    ("cuda:0", True, 2, 1, "under torchrun: use 'auto' or 'cuda'"),
    ("auto", True, 2, 3, "'auto' but this machine has 2 CUDA device(s)"),
])
def test_bad_choices_are_refused_with_the_reason(spec, available, count, local_rank, message):
    with pytest.raises(ValueError) as err:
        select_device(spec, local_rank=local_rank, cuda_available=available, cuda_count=count)
    assert message in str(err.value) and "train.device" in str(err.value)


def test_one_process_context_follows_the_choice(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init("cpu") == Context(device=torch.device("cpu"))
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert init("auto").device == expected  # one process picks CUDA when present (it used to stay on the CPU)
