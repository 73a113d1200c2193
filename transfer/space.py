"""Disk space for blobs being written: one is started only if its filesystem can hold the rest.

The descriptor's size is known before the first byte arrives, so a blob that cannot fit is
refused before anything is written: a registry declaring 100 MB and streaming zeros used to
fill the disk, leave the partial and promise a resume that could never finish. Blobs written at
once (by this process) each claim what they still need; a new one must fit beside what the
others still need, counted from their progress, not from their whole size (the bytes they have
written are already gone from the free space).

Other processes are not counted: their writes show as less free space when a blob starts, and
one that fills the disk meanwhile still ends in ENOSPC, reported with what is needed and free.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import StoreError

Outstanding = Callable[[], int]  # bytes a blob still has to write

_lock = threading.Lock()
_claims: dict[int, list[Outstanding]] = {}  # st_dev → the blobs being written there


def free_bytes(directory: Path) -> int:
    """What can still be written in ``directory``'s filesystem (by root: the reserve too)."""
    vfs = os.statvfs(directory)
    blocks = vfs.f_bfree if os.geteuid() == 0 else vfs.f_bavail
    return blocks * vfs.f_frsize


class Claim:
    """The bytes ``outstanding()`` still needs in ``directory``'s filesystem, claimed at once
    (raising StoreError, before any write, when they cannot fit) and held until closed."""

    def __init__(self, directory: Path, outstanding: Outstanding, what: str, where: Path) -> None:
        self.outstanding = outstanding
        self.device = os.stat(directory).st_dev
        free = free_bytes(directory)
        with _lock:
            others = _claims.setdefault(self.device, [])
            promised = sum(max(other(), 0) for other in others)
            need = outstanding()
            if need > free - promised:
                left = max(free - promised, 0)
                detail = (
                    f" ({promised} of {free} promised to blobs being written)" if promised else ""
                )
                raise StoreError(
                    f"{what} needs {need} more bytes ({_mib(need)}), but {where} has "
                    f"{left} bytes free{detail if promised else ''}",
                    hint="free some space, or use a store on a larger filesystem (--store)",
                )
            others.append(outstanding)

    def close(self) -> None:
        with _lock, contextlib.suppress(ValueError):  # closed twice
            _claims[self.device].remove(self.outstanding)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
