"""Signatures, SBOMs and attestations travel with every image between registries (issue 13).

The source registry holds ``test/small`` signed the way cosign signs with a key, with an SPDX
SBOM recorded through the fallback tag and a signature of the SBOM; and ``test/multi`` with its
index signed and its linux/amd64 child signed with an SBOM (fixtures/signing.py). Every check of
a signature is the test's own: ECDSA P-256 over the payload, the payload naming the digest.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import anyio
import pytest

from fixtures.images import OCI_INDEX, BuiltImages, seed
from fixtures.pushimage import RegistryPusher
from fixtures.registry import Registry
from fixtures.signing import (
    SIMPLE_SIGNING,
    SPDX,
    SignedSet,
    check_signed,
    fallback_index,
    get_manifest,
    new_key,
    push_artifact,
)
from tests.helpers import assert_carried, xfer
from transfer.api import Settings
from transfer.copy import CopyOptions, CopyResult, copy_image
from transfer.endpoints.registry import RegistryDestination, RegistrySource
from transfer.progress import Event, Message
from transfer.reference import parse
from transfer.referrers import ReferrerBounds
from transfer.session import Session


def test_copy_carries_signature_sbom_and_the_sboms_signature(
    signed: tuple[Registry, SignedSet], empty_registry: Registry, images: BuiltImages
) -> None:
    source, keys = signed
    run = xfer("copy", f"{source.host}/test/small:1", f"{empty_registry.host}/copied/small:1")
    assert run.code == 0, run.err
    assert_carried(empty_registry.url, "copied/small", keys.small, keys.public_key)
    assert "3 referrers carried" in run.err


def test_copy_of_a_multi_arch_image_carries_the_index_and_child_referrers(
    signed: tuple[Registry, SignedSet], empty_registry: Registry
) -> None:
    source, keys = signed
    run = xfer("copy", f"{source.host}/test/multi:1", f"{empty_registry.host}/m/multi:1")
    assert run.code == 0, run.err
    assert_carried(empty_registry.url, "m/multi", keys.multi_index, keys.public_key)
    assert_carried(empty_registry.url, "m/multi", keys.multi_child, keys.public_key)


def test_no_referrers_leaves_them_behind(
    signed: tuple[Registry, SignedSet], empty_registry: Registry, images: BuiltImages
) -> None:
    source, _ = signed
    run = xfer(
        "copy", "--no-referrers", f"{source.host}/test/small:1", f"{empty_registry.host}/n/s:1"
    )
    assert run.code == 0, run.err
    tags = xfer("tags", f"{empty_registry.host}/n/s").out.split()
    assert tags == ["1"]


def test_referrers_type_keeps_only_that_artifact_type(
    signed: tuple[Registry, SignedSet], empty_registry: Registry, images: BuiltImages
) -> None:
    source, keys = signed
    small = images.images["small"]
    run = xfer(
        "copy",
        "--referrers-type",
        SPDX,
        f"{source.host}/test/small:1",
        f"{empty_registry.host}/t/s:1",
    )
    assert run.code == 0, run.err
    assert keys.small.sbom is not None
    assert fallback_index(empty_registry.url, "t/s", small.digest) == [keys.small.sbom.descriptor()]
    tags = set(xfer("tags", f"{empty_registry.host}/t/s").out.split())
    assert tags == {"1", f"sha256-{small.digest[7:]}"}  # no signature of either

    run = xfer(
        "copy",
        "--referrers-type",
        SIMPLE_SIGNING,
        f"{source.host}/test/small:1",
        f"{empty_registry.host}/t/sig:1",
    )
    assert run.code == 0, run.err
    check_signed(empty_registry.url, "t/sig", small.digest, keys.public_key)
    tags = set(xfer("tags", f"{empty_registry.host}/t/sig").out.split())
    assert tags == {"1", f"sha256-{small.digest[7:]}.sig"}


def test_another_tools_referrer_in_the_targets_fallback_index_is_kept(
    signed: tuple[Registry, SignedSet], empty_registry: Registry, images: BuiltImages
) -> None:
    source, keys = signed
    small = images.images["small"]
    seed(images.layout, empty_registry.host, [small], dest="kept/small:1")
    subject = {"mediaType": small.media_type, "digest": small.digest, "size": small.size}
    with RegistryPusher(empty_registry.url) as pusher:
        other = push_artifact(
            pusher, "kept/small", subject, "application/vnd.example.scan+json", b'{"ok":true}'
        )
    from fixtures.signing import add_to_fallback_index

    add_to_fallback_index(empty_registry.url, "kept/small", small.digest, other)

    run = xfer("copy", f"{source.host}/test/small:1", f"{empty_registry.host}/kept/small:1")
    assert run.code == 0, run.err
    entries = fallback_index(empty_registry.url, "kept/small", small.digest)
    assert other.descriptor() in entries
    assert_carried(empty_registry.url, "kept/small", keys.small, keys.public_key)
    assert len(entries) == 2

    # A second copy writes nothing for the referrers (the copy puts its tag again, as ever).
    mark = empty_registry.mark()
    again = xfer("copy", f"{source.host}/test/small:1", f"{empty_registry.host}/kept/small:1")
    assert again.code == 0, again.err
    writes = [r for r in empty_registry.requests(mark) if r.method in ("PUT", "POST", "PATCH")]
    assert [r.path for r in writes] == ["/v2/kept/small/manifests/1"]


def test_referrers_command_shows_the_tree(
    signed: tuple[Registry, SignedSet], images: BuiltImages
) -> None:
    source, keys = signed
    small = images.images["small"]
    assert keys.small.sbom is not None and keys.small.sbom_signature is not None
    run = xfer("referrers", "--json", f"{source.host}/test/small:1")
    assert run.code == 0, run.err
    tree = json.loads(run.out)
    assert tree["digest"] == small.digest
    by_digest = {node["digest"]: node for node in tree["referrers"]}
    sig = by_digest[keys.small.signature.manifest.digest]
    assert sig["artifactType"] == SIMPLE_SIGNING and sig["tag"] == f"sha256-{small.digest[7:]}.sig"
    sbom = by_digest[keys.small.sbom.digest]
    assert sbom["artifactType"] == SPDX and sbom["size"] == keys.small.sbom.size
    assert sbom["annotations"] == keys.small.sbom.annotations
    assert [n["digest"] for n in sbom["referrers"]] == [keys.small.sbom_signature.manifest.digest]

    text = xfer("referrers", f"{source.host}/test/small:1")
    assert text.code == 0, text.err
    assert SPDX in text.out and keys.small.sbom.digest in text.out
    assert keys.small.sbom_signature.manifest.digest in text.out
    assert "org.opencontainers.image.created=" in text.out

    multi = xfer("referrers", "--json", f"{source.host}/test/multi:1")
    tree = json.loads(multi.out)
    assert [n["digest"] for n in tree["referrers"]] == [keys.multi_index.signature.manifest.digest]
    children = {c["digest"]: c for c in tree["manifests"]}
    child = children[images.images["multi"].platforms["linux/amd64"]]
    assert {n["artifactType"] for n in child["referrers"]} == {SIMPLE_SIGNING, SPDX}


def test_referrers_command_escapes_what_the_registry_says(
    empty_registry: Registry, images: BuiltImages
) -> None:
    small = images.images["small"]
    seed(images.layout, empty_registry.host, [small])
    subject = {"mediaType": small.media_type, "digest": small.digest, "size": small.size}
    with RegistryPusher(empty_registry.url) as pusher:
        art = push_artifact(
            pusher,
            "test/small",
            subject,
            "application/x\u001b[31mred",
            b"{}",
            {"note": "line\nbreak\u001b]0;title\u0007"},
        )
    from fixtures.signing import add_to_fallback_index

    add_to_fallback_index(empty_registry.url, "test/small", small.digest, art)
    run = xfer("referrers", f"{empty_registry.host}/test/small:1")
    assert run.code == 0, run.err
    assert "\u001b" not in run.out and "\u0007" not in run.out
    assert art.digest in run.out
    assert len([line for line in run.out.splitlines() if "note=" in line]) == 1


def test_mirror_carries_referrers_and_does_not_mirror_their_tags_as_images(
    signed: tuple[Registry, SignedSet],
    empty_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    source, keys = signed
    config = tmp_path / "sync.yaml"
    config.write_text(f"{source.host}:\n  images:\n    test/small: []\n    test/multi: []\n")
    run = xfer("mirror", "--json", config, f"{empty_registry.host}/mirrored")
    assert run.code == 0, run.err
    summary = run.json_lines()[-1]
    assert summary["copied"] == 2 and summary["failed"] == [], summary
    assert_carried(empty_registry.url, "mirrored/test/small", keys.small, keys.public_key)
    assert_carried(empty_registry.url, "mirrored/test/multi", keys.multi_index, keys.public_key)
    assert_carried(empty_registry.url, "mirrored/test/multi", keys.multi_child, keys.public_key)

    # A rerun with nothing new: one referrers probe per source host, no other request for
    # what is already carried than reading each referrer's listing and checking its record.
    source_mark, target_mark = source.mark(), empty_registry.mark()
    again = xfer("mirror", "--json", config, f"{empty_registry.host}/mirrored")
    assert again.code == 0, again.err
    assert again.json_lines()[-1]["unchanged"] == 2
    target_writes = [
        r for r in empty_registry.requests(target_mark) if r.method in ("PUT", "POST", "PATCH")
    ]
    assert target_writes == []
    # What finding and checking them cost, exactly: per side one referrers API probe for the
    # host (distribution has none), and one request per referrer (a cosign tag's manifest; its
    # HEAD at the target) and per subject with a fallback index (read on each side); the
    # index's manifest read once, from the target, to find its children. The source's tag
    # lists are the plan's own. small: 3 referrers, 1 fallback index; multi: 3 and 1.
    asked = Counter((r.method, r.kind) for r in source.requests(source_mark) if r.kind != "base")
    assert asked == {
        ("HEAD", "manifest"): 2,
        ("GET", "tags"): 2,
        ("GET", "referrers"): 1,
        ("GET", "manifest"): 3 + 4,
    }
    asked = Counter(
        (r.method, r.kind) for r in empty_registry.requests(target_mark) if r.kind != "base"
    )
    assert asked == {
        ("HEAD", "manifest"): 2 + 2 + 3,
        ("GET", "referrers"): 1,
        ("GET", "manifest"): 1 + 1 + 1,
    }


def test_mirror_rerun_carries_a_signature_added_since(
    signed: tuple[Registry, SignedSet],
    empty_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
) -> None:
    source, _ = signed
    small = images.images["small"]
    # A repository of our own at the source: signing it later must not touch the shared one.
    seed(images.layout, source.host, [small], dest="late/small:1")
    config = tmp_path / "sync.yaml"
    config.write_text(f"{source.host}:\n  images:\n    late/small: []\n")
    assert xfer("mirror", config, f"{empty_registry.host}/m").code == 0
    from fixtures.signing import public_pem, sign_and_attach

    key = new_key()
    attached = sign_and_attach(source.url, "late/small", small.digest, key)
    again = xfer("mirror", "--json", config, f"{empty_registry.host}/m")
    assert again.code == 0, again.err
    # Carried with their image, not mirrored as images of their own (sha256-<hex>[.sig]).
    assert again.json_lines()[-1]["unchanged"] == 1
    assert again.json_lines()[-1]["copied"] == 0
    assert_carried(empty_registry.url, "m/late/small", attached, public_pem(key))


def test_fallback_index_entries_are_an_oci_index(
    signed: tuple[Registry, SignedSet], empty_registry: Registry, images: BuiltImages
) -> None:
    source, _ = signed
    small = images.images["small"]
    assert xfer("copy", f"{source.host}/test/small:1", f"{empty_registry.host}/x/s:1").code == 0
    found = get_manifest(empty_registry.url, "x/s", f"sha256-{small.digest[7:]}")
    assert found is not None and found[1] == OCI_INDEX
    doc = json.loads(found[0])
    assert doc["mediaType"] == OCI_INDEX and doc["schemaVersion"] == 2
    assert all("artifactType" in entry for entry in doc["manifests"])


def test_an_artifact_that_is_not_an_image_copies_like_one(
    signed: tuple[Registry, SignedSet], empty_registry: Registry
) -> None:
    source, keys = signed
    sbom = keys.small.sbom
    assert sbom is not None
    run = xfer(
        "copy", f"{source.host}/test/small@{sbom.digest}", f"{empty_registry.host}/art/sbom:1"
    )
    assert run.code == 0, run.err
    found = get_manifest(empty_registry.url, "art/sbom", "1")
    assert found is not None and found[0] == sbom.raw  # the digest kept: the same bytes


@pytest.mark.parametrize(
    "command",
    [
        ["pull", "r/x:1"],
        ["push", "r/x:1"],
        ["copy", "r/x:1", "r/y:1"],
        ["mirror", "sync.yaml", "r"],
        ["save", "r/x:1", "-o", "x.tar"],
        ["load", "x.tar"],
    ],
)
def test_every_moving_command_takes_the_referrer_options(command: list[str]) -> None:
    from transfer.cli import _settings, build_parser

    parser = build_parser()
    args = parser.parse_args(
        [*command, "--referrers-type", SPDX, "--referrers-type", SIMPLE_SIGNING]
    )
    assert _settings(args).referrer_types == (SPDX, SIMPLE_SIGNING)
    assert _settings(args).referrers
    args = parser.parse_args([*command, "--no-referrers"])
    assert not _settings(args).referrers
    refused = xfer(*command, "--no-referrers", "--referrers-type", SPDX)
    assert refused.code == 2 and "not allowed with" in refused.err


def test_save_load_push_carries_them_into_a_third_registry(
    signed: tuple[Registry, SignedSet],
    empty_registry: Registry,
    images: BuiltImages,
    tmp_path: Path,
    store: Path,
) -> None:
    """The air-gap chain: a registry → an archive → the store on the far side → its registry;
    there the signature verifies against the image digest and the SBOM and its signature are
    listed and intact."""
    source, keys = signed
    archive = tmp_path / "small.tar"
    ref = f"{source.host}/test/small:1"
    saved = xfer("save", f"docker://{ref}", "-o", archive, store=store)
    assert saved.code == 0, saved.err
    loaded = xfer("load", archive, store=store)
    assert loaded.code == 0, loaded.err
    pushed = xfer("push", ref, f"{empty_registry.host}/far/small:1", store=store)
    assert pushed.code == 0, pushed.err
    assert_carried(empty_registry.url, "far/small", keys.small, keys.public_key)
    tree = json.loads(xfer("referrers", "--json", f"{empty_registry.host}/far/small:1").out)
    assert len(tree["referrers"]) == 2


def test_more_referrers_than_the_bound_stop_there_with_one_line(
    signed: tuple[Registry, SignedSet], empty_registry: Registry
) -> None:
    source, _ = signed
    events: list[Event] = []

    async def main() -> CopyResult:
        async with Session(Settings()) as session:
            src, dst = parse(f"{source.host}/test/small:1"), parse(f"{empty_registry.host}/b/s:1")
            return await copy_image(
                RegistrySource(session.client(src), src),
                RegistryDestination(session.client(dst), dst),
                "1",
                "1",
                CopyOptions(referrer_bounds=ReferrerBounds(count=2)),
                events.append,
            )

    result = anyio.run(main)
    assert len(result.referrers) == 2  # the signature and the SBOM; not the SBOM's signature
    said = [e.text for e in events if isinstance(e, Message) and "warning" in e.text]
    assert said == [
        f"warning: {source.host}/test/small:1: more than 2 referrers: the rest not carried"
    ]


def test_the_store_and_an_archive_list_what_was_carried_into_them(
    signed: tuple[Registry, SignedSet], tmp_path: Path, store: Path
) -> None:
    source, keys = signed
    ref = f"{source.host}/test/small:1"
    archive = tmp_path / "small.tar"
    assert xfer("save", f"docker://{ref}", "-o", archive, store=store).code == 0
    assert xfer("load", archive, store=store).code == 0
    assert keys.small.sbom is not None
    for where in (f"store:{ref}", f"oci-archive:{archive}:{ref}"):
        run = xfer("referrers", "--json", where, store=store)
        assert run.code == 0, run.err
        tree = json.loads(run.out)
        listed = {node["digest"]: node for node in tree["referrers"]}
        assert set(listed) == {keys.small.signature.manifest.digest, keys.small.sbom.digest}
        assert [n["digest"] for n in listed[keys.small.sbom.digest]["referrers"]] == [
            keys.small.sbom_signature.manifest.digest  # type: ignore[union-attr]
        ]
