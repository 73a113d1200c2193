"""Checking a bundle before trusting it: ``xfer verify oci-archive:FILE`` (one file or a volume
set) and ``xfer verify oci:DIR``.

Two passes. The first re-hashes every blob once, in one streaming pass: each tar (each volume of
a set in turn) is read front to back in large sequential reads, a member's bytes hashed as they
pass (a layout's blob files one after another); it runs in one worker thread, since hashlib
releases the GIL over large buffers, so the pass goes at the disk's (or the hash's) speed. The
second walks every image's graph from index.json (index → manifests → config and layers; the
referrers are index.json entries with a ``subject``, walked as images), reading each manifest
from the bundle, and checks that every blob it names is there with its size, unless the bundle
says it relies on it from outside (an incremental export; ``relied_on``), it is a foreign layer
(never copied, by anyone), or it is an index's child the export left out on purpose
(``dev.xfer.absent`` on the entry, as the store records it).

Every damaged or missing blob is named (all of them, not the first), with the image that uses
it; a volume that is missing, cut or garbled is named, and what it still holds is checked. The
root digest is the sha256 of index.json, which names the whole content: ``expect`` compares it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import jsonio
from .digest import Digest
from .endpoints.layout import ABSENT, MAX_INDEX_BYTES, REF_NAME
from .endpoints.tarindex import TarIndex
from .errors import ArchiveError, InvalidDigest, ManifestError, StoreError, TransferError
from .graph import Edge, Rules, is_foreign, walk_sync
from .localfile import open_regular
from .manifest import MAX_MANIFEST_BYTES, Descriptor, Manifest
from .ociview import ORIGINAL, original_type
from .referrers import is_referrer_tag

READ_SIZE = 8 << 20  # one sequential read: large, so the disk streams and the hash has work
_BLOB_NAME = re.compile(r"blobs/([a-z0-9]+)/([0-9a-f]+)")


@dataclass(frozen=True)
class BundleReport:
    """What ``xfer verify`` found in a bundle (an archive, a volume set or a layout)."""

    endpoint: str
    root: str | None  # sha256 of index.json: the digest that names the whole content
    images: int  # index.json entries that are images (or indexes) of their own
    blobs: int  # blobs re-hashed
    bytes: int  # their bytes
    volumes: int  # files read (1 for a single archive; 0 for a layout)
    relied_on: int  # blobs the bundle says it relies on from outside (not in it, not checked)
    problems: tuple[str, ...]  # one line each, every one of them
    damaged: tuple[str, ...] = ()  # digests whose bytes do not match
    missing: tuple[str, ...] = ()  # digests an image needs that the bundle lacks
    referrers: int = 0  # index.json entries that are referrers (unnamed, or a cosign tag)


@dataclass
class _Found:
    """The first pass's result: each blob held, its size and whether its bytes match."""

    sizes: dict[Digest, int] = field(default_factory=dict)
    where: dict[Digest, str] = field(default_factory=dict)  # the volume holding it (a set)
    damaged: dict[Digest, str] = field(default_factory=dict)  # digest → what was wrong
    problems: list[str] = field(default_factory=list)
    missing: list[Digest] = field(default_factory=list)  # needed by an image, not held
    hashed: int = 0
    bytes: int = 0
    # The one read buffer of the pass (a layout's thousands of small blobs share it too).
    buffer: memoryview = field(default_factory=lambda: memoryview(bytearray(READ_SIZE)))


# ---- the first pass: hashing ---------------------------------------------------------------------


