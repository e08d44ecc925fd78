"""The Python API of the sentiment model, for notebooks and services: load, predict, save.

    from mmfusion import SentimentModel

    model = SentimentModel.from_pretrained("runs/default")      # a run directory, checkpoint or artifact
    semantics = model.predict({"text_bert": ids, "audio": audio, "vision": vision,
                               "audio_lengths": la, "vision_lengths": lv})
    semantics = model.predict_file("clips.pkl", splits=["test"])  # an MMSA pickle
    semantics = model.predict_video("clip.mp4", text="Kalora Headphones X2")  # a video file
    explanations = model.explain({...same arrays as predict...})  # per clip: shares, words, time segments
    explanations = model.explain_file("clips.pkl", splits=["test"])
    model.save_pretrained("artifacts/sentiment")                 # the exported artifact form

Every ``predict*`` returns the dict ``mmfusion.predict.predict_semantics`` does: ``ids``,
``split``, ``tasks`` (M, then T/A/V for multi-task models), ``sentiment`` (N, n_tasks) and
``embedding`` (N, 2 d_model), the fused representation that feeds the M head. Inputs are checked
like a data file (token ids within the encoder's vocabulary, feature widths equal to the model's),
and the training normalisation statistics are applied. ``explain*`` return one dict per clip
(``mmfusion.explain``: the outputs, each modality's soft-mapping share, the words and time segments
the attention weighted most).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mmcore.artifact import MANIFEST
from mmcore.config import build
from mmcore.distributed import select_device
from mmcore.hf import default_model_path
from mmfusion.data.mmsa import SPLITS, MMSASplit, NormStats, load_mmsa, make_loader, read_split, text_vocab_size
from mmfusion.data.synthetic import encode_text_features
from mmfusion.evaluate import check_data_matches, load_model
from mmfusion.explain import Explainer, explain_split, text_tokenizer
from mmfusion.export import export_model, load_model_artifact
from mmfusion.extract.pipeline import ExtractConfig, extract_file
from mmfusion.extract.text import tokenize
from mmfusion.extract.visual import VisualConfig
from mmfusion.model import MultimodalSentimentModel


@dataclass
class SentimentModel:
    """A trained multimodal sentiment model with its normalisation statistics, ready to predict."""

    model: MultimodalSentimentModel
    norm: NormStats | None
    meta: dict  # config, data_dims (feature widths), norm, and the training metrics when known

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto") -> "SentimentModel":
        """An exported artifact directory, a training run directory (its best checkpoint) or a checkpoint file."""
        if (Path(path) / MANIFEST).is_file():
            model, norm, meta = load_model_artifact(path)
            model.to(select_device(device))
        else:
            model, norm, meta = load_model(path, device=device)
        return cls(model.eval(), norm, meta)

    def save_pretrained(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the artifact directory (``mmfusion.export``'s form: JSON + safetensors + manifest)."""
        return export_model(self.model, self.norm, self.meta, out, overwrite=overwrite)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict(self, clips: dict, batch_size: int = 128) -> dict[str, np.ndarray]:
        """Semantics of clips given as arrays with the keys of an MMSA split.

        ``audio`` (N, La, Da), ``vision`` (N, Lv, Dv), their ``audio_lengths`` / ``vision_lengths``
        (N,), and the text as ``text_bert`` (N, 3, L) token ids, or ``raw_text`` (N,) strings that
        are tokenised here (``text`` (N, L, Dt) features for a model that reads them are computed
        from the tokens when absent). ``id`` defaults to ``clip_0 ... clip_{N-1}``.
        """
        clips = self._tokens(dict(clips))
        clips.setdefault("id", np.asarray([f"clip_{i}" for i in range(len(clips.get("audio", [])))]))
        vocab = self.model.text_vocab_size
        if self.model.cfg.text.source == "features" and "text" not in clips and "text_bert" in clips:
            vocab = text_vocab_size(self._text_model_path())
            read_split(clips, "clips", "predict", vocab_size=vocab)  # the ids, checked before the encoder reads them
            clips["text"] = encode_text_features(np.asarray(clips["text_bert"], dtype=np.int64), self._text_model_path())
        split = read_split(clips, "clips", "predict", vocab_size=vocab)
        self._check_widths(split)
        return self._semantics({"clips": split}, batch_size)

    def predict_file(self, data_path: str | Path, splits: Sequence[str] = SPLITS, batch_size: int = 128) -> dict:
        """Semantics of every clip of ``splits`` of an MMSA pickle (a trusted file: pickle runs code)."""
        bad = [s for s in splits if s not in SPLITS]
        if not splits or bad:
            raise ValueError(f"splits {list(splits)}: expected a non-empty subset of {list(SPLITS)}")
        data = load_mmsa(data_path, vocab_size=self.model.text_vocab_size)
        check_data_matches(data, self.meta, self.model.cfg.text.source, data_path)
        return self._semantics({name: data.splits[name] for name in splits}, batch_size)

    def predict_video(self, video: str | Path, text: str, transcript: str = "",
                      extract: ExtractConfig | None = None) -> dict[str, np.ndarray]:
        """Semantics of one video file: decoded and turned into features by ``mmfusion.extract``
        (``extract``: default ``extract_config``, the options the model's training data was
        extracted with), ``text`` the title or description, ``transcript`` the spoken words when known."""
        return self.predict(self.video_clips(video, text, transcript, extract))

    def video_clips(self, video: str | Path, text: str, transcript: str = "",
                    extract: ExtractConfig | None = None) -> dict:
        """The one-clip arrays (what ``predict`` and ``explain`` take) of a video file (``predict_video``'s arguments)."""
        cfg = extract or self.extract_config()
        features = extract_file(video, cfg)
        return {
            "id": np.asarray([Path(video).stem]),
            "raw_text": np.asarray([text]),
            "transcript": [transcript],
            "audio": features.audio[None] if len(features.audio) else np.zeros((1, 1, cfg.audio.out_dim), np.float32),
            "audio_lengths": np.asarray([len(features.audio)]),
            "vision": features.vision[None],
            "vision_lengths": np.asarray([len(features.vision)]),
        }

    def explain(self, clips: dict, top_words: int = 5, top_segments: int = 3, rates: dict[str, float] | None = None,
                batch_size: int = 64, explainer: Explainer | None = None) -> list[dict]:
        """One explanation per clip given as arrays (the keys ``predict`` takes), from one forward pass
        per batch: ``{"id", "outputs": {M, T, A, V}, "shares": {modality: share}, "shares_kind",
        "text": {"words"}, "audio"/"vision": {"words", "segments", "peak", "frames"}}``
        (``mmfusion.explain`` says what each weight is). ``rates``: frames per second per modality
        (``{"audio": 100.0, "vision": 5.0}`` for ``mmfusion.extract``'s defaults) adds seconds to the segments;
        ``explainer`` (an ``mmfusion.explain.Explainer`` of this model) replaces the one those arguments make."""
        split = self._clips_split(clips)
        explainer = explainer or self._explainer(top_words, top_segments, rates)
        return explain_split(self.model, split, self.norm, explainer, batch_size)

    def explain_file(self, data_path: str | Path, splits: Sequence[str] = SPLITS, top_words: int = 5, top_segments: int = 3,
                     rates: dict[str, float] | None = None, batch_size: int = 64,
                     explainer: Explainer | None = None) -> list[dict]:
        """``explain`` for every clip of ``splits`` of an MMSA pickle, in file order, each with its ``split``."""
        bad = [s for s in splits if s not in SPLITS]
        if not splits or bad:
            raise ValueError(f"splits {list(splits)}: expected a non-empty subset of {list(SPLITS)}")
        data = load_mmsa(data_path, vocab_size=self.model.text_vocab_size)
        check_data_matches(data, self.meta, self.model.cfg.text.source, data_path)
        explainer = explainer or self._explainer(top_words, top_segments, rates)
        return [{"split": name, **item} for name in splits
                for item in explain_split(self.model, data.splits[name], self.norm, explainer, batch_size)]

    def extract_config(self) -> ExtractConfig:
        """The extraction options of the model's training data (recorded by ``mmfusion.extract`` in the
        pickle and carried by the checkpoint); for a model trained on another file, the extractor's
        defaults with frame statistics as visual features."""
        recorded = (self.meta.get("extraction") or {}).get("config")
        if recorded is None:
            return ExtractConfig(visual=VisualConfig(backbone="stats"))
        return build(ExtractConfig, recorded, where="the model's extraction config")

    # -- helpers --------------------------------------------------------------------------
    def _explainer(self, top_words: int, top_segments: int, rates: dict[str, float] | None) -> Explainer:
        return Explainer(self.model, text_tokenizer(self.model), top_words=top_words, top_segments=top_segments, rates=rates)

    def _clips_split(self, clips: dict) -> MMSASplit:
        """``clips`` (the arrays ``predict`` takes) as a checked split, text tokenised and featurised as ``predict`` does."""
        clips = self._tokens(dict(clips))
        clips.setdefault("id", np.asarray([f"clip_{i}" for i in range(len(clips.get("audio", [])))]))
        vocab = self.model.text_vocab_size
        if self.model.cfg.text.source == "features" and "text" not in clips and "text_bert" in clips:
            vocab = text_vocab_size(self._text_model_path())
            read_split(clips, "clips", "explain", vocab_size=vocab)
            clips["text"] = encode_text_features(np.asarray(clips["text_bert"], dtype=np.int64), self._text_model_path())
        split = read_split(clips, "clips", "explain", vocab_size=vocab)
        self._check_widths(split)
        return split

    def _text_model_path(self) -> str:
        return self.model.cfg.text.model_path or default_model_path()

    def _tokens(self, clips: dict) -> dict:
        """Token ids from ``raw_text`` (and ``transcript``) when ``text_bert`` is absent."""
        transcripts = clips.pop("transcript", None)
        if "text_bert" not in clips and "raw_text" in clips:
            texts = [str(t) for t in clips["raw_text"]]
            clips["text_bert"] = tokenize(texts, list(transcripts or [""] * len(texts)), self._text_model_path())
        return clips

    def _check_widths(self, split: MMSASplit) -> None:
        dims = self.meta["data_dims"]
        for name, array in (("audio_dim", split.audio), ("vision_dim", split.vision)):
            if dims.get(name) is not None and array.shape[-1] != dims[name]:
                raise ValueError(f"predict: {name} is {array.shape[-1]} but the model was trained with {dims[name]}")

    @torch.inference_mode()
    def _semantics(self, splits: dict[str, MMSASplit], batch_size: int) -> dict[str, np.ndarray]:
        tasks = list(self.model.tasks)
        ids, names, sentiment, embedding = [], [], [], []
        for name, split in splits.items():
            for batch in make_loader(split, self.norm, batch_size=batch_size, shuffle=False,
                                     text_source=self.model.cfg.text.source):
                out = self.model(batch.to(self.device))
                ids.extend(batch.ids)
                sentiment.append(torch.stack([out.preds[t] for t in tasks], dim=1).float().cpu())
                embedding.append(out.features["M"].float().cpu())
            names.extend([name] * len(split))
        return {"ids": np.asarray(ids, dtype=str), "split": np.asarray(names, dtype=str),
                "tasks": np.asarray(tasks, dtype=str), "sentiment": torch.cat(sentiment).numpy(),
                "embedding": torch.cat(embedding).numpy()}

