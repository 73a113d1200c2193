"""Referrers: the manifests that are about another one (signatures, SBOMs, attestations).

Three ways a registry or a layout says what refers to a manifest, all read as one ``Referrer``:

- by ``subject`` (OCI 1.1): the referrers API (``GET /v2/<name>/referrers/<digest>``), or where a
  registry lacks it, the fallback tag ``sha256-<hex>`` holding an index of the referrers; a
  layout lists them as index.json entries;
- by cosign's tag convention: ``sha256-<hex>.sig`` / ``.att`` / ``.sbom`` in the subject's
  repository, a manifest with no ``subject`` that is found, and must be kept, under its tag.

A referrer is copied like an image (by digest, its blobs first) and then recorded at the
destination where readers look for it (``ReferrerDestination.put_referrer``). Digests never
change: the manifest's bytes are copied as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from . import jsonio
from .digest import Digest
from .errors import InvalidDigest, ManifestError
from .manifest import (
    DOCKER_CONFIG,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    OCI_INDEX,
    Descriptor,
    Manifest,
)

# cosign's tag convention: the subject's digest as a tag, with the kind as suffix.
COSIGN_SUFFIXES = (".sig", ".att", ".sbom")


@dataclass(frozen=True)
class Referrer:
    """One manifest about ``subject``."""

    # The referrer's manifest, as a referrers index lists it (artifactType, annotations).
    descriptor: Descriptor
    subject: Digest
    # Found under cosign's tag convention: the tag it must keep wherever it goes (``sha256-
    # <hex>.sig``). None: it names its subject itself and is found by it.
    tag: str | None = None


def fallback_tag(subject: Digest) -> str:
    """The referrers tag schema's tag for ``subject``: ``sha256-<hex>``."""
    return f"{subject.algorithm}-{subject.encoded}"


def cosign_tags(subject: Digest) -> tuple[str, ...]:
    """The tags cosign would keep a signature, attestation or SBOM of ``subject`` under."""
    base = fallback_tag(subject)
    return tuple(base + suffix for suffix in COSIGN_SUFFIXES)


# --- what a referrer is called, and where it is listed ----------------------------------------

EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
# Configs that say nothing about what an artifact is (cosign's signatures carry an image config).
_GENERIC_CONFIGS = frozenset({EMPTY_CONFIG, OCI_CONFIG, DOCKER_CONFIG})
# A tag that names a digest: the referrers tag schema's and cosign's; never an image of its own
# when referrers travel with their subject (a mirror leaves these tags to the carry). Exactly a
# registered algorithm and its length: ``sha-<40 hex>`` or ``main-<40 hex>`` (commit tags) are
# ordinary tags a mirror must copy.
REFERRER_TAG = re.compile(r"(?:sha256-[0-9a-f]{64}|sha512-[0-9a-f]{128})(?:\.(?:sig|att|sbom))?")


def is_referrer_tag(tag: str) -> bool:
    return REFERRER_TAG.fullmatch(tag) is not None


def _document(manifest: Manifest) -> dict[str, Any]:
    doc = jsonio.loads(manifest.raw)
    if not isinstance(doc, dict):
        raise ManifestError(f"manifest {manifest.digest} is not a JSON object")
    return doc


def index_entry(manifest: Manifest) -> Descriptor:
    """The descriptor a referrers list gives ``manifest`` (OCI 1.1): its media type, digest and
    size, ``artifactType`` (the manifest's, else its config's media type) and its annotations."""
    doc = _document(manifest)
    artifact_type = doc.get("artifactType")
    if not isinstance(artifact_type, str) or not artifact_type:
        config = doc.get("config")
        artifact_type = config.get("mediaType") if isinstance(config, dict) else None
    annotations = doc.get("annotations")
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        annotations = {}
    return Descriptor(
        manifest.media_type,
        manifest.digest,
        len(manifest.raw),
        annotations=dict(annotations),
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
    )


def tagged_entry(manifest: Manifest) -> Descriptor:
    """The descriptor of a manifest found under cosign's tag convention: as ``index_entry``,
    except that a generic config (cosign's signatures carry an image config) gives way to the
    first layer's media type (``application/vnd.dev.cosign.simplesigning.v1+json``, a DSSE
    envelope, an SPDX document): the type a ``--referrers-type`` filter names."""
    entry = index_entry(manifest)
    if entry.artifact_type in _GENERIC_CONFIGS and not manifest.is_index:
        layers = manifest.image().layers
        if layers:
            entry = replace(entry, artifact_type=layers[0].media_type)
    return entry


def declared_subject(manifest: Manifest) -> Digest | None:
    """The digest a manifest (an image manifest or an index) names as its ``subject``; None
    when it names none, or nothing readable."""
    subject = _document(manifest).get("subject")
    digest = subject.get("digest") if isinstance(subject, dict) else None
    if not isinstance(digest, str):
        return None
    try:
        return Digest.parse(digest)
    except InvalidDigest:
        return None


