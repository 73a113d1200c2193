"""Writes that survive a crash: write, fsync, rename into place, fsync the directory.

A file appears under its final name only complete (rename is atomic), and the rename itself is
made durable before anything that points at the file (index.json, a tag) is written: at once, or,
for blobs (``sync_dir=False``), by one fsync of their directory before the index is written.

A temporary is named ``.<name>.<pid>.<n>.tmp`` (``n`` random) and created with
O_CREAT|O_EXCL|O_NOFOLLOW (``create_new``): a file or a symlink someone planted at the name is
never opened, let alone written through; another name is tried. It is locked (``flock``) by its
writer until it is renamed, so a later run can tell a dead writer's leftovers (a small blob's
write killed midway) from a live one's and remove them: the pid alone would do on one machine,
but not on a store shared over NFS, where a pid says nothing about another host's processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import StoreError

# O_EXCL: a new file or nothing, and never through a symlink, whatever stands at the name.
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TRIES = 16


def create_new(name: Callable[[], Path]) -> tuple[int, Path]:
    """A new, empty file at the first free name of ``name()`` (random each call), and its fd.

    A name already taken (by another writer, or planted) is never touched: the next is tried.
    Raises FileNotFoundError when the directory is missing (the caller may make it)."""
    for _ in range(_TRIES):
        path = name()
        try:
            return os.open(path, NEW_FILE, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def fsync_dir(path: Path) -> None:
    # A directory: a file or a FIFO planted at the name is an error, never opened (a FIFO would
    # block). A link is followed: a store's root may be one (the user's choice), and syncing
    # a directory it leads to writes nothing of ours there.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
    tmp: Path | None = None
    try:
        tmp, handle = _create(directory, path.name, "tmp")
        with handle:  # locked until renamed: see remove_dead_temporaries
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            try:
                os.replace(tmp, path)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None
    if not sync_dir:
        return
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None


def _create(directory: Path, name: str, suffix: str) -> tuple[Path, BinaryIO]:
    """A new temporary ``.NAME.PID.N.SUFFIX`` in ``directory``, opened for writing and locked,
    its directory made only when the open finds it missing."""
    pid = os.getpid()

    def temporary() -> Path:
        return directory / f".{name}.{pid}.{secrets.randbits(48)}.{suffix}"

    try:
        fd, path = create_new(temporary)
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True)
        fd, path = create_new(temporary)
    return path, _locked(os.fdopen(fd, "wb"))


def _locked(handle: BinaryIO) -> BinaryIO:
    lock_own(handle.fileno())
    return handle


def lock_own(fd: int) -> None:
    """Mark a new temporary as its writer's (until closed): see remove_dead_temporaries.
    Uncontended (the name is this writer's own): one system call. Where the filesystem has
    no locks, the pid in the name still tells."""
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


# atomic_write's .tmp and create_once's .new
_TEMPORARY = re.compile(r"\..+\.(\d+)\.\d+\.(?:tmp|new)")


def remove_dead_temporaries(directory: Path, pattern: re.Pattern[str] = _TEMPORARY) -> int:
    """Remove the temporaries in ``directory`` (names matching ``pattern``, whose first group
    is the writer's pid) that no live writer holds: their pid is no process here, and their
    lock is free (a writer on another host sharing the store holds it). Returns how many
    were removed."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        match = pattern.fullmatch(entry.name)
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
    created meanwhile, and maybe filled since, is never replaced. Its temporary
    (``.NAME.PID.N.new``) stays locked until it is removed, so a writer killed in between
    leaves one that ``remove_dead_temporaries`` recognises."""
    tmp: Path | None = None
    handle: BinaryIO | None = None
    try:
        tmp, handle = _create(path.parent, path.name, "new")
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
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if handle is not None:
            handle.close()
    fsync_dir(path.parent)
