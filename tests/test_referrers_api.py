"""Registries with the OCI 1.1 referrers API (fixtures/referrersapi.py over the real registry):
xfer reads referrers through the API, lets such a target index them itself (no fallback tag
written), and stays bounded when the API's answers are hostile."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fixtures.images import OCI_INDEX, BuiltImages, seed
from fixtures.pushimage import RegistryPusher
from fixtures.referrersapi import ReferrersAPI
from fixtures.registry import Registry
from fixtures.signing import (
    SIMPLE_SIGNING,
    SPDX,
    SignedSet,
    check_signed,
    fallback_index,
    get_manifest,
    new_key,
    public_pem,
    push_artifact,
    sign_and_attach,
)
from tests.helpers import xfer


@pytest.fixture
def api_target(empty_registry: Registry) -> Iterator[ReferrersAPI]:
    with ReferrersAPI(empty_registry.url) as api:
        yield api


def _tags(host: str, repo: str) -> set[str]:
    return set(xfer("tags", f"{host}/{repo}").out.split())


def test_a_target_with_the_referrers_api_indexes_them_and_gets_no_fallback_tag(
    signed: tuple[Registry, SignedSet], api_target: ReferrersAPI, images: BuiltImages
) -> None:
    source, keys = signed
    small = images.images["small"]
    sbom = keys.small.sbom
    assert sbom is not None and keys.small.sbom_signature is not None
    run = xfer("copy", f"{source.host}/test/small:1", f"{api_target.host}/a/small:1")
    assert run.code == 0, run.err
    # The registry listed the SBOM by its subject (the PUT got OCI-Subject): no fallback tag.
    assert [e["digest"] for e in api_target.recorded[small.digest]] == [sbom.digest]
    assert f"sha256-{small.digest[7:]}" not in _tags(api_target.host, "a/small")
    assert fallback_index(api_target.url, "a/small", small.digest) == []
    check_signed(api_target.url, "a/small", small.digest, keys.public_key)
    check_signed(api_target.url, "a/small", sbom.digest, keys.public_key)
    # xfer reads them back through the API.
    tree = json.loads(xfer("referrers", "--json", f"{api_target.host}/a/small:1").out)
    by_type = {node["artifactType"]: node for node in tree["referrers"]}
    assert by_type[SPDX]["digest"] == sbom.digest
    assert [n["digest"] for n in by_type[SPDX]["referrers"]] == [
        keys.small.sbom_signature.manifest.digest
    ]
    assert by_type[SIMPLE_SIGNING]["digest"] == keys.small.signature.manifest.digest
    assert any("/referrers/" in path for path in api_target.referrer_gets)


def test_a_source_with_the_referrers_api_is_read_through_it(
    api_target: ReferrersAPI, images: BuiltImages
) -> None:
    small = images.images["small"]
    seed(images.layout, api_target.host, [small])
    key = new_key()
    attached = sign_and_attach(api_target.url, "test/small", small.digest, key, fallback=False)
    assert attached.sbom is not None
    with Registry() as plain:
        run = xfer("copy", f"{api_target.host}/test/small:1", f"{plain.host}/c/small:1")
        assert run.code == 0, run.err
        # Found through the API (there is no fallback tag at the source), recorded at the
        # target, which has no API, through the fallback tag.
        assert f"sha256-{small.digest[7:]}" not in _tags(api_target.host, "test/small")
        assert [e["digest"] for e in fallback_index(plain.url, "c/small", small.digest)] == [
            attached.sbom.digest
        ]
        check_signed(plain.url, "c/small", attached.sbom.digest, public_pem(key))
    assert any(small.digest in path for path in api_target.referrer_gets)


def test_pages_of_the_referrers_api_are_followed_and_the_type_filter_is_sent(
    empty_registry: Registry, images: BuiltImages
) -> None:
    small = images.images["small"]
    subject = {"mediaType": small.media_type, "digest": small.digest, "size": small.size}
    with ReferrersAPI(empty_registry.url, page_size=1) as api:
        seed(images.layout, api.host, [small])
        with RegistryPusher(api.url) as pusher:
            first = push_artifact(pusher, "test/small", subject, SPDX, b'{"spdx":1}')
            second = push_artifact(pusher, "test/small", subject, "x/other", b'{"other":2}')
        with Registry() as plain:
            run = xfer("copy", f"{api.host}/test/small:1", f"{plain.host}/p/small:1")
            assert run.code == 0, run.err
            listed = {e["digest"] for e in fallback_index(plain.url, "p/small", small.digest)}
            assert listed == {first.digest, second.digest}
            api.referrer_gets.clear()
            run = xfer(
                "copy", "--referrers-type", SPDX, f"{api.host}/test/small:1", f"{plain.host}/q/s:1"
            )
            assert run.code == 0, run.err
            listed = {e["digest"] for e in fallback_index(plain.url, "q/s", small.digest)}
            assert listed == {first.digest}
            assert any("artifactType=application%2Fspdx%2Bjson" in p for p in api.referrer_gets)


@pytest.mark.parametrize(
    ("hostile", "said"),
    [
        ("huge", "more than"),  # one answer past the manifest cap
        ("endless", "more than 100 pages"),
        ("loop", "repeats a page"),
    ],
)
def test_a_hostile_referrers_api_is_bounded_with_one_line(
    empty_registry: Registry, images: BuiltImages, hostile: str, said: str
) -> None:
    small = images.images["small"]
    with ReferrersAPI(empty_registry.url, hostile=hostile) as api:
        seed(images.layout, api.host, [small])
        with Registry() as plain:
            run = xfer("copy", f"{api.host}/test/small:1", f"{plain.host}/h/small:1", timeout=300)
            assert run.code == 0, run.err
            found = get_manifest(plain.url, "h/small", "1")
            assert found is not None and found[0] == small.raw  # the image itself copied
            warnings = [line for line in run.err.splitlines() if "referrers of" in line]
            assert len(warnings) == 1 and said in warnings[0], run.err
            assert len(api.referrer_gets) <= 101


def test_a_referrers_listing_that_names_its_subject_is_no_cycle(
    empty_registry: Registry, images: BuiltImages
) -> None:
    small = images.images["small"]
    subject = {"mediaType": small.media_type, "digest": small.digest, "size": small.size}
    with ReferrersAPI(empty_registry.url, hostile="cycle") as api:
        seed(images.layout, api.host, [small])
        with RegistryPusher(api.url) as pusher:
            sbom = push_artifact(pusher, "test/small", subject, SPDX, b'{"spdx":1}')
        with Registry() as plain:
            run = xfer("copy", f"{api.host}/test/small:1", f"{plain.host}/y/small:1", timeout=60)
            assert run.code == 0, run.err
            listed = [e["digest"] for e in fallback_index(plain.url, "y/small", small.digest)]
            assert listed == [sbom.digest]
            assert "warning" not in run.err


def test_a_chain_of_referrers_deeper_than_the_bound_stops_there_with_one_line(
    empty_registry: Registry, images: BuiltImages
) -> None:
    small = images.images["small"]
    with ReferrersAPI(empty_registry.url) as api:
        seed(images.layout, api.host, [small])
        subject = {"mediaType": small.media_type, "digest": small.digest, "size": small.size}
        chain = []
        with RegistryPusher(api.url) as pusher:
            for level in range(6):  # each refers to the one before: six levels below the image
                art = push_artifact(pusher, "test/small", subject, f"x/level{level}", b"{}")
                chain.append(art)
                subject = {"mediaType": art.media_type, "digest": art.digest, "size": art.size}
        with Registry() as plain:
            run = xfer("copy", f"{api.host}/test/small:1", f"{plain.host}/d/small:1")
            assert run.code == 0, run.err
            carried = [get_manifest(plain.url, "d/small", a.digest) is not None for a in chain]
            assert carried == [True] * 4 + [False] * 2
            warnings = [line for line in run.err.splitlines() if "warning" in line]
            assert len(warnings) == 1 and "more than 4 levels deep" in warnings[0], run.err


def test_a_fallback_index_replaced_by_another_writer_meanwhile_is_merged_again(
    signed: tuple[Registry, SignedSet], empty_registry: Registry, images: BuiltImages
) -> None:
    """Two copies updating one fallback tag at once: the other's PUT lands right after ours,
    from the index it read before ours was there. xfer reads the tag back, misses its entry,
    and merges again: both referrers are listed in the end."""
    source, keys = signed
    small = images.images["small"]
    seed(images.layout, empty_registry.host, [small], dest="race/small:1")
    subject = {"mediaType": small.media_type, "digest": small.digest, "size": small.size}
    with RegistryPusher(empty_registry.url) as pusher:
        other = push_artifact(pusher, "race/small", subject, "x/other-tool", b'{"other":1}')
    fallback = f"sha256-{small.digest[7:]}"
    raced: list[str] = []

    def competitor(path: str, body: bytes) -> None:
        if path.endswith(f"/manifests/{fallback}") and not raced:
            raced.append(path)  # once: its index, without our entry, over ours
            doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [other.descriptor()]}
            with RegistryPusher(empty_registry.url) as pusher:
                pusher.put_manifest("race/small", fallback, json.dumps(doc).encode(), OCI_INDEX)

    with ReferrersAPI(empty_registry.url, api=False, after_put=competitor) as proxy:
        run = xfer("copy", f"{source.host}/test/small:1", f"{proxy.host}/race/small:1")
        assert run.code == 0, run.err
    assert raced
    listed = {e["digest"] for e in fallback_index(empty_registry.url, "race/small", small.digest)}
    assert keys.small.sbom is not None
    assert listed == {other.digest, keys.small.sbom.digest}