def merge_index(current: Manifest | None, entry: Descriptor) -> Manifest | None:
    """The fallback tag's index with ``entry`` added: every entry already there kept as it is
    (another tool's referrer, fields we do not know), and its other fields too. None when the
    index lists ``entry``'s digest already (nothing to write)."""
    if current is None:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    else:
        if not current.is_index:
            raise ManifestError(
                f"it names {current.digest}, a {current.media_type}, not an index: left as it is",
                digest=str(current.digest),
            )
        if any(d.digest == entry.digest for d in current.index().manifests):
            return None
        doc = _document(current)
        if current.media_type != OCI_INDEX:
            raise ManifestError(
                f"its index {current.digest} is a {current.media_type}, "
                "not an OCI index: left as it is",
                digest=str(current.digest),
            )
    doc["manifests"] = [*doc.get("manifests", []), entry.to_json()]
    raw = json.dumps(doc, separators=(",", ":")).encode()
    if len(raw) > MAX_MANIFEST_BYTES:
        # Written, no reader (ours included) would take it: the index stays as it is.
        raise ManifestError(
            f"its index would grow past {MAX_MANIFEST_BYTES} bytes with "
            f"{entry.digest}: left as it is",
            digest=str(entry.digest),
        )
    return Manifest.from_bytes(raw, OCI_INDEX, what="referrers fallback index")


@runtime_checkable
class FilteringReferrerSource(Protocol):
    """A source that can ask for referrers of some artifact types only (the referrers API's
    ``artifactType`` filter); the caller filters again, since a registry may ignore it."""

    async def get_referrers_filtered(
        self, subject: Descriptor, artifact_types: Collection[str]
    ) -> list[Referrer]: ...


@runtime_checkable
class ReferrerCheck(Protocol):
    """A destination that can tell cheaply whether a referrer is there and recorded where
    readers look (a registry: its tag, its fallback index or its referrers API), so a rerun
    moves nothing and writes nothing for it."""

    async def has_referrer(self, referrer: Referrer) -> bool: ...


@dataclass(frozen=True)
class ReferrerBounds:
    """What one image's referrer tree may hold: a hostile registry listing referrers without end
    (huge, cyclic or deep) stops here, with one line said, and the image itself still copies."""

    depth: int = 4  # image → SBOM → its signature → ... levels below the image
    # Referrers tried for one image, every level together: carried, there already, or found
    # missing (each costs requests, so a listing of made-up digests is bounded too).
    count: int = 1000
    misses: int = 100  # listed referrers in a row the source does not hold: the rest not tried


# --- the tree `xfer referrers` shows ------------------------------------------------------------


@dataclass(frozen=True)
class ReferrerNode:
    """A referrer and what refers to it in turn."""

    referrer: Referrer
    referrers: tuple[ReferrerNode, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            **self.referrer.descriptor.to_json(),
            "tag": self.referrer.tag,
            "referrers": [node.to_json() for node in self.referrers],
        }


@dataclass(frozen=True)
class ReferrerTree:
    """What refers to ``subject``; for an index, also to each of its manifests (``children``)."""

    subject: Descriptor
    referrers: tuple[ReferrerNode, ...] = ()
    children: tuple[ReferrerTree, ...] = ()
    # What the walk left out at a bound (said once each): e.g. "more than 1000 referrers".
    truncated: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.subject.to_json(),
            "referrers": [node.to_json() for node in self.referrers],
        }
        if self.children:
            out["manifests"] = [child.to_json() for child in self.children]
        if self.truncated:
            out["truncated"] = list(self.truncated)
        return out


class ReferrerLister(Protocol):
    async def __call__(self, subject: Descriptor) -> list[Referrer]: ...


async def referrer_tree(
    subject: Manifest,
    listing: ReferrerLister,
    bounds: ReferrerBounds | None = None,
    artifact_types: Collection[str] = (),
) -> ReferrerTree:
    """The tree of what refers to ``subject`` (and, for an index, to each of its manifests),
    within ``bounds``: each digest shown once (a listing that names an ancestor or a node
    already shown is no edge), no deeper than ``bounds.depth``, no more than ``bounds.count``
    referrers; what a bound left out is said in ``truncated``."""
    bounds = bounds or ReferrerBounds()
    top = subject.descriptor()
    children = list(subject.index().manifests) if subject.is_index else []
    seen = {top.digest, *(child.digest for child in children)}
    truncated: list[str] = []
    count = 0

    async def below(desc: Descriptor, depth: int) -> tuple[ReferrerNode, ...]:
        nonlocal count
        listed = [r for r in await listing(desc) if r.descriptor.digest not in seen]
        if artifact_types:
            listed = [r for r in listed if r.descriptor.artifact_type in artifact_types]
        if listed and depth == bounds.depth:
            note = f"referrers nested more than {depth} levels deep: not shown"
            if note not in truncated:
                truncated.append(note)
            return ()
        nodes = []
        for referrer in listed:
            if referrer.descriptor.digest in seen:
                continue
            if count >= bounds.count:
                note = f"more than {bounds.count} referrers: the rest not shown"
                if note not in truncated:
                    truncated.append(note)
                break
            seen.add(referrer.descriptor.digest)
            count += 1
            nodes.append(ReferrerNode(referrer, await below(referrer.descriptor, depth + 1)))
        return tuple(nodes)

    mine = await below(top, 0)
    trees = []
    for child in children:
        found = await below(child, 0)
        if found:
            trees.append(ReferrerTree(child, found))
    return ReferrerTree(top, mine, tuple(trees), tuple(truncated))
