"""The local store and ``oci:`` layouts under hostile or damaged contents: layout files that are
devices, FIFOs or huge; a damaged manifest meeting gc; a damaged blob meeting a re-pull; a disk
too small for a blob; temporaries of a killed writer."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import Run, index_refs, locked_by_another_process, stored_blobs, xfer
from transfer.digest import Digest
from transfer.endpoints import Opener
from transfer.endpoints.layout import Layout
from transfer.errors import StoreError
from transfer.manifest import Descriptor

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


@pytest.mark.parametrize("where", ["store", "oci"])
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_unpack_of_a_layer_blob_that_is_a_fifo_or_a_directory_fails_at_once_naming_it(
    tmp_path: Path, where: str, kind: str
) -> None:
    from fixtures.hostile import file, layer, write_image

    layout, ref = tmp_path / "layout", "localhost/hostile:1"
    blob = layer([file("etc/hello", b"hi\n")])
    write_image(layout, ref, [blob])
    path = _blob_path(layout, hashlib.sha256(blob.blob).hexdigest())
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)  # opened without O_NONBLOCK, this waited for a writer for ever
    else:
        path.mkdir()
    source = ref if where == "store" else f"oci:{layout}:{ref}"
    run = xfer("unpack", source, tmp_path / "root", store=layout, timeout=QUICK)
    line = _one_error_line(run)
    assert path.name[:12] in line and "regular file" in line
    assert not (tmp_path / "root").exists()


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


def test_gc_leaves_a_directory_under_blobs_alone_says_so_and_collects_the_rest(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    _pull(registry, store, "small", images)
    blobs = store / "blobs" / "sha256"
    named = blobs / ("d" * 64)  # named as a blob, but a directory (with something inside)
    named.mkdir()
    (named / "inside").write_bytes(b"not ours")
    beside = store / "blobs" / "junk"  # a file where an algorithm's directory goes
    beside.write_bytes(b"junk")
    partial_dir = store / ".xfer" / "partials" / "sha256-dir"
    partial_dir.mkdir()
    garbage = blobs / ("e" * 64)  # unreferenced: still collected
    garbage.write_bytes(b"garbage")
    fifo = blobs / ("f" * 64)
    os.mkfifo(fifo)

    run = xfer("gc", "--partials", store=store)
    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    warnings = run.err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("xfer: warning:") for w in warnings), run.err
    for path in (named, partial_dir):
        assert any(str(path.relative_to(store)) in w and "directory" in w for w in warnings)
        assert path.is_dir()  # left alone, with what it holds
    assert (named / "inside").read_bytes() == b"not ours"
    assert not garbage.exists() and not os.path.lexists(fifo) and not beside.exists()
    assert "removed 3 blobs" in run.out
    report = xfer("gc", "--partials", "--json", store=store).json_lines()[-1]
    assert sorted(report["left"]) == sorted(str(p.relative_to(store)) for p in (named, partial_dir))
    assert xfer("images", store=store).code == 0
    files = {f"sha256:{p.name}" for p in blobs.iterdir() if p.is_file()}
    assert files == {b.digest for b in info.blobs} | {info.digest}


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


# ---- 11: a disk too small ------------------------------------------------------------------------


def test_a_blob_larger_than_the_free_space_is_refused_before_a_byte_is_written(
    registry: Registry, images: BuiltImages, tiny_filesystem: Path
) -> None:
    store = tiny_filesystem / "store"
    small, large = images.images["small"], images.images["large"]
    _pull(registry, store, "small", images)
    big = max(large.layers, key=lambda b: b.size)
    mark = registry.mark()

    run = xfer("pull", "-q", "--retries", "0", f"{registry.host}/{large.ref}", store=store)
    line = _one_error_line(run)
    assert big.digest in line and str(big.size) in line and "free" in line
    free = int(line.split(" bytes free")[0].rsplit(" ", 1)[-1])
    assert 0 < free < big.size
    assert "resumes" not in line  # nothing was kept to resume
    assert big.digest not in [r.path.rsplit("/", 1)[-1] for r in registry.blob_gets(mark)]
    assert list((store / ".xfer" / "partials").iterdir()) == []
    assert index_refs(store) == {f"{registry.host}/{small.ref}": small.digest}
    assert xfer("verify", store=store).code == 0


def _opener(data: bytes, hold: anyio.Event | None = None) -> Opener:
    """Serves ``data`` in 1 MiB chunks; with ``hold``, stops after the first until it is set."""

    @asynccontextmanager
    async def open_(offset: int, end: int | None) -> AsyncIterator[AsyncIterable[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            for at in range(offset, len(data) if end is None else end, 1 << 20):
                if hold is not None and at >= 1 << 20:
                    await hold.wait()
                yield data[at : at + (1 << 20)]

        yield chunks()

    return open_


def test_blobs_written_at_once_may_not_together_claim_more_than_is_free(
    tiny_filesystem: Path,
) -> None:
    """Two 8 MiB blobs on a 12 MiB filesystem, at once: the second is refused before it writes,
    so the first completes instead of both filling the disk and failing."""
    layout = Layout(tiny_filesystem / "store")
    first, second = os.urandom(8 << 20), os.urandom(8 << 20)
    results: dict[int, int | StoreError] = {}

    async def main() -> None:
        hold = anyio.Event()

        async def put(n: int, data: bytes, opener: Opener) -> None:
            desc = Descriptor("application/octet-stream", Digest.of(data), len(data))
            try:
                results[n] = await layout.put_blob(desc, opener, lambda _: None)
            except StoreError as exc:
                results[n] = exc
            finally:
                hold.set()  # the second has been decided: let the first go on

        async with anyio.create_task_group() as group:
            group.start_soon(put, 1, first, _opener(first, hold))
            await anyio.sleep(0.3)  # the first has written its first MiB and waits
            group.start_soon(put, 2, second, _opener(second))

    anyio.run(main)
    assert results[1] == len(first)
    refused = results[2]
    assert isinstance(refused, StoreError)
    assert str(Digest.of(second)) in str(refused) and "promised" in str(refused)
    assert layout.has_blob(Descriptor("", Digest.of(first), len(first)))
    assert not (layout.work / "partials" / f"sha256-{Digest.of(second).encoded}").exists()


def test_a_disk_filled_by_others_mid_blob_says_what_the_blob_still_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The space was there when the blob started; another process took it meanwhile. The
    partial is a resumable prefix, and the message says how much more it needs."""
    from transfer.ingest import Ingest

    layout = Layout(tmp_path / "store")
    data = os.urandom(3 << 20)
    desc = Descriptor("application/octet-stream", Digest.of(data), len(data))
    real_put = Ingest._put

    def put(self: Ingest, offset: int, *args: object) -> bool:
        if offset >= 1 << 20:
            raise OSError(28, "No space left on device")
        return real_put(self, offset, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Ingest, "_put", put)
    with pytest.raises(StoreError) as caught:
        anyio.run(layout.put_blob, desc, _opener(data), lambda _: None)
    message = str(caught.value)
    assert f"needs {len(data) - (1 << 20)} more bytes" in message and " are free" in message
    assert "resumes" in message
    partial = layout.work / "partials" / f"sha256-{desc.digest.encoded}"
    assert partial.read_bytes() == data[: 1 << 20]


