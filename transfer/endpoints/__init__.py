"""Endpoints: the sources and destinations that the one copy pipeline moves images between.

registry.py   a repository in a registry (distribution API)
layout.py     an OCI image layout directory: the local store, and ``oci:``
archive_read.py, archive_write.py   docker and OCI tars
transports.py the table from an address kind to what opens its Source and Destination
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from ..digest import Digest, Verifier
from ..errors import StoreError
from ..ingest import Chunk
from ..manifest import Descriptor, Manifest
from ..referrers import Referrer

# opener(offset, end): the blob's bytes from offset, to end (exclusive) when given
Opener = Callable[[int, int | None], AbstractAsyncContextManager[AsyncIterable[bytes]]]
Progress = Callable[[int], None]
Sink = Callable[[Chunk], bool]  # called in the worker thread; False: stop reading


@runtime_checkable
class PumpedBody(Protocol):
    """A blob body (what ``open_blob`` yields) that can also be read the fast way: ``pump``
    reads it whole in one worker thread and hands every piece to ``sink`` there, so a reader
    hashes and writes each piece while it is still in the CPU cache (body.py). Every body is
    an async iterable of bytes; one that can do this offers it, and a destination that can
    use it (fetch.py) takes it, whatever the source."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def pump(self, sink: Sink) -> None:
        """Read the body to its end (or until ``sink`` returns False); cancelled, stop the
        thread before returning, so no call of ``sink`` lands after."""
        ...


@runtime_checkable
class BlockingChunks(Protocol):
    """A blob body a worker thread can read itself, piece by piece: the other way round from
    ``pump`` (which pushes into a sink), for a thread that pulls what it sends (an upload's
    request body sent by the blocking client, registry.py). A piece lives in a reused buffer:
    valid until the next is asked for."""

    def blocking_chunks(self) -> Iterator[Chunk]: ...


@runtime_checkable
class Source(Protocol):
    """Where an image is read from."""

    name: str  # for messages: the full reference or path

    @property
    def local(self) -> str | None:
        """Where on this machine the bytes are read from (a layout's directory, an archive),
        None for a registry: there a blob that does not match its digest is damage, which no
        retry mends, not a transfer that went wrong on the way."""
        ...

    async def get_manifest(self, identifier: str | Digest) -> Manifest: ...

    def open_blob(
        self, desc: Descriptor, offset: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterable[bytes]]:
        """The blob's bytes from ``offset`` (to ``end`` exclusive); ``RangeIgnored`` if ``end``
        cannot be honoured."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class PartialSource(Protocol):
    """A source that may hold an index without all of its children: an archive exported for
    one platform (``ctr images export``, Docker 25's ``docker save``), or a store it was loaded
    into. It says which children it lacks, so a copy can name them instead of failing on the
    first missing file."""

    def absent(self, index: Manifest) -> list[Descriptor]:
        """The children of ``index`` whose manifests this source does not hold."""
        ...


@runtime_checkable
class Destination(Protocol):
    """Where an image is written to."""

    name: str
    concurrent: bool  # False for a tar being written: blobs then go one at a time

    async def has_blob(self, desc: Descriptor) -> bool: ...

    async def put_blob(self, desc: Descriptor, opener: Opener, progress: Progress) -> int:
        """Store a blob read through ``opener(offset)``, verified; returns bytes received."""
        ...

    async def put_manifest(self, manifest: Manifest, tag: str | None) -> None: ...

    async def commit(self) -> None:
        """Make what was written visible, once, after every image went in (an archive is
        renamed into place); called by whoever opened the destination (transports.py)."""
        ...

    async def aclose(self) -> None:
        """Release what it holds; without a commit, remove what it wrote that is not whole."""
        ...


@runtime_checkable
class ReferrerSource(Protocol):
    """A source that can say what refers to a manifest it holds (referrers.py)."""

    async def get_referrers(self, subject: Descriptor) -> list[Referrer]:
        """What refers to ``subject`` directly (not recursively: a caller asks again for the
        referrers of each referrer): by ``subject`` (the referrers API, the fallback tag, a
        layout's index entries) and by cosign's tag convention."""
        ...


@runtime_checkable
class ReferrerDestination(Protocol):
    """A destination that records referrers where readers look for them."""

    async def put_referrer(self, referrer: Referrer, manifest: Manifest) -> None:
        """Record ``manifest`` (already put by digest, its blobs first) as ``referrer``: a
        registry with the referrers API indexes it itself, one without gets the fallback tag
        index merged (never dropping another tool's entry); a layout lists it in index.json;
        a cosign referrer gets its tag."""
        ...


async def read_blob(source: Source, desc: Descriptor, cap: int, what: str = "blob") -> bytes:
    """A small blob (a config) whole, verified; one larger than ``cap`` is refused unread."""
    if desc.size > cap:
        raise StoreError(f"{what} {desc.digest} is larger than {cap} bytes")
    verifier = Verifier(desc.digest, desc.size, what=what)
    body = bytearray()
    async with source.open_blob(desc) as chunks:
        async for chunk in chunks:
            verifier.update(chunk)
            body += chunk
    verifier.verify()
    return bytes(body)
