"""The command line as a newcomer meets it: make demo's script, progress bars on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import ROOT, xfer


def test_demo_starts_a_registry_seeds_it_and_pulls_with_xfer(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fixtures.demo"],
        cwd=ROOT,
        env={**os.environ, "XFER_DEMO_DIR": str(tmp_path / "demo")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    digests = re.findall(r"^sha256:[0-9a-f]{64}$", done.stdout, re.MULTILINE)
    assert len(digests) >= 2
    assert "checked 14 blobs" in done.stderr and ": ok" in done.stderr


def test_progress_bar_is_drawn_on_a_terminal(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "transfer", "pull", "--store", str(store)),
            f"{registry.host}/{images.images['large'].ref}",
        ],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    os.close(slave)
    screen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not data:
            break
        screen += data
    out, _ = process.communicate(timeout=60)
    os.close(master)
    assert process.returncode == 0
    assert out.decode().strip() == images.images["large"].digest
    assert b"\r" in screen and b"B/s" in screen  # tqdm redraws one line with a rate


def test_help_lists_every_command() -> None:
    run = xfer("--help")
    assert run.code == 0
    for command in ("pull", "images", "inspect", "tags", "rm", "gc", "verify"):
        assert command in run.out


def test_unknown_option_is_a_usage_error_in_one_line() -> None:
    run = xfer("pull", "--no-such-flag", "x")
    assert run.code == 2
    assert len(run.err.strip().splitlines()) == 1


def test_every_line_reaches_a_pipe_and_the_exit_code_the_shell_without_interpreter_teardown(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    """The command exits without tearing the interpreter down (transfer.cli.run): what it
    printed is flushed first, whatever is buffered, and its exit code is the command's."""
    info = images.images["multi"]
    ref = f"{registry.host}/{info.ref}"
    done = subprocess.run(
        [sys.executable, "-m", "transfer", "pull", "--json", "--store", str(tmp_path), ref],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["digest"].startswith("sha256:")
    assert sum(e["event"] == "blob_done" for e in events) == (
        events[-1]["blobs_transferred"] + events[-1]["blobs_skipped"]
    )

    command = [sys.executable, "-m", "transfer", "pull", "--retries", "0"]
    failed = subprocess.run(
        [*command, "--store", str(tmp_path), "localhost:1/x:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == [failed.stderr.strip()]  # one line, and all of it
    assert failed.stderr.startswith("xfer: error: cannot connect to localhost:1")


# ---- each command offers the flags it uses, and only those -------------------------------------

NET = ["--plain-http", "--insecure", "--ca-file=ca.pem", "--creds=u:p", "-u=me", "--password-stdin"]
NET_TRANSFER = [
    "--retries=1",
    "--timeout=5",
    "--limit-rate=1M",
    "--parallel-ranges=2",
    "--range-threshold=1M",
]
PLATFORMS = ["--platform=linux/arm64", "--all-platforms"]
OUTPUT = ["--json", "-q"]
ARGS = {  # each command's positional arguments
    "pull": ["r.example.com/a:1"],
    "push": ["r.example.com/a:1"],
    "copy": ["r.example.com/a:1", "oci:out"],
    "mirror": ["sync.yaml", "r.example.com"],
    "save": ["a:1", "-o", "out.tar"],
    "load": ["in.tar"],
    "unpack": ["a:1", "rootfs"],
    "images": [],
    "inspect": ["r.example.com/a:1"],
    "rm": ["a:1"],
    "gc": [],
    "verify": [],
    "tags": ["r.example.com/a"],
    "login": ["r.example.com"],
    "logout": ["r.example.com"],
}
MOVERS = ("pull", "push", "copy", "save")
ACCEPTED = [
    *[
        (c, f)
        for c in MOVERS
        for f in ["--store=s", *OUTPUT, *NET, "-j=2", *NET_TRANSFER, *PLATFORMS]
    ],
    *[("mirror", f) for f in [*OUTPUT, *NET, "-j=2", *NET_TRANSFER, *PLATFORMS, "--scoped"]],
    *[("load", f) for f in ["--store=s", *OUTPUT, "-j=2", *PLATFORMS, "--name=b:2"]],
    *[("unpack", f) for f in ["--store=s", *OUTPUT, "--platform=linux/arm64", "--force"]],
    *[(c, f) for c in ("images", "rm", "gc", "verify") for f in ["--store=s", *OUTPUT, "--debug"]],
    *[("inspect", f) for f in ["--store=s", *NET, "--raw"]],
    *[("tags", f) for f in [*NET, "--debug"]],
    *[("login", f) for f in [*NET, "-q"]],
    ("logout", "--debug"),
]
REFUSED = [
    *[("load", f) for f in [*NET, *NET_TRANSFER]],  # an archive on disk: no network
    *[("unpack", f) for f in [*NET, "-j=2", *NET_TRANSFER, "--all-platforms"]],
    *[
        (c, f)
        for c in ("images", "rm", "gc", "verify")
        for f in [*NET, "-j=2", *NET_TRANSFER, *PLATFORMS]
    ],
    *[("inspect", f) for f in ["-j=2", *NET_TRANSFER, *PLATFORMS, *OUTPUT]],
    *[("tags", f) for f in ["--store=s", *OUTPUT, "-j=2", *NET_TRANSFER, *PLATFORMS]],
    *[("login", f) for f in ["--store=s", "--json", "-j=2", *NET_TRANSFER, *PLATFORMS]],
    *[("logout", f) for f in ["--store=s", *OUTPUT, *NET, "-j=2", *NET_TRANSFER, *PLATFORMS]],
    ("mirror", "--store=s"),  # registry to registry: nothing passes through the store
]


@pytest.mark.parametrize(("command", "flag"), ACCEPTED, ids=[f"{c} {f}" for c, f in ACCEPTED])
def test_a_command_offers_the_flags_it_uses(command: str, flag: str) -> None:
    from transfer.cli import build_parser

    extra = (
        ["-u=me"] if flag == "--password-stdin" else ["--password-stdin"] if flag == "-u=me" else []
    )
    args = build_parser().parse_args([command, flag, *extra, *ARGS[command]])
    assert args.command == command


@pytest.mark.parametrize(("command", "flag"), REFUSED, ids=[f"{c} {f}" for c, f in REFUSED])
def test_a_command_refuses_the_flags_it_does_not_use(
    command: str, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from transfer.cli import main

    assert main([command, flag, *ARGS[command]]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unrecognized arguments" in error


def test_load_with_a_network_flag_exits_2_naming_it(tmp_path: Path) -> None:
    run = xfer("load", "--timeout", "5", tmp_path / "in.tar", store=tmp_path / "store")
    assert run.code == 2
    assert "--timeout" in run.err and not (tmp_path / "store").exists()
