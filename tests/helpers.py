"""Running the real `xfer` command in tests, filling a store and checking it from the outside, and
building small OCI layouts by hand (no registry needed) for the hostile-input tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import anyio

import transfer.api
from fixtures.images import BuiltImages
from fixtures.signing import Attached, check_signed, fallback_index, get_blob, get_manifest
from transfer.digest import Digest
from transfer.manifest import Descriptor

ROOT = Path(__file__).resolve().parent.parent
STORE_HOST = "example.com/test"  # store names only: nothing is fetched from this host


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def xfer_env() -> dict[str, str]:
    """The CLI's environment in tests: an isolated HOME, and no credentials, mirrors or
    certificates from the machine's own configuration."""
    cache = ROOT / ".pytest_cache"
    env = {
        **os.environ,
        "HOME": str(cache / "home"),
        "DOCKER_CONFIG": str(cache / "no-docker-config"),
        "REGISTRY_AUTH_FILE": str(cache / "no-auth.json"),
        "XFER_CONFIG": str(cache / "no-xfer-config.toml"),
        "CONTAINERS_REGISTRIES_CONF": str(cache / "no-registries.conf"),
        "XFER_CERTS_D": "",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("XFER_STORE", None)
    return env


def xfer(
    *args: str | Path,
    store: Path | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
) -> Run:
    """Run ``python -m transfer ARGS`` as a user would, with an isolated HOME and config."""
    command = [sys.executable, "-m", "transfer", *map(str, args)]
    if store is not None:
        command += ["--store", str(store)]
    full_env = xfer_env()
    full_env.update(env or {})
    done = subprocess.run(
        command, capture_output=True, text=True, env=full_env, input=input, timeout=timeout
    )
    return Run(done.returncode, done.stdout, done.stderr)


def stored_blobs(store: Path) -> dict[str, int]:
    """Every blob under blobs/ → its size, after checking that its bytes match its name."""
    found = {}
    for path in (store / "blobs").glob("*/*"):
        algorithm = path.parent.name
        data = path.read_bytes()
        assert hashlib.new(algorithm, data).hexdigest() == path.name, f"corrupt blob {path}"
        assert not path.is_symlink()
        found[f"{algorithm}:{path.name}"] = len(data)
    return found


def index_refs(store: Path) -> dict[str, str]:
    """ref.name annotation → manifest digest, from the store's index.json. For an entry that
    points at the OCI view of a Docker image, the original's digest (what xfer reads)."""
    index = json.loads((store / "index.json").read_text())
    return {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["annotations"].get(
            "dev.xfer.original.digest", m["digest"]
        )
        for m in index["manifests"]
    }


# Runs argv[5:] as its child and writes the child's exit code, peak RSS (KiB), CPU seconds and
# whether it was killed to argv[1]. A small process of its own: a child's ru_maxrss starts from
# its parent's RSS at the fork (kept across exec), and pytest holds a few hundred MiB late in
# the suite. The child gets a CPU limit (argv[2], 0: none: a runaway is killed by SIGXCPU), and
# is killed past a peak (argv[3] bytes, 0: none) or a wall time (argv[4] seconds).
_LAUNCHER = """
import os, resource, subprocess, sys, time
report, cpu, rss_limit, wall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def limit():
    if cpu:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
child = subprocess.Popen(sys.argv[5:], preexec_fn=limit)
page = os.sysconf("SC_PAGE_SIZE")
started, killed = time.monotonic(), False
while True:
    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    if pid:
        break
    rss = 0
    if rss_limit:
        try:
            rss = int(open(f"/proc/{child.pid}/statm").read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            pass
    if not killed and (rss > rss_limit > 0 or time.monotonic() - started > wall):
        child.kill()
        killed = True
    time.sleep(0.02)
with open(report, "w") as out:
    code = os.waitstatus_to_exitcode(status)
    out.write(f"{code} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime} {int(killed)}")
"""


class Measured(NamedTuple):
    done: subprocess.CompletedProcess[str]  # the command's own exit code and output
    peak_mib: float  # its own peak RSS, not counting the test process's memory
    cpu_seconds: float  # user + system
    killed: bool  # by the wall-time or the RSS watchdog


def peak_rss(
    command: list[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    cpu_limit: int = 0,
    rss_limit: int = 0,
    stdout: int = subprocess.PIPE,
) -> Measured:
    """Run ``command`` from a small launcher; its result and its own peak RSS in MiB.

    Past ``timeout`` seconds (or ``rss_limit`` bytes) the command is killed and ``killed`` is
    set; ``cpu_limit`` seconds of CPU is its RLIMIT_CPU."""
    with tempfile.NamedTemporaryFile("r") as report:
        launcher = [sys.executable, "-c", _LAUNCHER, report.name]
        launcher += [str(cpu_limit), str(rss_limit), str(timeout), *command]
        outer = subprocess.run(
            launcher,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout + 30,  # the launcher kills the command at timeout itself
        )
        assert outer.returncode == 0, outer.stderr  # the launcher's own failure
        code, peak_kib, cpu, killed = report.read().split()
    done = subprocess.CompletedProcess(command, int(code), outer.stdout, outer.stderr)
    return Measured(done, int(peak_kib) / 1024, float(cpu), killed == "1")


def fill_store(store: Path, images: BuiltImages, *names: str) -> dict[str, str]:
    """Copy fixture images into the store (in process: fast); returns name → reference."""
    refs = {}
    for name in names:
        ref = f"{STORE_HOST}/{name}:1"
        transfer.api.copy_sync(
            f"oci:{images.layout}:{name}", f"store:{ref}", transfer.Settings(store=store)
        )
        refs[name] = ref
    return refs


_HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1], "r+b")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


