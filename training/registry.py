"""Model versions: fine-tuned models kept under the app's data directory, never overwritten.

Layout of ``<data dir>/models/``::

    v0001/  config.json, model.safetensors, preprocessor_config.json   (save_pretrained layout)
            version.json   labels, parent, time, training settings, metrics, sample ids; written last
    v0002/  ...

A version is written into a hidden temporary directory and renamed into place only when complete,
so a crash leaves the registry as it was (stale ``.tmp-*`` directories are ignored and swept).
A version's name in the app and CLI is ``version:v0001``; `core.loading` loads its directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from safetensors import SafetensorError

from core.loading import VERSION_PREFIX as PREFIX
from core.loading import ModelLoadError

VERSION = re.compile(r"^v(\d{4,})$")

logger = logging.getLogger(__name__)


class RegistryError(ValueError):
    """An unknown version or an unusable registry directory."""


@dataclass
class ModelVersion:
    id: str  # "v0003"
    path: Path
    info: dict  # version.json

    @property
    def name(self) -> str:
        """What the model picker and ``--base`` accept."""
        return PREFIX + self.id

    @property
    def parent(self) -> str | None:
        return self.info.get("parent")


class Registry:
    """The model versions under ``root`` (normally ``<data dir>/models``)."""

    def __init__(self, root: str | Path, on_added=None):
        self.root = Path(root)
        self.on_added = on_added  # called with a new version's folder once it is registered

    def versions(self) -> list[ModelVersion]:
        """Complete versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = VERSION.match(path.name)
            if match and (path / "version.json").is_file():
                try:
                    info = json.loads((path / "version.json").read_text())
                except (OSError, ValueError) as error:  # one damaged version must not hide the others
                    logger.warning("skipping model version %s: unreadable version.json (%s)", path.name, error)
                    continue
                found.append((int(match.group(1)), ModelVersion(path.name, path, info)))
        return [version for _, version in sorted(found, key=lambda item: item[0])]

    def get(self, name: str) -> ModelVersion:
        """A version by id (``v0003``) or name (``version:v0003``)."""
        wanted = name.removeprefix(PREFIX).strip()
        for version in self.versions():
            if version.id == wanted:
                return version
        known = ", ".join(v.id for v in self.versions()) or "none yet"
        raise RegistryError(f"no model version {wanted!r} in {self.root} (versions: {known}).")

    def version_dir(self, name: str) -> Path:
        """The folder of version ``name``, for `core.loading.load_detector`'s ``version_dir``;
        an unknown version is a `ModelLoadError` like any other model that cannot be loaded."""
        try:
            return self.get(name).path
        except RegistryError as error:
            raise ModelLoadError(str(error)) from None

    def add(self, write, info: dict) -> ModelVersion:
        """Register a new version: ``write(directory)`` saves the model files into an empty
        directory; ``info`` goes to version.json with the id and time. Returns the new version.

        If ``write`` raises, nothing becomes visible and the exception propagates.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash; never a version
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            write(tmp)
            number = max([int(VERSION.match(p.name).group(1)) for p in self.root.iterdir() if VERSION.match(p.name)]
                         or [0]) + 1
            while True:
                version_id = f"v{number:04d}"
                record = {**info, "id": version_id, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                (tmp / "version.json").write_text(json.dumps(record, indent=1))
                try:
                    os.rename(tmp, self.root / version_id)  # atomic; fails if that id was taken meanwhile
                    break
                except OSError:
                    number += 1
        except (OSError, SafetensorError) as error:  # a full disk (safetensors reports it as its own error)
            shutil.rmtree(tmp, ignore_errors=True)
            reason = getattr(error, "strerror", None) or str(error).strip()[:200]
            raise RegistryError(f"the new model version could not be written to {self.root} ({reason}); nothing "
                                "was registered. Free some disk space and fine-tune again.") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.on_added is not None:  # e.g. the journal's copy (`datasets.journal`)
            self.on_added(self.root / version_id)
        return self.get(version_id)
