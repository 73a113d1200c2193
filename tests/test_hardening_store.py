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
from tests.helpers import Run, xfer

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
