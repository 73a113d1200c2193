"""The signing fixture writes what cosign and an SBOM tool write, and its signatures verify."""

from __future__ import annotations

import json

import pytest

from fixtures.images import OCI_INDEX, BuiltImages
from fixtures.registry import Registry
from fixtures.signing import (
    EMPTY,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    SPDX,
    SignatureMismatch,
    SignedSet,
    check_signed,
    fallback_index,
    get_blob,
    get_manifest,
    new_key,
    public_pem,
    read_signature,
    verify_signature,
)


def test_signature_verifies_against_the_image_digest(
    signed: tuple[Registry, SignedSet], images: BuiltImages
) -> None:
    reg, keys = signed
    small = images.images["small"]
    payload, signature_b64 = read_signature(reg.url, "test/small", small.digest)
    verify_signature(payload, signature_b64, keys.public_key, small.digest)
    # The manifest is cosign's shape: one simple-signing layer carrying the signature.
    found = get_manifest(reg.url, "test/small", f"sha256-{small.digest[7:]}.sig")
    assert found is not None
    raw = found[0]
    layer = json.loads(raw)["layers"][0]
    assert layer["mediaType"] == SIMPLE_SIGNING
    assert layer["annotations"][SIGNATURE_ANNOTATION] == signature_b64


def test_verification_refuses_another_key_digest_or_payload(
    signed: tuple[Registry, SignedSet], images: BuiltImages
) -> None:
    reg, keys = signed
    small = images.images["small"]
    payload, signature_b64 = read_signature(reg.url, "test/small", small.digest)
    with pytest.raises(SignatureMismatch, match="does not verify"):
        verify_signature(payload, signature_b64, public_pem(new_key()), small.digest)
    with pytest.raises(SignatureMismatch, match="payload signs"):
        verify_signature(payload, signature_b64, keys.public_key, images.images["multi"].digest)
    with pytest.raises(SignatureMismatch, match="does not verify"):
        verify_signature(
            payload.replace(b"cosign", b"cosigm"), signature_b64, keys.public_key, small.digest
        )


def test_sbom_is_recorded_in_the_fallback_index_and_signed(
    signed: tuple[Registry, SignedSet], images: BuiltImages
) -> None:
    reg, keys = signed
    small = images.images["small"]
    sbom = keys.small.sbom
    assert sbom is not None
    found = get_manifest(reg.url, "test/small", "sha256-" + small.digest[7:])
    assert found is not None and found[1] == OCI_INDEX
    entries = fallback_index(reg.url, "test/small", small.digest)
    assert entries == [sbom.descriptor()]
    assert entries[0]["artifactType"] == SPDX
    found = get_manifest(reg.url, "test/small", sbom.digest)
    assert found is not None
    doc = json.loads(found[0])
    assert doc["subject"]["digest"] == small.digest
    assert doc["config"]["mediaType"] == EMPTY
    assert get_blob(reg.url, "test/small", doc["layers"][0]["digest"]) == keys.small.sbom_document
    check_signed(reg.url, "test/small", sbom.digest, keys.public_key)


def test_multi_arch_index_and_child_are_signed(
    signed: tuple[Registry, SignedSet], images: BuiltImages
) -> None:
    reg, keys = signed
    multi = images.images["multi"]
    child = multi.platforms["linux/amd64"]
    check_signed(reg.url, "test/multi", multi.digest, keys.public_key)
    check_signed(reg.url, "test/multi", child, keys.public_key)
    assert [e["artifactType"] for e in fallback_index(reg.url, "test/multi", child)] == [SPDX]
    assert fallback_index(reg.url, "test/multi", multi.digest) == []
