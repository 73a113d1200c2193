"""An archive whose index holds one platform's blobs only (issue item 17).

``ctr images export`` writes the whole index but only the exported platform's manifests and
blobs; so does Docker 25's ``docker save`` of a multi-platform image. docker, podman and ctr
load it. xfer loads what is there under the index's own digest, names the absent platforms,
and the store records them: verify does not call them damage, and a later copy of the whole
index fails naming them (one platform of it still copies).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from fixtures.images import BuiltImages, ImageInfo, inspect_raw
from fixtures.registry import Registry
from tests.helpers import index_refs, stored_blobs, xfer

REF = "example.com/test/multi:1"


def one_platform_archive(images: BuiltImages, dest: Path, keep: str = "linux/amd64") -> ImageInfo:
    """An OCI archive of the ``multi`` index with only ``keep``'s manifest and blobs, named as
    ``ctr images export`` names it (containerd's name annotation, the tag as ref.name)."""
    info = images.images["multi"]
    child = info.child(keep)
    members = {info.digest: info.raw, child.digest: child.raw}
    for blob in child.blobs:
        members[blob.digest] = (images.layout / "blobs/sha256" / blob.digest[7:]).read_bytes()
    entry = {
        "mediaType": info.media_type,
        "digest": info.digest,
        "size": info.size,
        "annotations": {"io.containerd.image.name": REF, "org.opencontainers.image.ref.name": "1"},
    }
    index = {"schemaVersion": 2, "manifests": [entry]}
    with tarfile.open(dest, "w") as tar:
        for name, data in [
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", json.dumps(index).encode()),
            *((f"blobs/sha256/{d[7:]}", data) for d, data in members.items()),
        ]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return info


def test_load_of_a_one_platform_export_keeps_the_index_and_names_the_absent_platform(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "p.tar"
    info = one_platform_archive(images, archive)
    arm64 = info.child("linux/arm64")
    loaded = xfer("load", archive, store=store)
    assert loaded.code == 0, loaded.err
    assert loaded.out.split() == [REF]
    assert f"absent: linux/arm64 ({arm64.digest})" in loaded.err
    assert index_refs(store) == {REF: info.digest}  # the index's own digest is kept
    blobs = stored_blobs(store)
    assert info.child("linux/amd64").digest in blobs and arm64.digest not in blobs
    assert all(b.digest in blobs for b in info.child("linux/amd64").blobs)
    verified = xfer("verify", store=store)
    assert verified.code == 0, verified.out + verified.err  # absent by design, not damage
    unpacked = xfer("unpack", "--platform", "linux/amd64", REF, tmp_path / "rootfs", store=store)
    assert unpacked.code == 0, unpacked.err


def test_a_copy_of_the_partial_index_fails_naming_the_platform_and_one_platform_copies(
    images: BuiltImages, empty_registry: Registry, store: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "p.tar"
    info = one_platform_archive(images, archive)
    assert xfer("load", archive, store=store).code == 0
    target = f"{empty_registry.host}/partial/multi:1"
    pushed = xfer("push", REF, target, store=store)
    assert pushed.code == 1
    assert "lacks linux/arm64" in pushed.err and info.child("linux/arm64").digest in pushed.err
    assert not empty_registry.requests() or all(
        r.method != "PUT" or "/manifests/" not in r.path for r in empty_registry.requests()
    )  # nothing was tagged at the target
    amd64 = info.child("linux/amd64")
    copied = xfer("copy", "--platform", "linux/amd64", f"store:{REF}", target, store=store)
    assert copied.code == 0, copied.err
    assert inspect_raw(target) == amd64.raw
    pushed = xfer("push", "--platform", "linux/amd64", REF, target + "-pushed", store=store)
    assert pushed.code == 0, pushed.err
    assert inspect_raw(target + "-pushed") == amd64.raw
    wrong = xfer("copy", "--platform", "linux/arm64", f"store:{REF}", target, store=store)
    assert wrong.code == 1 and "lacks the linux/arm64 image" in wrong.err


def test_a_later_full_pull_completes_the_image(
    images: BuiltImages, registry: Registry, store: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "p.tar"
    info = one_platform_archive(images, archive)
    assert xfer("load", archive, store=store).code == 0
    full = xfer("pull", "--all-platforms", f"{registry.host}/{info.ref}", store=store)
    assert full.code == 0, full.err
    assert info.child("linux/arm64").digest in stored_blobs(store)
    target = f"{registry.host}/partial-completed/multi:1"
    pushed = xfer("push", REF, target, store=store)  # the loaded name, now whole
    assert pushed.code == 0, pushed.err
    assert inspect_raw(target) == info.raw
