"""Archives in volumes (``xfer save --max-size``): NAME.001.tar, NAME.002.tar, … each a whole tar
of whole blobs within the limit, the last with the index documents; readers take the set by
its name or by its first volume; a missing or cut volume is named; an interrupted export, rerun,
keeps the volumes it finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import anyio

from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import (
    ROOT,
    fill_store,
    index_refs,
    locked_by_another_process,
    stored_blobs,
    xfer,
    xfer_env,
)

VOLUMES = "dev.xfer.volumes"


def _volumes(base: Path) -> list[Path]:
    return sorted(base.parent.glob(base.stem + ".[0-9][0-9][0-9].tar"))


def _names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def _blob_members(path: Path) -> set[str]:
    return {n for n in _names(path) if n.startswith("blobs/sha256/") and len(n) == 77}


def _save_two(store: Path, images: BuiltImages, out: Path, *extra: str) -> dict[str, str]:
    refs = fill_store(store, images, "shared-a", "shared-b", "small")
    run = xfer("save", *refs.values(), "-o", out, *extra, store=store)
    assert run.code == 0, run.err
    return refs


def _save_in_volumes(
    store: Path, refs: dict[str, str], single: Path, base: Path, parts: int = 3
) -> int:
    """``refs`` saved again at ``base`` in volumes of about 1/``parts`` of ``single`` (their
    whole archive's size), so the set has several; the size limit it was given."""
    limit = max(single.stat().st_size // parts, 8192)
    run = xfer("save", *refs.values(), "-o", base, "--max-size", str(limit), store=store)
    assert run.code == 0, run.err
    return limit


def test_save_with_max_size_writes_volumes_of_whole_blobs_within_the_limit(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    single = tmp_path / "single.tar"
    refs = _save_two(store, images, single)
    whole = single.stat().st_size
    limit = max(whole // 3, 8192)
    base = tmp_path / "set.tar"
    run = xfer("save", *refs.values(), "-o", base, "--max-size", str(limit), store=store)
    assert run.code == 0, run.err

    volumes = _volumes(base)
    assert not base.exists()
    assert len(volumes) >= 3
    assert [v.name for v in volumes] == [f"set.{i:03d}.tar" for i in range(1, len(volumes) + 1)]
    for volume in volumes:
        assert volume.stat().st_size <= limit, volume
        names = _names(volume)  # each a valid tar on its own
        assert len(names) == len(set(names))
    for volume in volumes[:-1]:
        assert all(n.startswith("blobs/sha256/") and len(n) == 77 for n in _names(volume))
    last = _names(volumes[-1])
    assert {"oci-layout", "index.json", "manifest.json"} <= set(last)
    # Together they hold exactly the blobs of the single archive, each once.
    held = [n for v in volumes for n in _blob_members(v)]
    assert len(held) == len(set(held))
    assert set(held) == _blob_members(single)
    with tarfile.open(volumes[-1]) as tar:
        handle = tar.extractfile("index.json")
        assert handle is not None
        index = json.loads(handle.read())
    assert index["annotations"][VOLUMES] == str(len(volumes))
    assert index["manifests"] == json.loads(_document(single, "index.json"))["manifests"]


def _document(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


def test_a_blob_bigger_than_a_volume_is_named_before_anything_is_written(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    refs = fill_store(store, images, "large")
    big = max(images.images["large"].layers, key=lambda layer: layer.size)
    base = tmp_path / "set.tar"
    run = xfer("save", refs["large"], "-o", base, "--max-size", "1M", store=store)
    assert run.code == 1
    assert big.digest in run.err
    assert "--max-size" in run.err
    assert list(tmp_path.glob("set*")) == []


def test_load_reads_a_volume_set_by_its_name_and_by_its_first_volume(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    single = tmp_path / "single.tar"
    refs = _save_two(store, images, single)
    base = tmp_path / "set.tar"
    _save_in_volumes(store, refs, single, base)

    for i, name in enumerate((base, tmp_path / "set.001.tar")):
        other = tmp_path / f"store{i}"
        run = xfer("load", name, store=other)
        assert run.code == 0, run.err
        assert sorted(run.out.split()) == sorted(refs.values())
        assert index_refs(other) == {ref: index_refs(store)[ref] for ref in refs.values()}
        assert stored_blobs(other)  # every blob there hashes to its name

    # Any reader of oci-archive: takes the set: inspect one image by name.
    run = xfer("inspect", f"oci-archive:{tmp_path / 'set.001.tar'}:{refs['small']}", "--raw")
    assert run.code == 0, run.err
    assert json.loads(run.out)["schemaVersion"] == 2


def test_a_missing_or_truncated_volume_is_named(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    single = tmp_path / "single.tar"
    refs = _save_two(store, images, single)
    base = tmp_path / "set.tar"
    _save_in_volumes(store, refs, single, base)
    volumes = _volumes(base)
    assert len(volumes) >= 3

    second = volumes[1]
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])
    run = xfer("load", base, store=tmp_path / "s1")
    assert run.code == 1
    assert str(second) in run.err and "truncated" in run.err
    assert len(run.err.strip().splitlines()) == 1

    second.unlink()
    run = xfer("load", base, store=tmp_path / "s2")
    assert run.code == 1
    assert f"volume {second} of {base} is missing" in run.err

    second.write_bytes(data)
    volumes[-1].unlink()  # the last one, with index.json: the set cannot say it ends earlier
    run = xfer("load", base, store=tmp_path / "s3")
    assert run.code == 1
    assert f"volume {volumes[-1]} of {base} is missing" in run.err


def test_skopeo_reads_a_one_volume_set(images: BuiltImages, store: Path, tmp_path: Path) -> None:
    refs = fill_store(store, images, "shared-a", "shared-b")
    base = tmp_path / "one.tar"
    run = xfer("save", *refs.values(), "-o", base, "--max-size", "1G", store=store)
    assert run.code == 0, run.err
    first = tmp_path / "one.001.tar"
    assert _volumes(base) == [first]
    for name, ref in refs.items():
        done = subprocess.run(
            ["skopeo", "--insecure-policy", "inspect", "--raw", f"oci-archive:{first}:{ref}"],
            capture_output=True,
            check=True,
        )
        assert json.loads(done.stdout)["config"]["digest"] == images.images[name].config.digest  # type: ignore[union-attr]


def test_an_export_killed_after_its_first_volume_keeps_it_when_rerun(
    registry: Registry, tmp_path: Path
) -> None:
    """The large layer (24 MiB) arrives slowly (--limit-rate) and does not fit beside the small
    images (25.3 MB volumes): the first volume is finished and in place while it downloads, then
    the export is killed. The rerun keeps that volume (same inode, same mtime), reads none of its
    blobs again, and completes the set."""
    small = [f"docker://{registry.host}/test/{n}:1" for n in ("small", "shared-a", "shared-b")]
    large = f"docker://{registry.host}/test/large:1"
    base = tmp_path / "set.tar"
    store = tmp_path / "store"
    args = ["save", *small, large, "-o", str(base), "--max-size", "25300000"]
    command = [sys.executable, "-m", "transfer", *args, "--store", str(store)]
    env = {**xfer_env(), "PYTHONPATH": str(ROOT)}
    first = tmp_path / "set.001.tar"
    process = subprocess.Popen(
        [*command, "--limit-rate", "2M"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not first.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert first.exists(), process.communicate()[1]
        assert process.poll() is None, "the export ended before it could be interrupted"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not (tmp_path / "set.002.tar").exists()
    before = first.stat()

    run = xfer(*args, store=store)
    assert run.code == 0, run.err
    after = first.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [v.name for v in _volumes(base)] == ["set.001.tar", "set.002.tar"]
    assert any(
        "already present" in line or "no bytes moved" in line for line in run.err.splitlines()
    )
    assert not list(tmp_path.glob("*.partial"))

    run = xfer("load", base, store=tmp_path / "loaded")
    assert run.code == 0, run.err
    assert len(run.out.split()) == 4
    assert stored_blobs(tmp_path / "loaded")


def test_a_rerun_keeps_matching_volumes_and_rewrites_those_that_differ(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    """An export whose last volume never appeared (interrupted): rerun with the same images, the
    finished volumes stay as they are; rerun with the images in another order, what differs is
    written again (the old volume's blobs copied out of it) and the set is that export's."""
    single = tmp_path / "single.tar"
    refs = _save_two(store, images, single)
    base = tmp_path / "set.tar"
    limit = str(_save_in_volumes(store, refs, single, base, parts=4))
    order = list(refs.values())
    volumes = _volumes(base)
    assert len(volumes) >= 3
    volumes[-1].unlink()
    kept = {v: (v.stat().st_ino, v.stat().st_mtime_ns) for v in volumes[:-1]}

    run = xfer("save", *order, "-o", base, "--max-size", limit, store=store)
    assert run.code == 0, run.err
    assert {v: (v.stat().st_ino, v.stat().st_mtime_ns) for v in kept} == kept
    assert _volumes(base) == volumes

    volumes[-1].unlink()
    run = xfer("save", *reversed(order), "-o", base, "--max-size", limit, store=store)
    assert run.code == 0, run.err
    assert _volumes(base)[0].stat().st_ino != kept[volumes[0]][0]
    loaded = tmp_path / "loaded"
    run = xfer("load", base, store=loaded)
    assert run.code == 0, run.err
    assert run.out.split() == list(reversed(order))
    assert stored_blobs(loaded)
    held = [n for v in _volumes(base) for n in _blob_members(v)]
    assert sorted(held) == sorted(_blob_members(single))


def test_an_archive_named_like_a_first_volume_is_read_as_itself(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    refs = fill_store(store, images, "small")
    archive = tmp_path / "weekly.001.tar"
    assert xfer("save", refs["small"], "-o", archive, store=store).code == 0
    run = xfer("load", archive, store=tmp_path / "other")
    assert run.code == 0, run.err
    assert run.out.split() == [refs["small"]]


def test_a_shorter_set_removes_what_an_older_export_left_at_its_name(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    """Left there, an older export's later volumes or single file would be read for this one."""
    single = tmp_path / "single.tar"
    refs = _save_two(store, images, single)
    base = tmp_path / "set.tar"
    _save_in_volumes(store, refs, single, base, parts=4)
    assert len(_volumes(base)) >= 4
    base.write_bytes(single.read_bytes())  # an older single-file export of the same name
    run = xfer("save", refs["small"], "-o", base, "--max-size", "1G", store=store)
    assert run.code == 0, run.err
    assert _volumes(base) == [tmp_path / "set.001.tar"]
    assert not base.exists()
    run = xfer("load", base, store=tmp_path / "other")
    assert run.code == 0, run.err
    assert run.out.split() == [refs["small"]]


def test_a_signed_image_in_volumes_verifies_and_loads_with_its_referrers(
    images: BuiltImages, tmp_path: Path
) -> None:
    from tests.test_referrers_local import _carry, _signed_layout
    from transfer.copy import CopyOptions, copy_image
    from transfer.endpoints.layout import Layout, LayoutSource
    from transfer.endpoints.volumes import VolumeDestination

    signed = _signed_layout(images, tmp_path / "signed")
    base = tmp_path / "signed.tar"
    ref = "example.com/test/small:1"

    async def main() -> None:
        source = LayoutSource(Layout(signed.layout), signed.name)
        destination = VolumeDestination(base, 24 << 10)
        try:
            await copy_image(source, destination, signed.name, ref, CopyOptions())
            await _carry(source, destination, signed.image)
            await destination.commit()
        finally:
            await destination.aclose()

    anyio.run(main)
    assert len(_volumes(base)) >= 3
    run = xfer("verify", f"oci-archive:{base}", "--json")
    assert run.code == 0, run.out + run.err
    report = json.loads(run.out)
    assert (report["images"], report["referrers"]) == (1, 3)  # the image; SBOM, two signatures
    loaded = tmp_path / "loaded"
    run = xfer("load", base, store=loaded)
    assert run.code == 0, run.err
    held = set(stored_blobs(loaded))
    assert {str(d.digest) for d in (signed.signature, signed.sbom, signed.sbom_signature)} <= held


def test_a_set_cut_short_by_another_exports_last_volume_is_refused(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    """index.json says how many volumes the set has: a last volume of another export standing
    in for a middle one is named, not read as the end of this set."""
    single = tmp_path / "single.tar"
    refs = _save_two(store, images, single)
    base = tmp_path / "set.tar"
    _save_in_volumes(store, refs, single, base)
    other = tmp_path / "other.tar"
    assert xfer("save", refs["small"], "-o", other, "--max-size", "1G", store=store).code == 0
    second = tmp_path / "set.002.tar"
    second.write_bytes((tmp_path / "other.001.tar").read_bytes())
    run = xfer("load", base, store=tmp_path / "loaded")
    assert run.code == 1
    assert f"{second} is volume 2, but its index.json says the set has 1 volumes" in run.err
    run = xfer("verify", f"oci-archive:{base}")
    assert run.code == 1
    assert f"{second} is volume 2, but its index.json says the set has 1 volumes" in run.out


def test_unpack_reads_an_image_out_of_a_volume_set(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    single = tmp_path / "single.tar"
    refs = _save_two(store, images, single)
    base = tmp_path / "set.tar"
    _save_in_volumes(store, refs, single, base)
    assert len(_volumes(base)) >= 3
    trees = []
    for name, archive in (("from-set", base), ("from-single", single)):
        run = xfer("unpack", f"oci-archive:{archive}:{refs['small']}", tmp_path / name)
        assert run.code == 0, run.err
        root = tmp_path / name
        trees.append(
            {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        )
    assert trees[0] and trees[0] == trees[1]


def test_two_exports_to_one_set_at_once_are_refused_not_mixed(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    """Their volumes would be renamed into place in turn, one set of each's: the second export
    is refused while the first writes (its lock beside the set), and none is left after."""
    refs = fill_store(store, images, "small")
    base = tmp_path / "set.tar"
    lock = tmp_path / "set.tar.lock"
    lock.touch()
    with locked_by_another_process(lock):
        run = xfer("save", refs["small"], "-o", base, "--max-size", "1M", store=store)
    assert run.code == 1
    assert f"another xfer is writing the volumes of {base}" in run.err
    assert _volumes(base) == []
    run = xfer("save", refs["small"], "-o", base, "--max-size", "1M", store=store)
    assert run.code == 0, run.err
    assert not lock.exists()


def test_a_kept_volume_over_the_size_now_asked_is_written_again(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    single = tmp_path / "single.tar"
    refs = _save_two(store, images, single)
    base = tmp_path / "set.tar"
    limit = _save_in_volumes(store, refs, single, base)
    order = list(refs.values())
    volumes = _volumes(base)
    volumes[-1].unlink()
    first = volumes[0]
    with first.open("ab") as handle:  # the same members, but longer than a volume may be
        handle.write(bytes(limit))
    run = xfer("save", *order, "-o", base, "--max-size", str(limit), store=store)
    assert run.code == 0, run.err
    assert all(v.stat().st_size <= limit for v in _volumes(base))
    assert xfer("verify", f"oci-archive:{base}").code == 0


def test_a_damaged_blob_in_a_volume_is_named_with_its_volume_by_load(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    single = tmp_path / "single.tar"
    refs = _save_two(store, images, single)
    base = tmp_path / "set.tar"
    _save_in_volumes(store, refs, single, base)
    second = _volumes(base)[1]
    with tarfile.open(second) as tar:
        member = next(m for m in tar.getmembers() if m.size > 1000)
    with second.open("r+b") as handle:
        handle.seek(member.offset_data + 500)
        byte = handle.read(1)
        handle.seek(member.offset_data + 500)
        handle.write(bytes([byte[0] ^ 0xFF]))
    run = xfer("load", base, store=tmp_path / "loaded")
    assert run.code == 1
    assert f"archive {second}: {member.name} does not hold the bytes of" in run.err
