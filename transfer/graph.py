"""One walk over an image graph: index → child manifests → config and layers.

Copy, unpack, save and gc all walk the same graph; this is the one walk they share. The
decisions are plain functions (which children a platform choice follows, the depth and size
bounds, which layers are foreign, what is read as a manifest), and the walk itself is a
generator that asks for manifests and is told them (``_Walker.run``), so it does no I/O and is
tested as tables. Two drivers feed it: ``walk`` awaits an async ``get`` (a registry, an
archive), ``walk_sync`` calls a blocking one (the store, a layout, an archive being written).

Each distinct manifest is fetched once per walk, however often it is listed; a digest listed
again must be described as it was read (media type, size). Manifests are kept children first,
the indexes that list them after, so whoever writes them out never names what is not there yet.

Edges have a kind (``Edge``). Those a manifest's bytes hold (child, config, layer) are found
here; those it does not (a store's OCI view naming its Docker original, and later the
referrers of a manifest) come from an optional ``related`` callable, as one more kind of edge.
"""

from __future__ import annotations

import enum
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

from .digest import Digest
from .errors import ManifestError, PlatformNotFound, TransferError
from .manifest import Descriptor, ImageManifest, Index, Manifest, Platform

# An index of indexes is legal; deeper nesting is an attack (reliability case 25).
MAX_INDEX_DEPTH = 2
# Real indexes list tens of manifests; these bound what a hostile graph can make a walk fetch
# and keep: each distinct manifest counts once, however often it is listed.
MAX_GRAPH_MANIFESTS = 10_000
MAX_GRAPH_BYTES = 64 << 20  # sum of the sizes the descriptors declare (and are checked against)

# Layers that registries must not redistribute (Windows base layers): skipped as docker does.
FOREIGN_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


class Edge(enum.Enum):
    """Why one node of the graph leads to another."""

    CHILD = "child"  # an index's entry: an image manifest or an index below it
    CONFIG = "config"
    LAYER = "layer"
    ORIGINAL = "original"  # a store's OCI view of a Docker image → the original it names
    SUBJECT = "subject"  # reserved: a manifest → the manifest it is about
    REFERRER = "referrer"  # reserved: a manifest → one whose subject it is


# --- the decisions -----------------------------------------------------------------------------


def is_foreign(desc: Descriptor) -> bool:
    """A layer no copy fetches: non-distributable, with URLs of its own (as docker skips it)."""
    return desc.media_type in FOREIGN_TYPES and bool(desc.urls)


def is_manifest_type(media_type: str) -> bool:
    """Is an index entry of this type read as a manifest when the walk keeps unknown entries as
    blobs (``Rules.read_unknown`` false)? Broad on purpose: anything that looks like a manifest
    is read, so one that cannot be is reported rather than silently kept as a plain blob."""
    return "manifest" in media_type or "image.index" in media_type


def choose(
    index: Index,
    platform: Platform,
    *,
    absent: Collection[Digest] = frozenset(),
    fallback: bool = False,
) -> Descriptor:
    """The entry of ``index`` for ``platform`` (PlatformNotFound when there is none). The
    source may lack it (``absent``): it is still the one chosen, for the caller to say so,
    unless ``fallback``: then the first held entry for the platform, else the first held."""
    if not fallback:
        return index.select(platform)
    held = tuple(d for d in index.manifests if d.digest not in absent)
    try:
        return Index(held).select(platform)
    except PlatformNotFound:
        if held:
            return held[0]
        raise


def edges(
    manifest: Manifest,
    platform: Platform | None = None,
    *,
    absent: Collection[Digest] = frozenset(),
    fallback: bool = False,
) -> list[tuple[Edge, Descriptor]]:
    """The edges a manifest's bytes hold that a walk follows: an index's children (all, or
    the one for ``platform``), an image's config and layers. The subject is not followed."""
    if manifest.is_index:
        index = manifest.index()
        if platform is None:
            return [(Edge.CHILD, d) for d in index.manifests]
        return [(Edge.CHILD, choose(index, platform, absent=absent, fallback=fallback))]
    image = manifest.image()
    return [(Edge.CONFIG, image.config), *((Edge.LAYER, d) for d in image.layers)]


def image_blobs(images: Iterable[ImageManifest], *, foreign: bool = False) -> list[Descriptor]:
    """Configs and layers of ``images``, each digest once (the first descriptor), foreign
    layers left out unless asked for."""
    seen: dict[Digest, Descriptor] = {}
    for image in images:
        for desc in image.blobs():
            if foreign or not is_foreign(desc):
                seen.setdefault(desc.digest, desc)
    return list(seen.values())


def check_descriptor(name: str, desc: Descriptor, manifest: Manifest) -> None:
    """A manifest must be what the entry that led to it says (media type and size)."""
    if manifest.media_type != desc.media_type or len(manifest.raw) != desc.size:
        raise ManifestError(
            f"{name}: manifest {desc.digest} does not match its descriptor in the index",
            digest=str(desc.digest),
        )


