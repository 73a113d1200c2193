"""Manifest, index, descriptor, platform and config parsing: valid kinds and hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from transfer.digest import Digest
from transfer.errors import (
    DigestMismatch,
    ManifestError,
    PlatformNotFound,
    SizeMismatch,
    UsageError,
)
from transfer.manifest import (
    ACCEPT,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    ImageManifest,
    Index,
    Manifest,
    Platform,
)

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def desc(digest: Any = D1, size: Any = 10, media_type: str = LAYER, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def image_doc(media_type: Any = OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2}
    if media_type:
        doc["mediaType"] = media_type
    doc["config"] = desc(D1, 2, OCI_CONFIG)
    doc["layers"] = [desc(D2, 100), desc(D3, 200)]
    return {**doc, **extra}


def index_doc(media_type: str | None = OCI_INDEX, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2}
    if media_type:
        doc["mediaType"] = media_type
    doc["manifests"] = [
        desc(D1, 500, OCI_MANIFEST, platform={"os": "linux", "architecture": "amd64"}),
        desc(D2, 501, OCI_MANIFEST, platform={"os": "linux", "architecture": "arm64"}),
    ]
    return {**doc, **extra}


def encode(doc: Any) -> bytes:
    # Deliberately non-canonical spacing, so a re-serialisation would change the digest.
    return json.dumps(doc, indent=3).encode() + b"\n"


# --- valid kinds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "content_type", "media_type"),
    [
        pytest.param(image_doc(), OCI_MANIFEST, OCI_MANIFEST, id="oci-image"),
        pytest.param(index_doc(), OCI_INDEX, OCI_INDEX, id="oci-index"),
        pytest.param(
            image_doc(DOCKER_MANIFEST), DOCKER_MANIFEST, DOCKER_MANIFEST, id="docker-v2s2"
        ),
        pytest.param(index_doc(DOCKER_LIST), DOCKER_LIST, DOCKER_LIST, id="docker-list"),
        pytest.param(image_doc(None), None, OCI_MANIFEST, id="no-media-type-infers-oci-image"),
        pytest.param(index_doc(None), None, OCI_INDEX, id="no-media-type-infers-oci-index"),
        pytest.param(
            image_doc(None),
            DOCKER_MANIFEST,
            DOCKER_MANIFEST,
            id="content-type-used-when-doc-silent",
        ),
        pytest.param(image_doc(), None, OCI_MANIFEST, id="doc-media-type-without-header"),
    ],
)
def test_valid_manifest_keeps_raw_bytes_and_digest(
    doc: dict[str, Any], content_type: str | None, media_type: str
) -> None:
    raw = encode(doc)
    m = Manifest.from_bytes(raw, content_type, expected=Digest.of(raw))
    assert m.raw == raw
    assert m.digest == Digest.of(raw)
    assert m.media_type == media_type
    assert m.is_index == ("manifests" in doc)
    assert isinstance(m.parse(), Index if m.is_index else ImageManifest)
    d = m.descriptor()
    assert (d.media_type, d.digest, d.size) == (media_type, m.digest, len(raw))


def test_digest_uses_the_algorithm_of_expected() -> None:
    raw = encode(image_doc())
    m = Manifest.from_bytes(raw, expected=Digest.of(raw, "sha512"))
    assert m.digest == Digest.of(raw, "sha512")


def test_accept_lists_index_and_image_types_in_order() -> None:
    assert [t.strip() for t in ACCEPT.split(",")] == [
        OCI_INDEX,
        DOCKER_LIST,
        OCI_MANIFEST,
        DOCKER_MANIFEST,
    ]


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param(OCI_MANIFEST + "; charset=utf-8", id="charset-parameter-stripped"),
        pytest.param(OCI_MANIFEST.upper(), id="content-type-case-insensitive"),
        pytest.param(" " + OCI_MANIFEST + " ;q=1", id="whitespace-and-params-stripped"),
    ],
)
def test_content_type_parameters_tolerated(content_type: str) -> None:
    m = Manifest.from_bytes(encode(image_doc()), content_type)
    assert m.media_type == OCI_MANIFEST


def test_image_parts_and_blob_order() -> None:
    subject = desc(D3, 7, OCI_MANIFEST)
    img = Manifest.from_bytes(encode(image_doc(subject=subject))).image()
    assert [str(b.digest) for b in img.blobs()] == [D1, D2, D3]
    assert img.blobs()[0] is img.config
    assert img.subject is not None and img.subject.size == 7


def test_image_and_index_accessors_refuse_the_other_kind() -> None:
    with pytest.raises(ManifestError, match="is an index"):
        Manifest.from_bytes(encode(index_doc())).image()
    with pytest.raises(ManifestError, match="is an image"):
        Manifest.from_bytes(encode(image_doc())).index()


def test_directly_built_manifest_parses_lazily() -> None:
    raw = encode(index_doc())
    m = Manifest(raw, OCI_INDEX, Digest.of(raw))
    assert len(m.index().manifests) == 2
    assert m.parse() is m.parse()  # cached


# --- hostile manifests -------------------------------------------------------------------------

OTHER = Digest.of(b"something else")
NESTED = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize(
    ("raw", "content_type", "expected", "error", "message"),
    [
        pytest.param(
            b"{" + b" " * MAX_MANIFEST_BYTES + b"}",
            None,
            None,
            SizeMismatch,
            "over the",
            id="over-4MiB-rejected-before-parsing",
        ),
        pytest.param(
            encode(image_doc()),
            None,
            OTHER,
            DigestMismatch,
            f"expected {OTHER}, got sha256:",
            id="digest-mismatch-names-both",
        ),
        pytest.param(b'{"a": "\xff"}', None, None, ManifestError, "not UTF-8", id="not-utf8"),
        pytest.param(b"<html>login</html>", None, None, ManifestError, "not valid JSON", id="html"),
        pytest.param(b"[1, 2]", None, None, ManifestError, "JSON object", id="top-level-array"),
        pytest.param(b'"x"', None, None, ManifestError, "JSON object", id="top-level-string"),
        pytest.param(
            b'{"schemaVersion": 2, "schemaVersion": 2}',
            None,
            None,
            ManifestError,
            "duplicate key",
            id="duplicate-keys-ambiguous",
        ),
        pytest.param(b'{"a": NaN}', None, None, ManifestError, "NaN", id="nan-not-json"),
        pytest.param(NESTED, None, None, ManifestError, "not valid JSON", id="hostile-nesting"),
        pytest.param(
            encode({"schemaVersion": 1, "name": "x", "fsLayers": []}),
            None,
            None,
            ManifestError,
            "Docker schema 1 manifests are unsupported",
            id="schema1-by-version",
        ),
        pytest.param(
            encode(image_doc(None)),
            DOCKER_SCHEMA1_SIGNED,
            None,
            ManifestError,
            "Docker schema 1 manifests are unsupported",
            id="schema1-by-content-type",
        ),
        pytest.param(
            encode(image_doc(DOCKER_SCHEMA1)),
            None,
            None,
            ManifestError,
            "Docker schema 1 manifests are unsupported",
            id="schema1-by-media-type",
        ),
        pytest.param(
            encode({**image_doc(None), **index_doc(None)}),
            None,
            None,
            ManifestError,
            "both manifests and layers",
            id="manifests-and-layers-ambiguous",
        ),
        pytest.param(
            encode({**image_doc(), "schemaVersion": 3}),
            None,
            None,
            ManifestError,
            "schemaVersion must be 2",
            id="schema-version-3",
        ),
        pytest.param(
            encode({k: v for k, v in image_doc().items() if k != "schemaVersion"}),
            None,
            None,
            ManifestError,
            "schemaVersion must be 2",
            id="schema-version-missing",
        ),
        pytest.param(
            encode({**image_doc(), "schemaVersion": "2"}),
            None,
            None,
            ManifestError,
            "schemaVersion must be 2",
            id="schema-version-string",
        ),
        pytest.param(
            encode({**image_doc(), "schemaVersion": True}),
            None,
            None,
            ManifestError,
            "schemaVersion must be 2",
            id="schema-version-bool",
        ),
        pytest.param(
            encode(image_doc()),
            OCI_INDEX,
            None,
            ManifestError,
            "differs from Content-Type",
            id="media-type-contradicts-content-type",
        ),
        pytest.param(
            encode(image_doc("application/vnd.oci.artifact.manifest.v1+json")),
            None,
            None,
            ManifestError,
            "application/vnd.oci.artifact.manifest.v1+json",
            id="artifact-manifest-unsupported",
        ),
        pytest.param(
            encode(image_doc(None)),
            "text/html; charset=utf-8",
            None,
            ManifestError,
            "unsupported media type 'text/html'",
            id="text-html-content-type-unsupported",
        ),
        pytest.param(
            encode({"schemaVersion": 2}),
            None,
            None,
            ManifestError,
            "neither an image nor an index",
            id="no-media-type-no-shape",
        ),
        pytest.param(
            encode(image_doc(7)),
            None,
            None,
            ManifestError,
            "mediaType must be a string",
            id="media-type-not-string",
        ),
        pytest.param(
            encode({**image_doc(), "layers": [desc(D2, -1)]}),
            None,
            None,
            ManifestError,
            "layers[0]",
            id="bad-layer-descriptor-named",
        ),
        pytest.param(
            encode({**image_doc(), "layers": "nope"}),
            None,
            None,
            ManifestError,
            "layers must be a list",
            id="layers-not-a-list",
        ),
        pytest.param(
            encode({k: v for k, v in image_doc().items() if k != "config"}),
            None,
            None,
            ManifestError,
            "config must be a JSON object",
            id="config-missing",
        ),
        pytest.param(
            encode({**index_doc(), "manifests": [desc("sha256:../../x")]}),
            None,
            None,
            ManifestError,
            "manifests[0]",
            id="index-entry-path-traversal-digest",
        ),
        pytest.param(
            encode(index_doc(OCI_INDEX, manifests=None)),
            None,
            None,
            ManifestError,
            "manifests must be a list",
            id="index-manifests-null",
        ),
    ],
)
def test_hostile_manifest_rejected(
    raw: bytes,
    content_type: str | None,
    expected: Digest | None,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error) as info:
        Manifest.from_bytes(raw, content_type, expected=expected)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_size_exactly_at_cap_is_allowed_past_the_size_check() -> None:
    raw = encode(image_doc())
    raw = raw + b" " * (MAX_MANIFEST_BYTES - len(raw))
    assert Manifest.from_bytes(raw).raw == raw


def test_docker_list_entry_without_platform_accepted() -> None:
    doc = index_doc(DOCKER_LIST)
    doc["manifests"].append(desc(D3, 9, DOCKER_MANIFEST))
    index = Manifest.from_bytes(encode(doc)).index()
    assert len(index.manifests) == 3
    assert len(index.platforms()) == 2


# --- descriptors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(desc(size=0), id="zero-size"),
        pytest.param(desc(size=2**43), id="size-at-cap"),
        pytest.param(desc("sha512:" + "a" * 128), id="sha512-accepted"),
        pytest.param(desc(urls=["https://x/y"], annotations={"a": "b"}), id="urls-annotations"),
        pytest.param(desc(platform={"os": "linux", "architecture": "arm"}), id="with-platform"),
    ],
)
def test_descriptor_valid(obj: dict[str, Any]) -> None:
    d = Descriptor.from_json(obj)
    assert str(d.digest) == obj["digest"]
    assert d.size == obj["size"]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param(desc(size=-1), "size must be", id="negative-size"),
        pytest.param(desc(size=2**43 + 1), "size must be", id="absurd-size"),
        pytest.param(desc(size=10**400), "size must be", id="huge-int-size"),
        pytest.param(desc(size=True), "size must be", id="bool-size-is-not-int"),
        pytest.param(desc(size=1.0), "size must be", id="float-size"),
        pytest.param(desc(size="10"), "size must be", id="string-size"),
        pytest.param({"digest": D1, "size": 1}, "mediaType", id="missing-media-type"),
        pytest.param(desc(media_type=""), "mediaType", id="empty-media-type"),
        pytest.param(desc("sha256:../../x"), "invalid digest", id="path-traversal-digest"),
        pytest.param(desc("sha256:" + "A" * 64), "lower-case", id="upper-case-hex"),
        pytest.param(desc("md5:" + "a" * 32), "unsupported algorithm", id="md5-rejected"),
        pytest.param(desc(D1.upper()), "unsupported algorithm", id="upper-case-algorithm"),
        pytest.param(desc(digest=5), "digest must be a string", id="digest-not-string"),
        pytest.param(desc(urls="https://x"), "urls must be a list", id="urls-not-list"),
        pytest.param(desc(urls=[1]), "urls must be strings", id="url-not-string"),
        pytest.param(desc(annotations={"a": 1}), "annotation values", id="annotation-not-str"),
        pytest.param(desc(platform={"os": "linux"}), "architecture", id="platform-missing-arch"),
        pytest.param(desc(artifactType=3), "artifactType", id="artifact-type-not-str"),
        pytest.param([D1], "JSON object", id="not-an-object"),
    ],
)
def test_descriptor_rejected(obj: Any, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        Descriptor.from_json(obj)
    assert message in str(info.value)


def test_descriptor_to_json_round_trip_and_key_order() -> None:
    obj = desc(
        D2,
        42,
        urls=["https://mirror/blob"],
        annotations={"org.opencontainers.image.title": "x"},
        platform={"architecture": "arm", "os": "linux", "variant": "v7"},
        artifactType="application/x-thing",
    )
    d = Descriptor.from_json(obj)
    assert d.to_json() == obj
    assert list(d.to_json()) == [
        "mediaType",
        "digest",
        "size",
        "urls",
        "annotations",
        "platform",
        "artifactType",
    ]
    assert Descriptor.from_json(d.to_json()) == d
    assert hash(d) == hash(Descriptor.from_json(obj))  # usable in sets despite the dict


def test_descriptor_to_json_omits_unset_fields() -> None:
    assert Descriptor.from_json(desc()).to_json() == desc()


def test_manifest_descriptor_carries_platform_and_annotations() -> None:
    m = Manifest.from_bytes(encode(image_doc()))
    d = m.descriptor(Platform("linux", "amd64"), {"k": "v"})
    assert d.to_json()["platform"] == {"architecture": "amd64", "os": "linux"}
    assert d.annotations == {"k": "v"}


# --- platforms ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("linux/amd64", Platform("linux", "amd64"), id="os-arch"),
        pytest.param("linux/arm64", Platform("linux", "arm64"), id="arm64"),
        pytest.param("linux/arm/v7", Platform("linux", "arm", "v7"), id="arm-v7"),
        pytest.param("linux/arm64/v8", Platform("linux", "arm64", "v8"), id="arm64-v8"),
        pytest.param("Linux/AMD64", Platform("linux", "amd64"), id="case-folded"),
        pytest.param("windows/amd64", Platform("windows", "amd64"), id="windows"),
    ],
)
def test_platform_parse(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("linux", id="os-only"),
        pytest.param("linux/", id="empty-arch"),
        pytest.param("/amd64", id="empty-os"),
        pytest.param("linux/arm/v7/x", id="too-many-parts"),
        pytest.param("linux amd64", id="space"),
        pytest.param("linux/../etc", id="dot-dot"),
        pytest.param("linux/arm//", id="trailing-slashes"),
    ],
)
def test_platform_parse_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid platform"):
        Platform.parse(text)


@pytest.mark.parametrize(
    ("requested", "offered", "expected"),
    [
        pytest.param("linux/amd64", Platform("linux", "amd64"), True, id="same"),
        pytest.param("linux/amd64", Platform("linux", "x86_64"), True, id="x86_64-is-amd64"),
        pytest.param("linux/arm64", Platform("linux", "aarch64"), True, id="aarch64-is-arm64"),
        pytest.param("linux/arm64/v8", Platform("linux", "arm64"), True, id="arm64-default-v8"),
        pytest.param("linux/arm/v7", Platform("linux", "arm"), True, id="arm-default-v7"),
        pytest.param("linux/arm/v6", Platform("linux", "arm"), False, id="arm-v6-not-default"),
        pytest.param("linux/arm", Platform("linux", "arm", "v6"), True, id="no-variant-takes-any"),
        pytest.param("linux/arm/v7", Platform("linux", "arm", "v6"), False, id="variant-differs"),
        pytest.param("linux/amd64", Platform("linux", "arm64"), False, id="arch-differs"),
        pytest.param("linux/amd64", Platform("windows", "amd64"), False, id="os-differs"),
        pytest.param("linux/amd64", Platform("unknown", "unknown"), False, id="attestation"),
    ],
)
def test_platform_matches(requested: str, offered: Platform, expected: bool) -> None:
    assert Platform.parse(requested).matches(offered) is expected


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        pytest.param("x86_64", "linux/amd64", id="x86_64"),
        pytest.param("aarch64", "linux/arm64", id="aarch64"),
        pytest.param("arm64", "linux/arm64", id="macos-arm64"),
        pytest.param("armv7l", "linux/arm/v7", id="armv7l"),
        pytest.param("s390x", "linux/s390x", id="passthrough"),
    ],
)
def test_platform_current(monkeypatch: pytest.MonkeyPatch, machine: str, expected: str) -> None:
    monkeypatch.setattr("platform.machine", lambda: machine)
    assert str(Platform.current()) == expected


def test_platform_from_json_and_str() -> None:
    p = Platform.from_json({"os": "windows", "architecture": "amd64", "os.version": "10.0.1"})
    assert p == Platform("windows", "amd64", None, "10.0.1")
    assert str(Platform("linux", "arm64", "v8")) == "linux/arm64/v8"
    assert Platform.from_json(p.to_json()) == p


# --- index selection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "digest"),
    [
        pytest.param("linux/amd64", D1, id="picks-amd64"),
        pytest.param("linux/arm64", D2, id="picks-arm64"),
        pytest.param("linux/arm64/v8", D2, id="arm64-v8-matches-plain-arm64"),
    ],
)
def test_index_select(requested: str, digest: str) -> None:
    index = Manifest.from_bytes(encode(index_doc())).index()
    assert str(index.select(Platform.parse(requested)).digest) == digest


def test_index_select_missing_platform_lists_offered() -> None:
    index = Manifest.from_bytes(encode(index_doc())).index()
    with pytest.raises(PlatformNotFound) as info:
        index.select(Platform.parse("linux/s390x"))
    message = str(info.value)
    assert "linux/s390x" in message
    assert "offered: linux/amd64, linux/arm64" in message
    assert index.platforms() == [Platform("linux", "amd64"), Platform("linux", "arm64")]


def test_index_select_empty_index_says_none_offered() -> None:
    with pytest.raises(PlatformNotFound, match="offered: none"):
        Index(()).select(Platform.parse("linux/amd64"))


# --- image config ------------------------------------------------------------------------------


def config_doc(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [D2, D3]},
    }
    return {**doc, **extra}


def test_image_config_parses_platform_and_diff_ids() -> None:
    raw = encode(config_doc())
    cfg = ImageConfig.from_bytes(raw)
    assert cfg.raw == raw
    assert cfg.platform == Platform("linux", "arm64", "v8")
    assert cfg.diff_ids == (Digest.parse(D2), Digest.parse(D3))


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        pytest.param(
            b"{" + b" " * MAX_CONFIG_BYTES + b"}", SizeMismatch, "over the", id="over-cap"
        ),
        pytest.param(b"[]", ManifestError, "JSON object", id="not-an-object"),
        pytest.param(
            encode({k: v for k, v in config_doc().items() if k != "os"}),
            ManifestError,
            "image config: platform needs",
            id="missing-os",
        ),
        pytest.param(
            encode(config_doc(rootfs={"type": "layers"})),
            ManifestError,
            "rootfs.diff_ids must be a list",
            id="missing-diff-ids",
        ),
        pytest.param(
            encode(config_doc(rootfs=None)),
            ManifestError,
            "rootfs.diff_ids must be a list",
            id="missing-rootfs",
        ),
        pytest.param(
            encode(config_doc(rootfs={"diff_ids": [D2, "sha256:../../x"]})),
            ManifestError,
            "diff_ids[1]",
            id="bad-diff-id-named",
        ),
        pytest.param(
            encode(config_doc(rootfs={"diff_ids": [2]})),
            ManifestError,
            "diff_ids[0] must be a string",
            id="diff-id-not-string",
        ),
    ],
)
def test_image_config_rejected(raw: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        ImageConfig.from_bytes(raw)
    assert message in str(info.value)
