"""Docker schema 2 images in an OCI layout are readable by OCI-only tools (issue item 16).

skopeo's and podman's ``oci:`` transport skip index.json entries not typed as OCI ("no
descriptor found for reference"); umoci follows only OCI manifests ("not implemented") and
unpacks only OCI configs. The store names such an image through an OCI view over the same
blobs, and keeps the original, which is what xfer pushes, saves and lists.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from fixtures.images import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    BuiltImages,
    canonical_json,
    inspect_raw,
    read_blob,
    sha256,
)
from fixtures.pushimage import RegistryPusher
from fixtures.registry import Registry
from tests.helpers import stored_blobs, xfer

ORIGINAL = "dev.xfer.original.digest"


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    return done


def _skopeo_inspect(endpoint: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        _run("skopeo", "--insecure-policy", "inspect", endpoint).stdout
    )
    return doc


def _entry(store: Path, ref: str) -> dict[str, Any]:
    index = json.loads((store / "index.json").read_text())
    found = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == ref
    ]
    assert len(found) == 1
    entry: dict[str, Any] = found[0]
    return entry


def test_a_pulled_docker_image_is_read_by_skopeo_and_umoci_and_keeps_its_digest(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["docker"]
    assert info.media_type == DOCKER_MANIFEST and info.config is not None
    ref = f"{registry.host}/{info.ref}"
    assert xfer("pull", ref, store=store).code == 0

    entry = _entry(store, ref)
    assert entry["mediaType"] == OCI_MANIFEST
    assert entry["annotations"][ORIGINAL] == info.digest
    view = json.loads(read_blob(store, entry["digest"]))
    assert view["config"] == {**_descriptor(info.config), "mediaType": OCI_CONFIG}
    assert [layer["digest"] for layer in view["layers"]] == [b.digest for b in info.layers]
    assert {layer["mediaType"] for layer in view["layers"]} == {OCI_LAYER_GZIP}
    assert read_blob(store, info.digest) == info.raw  # the original is kept byte for byte

    seen = _skopeo_inspect(f"oci:{store}:{ref}")
    assert seen["Layers"] == [b.digest for b in info.layers]
    stat = _run("umoci", "stat", "--image", f"{store}:{ref}").stdout
    assert all(b.digest in stat for b in info.layers)
    bundle = tmp_path / "bundle"
    _run("umoci", "unpack", "--image", f"{store}:{ref}", str(bundle))
    assert (bundle / "rootfs" / "docker0" / "seed").read_text() == "400\n"

    # xfer itself still sees (and lists, inspects) the original.
    listed = xfer("images", "--json", store=store)
    assert listed.code == 0 and info.digest in listed.out
    raw = xfer("inspect", f"store:{ref}", "--raw", store=store)
    assert raw.out.encode() == info.raw


def test_push_of_a_docker_image_from_the_store_keeps_the_registrys_digest(
    registry: Registry, empty_registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["docker"]
    ref = f"{registry.host}/{info.ref}"
    assert xfer("pull", ref, store=store).code == 0
    target = f"{empty_registry.host}/copied/docker:1"
    pushed = xfer("push", ref, target, store=store)
    assert pushed.code == 0, pushed.err
    assert inspect_raw(target) == info.raw


def test_gc_keeps_both_the_view_and_the_original_and_rm_frees_both(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["docker"]
    ref = f"{registry.host}/{info.ref}"
    assert xfer("pull", ref, store=store).code == 0
    view = _entry(store, ref)["digest"]
    assert xfer("gc", store=store).code == 0
    kept = stored_blobs(store)
    assert view in kept and info.digest in kept
    verified = xfer("verify", store=store)
    assert verified.code == 0, verified.out + verified.err
    assert xfer("rm", ref, store=store).code == 0
    assert xfer("gc", store=store).code == 0
    assert stored_blobs(store) == {}


def test_save_as_oci_names_the_view_and_load_restores_the_original(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["docker"]
    ref = f"{registry.host}/{info.ref}"
    assert xfer("pull", ref, store=store).code == 0
    archive = tmp_path / "oci.tar"
    assert xfer("save", "--format", "oci", ref, "-o", archive, store=store).code == 0
    with tarfile.open(archive) as tar:
        handle = tar.extractfile("index.json")
        assert handle is not None
        (entry,) = json.loads(handle.read())["manifests"]
    assert entry["mediaType"] == OCI_MANIFEST and entry["annotations"][ORIGINAL] == info.digest
    assert _skopeo_inspect(f"oci-archive:{archive}:{ref}")["Layers"] == [
        b.digest for b in info.layers
    ]

    again = tmp_path / "again"
    loaded = xfer("load", archive, store=again)
    assert loaded.code == 0, loaded.err
    assert xfer("inspect", f"store:{ref}", "--raw", store=again).out.encode() == info.raw


def test_a_docker_manifest_list_is_viewed_as_an_oci_index_of_views(
    empty_registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["docker"]
    assert info.config is not None
    # A Docker manifest list over the Docker image, pushed as any client would.
    with RegistryPusher(empty_registry.url) as pusher:
        for blob in (info.config, *info.layers):
            pusher.push_bytes("test/list", read_blob(images.layout, blob.digest), blob.media_type)
        pusher.put_manifest("test/list", info.digest, info.raw, DOCKER_MANIFEST)
        child = {**_descriptor_of(info), "platform": {"architecture": "amd64", "os": "linux"}}
        raw = canonical_json(
            {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [child]}
        )
        pusher.put_manifest("test/list", "1", raw, DOCKER_MANIFEST_LIST)
    ref = f"{empty_registry.host}/test/list:1"
    pulled = xfer("pull", "--all-platforms", ref, store=store)
    assert pulled.code == 0, pulled.err
    entry = _entry(store, ref)
    assert entry["annotations"][ORIGINAL] == sha256(raw)
    index = json.loads(read_blob(store, entry["digest"]))
    (view_child,) = index["manifests"]
    assert view_child["platform"] == {"architecture": "amd64", "os": "linux"}
    view = json.loads(read_blob(store, view_child["digest"]))
    assert view["mediaType"] == OCI_MANIFEST and view["config"]["mediaType"] == OCI_CONFIG

    seen = _skopeo_inspect(f"oci:{store}:{ref}")
    assert seen["Layers"] == [b.digest for b in info.layers]
    target = f"{empty_registry.host}/copied/list:1"
    assert xfer("push", ref, target, store=store).code == 0
    assert inspect_raw(target) == raw


def _descriptor(blob: Any) -> dict[str, Any]:
    return {"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}


def _descriptor_of(info: Any) -> dict[str, Any]:
    return {"mediaType": info.media_type, "digest": info.digest, "size": info.size}


def test_the_original_config_type_is_dockers(images: BuiltImages) -> None:
    """The fixture really is Docker-typed throughout (else the tests above prove nothing)."""
    info = images.images["docker"]
    doc = json.loads(info.raw)
    assert doc["config"]["mediaType"] == DOCKER_CONFIG
    assert all(layer["mediaType"].startswith("application/vnd.docker.") for layer in doc["layers"])


def test_an_original_annotation_that_the_view_does_not_match_is_not_followed(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    """A layout written by another tool may name any blob as the original: xfer follows the
    annotation only to a manifest whose view is exactly the entry, else one name would be one
    image to skopeo and another to xfer."""
    info, other = images.images["docker"], images.images["small"]
    ref = f"{registry.host}/{info.ref}"
    assert xfer("pull", ref, store=store).code == 0
    # A Docker manifest of another image, stored, and named as the original of this entry.
    doc = json.loads(other.raw)
    doc["mediaType"] = DOCKER_MANIFEST
    liar = canonical_json(doc)
    blob = store / "blobs" / "sha256" / sha256(liar).removeprefix("sha256:")
    blob.write_bytes(liar)
    index_path = store / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"][0]["annotations"][ORIGINAL] = sha256(liar)
    index_path.write_text(json.dumps(index))

    shown = xfer("inspect", f"store:{ref}", "--raw", store=store)
    assert shown.code == 0, shown.err
    assert json.loads(shown.out) == json.loads(read_blob(store, _entry(store, ref)["digest"]))
