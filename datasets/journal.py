"""An append-only journal of the reviews, their images and the model versions, for hosts whose disk
is wiped at restart (a Hugging Face Space), and the restore from it.

MongoDB keeps working on local disk; the journal is a copy kept somewhere durable and reached
over HTTPS: a mounted storage bucket (the journal folder lies on the mount), or a private Hub
dataset repository (the journal folder is local and `huggingface_hub.CommitScheduler` uploads it).
Every write of a sample (added, saved, undone, an outside edit adopted) appends the sample's whole
document as stored, so the newest line of a sample *is* that sample, review history and all.

Folder::

    events/<start>-<pid>.jsonl  one line per write: time, dataset, label space, the image's media
                                path, the sample's document (MongoDB extended JSON); one file per
                                process, appended and fsynced before the write is acknowledged
    media/<xx>/<digest>.png     each image once (the review store's own content-addressed names)
    models/<vNNNN>/             each model version, copied when it is registered

`restore` rebuilds an empty review dataset (same sample ids, documents equal but for the dataset
id) and the versions the registry lacks. Evaluation results are not journaled: run Evaluate again.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

EVENTS, MEDIA, MODELS = "events", "media", "models"


class JournalError(OSError):
    """The journal could not be written or read; the message says where and why."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` whole or not at all (staged, fsynced, renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    with open(source, "rb") as reader, open(tmp, "wb") as writer:
        shutil.copyfileobj(reader, writer)
        writer.flush()
        os.fsync(writer.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


class Journal:
    """The journal in folder ``root`` (see the module docstring). Thread-safe within a process;
    each process appends to a file of its own."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock = threading.Lock()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        self._events = self.root / EVENTS / f"{stamp}-{os.getpid()}.jsonl"
        self._seq = 0

    def record_sample(self, dataset: str, labels: list[str], raw: dict, media_dir: Path) -> None:
        """Append the sample document ``raw`` of ``dataset`` (and copy its image once). Returns once
        the line is on the journal's disk (fsynced); raises `JournalError` when it cannot be."""
        from bson import json_util

        filepath = Path(str(raw.get("filepath", "")))
        try:
            relative = filepath.relative_to(media_dir)
        except ValueError:
            relative = None  # an image outside the media folder: its path is kept as it is
        line = {"time": time.time(), "dataset": dataset, "labels": list(labels),
                "media": relative.as_posix() if relative is not None else None,
                "sample": json_util.dumps(raw, json_options=json_util.CANONICAL_JSON_OPTIONS)}
        try:
            if relative is not None and not (self.root / MEDIA / relative).is_file():
                _copy_file(filepath, self.root / MEDIA / relative)
            with self._lock:
                self._seq += 1
                line["seq"] = self._seq
                self._events.parent.mkdir(parents=True, exist_ok=True)
                with open(self._events, "a", encoding="utf-8") as events:
                    events.write(json.dumps(line) + "\n")
                    events.flush()
                    os.fsync(events.fileno())
        except OSError as error:
            raise JournalError(f"the review was saved in the database, but the journal at {self.root} could not be "
                               f"written ({error.strerror or error}); it will not survive a restart of this "
                               "Space until the journal is reachable again.") from None

    def record_version(self, version_dir: Path) -> None:
        """Copy a registered model version's folder into the journal (files staged, then renamed)."""
        target = self.root / MODELS / Path(version_dir).name
        if target.is_dir():
            return
        staging = self.root / MODELS / f".{target.name}.tmp{os.getpid()}"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            for source in Path(version_dir).rglob("*"):
                if source.is_file():
                    _copy_file(source, staging / source.relative_to(version_dir))
            os.replace(staging, target)
            _fsync_dir(target.parent)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise JournalError(f"model version {target.name} is registered, but copying it to the journal at "
                               f"{self.root} failed ({error.strerror or error}).") from None

    def latest_samples(self, dataset: str) -> tuple[list[str], list[tuple[dict, str | None]]]:
        """The label space and each sample's newest document of ``dataset`` (with its media path)."""
        from bson import json_util

        lines = []
        for path in sorted((self.root / EVENTS).glob("*.jsonl")):
            for number, text in enumerate(path.read_text(encoding="utf-8").splitlines()):
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash mid-append: the write was never acknowledged
                if line.get("dataset") == dataset:
                    lines.append((line["time"], path.name, line.get("seq", number), line))
        lines.sort(key=lambda item: item[:3])
        newest: dict = {}
        labels: list[str] = []
        for *_, line in lines:
            raw = json_util.loads(line["sample"])
            newest[raw["_id"]] = (raw, line.get("media"))
            labels = line.get("labels") or labels
        return labels, list(newest.values())

    def restore(self, store, registry_root: Path | None = None) -> dict:
        """Fill the review ``store`` (a `datasets.review.ReviewStore`) from the journal when it is empty
        (a non-empty dataset is left alone: nothing stored is overwritten), and copy the versions
        ``registry_root`` lacks. Returns counts: samples, media, versions."""
        dataset = store.dataset
        labels, samples = self.latest_samples(dataset.name) if not len(dataset) else ([], [])
        copied = 0
        documents = []
        for raw, media in samples:
            if media is not None:
                target = store.media_dir / media
                if not target.is_file() and (self.root / MEDIA / media).is_file():
                    _copy_file(self.root / MEDIA / media, target)
                    copied += 1
                raw["filepath"] = str(target)
            raw["_dataset_id"] = dataset._doc.id
            documents.append(raw)
        if labels:
            store.add_labels(labels)
        if documents:
            # FiftyOne declares the fields as for any add (from the same documents); then the documents
            # themselves go in as they were: same ids, times, revisions and history.
            import fiftyone as fo
            from bson import json_util

            probes = [fo.Sample.from_dict(json_util.loads(json_util.dumps(
                {key: value for key, value in raw.items() if key not in ("_id", "_dataset_id")}))) for raw in documents]
            dataset.add_samples(probes, progress=False)
            dataset._sample_collection.delete_many({"_id": {"$in": [probe._id for probe in probes]}})
            dataset._sample_collection.insert_many(documents)
            dataset.reload()
        versions = 0
        if registry_root is not None and (self.root / MODELS).is_dir():
            for source in sorted((self.root / MODELS).iterdir()):
                if source.is_dir() and not source.name.startswith(".") and not (Path(registry_root) / source.name).exists():
                    shutil.copytree(source, Path(registry_root) / source.name)
                    versions += 1
        return {"samples": len(documents), "media": copied, "versions": versions}


def download_from_hub(repo_id: str, folder: Path, token: str | None = None) -> bool:
    """Fetch the journal kept in the private Hub dataset repository ``repo_id`` into ``folder``
    (at start-up, before `Journal.restore`). False when the repository does not exist yet."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        snapshot_download(repo_id, repo_type="dataset", local_dir=folder, token=token)
    except RepositoryNotFoundError:
        return False
    return True


def upload_to_hub(repo_id: str, folder: Path, every_min: float, token: str | None = None):
    """Upload ``folder`` to the private Hub dataset repository ``repo_id`` every ``every_min``
    minutes (and at exit): `huggingface_hub.CommitScheduler`, which uploads new and changed files."""
    from huggingface_hub import CommitScheduler

    return CommitScheduler(repo_id=repo_id, repo_type="dataset", folder_path=folder, every=every_min, private=True,
                           token=token, squash_history=False)
