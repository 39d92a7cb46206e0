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

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath

from transship.errors import InvalidReferenceError, PlanError
from transship.plan._yaml import read_text
from transship.plan.imagelist import destination_under
from transship.plan.model import EntryKind, Plan, PlanEntry, utc_now
from transship.reference import Reference, parse_prefix
from transship.tkg.bom import METADATA_REPOSITORY_NAMES

_COMMANDS = frozenset({"imgpkg", "imgpkg.exe"})
_SHELL_SCAFFOLDING = frozenset({"set", "if", "then", "fi", "echo", "base64", "export"})
_SOURCES = {"-i": "image", "--image": "image", "-b": "bundle", "--bundle": "bundle"}
_VALUE_OPTIONS = frozenset(
    {
        "--registry-ca-cert-path",
        "--registry-username",
        "--registry-password",
        "--registry-token",
        "--registry-response-header-timeout",
        "--registry-retry-count",
        "--concurrency",
        "--lock-output",
    }
)
_FLAG_OPTIONS = frozenset(
    {
        "--registry-verify-certs",
        "--registry-insecure",
        "--registry-anon",
        "--include-non-distributable-layers",
        "--cosign-signatures",
        "--repo-based-tags",
        "--resume",
        "--debug",
        "--tty",
        "--json",
        "-y",
        "--yes",
    }
)


@dataclass
class _Copy:
    """One parsed `imgpkg copy` line."""

    where: str
    flavour: str = ""  # "image" or "bundle" when the source is a reference
    source: str | None = None
    from_tar: str | None = None
    to_repo: str | None = None
    to_tar: str | None = None


def entries_from_old_script(
    text: str, name: str, dest_prefix: str | None = None, source_prefix: str | None = None
) -> list[PlanEntry]:
    """Entries for every copy in the script (duplicates merge later, in the plan).

    Exports to a tar that no line imports get `dest_prefix` + the source path below
    `source_prefix` (the TKG rule), or below the registry host if no source prefix is given.
    """
    copies = [c for c in _parse_lines(text, name) if c is not None]
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
    if prefix is not None and not all(e.destination.startswith(f"{prefix}/") for e in entries):
        prefix = None
    return Plan(entries, (name,), created or utc_now(), destination_prefix=prefix)


def load_old_script(
    path: Path | str, dest_prefix: str | None = None, source_prefix: str | None = None
) -> Plan:
    """Read a generated script file; origins name it as given."""
    return plan_from_old_script(read_text(path), str(path), dest_prefix, source_prefix)


def _parse_lines(text: str, name: str) -> list[_Copy | None]:
    return [
        _parse_line(line, f"{name}:{number}")
        for number, line in enumerate(text.splitlines(), start=1)
    ]


def _parse_line(line: str, where: str) -> _Copy | None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise PlanError(f"{where}: cannot split the line ({exc}); fix the quoting") from None
    if not words or words[0] in _SHELL_SCAFFOLDING:
        return None
    if PurePath(words[0].replace("\\", "/")).name not in _COMMANDS:
        raise PlanError(
            f"{where}: not an 'imgpkg copy' line: {line.strip()!r}; remove or comment it out"
        )
    if words[1:2] != ["copy"]:
        raise PlanError(f"{where}: only 'imgpkg copy' is understood, found {line.strip()!r}")
    return _parse_copy(words[2:], where)


def _parse_copy(words: list[str], where: str) -> _Copy:
    copy = _Copy(where)
    index = 0
    while index < len(words):
        option, has_value, value = words[index].partition("=")
        if option in _FLAG_OPTIONS:
            index += 1
            continue
        if not option.startswith("-"):
            raise PlanError(f"{where}: unexpected argument {words[index]!r}; check the line")
        if not has_value:
            if index + 1 >= len(words):
                raise PlanError(f"{where}: {option} needs a value")
            value = words[index + 1]
            index += 1
        index += 1
        _apply_option(copy, option, value)
    _check_complete(copy)
    return copy


def _apply_option(copy: _Copy, option: str, value: str) -> None:
    if option in _SOURCES:
        _set_once(copy, "source", value, option)
        copy.flavour = _SOURCES[option]
    elif option == "--tar":
        _set_once(copy, "from_tar", value, option)
    elif option == "--to-repo":
        _set_once(copy, "to_repo", value, option)
    elif option == "--to-tar":
        _set_once(copy, "to_tar", value, option)
    elif option == "--lock":
        raise PlanError(f"{copy.where}: --lock sources are not supported; list the images instead")
    elif option not in _VALUE_OPTIONS:
        raise PlanError(f"{copy.where}: unknown imgpkg copy option {option}; remove it")


def _set_once(copy: _Copy, field: str, value: str, option: str) -> None:
    if getattr(copy, field) is not None:
        raise PlanError(f"{copy.where}: {option} given twice; keep one")
    setattr(copy, field, value)


def _check_complete(copy: _Copy) -> None:
    sources = sum(x is not None for x in (copy.source, copy.from_tar))
    targets = sum(x is not None for x in (copy.to_repo, copy.to_tar))
    if sources != 1 or targets != 1:
        raise PlanError(
            f"{copy.where}: an imgpkg copy needs one source (-i, -b or --tar) and one "
            "destination (--to-repo or --to-tar)"
        )
    if copy.from_tar and copy.to_tar:
        raise PlanError(f"{copy.where}: --tar to --to-tar copies nothing to a registry")


def _unique_exports(exports: Iterable[_Copy]) -> list[_Copy]:
    """One export per archive; two images written to one archive would overwrite each other."""
    by_tar: dict[str, _Copy] = {}
    for export in exports:
        tar = export.to_tar or ""
        first = by_tar.setdefault(tar, export)
        if first.source != export.source or first.flavour != export.flavour:
            raise PlanError(
                f"{export.where}: writes {tar}, which {first.where} already writes with "
                f"{first.source}; the archives would overwrite each other: use distinct names"
            )
    return list(by_tar.values())


def _find_export(copy: _Copy, exports: list[_Copy]) -> _Copy:
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


def _unpaired_destination(export: _Copy, dest_prefix: str | None, source_prefix: str | None) -> str:
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


def _entry(copy: _Copy, source: str, to_repo: str, origins: tuple[str, ...]) -> PlanEntry:
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
