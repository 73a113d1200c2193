"""The benchmark harness runs end to end (tiny, one scenario, one run), and the delay proxy delays.

The benchmarks themselves are ``make bench``; this only keeps the harness from rotting.
"""

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.delayproxy import DelayProxyProcess

ROOT = Path(__file__).resolve().parent.parent


def test_bench_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fixtures.bench", "--only", "pull-many", "--runs", "1"]
    cmd += ["--scale", "0.01", "--out", str(out), "--cache", str(tmp_path / "cache"), "-q"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]

    report = json.loads((out / "results.json").read_text())
    assert report["machine"]["nproc"] and report["machine"]["skopeo"]
    (scenario,) = report["scenarios"]
    assert scenario["name"] == "pull-many"
    for tool in ("xfer", "skopeo"):
        figures = scenario["tools"][tool]
        assert figures["failed_runs"] == 0
        assert figures["median_seconds"] > 0
        assert figures["peak_rss_mib"] > 5
        # every blob and the manifest crossed the wire once
        assert figures["median_bytes_registry"] >= scenario["image_bytes"] * 0.99
    assert scenario["metrics"]["xfer/skopeo"] > 0
    # where the time went: start-up, each tool's CPU and the registry's during its runs
    assert report["xfer_startup_seconds"] > 0
    for tool in ("xfer", "skopeo"):
        assert scenario["tools"][tool]["median_cpu_seconds"] > 0
        assert scenario["tools"][tool]["median_registry_cpu_seconds"] >= 0
    many = next(t for t in report["targets"] if t["scenario"] == "pull-many")
    assert many["status"] == "met" or many["why"].startswith("allows ")
    assert "## CPU seconds" in (out / "results.md").read_text()
    target = next(t for t in report["targets"] if t["scenario"] == "pull-many")
    assert target["status"] in ("met", "missed")
    md = (out / "results.md").read_text()
    assert "pull many: xfer/skopeo" in md and "| registry → OCI layout, many |" in md


@pytest.fixture
def echo_server() -> Iterator[str]:
    """A TCP server answering each line with the same line."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn, conn.makefile("rb") as reader:
            for line in reader:
                conn.sendall(line)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    thread.join(5)


def test_delay_proxy_adds_round_trips_and_counts(echo_server: str) -> None:
    rtt = 0.05
    with DelayProxyProcess(echo_server, rtt=rtt) as proxy:
        host, port = proxy.host.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            reader = conn.makefile("rb")
            started = time.monotonic()
            conn.sendall(b"first\n")
            assert reader.readline() == b"first\n"
            first = time.monotonic() - started  # handshake + one round trip
            started = time.monotonic()
            conn.sendall(b"second\n" * 1000)
            for _ in range(1000):
                assert reader.readline() == b"second\n"
            second = time.monotonic() - started  # one round trip, no bandwidth limit
            reader.close()
        stats = proxy.stats()
    assert 2 * rtt * 0.95 <= first < 2 * rtt + 0.04
    assert rtt * 0.95 <= second < rtt + 0.04
    assert stats["bytes_up"] == stats["bytes_down"] == 6 + 7000
    assert stats["connections"] == 1
