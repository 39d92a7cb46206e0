"""Plain image lists: one reference per line, `#` comments and blank lines allowed.

The simplest way to say "bring these too". Each image keeps its repository path under the
destination prefix, so `src.example/tkg/antrea:v1` goes to `<prefix>/tkg/antrea:v1`.
"""

from __future__ import annotations

from pathlib import Path

from transship.errors import InvalidReferenceError, PlanError
from transship.plan._yaml import input_name, read_text
from transship.plan.model import EntryKind, Plan, PlanEntry, utc_now
from transship.reference import Reference, parse_prefix, without_userinfo


def destination_under(prefix: str, source: Reference) -> str:
    """`<prefix>/<repository path of source>`: the registry host is dropped, the path kept."""
    return f"{prefix.strip().rstrip('/')}/{source.repository}"


def entries_from_image_list(text: str, name: str, dest_prefix: str) -> list[PlanEntry]:
    """Entries for every reference in the list, in file order (duplicates merge in the plan)."""
    dest_prefix = parse_prefix(dest_prefix)
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            entries.append(_entry(line, f"{name}:{number}", dest_prefix))
    return entries


def _entry(line: str, where: str, dest_prefix: str) -> PlanEntry:
    if len(line.split()) > 1:
        shown = " ".join(without_userinfo(word) or word for word in line.split())  # no password
        raise PlanError(f"{where}: {shown!r}: one image reference per line; split the line")
    try:
        source = Reference.parse(line)
        return PlanEntry.create(
            line, destination_under(dest_prefix, source), kind=EntryKind.IMAGE, origins=(where,)
        )
    except InvalidReferenceError as exc:
        raise PlanError(f"{where}: {exc}; fix or remove the line") from None


def plan_from_image_list(
    text: str, name: str, dest_prefix: str, *, created: str | None = None
) -> Plan:
    """A plan for a plain image list. A list with no image (an empty pipe: a `grep` that
    matched nothing) is an error, not a run that does nothing and says it is complete."""
    entries = tuple(entries_from_image_list(text, name, dest_prefix))
    if not entries:
        raise PlanError(
            f"{name}: lists no images (only blank lines and comments); "
            "give one image reference per line"
        )
    return Plan(
        entries, (name,), created or utc_now(), destination_prefix=parse_prefix(dest_prefix)
    )


def load_image_list(path: Path | str, dest_prefix: str) -> Plan:
    """Read an image list file (`-`: standard input); origins name it as given."""
    return plan_from_image_list(read_text(path), input_name(path), dest_prefix)
