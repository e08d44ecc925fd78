"""SynthVideo: the SynthMOSI clips as real mp4 files (a rendered presenter, espeak-ng narration).

The clips, their texts, kinds, hidden unimodal sentiments ``s_t, s_a, s_v``, labels ``y`` and
splits are SynthMOSI's: ``mmfusion.data.synthetic.sample_clips`` with the same random streams as
``synthetic.generate`` (``SeedSequence(seed).spawn(4)``, one stream per split), so a preset with
MOSI's split sizes (``video_mosi``) has exactly the labels and texts of
``synthetic.generate("mosi", seed)``, and ``direct_pickle`` writes the direct-feature SynthMOSI of
the clips of any preset. Instead of feature sequences each clip becomes a video
(``render_clip``, cues in ``docs/synthvideo.md``):

* **audio**: the text (``raw_text``) spoken by espeak-ng in three parts, a neutral lead-in, the
  *expressive segment* and a neutral tail (sentence boundaries), with silences between them. In
  the segment ``s_a`` sets the prosody (x = s_a / 3): pitch ``-p`` +18 x, pitch range (SSML)
  100 + 55 x percent, rate x (1 + 0.15 x), amplitude x (1 + 0.4 x), and for negative delivery
  an extra word gap of up to 80 ms. Nuisance: 16 speakers per dataset (espeak-ng voice variant,
  male and female, baseline pitch, rate and loudness), per-clip jitter of pitch, rate and gain,
  low background noise;
* **video** (128 x 96, 12 fps): a drawn presenter (head ellipse, eyes that blink, brows, a mouth
  that opens with the speech envelope) in front of a background, a shirt below. In the
  same expressive segment (0.3 s ramps) the expression e = ``s_v`` sets the mouth curvature
  (smile / frown), the brow tilt (inner ends up for positive, down for negative) and raise, a
  wider mouth for positive, and a warm (positive) or cool (negative) lighting tint. Nuisance:
  skin tone, shirt and background per speaker (backgrounds never skin-coloured), a per-clip
  resting expression, face position drift and camera zoom, head bob, lighting tint, pixel noise,
  H.264 compression, and a cut (new framing and background) in 25% of clips.

Sarcastic clips are positive words with the negative ``s_a`` / ``s_v`` the generator drew.

Output of ``generate(preset, seed, out)``: ``<out>/videos/<id>.mp4``, ``<out>/meta.csv`` (the
columns ``python -m mmfusion.extract`` reads: video, id, text, label, split) and
``<out>/truth.csv`` (id, split, kind, s_t, s_a, s_v, y, segment_start, segment_end, duration,
speaker), every file written atomically. Usage::

    python -m mmfusion.data.synthvideo --preset video_small --seed 0 --out datasets/synthvideo_small [--workers 2]
    python -m mmfusion.extract --videos datasets/synthvideo_small/videos --meta datasets/synthvideo_small/meta.csv \\
        --labels --fps 12 --audio-preset prosody --visual face --text-features --out datasets/synthvideo_small_prosody_face.pkl
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmcore.files import atomic_write, write_text
from mmcore.runtime import command_main
from mmfusion.data import synthetic
from mmfusion.data.synthetic import KIND_NAMES, SPLITS, GeneratorParams, Preset, sample_clips
from mmfusion.extract.decode import SAMPLE_RATE
from mmfusion.extract.synthclip import encode_mp4, espeak, require_espeak

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoPreset:
    """Split sizes of one SynthVideo variant."""

    name: str
    n_train: int
    n_valid: int
    n_test: int

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}

    @property
    def n(self) -> int:
        return self.n_train + self.n_valid + self.n_test

    def direct(self) -> Preset:
        """The direct-feature SynthMOSI preset of the same clips (MOSI's feature widths and lengths)."""
        return Preset(self.name, self.n_train, self.n_valid, self.n_test, audio_dim=5, vision_dim=20,
                      max_audio_len=500, max_vision_len=375)


VIDEO_PRESETS: dict[str, VideoPreset] = {
    "video_tiny": VideoPreset("video_tiny", 16, 4, 4),
    "video_small": VideoPreset("video_small", 400, 80, 120),
    "video_mosi": VideoPreset("video_mosi", 1284, 229, 686),  # = synthetic "mosi": same labels and texts
}


@dataclass(frozen=True)
class RenderParams:
    """Constants of the renderer (documented in docs/synthvideo.md)."""

    width: int = 128
    height: int = 96
    fps: int = 12
    lead_s: float = 0.25  # silence before the speech and after it
    gap_s: tuple[float, float] = (0.08, 0.3)  # silence between the neutral and expressive parts
    ramp_s: float = 0.3  # the face expression ramps in and out over this long
    pitch_gain: float = 18.0  # espeak-ng -p units per unit of x = s_a / 3
    range_gain: float = 55.0  # SSML pitch range percent per unit of x
    rate_gain: float = 0.15  # relative speaking rate per unit of x
    amp_gain: float = 0.4  # relative amplitude per unit of x
    gap_gain: float = 8.0  # extra word gap (10 ms units) per unit of -x (negative delivery only)
    noise_db: tuple[float, float] = (-52.0, -40.0)  # background noise level (dBFS, rms)
    bend_gain: float = 0.2  # mouth curvature: centre below the corners by bend_gain * e / 3 head half-heights
    brow_tilt_gain: float = 0.14  # inner brow end up by this * e / 3 head half-heights
    brow_raise_gain: float = 0.06
    warmth_gain: float = 0.07  # lighting: R x (1 + w), B x (1 - w), w = warmth_gain * e / 3
    rest_sd: float = 0.25  # per-clip resting expression (units of s_v) outside and inside the segment
    p_cut: float = 0.25  # chance of one cut (new framing and background) per clip
    n_speakers: int = 16


RENDER = RenderParams()

VOICES = ("en-us+m1", "en-us+m3", "en-gb+m2", "en-us+m4", "en-gb+m6", "en-us+m7",
          "en-us+f1", "en-us+f2", "en-gb+f3", "en-us+f4", "en-us+f5", "en-gb+f1")
# Skin tones (RGB 0-1, light to dark) and non-skin colours for backgrounds and shirts: hues in
# green, blue and purple or near-grey, so the face is the only skin-coloured region of a frame.
SKINS = ((0.94, 0.78, 0.66), (0.88, 0.70, 0.56), (0.80, 0.60, 0.45), (0.70, 0.50, 0.36),
         (0.58, 0.40, 0.28), (0.46, 0.31, 0.22))
PALETTE = ((0.20, 0.35, 0.55), (0.30, 0.50, 0.40), (0.45, 0.45, 0.50), (0.25, 0.30, 0.45), (0.55, 0.60, 0.65),
           (0.35, 0.25, 0.45), (0.20, 0.45, 0.50), (0.60, 0.68, 0.62), (0.15, 0.18, 0.22), (0.40, 0.55, 0.70),
           (0.50, 0.42, 0.60), (0.28, 0.40, 0.30))
EYE_RGB = np.array([0.08, 0.07, 0.07])
BROW_RGB = np.array([0.14, 0.10, 0.08])
MOUTH_RGB = np.array([0.16, 0.04, 0.06])


@dataclass(frozen=True)
class Speaker:
    """A presenter: voice and look (the nuisance shared by that speaker's clips)."""

    voice: str
    pitch: float  # espeak-ng -p of neutral delivery
    rate: float  # words per minute
    amplitude: float  # espeak-ng -a
    skin: tuple[float, float, float]
    shirt: int  # PALETTE index
    backgrounds: tuple[int, int, int]  # PALETTE indices: two gradient ends and a prop
    head_scale: float  # head half-height as a fraction of the frame height


def draw_speaker(rng: np.random.Generator) -> Speaker:
    colours = rng.choice(len(PALETTE), size=4, replace=False)
    return Speaker(voice=str(VOICES[rng.integers(len(VOICES))]), pitch=float(rng.uniform(38, 62)),
                   rate=float(rng.uniform(160, 200)), amplitude=float(rng.uniform(80, 120)),
                   skin=SKINS[rng.integers(len(SKINS))], shirt=int(colours[0]),
                   backgrounds=(int(colours[1]), int(colours[2]), int(colours[3])),
                   head_scale=float(rng.uniform(0.26, 0.36)))


def speakers(seed: int, n: int) -> list[Speaker]:
    """The dataset's presenters (a stream of their own: the clips' streams are untouched)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(101,)))
    return [draw_speaker(rng) for _ in range(n)]


@dataclass(frozen=True)
class ClipInfo:
    """What ``render_clip`` made: seconds of video and the expressive segment."""

    duration: float
    segment_start: float
    segment_end: float


def split_text(text: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """(neutral lead-in, expressive segment, neutral tail): the opener sentence is neutral, the
    segment is the sentences after it (the last one is a neutral tail with probability 0.5 when
    there are three or more); a single sentence is split by words (the middle half expressive)."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
    if len(sentences) >= 3:
        tail = rng.random() < 0.5
        return sentences[0], " ".join(sentences[1 : len(sentences) - tail]), " ".join(sentences[len(sentences) - tail :])
    if len(sentences) == 2:
        return sentences[0], sentences[1], ""
    words = text.split()
    if len(words) < 4:
        return "", text.strip(), ""
    a, b = len(words) // 4, max(len(words) // 4 + 1, (3 * len(words)) // 4)
    return " ".join(words[:a]), " ".join(words[a:b]), " ".join(words[b:])


def synthesize_speech(parts: tuple[str, str, str], s_a: float, speaker: Speaker, rng: np.random.Generator,
                      params: RenderParams) -> tuple[np.ndarray, float, float]:
    """16 kHz speech of the three parts and the segment's (start, end) seconds in it."""
    pitch = speaker.pitch + rng.normal(0.0, 3.0)
    rate = speaker.rate * rng.uniform(0.93, 1.07)
    amp = speaker.amplitude
    x = float(np.clip(s_a, -3.0, 3.0)) / 3.0
    styles = [
        dict(pitch=pitch, pitch_range=100.0, rate=rate, amplitude=amp, word_gap=0.0),
        dict(pitch=pitch + params.pitch_gain * x, pitch_range=100.0 + params.range_gain * x,
             rate=rate * (1.0 + params.rate_gain * x), amplitude=amp * (1.0 + params.amp_gain * x),
             word_gap=params.gap_gain * max(-x, 0.0)),
        dict(pitch=pitch, pitch_range=100.0, rate=rate, amplitude=amp, word_gap=0.0),
    ]
    pieces = [np.zeros(int(params.lead_s * SAMPLE_RATE), np.float32)]
    start = end = 0.0
    for k, (text, style) in enumerate(zip(parts, styles)):
        if not text:
            continue
        if len(pieces) > 1:
            pieces.append(np.zeros(int(rng.uniform(*params.gap_s) * SAMPLE_RATE), np.float32))
        at = sum(len(p) for p in pieces) / SAMPLE_RATE
        wave = espeak(text, voice=speaker.voice, **style)
        pieces.append(wave)
        if k == 1:
            start, end = at, at + len(wave) / SAMPLE_RATE
    pieces.append(np.zeros(int(params.lead_s * SAMPLE_RATE), np.float32))
    speech = np.concatenate(pieces) * np.float32(10 ** (rng.uniform(-3.0, 3.0) / 20))
    noise = rng.normal(0.0, 10 ** (rng.uniform(*params.noise_db) / 20), speech.size).astype(np.float32)
    return np.clip(speech + noise, -1.0, 1.0).astype(np.float32), start, end


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _blend(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    img += alpha[..., None] * (colour - img)


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance in pixels (negative inside)."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _segment_distance(x: np.ndarray, y: np.ndarray, p: tuple[float, float], q: tuple[float, float]) -> np.ndarray:
    px, py = p
    dx, dy = q[0] - px, q[1] - py
    t = np.clip(((x - px) * dx + (y - py) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    return np.hypot(x - px - t * dx, y - py - t * dy)


def background(rng: np.random.Generator, speaker: Speaker, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float: a two-colour gradient with a soft stripe texture and a prop (shelf / window)."""
    a, b, c = (np.array(PALETTE[i]) for i in speaker.backgrounds)
    a = np.clip(a + rng.normal(0.0, 0.03, 3), 0.05, 0.95)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    img = a + ramp[..., None] * (b - a)
    img *= 1.0 + 0.04 * np.sin(2 * np.pi * (xx / rng.uniform(8, 30) + rng.random()))[..., None]
    x0, y0 = rng.uniform(0, width * 0.8), rng.uniform(0, height * 0.5)
    w, h = rng.uniform(10, 40), rng.uniform(8, 30)
    box = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
    img[box] = 0.6 * img[box] + 0.4 * c
    return np.clip(img, 0.0, 1.0)


def _shot(rng: np.random.Generator, speaker: Speaker, params: RenderParams, pad: int) -> dict:
    """One camera framing: background canvas (padded for camera moves), head position and size."""
    scale = speaker.head_scale * rng.uniform(0.9, 1.1)
    return {
        "canvas": background(rng, speaker, params.height + 2 * pad, params.width + 2 * pad),
        "cx": params.width * rng.uniform(0.38, 0.62), "cy": params.height * rng.uniform(0.44, 0.56),
        "b": params.height * scale, "zoom": rng.uniform(-0.08, 0.08),
    }


def draw_frame(shot: dict, pose: dict, speaker: Speaker, params: RenderParams, grid: tuple[np.ndarray, np.ndarray],
               pad: int) -> np.ndarray:
    """One (H, W, 3) float frame: background crop, shirt, head, eyes, brows, mouth, lighting."""
    yy, xx = grid
    h, w = params.height, params.width
    ox, oy = int(round(pose["pan_x"])), int(round(pose["pan_y"]))
    img = shot["canvas"][pad + oy : pad + oy + h, pad + ox : pad + ox + w].copy()
    b = shot["b"] * pose["zoom"]  # head half-height (px)
    a = 0.78 * b  # head half-width
    cx, cy = pose["cx"], pose["cy"]
    e = pose["expr"] / 3.0  # expression in [-1, 1]
    # shirt / shoulders
    r = np.hypot((xx - cx) / (2.1 * a), (yy - (cy + 1.9 * b)) / (0.95 * b))
    _blend(img, _coverage((r - 1.0) * 0.95 * b), np.array(PALETTE[speaker.shirt]))
    # head with soft shading
    rh = np.hypot((xx - cx) / a, (yy - cy) / b)
    skin = np.array(speaker.skin)
    head = _coverage((rh - 1.0) * a)
    img += head[..., None] * (skin * (1.0 - 0.18 * np.clip(rh, 0, 1) ** 2)[..., None] - img)
    # eyes (blink: nearly closed)
    eye_y, eye_dx = cy - 0.18 * b, 0.36 * a
    ew, eh = 0.11 * a, (0.012 if pose["blink"] else 0.075) * b
    for side in (-1, 1):
        re = np.hypot((xx - (cx + side * eye_dx)) / ew, (yy - eye_y) / eh)
        _blend(img, _coverage((re - 1.0) * min(ew, eh) - 0.3), EYE_RGB)
    # brows: inner end up by tilt for positive expressions
    tilt, raise_ = params.brow_tilt_gain * e * b, params.brow_raise_gain * max(e, 0.0) * b
    brow_y = cy - 0.47 * b - raise_
    for side in (-1, 1):
        outer = (cx + side * 0.58 * a, brow_y + 0.5 * tilt)
        inner = (cx + side * 0.14 * a, brow_y - 0.5 * tilt)
        _blend(img, _coverage(_segment_distance(xx, yy, outer, inner) - 0.045 * b), BROW_RGB)
    # mouth: centre line m(u) = yc + bend (1 - u^2), thickness lip + open sqrt(1 - u^2)
    half = (0.36 + 0.06 * max(e, 0.0)) * a
    u = (xx - cx) / half
    bend = params.bend_gain * e * b
    yc = cy + 0.5 * b - 0.5 * bend
    inside_u = np.clip(1.0 - u * u, 0.0, None)
    centre = yc + bend * inside_u
    thick = 0.05 * b + pose["open"] * (0.16 * b) * np.sqrt(inside_u)
    mouth = _coverage(np.abs(yy - centre) - 0.5 * thick) * _coverage((np.abs(u) - 1.0) * half)
    _blend(img, mouth, MOUTH_RGB)
    # lighting tint: warm for positive, cool for negative, plus the clip's own tint
    warmth = params.warmth_gain * e + pose["tint"]
    img *= np.array([1.0 + warmth, 1.0, 1.0 - warmth])
    return img


def _envelope(speech: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Mouth opening per video frame in [0, 1]: the speech rms around each frame time."""
    win = SAMPLE_RATE // 25
    out = np.empty(times.size)
    for i, t in enumerate(times):
        k = int(t * SAMPLE_RATE)
        chunk = speech[max(0, k - win) : k + win]
        out[i] = np.sqrt(np.mean(chunk**2)) if chunk.size else 0.0
    return np.clip(out / max(np.percentile(out, 95), 1e-6), 0.0, 1.0)


def _ramp(times: np.ndarray, start: float, end: float, ramp: float) -> np.ndarray:
    """0 outside [start, end], 1 inside, with smooth ramps of ``ramp`` seconds at both ends."""
    up = np.clip((times - start) / ramp, 0.0, 1.0)
    down = np.clip((end - times) / ramp, 0.0, 1.0)
    x = np.minimum(up, down)
    return x * x * (3 - 2 * x)


def render_frames(duration: float, s_v: float, segment: tuple[float, float], speech: np.ndarray, speaker: Speaker,
                  rng: np.random.Generator, params: RenderParams) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a clip of ``duration`` seconds."""
    n = max(1, int(np.ceil(duration * params.fps)))
    times = np.arange(n) / params.fps
    pad = 12
    grid = np.mgrid[0 : params.height, 0 : params.width].astype(np.float64)
    shots = [_shot(rng, speaker, params, pad)]
    cut = rng.uniform(0.2, 0.8) * duration if rng.random() < params.p_cut else None
    if cut is not None:
        shots.append(_shot(rng, speaker, params, pad))
    rest = rng.normal(0.0, params.rest_sd)
    expr = np.clip(rest + s_v * _ramp(times, *segment, params.ramp_s), -3.0, 3.0)
    mouth_open = _envelope(speech, times)
    blink = np.zeros(n, dtype=bool)
    for t0 in np.cumsum(rng.uniform(1.5, 4.0, 8)):
        blink[(times >= t0) & (times < t0 + 0.15)] = True
    drift = np.cumsum(rng.normal(0.0, 0.35, (n, 2)), axis=0)  # random-walk face drift (px)
    bob_f, bob_p = rng.uniform(0.3, 0.8), rng.uniform(0, 2 * np.pi)
    pan = rng.normal(0.0, 4.0, 2)
    tint = rng.normal(0.0, 0.02)
    frames = np.empty((n, params.height, params.width, 3), dtype=np.uint8)
    for i, t in enumerate(times):
        shot = shots[int(cut is not None and t >= cut)]
        frac = t / max(duration, 1e-6)
        bob = (1.0 + 0.3 * abs(expr[i]) / 3.0) * 1.2 * np.sin(2 * np.pi * bob_f * t + bob_p)
        pose = {
            "cx": shot["cx"] + np.clip(drift[i, 0], -10, 10) + 0.5 * pan[0] * frac,
            "cy": shot["cy"] + np.clip(drift[i, 1], -5, 5) + bob,
            "zoom": 1.0 + shot["zoom"] * frac, "pan_x": np.clip(pan[0] * frac, -pad, pad),
            "pan_y": np.clip(pan[1] * frac, -pad, pad), "expr": expr[i], "open": mouth_open[i],
            "blink": bool(blink[i]), "tint": tint,
        }
        img = draw_frame(shot, pose, speaker, params, (grid[0], grid[1]), pad)
        img += rng.normal(0.0, 0.008, img.shape)
        frames[i] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames


def render_clip(path: str | Path, text: str, s_a: float, s_v: float, seed: int, *, speaker: Speaker | None = None,
                params: RenderParams = RENDER) -> ClipInfo:
    """Write one mp4 (H.264 + AAC) of a presenter saying ``text`` with voice sentiment ``s_a`` and
    face sentiment ``s_v`` (both in [-3, 3]) inside the expressive segment; the same arguments
    give the same file. ``speaker`` (default: drawn from ``seed``) fixes voice and look. Written
    atomically (a temp file beside ``path``, then renamed). Raises ``EspeakMissing`` without espeak-ng."""
    if not text.strip():
        raise ValueError(f"{path}: empty text, nothing to say")
    for name, value in (("s_a", s_a), ("s_v", s_v)):
        if not -3.0 <= float(value) <= 3.0:
            raise ValueError(f"{path}: {name} {value!r} outside [-3, 3]")
    rng = np.random.default_rng(seed)
    speaker = speaker or draw_speaker(np.random.default_rng([seed, 1]))
    parts = split_text(text, rng)
    speech, start, end = synthesize_speech(parts, s_a, speaker, rng, params)
    duration = len(speech) / SAMPLE_RATE
    frames = render_frames(duration, s_v, (start, end), speech, speaker, rng, params)
    atomic_write(path, lambda tmp: encode_mp4(tmp, frames, params.fps, speech))
    return ClipInfo(duration=round(len(frames) / params.fps, 4), segment_start=round(start, 4), segment_end=round(end, 4))


# --------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------


@dataclass
class ClipPlan:
    """One clip to render: its SynthMOSI truth and how to render it."""

    id: str
    split: str
    kind: str
    text: str
    s_t: float
    s_a: float
    s_v: float
    y: float
    seed: int
    speaker: int


def plan(preset: str, seed: int, params: GeneratorParams | None = None) -> list[ClipPlan]:
    """Every clip of ``preset``: SynthMOSI's ``sample_clips`` on the streams ``synthetic.generate``
    uses (same texts, kinds, sentiments and labels for the same split sizes), ids ``synth_%06d``
    in train, valid, test order as there, a render seed and a speaker per clip."""
    if preset not in VIDEO_PRESETS:
        raise ValueError(f"unknown preset {preset!r}: expected one of {sorted(VIDEO_PRESETS)}")
    params = params or GeneratorParams()
    _, *split_seqs = np.random.SeedSequence(seed).spawn(1 + len(SPLITS))
    pick = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(102,)))
    clips, offset = [], 0
    for split, seq in zip(SPLITS, split_seqs):
        n = VIDEO_PRESETS[preset].split_sizes()[split]
        c = sample_clips(np.random.default_rng(seq), n, params)
        for i in range(n):
            index = offset + i
            clips.append(ClipPlan(id=f"synth_{index:06d}", split=split, kind=KIND_NAMES[int(c.kind[i])],
                                  text=c.raw_text[i], s_t=float(c.s_t[i]), s_a=float(c.s_a[i]), s_v=float(c.s_v[i]),
                                  y=float(c.y[i]),
                                  seed=int(np.random.SeedSequence([seed, index]).generate_state(1)[0]),
                                  speaker=int(pick.integers(RENDER.n_speakers))))
        offset += n
    return clips


def _render_job(clip: ClipPlan, path: str, speaker: Speaker) -> ClipInfo:
    return render_clip(path, clip.text, clip.s_a, clip.s_v, clip.seed, speaker=speaker)


def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` (or a file there) unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: not empty; choose a new folder or pass --overwrite")


@dataclass
class GenerateResult:
    clips: list[ClipPlan]
    infos: list[ClipInfo]
    seconds: float


def generate(preset: str, seed: int, out: str | Path, workers: int = 1, overwrite: bool = False,
             limit: int | None = None) -> GenerateResult:
    """Render every clip of ``preset`` into ``out`` (videos/, meta.csv, truth.csv); ``limit`` keeps
    the first clips only (smoke runs). ``workers`` processes render in parallel."""
    out = Path(out)
    require_espeak()
    clips = plan(preset, seed)[:limit]
    check_out_dir(out, overwrite)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    pool_speakers = speakers(seed, RENDER.n_speakers)
    started = time.perf_counter()
    infos: dict[int, ClipInfo] = {}
    bar = tqdm(total=len(clips), desc=f"render {preset}", unit="clip")
    paths = [str(out / "videos" / f"{c.id}.mp4") for c in clips]
    if workers <= 1:
        for i, c in enumerate(clips):
            infos[i] = _render_job(c, paths[i], pool_speakers[c.speaker])
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_render_job, c, paths[i], pool_speakers[c.speaker]): i for i, c in enumerate(clips)}
            for future in as_completed(futures):
                infos[futures[future]] = future.result()
                bar.update()
    bar.close()
    seconds = time.perf_counter() - started
    ordered = [infos[i] for i in range(len(clips))]
    write_text(out / "meta.csv", _csv_text(["video", "id", "text", "label", "split"],
                                           [[f"{c.id}.mp4", c.id, c.text, repr(c.y), c.split] for c in clips]))
    write_text(out / "truth.csv", _csv_text(
        ["id", "split", "kind", "s_t", "s_a", "s_v", "y", "segment_start", "segment_end", "duration", "speaker"],
        [[c.id, c.split, c.kind, repr(c.s_t), repr(c.s_a), repr(c.s_v), repr(c.y), info.segment_start,
          info.segment_end, info.duration, c.speaker] for c, info in zip(clips, ordered)]))
    log.info("rendered %d clips of %s (seed %d) into %s in %.1f s (%.2f clips/s, %d workers)", len(clips), preset,
             seed, out, seconds, len(clips) / max(seconds, 1e-9), workers)
    return GenerateResult(clips=clips, infos=ordered, seconds=seconds)


def direct_pickle(preset: str, seed: int, text_features: bool = True) -> dict:
    """The direct-feature SynthMOSI (MMSA dict, MOSI widths) of the same clips as ``preset``."""
    direct = VIDEO_PRESETS[preset].direct()
    known = synthetic.PRESETS.get(direct.name)
    synthetic.PRESETS[direct.name] = direct  # synthetic.generate takes a preset name
    try:
        return synthetic.generate(direct.name, seed, text_features=text_features)
    finally:
        if known is None:
            synthetic.PRESETS.pop(direct.name, None)
        else:
            synthetic.PRESETS[direct.name] = known


def cue_correlations(data: dict, truth_csv: str | Path, split: str = "train") -> dict[str, list[tuple[str, float, float]]]:
    """Per modality, per feature column of an extracted pickle ``data``: Pearson r over the clips of
    ``split`` between the column's mean inside the expressive segment minus its mean outside it and
    the hidden ``s_a`` (audio) / ``s_v`` (vision) of truth.csv, with r of the column's whole-clip
    mean; sorted by |r| of the segment contrast. Row times are spread evenly over ``duration``."""
    with Path(truth_csv).open(newline="") as f:
        truth = {r["id"]: r for r in csv.DictReader(f)}
    part = data[split]
    rows = [truth[i] for i in part["id"]]
    start = np.array([float(r["segment_start"]) for r in rows])
    end = np.array([float(r["segment_end"]) for r in rows])
    report = {}
    for modality, key, target in (("audio", "audio", "s_a"), ("vision", "vision", "s_v")):
        x, lengths = part[key], part[f"{key}_lengths"]
        contrast = np.zeros((len(rows), x.shape[2]))
        whole = np.zeros_like(contrast)
        for i, n in enumerate(lengths):
            t = (np.arange(n) + 0.5) / n * float(part["duration"][i])
            inside = (t > start[i]) & (t < end[i])
            seq = x[i, :n].astype(np.float64)
            whole[i] = seq.mean(axis=0)
            if inside.any() and (~inside).any():
                contrast[i] = seq[inside].mean(axis=0) - seq[~inside].mean(axis=0)
        y = np.array([float(r[target]) for r in rows])
        names = data["extraction"][f"{key}_features"]

        def corr(column: np.ndarray) -> float:
            return float(np.corrcoef(column, y)[0, 1]) if column.std() > 1e-12 else 0.0

        table = [(names[k], corr(contrast[:, k]), corr(whole[:, k])) for k in range(x.shape[2])]
        report[modality] = sorted(table, key=lambda row: -abs(row[1]))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(VIDEO_PRESETS), required=True,
                        help="video_tiny (24 clips), video_small (600) or video_mosi (2199, MOSI's splits)")
    parser.add_argument("--seed", type=int, default=0, help="clip and render seed (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. datasets/synthvideo_small")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="render processes (default: 2, or 1 on a 1-core machine)")
    parser.add_argument("--limit", type=int, help="render only the first N clips (smoke runs)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--direct", type=Path,
                        help="also write the direct-feature SynthMOSI pickle of the same clips here (with text features)")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: expected at least 1")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: expected at least 1")
    result = generate(args.preset, args.seed, args.out, workers=args.workers, overwrite=args.overwrite, limit=args.limit)
    log.info("wrote %s: %d videos, meta.csv, truth.csv", args.out, len(result.clips))
    if args.direct is not None:
        synthetic.write_pickle(direct_pickle(args.preset, args.seed), args.direct)
        log.info("wrote %s: direct SynthMOSI features of the same clips", args.direct)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m mmfusion.data.synthvideo",
                        "Render SynthMOSI as mp4 videos (espeak-ng narration, drawn presenter).", add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
