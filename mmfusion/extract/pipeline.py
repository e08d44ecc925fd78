"""A folder of videos + meta.csv -> one MMSA pickle, file by file, in parallel, resumable.

``extract_file`` is the per-file work (decode, acoustic and visual features, length cap): a pure
function of the file and the ``ExtractConfig``, run in a process pool. Its result is cached as
``<out>.cache/<sha256>.npz`` (no pickle inside), keyed by the file's resolved path, size and
modification time and by every option that changes features, so a rerun after an interruption
only decodes what is missing. Failures are not cached.

Problems are per file and never stop the batch: a meta row that is wrong (duplicate or empty id,
bad label or split, the wrong number of fields, a ``video`` path that resolves outside the videos
folder, through ``..``, an absolute path or a symlink), a missing, empty, unreadable or corrupt
file, all end up in the report (``FileReport``) with status ``failed``; a video without an audio
track is extracted with an all-zero, length-0 audio sequence and ``audio_missing`` set (status
``no audio``). Videos in the folder that meta.csv does not list are reported as ``skipped``.
meta.csv is parsed with the ``csv`` module, strictly (a quote that never closes or text after a
closing quote refuses the whole file, naming the line), so one malformed row never shifts the
columns of the rows after it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmcore.files import atomic_write
from mmcore.hf import default_model_path, load_tokenizer
from mmfusion.data.mmsa import LABEL_RANGE, SPLITS
from mmfusion.data.synthetic import (
    encode_text_features,
    write_pickle,  # noqa: F401 -- atomic pickle writer, re-exported
)
from mmfusion.extract import audio as audio_mod
from mmfusion.extract import text as text_mod
from mmfusion.extract import visual as visual_mod
from mmfusion.extract.audio import AudioConfig
from mmfusion.extract.decode import SAMPLE_RATE, DecodeError, decode_clip
from mmfusion.extract.visual import VisualConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when a feature's computation changes: old cache entries stop matching
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
META_REQUIRED = ("video", "id", "text")


# Limits of the numeric options: (low, high, low is exclusive); python -m mmfusion.extract checks
# its options against the same numbers.
MAX_FPS = 1000.0
LIMITS = {
    "fps": (0.0, MAX_FPS, True),
    "max_audio_len": (1, 1_000_000, False),
    "max_vision_len": (1, 1_000_000, False),
    "decode_threads": (0, 64, False),
    "workers": (1, 256, False),
    "text_len": (2, 512, False),  # [CLS] and [SEP] at least; BERT-family position limit
}


class MetaError(ValueError):
    """meta.csv as a whole cannot be used (unreadable, not valid CSV, a required column missing)."""


def limit_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not a valid ``name`` (one of ``LIMITS``), or None when it is."""
    low, high, low_open = LIMITS[name]
    integer = isinstance(low, int)
    if integer:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and low <= value <= high
        expected = f"an integer in [{low}, {high}]"
    else:
        ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
              and math.isfinite(value) and (value > low if low_open else value >= low) and value <= high)
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    return None if ok else f"expected {expected}"


def check_limit(name: str, value: object) -> None:
    """Raise ``ValueError("name value: expected ...")`` when ``value`` is outside ``LIMITS[name]``."""
    problem = limit_problem(name, value)
    if problem:
        raise ValueError(f"{name} {value!r}: {problem}")


@dataclass(frozen=True)
class ExtractConfig:
    """Every option that changes the features of a file (all of it goes into the cache key)."""

    fps: float = 5.0  # video frames sampled per second, in (0, 1000]
    audio: AudioConfig = field(default_factory=AudioConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)  # resolved (no auto / cache) before use
    max_audio_len: int = 500  # longer sequences are average-pooled down to this many rows
    max_vision_len: int = 375
    decode_threads: int = 1  # FFmpeg threads per file; parallelism comes from the worker pool

    def __post_init__(self) -> None:
        for name in ("fps", "max_audio_len", "max_vision_len", "decode_threads"):
            check_limit(name, getattr(self, name))