@dataclass(frozen=True)
class GraphBounds:
    manifests: int = MAX_GRAPH_MANIFESTS
    bytes: int = MAX_GRAPH_BYTES
    depth: int = MAX_INDEX_DEPTH


class GraphBudget:
    """One walk of an index graph: admits each manifest digest once, within ``bounds``.

    A digest listed again (by the same index or another) is collapsed, not fetched or counted
    again, so an index listing another N times, which lists one image N times, costs three
    manifests rather than N squared. The bounds are checked on what descriptors declare,
    before anything is fetched; ``name`` (the reference walked) heads every error.
    """

    def __init__(self, bounds: GraphBounds, name: str) -> None:
        self.bounds = bounds
        self.name = name
        self.seen: set[Digest] = set()
        self.total = 0

    def admit(self, desc: Descriptor) -> bool:
        """True the first time ``desc``'s digest is seen; raises past a bound."""
        if desc.digest in self.seen:
            return False
        if len(self.seen) >= self.bounds.manifests:
            raise ManifestError(
                f"{self.name}: the index graph lists more than {self.bounds.manifests} "
                "distinct manifests",
                reference=self.name,
            )
        if self.total + desc.size > self.bounds.bytes:
            raise ManifestError(
                f"{self.name}: the index graph's manifests declare {self.total + desc.size} "
                f"bytes or more, over the {self.bounds.bytes} byte limit",
                reference=self.name,
            )
        self.seen.add(desc.digest)
        self.total += desc.size
        return True

    def enter(self, depth: int) -> None:
        """An index at ``depth`` (the top one is 1) is about to be walked."""
        if depth > self.bounds.depth:
            raise ManifestError(
                f"{self.name}: indexes nested deeper than {self.bounds.depth}",
                reference=self.name,
            )


@dataclass(frozen=True)
class Rules:
    """How one walk goes."""

    platform: Platform | None = None  # None: every child of an index; else the one chosen
    fallback: bool = False  # no child for the platform: the first one (else PlatformNotFound)
    # The children of an index the source deliberately does not hold (an archive exported for
    # one platform): recorded in ``Graph.absent``, not read; chosen for the platform, an error.
    absent: Callable[[Manifest], Collection[Digest]] | None = None
    # None: no bounds at all (a store's gc: a store legitimately holds many manifests).
    bounds: GraphBounds | None = field(default_factory=GraphBounds)
    # A manifest that cannot be read (or does not match its descriptor) is recorded in
    # ``Graph.unreadable`` and the walk goes on (gc, verify), instead of raising (copy).
    keep_going: bool = False
    # An index entry of a type that does not look like a manifest: read it anyway (a copy
    # carries every entry), or keep it as a blob (the store's reachability); a root of such a
    # type is then unreadable (an image whose blobs are unknown), never a mere blob.
    read_unknown: bool = True


@dataclass(frozen=True)
class Unreadable:
    """A manifest the walk could not read: what it references is unknown."""

    desc: Descriptor
    root: Descriptor  # the root it was reached from
    error: TransferError


@dataclass
class Graph:
    """What one walk reached."""

    # Every manifest read, children before the indexes that list them (the roots last).
    manifests: list[Manifest] = field(default_factory=list)
    images: list[Manifest] = field(default_factory=list)  # the image manifests, as reached
    # Every node (manifests and blobs), by digest, with the first descriptor that reached it.
    reached: dict[Digest, Descriptor] = field(default_factory=dict)
    unreadable: list[Unreadable] = field(default_factory=list)
    absent: list[Descriptor] = field(default_factory=list)  # children the source lacks

    def blobs(self, *, foreign: bool = False) -> list[Descriptor]:
        """Configs and layers of the images, each digest once."""
        return image_blobs((m.image() for m in self.images), foreign=foreign)


# --- the walk ----------------------------------------------------------------------------------

# What the walk asks its driver for: ("manifest", desc) → a Manifest, ("related", desc) → the
# edges the manifest's bytes do not hold (a list of (Edge, Descriptor)).
Request = tuple[str, Descriptor]
Related = Callable[[Descriptor], Collection[tuple[Edge, Descriptor]]]


# One manifest being walked: what it leads to not yet followed, its depth, its absent children.
_Frame = tuple[Manifest, Iterator[tuple[Edge, Descriptor]], int, Collection[Digest]]


