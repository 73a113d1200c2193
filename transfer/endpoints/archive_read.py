"""Reading image archives: ``oci-archive:`` and ``docker-archive:`` sources, and ``xfer load``.

oci-archive     a tar of an OCI image layout: ``index.json`` names the images, ``blobs/ALG/HEX``
                holds each blob; manifests are served as their exact bytes, so digests survive.
docker-archive  ``docker save``'s ``manifest.json``: per image a config file and layer files
                (``blobs/sha256/HEX``, ``HEX.json``, ``ID/layer.tar`` ...). There is no manifest,
                so one is synthesised (Docker schema 2, byte for byte as containerd's importer
                writes it, so ``docker load`` with the containerd store and ``ctr import`` get
                the same digest) with each blob's digest and size computed from the member's
                bytes: layers are often plain tars, and a digest a file name claims is checked.

The tar is indexed once (``TarIndex``); members are looked up by name and streamed from their
offset, never extracted. Every blob is hashed as it streams: bytes that do not match their
digest are an ``ArchiveError`` (a local file will not heal, so it is never retried). Every
blob an image names is checked to exist, as a regular member of the right size, when its
manifest is read, i.e. before the copy stores anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .. import jsonio
from ..compression import sniff
from ..digest import Digest
from ..errors import ArchiveError, IntegrityError, ManifestError, TransferError
from ..manifest import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    Manifest,
)
from ..ociview import ORIGINAL, is_view_of, original_type
from ..reference import parse
from ..referrers import Referrer
from .layout import REF_NAME
from .layout_referrers import CONTAINERD_NAME as CONTAINERD_NAME
from .layout_referrers import Listing, entry_name, list_referrers
from .tarindex import READ_CHUNK, Member, TarIndex

MAX_DOCUMENT = 16 << 20  # manifest.json, index.json: far above any real one
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# A file name that claims a digest: blobs/ALG/HEX (OCI, Docker 25+) or HEX.json (older docker).
_NAMED_BLOB = re.compile(r"blobs/(sha256|sha512)/([0-9a-f]+)|([0-9a-f]{64})\.json")


@dataclass(frozen=True)
class ArchivedImage:
    """One image an archive holds: the names it carries, and how to ask the archive for it."""

    names: tuple[str, ...]  # full normalised references; empty when it carries none usable
    identifier: str | Digest
    label: str | None = None  # an OCI entry's name as written (a bundle takes only full ones)


class _Archive:
    """What both kinds share: the tar index, opened on first use, and blob streaming."""

    kind = ""

    def __init__(self, path: Path, name: str | None = None, tar: TarIndex | None = None) -> None:
        self.path = path
        self.local = str(path)
        self.name = name or f"{self.kind}:{path}"
        self._tar = tar
        self._loaded = False
        self._lock = anyio.Lock()
        # Blobs an incremental bundle relies on from outside (``transfer.bundle``): its images
        # name them, the file does not hold them, and that is not damage.
        self.relied_on: dict[Digest, Descriptor] = {}

    async def tar(self) -> TarIndex:
        async with self._lock:
            if self._tar is None:
                self._tar = await anyio.to_thread.run_sync(TarIndex.read, self.path)
            if not self._loaded:
                await anyio.to_thread.run_sync(self._load, self._tar)
                self._loaded = True
        return self._tar

    def _load(self, tar: TarIndex) -> None:
        raise NotImplementedError

    def _blob_name(self, desc: Descriptor) -> str:
        raise NotImplementedError

    async def images(self) -> list[ArchivedImage]:
        raise NotImplementedError

    async def aclose(self) -> None:
        if self._tar is not None:
            self._tar.close()

    @asynccontextmanager
    async def open_blob(
        self, desc: Descriptor, offset: int = 0, end: int | None = None
    ) -> AsyncIterator[AsyncIterable[bytes]]:
        tar = await self.tar()
        member = self._sized_member(tar, desc)
        yield _MemberBody(self.path, tar, member, desc, offset, desc.size if end is None else end)

    def _sized_member(self, tar: TarIndex, desc: Descriptor) -> Member:
        member = tar.member(self._blob_name(desc))
        if member.size != desc.size:
            raise ArchiveError(
                f"archive {tar.where(member)}: {member.name} is {member.size} bytes, "
                f"but {desc.digest} has {desc.size}",
                digest=str(desc.digest),
            )
        return member

    def _check_blobs(self, tar: TarIndex, manifest: Manifest) -> None:
        """Every blob an image names is in the archive, a regular member of its size."""
        if manifest.is_index:
            return  # its children are checked as they are read
        for desc in manifest.image().blobs():
            if desc.urls:  # foreign layers live elsewhere and are not copied
                continue
            if desc.digest in self.relied_on and self._blob_name(desc) not in tar:
                continue  # a blob the bundle relies on from outside: the target holds it
            self._sized_member(tar, desc)


class _MemberBody:
    """A blob's bytes from the archive: iterated on the event loop (a worker thread reads each
    chunk), or read by a worker thread that sends them on itself (``blocking_chunks``: an
    upload to a registry, one thread reading, hashing and sending, as from the store).

    Iterated whole, it is hashed as it goes and checked at its end, before the reader's own
    check: a local file does not heal, so that failure is an ``ArchiveError``, never retried.
    ``blocking_chunks`` leaves the hash to its reader, which hashes every piece it sends (an
    upload checks the digest before it completes; the copy does not retry a local source's
    mismatch): hashing each byte twice was a quarter of an import's CPU."""

    def __init__(
        self, path: Path, tar: TarIndex, member: Member, desc: Descriptor, offset: int, end: int
    ) -> None:
        self.path, self.tar, self.member, self.desc = path, tar, member, desc
        self.offset, self.end = offset, end
        whole = offset == 0 and end == desc.size
        self.hasher = desc.digest.hasher() if whole else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.tar.chunks(self.member, self.offset, self.end, self.hasher):
            yield chunk
        self._check()

    def blocking_chunks(self) -> Iterator[bytes]:
        position = self.offset
        while position < self.end:
            chunk = self.tar.read_at(self.member, min(READ_CHUNK, self.end - position), position)
            position += len(chunk)
            yield chunk

    def _check(self) -> None:
        if self.hasher is not None and self.hasher.hexdigest() != self.desc.digest.encoded:
            raise ArchiveError(
                f"archive {self.tar.where(self.member)}: {self.member.name} does not hold "
                f"the bytes of {self.desc.digest}",
                digest=str(self.desc.digest),
            )


