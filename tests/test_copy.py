"""`xfer copy` and `xfer push`: the same pipeline with a registry (or a layout) as destination."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fixtures.faultproxy import FaultProxy, FlipByte
from fixtures.images import BuiltImages, inspect_raw
from fixtures.registry import Registry
from tests.helpers import xfer


def _raw(ref: str) -> bytes:
    return inspect_raw(ref)


def test_copy_between_registries_keeps_the_index_digest_and_every_child(
    registry: Registry, empty_registry: Registry, images: BuiltImages
) -> None:
    info = images.images["multi"]
    target = f"{empty_registry.host}/mirror/multi:1"
    run = xfer("copy", f"{registry.host}/{info.ref}", target)
    assert run.code == 0, run.err
    assert run.out.strip() == info.digest
    assert _raw(target) == info.raw
    for child in info.children:
        assert _raw(f"{empty_registry.host}/mirror/multi@{child.digest}") == child.raw


def test_second_copy_moves_no_blob(
    registry: Registry, empty_registry: Registry, images: BuiltImages
) -> None:
    info = images.images["small"]
    source, target = f"{registry.host}/{info.ref}", f"{empty_registry.host}/again/small:1"
    assert xfer("copy", source, target).code == 0
    mark = registry.mark()
    summary = xfer("copy", "--json", source, target).json_lines()[-1]
    assert summary["blobs_transferred"] == 0
    assert summary["blobs_skipped"] == len(info.blobs)
    assert summary["bytes_transferred"] == 0
    assert registry.blob_gets(mark) == []


def test_copy_within_a_registry_mounts_instead_of_uploading(
    empty_registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    first = f"{empty_registry.host}/team-a/small:1"
    # Seed the registry through xfer itself (push from a store filled by copy from a layout).
    assert xfer("copy", f"oci:{images.layout}:small", first).code == 0
    mark = empty_registry.mark()
    run = xfer("copy", "--json", first, f"{empty_registry.host}/team-b/small:1")
    assert run.code == 0, run.err
    served = empty_registry.requests(mark)
    mounts = [r for r in served if r.method == "POST" and "mount=" in r.query]
    assert len(mounts) == len(info.blobs)
    assert not [r for r in served if r.method in ("PATCH", "PUT") and r.kind == "upload"]
    assert run.json_lines()[-1]["bytes_transferred"] == 0


def test_push_from_the_store_is_read_back_by_skopeo(
    registry: Registry, empty_registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["docker"]
    ref = f"{registry.host}/{info.ref}"
    assert xfer("pull", ref, store=store).code == 0
    target = f"{empty_registry.host}/pushed/docker:7"
    run = xfer("push", ref, target, store=store)
    assert run.code == 0, run.err
    assert _raw(target) == info.raw  # Docker schema 2 bytes, unchanged
    inspected = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{target}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(inspected.stdout)["Digest"] == info.digest


def test_copy_with_platform_narrows_an_index_to_one_image(
    registry: Registry, empty_registry: Registry, images: BuiltImages
) -> None:
    info = images.images["multi"]
    arm = info.child("linux/arm64")
    target = f"{empty_registry.host}/arm/multi:1"
    run = xfer("copy", "--platform", "linux/arm64", f"{registry.host}/{info.ref}", target)
    assert run.code == 0, run.err
    assert _raw(target) == arm.raw


def test_copy_to_an_oci_layout_that_skopeo_and_umoci_read(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    info = images.images["small"]
    layout = tmp_path / "layout"
    run = xfer("copy", f"docker://{registry.host}/{info.ref}", f"oci:{layout}:v1")
    assert run.code == 0, run.err
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:v1"], capture_output=True, text=True, check=True
    )
    assert json.loads(inspected.stdout)["Digest"] == info.digest
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{layout}:v1", str(tmp_path / "bundle")],
        capture_output=True,
        check=True,
    )


def test_copy_reads_a_layout_that_skopeo_wrote(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    info = images.images["shared-b"]
    layout = tmp_path / "by-skopeo"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--insecure-policy",
            "--src-tls-verify=false",
            f"docker://{registry.host}/{info.ref}",
            f"oci:{layout}:latest",
        ],
        capture_output=True,
        check=True,
    )
    target = f"{empty_registry.host}/from-skopeo/b:1"
    run = xfer("copy", f"oci:{layout}:latest", target)
    assert run.code == 0, run.err
    assert _raw(target) == info.raw


def test_a_corrupt_source_blob_never_reaches_the_target(
    registry: Registry, empty_registry: Registry, images: BuiltImages
) -> None:
    info = images.images["small"]
    victim = info.layers[0]
    target = f"{empty_registry.host}/guarded/small:1"
    with FaultProxy(registry.url) as proxy:
        proxy.add(FlipByte(100, match=victim.digest, times=None))
        run = xfer("copy", "--retries", "1", f"{proxy.host}/{info.ref}", target)
    assert run.code == 1
    assert victim.digest in run.err
    missing = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{target}"], capture_output=True
    )
    assert missing.returncode != 0  # no manifest was pushed
    check = xfer("copy", f"{registry.host}/{info.ref}", target)  # the honest copy still works
    assert check.code == 0


@pytest.mark.parametrize(
    ("endpoint", "needle"),
    [
        ("oci:", "directory"),
        ("oci-archive:", "oci-archive"),
        ("docker-archive:/tmp/x.tar:Bad/Name", "lower-case"),
        ("docker://Bad/Name:1", "lower-case"),
    ],
)
def test_bad_endpoints_are_usage_errors(endpoint: str, needle: str) -> None:
    run = xfer("copy", endpoint, "oci:/tmp/nowhere")
    assert run.code == 2
    assert needle in run.err
