"""An OCI image layout on disk: the local store, and the ``oci:`` endpoint.

Content-addressed: ``blobs/<alg>/<hex>`` holds each blob once, for every image that uses it.
Work in progress lives under ``.xfer/`` (partials, locks), never under ``blobs/``: a file appears
there only by atomic rename after its size and digest were verified (reliability case 39).

A partial download is plain bytes in ``.xfer/partials/<alg>-<hex>``. Resuming re-hashes that
prefix and asks the source for the rest, so a resume survives Ctrl-C, kill -9 and reboots with
no journal to corrupt. One file lock per blob makes concurrent xfer processes share the work.

index.json is what other tools read, so it names only what OCI readers understand: a Docker
schema 2 image's entry points at its OCI view and names the original (``transfer.ociview``),
which ``find`` returns, so xfer pushes and saves the bytes whose digest a registry knows. An
index stored without some children (``xfer load`` of a one-platform export) says which.
Referrers (signatures, SBOMs) are entries too, as oras lists them: without a name, or under
their cosign tag (``layout_referrers``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import struct
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from .. import jsonio
from ..digest import Digest, Verifier
from ..durable import atomic_write, create_once, fsync_dir, remove_dead_temporaries
from ..errors import (
    IntegrityError,
    ManifestError,
    NetworkError,
    RangeError,
    StoreError,
    TransferError,
)
from ..fetch import RangePolicy, fill
from ..ingest import Chunk, Ingest
from ..localfile import open_regular, read_capped, read_upto
from ..manifest import MAX_MANIFEST_BYTES, Descriptor, Manifest
from ..ociview import ORIGINAL, is_view_of, needs_view, original_type, views
from ..referrers import Referrer
from ..space import Claim, free_bytes
from . import Opener, Progress
from .layout_referrers import (
    REF_NAME as REF_NAME,
)
from .layout_referrers import (
    Listing,
    cosign_name,
    list_referrers,
    referrer_entry,
    subject_of,
)

# On an index.json entry: the children of an index that were deliberately not stored (it came
# from an archive exported for some platforms only), comma-separated digests. verify does not
# call them missing; a copy of the whole index names them (see ``LayoutSource.absent``).
ABSENT = "dev.xfer.absent"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
READ_CHUNK = 1 << 20
BLOCKING_READ = 128 << 10  # a worker thread's reads: small enough to stay in the CPU cache
# index.json lists one descriptor per tag (~300-500 bytes with its annotations): 64 MiB is over
# 100,000 tags, far beyond any store or layout seen, while parsing it stays within a few
# hundred MiB of memory. What is larger is refused without being read.
MAX_INDEX_BYTES = 64 << 20
SMALL_BLOB = 1 << 20  # blobs up to this size skip partial files


class Layout:
    """An OCI image layout directory; creating one on first write."""

    def __init__(self, root: Path | str, ranges: RangePolicy | None = None) -> None:
        self.root = Path(root)
        self.work = self.root / ".xfer"
        self.ranges = ranges or RangePolicy()
        self._ensured = False  # the directories exist: checked once per run, not per blob
        # Blobs are renamed into place without an fsync of their directory each (one per blob
        # was a third of a small-blob pull's disk waits); it is synced once before the index
        # that points at them is written.
        self._unsynced: set[Path] = set()

    # ---- structure ----------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether ``oci-layout`` is there; it must be a regular file (a link or a FIFO in an
        untrusted directory is refused, naming it). Its content is never read."""
        path = self.root / "oci-layout"
        try:
            mode = path.lstat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat.S_ISREG(mode):
            raise StoreError(f"{path} is not a regular file")
        return True

    def ensure(self) -> None:
        if self._ensured:
            return
        try:
            for sub in ("blobs/sha256", ".xfer/partials", ".xfer/locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if not (self.root / "oci-layout").exists():
                create_once(self.root / "oci-layout", json.dumps(LAYOUT_VERSION).encode())
            if not (self.root / "index.json").exists():  # another xfer may be creating it too
                create_once(self.root / "index.json", _index_bytes([]))
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.root}: {exc.strerror}") from None
        # A small blob's or the index's write killed midway leaves its temporary: cleared by
        # the next run (once: ~two directory listings), not by a gc a day later.
        remove_dead_temporaries(self.work / "partials")
        remove_dead_temporaries(self.root)
        self._ensured = True

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.encoded

    def _partial_path(self, digest: Digest) -> Path:
        return self.work / "partials" / f"{digest.algorithm}-{digest.encoded}"

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Held (shared) by every writer for its whole run, so gc never runs under it."""
        with self._store_lock(shared=True):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held by gc: no pull is between writing its blobs and tagging its image."""
        with self._store_lock(shared=False):
            yield

    @contextlib.contextmanager
    def _store_lock(self, *, shared: bool) -> Iterator[None]:
        """Shared: waits for gc to finish. Exclusive: fails at once if a writer holds it."""
        self.ensure()
        lock = _FileLock(self.work / "store.lock")
        if not lock.acquire(shared=shared, blocking=shared):
            raise StoreError(
                f"the store {self.root} is in use by another xfer process",
                hint="try again when it has finished",
            )
        try:
            yield
        finally:
            lock.release()

    def _lock(self, name: str) -> _FileLock:
        return _FileLock(self.work / "locks" / f"{name}.lock")

    def _blob_lock(self, digest: Digest) -> _FileLock:
        if _RangeLock.supported:
            return _RangeLock(self.work / "locks" / "blobs.lock", int(digest.encoded[:15], 16))
        return self._lock(f"{digest.algorithm}-{digest.encoded}")

    # ---- blobs --------------------------------------------------------------------------------

    def has_blob(self, desc: Descriptor) -> bool:
        """A complete blob: a regular file (never a symlink) of the descriptor's size."""
        try:
            st = self.blob_path(desc.digest).lstat()
        except (FileNotFoundError, NotADirectoryError):
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == desc.size

    def read_blob(self, desc: Descriptor, *, cap: int | None = None) -> bytes:
        """A small blob (manifest, config) read whole and verified."""
        if cap is not None and desc.size > cap:
            raise StoreError(f"blob {desc.digest} is larger than {cap} bytes")
        try:
            fd = open_regular(self.blob_path(desc.digest), f"blob {desc.digest} in {self.root}")
        except FileNotFoundError:
            raise StoreError(
                f"blob {desc.digest} is missing from {self.root}", digest=str(desc.digest)
            ) from None
        try:
            data = read_upto(fd, desc.size + 1)  # one byte more shows a longer file
        finally:
            os.close(fd)
        verifier = Verifier(desc.digest, desc.size)
        try:
            verifier.update(data)
            verifier.verify()
        except TransferError as exc:
            raise StoreError(
                f"store {self.root} is corrupt: {exc}", digest=str(desc.digest)
            ) from None
        return data

    @asynccontextmanager
    async def open_blob(
        self, desc: Descriptor, offset: int = 0, end: int | None = None
    ) -> AsyncIterator[AsyncIterable[bytes]]:
        try:  # no-follow: a blob swapped for a symlink after a check is still refused
            fd = open_regular(self.blob_path(desc.digest), f"blob {desc.digest} in {self.root}")
        except FileNotFoundError:
            raise StoreError(
                f"blob {desc.digest} is missing from {self.root}", digest=str(desc.digest)
            ) from None
        try:
            handle = await anyio.open_file(fd, "rb")
        except BaseException:  # cancelled before the file object owned the descriptor
            os.close(fd)
            raise
        try:
            await handle.seek(offset)
            yield _read_chunks(handle, (desc.size if end is None else end) - offset)
        finally:
            await handle.aclose()

    def put_bytes(self, desc: Descriptor, data: bytes) -> None:
        """Store a small blob already in memory (manifests, configs), verified first."""
        if self.has_blob(desc):
            return
        verifier = Verifier(desc.digest, desc.size)
        verifier.update(data)
        verifier.verify()
        self.ensure()
        self._write_blob(desc, data)

    async def put_blob(self, desc: Descriptor, opener: Opener, progress: Progress) -> int:
        """Fetch a blob through ``opener`` unless present; returns bytes received."""
        if self.has_blob(desc):
            return 0
        self.ensure()
        # One writer per blob across processes: a second pull waits and then finds it done.
        lock = self._blob_lock(desc.digest)
        await _acquire(lock)
        try:
            if self.has_blob(desc):  # another process finished it while we waited
                return 0
            if desc.size <= SMALL_BLOB:
                return await self._download_small(desc, opener, progress)
            return await self._download(desc, opener, progress)
        finally:
            lock.release()

    async def _download_small(self, desc: Descriptor, opener: Opener, progress: Progress) -> int:
        """A small blob is verified in memory and written in one go: no partial file, since
        resuming would save little and the large-blob machinery costs more than it saves."""
        verifier = Verifier(desc.digest, desc.size)
        body = bytearray()
        async with opener(0, None) as chunks:
            async for chunk in chunks:
                verifier.update(chunk)  # raises as soon as the body runs past its size
                body += chunk
        if len(body) < desc.size:
            raise NetworkError(
                f"blob {desc.digest} ended after {len(body)} of {desc.size} bytes",
                digest=str(desc.digest),
            )
        verifier.verify()
        data = bytes(body)
        await anyio.to_thread.run_sync(self._write_blob, desc, data)
        progress(len(data))
        return len(data)

    def _write_blob(self, desc: Descriptor, data: bytes) -> None:
        path = self.blob_path(desc.digest)
        atomic_write(path, data, tmp_dir=self.work / "partials", sync_dir=False)
        self._unsynced.add(path.parent)

    def sync_blobs(self) -> None:
        """Make the renames of the blobs written so far durable (before anything points at
        them), and those of blobs other processes wrote that we are about to point at."""
        for directory in {self.root / "blobs" / "sha256", *self._unsynced}:
            with contextlib.suppress(FileNotFoundError):
                fsync_dir(directory)
        self._unsynced.clear()

    async def _download(self, desc: Descriptor, opener: Opener, progress: Progress) -> int:
        ingest = Ingest(self._partial_path(desc.digest), desc)
        try:
            ingest.open()
            # The declared size must fit before a byte is fetched: a registry declaring more
            # than the disk holds (or streaming garbage) can no longer fill it.
            try:
                room = Claim(
                    ingest.path.parent,
                    lambda: desc.size - ingest.received,
                    f"blob {desc.digest}",
                    self.root,
                )
            except StoreError:
                if not ingest.received:
                    ingest.remove()  # nothing to resume: leave no empty partial behind
                raise
            with room:
                if ingest.received:
                    progress(ingest.received)  # what earlier attempts or runs left us
                try:
                    await ingest.catch_up()  # re-hash the prefix we already have
                    received = await fill(ingest, opener, progress, self.ranges)
                    final = self.blob_path(desc.digest)
                    await ingest.finish(final)
                    self._unsynced.add(final.parent)
                except (IntegrityError, RangeError):
                    ingest.discard()  # these bytes are worthless; never resume from them
                    raise
                return received
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):  # the progress reader hung up, not the disk
                raise
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            # Disk full (something else took the space it had when it started), quota,
            # permissions: what was written stays a resumable partial; say what it needs.
            needs = ""
            if full:
                with contextlib.suppress(OSError):
                    free = free_bytes(ingest.path.parent)
                    needs = f"; it needs {desc.size - ingest.received} more bytes, {free} are free"
            raise StoreError(
                f"cannot write blob {desc.digest} to {self.root}: {exc.strerror or exc}{needs}",
                digest=str(desc.digest),
                hint="free some space and run again; the download resumes "
                "(xfer gc --partials drops it)"
                if full
                else None,
            ) from None
        finally:
            ingest.close()

    # ---- index.json ---------------------------------------------------------------------------

    def read_index(self) -> list[Descriptor]:
        path = self.root / "index.json"
        try:
            raw = read_capped(path, MAX_INDEX_BYTES, str(path))
        except FileNotFoundError:
            return []
        try:
            data = jsonio.loads(raw)
            return [Descriptor.from_json(entry) for entry in data.get("manifests") or []]
        except (ValueError, AttributeError, TransferError) as exc:
            raise StoreError(f"{path} is not a valid OCI index: {exc}") from None

    def find(self, name: str) -> Descriptor | None:
        """The manifest ``name`` stands for, as xfer reads it: a Docker original, not its view."""
        for desc in self.read_index():
            if desc.annotations.get(REF_NAME) == name:
                return self.resolve(desc)
        return None

    def resolve(self, desc: Descriptor) -> Descriptor:
        """An index.json entry that points at an OCI view (``transfer.ociview``): the Docker
        original it names, when that is stored; any other entry as it is."""
        text = desc.annotations.get(ORIGINAL)
        if text is None:
            return desc
        try:
            digest = Digest.parse(text)
            st = self.blob_path(digest).lstat()
        except (TransferError, OSError):
            return desc  # not ours, or damaged: the view itself is still a readable image
        if not stat.S_ISREG(st.st_mode):
            return desc
        annotations = {k: v for k, v in desc.annotations.items() if k != ORIGINAL}
        original = Descriptor(original_type(desc.media_type), digest, st.st_size, (), annotations)
        try:
            if is_view_of(self.get_manifest(desc), self.get_manifest(original), self._stored):
                return original
        except TransferError:
            pass
        return desc

    def get_manifest(self, desc: Descriptor) -> Manifest:
        raw = self.read_blob(desc, cap=MAX_MANIFEST_BYTES)
        return Manifest.from_bytes(raw, desc.media_type, expected=desc.digest)

    @contextlib.contextmanager
    def _index_locked(self) -> Iterator[list[Descriptor]]:
        self.ensure()
        self.sync_blobs()
        with self._lock("index"):
            entries = self.read_index()
            yield entries
            atomic_write(self.root / "index.json", _index_bytes(entries))

    def set_reference(
        self, name: str, manifest: Manifest, extra: dict[str, str] | None = None
    ) -> None:
        """Point ``name`` at a manifest whose blobs are all stored already (for an index: the
        children that are not are recorded as absent)."""
        self.set_references([name], manifest, extra)

    def set_references(
        self,
        names: Sequence[str],
        manifest: Manifest,
        extra: dict[str, str] | None = None,
        *,
        replace: bool = True,
    ) -> dict[str, Digest]:
        """``set_reference`` for every one of ``names``, in one update of index.json (an archive
        may name one image thousands of times: one rewrite and fsync each was quadratic).
        ``replace`` False: a name that names another manifest already keeps it, decided under
        the index lock; those names are returned, with the digest each keeps."""
        wanted = dict.fromkeys(names)
        annotations = dict(extra or {})
        absent = self.absent(manifest) if manifest.is_index else []
        if absent:
            annotations[ABSENT] = ",".join(str(d.digest) for d in absent)
        entry = manifest
        if needs_view(manifest):
            # OCI-only readers (skopeo's oci:, umoci) see the view; xfer reads the original.
            for view in views(manifest, self._stored):
                self.put_bytes(view.descriptor(), view.raw)
                entry = view
            annotations[ORIGINAL] = str(manifest.digest)
        same = {entry.digest, manifest.digest}
        with self._index_locked() as entries:
            held = {
                name: e.digest
                for e in ([] if replace else entries)
                if (name := e.annotations.get(REF_NAME)) in wanted and e.digest not in same
            }
            setting = [n for n in wanted if n not in held]
            named = [entry.descriptor(annotations={**annotations, REF_NAME: n}) for n in setting]
            gone = set(setting)
            entries[:] = [e for e in entries if e.annotations.get(REF_NAME) not in gone] + named
        return held

    def _stored(self, desc: Descriptor) -> Manifest | None:
        return self.get_manifest(desc) if self.has_blob(desc) else None

    def absent(self, index: Manifest) -> list[Descriptor]:
        """The children of ``index`` whose manifests the layout does not hold."""
        return [d for d in index.index().manifests if not self.has_blob(d)]

    def remove_reference(self, name: str) -> bool:
        """Drop the entry named ``name``; a bare digest also drops an unnamed entry of that
        digest (a referrer that cannot be read, which gc cannot place, can so be removed)."""

        def named(entry: Descriptor) -> bool:
            own = entry.annotations.get(REF_NAME)
            return own == name or (own is None and str(entry.digest) == name)

        with self._index_locked() as entries:
            before = len(entries)
            entries[:] = [e for e in entries if not named(e)]
            return len(entries) != before

    # ---- referrers ----------------------------------------------------------------------------

    def add_referrer(self, entry: Descriptor) -> None:
        """List a stored manifest with a subject in index.json, unnamed (once per digest)."""
        with self._index_locked() as entries:
            if not any(e.digest == entry.digest and REF_NAME not in e.annotations for e in entries):
                entries.append(entry)

    def listing(self, entries: Sequence[Descriptor] | None = None) -> Listing:
        """What index.json says about referrers: each unnamed entry's manifest read once."""
        return list_referrers(self.read_index() if entries is None else entries, self.get_manifest)

    def drop_entries(self, keep: Callable[[Descriptor], bool]) -> int:
        """Remove the index.json entries ``keep`` refuses (gc: referrers whose subject went)."""
        if all(keep(e) for e in self.read_index()):
            return 0  # nothing to drop: index.json is not rewritten
        with self._index_locked() as entries:
            before = len(entries)
            entries[:] = [e for e in entries if keep(e)]
            return before - len(entries)


