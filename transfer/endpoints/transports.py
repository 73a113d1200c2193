"""Endpoints as transports: one table from an address kind to what opens its Source and its
Destination.

Each opening is an async context manager, so no caller needs to know which endpoint it holds:
the locks it needs are taken on entry (the store's in-use lock: gc never runs under a read or a
write), ``commit`` runs when the block ends without error (an archive appears only complete,
after every image went in), and everything is closed on the way out (a half-written archive is
removed). A new endpoint kind (a bundle, a layout as a mirror target) is one entry in
``TRANSPORTS``; addresses are parsed in one place, address.py.

    async with open_source(address, context) as reading, open_destination(...) as writing:
        await copy_image(reading.source, writing.destination, reading.identifier, writing.tag, …)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..digest import Digest
from ..errors import StoreError, UsageError
from ..progress import Emit, ignore
from ..reference import parse
from . import Destination, Source
from .address import Address
from .layout import REF_NAME, Layout, LayoutDestination, LayoutSource
from .registry import RegistryDestination

if TYPE_CHECKING:
    from ..api import Settings
    from ..session import Session


@dataclass(frozen=True)
class Context:
    """What opening an endpoint may need from the run."""

    session: Session
    settings: Settings  # the side's own (a copy's source and destination may differ)
    emit: Emit = ignore


@dataclass(frozen=True)
class Reading:
    source: Source
    identifier: str | Digest  # what to ask ``get_manifest`` for ("": an archive's only image)


@dataclass(frozen=True)
class Writing:
    destination: Destination
    tag: str | None  # the name the image gets there (None: by digest only)


@dataclass(frozen=True)
class Origin:
    """Where the image written comes from: it names an archive's image or a layout's, and
    tells a registry which repository to mount blobs from."""

    address: Address | None = None
    mounts: dict[Digest, str] | None = field(default=None, compare=False)


class Transport(Protocol):
    def source(self, address: Address, context: Context) -> AbstractAsyncContextManager[Reading]:
        """The image ``address`` names, readable until the block ends."""
        ...

    def destination(
        self, address: Address, context: Context, origin: Origin
    ) -> AbstractAsyncContextManager[Writing]:
        """Where ``address`` says to write; committed when the block ends without error."""
        ...


@asynccontextmanager
async def _reading(source: Source, identifier: str | Digest) -> AsyncIterator[Reading]:
    async with contextlib.aclosing(source):
        yield Reading(source, identifier)


@asynccontextmanager
async def _writing(destination: Destination, tag: str | None) -> AsyncIterator[Writing]:
    async with contextlib.aclosing(destination):  # on an error: the destination cleans up
        yield Writing(destination, tag)
        await destination.commit()


class RegistryTransport:
    """``docker://REF`` or a bare ``REF``: a repository of a registry, through the session's
    client for its host (configured mirrors first when reading)."""

    def source(self, address: Address, context: Context) -> AbstractAsyncContextManager[Reading]:
        ref = address.reference
        assert ref is not None
        source = context.session.source(ref, context.emit, settings=context.settings)
        return _reading(source, ref.identifier)

    def destination(
        self, address: Address, context: Context, origin: Origin
    ) -> AbstractAsyncContextManager[Writing]:
        ref = address.reference
        assert ref is not None
        client = context.session.client(ref, context.emit, settings=context.settings)
        # Blobs of an image of the same registry are mounted, not sent again: from the source
        # repository, or for a store image from the one it is named after (where it was pulled
        # from or pushed to). A registry that lacks them there opens an upload instead (202),
        # so a wrong guess costs no extra request.
        came = origin.address
        mount = came.reference if came is not None and came.kind in ("registry", "store") else None
        writer = RegistryDestination(
            client,
            ref,
            mount_from=mount,
            mounts=origin.mounts,
            chunk_size=context.settings.chunk_size,
        )
        return _writing(writer, ref.tag)


class StoreTransport:
    """``store:REF``: an image of the local store, held in use (no gc) while open."""

    @asynccontextmanager
    async def source(self, address: Address, context: Context) -> AsyncIterator[Reading]:
        ref = address.reference
        assert ref is not None
        layout = context.session.layout()
        # REPO@sha256:…: the store is content-addressed, so the digest finds the image (or an
        # index's child) whatever name it was stored under, as a registry resolves it.
        identifier = ref.digest if ref.digest is not None else str(ref)
        with layout.in_use() if layout.exists() else contextlib.nullcontext():
            async with _reading(LayoutSource(layout, str(ref)), identifier) as reading:
                yield reading

    @asynccontextmanager
    async def destination(
        self, address: Address, context: Context, origin: Origin
    ) -> AsyncIterator[Writing]:
        assert address.reference is not None
        name = str(address.reference)
        layout = context.session.layout()
        with layout.in_use():
            async with _writing(LayoutDestination(layout, name), name) as writing:
                yield writing


class LayoutTransport:
    """``oci:DIR[:NAME]``: an OCI image layout directory another tool reads or wrote."""

    def source(self, address: Address, context: Context) -> AbstractAsyncContextManager[Reading]:
        assert address.path is not None
        layout = Layout(address.path, context.settings.ranges)
        if not layout.exists():
            raise StoreError(f"{address.path} is not an OCI image layout (no oci-layout file)")
        name = address.name or only_image(layout, address)
        return _reading(LayoutSource(layout, name), name)

    @asynccontextmanager
    async def destination(
        self, address: Address, context: Context, origin: Origin
    ) -> AsyncIterator[Writing]:
        assert address.path is not None
        came = origin.address
        name = address.name or (came.reference.tag if came and came.reference else None)
        name = name or "latest"
        layout = Layout(address.path, context.settings.ranges)
        with layout.in_use():
            async with _writing(LayoutDestination(layout, name), name) as writing:
                yield writing


def only_image(layout: Layout, address: Address) -> str:
    """The name of a layout's one image; naming one is required when it holds several."""
    entries = layout.read_index()
    # Its referrers (signatures, SBOMs; under a cosign or fallback tag, or unnamed with a
    # subject) are listed beside it: no images of their own. One image under several names
    # is one image.
    roots = layout.listing(entries).roots(entries)
    names = [n for n in (d.annotations.get(REF_NAME) for d in roots) if n]
    if len({d.digest for d in roots}) == 1 and names:
        return names[0]
    raise UsageError(
        f"{address} holds {len({d.digest for d in roots})} images: "
        f"name one as oci:{address.path}:NAME",
    )


