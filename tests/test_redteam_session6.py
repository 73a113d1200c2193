"""Red-team cases for the bundle re-pack, the incremental load, push's mounts from the store's
other images and the lazy package: each names the behaviour that should hold."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import named_entry, put_image, tar_layout, write_layout, xfer
from tests.test_hardening_cli import store_shared_a_at_target_and_b_from_elsewhere

REF_NAME = "org.opencontainers.image.ref.name"


def _names(layout: Path) -> list[str]:
    doc = json.loads((layout / "index.json").read_text())
    return [e.get("annotations", {}).get(REF_NAME) for e in doc["manifests"]]


def test_a_repack_skips_an_archive_image_named_by_a_bare_tag_as_it_does_a_layouts(
    tmp_path: Path,
) -> None:
    # An OCI archive another tool wrote names its image "latest" (a tag, no repository): the
    # same image in an oci: layout is skipped with a warning; from the archive it was re-packed
    # as docker.io/library/latest:latest, a repository nobody named.
    layout = tmp_path / "layout"
    image = put_image(layout, "bare")
    named = put_image(layout, "named")
    write_layout(layout, [named_entry(image, "latest"), named_entry(named, "r.example/app:1")])
    archive = tar_layout(layout, tmp_path / "bare.tar")
    out = tmp_path / "out"

    run = xfer("mirror", f"oci-archive:{archive}", f"oci:{out}")

    assert run.code == 0, run.err
    assert _names(out) == ["r.example/app:1"]
    warnings = [line for line in run.err.splitlines() if image["digest"] in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), run.err


def test_a_repack_of_a_bundle_naming_two_images_alike_reports_only_what_it_holds(
    tmp_path: Path,
) -> None:
    # Two different images under one name (a hostile or hand-edited index.json): the re-pack
    # reported both copied, each as the second image, and the first vanished without a word.
    layout = tmp_path / "layout"
    first, second = put_image(layout, "first"), put_image(layout, "second")
    write_layout(
        layout, [named_entry(first, "r.example/app:1"), named_entry(second, "r.example/app:1")]
    )
    out = tmp_path / "out"

    run = xfer("mirror", "--json", f"oci:{layout}", f"oci:{out}")

    summary = json.loads(run.out.splitlines()[-1]) if run.out else {}
    held = _names(out) if (out / "index.json").exists() else []
    if run.code == 0:
        assert summary["copied"] == len(held), run.out
        dropped = {first["digest"], second["digest"]} - {
            e["digest"] for e in json.loads((out / "index.json").read_text())["manifests"]
        }
        assert all(d in run.err + run.out for d in dropped), run.out  # a dropped one is named
    else:
        assert len(run.err.strip().splitlines()) == 1 and "r.example/app:1" in run.err


def test_a_repack_of_a_bundle_with_a_malformed_since_list_fails_naming_the_bundle(
    tmp_path: Path,
) -> None:
    # dev.xfer.bundle.since is the bundle's content: a bad one is the bundle's fault (exit 1,
    # naming it), not a usage error about a digest the user never typed.
    layout = tmp_path / "layout"
    image = put_image(layout, "a")
    write_layout(
        layout,
        [named_entry(image, "r.example/app:1")],
        {"dev.xfer.bundle.since": "nonsense\x1b[31m,sha256:zz"},
    )

    run = xfer("mirror", f"oci:{layout}", f"oci:{tmp_path / 'out'}")

    assert run.code == 1, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and str(layout) in lines[0] and "\x1b" not in run.err


def test_push_is_not_failed_by_another_stored_image_of_the_target_registry_that_is_damaged(
    registry: Registry, empty_registry: Registry, images: BuiltImages, store: Path
) -> None:
    # push now walks the store's other images named after the target registry, to mount their
    # blobs; one whose manifest is gone from the store must cost only that shortcut.
    a = images.images["shared-a"]
    elsewhere = store_shared_a_at_target_and_b_from_elsewhere(
        registry, empty_registry, images, store
    )
    (store / "blobs" / "sha256" / a.digest.split(":")[1]).unlink()

    run = xfer("push", elsewhere, f"{empty_registry.host}/team-b/shared-b:1", store=store)

    assert run.code == 0, run.err


def test_a_repack_into_a_file_inside_the_source_directory_is_refused_leaving_it_whole(
    tmp_path: Path,
) -> None:
    # oci-archive:DIR/index.json from oci:DIR: the re-pack's rename replaced the source's
    # index.json with the new tar (the same-path check compares only equal paths), and the
    # bundle it read no longer opened.
    layout = tmp_path / "layout"
    image = put_image(layout, "a")
    write_layout(layout, [named_entry(image, "r.example/app:1")])
    before = (layout / "index.json").read_bytes()

    run = xfer("mirror", f"oci:{layout}", f"oci-archive:{layout / 'index.json'}")

    assert run.code == 2, run.err
    assert len(run.err.strip().splitlines()) == 1
    assert (layout / "index.json").read_bytes() == before
    assert xfer("verify", f"oci:{layout}").code == 0
