"""The service's web page in a real browser (Playwright driving Debian's Chromium), on the tiny main job's
models and store, whose items carry the sentiment explanations the main job computed.

Checked: the page loads without console errors and without any request leaving loopback; the first user's
list renders in the order and with the scores ``POST /v1/rank`` returns; the attribution bars are the top
attributions of the JSON; the video view shades the narration's words and draws the audio and vision
attention; ``/docs`` renders Swagger UI offline. One screenshot per view goes to ``runs/screenshots/``.

Skipped, with the reason, where Playwright or Chromium is missing (``.ci/run`` installs Chromium with apt;
a developer: ``apt-get install chromium`` and ``pip install -e '.[test]'``; never ``playwright install``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import uvicorn

from xdeepfm.app import Limits, create_app
from xdeepfm.catalog import open_store
from xdeepfm.recommend import Recommender
from xdeepfm.serving import ScoringEngine
from xdeepfm.store import SQLiteStore

pytestmark = pytest.mark.xdist_group("tiny_demo")  # one worker builds the tiny main job (tests/mmapp/conftest.py) for all its users

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "screenshots"
TOP_K = 8


def test_the_main_job_keeps_an_explanation_beside_every_catalogue_video(tiny_demo):
    assert tiny_demo.rc == 0, tiny_demo.printed[-3000:]
    store = SQLiteStore(tiny_demo.out / "artifacts/ranker.store.sqlite")
    ids = store.ids("item")
    explained = {i: store.explanation(i) for i in ids}
    assert ids and [i for i, e in explained.items() if e is None] == []  # the videos ingested over HTTP too
    for item_id, e in explained.items():
        assert e["id"] == item_id and set(e["shares"]) == {"text", "audio", "vision"}
        assert sum(e["shares"].values()) == pytest.approx(1.0, abs=1e-5)
        for m in ("audio", "vision"):
            assert sum(e[m]["curve"]) == pytest.approx(1.0, abs=1e-3)  # r sums to 1 over the clip's real frames
            assert len(e[m]["curve"]) * e[m]["frame_stride"] >= e[m]["frames"]
            words = e[m]["words"]
            assert words and 0.0 < sum(w["weight"] for w in words) <= 1.0 + 1e-5  # every word, specials left out
            assert " ".join(w["word"] for w in sorted(words, key=lambda w: w["position"])).lower().split()[0] in \
                e["narration"].lower()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); Playwright drives the system's Chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _serve(tiny_demo, tmp_path_factory, with_recommender: bool):
    """The service in this process (uvicorn on a thread, loopback, a free port) over a copy of the job's store."""
    assert tiny_demo.rc == 0, tiny_demo.printed[-3000:]
    path = tmp_path_factory.mktemp("web") / "store.sqlite"
    SQLiteStore(tiny_demo.out / "artifacts/ranker.store.sqlite").backup(path)
    engine = ScoringEngine.load(tiny_demo.out / "artifacts/ranker")
    recommender = Recommender.load(tiny_demo.out / "artifacts/ranker.recall", engine.artifact.pipeline) \
        if with_recommender else None
    app = create_app(engine, Limits(), warm_up=False, store=open_store(engine, path), recommender=recommender)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def service(tiny_demo, tmp_path_factory):
    """Without a recommender: the page ranks the store's items (POST /v1/rank by id)."""
    yield from _serve(tiny_demo, tmp_path_factory, with_recommender=False)


@pytest.fixture(scope="module")
def recommending(tiny_demo, tmp_path_factory):
    """With the job's recommender: the page shows POST /v1/recommend."""
    yield from _serve(tiny_demo, tmp_path_factory, with_recommender=True)


@pytest.fixture
def page(browser, service):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    seen = {"errors": [], "hosts": set()}
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["hosts"].add(urlparse(r.url).hostname))
    page.seen = seen
    yield page
    context.close()


