"""Datasets in and out through the browser: uploads of images, zips of images and zipped COCO
datasets land in the review dataset (checked whole first; bombs, links and escaping paths refused
with nothing stored), and the reviewed samples download as a COCO zip that reads back."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from datasets.archives import MAX_RATIO, ArchiveError, extract_zip
from datasets.coco import read_coco
from datasets.shapes import generate_sample, write_coco


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(generate_sample(seed).image).save(buffer, format="PNG")
    return buffer.getvalue()


def _coco_zip(tmp_path: Path, count: int = 3, change=None) -> Path:
    folder = tmp_path / "coco-src"
    write_coco(folder, count=count, first_seed=90)
    if change is not None:
        document = json.loads((folder / "annotations.json").read_text())
        change(document)
        (folder / "annotations.json").write_text(json.dumps(document))
    members = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    return _zip(tmp_path / "coco.zip", {f"dataset/{name}": data for name, data in members.items()})


def test_images_and_a_zip_of_images(state, review_store, tiny_detr_dir, tmp_path):
    from app.transfer import import_upload

    single = tmp_path / "one.png"
    single.write_bytes(_png(1))
    archive = _zip(tmp_path / "more.zip", {"a/b.png": _png(2), "c.png": _png(3), "notes.txt": b"hi",
                                           "broken.png": b"not a png"})
    report = import_upload(state, [str(single), str(archive)], str(tiny_detr_dir), 0.5, 128)
    assert "Imported 3 of 4 images" in report and "broken.png" in report
    assert len(review_store.dataset) == 3
    assert not any((state.data_dir / "uploads").iterdir())  # the extracted files are gone


def test_a_zipped_coco_dataset_lands_with_its_truth(state, review_store, tiny_detr_dir, tmp_path):
    from app.transfer import import_upload

    report = import_upload(state, [str(_coco_zip(tmp_path))], str(tiny_detr_dir), 0.5, 128)
    assert "Imported 3 images" in report
    statuses = review_store.dataset.values("review.status")
    assert statuses == ["imported"] * 3 and all(len(d.detections) for d in review_store.dataset.values("ground_truth"))


def _bomb(tmp_path: Path) -> Path:
    return _zip(tmp_path / "bomb.zip", {"zeros.png": b"\0" * (MAX_RATIO * 4 << 20)})


REFUSED = {  # name -> (make the upload, words of the message)
    "a path leaving the archive": (lambda t: _zip(t / "evil.zip", {"../../escape.png": _png(1)}), "outside"),
    "an absolute path": (lambda t: _zip(t / "evil.zip", {"/tmp/escape.png": _png(1)}), "outside"),
    "a link": (lambda t: _zip(t / "link.zip", {"a.png": _png(1)}, links={"etc": "/etc/passwd"}), "link"),
    "a zip bomb": (_bomb, "zip bomb"),
    "not a zip": (lambda t: (t / "fake.zip").write_bytes(b"PK\x03\x04 nothing") and t / "fake.zip", "not a zip"),
    "a COCO zip with one bad box": (lambda t: _coco_zip(t, change=lambda d: d["annotations"][-1].update(
        bbox=[-50, 1, 10, 10])), "outside"),
    "a COCO zip with two images of one id": (lambda t: _coco_zip(t, change=lambda d: d["images"].append(
        dict(d["images"][0]))), "appears twice"),
    "a text file": (lambda t: (t / "notes.txt").write_text("hello") and t / "notes.txt", "neither an image"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_uploads_store_nothing(state, review_store, tiny_detr_dir, tmp_path, case):
    from app.transfer import import_upload

    make, words = REFUSED[case]
    good = _zip(tmp_path / "good.zip", {"fine.png": _png(5)})  # uploaded with it: not imported either
    with pytest.raises(gr.Error, match=f"(?i){words}"):
        import_upload(state, [str(good), str(make(tmp_path))], str(tiny_detr_dir), 0.5, 128)
    assert len(review_store.dataset) == 0 and not (tmp_path / "escape.png").exists()
    assert not Path("/tmp/escape.png").exists()


def test_a_member_whose_header_lies_is_stopped(tmp_path):
    path = _zip(tmp_path / "lie.zip", {"a.bin": b"x" * 5000})
    data = bytearray(path.read_bytes())
    # shrink the declared size in the central directory and the local header: 5000 -> 100
    for offset in [i for i in range(len(data) - 4) if data[i:i + 4] == (5000).to_bytes(4, "little")]:
        data[offset:offset + 4] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        extract_zip(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_reviewed_as_a_coco_zip(state, review_store, tiny_detr_dir, tmp_path):
    from app import review
    from app.transfer import export_download

    for seed, who in [(11, "ana"), (12, "bob")]:
        value, sample_id, revision, _ = review.send_to_review(state, generate_sample(seed).image, str(tiny_detr_dir),
                                                              0.5, 128)
        boxes = [{"xmin": 2, "ymin": 3, "xmax": 40, "ymax": 50, "label": "circle"}]
        review.save_review(state, sample_id, revision, {**value, "boxes": boxes}, who)
    everything = export_download(state, "", "")
    only_bob = export_download(state, "2000-01-01", "bob")
    for archive, count in [(everything, 2), (only_bob, 1)]:
        folder = extract_zip(archive, tmp_path / f"unpacked-{count}")
        labels, images = read_coco(folder / "labels.json", folder / "data")
        assert len(images) == count and labels[: len(labels)] and "circle" in labels
        assert all(np.allclose(image.ground_truth.xyxy, [[2, 3, 40, 50]], atol=1) for image in images)
    with pytest.raises(gr.Error, match="No reviewed samples match"):
        export_download(state, "2999-01-01", "")
    with pytest.raises(gr.Error, match="takes a date"):
        export_download(state, "yesterday", "")


def test_through_the_api(state, review_store, tiny_detr_dir, tmp_path):
    """import_upload and export_download as a script calls them; an escaping archive is refused there too."""
    from gradio_client import Client, handle_file

    from conftest import state_with
    from app.ui import build_app, launch

    served = state_with(state, model=str(tiny_detr_dir))
    demo = launch(build_app(served), served, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        evil = _zip(tmp_path / "evil.zip", {"../../escape.png": _png(1)})
        with pytest.raises(Exception, match="outside"):
            client.predict([handle_file(str(evil))], str(tiny_detr_dir), 0.5, 128, api_name="/import_upload")
        assert len(review_store.dataset) == 0
        report = client.predict([handle_file(str(_coco_zip(tmp_path, count=2)))], str(tiny_detr_dir), 0.5, 128,
                                api_name="/import_upload")
        assert "Imported 2 images" in report
        _, sample_id, revision, _ = client.predict(None, 0.5, api_name="/next_to_review")
        client.predict(sample_id, revision, "ana", 0.5, api_name="/accept_and_next")
        archive = client.predict("", "ana", api_name="/export_download")
        with zipfile.ZipFile(archive) as opened:
            assert "labels.json" in opened.namelist()
    finally:
        demo.close()
