"""Credentials and bearer tokens, end to end against real distribution (htpasswd and token auth)
and table-tested where they are pure: where credentials are found, login/logout, token expiry,
OAuth2, scopes, and redirects that must not carry secrets to another host.

No push exists yet, so "the push scope is requested only when pushing" is not tested here.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from fixtures.faultproxy import (
    Delay,
    Fault,
    FaultProxy,
    Redirect,
    Reply,
    RequestInfo,
    Status,
    get_header,
)
from fixtures.images import BuiltImages, ImageInfo, build_many_layers, seed
from fixtures.registry import Registry
from fixtures.tokenserver import ALICE, SERVICE, TokenServer
from tests.helpers import stored_blobs, xfer
from transfer import auth, redirects
from transfer.auth import Credentials, TokenCache, TokenKey, find_credentials, registry_host
from transfer.errors import AuthError, UsageError

SECRET = "secret"  # alice's password on every test registry
WRONG = "hunter2-wrong"
LOGIN = ("--creds", f"alice:{SECRET}")


# ---- helpers ----------------------------------------------------------------------------------


def _b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _no_secret(run_out: str, run_err: str, *secrets: str) -> None:
    for secret in secrets:
        for text in (secret, _b64("alice", secret)):
            assert text not in run_out and text not in run_err


HELPER = """#!{python}
# docker-credential-test: the credential-helper protocol over a JSON file, and a log of calls.
import json, sys
from pathlib import Path
store, log = Path({store!r}), Path({log!r})
data = json.loads(store.read_text()) if store.exists() else {{}}
action, given = sys.argv[1], sys.stdin.read()
url = json.loads(given)["ServerURL"] if action == "store" else given.strip()
with log.open("a") as out:
    out.write(action + " " + url + "\\n")
if action == "get":
    if given.strip() not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = data[given.strip()]
    print(json.dumps({{"ServerURL": given.strip(), "Username": user, "Secret": secret}}))
elif action == "store":
    request = json.loads(given)
    data[request["ServerURL"]] = [request["Username"], request["Secret"]]
    store.write_text(json.dumps(data))
elif action == "erase":
    if given.strip() not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    del data[given.strip()]
    store.write_text(json.dumps(data))
"""


class Home:
    """A user's credential setup in tmp: docker config dir, a helper on PATH, auth.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.docker = root / "docker"
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.helper_store = root / "helper-store.json"
        self.helper_log = root / "helper-log.txt"
        helper = self.bin / "docker-credential-test"
        helper.write_text(
            HELPER.format(
                python=sys.executable, store=str(self.helper_store), log=str(self.helper_log)
            )
        )
        helper.chmod(0o755)
        self.auth_json = root / "containers-auth.json"

    @property
    def config_json(self) -> Path:
        return self.docker / "config.json"

    def write_config(self, config: dict[str, Any]) -> None:
        self.docker.mkdir(parents=True, exist_ok=True)
        self.config_json.write_text(json.dumps(config))

    def helper_has(self, entries: dict[str, tuple[str, str]]) -> None:
        self.helper_store.write_text(json.dumps({k: list(v) for k, v in entries.items()}))

    def helper_entries(self) -> dict[str, list[str]]:
        return dict(json.loads(self.helper_store.read_text())) if self.helper_store.exists() else {}

    def helper_calls(self) -> list[str]:
        return self.helper_log.read_text().splitlines() if self.helper_log.exists() else []

    @property
    def env(self) -> dict[str, str]:
        return {
            "DOCKER_CONFIG": str(self.docker),
            "REGISTRY_AUTH_FILE": str(self.auth_json),
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
        }


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """An isolated credential setup, also applied to this process (for in-process lookups)."""
    h = Home(tmp_path / "home")
    for key, value in h.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return h


# ---- where credentials are found (tables) -------------------------------------------------


HUB_ENTRY = {"auth": _b64("hubuser", "hubpass")}


