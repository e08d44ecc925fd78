"""SynthMOSI: a synthetic multimodal sentiment benchmark written in the MMSA pickle format.

Each clip is a presenter talking about a product (headphones, a blender, sneakers, ...). The
generative model (equations in ``datasets/README.md``) per clip i:

1. a text kind ``k_i``: *clear* (the words carry the opinion, ~72%), *ambiguous* (descriptive
   or ironic-sounding lines said both ways, ~18%: ``s_t = 0``) or *sarcastic* (~10%: positive
   words, negative opinion, negative voice and face); and a latent opinion ``o_i`` in [-3, 3];
2. hidden unimodal sentiments on the 1/3 grid: ``s_t`` is the lexicon value of the words that
   were written (intensity tiers, negation, hedging), ``s_a``/``s_v`` follow ``o_i`` loosely for
   clear clips and closely for the other kinds (the voice and face decide there);
3. the multimodal label (``multimodal_target``)
   ``y* = 0.75 s_t (1 - 2 irony) + (1 - |s_t|/3) [0.1 (s_a + s_v) + 0.5 g(s_a, s_v)]`` with the
   agreement term ``g = sign(s_a) sqrt(s_a s_v)`` when ``s_a s_v > 0`` else 0 and
   ``irony = clip(-g - 0.5, 0, 1)`` for positive words; ``y`` is the mean of three simulated
   annotator ratings ``clip(round(y* + e_j), -3, 3)``, ``e_j ~ N(0, 0.35^2)`` (the 1/3 grid);
4. audio and vision sequences: a few latent channels (valence shift and arousal-dependent
   variance inside an expressive segment of the clip, plus nuisance channels), per-clip baseline
   offsets, AR(1) temporal noise, mixed into Da / Dv observed dimensions by a random matrix
   shared across the dataset, plus white noise; zero-padded after each clip's length.

Usage (``--world`` picks a world of ``mmfusion.data.worlds``; docs/synthmosi_worlds.md)::

    python -m mmfusion.data.synthetic --size mosi --seed 0 --out datasets/synthmosi_mosi.pkl
    python -m mmfusion.data.synthetic --size mosi --seed 0 --world trend --out datasets/synthmosi_trend.pkl
"""

from __future__ import annotations

import argparse
import logging
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from mmcore.files import atomic_write
from mmcore.hf import default_model_path, load_model, load_tokenizer
from mmcore.runtime import command_main
from mmfusion.data.worlds import CLIP_TYPE_NAMES, WORLDS, Speakers, World, expression_profile, get_world, make_speakers

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
TEXT_LEN = 50  # MMSA's text length L (tokens, incl. [CLS] and [SEP])
KIND_CLEAR, KIND_AMBIGUOUS, KIND_SARCASTIC = 0, 1, 2
KIND_NAMES = ("clear", "ambiguous", "sarcastic")


@dataclass(frozen=True)
class Preset:
    """Sizes of one SynthMOSI variant (split sizes, feature widths, maximum sequence lengths)."""

    name: str
    n_train: int
    n_valid: int
    n_test: int
    audio_dim: int
    vision_dim: int
    max_audio_len: int
    max_vision_len: int

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}


PRESETS: dict[str, Preset] = {
    "mosi": Preset("mosi", 1284, 229, 686, audio_dim=5, vision_dim=20, max_audio_len=500, max_vision_len=375),
    "mosei": Preset("mosei", 16326, 1871, 4659, audio_dim=74, vision_dim=35, max_audio_len=500, max_vision_len=375),
    "tiny": Preset("tiny", 96, 32, 32, audio_dim=5, vision_dim=20, max_audio_len=60, max_vision_len=45),
}


@dataclass(frozen=True)
class GeneratorParams:
    """Constants of the generative model (documented in datasets/README.md)."""

    p_ambiguous: float = 0.18  # text kind probabilities; clear takes the rest
    p_sarcastic: float = 0.10
    p_near_zero: float = 0.15  # share of opinions drawn near 0 (|o| < 0.7)
    w_text: float = 0.75  # y* = w_text s_t (1 - 2 irony) + gate [w_av (s_a + s_v) + w_agree g(s_a, s_v)]
    w_av: float = 0.1
    w_agree: float = 0.5
    text_gate: float = 1.0  # gate = 1 - text_gate |s_t| / 3: explicit words outweigh the delivery
    irony_onset: float = 0.5  # irony = clip((-g - onset) / width, 0, 1) when s_t > 0
    irony_width: float = 1.0
    annotator_sd: float = 0.35  # per-annotator noise before rounding to an integer rating
    n_annotators: int = 3
    av_gain_clear: float = 0.4  # s_a, s_v ~ gain * o + N(0, sd^2) for clear text ...
    av_sd_clear: float = 1.0
    av_gain_open: float = 1.1  # ... and for ambiguous / sarcastic text (voice and face decide)
    av_sd_open: float = 0.45
    p_flat_clear: float = 0.3  # chance a modality shows nothing (deadpan voice, still face)
    p_flat_open: float = 0.05
    valence_shift: float = 1.0  # latent shift per unit of s_m inside the expressive segment
    arousal_gain: float = 0.3  # noise sd multiplier 1 + gain |s_m| inside the segment
    baseline_sd: float = 0.4  # per-clip (speaker) offset of each latent channel
    ar_phi: tuple[float, ...] = (0.9, 0.8, 0.95, 0.7, 0.85, 0.9, 0.6, 0.8)  # AR(1) per latent channel
    white_sd: float = 0.15  # observation noise added after mixing


