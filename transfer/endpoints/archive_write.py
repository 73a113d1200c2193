"""Writing image archives: ``xfer save`` and the ``oci-archive:``, ``docker-archive:`` targets.

Formats (``format``):
  None      what ``docker save`` writes since Docker 25: an OCI image layout (``oci-layout``,
            ``index.json``, ``blobs/sha256/HEX``) plus docker's ``manifest.json`` pointing into
            ``blobs/``, so ``docker load`` takes it and it also reads as ``oci-archive:``.
  "oci"     the OCI image layout alone (what skopeo's ``oci-archive:`` writes). A Docker
            schema 2 image is named in index.json through its OCI view, the original beside it
            (``transfer.ociview``): OCI readers then find it, and ``xfer load`` keeps the
            original digest. The default format keeps Docker's types in index.json, as Docker
            25 does, so containerd and docker record the registry's digest.
  "docker"  ``manifest.json`` with the configs and layers alone, no OCI index (older docker save).

Docker's ``manifest.json`` describes single-platform images only: for an index, the OCI part
keeps the whole index and ``manifest.json`` gets the image for this machine's platform (else
the index's first image).

One tar, written front to back (``concurrent = False``): each blob goes in once, however many
images share it, streamed through in batches and hashed as it is written; a blob whose bytes do
not match its digest is cut off again (the file is truncated back to where its member began).
Everything goes to a new file of a random name beside FILE (``FILE.PID.RANDOM.partial``),
created exclusively and never through a symlink, so nothing planted at a name we could be
expected to use is written through, and two writers of one FILE never share a file; ``commit()``
renames it onto FILE only after the index documents are written and the file is synced (the last
writer to finish wins, whole); ``aclose()`` without ``commit()`` removes it. Its writer holds a
lock on it until then, so the next save to FILE can remove what a killed one left (a dead pid
and a free lock), as the store removes a dead writer's temporaries.
Tar headers are fixed (mtime 0, uid/gid 0, no user names, 0644 files, 0755 directories) and
the member order follows the copy, so the same images give the same bytes every time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import anyio

from .. import writeback
from ..digest import Digest, Verifier
from ..durable import create_new, fsync_dir, lock_own, remove_dead_temporaries
from ..errors import ArchiveError, ManifestError, TransferError
from ..graph import Rules, walk_sync
from ..manifest import Descriptor, ImageManifest, Manifest, Platform
from ..ociview import ORIGINAL, needs_view, views
from ..reference import parse
from ..referrers import Referrer
from . import Opener, Progress
from .archive_read import CONTAINERD_NAME
from .layout import ABSENT, INDEX_MEDIA_TYPE, LAYOUT_VERSION, REF_NAME
from .layout_referrers import cosign_name, docker_loads, is_full_reference, referrer_entry

FORMATS = ("docker", "oci")
WRITE_BATCH = 1 << 20  # bytes gathered before one write (+hash) in a worker thread
_BLOCK = 512
T = TypeVar("T")


def _compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty file ``FILE.PID.RANDOM.partial`` in ``path``'s directory, and its fd,
    locked by this writer until closed; first removes those of ``path`` a dead writer left
    (a save killed with SIGKILL: nothing else would ever remove them)."""
    stem = path.name[:200]  # room for the pid and the random part within NAME_MAX
    pid = os.getpid()
    remove_dead_temporaries(
        path.parent, re.compile(rf"{re.escape(stem)}\.(\d+)\.[0-9a-f]{{16}}\.partial")
    )
    fd, temp = create_new(lambda: path.with_name(f"{stem}.{pid}.{secrets.token_hex(8)}.partial"))
    lock_own(fd)
    return fd, temp


def name_annotations(name: str) -> dict[str, str]:
    """An index.json entry's names: a full reference also as containerd's name, which
    containerd and docker read; a bare tag (an ``oci:`` layout's) only as ref.name."""
    if is_full_reference(name):
        return {CONTAINERD_NAME: name, REF_NAME: name}
    return {REF_NAME: name}


def tar_header(name: str, size: int, directory: bool = False) -> bytes:
    """The fixed header of one member (mtime 0, uid/gid 0, no user names)."""
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = 0 if directory else size
    # PAX only adds an extended header when a name does not fit ustar (sha512 blobs).
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


