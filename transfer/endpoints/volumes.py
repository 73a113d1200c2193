"""Archives in volumes: ``NAME.001.tar``, ``NAME.002.tar``, … each at most a maximum size.

For removable media (``xfer save --max-size 4G``, and a bundle export's ``--max-size``): the
archive ``ArchiveDestination`` would write to ``NAME.tar`` is split into volumes, each a valid
tar of whole blob members (``blobs/ALG/HEX``, no directory entries), of at most ``max_size``
bytes with its headers, padding and end-of-archive blocks. The last volume also holds
``oci-layout``, ``index.json`` and ``manifest.json``; index.json carries the annotation
``dev.xfer.volumes`` = the number of volumes (``tarindex.VOLUMES``), so a reader knows the set
(``TarIndex.read`` reads it by ``NAME.tar`` or by its first volume, and names a missing one).
A blob bigger than a volume can hold is an error naming it, raised by ``has_blob`` (asked for
every blob of an image before any of it is written) and by ``admit`` for a caller that knows
the whole export first.

Members go into volumes in the order they are written (greedy: a member that does not fit in
the current volume starts the next one), so the same writes give the same volumes. Each volume
is written to a temporary beside it and renamed into place only complete (synced, ended): a
volume is finished when a member does not fit in it any more; the last one at ``commit``.

A rerun after an interruption keeps the volumes already finished: the volumes found at
``NAME.001.tar``, … (up to the first missing one, or one holding index.json: that is a
finished export's last volume, rewritten) are compared, as members arrive, with what this run
puts in them. A member planned into a kept volume that holds it with its size is not read from
the source again (``put_blob`` returns 0); a volume is kept when it holds exactly the members
planned into it. Names and sizes are enough: a member's name is its digest, and a volume appears
under its name only after every member in it was hashed as it was written and the file synced,
so a kept volume holds what this run would write unless it was damaged at rest afterwards,
which is ``xfer verify``'s job (its members are hashed again there, not on every rerun, where
hashing gigabytes would cost what the export costs). When a volume does not match (another
image set, another order), it is written again from that member on (what it already holds
copied out of the old file, hashed), and no later volume is kept.

The writer holds ``NAME.tar.lock`` (removed when it ends): a second export to the same name
while one runs is refused, since their volumes would be renamed into place in turn.

Writes must come one at a time (``concurrent = False``, as for one archive): an export running
several images at once serialises its ``put_blob`` and ``put_manifest`` calls, and writes in a
deterministic order if it wants volumes kept across reruns (one image after another does).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..digest import Digest, Verifier
from ..durable import fsync_dir
from ..errors import ArchiveError, TransferError
from ..manifest import Descriptor
from .archive_write import ArchiveDestination, TarWriter, _compact, tar_header
from .layout import LAYOUT_VERSION
from .tarindex import DOCUMENTS, MAX_VOLUMES, VOLUMES, TarIndex, volume_path

_BLOCK = 512
END = 2 * _BLOCK  # the end-of-archive blocks every volume ends with
COPY_CHUNK = 4 << 20


def member_bytes(name: str, size: int) -> int:
    """What one member takes in a tar: its header(s), its data, the padding to a block."""
    return len(tar_header(name, size)) + -(-size // _BLOCK) * _BLOCK


class VolumeDestination(ArchiveDestination):
    """An archive written as volumes of at most ``max_size`` bytes (see the module docstring).

    ``path`` is the set's name (``NAME.tar``: volumes ``NAME.001.tar``, …); ``format`` as for
    ``ArchiveDestination``. Use it as any Destination: ``put_blob`` / ``put_manifest`` for every
    image, then ``commit()`` (the last volume, index.json with the volume count; volumes of an
    older, longer set and an older single ``NAME.tar`` removed); ``aclose()`` without commit
    removes the volume being written and keeps the finished ones, for a rerun to continue."""

    def __init__(self, path: Path, max_size: int, format: str | None = None) -> None:
        super().__init__(path, format)
        if max_size < 4 * _BLOCK:
            raise ArchiveError(f"a volume must hold at least {4 * _BLOCK} bytes, not {max_size}")
        self.max_size = max_size
        self.number = 0  # the volume being filled (1-based); 0: none yet
        self.volumes: list[Path] = []  # the volumes finished and in place, in order
        self._used = 0  # bytes its members take so far
        self._planned: dict[str, int] = {}  # its members so far: name → size, in order
        self._current: TarWriter | None = None  # its temporary, unless a kept one is matched
        self._kept: list[TarIndex] | None = None  # finished volumes found on disk, in order
        self._matched: TarIndex | None = None  # the kept volume the current one matches
        self._lock: int | None = None  # the set's lock file, held while writing

    # ---- planning ----------------------------------------------------------------------------

    def _fits(self, name: str, size: int, digest: str | None = None) -> int:
        cost = member_bytes(name, size)
        if cost + END > self.max_size:
            what = f"blob {digest}" if digest else name
            raise ArchiveError(
                f"{what} is {size} bytes: it does not fit in a volume of {self.max_size} bytes "
                f"({self.path})",
                digest=digest,
                hint=f"give --max-size at least {cost + END}",
            )
        return cost

    def admit(self, blobs: list[Descriptor]) -> None:
        """Refuse, before anything is written, a blob no volume can hold (an export that knows
        every blob first calls this; ``has_blob`` checks each image's blobs anyway)."""
        for desc in blobs:
            self._fits(_name(desc.digest), desc.size, str(desc.digest))

    async def has_blob(self, desc: Descriptor) -> bool:
        self._fits(_name(desc.digest), desc.size, str(desc.digest))
        return await super().has_blob(desc)

    # ---- where members go --------------------------------------------------------------------

    async def _start(self) -> None:
        """Before the first volume: this writer's lock on the set, then the volumes a previous
        run finished."""
        if self._kept is None:
            self._lock = await self._io(_lock_set, self.path)
            self._kept = await self._io(_finished_volumes, self.path)

    async def _member(self, name: str, size: int) -> TarWriter | None:
        await self._start()
        if name in self._planned:  # a retried member: its place is already counted
            return self._current
        cost = self._fits(name, size)
        if self.number == 0 or self._used + cost + END > self.max_size:
            await self._next_volume()
        self._used += cost
        self._planned[name] = size
        return await self._place(name, size)

    async def _place(self, name: str, size: int) -> TarWriter | None:
        """The writer for a member just planned, or None when the kept volume holds it."""
        if self._matched is not None:
            if name in self._matched:
                try:
                    if self._matched.member(name).size == size:
                        return None
                except ArchiveError:
                    pass  # a link or a directory under that name: not what we write
            await self._diverge(exclude=name)
        assert self._current is not None
        return self._current

    async def _next_volume(self) -> None:
        """Finish the volume being filled (keep, or complete and rename it); start the next."""
        if self.number:
            if self._matched is not None:
                if self._keeps(self._matched):
                    self.volumes.append(self._matched.path)  # kept as it is
                    self._matched = None
                else:
                    await self._diverge()
            if self._current is not None:
                await self._io(_finish, self._current, self._volume(self.number))
                self._current.close()
                self._current = None
                self.volumes.append(self._volume(self.number))
        if self.number >= MAX_VOLUMES:
            raise ArchiveError(f"{self.path}: more than {MAX_VOLUMES} volumes: raise --max-size")
        self.number += 1
        self._used = 0
        self._planned = {}
        kept = self._kept or []
        if self.number <= len(kept):
            self._matched = kept[self.number - 1]
        else:
            self._current = await self._io(TarWriter, self._volume(self.number))

    def _keeps(self, volume: TarIndex) -> bool:
        """A kept volume matched member by member so far is kept when it holds no other member
        and is no longer than a volume may be now (an older export's, of another size)."""
        if len(volume.names()) != len(self._planned):
            return False
        try:
            return os.fstat(volume.fd).st_size <= self.max_size
        except OSError:
            return False

    async def _diverge(self, exclude: str | None = None) -> None:
        """The kept volume being matched is not what this run writes: write it again, with the
        members planned so far copied from the old file, and keep no later volume."""
        old = self._matched
        assert old is not None and self._kept is not None
        self._matched = None
        for later in self._kept[self.number :]:
            later.close()
        del self._kept[self.number :]
        self._current = await self._io(TarWriter, self._volume(self.number))
        for name, size in self._planned.items():
            if name != exclude:
                await self._io(_copy_member, old, self._current, name, size)
        old.close()

    def _volume(self, number: int) -> Path:
        return volume_path(self.path, number)

    # ---- the end -----------------------------------------------------------------------------

    async def commit(self) -> None:
        """The last volume: what is planned into it, then ``oci-layout`` and the index documents
        (in a volume of their own when they do not fit), renamed into place; then what an older
        export left at this name (a longer set's volumes, a single ``NAME.tar``) is removed."""
        self._documents()  # refuses an empty or broken archive before anything moves
        await self._start()
        last = self.number or 1
        documents = self._tail(last)
        cost = sum(member_bytes(name, len(data)) for name, data in documents)
        if self.number == 0 or self._used + cost + END > self.max_size:
            last = self.number + 1
            documents = self._tail(last)
            cost = sum(member_bytes(name, len(data)) for name, data in documents)
            if cost + END > self.max_size:
                raise ArchiveError(
                    f"the index documents of {self.path} take {cost} bytes: over --max-size"
                )
            await self._next_volume()
        if self._matched is not None:  # a kept volume gets the documents: written again
            await self._diverge()
        tar = self._current
        assert tar is not None
        for name, data in documents:
            await self._io(tar.add, name, data)
        await self._io(_finish, tar, self._volume(last))
        self._finished = True
        tar.close()
        self._current = None
        self.volumes.append(self._volume(last))
        await self._io(_remove_stale, self.path, last)
        await self._io(fsync_dir, self.path.parent)
        self._close_kept()
        self._unlock()

    def _tail(self, count: int) -> list[tuple[str, bytes]]:
        documents = self._documents({VOLUMES: str(count)})
        if self.oci:
            documents.insert(0, ("oci-layout", _compact(LAYOUT_VERSION)))
        return documents

    async def aclose(self) -> None:
        self._close_kept()
        self._unlock()
        if self._finished or self._current is None:
            return
        self._current.abort()
        with contextlib.suppress(OSError):
            self._current.temp.unlink()
        self._current = None

    def _unlock(self) -> None:
        if self._lock is not None:
            _unlock_set(self.path, self._lock)
            self._lock = None

    def _close_kept(self) -> None:
        for tar in self._kept or []:
            tar.close()
        if self._matched is not None:
            self._matched.close()


def _name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.encoded}"


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _lock_set(path: Path) -> int:
    """Hold ``NAME.tar.lock`` beside the set: two exports to one name at once would rename
    their volumes into place in turn, a set of both; the second is refused instead."""
    lock = _lock_path(path)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ArchiveError(
            f"another xfer is writing the volumes of {path} (it holds {lock})",
            hint="wait for it to end, or write to another name",
        ) from None
    except OSError:
        pass  # a filesystem without locks: nothing to hold
    return fd


