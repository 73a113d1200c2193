"""Files of an OCI layout opened as untrusted: the store's own, and any ``oci:`` directory.

A layout is a directory someone else may have written (reliability rule 8: files opened
no-follow, regular, bounded). Each file is opened with ``O_NOFOLLOW`` (a symlink is refused,
not followed out of the layout) and ``O_NONBLOCK`` (opening a FIFO otherwise waits for a writer
forever; on a regular file the flag changes nothing), then must be a regular file, and is read
only up to a bound: an ``index.json`` linked to ``/dev/zero`` was read until memory ran out.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import StoreError

FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
READ_CHUNK = 1 << 20

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def open_regular(path: Path, what: str, *, follow: bool = False) -> int:
    """A read-only descriptor of the regular file ``path`` (the caller closes it).

    Raises FileNotFoundError when it is missing (callers decide what absence means) and
    StoreError naming ``what`` when it is anything but a regular file. ``follow`` is for a
    path the user named (an archive to load), never for a file inside a layout."""
    try:
        fd = os.open(path, FLAGS & ~os.O_NOFOLLOW if follow else FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{what} is a symbolic link, not a regular file") from None
        if isinstance(exc, FileNotFoundError | NotADirectoryError):
            raise FileNotFoundError(errno.ENOENT, "missing", str(path)) from None
        raise StoreError(f"cannot open {what}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a plain file")
            raise StoreError(f"{what} is {kind}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_upto(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes from ``fd``'s current position, fewer only at its end."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(READ_CHUNK, left))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_capped(path: Path, cap: int, what: str) -> bytes:
    """The whole regular file ``path``, refused when it holds more than ``cap`` bytes (checked
    before reading, and again while reading: it may grow meanwhile)."""
    fd = open_regular(path, what)
    try:
        if os.fstat(fd).st_size > cap:
            raise StoreError(f"{what} is larger than {cap} bytes")
        data = read_upto(fd, cap + 1)
    finally:
        os.close(fd)
    if len(data) > cap:
        raise StoreError(f"{what} is larger than {cap} bytes")
    return data