class _Walker:
    """The walk as a generator of requests (no I/O of its own): depth first, each manifest
    digest read once, children before the indexes that list them."""

    def __init__(self, name: str, rules: Rules, related: bool) -> None:
        self.name = name
        self.rules = rules
        self.related = related
        self.budget = GraphBudget(rules.bounds, name) if rules.bounds is not None else None
        self.seen: set[Digest] = set()
        self.read: dict[Digest, Manifest] = {}
        self.graph = Graph()

    def run(self, roots: Sequence[Descriptor | Manifest]) -> Generator[Request, Any, Graph]:
        for root in roots:
            if isinstance(root, Manifest):  # already in hand: not fetched again
                self.read.setdefault(root.digest, root)
                root = root.descriptor()
            yield from self._walk(root)
        return self.graph

    def _walk(self, root: Descriptor) -> Generator[Request, Any, None]:
        # An explicit stack: a store's graph has no depth bound, and must not overflow ours.
        stack: list[_Frame] = []
        frame = yield from self._open(root, root, 1)
        if frame is not None:
            stack.append(frame)
        while stack:
            manifest, pending, depth, absent = stack[-1]
            step = next(pending, None)
            if step is None:
                stack.pop()
                self.graph.manifests.append(manifest)
                continue
            kind, target = step
            if kind is Edge.CHILD and target.digest in absent:
                self._lacks(manifest, target)
                continue
            if kind in (Edge.CONFIG, Edge.LAYER):
                self.graph.reached.setdefault(target.digest, target)
                continue
            below = depth + 1 if kind is Edge.CHILD else depth
            frame = yield from self._open(target, root, below)
            if frame is not None:
                stack.append(frame)

    def _open(
        self, desc: Descriptor, root: Descriptor, depth: int
    ) -> Generator[Request, Any, _Frame | None]:
        """Read the manifest ``desc`` leads to, once; its frame (what it leads to), or None."""
        rules = self.rules
        if desc.digest in self.seen:  # listed before: the same bytes, already walked
            known = self.read.get(desc.digest)
            if known is not None:
                self._check(desc, root, known)
            return None
        if not rules.read_unknown and not is_manifest_type(desc.media_type):
            self.graph.reached.setdefault(desc.digest, desc)
            if desc is root:  # a root is an image: of a type we cannot read, its blobs are unknown
                self._unreadable(
                    desc,
                    root,
                    ManifestError(
                        f"{self.name}: the image {desc.digest} is of type {desc.media_type!r}, "
                        "not a manifest's",
                        digest=str(desc.digest),
                    ),
                )
            return None
        if self.budget is not None:
            self.budget.admit(desc)
        self.seen.add(desc.digest)
        self.graph.reached.setdefault(desc.digest, desc)
        manifest = self.read.get(desc.digest)
        if manifest is None:
            try:
                manifest = yield ("manifest", desc)
            except TransferError as exc:
                self._unreadable(desc, root, exc)
                return None
            self.read[desc.digest] = manifest
        if not self._check(desc, root, manifest):
            return None
        absent: Collection[Digest] = frozenset()
        if manifest.is_index:
            if self.budget is not None:
                self.budget.enter(depth)
            if rules.absent is not None:
                absent = rules.absent(manifest)
        else:
            self.graph.images.append(manifest)
        found = edges(manifest, rules.platform, absent=absent, fallback=rules.fallback)
        if self.related:
            extra = yield ("related", desc)
            found = [*extra, *found]
        return manifest, iter(found), depth, absent

    def _lacks(self, index: Manifest, child: Descriptor) -> None:
        if self.rules.platform is not None:
            raise PlatformNotFound(
                f"{self.name} lacks the {child.platform} image ({child.digest}) of index "
                f"{index.digest}",
                digest=str(child.digest),
            )
        if all(d.digest != child.digest for d in self.graph.absent):
            self.graph.absent.append(child)

    def _check(self, desc: Descriptor, root: Descriptor, manifest: Manifest) -> bool:
        try:
            check_descriptor(self.name, desc, manifest)
        except ManifestError as exc:
            self._unreadable(desc, root, exc)
            return False
        return True

    def _unreadable(self, desc: Descriptor, root: Descriptor, exc: TransferError) -> None:
        """Record ``desc`` as a manifest whose uses are unknown, or raise unless keep_going."""
        if not self.rules.keep_going:
            raise exc
        self.graph.unreadable.append(Unreadable(desc, root, exc))


async def walk(
    name: str,
    roots: Sequence[Descriptor | Manifest],
    get: Callable[[Descriptor], Awaitable[Manifest]],
    rules: Rules | None = None,
    related: Callable[[Descriptor], Awaitable[Collection[tuple[Edge, Descriptor]]]] | None = None,
) -> Graph:
    """Walk from ``roots`` (manifests in hand, or descriptors to read), reading each manifest
    by ``get``; ``name`` (the reference walked) heads every error."""
    steps = _Walker(name, rules or Rules(), related is not None).run(roots)
    reply: Any = None
    error: TransferError | None = None
    while True:
        try:
            kind, desc = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as stop:
            result: Graph = stop.value
            return result
        error = None
        try:
            if kind == "manifest":
                reply = await get(desc)
            else:
                assert related is not None
                reply = await related(desc)
        except TransferError as exc:
            error = exc


def walk_sync(
    name: str,
    roots: Sequence[Descriptor | Manifest],
    get: Callable[[Descriptor], Manifest],
    rules: Rules | None = None,
    related: Related | None = None,
) -> Graph:
    """``walk`` with a blocking ``get`` (and ``related``)."""
    steps = _Walker(name, rules or Rules(), related is not None).run(roots)
    reply: Any = None
    error: TransferError | None = None
    while True:
        try:
            kind, desc = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as stop:
            result: Graph = stop.value
            return result
        error = None
        try:
            if kind == "manifest":
                reply = get(desc)
            else:
                assert related is not None
                reply = related(desc)
        except TransferError as exc:
            error = exc
