"""Output of the vendor scripts (`gen-publish-images.sh` and its to-tar/from-tar variants).

People migrating from the TKG air-gap procedure already have such a file; reading it gives the
exact set of images they used to copy, so transship can reproduce (and de-duplicate) it.
Accepted lines:

    imgpkg copy -i|-b SRC --to-repo DST [--registry-ca-cert-path P] [...]
    imgpkg copy -i|-b SRC --to-tar FILE                 (download half)
    imgpkg copy --tar FILE --to-repo DST                (upload half, paired by FILE)

plus comments, blank lines and the scripts' shell scaffolding (`set -…`, the `if … fi` block
that decodes the CA certificate). Anything else is an error, so typos are not skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePath

from transship.errors import InvalidReferenceError, PlanError
from transship.imgpkg.copyline import ImgpkgCopy, parse_copy_lines
from transship.plan._yaml import input_name, read_text
from transship.plan.imagelist import destination_under
from transship.plan.model import EntryKind, Plan, PlanEntry, utc_now
from transship.reference import Reference, parse_prefix
from transship.tkg.bom import METADATA_REPOSITORY_NAMES


def entries_from_old_script(
    text: str, name: str, dest_prefix: str | None = None, source_prefix: str | None = None
) -> list[PlanEntry]:
    """Entries for every copy in the script (duplicates merge later, in the plan).

    Exports to a tar that no line imports get `dest_prefix` + the source path below
    `source_prefix` (the TKG rule), or below the registry host if no source prefix is given.
    """
    copies = [c for c in parse_copy_lines(text, name) if c is not None]
    direct = [c for c in copies if c.source and c.to_repo]
    exports = _unique_exports(c for c in copies if c.source and c.to_tar)
    imports = [c for c in copies if c.from_tar and c.to_repo]
    entries = [_entry(c, c.source or "", c.to_repo or "", (c.where,)) for c in direct]
    imported: set[int] = set()
    for copy in imports:
        export = _find_export(copy, exports)
        imported.add(id(export))
        origins = (export.where, copy.where)
        entries.append(_entry(export, export.source or "", copy.to_repo or "", origins))
    for export in exports:
        if id(export) not in imported:
            dest = _unpaired_destination(export, dest_prefix, source_prefix)
            entries.append(_entry(export, export.source or "", dest, (export.where,)))
    return entries


def plan_from_old_script(
    text: str,
    name: str,
    dest_prefix: str | None = None,
    source_prefix: str | None = None,
    *,
    created: str | None = None,
) -> Plan:
    """A plan reproducing what the script would have copied, without its duplicates.

    It records `dest_prefix` as the prefix it was made for only if every destination is below
    it (the script's own upload lines may name other places)."""
    prefix = parse_prefix(dest_prefix) if dest_prefix is not None else None
    entries = tuple(entries_from_old_script(text, name, prefix, source_prefix))
    if not entries:  # an empty pipe or file: nothing to reproduce is an error, not "complete"
        raise PlanError(
            f"{name}: lists no images (no 'imgpkg copy' line); "
            "give the script gen-publish-images.sh wrote"
        )
    if prefix is not None and not all(e.destination.startswith(f"{prefix}/") for e in entries):
        prefix = None
    return Plan(entries, (name,), created or utc_now(), destination_prefix=prefix)


def load_old_script(
    path: Path | str, dest_prefix: str | None = None, source_prefix: str | None = None
) -> Plan:
    """Read a generated script file (`-`: standard input); origins name it as given."""
    return plan_from_old_script(read_text(path), input_name(path), dest_prefix, source_prefix)


def _unique_exports(exports: Iterable[ImgpkgCopy]) -> list[ImgpkgCopy]:
    """One export per archive; two images written to one archive would overwrite each other."""
    by_tar: dict[str, ImgpkgCopy] = {}
    for export in exports:
        tar = export.to_tar or ""
        first = by_tar.setdefault(tar, export)
        if first.source != export.source or first.flavour != export.flavour:
            raise PlanError(
                f"{export.where}: writes {tar}, which {first.where} already writes with "
                f"{first.source}; the archives would overwrite each other: use distinct names"
            )
    return list(by_tar.values())


def _find_export(copy: ImgpkgCopy, exports: list[ImgpkgCopy]) -> ImgpkgCopy:
    """The line that wrote the archive this line reads: same path, else same file name."""
    for export in exports:
        if export.to_tar == copy.from_tar:
            return export
    base = PurePath(copy.from_tar or "").name
    matches = [e for e in exports if PurePath(e.to_tar or "").name == base]
    if len(matches) == 1:
        return matches[0]
    raise PlanError(
        f"{copy.where}: reads {copy.from_tar} but no line writes it with --to-tar, so the "
        "source image is unknown; add the download (to-tar) script's lines"
    )


def _unpaired_destination(
    export: ImgpkgCopy, dest_prefix: str | None, source_prefix: str | None
) -> str:
    if dest_prefix is None:
        raise PlanError(
            f"{export.where}: {export.source} only goes to {export.to_tar}; add the upload "
            "(from-tar) script's lines or give a destination prefix"
        )
    source = _parse_reference(export.source or "", export.where)
    prefix = parse_prefix(source_prefix, "source prefix") if source_prefix else ""
    if prefix and source.name.startswith(prefix + "/"):
        return f"{dest_prefix.strip().rstrip('/')}/{source.name[len(prefix) + 1 :]}"
    return destination_under(dest_prefix, source)


def _parse_reference(text: str, where: str) -> Reference:
    try:
        return Reference.parse(text)
    except InvalidReferenceError as exc:
        raise PlanError(f"{where}: {exc}; fix the line") from None


def _entry(copy: ImgpkgCopy, source: str, to_repo: str, origins: tuple[str, ...]) -> PlanEntry:
    """imgpkg puts the source tag on the destination, so the entry carries that tag."""
    try:
        destination = Reference.parse(to_repo)
        if destination.tag or destination.digest:
            raise PlanError(f"{copy.where}: --to-repo {to_repo} must be a repository, no tag")
        return PlanEntry.create(
            source, to_repo, kind=_kind(copy.flavour, destination), origins=origins
        )
    except InvalidReferenceError as exc:
        raise PlanError(f"{copy.where}: {exc}; fix the line") from None


def _kind(flavour: str, destination: Reference) -> EntryKind:
    if flavour == "bundle":
        return EntryKind.BUNDLE
    if destination.repository.rsplit("/", 1)[-1] in METADATA_REPOSITORY_NAMES:
        return EntryKind.METADATA
    return EntryKind.IMAGE
