"""The main job end to end on tiny settings: video files -> extracted features -> sentiment model ->
semantics -> ranker -> artifacts and store -> videos ingested over HTTP -> ranking by id."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

pytestmark = pytest.mark.xdist_group("tiny_demo")  # one worker builds the tiny main job (tests/mmapp/conftest.py) for all its users


def test_demo_runs_the_whole_product_from_video_files(tiny_demo):
    printed, out = tiny_demo.printed, tiny_demo.out
    assert tiny_demo.rc == 0, printed[-3000:]
    for stage in ("[1] sentiment data", "[2] sentiment model", "[3] video semantics", "[4] ranking model", "[5] serving"):
        assert stage in printed
    assert len(list((tiny_demo.videos / "videos").glob("*.mp4"))) == 24  # video_tiny: 16 / 4 / 4 clips as files
    assert re.search(r"extracted 24 videos .* \(audio prosody, 16 columns; vision face, \d+ columns\)", printed)
    assert re.search(r"Non0_acc_2=\d\.\d{4}", printed) and re.search(r"test metrics \(cold videos only\): auc=\d\.\d{4}", printed)
    for path in ("sentiment/best.safetensors", "semantics.npz", "ranking/best.safetensors", "artifacts/sentiment/manifest.json",
                 "artifacts/ranker/manifest.json", "artifacts/ranker.store.sqlite", "serve.log"):
        assert (out / path).exists(), path

    new = pd.read_csv(tiny_demo.catalogue / "new_videos.csv")
    videos = pd.read_csv(tiny_demo.catalogue / "videos.csv")
    assert len(new) == 2 and not set(new["video_id"]) & set(videos["video_id"])  # held out of the catalogue
    cold = (tiny_demo.catalogue / "cold_videos.txt").read_text().split()
    assert set(cold) <= set(videos["video_id"]) and not set(cold) & set(new["video_id"])

    served = [json.loads(m) for m in re.findall(r"xdeepfm\.access: (\{.*\})$", (out / "serve.log").read_text(), flags=re.M)]
    assert [r["status"] for r in served if r["path"] == "/v1/items"] == [200]
    assert sum(r["path"] == "/v1/rank" and r["status"] == 200 for r in served) == 4  # 2 users x (list + pair)
    match = re.search(r"ingested 4 new videos through POST /v1/items .* the store now holds (\d+) items", printed)
    assert match and int(match.group(1)) == len(videos) + 4

    assert sum(r["path"] == "/v1/recommend" and r["status"] == 200 for r in served) == 2
    assert (out / "artifacts/ranker.recall/recommender.json").is_file()
    for block in printed.split("\nrecommended for ")[1:]:  # recall over the whole catalogue, then the ranker
        rows = re.findall(r"^\s+\d+\s+(synth_\d+)\s.*?\s(\d\.\d{3})\s+via (popularity|itemcf|two_tower)", block, flags=re.M)
        assert rows and [float(s) for _, s, _ in rows] == sorted((float(s) for _, s, _ in rows), reverse=True)
    for block in printed.split("\nuser user_")[1:]:
        rows = re.findall(r"^\s+\d+\s+(synth_\d+)\s.*?\s(\d\.\d{3})\s+-?\d+\.\d{2}\s+(yes)?$", block, flags=re.M)
        scores = [float(s) for _, s, _ in rows]
        assert rows and scores == sorted(scores, reverse=True)
        assert {v for v, _, fresh in rows if fresh} <= set(new["video_id"])
