"""Shared pytest fixtures: test images, real registries (anonymous, htpasswd, token) and stores.

Session-scoped registries are seeded once and must be treated as read-only by tests: push
into ``empty_registry`` (fresh per test) or into a repository name of your own.
"""

import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from fixtures.faultproxy import FaultProxy
from fixtures.images import BuiltImages, build, seed
from fixtures.registry import Registry
from fixtures.signing import SignedSet, seed_signed
from fixtures.tokenserver import ALICE, TokenServer

TOKEN_REPOS = ("public/{name}:1", "private/{name}:1")


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> BuiltImages:
    """(layout_dir, {name: ImageInfo}): every test image in one OCI layout. Read-only."""
    layout = tmp_path_factory.mktemp("images") / "layout"
    return BuiltImages(layout, build(layout))


@pytest.fixture(scope="session")
def registry(images: BuiltImages) -> Iterator[Registry]:
    """Anonymous registry holding every image as ``test/<name>:1``."""
    with Registry() as reg:
        seed(images.layout, reg.host, images.images)
        yield reg


@pytest.fixture
def empty_registry() -> Iterator[Registry]:
    """A fresh anonymous registry with nothing in it (push tests)."""
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def signed(images: BuiltImages) -> Iterator[tuple[Registry, SignedSet]]:
    """A registry (no referrers API) holding ``test/small`` and ``test/multi`` signed as cosign
    signs with a key, each with an SBOM (signed too) recorded through the fallback tag; one
    per test module."""
    with Registry() as reg:
        seed(images.layout, reg.host, [images.images["small"], images.images["multi"]])
        yield reg, seed_signed(reg.url, images.images["small"], images.images["multi"])


@pytest.fixture
def target(empty_registry: Registry) -> Iterator[FaultProxy]:
    """A fault proxy in front of ``empty_registry``: uploads observed and refused on demand."""
    with FaultProxy(empty_registry.url) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def basic_registry(images: BuiltImages) -> Iterator[Registry]:
    """htpasswd registry (alice/secret) holding every image as ``test/<name>:1``."""
    with Registry(auth="htpasswd") as reg:
        seed(images.layout, reg.host, images.images, creds=ALICE)
        yield reg


@pytest.fixture(scope="session")
def _token_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    with TokenServer(tmp_path_factory.mktemp("token")) as ts:
        yield ts


@pytest.fixture(scope="session")
def token_registry(images: BuiltImages, _token_server_session: TokenServer) -> Iterator[Registry]:
    """Token-auth registry with every image as ``public/<name>:1`` and ``private/<name>:1``.

    Its token server is ``token_registry.token_server`` (or the ``token_server`` fixture).
    """
    with Registry(auth="token", token_server=_token_server_session) as reg:
        seed(images.layout, reg.host, images.images, creds=ALICE, dest=TOKEN_REPOS)
        yield reg


@pytest.fixture
def token_server(token_registry: Registry) -> Iterator[TokenServer]:
    """The token server behind ``token_registry``; settings a test changes are restored."""
    ts = token_registry.token_server
    assert ts is not None
    saved = (ts.expires_in, ts.claim_lifetime, ts.signing, ts.policy, dict(ts.users))
    yield ts
    ts.expires_in, ts.claim_lifetime, ts.signing, ts.policy = saved[:4]
    ts.users.clear()
    ts.users.update(saved[4])


@pytest.fixture
def proxied_realm(
    token_registry: Registry, token_server: TokenServer
) -> Iterator[tuple[Registry, FaultProxy]]:
    """A registry (sharing the token registry's storage) whose token realm is a fault proxy."""
    with FaultProxy(f"http://127.0.0.1:{token_server.port}") as proxy:
        extra = {"auth": {"token": {"realm": f"{proxy.url}/token"}}}
        with Registry(
            auth="token",
            token_server=token_server,
            storage=token_registry.storage,
            extra_config=extra,
        ) as reg:
            yield reg, proxy


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs: a real 'no space left on device' (skipped where mounting is not allowed)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mountpoint)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Path for an xfer store in a fresh tmp dir; nothing is created there."""
    return tmp_path / "store"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failed test, attach the tail of each registry's log it used to the report."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, Registry):
                report.sections.append((f"{name} ({value.host}) log tail", _log_tail(value)))
    return report


def _log_tail(reg: Registry) -> str:
    """Last requests served and last notable app-log lines (routine info lines left out)."""
    requests = [f"{r.method} {r.path} -> {r.status} ({r.size} B)" for r in reg.requests()[-20:]]
    notable = [line for line in reg.log_text().splitlines() if "level=info" not in line]
    return "\n".join(["requests:", *requests, "warnings/errors:", *notable[-20:]])
