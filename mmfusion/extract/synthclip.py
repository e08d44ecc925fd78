"""Small real mp4 files for tests and benchmarks: moving coloured frames and a tone or speech.

``write_clip`` encodes H.264 video (yuv420p) and, unless ``audio`` is False, an AAC soundtrack with
PyAV's bundled FFmpeg. The picture is a background whose hue drifts over time with a bright square
moving across it; ``cut_at`` (seconds) switches to a differently coloured scene there (a shot
change). The soundtrack is a sine tone, or the samples given as ``speech`` (16 kHz mono, e.g. from
``speak``, which uses espeak-ng when it is installed).

``encode_mp4`` writes given frames and samples (what ``mmfusion.data.synthvideo`` renders), and
``espeak`` speaks one line with explicit espeak-ng voice, pitch (``-p``), pitch range (SSML
``<prosody range>``), rate (``-s``), amplitude (``-a``) and word gap (``-g``). Without espeak-ng on
``PATH`` both ``speak`` and ``espeak`` raise ``EspeakMissing`` naming the package.
"""

from __future__ import annotations

import colorsys
import shutil
import subprocess
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import av
import numpy as np
from scipy.signal import resample_poly

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


def encode_mp4(path: str | Path, frames: np.ndarray, fps: int, audio: np.ndarray | None, crf: int = 20,
               container_format: str = "mp4") -> Path:
    """Encode (T, H, W, 3) uint8 RGB ``frames`` (H and W even) as H.264 yuv420p at ``fps`` and
    ``audio`` (16 kHz mono float32 in [-1, 1], or None) as AAC into ``path``. One encoder thread,
    so the same input gives the same bytes. ``container_format`` lets ``path`` have any suffix
    (an atomic writer's temp name)."""
    path = Path(path)
    t, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"{path}: frame size {width}x{height} must be even for yuv420p")
    with av.open(str(path), "w", format=container_format) as out:
        picture = out.add_stream("libx264", rate=fps)
        picture.width, picture.height, picture.pix_fmt = width, height, "yuv420p"
        picture.options = {"preset": "veryfast", "crf": str(crf), "threads": "1"}
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if audio is not None else None
        for i in range(t):
            out.mux(picture.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")))
        out.mux(picture.encode())
        if sound is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
            for start in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
                chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode())
    return path


class EspeakMissing(FileNotFoundError):
    """espeak-ng is not on PATH."""


ESPEAK_HINT = "espeak-ng not found on PATH: install the espeak-ng package (apt-get install espeak-ng)"


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def require_espeak() -> str:
    """The espeak-ng executable, or ``EspeakMissing`` naming the package to install."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakMissing(ESPEAK_HINT)
    return exe


def _wav_samples(data: bytes, what: str) -> tuple[np.ndarray, int]:
    """int16 PCM of espeak-ng's ``--stdout`` WAV (its header's sizes are placeholders) as float32."""
    at = data.find(b"data")
    if data[:4] != b"RIFF" or at < 0:
        raise RuntimeError(f"espeak-ng gave no WAV output for {what}")
    rate = int.from_bytes(data[24:28], "little")
    body = data[at + 8 :]
    return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0, rate


def espeak(text: str, voice: str = "en-us", pitch: float = 50.0, pitch_range: float = 100.0, rate: float = 175.0,
           amplitude: float = 100.0, word_gap: float = 0.0) -> np.ndarray:
    """``text`` spoken by espeak-ng, 16 kHz mono float32.

    ``pitch`` is espeak-ng's ``-p`` (0-99, 50 default), ``pitch_range`` the SSML prosody range in
    percent of the voice's (100 = unchanged, lower is flatter), ``rate`` words per minute (``-s``,
    80-450), ``amplitude`` ``-a`` (0-200, 100 default), ``word_gap`` extra pause between words in
    units of 10 ms (``-g``)."""
    exe = require_espeak()
    ssml = f'<speak><prosody range="{pitch_range:.0f}%">{escape(text)}</prosody></speak>'
    cmd = [exe, "--stdout", "-m", "-v", voice, "-p", str(int(round(np.clip(pitch, 0, 99)))),
           "-s", str(int(round(np.clip(rate, 80, 450)))), "-a", str(int(round(np.clip(amplitude, 0, 200)))),
           "-g", str(int(round(max(0.0, word_gap)))), ssml]
    done = subprocess.run(cmd, check=True, capture_output=True)
    samples, sr = _wav_samples(done.stdout, repr(text[:40]))
    if sr != SAMPLE_RATE:
        g = np.gcd(SAMPLE_RATE, sr)
        samples = resample_poly(samples, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return samples


def speak(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng as 16 kHz mono float32 (``EspeakMissing`` when espeak-ng is absent)."""
    require_espeak()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        with av.open(str(wav)) as container:
            chunks = [o.to_ndarray().reshape(-1) for f in container.decode(audio=0) for o in resampler.resample(f)]
        chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)