def _hash_stream(fd: int, spans: list[tuple[int, int, str]], found: _Found) -> dict[int, str]:
    """Hash the byte ranges ``spans`` ((offset, size, algorithm), in file order) of one file
    with large sequential reads; returns offset → hex digest. A range cut short is left out."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:  # read front to back: the kernel reads ahead further
        with contextlib.suppress(OSError):
            advise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    out: dict[int, str] = {}
    view = found.buffer
    for offset, size, algorithm in spans:
        hasher = hashlib.new(algorithm)
        position = offset
        end = offset + size
        while position < end:
            got = os.preadv(fd, [view[: min(READ_SIZE, end - position)]], position)
            if got <= 0:
                break
            hasher.update(view[:got])  # hashlib lets other threads run over large buffers
            position += got
        if position == end:
            found.bytes += size
            out[offset] = hasher.hexdigest()
    return out


def _blob_digest(name: str) -> Digest | None:
    match = _BLOB_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return Digest.parse(f"{match.group(1)}:{match.group(2)}")
    except (InvalidDigest, TransferError):
        return None


def _hash_tar(tar: TarIndex, found: _Found) -> None:
    """Every blob member of ``tar`` (each volume of a set in turn), hashed in file order; a
    member two names share (a link) is read once."""
    named = [(name, member, _blob_digest(name)) for name, member in tar.named()]
    for number, (path, fd) in enumerate(tar.volumes):
        mine = [(n, m, d) for n, m, d in named if d is not None and m.volume == number]
        spans = sorted({(m.offset, m.size, d.algorithm) for _, m, d in mine if d is not None})
        hashes = _hash_stream(fd, spans, found) if fd >= 0 else {}
        for _, member, digest in mine:
            assert digest is not None
            found.sizes[digest] = member.size
            found.where[digest] = str(path)
            found.hashed += 1
            got = hashes.get(member.offset)
            if got is None:
                found.damaged[digest] = f"cut short in {path}"
            elif got != digest.encoded:
                found.damaged[digest] = f"its bytes hash to {digest.algorithm}:{got}"


# ---- the second pass: every image's graph --------------------------------------------------------


@dataclass
class _Bundle:
    """What the graph check reads: index.json's bytes, and a blob's bytes by digest."""

    name: str
    index: bytes | None
    read: Callable[[Digest, int], bytes]  # (digest, cap) → bytes; ArchiveError when absent


def relied_on(index: dict[str, Any], bundle: _Bundle, found: _Found) -> dict[Digest, int]:
    """The blobs (→ size) an incremental bundle says it relies on from outside: the record
    index.json's ``dev.xfer.bundle.relies-on`` names, a blob of the bundle (so the root digest
    covers it; see bundle_record.py). None recorded: the bundle must hold everything it names. A
    record named but missing, damaged or unreadable is a problem, and then nothing is relied on."""
    from .bundle_record import MAX_RECORD_BYTES, parse_record, record_digest

    try:
        record = record_digest(index, bundle.name)
        if record is None:
            return {}
        if record in found.damaged or record not in found.sizes:
            state = "damaged" if record in found.damaged else "missing"
            raise ArchiveError(f"{bundle.name}: its relies-on record {record} is {state}")
        blobs = parse_record(bundle.read(record, MAX_RECORD_BYTES), bundle.name)
    except TransferError as exc:
        found.problems.append(str(exc))
        return {}
    return {digest: desc.size for digest, desc in blobs.items()}


def _is_referrer(entry: Descriptor) -> bool:
    """An index.json entry listed for its subject: unnamed, or under a cosign tag."""
    name = entry.annotations.get(REF_NAME)
    if name is None:
        return True
    return is_referrer_tag(name.rpartition(":")[2])


def _check_graph(
    bundle: _Bundle, found: _Found, expect: str | None
) -> tuple[str | None, list[Descriptor], int]:
    """Walk every image of index.json; problems into ``found``. Returns (root, the entries,
    how many blobs it relies on from outside)."""
    if bundle.index is None:
        found.problems.append(f"{bundle.name} has no index.json: not an OCI layout or archive")
        return None, [], 0
    root = str(Digest.of(bundle.index))
    if expect is not None and expect != root:
        found.problems.append(
            f"{bundle.name}: its root digest (of index.json) is {root}, not the expected {expect}"
        )
    try:
        doc = jsonio.loads(bundle.index, strict=True)
    except jsonio.JSONError as exc:
        found.problems.append(f"{bundle.name}: index.json is not valid JSON: {exc}")
        return root, [], 0
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        found.problems.append(f"{bundle.name}: index.json has no manifests list")
        return root, [], 0
    relied = relied_on(doc, bundle, found)
    roots: list[Descriptor] = []
    for i, entry in enumerate(entries):
        try:
            roots.append(Descriptor.from_json(entry, what=f"{bundle.name}: index.json [{i}]"))
        except ManifestError as exc:
            found.problems.append(exc.message)
    manifests: dict[Digest, Manifest] = {}

    def get(desc: Descriptor) -> Manifest:
        known = manifests.get(desc.digest)
        if known is not None:
            return known
        if desc.digest in found.damaged:
            raise ArchiveError(f"manifest {desc.digest} is damaged", digest=str(desc.digest))
        if desc.digest not in found.sizes:
            raise ArchiveError(f"manifest {desc.digest} is missing", digest=str(desc.digest))
        raw = bundle.read(desc.digest, MAX_MANIFEST_BYTES)
        manifest = Manifest.from_bytes(raw, desc.media_type or None, expected=desc.digest)
        manifests[desc.digest] = manifest
        return manifest

    missing: dict[Digest, str] = {}
    relied_used: set[Digest] = set()
    for top in roots:
        label = top.annotations.get(REF_NAME) or str(top.digest)
        if REF_NAME not in top.annotations and top.artifact_type:
            label = f"the {top.artifact_type} {top.digest}"  # a referrer, listed unnamed
        recorded = {t for t in top.annotations.get(ABSENT, "").split(",") if t}

        def absent(index: Manifest, recorded: set[str] = recorded) -> set[Digest]:
            return {
                d.digest
                for d in index.index().manifests
                if str(d.digest) in recorded and d.digest not in found.sizes
            }

        def original(desc: Descriptor, top: Descriptor = top) -> list[tuple[Edge, Descriptor]]:
            text = desc.annotations.get(ORIGINAL) if desc is top else None
            if text is None:
                return []
            try:
                digest = Digest.parse(text)
            except TransferError:
                return []
            size = found.sizes.get(digest, 0)
            return [(Edge.ORIGINAL, Descriptor(original_type(desc.media_type), digest, size))]

        rules = Rules(bounds=None, keep_going=True, read_unknown=False, absent=absent)
        graph = walk_sync(label, [top], get, rules, original)
        for lost in graph.unreadable:
            digest = lost.desc.digest
            if digest in relied and digest not in found.sizes:
                # Every manifest is in a bundle (only blobs are left out): a record naming
                # one leaves its image unchecked and unreadable by a load or an import.
                missing.setdefault(
                    digest,
                    f"manifest of {label}, {lost.desc.size} bytes; a bundle relies on no "
                    "manifest from outside: its image cannot be checked",
                )
            elif digest not in found.damaged and digest not in found.sizes:
                missing.setdefault(digest, f"manifest of {label}, {lost.desc.size} bytes")
            elif digest not in found.damaged:
                found.problems.append(f"{label}: {lost.error}")
        for digest, desc in graph.reached.items():
            if is_foreign(desc):
                continue
            size = found.sizes.get(digest)
            if size is None and digest in relied:
                relied_used.add(digest)
                if relied[digest] != desc.size:
                    found.problems.append(
                        f"blob {digest}: {label} says {desc.size} bytes, the relies-on record "
                        f"{relied[digest]}"
                    )
                continue
            if size is None:
                missing.setdefault(digest, f"used by {label}, {desc.size} bytes")
            elif size != desc.size and digest not in found.damaged:
                found.problems.append(
                    f"blob {digest} has {size} bytes, but {label} says {desc.size}"
                )
    for digest, what in missing.items():
        found.problems.append(f"blob {digest} is missing ({what})")
    found.missing = list(missing)
    return root, roots, len(relied_used)


def _report(
    endpoint: str, found: _Found, graph: tuple[str | None, list[Descriptor], int], volumes: int
) -> BundleReport:
    root, entries, relied = graph
    referrers = sum(1 for entry in entries if _is_referrer(entry))
    damaged = [
        f"blob {d} is damaged: {why}" + (f" (in {found.where[d]})" if volumes > 1 else "")
        for d, why in found.damaged.items()
    ]
    return BundleReport(
        endpoint=endpoint,
        root=root,
        images=len(entries) - referrers,
        referrers=referrers,
        blobs=found.hashed,
        bytes=found.bytes,
        volumes=volumes,
        relied_on=relied,
        problems=tuple(dict.fromkeys([*damaged, *found.problems])),
        damaged=tuple(str(d) for d in found.damaged),
        missing=tuple(str(d) for d in found.missing),
    )


# ---- the two kinds of bundle -------------------------------------------------------------------


def verify_archive(
    path: Path, *, expect: str | None = None, endpoint: str | None = None
) -> BundleReport:
    """Verify an OCI archive, or the volume set ``path`` names (blocking)."""
    found = _Found()
    tar, problems = TarIndex.read_sound(path)
    found.problems += problems
    try:
        _hash_tar(tar, found)

        def read(digest: Digest, cap: int) -> bytes:
            return tar.read_small(f"blobs/{digest.algorithm}/{digest.encoded}", cap)

        index = tar.read_small("index.json", MAX_INDEX_BYTES) if "index.json" in tar else None
        bundle = _Bundle(endpoint or f"oci-archive:{path}", index, read)
        graph = _check_graph(bundle, found, expect)
        return _report(bundle.name, found, graph, len(tar.volumes))
    finally:
        tar.close()


def verify_layout(
    root: Path, *, expect: str | None = None, endpoint: str | None = None
) -> BundleReport:
    """Verify an OCI image layout directory (blocking)."""
    name = endpoint or f"oci:{root}"
    if not (root / "oci-layout").is_file():
        raise StoreError(f"{root} is not an OCI image layout (no oci-layout file)")
    found = _Found()
    for path, digest in _layout_blobs(root, found):
        try:
            fd = open_regular(path, str(path.relative_to(root)))
        except (StoreError, OSError) as exc:
            found.problems.append(str(exc))
            continue
        try:
            size = os.fstat(fd).st_size
            hashes = _hash_stream(fd, [(0, size, digest.algorithm)], found)
        finally:
            os.close(fd)
        found.sizes[digest] = size
        found.hashed += 1
        got = hashes.get(0)
        if got != digest.encoded:
            found.damaged[digest] = f"its bytes hash to {digest.algorithm}:{got}"

    def read(digest: Digest, cap: int) -> bytes:
        path = root / "blobs" / digest.algorithm / digest.encoded
        fd = open_regular(path, str(path.relative_to(root)))
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(cap + 1)
        if len(data) > cap:
            raise ArchiveError(f"{name}: blob {digest} is over {cap} bytes", digest=str(digest))
        return data

    index_path = root / "index.json"
    index = None
    if index_path.is_file() and not index_path.is_symlink():
        fd = open_regular(index_path, "index.json")
        with os.fdopen(fd, "rb") as handle:
            index = handle.read(MAX_INDEX_BYTES + 1)
        if len(index) > MAX_INDEX_BYTES:
            raise StoreError(f"{name}: index.json is over {MAX_INDEX_BYTES} bytes")
    bundle = _Bundle(name, index, read)
    graph = _check_graph(bundle, found, expect)
    return _report(name, found, graph, 0)


def _layout_blobs(root: Path, found: _Found) -> Iterable[tuple[Path, Digest]]:
    blobs = root / "blobs"
    if not blobs.is_dir():
        return
    for algorithm_dir in sorted(blobs.iterdir()):
        if not algorithm_dir.is_dir() or algorithm_dir.is_symlink():
            found.problems.append(f"{algorithm_dir.relative_to(root)} is not a directory of blobs")
            continue
        for path in sorted(algorithm_dir.iterdir()):
            digest = _blob_digest(f"blobs/{algorithm_dir.name}/{path.name}")
            if digest is None:
                found.problems.append(f"{path.relative_to(root)} is not named by a valid digest")
                continue
            if not stat.S_ISREG(path.lstat().st_mode):
                found.problems.append(f"{path.relative_to(root)} is not a regular file")
                continue
            yield path, digest
