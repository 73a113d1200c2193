"""Endpoint addresses as users write them (skopeo's transport names), parsed purely.

REF | docker://REF        an image in a registry
store:REF                 an image in the local store (REF normalised like a registry one)
oci:DIR[:NAME]            an OCI image layout directory; NAME is its ref.name annotation
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..reference import Reference, parse

ARCHIVE_TRANSPORTS = ("oci-archive:", "docker-archive:")


@dataclass(frozen=True)
class Address:
    kind: str  # "registry" | "store" | "oci"
    reference: Reference | None = None  # registry and store
    path: Path | None = None  # oci
    name: str | None = None  # oci: the ref.name to read or write (None: the only image)

    def __str__(self) -> str:
        if self.kind == "registry":
            return f"docker://{self.reference}"
        if self.kind == "store":
            return f"store:{self.reference}"
        return f"oci:{self.path}" + (f":{self.name}" if self.name else "")


def parse_address(text: str) -> Address:
    if text.startswith("docker://"):
        return Address("registry", reference=parse(text[len("docker://") :]))
    if text.startswith("store:"):
        return Address("store", reference=parse(text[len("store:") :]))
    if text.startswith("oci:"):
        rest = text[len("oci:") :]
        # The directory may not contain ':'; what follows the first one is the image name.
        directory, sep, name = rest.partition(":")
        if not directory:
            raise UsageError(f"invalid endpoint {text!r}: oci: needs a directory")
        if sep and not name:
            raise UsageError(f"invalid endpoint {text!r}: empty image name after ':'")
        return Address("oci", path=Path(directory), name=name or None)
    if text.startswith(ARCHIVE_TRANSPORTS):
        transport = text.split(":", 1)[0]
        raise UsageError(f"the {transport}: transport is not supported yet (use oci:DIR)")
    return Address("registry", reference=parse(text))
