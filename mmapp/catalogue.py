"""The synthetic e-commerce catalogue generator: product videos (SynthMOSI clips), users, impressions, clicks.

It lives in the application layer because it joins both models: the clips come from
``mmfusion.data.synthetic`` and the ranking configs (``xdeepfm``) read what it writes.

The point of this data set is that the answer is known: clicks are drawn from a logistic model
in which the *video's true multimodal sentiment* matters, so a ranking model given good video
semantics (from ``mmfusion``) can beat one without them, and one given the true sentiment (the
oracle) bounds what semantics can add.

**Videos** (``n_videos``). Each video is one SynthMOSI clip (``mmfusion.data.synthetic``: a
presenter reviewing a product, with text, audio and vision) drawn with ``sample_clips`` and
rendered with the observation model (mixing matrices) of ``generate(preset, world_seed)``, so a
checkpoint trained on that SynthMOSI file scores the catalogue's clips as new clips of the same
world. The clip's product (20 kinds, named in its transcript) gives its ``product`` and its
``category`` (6: electronics, kitchen, home, fashion, beauty, sports). Per category there are
``brands_per_category`` brands, each with a hidden quality ``q_b ~ N(0, 0.3^2)`` and a price
tier; a video's ``price_band`` in {budget, mid, premium, luxury} (level l = 0..3) is its brand's
tier moved by -1/0/+1 with probability 1/4, 1/2, 1/4 (clipped), and its ``price`` is
``base[l] * LogNormal(0, 0.25^2)``. ``title`` = brand, product noun, model code
("Kalora Headphones X2"): titles carry no sentiment. The hidden true sentiment of video v is
the SynthMOSI target without annotation noise, ``s*_v = y*(s_t, s_a, s_v)`` in [-3, 3]
(``multimodal_target``); ``y_v`` (the annotated label) is kept too.

**Users** (``n_users``), one of four segments g (observable ``user_segment``):

===============  =========================  ===========================
segment          price sensitivity mean     sentiment sensitivity mean
===============  =========================  ===========================
bargain_hunter   1.6                        0.4
review_reader    0.5                        1.6
brand_fan        0.3                        0.6
casual           0.8                        0.9
===============  =========================  ===========================

price sensitivity ``pi_u = max(0, mean_g + N(0, 0.3^2))``, sentiment sensitivity
``sigma_u = max(0, mean_g + N(0, 0.3^2))``, category tastes ``a_uc ~ N(0, 1)`` (observable: the
favourite category ``argmax_c a_uc``), and an ``user_age`` that plays no part in clicks.

**Impressions** (``impressions_per_user`` per user, a recall stage that favours tastes): the
category of an impression is drawn from ``0.5 softmax_c(a_uc) + 0.5 uniform`` (over categories
that have videos), the video uniformly within it. **Click model** (all constants in
``ClickModel``)::

    eta = b0 + w_a a_{u,c(v)} + q_{b(v)} - pi_u (l_v - 1.5) / 1.5 + w_s sigma_u s*_v + eps,
    eps ~ N(0, noise_sd^2),   click ~ Bernoulli(sigmoid(eta))

with b0 = -2.5, w_a = 1, w_s = 1, noise_sd = 0.5. For a review reader (sigma ~ 1.6) the
sentiment term spans about +-5 logits over the [-3, 3] range: video semantics matter.

**The video catalogue** (what the main job, ``mmfusion demo``, builds): ``catalogue_from_clips(clips)``
makes the catalogue around given clips instead of drawing new ones, e.g. the SynthVideo clips
(``mmfusion.data.synthvideo``: SynthMOSI clips rendered as mp4 files with spoken narration and a
drawn presenter), so that every product video is a real file whose features come from
``mmfusion extract``; ``hold_out_videos`` removes videos (and their impressions) that are to
"arrive after training" and be ingested; ``write_product_videos`` renders a catalogue's videos as
files with the same renderer when they do not exist yet.

**Files** written by ``write_catalogue(catalogue, out_dir)`` (each atomically):

- ``videos.pkl``: the clips as an MMSA pickle (train/valid/test = 70/15/15% of the videos, ids
  = ``video_id``), ready for ``python -m mmfusion.predict`` (not for a catalogue of given clips,
  whose features come from their files);
- ``videos.csv``: one row per video: ids, category, product, brand, price band (and
  ``price_level`` l), price, title, and the hidden truth (``brand_quality`` q_b,
  ``true_sentiment`` s*, ``label`` y, ``s_t``, ``s_a``, ``s_v``, ``kind``, ``clip_split``);
- ``users.csv``: observable user features and the hidden ``price_sensitivity``,
  ``sentiment_sensitivity`` and ``affinity_<category>``;
- ``impressions.csv``: ``user_id, video_id, category, product, brand, price_band, price, title,
  user_segment, user_fav_category, user_age, click``, ``hidden_click_prob`` (the true
  sigmoid(eta), for analysis only; never a feature) and ``timestamp`` (integer seconds since the
  epoch, strictly increasing within a user in sessions, ``SessionModel``; seeded by its own
  stream, so the other columns are those of a catalogue generated before it existed);
- ``oracle_sentiment.npz``: ``ids`` and ``sentiment`` (N, 1) = s* (the oracle's vector field),
  ``unimodal`` (N, 3) = (s_t, s_a, s_v), ``label`` (N, 1) = y;
- ``catalogue.json``: the generation arguments and click-model constants.

The ranking side reads the catalogue back with ``xdeepfm.data.ecommerce``:
``load_ecommerce_splits(EcommerceConfig)`` reads ``impressions.csv`` (``label`` = ``click``) and splits the
impressions (``xdeepfm.data.splits``, seeded by ``split_seed``): ``random`` 80/10/10, or
``cold_video``: 10% of the videos and all their impressions are the test split (new videos, the
case video semantics are for: an unseen ``video_id`` falls into the OOV bucket, so only the
video's content features can tell a good video from a bad one), or ``temporal`` (each user's
last impressions by ``timestamp``).

**The full experiment** (CPU; the catalogue must share the SynthMOSI world of the checkpoint:
``--world-seed`` = the SynthMOSI seed and ``--preset`` = its size; ``--text-features`` writes the
MiniLM states that a checkpoint trained with ``model.text.source: features``, as
``configs/synthmosi_default.yaml`` is, reads; ``configs/synthmosi_finetune.yaml`` reads ``text_bert``,
which every catalogue has)::

    python train.py --config configs/synthmosi_default.yaml --out runs/synthmosi_default   # generates SynthMOSI mosi, seed 0
    python -m mmapp.catalogue --out datasets/ecommerce --seed 0 --world-seed 0 --preset mosi --text-features
    python -m mmfusion.predict --checkpoint runs/synthmosi_default --data datasets/ecommerce/videos.pkl \\
        --out datasets/ecommerce/semantics.npz
    python -m xdeepfm.compare --configs configs/ecommerce_xdeepfm_nosemantics.yaml configs/ecommerce_xdeepfm.yaml \\
        configs/ecommerce_xdeepfm_oracle.yaml --seeds 0 1 2 --out runs/ecommerce --doc docs/results_ranking.md

(or ``python train.py --config <one of them> --out RUN`` for a single run).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmcore.files import write_bytes
from mmcore.hf import default_model_path
from mmcore.runtime import command_main
from mmfusion.data.synthetic import (
    AUDIO_LATENT,
    KIND_NAMES,
    PRESETS,
    SPLITS,
    VISION_LATENT,
    GeneratorParams,
    clip_lengths,
    encode_text_features,
    make_mixing,
    modality_sequences,
    multimodal_target,
    sample_clips,
    tokenize,
    write_pickle,
)
from mmfusion.data.synthvideo import RENDER, render_clip, speakers

log = logging.getLogger(__name__)

# SynthMOSI product -> (category, product noun used in titles)
PRODUCT_INFO: dict[str, tuple[str, str]] = {
    "pair of headphones": ("electronics", "Headphones"),
    "phone charger": ("electronics", "Phone Charger"),
    "smartwatch": ("electronics", "Smartwatch"),
    "gaming mouse": ("electronics", "Gaming Mouse"),
    "bluetooth speaker": ("electronics", "Bluetooth Speaker"),
    "blender": ("kitchen", "Blender"),
    "air fryer": ("kitchen", "Air Fryer"),
    "coffee maker": ("kitchen", "Coffee Maker"),
    "electric kettle": ("kitchen", "Electric Kettle"),
    "vacuum cleaner": ("home", "Vacuum Cleaner"),
    "robot vacuum": ("home", "Robot Vacuum"),
    "desk lamp": ("home", "Desk Lamp"),
    "pair of sneakers": ("fashion", "Sneakers"),
    "backpack": ("fashion", "Backpack"),
    "rain jacket": ("fashion", "Rain Jacket"),
    "lipstick": ("beauty", "Lipstick"),
    "moisturizer": ("beauty", "Moisturizer"),
    "foundation": ("beauty", "Foundation"),
    "yoga mat": ("sports", "Yoga Mat"),
    "water bottle": ("sports", "Water Bottle"),
}
CATEGORIES = ("electronics", "kitchen", "home", "fashion", "beauty", "sports")
PRICE_BANDS = ("budget", "mid", "premium", "luxury")
BASE_PRICE = np.array([15.0, 40.0, 90.0, 200.0])
SEGMENTS = ("bargain_hunter", "review_reader", "brand_fan", "casual")
SEGMENT_SHARE = np.array([0.3, 0.25, 0.2, 0.25])
SEGMENT_PRICE_SENS = np.array([1.6, 0.5, 0.3, 0.8])
SEGMENT_SENTIMENT_SENS = np.array([0.4, 1.6, 0.6, 0.9])
SYLLABLES = ("ka", "lo", "ra", "vi", "no", "tes", "mar", "zu", "bel", "fi", "dor", "qua", "sen", "tri", "ol", "pex")
SERIES = ("X", "S", "Pro ", "Air ", "Max ", "Lite ", "")
ITEM_COLUMNS = ("video_id", "category", "product", "brand", "price_band", "price", "title")
USER_COLUMNS = ("user_id", "user_segment", "user_fav_category", "user_age")


@dataclass
class ClickModel:
    """Constants of eta = b0 + w_a a_uc + q_b - pi_u (l - 1.5)/1.5 + w_s sigma_u s* + eps."""

    bias: float = -2.5  # b0
    w_affinity: float = 1.0  # w_a
    w_sentiment: float = 1.0  # w_s
    noise_sd: float = 0.5  # sd of eps
    brand_quality_sd: float = 0.3  # q_b ~ N(0, sd^2)
    user_param_sd: float = 0.3  # spread of pi_u and sigma_u around the segment means
    exposure_taste: float = 0.5  # share of impressions drawn from softmax(a_u) (the rest uniform)


@dataclass
class Catalogue:
    """A generated catalogue in memory (see the module docstring for every column)."""

    mmsa: dict[str, dict[str, np.ndarray]]  # the videos' MMSA dict (train/valid/test)
    videos: pd.DataFrame
    users: pd.DataFrame
    impressions: pd.DataFrame
    meta: dict = field(default_factory=dict)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _products_of(texts: list[str]) -> np.ndarray:
    """The SynthMOSI product named in each transcript (its opener always names it)."""
    names = sorted(PRODUCT_INFO, key=len, reverse=True)  # longest first: no prefix ambiguity
    found = pd.Series(texts).str.extract("(" + "|".join(map(re.escape, names)) + ")", expand=False)
    if found.isna().any():
        i = int(np.flatnonzero(found.isna().to_numpy())[0])
        raise ValueError(f"clip {i}: no known product in its transcript {texts[i]!r}")
    return found.to_numpy(dtype=object)


def _world_mixing(world_seed: int, preset_name: str):
    """The audio and vision mixing of ``synthetic.generate(preset_name, world_seed)`` (same derivation)."""
    preset = PRESETS[preset_name]
    world = np.random.default_rng(np.random.SeedSequence(world_seed).spawn(1 + len(SPLITS))[0])
    audio = make_mixing(world, preset.audio_dim, AUDIO_LATENT[preset.audio_dim])
    vision = make_mixing(world, preset.vision_dim, VISION_LATENT)
    return audio, vision


def _video_clips(
    rng: np.random.Generator, n: int, world_seed: int, preset_name: str, text_features: bool,
    params: GeneratorParams, tokenizer_path: str | None,
) -> tuple[dict[str, dict[str, np.ndarray]], pd.DataFrame]:
    """n SynthMOSI clips as an MMSA dict (70/15/15 over videos) plus their hidden truth per video."""
    preset = PRESETS[preset_name]
    audio_mix, vision_mix = _world_mixing(world_seed, preset_name)
    clips = sample_clips(rng, n, params)
    tokenizer_path = tokenizer_path or default_model_path()
    text_bert = tokenize(clips.raw_text, tokenizer_path)
    audio_len, vision_len = clip_lengths(rng, text_bert[:, 1].sum(axis=1), preset)
    audio = modality_sequences(rng, clips.s_a, audio_len, preset.max_audio_len, audio_mix, "audio", params)
    vision = modality_sequences(rng, clips.s_v, vision_len, preset.max_vision_len, vision_mix, "vision", params)
    text = encode_text_features(text_bert, tokenizer_path) if text_features else None
    ids = np.array([f"video_{i:06d}" for i in range(n)])
    true = multimodal_target(clips.s_t, clips.s_a, clips.s_v, params)

    bounds = np.round(np.array([0.0, 0.7, 0.85, 1.0]) * n).astype(int)
    mmsa: dict[str, dict[str, np.ndarray]] = {}
    for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        part = slice(lo, hi)
        mmsa[split] = {
            "id": ids[part],
            "raw_text": np.array(clips.raw_text[lo:hi]),
            "text_bert": text_bert[part],
            "audio": audio[part],
            "vision": vision[part],
            "audio_lengths": audio_len[part],
            "vision_lengths": vision_len[part],
            "regression_labels": clips.y[part].astype(np.float32),
            "classification_labels": (np.sign(clips.y[part]) + 1).astype(np.int64),
            "regression_labels_T": clips.s_t[part].astype(np.float32),
            "regression_labels_A": clips.s_a[part].astype(np.float32),
            "regression_labels_V": clips.s_v[part].astype(np.float32),
            "synth_text_kind": clips.kind[part],
        }
        if text is not None:
            mmsa[split]["text"] = text[part]
    split_of = np.repeat(np.array(SPLITS), np.diff(bounds))
    truth = pd.DataFrame({
        "video_id": ids, "clip_split": split_of, "product_raw": _products_of(clips.raw_text),
        "true_sentiment": true.astype(np.float64), "label": clips.y.astype(np.float64),
        "s_t": clips.s_t, "s_a": clips.s_a, "s_v": clips.s_v, "kind": clips.kind.astype(np.int64),
    })
    return mmsa, truth


def _brand_names(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct two- or three-syllable brand names."""
    names: list[str] = []
    while len(names) < n:  # a handful of draws; not a hot path
        k = int(rng.integers(2, 4))
        name = "".join(SYLLABLES[j] for j in rng.integers(len(SYLLABLES), size=k)).capitalize()
        if name not in names:
            names.append(name)
    return names


