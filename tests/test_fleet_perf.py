"""What a fleet run costs on the wire against a token registry: connections kept across HEADs and
401s, one request per host until its challenge is known, token fetches to a realm over a few
kept connections, and a no-op mirror rerun of one HEAD per tag per side.

The registry (distribution, token auth) and its token server are real; a delay proxy in front of
each counts the TCP connections the client opened (``DelayProxyProcess.stats``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from fixtures.delayproxy import DelayProxyProcess
from fixtures.registry import Registry
from fixtures.tokenserver import TokenServer
from tests.helpers import xfer
from transfer.auth import TOKEN_FETCHES_AT_ONCE
from transfer.client import RegistryClient
from transfer.transport import TransportOptions

NAMES = ("small", "shared-a", "shared-b", "multi")


@dataclass
class Counted:
    """A token registry and its realm, each behind a proxy that counts connections."""

    registry: Registry
    host: str  # the registry as clients reach it (through its proxy)
    registry_proxy: DelayProxyProcess
    realm_proxy: DelayProxyProcess

    def connections(self) -> tuple[int, int]:
        """(to the registry, to the realm) so far."""
        return (
            self.registry_proxy.stats()["connections"],
            self.realm_proxy.stats()["connections"],
        )


@pytest.fixture
def counted(token_registry: Registry, token_server: TokenServer) -> Iterator[Counted]:
    # A short delay makes requests sent "at once" overlap at the servers, as over a real path.
    with DelayProxyProcess(f"127.0.0.1:{token_server.port}", rtt=0.02) as realm:
        extra = {"auth": {"token": {"realm": f"http://{realm.host}/token"}}}
        with (
            Registry(
                auth="token",
                token_server=token_server,
                storage=token_registry.storage,
                extra_config=extra,
            ) as reg,
            DelayProxyProcess(reg.host, rtt=0.02) as front,
        ):
            yield Counted(reg, front.host, front, realm)


def _client(counted: Counted) -> RegistryClient:
    return RegistryClient(counted.host, options=TransportOptions(plain_http=True))


def test_heads_and_their_401s_keep_their_connection(
    counted: Counted, token_server: TokenServer
) -> None:
    """One after the other, a HEAD per repository (each first a 401, then with a token) and a
    token per scope: one connection to the registry and one to the realm carry them all."""

    async def heads() -> list[bool]:
        async with _client(counted) as client:
            found = []
            for name in NAMES:
                found.append(await client.head_manifest(f"public/{name}", "1") is not None)
            return found

    mark = counted.registry.mark()
    assert anyio.run(heads) == [True] * len(NAMES)
    heads_sent = [r for r in counted.registry.requests(mark) if r.method == "HEAD"]
    assert len(heads_sent) >= len(NAMES)  # what the connections carried
    assert counted.connections() == (1, 1)


def test_requests_at_once_wait_for_the_hosts_first_answer_and_its_challenge(
    counted: Counted, token_server: TokenServer
) -> None:
    """HEADs of several repositories at once on a fresh client: one meets the 401 (the
    challenge), the others wait for it and go with tokens of their own scope."""

    async def heads() -> None:
        async with _client(counted) as client, anyio.create_task_group() as group:
            for name in NAMES:
                group.start_soon(client.head_manifest, f"public/{name}", "1")

    mark, tokens = counted.registry.mark(), token_server.mark()
    anyio.run(heads)
    sent = counted.registry.requests(mark)
    assert [r.status for r in sent].count(401) == 1, [(r.method, r.status) for r in sent]
    assert Counter(r.repo for r in sent if r.status == 200) == {f"public/{n}": 1 for n in NAMES}
    scopes = Counter(r.scopes for r in token_server.requests(tokens))
    assert len(scopes) == len(NAMES) and set(scopes.values()) == {1}, scopes


def test_token_fetches_at_once_share_a_few_connections_to_the_realm(
    counted: Counted, token_server: TokenServer
) -> None:
    """Twelve scopes' tokens asked for at once (a mirror's repositories): at most
    TOKEN_FETCHES_AT_ONCE connections to the realm, one token per scope."""
    scopes = [f"repository:public/r{i}:pull" for i in range(12)]

    async def tokens() -> None:
        async with _client(counted) as client:
            await client.greet()  # the challenge, so the scopes' requests go with tokens
            async with anyio.create_task_group() as group:
                for scope in scopes:
                    group.start_soon(_token_for, client, scope)

    mark = token_server.mark()
    anyio.run(tokens)
    asked = Counter(s for r in token_server.requests(mark) for s in r.scopes)
    assert asked == dict.fromkeys(scopes, 1)
    assert counted.connections()[1] <= TOKEN_FETCHES_AT_ONCE


async def _token_for(client: RegistryClient, scope: str) -> None:
    resp = await client.send("GET", "/v2/", scopes=(scope,), what="ping")
    await resp.aclose()


def test_a_no_op_mirror_rerun_is_one_head_per_tag_per_side_and_one_token_request_per_host(
    counted: Counted, token_server: TokenServer, empty_registry: Registry, tmp_path: Path
) -> None:
    """The rerun's whole traffic: one ``GET /v2/`` per host (its challenge), one manifest HEAD
    per tag on each side (and at the source the referrers' discovery), each (host, scope) asked
    of the token service once, in one request; no HEAD meets a 401."""
    config = tmp_path / "sync.yaml"
    images = "".join(f"    public/{name}: ['1']\n" for name in NAMES)
    config.write_text(f"{counted.host}:\n  images:\n{images}")
    assert xfer("mirror", config, empty_registry.host).code == 0
    source_mark, target_mark = counted.registry.mark(), empty_registry.mark()
    tokens = token_server.mark()
    again = xfer("mirror", "--json", config, empty_registry.host)
    assert again.code == 0, again.err
    assert again.json_lines()[-1]["unchanged"] == len(NAMES)
    for registry, mark in ((counted.registry, source_mark), (empty_registry, target_mark)):
        sent = registry.requests(mark)
        heads = Counter(r.repo for r in sent if r.method == "HEAD" and r.kind == "manifest")
        assert heads == {f"public/{n}": 1 for n in NAMES}, sent
        others = Counter((r.method, r.kind) for r in sent if r.method != "HEAD")
        expected = {("GET", "base"): 1}
        if registry is counted.registry:
            # What refers to each image is asked too (signatures travel with it): one
            # referrers API probe for the host (distribution has none) and one tag list per
            # repository (no tag names a digest), under the same pull scopes.
            expected |= {("GET", "referrers"): 1, ("GET", "tags"): len(NAMES)}
        assert others == expected, sent
        assert all(r.status == 200 for r in sent if r.method == "HEAD"), sent
    asked = token_server.requests(tokens)
    scopes = Counter(scope for r in asked for scope in r.scopes)
    assert scopes == {f"repository:public/{n}:pull": 1 for n in NAMES}, asked
    assert len(asked) == 1, asked  # the plan's scopes of one host go in one token request


def test_a_scope_the_token_leaves_out_is_fetched_alone_and_fails_only_its_image(
    counted: Counted, token_server: TokenServer, empty_registry: Registry, tmp_path: Path
) -> None:
    """Anonymous: the token service grants ``public/*`` only, so the plan's one token has no
    access to ``private/small``; that image's HEAD meets a 401, asks a token of its own (also
    refused) and fails, after the public ones were copied."""
    config = tmp_path / "sync.yaml"
    images = "".join(f"    {repo}: ['1']\n" for repo in ("public/small", "private/small"))
    config.write_text(f"{counted.host}:\n  images:\n{images}")
    tokens = token_server.mark()
    run = xfer("mirror", "--json", config, empty_registry.host)
    assert run.code == 1, run.err
    summary = run.json_lines()[-1]
    assert summary["copied"] == 1, summary
    assert [f["source"].split("/", 1)[1] for f in summary["failed"]] == ["private/small:1"]
    asked = [r.scopes for r in token_server.requests(tokens)]
    assert asked[0] == ("repository:private/small:pull", "repository:public/small:pull"), asked
    assert ("repository:private/small:pull",) in asked[1:], asked