class ArchiveTransport:
    """``oci-archive:FILE[:NAME]`` and ``docker-archive:FILE[:REF]``: a tar, read in place or
    written whole (it appears at FILE only complete, at commit)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def source(self, address: Address, context: Context) -> AbstractAsyncContextManager[Reading]:
        assert address.path is not None
        from .archive_read import DockerArchive, OciArchive  # tar code only when used

        kind = OciArchive if self.kind == "oci-archive" else DockerArchive
        return _reading(kind(address.path, str(address)), address.name or "")

    def destination(
        self, address: Address, context: Context, origin: Origin
    ) -> AbstractAsyncContextManager[Writing]:
        assert address.path is not None
        fmt = "oci" if self.kind == "oci-archive" else None  # docker-archive: docker 25's
        name = _archive_name(address, origin.address)
        return archive(address.path, fmt, name, max_size=context.settings.volume_size)


def archive(
    path: Path, format: str | None, tag: str | None = None, *, max_size: int | None = None
) -> AbstractAsyncContextManager[Writing]:
    """An archive being written (``format`` as ``xfer save --format``); several images may go
    in before the block ends. ``max_size``: volumes ``NAME.001.tar``, … of at most that many
    bytes each (``volumes.VolumeDestination``)."""
    from .archive_write import ArchiveDestination

    if max_size is not None:
        from .volumes import VolumeDestination

        return _writing(VolumeDestination(path, max_size, format), tag)
    return _writing(ArchiveDestination(path, format), tag)


def _archive_name(address: Address, origin: Address | None) -> str:
    """The name an image gets in an archive: as given (a docker-archive REF normalised),
    else the source's full reference, as ``xfer save`` names it."""
    if address.name and address.kind == "docker-archive":
        if address.name.startswith("@"):
            raise UsageError(f"{address}: @N selects an image to read; name one to write")
        return str(parse(address.name))
    if address.name:
        return address.name
    if origin is not None and origin.reference is not None:
        return str(origin.reference)
    if origin is not None and origin.name:
        return origin.name
    raise UsageError(f"name the image to write: {address}:REF")


TRANSPORTS: dict[str, Transport] = {
    "registry": RegistryTransport(),
    "store": StoreTransport(),
    "oci": LayoutTransport(),
    "oci-archive": ArchiveTransport("oci-archive"),
    "docker-archive": ArchiveTransport("docker-archive"),
}


def open_source(address: Address, context: Context) -> AbstractAsyncContextManager[Reading]:
    return TRANSPORTS[address.kind].source(address, context)


def open_destination(
    address: Address, context: Context, origin: Origin | None = None
) -> AbstractAsyncContextManager[Writing]:
    return TRANSPORTS[address.kind].destination(address, context, origin or Origin())
