"""Acoustic features of 16 kHz mono audio, one row per 25 ms frame every 10 ms (100 rows/s).

All features come from one framing of the signal (``frame_ms`` windows every ``hop_ms``, DC
removed): a Hann-windowed 512-point power spectrum, torchaudio's mel filterbank
(``melscale_fbanks``, 20 Hz - 8 kHz) and DCT (``create_dct``, orthonormal) for log-mel and MFCC,
and torchaudio's ``compute_deltas`` (5-frame regression) for deltas. Pitch is a normalised
autocorrelation (NCCF) over a 40 ms window centred on each frame, 60-500 Hz: the smallest-lag
local peak within 10% of the best one, refined by a parabola; a frame is voiced when that peak is
at least 0.45 and the frame's energy is within 50 dB of the clip's loudest frame. F0 is 0 Hz on
unvoiced frames, as in COVAREP. (torchaudio 2.11 has no Kaldi pitch any more, and its
``detect_pitch_frequency`` makes no voicing decision and uses a framing of its own.)

Presets (``AudioConfig.preset``), feature names per column from ``feature_names``:

* ``covarep74`` (74 columns, the width of CMU-MOSEI's COVAREP audio and in COVAREP's order of
  kinds: F0 and voicing, 9 voice-quality-like scalars, 25 + 25 + 13 cepstral columns), so a model
  built for MOSEI-format audio can be fed. The values are *not* COVAREP's (no glottal-source
  measures): 0 ``f0_hz``, 1 ``voiced``, 2 ``nccf_peak``, 3 ``log_energy``, 4 ``d_log_energy``,
  5 ``zcr``, 6 ``spectral_centroid_khz``, 7 ``spectral_spread_khz``, 8 ``spectral_rolloff85_khz``,
  9 ``spectral_flatness``, 10 ``spectral_tilt`` (log energy below 1 kHz minus above),
  11-35 ``mfcc_0..24`` (40 mel bands), 36-60 ``d_mfcc_0..24``, 61-73 ``dd_mfcc_0..12``.
* ``mfcc`` / ``fbank`` with ``dim`` D columns: ``f0_hz, voiced, log_energy``, then k cepstral
  coefficients ``mfcc_i`` (from 40 mel bands, or from k when k > 40) or k log-mel bands
  ``logmel_i``, then the deltas ``d_f0_hz, d_log_energy, d_mfcc_i`` / ``d_logmel_i``, with
  ``k = max(1, ceil((D - 5) / 2))``; the first D of these columns are kept.
* ``prosody`` (16 columns, ``PROSODY_NAMES``): how something is said, for voices whose sentiment
  lives in pitch, loudness, tempo and pauses (SynthVideo's espeak-ng narration, docs/synthvideo.md).
  Windows are centred on the frame; "local" is +-250 ms, "rate window" +-500 ms; the clip's
  speech level is the median ``energy_db`` of its voiced frames (the loudest frame minus 20 dB
  when none is voiced) and its pitch level the median semitone value of its voiced frames:
  0 ``f0_hz`` and 1 ``voiced`` (as in covarep74), 2 ``nccf_peak``, 3 ``f0_st`` (semitones re
  100 Hz of the voiced frames, octave errors folded back: a value more than 6 semitones from the
  median of the 31 voiced frames around it moves by whole octaves towards it, then a 5-frame
  median; linearly interpolated across unvoiced frames, held at the ends; 0 without any voiced
  frame), 4 ``f0_st_rel`` (``f0_st`` minus the clip's pitch level: speaker-normalised pitch),
  5 ``f0_slope`` (least-squares slope of ``f0_st`` over +-70 ms, semitones per second),
  6 ``f0_range_local`` (90th minus 10th percentile of ``f0_st``, local), 7 ``f0_sd_local`` (its
  local standard deviation), 8 ``energy_db`` (10 log10 of the frame's energy), 9 ``energy_rel_db``
  (``energy_db`` minus the speech level), 10 ``d_energy_db`` (5-frame regression delta),
  11 ``energy_sd_local`` (local standard deviation of ``energy_db`` floored at the speech level
  - 40 dB), 12 ``syllable_rate`` (peaks per second of the 50 ms-smoothed energy within the rate
  window: peaks at least 80 ms apart, 3 dB prominent and above the speech level - 15 dB, a
  syllable-nucleus proxy), 13 ``pause`` (1 inside a run of at least 100 ms below the speech
  level - 25 dB that lies between the first and last sounding frame), 14 ``pause_frac_local``
  (mean of ``pause`` over the rate window), 15 ``voiced_frac_local`` (mean of ``voiced``, local).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchaudio.functional as AF
from scipy.ndimage import median_filter, percentile_filter, uniform_filter1d
from scipy.signal import find_peaks

from mmfusion.extract.decode import SAMPLE_RATE

N_FFT = 512
PITCH_WINDOW_MS = 40.0
F0_RANGE = (60.0, 500.0)
VOICING_THRESHOLD = 0.45
SILENCE_DB = 50.0
EPS = 1e-10

MAX_AUDIO_DIM = 512  # mfcc / fbank: k = ceil((dim - 5) / 2) mel bands must fit the 257 FFT bins
COVAREP74_SCALARS = (
    "f0_hz", "voiced", "nccf_peak", "log_energy", "d_log_energy", "zcr",
    "spectral_centroid_khz", "spectral_spread_khz", "spectral_rolloff85_khz", "spectral_flatness", "spectral_tilt",
)
PRESETS = ("covarep74", "mfcc", "fbank", "prosody")
PROSODY_NAMES = (
    "f0_hz", "voiced", "nccf_peak", "f0_st", "f0_st_rel", "f0_slope", "f0_range_local", "f0_sd_local",
    "energy_db", "energy_rel_db", "d_energy_db", "energy_sd_local", "syllable_rate", "pause", "pause_frac_local",
    "voiced_frac_local",
)
PROSODY_LOCAL_MS = 250.0  # half-width of the "local" windows
PROSODY_RATE_MS = 500.0  # half-width of the syllable-rate and pause windows
PROSODY_SLOPE_MS = 70.0  # half-width of the pitch-slope regression
PITCH_FOLD_FRAMES = 31  # octave errors are folded towards the median of this many voiced frames
PAUSE_DB = 25.0  # a pause frame is this far below the clip's speech level ...
PAUSE_MIN_MS = 100.0  # ... in a run at least this long
SYLLABLE_GAP_MS = 80.0
SYLLABLE_PROMINENCE_DB = 3.0
SYLLABLE_FLOOR_DB = 15.0


@dataclass(frozen=True)
class AudioConfig:
    """Which acoustic features: a preset and, for ``mfcc`` / ``fbank``, the output width."""

    preset: Literal["covarep74", "mfcc", "fbank", "prosody"] = "covarep74"
    dim: int = 74  # ignored by covarep74 (always 74) and prosody (always 16)
    frame_ms: float = 25.0
    hop_ms: float = 10.0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"audio preset {self.preset!r}: expected one of {', '.join(PRESETS)}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or not 1 <= self.dim <= MAX_AUDIO_DIM:
            raise ValueError(f"audio dim {self.dim!r}: expected an integer in [1, {MAX_AUDIO_DIM}]")
        for name in ("frame_ms", "hop_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 <= value <= 1000.0:
                raise ValueError(f"audio {name} {value!r}: expected a number of milliseconds in [1, 1000]")

    @property
    def out_dim(self) -> int:
        return {"covarep74": 74, "prosody": len(PROSODY_NAMES)}.get(self.preset, self.dim)

    @property
    def n_coefficients(self) -> int:
        return 25 if self.preset == "covarep74" else max(1, math.ceil((self.dim - 5) / 2))


def feature_names(cfg: AudioConfig) -> list[str]:
    """The name of every output column, in order."""
    if cfg.preset == "prosody":
        return list(PROSODY_NAMES)
    if cfg.preset == "covarep74":
        return [*COVAREP74_SCALARS, *(f"mfcc_{i}" for i in range(25)), *(f"d_mfcc_{i}" for i in range(25)),
                *(f"dd_mfcc_{i}" for i in range(13))]
    kind = "mfcc" if cfg.preset == "mfcc" else "logmel"
    k = cfg.n_coefficients
    names = ["f0_hz", "voiced", "log_energy", *(f"{kind}_{i}" for i in range(k)),
             "d_f0_hz", "d_log_energy", *(f"d_{kind}_{i}" for i in range(k))]
    return names[: cfg.dim]


def _frames(wave: torch.Tensor, window: int, hop: int, n_frames: int, offset: int = 0) -> torch.Tensor:
    """(n_frames, window) frames starting at ``offset + i * hop`` (zero-padded at both ends)."""
    left = max(0, -offset)
    need = offset + left + (n_frames - 1) * hop + window
    padded = torch.nn.functional.pad(wave, (left, max(0, need - wave.numel() - left)))
    start = offset + left
    return padded[start : start + (n_frames - 1) * hop + window].unfold(0, window, hop)


def pitch(wave: torch.Tensor, n_frames: int, frame: int, hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame: F0 in Hz (before the voicing decision) and the NCCF peak value in [0, 1]."""
    window = int(SAMPLE_RATE * PITCH_WINDOW_MS / 1000)
    x = _frames(wave, window, hop, n_frames, offset=frame // 2 - window // 2)
    x = x - x.mean(dim=1, keepdim=True)
    spectrum = torch.fft.rfft(x, n=2 * window)
    acf = torch.fft.irfft(spectrum.abs() ** 2, n=2 * window)[:, :window]
    acf = acf / (window - torch.arange(window, dtype=acf.dtype))  # unbiased: no taper towards long lags
    nccf = acf / acf[:, :1].clamp_min(EPS)
    low, high = int(SAMPLE_RATE / F0_RANGE[1]), int(SAMPLE_RATE / F0_RANGE[0])
    r = nccf[:, low - 1 : high + 2]  # one extra lag each side for the local-peak test
    inner = r[:, 1:-1]
    peaks = (inner >= r[:, :-2]) & (inner >= r[:, 2:])
    best = torch.where(peaks, inner, torch.full_like(inner, -1.0)).amax(dim=1, keepdim=True)
    good = peaks & (inner >= 0.9 * best) & (best > 0)
    idx = torch.where(good.any(dim=1), good.float().argmax(dim=1), torch.zeros(len(r), dtype=torch.long))
    rows = torch.arange(len(r))
    y0, y1, y2 = r[rows, idx], r[rows, idx + 1], r[rows, idx + 2]
    denom = y0 - 2 * y1 + y2
    shift = torch.where(denom.abs() > EPS, 0.5 * (y0 - y2) / denom, torch.zeros_like(denom)).clamp(-0.5, 0.5)
    lag = (low + idx).to(x.dtype) + shift
    return SAMPLE_RATE / lag, y1.clamp(0.0, 1.0) * good.any(dim=1)


def _deltas(x: torch.Tensor) -> torch.Tensor:
    """(T, D) -> (T, D) regression deltas over 5 frames (torchaudio ``compute_deltas``)."""
    return AF.compute_deltas(x.T.contiguous(), win_length=5).T


def _local_sd(x: np.ndarray, half: int) -> np.ndarray:
    mean = uniform_filter1d(x, 2 * half + 1, mode="nearest")
    return np.sqrt(np.maximum(uniform_filter1d(x * x, 2 * half + 1, mode="nearest") - mean * mean, 0.0))


def _runs_at_least(mask: np.ndarray, length: int) -> np.ndarray:
    """``mask`` kept only inside runs of at least ``length`` consecutive True frames."""
    out = np.zeros_like(mask)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    for start, end in zip(edges[::2], edges[1::2]):
        if end - start >= length:
            out[start:end] = True
    return out


def prosody_features(f0: np.ndarray, voiced: np.ndarray, nccf_peak: np.ndarray, log_energy: np.ndarray,
                     frame_rate: float) -> np.ndarray:
    """(T, 16) ``PROSODY_NAMES`` from the per-frame pitch, voicing, NCCF peak and natural-log energy."""
    n = f0.size
    idx = np.arange(n)
    is_voiced = voiced > 0
    local = max(1, round(PROSODY_LOCAL_MS * frame_rate / 1000))
    wide = max(1, round(PROSODY_RATE_MS * frame_rate / 1000))
    if is_voiced.any():
        semitones = 12.0 * np.log2(np.maximum(f0[is_voiced], 1.0) / 100.0)
        around = median_filter(semitones, PITCH_FOLD_FRAMES, mode="nearest")
        semitones = median_filter(semitones - 12.0 * np.round((semitones - around) / 12.0), 5, mode="nearest")
        f0_st = np.interp(idx, idx[is_voiced], semitones)
        f0_rel = f0_st - np.median(semitones)
    else:
        f0_st = f0_rel = np.zeros(n)
    half = max(1, round(PROSODY_SLOPE_MS * frame_rate / 1000))
    kernel = np.arange(-half, half + 1, dtype=np.float64)
    padded = np.pad(f0_st, half, mode="edge")
    slope = np.convolve(padded, kernel[::-1], mode="valid") / (kernel**2).sum() * frame_rate
    f0_range = (percentile_filter(f0_st, 90, 2 * local + 1, mode="nearest")
                - percentile_filter(f0_st, 10, 2 * local + 1, mode="nearest"))
    energy_db = 10.0 / math.log(10.0) * log_energy
    level = np.median(energy_db[is_voiced]) if is_voiced.any() else energy_db.max() - 20.0
    d_energy = _deltas(torch.from_numpy(energy_db[:, None]))[:, 0].numpy()
    energy_sd = _local_sd(np.maximum(energy_db, level - 40.0), local)
    smooth = uniform_filter1d(energy_db, max(1, round(50 * frame_rate / 1000)), mode="nearest")
    peaks, _ = find_peaks(smooth, height=level - SYLLABLE_FLOOR_DB, prominence=SYLLABLE_PROMINENCE_DB,
                          distance=max(1, round(SYLLABLE_GAP_MS * frame_rate / 1000)))
    onsets = np.zeros(n)
    onsets[peaks] = 1.0
    syllable_rate = uniform_filter1d(onsets, 2 * wide + 1, mode="constant") * frame_rate
    silent = energy_db < level - PAUSE_DB
    sounding = np.flatnonzero(~silent)
    pause = _runs_at_least(silent, max(1, round(PAUSE_MIN_MS * frame_rate / 1000)))
    if sounding.size:
        pause[: sounding[0]] = False
        pause[sounding[-1] + 1 :] = False
    else:
        pause[:] = False
    pause = pause.astype(np.float64)
    columns = [f0, voiced, nccf_peak, f0_st, f0_rel, slope, f0_range, _local_sd(f0_st, local), energy_db,
               energy_db - level, d_energy, energy_sd, syllable_rate, pause,
               uniform_filter1d(pause, 2 * wide + 1, mode="nearest"),
               uniform_filter1d(voiced.astype(np.float64), 2 * local + 1, mode="nearest")]
    return np.stack(columns, axis=1)


def audio_features(audio: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """(S,) float32 16 kHz mono -> (T, cfg.out_dim) float32, T = 1 + (S - frame) // hop (at least 1)."""
    frame = int(SAMPLE_RATE * cfg.frame_ms / 1000)
    hop = int(SAMPLE_RATE * cfg.hop_ms / 1000)
    wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).double()
    n_frames = 1 + max(0, wave.numel() - frame) // hop
    x = _frames(wave, frame, hop, n_frames)
    x = x - x.mean(dim=1, keepdim=True)
    log_energy = torch.log((x**2).sum(dim=1) + EPS)
    power = torch.fft.rfft(x * torch.hann_window(frame, periodic=False, dtype=x.dtype), n=N_FFT).abs() ** 2
    freqs = torch.fft.rfftfreq(N_FFT, 1 / SAMPLE_RATE, dtype=x.dtype)

    f0, nccf_peak = pitch(wave, n_frames, frame, hop)
    loud = log_energy > log_energy.max() - SILENCE_DB * math.log(10) / 10
    voiced = ((nccf_peak >= VOICING_THRESHOLD) & loud).to(x.dtype)
    f0 = f0 * voiced
    if cfg.preset == "prosody":
        return prosody_features(f0.numpy(), voiced.numpy(), nccf_peak.numpy(), log_energy.numpy(),
                                1000.0 / cfg.hop_ms).astype(np.float32)

    k = cfg.n_coefficients
    n_mels = k if cfg.preset == "fbank" else max(40, k)
    mel = AF.melscale_fbanks(N_FFT // 2 + 1, 20.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE).to(x.dtype)
    log_mel = torch.log(power @ mel + EPS)
    coeffs = log_mel if cfg.preset == "fbank" else log_mel @ AF.create_dct(k, n_mels, norm="ortho").to(x.dtype)

    if cfg.preset == "covarep74":
        total = power.sum(dim=1) + EPS
        centroid = (power * freqs).sum(dim=1) / total
        spread = ((power * (freqs - centroid[:, None]) ** 2).sum(dim=1) / total).sqrt()
        rolloff = freqs[(power.cumsum(dim=1) < 0.85 * total[:, None]).sum(dim=1).clamp(max=len(freqs) - 1)]
        flatness = torch.exp(torch.log(power + EPS).mean(dim=1)) / (power.mean(dim=1) + EPS)
        low_band = freqs < 1000
        tilt = torch.log(power[:, low_band].sum(dim=1) + EPS) - torch.log(power[:, ~low_band].sum(dim=1) + EPS)
        zcr = (torch.sign(x[:, 1:]) != torch.sign(x[:, :-1])).to(x.dtype).mean(dim=1)
        scalars = torch.stack([f0, voiced, nccf_peak, log_energy, _deltas(log_energy[:, None])[:, 0], zcr,
                               centroid / 1000, spread / 1000, rolloff / 1000, flatness, tilt], dim=1)
        d_coeffs = _deltas(coeffs)
        out = torch.cat([scalars, coeffs, d_coeffs, _deltas(d_coeffs)[:, :13]], dim=1)
    else:
        statics = torch.cat([f0[:, None], voiced[:, None], log_energy[:, None], coeffs], dim=1)
        dynamics = _deltas(torch.cat([f0[:, None], log_energy[:, None], coeffs], dim=1))
        out = torch.cat([statics, dynamics], dim=1)[:, : cfg.dim]
    return out.float().numpy()
