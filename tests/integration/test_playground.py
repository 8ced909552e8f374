"""The /playground page in a real browser (Playwright driving Debian's Chromium, headless), on one real
server with a model of every kind and API keys on: every panel is clicked through and what a person
would see is held against the server's own answers (heatmap cells against the cosines of
/v1/embeddings, each ranking against /v1/rerank, sparse terms against /v1/encodings, a job's progress
to completion, live numbers moving). Every request the page makes is recorded: all of them stay on
the server's origin, and none breaks the page's Content-Security-Policy.

PLAYGROUND_SCREENSHOTS=docs/playground writes each panel's screenshot there (docs/playground.md).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.integration.conftest import start_server, stop_server
from tests.support.playground import (
    BERT, CHROMIUM_ARGS, COLBERT, DEFAULT, KEY, MODELS, SPLADE, Api, build_models, chromium, expected_rankers,
    pca2, server_args,
)

pytestmark = pytest.mark.integration

SHOTS = os.environ.get("PLAYGROUND_SCREENSHOTS")
SEEN: list[str] = []  # every URL any page asked for, over the whole module


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    server = start_server(root, *server_args(build_models(root), root / "state"), timeout=240)
    yield Api(server.url)
    stop_server(server)


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS))
        yield launched
        launched.close()


@pytest.fixture
def page(browser, api):
    """A fresh tab (its own sessionStorage); afterwards, every request it made was to the server, and
    the browser reported no script error and no Content-Security-Policy violation."""
    context = browser.new_context(viewport={"width": 1000, "height": 800}, device_scale_factor=1)
    requests, problems = [], []
    context.on("request", lambda request: requests.append(request.url))
    tab = context.new_page()
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    yield tab
    context.close()
    SEEN.extend(requests)
    assert requests, "the page made no request at all"
    elsewhere = [url for url in requests if urlsplit(url)[:2] != api.origin]
    assert not elsewhere, f"requests to another origin: {elsewhere}"
    assert not problems, problems


def open_panel(page, api, panel: str, *, key: str | None = KEY) -> None:
    page.goto(f"{api.url}/playground#{panel}")
    expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
    if key:
        page.fill("#api-key", key)
        page.click("#key-form button[type=submit]")
        expect(page.locator("#models-table tbody tr")).to_have_count(len(MODELS), timeout=20000)


def screenshot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def done(page, panel: str, text: str, timeout: float = 30000) -> None:
    expect(page.locator(f'.work[data-for="{panel}"] .work-status')).to_contain_text(text, timeout=timeout)


def test_without_a_key_the_page_shows_the_apis_answer_and_with_one_lists_the_models(page, api):
    open_panel(page, api, "models", key=None)
    expect(page.locator('.work[data-for="models"] .error')).to_contain_text("401: No API key provided")
    open_panel(page, api, "models")
    described = {m["model_name"]: m for m in api.get("/model/info")["loaded_models"]}
    for row in page.locator("#models-table tbody tr").all():
        model = described[row.get_attribute("data-model")]
        assert row.locator(".tasks").inner_text() == ", ".join(model["tasks"])
        assert model["backend"] in row.inner_text() and model["dtype"] in row.inner_text()
    assert page.evaluate("sessionStorage.getItem('embedserve.playground.key')") == KEY
    assert page.evaluate("localStorage.length") == 0  # the key stays in this tab's session only


def test_similarity_heatmap_and_map_show_the_served_vectors(page, api):
    open_panel(page, api, "similarity")
    page.select_option("#similarity-model", DEFAULT)
    page.click("#similarity-form button[type=submit]")
    sentences = [s for s in page.input_value("#similarity-texts").split("\n") if s.strip()]
    expect(page.locator("#similarity-heatmap .cell")).to_have_count(len(sentences) ** 2)
    vectors = api.embed(DEFAULT, sentences)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = unit @ unit.T
    for cell in page.locator("#similarity-heatmap .cell").all():
        i, j = int(cell.get_attribute("data-row")), int(cell.get_attribute("data-col"))
        assert abs(float(cell.get_attribute("data-value")) - cosines[i, j]) < 2e-3, (i, j)
        assert abs(float(cell.locator("text").text_content()) - cosines[i, j]) <= 0.005 + 2e-3, (i, j)
    points = page.locator("#similarity-map .point")
    expect(points).to_have_count(len(sentences))
    shown = np.array([[float(p.get_attribute("data-x")), float(p.get_attribute("data-y"))] for p in points.all()])
    assert [p.get_attribute("data-label") for p in points.all()] == [f"S{i + 1}" for i in range(len(sentences))]
    reference = pca2(vectors)
    assert np.abs(shown - reference).max() < 0.02 * np.abs(reference).max()
    screenshot(page, "similarity")


def test_search_ranks_with_every_model_that_can_rank(page, api):
    open_panel(page, api, "search")
    page.click("#search-form button[type=submit]")
    done(page, "search", "ranked")
    query = page.input_value("#search-query")
    documents = [d for d in page.input_value("#search-docs").split("\n") if d.strip()]
    columns = page.locator("#search-results .ranking").all()
    found = {(c.get_attribute("data-model"), c.get_attribute("data-method"), c.get_attribute("data-route")) for c in columns}
    assert found == expected_rankers(api.get("/model/info")["loaded_models"])
    for column in columns:
        model, route = column.get_attribute("data-model"), column.get_attribute("data-route")
        if route == "/v1/rerank":
            reference = api.rerank(model, query, documents)
        elif route == "/v1/embeddings":
            q, d = api.embed(model, [query], "query")[0], api.embed(model, documents, "document")
            reference = d @ q / np.linalg.norm(d, axis=1) / np.linalg.norm(q)
        else:
            reference = api.sparse_dot(model, query, documents)
        items = column.locator("li").all()
        order = [int(li.get_attribute("data-index")) for li in items]
        scores = np.array([float(li.get_attribute("data-score")) for li in items])
        assert sorted(order) == list(range(len(documents))), model
        assert np.all(np.diff(scores) <= 0), (model, route, scores)  # best first
        assert np.allclose(scores, reference[order], rtol=1e-3, atol=1e-3), (model, route, scores, reference[order])
        if model == DEFAULT:  # the dense model's order, exactly as the server ranks
            assert order == list(np.argsort(-reference, kind="stable")), (order, reference)
    screenshot(page, "search")


def test_hybrid_shows_sparse_terms_and_token_best_matches(page, api):
    open_panel(page, api, "hybrid")
    page.select_option("#hybrid-model", SPLADE)
    page.click("#hybrid-form button[type=submit]")
    done(page, "hybrid", "sparse outputs")
    query, doc = page.input_value("#hybrid-query"), page.input_value("#hybrid-doc")
    q = api.encode(SPLADE, query, ["sparse"], "query")["sparse"]
    d = api.encode(SPLADE, doc, ["sparse"], "document")["sparse"]
    heaviest = sorted(zip(q["values"], q["tokens"], q["indices"], strict=True), reverse=True)[:20]
    rows = page.locator("#hybrid-query-terms tbody tr").all()
    assert [r.get_attribute("data-term") for r in rows] == [t for _, t, _ in heaviest]
    assert np.allclose([float(r.get_attribute("data-weight")) for r in rows], [w for w, _, _ in heaviest], atol=1e-4)
    assert [("in both" in r.inner_text()) for r in rows] == [i in d["indices"] for _, _, i in heaviest]
    lexical = sum(v * dict(zip(d["indices"], d["values"], strict=True)).get(i, 0) for i, v in zip(q["indices"], q["values"], strict=True))
    assert abs(float(page.locator(".summary[data-lexical]").get_attribute("data-lexical")) - lexical) < 1e-3
    screenshot(page, "hybrid-sparse")

    page.select_option("#hybrid-model", COLBERT)
    page.fill("#hybrid-query", "the quick brown fox")
    page.fill("#hybrid-doc", "a quick brown dog, jumps over the lazy fox.")
    page.click("#hybrid-form button[type=submit]")
    done(page, "hybrid", "multivector outputs")
    qv = np.array(api.encode(COLBERT, "the quick brown fox", ["multivector"], "query")["multivector"])
    dv = np.array(api.encode(COLBERT, "a quick brown dog, jumps over the lazy fox.", ["multivector"], "document")["multivector"])
    rows = page.locator("#hybrid-matches tbody tr").all()
    assert len(rows) == len(qv)
    labels = [r.get_attribute("data-query-token") for r in rows]
    assert labels[:7] == ["[CLS]", "[Q]", "the", "quick", "brown", "fox", "[SEP]"] and set(labels[7:]) == {"[MASK]"}
    best = (qv @ dv.T).max(axis=1)
    assert np.allclose([float(r.get_attribute("data-sim")) for r in rows], best, atol=1e-3)
    page_sum = float(page.locator(".summary[data-sum]").get_attribute("data-sum"))
    served = api.rerank(COLBERT, "the quick brown fox", ["a quick brown dog, jumps over the lazy fox."])[0]
    assert abs(page_sum - served) < 1e-3 * max(1.0, abs(served))  # the page's best matches add up to the server's MaxSim
    screenshot(page, "hybrid-multivector")


def test_models_are_unloaded_and_loaded_with_the_apis_errors_shown(page, api):
    open_panel(page, api, "models")
    page.click(f'button[aria-label="Unload {COLBERT}"]')
    expect(page.locator("#models-table tbody tr")).to_have_count(len(MODELS) - 1)
    assert COLBERT not in [m["id"] for m in api.get("/v1/models")["data"]]
    page.fill("#load-name", "no-such-model")
    page.click("#load-form button[type=submit]")
    message = httpx.post(f"{api.url}/model/load", params={"model_name": "no-such-model"}, headers=api.headers).json()
    expect(page.locator('.work[data-for="models"] .error')).to_have_text(f"404: {message['error']['message']}")
    page.fill("#load-name", COLBERT)
    page.click("#load-form button[type=submit]")
    expect(page.locator("#models-table tbody tr")).to_have_count(len(MODELS), timeout=60000)
    assert COLBERT in [m["id"] for m in api.get("/v1/models")["data"]]
    screenshot(page, "models")


def test_a_job_started_from_pasted_pairs_shows_progress_loss_and_metrics(page, api):
    open_panel(page, api, "jobs")
    page.select_option("#job-base", BERT)
    page.fill("#job-name", "playground-ft")
    page.fill("#job-batch", "4")
    page.click("#job-form button[type=submit]")
    expect(page.locator("#job-detail .summary")).to_have_attribute("data-status", "succeeded", timeout=120000)
    job = api.get("/v1/fine_tuning/jobs")["data"][0]
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == "playground-ft"
    expect(page.locator("#job-progress")).to_have_attribute("value", "100")
    expect(page.locator(f'#jobs-table tr[data-job="{job["id"]}"]')).to_have_attribute("data-status", "succeeded")
    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events")["data"]
    losses = [e for e in events if e["type"] == "progress" and e["data"].get("loss") is not None]
    assert len(losses) == job["trained_steps"] >= 2
    expect(page.locator("#job-loss circle")).to_have_count(len(losses))
    for stage in ("before", "after"):
        assert set(job["metrics"][stage]) == {"mrr@10", "recall@1"}  # 24 pairs: 10 held out
    row = page.locator('.metrics tr[data-metric="mrr@10"]').inner_text()
    assert f"{job['metrics']['before']['mrr@10']:.4f}" in row and f"{job['metrics']['after']['mrr@10']:.4f}" in row
    screenshot(page, "jobs")


def test_live_numbers_follow_the_servers_traffic(page, api):
    open_panel(page, api, "live")
    stop = threading.Event()

    def traffic():
        with httpx.Client(headers=api.headers, timeout=30) as client:
            while not stop.is_set():
                client.post(f"{api.url}/v1/embeddings", json={"model": DEFAULT, "input": ["live traffic", "two texts"]})

    senders = [threading.Thread(target=traffic) for _ in range(3)]
    for sender in senders:
        sender.start()
    try:
        for metric in ("requests_per_second", "batch_size", "tokens_per_second"):
            expect(page.locator(f'.card[data-metric="{metric}"]')).not_to_have_attribute("data-value", "0", timeout=15000)
        assert float(page.locator('.card[data-metric="requests_per_second"]').get_attribute("data-value")) > 1
        time.sleep(2)  # a few points on the sparklines
        screenshot(page, "live")
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    expect(page.locator(f'#live-models tr[data-model="{DEFAULT}"]')).to_be_visible()


def test_keyboard_alone_reaches_every_panel_and_narrow_screens_need_no_sideways_scroll(page, api):
    page.set_viewport_size({"width": 360, "height": 740})
    open_panel(page, api, "similarity")
    page.focus("#tab-similarity")
    for key, tab in (("ArrowRight", "search"), ("End", "live"), ("ArrowRight", "similarity"), ("ArrowLeft", "live"),
                     ("Home", "similarity"), ("ArrowRight", "search")):
        page.keyboard.press(key)
        expect(page.locator(f"#tab-{tab}")).to_be_focused()
        expect(page.locator(f"#panel-{tab}")).to_be_visible()
    page.focus("#search-query")
    page.keyboard.press("Enter")  # the form submits from the keyboard
    done(page, "search", "ranked")
    for tab in ("similarity", "search", "hybrid", "models", "jobs", "live"):
        page.click(f"#tab-{tab}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360, tab
    page.evaluate("location.hash = '#jobs'")  # a link to a panel, or its name typed after the page's address
    expect(page.locator("#panel-jobs")).to_be_visible()
    expect(page.locator("#tab-jobs")).to_have_attribute("aria-selected", "true")


def test_the_page_used_the_public_api_only(api):
    paths = {urlsplit(url).path for url in SEEN}
    assert {"/playground", "/playground/app.js", "/health", "/model/info", "/v1/embeddings", "/v1/rerank",
            "/v1/encodings", "/tokenize", "/model/load", "/model/unload", "/v1/fine_tuning/jobs", "/metrics"} <= paths
    assert all(urlsplit(url)[:2] == api.origin for url in SEEN)
