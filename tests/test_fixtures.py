"""Proof that the test harness itself works: images, registries, token server, access log."""

import base64
import gzip
import io
import json
import os
import ssl
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fixtures.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    IMAGE_NAMES,
    OCI_INDEX,
    BuiltImages,
    ImageInfo,
    SkopeoError,
    build,
    inspect_raw,
    read_blob,
    seed,
    sha256,
    skopeo,
)
from fixtures.registry import Registry, parse_access_log
from fixtures.tokenserver import ALICE, CertAuthority, TokenServer, decode_jwt

# --- helpers -----------------------------------------------------------------------------


def _open(req: urllib.request.Request | str, ctx: ssl.SSLContext | None = None) -> Any:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )
    return opener.open(req, timeout=10)


def _token_get(ts: TokenServer, scopes: list[str], auth: tuple[str, str] | None = None) -> Any:
    query = urllib.parse.urlencode([("service", ts.service)] + [("scope", s) for s in scopes])
    req = urllib.request.Request(f"{ts.realm}?{query}")
    if auth:
        req.add_header(
            "Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        )
    with _open(req) as resp:
        return json.load(resp)


def _token_post(ts: TokenServer, **form: str) -> Any:
    data = urllib.parse.urlencode({"service": ts.service, "client_id": "xfer-tests", **form})
    with _open(urllib.request.Request(ts.realm, data=data.encode(), method="POST")) as resp:
        return json.load(resp)


def _all_manifests(info: ImageInfo) -> list[ImageInfo]:
    return [info, *info.children] if info.children else [info]


# --- images ------------------------------------------------------------------------------


def test_images_are_deterministic(tmp_path: Path, images: BuiltImages) -> None:
    one = build(tmp_path / "one", large_size=1 << 20)
    two = build(tmp_path / "two", large_size=1 << 20)
    assert {n: i.digest for n, i in one.items()} == {n: i.digest for n, i in two.items()}
    assert set(one) == set(IMAGE_NAMES)
    for name in IMAGE_NAMES:
        if name != "large":  # the only image whose bytes depend on large_size
            assert one[name] == images.images[name]
    index_one = (tmp_path / "one" / "index.json").read_bytes()
    assert index_one == (tmp_path / "two" / "index.json").read_bytes()


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_layers_match_diff_ids(images: BuiltImages, name: str) -> None:
    for info in _all_manifests(images.images[name]):
        assert sha256(read_blob(images.layout, info.digest)) == info.digest
        if info.is_index:
            continue
        assert info.config is not None
        config = json.loads(read_blob(images.layout, info.config.digest))
        assert config["rootfs"]["diff_ids"] == list(info.diff_ids)
        assert (config["os"], config["architecture"]) == tuple(str(info.platform).split("/"))
        for layer, diff_id in zip(info.layers, info.diff_ids, strict=True):
            data = read_blob(images.layout, layer.digest)
            assert len(data) == layer.size and sha256(data) == layer.digest
            assert sha256(gzip.decompress(data)) == diff_id


def test_image_shapes(images: BuiltImages) -> None:
    imgs = images.images
    assert len(imgs["small"].layers) == 3
    a, b = imgs["shared-a"].layers, imgs["shared-b"].layers
    assert len(a) == len(b) == 4 and a[:2] == b[:2] and set(a[2:]).isdisjoint(b[2:])
    docker = imgs["docker"]
    assert docker.media_type == DOCKER_MANIFEST and docker.config is not None
    assert docker.config.media_type == DOCKER_CONFIG
    assert {layer.media_type for layer in docker.layers} == {DOCKER_LAYER_GZIP}
    assert imgs["large"].layers[0].size > 24 << 20
    multi = imgs["multi"]
    assert multi.media_type == OCI_INDEX and set(multi.platforms) == {"linux/amd64", "linux/arm64"}
    amd, arm = multi.child("linux/amd64"), multi.child("linux/arm64")
    assert set(amd.layers).isdisjoint(arm.layers)


def test_whiteouts_layers(images: BuiltImages) -> None:
    info = images.images["whiteouts"]
    names = []
    for layer in info.layers:
        data = gzip.decompress(read_blob(images.layout, layer.digest))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names.append(tar.getnames())
    assert "a/.wh.gone" in names[1] and "b/.wh..wh..opq" in names[1]
    assert {"c/hard", "c/soft"} <= set(names[2])


# --- seeded registries -------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_seeded_digests(registry: Registry, images: BuiltImages, name: str) -> None:
    info = images.images[name]
    raw = inspect_raw(f"{registry.host}/{info.ref}")
    assert raw == info.raw and sha256(raw) == info.digest


def test_multi_has_both_platforms(registry: Registry, images: BuiltImages) -> None:
    multi = images.images["multi"]
    index = json.loads(inspect_raw(f"{registry.host}/test/multi:1"))
    platforms = {
        f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
        for m in index["manifests"]
    }
    assert platforms == multi.platforms
    for digest in platforms.values():
        assert sha256(inspect_raw(f"{registry.host}/test/multi@{digest}")) == digest


def test_access_log_counts_blob_gets(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    small = images.images["small"]
    mark = registry.mark()
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/test/small:1",
        f"oci:{tmp_path}/out:small",
    )
    gets = registry.blob_gets(mark, repo="test/small")
    assert sorted(r.path.rsplit("/", 1)[1] for r in gets) == sorted(b.digest for b in small.blobs)
    assert all(r.status == 200 for r in gets)
    assert {r.size for r in gets} == {b.size for b in small.blobs}
    # Only this test's requests are counted from the mark on.
    mark = registry.mark()
    layer = small.layers[0]
    with _open(f"{registry.url}/v2/test/small/blobs/{layer.digest}") as resp:
        assert resp.read() == read_blob(images.layout, layer.digest)
    assert [(r.method, r.kind, r.status) for r in registry.requests(mark)] == [("GET", "blob", 200)]


def test_parse_access_log_line() -> None:
    line = (
        '127.0.0.1 - - [29/Nov/2026:18:01:08 +0000] "GET /v2/a/b/blobs/sha256:ab?x=1 HTTP/1.1" '
        '206 5 "" "xfer/0.1 (\\"q\\")"'
    )
    req = parse_access_log(line)
    assert req is not None
    assert (req.method, req.path, req.status, req.size, req.query) == (
        "GET",
        "/v2/a/b/blobs/sha256:ab",
        206,
        5,
        "x=1",
    )
    assert (req.kind, req.repo) == ("blob", "a/b")
    assert parse_access_log('time="..." level=info msg="listening"') is None


def test_empty_registry_push_and_restart(empty_registry: Registry, images: BuiltImages) -> None:
    with _open(f"{empty_registry.url}/v2/_catalog") as resp:
        assert json.load(resp) == {"repositories": []}
    small = images.images["small"]
    seed(images.layout, empty_registry.host, [small], dest="pushed/small:latest")
    empty_registry.restart()  # same port and storage
    assert sha256(inspect_raw(f"{empty_registry.host}/pushed/small:latest")) == small.digest


# --- auth --------------------------------------------------------------------------------


def test_token_auth_with_skopeo(
    token_registry: Registry, token_server: TokenServer, images: BuiltImages
) -> None:
    digest = images.images["small"].digest
    mark = token_server.mark()
    assert sha256(inspect_raw(f"{token_registry.host}/public/small:1")) == digest
    with pytest.raises(SkopeoError, match=r"denied|unauthorized"):
        inspect_raw(f"{token_registry.host}/private/small:1")
    assert sha256(inspect_raw(f"{token_registry.host}/private/small:1", creds=ALICE)) == digest
    with pytest.raises(SkopeoError):
        inspect_raw(f"{token_registry.host}/private/small:1", creds=("alice", "wrong"))
    users = {(r.user, r.status) for r in token_server.requests(mark)}
    assert {(None, 200), ("alice", 200), (None, 401)} <= users


def test_token_kid_signing_pulls(
    token_registry: Registry, token_server: TokenServer, images: BuiltImages
) -> None:
    token_server.signing = "kid"  # no x5c: the registry finds the key by its libtrust kid
    raw = inspect_raw(f"{token_registry.host}/private/multi:1", creds=ALICE)
    assert sha256(raw) == images.images["multi"].digest


def test_token_endpoint_protocol(token_server: TokenServer) -> None:
    token_server.expires_in = 7
    body = _token_get(
        token_server, ["repository:private/x:pull,push", "repository:public/y:pull"], ALICE
    )
    assert body["token"] == body["access_token"] and body["expires_in"] == 7
    header, claims = decode_jwt(body["token"])
    assert header["alg"] == "ES256" and header["x5c"] and header["kid"].count(":") == 11
    assert claims["iss"] == token_server.issuer and claims["aud"] == token_server.service
    assert claims["exp"] - claims["iat"] == 7
    assert claims["access"] == [
        {"type": "repository", "name": "private/x", "actions": ["pull", "push"]},
        {"type": "repository", "name": "public/y", "actions": ["pull"]},
    ]
    anon = decode_jwt(_token_get(token_server, ["repository:private/x:pull"])["token"])[1]
    assert anon["access"] == [] and anon["sub"] == ""
    with pytest.raises(urllib.error.HTTPError) as err:
        _token_get(token_server, ["repository:private/x:pull"], ("alice", "nope"))
    assert err.value.code == 401
    # OAuth2: password grant with a refresh token, then the refresh grant.
    mark = token_server.mark()
    scope = "repository:private/x:pull repository:private/z:push"
    first = _token_post(
        token_server,
        grant_type="password",
        username="alice",
        password="secret",
        access_type="offline",
        scope=scope,
    )
    assert first["refresh_token"]
    again = _token_post(
        token_server, grant_type="refresh_token", refresh_token=first["refresh_token"], scope=scope
    )
    assert len(decode_jwt(again["access_token"])[1]["access"]) == 2 and "refresh_token" not in again
    with pytest.raises(urllib.error.HTTPError) as err:
        _token_post(token_server, grant_type="password", username="alice", password="nope")
    assert err.value.code == 401
    reqs = token_server.requests(mark)
    assert [(r.method, r.grant_type, r.status) for r in reqs] == [
        ("POST", "password", 200),
        ("POST", "refresh_token", 200),
        ("POST", "password", 401),
    ]
    assert reqs[0].scopes == ("repository:private/x:pull", "repository:private/z:push")


def test_htpasswd_registry(basic_registry: Registry, images: BuiltImages) -> None:
    digest = images.images["docker"].digest
    assert sha256(inspect_raw(f"{basic_registry.host}/test/docker:1", creds=ALICE)) == digest
    with pytest.raises(SkopeoError, match=r"unauthorized|authentication required"):
        inspect_raw(f"{basic_registry.host}/test/docker:1")
    with pytest.raises(SkopeoError):
        inspect_raw(f"{basic_registry.host}/test/docker:1", creds=("alice", "wrong"))


def test_mtls_registry(tmp_path: Path) -> None:
    ca = CertAuthority()
    ca_file = ca.write_ca(tmp_path / "ca.pem")
    server = ca.write_leaf(tmp_path, "server", hosts=["127.0.0.1", "localhost"], server=True)
    client = ca.write_leaf(tmp_path, "client", client=True)
    with Registry(
        tls=(server.cert, server.key, ca_file), probe_cert=(client.cert, client.key)
    ) as reg:
        assert reg.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(client.cert, client.key)
        with _open(f"{reg.url}/v2/", ctx) as resp:
            assert resp.status == 200
        bare = ssl.create_default_context(cafile=str(ca_file))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            _open(f"{reg.url}/v2/", bare).read()
        assert [r.path for r in reg.requests()] == ["/v2/"]


def test_stop_ends_the_process() -> None:
    reg = Registry().start()
    pid = reg.pid
    assert pid is not None and reg.running
    reg.stop()
    assert not reg.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie


def test_token_expiry_has_60s_leeway(token_registry: Registry, token_server: TokenServer) -> None:
    ref = f"{token_registry.host}/private/small:1"
    token_server.claim_lifetime = -1  # expired a second ago: distribution still accepts it
    inspect_raw(ref, creds=ALICE)
    token_server.claim_lifetime = -90  # past exp + 60 s leeway: rejected
    with pytest.raises(SkopeoError, match=r"unauthorized|authentication required"):
        inspect_raw(ref, creds=ALICE)
