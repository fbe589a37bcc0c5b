"""Back up the reviews and the model versions to a folder, and optionally to a Hub dataset repository.

    python -m training.backup --out DIR [--dataset NAME] [--data-dir DIR] [--repo USER/NAME]

For a Space, whose disk is wiped on restart, and for anyone moving their work:

- ``DIR/reviews/``: the reviewed samples as COCO (``labels.json`` + ``data/``, category ids from
  1 in the label-space order), which `datasets.coco` and the app's COCO import read back;
- ``DIR/reviews/records.json``: per exported image, the review record (status, reviewer, time,
  revision) and the model versions behind its predictions;
- ``DIR/models/vNNNN/``: every registry version as it is (weights, config, ``version.json``);
- ``DIR/backup.json``: what was backed up, when, from where.

The folder is written under a temporary name and renamed when complete, so a crash never leaves
a half backup, and an existing non-empty ``DIR`` is refused. ``--repo`` then uploads the folder
to a (private, created if needed) Hub dataset repository, under a folder named for the time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core.flags import add_flags, from_flags
from datasets.review import DEFAULT_DATASET
from training.registry import Registry


class BackupError(ValueError):
    """The backup cannot be written (the target is not empty, nothing to back up); says what to do."""


def backup(store, registry: Registry, out_dir: Path) -> dict:
    """Write the backup of ``store`` (a `datasets.review.ReviewStore`) and ``registry`` to ``out_dir``."""
    from datasets.coco import export_reviewed

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BackupError(f"{out_dir} exists and is not an empty folder; choose a new one so nothing is overwritten.")
    view = store.reviewed_view()
    versions = registry.versions()
    if len(view) == 0 and not versions:
        raise BackupError("there is nothing to back up yet: no reviewed samples and no model versions.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if len(view):
            export_reviewed(view, tmp / "reviews", store.labels)
            records = {}
            for sample in view.select_fields(["review", "predictions"]):
                detections = sample.predictions.detections if sample.predictions is not None else []
                record = sample.review.to_dict() if sample.review is not None else {}
                record.pop("_cls", None)
                record.pop("ground_truth", None)  # the revision's copy of the truth: labels.json holds it
                versions_used = sorted({d.model_version for d in detections if d.model_version})
                records[Path(sample.filepath).name] = {"review": record, "model_versions": versions_used}
            (tmp / "reviews" / "records.json").write_text(json.dumps(records, indent=1, default=str))
        for version in versions:
            shutil.copytree(version.path, tmp / "models" / version.id)
        summary = {"dataset": store.dataset.name, "reviewed_samples": len(view), "labels": store.labels,
                   "model_versions": [v.id for v in versions],
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "backup.json").write_text(json.dumps(summary, indent=1))
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    except OSError as error:  # a full disk, a folder we may not write: nothing is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackupError(f"the backup to {out_dir} could not be written ({error.strerror or error}); nothing was "
                          "left there. Free some disk space (or choose another folder) and run it again.") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def upload(out_dir: Path, repo: str) -> str:
    """Upload a backup folder to the Hub dataset repository ``repo`` (private if created); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
    folder = json.loads((Path(out_dir) / "backup.json").read_text())["created"].replace(":", "-")
    api.upload_folder(folder_path=str(out_dir), repo_id=repo, repo_type="dataset", path_in_repo=folder,
                      commit_message=f"DETR Studio backup {folder}")
    return f"https://huggingface.co/datasets/{repo}/tree/main/{folder}"


@dataclass
class BackupOptions:
    out: Path | None = field(default=None, metadata={"required": True, "help": "a new (or empty) folder for the backup"})
    dataset: str = field(default=DEFAULT_DATASET, metadata={"help": "the FiftyOne review dataset"})
    data_dir: Path | None = field(default=None, metadata={"help": "app data directory (default as the app)"})
    repo: str | None = field(default=None, metadata={"help": "also upload to this Hub dataset repository (USER/NAME)"})


def main(argv: list[str] | None = None) -> int:
    from datasets.database import configure_for_dataset
    from datasets.review import ReviewError, ReviewStore

    parser = argparse.ArgumentParser(prog="python -m training.backup", description=__doc__.split("\n\n")[0])
    add_flags(parser, BackupOptions)
    args = from_flags(BackupOptions, parser.parse_args(argv))
    try:
        data_dir = configure_for_dataset(args.dataset, args.data_dir)
    except ReviewError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summary = backup(ReviewStore.open(args.dataset, data_dir), Registry(data_dir / "models"), args.out)
    except BackupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"backed up {summary['reviewed_samples']} reviewed samples and {len(summary['model_versions'])} "
          f"model versions to {args.out}")
    if args.repo:
        print(f"uploaded to {upload(args.out, args.repo)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
