"""Writes that survive a crash: write, fsync, rename into place, fsync the directory.

A file appears under its final name only complete (rename is atomic), and the rename itself is
made durable before anything that points at the file (index.json, a tag) is written.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import StoreError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, tmp_dir: Path | None = None) -> None:
    """Write to a temporary file beside ``path`` (or in ``tmp_dir``, same filesystem), fsync,
    rename, fsync the directory."""
    directory = tmp_dir or path.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}.{id(data)}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None
    fsync_dir(path.parent)
