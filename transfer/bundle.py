"""Air-gapped bundles: a mirror set in one file (or layout), shipped whole or as what changed.

``xfer mirror CONFIG oci-archive:BUNDLE.tar`` (or ``oci:DIR``) exports every image the sync
YAML names into one bundle, the layout ``xfer save`` writes (OCI layout, and docker's
``manifest.json`` when the bundle is whole); each image's ``org.opencontainers.image.ref.name``
and ``io.containerd.image.name`` is its full source reference. ``xfer mirror oci-archive:BUNDLE.tar
HOST/PREFIX`` imports it: each image to ``PREFIX/<source repository>:<tag>``. ``xfer mirror
oci-archive:A.tar oci:DIR`` (any bundle into any bundle) re-packs it: the export's pipeline with
the bundle as where images are read, so the same images give the same root digest.

The bundle's root digest is the digest of its ``index.json``: it names the whole content, since
index.json names every image by digest and (below) the record of what the bundle relies on.

Incremental bundles (``--since OLD``, repeatable: a bundle, an OCI layout, or an ``index.json``
of what the far side holds) leave out every blob OLD holds; every manifest is still included.
What the bundle then relies on from outside is recorded in one content-addressed JSON blob of
the bundle (``blobs/sha256/HEX``, media type ``RELIES_ON_TYPE``)::

    {"mediaType": "application/vnd.dev.xfer.bundle.relies-on.v1+json",
     "blobs": [{"digest": "sha256:…", "size": N}, …]}          # sorted by digest

named by the annotation ``dev.xfer.bundle.relies-on`` (its digest) on index.json itself, so the
root digest covers it; ``dev.xfer.bundle.since`` lists the root digests of the OLD bundles it
was made against (comma-separated, where they were bundles or layouts). Readers
(``archive_read``) accept an image whose blobs are missing from the file when the record names
them; an import first checks, with HEADs, that the target registry holds every one of them
that the images it is about to write use, and names the missing ones before writing anything.
An incremental bundle has no ``manifest.json``: ``docker load`` needs every layer in the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from . import jsonio
from .copy import CopyOptions, PlatformChoice, _Plan, copy_image, resolve
from .digest import Digest
from .endpoints import Destination, Source
from .endpoints.address import Address
from .endpoints.archive_read import CONTAINERD_NAME
from .endpoints.layout import MAX_INDEX_BYTES, REF_NAME, Layout, LayoutDestination
from .endpoints.layout_referrers import entry_name, is_full_reference
from .endpoints.registry import RunMounts
from .endpoints.transports import Context, Origin, open_destination
from .errors import ArchiveError, TransferError, UsageError, counted
from .manifest import Descriptor, Manifest
from .progress import Emit, Message, ignore
from .reference import Reference, parse
from .referrers import Referrer, is_referrer_tag

if TYPE_CHECKING:
    from .api import Settings
    from .mirror import MirrorReport, PlanEntry, Shard, SyncSource
    from .session import Session

RELIES_ON = "dev.xfer.bundle.relies-on"
SINCE = "dev.xfer.bundle.since"
RELIES_ON_TYPE = "application/vnd.dev.xfer.bundle.relies-on.v1+json"
# ~100 bytes a blob: far above any real bundle's record, bounded as index.json is.
MAX_RECORD_BYTES = 64 << 20
HEADS_AT_ONCE = 32  # manifest walks and HEADs in flight at once (small requests)


def record_bytes(blobs: Iterable[Descriptor]) -> bytes:
    """The relies-on record: each blob once, sorted by digest (the same set, the same bytes)."""
    unique = {d.digest: d for d in blobs}
    doc = {
        "mediaType": RELIES_ON_TYPE,
        "blobs": [{"digest": str(d.digest), "size": d.size} for _, d in sorted(unique.items())],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_record(raw: bytes, where: str) -> dict[Digest, Descriptor]:
    """A relies-on record's blobs by digest; anything else in it is an ``ArchiveError``."""
    try:
        doc = jsonio.loads(raw, strict=True)
        if not isinstance(doc, dict) or doc.get("mediaType") != RELIES_ON_TYPE:
            raise ValueError(f"not a {RELIES_ON_TYPE}")
        blobs = doc.get("blobs")
        if not isinstance(blobs, list):
            raise ValueError("no blobs list")
        found: dict[Digest, Descriptor] = {}
        for entry in blobs:
            size = entry.get("size") if isinstance(entry, dict) else None
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError("a blob without a size")
            digest = Digest.parse(str(entry.get("digest")))
            found[digest] = Descriptor("application/octet-stream", digest, size)
        return found
    except (ValueError, TransferError, jsonio.JSONError) as exc:
        raise ArchiveError(f"{where}: the bundle's relies-on record is not valid: {exc}") from None