def _catalogue_columns(rng: np.random.Generator, truth: pd.DataFrame, brands_per_category: int,
                       click: ClickModel) -> pd.DataFrame:
    """Videos' category, brand (with its hidden quality q_b), price band, price and title."""
    n = len(truth)
    n_brands = len(CATEGORIES) * brands_per_category
    brands = pd.DataFrame({
        "brand": _brand_names(rng, n_brands),
        "category": np.repeat(np.array(CATEGORIES), brands_per_category),
        "tier": rng.integers(len(PRICE_BANDS), size=n_brands),
        "quality": rng.normal(0.0, click.brand_quality_sd, n_brands),
    })
    category = truth["product_raw"].map(lambda p: PRODUCT_INFO[p][0]).to_numpy()
    noun = truth["product_raw"].map(lambda p: PRODUCT_INFO[p][1]).to_numpy()
    cat_index = pd.Index(CATEGORIES).get_indexer(category)
    brand_row = cat_index * brands_per_category + rng.integers(brands_per_category, size=n)
    shift = rng.choice([-1, 0, 1], size=n, p=[0.25, 0.5, 0.25])
    level = np.clip(brands["tier"].to_numpy()[brand_row] + shift, 0, len(PRICE_BANDS) - 1)
    price = np.round(BASE_PRICE[level] * np.exp(rng.normal(0.0, 0.25, n)), 2)
    series = np.array(SERIES)[rng.integers(len(SERIES), size=n)]
    number = rng.integers(1, 10, size=n).astype(str)
    brand = brands["brand"].to_numpy()[brand_row]
    title = pd.Series(brand) + " " + pd.Series(noun) + " " + pd.Series(series) + pd.Series(number)
    videos = pd.DataFrame({
        "video_id": truth["video_id"], "category": category, "product": noun, "brand": brand,
        "price_band": np.array(PRICE_BANDS)[level], "price_level": level, "price": price, "title": title,
        "brand_quality": brands["quality"].to_numpy()[brand_row],  # hidden q_b
    })
    return pd.concat([videos, truth.drop(columns=["video_id", "product_raw"])], axis=1)


