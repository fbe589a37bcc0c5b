"""The review store: a persistent FiftyOne dataset of images, model predictions and reviewed truth.

This module owns the schema (see docs/data-storage.md). One sample per distinct image:

| field | type | meaning |
| --- | --- | --- |
| ``filepath`` | str | ``<media_dir>/<hash[:2]>/<hash>.png``: a lossless copy named by the SHA-256 of its pixels, never the user's path |
| ``content_hash`` | str | that SHA-256; sending the same image twice updates one sample |
| ``predictions`` | ``fo.Detections`` | model output; each detection has ``confidence``, ``query_index``, ``model_version`` |
| ``top_confidence`` | float | highest prediction confidence (0 when none): the queue's uncertainty order |
| ``ground_truth`` | ``fo.Detections`` | the reviewed truth (or labels imported from COCO, status ``imported``) |
| tag ``reviewed`` | | set by every save, removed when undo returns to an unreviewed state |
| ``review`` | embedded document | ``status`` (``to_review``, ``imported``, ``reviewed``), ``reviewer``, ``time`` (UTC), ``revision`` (int, +1 per save, undo or adopted outside edit), ``ground_truth`` (a copy of the truth this revision wrote) |
| ``review_history`` | list of embedded documents | earlier ``review`` records with their ``ground_truth``, for undo |

The dataset's ``default_classes`` is its ordered label space: the model's labels plus any class
name a reviewer typed. ``info["schema"]`` names this schema's version.

Saves and undos go through one write path (`datasets.revisions`): a compare-and-set on the revision
the writer saw *and* on the truth being unchanged since (FiftyOne App edits and scripts included),
in one atomic MongoDB update, so it holds across processes and servers sharing a database through
``FIFTYONE_DATABASE_URI``. A stale save is refused (`StaleRevisionError`) and writes nothing; an
edit made outside the Review tab becomes a revision of its own, in the history, when it is seen.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import supervision as sv
from PIL import Image

from datasets import revisions
from datasets.database import check_local_database, default_data_dir
from datasets.labels import (  # noqa: F401  (StaleRevisionError: re-exported for callers)
    ReviewError, StaleRevisionError, check_boxes, clean_label, from_fiftyone, to_fiftyone)

SCHEMA_VERSION = 1
REVIEWED_TAG = "reviewed"
STATUS_TO_REVIEW, STATUS_IMPORTED, STATUS_REVIEWED = "to_review", "imported", "reviewed"
DEFAULT_DATASET = "detr-studio-review"


def pixel_hash(image: np.ndarray) -> str:
    """SHA-256 of an RGB image's shape and pixels: the same picture always gets the same name."""
    digest = hashlib.sha256(f"{image.shape}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ReviewError(f"expected an RGB uint8 image, got an array of shape {array.shape} and type {array.dtype}.")
    return array


def _serialized(method):
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


@dataclass
class ReviewedSample:
    """A reviewed sample as training and evaluation need it: the image and its truth in pixels."""

    sample_id: str
    filepath: str
    width: int
    height: int
    truth: sv.Detections  # xyxy pixels, names in data["class_name"]
    content_hash: str | None = None  # the image's `pixel_hash` where the sample has one

    @property
    def split_key(self) -> str:
        """What the validation split hashes (`training.split`): the image content, else the id."""
        return self.content_hash or self.sample_id


def _no_boxes() -> sv.Detections:
    return sv.Detections(xyxy=np.zeros((0, 4), np.float32), data={"class_name": np.array([], dtype=object)})


def _size(sample) -> tuple[int, int]:
    """``(width, height)`` from the sample's metadata, computed (and cached on it) when missing."""
    if sample.metadata is None or not sample.metadata.width:
        sample.compute_metadata()
    return sample.metadata.width, sample.metadata.height


def reviewed_samples(view) -> list[ReviewedSample]:
    """The samples of ``view`` (any FiftyOne dataset or view) tagged ``reviewed``, with their
    ``ground_truth``. Raises `ReviewError` when the dataset has no ``ground_truth`` field."""
    name = view.dataset_name if hasattr(view, "dataset_name") else view.name
    schema = view.get_field_schema()
    if "ground_truth" not in schema:
        raise ReviewError(f"dataset {name!r} has no 'ground_truth' field; review some images first.")
    hashed = "content_hash" in schema  # not in datasets made outside the review store
    samples = []
    for sample in view.match_tags(REVIEWED_TAG).select_fields(["ground_truth", "metadata"]
                                                              + (["content_hash"] if hashed else [])):
        width, height = _size(sample)
        truth = from_fiftyone(sample.ground_truth, width, height, [])
        if "class_name" not in truth.data:  # no boxes: still a sample (it teaches "nothing here")
            truth = _no_boxes()
        samples.append(ReviewedSample(str(sample.id), sample.filepath, width, height, truth,
                                      sample.content_hash if hashed else None))
    return samples


def unreviewed_samples(view, limit: int, seed: int = 0) -> list[ReviewedSample]:
    """Up to ``limit`` samples of ``view`` *not* tagged ``reviewed`` (a fine-tune's replay images),
    drawn with FiftyOne's seeded ``take`` (the same ones for the same dataset and seed), with empty
    truth: the fine-tune labels them with its base model."""
    if limit <= 0:
        return []
    return [ReviewedSample(str(sample.id), sample.filepath, *_size(sample), _no_boxes())
            for sample in view.match_tags(REVIEWED_TAG, bool=False).take(limit, seed=seed).select_fields(["metadata"])]


@dataclass
class Reviewable:
    """One sample as the review editor needs it."""

    sample_id: str
    filepath: str
    width: int
    height: int
    predictions: sv.Detections
    ground_truth: sv.Detections | None
    status: str
    revision: int
    reviewer: str | None
    time: datetime | None


class ReviewStore:
    """A FiftyOne dataset in the schema above, and the media directory its images live in.

    Example::

        store = ReviewStore.open("detr-studio-review", data_dir=Path("~/.detr-studio").expanduser())
        sample_id = store.add_image(image, detections, model_version="bundled", labels=detector.labels)
        item = store.get(sample_id)
        store.save_review(sample_id, corrected, revision=item.revision, reviewer="ana")
    """

    def __init__(self, dataset, media_dir: Path, journal=None):
        self.dataset = dataset
        self.media_dir = Path(media_dir)
        self.journal = journal  # a `datasets.journal.Journal`: every write is also appended there
        # FiftyOne hands every thread the same in-memory Sample object, and reading a sample can
        # reload it; so one thread's edit could be wiped by another's read before it is saved.
        # Sample access is serialized within a process; across processes the revision claim holds.
        self._lock = threading.RLock()

    @classmethod
    def open(cls, name: str = DEFAULT_DATASET, data_dir: Path | None = None) -> ReviewStore:
        """Open (or create) the persistent dataset ``name``; media go to ``data_dir/media``."""
        import fiftyone as fo

        if not name or not name.strip():
            raise ReviewError("the review dataset needs a name.")
        check_local_database()
        data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        if fo.dataset_exists(name):
            dataset = fo.load_dataset(name)
            schema = dataset.info.get("schema")
            if schema is not None and schema != f"detr-studio/{SCHEMA_VERSION}":
                raise ReviewError(f"dataset {name!r} has schema {schema!r}; this version reads "
                                  f"detr-studio/{SCHEMA_VERSION}. Choose another dataset name.")
        else:
            dataset = fo.Dataset(name, persistent=True)
        if "schema" not in dataset.info:
            dataset.info["schema"] = f"detr-studio/{SCHEMA_VERSION}"
            dataset.save()
        for field, kind in [("content_hash", fo.StringField), ("top_confidence", fo.FloatField)]:
            if field not in dataset.get_field_schema():
                dataset.add_sample_field(field, kind)
        for field in ("predictions", "ground_truth"):
            if field not in dataset.get_field_schema():
                dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
        return cls(dataset, Path(data_dir) / "media")

    def _journaled(self, sample_id: str) -> None:
        """Append the sample as stored now to the journal, if there is one (before the write is acknowledged)."""
        if self.journal is not None:
            self.journal.record_sample(self.dataset.name, self.labels, self._raw(sample_id), self.media_dir)

    # ---- label space -------------------------------------------------------------------------

    @property
    def labels(self) -> list[str]:
        return list(self.dataset.default_classes)

    @_serialized
    def add_labels(self, names) -> None:
        """Append class names the label space lacks, keeping its order (ids never move)."""
        names = [clean_label(name) for name in names]
        known = self.labels
        new = [name for name in dict.fromkeys(names) if name not in known]
        if new:
            self.dataset.default_classes = known + new
            self.dataset.save()

    # ---- writing -----------------------------------------------------------------------------

    def _write_media(self, image: np.ndarray, digest: str) -> Path:
        path = self.media_dir / digest[:2] / f"{digest}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)  # never a half-written image under the final name
        return path

    @_serialized
    def find(self, image: Image.Image | np.ndarray) -> str | None:
        """The sample id of this exact image, if it was added before."""
        return self._find_hash(pixel_hash(_rgb(image)))

    def _find_hash(self, digest: str) -> str | None:
        from fiftyone import ViewField

        match = self.dataset.match(ViewField("content_hash") == digest)
        return str(match.first().id) if len(match) else None

    @_serialized
    def add_image(
        self,
        image: Image.Image | np.ndarray,
        predictions: sv.Detections,
        model_version: str,
        labels: list[str],
        ground_truth: sv.Detections | None = None,
    ) -> str:
        """Add an image with its predictions (and, from an import, its truth); returns the sample id.

        The same image added again keeps its sample and review; its predictions are replaced by
        these (the model version travels with each detection).
        """
        import fiftyone as fo

        array = _rgb(image)
        height, width = array.shape[:2]
        predictions = check_boxes(predictions, width, height)
        ground_truth = check_boxes(ground_truth, width, height) if ground_truth is not None else None
        digest = pixel_hash(array)
        path = self._write_media(array, digest)
        self.add_labels(list(labels) + list(predictions.data["class_name"])
                            + (list(ground_truth.data["class_name"]) if ground_truth is not None else []))
        fo_predictions = to_fiftyone(predictions, width, height, model_version)
        top = float(np.max(predictions.confidence)) if len(predictions) and predictions.confidence is not None else 0.0
        existing = self._find_hash(digest)
        if existing is not None:  # only the predictions change: the truth and its revision stay as they are
            from bson import ObjectId

            self.dataset._sample_collection.update_one(
                {"_id": ObjectId(existing)},
                {"$set": {"predictions": fo_predictions.to_dict(), "top_confidence": top,
                          "last_modified_at": revisions.now()}})
            self._reloaded(existing)
            self._journaled(existing)
            return existing
        truth = to_fiftyone(ground_truth, width, height) if ground_truth is not None else None
        sample = fo.Sample(
            filepath=str(path), content_hash=digest, predictions=fo_predictions, top_confidence=top,
            review=fo.DynamicEmbeddedDocument(status=STATUS_IMPORTED if truth is not None else STATUS_TO_REVIEW,
                                              reviewer=None, time=None, revision=0,
                                              ground_truth=truth.copy() if truth is not None else None),
            review_history=[],
        )
        if truth is not None:
            sample["ground_truth"] = truth
        sample.metadata = fo.ImageMetadata(width=width, height=height, num_channels=3)
        self.dataset.add_sample(sample)
        self._journaled(str(sample.id))
        return str(sample.id)

    def _missing(self, sample_id: str) -> ReviewError:
        return ReviewError(f"no sample {sample_id!r} in dataset {self.dataset.name!r}; it may have been "
                           "deleted. Pick another sample from the queue.")

    def _sample(self, sample_id: str):
        from bson import ObjectId

        missing = self._missing(sample_id)
        if not ObjectId.is_valid(str(sample_id)):
            raise missing
        try:
            return self.dataset[str(sample_id)]
        except KeyError:
            raise missing from None

    @_serialized
    def get(self, sample_id: str) -> Reviewable:
        """The sample as stored now; an outside edit of its truth is first recorded as a revision."""
        self.adopt_outside_edit(sample_id)
        sample = self._reloaded(sample_id)
        width, height = sample.metadata.width, sample.metadata.height
        review = sample["review"]
        truth = sample["ground_truth"] if sample.has_field("ground_truth") else None
        return Reviewable(
            sample_id=str(sample.id), filepath=sample.filepath, width=width, height=height,
            predictions=from_fiftyone(sample["predictions"], width, height, self.labels),
            ground_truth=from_fiftyone(truth, width, height, self.labels) if truth is not None else None,
            status=review["status"], revision=int(review["revision"]), reviewer=review["reviewer"],
            time=review["time"],
        )

    def _raw(self, sample_id: str) -> dict:
        """The sample's document as stored now (not FiftyOne's in-memory copy)."""
        from bson import ObjectId

        raw = self.dataset._sample_collection.find_one({"_id": ObjectId(str(sample_id))}) \
            if ObjectId.is_valid(str(sample_id)) else None
        if raw is None:
            raise self._missing(sample_id)
        return raw

    def _reloaded(self, sample_id: str):
        sample = self._sample(sample_id)
        sample.reload(hard=True)  # after a raw write, FiftyOne's in-memory sample is stale
        return sample

    @_serialized
    def adopt_outside_edit(self, sample_id: str, who: str | None = None) -> bool:
        """If the truth of ``sample_id`` was changed outside the Review tab (the FiftyOne App, a script),
        record that edit as a revision by ``who`` (`datasets.revisions.adopt`). Returns whether it did."""
        adopted = revisions.adopt(self.dataset._sample_collection, self._raw(sample_id), who)
        if adopted:
            self._journaled(sample_id)
        return adopted

    @_serialized
    def save_review(self, sample_id: str, boxes: sv.Detections, revision: int, reviewer: str) -> int:
        """Store ``boxes`` as the reviewed truth if ``revision`` is still current; returns the new revision.

        Raises `ReviewError` for invalid boxes or labels and `StaleRevisionError` when anyone saved
        in between or changed the labels outside the Review tab; in both cases the stored sample is
        unchanged. The write is one atomic compare-and-set (`datasets.revisions`).
        """
        sample = self._sample(sample_id)
        width, height = sample.metadata.width, sample.metadata.height
        boxes = check_boxes(boxes, width, height)
        self.add_labels(boxes.data["class_name"])
        truth = to_fiftyone(boxes, width, height).to_dict()

        def change(raw: dict) -> dict:
            previous = {**raw["review"], "ground_truth": raw.get("ground_truth")}
            tags = list(raw.get("tags") or [])
            return {"ground_truth": truth,
                    "review": revisions.record(STATUS_REVIEWED, reviewer, int(revision) + 1, truth),
                    "review_history": list(raw.get("review_history") or []) + [previous],
                    "tags": tags if REVIEWED_TAG in tags else tags + [REVIEWED_TAG]}

        new = revisions.write(self.dataset._sample_collection, self._raw(sample_id), revision, change)
        self._reloaded(sample_id)
        self._journaled(sample_id)
        return new

    @_serialized
    def undo(self, sample_id: str, revision: int, reviewer: str) -> int:
        """Restore the previous revision's truth and status (itself a new revision); returns it."""
        raw = self._raw(sample_id)
        if not raw.get("review_history"):
            raise ReviewError("there is nothing to undo: this sample was never saved.")

        def change(raw: dict) -> dict:
            history = list(raw["review_history"])
            previous = history.pop()
            tags = [tag for tag in raw.get("tags") or [] if tag != REVIEWED_TAG or previous["status"] == STATUS_REVIEWED]
            if previous["status"] == STATUS_REVIEWED and REVIEWED_TAG not in tags:
                tags.append(REVIEWED_TAG)
            truth = previous.get("ground_truth")
            return {"ground_truth": truth,
                    "review": revisions.record(previous["status"], reviewer, int(revision) + 1, truth),
                    "review_history": history, "tags": tags}

        new = revisions.write(self.dataset._sample_collection, raw, revision, change)
        self._reloaded(sample_id)
        self._journaled(sample_id)
        return new

    # ---- reading -----------------------------------------------------------------------------

    def queue(self, skip: list[str] | tuple = (), view: str | None = None):
        """What to review next: by default the unreviewed samples, most uncertain first (highest
        FiftyOne Brain ``mistakenness`` when computed, else lowest top confidence); with ``view``, the
        samples of that saved FiftyOne view (one saved in the App, or ``disagreements``) in its order."""
        from fiftyone import ViewField

        if view:
            if view not in self.dataset.list_saved_views():
                raise ReviewError(f"there is no saved view {view!r} in {self.dataset.name!r} (saved views: "
                                  f"{', '.join(self.dataset.list_saved_views()) or 'none'}).")
            chosen = self.dataset.load_saved_view(view)
            return chosen.exclude(list(skip)) if skip else chosen
        chosen = self.dataset.match_tags(REVIEWED_TAG, bool=False)
        if skip:
            chosen = chosen.exclude(list(skip))
        if "mistakenness" in self.dataset.get_field_schema():
            return chosen.sort_by("mistakenness", reverse=True)
        return chosen.sort_by(ViewField("top_confidence"))

    def next_to_review(self, skip: list[str] | tuple = (), view: str | None = None) -> str | None:
        chosen = self.queue(skip, view)
        return str(chosen.first().id) if len(chosen) else None

    def counts(self) -> dict[str, int]:
        reviewed = len(self.dataset.match_tags(REVIEWED_TAG))
        return {"reviewed": reviewed, "to_review": len(self.dataset) - reviewed, "total": len(self.dataset)}

    def reviewed_view(self):
        return self.dataset.match_tags(REVIEWED_TAG)

    def save_views(self, eval_key: str | None = None) -> list[str]:
        """Save one FiftyOne view per review state, for the FiftyOne App's view picker: ``to-review``
        (the queue's order), ``reviewed``, and, after an evaluation under ``eval_key``,
        ``disagreements`` (reviewed samples with a false positive or a missed object). Returns their names."""
        from fiftyone import ViewField

        views = {"to-review": self.queue(), "reviewed": self.reviewed_view()}
        if eval_key and f"{eval_key}_fp" in self.dataset.get_field_schema():
            views["disagreements"] = self.reviewed_view().match(
                (ViewField(f"{eval_key}_fp") > 0) | (ViewField(f"{eval_key}_fn") > 0))
        with self._lock:
            for name, view in views.items():
                self.dataset.save_view(name, view, overwrite=True)
        return list(views)
