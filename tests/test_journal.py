"""The journal (`datasets.journal`): reviews, undo history, images and model versions survive a
restart that wipes the disk and the database, as a Space's restart does."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import supervision as sv
from bson import json_util

from app.state import AppState
from conftest import save_tiny_model
from datasets.journal import Journal, JournalError
from datasets.shapes import generate_sample


def boxes(*rows, name="circle") -> sv.Detections:
    return sv.Detections(xyxy=np.array(rows, np.float32), data={"class_name": np.array([name] * len(rows), object)})


def documents(store) -> dict:
    """Every sample document as stored, in MongoDB's canonical extended JSON, but the dataset id."""
    found = {}
    for raw in store.dataset._sample_collection.find({}):
        raw.pop("_dataset_id")
        found[str(raw["_id"])] = json_util.dumps(raw, json_options=json_util.CANONICAL_JSON_OPTIONS)
    return found


def test_everything_is_back_after_the_disk_and_the_database_are_wiped(state, tmp_path):
    journal = tmp_path / "bucket"  # a mounted storage bucket
    first = AppState(dataclasses.replace(state.config, journal=journal), tmp_path / "space-data")
    store = first.store
    a = store.add_image(generate_sample(1).image, boxes([1, 1, 30, 30]), "bundled", ["circle", "square"])
    b = store.add_image(generate_sample(2).image, sv.Detections.empty(), "bundled", ["circle", "square"])
    store.save_review(a, boxes([2, 2, 40, 40]), 0, "ana")
    store.save_review(a, boxes([3, 3, 41, 41], name="star"), 1, "bob")  # a new class joins the label space
    store.undo(a, 2, "ana")  # revision 3: bob's boxes back off, both earlier truths in the history
    store.save_review(b, boxes([5, 5, 20, 20], [30, 30, 50, 50], name="square"), 0, "ana")
    for seed in (0, 1):
        first.registry.add(lambda directory, seed=seed: save_tiny_model(directory, "detr", seed=seed), {"base": "t"})
    before_docs, before_labels = documents(store), store.labels
    before_media = {p.relative_to(store.media_dir): p.read_bytes() for p in store.media_dir.rglob("*.png")}
    before_versions = {p.relative_to(first.registry.root): p.read_bytes()
                       for p in first.registry.root.rglob("*") if p.is_file()}

    # The restart: the data directory (media, versions) and the database are gone.
    store.dataset.delete()
    shutil.rmtree(tmp_path / "space-data")
    second = AppState(dataclasses.replace(state.config, journal=journal), tmp_path / "space-data")
    assert second.restore_from_journal() == {"samples": 2, "media": 2, "versions": 2}
    restored = second.store
    assert documents(restored) == before_docs  # reviews, revisions, undo history, tags: byte for byte
    assert restored.labels == before_labels
    assert {p.relative_to(restored.media_dir): p.read_bytes() for p in restored.media_dir.rglob("*.png")} == before_media
    assert {p.relative_to(second.registry.root): p.read_bytes()
            for p in second.registry.root.rglob("*") if p.is_file()} == before_versions
    item = restored.get(a)
    assert (item.revision, item.reviewer, list(item.ground_truth.data["class_name"])) == (3, "ana", ["circle"])
    assert restored.undo(a, 3, "ana") == 4  # the history works on: back to before the first save
    assert restored.get(a).ground_truth is None and restored.get(a).status == "to_review"
    assert second.models.get("version:v0002").labels  # a restored version loads
    assert second.restore_from_journal()["samples"] == 0  # a dataset with samples is never overwritten
    restored.dataset.delete()


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_newest_write_wins(state, tmp_path):
    journal = Journal(tmp_path / "journal")
    state.store.journal = journal
    sample = state.store.add_image(generate_sample(3).image, sv.Detections.empty(), "bundled", ["circle"])
    state.store.save_review(sample, boxes([1, 1, 9, 9]), 0, "ana")
    events = next((tmp_path / "journal" / "events").glob("*.jsonl"))
    with open(events, "a") as file:
        file.write('{"time": 1e12, "dataset": "')  # the append a crash interrupted: never acknowledged
    labels, samples = journal.latest_samples(state.config.dataset)
    assert len(samples) == 1 and samples[0][0]["review"]["revision"] == 1 and labels == ["circle"]


def test_an_unwritable_journal_says_the_save_is_not_durable(state, tmp_path):
    (tmp_path / "journal").write_text("a file where the folder should be")
    state.store.journal = Journal(tmp_path / "journal")
    with pytest.raises(JournalError, match="saved in the database, but the journal .* could not be written"):
        state.store.add_image(generate_sample(4).image, sv.Detections.empty(), "bundled", ["circle"])
    assert len(state.store.dataset) == 1  # the database has it; the message says the copy is missing


def test_the_app_restarted_on_a_wiped_disk_restores_from_the_journal(tmp_path):
    """`python app.py --journal DIR` in its own process, on its own MongoDB: reviews and an undo
    through the API, then the process killed, the data directory and the database deleted (a Space's
    restart), the app started again on the same journal: the documents are back as they were."""
    from gradio_client import Client, handle_file
    from PIL import Image
    from pymongo import MongoClient

    from test_faults import Served

    def stored(served) -> dict:
        client = MongoClient(f"mongodb://127.0.0.1:{served.db_port}", serverSelectionTimeoutMS=5000)
        database = client.get_default_database("fiftyone")
        found = {}
        for dataset in database.datasets.find({}):
            for raw in database[dataset["sample_collection_name"]].find({}):
                raw.pop("_dataset_id")
                found[str(raw["_id"])] = json_util.dumps(raw, json_options=json_util.CANONICAL_JSON_OPTIONS)
        client.close()
        return found

    served = Served(tmp_path / "space", journal=str(tmp_path / "bucket"))
    try:
        served.start()
        client = Client(served.url, verbose=False)
        Image.fromarray(generate_sample(31).image).save(image := tmp_path / "a.png")
        _, sample_id, revision, _ = client.predict(handle_file(str(image)), "bundled", 0.5, 0, api_name="/send_to_review")
        value = {"image": handle_file(str(image)), "boxes": [{"xmin": 2, "ymin": 2, "xmax": 40, "ymax": 40,
                                                               "label": "circle"}]}
        client.predict(sample_id, revision, value, "ana", 0.5, api_name="/save_review")
        client.predict(sample_id, revision + 1, value | {"boxes": []}, "ana", 0.5, api_name="/save_review")
        client.predict(sample_id, revision + 2, "ana", 0.5, api_name="/undo_review")
        before = stored(served)
        assert len(before) == 1
        served.kill()
        served.stop_database()
        shutil.rmtree(served.data_dir)
        shutil.rmtree(served.db_dir)
        served.db_dir.mkdir()
        served.start_database()
        served.start()
        assert stored(served) == before  # revisions, history, truth: as acknowledged before the restart
    finally:
        served.close()
