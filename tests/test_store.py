"""The store after a pull: rm keeps shared layers, gc frees the rest, verify finds corruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import transfer
from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import index_refs, stored_blobs, xfer
from transfer import durable
from transfer.digest import Digest
from transfer.endpoints import layout as layout_module
from transfer.endpoints.layout import Layout


def _pull(registry: Registry, store: Path, *names: str, images: BuiltImages) -> list[str]:
    refs = [f"{registry.host}/{images.images[n].ref}" for n in names]
    run = xfer("pull", *refs, store=store)
    assert run.code == 0, run.err
    return refs


def test_rm_keeps_layers_another_image_uses_and_gc_frees_the_rest(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    a, b = images.images["shared-a"], images.images["shared-b"]
    ref_a, ref_b = _pull(registry, store, "shared-a", "shared-b", images=images)

    removed = xfer("rm", ref_a, store=store)
    assert removed.code == 0 and ref_a in removed.out
    assert index_refs(store) == {ref_b: b.digest}
    assert {blob.digest for blob in a.blobs} <= set(stored_blobs(store))  # rm deletes nothing

    gc = xfer("gc", "--json", store=store)
    assert gc.code == 0, gc.err
    report = gc.json_lines()[-1]
    only_a = {blob.digest for blob in a.blobs} - {blob.digest for blob in b.blobs}
    assert report["blobs_removed"] == len(only_a) + 1  # a's own layers, config and manifest
    left = set(stored_blobs(store))
    assert left == {blob.digest for blob in b.blobs} | {b.digest}
    assert xfer("verify", store=store).code == 0
    # What is left is still a complete image: pulling b again fetches nothing.
    mark = registry.mark()
    assert xfer("pull", ref_b, store=store).code == 0
    assert registry.blob_gets(mark) == []


def test_rm_of_an_unknown_reference_exits_1(store: Path) -> None:
    run = xfer("rm", "example.com/none:1", store=store)
    assert run.code == 1
    assert "example.com/none:1" in run.err


def test_gc_removes_stale_partials_and_keeps_fresh_ones(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    _pull(registry, store, "small", images=images)
    partials = store / ".xfer" / "partials"
    stale, fresh = partials / ("sha256-" + "a" * 64), partials / ("sha256-" + "b" * 64)
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 50)
    old = time.time() - 3 * 24 * 3600
    os.utime(stale, (old, old))
    report = xfer("gc", "--json", store=store).json_lines()[-1]
    assert report["partials_removed"] == 1 and report["partial_bytes_freed"] == 100
    assert fresh.exists() and not stale.exists()
    report = xfer("gc", "--json", "--partials", store=store).json_lines()[-1]
    assert report["partials_removed"] == 1 and not fresh.exists()
    assert report["blobs_removed"] == 0


def test_verify_reports_a_flipped_bit_and_a_symlinked_blob(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    _pull(registry, store, "small", images=images)
    assert xfer("verify", store=store).code == 0

    layer = store / "blobs" / "sha256" / info.layers[0].digest.split(":")[1]
    data = bytearray(layer.read_bytes())
    data[5] ^= 0x01
    layer.write_bytes(bytes(data))
    config = store / "blobs" / "sha256" / info.config.digest.split(":")[1]  # type: ignore[union-attr]
    outside = tmp_path / "elsewhere"
    outside.write_bytes(config.read_bytes())
    config.unlink()
    config.symlink_to(outside)

    run = xfer("verify", "--json", store=store)
    assert run.code == 1
    problems = run.json_lines()[0]["problems"]
    assert any(info.layers[0].digest in p and "corrupt" in p for p in problems)
    assert any(config.name in p and "regular file" in p for p in problems)
    assert run.err.strip().startswith("xfer: error:")


def test_verify_reports_a_missing_blob(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    _pull(registry, store, "small", images=images)
    (store / "blobs" / "sha256" / info.layers[2].digest.split(":")[1]).unlink()
    run = xfer("verify", "--json", store=store)
    assert run.code == 1
    assert any(
        info.layers[2].digest in p and "missing" in p for p in run.json_lines()[0]["problems"]
    )


def test_a_corrupt_blob_in_the_store_is_fetched_again_by_the_next_pull(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    (ref,) = _pull(registry, store, "small", images=images)
    layer = store / "blobs" / "sha256" / info.layers[1].digest.split(":")[1]
    layer.write_bytes(layer.read_bytes()[:-10])  # truncated: the size no longer matches
    mark = registry.mark()
    assert xfer("pull", ref, store=store).code == 0
    assert [r.path.rsplit("/", 1)[-1] for r in registry.blob_gets(mark)] == [info.layers[1].digest]
    assert xfer("verify", store=store).code == 0


def test_index_json_stays_valid_json_listing_every_image(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    refs = _pull(registry, store, "small", "docker", "multi", images=images)
    index = json.loads((store / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert sorted(index_refs(store)) == sorted(refs)


def test_disk_full_mid_blob_fails_cleanly_and_leaves_a_consistent_store(
    registry: Registry, images: BuiltImages, tiny_filesystem: Path
) -> None:
    store = tiny_filesystem / "store"
    small, large = images.images["small"], images.images["large"]
    _pull(registry, store, "small", images=images)
    run = xfer("pull", "--retries", "0", f"{registry.host}/{large.ref}", store=store)
    assert run.code == 1
    error = run.err.strip().splitlines()[-1]
    assert error.startswith("xfer: error:") and "space" in error.lower()
    assert "Traceback" not in run.err
    assert index_refs(store) == {f"{registry.host}/{small.ref}": small.digest}
    assert xfer("verify", store=store).code == 0  # nothing torn, nothing unverified
    assert large.layers[0].digest not in stored_blobs(store)


def test_blob_renames_are_made_durable_once_before_the_index_points_at_them(
    registry: Registry, images: BuiltImages, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each blob's content is fsynced before its rename; the renames themselves are synced with
    one fsync of blobs/sha256 before index.json is written, not one per blob."""
    events: list[tuple[str, Path]] = []
    real_sync, real_write = durable.fsync_dir, durable.atomic_write

    def fsync_dir(path: Path) -> None:
        events.append(("sync", Path(path)))
        real_sync(path)

    def atomic_write(path: Path, data: bytes, **kwargs: Any) -> None:
        events.append(("write", path) if kwargs.get("sync_dir", True) else ("blob", path))
        real_write(path, data, **kwargs)

    monkeypatch.setattr(layout_module, "fsync_dir", fsync_dir)
    monkeypatch.setattr(layout_module, "atomic_write", atomic_write)
    info = images.images["shared-a"]
    transfer.pull_sync(f"{registry.host}/{info.ref}", transfer.Settings(store=store))

    blobs_dir = store / "blobs" / "sha256"
    index_at = events.index(("write", store / "index.json"))
    blob_writes = [i for i, (kind, _) in enumerate(events) if kind == "blob"]
    assert len(blob_writes) >= 2  # the config and the manifest at least
    assert events[index_at - 1] == ("sync", blobs_dir)
    assert max(blob_writes) < index_at - 1
    assert events.count(("sync", blobs_dir)) == 1
    assert set(stored_blobs(store)) >= {blob.digest for blob in info.blobs}


