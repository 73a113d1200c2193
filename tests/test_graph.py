"""The one graph walk: its decisions as tables, and the walk over in-memory graphs."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import anyio
import pytest

from transfer.digest import Digest
from transfer.errors import ManifestError, PlatformNotFound, StoreError
from transfer.graph import (
    Edge,
    Graph,
    GraphBounds,
    Rules,
    choose,
    edges,
    image_blobs,
    is_foreign,
    is_manifest_type,
    walk,
    walk_sync,
)
from transfer.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    Platform,
)

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def blob(name: str, media_type: str = LAYER, urls: tuple[str, ...] = ()) -> Descriptor:
    return Descriptor(media_type, Digest.of(name.encode()), len(name), urls)


def image(*layers: Descriptor, config: str = "cfg", subject: Descriptor | None = None) -> Manifest:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blob(config, OCI_CONFIG).to_json(),
        "layers": [d.to_json() for d in layers],
    }
    if subject is not None:
        doc["subject"] = subject.to_json()
    return Manifest.from_bytes(json.dumps(doc).encode())


def index(*entries: Manifest | Descriptor, platforms: tuple[str | None, ...] = ()) -> Manifest:
    listed = []
    for i, entry in enumerate(entries):
        plat = platforms[i] if i < len(platforms) else None
        desc = entry if isinstance(entry, Descriptor) else entry.descriptor()
        doc = desc.to_json()
        if plat is not None:
            doc["platform"] = Platform.parse(plat).to_json()
        listed.append(doc)
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed})
    return Manifest.from_bytes(raw.encode())


class Store:
    """Manifests by digest, counting each read."""

    def __init__(self, *manifests: Manifest) -> None:
        self.manifests = {m.digest: m for m in manifests}
        self.reads: list[Digest] = []

    def get(self, desc: Descriptor) -> Manifest:
        self.reads.append(desc.digest)
        found = self.manifests.get(desc.digest)
        if found is None:
            raise StoreError(f"blob {desc.digest} is missing", digest=str(desc.digest))
        return found


# --- the decisions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("desc", "foreign"),
    [
        (blob("a", FOREIGN, ("https://example.com/a",)), True),
        (blob("a", NONDIST, ("https://example.com/a",)), True),
        (blob("a", FOREIGN), False),  # no URLs: it is in the registry, so it is copied
        (blob("a", LAYER, ("https://example.com/a",)), False),  # distributable: always copied
    ],
)
def test_a_layer_is_foreign_only_when_non_distributable_with_urls(
    desc: Descriptor, foreign: bool
) -> None:
    assert is_foreign(desc) is foreign


@pytest.mark.parametrize(
    ("media_type", "manifest"),
    [
        (OCI_MANIFEST, True),
        (OCI_INDEX, True),
        (DOCKER_MANIFEST, True),
        (DOCKER_LIST, True),
        ("application/vnd.oci.artifact.manifest.v1+json", True),
        (LAYER, False),
        (OCI_CONFIG, False),
        ("application/vnd.example.sbom+json", False),
    ],
)
def test_what_looks_like_a_manifest(media_type: str, manifest: bool) -> None:
    assert is_manifest_type(media_type) is manifest


AMD = blob("amd", OCI_MANIFEST)
ARM = blob("arm", OCI_MANIFEST)
WIN = blob("win", OCI_MANIFEST)
PLATFORMS = {AMD.digest: "linux/amd64", ARM.digest: "linux/arm64/v8", WIN.digest: "windows/amd64"}


def entries(*descs: Descriptor) -> Index:
    return Index(
        tuple(
            Descriptor(d.media_type, d.digest, d.size, platform=Platform.parse(PLATFORMS[d.digest]))
            for d in descs
        )
    )


@pytest.mark.parametrize(
    ("listed", "platform", "absent", "fallback", "chosen"),
    [
        ((AMD, ARM), "linux/amd64", (), False, AMD),
        ((AMD, ARM), "linux/arm64", (), False, ARM),  # no variant asked: any offered
        ((WIN, AMD), "linux/amd64", (), False, AMD),  # the os counts, not just the arch
        ((AMD, ARM), "linux/arm64", (ARM,), False, ARM),  # lacked, still chosen: the caller says
        ((AMD, ARM), "linux/arm64", (ARM,), True, AMD),  # lacked: the first held
        ((ARM, AMD), "linux/amd64", (ARM,), True, AMD),  # the platform's, among the held
        ((AMD, ARM), "linux/s390x", (), True, AMD),  # no match: the first
        ((AMD, ARM), "linux/s390x", (), False, None),
        ((AMD,), "linux/amd64", (AMD,), True, None),  # nothing held to fall back to
        ((), "linux/amd64", (), True, None),
    ],
)
def test_choosing_the_child_for_a_platform(
    listed: tuple[Descriptor, ...],
    platform: str,
    absent: tuple[Descriptor, ...],
    fallback: bool,
    chosen: Descriptor | None,
) -> None:
    lacked = {d.digest for d in absent}
    choice = lambda: choose(  # noqa: E731
        entries(*listed), Platform.parse(platform), absent=lacked, fallback=fallback
    )
    if chosen is None:
        with pytest.raises(PlatformNotFound, match=f"no image for {platform}"):
            choice()
    else:
        assert choice().digest == chosen.digest


def test_an_image_leads_to_its_config_and_layers_not_its_subject() -> None:
    a, b = blob("a"), blob("b")
    found = edges(image(a, b, subject=blob("other", OCI_MANIFEST)))
    assert [(kind, d.digest) for kind, d in found] == [
        (Edge.CONFIG, blob("cfg", OCI_CONFIG).digest),
        (Edge.LAYER, a.digest),
        (Edge.LAYER, b.digest),
    ]


def test_an_index_leads_to_every_child_or_to_the_platforms_one() -> None:
    amd, arm = image(blob("amd-layer")), image(blob("arm-layer"))
    top = index(amd, arm, platforms=("linux/amd64", "linux/arm64"))
    assert [d.digest for _, d in edges(top)] == [amd.digest, arm.digest]
    assert edges(top, Platform.parse("linux/arm64")) == [(Edge.CHILD, top.index().manifests[1])]


def test_image_blobs_keep_each_digest_once_and_leave_foreign_layers_out() -> None:
    shared, own, foreign = blob("shared"), blob("own"), blob("win", FOREIGN, ("https://x/y",))
    images = [image(shared, foreign).image(), image(shared, own).image()]
    names = [d.digest for d in image_blobs(images)]
    assert names == [blob("cfg", OCI_CONFIG).digest, shared.digest, own.digest]
    assert foreign.digest in [d.digest for d in image_blobs(images, foreign=True)]


# --- the walk ----------------------------------------------------------------------------------


def test_each_manifest_is_read_once_and_children_come_before_their_indexes() -> None:
    a, b = image(blob("a")), image(blob("b"))
    inner = index(a, b, a)  # a listed twice
    top = index(inner, a, inner, b)
    store = Store(a, b, inner)
    graph = walk_sync("reg/app:1", [top], store.get)
    assert sorted(store.reads) == sorted([inner.digest, a.digest, b.digest])
    assert [m.digest for m in graph.manifests] == [a.digest, b.digest, inner.digest, top.digest]
    assert [m.digest for m in graph.images] == [a.digest, b.digest]
    assert [d.digest for d in graph.blobs()] == [
        blob("cfg", OCI_CONFIG).digest,
        blob("a").digest,
        blob("b").digest,
    ]
    assert set(graph.reached) == {m.digest for m in (top, inner, a, b)} | {
        d.digest for d in graph.blobs()
    }


def test_a_platform_walk_reads_only_the_chain_to_the_chosen_image() -> None:
    amd, arm = image(blob("amd")), image(blob("arm"))
    inner = index(arm, platforms=("linux/arm64",))
    top = index(amd, inner, platforms=("linux/amd64", "linux/arm64"))
    store = Store(amd, arm, inner)
    graph = walk_sync("app", [top], store.get, Rules(platform=Platform.parse("linux/arm64")))
    assert store.reads == [inner.digest, arm.digest]
    assert [m.digest for m in graph.images] == [arm.digest]


def _nested(levels: int) -> tuple[Manifest, Store]:
    child = image(blob("leaf"))
    store = Store(child)
    for _ in range(levels):
        child = index(child, platforms=("linux/amd64",))
        store.manifests[child.digest] = child
    return child, store


@pytest.mark.parametrize("platform", [None, "linux/amd64"])
def test_indexes_nested_deeper_than_the_bound_are_refused(platform: str | None) -> None:
    top, store = _nested(3)
    rules = Rules(platform=Platform.parse(platform) if platform else None)
    with pytest.raises(ManifestError, match="app: indexes nested deeper than 2"):
        walk_sync("app", [top], store.get, rules)
    assert len(store.reads) == 2  # the third index is read; what it lists is not
    two, store = _nested(2)
    assert len(walk_sync("app", [two], store.get, rules).images) == 1


def test_the_count_bound_is_checked_before_the_fetch_it_forbids() -> None:
    children = [image(blob(f"layer{i}")) for i in range(5)]
    store = Store(*children)
    with pytest.raises(ManifestError, match="more than 3 distinct manifests"):
        walk_sync("app", [index(*children)], store.get, Rules(bounds=GraphBounds(manifests=3)))
    assert len(store.reads) == 2  # the top one and two children: three in all


def test_an_unbounded_walk_goes_as_deep_as_the_graph() -> None:
    top, store = _nested(1500)  # far past the interpreter's recursion limit
    graph = walk_sync("store", [top], store.get, Rules(bounds=None))
    assert len(graph.manifests) == 1501


def test_a_manifest_that_differs_from_its_descriptor_is_refused_even_when_listed_again() -> None:
    a = image(blob("a"))
    lying = Descriptor(OCI_MANIFEST, a.digest, len(a.raw) + 1)
    for top in (index(lying), index(a, lying)):
        with pytest.raises(ManifestError, match="does not match its descriptor"):
            walk_sync("app", [top], Store(a).get)


def test_keep_going_records_what_cannot_be_read_and_walks_the_rest() -> None:
    a, b = image(blob("a")), image(blob("b"))
    gone = image(blob("gone"))
    top = index(a, gone)
    store = Store(a, b, top)
    graph = walk_sync(
        "store",
        [top.descriptor(), b.descriptor()],
        store.get,
        Rules(bounds=None, keep_going=True),
    )
    assert [(u.desc.digest, u.root.digest) for u in graph.unreadable] == [(gone.digest, top.digest)]
    assert "missing" in str(graph.unreadable[0].error)
    assert {blob("a").digest, blob("b").digest} <= set(graph.reached)
    assert gone.digest in graph.reached  # reached, though what it uses is unknown
    with pytest.raises(StoreError, match="missing"):
        walk_sync("store", [top], store.get)


def test_entries_that_are_not_manifests_are_kept_as_blobs_when_asked() -> None:
    a = image(blob("a"))
    sbom = blob("sbom", "application/vnd.example.sbom+json")
    top = index(a, sbom)
    store = Store(a)
    graph = walk_sync("store", [top], store.get, Rules(bounds=None, read_unknown=False))
    assert store.reads == [a.digest] and sbom.digest in graph.reached
    with pytest.raises(StoreError):
        walk_sync("app", [top], store.get)  # a copy reads every entry


def test_a_related_edge_is_walked_like_any_other() -> None:
    original, view = image(blob("a"), config="docker"), image(blob("a"))
    store = Store(original, view)

    def related(desc: Descriptor) -> Collection[tuple[Edge, Descriptor]]:
        return [(Edge.ORIGINAL, original.descriptor())] if desc.digest == view.digest else []

    graph = walk_sync("store", [view.descriptor()], store.get, Rules(bounds=None), related)
    assert [m.digest for m in graph.manifests] == [original.digest, view.digest]
    assert blob("docker", OCI_CONFIG).digest in graph.reached


def test_the_async_walk_reaches_what_the_blocking_one_does() -> None:
    a, b = image(blob("a")), image(blob("b"))
    top = index(index(a, b), b)
    store = Store(a, b, *[Manifest.from_bytes(top.raw)], index(a, b))

    async def get(desc: Descriptor) -> Manifest:
        await anyio.sleep(0)
        return store.get(desc)

    def summary(graph: Graph) -> list[Any]:
        return [[m.digest for m in graph.manifests], list(graph.reached)]

    blocking = walk_sync("app", [top], store.get)
    assert summary(anyio.run(walk, "app", [top], get)) == summary(blocking)

    async def gone(desc: Descriptor) -> Manifest:
        return Store().get(desc)

    with pytest.raises(StoreError, match="missing"):
        anyio.run(walk, "app", [top], gone)


def test_children_the_source_lacks_are_named_not_read_and_refused_when_chosen() -> None:
    amd, arm = image(blob("amd")), image(blob("arm"))
    top = index(amd, arm, arm, platforms=("linux/amd64", "linux/arm64", "linux/arm64"))
    store = Store(amd)
    rules = Rules(absent=lambda index: {arm.digest})
    graph = walk_sync("app.tar", [top], store.get, rules)
    assert store.reads == [amd.digest]
    assert [d.digest for d in graph.absent] == [arm.digest]  # listed twice, named once
    assert [m.digest for m in graph.images] == [amd.digest]
    arm64 = Rules(platform=Platform.parse("linux/arm64"), absent=rules.absent)
    with pytest.raises(
        PlatformNotFound, match=f"app.tar lacks the linux/arm64 image .*{top.digest}"
    ):
        walk_sync("app.tar", [top], store.get, arm64)
