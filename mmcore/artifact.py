"""Artifact directories: a self-contained directory per trained model, verified file by file on load.

An artifact directory holds JSON (configs, statistics, vocabularies), weights as safetensors and
``manifest.json``: the format name, when and from what it was exported, the library versions,
the training metrics and the SHA-256 and size of every other file. ``write_artifact`` builds the
directory under a temp name beside the target and renames it into place, so a reader never sees
half an artifact; ``read_manifest`` refuses a missing, truncated or modified file with a message
that names it. Nothing in an artifact is pickled, and loading one never calls ``torch.load``.

The manifest covers itself: ``manifest_sha256`` is the SHA-256 of its canonical form
(:func:`canonical_manifest_bytes`: the parsed manifest without ``manifest_sha256`` and
``manifest_hmac_sha256``, as JSON with sorted keys, no spaces, ASCII only), so a flipped byte in a
recorded metric is refused too. With a signing key (``key=``, else the environment variable
``MMFUSION_SIGNING_KEY`` holding the key, else ``MMFUSION_SIGNING_KEY_FILE`` naming a file that
holds it, surrounding whitespace stripped), ``manifest_hmac_sha256`` is the HMAC-SHA256 of the
same canonical bytes; with a key configured at load, that signature is required and must verify,
so an artifact rewritten by someone without the key (file, its hash and the self-digest) is
refused. Without a key, a signature present is not checked. See docs/security.md.

A manifest over :data:`MAX_MANIFEST_BYTES` or nested deeper than :data:`MAX_MANIFEST_DEPTH` is
refused unparsed or unwalked. Temp directories of an interrupted ``write_artifact``
(``.<name>.<8 chars>.tmp``, ``.old``) are removed by the next one for the same ``out``, by the
rule of ``mmcore.files.remove_stale_temps`` (unmodified for 60 s and not locked by a live writer).

The two model packages build their own artifacts on these helpers (``mmfusion.export``,
``xdeepfm.export``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from mmcore.files import hold_lock, remove_stale_temps, sha256_file

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MANIFEST_DIGEST = "manifest_sha256"  # manifest field: SHA-256 of the canonical manifest
MANIFEST_SIGNATURE = "manifest_hmac_sha256"  # manifest field: HMAC-SHA256 of the canonical manifest (signed exports)
SIGNING_KEY_ENV = "MMFUSION_SIGNING_KEY"
SIGNING_KEY_FILE_ENV = "MMFUSION_SIGNING_KEY_FILE"
MAX_MANIFEST_BYTES = 1 << 20
MAX_MANIFEST_DEPTH = 32
MAX_KEY_FILE_BYTES = 1 << 16


class ArtifactError(ValueError):
    """An artifact directory is incomplete, corrupted or of another kind (the message names the file)."""


class SigningKeyError(ArtifactError):
    """The signing key configuration is unusable (the message names the variable or file, never the key)."""


@dataclass(frozen=True)
class SigningKey:
    """An HMAC key and where it came from (``source``, for messages); ``repr`` never shows the key."""

    secret: bytes = field(repr=False)
    source: str


def signing_key(key: str | bytes | None = None, environ: Mapping[str, str] | None = None) -> SigningKey | None:
    """The configured signing key: ``key`` when given, else ``MMFUSION_SIGNING_KEY`` (the key itself),
    else ``MMFUSION_SIGNING_KEY_FILE`` (a file holding it; surrounding whitespace stripped), else None.

    A key that is set but empty or unreadable, or both variables set, raise ``SigningKeyError``
    (fail closed: a secret that failed to reach the environment must not silently mean "unsigned").
    """
    if key is not None:
        secret = key.encode() if isinstance(key, str) else bytes(key)
        if not secret:
            raise SigningKeyError("the key= argument is empty: pass None to use the environment's key, or a non-empty key")
        return SigningKey(secret, "the key= argument")
    env = os.environ if environ is None else environ
    value, file = env.get(SIGNING_KEY_ENV), env.get(SIGNING_KEY_FILE_ENV)
    if value is not None and file is not None:
        raise SigningKeyError(f"both {SIGNING_KEY_ENV} and {SIGNING_KEY_FILE_ENV} are set: set only one")
    if value is not None:
        if not value:
            raise SigningKeyError(f"{SIGNING_KEY_ENV} is set but empty: unset it to work without a signing key, or set the key")
        return SigningKey(value.encode(), SIGNING_KEY_ENV)
    if file is None:
        return None
    if not file:
        raise SigningKeyError(f"{SIGNING_KEY_FILE_ENV} is set but empty: unset it, or set it to the key file's path")
    try:
        with open(file, "rb") as handle:
            secret = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SigningKeyError(f"{file}: cannot read the signing key file named by {SIGNING_KEY_FILE_ENV} "
                              f"({exc.strerror or type(exc).__name__})") from None
    if len(secret) > MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"{file}: over {MAX_KEY_FILE_BYTES} bytes, not a signing key file ({SIGNING_KEY_FILE_ENV})")
    secret = secret.strip()
    if not secret:
        raise SigningKeyError(f"{file}: the signing key file named by {SIGNING_KEY_FILE_ENV} is empty")
    return SigningKey(secret, f"{SIGNING_KEY_FILE_ENV} ({file})")


def canonical_manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes ``manifest_sha256`` and ``manifest_hmac_sha256`` cover: the manifest without those
    two fields as JSON with sorted keys, ``,``/``:`` separators and ASCII escapes."""
    body = {k: v for k, v in manifest.items() if k not in (MANIFEST_DIGEST, MANIFEST_SIGNATURE)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def seal_manifest(manifest: dict[str, Any], key: SigningKey | None = None) -> dict[str, Any]:
    """``manifest`` as a reader will parse it, plus ``manifest_sha256`` (and, with ``key``, ``manifest_hmac_sha256``)."""
    body = json.loads(json_bytes({k: v for k, v in manifest.items() if k not in (MANIFEST_DIGEST, MANIFEST_SIGNATURE)}))
    canonical = canonical_manifest_bytes(body)
    sealed = {**body, MANIFEST_DIGEST: hashlib.sha256(canonical).hexdigest()}
    if key is not None:
        sealed[MANIFEST_SIGNATURE] = hmac.new(key.secret, canonical, hashlib.sha256).hexdigest()
    return sealed


def _nesting_over(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests lists/objects more than ``limit`` levels deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _load_manifest_json(path: Path) -> Any:
    """The parsed ``manifest.json``, refused (``ArtifactError`` naming it) when too large, too deep or not JSON."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes, the most a manifest may have: "
                            "refused unparsed (not an artifact manifest)")
    too_deep = ArtifactError(f"{path}: JSON nested more than {MAX_MANIFEST_DEPTH} levels deep, the most a manifest "
                             "may have: not an artifact manifest")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise too_deep from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(manifest, (dict, list)) and _nesting_over(manifest, MAX_MANIFEST_DEPTH):
        raise too_deep
    return manifest


def _check_integrity(path: Path, manifest: dict[str, Any], key: SigningKey | None) -> None:
    """The manifest's own digest, and with ``key`` its signature (required then)."""
    canonical = canonical_manifest_bytes(manifest)
    recorded = manifest.get(MANIFEST_DIGEST)
    if recorded is None:
        raise ArtifactError(f"{path}: no {MANIFEST_DIGEST} field, so its own content cannot be verified (exported "
                            "before manifests covered themselves, or edited): re-export the artifact")
    actual = hashlib.sha256(canonical).hexdigest()
    if not isinstance(recorded, str) or not hmac.compare_digest(recorded.encode(), actual.encode()):
        raise ArtifactError(f"{path}: content does not match its {MANIFEST_DIGEST} (recorded {str(recorded)[:16]}..., "
                            f"computed {actual[:16]}...): the manifest is corrupted or was modified")
    if key is None:
        return
    signature = manifest.get(MANIFEST_SIGNATURE)
    if signature is None:
        raise ArtifactError(f"{path}: not signed (no {MANIFEST_SIGNATURE} field), but a signing key is configured "
                            f"({key.source}): refused; export the artifact with that key")
    expected = hmac.new(key.secret, canonical, hashlib.sha256).hexdigest()
    if not isinstance(signature, str) or not hmac.compare_digest(signature.encode(), expected.encode()):
        raise ArtifactError(f"{path}: {MANIFEST_SIGNATURE} does not verify with the signing key from {key.source}: "
                            "the manifest was modified or signed with another key")


def library_versions(names: Iterable[str] = ("torch", "numpy", "safetensors")) -> dict[str, str]:
    """Installed versions of ``names`` plus Python and this project (``mmfusion``)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("mmfusion", *names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=1, default=float) + "\n").encode()


def write_artifact(out: str | Path, files: dict[str, bytes], manifest: dict[str, Any], overwrite: bool = False,
                   *, key: str | bytes | None = None) -> Path:
    """Write ``files`` and ``manifest.json`` (with every file's sha256 and size) as directory ``out``.

    The directory is built under a temp name beside ``out`` and renamed into place; an existing
    non-empty ``out`` is replaced only with ``overwrite``. The manifest gets ``manifest_sha256``,
    and ``manifest_hmac_sha256`` when a signing key is configured (``key``, else the environment:
    :func:`signing_key`). Stale temp directories of an interrupted earlier write of ``out`` are
    removed (``.tmp`` ones first, ``.old`` ones once the new artifact is in place).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    bad = [name for name in files if name == MANIFEST or "/" in name or name.startswith(".")]
    if bad:
        raise ValueError(f"artifact file names {bad}: must be plain names other than {MANIFEST}")
    signing = signing_key(key)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, out.name, ".tmp", dirs=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    locks: list[int] = []
    try:
        if hasattr(os, "O_DIRECTORY"):  # POSIX: a directory can be opened and flock'ed
            locks.append(os.open(tmp, os.O_RDONLY | os.O_DIRECTORY))
            hold_lock(locks[-1])  # marks the temp directory live for other writers' cleanup
        entries = {}
        for name, data in files.items():
            (tmp / name).write_bytes(data)
            entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (tmp / MANIFEST).write_bytes(json_bytes(seal_manifest({**manifest, "files": entries}, signing)))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            if hasattr(os, "O_DIRECTORY"):
                locks.append(os.open(old, os.O_RDONLY | os.O_DIRECTORY))
                hold_lock(locks[-1])
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for fd in locks:
            os.close(fd)
    # only now: a stale .old may hold the only copy of an artifact whose swap was interrupted
    remove_stale_temps(out.parent, out.name, ".old", dirs=True)
    return out


def read_manifest(directory: str | Path, expected_format: str, required: Iterable[str], *,
                  key: str | bytes | None = None) -> dict[str, Any]:
    """The manifest of an artifact, after checking its own digest (and, when a signing key is
    configured: ``key``, else the environment, its signature) and every listed file's size and sha256.

    Raises ``FileNotFoundError`` (no such directory) or ``ArtifactError`` naming the bad file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: artifact directory not found")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {directory} is not a complete artifact (the export writes it last)")
    signing = signing_key(key)
    manifest = _load_manifest_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path}: format {found!r}, expected {expected_format!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{path}: 'files' must map file names to their sha256 and size")
    for name in required:
        if name not in files:
            raise ArtifactError(f"{directory / name}: not listed in {path}; the artifact is incomplete")
    for name, entry in files.items():
        if not name or "/" in name or "\x00" in name or name.startswith(".") or name == MANIFEST or not isinstance(entry, dict):
            raise ArtifactError(f"{path}: bad entry for {name!r}")
    _check_integrity(path, manifest, signing)
    for name, entry in files.items():
        file = directory / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing (listed in {MANIFEST}); the artifact is incomplete")
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise ArtifactError(f"{file}: {size} bytes but {MANIFEST} lists {entry.get('bytes')}: "
                                "the file is truncated or was modified")
        digest = sha256_file(file)
        if digest != entry.get("sha256"):
            raise ArtifactError(f"{file}: sha256 {digest[:16]}... does not match {MANIFEST} "
                                f"({str(entry.get('sha256'))[:16]}...): the file is corrupted or was modified")
    return manifest


def read_json(directory: Path, name: str) -> Any:
    """A JSON file of a verified artifact (the error names the file)."""
    path = directory / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ArtifactError(f"{path}: JSON nested too deeply to parse") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


def read_weights(directory: Path, name: str = WEIGHTS) -> dict:
    """The tensors of a safetensors file of a verified artifact (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = directory / name
    try:
        return load(path.read_bytes())
    except (SafetensorError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None


def state_dict_bytes(state: dict) -> bytes:
    """A state dict as safetensors bytes (each tensor copied: no shared storage, CPU, contiguous)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})


def export_manifest(fmt: str, source: Path | None, metrics: Any, versions: dict[str, str], **extra: Any) -> dict[str, Any]:
    """The common manifest fields (``files`` is added by ``write_artifact``); ``source`` is the
    checkpoint file exported, or None for a model saved from memory (``save_pretrained``)."""
    return {
        "format": fmt,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(source), "sha256": sha256_file(source)} if source is not None else None,
        "versions": versions,
        "metrics": metrics,
        **extra,
    }
