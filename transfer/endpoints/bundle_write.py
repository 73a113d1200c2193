"""A bundle being written: one tar of many images, whose blobs arrive at once.

``ArchiveDestination`` writes a tar front to back, one blob at a time: a tar is serial. A bundle
holds a whole mirror set, read from its registries many blobs at once, so here every blob gets
its own region of the file when its transfer starts (header, bytes, padding: the descriptor
declares its size), and its bytes go into that region with ``pwrite`` as they arrive, in the
worker thread that reads them from the socket (the source's fast body, ``PumpedBody``), hashed
there too. No spool, no second copy: each byte is written once, and the tar is never the
bottleneck. Padding needs no write (a region's unwritten bytes read as zeros). A retried
transfer writes into the same region again; a blob that finally fails leaves its region
unfinished, and the bundle is then not committed (it appears only complete, as an archive).
Small members (directories, manifests, index documents) claim their region and write it whole.

Member order is the order transfers started, so it may differ from run to run; the contents and
the root digest do not (``index.json``'s: it names every image by digest, in order of name,
and every referrer in order of digest).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread

from .. import writeback
from ..digest import Digest, Verifier
from ..ingest import Chunk
from ..manifest import Descriptor, Manifest
from . import Opener, Progress, PumpedBody
from .archive_write import WRITE_BATCH, ArchiveDestination, TarWriter, tar_header
from .volumes import VolumeDestination

_BLOCK = 512
REPORT_EVERY = 0.1  # seconds between progress reports from a worker thread


def _padding(size: int) -> int:
    return -size % _BLOCK


class ParallelTar(TarWriter):
    """A tar written at claimed offsets (``pwrite``) by any number of threads at once; the
    position is where the next claim starts."""

    def __init__(self, target: Path) -> None:
        super().__init__(target)
        self.fd = self.handle.fileno()
        self._claims = threading.Lock()

    def claim(self, size: int) -> int:
        with self._claims:
            at = self.position
            self.position += size
            return at

    def pwrite(self, data: Chunk, at: int) -> None:
        view, start = memoryview(data), at
        while view:
            done = os.pwrite(self.fd, view, at)
            view, at = view[done:], at + done
        writeback.written(self.fd, start, at)  # as the sequential writer does, per region

    def _write(self, data: bytes) -> None:  # a header, or a whole small member: one claim
        self.pwrite(data, self.claim(len(data)))

    def add(self, name: str, data: bytes) -> None:
        self._write(tar_header(name, len(data)) + data + bytes(_padding(len(data))))

    def pad(self) -> None:
        raise AssertionError("a parallel tar pads each member in its own region")

    def rollback(self, position: int) -> None:
        raise AssertionError("a parallel tar rewrites a failed member's region instead")

    def finish(self) -> None:
        self._write(bytes(2 * _BLOCK))  # the end-of-archive marker
        os.fsync(self.fd)


class _BundleParts(ArchiveDestination):
    """What every bundle adds to an archive, written whole or as volumes: blobs the far side
    holds (``leave_out``, an incremental bundle) reported present and recorded in
    ``relied_on`` instead of written; ``annotations`` on index.json itself; images named in
    index.json in order of name; ``root``, index.json's digest once committed."""

    def _bundle(self, leave_out: set[Digest] | None) -> None:
        self.leave_out = leave_out or set()
        self.relied_on: dict[Digest, Descriptor] = {}
        self.annotations: dict[str, str] = {}
        self.root: Digest | None = None

    @property
    def docker(self) -> bool:
        # docker's manifest.json needs every layer in the file: not for an incremental bundle
        return self.format != "oci" and not self.relied_on

    async def has_blob(self, desc: Descriptor) -> bool:
        if desc.digest not in self._written and desc.digest in self.leave_out:
            self.relied_on.setdefault(desc.digest, desc)
            return True
        return await super().has_blob(desc)

    async def put_document(self, data: bytes) -> Descriptor:
        """One more blob of the bundle's own (its relies-on record)."""
        desc = Descriptor("application/octet-stream", Digest.of(data), len(data))
        if desc.digest not in self._written:
            self._written.add(desc.digest)
            await self._add(f"blobs/{desc.digest.algorithm}/{desc.digest.encoded}", data)
        return desc

    def _oci_index(self, top: dict[str, str] | None = None) -> bytes:
        # Images go in as their copies end, and their referrers as they are carried, in any
        # order: images in order of their names, referrers of their digests, so the same
        # images give the same index.json, and the same root digest.
        self._tagged.sort(key=lambda tagged: tagged[0])
        self._referrers = dict(sorted(self._referrers.items()))
        annotations = dict(sorted({**self.annotations, **(top or {})}.items()))
        raw = super()._oci_index(annotations or None)
        self.root = Digest.of(raw)
        return raw


