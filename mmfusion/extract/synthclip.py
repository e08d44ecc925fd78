"""Small real mp4 files for tests and benchmarks: moving coloured frames and a tone or speech.

``write_clip`` encodes H.264 video (yuv420p) and, unless ``audio`` is False, an AAC soundtrack with
PyAV's bundled FFmpeg. The picture is a background whose hue drifts over time with a bright square
moving across it; ``cut_at`` (seconds) switches to a differently coloured scene there (a shot
change). The soundtrack is a sine tone, or the samples given as ``speech`` (16 kHz mono, e.g. from
``speak``, which uses espeak-ng when it is installed).
"""

from __future__ import annotations

import colorsys
import shutil
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np

from mmfusion.extract.decode import SAMPLE_RATE


def _frame(i: int, fps: int, width: int, height: int, hue0: float, scene: int) -> np.ndarray:
    t = i / fps
    hue = (hue0 + 0.05 * t + 0.5 * scene) % 1.0
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.45 + 0.3 * scene)) * 255
    side = max(4, height // 4)
    x = int((width - side) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t)))
    y = int((height - side) * (0.5 + 0.5 * np.cos(2 * np.pi * 0.3 * t)))
    img[y : y + side, x : x + side] = (255, 255, 255) if scene == 0 else (30, 30, 30)
    return img


def write_clip(
    path: str | Path,
    seconds: float = 2.0,
    fps: int = 15,
    size: tuple[int, int] = (96, 64),
    tone_hz: float = 220.0,
    speech: np.ndarray | None = None,
    audio: bool = True,
    video: bool = True,
    hue: float = 0.0,
    cut_at: float | None = None,
) -> Path:
    """Write an mp4 of ``seconds`` at ``fps`` and ``size`` = (width, height), both even
    (``video=False``: an audio-only mp4, ``audio=False``: no soundtrack)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    with av.open(str(path), "w") as out:
        picture = out.add_stream("libx264", rate=fps) if video else None
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if audio else None
        if picture is not None:
            picture.width, picture.height, picture.pix_fmt = width, height, "yuv420p"
            picture.options = {"preset": "veryfast"}
            for i in range(int(round(seconds * fps))):
                scene = int(cut_at is not None and i / fps >= cut_at)
                frame = av.VideoFrame.from_ndarray(_frame(i, fps, width, height, hue, scene), format="rgb24")
                out.mux(picture.encode(frame))
            out.mux(picture.encode())
        if sound is not None:
            if speech is None:
                t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
                samples = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            else:
                samples = np.asarray(speech, dtype=np.float32)
            for start in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
                chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode())
    return path


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng as 16 kHz mono float32 (raises when espeak-ng is absent)."""
    if not espeak_available():
        raise FileNotFoundError("espeak-ng is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        with av.open(str(wav)) as container:
            chunks = [o.to_ndarray().reshape(-1) for f in container.decode(audio=0) for o in resampler.resample(f)]
        chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)
