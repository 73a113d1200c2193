"""``xfer verify oci-archive:FILE`` (one file or a volume set) and ``xfer verify oci:DIR``: every
blob re-hashed, every image's graph checked complete, ``--expect`` the root digest; exit 1
naming each damaged or missing blob or volume, 0 with a short summary."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import STORE_HOST, fill_store, xfer


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _blob_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """sha256:HEX → (data offset, size) of every blob member."""
    with tarfile.open(path) as tar:
        return {
            "sha256:" + m.name.rsplit("/", 1)[1]: (m.offset_data, m.size)
            for m in tar.getmembers()
            if m.isfile() and m.name.startswith("blobs/sha256/")
        }


def _index_digest(path: Path) -> str:
    with tarfile.open(path) as tar:
        handle = tar.extractfile("index.json")
        assert handle is not None
        return "sha256:" + hashlib.sha256(handle.read()).hexdigest()


def _layers(images: BuiltImages, name: str) -> list[str]:
    return [layer.digest for layer in images.images[name].layers]


@pytest.fixture
def saved(images: BuiltImages, store: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    refs = fill_store(store, images, "shared-a", "shared-b")
    archive = tmp_path / "two.tar"
    run = xfer("save", *refs.values(), "-o", archive, store=store)
    assert run.code == 0, run.err
    return archive, refs


def test_a_clean_archive_verifies_with_a_short_summary(saved: tuple[Path, dict[str, str]]) -> None:
    archive, _ = saved
    run = xfer("verify", f"oci-archive:{archive}")
    assert run.code == 0, run.err
    assert run.out == ""
    assert "2 images" in run.err and ": ok" in run.err
    assert _index_digest(archive) in run.err

    run = xfer("verify", f"oci-archive:{archive}", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["problems"] == [] and report["images"] == 2
    assert report["root"] == _index_digest(archive)
    assert report["blobs"] == len(_blob_offsets(archive))


def test_one_flipped_byte_in_each_of_two_blobs_names_both(
    saved: tuple[Path, dict[str, str]], images: BuiltImages
) -> None:
    archive, _ = saved
    offsets = _blob_offsets(archive)
    first, second = _layers(images, "shared-a")[-1], _layers(images, "shared-b")[-1]
    for digest in (first, second):
        start, size = offsets[digest]
        _flip(archive, start + size // 2)
    run = xfer("verify", f"oci-archive:{archive}")
    assert run.code == 1
    damaged = [line for line in run.out.splitlines() if "is damaged" in line]
    assert sorted(line.split()[1] for line in damaged) == sorted([first, second])
    assert "2 problems" in run.err

    run = xfer("verify", f"oci-archive:{archive}", "--json")
    assert run.code == 1
    assert sorted(json.loads(run.out.splitlines()[0])["damaged"]) == sorted([first, second])


def test_a_blob_the_archive_lacks_is_named_missing_with_its_image(
    saved: tuple[Path, dict[str, str]], images: BuiltImages, tmp_path: Path
) -> None:
    archive, refs = saved
    lost = _layers(images, "shared-b")[-1]
    cut = tmp_path / "cut.tar"
    with tarfile.open(archive) as source, tarfile.open(cut, "w", format=tarfile.PAX_FORMAT) as out:
        for member in source.getmembers():
            if member.name != "blobs/sha256/" + lost.removeprefix("sha256:"):
                out.addfile(member, source.extractfile(member) if member.isfile() else None)
    run = xfer("verify", f"oci-archive:{cut}")
    assert run.code == 1
    assert f"blob {lost} is missing (used by {refs['shared-b']}" in run.out
    assert f"{cut} has 1 problem: " in run.err  # not "1 problems"


def test_expect_compares_the_root_digest(saved: tuple[Path, dict[str, str]]) -> None:
    archive, _ = saved
    root = _index_digest(archive)
    assert xfer("verify", f"oci-archive:{archive}", "--expect", root).code == 0
    wrong = "sha256:" + "0" * 64
    run = xfer("verify", f"oci-archive:{archive}", "--expect", wrong)
    assert run.code == 1
    assert f"root digest (of index.json) is {root}, not the expected {wrong}" in run.out
    assert xfer("verify", f"oci-archive:{archive}", "--expect", "nonsense").code == 2


def _volume_set(images: BuiltImages, store: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    refs = fill_store(store, images, "shared-a", "shared-b", "small")
    single = tmp_path / "single.tar"
    assert xfer("save", *refs.values(), "-o", single, store=store).code == 0
    base = tmp_path / "set.tar"
    limit = str(max(single.stat().st_size // 3, 8192))
    run = xfer("save", *refs.values(), "-o", base, "--max-size", limit, store=store)
    assert run.code == 0, run.err
    volumes = sorted(tmp_path.glob("set.*.tar"))
    assert len(volumes) >= 3
    return base, volumes


def test_a_clean_volume_set_verifies_by_its_name_and_by_its_first_volume(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    base, volumes = _volume_set(images, store, tmp_path)
    for name in (base, volumes[0]):
        run = xfer("verify", f"oci-archive:{name}", "--expect", _index_digest(volumes[-1]))
        assert run.code == 0, run.out + run.err
        assert f"in {len(volumes)} volumes" in run.err


def test_a_truncated_volume_is_named_and_so_are_the_blobs_it_lost(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    base, volumes = _volume_set(images, store, tmp_path)
    second = volumes[1]
    held = _blob_offsets(second)
    cut_at = second.stat().st_size // 2
    lost = sorted(d for d, (start, size) in held.items() if start + size > cut_at)
    assert lost
    with second.open("r+b") as handle:
        handle.truncate(cut_at)
    run = xfer("verify", f"oci-archive:{base}")
    assert run.code == 1
    assert f"archive {second} is truncated" in run.out
    named = {line.split()[1] for line in run.out.splitlines() if "is missing" in line}
    # What a lost manifest named is unknown: the manifest is what is named then.
    unknown = set()
    for name in ("shared-a", "shared-b", "small"):
        info = images.images[name]
        if info.digest in named:
            unknown |= {blob.digest for blob in info.blobs}
    assert named
    assert set(lost) <= named | unknown


def test_a_missing_volume_is_named(images: BuiltImages, store: Path, tmp_path: Path) -> None:
    base, volumes = _volume_set(images, store, tmp_path)
    volumes[1].unlink()
    run = xfer("verify", f"oci-archive:{base}")
    assert run.code == 1
    assert f"volume {volumes[1]} of {base} is missing" in run.out

    volumes[-1].unlink()
    run = xfer("verify", f"oci-archive:{base}")
    assert run.code == 1
    assert f"volume {volumes[-1]} of {base} is missing" in run.out


def test_a_one_platform_save_of_an_index_verifies(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    """The save keeps the whole index and one platform's image: the index.json entry says
    which children were left out, so they are not reported missing."""
    refs = fill_store(store, images, "multi")
    archive = tmp_path / "one.tar"
    run = xfer("save", refs["multi"], "-o", archive, "--platform", "linux/arm64", store=store)
    assert run.code == 0, run.err
    run = xfer("verify", f"oci-archive:{archive}")
    assert run.code == 0, run.out + run.err
    assert "1 image, 0 referrers, " in run.err  # counted in words a person would write


def test_a_plain_oci_save_of_a_docker_image_verifies(
    images: BuiltImages, store: Path, tmp_path: Path
) -> None:
    refs = fill_store(store, images, "docker")
    archive = tmp_path / "oci.tar"
    assert xfer("save", refs["docker"], "-o", archive, "--format", "oci", store=store).code == 0
    run = xfer("verify", f"oci-archive:{archive}")
    assert run.code == 0, run.out + run.err


def test_a_layout_is_verified_naming_damaged_and_missing_blobs(
    images: BuiltImages, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(images.layout, layout)
    run = xfer("verify", f"oci:{layout}")
    assert run.code == 0, run.out + run.err

    damaged, missing = _layers(images, "shared-a")[-1], _layers(images, "small")[0]
    _flip(layout / "blobs" / "sha256" / damaged.removeprefix("sha256:"), 10)
    (layout / "blobs" / "sha256" / missing.removeprefix("sha256:")).unlink()
    run = xfer("verify", f"oci:{layout}", "--json")
    assert run.code == 1
    report = json.loads(run.out.splitlines()[0])
    assert report["damaged"] == [damaged]
    assert report["missing"] == [missing]


def test_verify_of_the_store_still_refuses_expect(store: Path) -> None:
    run = xfer("verify", "--expect", "sha256:" + "0" * 64, store=store)
    assert run.code == 2


def test_referrers_listed_in_index_json_are_checked_like_images(
    images: BuiltImages, tmp_path: Path
) -> None:
    """A signed image with an SBOM and the SBOM's signature: each referrer is an index.json entry,
    walked as an image; a damaged SBOM document is named."""
    from tests.test_referrers_local import _save_signed, _signed_layout

    signed = _signed_layout(images, tmp_path / "signed")
    run = xfer("verify", f"oci:{signed.layout}")
    assert run.code == 0, run.out + run.err
    archive = tmp_path / "signed.tar"
    _save_signed(signed, archive, None, f"{STORE_HOST}/small:1")
    run = xfer("verify", f"oci-archive:{archive}", "--json")
    assert run.code == 0, run.out + run.err
    report = json.loads(run.out)
    assert (report["images"], report["referrers"]) == (1, 3)  # the image; SBOM, two signatures

    sbom = json.loads(
        (signed.layout / "blobs" / "sha256" / signed.sbom.digest.encoded).read_bytes()
    )
    document = sbom["layers"][0]["digest"]
    start, size = _blob_offsets(archive)[document]
    _flip(archive, start + size - 1)
    run = xfer("verify", f"oci-archive:{archive}")
    assert run.code == 1
    assert [line.split()[1] for line in run.out.splitlines()] == [document]


def test_a_missing_blob_of_an_unnamed_referrer_is_named_with_its_artifact_type(
    images: BuiltImages, tmp_path: Path
) -> None:
    from tests.test_referrers_local import SPDX, _signed_layout

    signed = _signed_layout(images, tmp_path / "signed")
    sbom = json.loads(
        (signed.layout / "blobs" / "sha256" / signed.sbom.digest.encoded).read_bytes()
    )
    document = sbom["layers"][0]["digest"]
    (signed.layout / "blobs" / "sha256" / document.removeprefix("sha256:")).unlink()
    run = xfer("verify", f"oci:{signed.layout}")
    assert run.code == 1
    assert run.out.splitlines() == [
        f"blob {document} is missing (used by the {SPDX} {signed.sbom.digest}, "
        f"{sbom['layers'][0]['size']} bytes)"
    ]


def _rewrite(archive: Path, out: Path, drop: set[str], add: dict[str, bytes]) -> None:
    """``archive`` without the members ``drop``, with ``add`` (name → bytes) in their place."""
    with tarfile.open(archive) as source, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in source.getmembers():
            if member.name in drop or member.name in add:
                continue
            tar.addfile(member, source.extractfile(member) if member.isfile() else None)
        for name, data in add.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _incremental(archive: Path, out: Path, relied: list[tuple[str, int]], lose: list[str]) -> str:
    """An incremental bundle made by hand, as the export writes one: the blobs ``relied`` left
    out and named in a relies-on record, which index.json's annotation names; ``lose`` left out
    without a word. Returns the record's digest."""
    record = json.dumps(
        {
            "mediaType": "application/vnd.dev.xfer.bundle.relies-on.v1+json",
            "blobs": [{"digest": d, "size": s} for d, s in sorted(relied)],
        },
        separators=(",", ":"),
    ).encode()
    digest = "sha256:" + hashlib.sha256(record).hexdigest()
    with tarfile.open(archive) as tar:
        handle = tar.extractfile("index.json")
        assert handle is not None
        index = json.loads(handle.read())
    index["annotations"] = {"dev.xfer.bundle.relies-on": digest}
    drop = {"blobs/sha256/" + d.removeprefix("sha256:") for d, _ in relied}
    drop |= {"blobs/sha256/" + d.removeprefix("sha256:") for d in lose}
    add = {"index.json": json.dumps(index).encode(), "blobs/sha256/" + digest[7:]: record}
    _rewrite(archive, out, drop, add)
    return digest


