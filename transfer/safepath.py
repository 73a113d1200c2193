"""Paths inside a root directory, resolved by us one component at a time, never by the kernel.

Every lookup starts at a directory fd of the root and opens one component at a time with
``O_NOFOLLOW``. A symlink met on the way is read with ``readlink`` and its target resolved
*inside* the root, as a chroot would: an absolute target restarts at the root and ``..`` stops
there. So no name from a layer, however crafted, reaches anything outside the root (reliability
cases 27-32 and 37); nothing here compares path strings.

Each component costs a system call or two, so a lookup is bounded as the kernel bounds its own
(40 symlinks) and also by the components those symlinks add: 40 targets of PATH_MAX bytes make
~80,000, cheap in the kernel but not one at a time here (8,000 took ~20 ms, for every member of
a layer whose paths ran through such a chain).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Sequence

# The kernel's own limits: symlinks followed in one lookup, bytes in a path.
MAX_LINKS = 40
PATH_MAX = 4096
# Components the symlinks of one lookup may add: real images' links add a few dozen
# (``lib -> usr/lib``, ``../../usr/share/...``).
MAX_LINK_PARTS = 256
# O_PATH needs no read permission on the directory and cannot be used to read or write it.
_DIR = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Parts = tuple[str, ...]


def clean(name: str) -> Parts:
    """A member name as components below the root: ``/`` and ``.`` dropped, ``..`` folded
    lexically and never above the root (``../x``, ``/../x`` → ``x``), as docker and containerd
    clean names before use."""
    if len(name) > PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, "name longer than PATH_MAX", name[:80])
    out: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return tuple(out)


class Root:
    """A directory fd that every path of an unpack is relative to."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def open_dir(self, parts: Sequence[str], *, create: bool = False) -> tuple[int, Parts]:
        """Open the directory ``parts`` names, following symlinks inside the root; with
        ``create``, missing directories are made (0755, as tar does for implicit parents).

        Returns a new fd (the caller closes it) and the canonical path: real directories only,
        no symlink in it. Raises FileNotFoundError, NotADirectoryError (a file on the way) or
        OSError(ELOOP).
        """
        names: list[str] = []
        current = os.open(".", _DIR, dir_fd=self.fd)
        todo = list(reversed(parts))
        links = steps = added = 0
        try:
            while todo:
                steps += 1
                if steps > PATH_MAX * 2:  # hostile chains of links full of ".."
                    raise OSError(errno.ELOOP, "too many path components", "/".join(parts))
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if names:
                        # current is a real directory strictly below the root that we reached
                        # by name, so the kernel's ".." of it is the canonical parent.
                        parent = os.open("..", _DIR, dir_fd=current)
                        os.close(current)
                        current = parent
                        names.pop()
                    continue
                try:
                    child = os.open(name, _DIR, dir_fd=current)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, 0o755, dir_fd=current)
                    child = os.open(name, _DIR, dir_fd=current)
                except NotADirectoryError:
                    st = os.stat(name, dir_fd=current, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise
                    links += 1
                    if links > MAX_LINKS:
                        raise OSError(errno.ELOOP, "too many levels of symlinks", name) from None
                    target = os.readlink(name, dir_fd=current)
                    components = target.split("/")
                    added += len(components)
                    if added > MAX_LINK_PARTS:
                        raise OSError(
                            errno.ELOOP,
                            f"symlinks on the way add over {MAX_LINK_PARTS} path components",
                            name,
                        ) from None
                    if target.startswith("/"):  # re-rooted: restart at the root, not at /
                        os.close(current)
                        current = os.open(".", _DIR, dir_fd=self.fd)
                        names.clear()
                    todo.extend(reversed(components))
                    continue
                os.close(current)
                current = child
                names.append(name)
        except BaseException:
            os.close(current)
            raise
        return current, tuple(names)

    def open_exact(self, parts: Sequence[str], flags: int = READ_DIR) -> int:
        """Open a canonical path without following anything, its last component with
        ``flags``; raises OSError if a component is no longer a real directory."""
        dir_fd, opened = self.fd, None
        try:
            for name in parts[:-1]:
                child = os.open(name, _DIR, dir_fd=dir_fd)
                if opened is not None:
                    os.close(opened)
                opened = dir_fd = child
            return os.open(parts[-1] if parts else ".", flags, dir_fd=dir_fd)
        finally:
            if opened is not None:
                os.close(opened)


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_at(dir_fd: int, name: str) -> os.stat_result | None:
    """Remove ``name`` in ``dir_fd`` whatever it is; a symlink itself, never its target; a
    directory with everything below it (shutil's fd-based rmtree follows nothing). Returns
    what was removed (its lstat), None when nothing was there."""
    if name in ("", ".", "..") or "/" in name:
        raise ValueError(f"refusing to remove {name!r}")
    st = lstat_at(dir_fd, name)
    if st is None:
        return None
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
    return st


def on_the_way(st: os.stat_result) -> bool:
    """Whether a lookup can pass through this: a directory or a symlink (a file ends one)."""
    return stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)
