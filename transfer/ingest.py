"""A blob being received: a partial file, the byte ranges it holds, the digest of its prefix.

Bytes may arrive out of order (parallel Range requests write at their offsets), but a digest
can only be computed in order: the verifier follows the contiguous prefix as it grows, hashing
straight from memory when a write lands exactly at the prefix's end and re-reading the file
(page cache) only for ranges that arrived early.

``Ingest`` owns the file and the hash, and the locks that let worker threads write at once;
what is held (``HeldRanges``) and the journal that keeps it across a crash (``RangeJournal``,
the ``<partial>.ranges`` sidecar, created before the first out-of-order byte) are ranges.py's.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import anyio

from . import writeback
from .digest import Verifier
from .errors import StoreError
from .manifest import Descriptor
from .ranges import HeldRanges, RangeJournal, Span

READ_CHUNK = 4 << 20
# Direct I/O: a block written from page-aligned memory at an offset and of a length that are
# multiples of this goes to the disk without the page-cache copy, which was the kernel's largest
# cost in a 1 GB pull (15% of xfer's CPU); ~0.4 ms of device wait per MiB costs no CPU at all.
ALIGN = 4096
BLOCK = 1 << 20  # what a Staging buffer gathers before it writes
_O_DIRECT = getattr(os, "O_DIRECT", 0)
Chunk = bytes | memoryview


class Ingest:
    def __init__(self, partial: Path, desc: Descriptor) -> None:
        self.path = partial
        self.desc = desc
        self.verifier = Verifier(desc.digest, desc.size)
        self.held = HeldRanges(desc.size)
        self.journal = RangeJournal(partial, str(desc.digest))
        self.sidecar = self.journal.path
        self.fd = -1
        self._hash_lock = threading.Lock()  # the verifier is advanced by worker threads
        self._ranges_lock = threading.Lock()  # `held` and the journal, for the same threads
        self._direct = -1  # the partial opened for direct I/O, once a block asks for it
        self._direct_ok = bool(_O_DIRECT)  # until the filesystem refuses it
        self._direct_lock = threading.Lock()

    # ---- lifecycle ----------------------------------------------------------------------------

    def open(self) -> None:
        # No-follow and non-blocking: a partial swapped for a link or a FIFO is refused, not
        # written through or waited on.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        self.fd = os.open(self.path, flags, 0o644)
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self.fd)
            self.fd = -1
            raise StoreError(f"partial file {self.path} is not a regular file")
        size = st.st_size
        if size > self.desc.size:  # cannot belong to this blob
            self._reset()
            return
        claimed = self.journal.load(size)
        if claimed is None:
            self.held = HeldRanges(self.desc.size, [(0, size)] if size else [])
        else:
            self.held = HeldRanges(self.desc.size, claimed)
            self.journal.needed = True
            self.save()  # compact what earlier runs appended, and append from here on

    @property
    def filled(self) -> list[Span]:
        """The sorted, merged [start, end) ranges held."""
        return self.held.spans

    def close(self) -> None:
        self.journal.close()
        if self._direct >= 0:
            os.close(self._direct)
            self._direct = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Delete the partial file and its sidecar (closed first)."""
        self.close()
        for path in (self.path, self.sidecar):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def discard(self) -> None:
        """Forget every byte: they failed verification or cannot be trusted."""
        self._reset()
        self.verifier = Verifier(self.desc.digest, self.desc.size)

    def _reset(self) -> None:
        os.ftruncate(self.fd, 0)
        self.held.clear()
        self.journal.remove()

    def save(self) -> None:
        """Rewrite the journal compactly (atomically) when out-of-order ranges exist; later
        writes are appended to it."""
        if not self.journal.needed:
            return
        with self._ranges_lock:  # a writer thread may be appending meanwhile
            self.journal.rewrite(self.held.spans)

    # ---- ranges -------------------------------------------------------------------------------

    @property
    def received(self) -> int:
        return self.held.received

    def prefix(self) -> int:
        """End of the contiguous range that starts at 0."""
        return self.held.prefix()

    def gap_end(self, pos: int) -> int:
        """Where the missing range that contains ``pos`` ends (the next filled byte, or size)."""
        return self.held.gap_end(pos)

    def missing(self) -> list[Span]:
        return self.held.missing()

    def will_write_out_of_order(self) -> None:
        """Called before a range that does not start at the prefix: the sidecar must exist
        first, or a crash would leave a sparse file that looks like a plain prefix."""
        if not self.journal.needed:
            self.journal.needed = True
            self.save()

    # ---- data ---------------------------------------------------------------------------------

    async def write(self, offset: int, chunks: Sequence[Chunk]) -> None:
        """Write ``chunks`` (consecutive) at ``offset``, in a worker thread."""
        await anyio.to_thread.run_sync(self.write_blocking, offset, chunks)

    def hash_ahead(self, offset: int, block: Chunk) -> bool:
        """Hash ``block`` now if it is next in order, before it is written (by a
        :class:`Staging`'s writer thread meanwhile); returns whether it was. Once hashed, no
        other write can change those bytes (see ``_write``), so writing them later is safe."""
        with self._hash_lock:
            if offset != self.verifier.count:
                return False
            self.verifier.update(block)
            return True

    def write_blocking(
        self,
        offset: int,
        chunks: Sequence[Chunk],
        *,
        aligned: bool = False,
        hashed: bool = False,
    ) -> None:
        """Write ``chunks`` at ``offset``: hashed on the way when in order, then claimed, and
        the prefix hashed on through any range that had arrived early. Thread-safe.

        ``aligned``: the one chunk starts at a page boundary in memory (a :class:`Staging`
        buffer), so it may be written with direct I/O. ``hashed``: ``hash_ahead`` took it."""
        length = sum(len(c) for c in chunks)
        if hashed:
            # Outside the hash lock: a writer of these bytes that held it before they were
            # hashed has written already (this write lands after it), one after is dropped.
            direct = self._put(offset, chunks, length, aligned)
        else:
            direct = self._write(offset, chunks, length, aligned)
        if not direct:
            writeback.written(self.fd, offset, offset + length)
        with self._ranges_lock:
            self.held.add(offset, offset + length)
            self.journal.append(offset, offset + length)  # in the file: now they may be claimed
        target = self.prefix()
        if target > self.verifier.count:
            self._hash_to(target)

    def _write(self, offset: int, chunks: Sequence[Chunk], length: int, aligned: bool) -> bool:
        """Returns whether the bytes went to the disk directly (nothing left to write back)."""
        # Writing and hashing under one lock: the bytes below the hashed prefix are the ones
        # the digest covers, so a later write there (pieces that overlap: a source honouring
        # one Range and ignoring another) is dropped, never allowed to change them.
        with self._hash_lock:
            skip = self.verifier.count - offset
            if skip >= length:
                return False
            if skip > 0:
                chunks, offset, length = _drop_front(chunks, skip), offset + skip, length - skip
                aligned = False
            direct = self._put(offset, chunks, length, aligned)
            if offset == self.verifier.count:  # in order: hash from memory, no re-read
                for chunk in chunks:
                    self.verifier.update(chunk)
            return direct

    def _put(self, offset: int, chunks: Sequence[Chunk], length: int, aligned: bool) -> bool:
        """The bytes into the file; returns whether they went to the disk directly."""
        direct = aligned and len(chunks) == 1 and offset % ALIGN == 0 and length % ALIGN == 0
        written = self._write_direct(offset, chunks[0]) if direct else 0
        if not written:
            # pwritev: one system call for the batch, and no copy to join the chunks first.
            written = os.pwritev(self.fd, chunks, offset)
        if written < length:  # short write (rare: signals, quotas): finish it plainly
            rest = memoryview(b"".join(chunks))[written:]
            while rest:
                done = os.pwrite(self.fd, rest, offset + written)
                rest, written = rest[done:], written + done
        return direct and self._direct_ok

    def _write_direct(self, offset: int, block: Chunk) -> int:
        """Bytes written with direct I/O (0: not possible here; the caller writes them)."""
        if not self._direct_ok:
            return 0
        try:
            with self._direct_lock:  # writers of several pieces, some outside the hash lock
                if self._direct < 0:
                    self._direct = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC | _O_DIRECT)
            return os.pwrite(self._direct, block, offset)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            self._direct_ok = False  # a filesystem without it (or other alignment rules)
            return 0

    async def catch_up(self) -> None:
        """Hash whatever of the contiguous prefix is not hashed yet (from the page cache)."""
        target = self.prefix()
        if target > self.verifier.count:
            await anyio.to_thread.run_sync(self._hash_to, target)

    def _hash_to(self, target: int) -> None:
        while True:
            with self._hash_lock:  # per chunk: writers of other ranges go on meanwhile
                if self.verifier.count >= target:
                    return
                want = min(READ_CHUNK, target - self.verifier.count)
                chunk = os.pread(self.fd, want, self.verifier.count)
                if not chunk:
                    raise StoreError(f"partial file {self.path} shrank while being read")
                self.verifier.update(chunk)

    async def finish(self, final: Path) -> None:
        """Verify size and digest, make it durable, move it under blobs/ (atomic rename). The
        rename itself is made durable by the caller, with one fsync of ``final``'s directory
        for all the blobs it writes, before anything points at them (``Layout.sync_blobs``)."""
        await self.catch_up()
        self.verifier.verify()
        await anyio.to_thread.run_sync(os.fsync, self.fd)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, final)
        self.journal.remove()


