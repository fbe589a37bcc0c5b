"""Bad input, case by case: every one either works or is answered with a message that names the
problem (a `gr.Error` from the handler, never Gradio's generic error), and nothing is stored.

Each row is one input a user (or an unfriendly visitor) can give: images, COCO files, model
folders, boxes and labels, model names and server paths. The handlers are called as Gradio calls
them; `test_bad_uploads_through_the_server` sends the images through the real server too, where
Gradio used to decode them before our code could check them.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from conftest import save_tiny_model, state_with
from datasets.shapes import generate_sample, write_coco

WORKS, CLEAR = "works", "clear"


# ---- images -----------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, extra: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (pixels: one tiny compressed row)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + extra
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def _encoded(array: np.ndarray, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(generate_sample(2).image).convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    return _encoded(generate_sample(1).image, "JPEG")


IMAGES = {  # name -> (file name, bytes, expected, words the message must hold)
    "zero-byte jpeg": ("a.jpg", lambda: b"", CLEAR, "not an image"),
    "truncated jpeg": ("a.jpg", lambda: _jpeg()[:400], CLEAR, "damaged or truncated"),
    "random bytes as png": ("a.png", lambda: os.urandom(4096), CLEAR, "not an image"),
    "html as png": ("a.png", lambda: b"<!doctype html><html><body>hi</body></html>", CLEAR, "not an image"),
    "png bomb 40000x40000": ("a.png", lambda: _png(40000, 40000), CLEAR, "too large"),
    "png 12000x12000 header": ("a.png", lambda: _png(12000, 12000), CLEAR, "megapixels"),
    "strip 200000x2": ("a.png", lambda: _png(200000, 2), CLEAR, "times longer"),
    "png with a 200 MB text chunk": ("a.png", lambda: _png(64, 64, _png_chunk(
        b"zTXt", b"comment\0\0" + zlib.compress(b"\0" * 200_000_000, 1))), CLEAR, "damaged"),
    "one pixel": ("a.png", lambda: _encoded(np.zeros((1, 1, 3), np.uint8), "PNG"), WORKS, ""),
    "16-bit grey png": ("a.png", lambda: _encoded((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20),
                                                  "PNG"), WORKS, ""),
    "cmyk jpeg": ("a.jpg", _cmyk_jpeg, WORKS, ""),
    "animated gif": ("a.gif", lambda: _encoded(generate_sample(3).image, "GIF"), WORKS, ""),
}


def _write(tmp_path: Path, name: str, make) -> str:
    path = tmp_path / name
    path.write_bytes(make())
    return str(path)


@pytest.mark.parametrize("case", list(IMAGES))
def test_images_at_detect_and_send_to_review(state, review_store, tiny_detr_dir, tmp_path, case):
    from app.detect import detect
    from app.review import send_to_review

    file_name, make, expected, words = IMAGES[case]
    path = _write(tmp_path, file_name, make)
    if expected == WORKS:
        _, rows, status = detect(state, path, str(tiny_detr_dir), 0.5, 128)
        assert "detections" in status
        send_to_review(state, path, str(tiny_detr_dir), 0.5, 128)
        assert len(review_store.dataset) == 1
        return
    for call in (lambda: detect(state, path, str(tiny_detr_dir), 0.5, 128),
                 lambda: send_to_review(state, path, str(tiny_detr_dir), 0.5, 128)):
        with pytest.raises(gr.Error, match=f"(?i){words}"):
            call()
    assert len(review_store.dataset) == 0


def test_bad_uploads_through_the_server(state, tiny_detr_dir, tmp_path):
    """Uploaded to the running app, each bad image gets our message, not 'an exception was raised'."""
    from gradio_client import Client, handle_file

    from app.ui import build_app, launch

    demo = launch(build_app(state), state, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        for case in ["zero-byte jpeg", "random bytes as png", "html as png", "png bomb 40000x40000",
                     "strip 200000x2"]:
            file_name, make, _, words = IMAGES[case]
            path = _write(tmp_path, f"{case.replace(' ', '-')}-{file_name}", make)
            with pytest.raises(Exception, match=f"(?i){words}"):
                client.predict(handle_file(path), str(tiny_detr_dir), 0.5, 128, [], api_name="/detect")
        good = _write(tmp_path, "good.jpg", _jpeg)
        _, _, status = client.predict(handle_file(good), str(tiny_detr_dir), 0.5, 128, [], api_name="/detect")
        assert "detections" in status
    finally:
        demo.close()


# ---- COCO files -------------------------------------------------------------------------------------

def _coco_mutations():
    def set_in(path, value):
        def mutate(document):
            target = document
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        return mutate

    def duplicate(kind):
        return lambda document: document[kind].append(dict(document[kind][0]))

    return {  # name -> (mutation of a good document, or raw text; words of the message)
        "file_name with NUL": (set_in(["images", 0, "file_name"], "a\x00.png"), "NUL"),
        "file_name leaves the folder": (set_in(["images", 0, "file_name"], "../../etc/passwd"), "leaves"),
        "absolute file_name": (set_in(["images", 0, "file_name"], "/etc/passwd"), "relative"),
        "file_name of 5000 characters": (set_in(["images", 0, "file_name"], "a" * 5000), "usable file name"),
        "nested 100000 deep": ("[" * 100000 + "]" * 100000, "nested too deeply"),
        "not JSON": ("{images: [", "not valid JSON"),
        "not UTF-8": (b"\xff\xfe{", "not valid JSON"),
        "a list, not an object": ("[]", "needs 'images'"),
        "two images with one id": (duplicate("images"), "appears twice"),
        "two categories with one id": (lambda d: d["categories"].append({"id": d["categories"][0]["id"],
                                                                         "name": "other"}), "appears twice"),
        "two categories with one name": (lambda d: d["categories"].append({"id": 99, "name": d["categories"][0][
            "name"]}), "appears twice"),
        "annotation not an object": (lambda d: d["annotations"].append(5), "not an object"),
        "annotations not a list": (set_in(["annotations"], {"a": 1}), "must be a list"),
        "bbox of booleans": (set_in(["annotations", 0, "bbox"], [True, 1, 10, 10]), "bbox"),
        "bbox of 1e300": (set_in(["annotations", 0, "bbox"], [1, 1, 1e300, 10]), "bbox"),
        "bbox outside the image": (set_in(["annotations", 0, "bbox"], [-40.0, 5.0, 30.0, 30.0]), "outside"),
        "zero-size bbox": (set_in(["annotations", 0, "bbox"], [5, 5, 0, 10]), "zero or negative"),
        "unknown category": (set_in(["annotations", 0, "category_id"], 42), "category ids"),
        "unknown image": (set_in(["annotations", 0, "image_id"], 4242), "image id"),
        "category name of 100 characters": (set_in(["categories", 0, "name"], "c" * 100), "longer than"),
        "blank category name": (set_in(["categories", 0, "name"], "   "), "blank"),
        "image id is a boolean": (set_in(["images", 0, "id"], True), "integer 'id'"),
        "missing image file": (set_in(["images", 0, "file_name"], "nope.png"), "is not in"),
    }


COCO_CASES = _coco_mutations()


@pytest.mark.parametrize("case", list(COCO_CASES))
def test_coco_files(state, review_store, tiny_detr_dir, case):
    from app.review import import_coco

    folder = state.import_root / "coco"
    write_coco(folder, count=2, first_seed=70)
    path = folder / "annotations.json"
    change, words = COCO_CASES[case]
    if callable(change):
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document))
    else:
        path.write_bytes(change if isinstance(change, bytes) else change.encode())
    with pytest.raises(gr.Error, match=f"(?i){words}"):
        import_coco(state, "coco/annotations.json", "", str(tiny_detr_dir), 0.5, 128)
    assert len(review_store.dataset) == 0 and review_store.labels == []  # nothing stored, not even a label


# ---- model folders ----------------------------------------------------------------------------------

def _model_folders():
    def edit_config(change):
        def mutate(directory):
            config = json.loads((directory / "config.json").read_text())
            change(config)
            (directory / "config.json").write_text(json.dumps(config))
        return mutate

    def write(name, data):
        return lambda directory: (directory / name).write_bytes(data if isinstance(data, bytes) else data.encode())

    def truncate(directory):
        weights = directory / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    return {
        "truncated model.safetensors": (truncate, "damaged or truncated"),
        "empty model.safetensors": (write("model.safetensors", b""), "damaged or truncated"),
        "only pickled weights": (lambda d: ((d / "model.safetensors").unlink(), (d / "pytorch_model.bin").write_bytes(
            b"x")), "pickle"),
        "no config.json": (lambda d: (d / "config.json").unlink(), "no config.json"),
        "config.json is a list": (write("config.json", "[1, 2]"), "not a JSON object"),
        "config.json nested 100000 deep": (write("config.json", "[" * 100000 + "]" * 100000), "nested too deeply"),
        "config.json not UTF-8": (write("config.json", b"\xff\xfe"), "not valid JSON"),
        "not a DETR model": (edit_config(lambda c: c.update(model_type="bert")), "DETR Studio loads"),
        "d_model is text": (edit_config(lambda c: c.update(d_model="big")), "cannot read"),
        "id2label with gaps": (edit_config(lambda c: c.update(id2label={"0": "a", "7": "b"})), "could not be loaded|id2label"),
        "bad preprocessor_config.json": (write("preprocessor_config.json", "{bad"), "not valid JSON"),
        "preprocessor values out of range": (write("preprocessor_config.json", '{"image_std": [0, 1, 1]}'),
                                             "invalid values"),
    }


MODEL_FOLDERS = _model_folders()


@pytest.mark.parametrize("case", list(MODEL_FOLDERS))
def test_model_folders(state, tmp_path, case):
    from app.detect import detect

    directory = save_tiny_model(tmp_path / "model", "detr")
    change, words = MODEL_FOLDERS[case]
    change(directory)
    with pytest.raises(gr.Error, match=f"(?i){words}"):
        detect(state, generate_sample(1).image, str(directory), 0.5, 128)
    assert str(directory) not in state.models


# ---- boxes and labels -------------------------------------------------------------------------------

BOXES = {  # editor boxes -> words of the message
    "coordinate not a number": ([{"xmin": "a", "ymin": 1, "xmax": 9, "ymax": 9, "label": "circle"}], "coordinate"),
    "coordinate missing": ([{"xmin": 1, "ymin": 1, "xmax": 9, "label": "circle"}], "missing a coordinate"),
    "NaN coordinate": ([{"xmin": float("nan"), "ymin": 1, "xmax": 9, "ymax": 9, "label": "circle"}], "not a number"),
    "zero size": ([{"xmin": 5, "ymin": 5, "xmax": 5, "ymax": 9, "label": "circle"}], "zero or negative"),
    "outside the image": ([{"xmin": 5, "ymin": 5, "xmax": 5000, "ymax": 9, "label": "circle"}], "outside"),
    "empty label": ([{"xmin": 1, "ymin": 1, "xmax": 9, "ymax": 9, "label": "  "}], "empty label"),
    "label of 200 characters": ([{"xmin": 1, "ymin": 1, "xmax": 9, "ymax": 9, "label": "x" * 200}], "longer than"),
    "label with a control character": ([{"xmin": 1, "ymin": 1, "xmax": 9, "ymax": 9, "label": "a\x07b"}], "control"),
    "label not text": ([{"xmin": 1, "ymin": 1, "xmax": 9, "ymax": 9, "label": 7}], "empty label"),
}


@pytest.mark.parametrize("case", list(BOXES))
def test_boxes_and_labels(state, review_store, tiny_detr_dir, case):
    from app import review

    value, sample_id, revision, _ = review.send_to_review(state, generate_sample(4).image, str(tiny_detr_dir), 0.5, 128)
    boxes, words = BOXES[case]
    with pytest.raises(gr.Error, match=f"(?i){words}"):
        review.save_review(state, sample_id, revision, {**value, "boxes": boxes}, "ana")
    item = review_store.get(sample_id)
    assert item.revision == revision and item.ground_truth is None  # nothing saved


def test_a_stale_sample_id_and_revision(state, review_store, tiny_detr_dir):
    from app import review

    value, sample_id, revision, _ = review.send_to_review(state, generate_sample(4).image, str(tiny_detr_dir), 0.5, 128)
    for bad_id in ["0" * 24, "not-an-id", "'; drop"]:
        with pytest.raises(gr.Error, match="no sample"):
            review.save_review(state, bad_id, 0, value, "ana")
    with pytest.raises(gr.Error, match="revision"):
        review.save_review(state, sample_id, revision + 5, value, "ana")
    assert review_store.get(sample_id).revision == revision


# ---- model names, settings and server paths ---------------------------------------------------------

NAMES = {
    "5000-character model name": ("m" * 5000, "too long"),
    "name with a NUL": ("bundled\x00", "NUL"),
    "path component of 300 characters": ("/tmp/" + "b" * 300 + "/model", "neither a local directory"),
    "a file, not a folder": ("/etc/hostname", "is a file"),
    "a folder without a model": ("/etc", "no config.json"),
    "unknown version": ("version:v9999", "version"),
    "empty name": ("   ", "Choose a model"),
}


@pytest.mark.parametrize("case", list(NAMES))
def test_model_names(state, case):
    from app.detect import detect

    name, words = NAMES[case]
    with pytest.raises(gr.Error, match=f"(?i){words}"):
        detect(state, generate_sample(1).image, name, 0.5, 128)


@pytest.mark.parametrize("name", ["/etc", "/work", "someone/any-repository", "bundled/../../etc"])
def test_a_space_loads_only_the_offered_models(state, name):
    from app.detect import detect

    space = state_with(state, system="spaces", space_id="someone/detr-studio")
    with pytest.raises(gr.Error, match="offers only these models"):
        detect(space, generate_sample(1).image, name, 0.5, 128)
    _, _, status = detect(space, generate_sample(1).image, "bundled", 0.5, 0)  # the offered list works
    assert "bundled" in status


def test_the_model_cache_keeps_the_most_recently_used(tmp_path):
    from app.models import ModelCache

    folders = [save_tiny_model(tmp_path / f"m{i}", "detr", seed=i) for i in range(4)]
    cache = ModelCache(capacity=2)
    first = cache.get(str(folders[0]))
    cache.get(str(folders[1]))
    cache.get(str(folders[0]))  # used again: now the most recent
    cache.get(str(folders[2]))  # drops folders[1], the least recently used
    assert str(folders[0]) in cache and str(folders[2]) in cache and str(folders[1]) not in cache
    assert cache.get(str(folders[0])) is first


SETTINGS = {
    "threshold is text": (dict(threshold="abc"), "must be a number"),
    "threshold above 1": (dict(threshold=2), "between 0 and 1"),
    "threshold is NaN": (dict(threshold=float("nan")), "finite"),
    "size is text": (dict(size="big"), "must be a number"),
    "size below 32": (dict(size=10), "32 to 4096"),
    "size not whole": (dict(size=100.5), "whole number"),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_settings(state, case):
    from app.detect import detect

    values, words = SETTINGS[case]
    arguments = {"threshold": 0.5, "size": 128, **values}
    with pytest.raises(gr.Error, match=f"(?i){words}"):
        detect(state, generate_sample(1).image, "bundled", arguments["threshold"], arguments["size"])


SERVER_PATHS = {  # (import or export, path given) -> refused
    "import from /etc": ("import", "/etc"),
    "import with ..": ("import", "../../../../etc"),
    "import through a link out of the root": ("import", "link"),
    "import path with NUL": ("import", "a\x00b"),
    "export to /tmp": ("export", "/tmp/somewhere"),
    "export with ..": ("export", "../models"),
}


@pytest.mark.parametrize("case", list(SERVER_PATHS))
def test_server_paths_stay_under_the_roots(state, review_store, tiny_detr_dir, case):
    from app import review

    purpose, path = SERVER_PATHS[case]
    (state.import_root / "link").symlink_to("/etc", target_is_directory=True)
    with pytest.raises(gr.Error, match="must lie under|not usable"):
        if purpose == "import":
            review.import_folder(state, path, str(tiny_detr_dir), 0.5, 128)
        else:
            review.export_coco(state, path)
    assert len(review_store.dataset) == 0
    assert not Path("/tmp/somewhere").exists()


def test_an_added_root_may_be_used(state, review_store, tiny_detr_dir, tmp_path):
    from app import review

    shared = tmp_path / "shared"
    shared.mkdir()
    Image.fromarray(generate_sample(8).image).save(shared / "a.png")
    with pytest.raises(gr.Error, match="must lie under"):
        review.import_folder(state, str(shared), str(tiny_detr_dir), 0.5, 128)
    rooted = state_with(state, import_roots=(shared,))
    assert "Imported 1 of 1" in review.import_folder(rooted, str(shared), str(tiny_detr_dir), 0.5, 128)
