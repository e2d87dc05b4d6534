"""The chat page in real headless Chromium: type, send, see the pick and the images, reply.

Runs Debian's ``/usr/bin/chromium`` through Playwright (never a downloaded browser); skips with
a reason only where that binary is absent (``.ci/run`` installs it). Set
``LAVIC_SCREENSHOT_DIR`` to also keep the screenshot (``serve.png``) there.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from lavic.serving.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed at "
        "/usr/bin/chromium (apt-get install chromium; .ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def server(recommender):
    """The app under uvicorn on a loopback port, in a thread, for the module."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(recommender, max_wait_ms=2), log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_chat_shows_the_pick_and_the_images_and_refines(server, recommender, tmp_path):
    from playwright.sync_api import sync_playwright

    sent: list[dict] = []
    urls: list[str] = []
    first = "I want a red coffee mug for my desk"
    reply = "something for tea instead, in blue"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.on("request", lambda r: urls.append(r.url))
            page.on(
                "request",
                lambda r: (
                    sent.append(json.loads(r.post_data)) if r.url.endswith("/recommend") else None
                ),
            )
            page.goto(server + "/")
            page.fill("#message", first)
            page.press("#message", "Enter")
            page.wait_for_selector(".turn.assistant .candidate.pick", timeout=30_000)

            # The thread starts as the submission; the page shows what the API answers.
            assert sent == [{"conversation": f"<submission>{first}</submission>\n"}]
            expected = recommender.recommend(sent[0]["conversation"])
            answer = page.locator(".turn.assistant").nth(0)
            assert answer.locator(".pick-title").inner_text() == expected.title
            cards = answer.locator(".candidate")
            assert cards.count() == len(expected.candidates) == 10
            assert answer.locator(".candidate.pick").count() == 1
            assert (
                answer.locator(".candidate.pick").get_attribute("data-item-id") == expected.item_id
            )
            assert cards.first.get_attribute("data-item-id") == expected.item_id
            score = (
                f"{100 * expected.score:.0f}%"
                if 0.01 <= expected.score < 0.995
                else f"{100 * expected.score:.1f}%"
            )
            assert answer.locator(".candidate.pick .score").inner_text() == score
            tiny = [c for c in expected.candidates if c.score < 0.001]
            if tiny:  # not a misleading "0%"
                card = answer.locator(f'.candidate[data-item-id="{tiny[0].item_id}"]')
                assert card.locator(".score").inner_text() == "<0.1%"

            # Every candidate with an image shows it, decoded; the others say so.
            page.wait_for_function(
                "() => [...document.querySelectorAll('.candidate img')]"
                ".every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000,
            )
            with_image = sum(c.has_image for c in expected.candidates)
            assert answer.locator(".candidate img").count() == with_image > 0
            assert answer.locator(".candidate .no-image").count() == 10 - with_image

            # A reply grows the thread as a comment and asks again.
            page.fill("#message", reply)
            page.click("#send")
            page.wait_for_selector(".turn.assistant >> nth=1", timeout=30_000)
            page.wait_for_selector(".turn.assistant >> nth=1 >> .candidate.pick")
            thread = f"<submission>{first}</submission>\n<comment>{reply}</comment>\n"
            assert sent[1] == {"conversation": thread}
            refined = recommender.recommend(thread)
            second = page.locator(".turn.assistant").nth(1)
            assert second.locator(".pick-title").inner_text() == refined.title
            assert page.locator(".turn.user").count() == 2

            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            keep = os.environ.get("LAVIC_SCREENSHOT_DIR")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                (Path(keep) / "serve.png").write_bytes(shot.read_bytes())
        finally:
            browser.close()
    # Nothing but the local server was asked for anything (no CDN, no fonts, no analytics).
    assert urls and all(u.startswith(server) for u in urls), urls


def test_errors_are_shown_and_the_message_can_be_resent(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server + "/")
            # A thread longer than the API accepts: the page reports the API's message.
            page.evaluate("document.getElementById('message').removeAttribute('maxlength')")
            page.fill("#message", "x" * 20_100)
            page.press("#message", "Enter")
            page.wait_for_selector(".turn.error", timeout=30_000)
            assert "422" in page.locator(".turn.error").inner_text()
            assert page.locator(".turn.assistant").count() == 0
            page.fill("#message", "a bright backpack")
            page.press("#message", "Enter")
            page.wait_for_selector(".turn.assistant .candidate.pick", timeout=30_000)
        finally:
            browser.close()
