"""A red-team pass's findings, one section each: a blob that is also a manifest meeting gc, an
archive naming one image many times, a layer listed many times, deeply nested JSON from every
parser, server text in ``--debug``, link-local addresses in disguise, files opened under the
store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from fixtures import hostile as h
from tests.helpers import index_refs, peak_rss, xfer_env
from transfer import api, auth, cli, client, durable, redirects, transport
from transfer.api import Settings
from transfer.digest import Digest, Verifier
from transfer.endpoints.layout import Layout
from transfer.errors import (
    ArchiveError,
    AuthError,
    ManifestError,
    RegistryError,
    SizeMismatch,
    StoreError,
)
from transfer.ingest import Ingest
from transfer.maintenance import collect, reachable, verify
from transfer.manifest import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Descriptor, Manifest
from transfer.retry import RetryPolicy, retrying

REF_NAME = "org.opencontainers.image.ref.name"


def _blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _put(root: Path, doc: dict[str, Any]) -> tuple[str, int]:
    raw = json.dumps(doc).encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    _blob(root, digest).write_bytes(raw)
    return digest, len(raw)


def _index(root: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((root / "index.json").read_text())
    return doc


def _image_blobs(root: Path, manifest_digest: str) -> list[str]:
    manifest = json.loads(_blob(root, manifest_digest).read_bytes())
    return [manifest["config"]["digest"], *(x["digest"] for x in manifest["layers"])]


# ---- 1: a digest reached as a blob and as a manifest --------------------------------------------


def _store_with_b_as_a_layer_of_a(root: Path) -> str:
    """Image B, and image A one of whose "layers" is B's manifest (a hostile registry's A
    makes B's manifest look already present). B is listed first, so a walk meets it as A's
    layer before it meets it as an image. B's manifest digest."""
    h.write_image(root, "localhost/b:1", [h.layer([h.file("b.txt", "I am B")])])
    b = _index(root)["manifests"][0]
    h.write_image(root, "localhost/a:1", [h.layer([h.file("a.txt", "A")])])
    index = _index(root)
    entry_a = next(e for e in index["manifests"] if e["annotations"][REF_NAME].endswith("a:1"))
    manifest_a = json.loads(_blob(root, entry_a["digest"]).read_bytes())
    manifest_a["layers"].append(
        {"mediaType": h.LAYER_TYPES["tar"], "digest": b["digest"], "size": b["size"]}
    )
    config = json.loads(_blob(root, manifest_a["config"]["digest"]).read_bytes())
    config["rootfs"]["diff_ids"].append(b["digest"])
    digest, size = _put(root, config)
    manifest_a["config"].update(digest=digest, size=size)
    digest, size = _put(root, manifest_a)
    entry_a.update(digest=digest, size=size)
    index["manifests"].sort(key=lambda e: e["annotations"][REF_NAME] != "localhost/a:1")
    (root / "index.json").write_text(json.dumps(index))
    return str(b["digest"])


@pytest.mark.parametrize("order", ["a-first", "b-first"])
def test_gc_keeps_an_image_whose_manifest_another_lists_as_a_layer(
    tmp_path: Path, order: str
) -> None:
    root = tmp_path / "store"
    b = _store_with_b_as_a_layer_of_a(root)
    if order == "b-first":
        index = _index(root)
        index["manifests"].reverse()
        (root / "index.json").write_text(json.dumps(index))
    layout = Layout(root)
    assert set(_image_blobs(root, b)) <= {str(d) for d in reachable(layout).blobs}
    collect(layout)
    for digest in _image_blobs(root, b):
        assert _blob(root, digest).is_file(), f"gc removed {digest} of image B"
    assert verify(layout).problems == ()


def test_gc_deletes_nothing_when_a_root_is_not_a_manifest_type(tmp_path: Path) -> None:
    root = tmp_path / "store"
    h.write_image(root, "localhost/odd:1", [h.layer([h.file("odd.txt", "odd")])])
    index = _index(root)
    index["manifests"][0]["mediaType"] = "application/octet-stream"
    (root / "index.json").write_text(json.dumps(index))
    blobs = _image_blobs(root, index["manifests"][0]["digest"])
    layout = Layout(root)
    with pytest.raises(StoreError, match=r"gc deleted nothing.*application/octet-stream"):
        collect(layout)
    for digest in blobs:
        assert _blob(root, digest).is_file(), f"gc removed {digest}"
    assert any("application/octet-stream" in p for p in verify(layout).problems)


