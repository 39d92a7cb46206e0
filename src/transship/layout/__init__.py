"""OCI Image Layouts as `Endpoint`s: `save` is a copy into a layout, `load` a copy out of one.

A layout holds many repositories in one blob store (`blobs/<alg>/<hex>`, manifests included), so
a layer shared by fifty TKG images is stored once. Names live in `index.json`: one entry per
(repository, tag), a descriptor of the top-level manifest annotated with

- `org.opencontainers.image.ref.name`: `<repository>:<tag>` (just `<tag>` for repository ''),
- `io.transship.repository`, `io.transship.tag`: the same two parts, for people and scripts.

Why `repository:tag` as the ref name: a bare tag would collide across repositories (every TKG
component has a `v1.5.3`), and skopeo 1.9 takes `oci:DIR:REF` apart at the *first* colon, then
matches REF exactly against ref.name, so `skopeo copy oci:/media/usb/tkg:tkg/antrea:v1.2.3 ...`
finds what transship wrote. skopeo also checks REF against the image-spec ref grammar, which is
stricter than the tag grammar: tags starting with `_` or ending in `-`/`.`, or holding `__` or
`..`, are stored and usable by transship but not addressable from skopeo (`skopeo_addressable`
tells which). The directory path must not contain a colon for skopeo. regclient's `ocidir`
falls back to matching a `:tag` suffix, so `ocidir://DIR:tag` works when the tag is unique.

A layout written by another tool (`skopeo copy ... oci:DIR:NAME`) reads back as repository ''
with tag NAME, or as repository/tag when NAME is `repo:tag`. Entries without a ref name (skopeo
lists an index's children that way) are not tags.
"""

from transship.errors import LayoutError, UnsafeArchiveError
from transship.layout.archive import OCILayoutTar, scan_tar, write_tar
from transship.layout.directory import OCILayout
from transship.layout.index import (
    ANNOTATION_REPOSITORY,
    ANNOTATION_TAG,
    REF_NAME,
    LayoutIndex,
    ref_name,
    skopeo_addressable,
    split_ref_name,
)

__all__ = [
    "ANNOTATION_REPOSITORY",
    "ANNOTATION_TAG",
    "REF_NAME",
    "LayoutError",
    "LayoutIndex",
    "OCILayout",
    "OCILayoutTar",
    "UnsafeArchiveError",
    "ref_name",
    "scan_tar",
    "skopeo_addressable",
    "split_ref_name",
    "write_tar",
]
