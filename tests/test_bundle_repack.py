"""Re-packing a bundle: ``xfer mirror oci-archive:A.tar|oci:DIR oci-archive:B.tar|oci:DIR2``
(a file into a directory and back, re-split into volumes, cut down to a delta with --since),
the export's pipeline with the bundle as the source: the same images give the same root."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.images import BuiltImages, inspect_raw
from fixtures.registry import Registry
from tests.helpers import xfer
from tests.test_bundle import NAMES, _all_blobs, _blobs, _config, _export, _members, _tag
from transfer.bundle_record import RELIES_ON, RELIES_ON_TYPE, SINCE


@pytest.fixture
def second_registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


def _root(index: bytes) -> str:
    return "sha256:" + hashlib.sha256(index).hexdigest()


def _verified(bundle: str, root: str) -> None:
    run = xfer("verify", bundle, "--expect", root)
    assert run.code == 0, run.err


def _index(bundle: Path) -> bytes:
    if bundle.is_dir():
        return (bundle / "index.json").read_bytes()
    volumes = sorted(bundle.parent.glob(f"{bundle.stem}.[0-9][0-9][0-9].tar"))
    return _members(volumes[-1] if volumes and not bundle.exists() else bundle)["index.json"]


def _export_all(registry: Registry, tmp_path: Path, bundle: Path) -> str:
    """Every test image of ``registry`` exported into the bundle file ``bundle``; its root."""
    config = _config(tmp_path / "sync.yaml", registry.host, {f"test/{n}": ["1"] for n in NAMES})
    root = _export(config, f"oci-archive:{bundle}")["root_digest"]
    assert isinstance(root, str)
    return root


def test_a_bundle_repacked_to_a_directory_and_back_names_the_same_root_as_the_export(
    registry: Registry, second_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    exported = tmp_path / "exported.tar"
    root = _export_all(registry, tmp_path, exported)
    names = [
        e["annotations"]["org.opencontainers.image.ref.name"]
        for e in json.loads(_index(exported))["manifests"]
    ]
    assert names == sorted(f"{registry.host}/test/{n}:1" for n in NAMES)

    steps = [  # (source, destination): file → dir, dir → dir, dir → file, file → file
        (f"oci-archive:{exported}", tmp_path / "dir"),
        (f"oci:{tmp_path / 'dir'}", tmp_path / "dir2"),
        (f"oci:{tmp_path / 'dir2'}", tmp_path / "back.tar"),
        (f"oci-archive:{tmp_path / 'back.tar'}", tmp_path / "again.tar"),
    ]
    for source, out in steps:
        kind = "oci-archive" if out.suffix == ".tar" else "oci"
        summary = _export(Path(source), f"{kind}:{out}", "--images", "2")
        # the same images: the same index.json, names and all, so the same root digest
        assert summary["root_digest"] == summary["digest"] == root, (source, out)
        assert summary["copied"] == len(NAMES) and summary["relied_on"] == 0
        assert _index(out) == _index(exported)
        _verified(f"{kind}:{out}", root)
    wanted = set().union(*(_all_blobs(images.images[n]) for n in NAMES))
    assert _blobs(_members(tmp_path / "again.tar")) == wanted
    stored = {f"sha256:{p.name}" for p in (tmp_path / "dir2" / "blobs" / "sha256").iterdir()}
    assert stored == wanted
    # whole: docker's manifest.json beside the layout, as the export writes it
    assert "manifest.json" in _members(tmp_path / "again.tar")

    run = xfer("mirror", "--json", f"oci:{tmp_path / 'dir2'}", f"{second_registry.host}/site")
    assert run.code == 0, run.err
    for name in NAMES:
        there = inspect_raw(f"{second_registry.host}/site/test/{name}:1")
        assert there == images.images[name].raw


def test_a_repack_resplits_a_bundle_into_volumes_with_the_same_root(
    registry: Registry, images: BuiltImages, tmp_path: Path, store: Path
) -> None:
    whole = tmp_path / "whole.tar"
    root = _export_all(registry, tmp_path, whole)
    dvd = tmp_path / "dvd.tar"
    summary = _export(Path(f"oci-archive:{whole}"), f"oci-archive:{dvd}", "--max-size", "64K")
    volumes = sorted(tmp_path.glob("dvd.*.tar"))
    assert len(volumes) > 1 and not dvd.exists()
    assert all(v.stat().st_size <= 64 * 1024 for v in volumes)
    # A volume set's index.json also counts its volumes (dev.xfer.volumes, so a set read short
    # is refused), which depends on how the members fell: otherwise it is the whole file's.
    doc = json.loads(_index(dvd))
    assert doc["annotations"] == {"dev.xfer.volumes": str(len(volumes))}
    assert doc["manifests"] == json.loads(_index(whole))["manifests"]
    assert _root(_index(dvd)) == summary["root_digest"]
    _verified(f"oci-archive:{dvd}", str(summary["root_digest"]))

    # and back into one file from the set, by its first volume
    joined = tmp_path / "joined.tar"
    again = _export(Path(f"oci-archive:{volumes[0]}"), f"oci-archive:{joined}")
    assert again["root_digest"] == root and _index(joined) == _index(whole)
    loaded = xfer("load", joined, store=store)
    assert loaded.code == 0, loaded.err
    shown = xfer("inspect", "--raw", f"store:{registry.host}/test/multi:1", store=store)
    assert shown.code == 0 and shown.out.encode() == images.images["multi"].raw


def test_signed_images_repacked_keep_their_referrers_and_the_root(
    registry: Registry,
    empty_registry: Registry,
    second_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    from fixtures.signing import check_signed, fallback_index, seed_signed

    source = empty_registry
    small, multi = images.images["small"], images.images["multi"]
    for info in (small, multi):
        _tag(registry, info.ref, f"{source.host}/{info.ref}")
    signed = seed_signed(source.url, small, multi)
    config = _config(
        tmp_path / "sync.yaml", source.host, {"test/small": ["1"], "test/multi": ["1"]}
    )
    exported = tmp_path / "exported.tar"
    root = _export(config, f"oci-archive:{exported}")["root_digest"]
    layout = tmp_path / "layout"
    assert _export(Path(f"oci-archive:{exported}"), f"oci:{layout}")["root_digest"] == root
    back = tmp_path / "back.tar"
    assert _export(Path(f"oci:{layout}"), f"oci-archive:{back}")["root_digest"] == root
    assert _blobs(_members(back)) == _blobs(_members(exported))
    _verified(f"oci-archive:{back}", str(root))

    run = xfer("mirror", "--json", f"oci-archive:{back}", f"{second_registry.host}/site")
    assert run.code == 0, run.err
    assert run.json_lines()[-1]["copied"] == 2
    for attached in (signed.small, signed.multi_index, signed.multi_child):
        repo = f"site/{attached.repo}"
        check_signed(second_registry.url, repo, attached.subject, signed.public_key)
    assert signed.small.sbom is not None
    listed = fallback_index(second_registry.url, "site/test/small", small.digest)
    assert signed.small.sbom.digest in {d["digest"] for d in listed}

    # --no-referrers leaves them, as an export with it does
    bare = tmp_path / "bare.tar"
    _export(Path(f"oci-archive:{exported}"), f"oci-archive:{bare}", "--no-referrers")
    assert signed.small.signature.manifest.digest not in _blobs(_members(bare))
    plain = tmp_path / "plain.tar"
    _export(config, f"oci-archive:{plain}", "--no-referrers")
    assert _index(bare) == _index(plain)


def _weeks(
    registry: Registry, source: Registry, images: BuiltImages, tmp_path: Path
) -> tuple[Path, Path]:
    """A sync YAML of one repository, and week 1's bundle of it (``app:1``, shared-a); then
    ``app:2`` (shared-b, sharing its base layers) is tagged at the source."""
    shared_a, shared_b = images.images["shared-a"], images.images["shared-b"]
    _tag(registry, shared_a.ref, f"{source.host}/app:1")
    config = _config(tmp_path / "sync.yaml", source.host, {"app": []})
    first = tmp_path / "week1.tar"
    _export(config, f"oci-archive:{first}")
    _tag(registry, shared_b.ref, f"{source.host}/app:2")
    return config, first


def test_a_full_bundle_repacked_since_an_older_one_is_the_delta_the_export_makes(
    registry: Registry,
    empty_registry: Registry,
    second_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    """A site boundary holds the full week-2 bundle and knows the far side has week 1: the
    re-pack --since week 1 is exactly the incremental export (same root), and imports on top."""
    config, first = _weeks(registry, empty_registry, images, tmp_path)
    full = tmp_path / "week2-full.tar"
    _export(config, f"oci-archive:{full}")
    exported = tmp_path / "week2-export.tar"
    wanted = _export(config, f"oci-archive:{exported}", "--since", str(first))

    for out in (tmp_path / "delta.tar", tmp_path / "delta-dir"):
        kind = "oci-archive" if out.suffix == ".tar" else "oci"
        summary = _export(Path(f"oci-archive:{full}"), f"{kind}:{out}", "--since", str(first))
        assert summary["root_digest"] == wanted["root_digest"]
        assert summary["relied_on"] == wanted["relied_on"] and wanted["relied_on"]
        assert _index(out) == _index(exported)
        _verified(f"{kind}:{out}", str(wanted["root_digest"]))
    assert _blobs(_members(tmp_path / "delta.tar")) == _blobs(_members(exported))
    shared_a = images.images["shared-a"]
    assert not _blobs(_members(tmp_path / "delta.tar")) & {b.digest for b in shared_a.blobs}

    target = f"{second_registry.host}/site"
    assert xfer("mirror", f"oci-archive:{first}", target).code == 0
    run = xfer("mirror", "--json", f"oci-archive:{tmp_path / 'delta.tar'}", target)
    assert run.code == 0, run.err
    assert inspect_raw(f"{target}/app:2") == images.images["shared-b"].raw


def test_an_incremental_bundle_repacked_keeps_relying_on_what_it_relied_on(
    registry: Registry,
    empty_registry: Registry,
    second_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    """An incremental bundle turned into a directory or into volumes holds no more than it
    held (the blobs it relied on are nowhere here to copy): its relies-on record and since
    list are carried, the same content gives the same root, and each result verifies and
    imports on top of week 1 as the bundle itself does."""
    config, first = _weeks(registry, empty_registry, images, tmp_path)
    second = tmp_path / "week2.tar"
    wanted = _export(config, f"oci-archive:{second}", "--since", str(first))
    index = json.loads(_index(second))
    record = index["annotations"][RELIES_ON]
    assert index["annotations"][SINCE] == _root(_index(first))

    dvd, directory = tmp_path / "dvd.tar", tmp_path / "week2-dir"
    runs = [(directory, ()), (dvd, ("--max-size", "32K"))]
    for out, extra in runs:
        kind = "oci-archive" if out.suffix == ".tar" else "oci"
        summary = _export(Path(f"oci-archive:{second}"), f"{kind}:{out}", *extra)
        assert summary["relied_on"] == wanted["relied_on"]
        doc = json.loads(_index(out))
        assert doc["manifests"] == index["manifests"]
        # the record and since list carried (volumes: and their count)
        volumes = sorted(tmp_path.glob("dvd.*.tar")) if extra else []
        counted = {"dev.xfer.volumes": str(len(volumes))} if extra else {}
        assert doc["annotations"] == {**index["annotations"], **counted}
        if not extra:  # the same content: the same root
            assert summary["root_digest"] == wanted["root_digest"]
        _verified(f"{kind}:{out}", str(summary["root_digest"]))
    assert len(sorted(tmp_path.glob("dvd.*.tar"))) > 1
    held = (directory / "blobs" / "sha256" / record.split(":")[1]).read_bytes()
    assert json.loads(held)["mediaType"] == RELIES_ON_TYPE

    # a re-pack of the directory since week 1 again: nothing more to leave out, the same
    again = tmp_path / "again.tar"
    summary = _export(Path(f"oci:{directory}"), f"oci-archive:{again}", "--since", str(first))
    assert summary["root_digest"] == wanted["root_digest"]

    target = f"{second_registry.host}/site"
    lacking = xfer("mirror", f"oci-archive:{dvd}", target)
    assert lacking.code == 1 and "nothing was written" in lacking.err
    assert xfer("mirror", f"oci-archive:{first}", target).code == 0
    run = xfer("mirror", f"oci:{directory}", target)
    assert run.code == 0, run.err
    assert inspect_raw(f"{target}/app:2") == images.images["shared-b"].raw


def test_a_dry_run_repack_plans_with_bytes_and_writes_nothing(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    config = _config(tmp_path / "sync.yaml", registry.host, {"test/small": ["1"]})
    bundle = tmp_path / "bundle.tar"
    _export(config, f"oci-archive:{bundle}")
    for out in (f"oci-archive:{tmp_path / 'out.tar'}", f"oci:{tmp_path / 'out'}"):
        run = xfer("mirror", "--json", "--dry-run", f"oci-archive:{bundle}", out)
        assert run.code == 0, run.err
        plan, done = run.json_lines()[-2:]
        small = images.images["small"]
        assert plan["action"] == "copy" and plan["source"] == f"{registry.host}/test/small:1"
        assert plan["bytes"] == sum(b.size for b in small.blobs)
        assert done["dry_run"] is True and done["copy"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.tar", "sync.yaml"]


def test_a_repack_onto_its_own_source_is_refused_in_one_line(
    registry: Registry, tmp_path: Path
) -> None:
    config = _config(tmp_path / "sync.yaml", registry.host, {"test/small": ["1"]})
    bundle, layout = tmp_path / "bundle.tar", tmp_path / "layout"
    _export(config, f"oci-archive:{bundle}")
    _export(config, f"oci:{layout}")
    _export(config, f"oci-archive:{tmp_path / 'set.tar'}", "--max-size", "32K")
    first_volume = tmp_path / "set.001.tar"
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    cases = [
        (f"oci-archive:{bundle}", f"oci-archive:{tmp_path / '.' / 'bundle.tar'}", ()),
        (f"oci:{layout}", f"oci:{layout}/", ()),
        (
            f"oci-archive:{first_volume}",
            f"oci-archive:{tmp_path / 'set.tar'}",
            ("--max-size", "32K"),
        ),
        (f"oci-archive:{tmp_path / 'set.tar'}", f"oci-archive:{first_volume}", ()),
    ]
    for source, destination, extra in cases:
        run = xfer("mirror", *extra, source, destination)
        assert run.code == 2, (source, destination, run.err)
        lines = run.err.strip().splitlines()
        assert len(lines) == 1 and "is the bundle it reads" in lines[0], run.err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