class TarWriter:
    """A tar file written sequentially with fixed headers (blocking: used from worker threads),
    into a new temporary file beside ``target`` (``temp``), which the caller renames."""

    def __init__(self, target: Path) -> None:
        fd, self.temp = create_beside(target)
        self.handle = os.fdopen(fd, "wb")
        self.position = 0

    def _write(self, data: bytes) -> None:
        self.handle.write(data)
        start, self.position = self.position, self.position + len(data)
        # The finish's fsync is on the save's critical path (~0.4 s for a 1 GB bundle here):
        # what is complete goes to the disk while the rest still arrives.
        writeback.written(self.handle.fileno(), start, self.position)

    def header(self, name: str, size: int, directory: bool = False) -> None:
        self._write(tar_header(name, size, directory))

    def data(self, chunk: bytes) -> None:
        self._write(chunk)

    def pad(self) -> None:
        if self.position % _BLOCK:
            self._write(bytes(_BLOCK - self.position % _BLOCK))

    def add(self, name: str, data: bytes) -> None:
        self.header(name, len(data))
        self.data(data)
        self.pad()

    def rollback(self, position: int) -> None:
        """Forget everything from ``position`` on (a member that failed half way)."""
        self.handle.flush()
        self.handle.seek(position)
        self.handle.truncate()
        self.position = position

    def finish(self) -> None:
        """Complete and sync the file; it stays open (and locked) until renamed, then
        ``close()``."""
        self._write(bytes(2 * _BLOCK))  # the end-of-archive marker
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()

    abort = close


def _blob_name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.encoded}"


