"""Decode one video file with PyAV: frames sampled at a fixed rate, audio as 16 kHz mono float.

One pass over the container decodes the first video stream and the first audio stream together.
A video frame is kept when its timestamp (from the first frame) reaches the next multiple of
``1 / fps``, so a 30 fps source sampled at 5 fps keeps every sixth frame and a source slower than
``fps`` keeps all of its frames. Kept frames are scaled by FFmpeg (area interpolation) so that
their shorter side is ``frame_size`` pixels, and returned as RGB uint8.

Every problem with the file raises ``DecodeError`` with a message saying what is wrong; a file
without an audio track (or whose audio track yields no samples) is not an error: it decodes with
``audio=None`` and ``audio_note`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 16_000  # Hz, mono: what every acoustic feature is computed at


class DecodeError(Exception):
    """A file cannot be decoded into frames; the message says why (missing, empty, corrupt, ...)."""


@dataclass
class DecodedClip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, sampled at ``fps``
    frame_times: np.ndarray  # (T,) float64 seconds from the first decoded frame
    audio: np.ndarray | None  # (S,) float32 in [-1, 1] at SAMPLE_RATE, None without an audio track
    audio_note: str  # "" when there is audio, else why not ("no audio track", ...)
    duration: float  # seconds of video (last frame time + one source frame)


def _scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the shorter side ``short_side`` and the aspect ratio kept, both even."""
    scale = short_side / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def decode_clip(path: str | Path, fps: float, frame_size: int, threads: int = 1) -> DecodedClip:
    """Decode ``path``: frames at ``fps`` scaled to a ``frame_size`` short side, 16 kHz mono audio."""
    path = Path(path)
    if not path.is_file():
        raise DecodeError("file not found")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DecodeError(f"not a readable media container ({type(exc).__name__}: {exc})") from None
    with container:
        if not container.streams.video:
            raise DecodeError("no video stream in the container")
        video = container.streams.video[0]
        video.thread_count = threads
        audio = container.streams.audio[0] if container.streams.audio else None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE) if audio else None
        frames, times, chunks = [], [], []
        start: float | None = None
        next_index = 0  # the next sample time is next_index / fps
        last_time = 0.0
        size: tuple[int, int] | None = None
        try:
            for frame in container.decode(*([video] + ([audio] if audio else []))):
                if isinstance(frame, av.AudioFrame):
                    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
                    continue
                t = frame.time if frame.time is not None else len(times) / fps
                start = t if start is None else start
                last_time = max(last_time, t - start)
                if t - start + 1e-6 < next_index / fps:
                    continue
                next_index = int(np.floor((t - start) * fps + 1e-6)) + 1
                size = size or _scaled_size(frame.width, frame.height, frame_size)
                rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
                frames.append(rgb.to_ndarray())
                times.append(t - start)
            if resampler is not None:
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except av.FFmpegError as exc:
            at = f" after {last_time:.2f} s" if frames else ""
            raise DecodeError(f"corrupt stream{at} ({type(exc).__name__}: {exc})") from None
        if not frames:
            raise DecodeError("no decodable video frames")
        rate = float(video.average_rate) if video.average_rate else fps
        samples = np.concatenate(chunks).astype(np.float32) if chunks else None
        note = "" if samples is not None and samples.size else ("no audio track" if audio is None else "audio track has no samples")
        return DecodedClip(
            frames=np.stack(frames),
            frame_times=np.asarray(times, dtype=np.float64),
            audio=samples if not note else None,
            audio_note=note,
            duration=last_time + 1.0 / rate,
        )
