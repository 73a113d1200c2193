"""Referrers in layouts and archives that lie: what index.json says is checked against what the
manifests say, each manifest is read once however often it is listed, what was asked of a
load is what it does, and referrers are never counted as images.

Each layout is built here, byte by byte (no registry needed): an image, others' artifacts, and
an index.json written as a hostile or careless tool might write it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from tests.helpers import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME,
    SPDX,
    descriptor,
    named_entry,
    put_artifact,
    put_blob,
    put_image,
    put_json,
    tar_layout,
    write_layout,
    xfer,
)
from transfer.digest import Digest
from transfer.endpoints import tarindex
from transfer.endpoints.archive_read import OciArchive
from transfer.endpoints.layout import Layout, LayoutSource
from transfer.endpoints.layout_referrers import list_referrers
from transfer.manifest import Descriptor
from transfer.ociview import ORIGINAL

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"


def _signature(root: Path, subject: dict[str, Any]) -> dict[str, Any]:
    """As cosign signs: no ``subject``, an image config, a simple-signing payload layer."""
    payload = json.dumps({"critical": {"image": {"docker-manifest-digest": subject["digest"]}}})
    layer = put_blob(root, payload.encode(), SIMPLE_SIGNING)
    layer["annotations"] = {"dev.cosignproject.cosign/signature": "not checked here"}
    config = {"architecture": "", "os": "", "rootfs": {"type": "layers", "diff_ids": []}}
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": put_blob(root, json.dumps(config).encode(), OCI_CONFIG),
        "layers": [layer],
    }
    return put_json(root, doc)


def _tag(desc: dict[str, Any], suffix: str = "") -> str:
    return str(desc["digest"]).replace(":", "-") + suffix


def _entries(root: Path) -> list[dict[str, Any]]:
    manifests: list[dict[str, Any]] = json.loads((root / "index.json").read_text())["manifests"]
    return manifests


def _count_tar_reads(monkeypatch: Any) -> list[str]:
    """The members an archive reads by name (``TarIndex.read_small``), in order, from now on."""
    reads: list[str] = []
    real_read = tarindex.TarIndex.read_small

    def counting_read(self: tarindex.TarIndex, name: str, cap: int) -> bytes:
        reads.append(name)
        return real_read(self, name, cap)

    monkeypatch.setattr(tarindex.TarIndex, "read_small", counting_read)
    return reads


def _listed(root: Path, archive: Path, subject: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The referrers of ``subject`` the layout at ``root`` and the archive of it list."""

    async def ask() -> tuple[set[str], set[str]]:
        layout = LayoutSource(Layout(root), "x")
        from_layout = {
            str(r.descriptor.digest) for r in await layout.get_referrers(descriptor(subject))
        }
        opened = OciArchive(archive)
        try:
            found = await opened.get_referrers(descriptor(subject))
        finally:
            await opened.aclose()
        return from_layout, {str(r.descriptor.digest) for r in found}

    return anyio.run(ask)


# ---- a subject is what the manifest says ---------------------------------------------------------


def test_a_fallback_index_cannot_make_another_images_referrer_one_of_this_image(
    tmp_path: Path,
) -> None:
    """A referrers-tag-schema index ``sha256-<X>`` that lists a manifest whose own ``subject`` is
    Y (or that has none) does not make it a referrer of X: the listing would then show, save,
    load and carry as X's SBOM what is about another image. What it lists about X still is."""
    root = tmp_path / "layout"
    x, y = put_image(root, "x"), put_image(root, "y")
    about_x = put_artifact(root, "about-x", x)
    about_y = put_artifact(root, "about-y", y)
    about_nothing = put_image(root, "no subject")
    lying = put_json(
        root,
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [about_x, about_y, about_nothing],
        },
        OCI_INDEX,
    )
    write_layout(root, [named_entry(x, "x"), named_entry(y, "y"), named_entry(lying, _tag(x))])

    from_layout, from_archive = _listed(root, tar_layout(root, tmp_path / "a.tar"), x)
    assert from_layout == from_archive == {about_x["digest"]}


