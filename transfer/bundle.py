"""Air-gapped bundles: a mirror set written into one file (or layout), whole or as what changed.

``xfer mirror CONFIG oci-archive:BUNDLE.tar`` (or ``oci:DIR``) exports every image the sync
YAML names into one bundle, the layout ``xfer save`` writes (OCI layout, and docker's
``manifest.json`` when the bundle is whole); each image's ``org.opencontainers.image.ref.name``
and ``io.containerd.image.name`` is its full source reference. ``xfer mirror oci-archive:A.tar
oci:DIR`` (any bundle into any bundle) re-packs it: the export's pipeline with the bundle as
where images are read (``bundle_import.open_bundle``), so the same images give the same root
digest.

The bundle's root digest is the digest of its ``index.json``: it names the whole content, since
index.json names every image by digest and the record of what the bundle relies on.

With ``--since OLD`` the bundle leaves out every blob OLD holds and records what it then
relies on from outside (``bundle_record.py``: the record, and what OLD holds). An incremental
bundle has no ``manifest.json``: ``docker load`` needs every layer in the file. The import of a
bundle into a registry is ``bundle_import.py``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .bundle_import import BundleImage, open_bundle
from .bundle_record import (
    RELIES_ON,
    RELIES_ON_TYPE,
    SINCE,
    Held,
    held_by,
    index_doc,
    record_bytes,
)
from .copy import CopyOptions, copy_image, resolve
from .digest import Digest
from .endpoints import Destination, Source
from .endpoints.address import Address
from .endpoints.archive_read import CONTAINERD_NAME
from .endpoints.layout import MAX_INDEX_BYTES, REF_NAME, Layout, LayoutDestination
from .endpoints.transports import Context
from .errors import ArchiveError, TransferError, UsageError, counted
from .manifest import Descriptor, Manifest
from .progress import Emit, Message
from .reference import Reference, parse
from .referrers import Referrer, is_referrer_tag

if TYPE_CHECKING:
    from .api import Settings
    from .mirror import MirrorReport, MirrorRun, PlanEntry
    from .session import Session


async def export(
    config_text: str,
    target: Address,
    settings: Settings | None,
    how: MirrorRun,
    *,
    since: Sequence[str] = (),
) -> MirrorReport:
    """Every image the sync YAML names into one bundle (``oci-archive:FILE`` or ``oci:DIR``),
    read ``images`` at once, each blob written once; ``since``: leave out what those hold."""
    from .api import session_for
    from .mirror import COPY, SKIP, MirrorItem, MirrorReport, PlanEntry, parse_config, plan
    from .mirror import _settings_for as settings_for

    platform, emit, images, shard = how.platform, how.emit, how.images, how.shard
    sources = parse_config(config_text)
    async with session_for(settings, how.session) as (settings, session):
        report = MirrorReport()
        wanted = await plan(sources, settings, emit, skipped=report.skipped, session=session)
        items = [(ref, settings_for(source, settings)) for ref, source in wanted]
        if shard is not None:
            items = [(ref, s) for ref, s in items if shard.owns(ref)]
            emit(Message(f"mirror: shard {shard.index}/{shard.count}: {len(items)} images"))
        held = await held_by(since, session, settings, sources)
        entries = [
            PlanEntry(str(ref), str(target), COPY, item=MirrorItem(ref, ref), settings=s)
            for ref, s in items
        ]
        report.plan = entries + [
            PlanEntry(f"{s.repository}:{s.tag}", "", SKIP, reason=s.reason) for s in report.skipped
        ]
        options = settings.copy_options(  # --no-referrers, --referrers-type too
            platform, transfers=session.transfers(settings.jobs)
        )
        await _write(
            target, entries, report, session, settings, options, emit, images, held, how.dry_run
        )
        return report


async def repack(
    source: Address,
    target: Address,
    settings: Settings | None,
    how: MirrorRun,
    *,
    since: Sequence[str] = (),
) -> MirrorReport:
    """A bundle (``oci-archive:FILE`` or ``oci:DIR``) into another bundle: a file into a
    directory or back, re-split into volumes (``--max-size``), or cut down to what changed
    (``since``). The export's pipeline with the source bundle as where images are read: each
    image keeps its name (its full source reference), so the same images give the same
    root digest however they came."""
    from .api import session_for
    from .mirror import COPY, MirrorItem, MirrorReport, PlanEntry

    platform, emit, images, shard = how.platform, how.emit, how.images, how.shard
    _refuse_same(source, target)
    async with (
        session_for(settings, how.session) as (settings, session),
        open_bundle(source, emit) as opened,
    ):
        options = settings.copy_options(  # --no-referrers, --referrers-type too
            platform, transfers=session.transfers(settings.jobs)
        )
        report = MirrorReport()
        by_source: dict[str, BundleImage] = {}
        entries = []
        for image in opened.images:
            ref = parse(image.name)
            if options.referrers and ref.tag is not None and is_referrer_tag(ref.tag):
                continue  # sha256-<hex>[.sig|.att|.sbom] travel with their subject (as export)
            if shard is not None and not shard.owns(ref):
                continue
            earlier = by_source.get(str(ref))
            if earlier is not None:  # one name, one image: the bundle's first under it
                if earlier.digest != image.digest:
                    emit(
                        Message(
                            f"warning: {source}: {ref} names {earlier.digest} already: "
                            f"{image.digest} skipped"
                        )
                    )
                continue
            by_source[str(ref)] = image
            item = MirrorItem(ref, ref)
            entries.append(
                PlanEntry(str(ref), str(target), COPY, image.digest, item=item, settings=settings)
            )
        if shard is not None:
            emit(Message(f"mirror: shard {shard.index}/{shard.count}: {len(entries)} images"))
        report.plan = entries
        held = await held_by(since, session, settings)
        # An incremental source keeps relying on what it relied on: those blobs are left out
        # of the re-pack as the --since blobs are, so the new bundle's record names every one
        # its images use (with the --since bundles', and its own since list extended). Not
        # refused: re-splitting a delta for removable media, or turning it into a directory,
        # is what a site boundary does with it; the record is what the far side's import and
        # verify check, and a copy of the blobs it names does not exist here to put in.
        try:
            roots = [Digest.parse(text) for text in opened.since]
        except TransferError:  # the bundle's content, not a digest the user typed
            raise ArchiveError(f"{source}: index.json's {SINCE} is not a list of digests") from None
        held = Held(held.blobs | set(opened.relied), list(dict.fromkeys([*roots, *held.roots])))
        await _write(
            target,
            entries,
            report,
            session,
            settings,
            options,
            emit,
            images,
            held,
            how.dry_run,
            by_source,
        )
        return report


def _refuse_same(source: Address, target: Address) -> None:
    """A re-pack onto its own source would overwrite what it reads: one file, one directory
    (or a path inside it), or one volume set (``B.tar`` and ``B.001.tar`` … are one bundle)."""
    assert source.path is not None and target.path is not None

    def base(path: Path) -> Path:
        path = path.resolve()
        stem, _, number = path.stem.rpartition(".")
        if path.suffix == ".tar" and stem and len(number) == 3 and number.isdigit():
            return path.with_name(f"{stem}.tar")  # a volume: its set
        return path

    reads, writes = base(source.path), base(target.path)
    # Inside a source directory too: oci-archive:DIR/index.json replaces what it reads.
    if reads == writes or reads in writes.parents:
        raise UsageError(
            f"mirror: {target} is the bundle it reads ({source}): write the copy elsewhere"
        )


async def _write(
    target: Address,
    entries: list[PlanEntry],
    report: MirrorReport,
    session: Session,
    settings: Settings,
    options: CopyOptions,
    emit: Emit,
    images: int,
    held: Held,
    dry_run: bool,
    bundle: Mapping[str, BundleImage] | None = None,
) -> None:
    """The planned images into the bundle ``target``: the one pipeline of an export from the
    registries (``bundle`` None) and of a re-pack of another bundle (``bundle``: its images
    by their plan entry's source)."""
    volumes = settings.volume_size if target.kind == "oci-archive" else None
    # Volumes are written one member at a time, in an order a rerun repeats: one image
    # after another (volumes.py), each with its blobs at once.
    limiter = anyio.CapacityLimiter(1 if volumes else images)
    run = _Export(session, options, emit, limiter, held, volumes, bundle)
    if dry_run:
        await run.sizes(entries)
        return
    assert target.path is not None
    if target.kind == "oci-archive":
        await run.archive(target.path, entries, report)
    else:
        await run.layout(target.path, entries, report)
    report.bundle = str(target)


@dataclass
class _Export:
    session: Session
    options: CopyOptions
    emit: Emit
    limiter: anyio.CapacityLimiter
    held: Held
    volumes: int | None = None  # --max-size: the bundle as volumes of at most this many bytes
    # A re-pack: the source bundle's images by their entry's source; None: the registries
    bundle: Mapping[str, BundleImage] | None = None

    @contextlib.asynccontextmanager
    async def reading(self, entry: PlanEntry) -> AsyncIterator[tuple[Source, str | Digest]]:
        """Where an entry's image is read: the source bundle, else its registry."""
        from .endpoints.transports import open_source

        assert entry.item is not None and entry.settings is not None
        if self.bundle is not None:
            image = self.bundle[entry.source]
            yield image.source, image.digest
            return
        ref = entry.item.source
        context = Context(self.session, entry.settings, self.emit)
        async with open_source(Address("registry", reference=ref), context) as reading:
            yield reading.source, reading.identifier

    async def sizes(self, entries: list[PlanEntry]) -> None:
        """--dry-run: the declared sizes of the blobs the bundle would hold, each counted once."""
        from .endpoints.registry import RegistrySource
        from .mirror import FAILED

        counted: set[Digest] = set(self.held.blobs)

        async def size(entry: PlanEntry) -> None:
            assert entry.item is not None and entry.settings is not None
            ref = entry.item.source
            try:
                async with self.limiter:
                    if self.bundle is not None:
                        image = self.bundle[entry.source]
                        _, plan = await resolve(image.source, image.digest, self.options)
                    else:
                        client = self.session.client(ref, settings=entry.settings)
                        _, plan = await resolve(
                            RegistrySource(client, ref), ref.identifier, self.options
                        )
            except TransferError as exc:
                entry.action, entry.reason = FAILED, str(exc)
                return
            total = 0
            for blob in plan.blobs():
                if blob.digest not in counted:
                    counted.add(blob.digest)
                    total += blob.size
            entry.bytes = total

        async with anyio.create_task_group() as group:
            for entry in entries:
                group.start_soon(size, entry)

    async def copies(
        self,
        entries: list[PlanEntry],
        report: MirrorReport,
        destination: Callable[[Reference], Destination],
    ) -> None:
        from .mirror import FAILED

        async def one(entry: PlanEntry) -> None:
            assert entry.item is not None
            ref = entry.item.source
            try:
                async with self.limiter, self.reading(entry) as (source, identifier):
                    result = await copy_image(
                        source, destination(ref), identifier, str(ref), self.options, self.emit
                    )
            except TransferError as exc:
                entry.action, entry.reason = FAILED, str(exc)
                report.failed.append((entry.item, str(exc)))
                self.emit(Message(f"failed {ref}: {exc}"))
                return
            report.copied.append(result)
            report.copied_items.append((entry.item, result))

        async with anyio.create_task_group() as group:
            for entry in entries:
                group.start_soon(one, entry)
        if report.failed:
            item, error = report.failed[0]
            raise TransferError(
                f"{counted(len(report.failed), 'image')} could not be read, so the bundle was not "
                f"written; first: {item.source}: {error}"
            )

    async def archive(self, path: Path, entries: list[PlanEntry], report: MirrorReport) -> None:
        from .endpoints.bundle_write import BundleDestination, VolumeBundle

        bundle: BundleDestination | VolumeBundle
        if self.volumes:
            bundle = VolumeBundle(path, self.volumes, self.held.blobs)
        else:
            bundle = BundleDestination(path, self.held.blobs)
        async with contextlib.aclosing(bundle):
            if isinstance(bundle, BundleDestination):
                await bundle.start()
            await self.copies(entries, report, lambda ref: bundle)
            if bundle.relied_on:
                record = await bundle.put_document(record_bytes(bundle.relied_on.values()))
                bundle.annotations[RELIES_ON] = str(record.digest)
            if self.held.roots:
                bundle.annotations[SINCE] = ",".join(str(d) for d in self.held.roots)
            await bundle.commit()
        assert bundle.root is not None
        report.root = bundle.root
        report.relied_on = len(bundle.relied_on)

    async def layout(self, path: Path, entries: list[PlanEntry], report: MirrorReport) -> None:
        from .endpoints.layout import Layout

        layout = Layout(path)
        relied: dict[Digest, Descriptor] = {}
        referred: set[Digest] = set()
        with layout.in_use():
            await self.copies(
                entries,
                report,
                lambda ref: _LayoutBundle(layout, str(ref), self.held.blobs, relied, referred),
            )
            annotations = {}
            if relied:
                data = record_bytes(relied.values())
                desc = Descriptor(RELIES_ON_TYPE, Digest.of(data), len(data))
                await anyio.to_thread.run_sync(layout.put_bytes, desc, data)
                annotations[RELIES_ON] = str(desc.digest)
            if self.held.roots:
                annotations[SINCE] = ",".join(str(d) for d in self.held.roots)
            report.root = await anyio.to_thread.run_sync(
                _annotate_index, layout, annotations, referred
            )
        report.relied_on = len(relied)


def _annotate_index(layout: Layout, annotations: dict[str, str], referred: set[Digest]) -> Digest:
    """index.json with the bundle's own annotations (replacing earlier ones), written as a
    bundle file's is, byte for byte (``bundle_index``): the same images give the same root
    digest in a file and in a directory. Its digest."""
    from .durable import atomic_write
    from .localfile import read_capped

    path = layout.root / "index.json"
    raw = read_capped(path, MAX_INDEX_BYTES, str(path))
    doc = index_doc(raw, str(layout.root))
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ArchiveError(f"{layout.root}: index.json has no manifests list")
    data = bundle_index(entries, annotations, referred)
    if data != raw:
        layout.sync_blobs()
        atomic_write(path, data)
    return Digest.of(data)


def bundle_index(
    entries: list[object], annotations: dict[str, str], referred: set[Digest]
) -> bytes:
    """A layout's index.json ``entries`` as an archive bundle's index.json holds them
    (``ArchiveDestination._oci_index`` with ``_BundleParts``' order): images in order of
    name, each named as an archive names it (containerd's name and ref.name, then the
    original's digest and what was left out), then the referrers (``referred``, and every
    unnamed entry) in order of digest; compact JSON, the bundle's annotations last."""
    from .endpoints.archive_write import name_annotations
    from .endpoints.layout import ABSENT, INDEX_MEDIA_TYPE
    from .ociview import ORIGINAL

    images: list[tuple[str, dict[str, object]]] = []
    referrers: list[tuple[str, dict[str, object]]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ArchiveError("index.json: a manifests entry is not an object")
        found = entry.get("annotations")
        given = {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
        name = given.get(REF_NAME)
        if name is not None:
            named = name_annotations(name)
            for key in (ORIGINAL, ABSENT):  # the archive's order after the names
                if key in given:
                    named[key] = given[key]
            named.update({k: v for k, v in given.items() if k != CONTAINERD_NAME})
            entry = {**entry, "annotations": named}
        digest = str(entry.get("digest", ""))
        if name is None or Digest.parse(digest) in referred:
            referrers.append((digest, entry))
        else:
            images.append((name, entry))
    doc: dict[str, object] = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE}
    doc["manifests"] = [e for _, e in sorted(images, key=lambda pair: pair[0])] + [
        e for _, e in sorted(referrers, key=lambda pair: pair[0])
    ]
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return json.dumps(doc, separators=(",", ":")).encode()


class _LayoutBundle(LayoutDestination):
    """One image into a bundle that is an OCI layout: named by its full source reference (also
    as containerd reads it); blobs the far side holds are reported present and recorded."""

    def __init__(
        self,
        layout: Layout,
        name: str,
        leave_out: set[Digest],
        relied_on: dict[Digest, Descriptor],
        referred: set[Digest],
    ) -> None:
        super().__init__(layout, name, {CONTAINERD_NAME: name})
        self.leave_out = leave_out
        self.relied_on = relied_on
        self.referred = referred  # the referrers carried, by digest (listed after the images)

    async def put_referrer(self, referrer: Referrer, manifest: Manifest) -> None:
        self.referred.add(manifest.digest)
        await super().put_referrer(referrer, manifest)

    async def has_blob(self, desc: Descriptor) -> bool:
        if desc.digest in self.leave_out:
            if not self.layout.has_blob(desc):
                self.relied_on.setdefault(desc.digest, desc)
            return True
        return await super().has_blob(desc)