def _users(rng: np.random.Generator, n: int, click: ClickModel) -> pd.DataFrame:
    segment = rng.choice(len(SEGMENTS), size=n, p=SEGMENT_SHARE)
    price_sens = np.maximum(0.0, SEGMENT_PRICE_SENS[segment] + rng.normal(0.0, click.user_param_sd, n))
    sent_sens = np.maximum(0.0, SEGMENT_SENTIMENT_SENS[segment] + rng.normal(0.0, click.user_param_sd, n))
    affinity = rng.normal(0.0, 1.0, (n, len(CATEGORIES)))
    users = pd.DataFrame({
        "user_id": [f"user_{i:05d}" for i in range(n)],
        "user_segment": np.array(SEGMENTS)[segment],
        "user_fav_category": np.array(CATEGORIES)[affinity.argmax(axis=1)],
        "user_age": np.clip(np.round(rng.normal(33.0, 10.0, n)), 16, 70).astype(np.int64),
        "price_sensitivity": price_sens,
        "sentiment_sensitivity": sent_sens,
    })
    for j, c in enumerate(CATEGORIES):
        users[f"affinity_{c}"] = affinity[:, j]
    return users


def _impressions(rng: np.random.Generator, users: pd.DataFrame, videos: pd.DataFrame, per_user: int,
                 click: ClickModel) -> pd.DataFrame:
    """per_user impressions per user (category by taste, video uniform within it) and their clicks."""
    n_users = len(users)
    affinity = users[[f"affinity_{c}" for c in CATEGORIES]].to_numpy()
    cat_of_video = pd.Index(CATEGORIES).get_indexer(videos["category"])
    counts = np.bincount(cat_of_video, minlength=len(CATEGORIES))
    present = counts > 0
    taste = np.exp(affinity - affinity.max(axis=1, keepdims=True)) * present
    taste /= taste.sum(axis=1, keepdims=True)
    probs = click.exposure_taste * taste + (1.0 - click.exposure_taste) * present / present.sum()
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((n_users, per_user))
    cat = np.minimum((u[:, :, None] > cdf[:, None, :]).sum(axis=2), len(CATEGORIES) - 1)  # inverse CDF
    by_cat = np.argsort(cat_of_video, kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    video = by_cat[start[cat] + np.floor(rng.random(cat.shape) * counts[cat]).astype(np.int64)]

    user = np.repeat(np.arange(n_users), per_user)
    video, cat = video.reshape(-1), cat.reshape(-1)
    quality = videos["brand_quality"].to_numpy()
    price_term = (videos["price_level"].to_numpy() - 1.5) / 1.5
    eta = (click.bias
           + click.w_affinity * affinity[user, cat]
           + quality[video]
           - users["price_sensitivity"].to_numpy()[user] * price_term[video]
           + click.w_sentiment * users["sentiment_sensitivity"].to_numpy()[user] * videos["true_sentiment"].to_numpy()[video]
           + rng.normal(0.0, click.noise_sd, user.size))
    prob = _sigmoid(eta)
    clicked = (rng.random(user.size) < prob).astype(np.int64)
    v = videos.iloc[video].reset_index(drop=True)
    us = users.iloc[user].reset_index(drop=True)
    return pd.DataFrame({
        "user_id": us["user_id"], "video_id": v["video_id"], "category": v["category"], "product": v["product"],
        "brand": v["brand"], "price_band": v["price_band"], "price": v["price"], "title": v["title"],
        "user_segment": us["user_segment"], "user_fav_category": us["user_fav_category"], "user_age": us["user_age"],
        "click": clicked, "hidden_click_prob": prob,
    })


START_TIME = 1_704_067_200  # 2024-01-01 00:00:00 UTC: impression times start within WINDOW_DAYS of it
WINDOW_DAYS = 30


@dataclass
class SessionModel:
    """Impression times: each user's first impression at a uniform time in the first ``WINDOW_DAYS``
    days after ``START_TIME``; after it, with probability ``new_session`` the next one opens a new
    session after an exponential gap of mean ``session_gap_s``, else it follows within the
    session after ``1 + Exponential(mean in_session_gap_s)`` seconds. Times only: clicks do not
    depend on them."""

    new_session: float = 0.15
    session_gap_s: float = 36 * 3600.0
    in_session_gap_s: float = 45.0


def _timestamps(rng: np.random.Generator, n_users: int, per_user: int, model: SessionModel | None = None) -> np.ndarray:
    """Integer seconds of ``n_users * per_user`` impressions grouped by user (as ``_impressions``
    writes them), strictly increasing within each user (``SessionModel``)."""
    model = model or SessionModel()
    start = START_TIME + np.floor(rng.random(n_users) * WINDOW_DAYS * 86400.0)
    new = rng.random((n_users, per_user)) < model.new_session
    gaps = np.where(new, 1.0 + rng.exponential(model.session_gap_s, (n_users, per_user)),
                    1.0 + rng.exponential(model.in_session_gap_s, (n_users, per_user)))
    gaps[:, 0] = 0.0  # the first impression is at the user's start
    return (start[:, None] + np.cumsum(np.floor(gaps), axis=1)).astype(np.int64).reshape(-1)


def generate_catalogue(
    seed: int = 0,
    n_videos: int = 3000,
    n_users: int = 2000,
    impressions_per_user: int = 150,
    *,
    world_seed: int = 0,
    preset: str = "mosi",
    text_features: bool = False,
    brands_per_category: int = 6,
    click: ClickModel | None = None,
    params: GeneratorParams | None = None,
    tokenizer_path: str | None = None,
) -> Catalogue:
    """Draw videos, users and impressions (see the module docstring); same arguments, same data.

    ``world_seed``/``preset``: the SynthMOSI world (audio/vision mixing, sequence lengths) of the
    clips, that of ``generate(preset, world_seed)``. ``text_features`` adds the ``text`` key
    (MiniLM states) for checkpoints trained with ``model.text.source: features``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: expected one of {sorted(PRESETS)}")
    for name, value, low in (("n_videos", n_videos, 3), ("n_users", n_users, 1),
                             ("impressions_per_user", impressions_per_user, 1), ("brands_per_category", brands_per_category, 1)):
        if value < low:
            raise ValueError(f"{name}={value}: must be >= {low}")
    click = click or ClickModel()
    params = params or GeneratorParams()
    # spawn(5)[:4] == spawn(4): the times have their own stream, every other draw is as before
    video_seq, catalogue_seq, user_seq, impression_seq, time_seq = np.random.SeedSequence(seed).spawn(5)
    mmsa, truth = _video_clips(np.random.default_rng(video_seq), n_videos, world_seed, preset, text_features,
                               params, tokenizer_path)
    videos = _catalogue_columns(np.random.default_rng(catalogue_seq), truth, brands_per_category, click)
    users = _users(np.random.default_rng(user_seq), n_users, click)
    impressions = _impressions(np.random.default_rng(impression_seq), users, videos, impressions_per_user, click)
    impressions["timestamp"] = _timestamps(np.random.default_rng(time_seq), n_users, impressions_per_user)
    meta = {"seed": seed, "n_videos": n_videos, "n_users": n_users, "impressions_per_user": impressions_per_user,
            "world_seed": world_seed, "preset": preset, "text_features": text_features,
            "brands_per_category": brands_per_category, "click_model": dataclasses.asdict(click),
            "click_rate": float(impressions["click"].mean())}
    log.info("catalogue seed %d: %d videos, %d users, %d impressions, click rate %.3f",
             seed, n_videos, n_users, len(impressions), meta["click_rate"])
    return Catalogue(mmsa=mmsa, videos=videos, users=users, impressions=impressions, meta=meta)


def catalogue_from_clips(clips: pd.DataFrame, seed: int = 0, n_users: int = 2000, impressions_per_user: int = 150, *,
                         brands_per_category: int = 6, click: ClickModel | None = None,
                         params: GeneratorParams | None = None) -> Catalogue:
    """The catalogue around given clips, e.g. the SynthVideo clips (``mmfusion.data.synthvideo``'s
    ``truth.csv`` joined with its ``meta.csv`` text): each clip is one product video, its id the
    video's id. ``clips`` has the columns ``id, split, kind, text, s_t, s_a, s_v, y``. The videos'
    features come from their files (``mmfusion extract``), so there are no direct MMSA clips
    (``mmsa`` is empty). Users, impressions and clicks are drawn as in ``generate_catalogue``."""
    missing = [c for c in ("id", "split", "kind", "text", "s_t", "s_a", "s_v", "y") if c not in clips.columns]
    if missing:
        raise ValueError(f"clips: column {missing[0]!r} is missing (has {list(clips.columns)})")
    click = click or ClickModel()
    params = params or GeneratorParams()
    kinds = clips["kind"].map({name: i for i, name in enumerate(KIND_NAMES)})
    if kinds.isna().any():
        raise ValueError(f"clips: kind {clips['kind'][kinds.isna()].iloc[0]!r}: expected one of {list(KIND_NAMES)}")
    s_t, s_a, s_v = (clips[c].to_numpy(np.float64) for c in ("s_t", "s_a", "s_v"))
    truth = pd.DataFrame({
        "video_id": clips["id"].astype(str).to_numpy(), "clip_split": clips["split"].to_numpy(),
        "product_raw": _products_of(clips["text"].astype(str).tolist()),
        "true_sentiment": multimodal_target(s_t, s_a, s_v, params).astype(np.float64),
        "label": clips["y"].to_numpy(np.float64), "s_t": s_t, "s_a": s_a, "s_v": s_v, "kind": kinds.to_numpy(np.int64),
    })
    catalogue_seq, user_seq, impression_seq, time_seq = np.random.SeedSequence(seed).spawn(4)  # [:3] as before
    videos = _catalogue_columns(np.random.default_rng(catalogue_seq), truth, brands_per_category, click)
    users = _users(np.random.default_rng(user_seq), n_users, click)
    impressions = _impressions(np.random.default_rng(impression_seq), users, videos, impressions_per_user, click)
    impressions["timestamp"] = _timestamps(np.random.default_rng(time_seq), n_users, impressions_per_user)
    meta = {"seed": seed, "n_videos": len(videos), "n_users": n_users, "impressions_per_user": impressions_per_user,
            "clips": "given", "brands_per_category": brands_per_category, "click_model": dataclasses.asdict(click),
            "click_rate": float(impressions["click"].mean())}
    mmsa = {split: {"id": np.array([], dtype=str), "raw_text": np.array([], dtype=str)} for split in SPLITS}
    mmsa["test"] = {"id": truth["video_id"].to_numpy(dtype=str), "raw_text": clips["text"].astype(str).to_numpy(dtype=str)}
    return Catalogue(mmsa=mmsa, videos=videos, users=users, impressions=impressions, meta=meta)


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.6g")
    return buffer.getvalue().encode()


def write_catalogue(catalogue: Catalogue, out_dir: str | Path) -> dict[str, Path]:
    """Write the files listed in the module docstring into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    paths = {name: out / name for name in ("videos.pkl", "videos.csv", "users.csv", "impressions.csv",
                                           "oracle_sentiment.npz", "catalogue.json")}
    if "audio" in catalogue.mmsa["train"]:  # direct-feature clips (not for a catalogue of given clips)
        write_pickle(catalogue.mmsa, paths["videos.pkl"])
    else:
        paths.pop("videos.pkl")
    write_bytes(paths["videos.csv"], _csv_bytes(catalogue.videos))
    write_bytes(paths["users.csv"], _csv_bytes(catalogue.users))
    write_bytes(paths["impressions.csv"], _csv_bytes(catalogue.impressions))
    v = catalogue.videos
    buffer = io.BytesIO()
    np.savez(buffer, ids=v["video_id"].to_numpy(dtype=str),
             sentiment=v[["true_sentiment"]].to_numpy(np.float32),
             unimodal=v[["s_t", "s_a", "s_v"]].to_numpy(np.float32),
             label=v[["label"]].to_numpy(np.float32))
    write_bytes(paths["oracle_sentiment.npz"], buffer.getvalue())
    write_bytes(paths["catalogue.json"], json.dumps(catalogue.meta, indent=2).encode())
    return paths


# --------------------------------------------------------------------------------------------
# Product videos as files, and videos that arrive after training
# --------------------------------------------------------------------------------------------


def narrations(catalogue: Catalogue) -> dict[str, str]:
    """video_id -> the clip's narration (its SynthMOSI transcript)."""
    return {str(i): str(t) for part in catalogue.mmsa.values() for i, t in zip(part["id"], part["raw_text"])}


def _render_product(path: str, text: str, s_a: float, s_v: float, seed: int, speaker) -> None:
    render_clip(path, text, s_a, s_v, seed, speaker=speaker)


def write_product_videos(catalogue: Catalogue, folder: str | Path, videos: pd.DataFrame | None = None,
                         world_seed: int = 0, workers: int = 1, transcripts: bool = False) -> Path:
    """Every product video (or those of ``videos``) as an mp4 in ``folder`` (``mmfusion.data.synthvideo``'s
    renderer: the narration spoken with the clip's ``s_a`` prosody, a presenter showing its ``s_v``),
    with ``folder/meta.csv`` for ``mmfusion extract`` (video, id, text = the narration, label, split)
    and ``folder/items.csv`` for ``mmfusion ingest`` (video, the item's columns and, with
    ``transcripts``, the narration as ``transcript``). The presenters are those of the SynthVideo
    world ``world_seed``; a video's render seed is derived from its id, so a file is reproducible."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    videos = catalogue.videos if videos is None else videos
    text_of = narrations(catalogue)
    cast = speakers(world_seed, RENDER.n_speakers)
    jobs = []
    for row in videos.itertuples(index=False):
        seed = int(np.random.SeedSequence([world_seed, 7, int(str(row.video_id).rsplit("_", 1)[-1])]).generate_state(1)[0])
        jobs.append((str(folder / f"{row.video_id}.mp4"), text_of[row.video_id], float(row.s_a), float(row.s_v), seed,
                     cast[seed % len(cast)]))
    todo = [j for j in jobs if not Path(j[0]).is_file()]
    with tqdm(total=len(todo), desc="render product videos", unit="video") as bar:
        if workers <= 1:
            for job in todo:
                _render_product(*job)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for future in as_completed([pool.submit(_render_product, *job) for job in todo]):
                    future.result()
                    bar.update()
    meta = pd.DataFrame({"video": [Path(j[0]).name for j in jobs], "id": videos["video_id"].to_numpy(),
                         "text": [j[1] for j in jobs], "label": videos["label"].to_numpy(),
                         "split": videos["clip_split"].to_numpy()})
    write_bytes(folder / "meta.csv", _csv_bytes(meta))
    items = videos[list(ITEM_COLUMNS)].copy()
    items.insert(0, "video", meta["video"].to_numpy())
    if transcripts:
        items["transcript"] = meta["text"].to_numpy()
    write_bytes(folder / "items.csv", _csv_bytes(items))
    log.info("%d product videos in %s (%d rendered now)", len(jobs), folder, len(todo))
    return folder


def hold_out_videos(catalogue: Catalogue, held: set[str]) -> tuple[Catalogue, pd.DataFrame, pd.DataFrame]:
    """(the catalogue without the ``held`` videos, those videos, their impressions): videos that
    "arrive after training", for ingestion. They leave ``videos``, ``impressions`` and the MMSA
    clips; users stay."""
    unknown = sorted(held - set(catalogue.videos["video_id"]))
    if unknown or not held:
        raise ValueError(f"hold out {sorted(held)[:5]}: " + (f"{unknown[0]!r} is not a video of the catalogue" if unknown
                                                             else "expected at least one video id"))
    keep_video = ~catalogue.videos["video_id"].isin(held)
    keep_impression = ~catalogue.impressions["video_id"].isin(held)
    mmsa = {}
    for split, part in catalogue.mmsa.items():
        mask = ~np.isin(part["id"], list(held))
        mmsa[split] = {k: v[mask] if isinstance(v, np.ndarray) and len(v) == len(mask) else v for k, v in part.items()}
    kept = Catalogue(mmsa=mmsa, videos=catalogue.videos[keep_video].reset_index(drop=True), users=catalogue.users,
                     impressions=catalogue.impressions[keep_impression].reset_index(drop=True),
                     meta={**catalogue.meta, "held_out_videos": sorted(held)})
    new = catalogue.videos[~keep_video].reset_index(drop=True)
    return kept, new, catalogue.impressions[~keep_impression].reset_index(drop=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. datasets/ecommerce")
    parser.add_argument("--seed", type=int, default=0, help="catalogue seed (default 0)")
    parser.add_argument("--n-videos", type=int, default=3000, help="product videos (default 3000)")
    parser.add_argument("--n-users", type=int, default=2000, help="users (default 2000)")
    parser.add_argument("--impressions-per-user", type=int, default=150, help="impressions per user (default 150)")
    parser.add_argument("--world-seed", type=int, default=0, help="SynthMOSI seed whose world the clips share")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mosi", help="SynthMOSI size of that world")
    parser.add_argument("--text-features", action="store_true", help="write `text` (MiniLM states) into videos.pkl")


def run(args: argparse.Namespace) -> int:
    if args.out.is_file():
        raise ValueError(f"{args.out}: is a file, expected the output folder")
    catalogue = generate_catalogue(args.seed, args.n_videos, args.n_users, args.impressions_per_user,
                                   world_seed=args.world_seed, preset=args.preset, text_features=args.text_features)
    write_catalogue(catalogue, args.out)
    print(f"wrote {args.out}: {len(catalogue.videos)} videos, {len(catalogue.users)} users, "
          f"{len(catalogue.impressions)} impressions, click rate {catalogue.meta['click_rate']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m mmapp.catalogue", "Generate the synthetic e-commerce catalogue (videos, users, clicks).",
                        add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
