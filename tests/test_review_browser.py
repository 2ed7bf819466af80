"""facesort review --serve end to end in a real headless Chromium: decide with the keyboard, survive a kill and a
reload, apply and undo from the page, and check the files on disk."""
import os
import signal
import socket
import subprocess
import sys

import pytest
from review_data import reviewed_folder
from test_browser import CHROMIUM, _wait_for_url, chromium_page

from sorter.discover import TRASH_DIR
from sorter.report import read_rows

playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="Playwright is not installed: pip install -e '.[test]'")
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"no browser: {CHROMIUM} is not installed (apt-get install chromium)")
SCREENSHOTS = os.environ.get("FACESORT_SCREENSHOTS")  # a folder to keep the screenshots in, to look at them


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data, review_csv, port, log_path):
    """`facesort review DATA --serve` over an existing review.csv (no model runs); returns (process, url)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "sorter", "review", str(data), "--out",
                                    str(review_csv.parent), "--serve", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    return process, _wait_for_url(process, log_path)


def test_decide_with_keys_reload_apply_and_undo(tmp_path):
    data, review_csv = reviewed_folder(tmp_path)
    shots = SCREENSHOTS or tmp_path
    port = free_port()
    process, url = start(data, review_csv, port, tmp_path / "serve.log")
    try:
        with chromium_page({"width": 1280, "height": 900}) as (page, requests, problems):
            expect, cards = playwright_api.expect, page.locator(".card")
            page.goto(url)
            expect(cards).to_have_count(6)
            for key in ("m", "d", "ArrowRight", "k"):  # relabel #1, delete #2, skip #3, keep #4
                page.keyboard.press(key)
            expect(page.locator(".note", has_text="saved")).to_have_count(3)
            assert {row["path"]: row["action"] for row in read_rows(review_csv) if row["action"]} == {
                "web/female/female_0.jpg": "male", "web/male/male_1.jpg": "delete", "web/female/female_1.jpg": "keep"}

            page.wait_for_load_state("networkidle")  # no thumbnail still in flight to be refused by the kill
            process.send_signal(signal.SIGKILL)  # decisions shown as saved survive a kill
            process.wait(timeout=30)
            process, _ = start(data, review_csv, port, tmp_path / "restarted.log")
            page.reload()
            expect(cards.nth(0)).to_have_attribute("data-action", "male")
            actions = [cards.nth(i).get_attribute("data-action") for i in range(6)]
            assert actions == ["male", "delete", "", "keep", "", ""]
            expect(page.locator(".badge", has_text="to male")).to_have_count(1)
            expect(page.locator("#counts")).to_have_text("decided: 1 keep, 1 delete, 1 male; 3 undecided")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=f"{shots}/review-decided.png", full_page=True)

            page.click("#apply")
            expect(page.locator("#panel li")).to_have_count(3)  # two moves and the count, as `clean` prints them
            page.get_by_role("button", name="Apply 2 moves").click()
            expect(page.locator("#panel strong")).to_contain_text("Applied 2 moves; undo log:")
            expect(page.locator(".note", has_text="moved to web/male/female_0.jpg")).to_have_count(1)
            expect(page.locator(".note", has_text="in the trash")).to_have_count(1)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=f"{shots}/review-applied.png", full_page=True)
            assert (data / "web/male/female_0.jpg").is_file() and not (data / "web/female/female_0.jpg").exists()
            assert len(list((data / TRASH_DIR).glob("clean-*/web/male/male_1.jpg"))) == 1

            page.click("#undo")
            expect(page.locator("#status")).to_have_text("undone: 2 files moved back")
            assert (data / "web/female/female_0.jpg").is_file() and (data / "web/male/male_1.jpg").is_file()
            assert not (data / "web/male/female_0.jpg").exists()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert all(request.startswith(url) for request in requests), requests  # nothing fetched from elsewhere
    assert problems == [], (problems, requests)  # no script error, no CSP refusal
