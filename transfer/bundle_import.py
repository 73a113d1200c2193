"""Reading a bundle, and importing it into a registry.

``xfer mirror oci-archive:BUNDLE.tar HOST/PREFIX`` (or ``oci:DIR``) imports a bundle: each image
to ``PREFIX/<source repository>:<tag>``, its digest kept, an image the target tag already names
left. ``open_bundle`` is the one reader of a bundle, the import's and the re-pack's
(``bundle.py``): its images, each named by its full source reference (``REF_NAME``), what it
relies on from outside, and the bundles it was made after.

An incremental bundle (``bundle_record.py``) holds only what its far side lacked: an import
first checks, with HEADs, that the target registry holds every blob it relies on that the
images it is about to write use (with their referrers'), and names the missing ones before
writing anything; ``xfer load`` checks the store the same way (``relied_lacking_in_store``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio

from .bundle_record import (
    HEADS_AT_ONCE,
    index_doc,
    relied_on_in_layout,
    since_roots,
)
from .copy import CopyOptions, _Plan, copy_image, resolve
from .digest import Digest
from .endpoints import Source
from .endpoints.address import Address
from .endpoints.layout import MAX_INDEX_BYTES, REF_NAME, Layout
from .endpoints.layout_referrers import entry_name, is_full_reference
from .endpoints.registry import RunMounts
from .endpoints.transports import Context, Origin, open_destination
from .errors import TransferError, UsageError, counted
from .manifest import Descriptor
from .progress import Emit, Message, ignore
from .reference import Reference, parse
from .referrers import is_referrer_tag

if TYPE_CHECKING:
    from .api import Settings
    from .mirror import MirrorReport, MirrorRun, PlanEntry
    from .session import Session


@dataclass
class BundleImage:
    """One image of a bundle: its name (full source reference) and how to read it."""

    name: str
    digest: Digest
    source: Source


@dataclass
class OpenedBundle:
    """A bundle open for reading: its named images, the blobs it relies on from outside, and
    the root digests of the bundles it was made after (its ``dev.xfer.bundle.since``)."""

    images: list[BundleImage]
    relied: dict[Digest, Descriptor]
    since: list[str]


@contextlib.asynccontextmanager
async def open_bundle(address: Address, emit: Emit = ignore) -> AsyncIterator[OpenedBundle]:
    """The named images of a bundle (``oci-archive:FILE`` or ``oci:DIR``), and what it relies
    on from outside; open until the block ends. An image without a full reference names no
    repository to go to: skipped, each on a warning line (referrers are no images: they
    travel with their subjects)."""
    from .endpoints.archive_read import ArchiveImageSource, OciArchive, open_archive
    from .endpoints.layout import LayoutSource

    assert address.path is not None

    def skipped(digest: Digest, name: str | None) -> None:
        what = f"its name {name!r} is not a full reference" if name else "an image without a name"
        emit(
            Message(
                f"warning: {address}: {what} ({digest}, no {REF_NAME} to name its "
                "repository): skipped"
            )
        )

    if address.kind == "oci-archive":
        archive = await open_archive(address.path)
        async with contextlib.aclosing(archive):
            if not isinstance(archive, OciArchive):
                raise UsageError(f"{address.path} is a docker archive, not a bundle")
            found = []
            for image in await archive.images():
                if not isinstance(image.identifier, Digest):
                    continue  # an OCI archive names every image by digest
                if not image.names or not is_full_reference(image.label):
                    # as a layout's: a bare tag names no repository (not docker.io/library/…)
                    skipped(image.identifier, image.label)
                    continue
                source = ArchiveImageSource(archive, image.names[0])
                found.append(BundleImage(image.names[0], image.identifier, source))
            since = since_roots(archive.annotations)
            yield OpenedBundle(found, archive.relied_on, since)
        return
    layout = Layout(address.path)
    if not layout.exists():
        raise UsageError(f"{address.path} is not an OCI image layout (no oci-layout file)")
    entries = await anyio.to_thread.run_sync(layout.read_index)
    listing = await anyio.to_thread.run_sync(layout.listing, entries)
    found = []
    for entry in listing.roots(entries):  # referrers (with a subject, or a cosign tag) left
        name = entry_name(entry)
        # A full reference names the source repository; a bare tag (another tool's layout)
        # names none to import into.
        if name and is_full_reference(name):
            desc = await anyio.to_thread.run_sync(layout.resolve, entry)
            found.append(BundleImage(name, desc.digest, LayoutSource(layout, name)))
        else:
            skipped(entry.digest, name)
    relied, since = await anyio.to_thread.run_sync(_layout_relies_on, layout)
    # Read only, as every oci:DIR source is: no store lock, whose .xfer/ a bundle on
    # read-only media (where air-gapped bundles arrive) cannot hold.
    yield OpenedBundle(found, relied, since)


def _layout_relies_on(layout: Layout) -> tuple[dict[Digest, Descriptor], list[str]]:
    from .localfile import read_capped

    path = layout.root / "index.json"
    doc = index_doc(read_capped(path, MAX_INDEX_BYTES, str(path)), str(path))
    return relied_on_in_layout(layout.root, doc, str(path)), since_roots(doc.get("annotations"))


async def import_bundle(
    source: Address,
    destination: str,
    settings: Settings | None,
    how: MirrorRun,
    *,
    dest_settings: Settings | None = None,
    scoped: bool = False,
) -> MirrorReport:
    """Every image of a bundle to ``destination`` (``host[:port][/prefix]``), each at
    ``DEST/<source repository>:<tag>``, its digest kept; an image the target tag already
    names is left (one HEAD); for an incremental bundle the target must hold every blob it
    relies on that the images to write use (HEADs, all at once), else nothing is written and
    the missing blobs are named."""
    from .api import session_for
    from .mirror import (
        COPY,
        FAILED,
        UNCHANGED,
        MirrorItem,
        MirrorReport,
        PlanEntry,
        _check_destination,
        _target,
        refuse_clashes,
    )

    _check_destination(destination)
    platform, emit, images, shard = how.platform, how.emit, how.images, how.shard
    async with (
        session_for(settings, how.session) as (settings, session),
        open_bundle(source, emit) as opened,
    ):
        found, relied = opened.images, opened.relied
        dest_settings = dest_settings or replace(settings, credentials=None)
        options = settings.copy_options(  # --no-referrers, --referrers-type too
            platform, transfers=session.transfers(settings.jobs)
        )
        report = MirrorReport()
        work = []
        for image in found:
            ref, refused = _entry_reference(image, emit)
            if options.referrers and ref.tag is not None and is_referrer_tag(ref.tag):
                continue  # sha256-<hex>[.sig|.att|.sbom] travel with their subject (as mirror)
            item = MirrorItem(ref, _target(ref, destination, scoped))
            if shard is None or shard.owns(item.target):
                work.append((image, item, refused))
        if shard is not None:
            emit(Message(f"mirror: shard {shard.index}/{shard.count}: {len(work)} images"))
        limiter = anyio.CapacityLimiter(HEADS_AT_ONCE)
        entries = [
            PlanEntry(
                str(item.source),
                str(item.target),
                FAILED if refused else COPY,
                image.digest,
                reason=refused,
                item=item,
            )
            for image, item, refused in work
        ]
        refuse_clashes(entries)
        for entry in entries:
            if entry.action == FAILED and entry.item is not None:
                report.failed.append((entry.item, entry.reason or "failed"))
                emit(Message(f"failed {entry.item.source}: {entry.reason}"))
        plans: dict[str, _Plan] = {}
        referred: dict[str, list[Descriptor]] = {}  # the blobs of the referrers each carries

        async def decide(image: BundleImage, entry: PlanEntry) -> None:
            assert entry.item is not None
            target = entry.item.target
            async with limiter:
                _, plan = await resolve(image.source, image.digest, options)
                plans[entry.source] = plan
                client = session.client(target, settings=dest_settings)
                there = await client.head_manifest(target.repository, target.identifier)
            if there is not None and there.digest == plan.top.digest:
                entry.action = UNCHANGED
            elif relied:
                # The referrers the copy carries rely on blobs from outside too: checked
                # with the image's, before anything is written.
                async with limiter:
                    referred[entry.source] = await _referrer_blobs(image.source, plan, options)

        async with anyio.create_task_group() as group:
            for (image, _, _), entry in zip(work, entries, strict=True):
                if entry.action == COPY:
                    group.start_soon(decide, image, entry)
        report.plan = entries
        copying = [
            (image, e) for (image, _, _), e in zip(work, entries, strict=True) if e.action == COPY
        ]
        for entry in entries:
            if entry.action == UNCHANGED and entry.item is not None:
                report.unchanged.append(entry.item)
                emit(Message(f"unchanged {entry.item.target}"))
        if how.dry_run:
            await _import_sizes(copying, plans, relied, session, dest_settings, limiter)
            return report
        mounts = RunMounts()
        blobs = {
            source: [*plan.blobs(), *referred.get(source, [])] for source, plan in plans.items()
        }
        needed = await _relied_needed(
            copying, entries, blobs, relied, session, dest_settings, limiter, mounts
        )
        if needed:
            raise lacking(source, "the target", [f"{repo}@{d}" for repo, d in needed], "import")
        copies = anyio.CapacityLimiter(images)

        async def copy_one(image: BundleImage, entry: PlanEntry) -> None:
            assert entry.item is not None
            item = entry.item
            address = Address("registry", reference=item.target)
            try:
                async with (
                    copies,
                    open_destination(
                        address, Context(session, dest_settings, emit), Origin(mounts=mounts)
                    ) as writing,
                ):
                    result = await copy_image(
                        image.source, writing.destination, image.digest, writing.tag, options, emit
                    )
            except TransferError as exc:
                entry.action, entry.reason = FAILED, str(exc)
                report.failed.append((item, str(exc)))
                emit(Message(f"failed {item.source}: {exc}"))
                return
            report.copied.append(result)
            report.copied_items.append((item, result))

        async with anyio.create_task_group() as group:
            for image, entry in copying:
                group.start_soon(copy_one, image, entry)
        return report


def lacking(source: object, target: str, needed: Sequence[str], verb: str) -> TransferError:
    """The one error of an incremental bundle whose target (a registry, the store) lacks
    blobs it relies on: how many, the first five named, and that nothing was written."""
    shown = ", ".join(needed[:5])
    more = f" and {len(needed) - 5} more" if len(needed) > 5 else ""
    return TransferError(
        f"{source}: {target} lacks {counted(len(needed), 'blob')} this incremental bundle relies "
        f"on: {shown}{more}; nothing was written",
        hint=f"{verb} the bundles it was made after (its --since) first",
    )


async def relied_lacking_in_store(
    images: Sequence[tuple[Source, str | Digest]],
    relied: dict[Digest, Descriptor],
    layout: Layout,
    options: CopyOptions,
) -> list[str]:
    """The blobs ``images`` (and the referrers a copy carries with them) use that the bundle
    relies on from outside and the store at ``layout`` lacks, sorted: a load's check before
    it writes anything, as ``_relied_needed`` is an import's (the store is one blob store:
    no repositories to ask, no HEADs)."""
    if not relied:
        return []
    used: dict[Digest, Descriptor] = {}
    for source, identifier in images:
        _, plan = await resolve(source, identifier, options)
        for blob in [*plan.blobs(), *await _referrer_blobs(source, plan, options)]:
            if blob.digest in relied:
                used.setdefault(blob.digest, blob)
    return [str(d) for d, desc in sorted(used.items()) if not layout.has_blob(desc)]


def _entry_reference(image: BundleImage, emit: Emit) -> tuple[Reference, str | None]:
    """The reference an image of the bundle is imported as, and why it is refused (or None).
    A name may pin a digest other than the manifest the entry holds (a hostile bundle; an
    export of ``REPO@DIGEST`` with --platform holds that platform's image): a name without a
    tag then goes by the entry's digest, the one actually written (and asked for by a rerun);
    a tag is never put on what its name says is another image."""
    ref = parse(image.name)
    if ref.digest is None or ref.digest == image.digest:
        return ref, None
    if ref.tag is not None:
        return ref, f"its name pins {ref.digest}, the bundle holds {image.digest}: not tagged"
    emit(Message(f"{image.name} holds {image.digest}: imported by that digest"))
    return Reference(ref.registry, ref.repository, None, image.digest), None


async def _relied_needed(
    copying: list[tuple[BundleImage, PlanEntry]],
    entries: list[PlanEntry],
    blobs: dict[str, list[Descriptor]],
    relied: dict[Digest, Descriptor],
    session: Session,
    settings: Settings,
    limiter: anyio.CapacityLimiter,
    mounts: RunMounts,
) -> list[tuple[str, Digest]]:
    """The (target repository, blob) pairs of the images to write (``blobs``: each image's
    and its referrers', by source), that the bundle relies on
    from outside and the target lacks: every pair asked at once (HEADs). A blob missing from
    an image's own repository may be in another the bundle's images go to (a new repository
    whose base layers an earlier bundle brought to another): found there, it is mounted."""
    users: dict[Digest, list[Reference]] = {}  # a relied-on blob → the targets whose images use it
    for entry in entries:
        if entry.item is not None and entry.source in blobs:
            for blob in blobs[entry.source]:
                if blob.digest in relied:
                    users.setdefault(blob.digest, []).append(entry.item.target)
    pairs: dict[tuple[str, Digest], Reference] = {}
    for _, entry in copying:
        assert entry.item is not None
        target = entry.item.target
        for blob in blobs[entry.source]:
            if blob.digest in relied:
                pairs.setdefault((f"{target.registry}/{target.repository}", blob.digest), target)
    missing: list[tuple[str, Digest]] = []

    async def head(key: tuple[str, Digest], target: Reference) -> None:
        digest = key[1]
        async with limiter:
            client = session.client(target, settings=settings)
            if await client.has_blob(target.repository, digest, push=True):
                return
            others = dict.fromkeys(
                t.repository for t in users.get(digest, []) if t.repository != target.repository
            )
            for other in others:
                if await client.has_blob(other, digest):
                    mounts.setdefault(digest, other)
                    return
        missing.append(key)

    async with anyio.create_task_group() as group:
        for key, target in pairs.items():
            group.start_soon(head, key, target)
    return sorted(missing)


async def _referrer_blobs(source: Source, plan: _Plan, options: CopyOptions) -> list[Descriptor]:
    """The blobs of the referrer tree a copy of ``plan`` carries from ``source``: the same
    subjects, artifact types and bounds as the carry (copy._Carry), each referrer read once;
    one the bundle does not hold or cannot read is left, as the carry leaves it."""
    from .endpoints import ReferrerSource
    from .errors import ManifestError, NotFound, TooLarge

    if not options.referrers or not isinstance(source, ReferrerSource):
        return []
    bounds = options.referrer_bounds
    single = CopyOptions(jobs=options.jobs, retry=options.retry, bounds=options.bounds)
    frontier = [m.descriptor() for m in (*plan.children, plan.top)]
    seen = {d.digest for d in frontier}
    found: list[Descriptor] = []
    count = 0
    for _ in range(bounds.depth):
        below: list[Descriptor] = []
        for subject in frontier:
            try:
                listed = await source.get_referrers(subject)
            except (ManifestError, TooLarge):
                continue  # the carry leaves a listing it cannot read, with a warning
            for referrer in listed:
                desc = referrer.descriptor
                if desc.digest in seen:
                    continue
                seen.add(desc.digest)
                if options.referrer_types and desc.artifact_type not in options.referrer_types:
                    continue
                if count >= bounds.count:
                    return found
                count += 1
                try:
                    _, referred = await resolve(source, desc.digest, single)
                except (NotFound, ManifestError):
                    continue
                found += referred.blobs()
                below.append(desc)
        frontier = below
    return found


async def _import_sizes(
    copying: list[tuple[BundleImage, PlanEntry]],
    plans: dict[str, _Plan],
    relied: dict[Digest, Descriptor],
    session: Session,
    settings: Settings,
    limiter: anyio.CapacityLimiter,
) -> None:
    """--dry-run: the declared sizes of the blobs each target repository lacks (a HEAD per
    blob), a blob shared by several images counted for the first only."""
    counted: set[Digest] = set(relied)

    async def size(entry: PlanEntry) -> None:
        assert entry.item is not None
        target = entry.item.target
        total = 0
        for blob in plans[entry.source].blobs():
            if blob.digest in counted:
                continue
            counted.add(blob.digest)
            async with limiter:
                client = session.client(target, settings=settings)
                if not await client.has_blob(target.repository, blob.digest):
                    total += blob.size
        entry.bytes = total

    async with anyio.create_task_group() as group:
        for _, entry in copying:
            group.start_soon(size, entry)
