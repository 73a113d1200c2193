"""Referrers from hostile or foreign places (issue 13): a copy carries what is really about the
image, within bounds, never replaces what a target already records, and never fails an image
over a referrer it could not record.

Images here are built as small OCI layouts by hand (no test image needed) and pushed to a real
registry; fixtures/referrersapi.py and fixtures/leakbait.py stand in for what no real registry
does on demand (a referrers API that lists what it is told to, a Link to another host).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx

from fixtures.registry import Registry
from tests.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    named_entry,
    put_artifact,
    put_image,
    put_json,
    write_layout,
    xfer,
)

# ---- a hand-built layout into a registry, and back ----------------------------------------------


def _push(root: Path, name: str, target: str) -> None:
    run = xfer("copy", "--no-referrers", f"oci:{root}:{name}", target)
    assert run.code == 0, run.err


def _tag_digest(registry: Registry, repository: str, tag: str) -> str | None:
    accept = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
    there = httpx.head(f"{registry.url}/v2/{repository}/manifests/{tag}", headers=accept)
    return there.headers.get("docker-content-digest") if there.status_code == 200 else None


# ---- cosign's tag at the target -----------------------------------------------------------------


def test_a_copy_keeps_the_signatures_the_target_already_has_under_the_cosign_tag(
    tmp_path: Path, empty_registry: Registry
) -> None:
    """cosign keeps every signature of X in one manifest under ``sha256-<X>.sig``. A target
    where the site signed X with its own key has its own ``.sig``: a copy of X with the
    vendor's signature must leave it (as ``cosign copy`` does without ``-f``), saying so in one
    line that names the tag, and still copy the image."""
    root = tmp_path / "layout"
    x = put_image(root, "x")
    vendor_sig = put_image(root, "signature by the vendor")
    tag = x["digest"].replace(":", "-") + ".sig"
    write_layout(root, [named_entry(x, "x"), named_entry(vendor_sig, tag)])
    site = tmp_path / "site"
    site_sig = put_image(site, "signature by the site")
    write_layout(site, [named_entry(site_sig, "sig")])
    _push(site, "sig", f"{empty_registry.host}/app:{tag}")

    run = xfer("copy", f"oci:{root}:x", f"{empty_registry.host}/app:1")
    assert run.code == 0, run.err
    assert _tag_digest(empty_registry, "app", tag) == site_sig["digest"]
    assert _tag_digest(empty_registry, "app", "1") == x["digest"]
    warned = [line for line in run.err.splitlines() if "warning" in line and tag in line]
    assert len(warned) == 1, run.err


# ---- which tags are referrers' ------------------------------------------------------------------


def test_mirror_keeps_ordinary_tags_that_only_look_like_digest_tags(
    tmp_path: Path, empty_registry: Registry
) -> None:
    """``sha-<40 hex>`` (a commit tag), ``main-<40 hex>``, ``build-<32 hex>`` are ordinary image
    tags: a mirror of every tag copies them. Only ``sha256-<64 hex>`` / ``sha512-<128 hex>``
    (and cosign's suffixes of them) travel with their subject instead."""
    root = tmp_path / "layout"
    a = put_image(root, "a")
    commit = "0123456789abcdef0123456789abcdef01234567"
    tags = ["1", f"sha-{commit}", f"main-{commit}", f"build-{commit[:32]}"]
    write_layout(root, [named_entry(a, "a")])
    for tag in tags:
        _push(root, "a", f"{empty_registry.host}/app:{tag}")
    config = tmp_path / "sync.yaml"
    config.write_text(f"{empty_registry.host}:\n  images:\n    app: []\n")
    with Registry() as second:
        run = xfer("mirror", config, f"{second.host}/m")
        assert run.code == 0, run.err
        there = set(xfer("tags", f"{second.host}/m/app").out.split())
    assert there == set(tags), f"mirrored {sorted(there)}, the source has {sorted(tags)}"


# ---- a referrer is what its own subject says ----------------------------------------------------


def test_a_referrer_listed_under_a_subject_it_is_not_about_is_not_carried_as_its_referrer(
    tmp_path: Path, empty_registry: Registry, store: Path
) -> None:
    """A referrers API that lists, under image X, a manifest Z whose own ``subject`` is not X
    (an unrelated image with none) does not get Z carried as X's referrer: it would be a root
    nothing names, that ``xfer rm X`` + ``xfer gc`` never remove."""
    from fixtures.referrersapi import ReferrersAPI

    root = tmp_path / "layout"
    x = put_image(root, "x")
    z = put_image(root, "z")
    write_layout(root, [named_entry(x, "x"), named_entry(z, "z")])
    _push(root, "x", f"{empty_registry.host}/app:1")
    _push(root, "z", f"{empty_registry.host}/app:other")
    with ReferrersAPI(empty_registry.url) as api:
        api.recorded[x["digest"]] = [{**z, "artifactType": "application/spdx+json"}]
        run = xfer("pull", f"{api.host}/app:1", store=store)
        assert run.code == 0, run.err
        assert z["digest"] in run.err and "subject" in run.err, run.err
        assert xfer("rm", f"{api.host}/app:1", store=store).code == 0
    assert xfer("gc", store=store).code == 0
    index = json.loads((store / "index.json").read_text())
    assert z["digest"] not in {e["digest"] for e in index["manifests"]}


def test_a_fallback_index_at_the_source_cannot_carry_another_images_referrer(
    tmp_path: Path, empty_registry: Registry
) -> None:
    """The fallback tag ``sha256-<X>`` of a registry without the referrers API lists an SBOM
    whose own subject is Y: a copy of X leaves it out (it is not written to the target, nor
    recorded under either image there), and carries X's own SBOM listed beside it."""
    root = tmp_path / "layout"
    x, y = put_image(root, "x"), put_image(root, "y")
    about_y, about_x = put_artifact(root, "about-y", y), put_artifact(root, "about-x", x)
    lying = put_json(
        root,
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [about_y, about_x]},
        OCI_INDEX,
    )
    tag = x["digest"].replace(":", "-")
    named = {"x": x, "lying": lying, "about-y": about_y, "about-x": about_x}
    write_layout(root, [named_entry(desc, name) for name, desc in named.items()])
    _push(root, "x", f"{empty_registry.host}/src:1")
    for name in ("about-y", "about-x"):
        _push(root, name, f"{empty_registry.host}/src:{name}")
    _push(root, "lying", f"{empty_registry.host}/src:{tag}")

    run = xfer("copy", f"{empty_registry.host}/src:1", f"{empty_registry.host}/dst:1")
    assert run.code == 0, run.err
    raw = httpx.get(
        f"{empty_registry.url}/v2/dst/manifests/{tag}", headers={"Accept": OCI_INDEX}
    ).json()
    listed = {m["digest"] for m in raw["manifests"]}
    assert listed == {about_x["digest"]}, listed
    assert _tag_digest(empty_registry, "dst", about_x["digest"]) == about_x["digest"]
    assert _tag_digest(empty_registry, "dst", about_y["digest"]) is None, "carried"
    assert _tag_digest(empty_registry, "dst", y["digest"].replace(":", "-")) is None


# ---- bounded work -------------------------------------------------------------------------------


def test_a_listing_of_referrers_that_are_not_there_is_bounded_like_one_of_referrers_that_are(
    tmp_path: Path, empty_registry: Registry, store: Path
) -> None:
    """A referrers API answers one page of 1300 made-up digests (about 200 KB). Each costs a
    manifest GET (404) before it is found dangling: every referrer tried counts towards
    ``ReferrerBounds.count`` (1000), so one small answer cannot make a copy send thousands of
    requests; the image still pulls."""
    from fixtures.referrersapi import ReferrersAPI

    root = tmp_path / "layout"
    a = put_image(root, "a")
    write_layout(root, [named_entry(a, "a")])
    _push(root, "a", f"{empty_registry.host}/app:1")
    fake = [
        {
            "mediaType": OCI_MANIFEST,
            "digest": "sha256:" + hashlib.sha256(b"fake %d" % i).hexdigest(),
            "size": 300,
            "artifactType": "application/spdx+json",
        }
        for i in range(1300)
    ]
    with ReferrersAPI(empty_registry.url) as api:
        api.recorded[a["digest"]] = fake
        mark = empty_registry.mark()
        run = xfer("pull", f"{api.host}/app:1", store=store, timeout=600)
        assert run.code == 0, run.err
    gets = [r for r in empty_registry.requests(mark) if r.kind == "manifest"]
    assert len(gets) <= 1100, f"{len(gets)} manifest requests for one image"


# ---- what a target records, or a listing leads to, never fails the image ------------------------


def test_a_foreign_fallback_tag_at_the_target_does_not_fail_the_copy(
    tmp_path: Path, empty_registry: Registry
) -> None:
    """The target's fallback tag ``sha256-<X>`` names something that is not an OCI index
    (another tool's, or a hostile one): the copy of X succeeds, the image and its SBOM are
    written by digest, the tag is left as it is, with a warning naming it."""
    root = tmp_path / "layout"
    x = put_image(root, "x")
    sbom = put_artifact(root, "sbom", x)
    other = put_image(root, "other")
    write_layout(root, [named_entry(x, "x"), named_entry(other, "other"), sbom])
    tag = x["digest"].replace(":", "-")
    _push(root, "other", f"{empty_registry.host}/app:{tag}")  # not an index
    run = xfer("copy", f"oci:{root}:x", f"{empty_registry.host}/app:1")
    assert run.code == 0, run.err
    assert _tag_digest(empty_registry, "app", tag) == other["digest"]
    assert _tag_digest(empty_registry, "app", sbom["digest"]) == sbom["digest"]
    assert any("warning" in line and tag in line for line in run.err.splitlines()), run.err


def test_a_referrers_page_linking_off_origin_is_refused_and_the_image_still_pulls(
    tmp_path: Path, empty_registry: Registry, store: Path
) -> None:
    """A referrers answer whose ``Link`` leads to another host: no request (and no credential)
    goes there, and as for the other hostile listings ReferrerBounds names (a looping Link,
    too many pages, an answer over the cap) the referrers are left with a warning and the
    image still pulls."""
    from fixtures.leakbait import Answer, LeakBait, Seen, challenge

    root = tmp_path / "layout"
    x = put_image(root, "x")
    write_layout(root, [named_entry(x, "x")])
    _push(root, "x", f"{empty_registry.host}/app:1")
    with LeakBait(handlers=[challenge("Basic")]) as other:

        def referrers(seen: Seen) -> Answer | None:
            if "/referrers/" not in seen.target:
                return None
            doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
            link = f'<{other.url}/v2/app/referrers/{x["digest"]}?n=2>; rel="next"'
            headers = {"Content-Type": OCI_INDEX, "Link": link}
            return Answer(200, headers, json.dumps(doc).encode())

        with LeakBait(upstream=empty_registry.url, handlers=[referrers]) as bait:
            run = xfer("pull", "--creds", "alice:secret", f"{bait.host}/app:1", store=store)
        assert not other.seen()
    assert run.code == 0, run.err
    assert any("warning" in line and "next-page link" in line for line in run.err.splitlines())


def test_a_fallback_index_one_entry_from_the_manifest_cap_is_left_as_it_is() -> None:
    """Our own merge must not write a fallback index that no reader takes (over the manifest
    cap, ours included): an index within a few bytes of the cap gets no entry; it is left as
    it is, saying why."""
    from transfer.digest import Digest
    from transfer.errors import ManifestError
    from transfer.manifest import MAX_MANIFEST_BYTES, Descriptor, Manifest
    from transfer.referrers import merge_index

    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    empty = len(json.dumps(doc, separators=(",", ":")))
    doc["annotations"] = {"pad": "p" * (MAX_MANIFEST_BYTES - empty - 40)}
    near = Manifest.from_bytes(json.dumps(doc, separators=(",", ":")).encode(), OCI_INDEX)
    assert len(near.raw) <= MAX_MANIFEST_BYTES
    entry = Descriptor(OCI_MANIFEST, Digest.parse("sha256:" + "ab" * 32), 300)
    try:
        merge_index(near, entry)
    except ManifestError as exc:
        assert "left as it is" in str(exc) and str(MAX_MANIFEST_BYTES) in str(exc)
    else:
        raise AssertionError("merged past the manifest cap")
