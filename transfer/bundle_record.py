"""The relies-on record of an incremental bundle, and what the far side already holds.

Incremental bundles (``xfer mirror … --since OLD``, repeatable: a bundle, an OCI layout, or an
``index.json`` of what the far side holds) leave out every blob OLD holds (``held_by``); every
manifest is still included. What the bundle then relies on from outside is recorded in one
content-addressed JSON blob of the bundle (``blobs/sha256/HEX``, media type ``RELIES_ON_TYPE``)::

    {"mediaType": "application/vnd.dev.xfer.bundle.relies-on.v1+json",
     "blobs": [{"digest": "sha256:…", "size": N}, …]}          # sorted by digest

named by the annotation ``dev.xfer.bundle.relies-on`` (its digest) on index.json itself, so the
root digest covers it; ``dev.xfer.bundle.since`` lists the root digests of the OLD bundles it
was made against (comma-separated, where they were bundles or layouts). Readers
(``archive_read``, and ``xfer verify`` in ``bundlecheck``) accept an image whose blobs are
missing from the bundle when the record names them.

One module for the format and for what the far side holds, since both are what an incremental
bundle leaves out: the export writes the record (``bundle.py``), every reader parses it here.
Small on purpose: ``xfer verify`` and ``xfer load`` read the record without the export's code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from . import jsonio
from .digest import Digest
from .endpoints.layout import MAX_INDEX_BYTES
from .endpoints.layout_referrers import entry_name
from .errors import ArchiveError, TransferError, UsageError
from .manifest import Descriptor

if TYPE_CHECKING:
    from .api import Settings
    from .mirror import SyncSource
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
        blobs |= set(relied_on_in_archive(tar, index_doc(raw, str(path)), path))
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
    blobs |= set(relied_on_in_layout(path, index_doc(raw, str(path)), str(path)))
    return Held(blobs, [Digest.of(raw)])


def relied_on_in_layout(root: Path, doc: object, where: str) -> dict[Digest, Descriptor]:
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


def index_doc(raw: bytes, where: str) -> dict[str, object]:
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
    doc = index_doc(raw, str(path))
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


def since_roots(annotations: object) -> list[str]:
    """The root digests an index.json's ``dev.xfer.bundle.since`` lists."""
    text = annotations.get(SINCE) if isinstance(annotations, dict) else None
    return [part for part in str(text).split(",") if part] if text else []
