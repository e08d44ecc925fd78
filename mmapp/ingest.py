"""Ingestion: a product video file and its metadata become an item the ranking service can rank by id.

    mmfusion ingest --artifact runs/demo/ranker --sentiment runs/demo/sentiment_artifact \\
        --video new.mp4 --item '{"video_id": "video_9001", "title": "Kalora Headphones X2", ...}' \\
        [--transcript "these headphones are wonderful"] [--store runs/demo/ranker.store.sqlite]
    mmfusion ingest ... --videos new_videos/ --meta new_videos/items.csv     # a folder: one transaction

Per video: ``mmfusion.extract`` decodes it and computes the acoustic and visual features with the
options the sentiment model was trained on (``SentimentModel.extract_config``); the sentiment model
gives the video semantics (M/T/A/V sentiment and the fused embedding: ``SentimentModel.predict_video``,
with the transcript, or else the title, as its text); the ranker's encoder gives the title's sentence
vector; then the item (its ranker columns, the vectors) is upserted into the item store. All items
of one call are written in one transaction, after every video was processed: a bad file refuses the
call with the reason and writes nothing. The next ranking request sees the items (the service reads
the store on every request), without retraining or restart.

``VideoIngestor`` is the same work for the HTTP service (``POST /v1/items`` with a base64 ``video``;
``mmfusion serve --sentiment ...``); ``ingest_videos`` is the Python function.

Each ingested item also gets the explanation of its video's sentiment (``VideoExplainer``: the
``mmfusion.explain`` read-out of the same clip, with every word's weight and the whole attention curve
of the audio and vision streams), kept in the store beside the item in the same transaction
(``GET /v1/items/{id}``; the service's page draws it).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from mmfusion.explain import Explainer, text_tokenizer
from mmfusion.extract.decode import DecodeError
from mmfusion.extract.pipeline import ExtractConfig
from mmfusion.pretrained import SentimentModel
from xdeepfm.catalog import default_store_path, item_record, open_store
from xdeepfm.serving import RecordError, ScoringEngine

log = logging.getLogger(__name__)

SEMANTIC_ARRAYS = ("sentiment", "embedding")  # what SentimentModel.predict* returns per clip


class IngestError(ValueError):
    """A video or its metadata cannot be ingested; the message names the file or field and why."""


@dataclass
class Ingested:
    """One ingested item: its id, the semantics its video gave, and the seconds it took."""

    id: str
    semantics: dict[str, Any]
    seconds: float


ALL_WORDS = 10_000  # every word of the narration (the page shades them all)
CURVE_DIGITS = 5


@dataclass
class VideoExplainer(Explainer):
    """``mmfusion.explain.Explainer`` for the page: every word with its weight, and per audio / vision stream the
    whole key-weight curve r (``curve``: one value per pooled position, ``frame_stride`` frames each) and the
    stream's frame ``rate`` (frames per second; from the clip's duration, its vision frames / ``fps``, so that
    a clip pooled to ``max_audio_len`` rows still gets seconds; None when the vision was pooled too)."""

    extract: ExtractConfig | None = None

    def clip(self, readout, k: int, split, row: int) -> dict:
        out = super().clip(readout, k, split, row)
        out["narration"] = str(split.raw_text[row])
        seconds = None
        if self.extract is not None and 0 < int(split.vision_lengths[row]) < self.extract.max_vision_len:
            seconds = int(split.vision_lengths[row]) / self.extract.fps
        for m, flow in readout.flows.items():
            if m == "text" or flow.key_weight is None:
                continue
            curve = flow.key_weight[k][flow.key_mask[k]].numpy()
            frames = out[m]["frames"]
            out[m].update(curve=[round(float(v), CURVE_DIGITS) for v in curve], frame_stride=flow.frame_stride,
                          rate=frames / seconds if seconds else None)
        return out


def video_explainer(sentiment: SentimentModel, extract: ExtractConfig | None = None) -> VideoExplainer:
    """The page's explainer of a sentiment model (its tokenizer decodes the words)."""
    return VideoExplainer(sentiment.model, text_tokenizer(sentiment.model), top_words=ALL_WORDS, top_segments=3,
                          extract=extract or sentiment.extract_config())