def record_digest(index: object, where: str) -> Digest | None:
    """The relies-on record an index.json document names, if any."""
    annotations = index.get("annotations") if isinstance(index, dict) else None
    text = annotations.get(RELIES_ON) if isinstance(annotations, dict) else None
    if text is None:
        return None
    try:
        return Digest.parse(str(text))
    except TransferError:
        raise ArchiveError(f"{where}: index.json's {RELIES_ON} is not a digest") from None


# ---- what the far side holds (--since) -----------------------------------------------------------


@dataclass
class Held:
    """The blobs a far side holds (every one of them left out of an incremental bundle), and
    the root digests of the bundles that say so."""

    blobs: set[Digest]
    roots: list[Digest]


def _blob_names(names: Iterable[str]) -> set[Digest]:
    found = set()
    for name in names:
        parts = name.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "blobs":
            try:
                found.add(Digest.parse(f"{parts[1]}:{parts[2]}"))
            except TransferError:
                continue  # not a blob (a stray file): nothing claimed
    return found


def held_by_archive(path: Path) -> Held:
    """An earlier bundle (a tar): every blob member, and what it itself relied on."""
    from .endpoints.archive_read import relied_on_in_archive
    from .endpoints.tarindex import TarIndex

    tar = TarIndex.read(path)
    try:
        if "index.json" not in tar:
            raise UsageError(f"--since {path}: not an OCI archive (no index.json)")
        raw = tar.read_small("index.json", MAX_INDEX_BYTES)
        blobs = _blob_names(tar.names())
        blobs |= set(relied_on_in_archive(tar, _index_doc(raw, str(path)), path))
        return Held(blobs, [Digest.of(raw)])
    finally:
        tar.close()


def held_by_layout(path: Path) -> Held:
    """An OCI layout directory (a bundle exported as ``oci:DIR``, or what the far side keeps):
    every file under ``blobs/``, and what its index.json says it relied on."""
    from .localfile import read_capped

    if not (path / "oci-layout").is_file():
        raise UsageError(f"--since {path}: not an OCI image layout (no oci-layout file)")
    names = []
    for algorithm in ("sha256", "sha512"):
        directory = path / "blobs" / algorithm
        if directory.is_dir():
            names += [f"blobs/{algorithm}/{entry}" for entry in os.listdir(directory)]
    blobs = _blob_names(names)
    raw = read_capped(path / "index.json", MAX_INDEX_BYTES, str(path / "index.json"))
    blobs |= set(_relied_on_in_layout(path, _index_doc(raw, str(path)), str(path)))
    return Held(blobs, [Digest.of(raw)])


def _relied_on_in_layout(root: Path, doc: object, where: str) -> dict[Digest, Descriptor]:
    """The blobs the relies-on record named by a layout's index.json ``doc`` lists, checked
    against its digest (as ``relied_on_in_archive`` checks an archive's)."""
    from .localfile import read_capped

    record = record_digest(doc, where)
    if record is None:
        return {}
    file = root / "blobs" / record.algorithm / record.encoded
    data = read_capped(file, MAX_RECORD_BYTES, str(file))
    if Digest.of(data, record.algorithm) != record:
        raise ArchiveError(f"{root}: its relies-on record {record} is damaged")
    return parse_record(data, str(root))