# --------------------------------------------------------------------------------------------
# Text: products, lexicon with intensity, negation and hedging.
# --------------------------------------------------------------------------------------------

PRODUCTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pair of headphones", ("sound", "battery life", "noise cancelling", "bass", "fit")),
    ("blender", ("motor", "jar", "noise level", "cleanup", "blade")),
    ("pair of sneakers", ("fit", "sole", "cushioning", "stitching", "grip")),
    ("lipstick", ("color", "texture", "staying power", "packaging", "finish")),
    ("phone charger", ("charging speed", "cable", "build quality", "battery")),
    ("smartwatch", ("screen", "battery life", "heart rate sensor", "strap", "app")),
    ("air fryer", ("basket", "cooking time", "temperature control", "cleanup")),
    ("backpack", ("zipper", "laptop sleeve", "material", "shoulder padding")),
    ("coffee maker", ("brew time", "carafe", "coffee", "water tank")),
    ("vacuum cleaner", ("suction", "battery", "dust bin", "noise level")),
    ("yoga mat", ("grip", "thickness", "material", "smell")),
    ("moisturizer", ("texture", "scent", "hydration", "packaging")),
    ("gaming mouse", ("sensor", "click", "weight", "software")),
    ("desk lamp", ("brightness", "dimmer", "color temperature", "base")),
    ("water bottle", ("lid", "insulation", "finish", "size")),
    ("rain jacket", ("hood", "waterproofing", "zipper", "fit")),
    ("electric kettle", ("boil time", "handle", "lid", "design")),
    ("bluetooth speaker", ("volume", "bass", "battery life", "pairing")),
    ("foundation", ("coverage", "shade", "finish", "texture")),
    ("robot vacuum", ("app", "navigation", "suction", "battery")),
)

OPENERS: tuple[str, ...] = (
    "Hey everyone, today I am trying out the new {product}.",
    "So I have been using this {product} for about two weeks now.",
    "Okay, let us talk about this {product}.",
    "Welcome back, this is my review of the {product}.",
    "I finally got my hands on the {product} everyone keeps asking about.",
    "Here is the {product} I ordered last month.",
    "Quick video about the {product} I bought online.",
    "This is the {product} from that sale last week.",
    "A lot of you asked me about this {product}.",
    "Today we are unboxing and testing a {product}.",
    "I have had this {product} for a few days now.",
    "Let me tell you about this {product}.",
)

# Aspect adjectives: (phrase, text sentiment value, hedgeable). Negated entries spell the negation
# out ("not great" = -1, "not bad" = +1): a negated positive is mildly negative and vice versa.
ADJECTIVES: tuple[tuple[str, float, bool], ...] = (
    ("absolutely amazing", 3.0, False),
    ("incredible", 3.0, False),
    ("perfect", 3.0, False),
    ("outstanding", 3.0, False),
    ("great", 2.0, True),
    ("really good", 2.0, False),
    ("excellent", 2.0, False),
    ("impressive", 2.0, True),
    ("decent", 1.0, True),
    ("pretty good", 1.0, False),
    ("solid", 1.0, True),
    ("nice", 1.0, True),
    ("not bad", 1.0, False),
    ("about what you would expect", 0.0, False),
    ("pretty standard", 0.0, False),
    ("nothing special", -1.0 / 3.0, False),
    ("not great", -1.0, False),
    ("a bit disappointing", -1.0, False),
    ("mediocre", -1.0, True),
    ("underwhelming", -1.0, True),
    ("not good at all", -2.0, False),
    ("bad", -2.0, True),
    ("really poor", -2.0, False),
    ("frustrating", -2.0, True),
    ("terrible", -3.0, False),
    ("awful", -3.0, False),
    ("a complete joke", -3.0, False),
    ("absolutely horrible", -3.0, False),
)
# Hedges scale the value of a hedgeable adjective: "kind of great" = 0.5 * 2.
HEDGES: tuple[tuple[str, float], ...] = (("", 1.0), ("kind of ", 0.5), ("sort of ", 0.5), ("somewhat ", 0.5))
ASPECT_FRAMES: tuple[str, ...] = (
    "The {aspect} is {adj}.",
    "Honestly, the {aspect} is {adj}.",
    "I have to say the {aspect} is {adj}.",
    "I guess the {aspect} is {adj}.",  # sentence-level hedge: value * 0.6
)
FRAME_SCALE = np.array([1.0, 1.0, 1.0, 0.6])

