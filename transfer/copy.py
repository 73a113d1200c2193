"""The one copy pipeline: every operation is a copy from a Source to a Destination.

manifest → (index filtered by platform) → every blob once → ask the destination what it lacks →
one task group, bounded by a limiter, transfers those (retry around each; the destination resumes)
→ child manifests → the top manifest and its tag (whoever opened the destination commits) → what
refers to each manifest copied (signatures, SBOMs; and what refers to those), each copied the
same way by digest and then recorded at the destination (``_Carry``, referrers.py), where both
endpoints can, within ``ReferrerBounds``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import anyio

from . import jsonio
from .digest import Digest
from .endpoints import (
    Destination,
    PartialSource,
    ReferrerDestination,
    ReferrerSource,
    Source,
)
from .errors import (
    IntegrityError,
    ManifestError,
    NotFound,
    PlatformNotFound,
    TooLarge,
    TransferError,
    first_error,
)
from .graph import GraphBounds, Rules, image_blobs, walk
from .manifest import MAX_CONFIG_BYTES, Descriptor, ImageManifest, Manifest, Platform
from .progress import (
    BlobDone,
    BlobProgress,
    BlobStart,
    Emit,
    ImageDone,
    ImageStart,
    Message,
    ignore,
)
from .referrers import (
    FilteringReferrerSource,
    Referrer,
    ReferrerBounds,
    ReferrerCheck,
    declared_subject,
)
from .retry import RetryPolicy, retrying

SMALL_BLOB = 1 << 20  # blobs up to this size ...
SMALL_JOBS = 4  # ... go this many times --jobs at once


# What a caller may name: one platform, several (--platform linux/amd64,linux/arm64) or none.
PlatformChoice = Platform | Sequence[Platform] | None


def choosing(choice: PlatformChoice) -> tuple[Platform | None, tuple[Platform, ...]]:
    """``CopyOptions``' (platform, platforms) for a choice: a list of one is that platform."""
    if choice is None or isinstance(choice, Platform):
        return choice, ()
    unique = tuple(dict.fromkeys(choice))
    if len(unique) <= 1:
        return (unique[0] if unique else None), ()
    return None, unique


@dataclass(frozen=True)
class CopyOptions:
    platform: Platform | None = None  # None: the whole index (copy keeps the source's digest)
    # Several platforms: a new index of the source's entries for any of them (its digest
    # differs from the source's unless it keeps every entry).
    platforms: tuple[Platform, ...] = ()
    # Copy an index whose source lacks some children (a one-platform export): what is there,
    # under the index's own digest, the rest named in the result. Otherwise that is an error.
    allow_absent: bool = False
    jobs: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    bounds: GraphBounds = field(default_factory=GraphBounds)  # what one index graph may hold
    # Carry what refers to each manifest copied (signatures, SBOMs, attestations, and what
    # refers to those), where both sides can (referrers.py); only these artifact types when
    # some are named, at every level of the tree.
    referrers: bool = True
    referrer_types: tuple[str, ...] = ()
    referrer_bounds: ReferrerBounds = field(default_factory=ReferrerBounds)
    # The run's bound on large blob transfers at once, shared by the images it copies at once
    # (Session.transfers); None: only this image's --jobs.
    transfers: anyio.CapacityLimiter | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CopyResult:
    reference: str
    manifest: Manifest  # what the destination's tag now points at
    source_digest: Digest  # the digest the source's reference resolved to (an index, maybe)
    bytes_transferred: int
    blobs_transferred: int
    blobs_skipped: int
    seconds: float
    absent: tuple[Descriptor, ...] = ()  # children of the index the source did not hold
    # Referrers now at the destination, recorded where readers look (carried, or there already).
    referrers: tuple[Digest, ...] = ()

    @property
    def digest(self) -> Digest:
        return self.manifest.digest


@dataclass
class _Plan:
    top: Manifest
    children: list[Manifest]  # manifests below the top one, deepest first
    images: list[ImageManifest]
    absent: list[Descriptor] = field(default_factory=list)  # children the source lacks

    def blobs(self) -> list[Descriptor]:
        return image_blobs(self.images)


