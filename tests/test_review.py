"""The review page: the queue, decisions by POST with a CSRF token, only files in review/,
tokens off loopback; and in a real browser (Chromium), three files decided by keyboard."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the review page needs the [review] extra")
from starlette.testclient import TestClient

from digit_inbox.daemon import config, review
from tests.helpers import Folders, digit_png, unsure_in_review, wait_until, write_config

HOSTILE = "<img src=x onerror=alert(1)>.png"  # a file name cannot hold "/"
CHROMIUM = "/usr/bin/chromium"


def fill_review(tmp_path: Path, count: int = 3) -> tuple[Path, Folders]:
    """review/ with `count` scans the model was unsure of (read as 1), and their rows."""
    files = [(f"s{i}.png" if i else HOSTILE, 30 + i) for i in range(count)]
    return unsure_in_review(tmp_path, files, confidence=0.41)


@pytest.fixture
def page(tmp_path):
    cfg_path, folders = fill_review(tmp_path)
    app = review.create_app(config.load(cfg_path), token=None)
    with TestClient(app) as client:
        html = client.get("/").text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)
        yield client, csrf, folders


def test_the_queue_lists_review_oldest_first_with_the_models_reading(page):
    client, _, _ = page
    data = client.get("/api/queue").json()
    assert data["count"] == 3
    assert {i["name"] for i in data["items"]} == {HOSTILE, "s1.png", "s2.png"}
    assert data["items"][0]["digits"] == "1" and data["items"][0]["runner_up"] == "7"


def test_a_decision_is_a_post_with_the_csrf_token(page):
    client, csrf, folders = page
    body = {"name": "s1.png", "digits": "7"}
    assert client.post("/api/decide", json=body).status_code == 403
    assert client.post("/api/decide", json=body, headers={"X-CSRF-Token": "x"}).status_code == 403
    evil = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert client.post("/api/decide", json=body, headers=evil).status_code == 403
    assert client.get("/api/decide").status_code == 405
    assert (folders.review / "s1.png").is_file()
    response = client.post("/api/decide", json=body, headers={"X-CSRF-Token": csrf})
    assert response.status_code == 200, response.text
    assert (folders.outbox / "7" / "s1.png").is_file()
    assert [r["moved_to"] for r in client.get("/api/history").json()] == ["outbox/7/s1.png"]


def test_undo_is_a_post_that_returns_the_last_file_to_review(page):
    client, csrf, folders = page
    headers = {"X-CSRF-Token": csrf}
    client.post("/api/decide", json={"name": "s2.png", "digits": "none"}, headers=headers)
    assert (folders.failed / "s2.png").is_file()
    assert client.post("/api/undo", headers=headers).status_code == 200
    assert (folders.review / "s2.png").is_file()


@pytest.mark.parametrize(
    "name",
    ["../config.yaml", "..", "%2e%2e%2fconfig.yaml", "sub/x.png", ".hidden.png", "link.png", ""],
)
def test_only_files_directly_in_review_can_be_shown_or_moved(page, name, tmp_path):
    client, csrf, folders = page
    (tmp_path / "secret.png").write_bytes(digit_png(1)[0])
    (folders.review / "link.png").symlink_to(tmp_path / "secret.png")
    (folders.review / ".hidden.png").write_bytes(digit_png(1)[0])
    assert client.get("/api/image", params={"name": name}).status_code == 400
    decided = client.post(
        "/api/decide", json={"name": name, "digits": "3"}, headers={"X-CSRF-Token": csrf}
    )
    assert decided.status_code == 400
    assert (tmp_path / "secret.png").is_file() and not (folders.outbox / "3").exists()


def test_images_are_sent_as_png_and_the_page_sets_a_strict_policy(page):
    client, _, _ = page
    response = client.get("/api/image", params={"name": HOSTILE})
    assert response.content.startswith(b"\x89PNG")
    assert "script-src" not in response.headers["content-security-policy"]  # 'self' only
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert client.get("/api/strip", params={"name": "s1.png"}).content.startswith(b"\x89PNG")


def test_a_token_is_needed_off_loopback(tmp_path):
    cfg_path, _ = fill_review(tmp_path, 1)
    app = review.create_app(config.load(cfg_path), token="sesame")
    with TestClient(app) as client:
        assert client.get("/api/queue").status_code == 403
        assert client.get("/", params={"token": "wrong"}).status_code == 403
        assert client.get("/", params={"token": "sesame"}).status_code == 200
        assert client.get("/api/queue").status_code == 200  # the cookie now


def test_listen_addresses():
    assert review.parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert review.parse_listen("[::1]:8765") == ("::1", 8765)
    assert review.is_loopback("127.0.0.1") and review.is_loopback("::1")
    assert not review.is_loopback("0.0.0.0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt chromium)"
)
def test_three_files_decided_by_keyboard_in_a_real_browser(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    cfg_path, folders = fill_review(tmp_path)
    port = free_port()
    log = open(tmp_path / "review.log", "wb")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digit_inbox.daemon",
            "review",
            "-c",
            str(cfg_path),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: "review page:" in (tmp_path / "review.log").read_text(), what="start")
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
            tab = browser.new_page(viewport={"width": 1100, "height": 900})
            tab.goto(f"http://127.0.0.1:{port}/")
            expect = playwright_api.expect
            history = tab.locator("#history tr")
            for done, digits in enumerate(("7", "4", "9"), start=1):
                expect(tab.locator("#count")).to_have_text(f"({4 - done} waiting)")
                tab.fill("#digits", "")
                tab.keyboard.type(digits)
                tab.keyboard.press("Enter")
                expect(history).to_have_count(done)
            expect(tab.locator("#count")).to_have_text("(0 waiting)")
            expect(tab.locator("#history")).to_contain_text(HOSTILE)  # as text, never run
            tab.keyboard.press("u")
            expect(history).to_have_count(4)
            expect(tab.locator("#count")).to_have_text("(1 waiting)")
            if os.environ.get("DIGIT_INBOX_SCREENSHOT"):
                tab.screenshot(path=os.environ["DIGIT_INBOX_SCREENSHOT"], full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    rows = [r for r in folders.report_rows() if r["status"] == "corrected"]
    assert [r["digits"] for r in rows] == ["7", "4", "9", ""]
    assert rows[-1]["moved_to"].startswith("review/")
    placed = sorted(p.relative_to(folders.root / "var").as_posix() for p in folders.filed())
    assert len(placed) == 3 and sum(p.startswith("review/") for p in placed) == 1


def test_the_config_checks_the_review_keys(tmp_path):
    from digit_inbox.daemon.errors import ConfigError

    bad = write_config(tmp_path, review={"token": "short", "listen": "nowhere"})
    with pytest.raises(ConfigError) as caught:
        config.load(bad)
    assert "review.token" in str(caught.value) and "review.listen" in str(caught.value)
    good = write_config(tmp_path, review={"token": "s" * 20, "listen": "0.0.0.0:9000"})
    assert config.load(good).review == config.Review("0.0.0.0:9000", "s" * 20)