@dataclass
class ClipFeatures:
    audio: np.ndarray  # (La, Da) float32; (0, Da) when the file has no audio
    vision: np.ndarray  # (Lv, Dv) float32
    audio_note: str  # "" or why there is no audio
    duration: float  # seconds


@dataclass
class FileReport:
    row: int  # 0-based data row of meta.csv (-1: a file meta.csv does not list)
    id: str
    video: str
    status: str  # ok | no audio | failed | skipped
    detail: str = ""
    cached: bool = False
    line: int | None = None  # the meta.csv line the row starts on (None: row + 2, no blank or multi-line rows)

    @property
    def meta_line(self) -> int:
        return self.line if self.line is not None else self.row + 2


# --------------------------------------------------------------------------------------------
# Per-file work
# --------------------------------------------------------------------------------------------


def fit_length(x: np.ndarray, max_len: int) -> np.ndarray:
    """(T, D) -> at most ``max_len`` rows: longer sequences are averaged over equal segments."""
    if len(x) <= max_len:
        return x
    pooled = torch.nn.functional.adaptive_avg_pool1d(torch.from_numpy(x).T[None], max_len)
    return pooled[0].T.contiguous().numpy()


def extract_file(path: str | Path, cfg: ExtractConfig) -> ClipFeatures:
    """Decode one file and compute its feature sequences; raises ``DecodeError`` for a bad file."""
    clip = decode_clip(path, cfg.fps, cfg.visual.frame_size, cfg.decode_threads)
    vision = visual_mod.visual_features(clip.frames, cfg.visual)
    if clip.audio is None:
        acoustic = np.zeros((0, cfg.audio.out_dim), dtype=np.float32)
    else:
        acoustic = audio_mod.audio_features(clip.audio, cfg.audio)
    return ClipFeatures(audio=fit_length(acoustic, cfg.max_audio_len), vision=fit_length(vision, cfg.max_vision_len),
                        audio_note=clip.audio_note, duration=clip.duration)


def cache_key(path: Path, cfg: ExtractConfig) -> str:
    """sha256 of the file's identity (resolved path, size, mtime) and of every feature option."""
    stat = path.stat()
    ident = {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "config": dataclasses.asdict(cfg), "version": CACHE_VERSION}
    if cfg.visual.weights not in ("cache", "random") and cfg.visual.needs_weights:
        w = Path(cfg.visual.weights).stat()
        ident["weights"] = [w.st_size, w.st_mtime_ns]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _write_cache(path: Path, features: ClipFeatures) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, audio=features.audio, vision=features.vision,
                     audio_note=np.array(features.audio_note), duration=np.array(features.duration))

    atomic_write(path, write)


def _read_cache(path: Path) -> ClipFeatures | None:
    try:
        with np.load(path, allow_pickle=False) as saved:
            return ClipFeatures(audio=saved["audio"], vision=saved["vision"],
                                audio_note=str(saved["audio_note"]), duration=float(saved["duration"]))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: unreadable cache entry, extracting again (%s)", path, exc)
        return None


def process_file(path: str, cfg: ExtractConfig, cache_dir: str | None) -> tuple[ClipFeatures | None, str, bool]:
    """``(features, error, from_cache)`` for one file; never raises (the pool's unit of work)."""
    file = Path(path)
    try:
        if not file.is_file():
            raise DecodeError("file not found")
        entry = Path(cache_dir) / f"{cache_key(file, cfg)}.npz" if cache_dir else None
        if entry is not None and entry.is_file():
            cached = _read_cache(entry)
            if cached is not None:
                return cached, "", True
        features = extract_file(file, cfg)
        if entry is not None:
            _write_cache(entry, features)
        return features, "", False
    except DecodeError as exc:
        return None, str(exc), False
    except Exception as exc:  # noqa: BLE001 -- one bad file must not stop the batch
        return None, f"extraction failed ({type(exc).__name__}: {exc})", False


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# meta.csv
# --------------------------------------------------------------------------------------------


