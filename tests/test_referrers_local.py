"""Referrers in the store, ``oci:`` layouts and archives: listed as other tools read them,
found again by ``get_referrers``, kept by gc while their subject is kept and dropped with it.

The signed image is built here as an OCI layout (no registry needed): a cosign-style signature
under its ``sha256-<hex>.sig`` tag, an SBOM with ``subject`` (an unnamed index.json entry with
``artifactType``, as oras lays it out) and a cosign-style signature of the SBOM. It moves
through the endpoints' own ReferrerSource / ReferrerDestination calls (``_carry``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import transfer
from fixtures.daemons import Dockerd, engines
from fixtures.images import BuiltImages
from tests.helpers import STORE_HOST, fill_store, stored_blobs, xfer
from transfer.copy import CopyOptions, copy_image
from transfer.digest import Digest
from transfer.endpoints import ReferrerDestination, ReferrerSource, Source
from transfer.endpoints.archive_read import ArchiveImageSource, OciArchive, open_archive
from transfer.endpoints.archive_write import ArchiveDestination
from transfer.endpoints.layout import REF_NAME, Layout, LayoutDestination, LayoutSource
from transfer.endpoints.layout_referrers import docker_loads
from transfer.manifest import Descriptor, Manifest
from transfer.referrers import Referrer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SPDX = "application/spdx+json"


def _put(root: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _manifest(root: Path, doc: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return {"mediaType": OCI_MANIFEST, **_put(root, raw)}


def _signature(root: Path, subject: dict[str, Any], repository: str) -> dict[str, Any]:
    """A manifest as cosign signs with a key: a simple-signing payload naming the subject's
    digest, its signature in an annotation, an OCI image config that describes no image."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": repository},
                "image": {"docker-manifest-digest": subject["digest"]},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    layer = {"mediaType": SIMPLE_SIGNING, **_put(root, payload)}
    layer["annotations"] = {"dev.cosignproject.cosign/signature": "MEUCIQ-not-checked-here"}
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        }
    ).encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **_put(root, config)},
        "layers": [layer],
    }
    return _manifest(root, doc)


def _sbom(root: Path, subject: dict[str, Any], seed: str) -> dict[str, Any]:
    sbom = json.dumps({"spdxVersion": "SPDX-2.3", "name": seed}).encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SPDX,
        "config": {"mediaType": EMPTY, "digest": _put(root, b"{}")["digest"], "size": 2},
        "layers": [{"mediaType": SPDX, **_put(root, sbom)}],
        "subject": {"mediaType": subject["mediaType"], **_subject(subject)},
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    }
    return _manifest(root, doc)


def _subject(desc: dict[str, Any]) -> dict[str, Any]:
    return {"digest": desc["digest"], "size": desc["size"]}


def _tag(desc: dict[str, Any], suffix: str) -> str:
    return desc["digest"].replace(":", "-") + suffix


@dataclass(frozen=True)
class Signed:
    layout: Path
    name: str  # the image's ref.name in the layout
    image: Descriptor
    signature: Descriptor
    sbom: Descriptor
    sbom_signature: Descriptor


def _signed_layout(images: BuiltImages, dest: Path, name: str = "small") -> Signed:
    """The fixture image ``name`` with a signature, an SBOM and the SBOM's signature, in an
    OCI layout as xfer lays referrers out (and oras does)."""
    shutil.copytree(images.layout / "blobs", dest / "blobs")
    shutil.copy(images.layout / "oci-layout", dest / "oci-layout")
    info = images.images[name]
    image = {"mediaType": info.media_type, "digest": info.digest, "size": info.size}
    signature = _signature(dest, image, f"{STORE_HOST}/{name}")
    sbom = _sbom(dest, image, name)
    sbom_signature = _signature(dest, sbom, f"{STORE_HOST}/{name}")
    entries = [
        {**image, "annotations": {REF_NAME: name}},
        {**signature, "annotations": {REF_NAME: _tag(image, ".sig")}},
        {**sbom, "artifactType": SPDX},
        {**sbom_signature, "annotations": {REF_NAME: _tag(sbom, ".sig")}},
    ]
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
    (dest / "index.json").write_text(json.dumps({**index, "manifests": entries}))

    def desc(d: dict[str, Any]) -> Descriptor:
        return Descriptor(d["mediaType"], Digest.parse(d["digest"]), d["size"])

    return Signed(dest, name, desc(image), desc(signature), desc(sbom), desc(sbom_signature))


