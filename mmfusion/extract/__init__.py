"""From raw product videos to MOSI-format features: a folder of videos -> an MMSA pickle.

Usage::

    python -m mmfusion.extract --videos DIR --meta meta.csv --out feats.pkl [--labels] \\
        [--split test] [--fps 5] [--audio-preset covarep74|prosody|mfcc|fbank] [--audio-dim D] \\
        [--visual auto|stats|face|resnet18|...] [--vision-weights cache|random|FILE] [--workers N]

``meta.csv`` has one row per clip: ``video`` (file name inside DIR), ``id``, ``text`` (title or
description) and optionally ``transcript``, ``label`` (in [-3, 3], read with ``--labels``; without
it ``regression_labels`` are 0 placeholders) and ``split`` (train / valid / test; rows without
one go to ``--split``). The pickle holds all three splits (empty ones with N = 0), and per split
the MMSA keys ``id``, ``raw_text``, ``text_bert`` (N, 3, 50), ``audio`` (N, La, Da),
``audio_lengths``, ``vision`` (N, Lv, Dv), ``vision_lengths``, ``regression_labels`` (plus
``classification_labels`` with labels and ``text`` with ``--text-features``), and three keys
of its own: ``video`` (file name), ``audio_missing`` (bool) and ``duration`` (seconds). The
top-level key ``extraction`` records every option, the feature widths and the name of every
feature column. Load it with ``mmfusion.data.mmsa.load_mmsa``; ``python -m mmfusion.predict``
reads it like any MMSA pickle.

Modules, one step each: ``decode`` (PyAV: frames at ``--fps``, audio at 16 kHz mono),
``audio`` (acoustic features per 10 ms frame), ``visual`` (per sampled frame: torchvision backbone
or frame statistics), ``text`` (BERT tokenizer), ``pipeline`` (meta.csv, process pool, per-file
cache, report, assembly), ``synthclip`` (small real mp4 files for tests and benchmarks).

Feature presets (full column lists: ``audio.feature_names``, ``visual.feature_names``, and the
module docstrings of ``audio`` and ``visual``):

* audio ``covarep74`` (default): 74 columns in COVAREP's order of kinds (F0, voicing, 9
  voice-quality-like spectral scalars, 25 MFCC, 25 deltas, 13 delta-deltas), so models built for
  MOSEI-format audio (Da = 74) can be fed; ``mfcc`` / ``fbank``: F0, voicing, log energy, MFCC or
  log-mel bands and deltas, cut to ``--audio-dim`` columns; ``prosody``: 16 columns of pitch level,
  movement and range, energy, voicing, syllable rate and pauses (the voice cue of SynthVideo,
  ``docs/results_synthvideo.md``);
* vision ``face``: 17 face-region columns (face found, position and size, mouth curvature, corner
  lift, openness and width, brow tilt and raise, eye openness, face and scene warmth, motion): a
  geometric proxy suited to rendered faces, not a face detector for camera footage;
  ``stats``: 34 cheap frame statistics (colour histograms, RGB moments, brightness,
  contrast, saturation, colourfulness, sharpness, motion energy, histogram change and shot-change
  flag, quadrant brightness) that need no weights; a torchvision backbone (``resnet18``: 512
  columns, ...) with weights from a local file or the torchvision cache; ``auto`` picks
  ``resnet18`` when its weights are cached, else ``stats``.

Sequences longer than ``--max-audio-len`` (500 rows = 5 s at 100 rows/s) or ``--max-vision-len``
(375) are average-pooled down to that many rows. A video without an audio track gets an audio
sequence of length 0 and ``audio_missing`` True. Bad files never stop the run: the summary lists
each one, and the exit code is 0 when every meta row was extracted, 1 when some failed (the
pickle holds the rest), 2 when nothing could be (or the options or meta.csv are unusable).

Inputs are checked before anything is decoded: every ``video`` path must resolve inside
``--videos`` (``..``, absolute paths and symlinks leading outside are refused, naming the meta.csv
line and the path); meta.csv is read strictly with the ``csv`` module (a row with the wrong number
of fields is refused naming its line, a quote that never closes refuses the file); numeric options
have limits (``--fps`` in (0, 1000], ``--text-len`` in [2, 512], ``--workers`` in [1, 256],
``--max-*-len`` in [1, 1000000], ``--audio-dim`` in [1, 512]). Every error is one line; exit code 2.
"""

from mmfusion.extract.audio import AudioConfig, audio_features
from mmfusion.extract.decode import DecodeError, decode_clip
from mmfusion.extract.pipeline import ExtractConfig, ExtractResult, FileReport, extract, extract_file
from mmfusion.extract.visual import VisualConfig, visual_features

__all__ = [
    "AudioConfig", "DecodeError", "ExtractConfig", "ExtractResult", "FileReport", "VisualConfig",
    "audio_features", "decode_clip", "extract", "extract_file", "visual_features",
]
