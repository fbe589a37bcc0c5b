"""Benchmark: how long a reviewer waits between images, through the API and in a browser.

    python bench/review_session.py [--images 50] [--browser-images 20]

The app runs in this process on the bundled model with a throwaway review dataset (its own
MongoDB via FIFTYONE_DATABASE_URI if set, else FiftyOne's). ``--images`` shapes images are sent to
review; then, through `gradio_client`, each image is accepted as the model saw it and the next
one opened: **Accept and next** (one call, ``/accept_and_next``) side by side with the old way,
**Save** then **Next** (``/save_review`` + ``/next_to_review``), alternating image by image. In
Chromium (when /usr/bin/chromium exists) the same is timed from pressing Enter to the next sample
being on screen. Prints a table (median, 90th percentile) and one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")


def _row(name: str, seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"setting": name, "calls": len(seconds), "median_s": round(statistics.median(ordered), 3),
            "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--browser-images", type=int, default=20)
    args = parser.parse_args()

    from datasets.database import configure_fiftyone

    data_dir = Path(tempfile.mkdtemp(prefix="detr-studio-bench-"))
    configure_fiftyone(data_dir)
    from gradio_client import Client, handle_file

    from app import review
    from app.config import AppConfig
    from app.state import AppState
    from app.ui import build_app, launch
    from datasets.shapes import generate_sample

    state = AppState(AppConfig(model="bundled", dataset=f"bench-{uuid.uuid4().hex[:8]}"), data_dir)
    total = args.images + args.browser_images + 2  # each accept opens the next: one more than accepted
    for seed in range(total):
        review.send_to_review(state, generate_sample(5000 + seed).image, "bundled", 0.05, 0)
    demo = launch(build_app(state), state, server_name="127.0.0.1", server_port=None, quiet=True)
    rows = []
    try:
        client = Client(demo.local_url, verbose=False)
        _, sample_id, revision, _ = client.predict(None, 0.5, api_name="/next_to_review")
        accept, save_next = [], []
        for index in range(args.images):
            start = time.perf_counter()
            if index % 2 == 0:
                _, sample_id, revision, _ = client.predict(sample_id, revision, "bench", 0.5,
                                                           api_name="/accept_and_next")
                accept.append(time.perf_counter() - start)
            else:
                item = state.store.get(sample_id)  # what the editor shows, as the page would send it
                shown = review.shown_boxes(item, 0.5)
                boxes = [{"xmin": float(x0), "ymin": float(y0), "xmax": float(x1), "ymax": float(y1), "label": str(n)}
                         for (x0, y0, x1, y1), n in zip(shown.xyxy, shown.data["class_name"])]
                start = time.perf_counter()
                client.predict(sample_id, revision, {"image": handle_file(item.filepath), "boxes": boxes}, "bench", 0.5,
                               api_name="/save_review")
                _, sample_id, revision, _ = client.predict(sample_id, 0.5, api_name="/next_to_review")
                save_next.append(time.perf_counter() - start)
        rows += [_row("API: Accept and next (one call)", accept), _row("API: Save, then Next (two calls)", save_next)]
        chromium = Path("/usr/bin/chromium")
        if args.browser_images and chromium.exists():
            rows.append(_row("browser: Enter -> next image on screen", _browser(demo.local_url, chromium,
                                                                             args.browser_images)))
    finally:
        demo.close()
        state.store.dataset.delete()
    print(f"{'setting':45} {'calls':>5} {'median':>8} {'p90':>8}")
    for row in rows:
        print(f"{row['setting']:45} {row['calls']:>5} {row['median_s']:>7.3f}s {row['p90_s']:>7.3f}s")
    for row in rows:
        print(json.dumps(row))


def _browser(url: str, chromium: Path, count: int) -> list[float]:
    from playwright.sync_api import expect, sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run", "--disable-quic"]
    seconds = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Review").click()
        page.locator("#review-next").click()
        expect(page.locator("#review-status")).to_contain_text("revision", timeout=60_000)
        sample = page.locator("#review-sample textarea, #review-sample input").first
        page.locator("#review-counts").click()
        for _ in range(count):
            before = sample.input_value()
            start = time.perf_counter()
            page.keyboard.press("Enter")
            while sample.input_value() == before:  # the next sample's id is on screen
                if time.perf_counter() - start > 60:
                    page.screenshot(path="/tmp/review-bench-timeout.png", full_page=True)
                    raise TimeoutError("the next sample did not open within 60 s (screenshot: "
                                       "/tmp/review-bench-timeout.png)")
                page.wait_for_timeout(5)
            page.locator("#review-editor canvas").first.wait_for(timeout=60_000)
            seconds.append(time.perf_counter() - start)
        browser.close()
    return seconds


if __name__ == "__main__":
    main()