@contextlib.contextmanager
def locked_by_another_process(path: Path) -> Iterator[None]:
    """``path``'s lock held by another process for the block (a live writer, as one on
    another host sharing the disk would look), released when the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


T = TypeVar("T")


def run_bounded(main: Callable[[], Awaitable[T]], seconds: float, what: str) -> T:
    """``anyio.run(main)`` in a daemon thread of its own, failing the test if it has not returned
    within ``seconds``: an await that waits for ever keeps its event loop, and pytest, with it."""
    outcome: list[T] = []
    runner = threading.Thread(target=lambda: outcome.append(anyio.run(main)), daemon=True)
    runner.start()
    runner.join(seconds)
    assert not runner.is_alive(), f"{what} never returned"
    assert len(outcome) == 1, f"{what} raised instead of returning"
    return outcome[0]


# ---- a tiny OCI layout built by hand ------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
EMPTY = "application/vnd.oci.empty.v1+json"
SPDX = "application/spdx+json"
REF_NAME = "org.opencontainers.image.ref.name"


def put_blob(
    root: Path, data: bytes, media_type: str = "application/octet-stream"
) -> dict[str, Any]:
    """``data`` as a blob of the layout at ``root``; its descriptor as JSON."""
    digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def put_json(root: Path, doc: dict[str, Any], media_type: str = OCI_MANIFEST) -> dict[str, Any]:
    return put_blob(root, json.dumps(doc, separators=(",", ":")).encode(), media_type)


def put_image(root: Path, seed: str, subject: dict[str, Any] | None = None) -> dict[str, Any]:
    """A one-layer image manifest (``seed`` makes its layer, so its digest, its own)."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": put_blob(root, config, OCI_CONFIG),
        "layers": [put_blob(root, f"layer {seed}".encode(), OCI_LAYER)],
    }
    if subject is not None:
        doc["subject"] = {k: subject[k] for k in ("mediaType", "digest", "size")}
    return put_json(root, doc)


def put_artifact(root: Path, seed: str, subject: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An SBOM with ``subject`` as oras attaches one; ``extra`` top-level fields."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SPDX,
        "config": put_blob(root, b"{}", EMPTY),
        "layers": [put_blob(root, f"sbom {seed}".encode(), SPDX)],
        "subject": {k: subject[k] for k in ("mediaType", "digest", "size")},
        **extra,
    }
    return put_json(root, doc)


def write_layout(
    root: Path, entries: list[dict[str, Any]], annotations: dict[str, str] | None = None
) -> None:
    """``oci-layout`` and an ``index.json`` listing ``entries`` (as written, however hostile)."""
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    if annotations:
        index["annotations"] = annotations
    (root / "index.json").write_text(json.dumps(index))


def named_entry(desc: dict[str, Any], name: str) -> dict[str, Any]:
    """An index.json entry of ``desc`` named ``name`` (``org.opencontainers.image.ref.name``)."""
    return {**desc, "annotations": {REF_NAME: name}}


def tar_layout(root: Path, out: Path) -> Path:
    """The layout at ``root`` as an OCI archive at ``out``."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                tar.add(path, path.relative_to(root).as_posix())
    return out


def descriptor(d: dict[str, Any]) -> Descriptor:
    return Descriptor(d["mediaType"], Digest.parse(d["digest"]), d["size"])


# ---- referrers carried into a registry ----------------------------------------------------------


def assert_carried(url: str, repo: str, attached: Attached, public_key: bytes) -> None:
    """At the registry ``url``: the subject's signature verifies against its digest, its SBOM is
    listed in the fallback tag index as pushed (artifact type, annotations) with the same bytes
    and document, and the SBOM's own signature verifies against the SBOM's digest."""
    check_signed(url, repo, attached.subject, public_key)
    if attached.sbom is None:
        return
    assert attached.sbom.descriptor() in fallback_index(url, repo, attached.subject)
    found = get_manifest(url, repo, attached.sbom.digest)
    assert found is not None and found[0] == attached.sbom.raw
    layer = json.loads(found[0])["layers"][0]
    assert get_blob(url, repo, layer["digest"]) == attached.sbom_document
    check_signed(url, repo, attached.sbom.digest, public_key)