def normalised(name: str) -> str | None:
    """A name as the store keeps it (``nginx`` → ``docker.io/library/nginx:latest``)."""
    try:
        return str(parse(name))
    except TransferError:
        return None


def _json(raw: bytes, what: str) -> Any:
    try:
        return jsonio.loads(raw, strict=True)
    except jsonio.JSONError as exc:
        raise ArchiveError(f"{what} is not valid JSON: {exc}") from None


def _named_digest(name: str) -> Digest | None:
    match = _NAMED_BLOB.fullmatch(name)
    if match is None:
        return None
    try:
        if match.group(3):
            return Digest("sha256", match.group(3))
        return Digest.parse(f"{match.group(1)}:{match.group(2)}")
    except TransferError:
        return None  # blobs/sha256/<not a digest>: a plain file name, nothing claimed


def _verified_manifest(path: Path, raw: bytes, desc: Descriptor | None, digest: Digest) -> Manifest:
    try:
        return Manifest.from_bytes(
            raw, desc.media_type if desc and desc.media_type else None, expected=digest
        )
    except IntegrityError as exc:
        raise ArchiveError(f"archive {path}: {exc.message}", digest=str(digest)) from None


# ---- oci-archive ---------------------------------------------------------------------------------


class OciArchive(_Archive):
    """A tar of an OCI image layout, as a Source. An identifier is a ref.name (or a full
    reference matching one), a digest, or "" for the archive's only image."""

    kind = "oci-archive"

    def __init__(self, path: Path, name: str | None = None, tar: TarIndex | None = None) -> None:
        super().__init__(path, name, tar)
        self._entries: list[Descriptor] = []
        self._listing: Listing | None = None
        # (view media type, view, original) → whether the entry's view is the original's
        self._views: dict[tuple[str, Digest, Digest], bool] = {}
        self.annotations: dict[str, str] = {}  # index.json's own (a bundle's record, …)

    def _load(self, tar: TarIndex) -> None:
        if "index.json" not in tar:
            raise ArchiveError(f"archive {self.path} is not an OCI archive (no index.json)")
        doc = _json(tar.read_small("index.json", MAX_DOCUMENT), f"{self.path}: index.json")
        entries = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise ArchiveError(f"archive {self.path}: index.json has no manifests list")
        try:
            self._entries = [
                self._original(
                    tar, Descriptor.from_json(e, what=f"{self.path}: index.json manifests[{i}]")
                )
                for i, e in enumerate(entries)
            ]
        except ManifestError as exc:
            raise ArchiveError(exc.message) from None
        self.relied_on = relied_on_in_archive(tar, doc, self.path)
        found = doc.get("annotations")
        self.annotations = (
            {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
        )

    def _original(self, tar: TarIndex, desc: Descriptor) -> Descriptor:
        """An entry pointing at an OCI view (``xfer save --format oci`` of a Docker image):
        the Docker original it names, when the archive holds it and the view is exactly what
        xfer makes of it, so a load keeps the original's digest."""
        text = desc.annotations.get(ORIGINAL)
        if text is None:
            return desc
        try:
            digest = Digest.parse(text)
        except TransferError:
            return desc
        name = self._blob_name(Descriptor("", digest, 0))
        if name not in tar:
            return desc
        annotations = {k: v for k, v in desc.annotations.items() if k != ORIGINAL}
        size = tar.member(name).size
        original = Descriptor(original_type(desc.media_type), digest, size, (), annotations)

        def read(wanted: Descriptor) -> Manifest | None:
            member = self._blob_name(wanted)
            if member not in tar:
                return None
            raw = tar.read_small(member, MAX_MANIFEST_BYTES)
            return Manifest.from_bytes(raw, wanted.media_type, expected=wanted.digest)

        # Decided once per view and original: index.json may repeat an entry 100 000 times.
        key = (desc.media_type, desc.digest, digest)
        if key not in self._views:
            self._views[key] = False
            try:
                view, own = read(desc), read(original)
                if view is not None and own is not None and is_view_of(view, own, read):
                    self._views[key] = True
            except TransferError:
                pass  # a damaged view or original: the entry is read as it is, and checked then
        return original if self._views[key] else desc

    def _blob_name(self, desc: Descriptor) -> str:
        return f"blobs/{desc.digest.algorithm}/{desc.digest.encoded}"

    async def referrer_listing(self) -> Listing:
        """What index.json lists as referrers (layout_referrers), each candidate read once."""
        tar = await self.tar()
        if self._listing is None:

            def read(desc: Descriptor) -> Manifest:
                raw = tar.read_small(self._blob_name(desc), MAX_MANIFEST_BYTES)
                return _verified_manifest(self.path, raw, desc, desc.digest)

            self._listing = await anyio.to_thread.run_sync(list_referrers, self._entries, read)
        return self._listing

    async def get_referrers(self, subject: Descriptor) -> list[Referrer]:
        """Referrers of ``subject`` this archive holds (``xfer save`` writes them beside their
        images); a cosign tag counts in this archive's named image's repository."""
        listing = await self.referrer_listing()
        return listing.referrers(subject.digest, self.name)

    async def referrers(self) -> list[tuple[Referrer, str | None]]:
        """Every referrer index.json lists, with the name of its entry (a cosign tag's)."""
        listing = await self.referrer_listing()
        return [(f.referrer, f.name) for found in listing.found.values() for f in found]

    async def images(self) -> list[ArchivedImage]:
        listing = await self.referrer_listing()
        out = []
        for desc in listing.roots(self._entries):
            # Docker 25+ keeps only the tag in ref.name and the full name beside it.
            label = entry_name(desc)
            name = normalised(label) if label else None
            out.append(ArchivedImage((name,) if name else (), desc.digest, label))
        return out

    async def get_manifest(self, identifier: str | Digest) -> Manifest:
        tar = await self.tar()
        desc = await self._only() if identifier == "" else self._find(identifier)
        if isinstance(identifier, Digest):
            digest = identifier
        else:
            assert desc is not None  # _find raises for a name it does not know
            digest = desc.digest
        raw = await anyio.to_thread.run_sync(
            tar.read_small, self._blob_name(Descriptor("", digest, 0)), MAX_MANIFEST_BYTES
        )
        if desc is not None and len(raw) != desc.size:
            raise ArchiveError(
                f"archive {self.path}: manifest {digest} is {len(raw)} bytes, "
                f"index.json says {desc.size}",
                digest=str(digest),
            )
        manifest = _verified_manifest(self.path, raw, desc, digest)
        self._check_blobs(tar, manifest)
        return manifest

    def absent(self, index: Manifest) -> list[Descriptor]:
        """Children of ``index`` the archive holds no manifest for: an export of one platform
        keeps the whole index but only that platform's blobs."""
        tar = self._tar
        if tar is None:
            return []
        return [d for d in index.index().manifests if self._blob_name(d) not in tar]

    async def _only(self) -> Descriptor:
        """The archive's one image: its signatures, SBOMs and attestations (entries under a
        cosign or fallback tag, or unnamed with a subject) are listed beside it, no images of
        their own; one image listed under several names is one image."""
        listing = await self.referrer_listing()
        roots = listing.roots(self._entries)
        if len({d.digest for d in roots}) == 1:
            return roots[0]
        raise ArchiveError(
            f"archive {self.path} holds {len({d.digest for d in roots})} images: "
            f"name one as oci-archive:{self.path}:NAME"
        )

    def _find(self, identifier: str | Digest) -> Descriptor | None:
        if isinstance(identifier, Digest):
            return next((d for d in self._entries if d.digest == identifier), None)
        for desc in self._entries:
            if identifier in (
                desc.annotations.get(REF_NAME),
                desc.annotations.get(CONTAINERD_NAME),
            ):
                return desc
        wanted = normalised(identifier)
        for desc in self._entries:
            names = (desc.annotations.get(REF_NAME), desc.annotations.get(CONTAINERD_NAME))
            if wanted and any(n and normalised(n) == wanted for n in names):
                return desc
        raise ArchiveError(f"archive {self.path} has no image named {identifier}")


def relied_on_in_archive(tar: TarIndex, doc: Any, path: Path) -> dict[Digest, Descriptor]:
    """The blobs an incremental bundle's record says it relies on from outside."""
    from ..bundle_record import MAX_RECORD_BYTES, parse_record, record_digest

    record = record_digest(doc, f"archive {path}")
    if record is None:
        return {}
    name = f"blobs/{record.algorithm}/{record.encoded}"
    if name not in tar:
        raise ArchiveError(f"archive {path}: its relies-on record {record} is not in it")
    raw = tar.read_small(name, MAX_RECORD_BYTES)
    if Digest.of(raw, record.algorithm) != record:
        raise ArchiveError(f"archive {path}: its relies-on record {record} is damaged")
    return parse_record(raw, f"archive {path}")


# ---- docker-archive ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DockerEntry:
    config: str
    repo_tags: tuple[str, ...]  # normalised
    layers: tuple[str, ...]


class DockerArchive(_Archive):
    """A ``docker save`` tarball, as a Source. An identifier is a reference in RepoTags,
    ``@N`` (the N-th image of manifest.json, as skopeo writes it), or "" for the only image."""

    kind = "docker-archive"

    def __init__(self, path: Path, name: str | None = None, tar: TarIndex | None = None) -> None:
        super().__init__(path, name, tar)
        self._entries: list[_DockerEntry] = []
        self._manifests: dict[int, Manifest] = {}
        self._by_digest: dict[Digest, Manifest] = {}
        self._members: dict[Digest, str] = {}  # blob digest → the member holding it

    def _load(self, tar: TarIndex) -> None:
        if "manifest.json" not in tar:
            raise ArchiveError(f"archive {self.path} is not a docker archive (no manifest.json)")
        where = f"archive {self.path}: manifest.json"
        doc = _json(tar.read_small("manifest.json", MAX_DOCUMENT), where)
        if not isinstance(doc, list) or not doc:
            raise ArchiveError(f"{where} must be a non-empty list of images")
        for i, item in enumerate(doc):
            config = item.get("Config") if isinstance(item, dict) else None
            layers = item.get("Layers") if isinstance(item, dict) else None
            tags = (item.get("RepoTags") if isinstance(item, dict) else None) or []
            if not isinstance(config, str) or not isinstance(layers, list):
                raise ArchiveError(f"{where}: image {i} needs Config and Layers")
            if not isinstance(tags, list) or not all(isinstance(x, str) for x in [*layers, *tags]):
                raise ArchiveError(
                    f"{where}: image {i} has a Layers or RepoTags entry not a string"
                )
            names = []
            for tag in tags:
                name = normalised(tag)
                if name is None:
                    raise ArchiveError(f"{where}: RepoTags entry {tag[:80]!r} is not a reference")
                names.append(name)
            self._entries.append(_DockerEntry(config, tuple(names), tuple(layers)))

    def _blob_name(self, desc: Descriptor) -> str:
        name = self._members.get(desc.digest)
        if name is None:
            raise ArchiveError(f"archive {self.path} has no blob {desc.digest}")
        return name

    async def images(self) -> list[ArchivedImage]:
        await self.tar()
        return [ArchivedImage(e.repo_tags, f"@{i}") for i, e in enumerate(self._entries)]

    async def get_manifest(self, identifier: str | Digest) -> Manifest:
        tar = await self.tar()
        if isinstance(identifier, Digest):
            if identifier not in self._by_digest:
                raise ArchiveError(f"archive {self.path} has no manifest {identifier}")
            return self._by_digest[identifier]
        number = self._choose(identifier)
        if number not in self._manifests:
            manifest = await anyio.to_thread.run_sync(self._synthesise, tar, number)
            self._manifests[number] = self._by_digest[manifest.digest] = manifest
        return self._manifests[number]

    def _choose(self, identifier: str) -> int:
        if not identifier:
            if len(self._entries) == 1:
                return 0
            raise ArchiveError(
                f"archive {self.path} holds {len(self._entries)} images: "
                f"name one as docker-archive:{self.path}:REF (or :@N)"
            )
        if identifier.startswith("@"):
            if identifier[1:].isdigit() and int(identifier[1:]) < len(self._entries):
                return int(identifier[1:])
            raise ArchiveError(f"archive {self.path} has no image {identifier}")
        wanted = normalised(identifier)
        for number, entry in enumerate(self._entries):
            if wanted in entry.repo_tags:
                return number
        raise ArchiveError(f"archive {self.path} has no image tagged {identifier}")

    def _synthesise(self, tar: TarIndex, number: int) -> Manifest:
        """A manifest for image ``number`` from its files (blocking: hashes every layer)."""
        entry = self._entries[number]
        config_raw = tar.read_small(entry.config, MAX_CONFIG_BYTES)
        config_digest = Digest.of(config_raw)
        claimed = _named_digest(entry.config)
        if claimed is not None and Digest.of(config_raw, claimed.algorithm) != claimed:
            raise ArchiveError(
                f"archive {self.path}: {entry.config} does not hold the bytes its name claims "
                f"(got {config_digest})"
            )
        try:
            config = ImageConfig.from_bytes(config_raw)
        except ManifestError as exc:
            raise ArchiveError(f"archive {self.path}: {entry.config}: {exc.message}") from None
        if len(config.diff_ids) != len(entry.layers):
            raise ArchiveError(
                f"archive {self.path}: image {number} lists {len(entry.layers)} layers, "
                f"its config {len(config.diff_ids)}"
            )
        self._members[config_digest] = entry.config
        layers = [
            self._layer(tar, name, diff_id)
            for name, diff_id in zip(entry.layers, config.diff_ids, strict=True)
        ]
        zstd = any(kind == "zstd" for _, kind in layers)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if zstd else DOCKER_MANIFEST,
            "config": _descriptor(
                OCI_CONFIG if zstd else DOCKER_CONFIG, config_digest, len(config_raw)
            ),
            "layers": [
                _descriptor(_layer_type(kind, zstd), d.digest, d.size) for d, kind in layers
            ],
        }
        # Go's json.Marshal of containerd's struct: compact, keys in this order.
        raw = json.dumps(doc, separators=(",", ":")).encode()
        return Manifest.from_bytes(raw)

    def _layer(self, tar: TarIndex, name: str, diff_id: Digest) -> tuple[Descriptor, str]:
        member = tar.member(name)
        claimed = _named_digest(name)
        algorithm = claimed.algorithm if claimed else "sha256"
        encoded, head = tar.hash(member, algorithm)
        digest = Digest(algorithm, encoded)
        if claimed is not None and claimed != digest:
            raise ArchiveError(
                f"archive {self.path}: {name} does not hold the bytes its name claims "
                f"(got {digest})"
            )
        kind = sniff(head)
        if kind in ("bzip2", "xz"):
            raise ArchiveError(
                f"archive {self.path}: layer {name} is {kind}-compressed (unsupported)"
            )
        if kind == "tar" and diff_id.algorithm == algorithm and diff_id != digest:
            # An uncompressed layer IS its diff_id: docker load refuses the same mismatch.
            raise ArchiveError(
                f"archive {self.path}: layer {name} is {digest}, its config says {diff_id}"
            )
        self._members[digest] = name
        return Descriptor(DOCKER_LAYER_TAR, digest, member.size), kind


