"""A tiny trained ranking model with every field kind, its checkpoint and its exported artifact.

Built once per test session (``functools.cache``) in a temp directory: 600 synthetic impressions
of 40 users x 30 items (categorical, multi-valued, numeric, text through a tiny random BERT, and a
vector field read from an .npz), 3 epochs of ``xdeepfm.train.train_epoch``, ``save_ranking_checkpoint``.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmcore.config import to_dict
from tests.xdeepfm_factory import make_tiny_bert

USER_COLUMNS = ["user_id", "gender", "age"]
ITEM_COLUMNS = ["item_id", "genres", "price", "title"]
GENRES = ["Action", "Comedy", "Drama", "War", "Horror"]


@dataclass
class Tiny:
    root: Path
    frame: pd.DataFrame  # all rows (the model was trained on them)
    checkpoint: Path
    artifact: Path
    text_cache: Path


def impressions(n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users, items = rng.integers(1, 41, n), rng.integers(1, 31, n)
    genres = ["|".join(rng.choice(GENRES, size=1 + i % 3, replace=False)) for i in items]
    frame = pd.DataFrame({
        "user_id": users,
        "gender": np.where(users % 2 == 0, "F", "M"),
        "age": (18 + users % 50).astype(float),
        "item_id": [f"i{i}" for i in items],
        "genres": genres,
        "price": np.round(5 + (items * 7) % 40 + rng.random(n), 2),
        "title": [f"product {i} {GENRES[i % 5].lower()} edition" for i in items],
    })
    logit = 0.8 * (frame["gender"] == "F") + 0.05 * (items % 7) - 0.02 * (frame["price"] - 20) + 0.5 * frame["genres"].str.contains("Drama")
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-(logit - 0.5)))).astype(np.float32)
    return frame


@functools.cache
def tiny_ranking() -> Tiny:
    from xdeepfm.checkpoint import save_ranking_checkpoint
    from xdeepfm.experiment import RankingTrainConfig
    from xdeepfm.export import export_checkpoint
    from xdeepfm.features import FeaturePipeline, load_spec
    from xdeepfm.model import RankerConfig, XDeepFMRanker, stack_inputs
    from xdeepfm.train import SplitData, make_optimizer, train_epoch

    root = Path(tempfile.mkdtemp(prefix="xdeepfm_serving_"))
    atexit.register(shutil.rmtree, root, True)
    bert = make_tiny_bert(root / "bert")
    frame = impressions()
    item_ids = np.array([f"i{i}" for i in range(1, 31)])
    np.savez(root / "sem.npz", ids=item_ids, vectors=np.random.default_rng(1).normal(size=(30, 3)).astype(np.float32))
    spec = load_spec({
        "text_cache_dir": str(root / "text_cache"),
        "fields": [
            {"name": "user_id", "kind": "categorical"},
            {"name": "item_id", "kind": "categorical"},
            {"name": "gender", "kind": "categorical"},
            {"name": "genres", "kind": "multi_valued", "max_len": 2},
            {"name": "age", "kind": "numeric"},
            {"name": "price", "kind": "numeric"},
            {"name": "title", "kind": "text", "model_path": str(bert), "max_tokens": 12},
            {"name": "semantics", "kind": "vector", "path": str(root / "sem.npz"), "key_column": "item_id"},
        ],
    })
    pipeline = FeaturePipeline(spec).fit(frame)
    config = RankerConfig(embedding_dim=4, cin_layer_sizes=[4, 4], dnn_hidden_units=[8])
    model = XDeepFMRanker([pipeline.fitted[f.name] for f in spec.fields], config, seed=0)
    data = SplitData(torch.from_numpy(stack_inputs(pipeline.transform(frame), model.columns)),
                     torch.from_numpy(frame["label"].to_numpy(np.float32, copy=True)), frame["user_id"].to_numpy())
    train = RankingTrainConfig(batch_size=64, lr=1e-2, progress=False)
    optimizer = make_optimizer(model, train)
    for epoch in range(3):
        train_epoch(model, optimizer, data, train, torch.Generator().manual_seed(epoch))
    checkpoint = root / "best.safetensors"
    save_ranking_checkpoint(checkpoint, config={"task": "ranking", "train": {"seed": 0}, "model": to_dict(config)},
                            features=pipeline, model=model, metrics={"valid": {"auc": 0.5}, "best_epoch": 3}, state={"epoch": 3})
    artifact = export_checkpoint(checkpoint, root / "artifact")
    (root / "sem.npz").unlink()  # serving must not need the training-time vector file
    return Tiny(root, frame, checkpoint, artifact, root / "text_cache")


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-like dicts (numpy scalars -> Python, missing -> None), the input columns only."""
    columns = USER_COLUMNS + ITEM_COLUMNS
    frame = frame[columns].astype(object).where(frame[columns].notna(), None)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in frame.to_dict("records")]
