"""The shared checkpoint format: round trip (optimizer state included), integrity, kinds."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from mmcore.checkpoint import CheckpointError, _digest, checkpoint_kind, load_checkpoint, save_checkpoint, with_prefix


def small_run():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        optimizer.step()
    return model, optimizer


def test_round_trip_restores_weights_optimizer_and_metadata(tmp_path):
    model, optimizer = small_run()
    rng = torch.get_rng_state()
    meta = {"epoch": 3, "config": {"lr": 0.01}, "metrics": {"auc": 0.75}}
    tensors = {**with_prefix("model", model.state_dict()), "rng.cpu": rng}
    save_checkpoint(tmp_path / "last.safetensors", "test-v1", tensors, meta, optimizer)
    back = load_checkpoint(tmp_path / "last.safetensors", "test-v1")
    assert back.kind == "test-v1" and checkpoint_kind(tmp_path / "last.safetensors") == "test-v1"
    assert {k: v for k, v in back.meta.items() if k != "optim_param_groups"} == meta
    for key, value in model.state_dict().items():
        assert torch.equal(back.group("model")[key], value)
    assert torch.equal(back.group("rng")["cpu"], rng)
    fresh, fresh_optimizer = small_run()
    fresh_optimizer.load_state_dict(back.optimizer_state())
    original, restored = optimizer.state_dict(), fresh_optimizer.state_dict()
    for index, state in original["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(restored["state"][index][name]), torch.as_tensor(value)), name
    assert restored["param_groups"][0]["lr"] == 0.01 and tuple(restored["param_groups"][0]["betas"]) == (0.8, 0.9)


def test_a_flipped_byte_anywhere_is_refused(tmp_path):
    model, _ = small_run()
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, "test-v1", with_prefix("model", model.state_dict()), {"metrics": {"auc": 0.75}})
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    meta_at = data.index(b"0.75")
    for where in (header + 5, len(data) - 1, meta_at + 2):  # a weight, the last weight byte, the recorded metric
        damaged = bytearray(data)
        damaged[where] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="best.safetensors"):
            load_checkpoint(path, "test-v1")
    path.write_bytes(data)
    assert load_checkpoint(path, "test-v1").meta == {"metrics": {"auc": 0.75}}


def test_wrong_kind_and_non_checkpoints_name_the_file(tmp_path):
    model, _ = small_run()
    save_checkpoint(tmp_path / "a.safetensors", "kind-a", with_prefix("model", model.state_dict()), {})
    with pytest.raises(CheckpointError, match="a.safetensors: a kind-a-checkpoint file, expected kind-b"):
        load_checkpoint(tmp_path / "a.safetensors", "kind-b")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors", "kind-a")
    assert checkpoint_kind(tmp_path / "junk.safetensors") is None
    with pytest.raises(FileNotFoundError, match="missing.safetensors: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.safetensors", "kind-a")


def _rewrite_header(path, change) -> None:
    """Edit the JSON header of a safetensors file in place (the tensor bytes stay as they are)."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length:])


@pytest.mark.parametrize("tamper", [
    "format",  # another kind the loader accepts
    "meta",  # valid JSON, other content
    "digest",  # a well-formed digest, of something else
    "no digest",
    "tensor name",
    "dtype",  # the same bytes read as another dtype
])
def test_the_digest_covers_format_meta_names_and_dtypes(tmp_path, tamper):
    model, _ = small_run()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, "test-v1", with_prefix("model", model.state_dict()), {"metrics": {"auc": 0.75}, "epoch": 3})
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, "test-v1", with_prefix("model", model.state_dict()), {"epoch": 4})

    def change(header):
        metadata = header["__metadata__"]
        if tamper == "format":
            metadata["format"] = "test-v2"
        elif tamper == "meta":
            metadata["meta"] = json.dumps({"metrics": {"auc": 0.99}, "epoch": 3})
        elif tamper == "digest":
            metadata["digest"] = checkpoint_digest(other)
        elif tamper == "no digest":
            del metadata["digest"]
        elif tamper == "tensor name":
            header["model.0.bias.x"] = header.pop("model.0.bias")
        else:
            header["model.0.weight"]["dtype"] = "I32"

    _rewrite_header(path, change)
    with pytest.raises(CheckpointError, match=r"last\.safetensors: checksum mismatch: the file is corrupted or was "
                                              r"modified since it was written"):
        load_checkpoint(path, ("test-v1", "test-v2"))


def checkpoint_digest(path) -> str:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()["digest"]


@pytest.mark.parametrize("data, reason", [
    (b"", r"0 bytes, too short for the 8-byte header length"),
    (b"abc", r"3 bytes, too short for the 8-byte header length"),
    ((5 << 30).to_bytes(8, "little") + b"{}", r"header length 5368709120 bytes, over the 100000000 a checkpoint header may have"),
    (b"\xff" * 8 + b"{}", r"header length 18446744073709551615 bytes, over the 100000000"),
    ((1000).to_bytes(8, "little") + b'{"__metadata__": {}}', r"header length 1000 bytes, but the file has 20 after the "
                                                              r"length: truncated or not a checkpoint"),
    ((4).to_bytes(8, "little") + b"{{{{", r"Error while deserializing header"),
])
def test_absurd_headers_are_checkpoint_errors_naming_the_file(tmp_path, data, reason):
    path = tmp_path / "last.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=rf"last\.safetensors: not a readable checkpoint \({reason}"):
        load_checkpoint(path, "test-v1")


def test_a_truncated_checkpoint_is_a_checkpoint_error(tmp_path):
    model, _ = small_run()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, "test-v1", with_prefix("model", model.state_dict()), {})
    data = path.read_bytes()
    for keep in (4, 12, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:keep])
        with pytest.raises(CheckpointError, match=r"last\.safetensors: not a readable checkpoint"):
            load_checkpoint(path, "test-v1")


@pytest.mark.parametrize("meta_json, message", [
    ("[" * 100_000 + "]" * 100_000, r"metadata is nested too deeply to parse"),
    ("[1, 2]", r"metadata 'meta' is a JSON list, expected an object"),
    ("{" + "9" * 5000, r"metadata is not valid JSON"),
])
def test_odd_meta_with_a_matching_digest_is_a_checkpoint_error(tmp_path, meta_json, message):
    tensors = {"model.w": torch.zeros(2)}
    path = tmp_path / "best.safetensors"
    path.write_bytes(save(tensors, metadata={"format": "test-v1", "meta": meta_json,
                                             "digest": _digest(tensors, "test-v1", meta_json)}))
    with pytest.raises(CheckpointError, match=rf"best\.safetensors: {message}"):
        load_checkpoint(path, "test-v1")
