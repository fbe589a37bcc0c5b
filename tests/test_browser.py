"""The app in a real browser: headless Chromium (Debian's) driven by Playwright.

Skipped, with the reason, when /usr/bin/chromium is missing; `make test` installs it where it can.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"),
]


@pytest.fixture
def running_app(tiny_detr_dir, monkeypatch):
    from app.ui import build_app

    monkeypatch.setenv("DETR_STUDIO_MODEL", str(tiny_detr_dir))
    demo = build_app()
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield demo.local_url
    demo.close()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


def test_upload_and_detect(running_app, page, tmp_path):
    from playwright.sync_api import expect

    path = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(path)
    page.goto(running_app)
    page.locator("#detect-input input[type=file]").set_input_files(str(path))
    page.locator("#detect-input img").wait_for(timeout=30_000)  # the upload is shown
    page.locator("#detect-button").click()
    status = page.locator("#detect-status")
    status.get_by_text("queries in").wait_for(timeout=60_000)
    assert "detections of 12 queries" in status.inner_text()
    page.locator("#detect-output img").wait_for(timeout=30_000)  # the annotated picture arrived
    table = page.locator("#detect-table")
    expect(table).to_contain_text(re.compile("circle|square|triangle"), timeout=30_000)
    text = table.inner_text()
    detected = int(status.inner_text().split(" detection")[0])
    assert detected >= 1
    assert sum(text.count(label) for label in ["circle", "square", "triangle"]) == detected
    page.screenshot(path=str(tmp_path / "detect.png"), full_page=True)


def test_error_is_shown_in_the_page(running_app, page):
    page.goto(running_app)
    page.locator("#detect-button").click()
    page.get_by_text("Upload an image or pick an example first.").first.wait_for(timeout=30_000)