def _screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_the_page_ranks_a_user_as_the_json_does_and_explains_the_scores(page, service):
    page.goto(f"{service}/")
    page.fill("#top-k", str(TOP_K))
    page.click("#rank-button")
    page.wait_for_function(f"document.querySelectorAll('#ranked .item').length === {TOP_K}", timeout=15_000)
    page.wait_for_selector("#narration .word", timeout=15_000)
    user = page.input_value("#user-select")
    candidates = requests.get(f"{service}/v1/items?limit=300", timeout=10).json()["ids"]
    want = requests.post(f"{service}/v1/rank", json={"user_id": user, "candidate_ids": candidates, "top_k": TOP_K,
                                                     "explain": True}, timeout=30).json()
    rows = page.locator("#ranked .item")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == [i["id"] for i in want["items"]]
    shown = page.locator("#ranked [data-score]").evaluate_all("nodes => nodes.map(n => Number(n.dataset.score))")
    np.testing.assert_allclose(shown, [i["score"] for i in want["items"]], rtol=0, atol=1e-12)
    # the bars: the top 5 attributions of each item, in the JSON's order and with its values
    for k, item in enumerate(want["items"]):
        bars = rows.nth(k).locator(".attr-bar")
        got = bars.evaluate_all("bars => bars.map(b => [b.dataset.group, Number(b.dataset.value), b.getBoundingClientRect().width])")
        top = item["explanation"]["attributions"][:5]
        assert [g for g, _, _ in got] == [a["group"] for a in top]
        np.testing.assert_allclose([v for _, v, _ in got], [a["value"] for a in top], atol=1e-12)
        assert max(w for _, _, w in got) > 10  # drawn, the largest at half the track
    _screenshot(page, "list")
    assert page.seen["errors"] == [] and page.seen["hosts"] == {"127.0.0.1"}


def test_the_video_view_highlights_the_attended_words_and_draws_the_attention(page, service):
    page.goto(f"{service}/")
    page.wait_for_selector("#ranked .item", timeout=15_000)
    second = page.locator("#ranked .item").nth(1)
    video_id = second.get_attribute("data-id")
    second.click()
    page.wait_for_function(f"document.querySelector('#ranked .item.open')?.dataset.id === {video_id!r}")
    record = requests.get(f"{service}/v1/items/{video_id}", timeout=10).json()
    assert record["explanation"] is not None
    assert page.text_content("#video-title") == record["columns"]["title"]
    words = page.locator("#narration .stream").first.locator(".word")
    audio_words = sorted(record["explanation"]["audio"]["words"], key=lambda w: w["position"])
    assert words.all_text_contents() == [w["word"] for w in audio_words]  # the narration, in order
    shades = words.evaluate_all("ws => ws.map(w => getComputedStyle(w).backgroundColor)")
    heaviest = max(range(len(audio_words)), key=lambda i: audio_words[i]["weight"])
    assert shades[heaviest].replace(" ", "") == "rgb(9,105,218)"  # the most attended word in full colour
    assert len(set(shades)) > 1
    decisive = page.locator("#video-decisive .shares span").evaluate_all("s => s.map(x => parseFloat(x.style.width))")
    np.testing.assert_allclose(decisive, [100 * record["explanation"]["decisive"][m] for m in ("text", "audio", "vision")],
                               atol=0.06)  # the occlusion shares, drawn
    lines = page.locator("#attention svg polyline")
    assert lines.evaluate_all("ls => ls.map(l => l.dataset.stream)") == ["audio", "vision"]
    points = lines.first.get_attribute("points").split()
    assert len(points) == len(record["explanation"]["audio"]["curve"])
    _screenshot(page, "video")
    assert page.seen["errors"] == [] and page.seen["hosts"] == {"127.0.0.1"}


def test_the_api_docs_render_offline(page, service):
    page.goto(f"{service}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=15_000)
    assert page.locator(".swagger-ui .opblock").count() >= 6
    _screenshot(page, "docs")
    assert page.seen["errors"] == [] and page.seen["hosts"] == {"127.0.0.1"}


def test_with_a_recommender_the_page_shows_what_recommend_returns(page, recommending):
    page.goto(f"{recommending}/")
    page.wait_for_selector("#ranked .item", timeout=15_000)
    assert page.text_content("#list-title").startswith("Recommended videos for user")
    user, k = page.input_value("#user-select"), page.locator("#ranked .item").count()
    want = requests.post(f"{recommending}/v1/recommend", json={"user_id": user, "k": k, "explain": True}, timeout=30).json()
    rows = page.locator("#ranked .item")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == [i["id"] for i in want["items"]]
    shown = page.locator("#ranked [data-score]").evaluate_all("nodes => nodes.map(n => Number(n.dataset.score))")
    np.testing.assert_allclose(shown, [i["score"] for i in want["items"]], rtol=0, atol=1e-12)
    assert f"via {want['items'][0]['channel'].replace('_', '-')}" in rows.first.text_content()
    _screenshot(page, "recommend")
    assert page.seen["errors"] == [] and page.seen["hosts"] == {"127.0.0.1"}