class VideoIngestor:
    """Video -> the item's semantic vectors, for the vector fields of the ranker keyed by its item id.

    A ranker's vector field (e.g. ``video_sentiment``, ``array: sentiment``) receives the array of
    the same name of the sentiment model's output; its width must be the model's.
    """

    def __init__(self, sentiment: SentimentModel, engine: ScoringEngine) -> None:
        self.sentiment, self.engine = sentiment, engine
        self.extract = sentiment.extract_config()
        key = engine.item_field
        self.fields: dict[str, str] = {}  # ranker field -> semantics array
        for spec, _ in engine.fields:
            if spec.kind == "vector" and spec.key_column == key:
                if spec.array not in SEMANTIC_ARRAYS:
                    raise IngestError(f"ranker field {spec.name!r} reads array {spec.array!r}; a video gives only "
                                      f"{list(SEMANTIC_ARRAYS)}")
                self.fields[spec.name] = spec.array
        if not self.fields:
            raise IngestError(f"the ranker has no vector field keyed by {key!r}: it does not use video semantics")
        self.tasks = [str(t) for t in sentiment.model.tasks]
        self._widths = {name: engine.field_width(name) for name in self.fields}
        self.explainer = video_explainer(sentiment, self.extract)

    @classmethod
    def load(cls, sentiment_path: str | Path, engine: ScoringEngine) -> "VideoIngestor":
        """The ingestor of a sentiment artifact, run directory or checkpoint, on the CPU (picklable by path for
        ``xdeepfm.server.serve``'s processes: ``partial(VideoIngestor.load, path)``)."""
        return cls(SentimentModel.from_pretrained(sentiment_path, device="cpu"), engine)

    def semantics(self, video: str | Path, text: str, item_id: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(vectors by ranker field, a JSON description: M/T/A/V by name and the ``explanation``) of one video file;
        ``text`` is the sentiment model's text input (the narration), as ``text`` of a meta.csv row is for
        ``mmfusion extract``; ``item_id`` names the explanation (default: the file's stem). The video is decoded
        once; prediction and explanation read the same arrays."""
        clips = self.sentiment.video_clips(video, text=text, extract=self.extract)
        out = self.sentiment.predict(clips)
        vectors = {}
        for name, array in self.fields.items():
            vector = np.asarray(out[array][0], np.float32)
            if vector.shape != (self._widths[name],):
                raise IngestError(f"the sentiment model gives {array} of width {vector.size}; ranker field {name!r} "
                                  f"expects {self._widths[name]} (a different sentiment model than the ranker was trained with?)")
            vectors[name] = vector
        described = {"sentiment": dict(zip(self.tasks, map(float, out["sentiment"][0]))),
                     "embedding_norm": float(np.linalg.norm(out["embedding"][0])),
                     "explanation": {**self.sentiment.explain(clips, explainer=self.explainer)[0],
                                     "id": item_id or Path(video).stem}}
        return vectors, described

    def __call__(self, video: bytes, columns: dict[str, Any], transcript: str, where: str):
        """The ``xdeepfm.catalog.Ingestor`` form: the file's bytes from an HTTP request."""
        with tempfile.NamedTemporaryFile(suffix=".mp4") as handle:
            handle.write(video)
            handle.flush()
            try:
                return self.semantics(handle.name, self.text_for(columns, transcript), columns.get(self.engine.item_field))
            except DecodeError as exc:
                raise RecordError(f"{where}.video", f"not a usable video: {exc}") from None

    @staticmethod
    def text_for(columns: dict[str, Any], transcript: str) -> str:
        """The sentiment model's text input: the transcript when known, else the item's title."""
        return transcript or str(columns.get("title") or "")


def make_ingestor(sentiment_path: str | Path):
    """A picklable factory for ``xdeepfm.server.serve(ingestor=...)``: engine -> VideoIngestor."""
    return partial(VideoIngestor.load, str(sentiment_path))


def ingest_videos(engine: ScoringEngine, store, ingestor: VideoIngestor,
                  videos: Sequence[tuple[str | Path, dict[str, Any], str]]) -> list[Ingested]:
    """Ingest ``(video file, item columns, transcript)`` triples into ``store`` in one transaction."""
    records, done = [], []
    for i, (video, columns, transcript) in enumerate(tqdm(videos, desc="ingest", unit="video", leave=False)):
        started = time.perf_counter()
        where = f"{video}"
        if not Path(video).is_file():
            raise IngestError(f"{video}: video file not found")
        try:
            vectors, semantics = ingestor.semantics(video, ingestor.text_for(columns, transcript), columns.get(engine.item_field))
            semantics = dict(semantics)
            explanation = semantics.pop("explanation", None)
            records.append(item_record(engine, store.layout, columns, vectors, where=f"{where}: item", explanation=explanation))
        except DecodeError as exc:
            raise IngestError(f"{video}: not a usable video: {exc}") from None
        except RecordError as exc:
            raise IngestError(str(exc)) from None
        done.append(Ingested(records[-1].id, semantics, time.perf_counter() - started))
    store.put("item", records)
    store.checkpoint()
    return done


def read_items(meta: Path, videos: Path) -> list[tuple[Path, dict[str, Any], str]]:
    """``items.csv`` rows: a ``video`` file name (in ``videos``), an optional ``transcript``, and the item's
    columns (numbers parsed as numbers)."""
    if not meta.is_file():
        raise IngestError(f"{meta}: items file not found")
    with open(meta, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, strict=True))
    if not rows:
        raise IngestError(f"{meta}: no rows")
    out = []
    for line, row in enumerate(rows, start=2):
        if not row.get("video"):
            raise IngestError(f"{meta} line {line}: column 'video' is missing or empty")
        name = Path(row.pop("video"))
        if name.is_absolute() or ".." in name.parts:
            raise IngestError(f"{meta} line {line}: video {str(name)!r} must be a file name inside {videos}")
        transcript = row.pop("transcript", "") or ""
        out.append((videos / name, {k: _number(v) for k, v in row.items()}, transcript))
    return out


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifact", required=True, type=Path, help="the exported ranker (`mmfusion export`)")
    p.add_argument("--sentiment", required=True, type=Path,
                   help="the sentiment model whose semantics the ranker was trained with (artifact, run directory or checkpoint)")
    p.add_argument("--store", type=Path, help="the item/user store (default: <artifact>.store.sqlite)")
    one = p.add_argument_group("one video")
    one.add_argument("--video", type=Path, help="the product video file")
    one.add_argument("--item", help="the item's columns as a JSON object (its id, title, category, price, ...)")
    one.add_argument("--transcript", default="", help="the video's spoken words, when known (else the title is the text)")
    many = p.add_argument_group("a folder of videos")
    many.add_argument("--videos", type=Path, help="folder of video files")
    many.add_argument("--meta", type=Path, help="CSV with a 'video' column (file name), optional 'transcript', "
                                                "and the item's columns (default: <videos>/items.csv)")
    p.add_argument("--text-cache", type=Path, help="text-vector cache directory (default: the ranker's)")


def run(args: argparse.Namespace) -> int:
    if (args.video is None) == (args.videos is None):
        raise IngestError("give either --video (with --item) or --videos (with --meta)")
    if args.video is not None and args.item is None:
        raise IngestError("--video needs --item, the item's columns as a JSON object")
    if args.video is not None and not args.video.is_file():
        raise IngestError(f"{args.video}: video file not found")
    meta = args.meta or (args.videos / "items.csv" if args.videos is not None else None)
    if meta is not None and not meta.is_file():
        raise IngestError(f"{meta}: items file not found")
    store_path = args.store or default_store_path(args.artifact)
    engine = ScoringEngine.load(args.artifact, args.text_cache)
    store = open_store(engine, store_path)
    ingestor = VideoIngestor.load(args.sentiment, engine)
    if args.video is not None:
        try:
            columns = json.loads(args.item)
        except json.JSONDecodeError as exc:
            raise IngestError(f"--item: not valid JSON ({exc})") from None
        if not isinstance(columns, dict):
            raise IngestError("--item: expected a JSON object of the item's columns")
        batch = [(args.video, columns, args.transcript)]
    else:
        batch = read_items(meta, args.videos)
    started = time.perf_counter()
    done = ingest_videos(engine, store, ingestor, batch)
    seconds = time.perf_counter() - started
    for item in done:
        sentiment = ", ".join(f"{k} {v:+.2f}" for k, v in item.semantics["sentiment"].items())
        print(f"{item.id}: {sentiment}")
    print(f"ingested {len(done)} video(s) into {store_path} in {seconds:.1f} s "
          f"({60 * len(done) / max(seconds, 1e-9):.1f} videos/min); the store holds {store.count('item')} items")
    return 0
