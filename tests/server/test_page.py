"""The playground page in headless Chromium (Debian's package, driven by playwright).

Submits a prompt through the page against the real server and checks that the <video> element
plays while blocks are still arriving (MediaSource fed from the websocket), then that the
finished video is listed with its download link. A screenshot is kept in tests/output/.
"""
from __future__ import annotations

import os
import time

import httpx
import pytest

from tests.server.conftest import API_KEY, PROMPT, ROOT

CHROMIUM = "/usr/bin/chromium"
OUTPUT = ROOT / "tests" / "output"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def test_page_is_public_and_static_files_are_safe(server):
    page = httpx.get(server.url + "/", timeout=30)  # no API key: the page shell is public
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<video" in page.text and "/static/app.js" in page.text
    assert httpx.get(server.url + "/static/app.js", timeout=30).status_code == 200
    assert httpx.get(server.url + "/static/..%2Fws.py", timeout=30).status_code == 404
    assert httpx.get(server.url + "/static/missing.js", timeout=30).status_code == 404
    assert httpx.get(server.url + "/v1/videos", timeout=30).status_code == 401  # data still needs the key


def open_playground(browser, server):
    """A fresh browser context on the page, with the API key entered; page errors are collected."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    return context, page, errors


def test_video_plays_while_blocks_arrive(server, server_client, browser):
    context, page, errors = open_playground(browser, server)
    page.fill("#prompt", PROMPT)
    page.fill("#seconds", "6")  # 3 blocks of 2 s
    page.fill("#seed", "21")
    page.fill("#steps", "2")
    page.click("#submit")

    samples = []  # (blocks appended, video.currentTime, status text)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        blocks, current, status = page.evaluate(
            "[Number(document.body.dataset.blocks || 0), document.getElementById('player').currentTime,"
            " document.getElementById('status').textContent]")
        samples.append((blocks, current, status))
        if status == "Completed." and current > 4.0:
            break
        time.sleep(0.02)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "playground.png"))
    assert samples[-1][2] == "Completed.", samples[-10:]
    assert not errors, errors
    assert not page.evaluate("document.getElementById('status').classList.contains('error')")
    # Playback started before the last block arrived, and kept going as blocks came in.
    # The trained model makes a 2 s block in ~0.2 s, so that window is short: sampled every 20 ms.
    playing_early = [s for s in samples if s[1] > 0 and s[0] < 3]
    assert len(playing_early) >= 2 and playing_early[-1][1] > playing_early[0][1], samples
    assert samples[-1][1] > playing_early[0][1] + 2.0, samples[-10:]
    assert page.evaluate("document.getElementById('progress').value") == 100
    # The MediaSource got the codec from the init segment and buffered all 6 s.
    buffered_end = page.evaluate("(() => { const b = document.getElementById('player').buffered;"
                                 " return b.length ? b.end(b.length - 1) : 0 })()")
    assert buffered_end == pytest.approx(6.0, abs=0.1)

    # The finished video is in the list with a download link.
    video_id = page.evaluate("document.body.dataset.videoId")
    row = page.wait_for_selector(f'tr[data-id="{video_id}"] a.download', timeout=30000)
    assert row is not None
    page.screenshot(path=str(OUTPUT / "playground-done.png"))
    context.close()


def test_realtime_tab_streams_and_takes_a_prompt_update(server, browser):
    context, page, errors = open_playground(browser, server)
    page.click("#tab-realtime")
    page.fill("#rt-seed", "5")
    page.fill("#rt-steps", "1")
    page.click("#rt-start")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Realtime block 2')",
                           timeout=120000)
    page.fill("#rt-prompt", "a green square moving up on a white background")
    page.click("#rt-update")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Prompt updated')"
                           " || document.getElementById('status').textContent.startsWith('Realtime block')",
                           timeout=60000)
    page.wait_for_function("document.getElementById('player').currentTime > 1.0", timeout=60000)
    page.click("#rt-stop")
    page.wait_for_function("!document.getElementById('rt-start').disabled", timeout=60000)
    assert not page.evaluate("document.getElementById('status').classList.contains('error')"), \
        page.evaluate("document.getElementById('status').textContent")
    assert not errors, errors
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "playground-realtime.png"))
    context.close()
