"""Registry authentication: challenges, credentials, and bearer tokens.

Pure parts (challenge parsing, credential-file lookup) are synchronous and table-tested; the
token fetch is async and cached per (host, realm, service, scope set) so every blob of a pull
shares one token, and concurrent requests wait for one fetch instead of each making their own.

Credentials are found where docker, podman and skopeo keep them (cli.md, in this order):
``$DOCKER_CONFIG/config.json`` (``credHelpers``, ``credsStore``, ``auths``), then
``$REGISTRY_AUTH_FILE`` or ``$XDG_RUNTIME_DIR/containers/auth.json``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from . import jsonio
from .body import ANSWER_FACTOR
from .errors import AuthError, NetworkError, Unauthorized, UsageError
from .transport import read_capped

MAX_TOKEN_BODY = 1 << 20  # reliability case 4: a token answer larger than this is hostile
DEFAULT_TOKEN_LIFETIME = 60.0  # the token spec's default when expires_in is absent
CLIENT_ID = "xfer"  # OAuth2 client_id sent with refresh-token grants
HUB = "docker.io"
HUB_LOGIN_KEY = "https://index.docker.io/v1/"  # where docker keeps Docker Hub credentials
DOCKER_HUB_ALIASES = (
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "https://index.docker.io/v1/",
    "registry.hub.docker.com",
)
_HUB_HOSTS = frozenset(
    ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")
)
HELPER_TIMEOUT = 30.0
# Token fetches in flight at once to one realm. Each fetch at once is a connection of its own
# (a handshake, over TLS two round trips more); a few, kept alive, carry a run's tokens, where
# one per scope at once (a mirror's images) opened as many connections as repositories, and a
# token service accepting handshakes one by one (a short listen backlog) dropped the rest for
# a SYN retry (1 s).
TOKEN_FETCHES_AT_ONCE = 4
# Scopes a run said it will ask for (TokenCache.expect) go together, this many to one token
# request: a few kilobytes of token at most, under the header limits of common front ends.
SCOPES_PER_TOKEN = 16


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-case: "bearer", "basic", ...
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf'[\s,]*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))')
_SCHEME = re.compile(rf"[\s,]*({_TOKEN})")


def parse_challenges(headers: Sequence[str]) -> list[Challenge]:
    """Parse WWW-Authenticate values (RFC 7235) into challenges, several per header allowed.

    A challenge is a scheme followed by comma-separated ``name=value`` parameters; the next
    bare token (not followed by ``=``) starts the next challenge.
    """
    challenges: list[Challenge] = []
    for header in headers:
        pos = 0
        while (scheme := _SCHEME.match(header, pos)) is not None:
            pos = scheme.end()
            params: dict[str, str] = {}
            while (param := _PARAM.match(header, pos)) is not None:
                quoted = param.group(2)
                value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else param.group(3)
                params[param.group(1).lower()] = value
                pos = param.end()
            challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth2 refresh token from `docker login` against some registries

    def __repr__(self) -> str:  # never print a secret, even in a traceback
        return f"Credentials(username={self.username!r}, password=***)"

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    @property
    def has_password(self) -> bool:
        return bool(self.username and self.password)


# ---- hosts and credential files -------------------------------------------------------------

_HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d+)?")


def registry_host(text: str) -> str:
    """``host[:port]`` from a host, a config key or a URL (``https://host/v1/``).

    Docker Hub's spellings all fold to ``docker.io``; anything that is not a host is a usage
    error (``xfer login 'x y'``).
    """
    host = text.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme) :]
            break
    host = host.split("/", 1)[0]
    if not _HOST_RE.fullmatch(host):
        raise UsageError(f"not a registry host: {text!r}")
    host = host.lower()
    return HUB if host in _HUB_HOSTS else host


def _key_host(key: str) -> str | None:
    """The host a credential-file key is for, or None for a key naming a repository.

    URL keys (``https://host/v1/``) count for their host; a containers auth.json key with a
    path (``host/namespace``) is for that namespace only, so it never matches a bare host.
    """
    has_scheme = key.lower().startswith(("https://", "http://"))
    path = key.split("://", 1)[-1].partition("/")[2].strip("/")
    if path and not (has_scheme and path in ("v1", "v2")):
        return None
    try:
        return registry_host(key)
    except UsageError:
        return None


def login_key(host: str) -> str:
    """The key docker writes for a host: Docker Hub's is its old index URL."""
    return HUB_LOGIN_KEY if host == HUB else host


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def containers_auth_path() -> Path | None:
    """podman's file, where podman puts it: ``$XDG_RUNTIME_DIR`` taken as it is set. Not
    platformdirs' runtime directory: that refuses a directory that is not mode 0700 and falls
    back to ``/run/user/UID``, a place podman never writes its credentials."""
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return Path(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    return None


def _auth_files() -> list[Path]:
    files = [docker_config_path()]
    if (extra := containers_auth_path()) is not None:
        files.append(extra)
    return files


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = jsonio.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read credentials file {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _from_auth_entry(entry: Any) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    token = str(entry.get("identitytoken") or "")
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return Credentials(user, password, token)
    if entry.get("username") or token:
        return Credentials(str(entry.get("username", "")), str(entry.get("password", "")), token)
    return None


def _matching(table: Any, host: str) -> list[Any]:
    """Values of a host-keyed table for ``host``: the exact key first, then other spellings."""
    if not isinstance(table, dict):
        return []
    exact = [table[k] for k in (host, login_key(host)) if k in table]
    return exact + [
        v for k, v in table.items() if k not in (host, login_key(host)) and _key_host(k) == host
    ]


def _helper_keys(host: str) -> list[str]:
    # Helpers look up the server URL docker stored at login: the host as typed, or Hub's URL.
    return [HUB_LOGIN_KEY, HUB] if host == HUB else [host, f"https://{host}"]


def _run_helper(helper: str, action: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    program = f"docker-credential-{helper}"
    try:
        return subprocess.run(
            [program, action], input=data, capture_output=True, timeout=HELPER_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise AuthError(
            f"credential helper {program} is configured but not found on PATH"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuthError(
            f"credential helper {program} {action} failed: {type(exc).__name__}"
        ) from None


def _not_found(done: subprocess.CompletedProcess[bytes]) -> bool:
    return b"credentials not found" in (done.stdout + done.stderr).lower()


def _from_helper(helper: str, host: str) -> Credentials | None:
    """The docker-credential-* protocol: the server URL on stdin, JSON on stdout."""
    for key in _helper_keys(host):
        done = _run_helper(helper, "get", key.encode())
        if done.returncode != 0:
            if _not_found(done):
                continue
            # Its message, not ours: a helper never echoes the secret it could not find.
            reason = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
            raise AuthError(
                f"credential helper docker-credential-{helper} failed for {host}"
                + (f": {reason[0][:200]}" if reason else f" (exit {done.returncode})")
            )
        try:
            data = jsonio.loads(done.stdout)
        except ValueError:
            raise AuthError(f"credential helper docker-credential-{helper} gave bad JSON") from None
        if not isinstance(data, dict):
            raise AuthError(f"credential helper docker-credential-{helper} gave bad JSON")
        user, secret = str(data.get("Username", "")), str(data.get("Secret", ""))
        if user == "<token>":
            return Credentials(identity_token=secret)
        return Credentials(user, secret)
    return None


def _helper_for(config: Mapping[str, Any], host: str) -> str | None:
    """credHelpers for this host wins over credsStore, as in docker."""
    for name in _matching(config.get("credHelpers"), host):
        if name:
            return str(name)
    store = config.get("credsStore")
    return str(store) if store else None


def find_credentials(host: str) -> Credentials | None:
    """Credentials for a registry host from docker's config.json, its helpers, then auth.json.

    Every spelling of Docker Hub finds the same entry. Within a file a helper comes first and
    ``auths`` is the fallback (a credsStore user may still have plain entries).
    """
    try:
        host = registry_host(host)
    except UsageError:
        return None
    for path in _auth_files():
        config = _load_json(path)
        helper = _helper_for(config, host)
        if helper:
            found = _from_helper(helper, host)
            if found:
                return found
        for entry in _matching(config.get("auths"), host):
            found = _from_auth_entry(entry)
            if found:
                return found
    return None


def save_credentials(host: str, credentials: Credentials) -> str:
    """Store credentials as ``docker login`` does; returns where (for the user, no secret).

    Into the host's helper when config.json names one, else into config.json (mode 0600).
    """
    host = registry_host(host)
    path = docker_config_path()
    config = _load_json(path)
    key = login_key(host)
    helper = _helper_for(config, host)
    if helper:
        user, secret = credentials.username, credentials.password
        if credentials.identity_token:
            user, secret = "<token>", credentials.identity_token
        payload = json.dumps({"ServerURL": key, "Username": user, "Secret": secret}).encode()
        done = _run_helper(helper, "store", payload)
        if done.returncode != 0:
            raise AuthError(f"credential helper docker-credential-{helper} could not store {host}")
        return f"credential helper docker-credential-{helper}"
    auths = config.get("auths")
    if not isinstance(auths, dict):
        auths = config["auths"] = {}
    for old in [k for k in auths if k != key and _key_host(k) == host]:
        del auths[old]  # one entry per host: a stale spelling would shadow nothing but confuse
    raw = f"{credentials.username}:{credentials.password}".encode()
    entry: dict[str, str] = {"auth": base64.b64encode(raw).decode()}
    if credentials.identity_token:
        entry["identitytoken"] = credentials.identity_token
    auths[key] = entry
    _write_private(path, config)
    return str(path)


def remove_credentials(host: str) -> bool:
    """Forget a host's credentials (helper erase and config.json entries); True if any were kept."""
    host = registry_host(host)
    path = docker_config_path()
    config = _load_json(path)
    removed = False
    helper = _helper_for(config, host)
    if helper:
        for key in _helper_keys(host):
            done = _run_helper(helper, "erase", key.encode())
            if done.returncode == 0:
                removed = True
            elif not _not_found(done):
                raise AuthError(
                    f"credential helper docker-credential-{helper} could not erase {host}"
                )
    auths = config.get("auths")
    if isinstance(auths, dict):
        stale = [k for k in auths if _key_host(k) == host]
        for key in stale:
            removed = removed or bool(_from_auth_entry(auths[key]))
            del auths[key]
        if stale:
            _write_private(path, config)
    return removed


def _write_private(path: Path, data: Mapping[str, Any]) -> None:
    """Replace a credentials file atomically, readable by its owner only, parents created."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:  # mkstemp's file is 0600 already
            json.dump(data, out, indent="\t")
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- bearer tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenKey:
    """What a token is good for: one host, one token service, one set of scopes."""

    host: str
    realm: str
    service: str
    scopes: tuple[str, ...]  # sorted and unique: the same set is the same key

    @classmethod
    def of(cls, host: str, realm: str, service: str, scopes: Sequence[str]) -> TokenKey:
        return cls(host, realm, service, tuple(sorted(set(scopes))))


@dataclass
class _Token:
    value: str
    expires: float  # time.monotonic()


class TokenCache:
    """Bearer tokens by TokenKey; one fetch at a time per key, renewed before they expire.

    A run that knows which scopes it is about to use (a mirror's plan: one repository per
    image) says so first (``expect``); the first request for one of them then fetches one token
    for a batch of them (up to SCOPES_PER_TOKEN), which every request of the batch's scopes
    uses: one token request where there were as many as repositories, each made while the
    others waited for a connection to the realm. A scope the token service left out of the
    token is met by the registry's 401 and fetched alone (the refused token dropped for it)."""

    def __init__(self, http: httpx.AsyncClient, credentials: Credentials | None) -> None:
        self.http = http
        self.credentials = credentials
        self._tokens: dict[TokenKey, _Token] = {}
        self._pending: dict[TokenKey, anyio.Event] = {}  # keys a fetch in flight will fill
        self._realms: dict[str, anyio.CapacityLimiter] = {}
        self._expected: dict[str, None] = {}  # single scopes, in the order they were said
        self.fetches = 0

    def expect(self, scopes: Sequence[str]) -> None:
        """Scopes the run will ask tokens for, one per request, soon."""
        self._expected.update(dict.fromkeys(scopes))

    def cached(self, key: TokenKey) -> str | None:
        token = self._tokens.get(key)
        if token and token.expires > time.monotonic():
            return token.value
        return None

    def invalidate(self, key: TokenKey, value: str) -> None:
        """Drop a token the registry refused, unless a newer one already replaced it."""
        token = self._tokens.get(key)
        if token is not None and token.value == value:
            del self._tokens[key]

    async def get(self, key: TokenKey) -> str:
        while True:  # concurrent requests wait for the one token request of their key
            token = self.cached(key)
            if token:
                return token
            pending = self._pending.get(key)
            if pending is None:
                break
            await pending.wait()  # it failed if nothing is cached then: the loop fetches
        batch = self._batch(key)
        done = anyio.Event()
        for member in batch:
            self._pending[member] = done
        try:
            realm = self._realms.get(key.realm)
            if realm is None:
                realm = self._realms[key.realm] = anyio.CapacityLimiter(TOKEN_FETCHES_AT_ONCE)
            scopes = [scope for member in batch for scope in member.scopes]
            async with realm:
                fetched = await self._fetch(TokenKey.of(key.host, key.realm, key.service, scopes))
            for member in batch:
                self._tokens[member] = fetched
            return fetched.value
        finally:
            for member in batch:
                del self._pending[member]
            done.set()

    def _batch(self, key: TokenKey) -> list[TokenKey]:
        """``key`` and, when it is one expected scope, more expected scopes without a token."""
        if len(key.scopes) != 1 or key.scopes[0] not in self._expected:
            return [key]
        batch = [key]
        for scope in self._expected:
            if len(batch) == SCOPES_PER_TOKEN:
                break
            other = TokenKey(key.host, key.realm, key.service, (scope,))
            if other != key and other not in self._pending and not self.cached(other):
                batch.append(other)
        return batch

    async def _fetch(self, key: TokenKey) -> _Token:
        if not key.realm.startswith(("https://", "http://")):
            raise AuthError(
                f"registry {key.host} sent a token realm that is not a URL", host=key.host
            )
        self.fetches += 1
        creds = self.credentials
        if creds and creds.identity_token:
            # docker: an identity token is an OAuth2 refresh token, exchanged by POST; token
            # services without the OAuth2 endpoint answer 404/405/400, and then GET is tried.
            status, body = await self._request(key, _oauth_form(key, creds.identity_token))
            if status not in (400, 404, 405):
                return _token_or_error(status, body, key)
        status, body = await self._request(key, None)
        return _token_or_error(status, body, key)

    async def _request(self, key: TokenKey, form: dict[str, str] | None) -> tuple[int, bytes]:
        creds = self.credentials
        answer = ANSWER_FACTOR * (self.http.timeout.read or 60.0)
        try:
            if form is not None:
                stream = self.http.stream("POST", key.realm, data=form)
            else:
                params: list[tuple[str, str | int | float | bool | None]] = (
                    [("service", key.service)] if key.service else []
                )
                params += [("scope", scope) for scope in key.scopes]
                headers = {}
                if creds and creds.has_password:
                    params.append(("account", creds.username))
                    headers["Authorization"] = creds.basic()
                stream = self.http.stream("GET", key.realm, params=params, headers=headers)
            # The whole answer is bounded: a read timeout alone lets a trickle run for ever.
            with anyio.fail_after(answer):
                async with stream as resp:
                    body = await read_capped(
                        resp, MAX_TOKEN_BODY, f"token answer from {key.host}", key.host
                    )
        except TimeoutError:
            raise NetworkError(
                f"token service {httpx.URL(key.realm).netloc.decode()} for {key.host}: "
                f"too slow: no complete answer within {answer:g} s",
                host=key.host,
            ) from None
        except httpx.HTTPError as exc:
            raise AuthError(
                f"token service {httpx.URL(key.realm).host} for {key.host} failed: "
                f"{type(exc).__name__}",
                host=key.host,
            ) from None
        return resp.status_code, body


def _oauth_form(key: TokenKey, refresh_token: str) -> dict[str, str]:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT_ID}
    if key.service:
        form["service"] = key.service
    if key.scopes:
        form["scope"] = " ".join(key.scopes)  # OAuth2: one space-separated parameter
    return form


def _token_or_error(status: int, body: bytes, key: TokenKey) -> _Token:
    if status in (401, 403):
        raise Unauthorized(
            f"unauthorized: the token service for {key.host} refused the credentials",
            host=key.host,
            status=status,
            hint="check the username and password (xfer login)",
        )
    if status != 200:
        raise AuthError(
            f"token service for {key.host} answered HTTP {status}", host=key.host, status=status
        )
    return parse_token_response(body, key.host)


def parse_token_response(
    body: bytes, host: str, now: float | None = None, wall: float | None = None
) -> _Token:
    """The token and when to stop using it (``now`` is monotonic, ``wall`` the clock)."""
    try:
        data = jsonio.loads(body)
    except ValueError:
        raise AuthError(f"token service for {host} answered something that is not JSON") from None
    if not isinstance(data, dict):
        raise AuthError(f"token service for {host} answered a JSON that is not an object")
    value = data.get("token") or data.get("access_token")
    if not isinstance(value, str) or not value:
        raise AuthError(f"token service for {host} answered no token", host=host)
    lifetime = data.get("expires_in")
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    lifetime = float(lifetime)
    # issued_at shortens the life by the token's age, but a skewed clock must neither make
    # every token look expired (a fetch per request) nor extend one: age within [0, life/2].
    issued = _issued_at(data.get("issued_at"))
    if issued is not None:
        age = (time.time() if wall is None else wall) - issued
        lifetime -= min(max(age, 0.0), lifetime / 2)
    # Renew a little early so a token never expires between our check and the registry's.
    lifetime = max(lifetime * 0.9, 1.0)
    return _Token(value, (time.monotonic() if now is None else now) + lifetime)


def _issued_at(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
