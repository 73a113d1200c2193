"""One ``Session`` per run: one client (HTTP pool, token cache) per registry host, reused from
image to image, and every one of them closed with the session."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import transfer
from fixtures.registry import Registry
from fixtures.tokenserver import TokenServer
from tests.helpers import xfer
from transfer.mirror import MirrorRun, mirror

NAMES = ("small", "shared-a", "shared-b", "multi")


def _config(path: Path, host: str) -> Path:
    # "[]": every tag, so the run lists each repository's tags and then copies from it.
    images = "".join(f"    public/{name}: []\n" for name in NAMES)
    path.write_text(f"{host}:\n  images:\n{images}")
    return path


def test_a_mirror_run_asks_one_token_per_scope_first_run_and_rerun(
    token_registry: Registry, token_server: TokenServer, empty_registry: Registry, tmp_path: Path
) -> None:
    config = _config(tmp_path / "sync.yaml", token_registry.host)
    target = f"{empty_registry.host}/m"
    for attempt in ("first", "rerun"):
        mark = token_server.mark()
        run = xfer("mirror", "--json", config, target)
        assert run.code == 0, run.err
        summary = run.json_lines()[-1]
        assert summary["copied" if attempt == "first" else "unchanged"] == len(NAMES)
        fetched = Counter((r.service, r.scopes) for r in token_server.requests(mark))
        # One scope per source repository (tags, HEAD and blobs all read under pull).
        assert len(fetched) == len(NAMES), fetched
        assert set(fetched.values()) == {1}, f"{attempt}: tokens asked again: {fetched}"


@pytest.fixture
def made_clients(monkeypatch: pytest.MonkeyPatch) -> list[httpx.AsyncClient]:
    """Every asynchronous HTTP client made while the test runs (one connection pool each)."""
    made: list[httpx.AsyncClient] = []
    init = httpx.AsyncClient.__init__

    def counting(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", counting)
    return made


def test_one_session_serves_a_whole_mirror_with_one_pool_per_host_and_closes_them(
    token_registry: Registry,
    token_server: TokenServer,
    empty_registry: Registry,
    tmp_path: Path,
    made_clients: list[httpx.AsyncClient],
) -> None:
    config = _config(tmp_path / "sync.yaml", token_registry.host).read_text()
    settings = transfer.Settings(store=tmp_path / "store", registries=transfer.RegistryConfig())
    mark = token_server.mark()

    async def main() -> None:
        async with transfer.Session(settings) as session:
            how = MirrorRun(session=session)
            report = await mirror(config, f"{empty_registry.host}/s", None, how)
            assert len(report.copied) == len(NAMES) and not report.failed
            again = await mirror(config, f"{empty_registry.host}/s", None, how)
            assert len(again.unchanged) == len(NAMES)
            hosts = sorted(c.host for c in session.clients)
            assert hosts == sorted([token_registry.host, empty_registry.host])
            assert len(made_clients) == 2  # the token server is reached through the same pool
            assert not any(c.is_closed for c in made_clients)
        assert session.clients == []

    anyio.run(main)
    fetched = Counter(r.scopes for r in token_server.requests(mark))
    assert len(fetched) == len(NAMES) and set(fetched.values()) == {1}, fetched
    assert made_clients and all(c.is_closed for c in made_clients)


def test_api_calls_without_a_session_close_what_they_opened(
    token_registry: Registry, tmp_path: Path, made_clients: list[httpx.AsyncClient]
) -> None:
    settings = transfer.Settings(store=tmp_path / "store", registries=transfer.RegistryConfig())
    ref = f"{token_registry.host}/public/small:1"
    transfer.pull_sync(ref, settings)
    assert transfer.tags_sync(f"{token_registry.host}/public/small", settings) == ["1"]
    transfer.copy_sync(ref, f"oci:{tmp_path / 'layout'}", settings)
    assert len(made_clients) == 3 and all(c.is_closed for c in made_clients)


def test_a_closed_session_makes_no_more_clients(token_registry: Registry, tmp_path: Path) -> None:
    settings = transfer.Settings(store=tmp_path / "store", registries=transfer.RegistryConfig())

    async def main() -> None:
        async with transfer.Session(settings) as session:
            pass
        with pytest.raises(RuntimeError):
            session.client(transfer.parse(f"{token_registry.host}/public/small:1"))

    anyio.run(main)
