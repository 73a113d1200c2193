"""Referrers in an OCI image layout's index.json: the store, ``oci:`` layouts, OCI archives.

How they are listed follows oras (oras-go's OCI store, the most widely read layout of
referrers): a manifest with a ``subject`` is an entry of index.json without
``org.opencontainers.image.ref.name``, its descriptor carrying ``artifactType`` (the manifest's,
else its config's media type, as the referrers API reports it) and the manifest's annotations.
No convention records the subject on the entry, so it is read from the manifest: once per
listing (``Listing``), never per question. regclient finds such entries with its slow search
(``regctl artifact list --referrers-slow``); its own layout, the referrers tag schema's
``sha256-<hex>`` entry naming an index of referrers, is read here too; what such an index lists
counts only when its own manifest is held and its ``subject`` names that digest (the index is
anyone's say, the subject the manifest's own). Each manifest is read once per listing however
often index.json or the indexes repeat it, and at most ``MAX_READS`` of them.

A cosign referrer has no ``subject``: it is found by its tag, ``sha256-<hex>.sig`` (``.att``,
``.sbom``), and keeps it: the ref.name of an ``oci:`` layout entry, or, in the store (whose
names are full references), ``REPO:sha256-<hex>.sig`` in the subject image's repository.

None of these entries is an image of its own: ``xfer images`` does not list them, and gc keeps
one only while its subject is kept (``Listing.edges``: subject → referrer, the graph walk's
``Edge.REFERRER``). An untagged entry without a subject (oras lists every manifest it was
given) stays a root, as does one that cannot be read: what it is about is unknown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from .. import jsonio
from ..digest import Digest
from ..errors import TransferError
from ..manifest import Descriptor, Manifest
from ..reference import parse
from ..referrers import Referrer, index_entry, tagged_entry

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
# The tag part of a name: all of a bare tag, or what follows the last ':' after the last '/'.
_COSIGN = re.compile(r"(?:^|:)((sha256)-([0-9a-f]{64})\.(?:sig|att|sbom))$")
_FALLBACK = re.compile(r"(?:^|:)((sha256)-([0-9a-f]{64}))$")
# What docker load takes as a layer (gzip, zstd, plain or foreign tars, Docker's or OCI's).
_LAYER_PREFIXES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
_IMAGE_CONFIGS = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)


def entry_name(desc: Descriptor) -> str | None:
    """The name an index.json entry gives its manifest (Docker 25 keeps the full one apart)."""
    return desc.annotations.get(CONTAINERD_NAME) or desc.annotations.get(REF_NAME)


def cosign_tag(name: str | None) -> tuple[str, Digest] | None:
    """``(tag, subject)`` when ``name`` (a bare tag or a full reference) is a cosign tag."""
    match = _COSIGN.search(name or "")
    if match is None:
        return None
    return match.group(1), Digest(match.group(2), match.group(3))


def _fallback_subject(name: str | None) -> Digest | None:
    match = _FALLBACK.search(name or "")
    return Digest(match.group(2), match.group(3)) if match else None


def is_full_reference(name: str | None) -> bool:
    """A name as the store keeps them (``host/repo:tag``), not a bare one (``latest``)."""
    if not name:
        return False
    try:
        return str(parse(name)) == name
    except TransferError:
        return False


def repository_of(name: str | None) -> str | None:
    """``host/repo`` of a full reference; None for any other name."""
    return parse(name).name if name and is_full_reference(name) else None


def cosign_name(context: str | None, tag: str) -> str:
    """The name a cosign tag gets beside the image ``context`` names: ``REPO:TAG`` where names
    are full references (the store, an archive's), the bare tag elsewhere (an ``oci:`` layout)."""
    repository = repository_of(context)
    return f"{repository}:{tag}" if repository else tag


def _document(manifest: Manifest) -> Mapping[str, object]:
    try:
        doc = jsonio.loads(manifest.raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def subject_of(manifest: Manifest) -> Digest | None:
    """The digest a manifest's ``subject`` names (an image manifest's or an index's)."""
    if not manifest.is_index:
        subject = manifest.image().subject
        return subject.digest if subject is not None else None
    raw = _document(manifest).get("subject")
    if raw is None:
        return None
    try:
        return Descriptor.from_json(raw, what=f"{manifest.digest} subject").digest
    except TransferError:
        return None


def referrer_entry(referrer: Referrer, manifest: Manifest) -> Descriptor:
    """The index.json entry of a referrer: its manifest's descriptor as a referrers list gives
    it (``index_entry``: ``artifactType``, annotations), the listing's own artifactType and
    annotations winning where it gave them, and no name: a referrer is no image of its own."""
    own = index_entry(manifest)
    given = referrer.descriptor
    annotations = {
        k: v for k, v in given.annotations.items() if k not in (REF_NAME, CONTAINERD_NAME)
    }
    return replace(
        own,
        annotations=annotations or own.annotations,
        artifact_type=given.artifact_type or own.artifact_type,
    )


def docker_loads(manifest: Manifest) -> bool:
    """Is this an image ``docker load`` takes from manifest.json? Decided by what the manifest
    says, not by how it was found: no ``subject`` or ``artifactType``, an image config's media
    type, and only layer tars. A cosign signature has an OCI image config but a
    simple-signing payload for its layer; an SBOM or an attestation an empty or unknown
    config: none of them is an image docker can run."""
    if manifest.is_index:
        return False
    image = manifest.image()
    if image.subject is not None or _document(manifest).get("artifactType") is not None:
        return False
    if image.config.media_type not in _IMAGE_CONFIGS:
        return False
    return all(layer.media_type.startswith(_LAYER_PREFIXES) for layer in image.layers)


@dataclass
class _Found:
    referrer: Referrer
    name: str | None  # the entry's name, for a cosign tag: whose repository it is in


@dataclass
class Listing:
    """What an index.json's entries say about referrers, read once."""

    # subject digest → what refers to it, as ``get_referrers`` answers
    found: dict[Digest, list[_Found]] = field(default_factory=dict)
    # subject digest → the entries a graph walk reaches from it (a fallback index, not its
    # children: those the walk reaches through the index)
    edges: dict[Digest, list[Descriptor]] = field(default_factory=dict)
    # positions in index.json of the entries that are no images of their own
    not_roots: set[int] = field(default_factory=set)
    # manifests not read past ``MAX_READS``: their entries stay roots, and are listed nowhere
    unread: int = 0

    def referrers(self, subject: Digest, context: str | None = None) -> list[Referrer]:
        """Direct referrers of ``subject``. A cosign tag counts when it is a bare tag or lies in
        ``context``'s repository (the image asked about, where names are full references)."""
        repository = repository_of(context)
        out: list[Referrer] = []
        seen: set[Digest] = set()
        for item in self.found.get(subject, []):
            if item.referrer.tag is not None and repository is not None:
                own = repository_of(item.name)
                if own is not None and own != repository:
                    continue
            if item.referrer.descriptor.digest not in seen:
                seen.add(item.referrer.descriptor.digest)
                out.append(item.referrer)
        return out

    def roots(self, entries: Sequence[Descriptor]) -> list[Descriptor]:
        return [e for i, e in enumerate(entries) if i not in self.not_roots]

    def _add(self, subject: Digest, referrer: Referrer, name: str | None) -> None:
        self.found.setdefault(subject, []).append(_Found(referrer, name))


def _unnamed(desc: Descriptor) -> Descriptor:
    annotations = {
        k: v for k, v in desc.annotations.items() if k not in (REF_NAME, CONTAINERD_NAME)
    }
    return Descriptor(
        desc.media_type, desc.digest, desc.size, desc.urls, annotations, None, desc.artifact_type
    )


# Manifests one listing reads (or tries to): about the entries of the largest index.json an
# archive may have. Past it an entry stays a root (nothing is dropped on its account) and a
# fallback index's further children are not listed; ``Listing.unread`` counts them.
MAX_READS = 100_000


class _Reader:
    """Each manifest read once per listing, whatever index.json and fallback indexes repeat
    (one 4 MiB manifest listed 100 000 times is one read, not 400 GB), at most ``MAX_READS``."""

    def __init__(self, read: Callable[[Descriptor], Manifest], limit: int) -> None:
        self._read = read
        self._limit = limit
        self._done: dict[Digest, Manifest | None] = {}
        self.unread = 0

    def __call__(self, desc: Descriptor) -> Manifest | None:
        """The manifest, or None when it cannot be read, is not held, or is past the limit."""
        if desc.digest in self._done:
            return self._done[desc.digest]
        if len(self._done) >= self._limit:
            self.unread += 1
            return None
        try:
            manifest: Manifest | None = self._read(desc)
        except TransferError:
            manifest = None
        self._done[desc.digest] = manifest
        return manifest


def list_referrers(
    entries: Sequence[Descriptor],
    read: Callable[[Descriptor], Manifest],
    limit: int = MAX_READS,
) -> Listing:
    """The referrers ``entries`` (an index.json's) hold. ``read`` is asked only for the entries
    that may be referrers (those without a name, fallback tags and their children, cosign
    tags for their type), each digest once; an unnamed one it cannot read stays a root (what
    it is about is unknown, so nothing is dropped on its account). A manifest counts as a
    referrer of X only when its own ``subject`` says X (or its cosign tag does): a fallback
    index lists what it likes."""
    listing = Listing()
    reader = _Reader(read, limit)
    for position, desc in enumerate(entries):
        name = entry_name(desc)
        cosign = cosign_tag(name)
        if cosign is not None:
            tag, subject = cosign
            entry = _unnamed(desc)
            if entry.artifact_type is None and _may_be_manifest(desc.media_type):
                # As a registry's listing describes it (its first layer's type for cosign's
                # image config), so a --referrers-type filter picks the same from anywhere.
                manifest = reader(desc)
                if manifest is not None:
                    entry = tagged_entry(manifest)
            referrer = Referrer(entry, subject, tag)
            listing._add(subject, referrer, name)
            listing.edges.setdefault(subject, []).append(desc)
            listing.not_roots.add(position)
            continue
        fallback = _fallback_subject(name)
        if name is not None and fallback is None:
            continue  # a named image
        if not _may_be_manifest(desc.media_type):
            continue
        manifest = reader(desc)
        if manifest is None:
            continue
        if fallback is not None:
            if not manifest.is_index or subject_of(manifest) is not None:
                continue  # a tag that only looks like the schema's: an image like any other
            for child in manifest.index().manifests:
                # Only what says itself it is about the tag's digest: another image's SBOM
                # listed here is not this image's, and one not held says nothing at all.
                held = reader(child) if _may_be_manifest(child.media_type) else None
                if held is not None and _subject(held) == fallback:
                    listing._add(fallback, Referrer(child, fallback), None)
            listing.edges.setdefault(fallback, []).append(desc)
            listing.not_roots.add(position)
            continue
        about = _subject(manifest)
        if about is None:
            continue
        entry = referrer_entry(Referrer(desc, about), manifest)
        listing._add(about, Referrer(entry, about), None)
        listing.edges.setdefault(about, []).append(desc)
        listing.not_roots.add(position)
    listing.unread = reader.unread
    return listing


def _subject(manifest: Manifest) -> Digest | None:
    try:
        return subject_of(manifest)
    except TransferError:
        return None


def _may_be_manifest(media_type: str) -> bool:
    return "manifest" in media_type or "image.index" in media_type
