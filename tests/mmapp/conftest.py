"""The main job once per test session on tiny settings (video_tiny clips, a small catalogue), shared by
the demo's own test and the ingestion tests that reuse its trained models, artifacts and store."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mmfusion.extract.synthclip import espeak_available

REPO = Path(__file__).resolve().parents[2]


@dataclass
class DemoRun:
    root: Path
    out: Path  # the demo's --out
    videos: Path  # the SynthVideo folder
    catalogue: Path
    printed: str
    rc: int


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> DemoRun:
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): the main job speaks its videos")
    from mmapp.demo import main

    root = tmp_path_factory.mktemp("demo")
    sentiment = {"base": str(REPO / "configs/synthvideo_default.yaml"), "data": {"path": str(root / "synthvideo_tiny.pkl")},
                 "train": {"epochs": 8}}
    ranking = yaml.safe_load((REPO / "configs/ecommerce_xdeepfm.yaml").read_text())
    ranking["train"]["epochs"] = 2
    ranking["features"]["text_cache_dir"] = str(root / "text_cache")
    (root / "sentiment.yaml").write_text(yaml.safe_dump(sentiment))
    (root / "ranking.yaml").write_text(yaml.safe_dump(ranking))
    run = DemoRun(root, root / "run", root / "synthvideo_tiny", root / "ecommerce", "", -1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run.rc = main(["--sentiment-config", str(root / "sentiment.yaml"), "--ranking-config", str(root / "ranking.yaml"),
                       "--videos", str(run.videos), "--preset", "video_tiny", "--catalogue", str(run.catalogue),
                       "--out", str(run.out), "--new-videos", "2", "--n-users", "120", "--impressions-per-user", "40",
                       "--users", "2", "--top-k", "4", "--server-processes", "1"])
    run.printed = printed.getvalue()
    return run