def _layer_type(kind: str, oci: bool) -> str:
    if oci:
        return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}.get(kind, OCI_LAYER_TAR)
    return DOCKER_LAYER_GZIP if kind == "gzip" else DOCKER_LAYER_TAR


def _descriptor(media_type: str, digest: Digest, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(digest), "size": size}


# ---- opening ---------------------------------------------------------------------------------


async def open_archive(path: Path) -> OciArchive | DockerArchive:
    """An archive of either kind, told apart by content: an OCI layout (index.json) is
    preferred, since its manifests are the exact bytes; else docker's manifest.json."""
    tar = await anyio.to_thread.run_sync(TarIndex.read, path)
    try:
        if "index.json" in tar:
            archive: OciArchive | DockerArchive = OciArchive(path, tar=tar)
        elif "manifest.json" in tar:
            archive = DockerArchive(path, tar=tar)
        else:
            raise ArchiveError(
                f"{path} is neither an OCI nor a docker archive (no index.json or manifest.json)"
            )
        await archive.tar()
    except BaseException:
        tar.close()
        raise
    return archive


class ArchiveImageSource:
    """One image of an open archive, under its own name for progress and messages; the
    archive stays open for the next image (whoever opened it closes it)."""

    def __init__(self, archive: OciArchive | DockerArchive, name: str) -> None:
        self.archive = archive
        self.name = name
        self.local = archive.local

    async def get_manifest(self, identifier: str | Digest) -> Manifest:
        return await self.archive.get_manifest(identifier)

    async def get_referrers(self, subject: Descriptor) -> list[Referrer]:
        if isinstance(self.archive, OciArchive):
            listing = await self.archive.referrer_listing()
            return listing.referrers(subject.digest, self.name)
        return []  # docker's manifest.json lists images only

    def absent(self, index: Manifest) -> list[Descriptor]:
        if isinstance(self.archive, OciArchive):
            return self.archive.absent(index)
        return []  # docker's manifest.json has no indexes

    def open_blob(
        self, desc: Descriptor, offset: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterable[bytes]]:
        return self.archive.open_blob(desc, offset, end)

    async def aclose(self) -> None:
        return None
