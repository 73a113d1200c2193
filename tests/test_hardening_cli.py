"""The command line against hostile server text, and every transfer command's platform and
naming options: what a registry says reaches the terminal escaped; a bad tag from a mirror
source is skipped, not fatal; push, load and mirror honour --platform / --all-platforms."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from fixtures.faultproxy import FaultProxy, Status
from fixtures.images import BuiltImages, inspect_raw, read_blob
from fixtures.registry import Registry
from tests.helpers import index_refs, stored_blobs, xfer
from transfer.errors import printable

# Tags no registry could hold, as a hostile or broken one lists them.
BAD_TAGS = ["../x", "a\x1b[31mred", "new\nline"]


def _tags_list(name: str, tags: list[str]) -> Status:
    body = json.dumps({"name": name, "tags": tags}).encode()
    return Status(
        200,
        body=body,
        headers=[("Content-Type", "application/json")],
        match="/tags/list",
        times=None,
    )


def _in_registry(reg: Registry, digest: str) -> bool:
    """The registry stores this blob (in any repository): its data file exists."""
    hex_ = digest.removeprefix("sha256:")
    return (reg.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data").exists()


def _no_raw_server_text(*streams: str) -> None:
    for stream in streams:
        assert "\x1b" not in stream
        for tag in BAD_TAGS:
            assert "\n" not in tag or tag not in stream


def test_printable_escapes_control_characters_and_keeps_unicode() -> None:
    cases = {
        "plain tag 1.0": "plain tag 1.0",
        "a\x1b[31mred": "a\\x1b[31mred",
        "two\nlines\r\t": "two\\nlines\\r\\t",
        "nul\x00del\x7fc1\x9b": "nul\\x00del\\x7fc1\\x9b",
        "héllo wörld ☃ 日本": "héllo wörld ☃ 日本",
        "sep\u2028bidi\u202e": "sep\\u2028bidi\\u202e",
    }
    for raw, shown in cases.items():
        assert printable(raw) == shown


def test_mirror_skips_bad_source_tags_reports_them_escaped_and_mirrors_the_rest(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    small = images.images["small"]
    with FaultProxy(registry.url) as proxy:
        proxy.add(_tags_list("test/small", ["1", *BAD_TAGS]))
        config = tmp_path / "sync.yaml"
        config.write_text(f"{proxy.host}:\n  images:\n    test/small: []\n")
        run = xfer("mirror", config, empty_registry.host)
        # A tag no reference can name is the source's defect, not a failed image (skopeo
        # sync logs and skips it too): the mirror of everything else succeeds.
        assert run.code == 0, run.err
        assert inspect_raw(f"{empty_registry.host}/test/small:1") == small.raw
        _no_raw_server_text(run.out, run.err)
        for tag in BAD_TAGS:
            assert printable(repr(tag)) in run.err or printable(tag) in run.err
        assert "3 invalid tags skipped" in run.out

        again = xfer("mirror", "--json", config, empty_registry.host)
        assert again.code == 0, again.err
        summary = again.json_lines()[-1]
        assert summary["unchanged"] == 1 and summary["failed"] == []
        assert sorted(s["tag"] for s in summary["skipped"]) == sorted(BAD_TAGS)
        _no_raw_server_text(again.out, again.err)


def test_tags_prints_each_server_tag_on_one_escaped_line(registry: Registry) -> None:
    with FaultProxy(registry.url) as proxy:
        proxy.add(_tags_list("test/small", ["1", *BAD_TAGS]))
        run = xfer("tags", f"{proxy.host}/test/small")
    assert run.code == 0, run.err
    assert run.out.splitlines() == ["1", "../x", "a\\x1b[31mred", "new\\nline"]


def test_a_registry_error_message_is_printed_as_one_escaped_line(
    registry: Registry, images: BuiltImages
) -> None:
    hostile = "no such\x1b[2J thing\nxfer: error: forged second line"
    body = json.dumps({"errors": [{"code": "MANIFEST\x1bUNKNOWN", "message": hostile}]})
    with FaultProxy(registry.url) as proxy:
        proxy.add(
            Status(
                404,
                body=body.encode(),
                headers=[("Content-Type", "application/json")],
                match="/manifests/",
                times=None,
            )
        )
        run = xfer("inspect", f"{proxy.host}/{images.images['small'].ref}")
    assert run.code == 1
    assert "\x1b" not in run.err
    assert len(run.err.splitlines()) == 1
    assert "no such\\x1b[2J thing\\nxfer: error: forged second line" in run.err


# ---- every transfer command honours the platform options it offers ----------------------------


def test_push_with_platform_sends_only_that_image_and_all_platforms_the_index(
    registry: Registry, empty_registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["multi"]
    arm, amd = info.child("linux/arm64"), info.child("linux/amd64")
    ref = f"{registry.host}/{info.ref}"
    assert xfer("pull", "--all-platforms", ref, store=store).code == 0
    target = f"{empty_registry.host}/pushed/multi:arm"
    run = xfer("push", "--platform", "linux/arm64", ref, target, store=store)
    assert run.code == 0, run.err
    assert run.out.strip() == arm.digest
    assert inspect_raw(target) == arm.raw
    amd_only = {b.digest for b in amd.blobs} - {b.digest for b in arm.blobs}
    assert amd_only and not any(_in_registry(empty_registry, digest) for digest in amd_only)

    whole = f"{empty_registry.host}/pushed/multi:all"
    run = xfer("push", "--all-platforms", ref, whole, store=store)
    assert run.code == 0, run.err
    assert inspect_raw(whole) == info.raw


def test_load_takes_the_whole_archive_unless_a_platform_narrows_it(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    info = images.images["multi"]
    arm = info.child("linux/arm64")
    archive = tmp_path / "multi.tar"
    saved = xfer(
        "save",
        "--all-platforms",
        "--format",
        "oci",
        f"docker://{registry.host}/{info.ref}",
        "-o",
        archive,
    )
    assert saved.code == 0, saved.err
    name = f"{registry.host}/{info.ref}"
    for flags, expected in (
        ([], info.digest),
        (["--all-platforms"], info.digest),
        (["--platform", "linux/arm64"], arm.digest),
    ):
        store = tmp_path / f"store{len(flags)}"
        run = xfer("load", *flags, archive, store=store)
        assert run.code == 0, run.err
        assert index_refs(store)[name] == expected, flags


def test_mirror_with_platform_copies_that_image_and_a_rerun_sees_it_unchanged(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    info = images.images["multi"]
    arm = info.child("linux/arm64")
    config = tmp_path / "sync.yaml"
    config.write_text(f"{registry.host}:\n  images:\n    test/multi: ['1']\n")
    run = xfer("mirror", "--json", "--platform", "linux/arm64", config, empty_registry.host)
    assert run.code == 0, run.err
    assert run.json_lines()[-1]["copied"] == 1
    assert inspect_raw(f"{empty_registry.host}/test/multi:1") == arm.raw
    again = xfer("mirror", "--json", "--platform", "linux/arm64", config, empty_registry.host)
    assert again.code == 0, again.err
    assert again.json_lines()[-1]["unchanged"] == 1 and again.json_lines()[-1]["copied"] == 0


# ---- names, TLS words, progress words, mounts ------------------------------------------------


def _docker_archive_without_names(images: BuiltImages, path: Path) -> None:
    """What ``docker save <image-id>`` writes: manifest.json with "RepoTags": null."""
    info = images.images["small"]
    assert info.config is not None
    config_name = info.config.digest.removeprefix("sha256:") + ".json"
    layers = [f"{i:064x}/layer.tar" for i in range(len(info.layers))]
    manifest = [{"Config": config_name, "RepoTags": None, "Layers": layers}]
    members = [(config_name, read_blob(images.layout, info.config.digest))]
    members += [
        (name, read_blob(images.layout, x.digest))
        for name, x in zip(layers, info.layers, strict=True)
    ]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))


def test_load_of_an_image_saved_by_id_names_it_by_digest_or_as_asked(
    images: BuiltImages, tmp_path: Path
) -> None:
    archive = tmp_path / "by-id.tar"
    _docker_archive_without_names(images, archive)
    layers = [x.digest for x in images.images["small"].layers]

    store = tmp_path / "store"
    run = xfer("load", archive, store=store)
    assert run.code == 0, run.err
    (digest,) = run.out.split()  # what it loaded: the image's manifest digest
    assert index_refs(store) == {digest: digest}
    assert set(layers) <= stored_blobs(store).keys()
    pushed = tmp_path / "again.tar"  # NAME@DIGEST finds it, whatever the name
    assert xfer("save", f"example.com/any/name@{digest}", "-o", pushed, store=store).code == 0
    assert xfer("rm", digest, store=store).code == 0
    assert index_refs(store) == {}

    named = tmp_path / "named"
    run = xfer("load", "--name", "example.com/team/app:2", archive, store=named)
    assert run.code == 0, run.err
    assert run.out.split() == ["example.com/team/app:2"]
    assert index_refs(named) == {"example.com/team/app:2": digest}


def test_save_of_a_stored_image_by_its_digest(
    registry: Registry, images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    info = images.images["small"]
    assert xfer("pull", f"{registry.host}/{info.ref}", store=store).code == 0
    archive = tmp_path / "by-digest.tar"
    by_digest = f"{registry.host}/{info.repo}@{info.digest}"
    run = xfer("save", "--format", "oci", by_digest, "-o", archive, store=store)
    assert run.code == 0, run.err
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert [m["digest"] for m in index["manifests"]] == [info.digest]
    missing = f"{registry.host}/{info.repo}@sha256:{'0' * 64}"
    run = xfer("save", missing, "-o", tmp_path / "none.tar", store=store)
    assert run.code == 1 and "not in the store" in run.err


@pytest.mark.parametrize("flags", [["--plain-http"], ["--plain-http", "--insecure"]])
def test_plain_http_prints_no_tls_warning(
    registry: Registry, images: BuiltImages, store: Path, flags: list[str]
) -> None:
    """No TLS is spoken at all: there is no certificate to leave unverified."""
    run = xfer("pull", *flags, f"{registry.host}/{images.images['small'].ref}", store=store)
    assert run.code == 0, run.err
    assert "TLS" not in run.err and "verif" not in run.err and "warning" not in run.err


def test_push_progress_says_pushed_not_fetched(
    registry: Registry, empty_registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    ref = f"{registry.host}/{info.ref}"
    assert xfer("pull", ref, store=store).code == 0
    run = xfer("push", ref, f"{empty_registry.host}/words/small:1", store=store)
    assert run.code == 0, run.err
    assert "fetch" not in run.err
    assert len([line for line in run.err.splitlines() if ": pushed " in line]) == len(info.blobs)
    again = xfer("push", "--json", ref, f"{empty_registry.host}/words/json:1", store=store)
    assert again.code == 0 and "fetch" not in again.out


def test_push_mounts_blobs_from_the_repository_the_stored_image_came_from(
    empty_registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    origin = f"{empty_registry.host}/team-a/small:1"
    assert xfer("copy", f"oci:{images.layout}:small", origin).code == 0
    assert xfer("pull", origin, store=store).code == 0
    mark = empty_registry.mark()
    run = xfer("push", "--json", origin, f"{empty_registry.host}/team-b/small:1", store=store)
    assert run.code == 0, run.err
    served = empty_registry.requests(mark)
    mounts = [r for r in served if r.method == "POST" and "mount=" in r.query]
    assert len(mounts) == len(info.blobs)
    assert not [r for r in served if r.method in ("PATCH", "PUT") and r.kind == "upload"]
    assert run.json_lines()[-1]["bytes_transferred"] == 0


def store_shared_a_at_target_and_b_from_elsewhere(
    registry: Registry, target: Registry, images: BuiltImages, store: Path
) -> str:
    """shared-a copied to the target's team-a and pulled from there (the store names it after
    the target); shared-b, which shares its two base layers, pulled from ``registry``. Returns
    shared-b's reference there, the image a push then sends to the target's team-b."""
    earlier = f"{target.host}/team-a/shared-a:1"
    assert xfer("copy", f"oci:{images.layout}:shared-a", earlier).code == 0
    assert xfer("pull", earlier, store=store).code == 0
    elsewhere = f"{registry.host}/{images.images['shared-b'].ref}"
    assert xfer("pull", elsewhere, store=store).code == 0
    return elsewhere


def test_push_mounts_blobs_another_stored_image_holds_in_another_repository_of_the_target(
    registry: Registry, empty_registry: Registry, images: BuiltImages, store: Path
) -> None:
    # shared-a went to the target's team-a earlier (and is in the store under that name);
    # shared-b, pulled from elsewhere, shares its two base layers: pushed into team-b, those
    # are mounted from team-a, only its own layers cross the network.
    a, b = images.images["shared-a"], images.images["shared-b"]
    elsewhere = store_shared_a_at_target_and_b_from_elsewhere(
        registry, empty_registry, images, store
    )
    mark = empty_registry.mark()

    run = xfer("push", "--json", elsewhere, f"{empty_registry.host}/team-b/shared-b:1", store=store)

    assert run.code == 0, run.err
    served = empty_registry.requests(mark)
    mounted = {r.query for r in served if r.method == "POST" and r.status == 201}
    shared = {d.digest for d in a.blobs} & {d.digest for d in b.blobs}
    assert len(shared) == 2
    assert mounted == {f"mount={d}&from=team-a/shared-a" for d in shared}
    uploads = [r for r in served if r.method == "PUT" and r.kind == "upload"]
    assert len(uploads) == len(b.blobs) - len(shared)  # its own layers and its config
    assert xfer("pull", f"{empty_registry.host}/team-b/shared-b:1", store=store).code == 0