VERDICTS: tuple[tuple[str, float], ...] = (
    ("I absolutely love this {product}.", 3.0),
    ("Honestly, the best {product} I have ever owned.", 3.0),
    ("I really like this {product}.", 2.0),
    ("I would definitely recommend it.", 2.0),
    ("It does the job.", 1.0),
    ("I like it overall, I guess.", 1.0),
    ("Not sure yet, we will see.", 0.0),
    ("I do not love it.", -1.0),
    ("I expected a bit more, to be honest.", -1.0),
    ("I would not recommend it.", -2.0),
    ("I really regret buying it.", -2.0),
    ("I absolutely hate this {product}.", -3.0),
    ("Save your money and skip this one.", -3.0),
)

# Ambiguous kind: descriptive lines and ironic-sounding lines that presenters say both sincerely
# and sarcastically; s_t = 0 and only the voice and face tell the polarity.
AMBIGUOUS_LINES: tuple[str, ...] = (
    "It comes in three colors and ships with a one year warranty.",
    "The {aspect} is exactly what the box says.",
    "It has a {aspect} and a small manual in the box.",
    "Let me show you the {aspect} up close.",
    "The {aspect} works the way it is supposed to work.",
    "It arrived on Tuesday in a plain brown box.",
    "This is the standard version, not the pro one.",
    "Here you can see the {aspect} from the side.",
    "Oh great, another {product} with a {aspect} like this.",
    "Wow, the {aspect} is really something else.",
    "Well, this {product} is certainly going to get noticed.",
    "So yeah, the {aspect} is definitely memorable.",
    "I was not expecting the {aspect} to be like this.",
    "Let us just say the {aspect} surprised me.",
    "Yeah, this is exactly the {aspect} I was hoping for.",
    "Of course the {aspect} does that, what a surprise.",
)
NEUTRAL_TAILS: tuple[str, ...] = (
    "",
    " Let me show you how it works.",
    " We will see how it holds up.",
    " Anyway, that is the {aspect}.",
    " So yeah, that is it for now.",
)


def quantise(values: np.ndarray) -> np.ndarray:
    """Round to the 1/3 grid and clip to [-3, 3] (the scale of averaged 3-rater annotations)."""
    return np.clip(np.round(np.asarray(values) * 3.0) / 3.0, -3.0, 3.0)


def _pick_nearest(
    rng: np.random.Generator, values: np.ndarray, targets: np.ndarray, temperature: float, positive_only: np.ndarray
) -> np.ndarray:
    """For each target, the index of a candidate value near it (Gumbel-perturbed argmin of |v - t|);
    rows flagged ``positive_only`` choose among candidates with value >= 0.5 only."""
    cost = np.abs(values[None, :] - targets[:, None]) - temperature * rng.gumbel(size=(targets.size, values.size))
    cost[positive_only[:, None] & (values[None, :] < 0.5)] = np.inf
    return np.argmin(cost, axis=1)


@dataclass
class Clips:
    """Hidden variables of n clips (before features): the ground truth of the generative model."""

    kind: np.ndarray  # (n,) int8: KIND_CLEAR / KIND_AMBIGUOUS / KIND_SARCASTIC
    opinion: np.ndarray  # (n,) latent opinion o in [-3, 3]
    s_t: np.ndarray  # (n,) text sentiment on the 1/3 grid
    s_a: np.ndarray
    s_v: np.ndarray
    y: np.ndarray  # (n,) multimodal label on the 1/3 grid
    raw_text: list[str]


def agreement(s_a: np.ndarray, s_v: np.ndarray) -> np.ndarray:
    """g = sign(s_a) sqrt(s_a s_v) when s_a s_v > 0, else 0: voice and face count jointly only
    when they agree (geometric mean of their intensities)."""
    product = s_a * s_v
    return np.where(product > 0, np.sign(s_a) * np.sqrt(np.abs(product)), 0.0)


def multimodal_target(s_t: np.ndarray, s_a: np.ndarray, s_v: np.ndarray, params: GeneratorParams) -> np.ndarray:
    """y* = w_t s_t (1 - 2 irony) + gate [w_av (s_a + s_v) + w_g g], clipped to [-3, 3].

    gate = 1 - c |s_t| / 3 (explicit words outweigh the delivery); irony = clip((-g - onset) /
    width, 0, 1) for positive words (s_t > 0), else 0: positive words said with a voice and face
    that agree on negative read as sarcasm, and their meaning flips.
    """
    g = agreement(s_a, s_v)
    irony = np.where(s_t > 0, np.clip((-g - params.irony_onset) / params.irony_width, 0.0, 1.0), 0.0)
    gate = 1.0 - params.text_gate * np.abs(s_t) / 3.0
    y = params.w_text * s_t * (1.0 - 2.0 * irony) + gate * (params.w_av * (s_a + s_v) + params.w_agree * g)
    return np.clip(y, -3.0, 3.0)


