"""Writes that survive a crash: write, fsync, rename into place, fsync the directory.

A file appears under its final name only complete (rename is atomic), and the rename itself is
made durable before anything that points at the file (index.json, a tag) is written: at once, or,
for blobs (``sync_dir=False``), by one fsync of their directory before the index is written.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

from .errors import StoreError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path, data: bytes, *, tmp_dir: Path | None = None, sync_dir: bool = True
) -> None:
    """Write to a temporary file beside ``path`` (or in ``tmp_dir``, same filesystem), fsync,
    rename, fsync the directory (unless the caller syncs it later, before pointing at the file).

    Directories are created only when missing: on this path every system call counts (a pull of
    many small blobs makes one such write per blob).
    """
    directory = tmp_dir or path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.{id(data)}.tmp"
    try:
        with _create(tmp) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None
    if not sync_dir:
        return
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None


def _create(path: Path) -> BinaryIO:
    """``path`` opened for writing, its directory made only when the open finds it missing."""
    try:
        return open(path, "wb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "wb")


def create_once(path: Path, data: bytes) -> None:
    """Create ``path`` complete (as ``atomic_write``) unless it exists: a file another process
    created meanwhile, and maybe filled since, is never replaced."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{id(data)}.new"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails where rename would replace
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: as atomic_write, if still missing
            if not path.exists():
                os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(path.parent)