def _unlock_set(path: Path, fd: int) -> None:
    """Removed while held, then released: no stale lock file stays beside the set."""
    with contextlib.suppress(OSError):
        _lock_path(path).unlink()
    os.close(fd)


def _finished_volumes(path: Path) -> list[TarIndex]:
    """The volumes of ``path`` a previous run finished: from the first on, up to a missing one,
    one that is not a whole tar, or one holding the index documents (a finished set's last
    volume: this run writes its own)."""
    found: list[TarIndex] = []
    for number in range(1, MAX_VOLUMES + 1):
        volume = volume_path(path, number)
        if not volume.is_file() or volume.is_symlink():
            break
        try:
            tar = TarIndex.read_file(volume)
        except TransferError:
            break
        if any(name in tar for name in DOCUMENTS):
            tar.close()
            break
        found.append(tar)
    return found


def _finish(tar: TarWriter, target: Path) -> None:
    tar.finish()
    os.replace(tar.temp, target)


def _copy_member(old: TarIndex, tar: TarWriter, name: str, size: int) -> None:
    """A member of a kept volume copied into its new writing, hashed against its name."""
    member = old.member(name)
    parts = name.split("/")
    verifier = Verifier(Digest.parse(f"{parts[1]}:{parts[2]}"), size)
    tar.header(name, size)
    position = 0
    while position < size:
        chunk = old.read_at(member, min(COPY_CHUNK, size - position), position)
        verifier.update(chunk)
        tar.data(chunk)
        position += len(chunk)
    try:
        verifier.verify()
    except TransferError:
        raise ArchiveError(
            f"{old.path} does not hold the bytes of {name}: remove it and export again"
        ) from None
    tar.pad()


def _remove_stale(path: Path, last: int) -> None:
    """Volumes past ``last`` (an older, longer set) and a single ``path`` of an older export:
    left there, a reader would take them for this export."""
    with contextlib.suppress(FileNotFoundError):
        if not path.is_dir():
            path.unlink()
    for number in range(last + 1, MAX_VOLUMES + 1):
        try:
            volume_path(path, number).unlink()
        except FileNotFoundError:
            break
