"""The OCI view of a Docker schema 2 image: what OCI-only readers are shown of it.

skopeo's and podman's ``oci:`` transport look a name up only among index.json entries typed
as an OCI manifest or index ("no descriptor found for reference" otherwise), and umoci follows
only OCI manifests and unpacks only an OCI config and OCI layer types ("not implemented",
"config blob is not correct mediatype"). A Docker schema 2 manifest or manifest list in an OCI
layout is therefore invisible to them, although its config and layers are what OCI expects.

The view is a second manifest over the SAME config and layer blobs, with OCI media types: a
Docker manifest becomes an OCI manifest, a manifest list an OCI index of its children's views.
A layout points its index.json entry at the view and names the original in the ``ORIGINAL``
annotation; the original's bytes stay in the layout and are what xfer reads, pushes and saves
as Docker, so the digest a registry knows is never lost. The view is built deterministically
(fixed key order, compact JSON), so the same original always has the same view digest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .digest import Digest
from .manifest import (
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
)

# On a layout's index.json entry (and an OCI archive's) that points at a view: the digest of
# the original Docker manifest or list it was made from.
ORIGINAL = "dev.xfer.original.digest"

DOCKER_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_LIST})
# Docker's media types and their OCI equivalents (the blobs' bytes are the same).
_OCI_TYPE = {
    DOCKER_CONFIG: OCI_CONFIG,
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": (
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ),
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    ),
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_LIST: OCI_INDEX,
}


def needs_view(manifest: Manifest) -> bool:
    return manifest.media_type in DOCKER_TYPES


def original_type(view_type: str) -> str:
    """The Docker media type a view of ``view_type`` was made from."""
    return DOCKER_LIST if view_type == OCI_INDEX else DOCKER_MANIFEST


def _oci(desc: Descriptor) -> dict[str, Any]:
    return {**desc.to_json(), "mediaType": _OCI_TYPE.get(desc.media_type, desc.media_type)}


def _annotations(manifest: Manifest) -> dict[str, Any]:
    doc = json.loads(manifest.raw)
    value = doc.get("annotations") if isinstance(doc, dict) else None
    return {"annotations": value} if isinstance(value, dict) and value else {}


def image_view(manifest: Manifest) -> Manifest:
    """The OCI manifest over a Docker schema 2 manifest's config and layers."""
    image = manifest.image()
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _oci(image.config),
        "layers": [_oci(layer) for layer in image.layers],
        **_annotations(manifest),
    }
    return Manifest.from_bytes(json.dumps(doc, separators=(",", ":")).encode(), OCI_MANIFEST)


def index_view(manifest: Manifest, children: Mapping[Digest, Manifest]) -> Manifest:
    """The OCI index of a Docker manifest list, each child replaced by its view in
    ``children`` (original digest → view); a child without one (not stored) stays as it is."""
    entries = []
    for desc in manifest.index().manifests:
        view = children.get(desc.digest)
        if view is None:
            entries.append(desc.to_json())
            continue
        replaced = {"mediaType": view.media_type, "digest": str(view.digest), "size": len(view.raw)}
        entries.append({**desc.to_json(), **replaced})
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
        **_annotations(manifest),
    }
    return Manifest.from_bytes(json.dumps(doc, separators=(",", ":")).encode(), OCI_INDEX)


def views(manifest: Manifest, read: Callable[[Descriptor], Manifest | None]) -> list[Manifest]:
    """Every view to store for a Docker ``manifest``, the top one last. ``read`` gives a
    child of a list, or None when it is not held (its entry then stays as it is)."""
    if not manifest.is_index:
        return [image_view(manifest)]
    out: list[Manifest] = []
    children: dict[Digest, Manifest] = {}
    for desc in manifest.index().manifests:
        child = read(desc) if desc.media_type == DOCKER_MANIFEST else None
        if child is not None:
            children[desc.digest] = view = image_view(child)
            out.append(view)
    return [*out, index_view(manifest, children)]


def is_view_of(
    view: Manifest, original: Manifest, read: Callable[[Descriptor], Manifest | None]
) -> bool:
    """Is ``view`` exactly what ``views`` makes of ``original``? An annotation alone proves
    nothing in a layout or archive another tool wrote: trusting it unchecked would let one
    name mean one image to OCI readers and another to xfer. For a list, each child of the
    view is either the original child's view or, where that child was not held, itself."""
    if not needs_view(original):
        return False
    if not original.is_index:
        return image_view(original).digest == view.digest
    if not view.is_index:
        return False
    theirs = view.index().manifests
    mine = original.index().manifests
    if len(theirs) != len(mine):
        return False
    children: dict[Digest, Manifest] = {}
    for own, shown in zip(mine, theirs, strict=True):
        if shown.digest == own.digest:
            continue
        child = read(own) if own.media_type == DOCKER_MANIFEST else None
        if child is None:
            return False
        children[own.digest] = image_view(child)
    return index_view(original, children).digest == view.digest