def annotate(rng: np.random.Generator, y_star: np.ndarray, params: GeneratorParams) -> np.ndarray:
    """y: the mean of ``n_annotators`` ratings ``clip(round(y* + e_j), -3, 3)``, e_j ~ N(0, sd^2), on the 1/3 grid."""
    noise = rng.normal(0.0, params.annotator_sd, (y_star.size, params.n_annotators))
    ratings = np.clip(np.round(y_star[:, None] + noise), -3, 3)
    return quantise(ratings.mean(axis=1))


def sample_clips(rng: np.random.Generator, n: int, params: GeneratorParams) -> Clips:
    """Draw kinds, opinions, texts, hidden unimodal sentiments and annotated labels for n clips."""
    p_clear = 1.0 - params.p_ambiguous - params.p_sarcastic
    kind = rng.choice(3, size=n, p=[p_clear, params.p_ambiguous, params.p_sarcastic]).astype(np.int8)
    sarcastic = kind == KIND_SARCASTIC

    # Latent opinion: both polarities, some mass near 0 (MOSI-like). Sarcasm is clearly negative.
    near_zero = (rng.random(n) < params.p_near_zero) & ~sarcastic
    magnitude = np.where(near_zero, rng.uniform(0.0, 0.7, n), np.abs(rng.normal(1.6, 0.8, n)))
    sign = np.where(sarcastic | (rng.random(n) < 0.42), -1.0, 1.0)  # sarcasm adds negatives
    opinion = np.clip(sign * np.maximum(magnitude, np.where(sarcastic, 1.0, 0.0)), -3.0, 3.0)

    # --- text ----------------------------------------------------------------------------
    # clear: words near the opinion; sarcastic: words near the opposite (positive) of it.
    product_idx = rng.integers(len(PRODUCTS), size=n)
    aspect_u = rng.random(n)
    opener_idx = rng.integers(len(OPENERS), size=n)
    target = np.where(sarcastic, np.abs(opinion), opinion) + rng.normal(0.0, 0.4, n)

    adj_values = np.array([v for _, v, _ in ADJECTIVES])
    hedgeable = np.array([h for _, _, h in ADJECTIVES])
    # candidates: (adjective, hedge, frame) triples with their values
    cand = [(a, h, f) for a in range(len(ADJECTIVES)) for h in range(len(HEDGES)) for f in range(len(ASPECT_FRAMES))
            if (h == 0 or hedgeable[a]) and not (f == 3 and h > 0)]
    cand_arr = np.array(cand)
    hedge_scale = np.array([s for _, s in HEDGES])
    cand_values = adj_values[cand_arr[:, 0]] * hedge_scale[cand_arr[:, 1]] * FRAME_SCALE[cand_arr[:, 2]]
    chosen = _pick_nearest(rng, cand_values, target, 0.25, sarcastic)
    aspect_choice, aspect_value = cand_arr[chosen], cand_values[chosen]

    verdict_values = np.array([v for _, v in VERDICTS])
    has_verdict = rng.random(n) < 0.65
    verdict_idx = _pick_nearest(rng, verdict_values, target, 0.3, sarcastic)
    text_value = np.where(has_verdict, (aspect_value + verdict_values[verdict_idx]) / 2.0, aspect_value)

    ambiguous_idx = rng.integers(len(AMBIGUOUS_LINES), size=n)
    tail_idx = rng.integers(len(NEUTRAL_TAILS), size=n)
    s_t = np.where(kind == KIND_AMBIGUOUS, 0.0, quantise(text_value))

    texts: list[str] = []
    for i in range(n):  # string assembly only; every number above is vectorised
        product, aspects = PRODUCTS[product_idx[i]]
        aspect = aspects[int(aspect_u[i] * len(aspects))]
        parts = [OPENERS[opener_idx[i]].format(product=product)]
        if kind[i] == KIND_AMBIGUOUS:
            line = AMBIGUOUS_LINES[ambiguous_idx[i]] + NEUTRAL_TAILS[tail_idx[i]]
            parts.append(line.format(product=product, aspect=aspect))
        else:
            a, h, f = aspect_choice[i]
            parts.append(ASPECT_FRAMES[f].format(aspect=aspect, adj=HEDGES[h][0] + ADJECTIVES[a][0]))
            if has_verdict[i]:
                parts.append(VERDICTS[verdict_idx[i]][0].format(product=product))
        texts.append(" ".join(parts))

    # --- audio / vision sentiments ---------------------------------------------------------
    clear = kind == KIND_CLEAR
    gain = np.where(clear, params.av_gain_clear, params.av_gain_open)
    sd = np.where(clear, params.av_sd_clear, params.av_sd_open)
    p_flat = np.where(clear, params.p_flat_clear, params.p_flat_open)
    s_a = quantise(gain * opinion + rng.normal(0.0, 1.0, n) * sd) * (rng.random(n) >= p_flat)
    s_v = quantise(gain * opinion + rng.normal(0.0, 1.0, n) * sd) * (rng.random(n) >= p_flat)

    # --- multimodal label from simulated annotators ------------------------------------------
    y = annotate(rng, multimodal_target(s_t, s_a, s_v, params), params)
    return Clips(kind=kind, opinion=opinion, s_t=s_t, s_a=s_a + 0.0, s_v=s_v + 0.0, y=y, raw_text=texts)


