"""The library API: what the CLI does, as async functions (and thin sync wrappers for scripts).

Every transfer is ``copy.copy_image`` between two endpoints; these functions only choose them.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio

from .auth import Credentials, registry_host, remove_credentials, save_credentials
from .client import RegistryClient
from .config import RegistryConfig, xdg_dirs
from .config import load as load_registry_config
from .copy import (
    CopyOptions,
    CopyResult,
    PlatformChoice,
    choosing,
    copy_image,
    describe_absent,
)
from .digest import Digest
from .endpoints import ReferrerSource, read_blob
from .endpoints.address import Address, parse_address
from .endpoints.layout import REF_NAME, Layout, LayoutDestination
from .endpoints.layout_referrers import cosign_tag
from .endpoints.transports import Context, Origin, archive, open_destination, open_source
from .errors import ArchiveError, ManifestError, StoreError, TransferError, UsageError
from .fetch import RangePolicy
from .manifest import MAX_CONFIG_BYTES, Descriptor, ImageConfig, Manifest, Platform
from .progress import Emit, Message, ignore
from .reference import DOCKER_HUB, DOCKER_HUB_API, Reference, parse, parse_repository
from .referrers import Referrer, ReferrerTree, referrer_tree
from .retry import RetryPolicy, retrying
from .session import Session
from .throttle import Throttle
from .transport import TransportOptions

if TYPE_CHECKING:  # imported where used: a pull should not pay for tar, zstd or gc code
    from .bundlecheck import BundleReport
    from .endpoints.archive_read import DockerArchive, OciArchive
    from .maintenance import GcReport, VerifyReport
    from .mirror import MirrorReport, Shard
    from .unpack import UnpackOptions, UnpackResult

# Names one archive may give its images: a real one has a few; each is an index.json entry.
MAX_ARCHIVE_NAMES = 10_000

P = ParamSpec("P")
T = TypeVar("T")


def default_store() -> Path:
    """``$XFER_STORE``, else ``$XDG_DATA_HOME/xfer/store`` (``~/.local/share/xfer/store``)."""
    if os.environ.get("XFER_STORE"):
        return Path(os.environ["XFER_STORE"])
    return xdg_dirs().user_data_path / "store"


@dataclass(frozen=True)
class Settings:
    """What every command shares: where the store is and how to reach registries."""

    store: Path = field(default_factory=default_store)
    transport: TransportOptions = field(default_factory=TransportOptions)
    credentials: Credentials | None = None  # explicit --creds; else config files per host
    jobs: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ranges: RangePolicy = field(default_factory=RangePolicy)  # parallel Range requests
    throttle: Throttle | None = None  # one byte-rate cap shared by every stream of the run
    # Uploads: a blob larger than this goes in PATCH requests of at most this many bytes
    # (a proxy capping request bodies); None: one request per blob.
    chunk_size: int | None = None
    max_requests_per_second: float | None = None  # per registry host, for the whole run
    # Archives written (oci-archive:, docker-archive:): volumes NAME.001.tar, … of at most
    # this many bytes each (endpoints/volumes.py); None: one file.
    volume_size: int | None = None
    # Per-registry TLS, plain-http and mirrors; None: read config.toml, registries.conf and
    # certs.d (config.load) once per Session, so a long-lived Settings sees edits.
    registries: RegistryConfig | None = None
    # Signatures, SBOMs and attestations travel with each image (referrers.py) unless
    # ``referrers`` is False; ``referrer_types`` keeps only those artifact types.
    referrers: bool = True
    referrer_types: tuple[str, ...] = ()

    def copy_options(self, choice: PlatformChoice, **extra: Any) -> CopyOptions:
        """The copy options of a transfer with these settings and that platform choice."""
        return CopyOptions(
            *choosing(choice),
            jobs=self.jobs,
            retry=self.retry,
            referrers=self.referrers,
            referrer_types=self.referrer_types,
            **extra,
        )

    def registry_config(self) -> RegistryConfig:
        return self.registries if self.registries is not None else load_registry_config()

    def transport_for(self, host: str, config: RegistryConfig | None = None) -> TransportOptions:
        """The command line's transport options with this host's configuration added."""
        return (config or self.registry_config()).transport(host, self.transport)

    def layout(self) -> Layout:
        return Layout(self.store, self.ranges)


@contextlib.asynccontextmanager
async def session_for(
    settings: Settings | None, session: Session | None
) -> AsyncIterator[tuple[Settings, Session]]:
    """The caller's session, or one opened (and closed) for this call alone; and the settings
    the call uses (the session's when none are given)."""
    if session is not None:
        yield settings or session.settings, session
        return
    settings = settings or Settings()
    async with Session(settings) as own:
        yield settings, own


@dataclass(frozen=True)
class ImageEntry:
    reference: str
    digest: Digest
    media_type: str
    size: int  # manifest + config + layers, each blob counted once


async def pull(
    reference: str | Reference,
    settings: Settings | None = None,
    *,
    platform: PlatformChoice = None,
    all_platforms: bool = False,
    emit: Emit = ignore,
    session: Session | None = None,
) -> CopyResult:
    """Registry → store; fetches only the blobs the store lacks."""
    ref = reference if isinstance(reference, Reference) else parse(reference)
    chosen = None if all_platforms else (platform or Platform.current())
    src, dst = Address("registry", reference=ref), Address("store", reference=ref)
    async with session_for(settings, session) as (settings, session):
        options = settings.copy_options(chosen)
        context = Context(session, settings, emit)
        async with (
            open_source(src, context) as reading,
            open_destination(dst, context, Origin(src)) as writing,
        ):
            return await copy_image(
                reading.source, writing.destination, reading.identifier, writing.tag, options, emit
            )


async def copy(
    source: str | Address,
    destination: str | Address,
    settings: Settings | None = None,
    *,
    platform: PlatformChoice = None,
    dest_settings: Settings | None = None,
    mounts: dict[Digest, str] | None = None,
    emit: Emit = ignore,
    session: Session | None = None,
) -> CopyResult:
    """Any endpoint → any endpoint. The whole index by default (a copy keeps the source's
    digest); ``platform`` narrows it. Registry → registry streams: nothing is staged on disk,
    and blobs already in the target repository, or mountable from the source repository of the
    same registry, are not sent."""
    src = source if isinstance(source, Address) else parse_address(source)
    dst = destination if isinstance(destination, Address) else parse_address(destination)
    async with session_for(settings, session) as (settings, session):
        options = settings.copy_options(platform, transfers=session.transfers(settings.jobs))
        into = Context(session, dest_settings or settings, emit)
        async with (
            open_source(src, Context(session, settings, emit)) as reading,
            open_destination(dst, into, Origin(src, mounts)) as writing,
        ):
            return await copy_image(
                reading.source, writing.destination, reading.identifier, writing.tag, options, emit
            )


async def push(
    reference: str,
    destination: str | None = None,
    settings: Settings | None = None,
    *,
    platform: PlatformChoice = None,
    emit: Emit = ignore,
    session: Session | None = None,
) -> CopyResult:
    """Store → registry: the image as the store holds it (a whole index by default;
    ``platform`` pushes only that image of it), to ``destination`` or its own name."""
    ref = parse(reference)
    target = parse(destination) if destination else ref
    settings = settings or Settings()
    known = await anyio.to_thread.run_sync(_stored_elsewhere, settings.layout(), target)
    return await copy(
        Address("store", reference=ref),
        Address("registry", reference=target),
        settings,
        platform=platform,
        emit=emit,
        session=session,
        mounts=known,
    )


def _stored_elsewhere(layout: Layout, target: Reference) -> dict[Digest, str]:
    """Blobs the target registry should hold in another repository: those of the store's
    images named after one (pulled from or pushed to it), so a push mounts them instead of
    sending them again. A wrong guess (deleted since) costs nothing: the registry answers the
    mount by opening the upload that was needed anyway."""
    from .maintenance import reachable  # only a push walks other images

    known: dict[Digest, str] = {}
    for entry in layout.read_index():
        name = entry.annotations.get(REF_NAME)
        if not name or cosign_tag(name) is not None:
            continue
        try:
            ref = parse(name)
        except TransferError:
            continue  # a name another tool wrote: not one of ours to guess from
        if ref.registry != target.registry or ref.repository == target.repository:
            continue
        for digest in reachable(layout, [entry], referrers=False).blobs:
            known.setdefault(digest, ref.repository)
    return known


async def save(
    references: Sequence[str],
    output: str | Path,
    settings: Settings | None = None,
    *,
    format: str | None = None,
    platform: PlatformChoice = None,
    all_platforms: bool = False,
    max_size: int | None = None,
    emit: Emit = ignore,
    session: Session | None = None,
) -> list[CopyResult]:
    """Images → one archive, each blob once (``max_size``: volumes ``NAME.001.tar``, … of at
    most that many bytes, whole blobs each; default: the settings' ``volume_size``). A bare
    reference is an image of the store; ``docker://REF`` streams from the registry (any
    endpoint address works). The default
    format loads with ``docker load`` and reads as ``oci-archive:``; ``format`` "docker" or
    "oci" writes the plain ones. One platform per image (this machine's) unless
    ``all_platforms``: docker's manifest.json then lists this platform's image."""
    if format == "docker" and (all_platforms or choosing(platform)[1]):
        raise UsageError("--format docker holds one platform per image: name one --platform")
    chosen = None if all_platforms else (platform or Platform.current())
    addresses = [parse_address(text, bare="store") for text in references]
    results = []
    async with (
        session_for(settings, session) as (settings, session),
        archive(Path(output), format, max_size=max_size or settings.volume_size) as writing,
    ):
        options = settings.copy_options(chosen)
        for address in addresses:
            async with open_source(address, Context(session, settings, emit)) as reading:
                identifier = reading.identifier
                tag = str(address.reference) if address.reference else str(identifier)
                if not tag:
                    raise UsageError(f"name the image to save: {address}:NAME")
                copied = await copy_image(
                    reading.source, writing.destination, identifier, tag, options, emit
                )
                results.append(copied)
    return results


async def load(
    file: str | Path,
    settings: Settings | None = None,
    *,
    platform: PlatformChoice = None,
    name: str | None = None,
    emit: Emit = ignore,
    session: Session | None = None,
) -> list[CopyResult]:
    """Archive → store: a docker or OCI archive, told apart by content. One result per
    reference loaded (an image with several names is stored once, named each way). The whole
    of each image by default; ``platform`` narrows an index. ``name`` stores the archive's one
    image under that reference instead of the names it carries. An image that carries none
    (``docker save IMAGE-ID`` writes ``"RepoTags": null``) is stored under the digest of its
    manifest, the result's ``reference``; ``NAME@DIGEST`` then finds it, as push and save."""
    settings = settings or (session.settings if session is not None else Settings())
    # An archive exported for one platform keeps the whole index: load what it holds.
    options = settings.copy_options(platform, allow_absent=True)
    layout = settings.layout()
    results = []
    from .endpoints.archive_read import ArchiveImageSource, open_archive

    chosen = str(parse(name)) if name is not None else None
    async with contextlib.aclosing(await open_archive(Path(file))) as archive:
        found = await archive.images()
        if chosen is not None and len(found) != 1:
            raise UsageError(f"--name names one image; {file} holds {len(found)}")
        # Each distinct image is copied once, under its first name; its other names are set
        # in one update of index.json (an archive may list one image thousands of times).
        named: dict[str | Digest, list[str]] = {}
        for image in found:
            names = [chosen] if chosen is not None else image.names
            named.setdefault(image.identifier, []).extend(names)
        total = sum(len(names) for names in named.values())
        if total > MAX_ARCHIVE_NAMES:
            raise ArchiveError(
                f"{file} holds {total} names, more than the {MAX_ARCHIVE_NAMES} one load takes"
            )

        def label(names: list[str]) -> str:
            return names[0] if names else f"{file} (an image without a name)"

        with layout.in_use():
            if archive.relied_on:  # an incremental bundle: the store must hold what it left out
                from .bundle_import import lacking, relied_lacking_in_store

                images = [(ArchiveImageSource(archive, label(n)), i) for i, n in named.items()]
                missing = await relied_lacking_in_store(images, archive.relied_on, layout, options)
                if missing:
                    raise lacking(file, "the store", missing, "load")
            for identifier, names in named.items():
                ref_name, others = (names[0], names[1:]) if names else (None, [])
                source = ArchiveImageSource(archive, label(names))
                destination = LayoutDestination(layout, ref_name)
                result = await copy_image(source, destination, identifier, ref_name, options, emit)
                if ref_name is None:
                    # Named only now that its digest is known (the platform's image, if one
                    # was chosen); gc cannot run in between: the store is in use.
                    digest = str(result.digest)
                    layout.set_reference(digest, result.manifest)
                    emit(Message(f"{file}: an image without a name is stored as {digest}"))
                    result = replace(result, reference=digest)
                if result.absent:
                    emit(
                        Message(
                            f"{result.reference}: {file} holds only part of index "
                            f"{result.digest}; absent: {describe_absent(result.absent)}"
                        )
                    )
                if others:
                    layout.set_references(others, result.manifest)
                results += [result, *(replace(result, reference=n) for n in others)]
            await _load_referrers(archive, layout, results, options, emit)
    return results


async def _load_referrers(
    archive: OciArchive | DockerArchive,
    layout: Layout,
    loaded: Sequence[CopyResult],
    options: CopyOptions,
    emit: Emit,
) -> None:
    """Every referrer an OCI archive's index.json lists of what was loaded (an image, a child
    of one, another such referrer) goes into the store as the store keeps them (by digest,
    listed unnamed, a cosign one under its tag in its image's repository), whether or not the
    copy of its image carried it: a load reads every entry. ``--no-referrers`` loads none,
    ``--referrers-type`` only those types (and what refers to those); one already stored is
    not copied again, and one whose subject was not loaded is left (gc would drop it)."""
    from .endpoints.archive_read import ArchiveImageSource, OciArchive
    from .endpoints.layout_referrers import is_full_reference

    if not isinstance(archive, OciArchive) or not options.referrers:
        return  # docker's manifest.json lists images only
    found = await archive.referrers()
    types = options.referrer_types
    # What was loaded, and the image each belongs to: the repository its cosign tags go in.
    owner: dict[Digest, str] = {}
    for result in loaded:
        owner.setdefault(result.manifest.digest, result.reference)
        if result.manifest.is_index:
            for child in result.manifest.index().manifests:
                owner.setdefault(child.digest, result.reference)
    chosen: list[tuple[Referrer, str]] = []
    pending = [(r, n) for r, n in found if not types or r.descriptor.artifact_type in types]
    while pending:  # level by level: a signature of an SBOM follows the SBOM
        later = []
        for referrer, name in pending:
            subject_owner = owner.get(referrer.subject)
            if subject_owner is None:
                later.append((referrer, name))
                continue
            context = name if name is not None and is_full_reference(name) else subject_owner
            owner.setdefault(referrer.descriptor.digest, context)
            chosen.append((referrer, context))
        if len(later) == len(pending):
            if later:
                emit(Message(f"{archive.path}: {len(later)} referrers of nothing loaded: left"))
            break
        pending = later
    # Each referrer alone, whole: what refers to it is in ``chosen`` already.
    whole = replace(options, platform=None, platforms=(), referrers=False)
    stored = {d.digest for d in layout.read_index()}
    for referrer, context in chosen:
        digest = referrer.descriptor.digest
        if digest in stored and layout.has_blob(referrer.descriptor):
            continue
        source = ArchiveImageSource(archive, str(digest))
        destination = LayoutDestination(layout, context)
        try:
            # A cosign tag naming another manifest in the store is left as it is, as a copy
            # leaves it (said, nothing of the archive's written), also when the image's copy
            # found it first and said so.
            if referrer.tag is not None and await destination.has_referrer(referrer):
                continue
            result = await copy_image(source, destination, digest, None, whole, emit)
            await destination.put_referrer(referrer, result.manifest)
        except ManifestError as exc:
            emit(Message(f"warning: {context}: referrer {digest} not loaded: {exc}"))
            continue
        stored.add(digest)


async def inspect(
    reference: str | Address,
    settings: Settings | None = None,
    *,
    from_store: bool = False,
    session: Session | None = None,
) -> tuple[Manifest, bytes | None]:
    """The manifest an image address resolves to (``REF``, ``store:REF``, ``oci:DIR[:NAME]``,
    an archive; ``from_store``: a bare ``REF`` of the store), and its config when it is an
    image."""
    if isinstance(reference, Address):
        address = reference
    else:
        address = parse_address(reference, bare="store" if from_store else "registry")
    async with (
        session_for(settings, session) as (settings, session),
        open_source(address, Context(session, settings)) as reading,
    ):
        manifest = await reading.source.get_manifest(reading.identifier)
        config = None
        if not manifest.is_index:
            desc = manifest.image().config
            config = await read_blob(reading.source, desc, MAX_CONFIG_BYTES, "config")
        return manifest, config


async def referrers(
    reference: str | Address,
    settings: Settings | None = None,
    *,
    artifact_types: Sequence[str] = (),
    session: Session | None = None,
) -> ReferrerTree:
    """What refers to an image (signatures, SBOMs, attestations, and what refers to those), as
    a tree; for an index, also what refers to each of its manifests. Any endpoint address that
    can list referrers (a registry; the store, a layout, an archive where they implement it);
    ``artifact_types`` keeps only those."""
    address = reference if isinstance(reference, Address) else parse_address(reference)
    async with (
        session_for(settings, session) as (settings, session),
        open_source(address, Context(session, settings)) as reading,
    ):
        source = reading.source
        if not isinstance(source, ReferrerSource):
            raise UsageError(f"{address}: this kind of endpoint does not list referrers")
        lister = source
        policy = settings.retry

        async def listing(subject: Descriptor) -> list[Referrer]:
            return await retrying(
                f"referrers of {subject.digest}",
                lambda: lister.get_referrers(subject),
                policy,
            )

        manifest = await source.get_manifest(reading.identifier)
        return await referrer_tree(manifest, listing, artifact_types=artifact_types)


async def tags(
    repository: str, settings: Settings | None = None, *, session: Session | None = None
) -> list[str]:
    """Every tag of a repository, following the registry's pagination (at most a million)."""
    ref = parse_repository(repository)
    async with session_for(settings, session) as (settings, session):
        return await session.client(ref, settings=settings).list_tags(ref.repository)


async def tag_pages(
    repository: str, settings: Settings | None = None, *, session: Session | None = None
) -> AsyncGenerator[list[str], None]:
    """A repository's tags page by page as the registry sends them: only one page is held at
    a time (``xfer tags`` prints each as it arrives). Close it (``contextlib.aclosing``) when
    stopping early."""
    ref = parse_repository(repository)
    async with (
        session_for(settings, session) as (settings, session),
        contextlib.AsyncExitStack() as stack,
    ):
        client = session.client(ref, settings=settings)
        pages = await stack.enter_async_context(
            contextlib.aclosing(client.tag_pages(ref.repository))
        )
        async for page in pages:
            yield page
            del page  # one page held at a time, also while the next is fetched


async def login(host: str, credentials: Credentials, settings: Settings | None = None) -> str:
    """Check credentials against the registry (``GET /v2/`` through its auth flow: a token is
    issued or Basic accepted), then keep them as ``docker login`` does. Returns where they went
    (a file or a credential helper), never the secret."""
    settings = settings or Settings()
    name = registry_host(host)
    api_host = DOCKER_HUB_API if name == DOCKER_HUB else name
    options = settings.transport_for(api_host)
    async with RegistryClient(api_host, options=options, credentials=credentials) as client:
        await client.check_login()
    return save_credentials(name, credentials)


async def logout(host: str) -> bool:
    """Forget a registry's credentials (helper ``erase``, config.json); False if none were kept."""
    return await anyio.to_thread.run_sync(remove_credentials, host)


# The store's own commands read and write files (gc and verify re-hash the store): each runs in
# a worker thread, so a host application's event loop goes on meanwhile.


async def images(settings: Settings | None = None) -> list[ImageEntry]:
    """The store's images with their sizes (each blob counted once per image)."""
    return await anyio.to_thread.run_sync(_images, settings or Settings())


def _images(settings: Settings) -> list[ImageEntry]:
    layout = settings.layout()
    entries = []
    for entry in layout.read_index():
        name = entry.annotations.get(REF_NAME)
        if not name or cosign_tag(name) is not None:
            continue  # a referrer: kept with its image, not an image of its own
        desc = layout.resolve(entry)  # a Docker image's own digest, not its OCI view's
        entries.append(ImageEntry(name, desc.digest, desc.media_type, _image_size(layout, desc)))
    return entries


def _image_size(layout: Layout, desc: Descriptor) -> int:
    """Manifests, configs and layers of one image (or index), each blob counted once."""
    from .maintenance import reachable

    return sum(blob.size for blob in reachable(layout, [desc], referrers=False).blobs.values())


async def remove(references: Sequence[str], settings: Settings | None = None) -> list[str]:
    """Drop references from the store; their blobs stay until ``gc`` (others may share them)."""
    return await anyio.to_thread.run_sync(_remove, references, settings or Settings())


def _remove(references: Sequence[str], settings: Settings) -> list[str]:
    layout = settings.layout()
    removed = []
    for text in references:
        # A bare digest is the name of an image loaded without one (see load).
        name = text if text.startswith("sha256:") else str(parse(text))
        if not layout.remove_reference(name):
            raise StoreError(f"image {name} is not in the store {layout.root}", reference=name)
        removed.append(name)
    return removed


async def gc(settings: Settings | None = None, *, all_partials: bool = False) -> GcReport:
    """Delete unreferenced blobs and stale partial downloads."""
    return await anyio.to_thread.run_sync(_gc, settings or Settings(), all_partials)


def _gc(settings: Settings, all_partials: bool) -> GcReport:
    from .maintenance import GcReport, collect

    layout = settings.layout()
    if not layout.exists():
        return GcReport(0, 0, 0, 0)
    return collect(layout, all_partials=all_partials)


async def verify(settings: Settings | None = None, *, repair: bool = False) -> VerifyReport:
    """Re-hash every blob of the store; report corrupt, linked and missing ones (and, with
    ``repair``, remove the damaged ones so that the next pull fetches them again)."""
    return await anyio.to_thread.run_sync(_verify, settings or Settings(), repair)


def _verify(settings: Settings, repair: bool) -> VerifyReport:
    from .maintenance import verify as verify_layout

    layout = settings.layout()
    if not layout.exists():
        raise StoreError(f"there is no store at {layout.root}")
    return verify_layout(layout, repair=repair)


async def verify_bundle(endpoint: str | Address, *, expect: str | None = None) -> BundleReport:
    """Check an ``oci-archive:FILE`` (one file or a volume set) or ``oci:DIR`` before trusting
    it: every blob re-hashed in one streaming pass, every image's graph checked complete (or
    relying only on what the bundle says it relies on), ``expect`` compared with its root
    digest (the sha256 of its index.json). Problems are in the report, every one of them."""
    address = endpoint if isinstance(endpoint, Address) else parse_address(endpoint)
    if expect is not None:
        expect = str(Digest.parse(expect))
    from .bundlecheck import verify_archive, verify_layout

    if address.kind == "oci-archive" and address.path is not None and not address.name:
        path = address.path
        return await anyio.to_thread.run_sync(
            functools.partial(verify_archive, path, expect=expect, endpoint=str(address))
        )
    if address.kind == "oci" and address.path is not None and not address.name:
        path = address.path
        return await anyio.to_thread.run_sync(
            functools.partial(verify_layout, path, expect=expect, endpoint=str(address))
        )
    raise UsageError(f"xfer verify checks the store, oci-archive:FILE or oci:DIR, not {address}")


def config_platform(config: bytes) -> Platform:
    return ImageConfig.from_bytes(config).platform


async def unpack(
    reference: str,
    directory: str | Path,
    settings: Settings | None = None,
    *,
    platform: Platform | None = None,
    options: UnpackOptions | None = None,
    emit: Emit = ignore,
    session: Session | None = None,
) -> UnpackResult:
    """An image (a bare ``REF`` of the store, ``store:REF``, ``oci:DIR[:NAME]``, an archive, or
    ``docker://REF`` streamed from its registry) → a root filesystem in ``directory``: layers
    applied in order, whiteouts honoured, every path kept inside. ``directory`` appears only
    complete (see unpack.py)."""
    from .unpack import unpack_image

    address = parse_address(reference, bare="store")
    async with (
        session_for(settings, session) as (settings, session),
        open_source(address, Context(session, settings, emit)) as reading,
    ):
        in_store = address.kind == "store"  # its errors hint at pulling the image first
        return await unpack_image(
            reading, directory, in_store=in_store, platform=platform, options=options, emit=emit
        )


# Images a mirror copies at once. Small images cost round trips (manifest, blobs, referrers,
# one after the other), so many at once hide the latency: 10 small repositories over 25 ms
# went from 1.17 to 0.93 s with 16 instead of 4. Their large blobs share one bound for the
# whole run (Session.transfers), so big images do not multiply threads and buffers.
MIRROR_IMAGES = 16


async def mirror(
    config: str | Path,
    destination: str,
    settings: Settings | None = None,
    *,
    dest_settings: Settings | None = None,
    scoped: bool = False,
    platform: PlatformChoice = None,
    emit: Emit = ignore,
    session: Session | None = None,
    images: int = MIRROR_IMAGES,
    shard: Shard | None = None,
    dry_run: bool = False,
    since: Sequence[str] = (),
) -> MirrorReport:
    """What the file ``config`` names (skopeo sync's YAML source format) → the registry
    ``destination`` (``host[:port][/prefix]``), each image at ``DEST/<repository>:<tag>``
    (``scoped``: ``DEST/<host>/<repository>``). Whole indexes by default, only ``platform``'s
    image with it. A rerun copies only what changed. Credentials: ``settings``' are the
    sources' (a source's own in the file win), ``dest_settings``' the target's (default: the
    credential files only). One image that fails does not stop the others: the report lists
    it, as it lists what was copied, what was unchanged and the tags no reference can name.
    ``images`` copies run at once; ``shard`` keeps one worker's share of the images (by target
    repository); ``dry_run`` only plans: ``report.plan`` says what each image would get.

    Bundles (``transfer.bundle``): ``destination`` ``oci-archive:FILE`` or ``oci:DIR`` exports
    the images into one (``since``: bundles, layouts or index.json files whose blobs the far
    side holds, left out; ``report.root`` is the bundle's root digest); ``config``
    ``oci-archive:FILE`` or ``oci:DIR`` imports a bundle's images into the registry, or, with
    a bundle as ``destination`` too, re-packs them into it (the export's flags and root)."""
    from .mirror import MirrorRun  # YAML and semver load only for a mirror
    from .mirror import mirror as mirror_config

    how = MirrorRun(platform, images, shard, dry_run, emit, session)
    text_config = str(config)
    volumes = settings.volume_size if settings is not None else None
    if volumes and not destination.startswith("oci-archive:"):
        raise UsageError("--max-size is for an export into a bundle file (oci-archive:FILE)")
    exporting = destination.startswith(("oci:", "oci-archive:"))
    from_bundle = text_config.startswith(("oci:", "oci-archive:"))
    bundle = parse_address(text_config) if from_bundle else None
    if bundle is not None and exporting:
        from .bundle import repack  # archive and tar code only for a bundle

        return await repack(bundle, parse_address(destination), settings, how, since=since)
    if bundle is not None:
        if since:
            raise UsageError("--since is for an export into a bundle, not an import")
        from .bundle_import import import_bundle  # archive and tar code only for a bundle

        return await import_bundle(
            bundle, destination, settings, how, dest_settings=dest_settings, scoped=scoped
        )
    if since and not exporting:
        raise UsageError("--since is for an export into a bundle (oci-archive:FILE or oci:DIR)")
    try:
        text = await anyio.Path(config).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read mirror configuration {config}: {exc.strerror}") from None
    if exporting:
        from .bundle import export  # archive and tar code only for a bundle

        return await export(text, parse_address(destination), settings, how, since=since)
    return await mirror_config(
        text, destination, settings, how, dest_settings=dest_settings, scoped=scoped
    )


# ---- the synchronous API ---------------------------------------------------------------------


def synchronous(func: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """The twin of an async API function for synchronous code (scripts): the same parameters
    (and signature, for help() and type checkers), run in an event loop of its own."""

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        async def call() -> T:
            return await func(*args, **kwargs)

        return anyio.run(call)

    run.__name__ = run.__qualname__ = f"{func.__name__}_sync"
    run.__doc__ = f"``{func.__name__}`` for synchronous code: same arguments, its own event loop."
    return run


pull_sync = synchronous(pull)
push_sync = synchronous(push)
copy_sync = synchronous(copy)
mirror_sync = synchronous(mirror)
save_sync = synchronous(save)
load_sync = synchronous(load)
unpack_sync = synchronous(unpack)
inspect_sync = synchronous(inspect)
referrers_sync = synchronous(referrers)
tags_sync = synchronous(tags)
images_sync = synchronous(images)
remove_sync = synchronous(remove)
gc_sync = synchronous(gc)
verify_sync = synchronous(verify)
verify_bundle_sync = synchronous(verify_bundle)
login_sync = synchronous(login)
logout_sync = synchronous(logout)
