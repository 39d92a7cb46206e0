"""Planning: work out every image a release needs and where each goes, before copying.

What is exported here is offline: it reads files (TKG/TKR BOMs, compatibility documents, image
lists, the vendor scripts' output, saved plans) and never talks to a registry. The
registry-facing steps live in their own modules and reach registries only through an `Endpoint`:
`transship.plan.resolve` (digests, sizes, bundle detection and expansion),
`transship.plan.attachments` (signatures, attestations, SBOMs and OCI referrers of what is planned)
and `transship.plan.tkgregistry` (a TKG release read from a registry, as TKG reads it).
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
from transship.plan.oldscript import entries_from_old_script, load_old_script, plan_from_old_script
from transship.plan.tkg import (
    DEFAULT_SOURCE_PREFIX,
    METADATA_REPOSITORY_NAMES,
    TKG_BOM_PATH,
    TKG_BUNDLE_COMPONENTS,
    TKG_COMPATIBILITY_PATH,
    TKR_BUNDLE_COMPONENTS,
    Bom,
    BomImage,
    BomKind,
    Compatibility,
    TkgBomPointer,
    TkgCompatibility,
    TkrCompatibility,
    highest_v_tag,
    is_bundle_component,
    load_bom,
    load_compatibility,
    parse_bom,
    parse_compatibility,
    plan_from_boms,
    tkr_bom_filename,
    tkr_bom_tag,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_SOURCE_PREFIX",
    "METADATA_REPOSITORY_NAMES",
    "NOT_REGISTRY_NOTE",
    "TKG_BOM_PATH",
    "TKG_BUNDLE_COMPONENTS",
    "TKG_COMPATIBILITY_PATH",
    "TKR_BUNDLE_COMPONENTS",
    "Bom",
    "BomImage",
    "BomKind",
    "Compatibility",
    "EntryKind",
    "NonRegistryArtifact",
    "Plan",
    "PlanEntry",
    "PlanError",
    "TkgBomPointer",
    "TkgCompatibility",
    "TkrCompatibility",
    "Totals",
    "destination_under",
    "entries_from_image_list",
    "entries_from_old_script",
    "highest_v_tag",
    "is_bundle_component",
    "load_bom",
    "load_compatibility",
    "load_image_list",
    "load_old_script",
    "merge_entries",
    "parse_bom",
    "parse_compatibility",
    "plan_from_boms",
    "plan_from_image_list",
    "plan_from_old_script",
    "read_text",
    "tkr_bom_filename",
    "tkr_bom_tag",
    "utc_now",
]
