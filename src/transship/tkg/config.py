"""The registry settings TKG reads, as `tanzu config set` commands or cluster-config keys.

TKG 1.5 reads `TKG_CUSTOM_IMAGE_REPOSITORY` (the prefix that replaces
`projects.registry.vmware.com/tkg` everywhere), `TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY`
and `TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE` (the PEM CA, base64 on one line), plus
`TKG_CUSTOM_COMPATIBILITY_IMAGE_PATH` when the compatibility repository is not at
`<prefix>/tkg-compatibility` (tanzu-framework `pkg/v1/tkg/constants/config_variables.go`). A
cluster configuration file is hand-edited YAML full of comments, so it is changed with a
round-trip parser and replaced atomically: only the keys set here change.
"""

from __future__ import annotations

import io
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from transship.endpoint import Endpoint
from transship.errors import IncompleteError, UsageError
from transship.fsutil import write_atomic
from transship.reference import Reference
from transship.tkg.bom import highest_v_tag

REPOSITORY_KEY = "TKG_CUSTOM_IMAGE_REPOSITORY"
SKIP_TLS_VERIFY_KEY = "TKG_CUSTOM_IMAGE_REPOSITORY_SKIP_TLS_VERIFY"
CA_CERTIFICATE_KEY = "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"
COMPATIBILITY_PATH_KEY = "TKG_CUSTOM_COMPATIBILITY_IMAGE_PATH"
DEFAULT_COMPATIBILITY_PATH = "tkg-compatibility"


@dataclass(frozen=True)
class TkgSettings:
    """What TKG needs to pull from the relocated registry."""

    repository: str
    skip_tls_verify: bool = False
    ca_base64: str | None = None
    compatibility_path: str = DEFAULT_COMPATIBILITY_PATH

    def items(self) -> list[tuple[str, str | bool]]:
        """Key and value, in the order the vendor's documentation sets them."""
        out: list[tuple[str, str | bool]] = [
            (REPOSITORY_KEY, self.repository),
            (SKIP_TLS_VERIFY_KEY, self.skip_tls_verify),
        ]
        if self.ca_base64:
            out.append((CA_CERTIFICATE_KEY, self.ca_base64))
        if self.compatibility_path != DEFAULT_COMPATIBILITY_PATH:
            out.append((COMPATIBILITY_PATH_KEY, self.compatibility_path))
        return out

    def tanzu_commands(self) -> list[str]:
        """`tanzu config set env.KEY VALUE`, one per setting, safe to paste into a shell."""
        return [
            f"tanzu config set env.{key} {shlex.quote(_text(value))}" for key, value in self.items()
        ]


def _text(value: str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def compatibility_repository(settings: TkgSettings) -> Reference:
    """Where TKG lists compatibility tags: `<prefix>/<compatibility path>`."""
    path = settings.compatibility_path.strip("/")
    if path.rsplit("/", 1)[-1] != DEFAULT_COMPATIBILITY_PATH:
        raise UsageError(
            f"compatibility path {settings.compatibility_path!r} must end in "
            f"{DEFAULT_COMPATIBILITY_PATH} (as TKG requires)"
        )
    return Reference.parse_repository(f"{settings.repository}/{path}")


async def require_tkg_release(dest: Endpoint, compatibility: Reference) -> str:
    """The `v<N>` tag TKG will read first; IncompleteError if there is none."""
    tags = await dest.list_tags(compatibility.repository)
    tag = highest_v_tag(tags)
    if tag is None:
        found = f"only {', '.join(sorted(tags)[:5])}" if tags else "no tags"
        raise IncompleteError(
            f"{compatibility.name} has {found}: TKG looks there for a v<N> tag and would find "
            "no release",
            hint="copy the TKG release first (transship plan tkg … then copy), "
            "or pass --force to emit the settings anyway",
        )
    return tag


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, key order and quoting survive
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # the CA line must not be folded
    return yaml


def write_cluster_config(path: Path, settings: TkgSettings) -> list[str]:
    """Set the keys in a cluster configuration file, keeping everything else; returns them.

    A missing file is created. A CA key left from an earlier setting is blanked when no CA is
    given now, so that TKG does not keep trusting a CA that is no longer meant. The file's line
    endings are kept (a file edited on Windows stays CRLF), as its comments are.
    """
    try:
        raw = path.read_bytes().decode("utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read cluster configuration {path}: {exc}") from None
    newline = line_ending(raw)
    text = raw.replace("\r\n", "\n")
    yaml = _yaml()
    try:
        doc = yaml.load(text) if text.strip() else None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or first
        raise UsageError(
            f"{where}: not valid YAML ({problem}); fix it or give another file"
        ) from None
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise UsageError(f"{path} is not a cluster configuration (a YAML mapping of KEY: value)")
    changed: list[str] = []
    for key, value in settings.items():
        doc[key] = value
        changed.append(key)
    if not settings.ca_base64 and doc.get(CA_CERTIFICATE_KEY):
        doc[CA_CERTIFICATE_KEY] = ""
        changed.append(CA_CERTIFICATE_KEY)
    out = io.StringIO()
    yaml.dump(doc, out)
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    # a new one 0600: it may hold passwords
    write_atomic(path, out.getvalue().replace("\n", newline), private=True)
    if mode is not None:
        os.chmod(path, mode)  # it may hold passwords: keep whatever the owner chose
    return changed


def line_ending(text: str) -> str:
    """The file's line ending, by its first line: CRLF or LF (also for an empty file)."""
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"
