"""`xfer pull` end to end against the real registry, read back by skopeo and umoci."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fixtures.faultproxy import FaultProxy, FlipByte
from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import index_refs, stored_blobs, xfer


def _ref(registry: Registry, repo: str) -> str:
    return f"{registry.host}/{repo}"


def test_pull_writes_an_oci_layout_that_skopeo_and_umoci_read(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    ref = _ref(registry, info.ref)
    run = xfer("pull", ref, store=store)
    assert run.code == 0, run.err
    assert run.out.strip() == info.digest
    assert index_refs(store) == {ref: info.digest}
    assert json.loads((store / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}

    blobs = stored_blobs(store)  # also proves every blob's bytes match its name
    assert set(blobs) == {b.digest for b in info.blobs} | {info.digest}

    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{store}:{ref}"], capture_output=True, text=True, check=True
    )
    assert json.loads(inspected.stdout)["Digest"] == info.digest
    assert [layer for layer in json.loads(inspected.stdout)["Layers"]] == [
        layer.digest for layer in info.layers
    ]

    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{store}:{ref}", str(bundle)],
        capture_output=True,
        check=True,
    )
    assert (bundle / "rootfs").is_dir() and any((bundle / "rootfs").iterdir())


def test_nothing_but_verified_blobs_lives_under_blobs(registry: Registry, store: Path) -> None:
    assert xfer("pull", _ref(registry, "test/large:1"), store=store).code == 0
    assert not list((store / ".xfer" / "partials").iterdir())
    assert all(size > 0 for size in stored_blobs(store).values())


def test_second_image_fetches_only_the_layers_it_does_not_share(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    a, b = images.images["shared-a"], images.images["shared-b"]
    assert xfer("pull", _ref(registry, a.ref), store=store).code == 0

    mark = registry.mark()
    run = xfer("pull", "--json", _ref(registry, b.ref), store=store)
    assert run.code == 0, run.err
    fetched = {r.path.rsplit("/", 1)[-1] for r in registry.blob_gets(mark)}
    own = {blob.digest for blob in b.blobs} - {blob.digest for blob in a.blobs}
    assert fetched == own
    summary = run.json_lines()[-1]
    assert summary["event"] == "done"
    assert summary["blobs_transferred"] == len(own)
    assert summary["blobs_skipped"] == len(b.blobs) - len(own)


def test_pulling_an_image_already_present_transfers_no_blob_bytes(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    ref = _ref(registry, images.images["small"].ref)
    assert xfer("pull", ref, store=store).code == 0
    mark = registry.mark()
    run = xfer("pull", "--json", ref, store=store)
    assert run.code == 0
    assert registry.blob_gets(mark) == []
    summary = run.json_lines()[-1]
    assert summary["bytes_transferred"] == 0
    assert summary["blobs_transferred"] == 0
    assert set(summary) >= {"digest", "blobs_skipped", "seconds"}


def test_platform_selects_the_arm64_image_of_an_index(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["multi"]
    arm = info.child("linux/arm64")
    ref = _ref(registry, info.ref)
    run = xfer("pull", "--platform", "linux/arm64", ref, store=store)
    assert run.code == 0, run.err
    assert run.out.strip() == arm.digest
    assert index_refs(store) == {ref: arm.digest}
    assert set(stored_blobs(store)) == {b.digest for b in arm.blobs} | {arm.digest}
    config = xfer("inspect", "--config", f"store:{ref}", store=store)
    assert json.loads(config.out)["architecture"] == "arm64"


def test_all_platforms_stores_the_index_and_every_image(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["multi"]
    ref = _ref(registry, info.ref)
    assert xfer("pull", "--all-platforms", ref, store=store).code == 0
    assert index_refs(store) == {ref: info.digest}
    assert set(stored_blobs(store)) == (
        {b.digest for b in info.blobs} | {c.digest for c in info.children} | {info.digest}
    )


def test_platform_missing_from_the_index_lists_what_is_offered(
    registry: Registry, store: Path
) -> None:
    run = xfer("pull", "--platform", "linux/s390x", _ref(registry, "test/multi:1"), store=store)
    assert run.code == 1
    assert "linux/amd64" in run.err and "linux/arm64" in run.err
    assert len(run.err.strip().splitlines()) == 1


def test_pull_by_digest_is_verified_and_stored_under_the_digest_reference(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    ref = f"{registry.host}/{info.repo}@{info.digest}"
    run = xfer("pull", ref, store=store)
    assert run.code == 0, run.err
    assert index_refs(store) == {ref: info.digest}


def test_pull_by_an_unknown_digest_fails_naming_it(registry: Registry, store: Path) -> None:
    missing = "sha256:" + "0" * 64
    run = xfer("pull", f"{registry.host}/test/small@{missing}", store=store)
    assert run.code == 1
    assert missing in run.err


def test_docker_schema2_image_is_kept_byte_for_byte(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["docker"]
    ref = _ref(registry, info.ref)
    assert xfer("pull", ref, store=store).code == 0
    index = json.loads((store / "index.json").read_text())
    # index.json names its OCI view (for OCI-only readers, tests/test_ociview.py) and the
    # original, which is what xfer reads.
    assert index["manifests"][0]["annotations"]["dev.xfer.original.digest"] == info.digest
    assert (store / "blobs" / "sha256" / info.digest.removeprefix("sha256:")).read_bytes() == (
        info.raw
    )
    raw = xfer("inspect", "--raw", f"store:{ref}", store=store)
    assert raw.out.encode() == info.raw


def test_tampered_blob_fails_naming_its_digest_and_stores_nothing_for_it(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    victim = info.layers[1]
    with FaultProxy(registry.url) as proxy:
        proxy.add(FlipByte(10, match=victim.digest, times=None))
        run = xfer("pull", "--retries", "1", f"{proxy.host}/{info.ref}", store=store)
    assert run.code == 1
    assert victim.digest in run.err
    error = run.err.strip().splitlines()[-1]
    assert error.startswith("xfer: error:") and "expected" in error and "got" in error
    assert victim.digest in error
    assert sum(line.startswith("xfer: error") for line in run.err.splitlines()) == 1
    assert victim.digest not in stored_blobs(store)
    assert not (store / "index.json").exists() or index_refs(store) == {}
    partial = store / ".xfer" / "partials" / victim.digest.replace(":", "-")
    assert not partial.exists() or partial.stat().st_size == 0


@pytest.mark.parametrize(
    ("reference", "needle"),
    [
        ("bench/Case:1", "lower-case"),
        ("a:b:c", "a:b:c"),
        ("localhost:5000/app:" + "t" * 129, "tag"),
        ("localhost:5000/app@sha256:../x", "digest"),
        ("", "reference"),
    ],
    ids=["upper-case-repository", "two-colons", "tag-over-128", "path-traversal-digest", "empty"],
)
def test_bad_reference_exits_2_with_one_line(reference: str, needle: str, store: Path) -> None:
    run = xfer("pull", reference, store=store)
    assert run.code == 2
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert needle in lines[0]
    assert "Traceback" not in run.err


def test_unknown_image_exits_1_naming_the_reference_and_the_registry_answer(
    registry: Registry, store: Path
) -> None:
    ref = _ref(registry, "test/nothing-here:1")
    run = xfer("pull", ref, store=store)
    assert run.code == 1
    assert ref in run.err
    assert "MANIFEST_UNKNOWN" in run.err or "NAME_UNKNOWN" in run.err
    assert "404" in run.err


def test_unreachable_registry_exits_1_naming_the_host(store: Path) -> None:
    run = xfer("pull", "127.0.0.1:9/app:1", "--retries", "0", store=store)
    assert run.code == 1
    assert "127.0.0.1:9" in run.err
    assert len(run.err.strip().splitlines()) == 1


def test_quiet_prints_only_the_digest_and_json_ends_with_the_summary(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    quiet = xfer("pull", "-q", _ref(registry, info.ref), store=store)
    assert quiet.out.splitlines() == [info.digest]
    assert quiet.err == ""
    events = xfer("pull", "--json", _ref(registry, info.ref), store=store).json_lines()
    assert events[-1]["event"] == "done"
    assert events[-1]["digest"] == info.digest
    assert {"bytes_transferred", "blobs_transferred", "blobs_skipped", "seconds"} <= set(events[-1])


def test_without_a_terminal_each_blob_gets_a_line_on_stderr(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    run = xfer("pull", _ref(registry, info.ref), store=store)
    lines = run.err.strip().splitlines()
    assert len(lines) == len(info.blobs)
    assert all("fetched" in line for line in lines)


def test_several_references_in_one_pull(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    refs = [_ref(registry, images.images[n].ref) for n in ("small", "docker")]
    run = xfer("pull", "--json", *refs, store=store)
    assert run.code == 0, run.err
    dones = [e for e in run.json_lines() if e["event"] == "done"]
    assert len(dones) == 3  # one per image, then the total
    assert set(index_refs(store)) == set(refs)


def test_store_from_environment_variable(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    store = tmp_path / "env-store"
    run = xfer("pull", _ref(registry, images.images["small"].ref), env={"XFER_STORE": str(store)})
    assert run.code == 0, run.err
    assert (store / "index.json").is_file()


def test_images_lists_references_digests_and_sizes(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    ref = _ref(registry, info.ref)
    assert xfer("pull", ref, store=store).code == 0
    listed = xfer("images", "--json", store=store).json_lines()
    assert listed == [
        {
            "reference": ref,
            "digest": info.digest,
            "media_type": info.media_type,
            "size": info.size + sum(b.size for b in info.blobs),
        }
    ]
    table = xfer("images", store=store).out
    assert ref in table and info.digest[:19] in table


def test_inspect_a_registry_image_raw_and_config(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    ref = _ref(registry, info.ref)
    raw = xfer("inspect", "--raw", ref, store=store)
    assert raw.code == 0 and raw.out.encode() == info.raw
    summary = json.loads(xfer("inspect", ref, store=store).out)
    assert summary["digest"] == info.digest
    assert [layer["digest"] for layer in summary["layers"]] == [b.digest for b in info.layers]
    assert summary["platform"] == "linux/amd64"
    config = json.loads(xfer("inspect", "--config", ref, store=store).out)
    assert config["rootfs"]["diff_ids"] == list(info.diff_ids)


def test_inspect_of_an_image_missing_from_the_store_fails_cleanly(store: Path) -> None:
    run = xfer("inspect", "store:example.com/nothing:1", store=store)
    assert run.code == 1
    assert "example.com/nothing:1" in run.err


def test_tags_lists_every_tag(registry: Registry) -> None:
    run = xfer("tags", f"{registry.host}/test/small")
    assert run.code == 0, run.err
    assert run.out.split() == ["1"]


def test_python_dash_m_and_console_script_are_the_same_program() -> None:
    import shutil
    import sys

    script = shutil.which("xfer", path=str(Path(sys.executable).parent))
    assert script is not None
    version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == xfer("--version").out.strip()


@pytest.mark.parametrize(("jobs", "at_once"), [("1", 1), ("2", 4)])
def test_small_blobs_go_four_times_jobs_at_once(
    registry: Registry, images: BuiltImages, tmp_path: Path, jobs: str, at_once: int
) -> None:
    """A small blob costs a round trip, not bandwidth: -j 2 fetches small's four blobs (config
    and three layers) all at once; -j 1 still means one at a time."""
    info = images.images["small"]
    with FaultProxy(registry.url, latency=0.3) as proxy:
        run = xfer("pull", "-j", jobs, f"{proxy.host}/{info.ref}", store=tmp_path / jobs)
        gets = proxy.requests("GET", "/blobs/")
    assert run.code == 0, run.err
    assert len(gets) == 4

    def overlapping(at: float) -> int:
        return sum(g.started <= at < (g.finished or at) for g in gets)

    assert max(overlapping(g.started) for g in gets) == at_once
