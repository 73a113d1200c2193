"""Registry configuration as users already have it: xfer's ``config.toml``, the mirrors of
containers' ``registries.conf``, and docker's ``certs.d`` directories.

    # $XFER_CONFIG, default ~/.config/xfer/config.toml
    [registry."docker.io"]
    mirrors = ["127.0.0.1:5001", "mirror.example.com/hub"]  # tried in order, then docker.io

    [registry."registry.internal:5000"]
    plain-http = true                  # or insecure = true: TLS without verification
    ca-file = "internal-ca.pem"        # relative paths are relative to this file
    client-cert = "client.cert"
    client-key = "client.key"

A mirror is ``host[:port][/path]``: ``docker.io/library/alpine`` is read from
``mirror.example.com/hub/library/alpine``. Mirrors serve reads only. When config.toml lists
mirrors for a host, registries.conf's mirrors for it are not used (one list, in one order).

Parsing is pure (text in, values out) and table-tested; ``load()`` finds and reads the files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from .auth import registry_host
from .errors import UsageError
from .reference import Reference
from .transport import TransportOptions

if TYPE_CHECKING:
    from platformdirs.unix import Unix

PullFrom = Literal["all", "digest-only", "tag-only"]
_PULL_FROM = ("all", "digest-only", "tag-only")
_LOCATION = re.compile(
    r"(?P<host>(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d+)?)"
    r"(?P<path>(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
)
_HOST_KEYS = frozenset(
    {"plain-http", "insecure", "ca-file", "client-cert", "client-key", "mirrors"}
)


@dataclass(frozen=True)
class Mirror:
    """Where else a repository can be read: ``host[:port][/path]``."""

    host: str
    path: str = ""  # prepended to the repository's path below the matched prefix
    pull_from: PullFrom = "all"  # registries.conf's pull-from-mirror

    @classmethod
    def parse(cls, location: str, pull_from: str = "all", *, source: str = "") -> Mirror:
        text = location.strip()
        for scheme in ("https://", "http://"):
            text = text.removeprefix(scheme)
        match = _LOCATION.fullmatch(text.rstrip("/"))
        if not match:
            raise UsageError(f"{source}: bad mirror location {location!r}")
        if pull_from not in _PULL_FROM:
            raise UsageError(f"{source}: pull-from-mirror must be one of {', '.join(_PULL_FROM)}")
        return cls(match["host"].lower(), match["path"].strip("/"), cast(PullFrom, pull_from))

    def serves(self, ref: Reference) -> bool:
        if self.pull_from == "digest-only":
            return ref.digest is not None
        if self.pull_from == "tag-only":
            return ref.digest is None
        return True

    def __str__(self) -> str:
        return f"{self.host}/{self.path}" if self.path else self.host


@dataclass(frozen=True)
class HostConfig:
    """One registry's settings; None means "not set here" so two files can be merged."""

    plain_http: bool | None = None
    insecure: bool | None = None
    ca_file: str | None = None
    client_cert: tuple[str, str] | None = None  # (certificate, key)
    mirrors: tuple[Mirror, ...] | None = None

    def over(self, lower: HostConfig) -> HostConfig:
        """These settings, falling back to ``lower``'s where unset."""
        merged = {
            f.name: getattr(self, f.name)
            if getattr(self, f.name) is not None
            else getattr(lower, f.name)
            for f in fields(self)
        }
        return HostConfig(**merged)


@dataclass(frozen=True)
class MirrorRule:
    """registries.conf: references under ``prefix`` may be read from ``mirrors`` first."""

    prefix: str  # "docker.io", "docker.io/library", "*.example.com"
    mirrors: tuple[Mirror, ...]

    def remainder(self, ref: Reference) -> str | None:
        """The part of the reference's name after the prefix ("/library/x"), or None."""
        if self.prefix.startswith("*."):
            host = ref.registry.split(":")[0]
            return ref.name[len(ref.registry) :] if host.endswith(self.prefix[1:]) else None
        if ref.name == self.prefix or ref.name.startswith(self.prefix + "/"):
            return ref.name[len(self.prefix) :]
        return None


