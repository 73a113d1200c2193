"""Registry configuration: xfer's config.toml and containers' registries.conf parsed as tables,
and mirrors end to end: a pull served by a second real registry, falling back to the origin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.faultproxy import FaultProxy, Status
from fixtures.images import BuiltImages, seed
from fixtures.registry import Registry, free_port
from tests.helpers import index_refs, xfer
from transfer.config import (
    HostConfig,
    Mirror,
    MirrorRule,
    RegistryConfig,
    certs_d,
    load,
    parse_registries_conf,
    parse_xfer_config,
)
from transfer.errors import UsageError
from transfer.reference import parse
from transfer.transport import TransportOptions

# ---- config.toml ------------------------------------------------------------------------------

FULL = """
[registry."registry.internal:5000"]
plain-http = true
insecure = false
ca-file = "certs/ca.pem"
client-cert = "/abs/client.cert"
client-key = "~/client.key"
mirrors = ["mirror.example.com/hub", "https://10.0.0.1:5000/", "m.example.com"]

[registry."index.docker.io"]
mirrors = []
"""


def test_xfer_config_reads_every_setting() -> None:
    hosts = parse_xfer_config(FULL, "config.toml", Path("/etc/xfer"))
    assert hosts["registry.internal:5000"] == HostConfig(
        plain_http=True,
        insecure=False,
        ca_file="/etc/xfer/certs/ca.pem",
        client_cert=("/abs/client.cert", str(Path("~/client.key").expanduser())),
        mirrors=(
            Mirror("mirror.example.com", "hub"),
            Mirror("10.0.0.1:5000"),
            Mirror("m.example.com"),
        ),
    )
    assert hosts["docker.io"] == HostConfig(mirrors=())  # every Hub spelling is docker.io


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[registries.x]\nplain-http = true", "unknown setting 'registries'"),
        ('[registry."r"]\nplainhttp = true', "unknown key 'plainhttp'"),
        ('[registry."r"]\nplain-http = "yes"', "plain-http must be true or false"),
        ('[registry."r"]\nclient-cert = "c.cert"', "client-cert and client-key go together"),
        ('[registry."r"]\nmirrors = "m.example.com"', "mirrors must be a list"),
        ('[registry."r"]\nmirrors = ["not a host"]', "bad mirror location"),
        ('[registry."r"]\nca-file = 5', "ca-file must be a file name"),
        ("[registry\n", "not valid TOML"),
        ("registry = 1", "must be a table"),
    ],
)
def test_xfer_config_errors_name_the_file_and_the_key(text: str, complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint) as caught:
        parse_xfer_config(text, "/home/u/.config/xfer/config.toml")
    assert "/home/u/.config/xfer/config.toml" in str(caught.value)


# ---- registries.conf --------------------------------------------------------------------------

REGISTRIES_CONF = """
unqualified-search-registries = ["docker.io", "quay.io"]
short-name-mode = "enforcing"

[[registry]]
prefix = "docker.io"
location = "registry-1.docker.io"
[[registry.mirror]]
location = "mirror.gcr.io"
[[registry.mirror]]
location = "cache.internal:5000/hub"
insecure = true

[[registry]]
prefix = "docker.io/library"
location = "docker.io/library"
[[registry.mirror]]
location = "official.internal/lib"
pull-from-mirror = "digest-only"

[[registry]]
location = "quay.io"
insecure = true

