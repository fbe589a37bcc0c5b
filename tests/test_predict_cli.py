"""The `python -m core.predict` command line: outputs, JSON shape, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

import core.loading as loading
from conftest import LABELS
from core.predict import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    paths = []
    for name in ["astronaut", "coffee"]:
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).save(path)
        paths.append(path)
    return paths


def test_writes_picture_and_json_per_image(tmp_path, photos, tiny_detr_dir, capsys):
    out = tmp_path / "out"
    code = main([*map(str, photos), "--model", str(tiny_detr_dir), "--threshold", "0.6", "--size", "320",
                 "--out", str(out)])
    assert code == 0
    for photo in photos:
        document = json.loads((out / f"{photo.stem}.json").read_text())
        assert Image.open(out / f"{photo.stem}_annotated.jpg").size == Image.open(photo).size
        assert document["model"] == str(tiny_detr_dir)
        assert document["labels"] == LABELS
        width, height = Image.open(photo).size
        assert document["image_size"] == [width, height]
        assert [q["index"] for q in document["queries"]] == list(range(12))  # every query listed
        for query in document["queries"]:
            assert set(query) >= {"index", "label", "score", "no_object", "box"}
            x1, y1, x2, y2 = query["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        passing = [q for q in document["queries"] if q["score"] >= 0.6]
        assert len(document["detections"]) == len(passing)
        for detection in document["detections"]:
            query = document["queries"][detection["query_index"]]
            assert detection["label"] == query["label"] and detection["box"] == query["box"]
            assert detection["score"] >= 0.6
    assert f"{photos[0]}:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--threshold", "1.5"], "--threshold must be between 0 and 1"),
        (["--size", "8"], "--size must be between 32 and 4096"),
    ],
)
def test_bad_options(tmp_path, photos, tiny_detr_dir, capsys, arguments, message):
    code = main([str(photos[0]), "--model", str(tiny_detr_dir), "--out", str(tmp_path / "o"), *arguments])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_bad_image_fails_before_loading_the_model(tmp_path, photos, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    code = main([str(photos[0]), str(bad), "--model", "no/such-model", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "broken.jpg" in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_same_stem_twice_is_refused(tmp_path, photos, tiny_detr_dir, capsys):
    other = tmp_path / "sub"
    other.mkdir()
    twin = other / photos[0].name
    twin.write_bytes(photos[0].read_bytes())
    assert main([str(photos[0]), str(twin), "--model", str(tiny_detr_dir), "--out", str(tmp_path / "o")]) == 2
    assert "would both write astronaut.json" in capsys.readouterr().err


def test_unreachable_hub_model_says_how_to_fix(tmp_path, photos, monkeypatch, capsys):
    monkeypatch.setattr(loading, "BUNDLED_DIR", tmp_path / "no-bundled")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "cache"))
    assert main([str(photos[0]), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "facebook/detr-resnet-50" in err and "directory" in err


def test_falls_back_to_bundled_with_a_note(tmp_path, photos, monkeypatch, capsys, tiny_detr_dir):
    monkeypatch.setattr(loading, "BUNDLED_DIR", tiny_detr_dir)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "cache"))
    assert main([str(photos[0]), "--out", str(tmp_path / "o"), "--size", "256"]) == 0
    assert "note:" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "astronaut.json").read_text())["model"] == "bundled"


def test_module_entry_point(tmp_path, photos, tiny_detr_dir):
    """The real command, in a subprocess: exit codes and output as a user sees them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    ok = subprocess.run(
        [sys.executable, "-m", "core.predict", str(photos[1]), "--model", str(tiny_detr_dir), "--size", "256",
         "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "coffee.json").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "core.predict", str(tmp_path / "missing.png")], capture_output=True, text=True,
        env=env, cwd=ROOT, timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr
