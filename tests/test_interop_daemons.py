"""Real docker, podman and containerd take what xfer saves, and xfer loads what they save.

The engines run with private roots and sockets (``fixtures/daemons.py``): containerd, dockerd
on top of it, and podman's command line. Each direction checks the digests each tool keeps:
docker (20.10, its own image store) keeps the config digest as the image ID and no manifest
digest from an archive; containerd keeps the manifest (or index) digest as the image's target;
podman keeps the config digest as its ID and, loading an OCI archive, the manifest digest.
Images come from the session's registry (``docker pull``, ``podman pull``, ``ctr pull``), so
what the engines save owes nothing to xfer.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import transfer
from fixtures.daemons import Containerd, Dockerd, Podman
from fixtures.images import BuiltImages, ImageInfo
from fixtures.registry import Registry
from tests.helpers import index_refs, xfer
from transfer.manifest import Platform

HOST = "example.com/test"  # names in the store and the engines; nothing is fetched from it


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    with Containerd() as daemon:
        yield daemon


@pytest.fixture(scope="session")
def dockerd(containerd: Containerd) -> Iterator[Dockerd]:
    with Dockerd(containerd) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    with Podman() as cli:
        yield cli


def _fill_store(store: Path, images: BuiltImages, *names: str) -> dict[str, str]:
    refs = {}
    for name in names:
        refs[name] = ref = f"{HOST}/{name}:{name}-x"
        transfer.api.copy_sync(
            f"oci:{images.layout}:{name}", f"store:{ref}", transfer.Settings(store=store)
        )
    return refs


def _here(info: ImageInfo) -> ImageInfo:
    """The image of ``info`` for this machine (itself, unless it is an index)."""
    if not info.is_index:
        return info
    here = Platform.current()
    for child in info.children:
        if child.platform and here.matches(Platform.parse(child.platform)):
            return child
    pytest.skip(f"the multi-platform fixture has no image for {here}")


def _config(info: ImageInfo) -> str:
    assert info.config is not None
    return info.config.digest


def _stored(store: Path, ref: str) -> dict[str, Any]:
    """What the store holds for ``ref``: the manifest digest xfer reads, and its config."""
    shown = xfer("inspect", f"store:{ref}", "--raw", store=store)
    assert shown.code == 0, shown.err
    doc = json.loads(shown.out)
    digest = "sha256:" + hashlib.sha256(shown.out.encode()).hexdigest()
    return {"digest": digest, "manifest": doc}


def _archive_index(archive: Path) -> list[dict[str, Any]]:
    with tarfile.open(archive) as tar:
        handle = tar.extractfile("index.json")
        assert handle is not None
        manifests: list[dict[str, Any]] = json.loads(handle.read())["manifests"]
        return manifests


# ---- xfer save → the engines -------------------------------------------------------------------


def test_docker_load_takes_an_xfer_save_and_keeps_each_config_digest_as_image_id(
    dockerd: Dockerd, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    refs = _fill_store(store, images, "small", "docker", "multi")
    archive = tmp_path / "images.tar"
    assert xfer("save", *refs.values(), "-o", archive, store=store).code == 0
    out = dockerd.docker("load", "-i", str(archive))
    for name, ref in refs.items():
        assert f"Loaded image: {ref}" in out
        seen = dockerd.inspect(ref)
        assert seen["Id"] == _config(_here(images.images[name]))
        assert ref in seen["RepoTags"]


def test_ctr_import_takes_an_xfer_save_and_keeps_each_manifest_digest(
    containerd: Containerd, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    refs = _fill_store(store, images, "small", "docker", "multi")
    archive = tmp_path / "images.tar"
    assert xfer("save", "--all-platforms", *refs.values(), "-o", archive, store=store).code == 0
    containerd.ctr("images", "import", "--all-platforms", "--no-unpack", str(archive))
    for name, ref in refs.items():
        info = images.images[name]
        assert containerd.image_target(ref) == {"mediaType": info.media_type, "digest": info.digest}


@pytest.mark.parametrize("name", ["small", "docker"])
def test_podman_load_takes_an_xfer_save_and_keeps_manifest_and_config_digests(
    podman: Podman, images: BuiltImages, store: Path, tmp_path: Path, name: str
) -> None:
    ref = _fill_store(store, images, name)[name]
    archive = tmp_path / "image.tar"
    assert xfer("save", ref, "-o", archive, store=store).code == 0
    podman.podman("load", "-i", str(archive))
    seen = podman.inspect(ref)
    info = images.images[name]
    assert "sha256:" + seen["Id"] == _config(info)
    assert seen["Digest"] == info.digest


def test_podman_pulls_an_oci_archive_xfer_saved_of_a_docker_image(
    podman: Podman, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    ref = _fill_store(store, images, "docker")["docker"]
    archive = tmp_path / "oci.tar"
    assert xfer("save", "--format", "oci", ref, "-o", archive, store=store).code == 0
    config = _config(images.images["docker"]).removeprefix("sha256:")
    pulled = podman.podman("pull", f"oci-archive:{archive}")  # the archive's only image
    assert pulled.split()[-1] == config  # podman prints the image ID: the config digest
    podman.podman("pull", f"oci-archive:{archive}:{ref}")  # and by its name
    assert podman.inspect(ref)["Id"] == config


# ---- the engines' saves → xfer load ------------------------------------------------------------


def test_xfer_loads_docker_save_and_keeps_the_config_digest(
    dockerd: Dockerd,
    containerd: Containerd,
    registry: Registry,
    images: BuiltImages,
    store: Path,
    tmp_path: Path,
) -> None:
    info = images.images["docker"]
    ref = f"{registry.host}/{info.ref}"
    dockerd.docker("pull", ref)  # docker takes 127.0.0.0/8 registries over plain HTTP
    archive = tmp_path / "docker.tar"
    dockerd.docker("save", "-o", str(archive), ref)
    loaded = xfer("load", archive, store=store)
    assert loaded.code == 0, loaded.err
    stored = _stored(store, ref)
    assert stored["manifest"]["config"]["digest"] == _config(info)
    # docker's archive has no manifest: xfer writes the one containerd's importer writes.
    containerd.ctr("images", "import", "--no-unpack", str(archive))
    assert containerd.image_target(ref)["digest"] == stored["digest"]


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_xfer_loads_podman_save_and_keeps_the_digests_it_kept(
    podman: Podman,
    registry: Registry,
    images: BuiltImages,
    store: Path,
    tmp_path: Path,
    fmt: str,
) -> None:
    info = images.images["small"]
    ref = f"{registry.host}/{info.ref}"
    podman.podman("pull", "--tls-verify=false", ref)
    archive = tmp_path / "podman.tar"
    podman.podman("save", "--format", fmt, "-o", str(archive), ref)
    loaded = xfer("load", archive, store=store)
    assert loaded.code == 0, loaded.err
    stored = _stored(store, ref)
    assert stored["manifest"]["config"]["digest"] == _config(info)
    if fmt == "oci-archive":  # the manifest digest the archive names is the one stored
        (entry,) = _archive_index(archive)
        assert stored["digest"] == entry["digest"]


def test_xfer_loads_ctr_export_and_keeps_the_manifest_digest(
    containerd: Containerd, registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    ref = f"{registry.host}/{info.ref}"
    containerd.ctr("images", "pull", "--plain-http", ref)
    archive = tmp_path / "ctr.tar"
    containerd.ctr("images", "export", str(archive), ref)
    loaded = xfer("load", archive, store=store)
    assert loaded.code == 0, loaded.err
    assert _stored(store, ref)["digest"] == info.digest == containerd.image_target(ref)["digest"]


def test_xfer_loads_a_one_platform_ctr_export_of_an_index(
    containerd: Containerd, registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["multi"]
    ref = f"{registry.host}/{info.ref}"
    containerd.ctr("images", "pull", "--plain-http", "--platform", "linux/amd64", ref)
    archive = tmp_path / "ctr-multi.tar"
    containerd.ctr("images", "export", "--platform", "linux/amd64", str(archive), ref)
    loaded = xfer("load", archive, store=store)
    assert loaded.code == 0, loaded.err
    arm64 = info.child("linux/arm64")
    assert f"absent: linux/arm64 ({arm64.digest})" in loaded.err
    assert index_refs(store) == {ref: info.digest}
    assert xfer("verify", store=store).code == 0
