"""`xfer save`, `xfer load` and the `oci-archive:` / `docker-archive:` endpoints.

skopeo is the independent implementation: it reads what xfer writes (as an OCI archive and as a
docker archive) and xfer reads what it writes. `docker load` itself cannot run here (no daemon):
docker compatibility is proven by format (manifest.json + config + layer files, as docker reads
them in image/tarexport/load.go) and by skopeo's docker-archive transport reading the result.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import transfer
from fixtures.images import BuiltImages, ImageInfo, read_blob
from fixtures.registry import Registry
from tests.helpers import fill_store, index_refs, stored_blobs, xfer
from transfer.manifest import Platform


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _config(info: ImageInfo) -> str:
    assert info.config is not None
    return info.config.digest


def _flipped(data: bytes | str) -> bytes:
    assert isinstance(data, bytes)
    return data[:50] + bytes([data[50] ^ 0xFF]) + data[51:]


def _members(archive: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return tar.getmembers()


def _document(archive: Path, name: str) -> Any:
    with tarfile.open(archive) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return json.loads(handle.read())


def _skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, check=True
    )


def _inspect(endpoint: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(_skopeo("inspect", endpoint).stdout)
    return result


def _store_manifest(store: Path, ref: str) -> dict[str, Any]:
    digest = index_refs(store)[ref]
    doc: dict[str, Any] = json.loads(read_blob(store, digest))
    return doc


def _this_platform_child(info: ImageInfo) -> ImageInfo:
    here = Platform.current()
    for child in info.children:
        if child.platform and here.matches(Platform.parse(child.platform)):
            return child
    pytest.skip(f"the multi-platform fixture has no image for {here}")


# ---- writing ---------------------------------------------------------------------------------


def test_save_writes_shared_blobs_once_and_both_docker_and_oci_indexes(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    a, b = images.images["shared-a"], images.images["shared-b"]
    refs = fill_store(store, images, "shared-a", "shared-b")
    archive = tmp_path / "two.tar"
    run = xfer("save", refs["shared-a"], refs["shared-b"], "-o", archive, store=store)
    assert run.code == 0, run.err
    assert run.out == ""  # nothing but progress, and that on stderr

    members = _members(archive)
    counts = Counter(m.name for m in members)
    assert max(counts.values()) == 1  # every member, shared layers included, once
    blobs = {m.name.removeprefix("blobs/sha256/") for m in members if m.isfile()} - {
        "oci-layout",
        "index.json",
        "manifest.json",
    }
    wanted = {x.digest for x in (*a.blobs, *b.blobs)} | {a.digest, b.digest}
    assert blobs == {d.removeprefix("sha256:") for d in wanted}
    assert all((m.mtime, m.uid, m.gid, m.uname) == (0, 0, 0, "") for m in members)
    assert {m.mode for m in members if m.isfile()} == {0o644}

    index = _document(archive, "index.json")
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert names == [refs["shared-a"], refs["shared-b"]]
    docker = _document(archive, "manifest.json")
    assert [entry["RepoTags"] for entry in docker] == [[refs["shared-a"]], [refs["shared-b"]]]
    assert docker[0]["Config"] == _blob(_config(a))
    assert docker[0]["Layers"] == [_blob(layer.digest) for layer in a.layers]


def test_skopeo_reads_a_saved_archive_as_oci_archive_and_as_docker_archive(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    a, b = images.images["shared-a"], images.images["shared-b"]
    refs = fill_store(store, images, "shared-a", "shared-b")
    archive = tmp_path / "two.tar"
    assert xfer("save", refs["shared-a"], refs["shared-b"], "-o", archive, store=store).code == 0

    for info, ref in ((a, refs["shared-a"]), (b, refs["shared-b"])):
        assert _inspect(f"oci-archive:{archive}:{ref}")["Digest"] == info.digest
        # skopeo's docker-archive decompresses the layers and checks them against the config
        # (as docker load does): what it lists are the uncompressed layers' digests.
        assert _inspect(f"docker-archive:{archive}:{ref}")["Layers"] == list(info.diff_ids)
    copied = tmp_path / "copied"
    _skopeo("copy", f"docker-archive:{archive}:{refs['shared-b']}", f"oci:{copied}:b")
    assert _inspect(f"oci:{copied}:b")["Layers"]  # a complete image arrived


def test_save_load_save_keeps_every_digest_and_every_byte(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    refs = fill_store(store, images, "small", "docker", "shared-a")
    first, second = tmp_path / "first.tar", tmp_path / "second.tar"
    order = [refs["small"], refs["docker"], refs["shared-a"]]
    assert xfer("save", *order, "-o", first, store=store).code == 0

    fresh = tmp_path / "fresh"
    run = xfer("load", first, store=fresh)
    assert run.code == 0, run.err
    assert run.out.splitlines() == order
    assert index_refs(fresh) == index_refs(store)
    stored_blobs(fresh)  # every blob verified against its name

    assert xfer("save", *order, "-o", second, store=fresh).code == 0
    assert first.read_bytes() == second.read_bytes()


def test_save_of_an_index_keeps_it_whole_and_lists_this_platforms_image_for_docker(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    multi = images.images["multi"]
    child = _this_platform_child(multi)
    refs = fill_store(store, images, "multi")
    every, one = tmp_path / "all.tar", tmp_path / "one.tar"
    assert xfer("save", "--all-platforms", refs["multi"], "-o", every, store=store).code == 0
    assert xfer("save", refs["multi"], "-o", one, store=store).code == 0

    assert _inspect(f"oci-archive:{every}:{refs['multi']}")["Digest"] == multi.digest
    assert _document(every, "index.json")["manifests"][0]["digest"] == multi.digest
    assert _document(one, "index.json")["manifests"][0]["digest"] == child.digest
    for archive in (every, one):
        config = _document(archive, "manifest.json")[0]["Config"]
        assert config == _blob(_config(child))
    other = {m.name for m in _members(every)} - {m.name for m in _members(one)}
    assert other  # the other platform's blobs are only in the --all-platforms archive
    fresh = tmp_path / "fresh"
    assert xfer("load", every, store=fresh).code == 0
    assert index_refs(fresh) == {refs["multi"]: multi.digest}


@pytest.mark.parametrize(
    ("fmt", "present", "absent"),
    [
        ("docker", {"manifest.json"}, {"index.json", "oci-layout"}),
        ("oci", {"index.json", "oci-layout"}, {"manifest.json"}),
    ],
)
def test_format_docker_or_oci_writes_only_that_part(
    images: BuiltImages,
    store: Path,
    tmp_path: Path,
    fmt: str,
    present: set[str],
    absent: set[str],
) -> None:
    info = images.images["small"]
    refs = fill_store(store, images, "small")
    archive = tmp_path / f"{fmt}.tar"
    assert xfer("save", "--format", fmt, refs["small"], "-o", archive, store=store).code == 0
    names = {m.name for m in _members(archive)}
    assert present <= names and not absent & names
    if fmt == "oci":
        assert _inspect(f"oci-archive:{archive}")["Digest"] == info.digest
    else:
        assert _inspect(f"docker-archive:{archive}")["Layers"] == list(info.diff_ids)
    fresh = tmp_path / "fresh"
    run = xfer("load", archive, store=fresh)
    assert run.code == 0, run.err
    assert run.out.split() == [refs["small"]]


def test_a_blob_that_fails_its_digest_leaves_no_archive_behind(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    refs = fill_store(store, images, "small")
    victim = store / "blobs" / "sha256" / info.layers[1].digest.removeprefix("sha256:")
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    archive = tmp_path / "out.tar"
    archive.write_bytes(b"an older archive")
    run = xfer("save", "-q", "--retries", "0", refs["small"], "-o", archive, store=store)
    assert run.code == 1
    assert info.layers[1].digest in run.err and len(run.err.strip().splitlines()) == 1
    assert archive.read_bytes() == b"an older archive"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tar", "store"]  # no .partial


# ---- reading ---------------------------------------------------------------------------------


def test_load_reads_a_docker_archive_skopeo_wrote_from_a_registry(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["shared-a"]
    archive = tmp_path / "by-skopeo.tar"
    ref = f"{registry.host}/{info.ref}"
    _skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"docker-archive:{archive}:{ref}")
    run = xfer("load", archive, store=store)
    assert run.code == 0, run.err
    assert run.out.split() == [ref]
    manifest = _store_manifest(store, ref)
    assert manifest["config"]["digest"] == _config(info)
    # skopeo wrote the layers uncompressed: their digests are the config's diff_ids.
    assert [layer["digest"] for layer in manifest["layers"]] == list(info.diff_ids)
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar"
    }
    assert set(stored_blobs(store)) >= set(info.diff_ids)


def test_load_reads_an_oci_archive_skopeo_wrote_with_its_exact_digest(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    archive = tmp_path / "by-skopeo.tar"
    ref = f"{registry.host}/{info.ref}"
    _skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci-archive:{archive}:{ref}")
    run = xfer("load", "-i", archive, store=store)
    assert run.code == 0, run.err
    assert run.out.split() == [ref]
    assert index_refs(store) == {ref: info.digest}


def test_legacy_docker_save_layout_with_layer_symlinks_is_read(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    """docker save before 25: HEX.json configs, ID/layer.tar layers, shared ones symlinked."""
    info = images.images["small"]
    assert info.config is not None
    config = read_blob(images.layout, info.config.digest)
    members: list[tuple[str, bytes | str]] = [
        (info.config.digest.removeprefix("sha256:") + ".json", config)
    ]
    layer_paths = []
    for i, layer in enumerate(info.layers):
        path = f"{i:064x}/layer.tar"
        data = read_blob(images.layout, layer.digest)
        if i % 2:  # as docker writes a layer it already wrote under another v1 ID
            members.append((f"{i + 100:064x}/layer.tar", data))
            members.append((path, f"../{i + 100:064x}/layer.tar"))
        else:
            members.append((path, data))
        layer_paths.append(path)
    manifest = [{"Config": members[0][0], "RepoTags": ["legacy/small:1"], "Layers": layer_paths}]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    archive = tmp_path / "legacy.tar"
    _write_tar(archive, members)
    run = xfer("load", archive, store=store)
    assert run.code == 0, run.err
    assert run.out.split() == ["docker.io/legacy/small:1"]
    loaded = _store_manifest(store, "docker.io/legacy/small:1")
    assert [layer["digest"] for layer in loaded["layers"]] == [x.digest for x in info.layers]


def test_oci_archive_endpoints_copy_between_each_other_and_keep_the_digest(
    images: BuiltImages, tmp_path: Path
) -> None:
    info = images.images["shared-b"]
    oci_archive, docker_archive = tmp_path / "b.oci.tar", tmp_path / "b.docker.tar"
    run = xfer("copy", f"oci:{images.layout}:shared-b", f"oci-archive:{oci_archive}:b")
    assert run.code == 0, run.err
    assert run.out.strip() == info.digest
    run = xfer("copy", f"oci-archive:{oci_archive}:b", f"docker-archive:{docker_archive}:x/b:2")
    assert run.code == 0, run.err
    assert _document(docker_archive, "manifest.json")[0]["RepoTags"] == ["x/b:2"]
    layout = tmp_path / "layout"
    run = xfer("copy", f"docker-archive:{docker_archive}:x/b:2", f"oci:{layout}:b")
    assert run.code == 0, run.err
    # A Docker schema 2 manifest now (synthesised from manifest.json), which skopeo 1.9's
    # oci: transport cannot look up by name: read the layout directly.
    manifest = _store_manifest(layout, "b")
    assert [x["digest"] for x in manifest["layers"]] == [x.digest for x in info.layers]


def test_copy_from_a_registry_streams_into_a_docker_archive(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    info = images.images["small"]
    archive = tmp_path / "small.tar"
    mark = registry.mark()
    run = xfer(
        "copy", f"docker://{registry.host}/{info.ref}", f"docker-archive:{archive}:mine/small:1"
    )
    assert run.code == 0, run.err
    assert len(registry.blob_gets(mark)) == len(info.blobs)  # each blob fetched once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.tar"]  # nothing staged
    assert _inspect(f"docker-archive:{archive}:mine/small:1")["Layers"] == list(info.diff_ids)
    index = _document(archive, "index.json")
    assert index["manifests"][0]["digest"] == info.digest


def test_load_names_images_as_docker_25_archives_do(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    """Docker 25+ keeps only the tag in ref.name and the full name in containerd's annotation."""
    info = images.images["small"]
    members = _oci_members(images, "small")
    index = json.loads(members[1][1])
    index["manifests"][0]["annotations"] = {
        "io.containerd.image.name": "docker.io/library/small:latest",
        "org.opencontainers.image.ref.name": "latest",
    }
    members[1] = ("index.json", json.dumps(index).encode())
    archive = tmp_path / "docker25.tar"
    _write_tar(archive, members)
    run = xfer("load", "--json", archive, store=store)
    assert run.code == 0, run.err
    done = run.json_lines()[-1]
    assert (done["event"], done["reference"], done["digest"]) == (
        "done",
        "docker.io/library/small:latest",
        info.digest,
    )
    assert index_refs(store) == {"docker.io/library/small:latest": info.digest}


def test_save_without_an_output_file_is_a_usage_error(store: Path) -> None:
    run = xfer("save", "nginx", store=store)
    assert run.code == 2 and "-o" in run.err


# ---- hostile archives ------------------------------------------------------------------------


def _write_tar(path: Path, members: list[tuple[str, bytes | str]]) -> None:
    """Members as (name, data) or (name, "symlink target"); a target starting with "hard:"
    is a hardlink."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                hard = content.startswith("hard:")
                info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
                info.linkname = content.removeprefix("hard:")
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))


def _oci_members(images: BuiltImages, name: str) -> list[tuple[str, bytes | str]]:
    info = images.images[name]
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": info.media_type,
                "digest": info.digest,
                "size": info.size,
                "annotations": {"org.opencontainers.image.ref.name": f"evil.example/{name}:1"},
            }
        ],
    }
    members: list[tuple[str, bytes | str]] = [
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        ("index.json", json.dumps(index).encode()),
        (_blob(info.digest), info.raw),
    ]
    for blob in info.blobs:
        data = read_blob(images.layout, blob.digest)
        members.append((_blob(blob.digest), data))
    return members


def _hostile(kind: str, images: BuiltImages, path: Path) -> None:
    members = _oci_members(images, "small")
    layer = _blob(images.images["small"].layers[0].digest)
    at = next(i for i, (name, _) in enumerate(members) if name == layer)
    if kind == "dotdot":
        members.append(("../evil", b"outside"))
    elif kind == "absolute":
        members.append(("/tmp/xfer-evil", b"outside"))
    elif kind == "symlink-blob":
        members[at] = (layer, "/etc/passwd")
    elif kind == "hardlink-blob":
        members[at] = (layer, "hard:../../etc/passwd")
    elif kind == "wrong-bytes":
        members[at] = (layer, _flipped(members[at][1]))
    elif kind == "huge-index":
        members[1] = ("index.json", b" " * (16 << 20) + b"{}")
    elif kind == "huge-docker-manifest":
        members = [("manifest.json", b" " * (16 << 20) + b"[]")]
    elif kind == "docker-wrong-bytes":  # caught while the manifest is synthesised
        info = images.images["small"]
        members[at] = (layer, _flipped(members[at][1]))
        entry = {
            "Config": _blob(_config(info)),
            "RepoTags": ["evil.example/small:1"],
            "Layers": [_blob(x.digest) for x in info.layers],
        }
        members = [m for m in members if m[0] != "index.json"]
        members.append(("manifest.json", json.dumps([entry]).encode()))
    elif kind in ("truncated", "cut-between-members"):
        _write_tar(path, members)
        data = path.read_bytes()
        with tarfile.open(path) as tar:
            last = tar.getmembers()[-1]
        cut = len(data) // 2 if kind == "truncated" else last.offset  # a whole member lost
        path.write_bytes(data[:cut])
        return
    _write_tar(path, members)


HOSTILE = [
    ("dotdot", "escapes"),
    ("absolute", "absolute"),
    ("symlink-blob", "outside"),
    ("hardlink-blob", "outside"),
    ("wrong-bytes", "does not hold the bytes"),
    ("docker-wrong-bytes", "does not hold the bytes"),
    ("huge-index", "limit"),
    ("huge-docker-manifest", "limit"),
    ("truncated", "truncated"),
    ("cut-between-members", "truncated"),
]


@pytest.mark.parametrize(("kind", "needle"), HOSTILE)
def test_hostile_archives_are_refused_in_one_line_and_load_nothing(
    images: BuiltImages, store: Path, tmp_path: Path, kind: str, needle: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = work / f"{kind}.tar"
    _hostile(kind, images, archive)
    run = xfer("load", "-q", archive, store=store)
    assert run.code == 1, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], run.err
    assert run.out == ""
    assert not (store / "index.json").exists() or index_refs(store) == {}
    if kind == "wrong-bytes":
        # Found while streaming: blobs that verified before it may be stored (unreferenced,
        # for gc); nothing unverified is.
        stored_blobs(store)
    else:  # found before any blob was stored
        assert not store.exists() or not stored_blobs(store)
    assert sorted(p.name for p in work.iterdir()) == [archive.name]
    assert not (tmp_path / "evil").exists() and not Path("/tmp/xfer-evil").exists()


def test_a_hostile_archive_is_refused_as_a_copy_source_too(
    images: BuiltImages, tmp_path: Path
) -> None:
    archive = tmp_path / "evil.tar"
    _hostile("symlink-blob", images, archive)
    run = xfer("copy", "-q", f"oci-archive:{archive}", f"oci:{tmp_path / 'out'}:x")
    assert run.code == 1
    assert "outside" in run.err and len(run.err.strip().splitlines()) == 1
    assert index_refs(tmp_path / "out") == {}  # the layout exists (locked up front), empty
    assert not list((tmp_path / "out" / "blobs" / "sha256").iterdir())


def test_load_of_a_file_that_is_no_archive_fails_cleanly(store: Path, tmp_path: Path) -> None:
    cases = [("empty.tar", b""), ("text.tar", b"hello\n" * 200), ("gz.tar", gzip.compress(b"x"))]
    for name, data in cases:
        path = tmp_path / name
        path.write_bytes(data)
        run = xfer("load", "-q", path, store=store)
        assert run.code == 1
        assert len(run.err.strip().splitlines()) == 1 and str(path) in run.err
    run = xfer("load", tmp_path / "absent.tar", store=store)
    assert run.code == 1 and "absent.tar" in run.err


# ---- library -------------------------------------------------------------------------------


def test_save_sync_and_load_sync_return_a_result_per_image(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["docker"]
    refs = fill_store(store, images, "docker")
    archive = tmp_path / "d.tar"
    saved = transfer.save_sync([refs["docker"]], archive, transfer.Settings(store=store))
    assert [str(r.digest) for r in saved] == [info.digest]
    loaded = transfer.load_sync(archive, transfer.Settings(store=tmp_path / "fresh"))
    assert [(r.reference, str(r.digest)) for r in loaded] == [(refs["docker"], info.digest)]
