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


# --------------------------------------------------------------------------------------------
# The service in this process: uvicorn on a free loopback port, in a thread (tests can patch the engine)
# --------------------------------------------------------------------------------------------


class ThreadedServer:
    """``create_app(engine, limits)`` served by ``xdeepfm.server.build_server`` on 127.0.0.1 in a daemon thread.

    ``with ThreadedServer(engine, limits) as server:`` waits for ``GET /readyz`` (the warm-up) and
    stops uvicorn on exit. ``server.app`` is the FastAPI app (``app.state.scoring`` / ``encoding``).
    """

    def __init__(self, engine, limits=None, warm_up: bool = True, startup_timeout: float = 30.0) -> None:
        from xdeepfm.app import Limits, create_app

        self.limits = limits or Limits()
        self.app = create_app(engine, self.limits, warm_up=warm_up)
        self.startup_timeout = startup_timeout
        self.server = None
        self.thread = None
        self.url = ""

    def __enter__(self) -> "ThreadedServer":
        import threading
        import time

        import requests

        from xdeepfm.server import build_server, free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = build_server(self.app, "127.0.0.1", port, self.limits, "warning")
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"the in-process server at {self.url} did not become ready")

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(15)


def slow_down(cache, seconds_per_batch: float):
    """Make ``SentenceVectorCache`` ``cache`` sleep before each model batch (the real encoder still runs);
    returns a function that undoes it."""
    import time

    original = cache._encode_batch

    def slow(texts):
        time.sleep(seconds_per_batch)
        return original(texts)

    cache._encode_batch = slow
    return lambda: cache.__dict__.pop("_encode_batch", None)


def rank_body(frame: pd.DataFrame, n: int = 3, new_titles: str | None = None, **changes) -> dict:
    """A /v1/rank body: one user and ``n`` candidates (cycling the frame's rows); ``new_titles`` prefixes
    unique never-seen titles (cache misses)."""
    user = {"user_id": 11, "gender": "F", "age": 29.0}
    rows = records(frame.head(max(n, 1)))
    candidates = [{k: rows[i % len(rows)][k] for k in ITEM_COLUMNS} for i in range(n)]
    if new_titles is not None:
        for i, candidate in enumerate(candidates):
            candidate["title"] = f"{new_titles} title number {i}"
    return {"user": user, "candidates": candidates, **changes}
