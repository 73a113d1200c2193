"""Registry authentication: challenges, credentials, and bearer tokens.

Pure parts (challenge parsing, config.json lookup) are synchronous and table-tested; the token
fetch is async and cached per (realm, service, scopes) so every blob of a pull shares one token.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from .errors import AuthError, Unauthorized

MAX_TOKEN_BODY = 1 << 20  # reliability case 4: a token answer larger than this is hostile
DEFAULT_TOKEN_LIFETIME = 60.0  # the token spec's default when expires_in is absent
DOCKER_HUB_ALIASES = (
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "https://index.docker.io/v1/",
    "registry.hub.docker.com",
)


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


def _host_keys(host: str) -> list[str]:
    if host in DOCKER_HUB_ALIASES:
        return list(DOCKER_HUB_ALIASES)
    return [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def _auth_files() -> list[Path]:
    files = [docker_config_path()]
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    elif os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    return files


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read credentials file {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _from_auth_entry(entry: Any) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return Credentials(user, password, entry.get("identitytoken", ""))
    if entry.get("username") or entry.get("identitytoken"):
        return Credentials(
            entry.get("username", ""), entry.get("password", ""), entry.get("identitytoken", "")
        )
    return None


def _from_helper(helper: str, host: str) -> Credentials | None:
    """The docker-credential-* protocol: the server URL on stdin, JSON on stdout."""
    for key in _host_keys(host)[:2] if host not in DOCKER_HUB_ALIASES else [DOCKER_HUB_ALIASES[3]]:
        try:
            done = subprocess.run(
                [f"docker-credential-{helper}", "get"],
                input=key.encode(),
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AuthError(f"credential helper docker-credential-{helper} failed: {exc}") from None
        if done.returncode != 0:
            continue  # "credentials not found in native keychain"
        try:
            data = json.loads(done.stdout)
        except ValueError:
            raise AuthError(f"credential helper docker-credential-{helper} gave bad JSON") from None
        user, secret = data.get("Username", ""), data.get("Secret", "")
        if user == "<token>":
            return Credentials(identity_token=secret)
        return Credentials(user, secret)
    return None


def find_credentials(host: str) -> Credentials | None:
    """Credentials for a registry host from docker's config.json, its helpers, then auth.json."""
    for index, path in enumerate(_auth_files()):
        config = _load_json(path)
        if index == 0:
            helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
            if helper:
                found = _from_helper(str(helper), host)
                if found:
                    return found
        auths = config.get("auths") or {}
        for key in _host_keys(host):
            found = _from_auth_entry(auths.get(key))
            if found:
                return found
    return None


@dataclass
class _Token:
    value: str
    expires: float


class TokenCache:
    """Bearer tokens keyed by (realm, service, scopes); one fetch at a time per key."""

    def __init__(self, http: httpx.AsyncClient, credentials: Credentials | None) -> None:
        self.http = http
        self.credentials = credentials
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        self._locks: dict[tuple[str, str, tuple[str, ...]], anyio.Lock] = {}
        self.fetches = 0

    def cached(self, realm: str, service: str, scopes: tuple[str, ...]) -> str | None:
        token = self._tokens.get((realm, service, scopes))
        if token and token.expires > time.monotonic():
            return token.value
        return None

    def forget(self, realm: str, service: str, scopes: tuple[str, ...]) -> None:
        self._tokens.pop((realm, service, scopes), None)

    async def get(self, realm: str, service: str, scopes: tuple[str, ...], host: str) -> str:
        key = (realm, service, scopes)
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:  # concurrent blobs wait for one token request, no stampede
            token = self.cached(*key)
            if token:
                return token
            fetched = await self._fetch(realm, service, scopes, host)
            self._tokens[key] = fetched
            return fetched.value

    async def _fetch(self, realm: str, service: str, scopes: tuple[str, ...], host: str) -> _Token:
        if not realm.startswith(("https://", "http://")):
            raise AuthError(f"registry {host} sent a token realm that is not a URL", host=host)
        params: list[tuple[str, str | int | float | bool | None]] = (
            [("service", service)] if service else []
        )
        params += [("scope", scope) for scope in scopes]
        headers = {}
        if self.credentials and self.credentials.username:
            headers["Authorization"] = self.credentials.basic()
        self.fetches += 1
        try:
            async with self.http.stream("GET", realm, params=params, headers=headers) as resp:
                body = await _read_capped(resp, MAX_TOKEN_BODY, host)
        except httpx.HTTPError as exc:
            raise AuthError(
                f"token service {httpx.URL(realm).host} failed: {type(exc).__name__}", host=host
            ) from None
        if resp.status_code in (401, 403):
            raise Unauthorized(
                f"unauthorized: the token service for {host} refused the credentials",
                host=host,
                status=resp.status_code,
                hint="check the username and password (xfer login)",
            )
        if resp.status_code != 200:
            raise AuthError(
                f"token service for {host} answered HTTP {resp.status_code}",
                host=host,
                status=resp.status_code,
            )
        return parse_token_response(body, host)


async def _read_capped(resp: httpx.Response, cap: int, host: str) -> bytes:
    chunks = bytearray()
    async for chunk in resp.aiter_bytes():
        chunks += chunk
        if len(chunks) > cap:
            raise AuthError(f"token answer from {host} is larger than {cap} bytes", host=host)
    return bytes(chunks)


def parse_token_response(body: bytes, host: str, now: float | None = None) -> _Token:
    try:
        data = json.loads(body)
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
    # Renew a little early so a token never expires between our check and the registry's.
    lifetime = max(float(lifetime) * 0.9, 1.0)
    return _Token(value, (time.monotonic() if now is None else now) + lifetime)
