"""Endpoints as transports: every address kind opens a Source (and a Destination) the same way,
so inspect, copy and save read any of them."""

from __future__ import annotations

from pathlib import Path

import pytest

import transfer
from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import xfer
from transfer.digest import Digest
from transfer.errors import UsageError


def test_inspect_reads_every_kind_of_address_through_its_source(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    info = images.images["small"]
    settings = transfer.Settings(store=tmp_path / "store", registries=transfer.RegistryConfig())
    transfer.pull_sync(f"{registry.host}/{info.ref}", settings)
    oci_tar, docker_tar = tmp_path / "small.tar", tmp_path / "small-docker.tar"
    transfer.copy_sync(f"oci:{images.layout}:small", f"oci-archive:{oci_tar}", settings)
    transfer.save_sync([f"{registry.host}/{info.ref}"], docker_tar, settings, format="docker")
    addresses = [
        f"{registry.host}/{info.ref}",
        f"docker://{registry.host}/{info.ref}",
        f"store:{registry.host}/{info.ref}",
        f"oci:{images.layout}:small",
        f"oci-archive:{oci_tar}",
    ]
    for address in addresses:
        manifest, config = transfer.inspect_sync(address, settings)
        assert str(manifest.digest) == info.digest, address
        assert config is not None and Digest.of(config) == manifest.image().config.digest
    # docker save's form: a manifest xfer makes from its manifest.json, the same config.
    original = config
    manifest, config = transfer.inspect_sync(f"docker-archive:{docker_tar}", settings)
    assert config == original and manifest.image().config.digest == Digest.of(config)


def test_a_failed_copy_into_an_archive_leaves_no_file(images: BuiltImages, tmp_path: Path) -> None:
    target = tmp_path / "out.tar"
    settings = transfer.Settings(store=tmp_path / "store", registries=transfer.RegistryConfig())
    with pytest.raises(transfer.TransferError):
        transfer.copy_sync(f"oci:{images.layout}:absent", f"oci-archive:{target}", settings)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError):
        transfer.copy_sync(f"oci:{images.layout}:small", f"docker-archive:{target}:@1", settings)
    assert not target.exists()


def test_unpack_reads_an_archive_and_a_registry_without_the_store(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    from tests.test_unpack import tree

    info = images.images["whiteouts"]  # several layers, whiteouts and opaque directories
    ref = f"{registry.host}/{info.ref}"
    assert xfer("pull", ref, store=store).code == 0
    archive = tmp_path / "w.tar"
    assert xfer("save", "--format", "oci", ref, "-o", archive, store=store).code == 0
    empty = tmp_path / "no-store"
    wanted = {
        "store": (f"store:{ref}", store),
        "oci-archive": (f"oci-archive:{archive}", empty),
        "registry": (f"docker://{ref}", empty),
    }
    for kind, (address, used) in wanted.items():
        run = xfer("unpack", address, tmp_path / f"rootfs-{kind}", store=used)
        assert run.code == 0, run.err
        assert run.out.strip() == info.digest
    assert not empty.exists()  # nothing was staged in a store
    assert tree(tmp_path / "rootfs-store")  # a real tree, not two empty ones
    assert tree(tmp_path / "rootfs-oci-archive") == tree(tmp_path / "rootfs-store")
    assert tree(tmp_path / "rootfs-registry") == tree(tmp_path / "rootfs-store")
