"""The local store and ``oci:`` layouts under hostile or damaged contents: layout files that are
devices, FIFOs or huge; a damaged manifest meeting gc; a damaged blob meeting a re-pull; a disk
too small for a blob; temporaries of a killed writer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import Run, stored_blobs, xfer

QUICK = 20  # seconds: a hang is a failure, not a slow test


def _blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _one_error_line(run: Run) -> str:
    assert run.code == 1, (run.code, run.err)
    assert "Traceback" not in run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("xfer: error:")
    return lines[0]


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


def _pull(registry: Registry, store: Path, name: str, images: BuiltImages) -> str:
    ref = f"{registry.host}/{images.images[name].ref}"
    run = xfer("pull", ref, store=store)
    assert run.code == 0, run.err
    return ref


# ---- 8: layout files opened as untrusted -------------------------------------------------------


@pytest.fixture
def source_layout(images: BuiltImages, tmp_path: Path) -> Path:
    """A private copy of the fixture layout, to damage."""
    copy = tmp_path / "src"
    shutil.copytree(images.layout, copy)
    return copy


def _replace(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "fifo"])
def test_an_index_json_that_is_a_device_or_a_fifo_fails_at_once_naming_it(
    source_layout: Path, tmp_path: Path, kind: str
) -> None:
    _replace(source_layout / "index.json", kind)
    run = xfer("copy", f"oci:{source_layout}:small", f"oci:{tmp_path / 'out'}:x", timeout=QUICK)
    line = _one_error_line(run)
    assert "index.json" in line and "regular file" in line
    # The store's own index.json is read under the same rules.
    run = xfer("images", store=source_layout, timeout=QUICK)
    assert "index.json" in _one_error_line(run)


def test_an_index_json_over_the_cap_is_refused_without_reading_it(
    source_layout: Path, tmp_path: Path
) -> None:
    index = source_layout / "index.json"
    with open(index, "r+b") as handle:  # sparse: costs no disk, and would cost 64 MiB of memory
        handle.truncate((64 << 20) + 1)
    run = xfer("copy", f"oci:{source_layout}:small", f"oci:{tmp_path / 'out'}:x", timeout=QUICK)
    line = _one_error_line(run)
    assert "index.json" in line and "larger than" in line


@pytest.mark.parametrize("which", ["manifest", "layer"])
@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "fifo"])
def test_a_blob_of_an_oci_source_that_is_a_device_or_a_fifo_fails_at_once_naming_it(
    source_layout: Path, images: BuiltImages, tmp_path: Path, which: str, kind: str
) -> None:
    info = images.images["small"]
    digest = info.digest if which == "manifest" else info.layers[0].digest
    _replace(_blob_path(source_layout, digest), kind)
    run = xfer("copy", f"oci:{source_layout}:small", f"oci:{tmp_path / 'out'}:x", timeout=QUICK)
    line = _one_error_line(run)
    assert digest in line and "regular file" in line


def test_an_oci_layout_file_that_is_not_a_regular_file_is_refused_naming_it(
    source_layout: Path, tmp_path: Path
) -> None:
    _replace(source_layout / "oci-layout", "fifo")
    run = xfer("copy", f"oci:{source_layout}:small", f"oci:{tmp_path / 'out'}:x", timeout=QUICK)
    line = _one_error_line(run)
    assert "oci-layout" in line and "regular file" in line


# ---- 9: gc and a damaged manifest ---------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped bit", "missing"])
def test_gc_deletes_nothing_when_a_tagged_manifest_is_damaged_and_says_which(
    registry: Registry, images: BuiltImages, store: Path, damage: str
) -> None:
    info = images.images["small"]
    ref = _pull(registry, store, "small", images)
    manifest = _blob_path(store, info.digest)
    if damage == "flipped bit":
        _flip(manifest)
    else:
        manifest.unlink()
    before = {p.name for p in (store / "blobs" / "sha256").iterdir()}

    run = xfer("gc", store=store)
    line = _one_error_line(run)
    assert info.digest in line and ref in line and "xfer verify" in line
    assert {p.name for p in (store / "blobs" / "sha256").iterdir()} == before
    for blob in info.blobs:  # its config and layers are all still there
        assert _blob_path(store, blob.digest).is_file()


def test_following_gcs_hint_repairs_the_store_and_gc_runs_again(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    ref = _pull(registry, store, "small", images)
    _flip(_blob_path(store, info.digest))
    assert xfer("gc", store=store).code == 1

    assert xfer("verify", "--repair", store=store).code == 1  # repaired, but not complete yet
    assert xfer("pull", ref, store=store).code == 0
    gc = xfer("gc", "--json", store=store)
    assert gc.code == 0, gc.err
    assert gc.json_lines()[-1]["blobs_removed"] == 0
    assert xfer("verify", store=store).code == 0
    assert set(stored_blobs(store)) == {b.digest for b in info.blobs} | {info.digest}


# ---- 10: a damaged blob is replaced --------------------------------------------------------------


def test_verify_names_a_damaged_layer_and_its_hint_makes_the_next_pull_fetch_it_again(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    ref = _pull(registry, store, "small", images)
    victim = info.layers[1].digest
    _flip(_blob_path(store, victim))

    run = xfer("verify", store=store)
    assert run.code == 1
    line = run.err.strip().splitlines()[-1]  # after the "checked N blobs" status line
    assert victim in line and "xfer verify --repair" in line
    assert victim in run.out

    # Without repair a pull trusts the file (has_blob checks the size only: it is the hot path).
    repair = xfer("verify", "--repair", store=store)
    assert repair.code == 1  # the store still lacks the blob: it says so, and what to pull
    assert victim in repair.out and "removed" in repair.out
    assert ref in repair.err.strip().splitlines()[-1]
    assert not _blob_path(store, victim).exists()

    mark = registry.mark()
    assert xfer("pull", ref, store=store).code == 0
    assert [r.path.rsplit("/", 1)[-1] for r in registry.blob_gets(mark)] == [victim]
    assert xfer("verify", store=store).code == 0


def test_verify_repair_removes_a_symlinked_blob_and_keeps_sound_ones(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    ref = _pull(registry, store, "small", images)
    assert info.config is not None
    config = _blob_path(store, info.config.digest)
    outside = tmp_path / "elsewhere"
    outside.write_bytes(config.read_bytes())
    config.unlink()
    config.symlink_to(outside)

    assert xfer("verify", "--repair", store=store).code == 1
    assert not config.is_symlink() and outside.exists()  # the link went, not its target
    assert xfer("pull", ref, store=store).code == 0
    assert xfer("verify", store=store).code == 0
    assert set(stored_blobs(store)) == {b.digest for b in info.blobs} | {info.digest}


def test_verify_repair_of_a_sound_store_changes_nothing_and_exits_0(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    _pull(registry, store, "small", images)
    before = stored_blobs(store)
    run = xfer("verify", "--repair", store=store)
    assert run.code == 0, run.err
    assert stored_blobs(store) == before
