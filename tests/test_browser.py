"""facesort serve end to end in a real headless Chromium: pick photos, drop one, read the labels on the page."""
import base64
import contextlib
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from conftest import make_photo

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}
LOADED = 180  # seconds to wait for an answer: generous, for a loaded machine (httpx's own default is 5 s)

playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="Playwright is not installed: pip install -e '.[test]'")
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"no browser: {CHROMIUM} is not installed (apt-get install chromium)")

DROP = """([name, data]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
    document.getElementById("drop").dispatchEvent(
        new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""

CARDS = """() => Array.from(document.querySelectorAll(".card"), (card) => ({
    name: card.querySelector(".name").textContent,
    state: card.dataset.state,
    labels: Array.from(card.querySelectorAll(".chip"), (chip) => chip.textContent),
    bars: Array.from(card.querySelectorAll(".prob"), (row) => row.querySelector(".label").textContent),
    threshold: (card.querySelector(".threshold") || {}).textContent,
    error: (card.querySelector(".error") || {}).textContent,
}))"""


@pytest.fixture
def server(colour_model, tmp_path):
    """`facesort serve` in its own process, on a free port the server picks; yields the page's URL."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sorter", "serve", "--model", str(colour_model), "--whole-image", "--port", "0"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield _wait_for_url(process, log_path)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_for_url(process, log_path, timeout=LOADED):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on (http://\S+)", log_path.read_text())
        if found:
            return found.group(1) + "/"
        assert process.poll() is None, f"facesort serve exited:\n{log_path.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"facesort serve did not start in {timeout} s:\n{log_path.read_text()}")


@contextlib.contextmanager
def chromium_page(viewport):
    """A page in headless Chromium; yields (page, URLs it requested, script errors and CSP refusals it logged)."""
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=viewport)
        requests, problems = [], []
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        yield page, requests, problems
        browser.close()


def test_upload_through_the_page_shows_labels(server, tmp_path):
    blue = make_photo(tmp_path / "upload" / "blue.jpg", "male", seed=3, size=(320, 240))
    red = make_photo(tmp_path / "upload" / "red.jpg", "female", seed=5, size=(240, 320))
    notes = tmp_path / "upload" / "notes.txt"
    notes.write_text("a shopping list, not a photo\n")
    api = httpx.post(server + "api/predict", files=[("file", (p.name, p.read_bytes())) for p in (blue, red)],
                     timeout=LOADED).json()
    expected = {r["path"]: r for r in api["results"]}
    assert [expected[p.name]["labels"] for p in (blue, red)] == [["male"], ["female"]]

    with chromium_page({"width": 1000, "height": 700}) as (page, requests, problems):
        expected_problem = "the server responded with a status of 422"  # notes.txt, shown on its card
        page.goto(server)
        page.set_input_files("#picker", [blue, notes])
        page.evaluate(DROP, [red.name, base64.b64encode(red.read_bytes()).decode()])
        # locators, not wait_for_function: the page's CSP forbids the eval() that one would need
        playwright_api.expect(page.locator(".card:not([data-state=pending])")).to_have_count(3, timeout=LOADED * 1000)
        cards = {card["name"]: card for card in page.evaluate(CARDS)}
        page.screenshot(path=tmp_path / "serve-desktop.png", full_page=True)
        page.set_viewport_size(PHONE)
        phone_width = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(path=tmp_path / "serve-phone.png", full_page=True)

    for photo in (blue, red):
        card, result = cards[photo.name], expected[photo.name]
        assert card["state"] == "done" and card["labels"] == result["labels"]
        assert card["bars"] == list(result["probs"]) and card["threshold"] == f"threshold {result['threshold']:.2f}"
    assert cards["notes.txt"]["state"] == "error" and "not an image: the file holds text" in cards["notes.txt"]["error"]
    assert phone_width <= PHONE["width"], "the page scrolls sideways on a phone"
    assert all(url.startswith((server, "blob:")) for url in requests), requests  # nothing fetched from elsewhere
    assert [p for p in problems if expected_problem not in p] == [], problems  # no script error, no CSP refusal
    assert (tmp_path / "serve-desktop.png").stat().st_size > 0
