"""Planning: work out every image a release needs and where each goes, before copying.

What is exported here is offline: it reads files (TKG/TKR BOMs, compatibility documents, image
lists, saved plans) and never talks to a registry. The
registry-facing steps live in their own modules and reach registries only through an `Endpoint`:
`transship.plan.resolve` (digests, sizes, bundle detection and expansion),
`transship.plan.attachments` (signatures, attestations, SBOMs and OCI referrers of what is planned).
TKG's BOM chain lives in `transship.tkg`, imgpkg's bundles in `transship.imgpkg`.
"""

from transship.errors import PlanError
from transship.plan._yaml import read_text
from transship.plan.imagelist import (
    destination_under,
    entries_from_image_list,
    load_image_list,
    plan_from_image_list,
)
from transship.plan.model import (
    API_VERSION,
    NOT_REGISTRY_NOTE,
    EntryKind,
    NonRegistryArtifact,
    Plan,
    PlanEntry,
    Totals,
    merge_entries,
    utc_now,
)

__all__ = [
    "API_VERSION",
    "NOT_REGISTRY_NOTE",
    "EntryKind",
    "NonRegistryArtifact",
    "Plan",
    "PlanEntry",
    "PlanError",
    "Totals",
    "destination_under",
    "entries_from_image_list",
    "load_image_list",
    "merge_entries",
    "plan_from_image_list",
    "read_text",
    "utc_now",
]
