"""Keeping the store honest: what is reachable, what is corrupt, what can go.

Reachability starts at ``index.json`` and walks indexes and manifests down to configs and
layers; an entry that points at the OCI view of a Docker image also reaches the original it
names (``transfer.ociview``), and the children an entry records as absent (an index loaded from
a one-platform export) are not reported missing. Referrers (signatures, SBOMs: unnamed entries
with a subject, cosign tags) are no roots: each is reached from its subject (``Edge.REFERRER``,
listed once per walk by ``layout_referrers``), so it is kept while its subject is, and gc drops
it, and its own referrers, with its subject, entry and blobs alike.

``gc`` holds the store exclusively (pulls hold it shared), so a blob written by a pull that has
not yet tagged its image is never mistaken for garbage. A manifest that cannot be read (damaged,
missing) hides what its image uses, so gc then deletes nothing at all.

A pull trusts a stored blob of the right size (one ``lstat``: it is asked for every blob of
every pull), so a damaged one is never fetched again by itself: ``verify --repair`` removes the
blobs whose bytes do not match their names, and the next pull fetches them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from .digest import Digest
from .endpoints.layout import ABSENT, REF_NAME, Layout
from .endpoints.layout_referrers import Listing
from .errors import InvalidDigest, StoreError
from .graph import Edge, Rules, is_foreign, walk_sync
from .localfile import open_regular
from .manifest import Descriptor, Manifest

STALE_PARTIAL_SECONDS = 24 * 3600  # partials untouched this long are not worth resuming


@dataclass(frozen=True)
class Unreadable:
    """A manifest the walk could not read: what it references is unknown."""

    digest: Digest
    reference: str  # the image (index.json name, or digest) it was reached from
    reason: str


@dataclass
class Reachable:
    blobs: dict[Digest, Descriptor] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # referenced but missing or unreadable
    unreadable: list[Unreadable] = field(default_factory=list)


def reachable(
    layout: Layout,
    roots: list[Descriptor] | None = None,
    *,
    referrers: bool = True,
    listing: Listing | None = None,
) -> Reachable:
    """Every blob reachable from ``roots`` (default: every image of index.json, the referrers
    not among them), with the referrers of what is reached unless ``referrers`` is off. The
    walk has no bounds (a store legitimately holds many manifests) and goes past a manifest it
    cannot read, recording it: what that one uses is unknown."""
    entries = layout.read_index() if roots is None or referrers else []
    if referrers and listing is None:
        listing = layout.listing(entries)
    if roots is not None:
        tops = roots
    else:
        tops = listing.roots(entries) if listing is not None else entries
    # Children an index entry records as deliberately not stored are not damage.
    recorded = {text for d in tops for text in d.annotations.get(ABSENT, "").split(",") if text}

    def absent(index: Manifest) -> set[Digest]:
        children = index.index().manifests
        return {d.digest for d in children if str(d.digest) in recorded and not layout.has_blob(d)}

    def original(desc: Descriptor) -> list[tuple[Edge, Descriptor]]:
        found = layout.resolve(desc)  # an OCI view's Docker original is kept with it
        related = [(Edge.ORIGINAL, found)] if found.digest != desc.digest else []
        if listing is not None:
            related += [(Edge.REFERRER, d) for d in listing.edges.get(desc.digest, ())]
        return related

    rules = Rules(bounds=None, keep_going=True, read_unknown=False, absent=absent)
    graph = walk_sync(str(layout.root), tops, layout.get_manifest, rules, original)
    found = Reachable(blobs=dict(graph.reached))
    for lost in graph.unreadable:
        reference = lost.root.annotations.get(REF_NAME) or str(lost.root.digest)
        found.problems.append(str(lost.error))
        found.unreadable.append(Unreadable(lost.desc.digest, reference, str(lost.error)))
    return found


def users(layout: Layout, digests: set[Digest]) -> list[str]:
    """The images (index.json names) that reach any of ``digests`` (themselves or through a
    referrer): what to pull again."""
    entries = layout.read_index()
    listing = layout.listing(entries)
    names = []
    for top in listing.roots(entries):
        if digests & set(reachable(layout, [top], listing=listing).blobs):
            names.append(top.annotations.get(REF_NAME) or str(top.digest))
    return names


def _stored(layout: Layout) -> list[tuple[Path, Digest | None]]:
    """Every entry under blobs/ (of an algorithm's directory, or beside them), with its digest
    when its name is a valid one."""
    entries: list[tuple[Path, Digest | None]] = []
    for algorithm_dir in sorted((layout.root / "blobs").glob("*")):
        if not algorithm_dir.is_dir():
            entries.append((algorithm_dir, None))  # a file where an algorithm's directory goes
            continue
        for path in sorted(algorithm_dir.iterdir()):
            try:
                digest: Digest | None = Digest.parse(f"{algorithm_dir.name}:{path.name}")
            except InvalidDigest:
                digest = None
            entries.append((path, digest))
    return entries


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    bytes: int
    problems: tuple[str, ...]
    damaged: tuple[str, ...] = ()  # files under blobs/ that --repair removes (or removed)
    repaired: bool = False  # they were removed
    pull: tuple[str, ...] = ()  # images that lack a blob now: pull them again


def verify(layout: Layout, *, repair: bool = False) -> VerifyReport:
    """Re-hash every blob; report those that do not match their name, links, and missing ones.

    With ``repair``, the files under blobs/ that cannot be the blob their name says (wrong
    bytes, a link, a FIFO) are removed, so that a pull fetches them again; it holds the store
    exclusively meanwhile, as gc does, so no pull is reading them."""
    with layout.exclusive() if repair else contextlib.nullcontext():
        return _verify(layout, repair)


def _verify(layout: Layout, repair: bool) -> VerifyReport:
    problems: list[str] = []
    damaged: list[tuple[Path, Digest | None]] = []
    checked = total = 0
    for path, digest in _stored(layout):
        name = path.relative_to(layout.root)
        try:
            fd = open_regular(path, str(name))
        except FileNotFoundError:
            continue  # removed meanwhile (gc is excluded only under --repair)
        except StoreError as exc:
            problems.append(str(exc))
            if not stat.S_ISDIR(path.lstat().st_mode):
                damaged.append((path, digest))
            continue
        with os.fdopen(fd, "rb") as handle:
            if digest is None:
                problems.append(f"{name} is not named by a valid digest")
                continue
            hasher = hashlib.new(digest.algorithm)
            while chunk := handle.read(4 << 20):
                hasher.update(chunk)
                total += len(chunk)
        checked += 1
        if hasher.hexdigest() != digest.encoded:
            problems.append(f"blob {digest} is corrupt: its bytes hash to {hasher.hexdigest()}")
            damaged.append((path, digest))
    if repair:
        for path, _ in damaged:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    found = reachable(layout)
    problems += found.problems
    lacking: set[Digest] = set()
    for digest, desc in found.blobs.items():
        path = layout.blob_path(digest)
        if is_foreign(desc):
            continue  # never fetched, by any copy (as docker does)
        if not path.exists():
            problems.append(f"blob {digest} is missing (referenced, {desc.size} bytes)")
            lacking.add(digest)
        elif path.is_file() and path.stat().st_size != desc.size:
            problems.append(f"blob {digest} has {path.stat().st_size} bytes, expected {desc.size}")
    lacking |= {u.digest for u in found.unreadable}
    lacking |= {d for _, d in damaged if d is not None and d in found.blobs}
    return VerifyReport(
        checked,
        total,
        tuple(dict.fromkeys(problems)),
        damaged=tuple(str(d or p.relative_to(layout.root)) for p, d in damaged),
        repaired=repair,
        pull=tuple(users(layout, lacking)) if lacking else (),
    )


@dataclass(frozen=True)
class GcReport:
    blobs_removed: int
    bytes_freed: int
    partials_removed: int
    partial_bytes_freed: int
    # Directories found where blobs or partials go, relative to the store: never ours to empty
    # (a blob is a file; verify names them too), so gc leaves them and says so.
    left: tuple[str, ...] = ()


def collect(layout: Layout, *, all_partials: bool = False, now: float | None = None) -> GcReport:
    """Delete blobs nothing references, and partial downloads gone stale (or all of them)."""
    now = time.time() if now is None else now
    removed = freed = partials = partial_bytes = 0
    with layout.exclusive():
        found = reachable(layout)
        if found.unreadable:
            first = found.unreadable[0]
            raise StoreError(
                f"gc deleted nothing: the manifest {first.digest} of {first.reference} cannot "
                f"be read, so what it uses is unknown ({first.reason})",
                reference=first.reference,
                digest=str(first.digest),
                hint=f"xfer verify --repair removes what is damaged; then pull {first.reference} "
                f"again (or xfer rm it) and run gc again",
            )
        keep = found.blobs
        # Entries whose manifest goes (referrers of what is gone) leave index.json first:
        # it never names a blob that is not there.
        layout.drop_entries(lambda entry: entry.digest in keep)
        left: list[str] = []
        for path, digest in _stored(layout):
            if digest is not None and digest in keep:
                continue
            size = _unlink_unless_directory(path, layout, left)
            if size is not None:
                removed, freed = removed + 1, freed + size
        partial_dir = layout.work / "partials"
        for path in sorted(partial_dir.glob("*")) if partial_dir.is_dir() else []:
            with contextlib.suppress(FileNotFoundError):
                if all_partials or now - path.lstat().st_mtime > STALE_PARTIAL_SECONDS:
                    size = _unlink_unless_directory(path, layout, left)
                    if size is not None:
                        partials, partial_bytes = partials + 1, partial_bytes + size
        for lock in (layout.work / "locks").glob("sha*.lock"):
            with contextlib.suppress(OSError):
                lock.unlink()
    return GcReport(removed, freed, partials, partial_bytes, tuple(left))


def _unlink_unless_directory(path: Path, layout: Layout, left: list[str]) -> int | None:
    """Remove ``path`` (a file, or a link, FIFO or device: never what it points at) and return
    its size; a directory is added to ``left`` instead. None when nothing was removed."""
    try:
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            left.append(str(path.relative_to(layout.root)))
            return None
        path.unlink()
    except FileNotFoundError:
        return None
    return st.st_size