# --------------------------------------------------------------------------------------------
# Worlds (mmfusion.data.worlds): hidden variables and labels of the non-default worlds.
# --------------------------------------------------------------------------------------------

ABSENT_NONE, ABSENT_AUDIO, ABSENT_VISION = 0, 1, 2
WORLD_STREAM = 1000  # SeedSequence spawn keys of the worlds' own random streams (the default uses 0-3)


@dataclass
class WorldExtras:
    """A non-default world's per-clip hidden variables (what the sequences and the label also depend on)."""

    absent: np.ndarray  # (n,) int8: ABSENT_NONE / ABSENT_AUDIO / ABSENT_VISION
    missing: np.ndarray  # (n,) bool: the absent modality has all-zero frames (else noise only)
    clip_type: np.ndarray  # (n,) int8 index into CLIP_TYPE_NAMES (all "balanced" outside "cliptype")
    speaker: np.ndarray  # (n,) int64 index into the speaker pool (0 outside "speaker")


def world_target(s_t: np.ndarray, s_a: np.ndarray, s_v: np.ndarray, params: GeneratorParams, world: World,
                 clip_type: np.ndarray) -> np.ndarray:
    """y* of ``world``; the default formula (``multimodal_target``) except in two worlds.

    cliptype: ``y* = w_t s_t (1 - 2 irony) + gate w (lambda_a(c) s_a + lambda_v(c) s_v)`` with the clip
    type c's weights (irony from the agreement g as by default). sarcasm: irony = clip((-s_a - onset) /
    width, 0, 1) for positive words: the voice alone decides the flip.
    """
    if not (world.clip_types or world.irony_from_audio):
        return multimodal_target(s_t, s_a, s_v, params)
    g = agreement(s_a, s_v)
    flip_cue = s_a if world.irony_from_audio else g
    irony = np.where(s_t > 0, np.clip((-flip_cue - params.irony_onset) / params.irony_width, 0.0, 1.0), 0.0)
    gate = 1.0 - params.text_gate * np.abs(s_t) / 3.0
    if world.clip_types:
        lam = np.asarray(world.type_weights)[clip_type]
        delivery = world.type_delivery * (lam[:, 0] * s_a + lam[:, 1] * s_v)
    else:
        delivery = params.w_av * (s_a + s_v) + params.w_agree * g
    return np.clip(params.w_text * s_t * (1.0 - 2.0 * irony) + gate * delivery, -3.0, 3.0)


def apply_world(rng: np.random.Generator, clips: Clips, params: GeneratorParams, world: World) -> WorldExtras:
    """Draw ``world``'s per-clip hidden variables on its own stream ``rng`` and, where the world changes
    the label (absent, cliptype, sarcasm), set ``s_a`` / ``s_v`` and re-annotate ``y`` in place."""
    n = clips.y.size
    absent = np.zeros(n, np.int8)
    missing = np.zeros(n, bool)
    if world.p_absent > 0:
        which = rng.random(n)
        absent = np.where(which < world.p_absent / 2, ABSENT_AUDIO, np.where(which < world.p_absent, ABSENT_VISION,
                                                                                 ABSENT_NONE)).astype(np.int8)
        missing = (absent != ABSENT_NONE) & (rng.random(n) < world.p_missing)
        clips.s_a = np.where(absent == ABSENT_AUDIO, 0.0, clips.s_a)  # the modality shows nothing: s_m = 0
        clips.s_v = np.where(absent == ABSENT_VISION, 0.0, clips.s_v)
    clip_type = np.full(n, CLIP_TYPE_NAMES.index("balanced"), np.int8)
    if world.clip_types:
        clip_type = rng.integers(len(CLIP_TYPE_NAMES), size=n).astype(np.int8)
    speaker = rng.integers(world.n_speakers, size=n) if world.n_speakers > 0 else np.zeros(n, np.int64)
    if world.p_absent > 0 or world.clip_types or world.irony_from_audio:
        clips.y = annotate(rng, world_target(clips.s_t, clips.s_a, clips.s_v, params, world, clip_type), params)
    return WorldExtras(absent=absent, missing=missing, clip_type=clip_type, speaker=speaker.astype(np.int64))


# --------------------------------------------------------------------------------------------
# Audio and vision sequences.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixing:
    """Dataset-wide observation model of one modality: x = scale * (A z) + offset + white noise."""

    matrix: np.ndarray  # (D, K)
    offset: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)


def make_mixing(rng: np.random.Generator, dim: int, latent: int) -> Mixing:
    matrix = rng.normal(0.0, 1.0, (dim, latent)) / np.sqrt(latent)
    return Mixing(matrix=matrix, offset=rng.normal(0.0, 0.5, dim), scale=np.exp(rng.normal(0.0, 0.3, dim)))


