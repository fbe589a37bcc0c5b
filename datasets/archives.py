"""Zip archives that users upload (images, or a COCO dataset) and that the app offers for download.

`extract_zip` checks the whole archive before writing a byte: every member's name stays inside
the archive (no absolute paths, no ``..``, no NUL), no member is a link or encrypted, the member
count and the total unpacked size are bounded, and no member unpacks to more than `MAX_RATIO`
times its compressed size (a zip bomb). While unpacking it counts the bytes really written, so a
member whose header lies about its size is stopped too. `make_zip` writes a folder as a zip
atomically.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

MAX_MEMBERS = 20_000
MAX_TOTAL_BYTES = 4_000_000_000  # unpacked; the upload itself is capped at 50 MB
MAX_RATIO = 200  # deflate reaches ~100x on flat images; bombs reach 1000x and more
CHUNK = 1 << 20


class ArchiveError(ValueError):
    """An archive we refuse, with what is wrong and where; nothing was extracted."""


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if "\x00" in name or path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"the archive member {name[:120]!r} would be written outside the archive's folder; "
                           "refusing the archive.")
    return path


def check_zip(archive: zipfile.ZipFile, what: str) -> list[zipfile.ZipInfo]:
    """The archive's file members, after checking all of them (see the module docstring)."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ArchiveError(f"{what} holds {len(members)} entries, over the limit of {MAX_MEMBERS}; split it.")
    total, files = 0, []
    for info in members:
        _member_path(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError(f"{what} holds a link ({info.filename[:120]!r}); links are not extracted, refusing "
                               "the archive.")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{what} is encrypted ({info.filename[:120]!r}); upload an archive without a password.")
        if info.is_dir():
            continue
        total += info.file_size
        if info.file_size > CHUNK and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ArchiveError(f"{what}: {info.filename[:120]!r} would unpack {info.file_size / info.compress_size:.0f} "
                               "times larger than it is packed, which only zip bombs do; refusing the archive.")
        files.append(info)
    if total > MAX_TOTAL_BYTES:
        raise ArchiveError(f"{what} would unpack to {total / 1e9:.1f} GB, over the limit of "
                           f"{MAX_TOTAL_BYTES / 1e9:.0f} GB; refusing the archive.")
    return files


def extract_zip(path: str | Path, into: str | Path) -> Path:
    """Extract the zip at ``path`` into the new folder ``into`` (checked first; see the module
    docstring). Raises `ArchiveError`; then ``into`` does not exist."""
    what = f"the archive {Path(path).name!r}"
    into = Path(into)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ArchiveError(f"{what} is not a zip file that can be read ({error}).") from None
    with archive:
        files = check_zip(archive, what)
        into.mkdir(parents=True)
        try:
            for info in files:
                target = into / _member_path(info.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with archive.open(info) as source, open(target, "wb") as sink:
                    while block := source.read(CHUNK):
                        written += len(block)
                        if written > info.file_size:
                            raise ArchiveError(f"{what}: {info.filename[:120]!r} unpacks to more than its header "
                                               "says; refusing the archive.")
                        sink.write(block)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as error:
            shutil.rmtree(into, ignore_errors=True)
            if isinstance(error, ArchiveError):
                raise
            raise ArchiveError(f"{what} is damaged and could not be extracted ({error}).") from None
    return into


def make_zip(folder: str | Path, out: str | Path) -> Path:
    """``folder``'s files as the zip ``out`` (written beside it under another name, then renamed)."""
    folder, out = Path(folder), Path(out)
    handle, staging = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(staging, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
        os.replace(staging, out)
    finally:
        Path(staging).unlink(missing_ok=True)
    return out