class VolumeBundle(_BundleParts, VolumeDestination):
    """A bundle written as volumes (``--max-size``): one write at a time (volumes.py)."""

    def __init__(self, path: Path, max_size: int, leave_out: set[Digest] | None = None) -> None:
        super().__init__(path, max_size)
        self._bundle(leave_out)


class BundleDestination(_BundleParts):
    """One bundle file written with many blobs at once (``concurrent``: see the module
    docstring)."""

    concurrent = True
    tar_class = ParallelTar

    def __init__(self, path: Path, leave_out: set[Digest] | None = None) -> None:
        super().__init__(path, None)
        self._bundle(leave_out)
        self._regions: dict[Digest, tuple[int, int]] = {}  # digest → (header at, data at)
        self._busy: dict[Digest, anyio.Event] = {}

    async def start(self) -> None:
        """Open the file before transfers run at once (the first member, the directories)."""
        tar = await self._writer()
        await self._directories(tar, "blobs/sha256/x")

    async def _directories(self, tar: TarWriter, name: str) -> None:
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth]) + "/"
            if directory not in self._dirs:
                self._dirs.add(directory)  # before the write: another task must not add it too
                await self._io(tar.header, directory, 0, True)

    async def put_blob(self, desc: Descriptor, opener: Opener, progress: Progress) -> int:
        digest = desc.digest
        while (busy := self._busy.get(digest)) is not None:
            await busy.wait()  # another image's transfer of the same blob
        if digest in self._written:
            return 0
        done = self._busy[digest] = anyio.Event()
        try:
            received = await self._fill(desc, opener, progress)
            self._written.add(digest)
            return received
        finally:
            del self._busy[digest]
            done.set()

    async def _region(self, desc: Descriptor) -> int:
        """Where the blob's bytes go: its region, claimed (and its header written) once."""
        region = self._regions.get(desc.digest)
        if region is None:
            tar = await self._writer()
            assert isinstance(tar, ParallelTar)
            name = f"blobs/{desc.digest.algorithm}/{desc.digest.encoded}"
            await self._directories(tar, name)
            header = tar_header(name, desc.size)
            at = tar.claim(len(header) + desc.size + _padding(desc.size))
            region = self._regions[desc.digest] = (at, at + len(header))
            await self._io(tar.pwrite, header, at)
        return region[1]

    async def _fill(self, desc: Descriptor, opener: Opener, progress: Progress) -> int:
        tar = await self._writer()
        assert isinstance(tar, ParallelTar)
        start = await self._region(desc)
        verifier = Verifier(desc.digest, desc.size)
        written = 0

        def put(chunk: Chunk) -> None:  # in a worker thread: hash, then write in place
            nonlocal written
            verifier.update(chunk)  # refuses bytes past the declared size before the write
            tar.pwrite(chunk, start + written)
            written += len(chunk)

        async with opener(0, None) as body:
            if isinstance(body, PumpedBody):
                await _pump(body, put, progress)
            else:
                batch = bytearray()
                async for chunk in body:
                    progress(len(chunk))
                    batch += chunk
                    if len(batch) >= WRITE_BATCH:
                        await self._io(put, bytes(batch))
                        batch.clear()
                await self._io(put, bytes(batch))
        verifier.verify()
        return written

    async def put_manifest(self, manifest: Manifest, tag: str | None) -> None:
        if manifest.digest not in self._written:
            self._written.add(manifest.digest)  # before the write: two images may share it
            await self._add(
                f"blobs/{manifest.digest.algorithm}/{manifest.digest.encoded}", manifest.raw
            )
        await super().put_manifest(manifest, tag)  # named (the bytes went in just above)


async def _pump(body: PumpedBody, put: Any, progress: Progress) -> None:
    """The body read by one worker thread, each piece hashed and written there; progress
    reported to the event loop a few times a second."""
    unreported = 0
    last = time.monotonic()

    def sink(chunk: Chunk) -> bool:
        nonlocal unreported, last
        put(chunk)
        unreported += len(chunk)
        if time.monotonic() - last >= REPORT_EVERY:
            now, unreported, last = unreported, 0, time.monotonic()
            anyio.from_thread.run_sync(progress, now)
        return True

    try:
        await body.pump(sink)
    finally:
        if unreported:
            progress(unreported)
