"""Writes that survive a crash: write, fsync, rename into place, fsync the directory.

A file appears under its final name only complete (rename is atomic), and the rename itself is
made durable before anything that points at the file (index.json, a tag) is written: at once, or,
for blobs (``sync_dir=False``), by one fsync of their directory before the index is written.

A temporary is named ``.<name>.<pid>.<n>.tmp`` and locked (``flock``) by its writer until it is
renamed, so a later run can tell a dead writer's leftovers (a small blob's write killed midway)
from a live one's and remove them: the pid alone would do on one machine, but not on a store
shared over NFS, where a pid says nothing about another host's processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
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
        with _create(tmp) as handle:  # locked until renamed: see remove_dead_temporaries
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
    """``path`` opened for writing and locked, its directory made only when the open finds it
    missing."""
    try:
        return _locked(open(path, "wb"))
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _locked(open(path, "wb"))


def _locked(handle: BinaryIO) -> BinaryIO:
    # Uncontended (the name is this writer's own): one system call. Where the filesystem has
    # no locks, the pid in the name still tells.
    with contextlib.suppress(OSError):
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


_TEMPORARY = re.compile(r"\..+\.(\d+)\.\d+\.tmp")


def remove_dead_temporaries(directory: Path) -> int:
    """Remove the temporaries in ``directory`` that no live writer holds: their pid is no
    process here, and their lock is free (a writer on another host sharing the store holds
    it). Returns how many were removed."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or _alive(int(match[1])):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(entry.path)  # still holding the lock: no writer can be mid-way
            removed += 1
        except OSError:  # held: someone is writing it; or already gone
            pass
        finally:
            os.close(fd)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or no pid we can ask about: keep it
    return True


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
