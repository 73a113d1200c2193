"""Hostile tar headers and hostile neighbours of an archive being written.

Tar headers read (``load``, ``unpack``, archive endpoints): a PAX global header is skipped, its
records applied to no member, as docker and containerd do (Python's ``tarfile`` copied them into
every member: an 87,000-record header in front of 400 members took gigabytes in ``load``, and
minutes of CPU in ``unpack``); an extended header holds at most a few hundred records; a path
resolved through symlinks walks a bounded number of components.

Archives written: ``save -o FILE`` (and the ``oci-archive:`` / ``docker-archive:`` targets of
``copy``) write into a new file of a random name beside FILE, created exclusively and never
through a symlink, then renamed onto FILE. So a symlink planted where a predictable temporary
file would be has nothing written through it, and two saves to one FILE at once leave one
complete archive, never a mix of both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.hostile import (
    directory,
    file,
    global_pax,
    header_chain,
    layer,
    pax_record_bomb,
    symlink,
    symlink_chain,
    tar_with_global_header,
    with_global_header,
    write_image,
)
from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import (
    Run,
    fill_store,
    index_refs,
    locked_by_another_process,
    peak_rss,
    stored_blobs,
    xfer,
    xfer_env,
)
from transfer.api import Settings, unpack_sync
from transfer.tarheader import HeaderError, pax_records
from transfer.unpack import UnpackOptions

SENTINEL = b"the sentinel: not part of any archive\n"
REF = "localhost/hostile:1"


def _measured(*args: str | Path, cpu_limit: int = 60) -> tuple[Run, float, float]:
    """Run the CLI under a CPU limit (a runaway is killed, not waited for); returns its
    result, its CPU seconds (user + system) and its own peak RSS in MiB."""
    done, peak_mib, cpu, killed = peak_rss(
        [sys.executable, "-m", "transfer", *map(str, args)],
        env=xfer_env(),
        cpu_limit=cpu_limit,
        timeout=4 * cpu_limit,
    )
    if killed:
        raise AssertionError(f"xfer {args} ran over {4 * cpu_limit} s")
    return Run(done.returncode, done.stdout, done.stderr), cpu, peak_mib


def _plant(where: Path, archive: Path, sentinel: Path) -> list[Path]:
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
        link = where / name
        link.symlink_to(sentinel)
        links.append(link)
    return links


# ---- writing archives --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["save", "save-docker", "copy-oci-archive", "copy-docker-archive"])
def test_an_archive_is_never_written_through_a_symlink_planted_beside_it(
    images: BuiltImages, store: Path, tmp_path: Path, how: str
) -> None:
    refs = fill_store(store, images, "small")
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


def test_the_next_save_to_a_file_removes_what_a_killed_save_left_but_not_a_live_ones(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    refs = fill_store(store, images, "small")
    out = tmp_path / "out"
    out.mkdir()
    archive = out / "image.tar"
    # A save read at a capped rate, killed with SIGKILL once its temporary holds a MiB.
    source = f"docker://{registry.host}/test/large:1"
    save = [sys.executable, "-m", "transfer", "save", "-q", "--plain-http", "--limit-rate", "2M"]
    child = subprocess.Popen(
        [*save, source, "-o", str(archive)],
        env=xfer_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            found = [p for p in out.iterdir() if p.name.endswith(".partial")]
            if found and found[0].stat().st_size > 1 << 20:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the save never wrote a MiB")
    finally:
        child.kill()
        child.wait()
    (killed,) = found
    assert killed.exists() and not archive.exists()
    # Another save to the same FILE, still writing (its pid is dead here, as another host's
    # would look on a shared disk; its lock is held): kept.
    held = out / f"image.tar.{child.pid}.{'ab' * 8}.partial"
    held.write_bytes(b"x" * 1000)
    other = out / f"other.tar.{child.pid}.{'cd' * 8}.partial"  # another FILE's: not ours
    other.write_bytes(b"y")
    with locked_by_another_process(held):
        run = xfer("save", "-q", refs["small"], "-o", archive, store=store)
        assert run.code == 0, run.err
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [archive.name, held.name, other.name]
        )
    assert xfer("save", "-q", refs["small"], "-o", archive, store=store).code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([archive.name, other.name])
    loaded = xfer("load", "-q", archive, store=tmp_path / "fresh")
    assert loaded.code == 0, loaded.err


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_load_of_an_archive_that_is_a_fifo_or_a_directory_fails_at_once_naming_it(
    tmp_path: Path, kind: str
) -> None:
    archive = tmp_path / "image.tar"
    if kind == "fifo":
        os.mkfifo(archive)  # opened without O_NONBLOCK, this waited for a writer for ever
    else:
        archive.mkdir()
    run = xfer("load", "-q", archive, store=tmp_path / "store", timeout=20)
    assert run.code == 1, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.err, run.err
    assert str(archive) in lines[0] and "regular file" in lines[0]


def test_load_follows_a_symlink_the_user_names_as_the_archive(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    refs = fill_store(store, images, "small")
    archive = tmp_path / "image.tar"
    assert xfer("save", "-q", refs["small"], "-o", archive, store=store).code == 0
    link = tmp_path / "latest.tar"
    link.symlink_to(archive)
    loaded = xfer("load", "-q", link, store=tmp_path / "fresh")
    assert loaded.code == 0, loaded.err
    assert list(index_refs(tmp_path / "fresh").values()) == [index_refs(store)[refs["small"]]]


# ---- reading tar headers -----------------------------------------------------------------------


def test_load_of_an_archive_with_a_huge_global_pax_header_keeps_memory_flat(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    refs = fill_store(store, images, "small")
    saved = tmp_path / "small.tar"
    assert xfer("save", "-q", refs["small"], "-o", saved, store=store).code == 0
    hostile = tmp_path / "hostile.tar"
    # 87,000 records (1 MiB) in a global header, then 400 members: 1.3 MB in all.
    hostile.write_bytes(with_global_header(saved.read_bytes(), global_pax(87_000), 400))
    fresh = tmp_path / "fresh"
    run, cpu, peak = _measured("load", "-q", hostile, "--store", fresh)
    # The header is skipped (as docker does): the image in the archive loads, whole.
    assert run.code == 0, run.err
    assert index_refs(fresh) == {refs["small"]: index_refs(store)[refs["small"]]}
    assert peak < 200, f"peak RSS {peak:.0f} MiB"
    assert cpu < 10, f"{cpu:.1f} s of CPU"


def test_unpack_of_a_layer_with_a_huge_global_pax_header_costs_bounded_cpu(
    tmp_path: Path,
) -> None:
    layout = tmp_path / "layout"
    members = [file(f"f/{i}", b"x") for i in range(3000)]
    tar = tar_with_global_header(members, {**global_pax(87_000), "path": "evil", "uid": "7"})
    hostile = layer(tar)
    assert len(hostile.blob) < 300_000  # ~226 KB compressed, as in the report
    write_image(layout, REF, [hostile])
    root = tmp_path / "root"
    run, cpu, peak = _measured("unpack", "--store", layout, REF, root, cpu_limit=30)
    assert run.code == 0, run.err
    assert cpu < 10, f"{cpu:.1f} s of CPU"  # a bound on runaway work, not a benchmark
    assert peak < 200, f"peak RSS {peak:.0f} MiB"
    # The global records named no member: each keeps its own path (docker ignores them too).
    assert len(list((root / "f").iterdir())) == 3000 and not (root / "evil").exists()


@pytest.mark.parametrize(
    ("hops", "repeat", "resolved"),
    [
        (5, 800, False),  # 8,000 components a lookup (~20 ms each, one at a time): refused
        (39, 1, True),  # 40 links, the kernel's limit, each short: resolved
        (1, 120, True),  # one link adding 241 components: resolved
    ],
)
def test_unpack_through_a_long_symlink_chain_costs_bounded_cpu_per_member(
    tmp_path: Path, hops: int, repeat: int, resolved: bool
) -> None:
    layout = tmp_path / "layout"
    members = symlink_chain(hops, repeat)
    for i in range(1500):  # alternating parents: the last lookup is never the one needed
        members += [file(f"b/f{i}", b"x"), file(f"e/g{i}", b"x")]
    write_image(layout, REF, [layer(members)])
    root = tmp_path / "root"
    run, cpu, _ = _measured("unpack", "--store", layout, REF, root, cpu_limit=30)
    assert cpu < 6, f"{cpu:.1f} s of CPU for 3,000 members"  # 2 ms a member, start-up included
    if resolved:
        assert run.code == 0, run.err
        assert len(list((root / "d").iterdir())) == 1500  # b resolved to d, inside the root
        assert len(list((root / "e").iterdir())) == 1500
    else:
        lines = run.err.strip().splitlines()
        assert run.code == 1 and len(lines) == 1, run.err
        assert "symlinks on the way add over 256 path components" in lines[0]
        assert not root.exists()


def test_extended_headers_of_too_many_records_are_refused_before_they_cost(
    tmp_path: Path,
) -> None:
    layout = tmp_path / "layout"
    # 300 members behind 1 MiB headers of 116,000 records each: 0.6 MB compressed; parsing
    # each header record by record took ~90 ms of CPU per member.
    hostile = layer(pax_record_bomb(300))
    assert len(hostile.blob) < 1 << 20
    write_image(layout, REF, [hostile])
    root = tmp_path / "root"
    run, cpu, _ = _measured("unpack", "--store", layout, REF, root, cpu_limit=30)
    lines = run.err.strip().splitlines()
    assert run.code == 1 and len(lines) == 1, run.err
    assert "more than 256 records" in lines[0] and REF in lines[0]
    assert cpu < 10, f"{cpu:.1f} s of CPU"
    assert not root.exists()


@pytest.mark.parametrize(
    ("data", "records"),
    [
        (b"", []),
        (b"12 path=abc\n", [(b"path", b"abc")]),
        (b"13 uid=12345\n16 mtime=1.25e0\n", [(b"uid", b"12345"), (b"mtime", b"1.25e0")]),
        (b"12 comment=\n", [(b"comment", b"")]),
        (b"13 a=b=c\nd=e\n", [(b"a", b"b=c\nd=e")]),  # the length, not a newline, ends it
        (b"8 k=one\n8 k=two\n", [(b"k", b"one"), (b"k", b"two")]),  # the last one wins
        ("14 path=\u00e9t\u00e9\n".encode(), [(b"path", "\u00e9t\u00e9".encode())]),
    ],
)
def test_pax_records_parse_as_posix_writes_them(
    data: bytes, records: list[tuple[bytes, bytes]]
) -> None:
    assert pax_records(data) == records


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"path=abc\n", "without a length"),
        (b"12path=abc\n", "without a length"),
        (b"-1 path=abc\n", "without a length"),
        (b"99 path=abc\n", "does not match"),
        (b"11 path=abc\n", "does not match"),  # one byte short: no newline at its end
        (b"0 path=abc\n", "does not match"),
        (b"12 path=abc\n\x00\x00", "without a length"),  # bytes after the last record
        (b"8 abcde\n", "malformed"),
        (b"6 =ab\n", "malformed"),
        (b"8 k=one\n" * 257, "more than 256 records"),
    ],
)
def test_pax_records_refuse_what_no_writer_makes(data: bytes, error: str) -> None:
    with pytest.raises(HeaderError, match=error):
        pax_records(data)


def test_legitimate_pax_headers_keep_working(tmp_path: Path) -> None:
    """Long names and link targets, big ids, fractional times, xattr records and unicode, under
    a git-archive-style global comment: unpacked as tarfile always read them."""
    deep = "/".join(["a-rather-long-directory-name"] * 5)  # 144 bytes: a PAX path
    target = "../" * 2 + "t" * 120
    members = [
        directory(deep),
        file(f"{deep}/f", b"data", uid=3_000_000, gid=3_000_001, mtime=1_700_000_000.5),
        file("x", b"", pax={"SCHILY.xattr.user.note": "n", "LIBARCHIVE.creationtime": "1"}),
        symlink("link", target),
        file("\u00fcn\u00efcode-\u00e9", b"u"),
    ]
    tar = tar_with_global_header(members, {"comment": "5e1f" * 10})
    layout = tmp_path / "layout"
    write_image(layout, REF, [layer(tar)])
    root = tmp_path / "root"
    result = unpack_sync(
        f"store:{REF}", root, Settings(store=layout), options=UnpackOptions(privileged=False)
    )
    assert result.entries == len(members)
    assert (root / deep / "f").read_bytes() == b"data"
    assert (root / deep / "f").stat().st_mtime_ns == 1_700_000_000_500_000_000
    assert os.readlink(root / "link") == target
    assert (root / "\u00fcn\u00efcode-\u00e9").read_bytes() == b"u"
    if os.geteuid() == 0:  # owners are kept only by root
        root2 = tmp_path / "root2"
        unpack_sync(f"store:{REF}", root2, Settings(store=layout))
        st = (root2 / deep / "f").stat()
        assert (st.st_uid, st.st_gid) == (3_000_000, 3_000_001)


def test_a_remembered_symlinked_directory_is_looked_up_again_once_the_link_changes(
    tmp_path: Path,
) -> None:
    members = [
        directory("d1"),
        directory("d2"),
        symlink("l", "d1"),
        file("l/a", b"a"),  # through l: remembered as d1
        file("other/x"),  # another parent in between
        symlink("l", "d2"),  # the link replaced
        file("l/b", b"b"),
        file("other/y"),
        directory("l"),  # the link replaced by a directory
        file("l/c", b"c"),
        file("other/z"),
        file("m/keep"),
        symlink("n", "m"),
        file("n/d", b"d"),
        file("other/w"),
        file("m/keep", b"again"),  # a file replaced: no lookup passed through it
        file("n/e", b"e"),
    ]
    # Through the lower layer's link, then a whiteout of that link, then the same path again.
    second = [file("n/g", b"g"), file("other/v"), file(".wh.n"), file("other/u"), file("n/f")]
    layout = tmp_path / "layout"
    write_image(layout, REF, [layer(members), layer(second)])
    root = tmp_path / "root"
    unpack_sync(
        f"store:{REF}", root, Settings(store=layout), options=UnpackOptions(privileged=False)
    )
    assert sorted(p.name for p in (root / "d1").iterdir()) == ["a"]
    assert sorted(p.name for p in (root / "d2").iterdir()) == ["b"]
    assert not (root / "l").is_symlink() and sorted(os.listdir(root / "l")) == ["c"]
    assert sorted(os.listdir(root / "m")) == ["d", "e", "g", "keep"]
    assert not (root / "n").is_symlink() and os.listdir(root / "n") == ["f"]


def test_load_refuses_an_extended_header_of_too_many_records_in_one_line(
    store: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "bomb.tar"
    archive.write_bytes(pax_record_bomb(3))
    run = xfer("load", "-q", archive, store=store)
    lines = run.err.strip().splitlines()
    assert run.code == 1 and len(lines) == 1, run.err
    assert "more than 256 records" in lines[0] and str(archive) in lines[0]


@pytest.mark.parametrize("kind", ["g", "x", "L"])
def test_thousands_of_headers_before_one_member_are_refused_cleanly(
    tmp_path: Path, kind: str
) -> None:
    tar = header_chain(kind, 3000)  # tarfile recursed once per header: a RecursionError
    archive = tmp_path / "chain.tar"
    archive.write_bytes(tar)
    layout = tmp_path / "layout"
    write_image(layout, REF, [layer(tar)])
    runs = [
        xfer("load", "-q", archive, store=tmp_path / "store"),
        xfer("unpack", REF, tmp_path / "root", store=layout),
    ]
    for run in runs:
        lines = run.err.strip().splitlines()
        assert run.code == 1 and len(lines) == 1, run.err
        assert "more than 8 extension headers before one member" in lines[0], run.err
    short = header_chain(kind, 3)  # a few in a row: read as tarfile reads them
    write_image(layout, REF, [layer(short)])
    assert xfer("unpack", REF, tmp_path / "root", store=layout).code == 0
    # A global header names no member; a PAX or GNU long name names the member after it.
    assert os.listdir(tmp_path / "root") == ["f" if kind == "g" else "n" * 200]
