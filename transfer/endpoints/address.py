"""Endpoint addresses as users write them (skopeo's transport names), parsed purely.

REF | docker://REF        an image in a registry
store:REF                 an image in the local store (REF normalised like a registry one)
oci:DIR[:NAME]            an OCI image layout directory; NAME is its ref.name annotation
oci-archive:FILE[:NAME]   a tar of an OCI image layout; NAME as for oci:
docker-archive:FILE[:REF] a docker save tarball; REF one of its RepoTags, or @N (skopeo's)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..reference import Reference, parse

ARCHIVE_TRANSPORTS = ("oci-archive:", "docker-archive:")


@dataclass(frozen=True)
class Address:
    kind: str  # "registry" | "store" | "oci" | "oci-archive" | "docker-archive"
    reference: Reference | None = None  # registry and store
    path: Path | None = None  # oci and the archives
    name: str | None = None  # the image in the layout or archive (None: the only image)

    def __str__(self) -> str:
        if self.kind == "registry":
            return f"docker://{self.reference}"
        if self.kind == "store":
            return f"store:{self.reference}"
        return f"{self.kind}:{self.path}" + (f":{self.name}" if self.name else "")

    def written(self, text: str) -> str:
        """The image as the user wrote it in ``text``, without a registry or store prefix."""
        if self.kind == "registry":
            return text.removeprefix("docker://")
        if self.kind == "store":
            return text.removeprefix("store:")
        return text


def parse_address(text: str, *, bare: str = "registry") -> Address:
    """``bare``: what an address without a transport prefix names, a registry image or
    (``"store"``: save, unpack, inspect of the store) an image of the store."""
    if text.startswith("docker://"):
        return Address("registry", reference=parse(text[len("docker://") :]))
    if text.startswith("store:"):
        return Address("store", reference=parse(text[len("store:") :]))
    if text.startswith(("oci:", *ARCHIVE_TRANSPORTS)):
        kind, _, rest = text.partition(":")
        # The path may not contain ':'; what follows the first one is the image name.
        path, sep, name = rest.partition(":")
        if not path:
            what = "a directory" if kind == "oci" else "a file"
            raise UsageError(f"invalid endpoint {text!r}: {kind}: needs {what}")
        if sep and not name:
            raise UsageError(f"invalid endpoint {text!r}: empty image name after ':'")
        if kind == "docker-archive" and name and not name.startswith("@"):
            parse(name)  # a docker reference, checked now: a bad one is a usage error
        return Address(kind, path=Path(path), name=name or None)
    return Address(bare, reference=parse(text))