@dataclass(frozen=True)
class RegistryConfig:
    """Everything the configuration files say about registries (``load()`` reads them)."""

    hosts: Mapping[str, HostConfig] = field(default_factory=dict)  # by registry_host()
    rules: tuple[MirrorRule, ...] = ()  # from registries.conf
    certs_dirs: tuple[Path, ...] = ()  # docker/containers certs.d roots, in order

    def host(self, host: str) -> HostConfig:
        return self.hosts.get(_host_key(host), HostConfig())

    def mirrors(self, ref: Reference) -> list[Reference]:
        """The references to try before ``ref`` itself, in order (pulls only)."""
        own = self.host(ref.registry).mirrors
        if own is not None:
            chosen: Sequence[Mirror] = own
            rest: str | None = "/" + ref.repository
        else:
            chosen, rest = (), None
            matches = [(rule, r) for rule in self.rules if (r := rule.remainder(ref)) is not None]
            if matches:
                rule, rest = max(matches, key=lambda m: len(m[0].prefix))
                chosen = rule.mirrors
        out = []
        for mirror in chosen:
            if rest is None or not mirror.serves(ref):
                continue
            repository = (mirror.path + rest).strip("/")
            out.append(Reference(mirror.host, repository, ref.tag, ref.digest))
        return out

    def transport(self, host: str, base: TransportOptions) -> TransportOptions:
        """``base`` (the command line) with this host's settings and certs.d files added."""
        own = self.host(host)
        ca_files, client_cert = certs_d(host, self.certs_dirs)
        return replace(
            base,
            plain_http=base.plain_http or bool(own.plain_http),
            insecure=base.insecure or bool(own.insecure),
            ca_files=(*base.ca_files, *((own.ca_file,) if own.ca_file else ()), *ca_files),
            client_cert=base.client_cert or own.client_cert or client_cert,
        )


def _host_key(host: str) -> str:
    try:
        return registry_host(host)
    except UsageError:
        return host.lower()


# ---- xfer's config.toml -----------------------------------------------------------------------


def parse_xfer_config(text: str, source: str, base: Path | None = None) -> dict[str, HostConfig]:
    """``[registry."HOST"]`` tables; unknown keys are errors (a typo must not pass silently)."""
    data = _toml(text, source)
    unknown = set(data) - {"registry"}
    if unknown:
        raise UsageError(
            f'{source}: unknown setting {sorted(unknown)[0]!r} (expected [registry."HOST"])'
        )
    registries = data.get("registry", {})
    if not isinstance(registries, dict):
        raise UsageError(f"{source}: 'registry' must be a table of hosts")
    hosts: dict[str, HostConfig] = {}
    for name, table in registries.items():
        where = f"{source}: registry {name!r}"
        if not isinstance(table, dict):
            raise UsageError(f"{where} must be a table")
        unknown = set(table) - _HOST_KEYS
        if unknown:
            raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        cert, key = (
            _path(table, "client-cert", where, base),
            _path(table, "client-key", where, base),
        )
        if (cert is None) != (key is None):
            raise UsageError(f"{where}: client-cert and client-key go together")
        mirrors = table.get("mirrors")
        if mirrors is not None and not (
            isinstance(mirrors, list) and all(isinstance(m, str) for m in mirrors)
        ):
            raise UsageError(f'{where}: mirrors must be a list of "host[:port][/path]"')
        hosts[_host_key(name)] = HostConfig(
            plain_http=_bool(table, "plain-http", where),
            insecure=_bool(table, "insecure", where),
            ca_file=_path(table, "ca-file", where, base),
            client_cert=(cert, key) if cert and key else None,
            mirrors=tuple(Mirror.parse(m, source=where) for m in mirrors)
            if mirrors is not None
            else None,
        )
    return hosts