async def resolve(
    source: Source, identifier: str | Digest, options: CopyOptions, emit: Emit = ignore
) -> tuple[Manifest, _Plan]:
    """Read the manifest and, for an index, the children the options select."""
    policy = options.retry
    first = await retrying(
        f"manifest {source.name}", lambda: source.get_manifest(identifier), policy, emit
    )

    async def get(desc: Descriptor) -> Manifest:
        return await retrying(
            f"manifest {desc.digest}", lambda: source.get_manifest(desc.digest), policy, emit
        )

    rules = Rules(platform=options.platform, bounds=options.bounds, absent=_absent(source))
    root = first
    if options.platforms and options.platform is None and first.is_index:
        root = filter_index(first, options.platforms)
        if root is not first:
            emit(
                Message(
                    f"{source.name}: a new index of {', '.join(map(str, options.platforms))}: "
                    f"its digest {root.digest} differs from the source's {first.digest}"
                )
            )
    graph = await walk(source.name, [root], get, rules)
    for image in graph.images:
        # Refused before anything is fetched: nothing reads a config past the cap anyway.
        config = image.image().config
        if config.size > MAX_CONFIG_BYTES:
            raise ManifestError(
                f"{source.name}: the config {config.digest} declares {config.size} bytes, "
                f"over the {MAX_CONFIG_BYTES} byte limit",
                digest=str(image.digest),
            )
    if options.platform is not None or not first.is_index:
        chosen = graph.images[0]  # the platform's image, from an index or the image itself
        return first, _Plan(chosen, [], [chosen.image()])
    if graph.absent and not options.allow_absent:
        raise ManifestError(
            f"{source.name} lacks {describe_absent(graph.absent)} of index {first.digest}",
            digest=str(first.digest),
            hint="send one platform it holds (--platform OS/ARCH), or fetch the rest first",
        )
    # Every manifest below the top one, children before the indexes that list them.
    images = [m.image() for m in graph.images]
    return first, _Plan(root, graph.manifests[:-1], images, graph.absent)


def filter_index(index: Manifest, platforms: Sequence[Platform]) -> Manifest:
    """The index with only its entries for any of ``platforms`` (in its own order), or the
    index itself when that is every entry. A filtered index is a new document: its digest
    differs from the source's. None of them offered: PlatformNotFound."""
    entries = index.index().manifests
    chosen = {
        d.digest for d in entries if d.platform and any(p.matches(d.platform) for p in platforms)
    }
    if not chosen:
        index.index().select(platforms[0])  # raises, naming what the index offers
        raise PlatformNotFound(f"no image for {', '.join(map(str, platforms))} in the index")
    if all(d.digest in chosen for d in entries):
        return index
    doc = jsonio.loads(index.raw, strict=True)
    doc["manifests"] = [
        entry for entry in doc["manifests"] if Digest.parse(entry["digest"]) in chosen
    ]
    raw = json.dumps(doc, indent=3).encode()
    return Manifest.from_bytes(raw, index.media_type, what=f"index filtered from {index.digest}")


def describe_absent(children: Iterable[Descriptor]) -> str:
    """``linux/arm64 (sha256:…), …``: the children an index names that a source lacks."""
    return ", ".join(f"{d.platform or 'no platform'} ({d.digest})" for d in children)


def _absent(source: Source) -> Callable[[Manifest], set[Digest]] | None:
    """The children of an index a source that may hold only part of it lacks."""
    if not isinstance(source, PartialSource):
        return None
    partial = source
    return lambda index: {d.digest for d in partial.absent(index)}


