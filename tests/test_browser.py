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

from conftest import state_with  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"),
]


@pytest.fixture
def running_app(state, tiny_detr_dir):
    from app.ui import build_app

    demo = build_app(state_with(state, model=str(tiny_detr_dir)))
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


@pytest.fixture
def review_app(state, review_store):
    """The app on the bundled model (it sees the shapes), its review store a throwaway dataset."""
    from app.ui import build_app, launch

    served = state_with(state, model="bundled")
    demo = launch(build_app(served), served, server_name="127.0.0.1", server_port=None, quiet=True)
    yield demo.local_url, review_store, served
    demo.close()


def test_detect_inspect_review_and_find_the_edit_in_fiftyone(review_app, page, tmp_path):
    """Upload, detect, open a query's attention, send to review, relabel a box, save, read it from FiftyOne."""
    from playwright.sync_api import expect

    from core.loading import ASSETS_DIR

    url, store, _ = review_app
    page.goto(url)
    page.locator("#detect-input input[type=file]").set_input_files(str(ASSETS_DIR / "examples" / "shapes-700.png"))
    page.locator("#detect-input img").wait_for(timeout=30_000)
    page.locator("#detect-button").click()
    page.locator("#detect-status").get_by_text("queries in").wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "detect.png"), full_page=True)

    # Queries: inspect, then click the cell of query 11 (row 1, col 1 of the 10x10 grid).
    page.get_by_role("tab", name="Queries").click()
    page.locator("#queries-button").click()
    expect(page.locator("#query-details")).to_contain_text("Query 0", timeout=60_000)
    grid = page.locator("#query-grid img")
    box = grid.bounding_box()
    natural = grid.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = min(box["width"] / natural[0], box["height"] / natural[1])  # shown with object-fit: contain
    left, top = (box["width"] - natural[0] * scale) / 2, (box["height"] - natural[1] * scale) / 2
    grid.click(position={"x": left + 1.5 * 44 * scale, "y": top + 1.5 * 44 * scale})
    expect(page.locator("#query-details")).to_contain_text("Query 11", timeout=30_000)
    expect(page.locator("#queries-table")).to_contain_text("no-object")
    page.locator("#query-overlay img").wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "queries.png"), full_page=True)

    # Send the image to review; the editor opens with the predictions above the threshold.
    page.get_by_role("tab", name="Detect").click()
    page.locator("#send-to-review").click()
    page.get_by_role("tab", name="Review").click()
    expect(page.locator("#review-status")).to_contain_text("to_review", timeout=60_000)
    sample_id = page.locator("#review-sample textarea, #review-sample input").first.input_value()
    item = store.get(sample_id)
    shown = item.predictions[item.predictions.confidence >= 0.5]
    assert len(shown) >= 1, "the bundled model finds at least one shape in shapes-700.png"
    target = int(((shown.xyxy[:, 2] - shown.xyxy[:, 0]) * (shown.xyxy[:, 3] - shown.xyxy[:, 1])).argmax())
    x0, y0, x1, y1 = shown.xyxy[target]
    new_label = next(name for name in ["triangle", "circle", "square"] if name != shown.data["class_name"][target])

    # Relabel the largest box: double-click it, type the new class, OK, Save.
    canvas = page.locator("#review-editor canvas").first
    frame = canvas.bounding_box()
    scale = min(frame["width"] / item.width, frame["height"] / item.height)
    left = (frame["width"] - item.width * scale) / 2
    top = (frame["height"] - item.height * scale) / 2
    canvas.dblclick(position={"x": float(left + (x0 + x1) / 2 * scale), "y": float(top + (y0 + y1) / 2 * scale)})
    label_input = page.locator("#review-editor input[type=text], #review-editor input:not([type])").first
    label_input.wait_for(timeout=10_000)
    label_input.fill(new_label)
    page.get_by_role("button", name="OK").click()
    page.locator("#review-save").click()
    expect(page.locator("#review-status")).to_contain_text("Saved.", timeout=60_000)
    page.screenshot(path=str(tmp_path / "review.png"), full_page=True)

    # The edit is in the FiftyOne dataset, read back from Python.
    sample = store.dataset[sample_id]
    sample.reload()
    labels = [d.label for d in sample.ground_truth.detections]
    assert "reviewed" in sample.tags and sample.review.revision == 1
    assert len(labels) == len(shown) and labels.count(new_label) >= 1
    relabelled = min(sample.ground_truth.detections,
                     key=lambda d: abs(d.bounding_box[0] * item.width - x0) + abs(d.bounding_box[1] * item.height - y0))
    assert relabelled.label == new_label


