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

from dataclasses import dataclass

from .digest import Digest
from .manifest import Descriptor

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
