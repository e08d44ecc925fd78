"""The main job end to end on tiny settings: sentiment model -> semantics -> ranker -> artifacts -> HTTP ranking."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mmapp.demo import main

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_the_whole_product(tmp_path, capsys):
    sentiment = yaml.safe_load((REPO / "configs/synthmosi_tiny.yaml").read_text())
    sentiment["data"]["path"] = str(tmp_path / "synth_tiny.pkl")
    sentiment["train"]["epochs"] = 2
    ranking = yaml.safe_load((REPO / "configs/ecommerce_xdeepfm.yaml").read_text())
    ranking["train"]["epochs"] = 2
    ranking["features"]["text_cache_dir"] = str(tmp_path / "text_cache")
    (tmp_path / "sentiment.yaml").write_text(yaml.safe_dump(sentiment))
    (tmp_path / "ranking.yaml").write_text(yaml.safe_dump(ranking))
    out = tmp_path / "run"

    assert main(["--sentiment-config", str(tmp_path / "sentiment.yaml"), "--ranking-config", str(tmp_path / "ranking.yaml"),
                 "--catalogue", str(tmp_path / "ecommerce"), "--out", str(out), "--n-videos", "60", "--n-users", "40",
                 "--impressions-per-user", "40", "--users", "2", "--top-k", "4"]) == 0
    printed = capsys.readouterr().out

    for stage in ("[1] sentiment model", "[2] video semantics", "[3] ranking model", "[4] serving"):
        assert stage in printed
    assert re.search(r"Non0_acc_2=\d\.\d{4}", printed) and re.search(r"test metrics \(new videos only\): auc=0\.\d{4}", printed)
    for path in ("sentiment/best.safetensors", "sentiment/tensorboard", "semantics.npz", "ranking/best.safetensors", "ranking/tensorboard",
                 "artifacts/sentiment/manifest.json", "artifacts/ranker/manifest.json", "serve.log"):
        assert (out / path).exists(), path
    served = (out / "serve.log").read_text()  # the lists went through the real service (its JSON access log)
    assert served.count('"method": "POST", "path": "/v1/rank", "status": 200') == 2

    lists = re.findall(r"user (user_\d+) .*: top (\d) of (\d+) new videos", printed)
    assert len(lists) == 2 and all(int(k) <= 4 for _, k, _ in lists)
    blocks = printed.split("\nuser user_")[1:]
    for block in blocks:
        rows = re.findall(r"^\s+\d+\s+(video_\d+)\s.*?\s(\d\.\d{3})\s+-?\d+\.\d{2}\s+[01]$", block, flags=re.M)
        scores = [float(s) for _, s in rows]
        assert rows and scores == sorted(scores, reverse=True)
        assert len({v for v, _ in rows}) == len(rows)  # distinct videos