AUDIO_LATENT = {5: 5, 74: 8}  # latent channels: 0 valence (pitch level), 1 arousal (energy dynamics), rest nuisance
VISION_LATENT = 6  # 0 smile (AU12), 1 brow lowerer (AU4), 2 head motion, rest nuisance


def _ar1(rng: np.random.Generator, n: int, length: int, phis: tuple[float, ...]) -> np.ndarray:
    """(n, length, K) stationary AR(1) noise with unit variance, z_t = phi z_{t-1} + sqrt(1-phi^2) e_t."""
    out = np.empty((n, length, len(phis)))
    for k, phi in enumerate(phis):  # loop over channels only; time is filtered in C
        eps = rng.normal(0.0, 1.0, (n, length))
        eps[:, 0] /= np.sqrt(1.0 - phi**2)  # start in the stationary distribution
        out[:, :, k] = lfilter([np.sqrt(1.0 - phi**2)], [1.0, -phi], eps, axis=1)
    return out


def _segment_mask(rng: np.random.Generator, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """(n, max_len) bool: an expressive segment covering 25-50% of each clip at a random place."""
    frac = rng.uniform(0.25, 0.5, lengths.size)
    seg_len = np.maximum(np.round(frac * lengths), 2)
    start = np.floor(rng.random(lengths.size) * (lengths - seg_len + 1))
    t = np.arange(max_len)[None, :]
    return (t >= start[:, None]) & (t < (start + seg_len)[:, None])


def modality_sequences(
    rng: np.random.Generator,
    sentiment: np.ndarray,
    lengths: np.ndarray,
    max_len: int,
    mixing: Mixing,
    modality: str,
    params: GeneratorParams,
    chunk: int = 1024,
    segments: np.ndarray | None = None,
    *,
    world: World | None = None,
    extras: WorldExtras | None = None,
    speakers: Speakers | None = None,
) -> np.ndarray:
    """(n, max_len, D) float32 features expressing ``sentiment`` (n,), zero after each length.

    Latent z (n, T, K) = per-clip baseline b + AR(1) noise, with inside the expressive segment
    S: valence channels shifted by ``valence_shift * s`` and the arousal channel's noise scaled
    by ``1 + arousal_gain |s|``. Observed x = scale * (z A^T) + offset + white noise. Clips are
    generated ``chunk`` at a time to bound memory (MOSEI-sized splits are gigabytes).
    ``segments``, when given, an (n, 2) int64 array, receives each clip's segment S as
    ``[start, end)`` frame indices (read off the mask; the random stream is the same either way).

    A non-default ``world`` (with its ``extras``, and ``speakers`` in the speaker world) changes S and
    the shift's profile over it (``worlds.expression_profile``), marks the clip type on vision latent
    channel 3, applies speaker offsets and scales to x, and zeroes the frames of a missing modality.
    """
    world = world or WORLDS["default"]
    absent_code = ABSENT_AUDIO if modality == "audio" else ABSENT_VISION
    n = sentiment.size
    dim, k = mixing.matrix.shape
    out = np.empty((n, max_len, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        s = sentiment[start : start + chunk, None]
        length = lengths[start : start + chunk]
        m = s.shape[0]
        z = _ar1(rng, m, max_len, params.ar_phi[:k])
        if world.expression == "segment":  # the default expressive segment
            seg = _segment_mask(rng, length, max_len)
            profile, aroused = 1.0, seg
        else:
            seg, profile, aroused = expression_profile(rng, world, length, max_len)
        if segments is not None:
            first = seg.argmax(axis=1)
            segments[start : start + m] = np.stack([first, first + seg.sum(axis=1)], axis=1)
        arousal = np.where(aroused, 1.0 + params.arousal_gain * np.abs(s), 1.0)
        if modality == "audio":
            z[:, :, 1] *= arousal
            z[:, :, 0] += np.where(seg, params.valence_shift * s * profile, 0.0)  # pitch level
        else:
            z[:, :, 2] *= arousal  # head motion
            z[:, :, 0] += np.where(seg, params.valence_shift * np.maximum(s, 0.0) * profile, 0.0)  # smile
            z[:, :, 1] += np.where(seg, params.valence_shift * np.maximum(-s, 0.0) * profile, 0.0)  # frown
            if world.clip_types and extras is not None:  # framing channel: + close-up, - voice-over, 0 balanced
                marker = np.array([world.type_marker, -world.type_marker, 0.0])[extras.clip_type[start : start + m]]
                z[:, :, 3] += marker[:, None]
        z += rng.normal(0.0, params.baseline_sd, (m, 1, k))
        x = z @ mixing.matrix.T * mixing.scale + mixing.offset
        x += rng.normal(0.0, params.white_sd, x.shape)
        if speakers is not None and extras is not None:
            who = extras.speaker[start : start + m]
            x = x * speakers.scale[who][:, None, :] + speakers.offset[who][:, None, :]
        if extras is not None:
            gone = extras.missing[start : start + m] & (extras.absent[start : start + m] == absent_code)
            x[gone] = 0.0  # a missing modality: all-zero frames
        x *= (np.arange(max_len)[None, :] < length[:, None])[:, :, None]
        out[start : start + m] = x
    return out


# --------------------------------------------------------------------------------------------
# Tokenisation and optional text features.
# --------------------------------------------------------------------------------------------


def tokenize(texts: list[str], tokenizer_path: str) -> np.ndarray:
    """(N, 3, 50) int64 ``text_bert``: input ids, attention mask, segment ids (one batched call)."""
    tokenizer = load_tokenizer(tokenizer_path)
    lengths = np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]])
    if lengths.max(initial=0) > TEXT_LEN:
        bad = int(np.flatnonzero(lengths > TEXT_LEN)[0])
        raise ValueError(f"text {bad} has {lengths[bad]} tokens, more than {TEXT_LEN}: {texts[bad]!r}")
    enc = tokenizer(texts, padding="max_length", max_length=TEXT_LEN, truncation=True, return_tensors="np")
    return np.stack([enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]], axis=1).astype(np.int64)


