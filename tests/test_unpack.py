"""xfer unpack: layers applied into a rootfs, safely (reliability cases 26-38), and as umoci does.

Each hostile case runs with the working directory set to a "host" directory holding a sentinel
file, a directory outside the target and a sibling whose name extends the target's; after every
case, success or failure, the host must be exactly as it was. Hostile layers are built here with
tarfile and written as OCI layouts (fixtures/hostile.py), so no registry is involved.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import zstandard

from fixtures.hostile import (
    LAYER_TYPES,
    Layer,
    Member,
    bomb,
    directory,
    file,
    hardlink,
    layer,
    make_tar,
    sha256,
    symlink,
    write_image,
    write_index,
)
from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import ROOT, peak_rss, run_bounded, xfer
from transfer.api import Settings, unpack, unpack_sync
from transfer.endpoints.address import parse_address
from transfer.endpoints.layout import Layout
from transfer.endpoints.transports import Context, open_source
from transfer.errors import TransferError
from transfer.manifest import Platform
from transfer.session import Session
from transfer.unpack import (
    LayoutBlobs,
    UnpackOptions,
    UnpackResult,
    unpack_blobs,
    unpack_image,
)

REF = "localhost/hostile:1"
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")


# ---- the host around the target ------------------------------------------------------------


@dataclass
class Host:
    base: Path  # stands for the host's filesystem; also the working directory

    @property
    def sentinel(self) -> Path:
        return self.base / "sentinel"

    @property
    def outside(self) -> Path:
        return self.base / "outside"

    @property
    def evil(self) -> Path:  # its name starts with the target's: /x/root vs /x/root-evil
        return self.base / "root-evil"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def layout(self) -> Path:
        return self.base / "layout"

    def inside(self, path: Path | str) -> Path:
        """Where an absolute host path lands when re-rooted at the target."""
        return self.root / str(path).lstrip("/")

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        """Everything of the host but the target and the layout, as lstat and contents see it."""
        found: dict[str, tuple[Any, ...]] = {}
        for path in sorted(self.base.rglob("*")):
            rel = path.relative_to(self.base)
            if rel.parts[0] in ("root", "layout"):
                continue
            st = path.lstat()
            body = (
                os.readlink(path)
                if path.is_symlink()
                else hashlib.sha256(path.read_bytes()).hexdigest()
                if stat.S_ISREG(st.st_mode)
                else None
            )
            found[str(rel)] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_mtime_ns, body)
        return found


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    h = Host(tmp_path / "host")
    for where in (h.base, h.outside, h.evil):
        where.mkdir(parents=True)
        (where / "sentinel").write_text("host data\n")
        os.chmod(where / "sentinel", 0o600)
    monkeypatch.chdir(h.base)  # a path resolved against the cwd would find the sentinel
    before = h.snapshot()
    yield h
    assert h.snapshot() == before, "something outside the target changed"
    leftovers = [p.name for p in h.base.iterdir() if ".xfer-" in p.name]
    assert not leftovers, f"partial rootfs left behind: {leftovers}"


LayerSpec = list[Member] | bytes | Layer


def _layer(spec: LayerSpec) -> Layer:
    return spec if isinstance(spec, Layer) else layer(spec)


def apply(host: Host, *layers: LayerSpec, **options: Any) -> UnpackResult:
    write_image(host.layout, REF, [_layer(spec) for spec in layers])
    return unpack_sync(
        f"store:{REF}", host.root, Settings(store=host.layout), options=UnpackOptions(**options)
    )


def refused(host: Host, *layers: LayerSpec, **options: Any) -> str:
    """The layers fail as a clean TransferError (exit 1) and leave no rootfs; its message."""
    with pytest.raises(TransferError) as caught:
        apply(host, *layers, **options)
    assert caught.value.exit_code == 1
    assert not host.root.exists(), "a failed unpack must not leave the rootfs in place"
    return str(caught.value)


# ---- 27-32, 37: names, symlinks and hardlinks stay inside ------------------------------------


def test_27_dot_dot_names_land_inside_the_root(host: Host) -> None:
    apply(host, [file("../x", "1"), file("a/../../y", "2"), file("/../z", "3"), file("../../../w")])
    assert sorted(p.name for p in host.root.iterdir()) == ["w", "x", "y", "z"]
    assert (host.root / "y").read_text() == "2"


def test_27_absolute_names_are_rerooted(host: Host) -> None:
    apply(host, [file(str(host.sentinel), "pwned"), file("/etc/passwd-like", "root:x:0:0")])
    assert host.inside(host.sentinel).read_text() == "pwned"
    assert (host.root / "etc/passwd-like").read_text() == "root:x:0:0"


def test_28_absolute_symlink_is_kept_and_written_through_inside(host: Host) -> None:
    apply(host, [symlink("l", str(host.outside)), file("l/f", "through")])
    assert os.readlink(host.root / "l") == str(host.outside)  # kept as the image wrote it
    assert host.inside(host.outside / "f").read_text() == "through"


def test_29_symlink_to_slash_then_a_path_through_it(host: Host) -> None:
    apply(host, [symlink("foo", "/"), file(f"foo{host.sentinel}", "pwned")])
    assert host.inside(host.sentinel).read_text() == "pwned"


def test_29_lower_layer_symlink_to_slash_dot(host: Host) -> None:
    apply(host, [symlink("l", "/.")], [file(f"l/{host.sentinel}", "pwned")])
    assert host.inside(host.sentinel).read_text() == "pwned"


def test_29_chain_of_symlinks_climbing_stops_at_the_root(host: Host) -> None:
    apply(
        host,
        [
            symlink("a", "b"),
            symlink("b", "deep/d"),
            directory("deep"),
            symlink("deep/d", "../../../../../../.."),
            file(f"a{host.sentinel}", "pwned"),
        ],
    )
    assert host.inside(host.sentinel).read_text() == "pwned"


def test_29_symlink_loop_fails_cleanly(host: Host) -> None:
    message = refused(host, [symlink("a", "b"), symlink("b", "a"), file("a/x")])
    assert "symlink" in message


def test_30_hardlink_climbing_out_is_refused(host: Host) -> None:
    message = refused(host, [hardlink("h", f"../../../../../..{host.sentinel}")])
    assert "no such file in the image" in message


def test_30_absolute_hardlink_to_a_host_file_is_refused(host: Host) -> None:
    refused(host, [hardlink("h", str(host.sentinel))])


def test_30_hardlink_is_never_relative_to_the_working_directory(host: Host) -> None:
    assert Path("sentinel").exists()  # the cwd holds one: a cwd-relative link would find it
    refused(host, [hardlink("h", "sentinel")])


def test_30_absolute_hardlink_resolves_inside_the_root(host: Host) -> None:
    apply(host, [file(str(host.sentinel), "inside"), hardlink("h", str(host.sentinel))])
    assert (host.root / "h").read_text() == "inside"
    assert (host.root / "h").stat().st_ino == host.inside(host.sentinel).stat().st_ino


def test_30_hardlink_through_a_symlinked_dir_resolves_inside(host: Host) -> None:
    apply(
        host,
        [symlink("d", str(host.base)), file(str(host.sentinel), "in"), hardlink("h", "d/sentinel")],
    )
    assert (host.root / "h").stat().st_ino == host.inside(host.sentinel).stat().st_ino


def test_30_hardlink_to_a_symlink_links_the_symlink_itself(host: Host) -> None:
    apply(host, [symlink("s", str(host.sentinel)), hardlink("h", "s")])
    assert os.readlink(host.root / "h") == str(host.sentinel)
    assert (host.root / "h").lstat().st_ino == (host.root / "s").lstat().st_ino


def test_31_symlink_metadata_never_reaches_its_target(host: Host) -> None:
    apply(
        host,
        [
            symlink("l", str(host.sentinel), mode=0o777, uid=4242, gid=4242, mtime=0),
            symlink("l", str(host.sentinel), mode=0o4777, uid=1, gid=1),  # a duplicate
            hardlink("h", "l", mode=0o4777, uid=7),
            symlink("rel", "../sentinel", mode=0o777, uid=4242),
        ],
    )
    assert os.readlink(host.root / "l") == str(host.sentinel)
    # the host fixture checks that the sentinel's mode, owner and times did not move


def test_31_directory_entry_over_a_symlink_to_a_host_dir(host: Host) -> None:
    apply(host, [symlink("d", str(host.outside)), directory("d", mode=0o777, uid=4242)])
    assert not (host.root / "d").is_symlink()
    assert stat.S_IMODE((host.root / "d").stat().st_mode) == 0o777


def test_32_a_sibling_whose_name_extends_the_target_is_outside(host: Host) -> None:
    apply(
        host,
        [
            symlink("e", "../root-evil"),
            file("e/x", "1"),
            symlink("f", str(host.evil)),
            file("f/y", "2"),
        ],
    )
    assert (host.root / "root-evil/x").read_text() == "1"
    assert host.inside(host.evil / "y").read_text() == "2"


def test_32_hardlink_into_the_sibling_is_refused(host: Host) -> None:
    refused(host, [hardlink("h", "../root-evil/sentinel")])


def test_37_absolute_symlinks_that_tarfile_data_filter_rejects_are_kept(host: Host) -> None:
    apply(host, [symlink("bin/sh", "/bin/busybox"), symlink("lib64", "/usr/lib")])
    assert os.readlink(host.root / "bin/sh") == "/bin/busybox"
    assert os.readlink(host.root / "lib64") == "/usr/lib"


def test_37_deep_symlink_climbing_from_nested_dirs_stays_inside(host: Host) -> None:
    deep = "/".join(f"d{i:02}" + "x" * 100 for i in range(20))
    apply(
        host,
        [
            directory(deep),
            symlink(f"{deep}/up", "../" * 40 + str(host.base).lstrip("/")),
            file(f"{deep}/up/sentinel", "pwned"),
        ],
    )
    assert host.inside(host.sentinel).read_text() == "pwned"


# ---- 33: whiteouts ---------------------------------------------------------------------------


def test_33_whiteout_removes_a_symlink_not_its_target(host: Host) -> None:
    apply(
        host,
        [symlink("l", str(host.sentinel)), file("t", "kept"), symlink("m", "t")],
        [file(".wh.l"), file(".wh.m")],
    )
    assert sorted(p.name for p in host.root.iterdir()) == ["t"]


def test_33_whiteout_of_a_directory_removes_it_whole(host: Host) -> None:
    apply(host, [file("a/x"), file("a/sub/y"), file("b")], [file(".wh.a")])
    assert sorted(p.name for p in host.root.iterdir()) == ["b"]


def test_33_whiteout_under_a_symlinked_parent_stays_inside(host: Host) -> None:
    apply(
        host,
        [symlink("d", str(host.base)), file(str(host.sentinel), "inside")],
        [file("d/.wh.sentinel")],
    )
    assert not host.inside(host.sentinel).exists()


@pytest.mark.parametrize("marker_first", [True, False], ids=["marker-first", "marker-last"])
def test_33_opaque_hides_lower_layers_wherever_it_sits(host: Host, marker_first: bool) -> None:
    lower = [file("b/old"), file("b/sub/old"), file("b/sub/lower"), file("keep")]
    own = [file("b/new", "new"), file("b/sub/new")]
    marker = [file("b/.wh..wh..opq")]
    apply(host, lower, marker + own if marker_first else own + marker, [file("b/later")])
    assert sorted(str(p.relative_to(host.root)) for p in host.root.rglob("*")) == [
        "b",
        "b/later",
        "b/new",
        "b/sub",
        "b/sub/new",
        "keep",
    ]


@pytest.mark.parametrize("whiteout_first", [True, False], ids=["whiteout-first", "whiteout-last"])
def test_33_whiteout_spares_its_own_layers_entry(host: Host, whiteout_first: bool) -> None:
    own = [file("a/x", "upper")]
    out = [file("a/.wh.x")]
    apply(host, [file("a/x", "lower")], out + own if whiteout_first else own + out)
    assert (host.root / "a/x").read_text() == "upper"


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        (file("a/.wh."), "names nothing"),
        (file("a/.wh.."), "names nothing"),
        (file("a/.wh..."), "names nothing"),  # ".." : would remove a's parent
        (file(".wh...", mode=0o644), "names nothing"),  # ... and the root's: the host
        (file("a/.wh.x", "content"), "has content"),
        (symlink("a/.wh.x", "y"), "is not an empty file"),
    ],
    ids=["bare", "dot", "dot-dot", "dot-dot-at-root", "with-content", "symlink"],
)
def test_33_malformed_whiteouts_are_errors(host: Host, entry: Member, error: str) -> None:
    assert error in refused(host, [file("a/x")], [entry])


# ---- 34: devices, FIFOs, setuid --------------------------------------------------------------


DEVICES = [
    Member("dev/null", "chr", device=(1, 3), mode=0o666),
    Member("dev/sda", "blk", device=(8, 0), mode=0o660),
    hardlink("dev/null-again", "dev/null"),
]


def test_34_device_nodes_are_skipped_by_default(host: Host) -> None:
    result = apply(host, [*DEVICES, file("ok")])
    assert sorted(p.name for p in host.root.iterdir()) == ["ok"]
    assert result.skipped == 3


@needs_root
def test_34_devices_as_root_are_made_inside_the_root_only(host: Host) -> None:
    apply(host, DEVICES, devices=True)
    null = (host.root / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK((host.root / "dev/sda").lstat().st_mode)


def test_34_devices_without_root_are_a_usage_error(host: Host) -> None:
    with pytest.raises(TransferError) as caught:
        apply(host, DEVICES, devices=True, privileged=False)
    assert caught.value.exit_code == 2


def test_34_rootless_strips_setuid_and_skips_fifos(host: Host) -> None:
    result = apply(
        host,
        [
            file("bin/su", mode=0o4755),
            file("bin/sg", mode=0o2711),
            directory("tmp", mode=0o1777),
            Member("run/fifo", "fifo", mode=0o644),
        ],
        privileged=False,
    )
    assert stat.S_IMODE((host.root / "bin/su").stat().st_mode) == 0o755
    assert stat.S_IMODE((host.root / "bin/sg").stat().st_mode) == 0o711
    assert stat.S_IMODE((host.root / "tmp").stat().st_mode) == 0o1777  # sticky is harmless
    assert not (host.root / "run/fifo").exists() and result.skipped == 1


@needs_root
def test_34_root_keeps_setuid_owners_and_fifos(host: Host) -> None:
    apply(host, [file("bin/su", mode=0o4755, uid=0), file("home/u", uid=1000, gid=100)])
    assert stat.S_IMODE((host.root / "bin/su").stat().st_mode) == 0o4755
    assert (host.root / "home/u").stat().st_uid == 1000
    apply(host, [Member("run/fifo", "fifo")], force=True)
    assert stat.S_ISFIFO((host.root / "run/fifo").lstat().st_mode)


# ---- 35: replacements ------------------------------------------------------------------------


def test_35_file_replaced_by_a_directory(host: Host) -> None:
    apply(host, [file("x", "file")], [directory("x"), file("x/f", "in dir")])
    assert (host.root / "x/f").read_text() == "in dir"


def test_35_directory_replaced_by_a_file(host: Host) -> None:
    apply(host, [file("d/f"), file("d/sub/g")], [file("d", "now a file")])
    assert (host.root / "d").read_text() == "now a file"


def test_35_directory_over_a_symlink_replaces_the_symlink(host: Host) -> None:
    apply(host, [symlink("l", str(host.outside))], [directory("l", mode=0o700), file("l/f")])
    assert (host.root / "l").is_dir() and not (host.root / "l").is_symlink()
    assert (host.root / "l/f").exists()


def test_35_file_over_a_symlink_replaces_the_symlink(host: Host) -> None:
    apply(host, [symlink("l", str(host.sentinel)), file("l", "pwned")])
    assert not (host.root / "l").is_symlink()
    assert (host.root / "l").read_text() == "pwned"


def test_35_symlink_over_a_directory_replaces_it(host: Host) -> None:
    apply(host, [file("d/f")], [symlink("d", str(host.outside))])
    assert os.readlink(host.root / "d") == str(host.outside)


def test_35_duplicate_entries_the_last_wins(host: Host) -> None:
    apply(
        host,
        [
            file("f", "one"),
            file("f", "two", mode=0o600),
            directory("d", mode=0o700),
            directory("d", mode=0o750),
            hardlink("f", "f"),  # a link onto itself changes nothing
        ],
    )
    assert (host.root / "f").read_text() == "two"
    assert stat.S_IMODE((host.root / "f").stat().st_mode) == 0o600
    assert stat.S_IMODE((host.root / "d").stat().st_mode) == 0o750


def test_35_a_file_as_a_parent_directory_fails_cleanly(host: Host) -> None:
    assert "Not a directory" in refused(host, [file("x"), file("x/f")])


def test_35_read_only_directories_do_not_block_later_entries(host: Host) -> None:
    apply(host, [directory("ro", mode=0o555), file("ro/f")], [file("ro/g")], privileged=False)
    assert sorted(p.name for p in (host.root / "ro").iterdir()) == ["f", "g"]
    assert stat.S_IMODE((host.root / "ro").stat().st_mode) == 0o555


# ---- 36: bounded failures --------------------------------------------------------------------


def _corrupt_middle() -> bytes:
    good = make_tar([file("a", "1"), file("b", "2")])
    return good[:1024] + b"\x01" * 512 + good[1024:]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ([file("f", pax={"comment": "x" * (2 << 20)})], "extended tar header"),
        (
            make_tar([Member("f", tarfile.XHDTYPE.decode(), size=1 << 40)], tarfile.GNU_FORMAT),
            "1099511627776-byte",
        ),
        (make_tar([Member("f", size=-512)], tarfile.GNU_FORMAT), "negative size"),
        ([file("f", pax={"size": "-1"})], "negative size"),
        (make_tar([Member("s", "S", data=b"x" * 512)], tarfile.GNU_FORMAT), "sparse"),
        ([file("f", pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0"})], "sparse"),
        (_corrupt_middle(), "corrupt tar header"),
        (
            Layer(
                layer([file("f", os.urandom(4096))]).blob[:-100], LAYER_TYPES["gzip"], sha256(b"")
            ),
            "not valid gzip",
        ),
        (Layer(layer(b"\0" * 1024, "zstd").blob, LAYER_TYPES["tar"], sha256(b"")), "is zstd"),
    ],
    ids=[
        "huge-pax-header",
        "pax-header-claiming-a-terabyte",
        "negative-size",
        "negative-pax-size",
        "gnu-sparse",
        "pax-sparse",
        "corrupt-header-mid-archive",
        "truncated-gzip",
        "media-type-disagrees-with-magic",
    ],
)
def test_36_malformed_layers_fail_cleanly(host: Host, spec: LayerSpec, error: str) -> None:
    assert error in refused(host, spec)


def test_36_more_entries_than_the_cap_fail(host: Host) -> None:
    assert "more than 10 entries" in refused(
        host, [file(f"f{i}") for i in range(11)], max_entries=10
    )


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_36_bombs_stop_at_max_size(host: Host, compression: str) -> None:
    message = refused(host, bomb(64 << 20, compression), max_size=8 << 20)
    assert "--max-size" in message


def test_36_zstd_frame_asking_for_a_huge_window_is_refused(host: Host) -> None:
    tar = make_tar([file("f", "x" * 1000)])
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=31, write_content_size=False
    )
    writer = zstandard.ZstdCompressor(compression_params=params).compressobj()
    blob = writer.compress(tar) + writer.flush()
    assert "too much memory" in refused(host, Layer(blob, LAYER_TYPES["zstd"], sha256(tar)))


def test_36_memory_stays_flat_for_a_big_file_and_for_a_bomb(host: Host) -> None:
    write_image(host.layout, REF, [bomb(256 << 20, "zstd")])
    for args, code in (([], 0), (["--max-size", "64Mi", "--force"], 1)):
        command = [sys.executable, "-m", "transfer", "unpack", "--store", str(host.layout)]
        run, peak_mib, _, _ = peak_rss(
            [*command, REF, "root", *args],
            cwd=host.base,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
        assert run.returncode == code, run.stderr
        assert peak_mib < 120, f"{peak_mib:.0f} MiB for a 256 MiB file"
    assert (host.root / "zeros").stat().st_size == 256 << 20  # the failed --force kept it
    shutil.rmtree(host.root)


# ---- 26 and 38: complete or absent -----------------------------------------------------------


def test_26_diff_id_mismatch_exits_1_and_leaves_no_rootfs(host: Host) -> None:
    good = layer([file("a", "1")])
    write_image(host.layout, REF, [good], diff_ids=[sha256(b"something else")])
    run = xfer("unpack", REF, host.root, store=host.layout)
    assert run.code == 1
    assert "diff_id" in run.err and len(run.err.strip().splitlines()) == 1
    assert not host.root.exists()


def test_26_config_listing_fewer_diff_ids_than_layers_fails(host: Host) -> None:
    write_image(host.layout, REF, [layer([file("a")]), layer([file("b")])], diff_ids=[])
    with pytest.raises(TransferError, match="diff_ids"):
        unpack_sync(REF, host.root, Settings(store=host.layout))
    assert not host.root.exists()


def test_a_corrupt_stored_layer_is_detected(host: Host) -> None:
    write_image(host.layout, REF, [layer([file("a", "1" * 1000)], "tar")])
    blob = max((host.layout / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[600] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(TransferError, match="digest mismatch"):
        unpack_sync(REF, host.root, Settings(store=host.layout))
    assert not host.root.exists()


_DIE_ON_THIRD_FILE = """
import os, signal, sys
from transfer.unpack import _Applier
original = _Applier._file
seen = []
def dying(self, *args):
    seen.append(1)
    if len(seen) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args)