def test_a_fallback_index_child_the_layout_does_not_hold_is_not_listed(tmp_path: Path) -> None:
    """A child of a fallback index whose manifest the layout does not hold cannot be checked
    against its subject: it is not listed as a referrer (nothing says what it is about)."""
    root = tmp_path / "layout"
    x = put_image(root, "x")
    about_x = put_artifact(root, "about-x", x)
    gone = put_artifact(root, "gone", x)
    (root / "blobs/sha256" / gone["digest"][7:]).unlink()
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [gone, about_x]}
    write_layout(
        root, [named_entry(x, "x"), named_entry(put_json(root, index, OCI_INDEX), _tag(x))]
    )

    from_layout, from_archive = _listed(root, tar_layout(root, tmp_path / "a.tar"), x)
    assert from_layout == from_archive == {about_x["digest"]}


# ---- bounded work ------------------------------------------------------------------------------


def test_an_index_json_listing_one_big_referrer_many_times_reads_it_once(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """index.json may list the same unnamed entry thousands of times (an archive's index.json
    may be 16 MiB: ~100 000 entries). The referrer listing reads and hashes each distinct
    manifest once, not once per entry: otherwise one 4 MiB manifest listed 100 000 times makes
    ``xfer load`` / ``xfer referrers`` / a copy read and hash 400 GB."""
    root = tmp_path / "layout"
    x = put_image(root, "x")
    big = put_artifact(root, "big", x, annotations={"pad": "p" * (1 << 20)})  # a 1 MiB manifest
    write_layout(root, [named_entry(x, "x"), *([big] * 300)])
    archive = tar_layout(root, tmp_path / "a.tar")

    reads = _count_tar_reads(monkeypatch)
    layout_reads: list[Digest] = []
    real_get = Layout.get_manifest

    def counting_get(self: Layout, desc: Descriptor) -> Any:
        layout_reads.append(desc.digest)
        return real_get(self, desc)

    monkeypatch.setattr(Layout, "get_manifest", counting_get)

    from_layout, from_archive = _listed(root, archive, x)
    assert from_layout == from_archive == {big["digest"]}
    assert reads.count(f"blobs/sha256/{big['digest'][7:]}") == 1
    assert layout_reads.count(Digest.parse(big["digest"])) == 1


def test_an_index_json_repeating_an_entry_that_names_an_original_reads_it_once(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """An entry naming the Docker original of its OCI view (``dev.xfer.original.digest``) is
    checked by reading both manifests: an index.json repeating it 300 times (under 300 names)
    reads each once, not 600 times."""
    root = tmp_path / "layout"
    x, other = put_image(root, "x"), put_image(root, "other")
    entries = [
        {**x, "annotations": {REF_NAME: f"r.example/x:{i}", ORIGINAL: other["digest"]}}
        for i in range(300)
    ]
    write_layout(root, entries)
    archive = tar_layout(root, tmp_path / "a.tar")
    reads = _count_tar_reads(monkeypatch)

    async def names() -> int:
        opened = OciArchive(archive)
        try:
            return len(await opened.images())
        finally:
            await opened.aclose()

    assert anyio.run(names) == 300
    for desc in (x, other):
        assert reads.count(f"blobs/sha256/{desc['digest'][7:]}") == 1


def test_a_listing_reads_at_most_its_limit_of_manifests_and_keeps_the_rest_as_roots(
    tmp_path: Path,
) -> None:
    """Past its limit of manifests read, a listing reads no more: the entries it did not read
    stay roots (what they are about is unknown, so gc drops nothing on their account), listed
    as referrers of nothing, and counted."""
    root = tmp_path / "layout"
    x = put_image(root, "x")
    sboms = [put_artifact(root, f"sbom {i}", x) for i in range(5)]
    write_layout(root, [named_entry(x, "x"), *sboms])
    layout = Layout(root)
    entries = layout.read_index()
    reads: list[Digest] = []

    def read(desc: Descriptor) -> Any:
        reads.append(desc.digest)
        return layout.get_manifest(desc)

    listing = list_referrers(entries, read, limit=2)
    assert len(reads) == 2
    assert {str(r.descriptor.digest) for r in listing.referrers(Digest.parse(x["digest"]))} == {
        s["digest"] for s in sboms[:2]
    }
    assert [str(e.digest) for e in listing.roots(entries)] == [
        x["digest"],
        *(s["digest"] for s in sboms[2:]),
    ]
    assert listing.unread == 3


# ---- a signed image as xfer save writes it ------------------------------------------------------


def _signed_archive(tmp_path: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """An archive as ``xfer save`` writes a signed image with an SBOM and the SBOM's
    signature: full references, cosign tags in the image's repository, the SBOM unnamed."""
    root = tmp_path / "layout"
    x = put_image(root, "x")
    sig, sbom = _signature(root, x), put_artifact(root, "sbom", x)
    sbom_sig = _signature(root, sbom)
    write_layout(
        root,
        [
            named_entry(x, "r.example/x:1"),
            named_entry(sig, f"r.example/x:{_tag(x, '.sig')}"),
            {**sbom, "artifactType": SPDX},
            named_entry(sbom_sig, f"r.example/x:{_tag(sbom, '.sig')}"),
        ],
    )
    parts = {"image": x, "sig": sig, "sbom": sbom, "sbom_sig": sbom_sig}
    return tar_layout(root, tmp_path / "signed.tar"), parts


def _stored(store: Path) -> set[str]:
    return {str(e["digest"]) for e in _entries(store)}


def test_load_no_referrers_leaves_an_archives_referrers_out_of_the_store(tmp_path: Path) -> None:
    """``xfer load --no-referrers`` leaves signatures and SBOMs in the archive, as every other
    command does: the store gets the image alone."""
    archive, parts = _signed_archive(tmp_path)
    store = tmp_path / "store"
    run = xfer("load", "--no-referrers", archive, store=store)
    assert run.code == 0, run.err
    assert _stored(store) == {parts["image"]["digest"]}
    run = xfer("load", archive, store=store)  # and without it, every one
    assert run.code == 0, run.err
    assert _stored(store) == {p["digest"] for p in parts.values()}


def test_load_referrers_type_keeps_only_that_type_at_every_level(tmp_path: Path) -> None:
    """``--referrers-type T`` keeps only referrers of type T, at every level as a copy does: a
    cosign signature's type is its payload's (simple signing), and a signature of an SBOM left
    out is left out with it."""
    archive, parts = _signed_archive(tmp_path)
    signatures = tmp_path / "signatures"
    run = xfer("load", "--referrers-type", SIMPLE_SIGNING, archive, store=signatures)
    assert run.code == 0, run.err
    assert _stored(signatures) == {parts["image"]["digest"], parts["sig"]["digest"]}
    sboms = tmp_path / "sboms"
    run = xfer("load", "--referrers-type", SPDX, archive, store=sboms)
    assert run.code == 0, run.err
    assert _stored(sboms) == {parts["image"]["digest"], parts["sbom"]["digest"]}


# ---- referrers are no images ---------------------------------------------------------------------


def test_an_archive_of_one_signed_image_is_read_without_a_name(tmp_path: Path) -> None:
    """``oci-archive:FILE`` without a name reads the archive's only image: its signatures,
    SBOMs and their signatures are listed beside it, no images of their own to choose from."""
    archive, parts = _signed_archive(tmp_path)
    out = tmp_path / "out"
    run = xfer("copy", f"oci-archive:{archive}", f"oci:{out}:x")
    assert run.code == 0, run.err
    named = {e["annotations"][REF_NAME]: e["digest"] for e in _entries(out) if "annotations" in e}
    assert named["x"] == parts["image"]["digest"]
    assert _stored(out) == {p["digest"] for p in parts.values()}  # carried with it
    run = xfer("inspect", f"oci-archive:{archive}")
    assert run.code == 0, run.err
    assert parts["image"]["digest"] in run.out


def test_a_layout_of_one_image_and_a_fallback_tag_is_read_without_a_name(tmp_path: Path) -> None:
    """An ``oci:`` layout holding one image, its referrers under the referrers tag schema's
    ``sha256-<hex>`` tag and a cosign tag has one image to read without a name."""
    root = tmp_path / "layout"
    x = put_image(root, "x")
    sbom, sig = put_artifact(root, "sbom", x), _signature(root, x)
    index = put_json(
        root, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [sbom]}, OCI_INDEX
    )
    write_layout(
        root, [named_entry(x, "x"), named_entry(index, _tag(x)), named_entry(sig, _tag(x, ".sig"))]
    )
    run = xfer("copy", f"oci:{root}", f"oci:{tmp_path / 'out'}:y")
    assert run.code == 0, run.err
    assert _stored(tmp_path / "out") == {x["digest"], sbom["digest"], sig["digest"]}


def test_one_image_under_two_names_is_one_image_to_read_without_a_name(tmp_path: Path) -> None:
    """A layout or an archive whose one signed image is listed under two names has one image."""
    root = tmp_path / "layout"
    x = put_image(root, "x")
    sig = _signature(root, x)
    write_layout(
        root,
        [
            named_entry(x, "r.example/x:1"),
            named_entry(x, "r.example/x:latest"),
            named_entry(sig, _tag(x, ".sig")),
        ],
    )
    archive = tar_layout(root, tmp_path / "a.tar")
    for source in (f"oci:{root}", f"oci-archive:{archive}"):
        out = tmp_path / source.split(":")[0]
        run = xfer("copy", source, f"oci:{out}:y")
        assert run.code == 0, run.err
        assert _stored(out) == {x["digest"], sig["digest"]}


# ---- what the target already holds --------------------------------------------------------------


def test_a_copy_keeps_the_signature_a_layout_already_holds_under_the_cosign_tag(
    tmp_path: Path,
) -> None:
    """cosign keeps every signature of X in the one manifest under ``sha256-<X>.sig``. A store
    or an ``oci:`` layout where the site signed X with its own key holds its own ``.sig``;
    copying the source's ``.sig`` there must not replace it (a policy requiring the site's
    signature would then refuse X): the one held stays under the tag, the copy says so and
    writes nothing of the source's signature (as at a registry; merging would make a manifest
    no tool signed off)."""
    root = tmp_path / "source"
    x = put_image(root, "x")
    vendor = _signature(root, x)
    tag = _tag(x, ".sig")
    write_layout(root, [named_entry(x, "x"), named_entry(vendor, tag)])
    for target, name in ((tmp_path / "site", tag), (tmp_path / "store", f"r.example/x:{tag}")):
        site = _signature(target, {"digest": x["digest"] + "-site"})  # another payload
        write_layout(target, [named_entry(site, name)])
        into = f"oci:{target}:x" if target.name == "site" else "store:r.example/x:1"
        run = xfer("copy", f"oci:{root}:x", into, store=tmp_path / "store")
        assert run.code == 0, run.err
        named = {e["annotations"][REF_NAME]: e["digest"] for e in _entries(target)}
        assert named[name] == site["digest"], "the site's signature was replaced"
        assert name in run.err and "left as it is" in run.err, run.err
        # As at a registry (and as cosign copy without -f): nothing of the source's is written.
        assert not (target / "blobs/sha256" / vendor["digest"][7:]).exists()


def test_a_load_keeps_the_signature_the_store_already_holds_under_the_cosign_tag(
    tmp_path: Path,
) -> None:
    """A load of a saved signed image into a store where the site signed it already keeps the
    site's ``.sig`` under the tag, and says so."""
    archive, parts = _signed_archive(tmp_path)
    store = tmp_path / "store"
    name = f"r.example/x:{_tag(parts['image'], '.sig')}"
    site = _signature(store, {"digest": parts["image"]["digest"] + "-site"})
    write_layout(store, [named_entry(site, name)])
    run = xfer("load", archive, store=store)
    assert run.code == 0, run.err
    named = {e["annotations"][REF_NAME]: e["digest"] for e in _entries(store) if "annotations" in e}
    assert named[name] == site["digest"], "the site's signature was replaced"
    assert name in run.err and "left as it is" in run.err, run.err


def test_a_docker_typed_signature_the_store_holds_as_an_oci_view_is_its_own_on_a_rerun(
    tmp_path: Path,
) -> None:
    """A cosign signature with Docker media types is named in the store through its OCI view
    (the entry names the original): copying it again finds it there, says nothing of another
    signature and writes nothing."""
    root = tmp_path / "source"
    x = put_image(root, "x")
    payload = put_blob(root, b'{"critical": {}}', SIMPLE_SIGNING)
    config = json.dumps({"architecture": "", "os": "", "rootfs": {"type": "layers"}}).encode()
    docker = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": put_blob(root, config, "application/vnd.docker.container.image.v1+json"),
        "layers": [payload],
    }
    sig = put_json(root, docker, docker["mediaType"])
    write_layout(root, [named_entry(x, "x"), named_entry(sig, _tag(x, ".sig"))])
    store = tmp_path / "store"
    for _ in range(2):
        run = xfer("copy", f"oci:{root}:x", "store:r.example/x:1", store=store)
        assert run.code == 0, run.err
        assert "left as it is" not in run.err, run.err
    name = f"r.example/x:{_tag(x, '.sig')}"
    held = [e for e in _entries(store) if e.get("annotations", {}).get(REF_NAME) == name]
    assert [e["annotations"].get(ORIGINAL) for e in held] == [sig["digest"]]
