"""`xfer mirror`: skopeo sync's configuration, many repositories into one registry, reruns cheap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.images import BuiltImages, inspect_raw
from fixtures.registry import Registry
from tests.helpers import xfer
from transfer.errors import UsageError
from transfer.mirror import matches_semver, parse_config


def test_config_in_skopeo_sync_format() -> None:
    sources = parse_config(
        """
registry.example.com:
  images:
    busybox: []
    redis: ["7.2", "sha256:0000000000000000000000000000000011111111111111111111111111111111"]
  images-by-tag-regex:
    nginx: ^1\\.25\\.\\d+$
  images-by-semver:
    alpine: ">= 3.18.0, < 4"
  credentials: {username: john, password: secret}
  tls-verify: false
quay.io:
  images:
    coreos/etcd: [latest]
"""
    )
    first, second = sources
    assert first.registry == "registry.example.com"
    assert first.images == {"busybox": (), "redis": ("7.2", "sha256:" + "0" * 32 + "1" * 32)}
    assert first.tag_regex == {"nginx": r"^1\.25\.\d+$"}
    assert first.semver == {"alpine": ">= 3.18.0, < 4"}
    assert first.credentials is not None and first.credentials.username == "john"
    assert "secret" not in repr(first.credentials)
    assert first.tls_verify is False
    assert second.images == {"coreos/etcd": ("latest",)} and second.tls_verify


@pytest.mark.parametrize(
    "text",
    [
        "not: [a, mapping",
        "[]",
        "host: 5",
        "host: {imagez: {}}",
        "host: {images-by-tag-regex: {a: '('}}",
        "host: {images-by-semver: {a: 'about two'}}",
        "host: {images: {a: latest}}",
        "host: {credentials: {password: x}}",
    ],
    ids=[
        "bad-yaml",
        "not-a-mapping",
        "host-not-a-mapping",
        "unknown-key",
        "bad-regex",
        "bad-semver",
        "tags-not-a-list",
        "credentials-without-user",
    ],
)
def test_bad_configs_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_config(text)


@pytest.mark.parametrize(
    ("tag", "constraint", "expected"),
    [
        ("3.18.4", ">= 3.18.0, < 4", True),
        ("4.0.0", ">= 3.18.0, < 4", False),
        ("3.17", ">= 3.18.0", False),
        ("v3.19", ">=3.18", True),
        ("3.19.0-rc1", ">= 3.18", False),
        ("latest", ">= 1", False),
        ("1.2.3", "1.2.3", True),
        ("1.2.3", "!= 1.2.3", False),
        ("2.0.0", "> 1 < 3", True),
    ],
)
def test_semver_constraints(tag: str, constraint: str, expected: bool) -> None:
    assert matches_semver(tag, constraint) is expected


@pytest.fixture
def target_registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_mirror_copies_tags_regex_and_semver_matches_and_a_rerun_copies_nothing(
    registry: Registry,
    empty_registry: Registry,
    target_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    source = empty_registry
    small, multi = images.images["small"], images.images["multi"]
    for tag in ("1.0.0", "1.5.0", "2.0.0", "latest"):
        assert xfer("copy", f"{registry.host}/{small.ref}", f"{source.host}/app:{tag}").code == 0
    assert xfer("copy", f"{registry.host}/{multi.ref}", f"{source.host}/tool:9").code == 0
    config = _write(
        tmp_path / "sync.yaml",
        f"""
{source.host}:
  images:
    tool: []
  images-by-semver:
    app: ">= 1.2, < 2"
  images-by-tag-regex:
    app: ^latest$