class ArchiveDestination:
    """An archive being written; several images may go into one (``xfer save``), each by one
    ``copy_image``, then ``commit()`` completes the file."""

    concurrent = False
    tar_class: type[TarWriter] = TarWriter  # how the file is written (a bundle: in parallel)

    def __init__(self, path: Path, format: str | None = None) -> None:
        if format is not None and format not in FORMATS:
            raise ArchiveError(f"unknown archive format {format!r}: use docker or oci")
        self.path = path
        self.name = str(path)
        self.format = format
        self._tar: TarWriter | None = None
        self._dirs: set[str] = set()
        self._written: set[Digest] = set()
        self._manifests: dict[Digest, Manifest] = {}
        self._tagged: list[tuple[str, Manifest]] = []  # (name, top manifest), in save order
        self._views: dict[Digest, Manifest] = {}  # Docker original → its OCI view ("oci" only)
        # Referrers, in the order they came: index.json lists them as the store does
        # (layout_referrers); docker's manifest.json never does.
        self._referrers: dict[Digest, tuple[Referrer, Manifest]] = {}
        self._finished = False
        self._broken = False

    @property
    def oci(self) -> bool:
        return self.format != "docker"

    @property
    def docker(self) -> bool:
        return self.format != "oci"

    async def _io(self, func: Callable[..., T], *args: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(func, *args)
        except OSError as exc:
            raise ArchiveError(f"cannot write archive {self.path}: {exc.strerror}") from None

    async def _writer(self) -> TarWriter:
        if self._tar is None:
            if self.path.is_dir():
                raise ArchiveError(f"cannot write archive {self.path}: it is a directory")
            self._tar = await self._io(self.tar_class, self.path)
            if self.oci:
                await self._io(self._tar.add, "oci-layout", _compact(LAYOUT_VERSION))
        return self._tar

    async def _directories(self, tar: TarWriter, name: str) -> None:
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth]) + "/"
            if directory not in self._dirs:
                await self._io(tar.header, directory, 0, True)
                self._dirs.add(directory)

    async def has_blob(self, desc: Descriptor) -> bool:
        return desc.digest in self._written

    async def put_blob(self, desc: Descriptor, opener: Opener, progress: Progress) -> int:
        if desc.digest in self._written:
            return 0
        name = _blob_name(desc.digest)
        tar = await self._member(name, desc.size)
        if tar is None:  # already held where this member goes (a volume kept from a rerun)
            self._written.add(desc.digest)
            return 0
        start = tar.position
        verifier = Verifier(desc.digest, desc.size)
        received = 0
        try:
            await self._io(tar.header, name, desc.size)
            batch = bytearray()
            async with opener(0, None) as chunks:
                async for chunk in chunks:
                    received += len(chunk)
                    progress(len(chunk))
                    batch += chunk
                    if len(batch) >= WRITE_BATCH:
                        await self._io(_write_verified, tar, verifier, bytes(batch))
                        batch.clear()
            await self._io(_write_verified, tar, verifier, bytes(batch))
            verifier.verify()
            await self._io(tar.pad)
        except BaseException:
            try:
                tar.rollback(start)  # no half member stays behind a retry or a failure
            except OSError:
                self._broken = True  # commit() will refuse: the file has a torn member
            raise
        self._written.add(desc.digest)
        await self._member_done(name)
        return received

    async def put_manifest(self, manifest: Manifest, tag: str | None) -> None:
        self._manifests[manifest.digest] = manifest
        if self.oci and manifest.digest not in self._written:
            await self._add(_blob_name(manifest.digest), manifest.raw)
            self._written.add(manifest.digest)
        if tag is not None:
            if self.format == "oci" and needs_view(manifest):
                await self._put_views(manifest)
            self._tagged = [(n, m) for n, m in self._tagged if n != tag] + [(tag, manifest)]

    async def has_referrer(self, referrer: Referrer) -> bool:
        """Listed already; or a plain docker archive, which has nowhere to list one (its
        blobs would only sit in the tar unreferenced)."""
        return not self.oci or referrer.descriptor.digest in self._referrers

    async def put_referrer(self, referrer: Referrer, manifest: Manifest) -> None:
        """Listed in index.json at commit (its manifest and blobs went in already, by digest);
        a plain docker archive (``--format docker``) has nowhere to list it."""
        if self.oci:
            await self.put_manifest(manifest, None)
            self._referrers.setdefault(manifest.digest, (referrer, manifest))

    async def _put_views(self, manifest: Manifest) -> None:
        """The plain OCI archive is for OCI readers (skopeo, podman, umoci): a Docker image is
        named through its OCI view, its original kept beside it (``transfer.ociview``)."""
        for view in views(manifest, lambda desc: self._manifests.get(desc.digest)):
            if view.digest not in self._written:
                await self._add(_blob_name(view.digest), view.raw)
                self._written.add(view.digest)
            self._views[manifest.digest] = view

    # ---- where members go (a volume set, volumes.py, decides otherwise) ------------------------

    async def _member(self, name: str, size: int) -> TarWriter | None:
        """The tar the member ``name`` of ``size`` bytes is written into next (its directory
        entries written first); None when it is already there."""
        tar = await self._writer()
        await self._directories(tar, name)
        return tar

    async def _member_done(self, name: str) -> None:
        """The member ``name`` is complete in the tar ``_member`` gave."""

    async def _add(self, name: str, data: bytes) -> None:
        """A small member (a manifest) written whole."""
        tar = await self._member(name, len(data))
        if tar is not None:
            await self._io(tar.add, name, data)
            await self._member_done(name)

    def _documents(self, annotations: dict[str, str] | None = None) -> list[tuple[str, bytes]]:
        """The index documents that complete the archive (``annotations``: on index.json)."""
        if not self._tagged:
            raise ArchiveError(f"no image to write into {self.path}")
        if self._broken:
            raise ArchiveError(
                f"cannot write archive {self.path}: a failed blob could not be cut off"
            )
        documents = []
        if self.oci:
            documents.append(("index.json", self._oci_index(annotations)))
        if self.docker:
            documents.append(("manifest.json", self._docker_manifest()))
        return documents

    async def commit(self) -> None:
        """Write the index documents and move the archive into place: once, after every
        image went in (the archive appears only complete)."""
        documents = self._documents()
        tar = await self._writer()
        for name, data in documents:
            await self._io(tar.add, name, data)
        await self._io(tar.finish)
        await self._io(os.replace, tar.temp, self.path)
        self._finished = True
        tar.close()
        await self._io(fsync_dir, self.path.parent)

    async def aclose(self) -> None:
        if self._finished or self._tar is None:
            return
        self._tar.abort()
        with contextlib.suppress(OSError):
            self._tar.temp.unlink()

    # ---- the index documents ------------------------------------------------------------------

    def _oci_index(self, top: dict[str, str] | None = None) -> bytes:
        entries = []
        for name, manifest in self._tagged:
            annotations = name_annotations(name)
            view = self._views.get(manifest.digest)
            if view is not None:
                annotations[ORIGINAL] = str(manifest.digest)
                manifest = view
            absent = self._absent(manifest)
            if absent:  # an export of some platforms: the rest is left out on purpose
                annotations[ABSENT] = ",".join(absent)
            entries.append(manifest.descriptor(annotations=annotations).to_json())
        entries += self._referrer_entries()
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE}
        doc["manifests"] = entries
        if top:
            doc["annotations"] = top
        return _compact(doc)

    def _absent(self, manifest: Manifest) -> list[str]:
        """The children of an index (at any depth) not written: ``xfer verify`` then knows
        they were left out on purpose (as the store records it), not lost."""
        if not manifest.is_index:
            return []
        out = []
        for child in manifest.index().manifests:
            found = self._manifests.get(child.digest)
            if found is None:
                out.append(str(child.digest))
            else:
                out += self._absent(found)
        return out

    def _referrer_entries(self) -> list[dict[str, Any]]:
        """A referrer with a subject: an unnamed entry (artifactType, annotations); a cosign
        one: its tag, in its subject image's repository when that image has a full name."""
        entries = []
        for referrer, manifest in self._referrers.values():
            if referrer.tag is None:
                entries.append(referrer_entry(referrer, manifest).to_json())
                continue
            name = cosign_name(self._image_named(referrer.subject), referrer.tag)
            annotations = name_annotations(name)
            entries.append(manifest.descriptor(annotations=annotations).to_json())
        return entries

    def _image_named(self, subject: Digest) -> str | None:
        """The name of the image ``subject`` belongs to: a tagged top manifest, a child of one,
        or (for a referrer of a referrer) its own subject's image."""
        for _ in range(len(self._referrers) + 1):
            for name, top in self._tagged:
                if top.digest == subject or subject in self._below(top):
                    return name
            found = self._referrers.get(subject)
            if found is None:
                return None
            subject = found[0].subject
        return None

    def _below(self, top: Manifest) -> set[Digest]:
        if not top.is_index:
            return set()
        out: set[Digest] = set()
        pending = [top]
        while pending:
            manifest = pending.pop()
            for child in manifest.index().manifests:
                if child.digest not in out:
                    out.add(child.digest)
                    known = self._manifests.get(child.digest)
                    if known is not None and known.is_index:
                        pending.append(known)
        return out

    def _docker_manifest(self) -> bytes:
        images: dict[Digest, dict[str, Any]] = {}
        for name, top in self._tagged:
            image, digest = self._platform_image(top)
            if not docker_loads(self._manifests[digest]):
                continue  # an artifact (a signature, an SBOM) saved by name: no docker image
            entry = images.get(digest)
            if entry is None:
                entry = images[digest] = {
                    "Config": _blob_name(image.config.digest),
                    "RepoTags": [],
                    "Layers": [self._layer_path(desc) for desc in image.layers],
                }
            tag = _repo_tag(name)
            if tag is not None and tag not in entry["RepoTags"]:
                entry["RepoTags"].append(tag)
        return _compact(list(images.values()))

    def _layer_path(self, desc: Descriptor) -> str:
        if desc.digest not in self._written:
            raise ArchiveError(
                f"layer {desc.digest} is not distributable and was not saved: docker's "
                f"manifest.json cannot describe this image (use --format oci)",
                digest=str(desc.digest),
            )
        return _blob_name(desc.digest)

    def _platform_image(self, top: Manifest) -> tuple[ImageManifest, Digest]:
        """The image manifest.json describes for ``top``: for an index, this platform's, else
        its first child written."""
        rules = Rules(
            platform=Platform.current(),
            fallback=True,
            absent=lambda index: {
                d.digest for d in index.index().manifests if d.digest not in self._manifests
            },
        )
        try:
            graph = walk_sync(self.name, [top], lambda desc: self._manifests[desc.digest], rules)
        except ManifestError:  # no child written, or nested too deep
            raise ArchiveError(
                f"{top.digest}: no image of this index was written to {self.path}"
            ) from None
        chosen = graph.images[0]
        return chosen.image(), chosen.digest


def _repo_tag(name: str) -> str | None:
    """Docker's familiar ``repo:tag`` form for RepoTags; None when there is no tag."""
    try:
        ref = parse(name)
    except TransferError:
        return None
    if ref.tag is None:
        return None
    return replace(ref, digest=None).familiar


def _write_verified(tar: TarWriter, verifier: Verifier, data: bytes) -> None:
    verifier.update(data)  # refuses bytes past the declared size before they are written
    tar.data(data)