# ---- 2: an archive naming one image many times -------------------------------------------------


def _oci_archive_naming_one_image(tmp_path: Path, names: int) -> Path:
    """An oci-archive whose index.json lists one image ``names`` times, each under its own
    name."""
    layout = tmp_path / "layout"
    h.write_image(layout, "localhost/one:1", [h.layer([h.file("one.txt", "one")])])
    entry = _index(layout)["manifests"][0]
    entries = [{**entry, "annotations": {REF_NAME: f"localhost/r{i}:1"}} for i in range(names)]
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, str(path.relative_to(layout)), recursive=False)
    return archive


def test_load_copies_an_image_named_many_times_once(tmp_path: Path) -> None:
    archive = _oci_archive_naming_one_image(tmp_path, 2000)
    store = tmp_path / "store"
    command = [sys.executable, "-m", "transfer", "load", str(archive), "--store", str(store)]
    # Before: 30 s of CPU (a copy, an index.json rewrite and an fsync per name); after: ~1 s.
    done, _, cpu, killed = peak_rss(command, env=xfer_env(), timeout=120, cpu_limit=60)
    assert not killed and done.returncode == 0, done.stderr[-2000:]
    assert cpu < 8, f"load of one image under 2000 names took {cpu:.1f} s of CPU"
    refs = index_refs(store)
    assert len(refs) == 2000 and len(set(refs.values())) == 1
    assert refs["localhost/r1999:1"] == _index(tmp_path / "layout")["manifests"][0]["digest"]


def test_load_refuses_an_archive_with_too_many_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "MAX_ARCHIVE_NAMES", 10)
    archive = _oci_archive_naming_one_image(tmp_path, 11)
    settings = Settings(store=tmp_path / "store")
    with pytest.raises(ArchiveError, match="11 names, more than the 10"):
        anyio.run(lambda: api.load(archive, settings))
    assert not (tmp_path / "store" / "index.json").exists()


# ---- 3: a docker-archive listing one layer many times ------------------------------------------