class Staging:
    """Gathers one stream's bytes into page-aligned blocks that end on ``ALIGN`` boundaries of
    the file, the shape direct I/O takes; what is left at the end is written plainly.

    Two buffers: while a writer thread writes one block (direct I/O waits ~0.4 ms per MiB on
    the disk), the stream hashes the next and fills the other, so a big layer that is the last
    one running costs its hashing and receiving, not those plus the disk's wait.
    """

    def __init__(self, ingest: Ingest, at: int) -> None:
        self.ingest = ingest
        self.at = at  # the file offset of the current buffer's first byte
        self.fill = 0
        self._buffers = [mmap.mmap(-1, BLOCK), mmap.mmap(-1, BLOCK)]  # anonymous: page-aligned
        self._views = [memoryview(buffer) for buffer in self._buffers]
        self._current = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xfer-write")
        self._pending: Future[None] | None = None

    def add(self, chunk: Chunk) -> None:
        """Append ``chunk`` (the next bytes of the stream), writing each block as it fills."""
        data = memoryview(chunk)
        while data:
            view = self._views[self._current]
            n = min(len(data), BLOCK - self.fill)
            view[self.fill : self.fill + n] = data[:n]
            self.fill, data = self.fill + n, data[n:]
            if self.fill == BLOCK:
                self.flush(whole=False)

    def flush(self, *, whole: bool = True) -> None:
        """Hand what is gathered to the writer: all of it (and wait until it is written), or
        (``whole=False``) up to the last aligned file offset, the rest moving to the other
        buffer."""
        end = self.at + self.fill
        cut = end if whole else end - end % ALIGN
        n = cut - self.at
        if n > 0:
            view = self._views[self._current]
            block = view[:n]
            hashed = self.ingest.hash_ahead(self.at, block)  # while the last block is written
            self._wait()  # the other buffer is free again
            self._pending = self._writer.submit(
                self.ingest.write_blocking, self.at, [block], aligned=True, hashed=hashed
            )
            rest = self.fill - n
            self._current = 1 - self._current
            if rest:  # < ALIGN bytes
                self._views[self._current][:rest] = view[n : self.fill]
            self.at, self.fill = cut, rest
        if whole:
            self._wait()

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # a failed write raises here, in the stream's thread

    def close(self) -> None:
        """Wait for the writer (a write never lands after its stream has returned)."""
        with contextlib.suppress(Exception):  # the stream's own error is the one reported
            self._wait()
        self._writer.shutdown(wait=True)
        # A failed write's traceback may still hold a slice of a buffer: then its memory is
        # freed with the last reference instead.
        for view, buffer in zip(self._views, self._buffers, strict=True):
            with contextlib.suppress(BufferError):
                view.release()
                buffer.close()


def _drop_front(chunks: Sequence[Chunk], skip: int) -> list[Chunk]:
    """``chunks`` without their first ``skip`` bytes (a rare path: overlapping pieces)."""
    kept: list[Chunk] = []
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        kept.append(chunk[skip:] if skip else chunk)
        skip = 0
    return kept