async def _carry(
    source: Source, destination: ReferrerDestination, subject: Descriptor
) -> list[Referrer]:
    """What the copy pipeline does with referrers, through the endpoints' calls alone: each
    referrer (recursively) copied by digest, then recorded with ``put_referrer``."""
    assert isinstance(source, ReferrerSource)
    carried = []
    for referrer in await source.get_referrers(subject):
        result = await copy_image(
            source,
            destination,  # type: ignore[arg-type]
            referrer.descriptor.digest,
            None,
            CopyOptions(),
        )
        await destination.put_referrer(referrer, result.manifest)
        carried.append(referrer)
        carried += await _carry(source, destination, result.manifest.descriptor())
    return carried


def _into_store(signed: Signed, store: Path, ref: str) -> None:
    async def main() -> None:
        source = LayoutSource(Layout(signed.layout), signed.name)
        layout = Layout(store)
        destination = LayoutDestination(layout, ref)
        with layout.in_use():
            await copy_image(source, destination, signed.name, ref, CopyOptions())
            await _carry(source, destination, signed.image)

    anyio.run(main)


def _index(root: Path) -> list[dict[str, Any]]:
    manifests: list[dict[str, Any]] = json.loads((root / "index.json").read_text())["manifests"]
    return manifests


def _digests(referrers: list[Referrer]) -> set[Digest]:
    return {r.descriptor.digest for r in referrers}


# ---- the layout source -------------------------------------------------------------------------