# ---- 15: temporaries of a dead writer ----------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_run_removes_a_dead_writers_temporaries_but_not_a_held_one(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    ref = _pull(registry, store, "small", images)
    partials = store / ".xfer" / "partials"
    dead = _dead_pid()
    orphan = partials / f".{'a' * 64}.{dead}.140234.tmp"
    orphan.write_bytes(b"x" * 1000)
    # Same dead pid (as another machine's writer on a shared store would look), but its lock
    # is held: someone is writing it.
    held = partials / f".{'b' * 64}.{dead}.140235.tmp"
    held.write_bytes(b"y" * 1000)
    mine = partials / f".{'c' * 64}.{os.getpid()}.140236.tmp"  # a live local writer
    mine.write_bytes(b"z")
    with locked_by_another_process(held):
        assert xfer("pull", ref, store=store).code == 0
        assert not orphan.exists()
        assert held.exists() and mine.exists()
    assert xfer("pull", ref, store=store).code == 0
    assert not held.exists() and mine.exists()


def test_gc_removes_a_dead_writers_create_once_leftovers_but_not_a_held_one(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    """create_once (the store's first oci-layout and index.json) killed between writing its
    temporary and removing it leaves ``.NAME.PID.N.new``: gone at the next store open, as
    the .tmp of a dead writer."""
    _pull(registry, store, "small", images)
    dead = _dead_pid()
    orphan = store / f".index.json.{dead}.140237.new"
    orphan.write_bytes(b'{"schemaVersion":2,"manifests":[]}')
    held = store / f".oci-layout.{dead}.140238.new"
    held.write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    with locked_by_another_process(held):
        run = xfer("gc", store=store)
        assert run.code == 0, run.err
        assert not orphan.exists()
        assert held.exists()
    assert xfer("gc", store=store).code == 0
    assert not held.exists()


def _held(path: str | Path) -> bool:
    """Whether someone holds the lock on ``path`` (probed from a descriptor of our own)."""
    probe = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(probe)


def test_create_once_holds_a_lock_on_its_temporary_until_it_is_removed(tmp_path: Path) -> None:
    from transfer import durable

    seen: list[bool] = []
    real = os.link

    def link(src: str | Path, dst: str | Path) -> None:
        seen.append(_held(src))
        real(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(durable.os, "link", link)
        durable.create_once(tmp_path / "f", b"data")
    assert seen == [True]
    assert (tmp_path / "f").read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_small_blob_write_holds_a_lock_on_its_temporary(tmp_path: Path) -> None:
    """What makes a temporary of a live writer on another machine recognisable."""
    from transfer import durable

    seen: list[bool] = []
    real = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        seen.append(_held(src))
        real(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(durable.os, "replace", replace)
        durable.atomic_write(tmp_path / "f", b"data", sync_dir=False)
    assert seen == [True]
    assert (tmp_path / "f").read_bytes() == b"data"


# ---- 16: temporaries at predictable names --------------------------------------------------------


@pytest.mark.parametrize("how", ["atomic_write", "atomic_write in tmp_dir", "create_once"])
def test_a_symlink_planted_at_a_durable_writes_temporary_name_is_never_written_through(
    tmp_path: Path, how: str
) -> None:
    from transfer import durable

    sentinel = tmp_path / "sentinel"
    sentinel.write_bytes(b"keep me\n")
    data = b"the new contents\n"
    target = tmp_path / "store" / "index.json"
    target.parent.mkdir()
    work = tmp_path / "store" / "work"
    work.mkdir()
    where = work if how.endswith("tmp_dir") else target.parent
    suffix = "new" if how == "create_once" else "tmp"
    # The name each writer chose: its pid and the id of the bytes it writes.
    planted = where / f".{target.name}.{os.getpid()}.{id(data)}.{suffix}"
    planted.symlink_to(sentinel)

    if how == "create_once":
        durable.create_once(target, data)
    else:
        durable.atomic_write(target, data, tmp_dir=work if how.endswith("tmp_dir") else None)

    assert sentinel.read_bytes() == b"keep me\n"
    assert target.read_bytes() == data and not target.is_symlink()
    assert planted.is_symlink() and planted.readlink() == sentinel  # someone else's: left alone
