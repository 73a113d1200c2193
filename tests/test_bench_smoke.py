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

from fixtures.bench import _floor_text
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


NEW_ROWS = {  # issue 12's scenarios: result name → its row's title in results.md
    "tls-many": "many over TLS (private CA)",
    "tls-token-many": "many over TLS + token auth (https realm)",
    "company-many": "many over TLS + token auth, 25 ms RTT",
    "copy-big": "registry → registry, big",
    "copy-rootfs": "registry → registry, rootfs",
    "mirror-set": "mirror of the 6 bench images, loopback",
    "mirror-30": "mirror 2 one-tag repos, 25 ms RTT, first run",
    "mirror-30-rerun": "mirror 2 one-tag repos, 25 ms RTT, no-op rerun",
    "company-mirror-10": "mirror 2 one-tag repos, TLS + token, 25 ms RTT, first run",
    "company-mirror-10-rerun": "mirror 2 one-tag repos, TLS + token, 25 ms RTT, no-op rerun",
}


def test_bench_tls_copy_and_mirror_scenarios_smoke(tmp_path: Path) -> None:
    """Each TLS/token, copy and mirror scenario runs once for xfer and skopeo, the target holds
    what was copied (a run that left it short is a failed run), and its row and target show."""
    out = tmp_path / "out"
    only = "tls-many,tls-token-many,company-many,copy-big,copy-rootfs,mirror-set,mirror-30,"
    only += "company-mirror-10"
    cmd = [sys.executable, "-m", "fixtures.bench", "--only", only, "--runs", "1"]
    cmd += ["--mirror-repos", "2", "--tools", "xfer,skopeo", "--scale", "0.01"]
    cmd += ["--out", str(out), "--cache", str(tmp_path / "cache"), "-q"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    report = json.loads((out / "results.json").read_text())
    failed = [
        f"{s['name']} {r['tool']}: {r['error']}"
        for s in report["scenarios"]
        for r in s["runs"]
        if not r["ok"]
    ]
    assert proc.returncode == 0 and not failed, (failed, proc.stderr[-2000:])

    scenarios = {s["name"]: s for s in report["scenarios"]}
    assert set(scenarios) == set(NEW_ROWS)
    for name, scenario in scenarios.items():
        for tool in ("xfer", "skopeo"):
            figures = scenario["tools"][tool]
            assert figures["failed_runs"] == 0 and figures["median_seconds"] > 0, name
            assert figures["peak_rss_mib"] > 5, name
        assert scenario["metrics"]["xfer/skopeo"] > 0, name
    # every byte of the image came from the source; a no-op rerun fetches no blob
    for name in ("tls-many", "tls-token-many", "company-many", "copy-big", "copy-rootfs"):
        for tool in ("xfer", "skopeo"):
            fetched = scenarios[name]["tools"][tool]["median_bytes_registry"]
            assert fetched >= scenarios[name]["image_bytes"] * 0.99, (name, tool)
    for rerun in ("mirror-30-rerun", "company-mirror-10-rerun"):
        assert all(r["bytes_registry"] < 4096 for r in scenarios[rerun]["runs"]), rerun
    # the token scenarios authenticated: the token server issued tokens to the user
    for name in ("tls-token-many", "company-many", "company-mirror-10"):
        assert scenarios[name]["data"]["token_requests"]["as_user"] >= 2, name

    # the floor: after each run a fresh target took the same images from the floor client alone
    # (the registry answered exactly its requests); big: five blobs of a POST and a PUT, and
    # the manifest
    for name in ("copy-big", "copy-rootfs", "mirror-set"):
        floor = scenarios[name]["data"]["floor"]
        assert floor["seconds"] > 0 and floor["registry_cpu_seconds"] > 0, name
        assert [r["ok"] for r in floor["runs"]] == [True], (name, floor["runs"])
        assert floor["runs"][0]["requests_answered"] == floor["requests"], name
    assert scenarios["copy-big"]["data"]["floor"]["requests"] == 11
    # the company rerun's round trips in series: TCP, TLS 1.3 and the 401 at the registry,
    # TCP, TLS 1.3 and the token at the realm, the HEADs at once
    trips = scenarios["company-mirror-10-rerun"]["data"]["round_trip_floor"]
    assert [n for _, n in trips["steps"]] == [1, 1, 1, 1, 1, 1, 1], trips
    assert trips["round_trips"] == 7 and trips["seconds"] == pytest.approx(7 * 0.025)

    targets = {t["scenario"]: t for t in report["targets"]}
    for name in ("copy-big", "copy-rootfs", "mirror-set"):
        why = targets[name]["why"]
        assert targets[name]["status"] == "met" or "the target registry alone takes" in why
    assert targets["company-mirror-10-rerun"]["status"] == "met" or (
        "at least 7 round trips of 25 ms" in targets["company-mirror-10-rerun"]["why"]
    )
    copies = ("mirror-30", "mirror-30-rerun", "company-mirror-10", "company-mirror-10-rerun")
    for name in (*copies, "mirror-set", "copy-big", "copy-rootfs"):
        assert targets[name]["status"] in ("met", "missed"), name
        assert targets[name]["status"] == "met" or "requests answered" in targets[name]["why"]
    assert targets["tls-many"]["status"] in ("met", "missed")
    md = (out / "results.md").read_text()
    for title in NEW_ROWS.values():
        assert f"| {title} |" in md, title
    floors = md.split("## The target registry alone (floors)", 1)[1].split("\n## ", 1)[0]
    for name in ("copy-big", "copy-rootfs", "mirror-set"):
        assert f"| {NEW_ROWS[name]} | " in floors, name
    assert "at least 7 round trips of 25 ms in series" in floors
    assert "mirror 30 repos, no-op rerun: xfer/skopeo | ≤ 0.1 |" in md


def test_bench_bundle_scenarios_smoke(tmp_path: Path) -> None:
    """export and import run once for xfer and skopeo with what each wrote checked (a bundle
    naming every image, every image at the target), their rows and targets show, and verify
    runs against sha256sum."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fixtures.bench", "--only", "export,import,verify"]
    cmd += ["--runs", "1", "--tools", "xfer,skopeo", "--scale", "0.01"]
    cmd += ["--out", str(out), "--cache", str(tmp_path / "cache"), "-q"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    report = json.loads((out / "results.json").read_text())
    failed = [
        f"{s['name']} {r['tool']}: {r['error']}"
        for s in report["scenarios"]
        for r in s["runs"]
        if not r["ok"]
    ]
    assert proc.returncode == 0 and not failed, (failed, proc.stderr[-2000:])
    scenarios = {s["name"]: s for s in report["scenarios"]}
    for name in ("export", "import"):
        for tool in ("xfer", "skopeo"):
            figures = scenarios[name]["tools"][tool]
            assert figures["failed_runs"] == 0 and figures["median_seconds"] > 0, name
        assert scenarios[name]["metrics"]["xfer/skopeo"] > 0, name
    # This xfer verifies archives: a verify the bench left out (its "not run" note) fails here.
    verify = scenarios["verify"]
    assert verify["metrics"].get("xfer/sha256sum", 0) > 0, verify["notes"]
    floor = scenarios["import"]["data"]["floor"]
    assert floor["seconds"] > 0 and [r["ok"] for r in floor["runs"]] == [True], floor["runs"]
    assert floor["runs"][0]["requests_answered"] == floor["requests"] > 0
    targets = {t["scenario"]: t for t in report["targets"]}
    assert targets["export"]["status"] in ("met", "missed")
    assert targets["import"]["status"] in ("met", "missed")
    md = (out / "results.md").read_text()
    assert f"| {scenarios['export']['title']} |" in md
    assert "export the bench set to a bundle: xfer/skopeo | ≤ 0.35 |" in md


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


def test_floor_text_says_whether_a_target_is_in_reach() -> None:
    """A missed target's explanation compares the measured floor with the time allowed: above
    it, out of reach; under it but above it with xfer's start-up; or under both."""
    floor = {"seconds": 2.4, "registry_cpu_seconds": 3.8, "client_cpu_seconds": 0.1}
    above = _floor_text(floor, 2.16, 0.15)
    assert above.startswith("the target registry alone takes 2.40 s to accept")
    assert "above the 2.16 s allowed: out of any client's reach" in above
    floor["seconds"] = 2.1
    assert "above it with xfer's 0.15 s start-up (2.25 s)" in _floor_text(floor, 2.16, 0.15)
    floor["seconds"] = 1.5
    under = _floor_text(floor, 2.16, 0.15)
    assert "under the 2.16 s allowed (1.65 s with xfer's start-up)" in under
    assert "reach" not in under and "above" not in under
    assert _floor_text(None, 2.16, 0.15) == ""
