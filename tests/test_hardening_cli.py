"""The command line against hostile server text, and every transfer command's platform and
naming options: what a registry says reaches the terminal escaped; a bad tag from a mirror
source is skipped, not fatal; push, load and mirror honour --platform / --all-platforms."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures.faultproxy import FaultProxy, Status
from fixtures.images import BuiltImages, inspect_raw
from fixtures.registry import Registry
from tests.helpers import index_refs, xfer
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