def encode_text_features(text_bert: np.ndarray, model_path: str, batch_size: int = 256) -> np.ndarray:
    """(N, L, hidden) float32 last hidden states of the encoder for ``text_bert`` (N, 3, L), zero at
    padded positions (SynthMOSI: L = 50, hidden = 384)."""
    import torch
    from tqdm import tqdm
    model = load_model(model_path).eval()
    out = np.zeros((text_bert.shape[0], text_bert.shape[2], model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, text_bert.shape[0], batch_size), desc="text features", leave=False):
            chunk = torch.from_numpy(text_bert[start : start + batch_size])
            ids, mask, seg = chunk[:, 0], chunk[:, 1], chunk[:, 2]
            hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state
            out[start : start + len(chunk)] = (hidden * mask[:, :, None]).numpy()
    return out


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def clip_lengths(rng: np.random.Generator, n_tokens: np.ndarray, preset: Preset) -> tuple[np.ndarray, np.ndarray]:
    """Unaligned clip lengths, proportional to the number of tokens (speech duration)."""
    rate = rng.uniform(0.75, 1.0, n_tokens.size)
    audio = np.clip(np.round(preset.max_audio_len * rate * n_tokens / TEXT_LEN), 4, preset.max_audio_len)
    ratio = preset.max_vision_len / preset.max_audio_len
    vision = np.clip(np.round(audio * ratio + rng.normal(0.0, 2.0, n_tokens.size)), 3, preset.max_vision_len)
    return audio.astype(np.int64), vision.astype(np.int64)


