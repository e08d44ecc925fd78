"""A video file never seen in training, ingested into a running service and ranked by id.

The models, artifacts and store are the tiny main job's (``tiny_demo``). The service runs as its own
process (``python -m mmapp serve --store --sentiment``) on a copy of the store. What is checked:

- the ingested item's semantics are not zero and equal (float tolerance) what ``mmfusion extract`` +
  ``mmfusion predict`` give for the same file, in the response and in the store;
- the item is ranked by id by the next request, with the score the in-process ranking gives;
- two otherwise identical product videos, one spoken and shown positively and one negatively, are
  ranked positive first for a review reader (the click model's sentiment-sensitive segment);
- a corrupt file is refused with the reason and nothing is written; the ``mmfusion ingest`` command
  does the same work from the command line.
"""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest

from mmapp.cli import main as mmfusion
from mmfusion.data.synthetic import write_pickle
from mmfusion.data.synthvideo import RENDER, render_clip, speakers
from mmfusion.extract.pipeline import extract
from mmfusion.pretrained import SentimentModel
from xdeepfm.catalog import rank_by_id
from xdeepfm.server import RankingServer
from xdeepfm.serving import ScoringEngine
from xdeepfm.store import SQLiteStore

pytestmark = pytest.mark.xdist_group("tiny_demo")  # one worker builds the tiny main job (tests/mmapp/conftest.py) for all its users

NARRATION = "I have been using this backpack for a week now. It is honestly wonderful and I love it."


@pytest.fixture(scope="module")
def service(tiny_demo, tmp_path_factory):
    assert tiny_demo.rc == 0, tiny_demo.printed[-3000:]
    root = tmp_path_factory.mktemp("ingest")
    store = root / "store.sqlite"
    SQLiteStore(tiny_demo.out / "artifacts/ranker.store.sqlite").backup(store)
    artifacts = tiny_demo.out / "artifacts"
    server = RankingServer(artifacts / "ranker", module="mmapp", startup_timeout=180, request_timeout=120,
                           args=["--store", str(store), "--sentiment", str(artifacts / "sentiment")])
    try:
        yield server.start(), store, root
    finally:
        server.stop()


def product(tiny_demo, video_id: str) -> dict:
    """The columns of a catalogue product under a new id (a new video of a known product)."""
    row = pd.read_csv(tiny_demo.catalogue / "videos.csv").iloc[0]
    columns = {c: row[c].item() if hasattr(row[c], "item") else row[c]
               for c in ("video_id", "category", "product", "brand", "price_band", "price", "title")}
    return {**columns, "video_id": video_id}


def render(path, s_a: float, s_v: float) -> bytes:
    render_clip(path, NARRATION, s_a, s_v, seed=11, speaker=speakers(0, RENDER.n_speakers)[3])
    return path.read_bytes()


def predicted(tiny_demo, video, root):
    """``mmfusion extract`` (the model's extraction options) + ``mmfusion predict`` on one file."""
    sentiment = SentimentModel.from_pretrained(tiny_demo.out / "artifacts/sentiment", device="cpu")
    (root / "meta.csv").write_text(f"video,id,text\n{video.name},{video.stem},{NARRATION}\n")
    result = extract(video.parent, root / "meta.csv", sentiment.extract_config(), text_features=True)
    write_pickle(result.data, root / "one.pkl")
    assert mmfusion(["predict", "--checkpoint", str(tiny_demo.out / "artifacts/sentiment"), "--data", str(root / "one.pkl"),
                     "--out", str(root / "one.npz")]) == 0
    return np.load(root / "one.npz")


