"""The air-gap round trip of a signed image, on real registries: ``xfer save`` from the source
registry, ``xfer load`` into a store, ``xfer push`` into a third registry. The signatures verify
there with the public key against the image digests (ECDSA P-256 over cosign's payload), the
SBOMs and their signatures are listed and intact; then ``rm`` and ``gc`` in the store drop one
image's referrers and keep the other's."""

from __future__ import annotations

import json
from pathlib import Path

import transfer
from fixtures.images import BuiltImages
from fixtures.registry import Registry
from fixtures.signing import (
    SignedSet,
    get_manifest,
)
from tests.helpers import assert_carried, stored_blobs, xfer


def test_save_load_push_carries_signatures_and_sboms_into_a_third_registry_and_gc_drops_them(
    signed: tuple[Registry, SignedSet],
    empty_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    reg, keys = signed
    small, multi = images.images["small"], images.images["multi"]
    archive = tmp_path / "signed.tar"
    sources = [f"{reg.host}/test/small:1", f"{reg.host}/test/multi:1"]
    saved = xfer(
        "save",
        "--all-platforms",
        *(f"docker://{s}" for s in sources),
        "-o",
        archive,
        store=tmp_path / "unused",
    )
    assert saved.code == 0, saved.err

    store = tmp_path / "store"
    loaded = xfer("load", archive, store=store)
    assert loaded.code == 0, loaded.err
    listed = transfer.api.images_sync(transfer.Settings(store=store))
    assert sorted(e.reference for e in listed) == sorted(sources)  # no referrer is an image
    assert xfer("verify", store=store).code == 0

    third = empty_registry
    for source in sources:
        target = source.replace(reg.host, third.host)
        pushed = xfer("push", source, target, store=store)
        assert pushed.code == 0, pushed.err
    assert_carried(third.url, keys.small.repo, keys.small, keys.public_key)
    assert_carried(third.url, keys.multi_index.repo, keys.multi_index, keys.public_key)
    assert_carried(third.url, keys.multi_child.repo, keys.multi_child, keys.public_key)
    assert get_manifest(third.url, "test/small", small.digest) is not None
    assert get_manifest(third.url, "test/multi", multi.digest) is not None

    # rm the signed small image, then gc: its referrers go, multi's stay.
    small_referrers = {
        keys.small.signature.manifest.digest,
        keys.small.sbom.digest if keys.small.sbom else "",
        keys.small.sbom_signature.manifest.digest if keys.small.sbom_signature else "",
    }
    multi_referrers = {
        keys.multi_index.signature.manifest.digest,
        keys.multi_child.signature.manifest.digest,
    }
    assert small_referrers | multi_referrers <= set(stored_blobs(store))
    assert xfer("rm", sources[0], store=store).code == 0
    gc = xfer("gc", store=store)
    assert gc.code == 0, gc.err
    left = set(stored_blobs(store))
    assert not small_referrers & left
    assert multi_referrers <= left
    index = json.loads((store / "index.json").read_text())["manifests"]
    assert not small_referrers & {e["digest"] for e in index}
    assert xfer("verify", store=store).code == 0