def generate(
    size: str,
    seed: int,
    aligned: bool = False,
    tokenizer_path: str | None = None,
    text_features: bool = False,
    params: GeneratorParams | None = None,
    segments: bool = False,
    world: str = "default",
) -> dict[str, dict[str, np.ndarray]]:
    """Generate SynthMOSI as an MMSA dict ``{"train"|"valid"|"test": {key: array}}``.

    Same ``size``, ``seed`` and ``aligned`` give byte-identical arrays. ``text_features`` adds
    ``text`` (N, 50, 384) from the encoder at ``tokenizer_path`` (default: bundled MiniLM).
    ``segments`` adds ``synth_segment_audio`` / ``synth_segment_vision`` (N, 2) int64: each clip's
    expressive segment (where the audio / vision cue is) as ``[start, end)`` frame indices, for
    checking explanations (``mmfusion.explain``); every other array is the same with or without it.

    ``world`` (``mmfusion.data.worlds.WORLDS``) changes how the audio / vision evidence shows; the
    ``default`` world is SynthMOSI as designed, byte for byte. A non-default world draws its extras on
    streams of its own, applies its ``params`` overrides, and adds ``synth_world`` (N,) plus, where
    they vary, ``synth_absent`` (N,) int8 (0 none, 1 audio, 2 vision shows nothing), ``synth_missing``
    (N,) bool, ``synth_clip_type`` (N,) int8 (``worlds.CLIP_TYPE_NAMES``) and ``synth_speaker`` (N,) int64.
    The hidden ``regression_labels_T/A/V`` stay the unimodal truth the label was computed from.
    """
    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r}: expected one of {sorted(PRESETS)}")
    preset = PRESETS[size]
    spec = get_world(world)
    params = params or GeneratorParams()
    if spec.params:
        params = replace(params, **dict(spec.params))
    if tokenizer_path is None:
        tokenizer_path = default_model_path()
    world_seq, *split_seqs = np.random.SeedSequence(seed).spawn(1 + len(SPLITS))
    world = np.random.default_rng(world_seq)
    audio_mix = make_mixing(world, preset.audio_dim, AUDIO_LATENT[preset.audio_dim])
    vision_mix = make_mixing(world, preset.vision_dim, VISION_LATENT)

    rngs = {split: np.random.default_rng(seq) for split, seq in zip(SPLITS, split_seqs)}
    clips = {split: sample_clips(rngs[split], n, params) for split, n in preset.split_sizes().items()}
    extras: dict[str, WorldExtras | None] = dict.fromkeys(SPLITS)
    speakers: dict[str, Speakers | None] = {"audio": None, "vision": None}
    if not spec.is_default:  # the world's own streams: the default ones are left as they are
        world_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(WORLD_STREAM,)))
        if spec.n_speakers > 0:
            speakers = {"audio": make_speakers(world_rng, spec, preset.audio_dim),
                        "vision": make_speakers(world_rng, spec, preset.vision_dim)}
        for i, split in enumerate(SPLITS):
            split_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(WORLD_STREAM + 1 + i,)))
            extras[split] = apply_world(split_rng, clips[split], params, spec)
    all_texts = [t for split in SPLITS for t in clips[split].raw_text]
    text_bert_all = tokenize(all_texts, tokenizer_path)
    text_all = encode_text_features(text_bert_all, tokenizer_path) if text_features else None

    data: dict[str, dict[str, np.ndarray]] = {}
    offset = 0
    for split in SPLITS:
        c, rng = clips[split], rngs[split]
        n = c.y.size
        text_bert = text_bert_all[offset : offset + n]
        n_tokens = text_bert[:, 1].sum(axis=1)
        if aligned:
            audio_len = vision_len = n_tokens
            max_a = max_v = TEXT_LEN
        else:
            audio_len, vision_len = clip_lengths(rng, n_tokens, preset)
            max_a, max_v = preset.max_audio_len, preset.max_vision_len
        segment = {m: np.zeros((n, 2), np.int64) for m in ("audio", "vision")}
        seq_kw = {m: {"world": spec, "extras": extras[split], "speakers": speakers[m]} for m in ("audio", "vision")}
        split_data = {
            "id": np.array([f"synth_{offset + i:06d}" for i in range(n)]),
            "raw_text": np.array(c.raw_text),
            "text_bert": text_bert,
            "audio": modality_sequences(rng, c.s_a, audio_len, max_a, audio_mix, "audio", params, segments=segment["audio"],
                                        **seq_kw["audio"]),
            "vision": modality_sequences(rng, c.s_v, vision_len, max_v, vision_mix, "vision", params,
                                         segments=segment["vision"], **seq_kw["vision"]),
            "regression_labels": c.y.astype(np.float32),
            "classification_labels": (np.sign(c.y) + 1).astype(np.int64),
            "regression_labels_T": c.s_t.astype(np.float32),
            "regression_labels_A": c.s_a.astype(np.float32),
            "regression_labels_V": c.s_v.astype(np.float32),
            "synth_text_kind": c.kind,
        }
        if extras[split] is not None:
            e = extras[split]
            split_data["synth_world"] = np.array([spec.name] * n)
            if spec.p_absent > 0:
                split_data["synth_absent"], split_data["synth_missing"] = e.absent, e.missing
            if spec.clip_types:
                split_data["synth_clip_type"] = e.clip_type
            if spec.n_speakers > 0:
                split_data["synth_speaker"] = e.speaker
        if text_all is not None:
            split_data["text"] = text_all[offset : offset + n]
        if segments:
            split_data["synth_segment_audio"], split_data["synth_segment_vision"] = segment["audio"], segment["vision"]
        if not aligned:
            split_data["audio_lengths"] = audio_len
            split_data["vision_lengths"] = vision_len
        data[split] = split_data
        offset += n
    return data


def write_pickle(data: dict, path: str | Path) -> None:
    """Pickle ``data`` to ``path`` atomically (temp file in the same folder, then rename)."""

    def dump(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)

    atomic_write(path, dump)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(PRESETS), required=True, help="preset: tiny, mosi (MOSI's sizes) or mosei")
    parser.add_argument("--seed", type=int, default=0, help="world and sample seed (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="output pickle, e.g. datasets/synthmosi_mosi_s0.pkl")
    parser.add_argument("--aligned", action="store_true", help="word-aligned variant: all sequences 50 long")
    parser.add_argument("--tokenizer-path", default=None, help="local tokenizer/encoder dir (default: bundled MiniLM)")
    parser.add_argument("--text-features", action="store_true", help="also write `text` (N, 50, 384) encoder states")
    parser.add_argument("--world", choices=list(WORLDS), default="default",
                        help="where the audio/vision evidence shows (docs/synthmosi_worlds.md; default: as designed)")
    parser.add_argument("--segments", action="store_true",
                        help="also write synth_segment_audio/vision (N, 2): each clip's expressive segment [start, end)")


def run(args: argparse.Namespace) -> int:
    if args.out.is_dir():
        raise ValueError(f"{args.out}: is a directory, expected the output pickle's path")
    data = generate(args.size, args.seed, aligned=args.aligned, tokenizer_path=args.tokenizer_path,
                    text_features=args.text_features, segments=args.segments, world=args.world)
    write_pickle(data, args.out)
    sizes = ", ".join(f"{split} {len(data[split]['id'])}" for split in SPLITS)
    log.info("wrote %s (world %s): %s", args.out, args.world, sizes)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m mmfusion.data.synthetic", "Generate SynthMOSI in the MMSA pickle format.",
                        add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
