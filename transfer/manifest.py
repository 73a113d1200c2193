"""Manifests, indexes, descriptors, platforms and image configs: pure parsing and validation.

Rule: a manifest is its exact bytes plus its media type. It is never re-serialised, because
its digest (and so every reference to it) is computed over those bytes. Every document here is
hostile input from a registry or an archive: sizes are capped before parsing, digests checked
before trusting the content, and each error is one line naming what failed.
"""

from __future__ import annotations

import platform as _host
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from . import jsonio
from .digest import Digest
from .errors import (
    DigestMismatch,
    InvalidDigest,
    ManifestError,
    PlatformNotFound,
    TooLarge,
    UsageError,
)
from .jsonio import show

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

# Indexes first so that a registry hands us the multi-platform list, not its default image.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

# The distribution spec lets registries refuse manifests over 4 MiB; nothing legitimate is bigger.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = MAX_MANIFEST_BYTES
# 8 TiB: far above any real blob, low enough that a hostile size cannot drive allocation or math.
MAX_BLOB_SIZE = 2**43


# --- platforms ---------------------------------------------------------------------------------

_PLATFORM_PART = re.compile(r"[a-z0-9][a-z0-9._-]*")
# Names the kernel (platform.machine()) uses, mapped to OCI architecture and variant.
_MACHINES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
}
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386"}
# What an index entry without a variant means (as containerd reads it).
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().lower().split("/")
        if not 2 <= len(parts) <= 3 or not all(_PLATFORM_PART.fullmatch(p) for p in parts):
            raise UsageError(f"invalid platform {show(text)}: expected OS/ARCH[/VARIANT]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def current(cls) -> Platform:
        machine = _host.machine().lower()
        architecture, variant = _MACHINES.get(machine, (machine, None))
        # Images we run are Linux images even on a macOS or Windows host (Docker runs a VM).
        return cls("linux", architecture, variant)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Platform:
        if not isinstance(obj, Mapping):
            raise ManifestError(f"platform must be a JSON object, got {type(obj).__name__}")
        os_, arch = obj.get("os"), obj.get("architecture")
        if not isinstance(os_, str) or not os_ or not isinstance(arch, str) or not arch:
            raise ManifestError(f"platform needs string os and architecture, got {show(obj)}")
        variant, os_version = obj.get("variant"), obj.get("os.version")
        if variant is not None and not isinstance(variant, str):
            raise ManifestError(f"platform variant must be a string, got {show(variant)}")
        if os_version is not None and not isinstance(os_version, str):
            raise ManifestError(f"platform os.version must be a string, got {show(os_version)}")
        return cls(os_, arch, variant or None, os_version or None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version is not None:
            out["os.version"] = self.os_version
        if self.variant is not None:
            out["variant"] = self.variant
        return out

    def _normal(self) -> tuple[str, str, str | None]:
        arch = self.architecture.lower()
        arch = _ARCH_ALIASES.get(arch, arch)
        variant = self.variant.lower() if self.variant else _DEFAULT_VARIANT.get(arch)
        return self.os.lower(), arch, variant

    def matches(self, other: Platform) -> bool:
        """Does ``other`` (offered, e.g. by an index) satisfy ``self`` (requested)?"""
        os_, arch, variant = self._normal()
        other_os, other_arch, other_variant = other._normal()
        if (os_, arch) != (other_os, other_arch):
            return False
        # A request without a variant ("linux/arm") takes whichever variant is offered.
        return self.variant is None or variant == other_variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# --- descriptors -------------------------------------------------------------------------------


def _optional(obj: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise ManifestError(f"{what}: {key} must be a {kind.__name__}, got {show(value)}")
    return value


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    # A dict cannot be hashed; leaving it out of the hash keeps descriptors usable in sets.
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    platform: Platform | None = None
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, obj: Any, *, what: str = "descriptor") -> Descriptor:
        if not isinstance(obj, Mapping):
            raise ManifestError(f"{what} must be a JSON object, got {type(obj).__name__}")
        media_type = obj.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise ManifestError(f"{what}: mediaType must be a non-empty string")
        text = obj.get("digest")
        if not isinstance(text, str):
            raise ManifestError(f"{what}: digest must be a string, got {show(text)}")
        try:
            digest = Digest.parse(text)
        except InvalidDigest as e:
            # Bad remote data is a manifest problem (exit 1), not a usage error (exit 2).
            raise ManifestError(f"{what}: {e.message}") from e
        size = obj.get("size")
        # bool is an int subclass: "size": true must not pass as 1.
        if type(size) is not int or not 0 <= size <= MAX_BLOB_SIZE:
            raise ManifestError(
                f"{what} {digest}: size must be an integer from 0 to {MAX_BLOB_SIZE}, "
                f"got {show(size)}"
            )
        urls = _optional(obj, "urls", list, what) or []
        annotations = _optional(obj, "annotations", dict, what) or {}
        if not all(isinstance(u, str) for u in urls):
            raise ManifestError(f"{what}: urls must be strings")
        if not all(isinstance(v, str) for v in annotations.values()):
            raise ManifestError(f"{what}: annotation values must be strings")
        plat = _optional(obj, "platform", dict, what)
        return cls(
            media_type,
            digest,
            size,
            tuple(urls),
            dict(annotations),
            Platform.from_json(plat) if plat is not None else None,
            _optional(obj, "artifactType", str, what),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        return out


# --- parsed documents --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageManifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None = None

    def blobs(self) -> tuple[Descriptor, ...]:
        return (self.config, *self.layers)


@dataclass(frozen=True)
class Index:
    manifests: tuple[Descriptor, ...]

    def platforms(self) -> list[Platform]:
        return [d.platform for d in self.manifests if d.platform is not None]

    def select(self, platform: Platform) -> Descriptor:
        for d in self.manifests:
            if d.platform is not None and platform.matches(d.platform):
                return d
        offered = ", ".join(dict.fromkeys(str(p) for p in self.platforms())) or "none"
        raise PlatformNotFound(f"no image for {platform} in the index; offered: {offered}")


def _load_object(raw: bytes, what: str, cap: int) -> dict[str, Any]:
    if len(raw) > cap:
        raise TooLarge(f"{what} is {len(raw)} bytes, over the {cap} byte limit")
    try:
        doc = jsonio.loads(raw, strict=True)
    except jsonio.JSONError as e:
        raise ManifestError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ManifestError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _descriptor_list(doc: Mapping[str, Any], key: str, what: str) -> tuple[Descriptor, ...]:
    items = doc.get(key)
    if not isinstance(items, list):
        raise ManifestError(f"{what}: {key} must be a list")
    return tuple(Descriptor.from_json(d, what=f"{what} {key}[{i}]") for i, d in enumerate(items))


@dataclass(frozen=True)
class Manifest:
    raw: bytes = field(repr=False)
    media_type: str
    digest: Digest

    @classmethod
    def from_bytes(
        cls,
        raw: bytes,
        content_type: str | None = None,
        *,
        expected: Digest | None = None,
        what: str = "manifest",
    ) -> Manifest:
        raw = bytes(raw)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise TooLarge(
                f"{what} is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} byte limit",
                digest=str(expected) if expected else None,
            )
        digest = Digest.of(raw, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise DigestMismatch(
                f"{what} digest mismatch: expected {expected}, got {digest}",
                digest=str(expected),
            )
        doc = _load_object(raw, what, MAX_MANIFEST_BYTES)
        media_type = _media_type(doc, content_type, what)
        # Validate every descriptor now, not when first used; keep the result as the cache.
        parsed = _structure(doc, media_type, what)
        manifest = cls(raw, media_type, digest)
        object.__setattr__(manifest, "_parsed", parsed)
        return manifest

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @cached_property
    def _parsed(self) -> ImageManifest | Index:
        # Built only for a Manifest constructed directly; from_bytes fills it in.
        what = f"manifest {self.digest.short}"
        return _structure(_load_object(self.raw, what, MAX_MANIFEST_BYTES), self.media_type, what)

    def parse(self) -> ImageManifest | Index:
        return self._parsed

    def image(self) -> ImageManifest:
        parsed = self.parse()
        if not isinstance(parsed, ImageManifest):
            raise ManifestError(f"{self.digest} is an index ({self.media_type}), not an image")
        return parsed

    def index(self) -> Index:
        parsed = self.parse()
        if not isinstance(parsed, Index):
            raise ManifestError(f"{self.digest} is an image ({self.media_type}), not an index")
        return parsed

    def descriptor(
        self, platform: Platform | None = None, annotations: Mapping[str, str] | None = None
    ) -> Descriptor:
        return Descriptor(
            self.media_type, self.digest, len(self.raw), (), dict(annotations or {}), platform
        )


def _structure(doc: Mapping[str, Any], media_type: str, what: str) -> ImageManifest | Index:
    if media_type in INDEX_TYPES:
        return Index(_descriptor_list(doc, "manifests", what))
    if media_type not in IMAGE_TYPES:
        raise ManifestError(f"{what}: unsupported media type {show(media_type)}")
    subject = doc.get("subject")
    return ImageManifest(
        Descriptor.from_json(doc.get("config"), what=f"{what} config"),
        _descriptor_list(doc, "layers", what),
        Descriptor.from_json(subject, what=f"{what} subject") if subject is not None else None,
    )


def _media_type(doc: Mapping[str, Any], content_type: str | None, what: str) -> str:
    """The media type from the document, else Content-Type, else inferred from the shape."""
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestError(f"{what}: mediaType must be a string, got {show(declared)}")
    header = content_type.split(";", 1)[0].strip().lower() if content_type else None
    version = doc.get("schemaVersion")
    if (type(version) is int and version == 1) or {declared, header} & _SCHEMA1_TYPES:
        raise ManifestError(f"{what}: Docker schema 1 manifests are unsupported")
    if "manifests" in doc and "layers" in doc:
        # Ambiguous: one tool would read an index, another an image, under the same digest.
        raise ManifestError(f"{what} has both manifests and layers; refusing an ambiguous document")
    if type(version) is not int or version != 2:
        raise ManifestError(f"{what}: schemaVersion must be 2, got {show(version)}")
    if declared and header and declared != header:
        raise ManifestError(
            f"{what}: mediaType {show(declared)} differs from Content-Type {show(header)}"
        )
    media_type = declared or header
    if not media_type:
        if "manifests" in doc:
            media_type = OCI_INDEX
        elif "config" in doc and "layers" in doc:
            media_type = OCI_MANIFEST
        else:
            raise ManifestError(f"{what} has no mediaType and is neither an image nor an index")
    if media_type not in INDEX_TYPES | IMAGE_TYPES:
        raise ManifestError(f"{what}: unsupported media type {show(media_type)}")
    return media_type


# --- image config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    raw: bytes = field(repr=False)
    platform: Platform
    diff_ids: tuple[Digest, ...]

    @classmethod
    def from_bytes(cls, raw: bytes) -> ImageConfig:
        raw = bytes(raw)
        doc = _load_object(raw, "image config", MAX_CONFIG_BYTES)
        try:
            # The config carries os/architecture/variant/os.version at the top, like a platform.
            plat = Platform.from_json(doc)
        except ManifestError as e:
            raise ManifestError(f"image config: {e.message}") from e
        rootfs = doc.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise ManifestError("image config: rootfs.diff_ids must be a list")
        diff_ids = []
        for i, text in enumerate(rootfs["diff_ids"]):
            where = f"image config rootfs.diff_ids[{i}]"
            if not isinstance(text, str):
                raise ManifestError(f"{where} must be a string, got {show(text)}")
            try:
                diff_ids.append(Digest.parse(text))
            except InvalidDigest as e:
                raise ManifestError(f"{where}: {e.message}") from e
        return cls(raw, plat, tuple(diff_ids))