async def copy_image(
    source: Source,
    destination: Destination,
    identifier: str | Digest,
    tag: str | None,
    options: CopyOptions,
    emit: Emit = ignore,
) -> CopyResult:
    """Copy one image (or index) ``identifier`` of ``source`` to ``destination`` as ``tag``."""
    started = time.monotonic()
    first, plan = await resolve(source, identifier, options, emit)
    blobs = plan.blobs()
    emit(ImageStart(reference=source.name, blobs=len(blobs), bytes=sum(b.size for b in blobs)))
    mover = _Mover(source, destination, options, emit)
    missing, skipped = await mover.move(plan)
    await _put_manifest(destination, plan.top, tag, options.retry, emit)
    # No commit here: whoever opened the destination commits once everything went in (an
    # archive holds several images of a save; see endpoints/transports.py).
    received = mover.received  # the image's own bytes; its referrers are counted apart
    subjects = [m.descriptor() for m in (*plan.children, plan.top)]
    carried = await _Carry(mover, source.name).run(subjects)
    result = CopyResult(
        reference=source.name,
        manifest=plan.top,
        source_digest=first.digest,
        bytes_transferred=received,
        blobs_transferred=len(missing),
        blobs_skipped=len(skipped),
        seconds=round(time.monotonic() - started, 3),
        absent=tuple(plan.absent),
        referrers=tuple(carried),
    )
    emit(
        ImageDone(
            reference=result.reference,
            digest=str(result.digest),
            bytes_transferred=result.bytes_transferred,
            blobs_transferred=result.blobs_transferred,
            blobs_skipped=result.blobs_skipped,
            seconds=result.seconds,
            media_type=plan.top.media_type,
        )
    )
    return result


class _Mover:
    """Moves one plan's blobs and manifests (children first, the top one left to the caller),
    with the limiters of one copy: an image's referrers share its ``--jobs``."""

    def __init__(
        self, source: Source, destination: Destination, options: CopyOptions, emit: Emit
    ) -> None:
        self.source, self.destination, self.options, self.emit = source, destination, options, emit
        self.received = 0
        # A small blob costs round trips, not bandwidth: more of them at once hide the
        # latency. One slot for all when one at a time is asked for (-j 1) or is all the
        # destination takes (a tar being written).
        self.limiter = anyio.CapacityLimiter(options.jobs if destination.concurrent else 1)
        self.small = self.limiter
        # Always taken after the image's own: one order, so two images never wait on each other.
        self.run_wide = options.transfers or contextlib.nullcontext()
        if destination.concurrent and options.jobs > 1:
            self.small = anyio.CapacityLimiter(options.jobs * SMALL_JOBS)

    async def move(self, plan: _Plan) -> tuple[list[Descriptor], list[Descriptor]]:
        """The plan's blobs the destination lacks, then the manifests below its top one; the
        blobs moved and those skipped (there already)."""
        source, destination, options, emit = self.source, self.destination, self.options, self.emit
        blobs = plan.blobs()
        missing = await _missing(destination, blobs, options.jobs, options.retry, emit)
        wanted = {m.digest for m in missing}
        skipped = [b for b in blobs if b.digest not in wanted]
        for desc in skipped:
            emit(BlobDone(digest=str(desc.digest), size=desc.size, transferred=0, skipped=True))

        async def transfer(desc: Descriptor) -> None:
            if desc.size <= SMALL_BLOB:
                async with self.small:
                    got = await _transfer_blob(source, destination, desc, options.retry, emit)
            else:
                async with self.limiter, self.run_wide:
                    got = await _transfer_blob(source, destination, desc, options.retry, emit)
            self.received += got

        await _run_all(transfer, missing)
        # Children first, the tagged top manifest last: a tag never names what is not there.
        for child in plan.children:
            await _put_manifest(destination, child, None, options.retry, emit)
        return missing, skipped


