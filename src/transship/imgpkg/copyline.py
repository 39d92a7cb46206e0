"""The `imgpkg copy` command line, as the vendor's air-gap scripts write it.

Both the TKG script reader (`transship.tkg.script`) and the from-tar load
(`transship.imgpkg.fromtar`) read such lines; what the options mean is imgpkg's, so the
parser lives in the imgpkg wing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import PurePath

from transship.errors import PlanError
from transship.reference import MAX_REFERENCE_CHARS, without_userinfo

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
#: options whose value is a secret: never quoted back in an error
_SECRET_OPTIONS = frozenset({"--registry-password", "--registry-token"})
#: `NAME=value` words whose name says the value is a secret (`IMGPKG_REGISTRY_PASSWORD=…
#: imgpkg …`, `--registry-token=…`)
_SECRET_ASSIGNMENT = re.compile(r"[^=]*(?:pass|token|secret|auth|key)[^=]*=", re.IGNORECASE)
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
class ImgpkgCopy:
    """One parsed `imgpkg copy` line."""

    where: str
    flavour: str = ""  # "image" or "bundle" when the source is a reference
    source: str | None = None
    from_tar: str | None = None
    to_repo: str | None = None
    to_tar: str | None = None


def parse_copy_lines(text: str, name: str) -> list[ImgpkgCopy | None]:
    """One parsed copy per line of `text` (None for comments, blanks and shell scaffolding);
    anything else is a PlanError naming `name:line`."""
    return [
        _parse_line(line, f"{name}:{number}")
        for number, line in enumerate(text.splitlines(), start=1)
    ]


def _parse_line(line: str, where: str) -> ImgpkgCopy | None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise PlanError(f"{where}: cannot split the line ({exc}); fix the quoting") from None
    if not words or words[0] in _SHELL_SCAFFOLDING:
        return None
    if PurePath(words[0].replace("\\", "/")).name not in _COMMANDS:
        raise PlanError(
            f"{where}: not an 'imgpkg copy' line: {_shown(words)!r}; remove or comment it out"
        )
    if words[1:2] != ["copy"]:
        raise PlanError(f"{where}: only 'imgpkg copy' is understood, found {_shown(words)!r}")
    return _parse_copy(words[2:], where)


def _shown(words: list[str]) -> str:
    """A line's words as an error may quote them: a password or token (an option's value, a
    `NAME=value` assignment, `user:password@` in a reference) is masked as `***`."""
    shown: list[str] = []
    for word in words:
        if shown and shown[-1] in _SECRET_OPTIONS:
            shown.append("***")
            continue
        assignment = _SECRET_ASSIGNMENT.match(word)
        if assignment:
            shown.append(f"{assignment.group()}***")
            continue
        shown.append(without_userinfo(word) or word)
    return " ".join(shown)


def _parse_copy(words: list[str], where: str) -> ImgpkgCopy:
    copy = ImgpkgCopy(where)
    index = 0
    while index < len(words):
        option, has_value, value = words[index].partition("=")
        if option in _FLAG_OPTIONS:
            index += 1
            continue
        if not option.startswith("-"):
            raise PlanError(
                f"{where}: unexpected argument {_shown(words[index : index + 1])!r}; check the line"
            )
        if not has_value:
            if index + 1 >= len(words):
                raise PlanError(f"{where}: {option} needs a value")
            value = words[index + 1]
            index += 1
        index += 1
        _apply_option(copy, option, value)
    _check_complete(copy)
    return copy


def _apply_option(copy: ImgpkgCopy, option: str, value: str) -> None:
    if option in _SOURCES or option == "--to-repo":
        _refuse_userinfo(copy.where, option, value)
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


def _refuse_userinfo(where: str, option: str, value: str) -> None:
    """A reference with `user:password@` is refused here, where the line is read, so that no
    later message (a pairing or prefix error) can quote the password; text far longer than a
    reference is refused unquoted (it is not scanned for credentials)."""
    if len(value) > MAX_REFERENCE_CHARS:
        raise PlanError(
            f"{where}: {option} value of {len(value)} characters: far longer than any "
            "reference can be (not shown); fix the line"
        )
    masked = without_userinfo(value)
    if masked is not None:
        raise PlanError(
            f"{where}: {option} {masked!r} holds credentials (user:password@): give the "
            "reference without them and the credentials with --src-creds/--dest-creds "
            "USER:PASSWORD (or docker login)"
        )


def _set_once(copy: ImgpkgCopy, field: str, value: str, option: str) -> None:
    if getattr(copy, field) is not None:
        raise PlanError(f"{copy.where}: {option} given twice; keep one")
    setattr(copy, field, value)


def _check_complete(copy: ImgpkgCopy) -> None:
    sources = sum(x is not None for x in (copy.source, copy.from_tar))
    targets = sum(x is not None for x in (copy.to_repo, copy.to_tar))
    if sources != 1 or targets != 1:
        raise PlanError(
            f"{copy.where}: an imgpkg copy needs one source (-i, -b or --tar) and one "
            "destination (--to-repo or --to-tar)"
        )
    if copy.from_tar and copy.to_tar:
        raise PlanError(f"{copy.where}: --tar to --to-tar copies nothing to a registry")