def test_a_new_video_is_ingested_with_the_semantics_predict_gives_and_ranked_by_id(tiny_demo, service):
    server, store_path, root = service
    (root / "videos").mkdir()
    video = root / "videos" / "fresh_0001.mp4"
    payload = base64.b64encode(render(video, 2.0, 2.5)).decode()
    reply = server.put_items([{"columns": product(tiny_demo, "fresh_0001"), "video": payload, "transcript": NARRATION}])
    assert reply["items"][0]["id"] == "fresh_0001"

    want = predicted(tiny_demo, video, root)
    got = reply["items"][0]["semantics"]["sentiment"]
    np.testing.assert_allclose([got[t] for t in want["tasks"]], want["sentiment"][0], atol=1e-5)
    stored = SQLiteStore(store_path).get("item", ["fresh_0001"])["fresh_0001"]
    np.testing.assert_allclose(stored.vectors["video_sentiment"], want["sentiment"][0], atol=1e-5)
    np.testing.assert_allclose(stored.vectors["video_embedding"], want["embedding"][0], atol=1e-5)
    assert np.abs(stored.vectors["video_embedding"]).sum() > 0 and np.abs(stored.vectors["video_sentiment"]).sum() > 0
    # the explanation of the same pass, kept beside the item (the page's video view)
    explanation = SQLiteStore(store_path).explanation("fresh_0001")
    assert reply["items"][0]["semantics"]["explained"] is True and "explanation" not in reply["items"][0]["semantics"]
    assert explanation["id"] == "fresh_0001" and explanation["narration"] == NARRATION
    assert explanation["outputs"]["M"] == pytest.approx(got["M"], abs=1e-5)
    assert "wonderful" in [w["word"] for w in explanation["audio"]["words"]]
    assert sum(explanation["vision"]["curve"]) == pytest.approx(1.0, abs=1e-3)

    user = pd.read_csv(tiny_demo.catalogue / "users.csv")["user_id"].iloc[0]
    known = pd.read_csv(tiny_demo.catalogue / "videos.csv")["video_id"].head(3).tolist()
    ranked = server.rank_ids(user, ["fresh_0001", *known])
    assert ranked["unknown_ids"] == {} and "fresh_0001" in [i["id"] for i in ranked["items"]]
    engine = ScoringEngine.load(tiny_demo.out / "artifacts/ranker")
    local = rank_by_id(engine, SQLiteStore(store_path), user, ["fresh_0001", *known])
    assert [i["id"] for i in ranked["items"]] == local.ids
    np.testing.assert_allclose([i["score"] for i in ranked["items"]], local.scores, atol=1e-6)


def test_the_positive_delivery_of_the_same_video_ranks_first_for_a_review_reader(tiny_demo, service):
    server, _, root = service
    (root / "pair").mkdir()
    items = [{"columns": product(tiny_demo, f"pair_{tag}"), "transcript": NARRATION,
              "video": base64.b64encode(render(root / "pair" / f"{tag}.mp4", value, value)).decode()}
             for tag, value in (("pos", 3.0), ("neg", -3.0))]
    semantics = {i["id"]: i["semantics"]["sentiment"] for i in server.put_items(items)["items"]}
    assert semantics["pair_pos"]["M"] > semantics["pair_neg"]["M"]
    users = pd.read_csv(tiny_demo.catalogue / "users.csv")
    reader = users.loc[users["user_segment"] == "review_reader", "user_id"].iloc[0]
    ranked = server.rank_ids(reader, ["pair_neg", "pair_pos"])
    assert [i["id"] for i in ranked["items"]] == ["pair_pos", "pair_neg"]


def test_a_corrupt_video_is_refused_and_nothing_is_written(tiny_demo, service):
    server, store_path, _ = service
    before = SQLiteStore(store_path).generation()
    engine = ScoringEngine.load(tiny_demo.out / "artifacts/ranker")
    vectors = {name: [0.5] * engine.field_width(name) for name in ("video_sentiment", "video_embedding")}
    good = {"columns": product(tiny_demo, "good_one"), "vectors": vectors}
    bad = {"columns": product(tiny_demo, "broken"), "video": base64.b64encode(b"\x00\x00\x00\x18ftypmp42 not a movie").decode()}
    response = server.request("POST", "/v1/items", json={"items": [good, bad]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "items[1].video" and "not a usable video" in error["message"]
    store = SQLiteStore(store_path)
    assert store.generation() == before and "good_one" not in store.ids("item")


def test_the_ingest_command_writes_the_item_and_refuses_a_missing_file(tiny_demo, tmp_path, capsys, caplog):
    store = tmp_path / "store.sqlite"
    SQLiteStore(tiny_demo.out / "artifacts/ranker.store.sqlite").backup(store)
    video = tmp_path / "cli.mp4"
    render(video, -1.0, -2.0)
    args = ["ingest", "--artifact", str(tiny_demo.out / "artifacts/ranker"), "--sentiment",
            str(tiny_demo.out / "artifacts/sentiment"), "--store", str(store)]
    item = '{"video_id": "cli_0001", "category": "fashion", "product": "Backpack", "brand": "Kano", ' \
           '"price_band": "mid", "price": 42.0, "title": "Kano Backpack Pro 4"}'
    assert mmfusion([*args, "--video", str(video), "--item", item, "--transcript", NARRATION]) == 0
    assert "cli_0001: M " in capsys.readouterr().out
    assert "cli_0001" in SQLiteStore(store).ids("item")
    assert mmfusion([*args, "--video", str(tmp_path / "missing.mp4"), "--item", item]) == 2
    assert "missing.mp4: video file not found" in caplog.text