[[registry]]
prefix = "*.example.com"
mirror-by-digest-only = true
[[registry.mirror]]
location = "wild.internal"

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"
"""


def test_registries_conf_mirrors_and_insecure_hosts() -> None:
    rules, hosts = parse_registries_conf(REGISTRIES_CONF, "registries.conf")
    assert rules == (
        MirrorRule("docker.io", (Mirror("mirror.gcr.io"), Mirror("cache.internal:5000", "hub"))),
        MirrorRule("docker.io/library", (Mirror("official.internal", "lib", "digest-only"),)),
        MirrorRule("*.example.com", (Mirror("wild.internal", "", "digest-only"),)),
    )
    assert hosts == {
        "cache.internal:5000": HostConfig(insecure=True),
        "quay.io": HostConfig(insecure=True),
    }


@pytest.mark.parametrize(
    "text",
    ["[[registry]]\ninsecure = true", '[[registry]]\nprefix = "x.io"\n[[registry.mirror]]\n'],
)
def test_registries_conf_errors(text: str) -> None:
    with pytest.raises(UsageError, match=r"registries\.conf"):
        parse_registries_conf(text, "registries.conf")


# ---- which mirrors a reference is read from ---------------------------------------------------

RULES, RC_HOSTS = parse_registries_conf(REGISTRIES_CONF, "registries.conf")
XFER_HOSTS = parse_xfer_config(
    '[registry."r.example.org"]\nmirrors = ["m1.example.org/pre/fix", "m2.example.org"]\n'
    '[registry."quay.io"]\nmirrors = []\n',
    "config.toml",
)
CONFIG = RegistryConfig({**RC_HOSTS, **XFER_HOSTS}, RULES)
DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("reference", "mirrors"),
    [
        (
            "r.example.org/team/app:1",
            ["m1.example.org/pre/fix/team/app:1", "m2.example.org/team/app:1"],
        ),
        ("r.example.org:5000/team/app:1", []),
        ("ubuntu:22.04", []),  # docker.io/library: only digest-only mirrors, and a tag asked
        (f"ubuntu@{DIGEST}", [f"official.internal/lib/ubuntu@{DIGEST}"]),
        (
            "bitnami/redis:7",
            ["mirror.gcr.io/bitnami/redis:7", "cache.internal:5000/hub/bitnami/redis:7"],
        ),
        (
            "index.docker.io/bitnami/redis:7",
            ["mirror.gcr.io/bitnami/redis:7", "cache.internal:5000/hub/bitnami/redis:7"],
        ),
        (f"a.example.com/x/y@{DIGEST}", [f"wild.internal/x/y@{DIGEST}"]),
        ("a.example.com/x/y:1", []),
        ("example.com/x:1", []),
        ("quay.io/x/y:1", []),  # config.toml's empty list overrides (none in rc anyway)
        ("docker.iox/a:1", []),
    ],
    ids=[
        "xfer-config-with-path",
        "port-is-another-host",
        "digest-only-skipped-for-tags",
        "longest-prefix-digest",
        "hub-prefix",
        "hub-alias",
        "wildcard",
        "wildcard-digest-only",
        "wildcard-needs-a-subdomain",
        "own-list-wins",
        "prefix-ends-at-a-component",
    ],
)
def test_mirror_references(reference: str, mirrors: list[str]) -> None:
    assert [str(m) for m in CONFIG.mirrors(parse(reference))] == mirrors


def test_xfer_config_mirrors_replace_registries_conf_for_that_host() -> None:
    own = parse_xfer_config('[registry."docker.io"]\nmirrors = ["127.0.0.1:5001"]', "c")
    config = RegistryConfig({**RC_HOSTS, **own}, RULES)
    assert [str(m) for m in config.mirrors(parse("bitnami/redis:7"))] == [
        "127.0.0.1:5001/bitnami/redis:7"
    ]


# ---- transport options per host --------------------------------------------------------------


def test_transport_adds_host_settings_and_certs_d(tmp_path: Path) -> None:
    host_dir = tmp_path / "certs.d" / "r.example.org:5000"
    host_dir.mkdir(parents=True)
    for name in ("b.crt", "a.crt", "client.cert", "client.key", "README"):
        (host_dir / name).write_text("x")
    config = RegistryConfig(
        {"r.example.org:5000": HostConfig(insecure=True, ca_file="/own/ca.pem")},
        certs_dirs=(tmp_path / "missing", tmp_path / "certs.d"),
    )
    base = TransportOptions(ca_file="/cli/ca.pem", max_connections=7)
    got = config.transport("r.example.org:5000", base)
    assert got.insecure and not got.plain_http and got.max_connections == 7
    assert got.ca_file == "/cli/ca.pem"
    assert got.ca_files == ("/own/ca.pem", str(host_dir / "a.crt"), str(host_dir / "b.crt"))
    assert got.client_cert == (str(host_dir / "client.cert"), str(host_dir / "client.key"))
    assert config.transport("other:1", base) == base


def test_a_client_cert_without_its_key_in_certs_d_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "client.cert").write_text("x")
    with pytest.raises(UsageError, match=r"client\.key"):
        certs_d("h", [tmp_path])


def test_load_merges_registries_conf_under_xfer_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "registries.conf").write_text(
        '[[registry]]\nlocation = "r.example.org"\ninsecure = true\n'
    )
    (tmp_path / "config.toml").write_text('[registry."r.example.org"]\nca-file = "ca.pem"\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(tmp_path / "registries.conf"))
    monkeypatch.setenv("XFER_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("XFER_CERTS_D", f"{tmp_path}/a{':'}{tmp_path}/b")
    config = load()
    assert config.host("r.example.org") == HostConfig(
        insecure=True, ca_file=str(tmp_path / "ca.pem")
    )
    assert config.certs_dirs == (tmp_path / "a", tmp_path / "b")


def test_load_without_files_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(tmp_path / "none.conf"))
    monkeypatch.setenv("XFER_CONFIG", str(tmp_path / "none.toml"))
    config = load()
    assert config.hosts == {} and config.rules == ()


# ---- mirrors end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirror(images: BuiltImages) -> Iterator[Registry]:
    """A second registry holding ``small`` under ``hub/``, as a pull-through cache would."""
    with Registry() as reg:
        seed(images.layout, reg.host, {"small": images.images["small"]}, dest="hub/test/{name}:1")
        yield reg


def _config(tmp_path: Path, host: str, *mirrors: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    listed = ", ".join(f'"{m}"' for m in mirrors)
    path.write_text(f'[registry."{host}"]\nmirrors = [{listed}]\n')
    return {"XFER_CONFIG": str(path)}


def test_pull_is_served_by_the_mirror(
    registry: Registry, mirror: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    env = _config(tmp_path, registry.host, f"{mirror.host}/hub")
    origin_mark, mirror_mark = registry.mark(), mirror.mark()
    ref = f"{registry.host}/{info.ref}"
    run = xfer("pull", ref, store=store, env=env)
    assert run.code == 0, run.err
    assert index_refs(store) == {ref: info.digest}  # stored under the name asked for
    assert registry.requests(origin_mark) == []
    served = mirror.requests(mirror_mark)
    assert {r.repo for r in served} == {"hub/test/small"}
    assert len(mirror.blob_gets(mirror_mark)) == len(info.blobs)


def test_a_mirror_that_is_down_falls_back_to_the_origin(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    env = _config(tmp_path, registry.host, f"127.0.0.1:{free_port()}")
    mark = registry.mark()
    run = xfer("pull", f"{registry.host}/{info.ref}", store=store, env=env)
    assert run.code == 0, run.err
    assert len(registry.blob_gets(mark)) == len(info.blobs)
    assert "mirror 127.0.0.1:" in run.err  # the fallback is told, once
    assert sum("mirror" in line for line in run.err.splitlines()) == 1


def test_a_mirror_without_the_image_falls_back_to_the_origin(
    registry: Registry, mirror: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    env = _config(tmp_path, registry.host, f"{mirror.host}/elsewhere", f"{mirror.host}/hub")
    mirror_mark = mirror.mark()
    run = xfer("pull", f"{registry.host}/{info.ref}", store=store, env=env)
    assert run.code == 0, run.err
    manifests = [r for r in mirror.requests(mirror_mark) if r.kind == "manifest"]
    assert [(r.repo, r.status) for r in manifests] == [
        ("elsewhere/test/small", 404),
        ("hub/test/small", 200),
    ]


def test_a_mirror_answering_5xx_falls_back_at_once(
    registry: Registry, mirror: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    with FaultProxy(mirror.url) as broken:
        broken.add(Status(503, match="/manifests/", times=None))
        env = _config(tmp_path, registry.host, f"{broken.host}/hub")
        mark = registry.mark()
        run = xfer("pull", f"{registry.host}/{info.ref}", store=store, env=env)
        asked = broken.requests()
    assert run.code == 0, run.err
    assert [r.status for r in asked] == [503]  # no retries against a mirror: the origin is next
    assert len(registry.blob_gets(mark)) == len(info.blobs)


def test_mirror_from_registries_conf(
    registry: Registry, mirror: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(
        f'[[registry]]\nprefix = "{registry.host}/test"\nlocation = "{registry.host}/test"\n'
        f'[[registry.mirror]]\nlocation = "{mirror.host}/hub/test"\n'
    )
    origin_mark = registry.mark()
    env = {"CONTAINERS_REGISTRIES_CONF": str(conf)}
    run = xfer("pull", f"{registry.host}/{images.images['small'].ref}", store=store, env=env)
    assert run.code == 0, run.err
    assert registry.requests(origin_mark) == []


def test_docker_hub_is_pulled_from_a_local_mirror(
    mirror: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    """No network here: docker.io works only because the mirror serves it."""
    info = images.images["small"]
    env = _config(tmp_path, "index.docker.io", f"{mirror.host}/hub")
    run = xfer("pull", "test/small:1", store=store, env=env)
    assert run.code == 0, run.err
    assert index_refs(store) == {"docker.io/test/small:1": info.digest}


def test_a_broken_config_file_is_a_usage_error(
    registry: Registry, store: Path, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[registry."x"]\nplain-http = maybe\n')
    run = xfer("pull", f"{registry.host}/test/small:1", store=store, env={"XFER_CONFIG": str(path)})
    assert run.code == 2
    assert str(path) in run.err and len(run.err.strip().splitlines()) == 1


# ---- where the files are (XDG, through platformdirs) -------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "{home}/.config/xfer/config.toml"),
        ({"XDG_CONFIG_HOME": "{tmp}/cfg"}, "{tmp}/cfg/xfer/config.toml"),
        ({"XDG_CONFIG_HOME": ""}, "{home}/.config/xfer/config.toml"),
        # The XDG spec: a relative path is invalid and ignored (it named a file under the cwd).
        ({"XDG_CONFIG_HOME": "rel/cfg"}, "{home}/.config/xfer/config.toml"),
        ({"XFER_CONFIG": "{tmp}/my.toml", "XDG_CONFIG_HOME": "{tmp}/cfg"}, "{tmp}/my.toml"),
        ({"XFER_CONFIG": "", "XDG_CONFIG_HOME": "{tmp}/cfg"}, "{tmp}/cfg/xfer/config.toml"),
    ],
    ids=["default", "xdg", "xdg-empty", "xdg-relative", "xfer-config", "xfer-config-empty"],
)
def test_config_toml_location(
    env: dict[str, str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transfer.config import xfer_config_path

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for name in ("XFER_CONFIG", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    assert xfer_config_path() == Path(expected.format(home=home, tmp=tmp_path))
    assert not home.exists()  # finding the path creates nothing
