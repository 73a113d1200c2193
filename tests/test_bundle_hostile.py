"""Bundles against hostile input: an ``index.json`` given to ``--since`` that names other hosts,
a relies-on record that names what must be in the bundle, entry names whose digest names
another image, two names that land on one target tag, and a layout bundle on read-only media.
Each test states what must hold; a layout is built by hand (no registry needed for the bundle)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.helpers import (
    descriptor,
    named_entry,
    put_artifact,
    put_blob,
    put_image,
    tar_layout,
    write_layout,
    xfer,
)
from transfer.bundle_record import RELIES_ON, RELIES_ON_TYPE, record_bytes

# ---- a hand-built layout into a registry -------------------------------------------------------


def _push_layout(root: Path, name: str, target: str) -> None:
    run = xfer("copy", "--no-referrers", f"oci:{root}:{name}", target)
    if run.code == 2 and "--no-referrers" in run.err:  # before referrers were carried
        run = xfer("copy", f"oci:{root}:{name}", target)
    assert run.code == 0, run.err


# ---- the tests -------------------------------------------------------------------------------


def test_since_an_index_json_sends_no_credentials_to_hosts_it_names(
    tmp_path: Path, empty_registry: Any
) -> None:
    """``--since INDEX.json`` (what the far side says it holds) names images by full reference,
    and the export reads each one's graph from the registry its name says. The run's own
    credentials (``--creds``, meant for the sync YAML's registries) must not go to a host only
    that file names: here a server that challenges for Basic credentials."""
    from fixtures.leakbait import LeakBait, challenge

    root = tmp_path / "layout"
    a = put_image(root, "a")
    write_layout(root, [named_entry(a, "a")])
    _push_layout(root, "a", f"{empty_registry.host}/app:1")
    config = tmp_path / "sync.yaml"
    config.write_text(f"{empty_registry.host}:\n  images:\n    app: ['1']\n")
    with LeakBait(handlers=[challenge("Basic")]) as bait:
        index = tmp_path / "index.json"
        entry = named_entry(a, f"{bait.host}/stolen:1")
        index.write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
        xfer(
            "mirror",
            "--creds",
            "alice:secret",
            "--since",
            index,
            config,
            f"oci-archive:{tmp_path / 'b.tar'}",
        )
        assert bait.seen(), "the export never contacted the host the index.json names"
        assert not bait.carrying("authorization"), "--creds went to a host only --since names"


def test_verify_does_not_pass_a_bundle_that_relies_on_its_own_manifests(tmp_path: Path) -> None:
    """A record may name anything. One that names the images' own manifests makes a bundle of
    nothing but index.json and the record verify "ok, 2 relied on from outside", while no
    reader can use it (an import or load fails reading the manifest; issue 14: "all manifests
    are included"). A relied-on manifest an entry or an index names must be a problem (its
    image's graph cannot be checked at all), not a relied-on blob."""
    root = tmp_path / "layout"
    a, b = put_image(root, "a"), put_image(root, "b")
    for path in (root / "blobs/sha256").iterdir():
        path.unlink()
    record = put_blob(root, record_bytes([descriptor(a), descriptor(b)]), RELIES_ON_TYPE)
    write_layout(
        root,
        [named_entry(a, "r.example/a:1"), named_entry(b, "r.example/b:1")],
        {RELIES_ON: record["digest"]},
    )
    bundle = tar_layout(root, tmp_path / "hollow.tar")
    run = xfer("verify", f"oci-archive:{bundle}")
    assert run.code == 1, run.err
    assert a["digest"] in run.out and b["digest"] in run.out


def test_an_import_reads_a_layout_bundle_on_read_only_media(
    tmp_path: Path, empty_registry: Any
) -> None:
    """Air-gapped bundles arrive on removable media, often mounted read-only. Importing an
    ``oci:DIR`` bundle only reads it (as ``xfer verify oci:DIR`` does); today open_bundle takes
    the layout's in-use lock, whose ensure() creates ``.xfer/`` in the bundle and fails there
    ("cannot create the store"). Here the directory is made immutable (chattr +i)."""
    import subprocess

    root = tmp_path / "layout"
    a = put_image(root, "a")
    write_layout(root, [named_entry(a, "r.example/a:1")])
    subprocess.run(["chattr", "+i", str(root)], check=True)
    try:
        assert xfer("verify", f"oci:{root}").code == 0
        run = xfer("mirror", f"oci:{root}", f"{empty_registry.host}/pre")
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)
    assert run.code == 0, run.err


def test_an_import_checks_the_blobs_its_referrers_rely_on_before_writing_anything(
    tmp_path: Path, empty_registry: Any
) -> None:
    """An incremental bundle relies on blobs of an image's SBOM too (left out because the far
    side held them). The import's check "before writing any manifest" must cover the referrers
    it carries: here the target holds the image's blobs but not the SBOM's, so the import must
    fail naming the SBOM's blob with nothing written, not tag the image and then fail."""
    root = tmp_path / "layout"
    a = put_image(root, "a")
    sbom = put_artifact(root, "sbom", a)
    write_layout(root, [named_entry(a, "a")])
    _push_layout(root, "a", f"{empty_registry.host}/pre/a:old")  # its blobs are at the target
    doc = json.loads((root / "blobs/sha256" / sbom["digest"][7:]).read_bytes())
    image = json.loads((root / "blobs/sha256" / a["digest"][7:]).read_bytes())
    relied = [image["config"], *image["layers"], *doc["layers"]]
    for desc in relied:
        (root / "blobs/sha256" / desc["digest"][7:]).unlink(missing_ok=True)
    record = put_blob(root, record_bytes([descriptor(d) for d in relied]), RELIES_ON_TYPE)
    write_layout(root, [named_entry(a, "r.example/a:1"), sbom], {RELIES_ON: record["digest"]})
    bundle = tar_layout(root, tmp_path / "incremental.tar")

    run = xfer("mirror", f"oci-archive:{bundle}", f"{empty_registry.host}/pre")
    assert run.code == 1, run.err
    assert doc["layers"][0]["digest"] in run.err, run.err
    tagged = xfer("inspect", "--raw", f"{empty_registry.host}/pre/a:1")
    assert tagged.code != 0, "the image was tagged before the import found a blob missing"


def test_an_import_does_not_put_an_image_under_a_name_whose_digest_names_another(
    tmp_path: Path, empty_registry: Any
) -> None:
    """A bundle entry named ``r.example/y@sha256:C`` that holds manifest B (a hostile bundle;
    or an export of a digest reference with --platform, whose entry is then the platform's
    image or a filtered index) must not be reported as written to ``PREFIX/y@sha256:C`` (which
    the target never gets), nor copied again on every rerun (issue 14: a rerun is a no-op);
    ``r.example/z:1@sha256:A`` holding C must not tag C as z:1 when the name pins A."""
    root = tmp_path / "layout"
    a, b, c = put_image(root, "a"), put_image(root, "b"), put_image(root, "c")
    write_layout(
        root,
        [
            named_entry(a, "r.example/x:1"),
            named_entry(b, f"r.example/y@{c['digest']}"),
            named_entry(c, f"r.example/z:1@{a['digest']}"),
        ],
    )
    bundle = tar_layout(root, tmp_path / "b.tar")
    dest = f"{empty_registry.host}/pre"
    first = xfer("mirror", "--json", f"oci-archive:{bundle}", dest)
    summary = first.json_lines()[-1]
    claimed = {i["target"]: i["digest"] for i in summary["images"]["copied"]}
    for target, digest in claimed.items():
        if "@" in target:
            assert target.endswith("@" + digest), f"reported {target} but wrote {digest}"
    tagged = xfer("inspect", "--raw", f"{dest}/z:1")
    assert tagged.code != 0 or hashlib.sha256(tagged.out.encode()).hexdigest() != c["digest"][7:], (
        "z:1 was tagged with C although its name pins A"
    )
    again = xfer("mirror", "--json", f"oci-archive:{bundle}", dest)
    assert again.json_lines()[-1]["copied"] == 0, "a rerun of the import copies again"


def test_an_import_names_two_images_that_would_land_on_the_same_target_tag(
    tmp_path: Path, empty_registry: Any
) -> None:
    """Without --scoped, ``a.example/app:1`` and ``b.example/app:1`` both go to PREFIX/app:1:
    two different images race for one tag and the report says both were copied. The import
    must refuse (or fail those images) naming the clash, so the tag's content is never a
    matter of which copy finished last."""
    root = tmp_path / "layout"
    a, b = put_image(root, "a"), put_image(root, "b")
    write_layout(root, [named_entry(a, "a.example/app:1"), named_entry(b, "b.example/app:1")])
    bundle = tar_layout(root, tmp_path / "b.tar")
    run = xfer("mirror", "--json", f"oci-archive:{bundle}", f"{empty_registry.host}/pre")
    copied = run.json_lines()[-1]["copied"] if run.code == 0 else 0
    assert copied < 2, "both images reported copied to the one tag pre/app:1"


def test_a_mirror_names_two_sources_that_would_land_on_the_same_target_tag(
    tmp_path: Path, empty_registry: Any
) -> None:
    """The registry-to-registry mirror's plan has the same gap as the import: without --scoped,
    ``A/app:1`` and ``B/app:1`` (different images) both go to ``PREFIX/app:1``. Both are
    refused, each naming the other; the rest of the plan is copied."""
    from fixtures.registry import Registry

    root = tmp_path / "layout"
    a, b, c = put_image(root, "a"), put_image(root, "b"), put_image(root, "c")
    write_layout(root, [named_entry(a, "a"), named_entry(b, "b"), named_entry(c, "c")])
    with Registry() as other:
        _push_layout(root, "a", f"{empty_registry.host}/app:1")
        _push_layout(root, "c", f"{empty_registry.host}/solo:1")
        _push_layout(root, "b", f"{other.host}/app:1")
        config = tmp_path / "sync.yaml"
        config.write_text(
            f"{empty_registry.host}:\n  images:\n    app: ['1']\n    solo: ['1']\n"
            f"{other.host}:\n  images:\n    app: ['1']\n"
        )
        run = xfer("mirror", "--json", config, f"{other.host}/m")
    assert run.code == 1, run.err
    summary = run.json_lines()[-1]
    assert [i["target"] for i in summary["images"]["copied"]] == [f"{other.host}/m/solo:1"]
    failed = {i["source"]: i["error"] for i in summary["failed"]}
    one, two = f"{empty_registry.host}/app:1", f"{other.host}/app:1"
    assert set(failed) == {one, two}, failed
    assert two in failed[one] and one in failed[two], failed
