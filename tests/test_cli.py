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