def test_blob_locks_exclude_per_digest_and_die_with_their_holder(tmp_path: Path) -> None:
    """One writer per blob, within a process (two tasks) and across processes, released when
    the holder closes it or is killed; other blobs are never held up."""
    layout = Layout(tmp_path / "store")
    layout.ensure()
    one, other = Digest.of(b"one"), Digest.of(b"other")
    first = layout._blob_lock(one)
    assert first.acquire(blocking=False)
    assert not layout._blob_lock(one).acquire(blocking=False)  # the same blob: held
    second = layout._blob_lock(other)
    assert second.acquire(blocking=False)  # another blob: free
    first.release()
    second.release()

    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path / "store"), str(one)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not layout._blob_lock(one).acquire(blocking=False)
        assert layout._blob_lock(other).acquire(blocking=False)
    finally:
        holder.kill()
        holder.wait()
    assert layout._blob_lock(one).acquire(blocking=False)  # the kernel released it
    assert not list((tmp_path / "store" / ".xfer" / "locks").glob("sha256-*"))  # no file each


_HOLD_LOCK = """
import sys, time
from transfer.digest import Digest
from transfer.endpoints.layout import Layout
lock = Layout(sys.argv[1])._blob_lock(Digest.parse(sys.argv[2]))
assert lock.acquire(blocking=False)
print("held", flush=True)
time.sleep(60)
"""


def test_a_damaged_blob_read_from_the_store_fails_at_once_naming_it(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    """A bad byte in a file here is not a flaky network: the copy out of the store stops at the
    first mismatch (no retries) and says which blob is damaged and where it was read."""
    (ref,) = _pull(registry, store, "small", images=images)
    victim = images.images["small"].layers[0]
    path = store / "blobs" / "sha256" / victim.digest.removeprefix("sha256:")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))

    run = xfer("copy", "--json", f"store:{ref}", f"oci:{tmp_path / 'out'}:x", store=store)
    assert run.code == 1
    assert not [e for e in run.json_lines() if e.get("event") == "retry"]
    error = run.err.strip().splitlines()[-1]
    assert victim.digest in error and f"its copy in {store} is damaged" in error


def test_gc_keeps_what_a_manifest_uses_when_its_bytes_are_also_another_images_layer(
    tmp_path: Path,
) -> None:
    """One digest may be reached as a layer of one image and as a manifest listed by an index
    (a layer that is byte for byte another image's manifest). Reached as a layer first, it was
    never read as the manifest, so gc deleted the config and layer that manifest uses."""
    from transfer import maintenance
    from transfer.manifest import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Descriptor, Manifest

    layout = Layout(tmp_path / "store")
    gzip_layer = "application/vnd.oci.image.layer.v1.tar+gzip"

    def put(media_type: str, data: bytes) -> Descriptor:
        desc = Descriptor(media_type, Digest.of(data), len(data))
        layout.put_bytes(desc, data)
        return desc

    def manifest(doc: dict[str, Any]) -> Manifest:
        raw = json.dumps({"schemaVersion": 2, **doc}).encode()
        put(doc["mediaType"], raw)
        return Manifest.from_bytes(raw)

    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    inner = manifest(
        {
            "mediaType": OCI_MANIFEST,
            "config": put(OCI_CONFIG, config).to_json(),
            "layers": [put(gzip_layer, b"the inner image's layer").to_json()],
        }
    )
    index = manifest({"mediaType": OCI_INDEX, "manifests": [inner.descriptor().to_json()]})
    twin = Descriptor(gzip_layer, inner.digest, len(inner.raw))  # the same bytes, as a layer
    other = manifest(
        {
            "mediaType": OCI_MANIFEST,
            "config": put(OCI_CONFIG, config.replace(b"amd64", b"arm64")).to_json(),
            "layers": [twin.to_json()],
        }
    )
    layout.set_reference("example.com/index:1", index)
    layout.set_reference("example.com/other:1", other)  # walked first: the last entry
    used = set(inner.image().blobs())
    assert used <= set(maintenance.reachable(layout).blobs.values())
    maintenance.collect(layout)
    assert all(layout.has_blob(desc) for desc in used)