class _Carry:
    """An image's referrers, and theirs, copied by digest after it and recorded at the
    destination (``put_referrer``), level by level, within ``ReferrerBounds``: a hostile
    registry's huge, cyclic or deep listing stops with one line said, the image copied."""

    def __init__(self, mover: _Mover, name: str) -> None:
        self.mover = mover
        self.name = name
        self.options = mover.options
        self.emit = mover.emit
        self.carried: list[Digest] = []
        self.tried = 0  # referrers tried (carried, there already, missing or refused)
        self.dangling = 0
        self.missed = 0  # dangling ones in a row

    async def run(self, subjects: Sequence[Descriptor]) -> list[Digest]:
        source, destination, options = self.mover.source, self.mover.destination, self.options
        if not options.referrers:
            return []
        if not isinstance(source, ReferrerSource) or not isinstance(
            destination, ReferrerDestination
        ):
            return []  # an endpoint that holds no referrers: nothing to carry or record
        bounds = options.referrer_bounds
        seen = {s.digest for s in subjects}  # a listing that names an ancestor is no edge
        frontier, depth = list(subjects), 0
        while frontier:
            if depth == bounds.depth:
                for subject in frontier:
                    listed = await self._list(source, subject)
                    if any(r.descriptor.digest not in seen for r in listed):
                        self._say(f"referrers nested more than {depth} levels deep: not carried")
                        break
                break
            depth += 1
            below: list[Descriptor] = []
            for subject in frontier:
                for referrer in await self._list(source, subject):
                    desc = referrer.descriptor
                    if desc.digest in seen:
                        continue
                    seen.add(desc.digest)
                    if options.referrer_types and desc.artifact_type not in options.referrer_types:
                        continue
                    # Every one tried counts, found or not: each costs requests, and a
                    # listing of made-up digests must be bounded like one of real referrers.
                    if self.tried >= bounds.count:
                        self._say(f"more than {bounds.count} referrers: the rest not carried")
                        return self._done()
                    self.tried += 1
                    if await self._carry(referrer, destination):
                        self.carried.append(desc.digest)
                        below.append(desc)
                    elif self.missed >= bounds.misses:
                        self._say(
                            f"{self.missed} referrers listed in a row are not in the source: "
                            "the rest not tried"
                        )
                        return self._done()
            frontier = below
        return self._done()

    def _done(self) -> list[Digest]:
        if self.dangling:
            self._say(f"{self.dangling} referrers listed are not in the source: skipped")
        if self.carried:
            self.emit(Message(f"{self.name}: {len(self.carried)} referrers carried"))
        return self.carried

    def _say(self, text: str) -> None:
        self.emit(Message(f"warning: {self.name}: {text}"))

    async def _list(self, source: ReferrerSource, subject: Descriptor) -> list[Referrer]:
        types = self.options.referrer_types

        async def ask() -> list[Referrer]:
            if types and isinstance(source, FilteringReferrerSource):
                return await source.get_referrers_filtered(subject, types)
            return await source.get_referrers(subject)

        try:
            return await retrying(
                f"referrers of {subject.digest}", ask, self.options.retry, self.emit
            )
        except (ManifestError, TooLarge) as exc:  # a listing past a bound, or not one
            self._say(f"referrers of {subject.digest} not carried: {exc}")
            return []

    async def _carry(self, referrer: Referrer, destination: ReferrerDestination) -> bool:
        """Copy one referrer by digest (its blobs first) and record it; False when it is not
        carried: the source does not hold what it lists (a dangling entry of a fallback
        index), it is not about the subject it is listed under, or the destination keeps
        something else where it would be recorded (said, the image not failed)."""
        mover, policy, emit = self.mover, self.options.retry, self.emit
        digest = referrer.descriptor.digest
        try:
            if isinstance(destination, ReferrerCheck) and await retrying(
                f"referrer {digest}", lambda: destination.has_referrer(referrer), policy, emit
            ):
                self.missed = 0
                return True  # there and recorded: nothing moves, nothing is written
        except (ManifestError, TooLarge) as exc:  # e.g. another signature under its tag
            self._say(f"referrer {digest} not carried: {exc}")
            return False
        single = CopyOptions(jobs=self.options.jobs, retry=policy, bounds=self.options.bounds)
        try:
            _, plan = await resolve(mover.source, digest, single, emit)
        except NotFound:
            self.dangling += 1
            self.missed += 1
            return False
        except ManifestError as exc:
            self._say(f"referrer {digest} not carried: {exc}")
            return False
        self.missed = 0
        if referrer.tag is None:
            # A listing (an API's answer, a fallback index) is only a claim: what a manifest
            # is about is its own ``subject``. Another image's SBOM, or an unrelated image,
            # carried as this one's would be kept, saved and copied as if it were.
            about = declared_subject(plan.top)
            if about != referrer.subject:
                what = f"its subject is {about}" if about else "it names no subject"
                self._say(
                    f"referrer {digest} is listed under {referrer.subject}, but {what}: not carried"
                )
                return False
        await mover.move(plan)
        await _put_manifest(mover.destination, plan.top, None, policy, emit)
        try:
            await retrying(
                f"referrer {digest}",
                lambda: destination.put_referrer(referrer, plan.top),
                policy,
                emit,
            )
        except (ManifestError, TooLarge) as exc:  # e.g. a foreign fallback tag: left as it is
            self._say(f"referrer {digest} copied by digest, not recorded: {exc}")
            return False
        return True