@dataclass
class MetaRow:
    row: int
    video: str
    id: str
    text: str
    transcript: str
    label: float
    split: str
    line: int = 0  # the meta.csv line the row starts on
    path: str = ""  # the video file, resolved inside --videos (set by ``confine``)


def _read_csv(meta: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and ``(line, fields)`` of every non-blank record, parsed strictly."""
    try:
        data = meta.read_bytes()
    except OSError as exc:
        raise MetaError(f"{meta}: not a readable CSV file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MetaError(f"{meta} line {line}: not UTF-8 text (byte {data[exc.start]:#04x}); save meta.csv as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    line = 1
    try:
        for fields in reader:
            if fields:
                records.append((line, fields))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise MetaError(f"{meta} line {line}: not valid CSV ({exc}); a field with a comma, a quote or a "
                        'line break must be quoted ("a, b"), with "" for a quote inside it') from None
    if not records:
        raise MetaError(f"{meta}: empty; expected a header row ({','.join(META_REQUIRED)}"
                        "[,transcript][,label][,split]) and one row per clip")
    header_line, header = records[0]
    header = [name.strip() for name in header]
    for name in header:
        if header.count(name) > 1:
            raise MetaError(f"{meta} line {header_line}: column {name!r} appears twice (header {header})")
    return header, records[1:]


def read_meta(meta: str | Path, labels: bool, default_split: str) -> tuple[list[MetaRow], list[FileReport]]:
    """Usable rows and a ``failed`` report for every row that is not (naming line, column, value)."""
    meta = Path(meta)
    if default_split not in SPLITS:
        raise MetaError(f"--split {default_split!r}: expected one of {list(SPLITS)}")
    header, records = _read_csv(meta)
    missing = [c for c in META_REQUIRED + (("label",) if labels else ()) if c not in header]
    if missing:
        raise MetaError(f"{meta}: column(s) {missing} missing (has {header}; "
                        f"expected {list(META_REQUIRED)}, optional transcript, label, split)")
    if "label" in header and not labels:
        log.warning("%s has a 'label' column; it is ignored without --labels", meta)
    rows, bad, seen = [], [], {}
    for i, (line, fields) in enumerate(records):
        if len(fields) != len(header):
            hint = "quote a field that contains a comma" if len(fields) > len(header) else "a column is missing"
            video = fields[header.index("video")].strip() if header.index("video") < len(fields) else ""
            bad.append(FileReport(i, "", video, "failed", f"meta.csv: expected {len(header)} fields "
                                  f"({', '.join(header)}), got {len(fields)}; {hint}", line=line))
            continue
        rec = dict(zip(header, fields))
        video, clip_id = rec["video"].strip(), rec["id"].strip()
        problems = []
        if not video:
            problems.append("column 'video' is empty")
        if not clip_id:
            problems.append("column 'id' is empty")
        elif clip_id in seen:
            problems.append(f"id {clip_id!r} repeats line {seen[clip_id]}")
        else:
            seen[clip_id] = line
        split = rec.get("split", "").strip() or default_split
        if split not in SPLITS:
            problems.append(f"split {split!r}: expected one of {list(SPLITS)}")
        label = 0.0
        if labels:
            try:
                label = float(rec["label"])
            except ValueError:
                label = math.nan
            if not (LABEL_RANGE[0] <= label <= LABEL_RANGE[1]):
                problems.append(f"label {rec['label']!r}: expected a number in [{LABEL_RANGE[0]:g}, {LABEL_RANGE[1]:g}]")
        if problems:
            bad.append(FileReport(i, clip_id, video, "failed", "meta.csv: " + "; ".join(problems), line=line))
            continue
        rows.append(MetaRow(i, video, clip_id, rec["text"], rec.get("transcript", ""), label, split, line=line))
    return rows, bad


def confine(rows: list[MetaRow], videos: Path) -> tuple[list[MetaRow], list[FileReport]]:
    """Rows whose ``video`` resolves to a path inside ``videos`` (``path`` set), and a ``failed``
    report for every other one: ``..``, an absolute path or a symlink that leads outside."""
    root = videos.resolve()
    inside, bad = [], []
    for r in rows:
        try:
            resolved = (root / r.video).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
            bad.append(FileReport(r.row, r.id, r.video, "failed",
                                  f"meta.csv: column 'video' {r.video!r}: cannot be resolved ({exc})", line=r.line))
            continue
        if resolved != root and root not in resolved.parents:
            bad.append(FileReport(r.row, r.id, r.video, "failed", f"meta.csv: column 'video' {r.video!r} resolves to "
                                  f"{resolved}, outside --videos {root}; expected a file inside it", line=r.line))
            continue
        inside.append(dataclasses.replace(r, path=str(resolved)))
    return inside, bad


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------


@dataclass
class ExtractResult:
    data: dict  # the MMSA dict that was written (splits + "extraction")
    reports: list[FileReport]

    @property
    def failed(self) -> list[FileReport]:
        return [r for r in self.reports if r.status == "failed"]


def _pad(sequences: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, L, dim) zero-padded (L = the longest, at least 1) and the (N,) true lengths."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    out = np.zeros((len(sequences), max(1, int(lengths.max(initial=0))), dim), dtype=np.float32)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out, lengths


def _features_for(rows: list[MetaRow], videos: Path, cfg: ExtractConfig, cache_dir: Path | None,
                  workers: int) -> dict[int, tuple[ClipFeatures | None, str, bool]]:
    """``process_file`` for every row, in a pool of ``workers`` processes (in-process for 1)."""
    jobs = {r.row: r.path or str(videos / r.video) for r in rows}
    cache = str(cache_dir) if cache_dir else None
    results: dict[int, tuple[ClipFeatures | None, str, bool]] = {}
    bar = tqdm(total=len(jobs), desc="extract", unit="clip")
    if workers <= 1:
        for row, path in jobs.items():
            results[row] = process_file(path, cfg, cache)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(1,)) as pool:
            futures = {pool.submit(process_file, path, cfg, cache): row for row, path in jobs.items()}
            for future in as_completed(futures):
                try:
                    results[futures[future]] = future.result()
                except Exception as exc:  # noqa: BLE001 -- a worker that died (crash, out of memory)
                    results[futures[future]] = (None, f"worker process failed ({type(exc).__name__}: {exc})", False)
                bar.update()
    bar.close()
    return results


def extract(
    videos: str | Path,
    meta: str | Path,
    cfg: ExtractConfig,
    *,
    labels: bool = False,
    default_split: str = "test",
    workers: int = 1,
    cache_dir: str | Path | None = None,
    text_model: str | Path | None = None,
    text_len: int = 50,
    text_features: bool = False,
) -> ExtractResult:
    """Extract every clip of ``meta`` from ``videos``; returns the MMSA dict and one report per file.

    ``cfg.visual`` must be resolved (``visual.resolve``). Raises ``MetaError`` when meta.csv
    cannot be used at all and ``ValueError`` for ``workers`` / ``text_len`` out of range
    (``LIMITS``); per-file problems only go into the reports. Every video path is confined to
    ``videos``: a row whose file resolves outside it is reported, never read.
    """
    if cfg.visual.backbone == "auto" or (cfg.visual.needs_weights and cfg.visual.weights == "cache"):
        raise ValueError("extract: resolve the visual config first (mmfusion.extract.visual.resolve)")
    check_limit("workers", workers)
    check_limit("text_len", text_len)
    videos = Path(videos)
    if not videos.is_dir():
        raise FileNotFoundError(f"{videos}: videos folder not found")
    rows, reports = read_meta(meta, labels, default_split)
    model_path = str(text_model or default_model_path())
    load_tokenizer(model_path)  # a bad --text-model fails now, not after every clip is decoded
    rows, outside = confine(rows, videos)
    reports += outside
    listed = {r.video for r in rows} | {r.video for r in reports}
    for extra in sorted(p.name for p in videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        if extra not in listed:
            reports.append(FileReport(-1, "", extra, "skipped", "not listed in meta.csv"))
    results = _features_for(rows, videos, cfg, Path(cache_dir) if cache_dir else None, workers)

    done: list[tuple[MetaRow, ClipFeatures]] = []
    for r in rows:
        features, error, cached = results[r.row]
        if features is None:
            reports.append(FileReport(r.row, r.id, r.video, "failed", error, line=r.line))
            continue
        status = "no audio" if features.audio_note else "ok"
        reports.append(FileReport(r.row, r.id, r.video, status, features.audio_note, cached, line=r.line))
        done.append((r, features))
    reports.sort(key=lambda rep: (rep.row < 0, rep.row))
    log.info("extracted %d clips (%d from the cache), %d failed", len(done), sum(rep.cached for rep in reports),
             sum(rep.status == "failed" for rep in reports))

    texts = [r.text for r, _ in done]
    transcripts = [r.transcript for r, _ in done]
    text_bert = text_mod.tokenize(texts, transcripts, model_path, text_len) if done else np.zeros((0, 3, text_len), np.int64)
    text_hidden = encode_text_features(text_bert, model_path) if text_features and done else None
    audio_all, audio_lengths = _pad([f.audio for _, f in done], cfg.audio.out_dim)
    vision_all, vision_lengths = _pad([f.vision for _, f in done], cfg.visual.dim)

    data: dict = {}
    for split in SPLITS:
        idx = np.array([i for i, (r, _) in enumerate(done) if r.split == split], dtype=np.int64)
        y = np.array([done[i][0].label for i in idx], dtype=np.float32)
        part = {
            "id": np.array([done[i][0].id for i in idx], dtype=str),
            "video": np.array([done[i][0].video for i in idx], dtype=str),
            "raw_text": np.array([" ".join(s for s in (texts[i], transcripts[i]) if s) for i in idx], dtype=str),
            "text_bert": text_bert[idx],
            "audio": audio_all[idx],
            "audio_lengths": audio_lengths[idx],
            "vision": vision_all[idx],
            "vision_lengths": vision_lengths[idx],
            "regression_labels": y,
            "audio_missing": np.array([bool(done[i][1].audio_note) for i in idx], dtype=bool),
            "duration": np.array([done[i][1].duration for i in idx], dtype=np.float32),
        }
        if labels:
            part["classification_labels"] = (np.sign(y) + 1).astype(np.int64)
        if text_hidden is not None:
            part["text"] = text_hidden[idx]
        data[split] = part
    data["extraction"] = describe_config(cfg, labels=labels, text_model=model_path, text_len=text_len,
                                         text_features=text_features)
    return ExtractResult(data=data, reports=reports)


def describe_config(cfg: ExtractConfig, labels: bool, text_model: str, text_len: int, text_features: bool) -> dict:
    """What the pickle records about how it was made: every option, feature widths and names."""
    return {
        "config": dataclasses.asdict(cfg),
        "audio_dim": cfg.audio.out_dim,
        "audio_features": audio_mod.feature_names(cfg.audio),
        "audio_frame_rate_hz": 1000.0 / cfg.audio.hop_ms,
        "vision_dim": cfg.visual.dim,
        "vision_backbone": cfg.visual.backbone,
        "vision_weights": cfg.visual.weights if cfg.visual.needs_weights else None,
        "vision_features": visual_mod.feature_names(cfg.visual),
        "sample_rate": SAMPLE_RATE,
        "labels": "from meta.csv" if labels else "none (regression_labels are 0 placeholders)",
        "text_model": text_model,
        "text_len": text_len,
        "text_features": text_features,
    }


def format_report(reports: list[FileReport]) -> str:
    """The end-of-run summary: counts, then one line per file that is not plainly ok."""
    counts = {s: sum(r.status == s for r in reports) for s in ("ok", "no audio", "failed", "skipped")}
    lines = ["extraction summary: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    for r in reports:
        if r.status != "ok":
            where = f"meta.csv line {r.meta_line}" if r.row >= 0 else "not in meta.csv"
            lines.append(f"  {r.status:<8} {r.video or '-'} ({where}{', id ' + r.id if r.id else ''}): {r.detail}")
    return "\n".join(lines)


def default_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