def _read_chunks(handle: Any, length: int) -> _FileChunks:
    return _FileChunks(handle, length)


class _FileChunks:
    """``length`` bytes of a stored blob from the handle's position: iterated on the event
    loop (a thread hop per MiB), or read by a worker thread that sends them on itself (an
    upload: ``blocking_chunks``, the registry destination's fast path)."""

    def __init__(self, handle: Any, length: int) -> None:
        self._handle = handle  # an anyio AsyncFile over a file opened "rb"
        self._length = length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        left = self._length
        while left > 0 and (chunk := await self._handle.read(min(READ_CHUNK, left))):
            left -= len(chunk)
            yield chunk

    def blocking_chunks(self) -> Iterator[Chunk]:
        """Each piece read into one reused buffer (valid until the next is asked for)."""
        file = self._handle.wrapped
        buf = memoryview(bytearray(BLOCKING_READ))
        left = self._length
        while left > 0 and (got := file.readinto(buf[: min(len(buf), left)])):
            left -= got
            yield buf[:got]


def _index_bytes(entries: list[Descriptor]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [e.to_json() for e in entries],
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


class _FileLock:
    """``flock(2)`` on a lock file: one holder at a time, across processes and across the tasks
    of this one (each holder opens its own descriptor). Closing the descriptor releases it, and
    the kernel releases it when a holder dies, so a killed pull never leaves a stale lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def acquire(self, *, shared: bool = False, blocking: bool = True) -> bool:
        """Returns False, holding nothing, when ``blocking`` is off and another holds it."""
        fd = self._open()
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def _open(self) -> int:
        # No-follow: a link planted at the name would have its target created and opened.
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise StoreError(
                f"the lock file {self.path} is a symbolic link: not followed",
                hint="remove it; xfer creates it again",
            ) from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> _FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _RangeLock(_FileLock):
    """One byte of one shared lock file per blob, locked with Linux's open-file-description
    locks: as ``flock`` (per descriptor, released on close or death), but without creating a
    lock file per blob — creating one waited on the journal behind the other blobs' fsyncs,
    on the event loop."""

    supported = hasattr(fcntl, "F_OFD_SETLK") and sys.platform.startswith("linux")

    def __init__(self, path: Path, offset: int) -> None:
        super().__init__(path)
        self.offset = offset  # the first 60 bits of the digest: a clash only serialises two

    def acquire(self, *, shared: bool = False, blocking: bool = True) -> bool:
        fd = self._open()
        kind = fcntl.F_RDLCK if shared else fcntl.F_WRLCK
        # struct flock on LP64 Linux: type, whence, start, len, pid (0 for these locks), padding
        request = struct.pack("hhqqi4x", kind, os.SEEK_SET, self.offset, 1, 0)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if blocking else fcntl.F_OFD_SETLK, request)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True


async def _acquire(lock: _FileLock) -> None:
    """Wait for a file lock without blocking the event loop (and stay cancellable)."""
    delay = 0.01
    while not lock.acquire(blocking=False):
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.25)


class LayoutSource:
    """An image of a layout, found by its ``org.opencontainers.image.ref.name``."""

    def __init__(self, layout: Layout, ref_name: str) -> None:
        self.layout = layout
        self.name = ref_name
        self.local = str(layout.root)
        self._listing: Listing | None = None  # read on the first question, once per source

    async def get_referrers(self, subject: Descriptor) -> list[Referrer]:
        """From index.json: unnamed entries whose manifest names ``subject``, cosign tags in
        this image's repository (bare ones in an ``oci:`` layout), a fallback tag's index."""
        if self._listing is None:
            self._listing = await anyio.to_thread.run_sync(self.layout.listing)
        return self._listing.referrers(subject.digest, self.name)

    async def get_manifest(self, identifier: str | Digest) -> Manifest:
        if isinstance(identifier, Digest):
            for desc in self.layout.read_index():
                if desc.digest == identifier:
                    return self.layout.get_manifest(desc)
            path = self.layout.blob_path(identifier)
            if not path.is_file():
                raise StoreError(
                    f"manifest {identifier} is not in the store {self.layout.root}",
                    reference=self.name,
                    hint="xfer images lists what it holds",
                )
            return self.layout.get_manifest(Descriptor("", identifier, path.stat().st_size))
        found = self.layout.find(identifier)
        if found is None:
            raise StoreError(
                f"image {identifier} is not in the store {self.layout.root}",
                reference=identifier,
                hint="xfer images lists what it holds",
            )
        return self.layout.get_manifest(found)

    def absent(self, index: Manifest) -> list[Descriptor]:
        return self.layout.absent(index)

    def open_blob(
        self, desc: Descriptor, offset: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterable[bytes]]:
        return self.layout.open_blob(desc, offset, end)

    async def aclose(self) -> None:
        return None


def _is_entry_of(entry: Descriptor, digest: Digest) -> bool:
    """An index.json entry of that manifest: itself, or the OCI view of it (``ORIGINAL``)."""
    return entry.digest == digest or entry.annotations.get(ORIGINAL) == str(digest)


class LayoutDestination:
    """Writes blobs with resume; the reference is set last, once everything it needs is stored."""

    concurrent = True

    def __init__(self, layout: Layout, ref_name: str | None, extra: dict[str, str] | None = None):
        self.layout = layout
        self.name = ref_name or str(layout.root)
        self.ref_name = ref_name
        self.extra = extra or {}

    async def has_blob(self, desc: Descriptor) -> bool:
        return self.layout.has_blob(desc)

    async def put_blob(self, desc: Descriptor, opener: Opener, progress: Progress) -> int:
        return await self.layout.put_blob(desc, opener, progress)

    async def put_manifest(self, manifest: Manifest, tag: str | None) -> None:
        self.layout.put_bytes(manifest.descriptor(), manifest.raw)
        if tag is None:
            return
        subject = subject_of(manifest)
        if subject is not None:
            # An artifact about another manifest (an SBOM asked for by its tag) is kept as
            # what it is, a referrer of its subject, never as an image of its own: gc then
            # drops it with its subject, and no image list shows it.
            self.layout.add_referrer(
                referrer_entry(Referrer(manifest.descriptor(), subject), manifest)
            )
            return
        self.layout.set_reference(tag, manifest, self.extra)

    async def has_referrer(self, referrer: Referrer) -> bool:
        """Stored and listed where ``put_referrer`` lists it (a rerun then writes nothing).
        A cosign tag naming another manifest here raises ``ManifestError`` (see ``_held``):
        the copy says so and carries nothing of the source's."""
        digest = referrer.descriptor.digest
        entries = self.layout.read_index()
        name = None
        if referrer.tag is not None:
            name = cosign_name(self.ref_name, referrer.tag)
            held = next((e for e in entries if e.annotations.get(REF_NAME) == name), None)
            if held is not None and not _is_entry_of(held, digest):
                raise self._held(name, held.digest, digest)
        if not self.layout.has_blob(referrer.descriptor):
            return False
        return any(_is_entry_of(e, digest) and e.annotations.get(REF_NAME) == name for e in entries)

    async def put_referrer(self, referrer: Referrer, manifest: Manifest) -> None:
        """A referrer with a subject becomes an unnamed index.json entry; a cosign one keeps
        its tag, in this image's repository where names are full references (the store),
        unless the tag names another manifest here (``ManifestError``, nothing named)."""
        self.layout.put_bytes(manifest.descriptor(), manifest.raw)
        if referrer.tag is not None:
            name = cosign_name(self.ref_name, referrer.tag)
            held = self.layout.set_references([name], manifest, replace=False)
            if name in held:
                raise self._held(name, held[name], manifest.digest)
        else:
            self.layout.add_referrer(referrer_entry(referrer, manifest))

    def _held(self, name: str, held: Digest, digest: Digest) -> ManifestError:
        """cosign keeps every signature (attestation, SBOM) of an image in the one manifest
        under its tag: one held here (the site's own signatures maybe) is left as it is, as
        ``cosign copy`` leaves it without -f, never merged (a manifest no tool signed off)."""
        return ManifestError(
            f"the tag {name} in {self.layout.root} names another manifest, {held}: left as it "
            "is (cosign keeps all of an image's signatures in that one manifest; the source's "
            "are not merged into it)",
            digest=str(digest),
        )

    async def commit(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