def test_load_hashes_a_layer_listed_many_times_once(tmp_path: Path) -> None:
    layer = h.make_tar([h.file("big", b"\0" * (8 << 20))])
    diff_id = h.sha256(layer)
    times = 1000
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}
    config["rootfs"]["diff_ids"] = [diff_id] * times  # type: ignore[index]
    manifest = [{"Config": "c.json", "RepoTags": ["localhost/fan:1"], "Layers": ["l.tar"] * times}]
    archive = tmp_path / "fan.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (
            ("c.json", json.dumps(config).encode()),
            ("l.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store = tmp_path / "store"
    command = [sys.executable, "-m", "transfer", "load", str(archive), "--store", str(store)]
    # Before: 8 GiB hashed (one 8 MiB layer, 1000 times); after: 8 MiB.
    done, _, cpu, killed = peak_rss(command, env=xfer_env(), timeout=120, cpu_limit=60)
    assert not killed and done.returncode == 0, done.stderr[-2000:]
    assert cpu < 2.5, f"load of one 8 MiB layer listed 1000 times took {cpu:.1f} s of CPU"
    assert diff_id.removeprefix("sha256:") in {p.name for p in (store / "blobs/sha256").iterdir()}


# ---- 4: JSON nested deeper than the interpreter's recursion limit ------------------------------

NESTED = b"[" * 50000


def _registry_error() -> object:
    response = httpx.Response(500, request=httpx.Request("GET", "https://registry.test/v2/"))
    return client.registry_error(response, NESTED, what="a pull", host="registry.test")


def _index_json(tmp_path: Path) -> object:
    (tmp_path / "index.json").write_bytes(NESTED)
    return Layout(tmp_path).read_index()


def _config_json(tmp_path: Path) -> object:
    (tmp_path / "config.json").write_bytes(NESTED)
    return auth._load_json(tmp_path / "config.json")


# (what parses it, how it is called, the typed error it raises, or None: it returns)
CALL_SITES: list[tuple[str, Callable[[Path], object], type[Exception] | None]] = [
    ("registry error body", lambda _: _registry_error(), None),
    ("tags page", lambda _: client._tags_of(NESTED, "tags", "registry.test"), RegistryError),
    ("token answer", lambda _: auth.parse_token_response(NESTED, "registry.test"), AuthError),
    ("store index.json", _index_json, StoreError),
    ("config.json", _config_json, AuthError),
    ("manifest", lambda _: Manifest.from_bytes(NESTED), ManifestError),
]


@pytest.mark.parametrize(("site", "call", "error"), CALL_SITES, ids=[c[0] for c in CALL_SITES])
def test_deeply_nested_json_is_a_typed_error(
    tmp_path: Path, site: str, call: Callable[[Path], object], error: type[Exception] | None
) -> None:
    if error is None:
        answer = call(tmp_path)
        assert isinstance(answer, RegistryError) and answer.status == 500, site
        return
    with pytest.raises(error) as caught:
        call(tmp_path)
    assert "nested too deeply" in str(caught.value) or "not JSON" in str(caught.value), site


def test_a_credential_helper_answering_deeply_nested_json_is_an_auth_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = tmp_path / "docker-credential-deep"
    helper.write_text(f"#!/bin/sh\nprintf '%s' '{NESTED.decode()}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(AuthError, match="docker-credential-deep gave bad JSON"):
        auth._from_helper("deep", "registry.test")


def test_a_deeply_nested_ingest_sidecar_is_discarded(tmp_path: Path) -> None:
    data = b"0123456789"
    desc = Descriptor(h.LAYER_TYPES["tar"], Digest.parse(h.sha256(data)), len(data))
    ingest = Ingest(tmp_path / "partial", desc)
    ingest.sidecar.write_bytes(NESTED + b"\n")
    assert ingest.journal.load(len(data)) == []  # nothing trusted: all of it fetched again


# ---- 5: --debug shows a server's text escaped ---------------------------------------------------

HOSTILE_MESSAGE = "HTTP 500: \x1b]0;owned\x07\x1b[2J\rgone\nxfer: error: a forged line"


@pytest.mark.parametrize("error", [RegistryError(HOSTILE_MESSAGE), RuntimeError(HOSTILE_MESSAGE)])
def test_debug_traceback_escapes_what_a_server_said(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
) -> None:
    async def failing(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_images", failing)
    assert cli.main(["images", "--store", str(tmp_path / "store"), "--debug"]) != 0
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert "failing" in err  # the frames are shown
    assert not any(c in err for c in "\x1b\x07\r"), repr(err[-300:])
    assert not any(line.startswith("xfer: error: a forged") for line in err.splitlines())
    assert r"\x1b]0;owned\x07" in err


# ---- 6: link-local addresses in disguise --------------------------------------------------------

LINK_LOCAL_SPELLINGS = [
    ("169.254.169.254", True),
    ("169.254.169.254.", True),  # a fully qualified name's trailing dot
    ("[::169.254.169.254]", True),  # IPv4-compatible IPv6
    ("[::a9fe:a9fe]", True),
    ("[::ffff:169.254.169.254]", True),  # IPv4-mapped
    ("[64:ff9b::a9fe:a9fe]", True),  # NAT64 (RFC 6052)
    ("[64:ff9b::169.254.169.254]", True),
    ("[2002:a9fe:a9fe::1]", True),  # 6to4
    ("[fe80::1]", True),
    ("2852039166.", True),
    ("registry.test", False),
    ("registry.test.", False),
    ("[::1]", False),
    ("[::]", False),
    ("[64:ff9b::808:808]", False),  # NAT64 of 8.8.8.8
    ("[::ffff:10.0.0.1]", False),
    ("10.0.0.1.", False),
]


@pytest.mark.parametrize(("host", "link_local"), LINK_LOCAL_SPELLINGS)
def test_link_local_in_any_spelling(host: str, link_local: bool) -> None:
    assert redirects.is_link_local(host) is link_local
    url = httpx.URL(f"https://{host}/v2/")
    assert (redirects.refusal(httpx.URL("https://registry.test/"), url) is not None) is link_local


# ---- 7: files under the store opened without following links -----------------------------------


@pytest.mark.parametrize("lock", ["store.lock", "locks/blobs.lock"])
def test_a_lock_file_planted_as_a_symlink_is_refused(tmp_path: Path, lock: str) -> None:
    layout = Layout(tmp_path / "store")
    layout.ensure()
    target = tmp_path / "elsewhere"
    planted = layout.work / lock
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(target)
    digest = Digest.parse(h.sha256(b"x"))
    take = layout.exclusive if lock == "store.lock" else lambda: layout._blob_lock(digest)
    with pytest.raises(StoreError, match="symbolic link"), take():
        pass
    assert not target.exists()


def test_fsync_dir_opens_only_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(tmp_path / "file")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(tmp_path / "fifo")  # refused, not waited on
    # A store's root may be a link to a directory (the user's choice): still synced.
    (tmp_path / "real").mkdir()
    (tmp_path / "store").symlink_to(tmp_path / "real")
    Layout(tmp_path / "store").ensure()
    assert (tmp_path / "real" / "index.json").is_file()


# ---- 7: a config declared over the config cap is refused before it is fetched -------------------


def test_a_config_over_the_cap_is_refused_before_it_is_copied(tmp_path: Path) -> None:
    source = tmp_path / "layout"
    h.write_image(source, "big", [h.layer([h.file("a.txt", "a")])])
    index = _index(source)
    manifest = json.loads(_blob(source, index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(_blob(source, manifest["config"]["digest"]).read_bytes())
    config["padding"] = "x" * (MAX_CONFIG_BYTES + 1)
    digest, size = _put(source, config)
    manifest["config"].update(digest=digest, size=size)
    index["manifests"][0]["digest"], index["manifests"][0]["size"] = _put(source, manifest)
    (source / "index.json").write_text(json.dumps(index))
    store = tmp_path / "store"
    with pytest.raises(ManifestError, match=f"config {digest} declares {size} bytes"):
        api.copy_sync(f"oci:{source}:big", "store:localhost/big:1", Settings(store=store))
    assert not _blob(store, digest).exists()


# ---- 7: what is too large is not retried ---------------------------------------------------------


async def _oversized_answer(length: bool) -> None:
    body = b" " * (MAX_MANIFEST_BYTES + 1)

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    request = httpx.Request("GET", "https://registry.test/v2/x/manifests/1")
    response = (
        httpx.Response(200, content=body, request=request)
        if length
        else httpx.Response(200, content=chunks(), request=request)
    )
    await transport.read_capped(response, MAX_MANIFEST_BYTES, "manifest", "registry.test")


def _longer_than_declared() -> None:
    data = b"0123456789"
    Verifier(Digest.parse(h.sha256(data)), len(data) - 1).update(data)


OVERSIZED: list[tuple[str, Callable[[], object]]] = [
    ("manifest answer over the cap (Content-Length)", lambda: anyio.run(_oversized_answer, True)),
    ("manifest answer over the cap (streamed)", lambda: anyio.run(_oversized_answer, False)),
    ("manifest bytes over the cap", lambda: Manifest.from_bytes(b" " * (MAX_MANIFEST_BYTES + 1))),
    ("blob longer than declared", _longer_than_declared),
]


@pytest.mark.parametrize(("case", "call"), OVERSIZED, ids=[c[0] for c in OVERSIZED])
def test_too_large_is_not_retried(case: str, call: Callable[[], object]) -> None:
    with pytest.raises(SizeMismatch) as caught:
        call()
    error = caught.value
    attempts = 0

    async def operation() -> None:
        nonlocal attempts
        attempts += 1
        raise error

    policy = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.01)
    with pytest.raises(SizeMismatch):
        anyio.run(lambda: retrying(case, operation, policy))
    assert attempts == 1, f"{case}: tried {attempts} times"