def _bool(table: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = table.get(key)
    if value is not None and not isinstance(value, bool):
        raise UsageError(f"{where}: {key} must be true or false")
    return value


def _path(table: Mapping[str, Any], key: str, where: str, base: Path | None) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: {key} must be a file name")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path)


# ---- containers' registries.conf --------------------------------------------------------------


def parse_registries_conf(
    text: str, source: str
) -> tuple[tuple[MirrorRule, ...], dict[str, HostConfig]]:
    """The ``[[registry]]`` entries' mirrors and ``insecure`` flags (version 2 format).

    Everything else in the file (search registries, short names, blocking, location rewrites)
    is another tool's business and ignored.
    """
    data = _toml(text, source)
    entries = data.get("registry", [])
    if not isinstance(entries, list):
        return (), {}
    rules: list[MirrorRule] = []
    hosts: dict[str, HostConfig] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        prefix = str(entry.get("prefix") or entry.get("location") or "")
        if not prefix:
            raise UsageError(f"{source}: a [[registry]] needs a prefix or a location")
        prefix = _normal_prefix(prefix)
        where = f"{source}: registry {prefix!r}"
        location = str(entry.get("location") or "")
        if entry.get("insecure") is True and (location or not prefix.startswith("*.")):
            hosts[_host_key((location or prefix).split("/")[0])] = HostConfig(insecure=True)
        digest_only = entry.get("mirror-by-digest-only") is True  # the older spelling
        mirrors = []
        for item in entry.get("mirror") or []:
            if not isinstance(item, dict) or not item.get("location"):
                raise UsageError(f"{where}: a [[registry.mirror]] needs a location")
            pull_from = str(
                item.get("pull-from-mirror") or ("digest-only" if digest_only else "all")
            )
            mirror = Mirror.parse(str(item["location"]), pull_from, source=where)
            mirrors.append(mirror)
            if item.get("insecure") is True:
                hosts[_host_key(mirror.host)] = HostConfig(insecure=True)
        if mirrors:
            rules.append(MirrorRule(prefix, tuple(mirrors)))
    return tuple(rules), hosts


def _normal_prefix(prefix: str) -> str:
    prefix = prefix.strip().rstrip("/")
    if prefix.startswith("*."):
        return prefix.lower()
    host, _, path = prefix.partition("/")
    host = _host_key(host)
    return f"{host}/{path}" if path else host


def _toml(text: str, source: str) -> dict[str, Any]:
    import tomllib  # only where a config file exists

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}") from None


# ---- certs.d ----------------------------------------------------------------------------------


def certs_d(host: str, roots: Sequence[Path]) -> tuple[tuple[str, ...], tuple[str, str] | None]:
    """CA files (``*.crt``) and the first client certificate (``NAME.cert`` + ``NAME.key``)
    in ``ROOT/HOST/`` of each root, as docker and containers read them."""
    ca_files: list[str] = []
    client: tuple[str, str] | None = None
    for root in roots:
        directory = root / host
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.suffix == ".crt":
                ca_files.append(str(path))
            elif path.suffix == ".cert" and client is None:
                key = path.with_suffix(".key")
                if not key.is_file():
                    raise UsageError(f"client certificate {path} has no key {key.name} beside it")
                client = (str(path), str(key))
    return tuple(ca_files), client


# ---- finding the files ------------------------------------------------------------------------


def xdg_dirs() -> Unix:
    """xfer's own directories where the XDG Base Directory spec puts them (an empty or
    relative ``$XDG_…`` is ignored, as the spec says). The Unix rules on every system, so the
    documented ``~/.config/xfer`` and ``~/.local/share/xfer`` hold on macOS too."""
    from platformdirs.unix import Unix  # only when a default path is needed

    return Unix("xfer", appauthor=False)


def xfer_config_path() -> Path:
    """``$XFER_CONFIG``, else ``$XDG_CONFIG_HOME/xfer/config.toml`` (``~/.config/xfer/…``)."""
    if os.environ.get("XFER_CONFIG"):
        return Path(os.environ["XFER_CONFIG"])
    return xdg_dirs().user_config_path / "config.toml"


def registries_conf_path() -> Path:
    """``$CONTAINERS_REGISTRIES_CONF``, else the user's file if it exists, else the system's."""
    if os.environ.get("CONTAINERS_REGISTRIES_CONF"):
        return Path(os.environ["CONTAINERS_REGISTRIES_CONF"])
    user = Path.home() / ".config" / "containers" / "registries.conf"
    return user if user.is_file() else Path("/etc/containers/registries.conf")


def default_certs_dirs() -> tuple[Path, ...]:
    """``$XFER_CERTS_D`` (a path list, for tests and odd setups), else docker's and containers'."""
    if "XFER_CERTS_D" in os.environ:
        return tuple(Path(p) for p in os.environ["XFER_CERTS_D"].split(os.pathsep) if p)
    return (
        Path("/etc/docker/certs.d"),
        Path.home() / ".config" / "containers" / "certs.d",
        Path("/etc/containers/certs.d"),
    )


def load() -> RegistryConfig:
    """Read registries.conf and config.toml (missing files are empty configurations)."""
    rules: tuple[MirrorRule, ...] = ()
    hosts: dict[str, HostConfig] = {}
    conf = registries_conf_path()
    if text := _read(conf):
        rules, hosts = parse_registries_conf(text, str(conf))
    path = xfer_config_path()
    if text := _read(path):
        for name, own in parse_xfer_config(text, str(path), path.parent).items():
            hosts[name] = own.over(hosts.get(name, HostConfig()))
    return RegistryConfig(hosts, rules, default_certs_dirs())


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
