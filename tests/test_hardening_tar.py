"""Hostile tar headers and hostile neighbours of an archive being written.

Archives written: ``save -o FILE`` (and the ``oci-archive:`` / ``docker-archive:`` targets of
``copy``) write into a new file of a random name beside FILE, created exclusively and never
through a symlink, then renamed onto FILE. So a symlink planted where a predictable temporary
file would be has nothing written through it, and two saves to one FILE at once leave one
complete archive, never a mix of both.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import transfer
from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import index_refs, stored_blobs, xfer, xfer_env

HOST = "example.com/test"  # store names only: nothing is fetched from this host
SENTINEL = b"the sentinel: not part of any archive\n"


def _fill_store(store: Path, images: BuiltImages, *names: str) -> dict[str, str]:
    refs = {}
    for name in names:
        ref = f"{HOST}/{name}:1"
        transfer.api.copy_sync(
            f"oci:{images.layout}:{name}", f"store:{ref}", transfer.Settings(store=store)
        )
        refs[name] = ref
    return refs


def _plant(directory: Path, archive: Path, sentinel: Path) -> list[Path]:
    """Symlinks to ``sentinel`` at every name a writer of ``archive`` could predict."""
    names = [
        f"{archive.name}.partial",
        f".{archive.name}.partial",
        f"{archive.name}.tmp",
        f".{archive.name}.tmp",
        f"{archive.name}.new",
    ]
    links = []
    for name in names:
        link = directory / name
        link.symlink_to(sentinel)
        links.append(link)
    return links


# ---- writing archives --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["save", "save-docker", "copy-oci-archive", "copy-docker-archive"])
def test_an_archive_is_never_written_through_a_symlink_planted_beside_it(
    images: BuiltImages, store: Path, tmp_path: Path, how: str
) -> None:
    refs = _fill_store(store, images, "small")
    sentinel = tmp_path / "sentinel"
    sentinel.write_bytes(SENTINEL)
    out = tmp_path / "out"
    out.mkdir()
    archive = out / "image.tar"
    links = _plant(out, archive, sentinel)
    if how.startswith("save"):
        extra = ["--format", "docker"] if how == "save-docker" else []
        run = xfer("save", "-q", *extra, refs["small"], "-o", archive, store=store)
    else:
        kind = how.removeprefix("copy-")
        run = xfer("copy", "-q", f"store:{refs['small']}", f"{kind}:{archive}", store=store)
    assert run.code == 0, run.err
    assert sentinel.read_bytes() == SENTINEL  # nothing written through any link
    assert all(link.is_symlink() for link in links)  # and none of them replaced or moved
    assert archive.is_file() and not archive.is_symlink()
    # Only the archive and the planted links: the temporary file is gone.
    assert sorted(p.name for p in out.iterdir()) == sorted([archive.name, *(x.name for x in links)])
    loaded = xfer("load", "-q", archive, store=tmp_path / "fresh")
    assert loaded.code == 0, loaded.err
    stored_blobs(tmp_path / "fresh")  # each blob whole: the archive is complete
    loaded_digests = list(index_refs(tmp_path / "fresh").values())
    if "docker" in how:  # the manifest is synthesised from docker's manifest.json
        assert len(loaded_digests) == 1
    else:
        assert loaded_digests == [index_refs(store)[refs["small"]]]


def test_two_saves_to_one_file_at_once_leave_one_complete_archive(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    archive = tmp_path / "out" / "both.tar"
    archive.parent.mkdir()
    # Different images, so bytes of one archive mixed into the other make a damaged file; read
    # from the registry at a capped rate, so that both writes surely overlap (~0.5 s each).
    wanted = {
        "a": [f"{registry.host}/test/large:1"],
        "b": [f"{registry.host}/test/shared-a:1", f"{registry.host}/test/large:1"],
    }
    command = [sys.executable, "-m", "transfer", "save", "-q", "--plain-http"]
    children = {
        key: subprocess.Popen(
            [*command, "--limit-rate", "50M", *(f"docker://{n}" for n in names), "-o", archive],
            env=xfer_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key, names in wanted.items()
    }
    results = {key: (child.wait(120), child.communicate()[1]) for key, child in children.items()}
    for code, err in results.values():
        assert code == 0 or (code == 1 and len(err.strip().splitlines()) == 1), err
    assert any(code == 0 for code, _ in results.values()), results
    # FILE is one whole archive of the images of a save that succeeded (the last to finish).
    fresh = tmp_path / "fresh"
    loaded = xfer("load", "-q", archive, store=fresh)
    assert loaded.code == 0, loaded.err
    stored_blobs(fresh)  # every blob matches its digest
    succeeded = [sorted(names) for key, names in wanted.items() if results[key][0] == 0]
    assert sorted(index_refs(fresh)) in succeeded, results
    assert [p.name for p in archive.parent.iterdir()] == [archive.name]