@pytest.mark.parametrize(
    ("config", "host", "expected"),
    [
        ({"auths": {"r.example.com": {"auth": _b64("u", "p")}}}, "r.example.com", ("u", "p", "")),
        (
            {"auths": {"https://r.example.com": {"auth": _b64("u", "p")}}},
            "r.example.com",
            ("u", "p", ""),
        ),
        (
            {"auths": {"https://r.example.com/v2/": {"auth": _b64("u", "p")}}},
            "r.example.com",
            ("u", "p", ""),
        ),
        (
            {"auths": {"r.example.com:5000": {"username": "u", "password": "p"}}},
            "r.example.com:5000",
            ("u", "p", ""),
        ),
        (
            {"auths": {"R.Example.com": {"auth": _b64("u", "p:with:colons")}}},
            "r.example.com",
            ("u", "p:with:colons", ""),
        ),
        (
            {"auths": {"r.example.com": {"auth": _b64("u", ""), "identitytoken": "rt"}}},
            "r.example.com",
            ("u", "", "rt"),
        ),
        ({"auths": {"r.example.com": {"identitytoken": "rt"}}}, "r.example.com", ("", "", "rt")),
        ({"auths": {"r.example.com:5000": {"auth": _b64("u", "p")}}}, "r.example.com", None),
        ({"auths": {"r.example.com/team": {"auth": _b64("u", "p")}}}, "r.example.com", None),
        ({"auths": {"r.example.com": {}}}, "r.example.com", None),
        (
            {"auths": {"https://index.docker.io/v1/": HUB_ENTRY}},
            "docker.io",
            ("hubuser", "hubpass", ""),
        ),
        (
            {"auths": {"https://index.docker.io/v1/": HUB_ENTRY}},
            "registry-1.docker.io",
            ("hubuser", "hubpass", ""),
        ),
        (
            {"auths": {"https://index.docker.io/v1/": HUB_ENTRY}},
            "index.docker.io",
            ("hubuser", "hubpass", ""),
        ),
        ({"auths": {"docker.io": HUB_ENTRY}}, "registry-1.docker.io", ("hubuser", "hubpass", "")),
        ({"auths": {"index.docker.io": HUB_ENTRY}}, "docker.io", ("hubuser", "hubpass", "")),
        (
            {"auths": {"registry-1.docker.io": HUB_ENTRY}},
            "https://index.docker.io/v1/",
            ("hubuser", "hubpass", ""),
        ),
        ({"auths": {"https://index.docker.io/v1/": HUB_ENTRY}}, "quay.io", None),
    ],
    ids=[
        "bare-host",
        "https-url-key",
        "v2-url-key",
        "username-password-fields",
        "case-and-colons-in-password",
        "identity-token-with-auth",
        "identity-token-only",
        "port-must-match",
        "repository-scoped-key-is-not-the-host",
        "empty-entry",
        "hub-url-for-docker.io",
        "hub-url-for-registry-1",
        "hub-url-for-index",
        "docker.io-key-for-registry-1",
        "index-key-for-docker.io",
        "registry-1-key-for-hub-url",
        "hub-entry-not-for-others",
    ],
)
def test_config_json_lookup(
    home: Home, config: dict[str, Any], host: str, expected: tuple[str, str, str] | None
) -> None:
    home.write_config(config)
    found = find_credentials(host)
    got = (found.username, found.password, found.identity_token) if found else None
    assert got == expected


def test_config_json_comes_before_containers_auth_json(home: Home) -> None:
    home.write_config({"auths": {"r.example.com": {"auth": _b64("docker", "d")}}})
    home.auth_json.write_text(
        json.dumps(
            {
                "auths": {
                    "r.example.com": {"auth": _b64("podman", "p")},
                    "other.example.com": {"auth": _b64("podman", "o")},
                }
            }
        )
    )
    assert find_credentials("r.example.com") == Credentials("docker", "d")
    assert find_credentials("other.example.com") == Credentials("podman", "o")


def test_xdg_runtime_dir_auth_json_when_no_registry_auth_file(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers" / "auth.json").write_text(
        json.dumps({"auths": {"docker.io": {"auth": _b64("p", "q")}}})
    )
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert find_credentials("registry-1.docker.io") == Credentials("p", "q")


@pytest.mark.parametrize(
    ("config", "helper_has", "host", "expected"),
    [
        (  # credHelpers for the host wins over the file's auths
            {
                "credHelpers": {"r.example.com": "test"},
                "auths": {"r.example.com": {"auth": _b64("file", "f")}},
            },
            {"r.example.com": ("helper", "h")},
            "r.example.com",
            ("helper", "h", ""),
        ),
        (  # credsStore serves every host
            {"credsStore": "test"},
            {"r.example.com": ("store", "s")},
            "r.example.com",
            ("store", "s", ""),
        ),
        (  # a helper that has nothing: the file's auths still count
            {"credsStore": "test", "auths": {"r.example.com": {"auth": _b64("file", "f")}}},
            {},
            "r.example.com",
            ("file", "f", ""),
        ),
        (  # Docker Hub through a helper: asked for docker's index URL, from any alias
            {"credHelpers": {"docker.io": "test"}},
            {"https://index.docker.io/v1/": ("hub", "h")},
            "registry-1.docker.io",
            ("hub", "h", ""),
        ),
        (  # "<token>" as the user name means an identity (refresh) token
            {"credsStore": "test"},
            {"r.example.com": ("<token>", "refresh")},
            "r.example.com",
            ("", "", "refresh"),
        ),
        (  # the helper is for another host
            {"credHelpers": {"other.example.com": "test"}},
            {"r.example.com": ("helper", "h")},
            "r.example.com",
            None,
        ),
    ],
    ids=[
        "credHelpers-over-auths",
        "credsStore",
        "helper-empty-falls-to-auths",
        "hub-alias",
        "identity-token",
        "other-host",
    ],
)
def test_credential_helper_lookup(
    home: Home,
    config: dict[str, Any],
    helper_has: dict[str, tuple[str, str]],
    host: str,
    expected: tuple[str, str, str] | None,
) -> None:
    home.write_config(config)
    home.helper_has(helper_has)
    found = find_credentials(host)
    got = (found.username, found.password, found.identity_token) if found else None
    assert got == expected


