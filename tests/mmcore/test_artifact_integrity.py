"""Artifact integrity: the manifest's own digest, the optional HMAC signature, bounded manifests, stale temp directories."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import time
from pathlib import Path

import pytest

from mmcore.artifact import (
    MANIFEST,
    MANIFEST_DIGEST,
    MANIFEST_SIGNATURE,
    MAX_MANIFEST_BYTES,
    SIGNING_KEY_ENV,
    SIGNING_KEY_FILE_ENV,
    ArtifactError,
    SigningKeyError,
    canonical_manifest_bytes,
    read_manifest,
    signing_key,
    write_artifact,
)

FORMAT = "test-artifact-v1"
FILES = {"config.json": b'{"width": 4}\n', "weights.bin": bytes(range(64))}
REQUIRED = tuple(FILES)
KEY = "k3y-for-tests-0123456789abcdef"


@pytest.fixture(autouse=True)
def no_signing_key_in_the_environment(monkeypatch):
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv(SIGNING_KEY_FILE_ENV, raising=False)


def make(tmp_path: Path, **kwargs) -> Path:
    return write_artifact(tmp_path / "art", FILES, {"format": FORMAT, "metrics": {"auc": 0.75}}, **kwargs)


def manifest_of(artifact: Path) -> dict:
    return json.loads((artifact / MANIFEST).read_text())


def rewrite(artifact: Path, manifest: dict) -> None:
    (artifact / MANIFEST).write_text(json.dumps(manifest, indent=1))


def forge(artifact: Path, name: str, data: bytes, *, redigest: bool = True) -> None:
    """What an attacker without the key can do: replace a file, its listed hash and size, and the self-digest."""
    (artifact / name).write_bytes(data)
    manifest = manifest_of(artifact)
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if redigest:
        manifest[MANIFEST_DIGEST] = hashlib.sha256(canonical_manifest_bytes(manifest)).hexdigest()
    rewrite(artifact, manifest)


# --------------------------------------------------------------------------------------------
# the manifest covers itself
# --------------------------------------------------------------------------------------------


def test_manifest_records_the_digest_of_its_canonical_content(tmp_path):
    artifact = make(tmp_path)
    manifest = manifest_of(artifact)
    body = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert manifest[MANIFEST_DIGEST] == hashlib.sha256(canonical).hexdigest()
    assert MANIFEST_SIGNATURE not in manifest  # no key configured: unsigned
    assert sorted(p.name for p in artifact.iterdir()) == sorted([*FILES, MANIFEST])  # no sidecar file
    assert read_manifest(artifact, FORMAT, REQUIRED) == manifest


def test_a_flipped_byte_in_a_recorded_metric_is_refused_naming_the_manifest(tmp_path):
    artifact = make(tmp_path)
    data = bytearray((artifact / MANIFEST).read_bytes())
    data[data.index(b"0.75") + 3] ^= 0x01  # 0.75 -> 0.74: still valid JSON, every file still matches
    (artifact / MANIFEST).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: content does not match its manifest_sha256 \(recorded "
                                            r"[0-9a-f]{16}\.\.\., computed [0-9a-f]{16}\.\.\.\): the manifest is "
                                            r"corrupted or was modified"):
        read_manifest(artifact, FORMAT, REQUIRED)


def test_every_single_bit_flip_in_the_manifest_is_refused(tmp_path):
    artifact = make(tmp_path)
    original = (artifact / MANIFEST).read_bytes()
    for where in range(len(original)):
        damaged = bytearray(original)
        damaged[where] ^= 0x01
        (artifact / MANIFEST).write_bytes(bytes(damaged))
        with pytest.raises(ArtifactError, match=MANIFEST):
            read_manifest(artifact, FORMAT, REQUIRED)
    (artifact / MANIFEST).write_bytes(original)
    read_manifest(artifact, FORMAT, REQUIRED)


def test_an_edited_manifest_and_one_without_its_digest_are_refused(tmp_path):
    artifact = make(tmp_path)
    manifest = manifest_of(artifact)
    rewrite(artifact, {**manifest, "metrics": {"auc": 0.99}})
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: content does not match its manifest_sha256"):
        read_manifest(artifact, FORMAT, REQUIRED)
    rewrite(artifact, {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST})
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: no manifest_sha256 field, so its own content cannot be "
                                            r"verified \(exported before manifests covered themselves, or edited\): "
                                            r"re-export the artifact"):
        read_manifest(artifact, FORMAT, REQUIRED)
    rewrite(artifact, {**manifest, MANIFEST_DIGEST: 12345})
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: content does not match"):
        read_manifest(artifact, FORMAT, REQUIRED)


def test_a_replaced_file_with_a_rewritten_hash_is_refused_unless_the_digest_is_rewritten_too(tmp_path):
    artifact = make(tmp_path)
    forge(artifact, "weights.bin", b"evil weights", redigest=False)
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: content does not match its manifest_sha256"):
        read_manifest(artifact, FORMAT, REQUIRED)
    forge(artifact, "weights.bin", b"evil weights")
    # the documented limit of an unkeyed digest: whoever can rewrite the whole manifest can recompute it
    assert read_manifest(artifact, FORMAT, REQUIRED)["files"]["weights.bin"]["bytes"] == 12


# --------------------------------------------------------------------------------------------
# the optional signing key
# --------------------------------------------------------------------------------------------


def test_a_signed_artifact_verifies_with_its_key(tmp_path):
    artifact = make(tmp_path, key=KEY)
    manifest = manifest_of(artifact)
    expected = hmac.new(KEY.encode(), canonical_manifest_bytes(manifest), hashlib.sha256).hexdigest()
    assert manifest[MANIFEST_SIGNATURE] == expected
    assert read_manifest(artifact, FORMAT, REQUIRED, key=KEY) == manifest
    assert read_manifest(artifact, FORMAT, REQUIRED, key=KEY.encode()) == manifest
    assert read_manifest(artifact, FORMAT, REQUIRED) == manifest  # no key at load: the signature is not checked


def test_with_a_key_a_forged_artifact_is_refused(tmp_path):
    artifact = make(tmp_path, key=KEY)
    forge(artifact, "weights.bin", b"evil weights")  # file, listed hash and self-digest all consistent
    read_manifest(artifact, FORMAT, REQUIRED)  # passes without a key: what the signature is for
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: manifest_hmac_sha256 does not verify with the signing key "
                                            r"from the key= argument: the manifest was modified or signed with another key"):
        read_manifest(artifact, FORMAT, REQUIRED, key=KEY)


def test_with_a_key_an_unsigned_artifact_is_refused(tmp_path):
    artifact = make(tmp_path)
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: not signed \(no manifest_hmac_sha256 field\), but a signing "
                                            r"key is configured \(the key= argument\): refused; export the artifact "
                                            r"with that key"):
        read_manifest(artifact, FORMAT, REQUIRED, key=KEY)


def test_a_wrong_key_or_a_mangled_signature_is_refused(tmp_path):
    artifact = make(tmp_path, key=KEY)
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: manifest_hmac_sha256 does not verify") as refused:
        read_manifest(artifact, FORMAT, REQUIRED, key="another-key-0123456789abcdef")
    assert KEY not in str(refused.value) and "another-key" not in str(refused.value)  # never the key itself
    manifest = manifest_of(artifact)
    for signature in (42, None, "é" * 64, manifest[MANIFEST_SIGNATURE].upper()):
        damaged = {**manifest, MANIFEST_SIGNATURE: signature}
        if signature is None:
            del damaged[MANIFEST_SIGNATURE]
        rewrite(artifact, damaged)
        with pytest.raises(ArtifactError, match=MANIFEST):
            read_manifest(artifact, FORMAT, REQUIRED, key=KEY)


def test_the_key_comes_from_the_environment_or_a_key_file(tmp_path, monkeypatch):
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    artifact = make(tmp_path)
    assert MANIFEST_SIGNATURE in manifest_of(artifact)
    read_manifest(artifact, FORMAT, REQUIRED)
    read_manifest(artifact, FORMAT, REQUIRED, key=KEY)  # the same key, given explicitly
    monkeypatch.setenv(SIGNING_KEY_ENV, "not-the-key-0123456789abcdef")
    with pytest.raises(ArtifactError, match=rf"does not verify with the signing key from {SIGNING_KEY_ENV}:"):
        read_manifest(artifact, FORMAT, REQUIRED)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    key_file = tmp_path / "signing.key"
    key_file.write_text(KEY + "\n")  # `echo KEY > file`: surrounding whitespace is not part of the key
    monkeypatch.setenv(SIGNING_KEY_FILE_ENV, str(key_file))
    read_manifest(artifact, FORMAT, REQUIRED)
    key_file.write_text("not-the-key-0123456789abcdef\n")
    with pytest.raises(ArtifactError, match=rf"does not verify with the signing key from {SIGNING_KEY_FILE_ENV} "
                                            rf"\({key_file}\)"):
        read_manifest(artifact, FORMAT, REQUIRED)
    also_signed = write_artifact(tmp_path / "also", FILES, {"format": FORMAT}, key=None)
    assert MANIFEST_SIGNATURE in manifest_of(also_signed)  # key=None means "the environment's key"


@pytest.mark.parametrize("env, message", [
    ({SIGNING_KEY_ENV: ""}, f"{SIGNING_KEY_ENV} is set but empty: unset it to work without a signing key, or set the key"),
    ({SIGNING_KEY_ENV: KEY, SIGNING_KEY_FILE_ENV: "/some/file"},
     f"both {SIGNING_KEY_ENV} and {SIGNING_KEY_FILE_ENV} are set: set only one"),
    ({SIGNING_KEY_FILE_ENV: ""}, f"{SIGNING_KEY_FILE_ENV} is set but empty: unset it, or set it to the key file's path"),
    ({SIGNING_KEY_FILE_ENV: "{tmp}/missing.key"},
     f"{{tmp}}/missing.key: cannot read the signing key file named by {SIGNING_KEY_FILE_ENV} (No such file or directory)"),
    ({SIGNING_KEY_FILE_ENV: "{tmp}/empty.key"}, f"{{tmp}}/empty.key: the signing key file named by {SIGNING_KEY_FILE_ENV} is empty"),
])
def test_an_unusable_key_configuration_fails_closed_for_export_and_load(tmp_path, monkeypatch, env, message):
    artifact = make(tmp_path)
    (tmp_path / "empty.key").write_text("\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("{tmp}", str(tmp_path)))
    message = message.replace("{tmp}", str(tmp_path))
    with pytest.raises(SigningKeyError) as at_load:
        read_manifest(artifact, FORMAT, REQUIRED)
    assert str(at_load.value) == message
    with pytest.raises(SigningKeyError) as at_export:
        write_artifact(tmp_path / "other", FILES, {"format": FORMAT})
    assert str(at_export.value) == message
    assert not (tmp_path / "other").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".other.")]


def test_the_key_is_never_shown(tmp_path):
    key = signing_key(KEY)
    assert KEY not in repr(key) and key.source == "the key= argument"
    with pytest.raises(SigningKeyError, match="the key= argument is empty"):
        signing_key(b"")
    assert signing_key(None, environ={}) is None


# --------------------------------------------------------------------------------------------
# bounded manifests
# --------------------------------------------------------------------------------------------


def test_a_huge_manifest_is_refused_unparsed(tmp_path):
    artifact = make(tmp_path)
    manifest = manifest_of(artifact)
    manifest["padding"] = "x" * MAX_MANIFEST_BYTES
    rewrite(artifact, manifest)
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: larger than 1048576 bytes, the most a manifest may have: "
                                            r"refused unparsed \(not an artifact manifest\)"):
        read_manifest(artifact, FORMAT, REQUIRED)


@pytest.mark.parametrize("text", [
    "[" * 200_000 + "]" * 200_000,  # json.loads itself would raise RecursionError
    '{"format": "test-artifact-v1", "metrics": ' + "[" * 40 + "]" * 40 + "}",  # parses, but deeper than any manifest
])
def test_a_deeply_nested_manifest_is_refused_naming_the_file(tmp_path, text):
    artifact = make(tmp_path)
    (artifact / MANIFEST).write_text(text)
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: JSON nested more than 32 levels deep, the most a manifest "
                                            r"may have: not an artifact manifest"):
        read_manifest(artifact, FORMAT, REQUIRED)


def test_oversized_integers_and_bad_entries_are_artifact_errors(tmp_path):
    artifact = make(tmp_path)
    (artifact / MANIFEST).write_text('{"format": ' + "9" * 5000 + "}")
    with pytest.raises(ArtifactError, match=rf"{MANIFEST}: not valid JSON"):
        read_manifest(artifact, FORMAT, REQUIRED)
    manifest = manifest_of(make(tmp_path / "b"))
    for bad in ("a\x00b", "", MANIFEST, "../x"):
        rewrite(tmp_path / "b" / "art", {**manifest, "files": {**manifest["files"], bad: {"sha256": "0", "bytes": 0}}})
        with pytest.raises(ArtifactError, match=rf"{MANIFEST}: bad entry for"):
            read_manifest(tmp_path / "b" / "art", FORMAT, REQUIRED)


# --------------------------------------------------------------------------------------------
# temp directories of an interrupted write_artifact
# --------------------------------------------------------------------------------------------


def _leftover(parent: Path, name: str, age_s: float) -> Path:
    path = parent / name
    path.mkdir()
    (path / "weights.bin").write_bytes(b"half")
    past = time.time() - age_s
    os.utime(path, (past, past))
    return path


def test_stale_temp_directories_are_removed_by_the_next_write(tmp_path):
    stale_tmp = _leftover(tmp_path, ".art.abcd1234.tmp", 3600)
    stale_old = _leftover(tmp_path, ".art.efgh5678.old", 3600)
    fresh = _leftover(tmp_path, ".art.ijkl9012.tmp", 1)  # a concurrent writer's, just made
    locked = _leftover(tmp_path, ".art.mnop3456.tmp", 3600)  # an old one a live writer still holds
    others = [_leftover(tmp_path, ".art.b.qrst7890.tmp", 3600), _leftover(tmp_path, ".arty.uvwx1234.tmp", 3600),
              _leftover(tmp_path, ".art.toolongname.tmp", 3600)]  # other targets' names, or not mkdtemp's
    fd = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        make(tmp_path)
    finally:
        os.close(fd)
    assert not stale_tmp.exists() and not stale_old.exists()
    assert fresh.is_dir() and locked.is_dir() and all(p.is_dir() for p in others)
    read_manifest(tmp_path / "art", FORMAT, REQUIRED)


def test_a_stale_old_directory_is_kept_until_the_new_artifact_is_in_place(tmp_path, monkeypatch):
    stale_old = _leftover(tmp_path, ".art.efgh5678.old", 3600)  # may hold the only copy of an interrupted swap

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("mmcore.artifact.seal_manifest", crash)
    with pytest.raises(OSError, match="disk full"):
        make(tmp_path)
    assert stale_old.is_dir() and not (tmp_path / "art").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.efgh5678.old"]  # the failed write's temp is gone
