"""Air-gapped bundles: ``xfer mirror CONFIG oci-archive:B.tar`` exports a mirror set, ``--since``
makes incremental bundles, and ``xfer mirror oci-archive:B.tar HOST/PREFIX`` imports them."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from fixtures.images import BuiltImages, ImageInfo, inspect_raw
from fixtures.registry import Registry
from tests.helpers import index_refs, stored_blobs, xfer
from transfer.bundle_record import RELIES_ON, RELIES_ON_TYPE, SINCE

WRITES = {"PUT", "POST", "PATCH", "DELETE"}
NAMES = ("small", "multi", "shared-a", "shared-b")  # multi: a two-platform index


@pytest.fixture
def second_registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


def _config(path: Path, host: str, repos: dict[str, list[str]]) -> Path:
    lines = [f"{host}:", "  images:"]
    lines += [f"    {repo}: {json.dumps(tags)}" for repo, tags in repos.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        assert len(names) == len(set(names)), "a member written twice"
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def _blobs(members: dict[str, bytes]) -> set[str]:
    found = set()
    for name, data in members.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1], name
            found.add("sha256:" + name.rsplit("/", 1)[1])
    return found


def _all_blobs(info: ImageInfo) -> set[str]:
    """Every blob and manifest of an image (for an index: its children's too)."""
    found = {info.digest}
    for child in info.children:
        found |= _all_blobs(child)
    found |= {b.digest for b in info.blobs}
    return found


def _export(config: Path, bundle: str, *extra: str) -> dict[str, object]:
    run = xfer("mirror", "--json", *extra, config, bundle)
    assert run.code == 0, run.err
    summary: dict[str, object] = run.json_lines()[-1]
    return summary


def test_export_holds_every_image_once_under_its_source_name_and_imports_with_its_digests(
    registry: Registry, second_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    config = _config(tmp_path / "sync.yaml", registry.host, {f"test/{n}": ["1"] for n in NAMES})
    bundle = tmp_path / "bundle.tar"
    summary = _export(config, f"oci-archive:{bundle}")

    members = _members(bundle)
    index = members["index.json"]
    root = "sha256:" + hashlib.sha256(index).hexdigest()
    assert summary["digest"] == summary["root_digest"] == root
    assert summary["copied"] == len(NAMES) and summary["relied_on"] == 0
    entries = json.loads(index)["manifests"]
    named = {e["annotations"]["org.opencontainers.image.ref.name"]: e["digest"] for e in entries}
    assert named == {f"{registry.host}/test/{n}:1": images.images[n].digest for n in NAMES}
    for entry in entries:
        annotations = entry["annotations"]
        assert (
            annotations["io.containerd.image.name"]
            == annotations["org.opencontainers.image.ref.name"]
        )
    # every blob of every image (each platform of the index too), each once; docker's
    # manifest.json beside the layout, as save writes it
    wanted = set().union(*(_all_blobs(images.images[n]) for n in NAMES))
    assert _blobs(members) == wanted
    assert "manifest.json" in members and "oci-layout" in members

    plain = xfer("mirror", "-q", config, f"oci-archive:{tmp_path / 'again.tar'}")
    assert plain.code == 0 and plain.out.strip() == root  # the same images: the same root

    run = xfer("mirror", "--json", f"oci-archive:{bundle}", f"{second_registry.host}/site")
    assert run.code == 0, run.err
    assert run.json_lines()[-1]["copied"] == len(NAMES)
    for name in NAMES:
        there = inspect_raw(f"{second_registry.host}/site/test/{name}:1")
        assert there == images.images[name].raw


def test_a_rerun_of_an_import_is_one_manifest_head_per_image(
    registry: Registry, second_registry: Registry, tmp_path: Path
) -> None:
    config = _config(tmp_path / "sync.yaml", registry.host, {f"test/{n}": ["1"] for n in NAMES})
    bundle = tmp_path / "bundle.tar"
    _export(config, f"oci-archive:{bundle}")
    first = xfer("mirror", f"oci-archive:{bundle}", f"{second_registry.host}/site")
    assert first.code == 0, first.err

    mark = second_registry.mark()
    again = xfer("mirror", "--json", f"oci-archive:{bundle}", f"{second_registry.host}/site")
    assert again.code == 0, again.err
    summary = again.json_lines()[-1]
    assert summary["copied"] == 0 and summary["unchanged"] == len(NAMES)
    asked = [r for r in second_registry.requests(mark) if r.kind != "base"]
    assert sorted((r.method, r.kind, r.repo) for r in asked) == sorted(
        ("HEAD", "manifest", f"site/test/{n}") for n in NAMES
    )


def _tag(registry: Registry, ref: str, target: str) -> None:
    run = xfer("copy", f"{registry.host}/{ref}", target)
    assert run.code == 0, run.err


def test_an_incremental_bundle_holds_only_new_blobs_and_imports_on_top_of_the_first(
    registry: Registry,
    empty_registry: Registry,
    second_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    source = empty_registry
    small, shared_a, shared_b = (images.images[n] for n in ("small", "shared-a", "shared-b"))
    _tag(registry, small.ref, f"{source.host}/app:1")
    _tag(registry, shared_a.ref, f"{source.host}/base:1")
    config = _config(tmp_path / "sync.yaml", source.host, {"app": [], "base": []})
    first = tmp_path / "week1.tar"
    _export(config, f"oci-archive:{first}")

    _tag(registry, shared_b.ref, f"{source.host}/app:2")  # one new tag, sharing base's layers
    second = tmp_path / "week2.tar"
    summary = _export(config, f"oci-archive:{second}", "--since", str(first))

    members = _members(second)
    index = json.loads(members["index.json"])
    # every manifest, old and new
    assert {e["digest"] for e in index["manifests"]} == {
        small.digest,
        shared_a.digest,
        shared_b.digest,
    }
    old = _all_blobs(small) | _all_blobs(shared_a)
    new = {b.digest for b in shared_b.blobs} - old
    record = index["annotations"][RELIES_ON]
    held = _blobs(members)
    # only the new tag's new blobs, the manifests, and the record of what it relies on
    assert held == new | {small.digest, shared_a.digest, shared_b.digest, record}
    doc = json.loads(members[f"blobs/sha256/{record.split(':')[1]}"])
    assert doc["mediaType"] == RELIES_ON_TYPE
    relied = {b["digest"] for b in doc["blobs"]}
    assert relied == {b.digest for b in shared_b.blobs} & old | (
        {b.digest for b in small.blobs} | {b.digest for b in shared_a.blobs}
    )
    assert summary["relied_on"] == len(relied)
    assert (
        index["annotations"][SINCE]
        == "sha256:" + hashlib.sha256(_members(first)["index.json"]).hexdigest()
    )
    assert "manifest.json" not in members  # docker load needs every layer in the file

    # verify takes it: every blob it holds re-hashed, the ones it relies on not called missing
    checked = xfer("verify", "--json", f"oci-archive:{second}", "--expect", summary["root_digest"])
    assert checked.code == 0, checked.err
    assert checked.json_lines()[-1]["relied_on"] == len(relied)

    target = f"{second_registry.host}/site"
    assert xfer("mirror", f"oci-archive:{first}", target).code == 0
    run = xfer("mirror", "--json", f"oci-archive:{second}", target)
    assert run.code == 0, run.err
    done = run.json_lines()[-1]
    assert done["copied"] == 1 and done["unchanged"] == 2
    assert inspect_raw(f"{target}/app:2") == shared_b.raw
    assert inspect_raw(f"{target}/app:1") == small.raw
    assert inspect_raw(f"{target}/base:1") == shared_a.raw


def test_an_incremental_bundle_into_an_empty_registry_names_the_missing_blobs_and_writes_nothing(
    registry: Registry,
    empty_registry: Registry,
    second_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    source = empty_registry
    shared_a, shared_b = images.images["shared-a"], images.images["shared-b"]
    _tag(registry, shared_a.ref, f"{source.host}/app:1")
    config = _config(tmp_path / "sync.yaml", source.host, {"app": []})
    first = tmp_path / "week1.tar"
    _export(config, f"oci-archive:{first}")
    _tag(registry, shared_b.ref, f"{source.host}/app:2")
    second = tmp_path / "week2.tar"
    _export(config, f"oci-archive:{second}", "--since", f"oci-archive:{first}")

    mark = second_registry.mark()
    run = xfer("mirror", f"oci-archive:{second}", f"{second_registry.host}/site")
    assert run.code == 1
    shared = {b.digest for b in shared_b.blobs} & {b.digest for b in shared_a.blobs}
    assert shared
    for digest in shared:
        assert digest in run.err
    assert "nothing was written" in run.err
    assert not [r for r in second_registry.requests(mark) if r.method in WRITES]


def test_load_fills_the_store_from_a_bundle(
    registry: Registry, images: BuiltImages, tmp_path: Path, store: Path
) -> None:
    config = _config(tmp_path / "sync.yaml", registry.host, {"test/small": ["1"]})
    bundle = tmp_path / "bundle.tar"
    _export(config, f"oci-archive:{bundle}")
    run = xfer("load", bundle, store=store)
    assert run.code == 0, run.err
    ref = f"{registry.host}/test/small:1"
    assert ref in run.out
    shown = xfer("inspect", "--raw", f"store:{ref}", store=store)
    assert shown.code == 0 and shown.out.encode() == images.images["small"].raw


def test_an_oci_layout_is_a_bundle_too_exported_incrementally_and_imported(
    registry: Registry,
    empty_registry: Registry,
    second_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    source = empty_registry
    shared_a, shared_b = images.images["shared-a"], images.images["shared-b"]
    _tag(registry, shared_a.ref, f"{source.host}/app:1")
    config = _config(tmp_path / "sync.yaml", source.host, {"app": []})
    first = tmp_path / "week1"
    summary = _export(config, f"oci:{first}")
    index = (first / "index.json").read_bytes()
    assert summary["root_digest"] == "sha256:" + hashlib.sha256(index).hexdigest()
    names = [
        e["annotations"]["org.opencontainers.image.ref.name"]
        for e in json.loads(index)["manifests"]
    ]
    assert names == [f"{source.host}/app:1"]

    _tag(registry, shared_b.ref, f"{source.host}/app:2")
    second = tmp_path / "week2"
    summary = _export(config, f"oci:{second}", "--since", f"oci:{first}")
    doc = json.loads((second / "index.json").read_bytes())
    assert RELIES_ON in doc["annotations"] and summary["relied_on"] > 0
    stored = {f"sha256:{p.name}" for p in (second / "blobs" / "sha256").iterdir()}
    assert not stored & ({b.digest for b in shared_a.blobs})

    target = f"{second_registry.host}/site"
    assert xfer("mirror", f"oci:{first}", target).code == 0
    run = xfer("mirror", f"oci:{second}", target)
    assert run.code == 0, run.err
    assert inspect_raw(f"{target}/app:2") == shared_b.raw
    assert inspect_raw(f"{target}/app:1") == shared_a.raw


def test_a_dry_run_export_plans_with_bytes_and_writes_nothing(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    config = _config(tmp_path / "sync.yaml", registry.host, {"test/small": ["1"]})
    bundle = tmp_path / "bundle.tar"
    run = xfer("mirror", "--json", "--dry-run", config, f"oci-archive:{bundle}")
    assert run.code == 0, run.err
    plan, done = run.json_lines()[-2:]
    small = images.images["small"]
    assert plan["action"] == "copy" and plan["bytes"] == sum(b.size for b in small.blobs)
    assert done["dry_run"] is True
    assert not bundle.exists() and not list(tmp_path.glob("bundle.tar*"))


def test_since_is_refused_for_a_registry_to_registry_mirror(
    registry: Registry, tmp_path: Path
) -> None:
    config = _config(tmp_path / "sync.yaml", registry.host, {"test/small": ["1"]})
    run = xfer("mirror", "--since", str(tmp_path / "x.tar"), config, f"{registry.host}/m")
    assert run.code == 2 and "--since" in run.err


def test_docker_loads_a_bundle_of_two_images(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    from fixtures.daemons import Containerd, Dockerd

    config = _config(
        tmp_path / "sync.yaml", registry.host, {"test/small": ["1"], "test/docker": ["1"]}
    )
    bundle = tmp_path / "bundle.tar"
    _export(config, f"oci-archive:{bundle}")
    with Containerd() as containerd, Dockerd(containerd) as dockerd:
        out = dockerd.docker("load", "-i", str(bundle))
        for name in ("small", "docker"):
            ref = f"{registry.host}/test/{name}:1"
            assert f"Loaded image: {ref}" in out
            config_blob = images.images[name].config
            assert config_blob is not None
            assert dockerd.inspect(ref)["Id"] == config_blob.digest


def test_since_an_index_json_leaves_out_what_its_images_hold(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    """The far side's index.json alone (no blobs): its images' graphs, read from their source
    registry, are what it holds; the bundle is the one --since the whole bundle makes."""
    source = empty_registry
    shared_a, shared_b = images.images["shared-a"], images.images["shared-b"]
    _tag(registry, shared_a.ref, f"{source.host}/app:1")
    config = _config(tmp_path / "sync.yaml", source.host, {"app": []})
    first = tmp_path / "week1.tar"
    _export(config, f"oci-archive:{first}")
    index = tmp_path / "index.json"
    index.write_bytes(_members(first)["index.json"])
    _tag(registry, shared_b.ref, f"{source.host}/app:2")

    by_index = tmp_path / "by-index.tar"
    by_bundle = tmp_path / "by-bundle.tar"
    summary = _export(config, f"oci-archive:{by_index}", "--since", str(index))
    _export(config, f"oci-archive:{by_bundle}", "--since", str(first))
    assert summary["relied_on"] > 0
    assert _blobs(_members(by_index)) == _blobs(_members(by_bundle))
    assert not _blobs(_members(by_index)) & {b.digest for b in shared_a.blobs}


def test_a_bundle_in_volumes_imports_and_names_its_root(
    registry: Registry, second_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    config = _config(tmp_path / "sync.yaml", registry.host, {f"test/{n}": ["1"] for n in NAMES})
    bundle = tmp_path / "bundle.tar"
    summary = _export(config, f"oci-archive:{bundle}", "--max-size", "64K")
    volumes = sorted(tmp_path.glob("bundle.*.tar"))
    assert len(volumes) > 1 and not bundle.exists()
    assert all(v.stat().st_size <= 64 * 1024 for v in volumes)
    index = _members(volumes[-1])["index.json"]
    assert summary["root_digest"] == "sha256:" + hashlib.sha256(index).hexdigest()

    run = xfer("mirror", f"oci-archive:{bundle}", f"{second_registry.host}/site")
    assert run.code == 0, run.err
    for name in NAMES:
        there = inspect_raw(f"{second_registry.host}/site/test/{name}:1")
        assert there == images.images[name].raw


def test_an_import_refuses_a_flipped_byte_in_a_big_layer_and_tags_nothing(
    registry: Registry, second_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    """A layer big enough to be read and sent by one worker thread is still checked against
    its digest before the upload completes: named, not retried, its image not written."""
    large = images.images["large"]
    config = _config(tmp_path / "sync.yaml", registry.host, {"test/large": ["1"]})
    bundle = tmp_path / "bundle.tar"
    _export(config, f"oci-archive:{bundle}")
    biggest = max(large.layers, key=lambda b: b.size)
    assert biggest.size >= 8 << 20
    with tarfile.open(bundle) as tar:
        member = tar.getmember(f"blobs/sha256/{biggest.digest.split(':')[1]}")
    with bundle.open("r+b") as handle:
        handle.seek(member.offset_data + member.size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))

    run = xfer("mirror", f"oci-archive:{bundle}", f"{second_registry.host}/site")
    assert run.code == 1
    error = run.err.strip().splitlines()[-1]
    assert error.startswith("xfer: error:") and "failed" in error
    assert biggest.digest in error and "damaged" in error
    puts = [r for r in second_registry.requests() if r.method == "PUT" and r.kind == "manifest"]
    assert puts == []


def test_a_signed_image_and_its_sbom_travel_in_the_bundle(
    registry: Registry,
    empty_registry: Registry,
    second_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    """Referrers as the copy carries them: the signature and the SBOM (and the SBOM's
    signature) of ``small`` and of ``multi``'s child are in the bundle and at the target, the
    signatures still verifying there."""
    from fixtures.signing import check_signed, fallback_index, seed_signed

    source = empty_registry
    small, multi = images.images["small"], images.images["multi"]
    for info in (small, multi):
        _tag(registry, info.ref, f"{source.host}/{info.ref}")
    signed = seed_signed(source.url, small, multi)
    config = _config(
        tmp_path / "sync.yaml", source.host, {"test/small": ["1"], "test/multi": ["1"]}
    )
    bundle = tmp_path / "bundle.tar"
    _export(config, f"oci-archive:{bundle}")
    layout = tmp_path / "layout"  # the same as an OCI layout, imported into a third registry
    _export(config, f"oci:{layout}")
    with Registry() as third:
        run = xfer("mirror", "--json", f"oci:{layout}", f"{third.host}/site")
        assert run.code == 0, run.err
        assert run.json_lines()[-1]["copied"] == 2
        check_signed(third.url, "site/test/small", small.digest, signed.public_key)
    held = _blobs(_members(bundle))
    for attached in (signed.small, signed.multi_index, signed.multi_child):
        assert attached.signature.manifest.digest in held
    assert signed.small.sbom is not None and signed.small.sbom.digest in held

    run = xfer("mirror", "--json", f"oci-archive:{bundle}", f"{second_registry.host}/site")
    assert run.code == 0, run.err
    # the images; their signatures (named sha256-<hex>.sig in the bundle) travel with them
    assert run.json_lines()[-1]["copied"] == 2
    for name in ("small", "multi"):
        assert inspect_raw(f"{second_registry.host}/site/test/{name}:1") == images.images[name].raw
    for attached in (signed.small, signed.multi_index, signed.multi_child):
        repo = f"site/{attached.repo}"
        check_signed(second_registry.url, repo, attached.subject, signed.public_key)
    listed = fallback_index(second_registry.url, "site/test/small", small.digest)
    assert signed.small.sbom.digest in {d["digest"] for d in listed}
    check_signed(
        second_registry.url, "site/test/small", signed.small.sbom.digest, signed.public_key
    )
    child = multi.platforms["linux/amd64"]
    assert signed.multi_child.sbom is not None
    listed = fallback_index(second_registry.url, "site/test/multi", child)
    assert signed.multi_child.sbom.digest in {d["digest"] for d in listed}

    mark = second_registry.mark()  # a rerun writes nothing, referrers included
    again = xfer("mirror", "--json", f"oci-archive:{bundle}", f"{second_registry.host}/site")
    assert again.code == 0, again.err
    assert again.json_lines()[-1]["unchanged"] == 2
    assert not [r for r in second_registry.requests(mark) if r.method in WRITES]


def test_an_import_with_scoped_keeps_the_source_host_as_mirror_does(
    registry: Registry, second_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    config = _config(tmp_path / "sync.yaml", registry.host, {"test/small": ["1"]})
    bundle = tmp_path / "bundle.tar"
    _export(config, f"oci-archive:{bundle}")
    run = xfer("mirror", "--scoped", f"oci-archive:{bundle}", f"{second_registry.host}/site")
    assert run.code == 0, run.err
    scope = registry.host.replace(":", "_")
    there = inspect_raw(f"{second_registry.host}/site/{scope}/test/small:1")
    assert there == images.images["small"].raw


def test_a_bundles_index_json_does_not_depend_on_the_order_its_referrers_arrived(
    tmp_path: Path,
) -> None:
    """Images of a bundle are exported at once, so their referrers are carried in any order;
    index.json (whose digest is the bundle's root digest) must list them the same way every
    time, or the same signed images give another root digest on every export."""
    from tests.helpers import put_artifact, put_image
    from transfer.digest import Digest
    from transfer.endpoints.bundle_write import BundleDestination
    from transfer.manifest import Manifest
    from transfer.referrers import Referrer, index_entry

    layout = tmp_path / "layout"
    x = put_image(layout, "x")
    sboms = [put_artifact(layout, seed, x) for seed in ("a", "b", "c")]

    def manifest(desc: dict[str, str]) -> Manifest:
        raw = (layout / "blobs" / "sha256" / desc["digest"][7:]).read_bytes()
        return Manifest.from_bytes(raw, desc["mediaType"])

    image = manifest(x)
    blobs = image.image().blobs()  # relied on from outside (an incremental bundle): not written

    async def write(order: list[dict[str, str]], out: Path) -> bytes:
        bundle = BundleDestination(out, {blob.digest for blob in blobs})
        await bundle.start()
        for blob in blobs:
            assert await bundle.has_blob(blob)
        await bundle.put_manifest(image, "r.example/x:1")
        for desc in order:
            sbom = manifest(desc)
            await bundle.put_referrer(Referrer(index_entry(sbom), Digest.parse(x["digest"])), sbom)
        await bundle.commit()
        await bundle.aclose()
        with tarfile.open(out) as tar:
            handle = tar.extractfile("index.json")
            assert handle is not None
            return handle.read()

    first = anyio.run(write, sboms, tmp_path / "one.tar")
    again = anyio.run(write, sboms[::-1], tmp_path / "two.tar")
    assert len(json.loads(first)["manifests"]) == 4
    assert first == again


def test_load_of_an_incremental_bundle_names_every_blob_the_store_lacks_and_writes_nothing(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path, store: Path
) -> None:
    """The store is a target as a registry is: what the bundle relies on from outside is
    checked before anything is written, and every missing blob is named, not the first one
    the copy happens to reach."""
    source = empty_registry
    shared_a, shared_b = images.images["shared-a"], images.images["shared-b"]
    _tag(registry, shared_a.ref, f"{source.host}/app:1")
    config = _config(tmp_path / "sync.yaml", source.host, {"app": []})
    first = tmp_path / "week1.tar"
    _export(config, f"oci-archive:{first}")
    _tag(registry, shared_b.ref, f"{source.host}/app:2")
    second = tmp_path / "week2.tar"
    summary = _export(config, f"oci-archive:{second}", "--since", f"oci-archive:{first}")
    relied = {b.digest for b in shared_a.blobs} & {b.digest for b in shared_b.blobs}
    relied |= {b.digest for b in shared_a.blobs}
    assert summary["relied_on"] == len(relied) >= 2

    run = xfer("load", second, store=store)
    assert run.code == 1
    error = run.err.strip().splitlines()[-1]
    assert f"lacks {len(relied)} blobs" in error and "nothing was written" in error
    for digest in relied:
        assert digest in error
    assert not index_refs(store) and not stored_blobs(store)  # (the store's skeleton only)

    assert xfer("load", first, store=store).code == 0  # the week it was made after: then it loads
    again = xfer("load", second, store=store)
    assert again.code == 0, again.err
    shown = xfer("inspect", "--raw", f"store:{source.host}/app:2", store=store)
    assert shown.code == 0 and shown.out.encode() == shared_b.raw


def test_an_image_without_a_name_is_skipped_by_an_import_with_one_warning_line(
    empty_registry: Registry, tmp_path: Path
) -> None:
    """A bundle entry without ``org.opencontainers.image.ref.name`` names no repository to
    import into: it is skipped, each such image named on a warning line; the named image is
    imported and an unnamed referrer (an SBOM with a subject) is no skipped image."""
    from tests.helpers import named_entry, put_artifact, put_image, tar_layout, write_layout

    layout = tmp_path / "layout"
    named = put_image(layout, "named")
    lost = [put_image(layout, "lost one"), put_image(layout, "lost two")]
    sbom = put_artifact(layout, "sbom", named)
    write_layout(layout, [named_entry(named, "r.example/app:1"), *lost, sbom])
    archive = tar_layout(layout, tmp_path / "bundle.tar")
    for source in (f"oci:{layout}", f"oci-archive:{archive}"):
        run = xfer("mirror", source, f"{empty_registry.host}/site")
        assert run.code == 0, run.err
        warnings = [line for line in run.err.splitlines() if "without a name" in line]
        assert len(warnings) == len(lost), run.err
        for desc in lost:
            assert sum(desc["digest"] in line for line in warnings) == 1
            assert all(line.startswith("warning:") for line in warnings)
        assert sbom["digest"] not in run.err
        assert (
            inspect_raw(f"{empty_registry.host}/site/app:1")
            == (layout / "blobs" / "sha256" / named["digest"][7:]).read_bytes()
        )