def _index_doc(raw: bytes, where: str) -> dict[str, object]:
    try:
        doc = jsonio.loads(raw, strict=True)
    except jsonio.JSONError as exc:
        raise ArchiveError(f"{where}: index.json is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ArchiveError(f"{where}: index.json is not an OCI index")
    return doc


async def held_by_index(
    path: Path, session: Session, settings: Settings, sources: Sequence[SyncSource] = ()
) -> Held:
    """An ``index.json`` of what the far side holds: every image it names (by its full source
    reference and digest) was imported whole there, so every blob of its graph is held; the
    graphs are read from the source registries (manifests only). The file names any host it
    likes: one of the sync YAML's registries is read with that source's settings (its TLS and
    credentials, ``--creds`` included); any other host only with what the credential files
    give it, as a configured mirror is, never with ``--creds``."""
    from .copy import CopyOptions, resolve
    from .endpoints.registry import RegistrySource
    from .localfile import read_capped
    from .mirror import _settings_for as settings_for
    from .reference import parse

    own: dict[str, Settings] = {}
    for source in sources:
        own.setdefault(parse(f"{source.registry}/x").registry, settings_for(source, settings))

    raw = read_capped(path, MAX_INDEX_BYTES, str(path))
    doc = _index_doc(raw, str(path))
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise UsageError(f"--since {path}: index.json has no manifests list")
    held: set[Digest] = set()
    options = CopyOptions(allow_absent=True, jobs=settings.jobs, retry=settings.retry)
    limiter = anyio.CapacityLimiter(HEADS_AT_ONCE)

    async def walk(entry: Descriptor) -> None:
        name = entry_name(entry)
        if not name:
            raise UsageError(f"--since {path}: an image ({entry.digest}) without its reference")
        ref = parse(name)
        mine = own.get(ref.registry)
        async with limiter:
            if mine is not None:
                client = session.client(ref, settings=mine)
            else:
                client = session.client(ref, settings=settings, explicit_credentials=False)
            source = RegistrySource(client, ref)
            top, plan = await resolve(source, entry.digest, options)
        held.update(d.digest for d in plan.blobs())
        held.update(m.digest for m in [top, plan.top, *plan.children])

    descriptors = []
    for at, item in enumerate(entries):
        try:
            descriptors.append(Descriptor.from_json(item, what=f"{path}: manifests[{at}]"))
        except TransferError as exc:
            raise UsageError(f"--since {path}: {exc}") from None
    async with anyio.create_task_group() as group:
        for desc in descriptors:
            group.start_soon(walk, desc)
    return Held(held, [Digest.of(raw)])


async def held_by(
    since: Sequence[str],
    session: Session,
    settings: Settings,
    sources: Sequence[SyncSource] = (),
) -> Held:
    """What every ``--since`` names, together: ``oci-archive:FILE`` or a tar file, ``oci:DIR``
    or a directory, or an ``index.json`` file (its images read from ``sources``' registries
    with their settings, from any other host without ``--creds``)."""
    held = Held(set(), [])
    for text in since:
        kind, _, rest = text.partition(":")
        path = Path(rest) if kind in ("oci", "oci-archive") and rest else Path(text)
        if kind == "oci" or path.is_dir():
            found = await anyio.to_thread.run_sync(held_by_layout, path)
        elif not path.is_file():
            raise UsageError(f"--since {text}: no such file or directory")
        elif kind != "oci-archive" and _is_json(path):
            found = await held_by_index(path, session, settings, sources)
        else:
            found = await anyio.to_thread.run_sync(held_by_archive, path)
        held.blobs |= found.blobs
        held.roots += found.roots
    return held


def _is_json(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(512).lstrip()[:1] == b"{"


# ---- export: a mirror set into one bundle ------------------------------------------------------


async def export(
    config_text: str,
    target: Address,
    settings: Settings | None = None,
    *,
    platform: PlatformChoice = None,
    emit: Emit = ignore,
    session: Session | None = None,
    images: int = 4,
    shard: Shard | None = None,
    dry_run: bool = False,
    since: Sequence[str] = (),
) -> MirrorReport:
    """Every image the sync YAML names into one bundle (``oci-archive:FILE`` or ``oci:DIR``),
    read ``images`` at once, each blob written once; ``since``: leave out what those hold."""
    from .api import session_for
    from .mirror import COPY, SKIP, MirrorItem, MirrorReport, PlanEntry, parse_config, plan
    from .mirror import _settings_for as settings_for

    if images < 1:
        raise UsageError("--images must be at least 1")
    sources = parse_config(config_text)
    async with session_for(settings, session) as (settings, session):
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
            target, entries, report, session, settings, options, emit, images, held, dry_run
        )
        return report


async def repack(
    source: Address,
    target: Address,
    settings: Settings | None = None,
    *,
    platform: PlatformChoice = None,
    emit: Emit = ignore,
    session: Session | None = None,
    images: int = 4,
    shard: Shard | None = None,
    dry_run: bool = False,
    since: Sequence[str] = (),
) -> MirrorReport:
    """A bundle (``oci-archive:FILE`` or ``oci:DIR``) into another bundle: a file into a
    directory or back, re-split into volumes (``--max-size``), or cut down to what changed
    (``since``). The export's pipeline with the source bundle as where images are read: each
    image keeps its name (its full source reference), so the same images give the same
    root digest however they came."""
    from .api import session_for
    from .mirror import COPY, MirrorItem, MirrorReport, PlanEntry

    if images < 1:
        raise UsageError("--images must be at least 1")
    _refuse_same(source, target)
    async with (
        session_for(settings, session) as (settings, session),
        open_bundle(source, emit) as opened,
    ):
        options = settings.copy_options(  # --no-referrers, --referrers-type too
            platform, transfers=session.transfers(settings.jobs)
        )
        report = MirrorReport()
        by_source: dict[str, _Image] = {}
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
            dry_run,
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
    bundle: Mapping[str, _Image] | None = None,
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
    bundle: Mapping[str, _Image] | None = None

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
                entry.action, entry.reason = "failed", str(exc)
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

        async def one(entry: PlanEntry) -> None:
            assert entry.item is not None
            ref = entry.item.source
            try:
                async with self.limiter, self.reading(entry) as (source, identifier):
                    result = await copy_image(
                        source, destination(ref), identifier, str(ref), self.options, self.emit
                    )
            except TransferError as exc:
                entry.action, entry.reason = "failed", str(exc)
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
    doc = _index_doc(raw, str(layout.root))
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


# ---- import: a bundle into a registry -------------------------------------------------------


@dataclass
class _Image:
    """One image of a bundle: its name (full source reference) and how to read it."""

    name: str
    digest: Digest
    source: Source


@dataclass
class _Opened:
    """A bundle open for reading: its named images, the blobs it relies on from outside, and
    the root digests of the bundles it was made after (its ``dev.xfer.bundle.since``)."""

    images: list[_Image]
    relied: dict[Digest, Descriptor]
    since: list[str]


@contextlib.asynccontextmanager
async def open_bundle(address: Address, emit: Emit = ignore) -> AsyncIterator[_Opened]:
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
                found.append(_Image(image.names[0], image.identifier, source))
            since = _since(archive.annotations)
            yield _Opened(found, archive.relied_on, since)
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
            found.append(_Image(name, desc.digest, LayoutSource(layout, name)))
        else:
            skipped(entry.digest, name)
    relied, since = await anyio.to_thread.run_sync(_layout_relies_on, layout)
    # Read only, as every oci:DIR source is: no store lock, whose .xfer/ a bundle on
    # read-only media (where air-gapped bundles arrive) cannot hold.
    yield _Opened(found, relied, since)


def _since(annotations: object) -> list[str]:
    """The root digests an index.json's ``dev.xfer.bundle.since`` lists."""
    text = annotations.get(SINCE) if isinstance(annotations, dict) else None
    return [part for part in str(text).split(",") if part] if text else []


def _layout_relies_on(layout: Layout) -> tuple[dict[Digest, Descriptor], list[str]]:
    from .localfile import read_capped

    path = layout.root / "index.json"
    doc = _index_doc(read_capped(path, MAX_INDEX_BYTES, str(path)), str(path))
    return _relied_on_in_layout(layout.root, doc, str(path)), _since(doc.get("annotations"))


async def import_bundle(
    source: Address,
    destination: str,
    settings: Settings | None = None,
    *,
    dest_settings: Settings | None = None,
    scoped: bool = False,
    platform: PlatformChoice = None,
    emit: Emit = ignore,
    session: Session | None = None,
    images: int = 4,
    shard: Shard | None = None,
    dry_run: bool = False,
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
    if images < 1:
        raise UsageError("--images must be at least 1")
    async with (
        session_for(settings, session) as (settings, session),
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

        async def decide(image: _Image, entry: PlanEntry) -> None:
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
        if dry_run:
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

        async def copy_one(image: _Image, entry: PlanEntry) -> None:
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
                entry.action, entry.reason = "failed", str(exc)
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
        f"{source}: {target} lacks {len(needed)} blobs this incremental bundle relies "
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


def _entry_reference(image: _Image, emit: Emit) -> tuple[Reference, str | None]:
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
    copying: list[tuple[_Image, PlanEntry]],
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
    copying: list[tuple[_Image, PlanEntry]],
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