async def carry_referrers(
    source: Source,
    destination: Destination,
    subjects: Sequence[Descriptor],
    options: CopyOptions,
    emit: Emit = ignore,
) -> list[Digest]:
    """The referrers of ``subjects`` (already at the destination) carried as a copy carries
    them: for a mirror's image that is unchanged, whose referrers may not be."""
    name = getattr(source, "name", "source")
    return await _Carry(_Mover(source, destination, options, emit), name).run(subjects)


async def _put_manifest(
    destination: Destination, manifest: Manifest, tag: str | None, policy: RetryPolicy, emit: Emit
) -> None:
    await retrying(
        f"manifest {manifest.digest}",
        lambda: destination.put_manifest(manifest, tag),
        policy,
        emit,
    )


async def _missing(
    destination: Destination,
    blobs: list[Descriptor],
    jobs: int,
    policy: RetryPolicy,
    emit: Emit,
) -> list[Descriptor]:
    """Ask the destination about every blob at once (a registry answers each with a round trip)."""
    present: set[Digest] = set()
    limiter = anyio.CapacityLimiter(max(jobs, 1))

    async def check(desc: Descriptor) -> None:
        async with limiter:
            found = await retrying(
                f"blob {desc.digest}", lambda: destination.has_blob(desc), policy, emit
            )
            if found:
                present.add(desc.digest)

    await _run_all(check, blobs)
    return [b for b in blobs if b.digest not in present]


async def _transfer_blob(
    source: Source, destination: Destination, desc: Descriptor, policy: RetryPolicy, emit: Emit
) -> int:
    total = moved = 0
    digest = str(desc.digest)

    def progress(advance: int) -> None:
        nonlocal moved
        moved += advance
        emit(BlobProgress(digest=digest, advance=advance))

    def opener(
        offset: int, end: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterable[bytes]]:
        if end is None:  # one event per stream of the blob, not per parallel range
            emit(BlobStart(digest=digest, size=desc.size, offset=offset))
        return source.open_blob(desc, offset, end)

    async def attempt() -> int:
        nonlocal total
        try:
            got = await destination.put_blob(desc, opener, progress)
        except IntegrityError as exc:
            if source.local is not None:  # the same file gives the same bytes: say so at once
                exc.retryable = False
                exc.hint = exc.hint or f"its copy in {source.local} is damaged"
            raise
        total += got
        return got

    try:
        # An attempt that moved bytes restarts the retry clock: a long download is resumed.
        await retrying(f"blob {digest}", attempt, policy, emit, progress=lambda: moved)
    except TransferError as exc:
        exc.digest = exc.digest or digest
        raise
    emit(BlobDone(digest=digest, size=desc.size, transferred=total))
    return total


async def _run_all(
    func: Callable[[Descriptor], Coroutine[Any, Any, None]], items: Iterable[Descriptor]
) -> None:
    """Run ``func`` over items in one task group; the first real error is raised bare."""
    try:
        async with anyio.create_task_group() as group:
            for item in items:
                group.start_soon(func, item)
    except BaseExceptionGroup as group_error:
        raise first_error(group_error) from None
