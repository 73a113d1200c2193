"""Helpers for the resilience tests: background `xfer` processes, partial files, proxy records."""

from __future__ import annotations

import email.utils
import json
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Unpack

from fixtures.faultproxy import FaultOptions, FaultProxy, Record, Reply, RequestInfo, Status
from tests.helpers import stored_blobs, xfer, xfer_env

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def spawn_xfer(*args: str | Path, store: Path) -> subprocess.Popen[str]:
    """Start ``python -m transfer ARGS --store STORE`` in the background (stdout/err piped)."""
    command = [sys.executable, "-m", "transfer", *map(str, args), "--store", str(store)]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=xfer_env(),
    )


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.01,
    what: str = "condition",
    process: subprocess.Popen[str] | None = None,
) -> None:
    """Poll until ``condition()`` holds; fails early if ``process`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"xfer exited ({process.returncode}) before {what}: {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop(process: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str, str]:
    """Send ``sig``, wait for the exit; returns (exit code, stdout, stderr)."""
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    return process.returncode, out, err


def partial_path(store: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return store / ".xfer" / "partials" / f"{algorithm}-{encoded}"


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def sidecar_ranges(partial: Path) -> list[tuple[int, int]]:
    """The ``[start, end)`` ranges the ``.ranges`` sidecar of a partial claims, merged: its
    JSON header line's ``filled``, then one ``START END`` line per write (none if absent)."""
    try:
        header, *lines = partial.with_name(partial.name + ".ranges").read_text().split("\n")
    except FileNotFoundError:
        return []
    spans = [(int(a), int(b)) for a, b in json.loads(header)["filled"]]
    spans += [(int(a), int(b)) for a, b in (line.split() for line in lines if line)]
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def block_checksums(path: Path, block: int = 64 << 10) -> list[int]:
    """crc32 of each ``block`` bytes of a file (holes of a sparse file read as zeros)."""
    sums = []
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            sums.append(zlib.crc32(chunk))
    return sums


def bytes_in_place(partial_sums: list[int], final: Path, block: int = 64 << 10) -> int:
    """How many bytes of a partial (as its ``block_checksums``) already were the final blob's:
    what had really arrived, to within a block at each range's edges."""
    same = sum(a == b for a, b in zip(partial_sums, block_checksums(final, block), strict=False))
    return same * block


class RetryAfterDate(Status):
    """429 with ``Retry-After`` as an HTTP date ``seconds`` after the moment of the request
    (whole seconds, so the client should wait between ``seconds - 1`` and ``seconds``)."""

    def __init__(self, seconds: float, **options: Unpack[FaultOptions]) -> None:
        super().__init__(429, **options)
        self.seconds = seconds

    def on_request(self, req: RequestInfo) -> Reply | None:
        self.retry_after = email.utils.formatdate(time.time() + self.seconds, usegmt=True)
        return super().on_request(req)


def blob_gets(proxy: FaultProxy, digest: str, *, since: float = 0.0) -> list[Record]:
    """GETs of one blob seen by the proxy (started after ``since``), oldest first."""
    return [r for r in proxy.requests("GET", f"/blobs/{digest}") if r.started > since]


def bytes_sent(records: list[Record]) -> int:
    return sum(r.body_bytes_sent for r in records)


def requested_range(record: Record) -> tuple[int, int | None] | None:
    """``Range: bytes=a-b`` → (a, b inclusive), ``bytes=a-`` → (a, None); no header → None."""
    value = record.request_headers.get("range")
    if value is None:
        return None
    match = _RANGE.fullmatch(value.strip())
    assert match, f"unexpected Range header {value!r}"
    return int(match[1]), int(match[2]) if match[2] else None


def verify_store(store: Path) -> dict[str, int]:
    """Every blob hashes to its name (checked here), and ``xfer verify`` agrees."""
    blobs = stored_blobs(store)
    run = xfer("verify", store=store)
    assert run.code == 0, f"xfer verify: {run.out} {run.err}"
    return blobs
