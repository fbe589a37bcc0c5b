"""Where the review data lives: the data directory and FiftyOne's database connection.

FiftyOne reads its database settings from the environment when first imported, so
`configure_fiftyone` runs before anything imports fiftyone (the app's start-up, every command line).
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets.labels import ReviewError


def default_data_dir() -> Path:
    """``DETR_STUDIO_DATA`` if set, else ``/data/detr-studio`` when ``/data`` exists (Spaces), else ``~/.detr-studio``."""
    if os.environ.get("DETR_STUDIO_DATA"):
        return Path(os.environ["DETR_STUDIO_DATA"]).expanduser()
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/detr-studio")
    return Path.home() / ".detr-studio"


def configure_fiftyone(data_dir: Path) -> str:
    """Point FiftyOne at its database; call before anything imports fiftyone. Returns where it is.

    ``FIFTYONE_DATABASE_URI`` (an external MongoDB, for several reviewers) wins; otherwise FiftyOne
    runs its own MongoDB with files under ``data_dir/fiftyone-db``. FiftyOne reads its settings
    from the environment when first imported, so they are set there.
    """
    import sys

    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # MongoDB 6.0's version nag only
    if os.environ.get("FIFTYONE_DATABASE_URI"):
        where = f"MongoDB at {os.environ['FIFTYONE_DATABASE_URI'].split('@')[-1]}"
    else:
        database_dir = Path(data_dir) / "fiftyone-db"
        database_dir.mkdir(parents=True, exist_ok=True)
        os.environ["FIFTYONE_DATABASE_DIR"] = str(database_dir)
        where = f"FiftyOne's MongoDB in {database_dir}"
    if "fiftyone" in sys.modules:
        import fiftyone as fo

        if not os.environ.get("FIFTYONE_DATABASE_URI") and fo.config.database_dir != os.environ["FIFTYONE_DATABASE_DIR"]:
            raise RuntimeError("fiftyone was imported before configure_fiftyone(); call it first.")
    return where


def configure_for_dataset(name: str, data_dir: Path | None) -> Path:
    """For command lines: configure FiftyOne for ``data_dir`` (default: the app's) and check that the
    dataset ``name`` exists. Returns the data directory; raises `ReviewError` naming the known ones."""
    data_dir = (data_dir or default_data_dir()).expanduser()
    configure_fiftyone(data_dir)
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise ReviewError(f"no FiftyOne dataset {name!r}; known: {', '.join(fo.list_datasets()) or 'none'}")
    return data_dir


def check_local_database() -> None:
    """Refuse to run on another directory's database.

    FiftyOne's own MongoDB service is shared by all FiftyOne processes of a user: when one is
    already running (a notebook, the FiftyOne App), a new process attaches to it whatever its
    ``database_dir`` says. Reviews would then land somewhere the user did not choose.
    """
    import fiftyone as fo
    from fiftyone.core.odm import database

    if fo.config.database_uri:
        return
    database.get_db_conn()  # connects, starting or attaching to the service
    child = getattr(getattr(database, "_db_service", None), "child", None)  # FiftyOne internals, read only
    try:
        command = child.cmdline() if child is not None else []
    except Exception:  # the process vanished or cannot be inspected: nothing to compare
        return
    if "--dbpath" not in command:
        return
    actual = Path(command[command.index("--dbpath") + 1]).resolve()
    if actual != Path(fo.config.database_dir).resolve():
        raise ReviewError(
            f"FiftyOne attached to a database already running in {actual} (process {child.pid}), not the one "
            f"in {fo.config.database_dir}: FiftyOne runs one local database per user. Close the other FiftyOne "
            "session, or run a MongoDB server and set FIFTYONE_DATABASE_URI."
        )
