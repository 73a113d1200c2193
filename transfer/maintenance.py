"""Keeping the store honest: what is reachable, what is corrupt, what can go.

Reachability starts at ``index.json`` and walks indexes and manifests down to configs and
layers. ``gc`` holds the store exclusively (pulls hold it shared), so a blob written by a pull
that has not yet tagged its image is never mistaken for garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from .copy import FOREIGN_TYPES
from .digest import Digest
from .endpoints.layout import Layout
from .errors import InvalidDigest, TransferError
from .manifest import MAX_MANIFEST_BYTES, Descriptor, Index, Manifest

STALE_PARTIAL_SECONDS = 24 * 3600  # partials untouched this long are not worth resuming


@dataclass
class Reachable:
    blobs: dict[Digest, Descriptor] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # referenced but missing or unreadable


def reachable(layout: Layout, roots: list[Descriptor] | None = None) -> Reachable:
    """Every blob reachable from ``roots`` (default: every image of index.json)."""
    found = Reachable()
    stack = list(layout.read_index() if roots is None else roots)
    while stack:
        desc = stack.pop()
        if desc.digest in found.blobs:
            continue
        found.blobs[desc.digest] = desc
        if desc.media_type and not _is_manifest(desc.media_type):
            continue
        try:
            raw = layout.read_blob(desc, cap=MAX_MANIFEST_BYTES)
            manifest = Manifest.from_bytes(raw, desc.media_type, expected=desc.digest)
        except TransferError as exc:
            found.problems.append(str(exc))
            continue
        parsed = manifest.parse()
        if isinstance(parsed, Index):
            stack.extend(parsed.manifests)
        else:
            for blob in parsed.blobs():
                found.blobs.setdefault(blob.digest, blob)
    return found


def _is_manifest(media_type: str) -> bool:
    return "manifest" in media_type or "image.index" in media_type


def _stored(layout: Layout) -> list[tuple[Path, Digest | None]]:
    """Every file under blobs/, with its digest when its name is a valid one."""
    entries = []
    for algorithm_dir in sorted((layout.root / "blobs").glob("*")):
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


def verify(layout: Layout) -> VerifyReport:
    """Re-hash every blob; report those that do not match their name, links, and missing ones."""
    problems: list[str] = []
    checked = total = 0
    for path, digest in _stored(layout):
        if path.is_symlink() or not path.is_file():
            problems.append(f"{path.relative_to(layout.root)} is not a regular file")
            continue
        if digest is None:
            problems.append(f"{path.relative_to(layout.root)} is not named by a valid digest")
            continue
        hasher = hashlib.new(digest.algorithm)
        with open(path, "rb") as handle:
            while chunk := handle.read(4 << 20):
                hasher.update(chunk)
                total += len(chunk)
        checked += 1
        if hasher.hexdigest() != digest.encoded:
            problems.append(f"blob {digest} is corrupt: its bytes hash to {hasher.hexdigest()}")
    found = reachable(layout)
    problems += found.problems
    for digest, desc in found.blobs.items():
        path = layout.blob_path(digest)
        if desc.media_type in FOREIGN_TYPES and desc.urls:
            continue  # never fetched, by any copy (as docker does)
        if not path.exists():
            problems.append(f"blob {digest} is missing (referenced, {desc.size} bytes)")
        elif path.is_file() and path.stat().st_size != desc.size:
            problems.append(f"blob {digest} has {path.stat().st_size} bytes, expected {desc.size}")
    return VerifyReport(checked, total, tuple(dict.fromkeys(problems)))


@dataclass(frozen=True)
class GcReport:
    blobs_removed: int
    bytes_freed: int
    partials_removed: int
    partial_bytes_freed: int


def collect(layout: Layout, *, all_partials: bool = False, now: float | None = None) -> GcReport:
    """Delete blobs nothing references, and partial downloads gone stale (or all of them)."""
    now = time.time() if now is None else now
    removed = freed = partials = partial_bytes = 0
    with layout.exclusive():
        keep = reachable(layout).blobs
        for path, digest in _stored(layout):
            if digest is not None and digest in keep:
                continue
            size = path.lstat().st_size
            path.unlink()
            removed, freed = removed + 1, freed + size
        partial_dir = layout.work / "partials"
        for path in sorted(partial_dir.glob("*")) if partial_dir.is_dir() else []:
            stat = path.lstat()
            if all_partials or now - stat.st_mtime > STALE_PARTIAL_SECONDS:
                path.unlink()
                partials += 1
                partial_bytes += stat.st_size
        for lock in (layout.work / "locks").glob("sha*.lock"):
            with contextlib.suppress(OSError):
                lock.unlink()
    return GcReport(removed, freed, partials, partial_bytes)
