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
    full_env = {
        **os.environ,
        "HOME": str(ROOT / ".pytest_cache" / "home"),
        "DOCKER_CONFIG": str(ROOT / ".pytest_cache" / "no-docker-config"),
        "REGISTRY_AUTH_FILE": str(ROOT / ".pytest_cache" / "no-auth.json"),
        # Nothing from the machine's registry configuration (mirrors, TLS) reaches a test.
        "XFER_CONFIG": str(ROOT / ".pytest_cache" / "no-xfer-config.toml"),
        "CONTAINERS_REGISTRIES_CONF": str(ROOT / ".pytest_cache" / "no-registries.conf"),
        "XFER_CERTS_D": "",
        "PYTHONPATH": str(ROOT),
    }
    full_env.pop("XFER_STORE", None)
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
    """ref.name annotation → manifest digest, from the store's index.json."""
    index = json.loads((store / "index.json").read_text())
    return {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