def test_fiftyone_app_shows_the_review_dataset(review_app, page, tmp_path):
    """The FiftyOne App under /fiftyone of our own server shows the review dataset, media included."""
    from app import review
    from app.fiftyone_app import app_url
    from datasets.shapes import generate_sample

    url, review_store, served = review_app
    media = []
    page.on("response", lambda response: media.append(response.status) if "/fiftyone/media" in response.url else None)

    sample_id = review.send_to_review(served, generate_sample(7).image, "bundled", 0.5, 0)[1]
    review.save_review(served, sample_id, 0, {"image": "x", "boxes": [{"xmin": 1, "ymin": 2, "xmax": 30, "ymax": 40,
                                                               "label": "circle"}]}, "ana")
    # The FiftyOne App, mounted under /fiftyone of the same server (one port, one origin).
    page.goto(url.rstrip("/") + app_url(review_store.dataset.name))
    page.get_by_text("1 sample").first.wait_for(timeout=90_000)
    body = page.inner_text("body")
    assert review_store.dataset.name in page.content()  # the dataset picker in the header
    assert "predictions" in body and "ground_truth" in body and "review" in body
    page.wait_for_timeout(2000)  # let the grid fetch its thumbnail
    page.screenshot(path=str(tmp_path / "fiftyone.png"))
    assert media and set(media) <= {200, 206, 304}, media  # the sample's image came through the guard


def test_keyboard_review_flow_and_a_coco_zip_upload(review_app, page, tmp_path):
    """In the Review tab: upload a zipped COCO dataset, then Enter accepts and opens the next image,
    S skips, U undoes; keys typed into a text box do nothing."""
    import zipfile

    from playwright.sync_api import expect

    from app import review
    from datasets.shapes import generate_sample, write_coco

    url, store, served = review_app
    for seed in (150, 151, 152):
        review.send_to_review(served, generate_sample(seed).image, "bundled", 0.05, 0)
    coco = tmp_path / "coco"
    write_coco(coco, count=2, first_seed=160)
    with zipfile.ZipFile(tmp_path / "coco.zip", "w") as archive:
        for path in coco.rglob("*"):
            archive.write(path, path.relative_to(coco).as_posix())

    page.goto(url)
    page.get_by_role("tab", name="Review").click()
    page.get_by_text("Upload to review, download as COCO").click()
    page.locator("#review-upload input[type=file]").set_input_files(str(tmp_path / "coco.zip"))
    page.locator("#review-import-upload").click()
    expect(page.locator("#review-upload-status")).to_contain_text("Imported 2 images", timeout=90_000)
    assert store.dataset.count_values("review.status")["imported"] == 2

    page.locator("#review-next").click()
    expect(page.locator("#review-status")).to_contain_text("revision", timeout=60_000)
    first = page.locator("#review-sample textarea, #review-sample input").first.input_value()
    page.locator("#review-reviewer textarea, #review-reviewer input").first.click()
    page.keyboard.press("s")  # typed into the reviewer box: not a shortcut
    assert page.locator("#review-sample textarea, #review-sample input").first.input_value() == first
    page.locator("#review-counts").click()  # focus leaves the text box
    page.keyboard.press("Enter")
    expect(page.locator("#review-status")).to_contain_text("Accepted", timeout=60_000)
    assert store.get(first).status == "reviewed"
    second = page.locator("#review-sample textarea, #review-sample input").first.input_value()
    assert second != first
    expect(page.locator("#review-progress")).to_contain_text("1 reviewed", timeout=30_000)
    page.keyboard.press("s")
    expect(page.locator("#review-status")).to_contain_text("Skipped", timeout=60_000)
    assert page.locator("#review-sample textarea, #review-sample input").first.input_value() not in (first, second)
    page.keyboard.press("u")  # undo on the third image, never saved: a clear message, nothing changes
    expect(page.get_by_text("nothing to undo").first).to_be_visible(timeout=30_000)
    page.screenshot(path=str(tmp_path / "review-flow.png"), full_page=True)


def test_a_digit_relabels_the_selected_box(review_app, page, tmp_path):
    """Click a box in the editor, press 2: it takes the second class; Ctrl+S saves it."""
    from playwright.sync_api import expect

    from app import review
    from datasets.shapes import generate_sample

    url, store, served = review_app
    value, sample_id, revision, _ = review.send_to_review(served, generate_sample(170).image, "bundled", 0.5, 0)
    review.save_review(served, sample_id, revision, {**value, "boxes": [
        {"xmin": 20, "ymin": 20, "xmax": 120, "ymax": 120, "label": "circle"}]}, "ana")
    labels = store.labels
    store.save_views()
    review_item = store.get(sample_id)
    page.goto(url)
    page.get_by_role("tab", name="Review").click()
    # open the sample: the saved view 'reviewed' as the queue
    page.locator("#review-queue input").first.click()
    page.get_by_role("option", name="saved view: reviewed").click()
    expect(page.locator("#review-status")).to_contain_text("revision 1", timeout=60_000)
    expect(page.locator("#review-keys")).to_contain_text(labels[1], timeout=30_000)
    canvas = page.locator("#review-editor canvas").first
    frame = canvas.bounding_box()
    scale = min(frame["width"] / review_item.width, frame["height"] / review_item.height)
    left = (frame["width"] - review_item.width * scale) / 2
    top = (frame["height"] - review_item.height * scale) / 2
    canvas.click(position={"x": float(left + 70 * scale), "y": float(top + 70 * scale)})
    page.keyboard.press("2")
    page.wait_for_timeout(400)  # the editor's label dialog opens, takes the class and closes
    page.keyboard.press("Control+s")
    expect(page.locator("#review-status")).to_contain_text("Saved.", timeout=60_000)
    page.screenshot(path=str(tmp_path / "digit.png"), full_page=True)
    item = store.get(sample_id)
    assert list(item.ground_truth.data["class_name"]) == [labels[1]] and item.revision == 2