def test_a_layout_says_what_refers_to_an_image_by_subject_and_by_cosign_tag(
    images: BuiltImages, tmp_path: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    source = LayoutSource(Layout(signed.layout), signed.name)

    found = anyio.run(source.get_referrers, signed.image)
    assert _digests(found) == {signed.signature.digest, signed.sbom.digest}
    by_digest = {r.descriptor.digest: r for r in found}
    # Described as a registry's listing describes a cosign signature: by its payload's type.
    assert by_digest[signed.signature.digest].descriptor.artifact_type == SIMPLE_SIGNING
    assert by_digest[signed.signature.digest].tag == _tag(
        {"digest": str(signed.image.digest)}, ".sig"
    )
    sbom = by_digest[signed.sbom.digest]
    assert sbom.tag is None and sbom.subject == signed.image.digest
    assert sbom.descriptor.artifact_type == SPDX
    assert sbom.descriptor.annotations == {
        "org.opencontainers.image.created": "2026-01-01T00:00:00Z"
    }
    # Direct only: the SBOM's signature is a referrer of the SBOM, not of the image.
    assert _digests(anyio.run(source.get_referrers, signed.sbom)) == {signed.sbom_signature.digest}
    assert anyio.run(source.get_referrers, signed.signature) == []


def test_a_layout_with_referrers_still_has_one_image_to_read_without_a_name(
    images: BuiltImages, tmp_path: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    copied = transfer.api.copy_sync(
        f"oci:{signed.layout}", f"oci:{tmp_path / 'out'}:x", transfer.Settings(store=tmp_path / "s")
    )
    assert copied.digest == signed.image.digest


# ---- the store ---------------------------------------------------------------------------------


def test_the_store_keeps_referrers_as_oras_lays_them_out_and_cosign_tags_in_the_image_repository(
    images: BuiltImages, tmp_path: Path, store: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    ref = f"{STORE_HOST}/small:1"
    _into_store(signed, store, ref)

    entries = _index(store)
    named = {
        e["annotations"][REF_NAME]: e["digest"]
        for e in entries
        if REF_NAME in e.get("annotations", {})
    }
    image_hex = signed.image.digest.encoded
    assert named == {
        ref: str(signed.image.digest),
        f"{STORE_HOST}/small:sha256-{image_hex}.sig": str(signed.signature.digest),
        f"{STORE_HOST}/small:sha256-{signed.sbom.digest.encoded}.sig": str(
            signed.sbom_signature.digest
        ),
    }
    unnamed = [e for e in entries if REF_NAME not in e.get("annotations", {})]
    assert unnamed == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": str(signed.sbom.digest),
            "size": signed.sbom.size,
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
            "artifactType": SPDX,
        }
    ]
    # Only the image is an image: the list shows no referrer.
    listed = transfer.api.images_sync(transfer.Settings(store=store))
    assert [(e.reference, e.digest) for e in listed] == [(ref, signed.image.digest)]
    # The store answers as the layout did, through the same call.
    source = LayoutSource(Layout(store), ref)
    assert _digests(anyio.run(source.get_referrers, signed.image)) == {
        signed.signature.digest,
        signed.sbom.digest,
    }
    assert _digests(anyio.run(source.get_referrers, signed.sbom)) == {signed.sbom_signature.digest}
    # Another repository's image of the same digest does not get this one's cosign tags.
    other = LayoutSource(Layout(store), f"{STORE_HOST}/elsewhere:1")
    assert _digests(anyio.run(other.get_referrers, signed.image)) == {signed.sbom.digest}
    assert xfer("verify", store=store).code == 0


def test_the_store_says_which_referrers_it_holds_so_a_rerun_writes_nothing(
    images: BuiltImages, tmp_path: Path, store: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    ref = f"{STORE_HOST}/small:1"
    source = LayoutSource(Layout(signed.layout), signed.name)

    async def held(root: Path) -> list[bool]:
        found = await source.get_referrers(signed.image)
        found += await source.get_referrers(signed.sbom)
        destination = LayoutDestination(Layout(root), ref)
        return [await destination.has_referrer(r) for r in found]

    assert anyio.run(held, tmp_path / "empty") == [False, False, False]
    _into_store(signed, store, ref)
    assert anyio.run(held, store) == [True, True, True]
    # Under another repository's name the cosign tags are not there yet; the SBOM entry is.
    other = LayoutDestination(Layout(store), f"{STORE_HOST}/elsewhere:1")
    found = anyio.run(source.get_referrers, signed.image)
    assert {r.tag is None: anyio.run(other.has_referrer, r) for r in found} == {
        True: True,
        False: False,
    }


def test_a_manifest_with_a_subject_put_with_a_tag_becomes_a_referrer_not_an_image(
    images: BuiltImages, tmp_path: Path, store: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    # Only the image and then the SBOM itself: what refers to each is left behind here.
    transfer.api.copy_sync(
        f"oci:{signed.layout}:{signed.name}",
        f"store:{STORE_HOST}/small:1",
        transfer.Settings(store=store, referrers=False),
    )

    async def main() -> None:
        source = LayoutSource(Layout(signed.layout), signed.name)
        layout = Layout(store)
        with layout.in_use():
            await copy_image(
                source,
                LayoutDestination(layout, f"{STORE_HOST}/small:sbom"),
                signed.sbom.digest,
                f"{STORE_HOST}/small:sbom",
                CopyOptions(referrers=False),
            )

    anyio.run(main)
    names = {e.get("annotations", {}).get(REF_NAME) for e in _index(store)}
    assert f"{STORE_HOST}/small:sbom" not in names
    sbom = [e for e in _index(store) if e["digest"] == str(signed.sbom.digest)]
    assert sbom and all(REF_NAME not in e.get("annotations", {}) for e in sbom)
    assert sbom[0]["artifactType"] == SPDX


# ---- gc ------------------------------------------------------------------------------------------


def test_gc_keeps_referrers_while_their_subject_is_kept_and_drops_them_with_it(
    images: BuiltImages, tmp_path: Path, store: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    ref = f"{STORE_HOST}/small:1"
    _into_store(signed, store, ref)
    other = fill_store(store, images, "shared-a")["shared-a"]
    referrer_blobs = {str(d.digest) for d in (signed.signature, signed.sbom, signed.sbom_signature)}
    before = set(stored_blobs(store))
    assert referrer_blobs <= before

    # Kept: nothing is unreachable yet (a referrer entry is no root, but its subject is).
    gc = xfer("gc", "--json", store=store)
    assert gc.code == 0, gc.err
    assert gc.json_lines()[-1]["blobs_removed"] == 0
    # A second name for the image keeps it, and so its referrers, after the first goes.
    transfer.api.copy_sync(
        f"store:{ref}", f"store:{STORE_HOST}/small:2", transfer.Settings(store=store)
    )
    assert xfer("rm", ref, store=store).code == 0
    assert xfer("gc", store=store).code == 0
    assert set(stored_blobs(store)) == before
    assert len(_index(store)) == 5  # small:2, two cosign tags, the SBOM, shared-a

    assert xfer("rm", f"{STORE_HOST}/small:2", store=store).code == 0
    gc = xfer("gc", "--json", store=store)
    assert gc.code == 0, gc.err
    left = set(stored_blobs(store))
    assert not referrer_blobs & left
    assert str(signed.image.digest) not in left
    # Every entry of the referrers went from index.json with them; the other image stays whole.
    assert [e["annotations"][REF_NAME] for e in _index(store)] == [other]
    assert xfer("verify", store=store).code == 0
    assert [e.reference for e in transfer.api.images_sync(transfer.Settings(store=store))] == [
        other
    ]


def test_verify_walks_referrers_and_names_a_missing_blob_of_one(
    images: BuiltImages, tmp_path: Path, store: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    ref = f"{STORE_HOST}/small:1"
    _into_store(signed, store, ref)
    assert xfer("verify", store=store).code == 0
    sbom_layer = json.loads(Layout(store).read_blob(signed.sbom))["layers"][0]["digest"]
    Layout(store).blob_path(Digest.parse(sbom_layer)).unlink()

    run = xfer("verify", "--json", store=store)
    assert run.code == 1
    assert f"blob {sbom_layer} is missing" in run.out + run.err
    report = run.json_lines()[-1]
    assert report["pull"] == [ref]  # the image whose referrer lacks it: pull it again


def test_a_referrer_that_cannot_be_read_stops_gc_until_it_is_removed_by_digest(
    images: BuiltImages, tmp_path: Path, store: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    ref = f"{STORE_HOST}/small:1"
    _into_store(signed, store, ref)
    Layout(store).blob_path(signed.sbom.digest).unlink()  # what the SBOM is about: unknown

    gc = xfer("gc", store=store)
    assert gc.code == 1 and str(signed.sbom.digest) in gc.err
    assert xfer("rm", str(signed.sbom.digest), store=store).code == 0
    assert xfer("gc", store=store).code == 0
    assert str(signed.sbom.digest) not in {e["digest"] for e in _index(store)}
    assert xfer("verify", store=store).code == 0


def test_a_cosign_tag_whose_subject_is_gone_is_no_root(
    images: BuiltImages, tmp_path: Path, store: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    ref = f"{STORE_HOST}/small:1"
    _into_store(signed, store, ref)
    assert xfer("rm", ref, store=store).code == 0
    assert xfer("gc", store=store).code == 0
    assert _index(store) == []
    assert stored_blobs(store) == {}


# ---- archives ------------------------------------------------------------------------------------


def _save_signed(signed: Signed, archive: Path, fmt: str | None, ref: str) -> None:
    async def main() -> None:
        source = LayoutSource(Layout(signed.layout), signed.name)
        destination = ArchiveDestination(archive, fmt)
        await copy_image(source, destination, signed.name, ref, CopyOptions())
        await _carry(source, destination, signed.image)
        await destination.commit()
        await destination.aclose()

    anyio.run(main)


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_a_saved_archive_lists_referrers_in_index_json_and_none_in_manifest_json(
    images: BuiltImages, tmp_path: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    archive = tmp_path / "signed.tar"
    ref = f"{STORE_HOST}/small:1"
    _save_signed(signed, archive, None, ref)

    members = _members(archive)
    entries = json.loads(members["index.json"])["manifests"]
    by_digest = {e["digest"]: e for e in entries}
    assert set(by_digest) == {
        str(d.digest) for d in (signed.image, signed.signature, signed.sbom, signed.sbom_signature)
    }
    sig_name = f"{STORE_HOST}/small:sha256-{signed.image.digest.encoded}.sig"
    assert by_digest[str(signed.signature.digest)]["annotations"][REF_NAME] == sig_name
    sbom = by_digest[str(signed.sbom.digest)]
    assert sbom["artifactType"] == SPDX and REF_NAME not in sbom["annotations"]
    # docker's manifest.json: the image alone, never a signature or an SBOM.
    docker = json.loads(members["manifest.json"])
    assert [d["RepoTags"] for d in docker] == [[f"{STORE_HOST}/small:1"]]
    assert (
        docker[0]["Config"] == f"blobs/sha256/{images.images['small'].config.digest.split(':')[1]}"
    )  # type: ignore[union-attr]

    async def read() -> tuple[set[Digest], set[Digest], list[str]]:
        async with open_archive_closing(archive) as opened:
            image = ArchiveImageSource(opened, ref)
            direct = _digests(await image.get_referrers(signed.image))
            below = _digests(await opened.get_referrers(signed.sbom))
            names = [n for i in await opened.images() for n in i.names]
            return direct, below, names

    direct, below, names = anyio.run(read)
    assert direct == {signed.signature.digest, signed.sbom.digest}
    assert below == {signed.sbom_signature.digest}
    assert names == [ref]  # the referrers are no images to load by themselves


class open_archive_closing:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def __aenter__(self) -> OciArchive:
        opened = await open_archive(self.path)
        assert isinstance(opened, OciArchive)
        self.opened = opened
        return opened

    async def __aexit__(self, *exc: object) -> None:
        await self.opened.aclose()


@pytest.mark.parametrize("fmt", [None, "oci"])
def test_load_reads_every_referrer_of_an_archive_into_the_store(
    images: BuiltImages, tmp_path: Path, store: Path, fmt: str | None
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    archive = tmp_path / "signed.tar"
    ref = f"{STORE_HOST}/small:1"
    _save_signed(signed, archive, fmt, ref)

    run = xfer("load", archive, store=store)
    assert run.code == 0, run.err
    source = LayoutSource(Layout(store), ref)
    assert _digests(anyio.run(source.get_referrers, signed.image)) == {
        signed.signature.digest,
        signed.sbom.digest,
    }
    assert _digests(anyio.run(source.get_referrers, signed.sbom)) == {signed.sbom_signature.digest}
    names = {e.get("annotations", {}).get(REF_NAME) for e in _index(store)}
    assert names == {
        ref,
        f"{STORE_HOST}/small:sha256-{signed.image.digest.encoded}.sig",
        f"{STORE_HOST}/small:sha256-{signed.sbom.digest.encoded}.sig",
        None,
    }
    assert [e.reference for e in transfer.api.images_sync(transfer.Settings(store=store))] == [ref]
    assert xfer("verify", store=store).code == 0
    # A second load changes nothing (a name set again moves to the end, as it always did).
    before = sorted(_index(store), key=json.dumps)
    assert xfer("load", archive, store=store).code == 0
    assert sorted(_index(store), key=json.dumps) == before


@pytest.mark.parametrize(
    ("flags", "kept"),
    [
        (["--no-referrers"], set()),
        (["--referrers-type", SIMPLE_SIGNING], {"signature"}),
        (["--referrers-type", SPDX], {"sbom"}),
        (
            ["--referrers-type", SPDX, "--referrers-type", SIMPLE_SIGNING],
            {"signature", "sbom", "sbom_signature"},
        ),
    ],
)
def test_load_leaves_referrers_as_no_referrers_and_referrers_type_say(
    images: BuiltImages, tmp_path: Path, store: Path, flags: list[str], kept: set[str]
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    archive = tmp_path / "signed.tar"
    ref = f"{STORE_HOST}/small:1"
    _save_signed(signed, archive, None, ref)

    run = xfer("load", *flags, archive, store=store)
    assert run.code == 0, run.err
    present = {str(e["digest"]) for e in _index(store)}
    expected = {str(getattr(signed, name).digest) for name in kept}
    assert present == {str(signed.image.digest)} | expected
    assert xfer("verify", store=store).code == 0


def test_docker_loads_only_images_decided_by_config_type_and_layers(
    images: BuiltImages, tmp_path: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    layout = Layout(signed.layout)
    image = layout.get_manifest(signed.image)
    docker = images.images["docker"]
    docker_image = Manifest.from_bytes(docker.raw)
    assert docker_loads(image) and docker_loads(docker_image)
    # An OCI image config, but a simple-signing payload for a layer: cosign's signature.
    assert not docker_loads(layout.get_manifest(signed.signature))
    # An empty config and an artifactType (and a subject): an SBOM.
    assert not docker_loads(layout.get_manifest(signed.sbom))
    multi = images.images["multi"]
    assert not docker_loads(Manifest.from_bytes(multi.raw))  # an index: its child is described


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    with engines() as (_, daemon):
        yield daemon


def test_docker_loads_a_saved_signed_image_and_only_the_image(
    dockerd: Dockerd, images: BuiltImages, tmp_path: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    archive = tmp_path / "signed.tar"
    ref = f"{STORE_HOST}/signed-small:1"
    _save_signed(signed, archive, None, ref)

    out = dockerd.docker("load", "-i", str(archive))
    assert [line for line in out.splitlines() if line.startswith("Loaded image")] == [
        f"Loaded image: {ref}"
    ]
    config = images.images["small"].config
    assert config is not None
    assert dockerd.inspect(ref)["Id"] == config.digest
    listed = dockerd.docker("images", "--format", "{{.Repository}}:{{.Tag}}")
    assert not [line for line in listed.splitlines() if ".sig" in line or "sha256-" in line]


# ---- other tools read the layout ---------------------------------------------------------------


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def test_an_oci_layout_xfer_wrote_with_referrers_is_read_by_skopeo_and_umoci(
    images: BuiltImages, tmp_path: Path
) -> None:
    signed = _signed_layout(images, tmp_path / "signed")
    out = tmp_path / "out"

    async def main() -> None:
        source = LayoutSource(Layout(signed.layout), signed.name)
        layout = Layout(out)
        destination = LayoutDestination(layout, "v1")
        with layout.in_use():
            await copy_image(source, destination, signed.name, "v1", CopyOptions())
            await _carry(source, destination, signed.image)

    anyio.run(main)
    entries = _index(out)
    assert {e.get("annotations", {}).get(REF_NAME) for e in entries} == {
        "v1",
        f"sha256-{signed.image.digest.encoded}.sig",
        f"sha256-{signed.sbom.digest.encoded}.sig",
        None,
    }
    _check_image_layout(out)

    copied = _run(
        "skopeo", "--insecure-policy", "copy", f"oci:{out}:v1", f"oci:{tmp_path / 'by-skopeo'}:v1"
    )
    assert copied.returncode == 0, copied.stderr
    inspected = _run("skopeo", "inspect", "--raw", f"oci:{out}:v1")
    assert inspected.returncode == 0, inspected.stderr
    assert hashlib.sha256(inspected.stdout.encode()).hexdigest() == signed.image.digest.encoded
    # skopeo reads a cosign tag as the image it is, by its name in the layout.
    sig = _run("skopeo", "inspect", "--raw", f"oci:{out}:sha256-{signed.image.digest.encoded}.sig")
    assert sig.returncode == 0, sig.stderr

    listed = _run("umoci", "ls", "--layout", out)
    assert listed.returncode == 0, listed.stderr
    assert "v1" in listed.stdout.split()
    # umoci's gc keeps what index.json reaches: an unnamed referrer entry is reached.
    assert _run("umoci", "gc", "--layout", out).returncode == 0
    _check_image_layout(out)
    source = LayoutSource(Layout(out), "v1")
    assert _digests(anyio.run(source.get_referrers, signed.image)) == {
        signed.signature.digest,
        signed.sbom.digest,
    }


def _check_image_layout(root: Path) -> None:
    """The OCI image-layout spec's rules that readers rely on: ``oci-layout`` names version
    1.0.0, index.json is an image index, every descriptor's blob is there with its size and
    digest, artifactType and annotations have the spec's types."""
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert index.get("mediaType", "application/vnd.oci.image.index.v1+json") == (
        "application/vnd.oci.image.index.v1+json"
    )
    pending = list(index["manifests"])
    seen = set()
    while pending:
        desc = pending.pop()
        assert isinstance(desc["mediaType"], str) and isinstance(desc["size"], int)
        assert isinstance(desc.get("artifactType", ""), str)
        assert all(isinstance(v, str) for v in desc.get("annotations", {}).values())
        algorithm, encoded = desc["digest"].split(":")
        data = (root / "blobs" / algorithm / encoded).read_bytes()
        assert len(data) == desc["size"] and hashlib.sha256(data).hexdigest() == encoded
        if desc["digest"] in seen or (
            "manifest" not in desc["mediaType"] and "index" not in desc["mediaType"]
        ):
            continue
        seen.add(desc["digest"])
        doc = json.loads(data)
        pending += doc.get("manifests", [])
        pending += [doc["config"], *doc.get("layers", [])] if "config" in doc else []
        if "subject" in doc:  # the subject is in the layout too
            assert (root / "blobs" / "sha256" / doc["subject"]["digest"].split(":")[1]).is_file()
