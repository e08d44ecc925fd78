"""SynthMOSI worlds: where and how the audio / vision evidence ``s_a`` / ``s_v`` shows in a clip.

The ``default`` world is SynthMOSI as designed (``mmfusion.data.synthetic``): a valence shift and an
arousal change inside an expressive segment covering 25-50% of the clip at a random place. The other
worlds change one thing each (docs/synthmosi_worlds.md has the table):

========  ==========================================================================================
level     the shift covers the whole clip (a level: the pooled mean carries it)
segment   a short segment (8-15% of the clip) at a random place
burst     a short, stronger segment inside the last 20% of the clip
trend     a ramp ``shift(t) = gain s (2 t / (len - 1) - 1)`` over the clip (zero mean: a rate of
          change, not a level); no arousal change
speaker   the default segment under per-speaker offsets and scales of the observed dimensions
          (``x' = scale_k x + offset_k`` for speaker k of a shared pool)
absent    in a fraction of clips one modality shows nothing (``s_m = 0``): uninformative (noise
          only) or missing (all-zero frames)
cliptype  a clip type (close-up / voice-over / balanced), visible in a vision channel, sets which
          modality's delivery counts in the label: ``w (lambda_a s_a + lambda_v s_v)``
sarcasm   more sarcastic clips, and the flip is decided by the voice alone: positive words said
          with negative prosody (``s_a < 0``) flip the label
========  ==========================================================================================

This module only describes the worlds and draws their clip-level extras (expression profiles,
speakers); ``synthetic.generate(..., world=name)`` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Expression = Literal["segment", "level", "short", "burst", "trend"]
CLIP_TYPE_NAMES = ("closeup", "voiceover", "balanced")


@dataclass(frozen=True)
class World:
    """One SynthMOSI world: how the unimodal evidence is expressed, and its knobs."""

    name: str
    summary: str
    expression: Expression = "segment"  # shape and place of the valence shift in the clip
    short_frac: tuple[float, float] = (0.08, 0.15)  # segment length / clip length for "short" and "burst"
    burst_tail: float = 0.2  # "burst": the segment lies inside the last burst_tail of the clip
    burst_gain: float = 1.5  # "burst": shift multiplier inside the segment
    trend_gain: float = 1.5  # "trend": shift at the clip's ends, in units of valence_shift * s
    n_speakers: int = 0  # > 0: per-speaker offsets and scales of the observed dims ("speaker")
    speaker_offset_sd: float = 1.5
    speaker_log_scale_sd: float = 0.5
    p_absent: float = 0.0  # share of clips in which audio or vision (one of them) shows nothing
    p_missing: float = 0.5  # ... of which this share has all-zero frames (missing), the rest noise only
    clip_types: bool = False  # "cliptype": the label weights audio / vision by the clip type
    type_weights: tuple[tuple[float, float], ...] = ((0.1, 0.9), (0.9, 0.1), (0.5, 0.5))  # (lambda_a, lambda_v)
    type_delivery: float = 0.7  # w of w (lambda_a s_a + lambda_v s_v)
    type_marker: float = 1.5  # latent offset of vision channel 3 by type: +m close-up, -m voice-over, 0
    irony_from_audio: bool = False  # "sarcasm": irony = clip((-s_a - onset) / width, 0, 1) for s_t > 0
    params: tuple[tuple[str, float], ...] = field(default_factory=tuple)  # GeneratorParams overrides

    @property
    def is_default(self) -> bool:
        return self.name == "default"

    @property
    def text_world(self) -> str:
        """The world whose text, labels and splits this one has: ``"default"`` for the worlds that change
        only how the audio / vision frames show the evidence (expression, speakers), itself otherwise
        (the label or the evidence itself changes). A text-only model is the same in both."""
        changes_label = self.p_absent > 0 or self.clip_types or self.irony_from_audio or bool(self.params)
        return self.name if changes_label else "default"


WORLDS: dict[str, World] = {w.name: w for w in (
    World("default", "expressive segment of 25-50% of the clip at a random place (SynthMOSI as designed)"),
    World("level", "level shift over the whole clip", expression="level"),
    World("segment", "short segment (8-15% of the clip) at a random place", expression="short"),
    World("burst", "short, stronger segment in the last 20% of the clip", expression="burst"),
    World("trend", "ramp over the clip with zero mean (rate of change, not a level)", expression="trend"),
    World("speaker", "default segment under per-speaker offsets and scales (24 speakers)", n_speakers=24),
    World("absent", "one modality shows nothing in 35% of clips (half noise only, half all-zero frames)",
          p_absent=0.35),
    World("cliptype", "clip type (close-up / voice-over / balanced) sets which modality counts", clip_types=True),
    World("sarcasm", "25% sarcastic clips; positive words with negative voice flip the label",
          irony_from_audio=True, params=(("p_sarcastic", 0.25),)),
)}


def get_world(name: str) -> World:
    """The world called ``name``; unknown names are refused with the list."""
    if name not in WORLDS:
        raise ValueError(f"unknown SynthMOSI world {name!r}: expected one of {list(WORLDS)}")
    return WORLDS[name]


def expression_profile(rng: np.random.Generator, world: World, lengths: np.ndarray,
                       max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(region, profile, arousal_region), each (n, max_len), of the expressions other than the default
    ``"segment"`` (``synthetic._segment_mask``).

    The valence channels get ``valence_shift * s * profile`` on ``region``; the arousal channel's
    noise is scaled by ``1 + arousal_gain |s|`` on ``arousal_region``.
    """
    n = lengths.size
    t = np.arange(max_len)[None, :]
    inside = t < lengths[:, None]
    if world.expression in ("level", "trend"):
        region = inside
        if world.expression == "level":
            return region, np.ones((n, max_len)), region
        ramp = 2.0 * t / np.maximum(lengths - 1, 1)[:, None] - 1.0  # -1 at the first frame, +1 at the last
        return region, world.trend_gain * ramp, np.zeros_like(region)
    frac = rng.uniform(*world.short_frac, n)
    seg_len = np.minimum(np.maximum(np.round(frac * lengths), 2), lengths)
    if world.expression == "short":
        start = np.floor(rng.random(n) * (lengths - seg_len + 1))
        gain = 1.0
    elif world.expression == "burst":
        room = np.maximum(np.floor(world.burst_tail * lengths) - seg_len, 0)  # free frames inside the tail
        start = lengths - seg_len - np.floor(rng.random(n) * (room + 1))
        gain = world.burst_gain
    else:
        raise ValueError(f"world {world.name!r}: expression {world.expression!r} has no profile here")
    region = (t >= start[:, None]) & (t < (start + seg_len)[:, None])
    return region, np.full((n, max_len), gain), region


@dataclass(frozen=True)
class Speakers:
    """A pool of speakers shared by the splits: per observed dimension offset and scale of each."""

    offset: np.ndarray  # (S, D)
    scale: np.ndarray  # (S, D)


def make_speakers(rng: np.random.Generator, world: World, dim: int) -> Speakers:
    offset = rng.normal(0.0, world.speaker_offset_sd, (world.n_speakers, dim))
    return Speakers(offset=offset, scale=np.exp(rng.normal(0.0, world.speaker_log_scale_sd, (world.n_speakers, dim))))