def test_a_configured_helper_that_is_missing_is_an_error_naming_it(home: Home) -> None:
    home.write_config({"credsStore": "nowhere-to-be-found"})
    with pytest.raises(AuthError, match="docker-credential-nowhere-to-be-found"):
        find_credentials("r.example.com")


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("r.example.com", "r.example.com"),
        ("R.Example.COM:5000", "r.example.com:5000"),
        ("https://r.example.com/v2/", "r.example.com"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("[::1]:5000", "[::1]:5000"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry.hub.docker.com", "docker.io"),
    ],
)
def test_registry_host_normalises_every_spelling(text: str, host: str) -> None:
    assert registry_host(text) == host


@pytest.mark.parametrize("text", ["", "a b", "-x.example.com", "host:port", "user@host"])
def test_registry_host_rejects_what_is_not_a_host(text: str) -> None:
    with pytest.raises(UsageError):
        registry_host(text)


def test_credentials_repr_hides_the_secrets() -> None:
    text = repr(Credentials("alice", "pw-123", "tok-456"))
    assert "alice" in text and "pw-123" not in text and "tok-456" not in text


def test_save_then_find_then_remove_in_config_json(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.docker = home.root / "new" / "dirs" / "docker"  # does not exist yet
    monkeypatch.setenv("DOCKER_CONFIG", str(home.docker))
    where = auth.save_credentials("index.docker.io", Credentials("u", "p"))
    assert where == str(home.config_json)
    assert stat.S_IMODE(home.config_json.stat().st_mode) == 0o600
    assert json.loads(home.config_json.read_text())["auths"] == {
        "https://index.docker.io/v1/": {"auth": _b64("u", "p")}
    }
    assert find_credentials("registry-1.docker.io") == Credentials("u", "p")
    assert auth.remove_credentials("docker.io") is True
    assert find_credentials("docker.io") is None
    assert auth.remove_credentials("docker.io") is False


def test_save_keeps_the_rest_of_config_json(home: Home) -> None:
    home.write_config({"auths": {"a.example.com": {"auth": "YTpi"}}, "psFormat": "table"})
    auth.save_credentials("b.example.com", Credentials("u", "p"))
    config = json.loads(home.config_json.read_text())
    assert config["psFormat"] == "table"
    assert set(config["auths"]) == {"a.example.com", "b.example.com"}


# ---- bearer tokens: parsing and the cache -----------------------------------------------------


def test_issued_at_in_the_past_shortens_the_life() -> None:
    body = b'{"token": "t", "expires_in": 100, "issued_at": "2030-01-01T00:00:00Z"}'
    issued = 1893456000.0  # 2030-01-01T00:00:00Z
    fresh = auth.parse_token_response(body, "h", now=0.0, wall=issued)
    aged = auth.parse_token_response(body, "h", now=0.0, wall=issued + 40)
    skewed = auth.parse_token_response(body, "h", now=0.0, wall=issued + 10_000)
    future = auth.parse_token_response(body, "h", now=0.0, wall=issued - 10_000)
    assert fresh.expires == pytest.approx(90.0)
    assert aged.expires == pytest.approx(54.0)
    assert skewed.expires == pytest.approx(45.0)  # a skewed clock never means "always expired"
    assert future.expires == pytest.approx(90.0)  # nor a longer life


def test_concurrent_requests_share_one_token_fetch(token_server: TokenServer) -> None:
    mark = token_server.mark()
    key = TokenKey.of("h", token_server.realm, SERVICE, ["repository:private/small:pull"])

    async def main() -> set[str]:
        async with httpx.AsyncClient() as http:
            cache = TokenCache(http, Credentials(*ALICE))
            got: set[str] = set()

            async def one() -> None:
                got.add(await cache.get(key))

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(one)
            return got

    assert len(anyio.run(main)) == 1
    assert len(token_server.requests(mark)) == 1


def test_a_refused_token_is_dropped_only_if_still_current() -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as http:
            cache = TokenCache(http, None)
            key = TokenKey.of("h", "https://auth.example/token", "s", ["b", "a", "a"])
            assert key.scopes == ("a", "b")
            cache._tokens[key] = auth._Token("new", float("inf"))
            cache.invalidate(key, "old")  # a request that carried an older token
            assert cache.cached(key) == "new"
            cache.invalidate(key, "new")
            assert cache.cached(key) is None

    anyio.run(main)


# ---- htpasswd (Basic) registry ------------------------------------------------------------


def test_basic_auth_with_the_right_password_pulls(
    basic_registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    run = xfer("pull", *LOGIN, f"{basic_registry.host}/{info.ref}", store=store)
    assert run.code == 0, run.err
    assert run.out.strip() == info.digest


def test_basic_auth_with_a_wrong_password_fails_naming_the_host_not_the_secret(
    basic_registry: Registry, images: BuiltImages, store: Path
) -> None:
    ref = f"{basic_registry.host}/{images.images['small'].ref}"
    run = xfer("pull", "--creds", f"alice:{WRONG}", ref, store=store)
    assert run.code == 1
    assert "unauthorized" in run.err.lower()
    assert basic_registry.host in run.err
    assert len(run.err.strip().splitlines()) == 1
    _no_secret(run.out, run.err, WRONG)


def test_basic_registry_without_credentials_says_what_is_missing(
    basic_registry: Registry, images: BuiltImages, store: Path
) -> None:
    run = xfer("pull", f"{basic_registry.host}/{images.images['small'].ref}", store=store)
    assert run.code == 1
    assert "username and password" in run.err and basic_registry.host in run.err


def test_password_from_stdin(basic_registry: Registry, images: BuiltImages, store: Path) -> None:
    ref = f"{basic_registry.host}/{images.images['small'].ref}"
    run = xfer("pull", "-u", "alice", "--password-stdin", ref, store=store, input=SECRET + "\n")
    assert run.code == 0, run.err


def test_basic_credentials_from_docker_config_json(
    basic_registry: Registry, images: BuiltImages, store: Path, home: Home
) -> None:
    home.write_config({"auths": {f"http://{basic_registry.host}": {"auth": _b64(*ALICE)}}})
    ref = f"{basic_registry.host}/{images.images['small'].ref}"
    run = xfer("pull", ref, store=store, env=home.env)
    assert run.code == 0, run.err


def test_basic_credentials_from_containers_auth_json(
    basic_registry: Registry, images: BuiltImages, store: Path, home: Home
) -> None:
    home.auth_json.write_text(json.dumps({"auths": {basic_registry.host: {"auth": _b64(*ALICE)}}}))
    ref = f"{basic_registry.host}/{images.images['small'].ref}"
    assert xfer("pull", ref, store=store, env=home.env).code == 0


# ---- credential helpers, login, logout ------------------------------------------------------


def test_credential_helper_supplies_the_password(
    basic_registry: Registry, images: BuiltImages, store: Path, home: Home
) -> None:
    home.write_config({"credHelpers": {basic_registry.host: "test"}})
    home.helper_has({basic_registry.host: ALICE})
    run = xfer(
        "pull", f"{basic_registry.host}/{images.images['small'].ref}", store=store, env=home.env
    )
    assert run.code == 0, run.err
    assert home.helper_calls() == [f"get {basic_registry.host}"]


def test_login_stores_through_the_helper_and_logout_erases(
    basic_registry: Registry, images: BuiltImages, store: Path, home: Home
) -> None:
    host = basic_registry.host
    home.write_config({"credsStore": "test"})
    run = xfer("login", host, "-u", "alice", "--password-stdin", input=SECRET + "\n", env=home.env)
    assert run.code == 0, run.err
    assert "Login Succeeded" in run.out
    assert home.helper_entries() == {host: ["alice", SECRET]}
    assert SECRET not in home.config_json.read_text()
    _no_secret(run.out, run.err, SECRET)

    pull = xfer("pull", f"{host}/{images.images['small'].ref}", store=store, env=home.env)
    assert pull.code == 0, pull.err

    out = xfer("logout", host, env=home.env)
    assert out.code == 0 and "Removed" in out.out
    assert home.helper_entries() == {}
    assert f"erase {host}" in home.helper_calls()
    again = xfer("pull", f"{host}/{images.images['small'].ref}", store=store / "2", env=home.env)
    assert again.code == 1


@pytest.mark.parametrize("kind", ["basic_registry", "token_registry"])
def test_login_with_a_wrong_password_fails_and_keeps_nothing(
    kind: str, request: pytest.FixtureRequest, home: Home
) -> None:
    registry: Registry = request.getfixturevalue(kind)
    run = xfer(
        "login",
        registry.host,
        "-u",
        "alice",
        "--password-stdin",
        input=WRONG + "\n",
        env=home.env,
    )
    assert run.code == 1
    assert "unauthorized" in run.err.lower() and registry.host in run.err
    _no_secret(run.out, run.err, WRONG)
    assert not home.config_json.exists()


def test_login_against_a_token_registry_writes_config_json_0600(
    token_registry: Registry, token_server: TokenServer, store: Path, home: Home
) -> None:
    home.docker = home.root / "not" / "yet" / "there"
    env = {**home.env, "DOCKER_CONFIG": str(home.docker)}
    host = token_registry.host
    mark = token_server.mark()
    run = xfer("login", host, "-u", "alice", "--password-stdin", input=SECRET + "\n", env=env)
    assert run.code == 0, run.err
    assert [r.user for r in token_server.requests(mark)] == ["alice"]  # the check: a token fetch
    assert stat.S_IMODE(home.config_json.stat().st_mode) == 0o600
    assert json.loads(home.config_json.read_text())["auths"] == {host: {"auth": _b64(*ALICE)}}

    assert xfer("pull", f"{host}/private/small:1", store=store, env=env).code == 0
    assert xfer("logout", host, env=env).out.startswith("Removed")
    assert json.loads(home.config_json.read_text())["auths"] == {}
    assert xfer("logout", host, env=env).out.startswith("Not logged in")


def test_login_without_a_terminal_needs_password_stdin(home: Home) -> None:
    run = xfer("login", "r.example.com", "-u", "alice", env=home.env)
    assert run.code == 2


# ---- token registry ---------------------------------------------------------------------------


def test_anonymous_pull_of_a_public_image(
    token_registry: Registry, token_server: TokenServer, images: BuiltImages, store: Path
) -> None:
    mark = token_server.mark()
    run = xfer("pull", f"{token_registry.host}/public/small:1", store=store)
    assert run.code == 0, run.err
    assert run.out.strip() == images.images["small"].digest
    assert [(r.user, r.scopes) for r in token_server.requests(mark)] == [
        (None, ("repository:public/small:pull",))
    ]


def test_private_image_without_credentials_fails_after_one_token_no_loop(
    token_registry: Registry, token_server: TokenServer, store: Path
) -> None:
    mark = token_server.mark()
    run = xfer("pull", "--retries", "3", f"{token_registry.host}/private/small:1", store=store)
    assert run.code == 1
    assert "unauthorized" in run.err.lower() and token_registry.host in run.err
    assert len(token_server.requests(mark)) == 1


def test_private_pull_with_a_password_uses_one_token(
    token_registry: Registry, token_server: TokenServer, images: BuiltImages, store: Path
) -> None:
    mark = token_server.mark()
    ref = f"{token_registry.host}/private/small:1"
    run = xfer("pull", *LOGIN, ref, store=store)
    assert run.code == 0, run.err
    assert run.out.strip() == images.images["small"].digest
    fetched = token_server.requests(mark)
    assert [(r.method, r.user, r.scopes) for r in fetched] == [
        ("GET", "alice", ("repository:private/small:pull",))
    ]


@pytest.fixture(scope="module")
def twenty_layers(token_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    layout = tmp_path_factory.mktemp("many") / "layout"
    info = build_many_layers(layout, "many", layers=20)
    seed(layout, token_registry.host, [info], creds=ALICE, dest="private/{name}:1")
    return info


def test_twenty_blob_pull_makes_one_token_request_per_scope(
    token_registry: Registry, token_server: TokenServer, twenty_layers: ImageInfo, store: Path
) -> None:
    assert len(twenty_layers.layers) == 20
    mark = token_server.mark()
    ref = f"{token_registry.host}/private/many:1"
    run = xfer("pull", "-j", "8", *LOGIN, ref, store=store)
    assert run.code == 0, run.err
    assert len(stored_blobs(store)) == 22  # 20 layers, config, manifest
    assert [r.scopes for r in token_server.requests(mark)] == [("repository:private/many:pull",)]


@pytest.fixture
def slow_blobs(token_registry: Registry) -> Iterator[FaultProxy]:
    """The token registry behind a proxy that takes 0.6 s to answer each blob GET."""
    with FaultProxy(token_registry.url) as proxy:
        proxy.add(Delay(0.6, method="GET", match="/blobs/", times=None))
        yield proxy


def test_token_expiring_mid_pull_is_renewed_before_use(
    slow_blobs: FaultProxy, token_server: TokenServer, store: Path
) -> None:
    token_server.expires_in = 1  # each token is good for a second; the pull takes ~2.4 s
    mark = token_server.mark()
    run = xfer("pull", "-j", "1", *LOGIN, f"{slow_blobs.host}/private/small:1", store=store)
    assert run.code == 0, run.err
    assert len(token_server.requests(mark)) >= 2
    assert [r for r in slow_blobs.requests("GET", "/blobs/") if r.status == 401] == []


def test_token_refused_mid_pull_is_refreshed_once(
    slow_blobs: FaultProxy,
    token_server: TokenServer,
    store: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second token the server issues is already past the registry's leeway: the blob
    request that carries it gets a 401, and the client fetches a new token and goes on."""
    token_server.expires_in = 1
    issue, counter = token_server.issue, itertools.count()

    def issue_second_expired(user: str | None, scopes: Any, service: str | None = None) -> str:
        if next(counter) != 1:
            return issue(user, scopes, service)
        token_server.claim_lifetime = -90
        try:
            return issue(user, scopes, service)
        finally:
            token_server.claim_lifetime = None

    monkeypatch.setattr(token_server, "issue", issue_second_expired)
    mark = token_server.mark()
    run = xfer("pull", "-j", "1", *LOGIN, f"{slow_blobs.host}/private/small:1", store=store)
    assert run.code == 0, run.err
    refused = [r for r in slow_blobs.requests("GET", "/blobs/") if r.status == 401]
    assert len(refused) == 1 and refused[0].request_headers["authorization"].startswith("Bearer ")
    assert len(token_server.requests(mark)) >= 3


def test_a_token_the_registry_always_refuses_fails_cleanly_without_a_loop(
    token_registry: Registry, token_server: TokenServer, store: Path
) -> None:
    token_server.claim_lifetime = -90  # every token is expired for the registry
    mark = token_server.mark()
    run = xfer(
        "pull", "--retries", "3", *LOGIN, f"{token_registry.host}/private/small:1", store=store
    )
    assert run.code == 1
    assert "401" in run.err and token_registry.host in run.err
    assert len(token_server.requests(mark)) == 1
    _no_secret(run.out, run.err, SECRET)


def test_identity_token_is_exchanged_by_oauth2_post(
    token_registry: Registry, token_server: TokenServer, store: Path, home: Home
) -> None:
    refresh = token_server.new_refresh_token("alice")
    home.write_config({"auths": {token_registry.host: {"identitytoken": refresh}}})
    mark = token_server.mark()
    run = xfer("pull", f"{token_registry.host}/private/small:1", store=store, env=home.env)
    assert run.code == 0, run.err
    assert [(r.method, r.grant_type, r.client_id, r.user) for r in token_server.requests(mark)] == [
        ("POST", "refresh_token", "xfer", "alice")
    ]
    _no_secret(run.out, run.err, refresh)


@pytest.mark.parametrize("status", [404, 405, 400])
def test_oauth2_post_refused_falls_back_to_get(
    proxied_realm: tuple[Registry, FaultProxy],
    token_server: TokenServer,
    store: Path,
    home: Home,
    status: int,
) -> None:
    reg, realm = proxied_realm
    realm.add(Status(status, method="POST", match="/token", times=None))
    entry = {"auth": _b64(*ALICE), "identitytoken": "not-honoured-here"}
    home.write_config({"auths": {reg.host: entry}})
    run = xfer("pull", f"{reg.host}/private/small:1", store=store, env=home.env)
    assert run.code == 0, run.err
    assert [(r.method, r.status) for r in realm.requests(path_contains="/token")] == [
        ("POST", status),
        ("GET", 200),
    ]


class InsufficientScope(Fault):
    """A 401 insufficient_scope naming one more scope, for requests that carry a token."""

    def __init__(self, realm: str, scope: str, **options: Any) -> None:
        super().__init__(**options)
        self.realm, self.scope = realm, scope

    def applies(self, req: RequestInfo) -> bool:
        return get_header(req.headers, "authorization") is not None

    def on_request(self, req: RequestInfo) -> Reply | None:
        challenge = (
            f'Bearer realm="{self.realm}",service="{SERVICE}",'
            f'scope="{self.scope}",error="insufficient_scope"'
        )
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"insufficient scope"}]}'
        return Reply(401, [("www-authenticate", challenge)], body)


def test_insufficient_scope_gets_one_token_with_the_challenged_scopes(
    token_registry: Registry, token_server: TokenServer, store: Path
) -> None:
    wanted = "repository:private/small:pull repository:private/other:pull"
    with FaultProxy(token_registry.url) as proxy:
        proxy.add(InsufficientScope(token_server.realm, wanted, match="/manifests/"))
        mark = token_server.mark()
        run = xfer("pull", *LOGIN, f"{proxy.host}/private/small:1", store=store)
    assert run.code == 0, run.err
    assert [set(r.scopes) for r in token_server.requests(mark)] == [
        {"repository:private/small:pull"},
        {"repository:private/small:pull", "repository:private/other:pull"},
    ]


def test_a_realm_on_a_link_local_address_is_refused(token_registry: Registry, store: Path) -> None:
    challenge = 'Bearer realm="http://169.254.169.254/token",service="x"'
    with FaultProxy(token_registry.url) as proxy:
        proxy.add(Status(401, headers=[("www-authenticate", challenge)], match="/v2/", times=None))
        run = xfer("pull", *LOGIN, f"{proxy.host}/private/small:1", store=store)
    assert run.code == 1
    assert "link-local" in run.err
    _no_secret(run.out, run.err, SECRET)


# ---- redirects: secrets stay with their origin ------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target", "reason"),
    [
        ("https://r.example.com/v2/x", "https://cdn.example.net/blob?sig=1", None),
        ("http://127.0.0.1:5000/v2/x", "http://127.0.0.1:6000/blob", None),
        ("http://r.example.com/v2/x", "https://cdn.example.net/blob", None),
        ("https://r.example.com/v2/x", "http://cdn.example.net/blob", "downgrade"),
        ("https://r.example.com/v2/x", "http://r.example.com/blob", "downgrade"),
        ("http://r.example.com/v2/x", "http://169.254.169.254/latest/meta-data", "link-local"),
        ("https://r.example.com/v2/x", "https://[fe80::1]/x", "link-local"),
        ("https://r.example.com/v2/x", "https://[::ffff:169.254.1.1]/x", "link-local"),
        ("https://r.example.com/v2/x", "ftp://cdn.example.net/blob", "scheme"),
    ],
)
def test_redirect_refusals(source: str, target: str, reason: str | None) -> None:
    got = redirects.refusal(httpx.URL(source), httpx.URL(target))
    assert (got is None) if reason is None else (got is not None and reason in got)


@pytest.mark.parametrize(
    ("target", "kept"),
    [
        ("https://r.example.com/v2/other", {"authorization", "cookie", "proxy-authorization"}),
        ("https://r.example.com:443/v2/other", {"authorization", "cookie", "proxy-authorization"}),
        ("https://cdn.example.net/blob", set()),
        ("https://r.example.com:8443/blob", set()),
        ("http://r.example.com/blob", set()),
    ],
    ids=["same-origin", "same-origin-default-port", "other-host", "other-port", "other-scheme"],
)
def test_redirected_requests_drop_secrets_when_the_origin_changes(
    target: str, kept: set[str]
) -> None:
    secrets = {"Authorization": "Bearer t", "Cookie": "c=1", "Proxy-Authorization": "Basic x"}
    first = httpx.Request("GET", "https://r.example.com/v2/x", headers={**secrets, "Accept": "*/*"})
    after = redirects.redirected(first, 307, httpx.URL(target))
    assert {
        k for k in ("authorization", "cookie", "proxy-authorization") if k in after.headers
    } == kept
    assert after.headers["accept"] == "*/*"
    assert after.url == httpx.URL(target) and after.method == "GET"


@pytest.mark.parametrize(
    ("method", "status", "then"),
    [
        ("GET", 307, "GET"),
        ("HEAD", 303, "HEAD"),
        ("POST", 303, "GET"),
        ("POST", 302, "GET"),
        ("PUT", 307, "PUT"),
    ],
)
def test_redirect_methods(method: str, status: int, then: str) -> None:
    request = httpx.Request(method, "https://r.example.com/a")
    assert (
        redirects.redirected(request, status, httpx.URL("https://r.example.com/b")).method == then
    )


class SetCookie(Fault):
    """Adds a session cookie to responses (as load balancers do)."""

    def transform_response(
        self, status: int, headers: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        return [*headers, ("set-cookie", "lb-session=sticky-123; Path=/")]


@pytest.fixture(scope="module")
def cdn(token_registry: Registry) -> Iterator[Registry]:
    """Another loopback host serving the token registry's blobs anonymously (a CDN)."""
    with Registry(storage=token_registry.storage) as reg:
        yield reg


def test_blobs_redirected_to_another_host_carry_no_token_or_cookie(
    token_registry: Registry, cdn: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    with FaultProxy(cdn.url) as second, FaultProxy(token_registry.url) as first:
        first.add(SetCookie(match="/manifests/", times=None))
        first.add(Redirect(to=second.url, method="GET", match="/blobs/", times=None))
        ref = f"{first.host}/private/small:1"
        run = xfer("pull", *LOGIN, ref, store=store)
        assert run.code == 0, run.err
        assert set(stored_blobs(store)) == {b.digest for b in info.blobs} | {info.digest}
        asked = first.requests("GET", "/blobs/")
        served = second.requests("GET", "/blobs/")
    assert len(served) == len(info.blobs) and all(r.status == 200 for r in served)
    # At the origin the token and the cookie were sent (so there was something to leak) ...
    assert all(r.request_headers["authorization"].startswith("Bearer ") for r in asked)
    assert all("lb-session=sticky-123" in r.request_headers.get("cookie", "") for r in asked)
    # ... and the other host got neither.
    for record in served:
        assert not {"authorization", "cookie", "proxy-authorization"} & set(record.request_headers)


def test_a_host_reached_by_redirect_that_challenges_never_gets_the_token(
    token_registry: Registry, store: Path
) -> None:
    with FaultProxy(token_registry.url) as second, FaultProxy(token_registry.url) as first:
        first.add(Redirect(to=second.url, method="GET", match="/blobs/", times=None))
        run = xfer("pull", "--retries", "0", *LOGIN, f"{first.host}/private/small:1", store=store)
        served = second.requests()
    assert run.code == 1
    assert "401" in run.err
    assert served and all("authorization" not in r.request_headers for r in served)


def test_more_than_ten_redirects_is_an_error(registry: Registry, store: Path) -> None:
    with FaultProxy(registry.url) as proxy:
        proxy.add(Redirect(to=proxy.url, method="GET", match="/blobs/", times=None))
        run = xfer("pull", "-j", "1", "--retries", "0", f"{proxy.host}/test/small:1", store=store)
        hops = proxy.requests("GET", "/blobs/")
    assert run.code == 1
    assert "more than 10 redirects" in run.err
    assert len(hops) == 11


def test_a_redirect_to_a_link_local_address_is_refused(registry: Registry, store: Path) -> None:
    with FaultProxy(registry.url) as proxy:
        proxy.add(Redirect(to="http://169.254.169.254", method="GET", match="/blobs/", times=None))
        run = xfer("pull", "--retries", "0", f"{proxy.host}/test/small:1", store=store)
    assert run.code == 1
    assert "link-local" in run.err and "169.254.169.254" in run.err
    assert "X-Amz" not in run.err


def test_push_scope_is_requested_only_when_pushing(
    token_registry: Registry, token_server: TokenServer, store: Path
) -> None:
    source = f"{token_registry.host}/private/small:1"
    mark = token_server.mark()
    assert xfer("pull", *LOGIN, source, store=store).code == 0
    pulled = [scope for r in token_server.requests(mark) for scope in r.scopes]
    assert pulled and all(scope.endswith(":pull") for scope in pulled)

    mark = token_server.mark()
    target = f"{token_registry.host}/private/pushed-small:1"
    run = xfer("push", *LOGIN, source, target, store=store)
    assert run.code == 0, run.err
    pushed = {scope for r in token_server.requests(mark) for scope in r.scopes}
    assert "repository:private/pushed-small:pull,push" in pushed
    assert not any("push" in scope for scope in pushed if "pushed-small" not in scope)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"XDG_RUNTIME_DIR": "{tmp}/run"}, "{tmp}/run/containers/auth.json"),
        ({"XDG_RUNTIME_DIR": ""}, None),
        ({"REGISTRY_AUTH_FILE": "{tmp}/a.json", "XDG_RUNTIME_DIR": "{tmp}/run"}, "{tmp}/a.json"),
        (
            {"REGISTRY_AUTH_FILE": "", "XDG_RUNTIME_DIR": "{tmp}/run"},
            "{tmp}/run/containers/auth.json",
        ),
    ],
    ids=["none", "xdg-runtime", "xdg-runtime-empty", "registry-auth-file", "auth-file-empty"],
)
def test_containers_auth_json_location(
    env: dict[str, str], expected: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """podman's auth.json where podman writes it, whatever the runtime directory's mode."""
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "run").mkdir(mode=0o755)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    want = None if expected is None else Path(expected.format(tmp=tmp_path))
    assert auth.containers_auth_path() == want
