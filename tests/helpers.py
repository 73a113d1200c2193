"""Running the real `xfer` command in tests, and checking a store from the outside."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


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