def test_blobs_an_incremental_bundle_relies_on_are_not_missing_but_others_are(
    saved: tuple[Path, dict[str, str]], images: BuiltImages, tmp_path: Path
) -> None:
    archive, refs = saved
    a, b = images.images["shared-a"].layers, images.images["shared-b"].layers
    relied = [(layer.digest, layer.size) for layer in a]  # the far side holds shared-a's layers
    incremental = tmp_path / "incremental.tar"
    _incremental(archive, incremental, relied, [])
    run = xfer("verify", f"oci-archive:{incremental}", "--json")
    assert run.code == 0, run.out + run.err
    assert json.loads(run.out)["relied_on"] == len(relied)

    # A layer of shared-b's own (not relied on): the check always runs, whatever the fixture shares.
    own = next(layer for layer in reversed(b) if layer.digest not in {d for d, _ in relied})
    _incremental(archive, incremental, relied, [own.digest])
    run = xfer("verify", f"oci-archive:{incremental}")
    assert run.code == 1
    assert run.out.splitlines() == [
        f"blob {own.digest} is missing (used by {refs['shared-b']}, {own.size} bytes)"
    ]


def test_a_relies_on_record_the_bundle_lacks_is_named(
    saved: tuple[Path, dict[str, str]], images: BuiltImages, tmp_path: Path
) -> None:
    archive, _ = saved
    layer = images.images["shared-a"].layers[-1]
    incremental = tmp_path / "incremental.tar"
    record = _incremental(archive, incremental, [(layer.digest, layer.size)], [])
    without = tmp_path / "without.tar"
    _rewrite(incremental, without, {"blobs/sha256/" + record[7:]}, {})
    run = xfer("verify", f"oci-archive:{without}")
    assert run.code == 1
    assert f"relies-on record {record}" in run.out
    assert f"blob {layer.digest} is missing" in run.out


