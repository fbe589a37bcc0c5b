"""Backups: reviews as COCO with their review records, every model version, never a half backup."""

from __future__ import annotations

import json

import pytest

from datasets.coco import read_coco
from training.backup import BackupError, backup, main
from training.registry import Registry


def _reviewed(store, count: int) -> list[str]:
    from training.star_check import build_review_dataset

    return build_review_dataset(store, count)


def test_backup_holds_reviews_records_and_versions(review_store, tmp_path):
    _reviewed(review_store, 3)
    registry = Registry(tmp_path / "models")
    registry.add(lambda d: (d / "model.safetensors").write_bytes(b"weights"), {"parent": "bundled"})
    summary = backup(review_store, registry, tmp_path / "backup")
    assert summary["reviewed_samples"] == 3 and summary["model_versions"] == ["v0001"]
    labels, images = read_coco(tmp_path / "backup" / "reviews" / "labels.json", tmp_path / "backup" / "reviews" / "data")
    assert labels == review_store.labels and len(images) == 3  # the app's COCO import reads it back
    records = json.loads((tmp_path / "backup" / "reviews" / "records.json").read_text())
    assert len(records) == 3
    assert all(r["review"]["reviewer"] == "star_check" and r["model_versions"] == ["bundled"] for r in records.values())
    assert (tmp_path / "backup" / "models" / "v0001" / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((tmp_path / "backup" / "backup.json").read_text())["dataset"] == review_store.dataset.name


def test_backup_refuses_a_used_folder_and_leaves_nothing_half_written(review_store, tmp_path, monkeypatch):
    _reviewed(review_store, 2)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(BackupError, match="not an empty folder"):
        backup(review_store, Registry(tmp_path / "models"), used)
    assert [p.name for p in used.iterdir()] == ["keep.txt"]

    import training.backup

    registry = Registry(tmp_path / "models")
    registry.add(lambda d: (d / "model.safetensors").write_bytes(b"weights"), {"parent": "bundled"})

    def crash(*args, **kwargs):  # the reviews are written; copying the models fails
        raise OSError("disk full")

    monkeypatch.setattr(training.backup.shutil, "copytree", crash)
    with pytest.raises(BackupError, match="disk full.*nothing was left"):
        backup(review_store, registry, tmp_path / "new")
    assert not any(p.name.startswith((".new", "new")) for p in tmp_path.iterdir())


def test_cli_says_what_is_wrong(review_store, tmp_path, capsys):
    assert main(["--out", str(tmp_path / "b"), "--dataset", "no-such-dataset",
                 "--data-dir", str(review_store.media_dir.parent)]) == 2
    assert "no FiftyOne dataset 'no-such-dataset'" in capsys.readouterr().err