""",
    )
    run = xfer("mirror", "--json", config, f"{target_registry.host}/mirrored")
    assert run.code == 0, run.err
    summary = run.json_lines()[-1]
    assert summary["copied"] == 3 and summary["unchanged"] == 0 and summary["failed"] == []
    assert inspect_raw(f"{target_registry.host}/mirrored/tool:9") == multi.raw
    assert inspect_raw(f"{target_registry.host}/mirrored/app:1.5.0") == small.raw
    assert inspect_raw(f"{target_registry.host}/mirrored/app:latest") == small.raw
    tags = xfer("tags", f"{target_registry.host}/mirrored/app").out.split()
    assert sorted(tags) == ["1.5.0", "latest"]

    source_mark, target_mark = source.mark(), target_registry.mark()
    again = xfer("mirror", "--json", config, f"{target_registry.host}/mirrored")
    assert again.code == 0, again.err
    assert again.json_lines()[-1]["copied"] == 0
    assert again.json_lines()[-1]["unchanged"] == 3
    # A no-op rerun: tag lists at the source (which also say that no tag names a digest:
    # nothing to carry), one referrers API probe for the host, then one manifest HEAD per
    # image on each side.
    source_requests = [r for r in source.requests(source_mark) if r.kind != "base"]
    target_requests = [r for r in target_registry.requests(target_mark) if r.kind != "base"]
    assert {r.kind for r in source_requests} <= {"tags", "manifest", "referrers"}
    assert len([r for r in source_requests if r.kind == "referrers"]) == 1
    assert len([r for r in source_requests if r.kind == "manifest"]) == 3
    assert len(target_requests) == 3 and all(r.method == "HEAD" for r in target_requests)


def test_layers_shared_between_images_cross_the_network_once(
    registry: Registry, target_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    a, b = images.images["shared-a"], images.images["shared-b"]
    config = _write(
        tmp_path / "sync.yaml",
        f"{registry.host}:\n  images:\n    test/shared-a: ['1']\n    test/shared-b: ['1']\n",
    )
    mark = registry.mark()
    run = xfer("mirror", config, target_registry.host, "--scoped")
    assert run.code == 0, run.err
    fetched = [r.path.rsplit("/", 1)[-1] for r in registry.blob_gets(mark)]
    shared = {x.digest for x in a.blobs} & {x.digest for x in b.blobs}
    assert shared and all(fetched.count(digest) == 1 for digest in shared)
    mounts = [r for r in target_registry.requests() if "mount=" in r.query]
    assert len(mounts) >= len(shared)
    scope = registry.host.replace(":", "_")  # a port cannot stand in a repository path
    scoped = f"{target_registry.host}/{scope}/test/shared-b:1"
    assert inspect_raw(scoped) == b.raw


def test_one_failing_image_does_not_stop_the_others(
    registry: Registry, target_registry: Registry, tmp_path: Path
) -> None:
    config = _write(
        tmp_path / "sync.yaml",
        f"{registry.host}:\n  images:\n    test/small: ['1', 'no-such-tag']\n",
    )
    run = xfer("mirror", "--json", config, target_registry.host)
    assert run.code == 1
    summary = [e for e in run.json_lines() if e["event"] == "done" and "copied" in e][-1]
    assert summary["copied"] == 1
    assert summary["failed"][0]["source"].endswith("test/small:no-such-tag")
    assert "no-such-tag" in run.err.strip().splitlines()[-1]


def test_bad_destination_is_a_usage_error(tmp_path: Path) -> None:
    config = _write(tmp_path / "sync.yaml", "example.com:\n  images:\n    a: ['1']\n")
    run = xfer("mirror", config, "not a host")
    assert run.code == 2


def test_mirror_is_in_the_python_api_async_and_sync(
    registry: Registry, target_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    import anyio

    import transfer

    small, shared = images.images["small"], images.images["shared-a"]
    config = _write(
        tmp_path / "sync.yaml",
        f"{registry.host}:\n  images:\n    test/small: ['1']\n    test/shared-a: ['1']\n",
    )
    settings = transfer.Settings(store=tmp_path / "store")
    report = transfer.mirror_sync(config, f"{target_registry.host}/m", settings)
    assert sorted(str(r.digest) for r in report.copied) == sorted([small.digest, shared.digest])
    assert report.unchanged == [] and report.failed == [] and report.skipped == []
    assert inspect_raw(f"{target_registry.host}/m/test/small:1") == small.raw

    async def rerun() -> list[str]:
        again = await transfer.mirror(str(config), f"{target_registry.host}/m", settings)
        assert again.copied == []
        return sorted(str(item.target) for item in again.unchanged)

    assert anyio.run(rerun) == [
        f"{target_registry.host}/m/test/shared-a:1",
        f"{target_registry.host}/m/test/small:1",
    ]
    with pytest.raises(UsageError, match="cannot read mirror configuration"):
        transfer.mirror_sync(tmp_path / "absent.yaml", target_registry.host, settings)


@pytest.mark.parametrize("flag", [["--scoped"], ["--dest-creds", "alice:secret"]])
def test_registry_only_flags_with_a_bundle_destination_are_refused_in_one_line(
    registry: Registry, tmp_path: Path, flag: list[str]
) -> None:
    # A bundle names each image by its full source reference and has no credentials: these
    # flags would be dropped without a word, the user believing they took effect.
    config = tmp_path / "sync.yaml"
    config.write_text(f"{registry.host}:\n  images:\n    test/small: ['1']\n")
    bundle = tmp_path / "b.tar"
    for source, destination in (
        (config, f"oci-archive:{bundle}"),
        (f"oci:{tmp_path / 'nothing-here'}", f"oci:{tmp_path / 'out'}"),
    ):
        run = xfer("mirror", *flag, source, destination)
        assert run.code == 2, run.err
        lines = run.err.strip().splitlines()
        assert len(lines) == 1 and flag[0] in lines[0], run.err
    assert not bundle.exists() and not (tmp_path / "out").exists()