def test_exported_bundles_verify_against_the_root_digest_the_export_printed(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    """What ``xfer mirror CONFIG oci-archive:`` writes (whole, in volumes, incremental, as a
    layout) verifies, --expect'ing the root digest it printed; the incremental one relies on
    what the first holds."""
    from tests.test_bundle import NAMES, _config, _export, _tag

    config = _config(tmp_path / "sync.yaml", registry.host, {f"test/{n}": ["1"] for n in NAMES})
    for bundle, extra in (
        (f"oci-archive:{tmp_path / 'whole.tar'}", ()),
        (f"oci-archive:{tmp_path / 'vol.tar'}", ("--max-size", "64K")),
        (f"oci:{tmp_path / 'layout'}", ()),
    ):
        root = str(_export(config, bundle, *extra)["root_digest"])
        run = xfer("verify", bundle, "--expect", root, "--json")
        assert run.code == 0, run.out + run.err
        assert json.loads(run.out)["images"] >= len(NAMES)
    assert len(list(tmp_path.glob("vol.*.tar"))) > 1

    source = empty_registry
    _tag(registry, images.images["shared-a"].ref, f"{source.host}/app:1")
    config = _config(tmp_path / "app.yaml", source.host, {"app": []})
    first = tmp_path / "week1.tar"
    _export(config, f"oci-archive:{first}")
    _tag(registry, images.images["shared-b"].ref, f"{source.host}/app:2")
    second = tmp_path / "week2.tar"
    summary = _export(config, f"oci-archive:{second}", "--since", str(first))
    run = xfer("verify", f"oci-archive:{second}", "--expect", str(summary["root_digest"]), "--json")
    assert run.code == 0, run.out + run.err
    assert json.loads(run.out)["relied_on"] == summary["relied_on"]