_Applier._file = dying
from transfer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_38_killed_mid_unpack_is_not_complete_and_a_rerun_redoes_it(host: Host) -> None:
    write_image(host.layout, REF, [layer([file(f"f{i}", str(i)) for i in range(10)])])
    args = ["unpack", "--store", str(host.layout), REF, str(host.root)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(
        [sys.executable, "-c", _DIE_ON_THIRD_FILE, *args], env=env, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL
    assert not host.root.exists()  # never reported complete
    assert [p.name for p in host.base.glob(".root.xfer-partial-*")]  # what the kill left
    rerun = xfer(*args)
    assert rerun.code == 0, rerun.err
    assert sorted(p.name for p in host.root.iterdir()) == sorted(f"f{i}" for i in range(10))
    assert not list(host.base.glob(".root.xfer-*"))  # the stale partial is gone


_CTRL_C_ON_THIRD_FILE = """
import os, signal, sys, time
from transfer.unpack import _Applier
original = _Applier._file
seen = []
def interrupted(self, *args):
    seen.append(1)
    if len(seen) == 3:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the main thread takes the signal meanwhile
    return original(self, *args)
_Applier._file = interrupted
from transfer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_38_ctrl_c_stops_the_unpack_and_removes_its_partial(host: Host) -> None:
    write_image(host.layout, REF, [layer([file(f"f{i}", str(i)) for i in range(10)])])
    args = ["unpack", "--store", str(host.layout), REF, str(host.root)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", _CTRL_C_ON_THIRD_FILE, *args], env=env, capture_output=True
    )
    assert run.returncode == 130, run.stderr
    assert not host.root.exists()  # the worker stopped before renaming it into place


def test_38_cancelled_unpack_removes_its_partial(host: Host) -> None:
    write_image(host.layout, REF, [layer([file(f"f{i}", os.urandom(4096)) for i in range(50)])])
    calls = []

    def interrupt() -> None:  # as anyio's check_cancelled raises in the worker thread
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        blobs = LayoutBlobs(Layout(host.layout), in_store=True)
        unpack_blobs(blobs, REF, REF, host.root, check=interrupt)
    assert not host.root.exists()


def test_38_an_unpack_cancelled_before_its_thread_started_returns_and_makes_nothing(
    host: Host,
) -> None:
    """anyio never runs a call cancelled before a worker thread took it: the cancelled unpack
    must not wait for that thread to finish (it waited for ever), and nothing is unpacked
    later."""
    write_image(host.layout, REF, [layer([file("a", "image")])])
    settings = Settings(store=host.layout)

    async def main() -> bool:
        async with (
            Session(settings) as session,
            open_source(parse_address(f"store:{REF}"), Context(session, settings)) as reading,
        ):
            with anyio.CancelScope() as scope:
                scope.cancel()
                await unpack_image(reading, host.root)
        return scope.cancelled_caught

    assert run_bounded(main, 15, "the cancelled unpack") is True
    time.sleep(0.3)  # a thread that ran the unpack after all would make the rootfs meanwhile
    assert not host.root.exists()


def test_38_a_live_partial_of_another_run_is_left_alone(host: Host) -> None:
    live = host.base / ".root.xfer-partial-live"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        apply(host, [file("a")])
        assert live.exists()
    finally:
        os.close(fd)
        live.rmdir()


def test_non_empty_dir_is_refused_unless_force(host: Host) -> None:
    host.root.mkdir()
    (host.root / "mine").write_text("user data")
    write_image(host.layout, REF, [layer([file("a", "image")])])
    run = xfer("unpack", REF, host.root, store=host.layout)
    assert run.code == 2 and "--force" in run.err
    assert (host.root / "mine").exists()
    assert xfer("unpack", "--force", REF, host.root, store=host.layout).code == 0
    assert sorted(p.name for p in host.root.iterdir()) == ["a"]


def test_an_existing_empty_dir_is_filled(host: Host) -> None:
    host.root.mkdir()
    apply(host, [file("a")])
    assert (host.root / "a").exists()


# ---- formats, platforms, store ---------------------------------------------------------------


def test_gzip_zstd_and_plain_tar_layers_apply_in_order(host: Host) -> None:
    write_image(
        host.layout,
        REF,
        [
            layer([file("a", "gzip"), file("b", "gzip")], "gzip"),
            layer([file("b", "zstd"), file("c", "zstd")], "zstd"),
            layer([file("c", "tar")], "tar"),
        ],
    )
    run = xfer("unpack", f"store:{REF}", host.root, "--json", store=host.layout)
    assert run.code == 0, run.err
    done = run.json_lines()[-1]
    assert done["event"] == "done" and done["layers"] == 3
    assert [(host.root / n).read_text() for n in "abc"] == ["gzip", "zstd", "tar"]


def test_index_is_narrowed_to_the_platform(host: Host) -> None:
    write_index(
        host.layout,
        REF,
        {
            "linux/amd64": [layer([file("arch", "amd64")])],
            "linux/arm64": [layer([file("arch", "arm64")])],
        },
    )
    settings = Settings(store=host.layout)
    unpack_sync(REF, host.root, settings, platform=Platform.parse("linux/arm64"))
    assert (host.root / "arch").read_text() == "arm64"
    shutil.rmtree(host.root)
    with pytest.raises(TransferError, match=r"no image for linux/s390x.*offered: linux/amd64"):
        unpack_sync(REF, host.root, settings, platform=Platform.parse("linux/s390x"))
    here = Platform.current().architecture
    if here in ("amd64", "arm64"):
        unpack_sync(REF, host.root, settings)
        assert (host.root / "arch").read_text() == here
        shutil.rmtree(host.root)


def test_an_image_missing_from_the_store_hints_pull(host: Host) -> None:
    run = xfer("unpack", "example.com/nothing:1", host.root, store=host.layout)
    assert run.code == 1
    assert "not in the store" in run.err and "xfer pull example.com/nothing:1" in run.err


def test_async_api_unpacks_off_the_event_loop(host: Host) -> None:
    write_image(host.layout, REF, [layer([file("a", "async")])])

    async def main() -> UnpackResult:
        return await unpack(REF, host.root, Settings(store=host.layout))

    result = anyio.run(main)
    assert result.layers == 1 and (host.root / "a").read_text() == "async"


# ---- the same tree as umoci ------------------------------------------------------------------


def tree(root: Path) -> dict[str, Any]:
    """Every entry below root: type, mode, mtime, content or link target; hardlink groups."""
    entries: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for path in sorted(root.rglob("*")):
        rel, st = str(path.relative_to(root)), path.lstat()
        if stat.S_ISLNK(st.st_mode):
            entries[rel] = ("symlink", os.readlink(path), st.st_mtime_ns)
            continue
        body = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        entries[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns, body)
        if stat.S_ISREG(st.st_mode):
            inodes.setdefault(st.st_ino, []).append(rel)
    links = sorted(names for names in inodes.values() if len(names) > 1)
    return {"entries": entries, "hardlinks": links}


def umoci_unpack(layout: Path, name: str, dest: Path) -> None:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    subprocess.run(
        ["umoci", "raw", "unpack", "--rootless", "--image", f"{layout}:{name}", str(dest)],
        check=True,
        capture_output=True,
    )


def test_whiteouts_image_unpacks_as_umoci_does(images: BuiltImages, tmp_path: Path) -> None:
    run = xfer("unpack", f"oci:{images.layout}:whiteouts", tmp_path / "xfer")
    assert run.code == 0, run.err
    umoci_unpack(images.layout, "whiteouts", tmp_path / "umoci")
    ours, theirs = tree(tmp_path / "xfer"), tree(tmp_path / "umoci")
    assert ours == theirs
    assert "a/gone" not in ours["entries"] and "b/old1" not in ours["entries"]
    assert ours["hardlinks"] == [["c/data", "c/hard"]]


def test_tricky_but_legal_layers_unpack_as_umoci_does(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layers = [
        layer(
            [
                directory("etc"),
                file("etc/conf", "v1"),
                directory("bin"),
                file("bin/tool", "#!/bin/sh\n", mode=0o755),
                symlink("bin/sh", "/bin/busybox"),
                directory("data", mode=0o700),
                file("data/a"),
                directory("data/sub"),
                file("data/sub/b"),
                file("x", "file"),
                directory("y"),
                file("y/old"),
                directory("ro", mode=0o555),
                file("ro/f", mode=0o444),
            ]
        ),
        layer(
            [
                directory("data", mode=0o750),
                file("data/new", "new"),
                file("data/.wh..wh..opq"),
                directory("x"),
                file("x/now-a-dir"),
                file("y", "now a file"),
                file("etc/.wh.conf"),
                hardlink("bin/tool2", "bin/tool"),
                symlink("etc/abs", "/etc/conf"),
            ],
            "gzip",  # umoci 0.4 reads no zstd
        ),
        layer([file("etc/conf", "v3", mode=0o600), file("etc/.wh.abs")], "tar"),
    ]
    write_image(layout, "tricky", layers)
    run = xfer("unpack", f"oci:{layout}:tricky", tmp_path / "xfer")
    assert run.code == 0, run.err
    umoci_unpack(layout, "tricky", tmp_path / "umoci")
    assert tree(tmp_path / "xfer") == tree(tmp_path / "umoci")


def test_a_pulled_image_unpacks_from_the_store_as_umoci_unpacks_it(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    ref = f"{registry.host}/{images.images['whiteouts'].ref}"
    assert xfer("pull", ref, store=store).code == 0
    run = xfer("unpack", ref, tmp_path / "xfer", store=store)  # a bare REF reads the store
    assert run.code == 0, run.err
    assert run.out.strip() == images.images["whiteouts"].digest
    umoci_unpack(store, ref, tmp_path / "umoci")
    assert tree(tmp_path / "xfer") == tree(tmp_path / "umoci")
