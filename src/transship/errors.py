"""Every error type of transship: a one-line human message and the exit code the CLI uses.

Errors are raised where the fact is known and rendered once, by the CLI. Messages never contain
credentials; callers must not interpolate secrets into them. The hierarchy says what went wrong:

    TransshipError
    ├── UsageError             bad input (1): references, digests, options, files people give us
    │   ├── InvalidReferenceError, InvalidDigestError
    │   ├── CertificateError   a CA file or text that is not a usable CA
    │   ├── PlanError          a BOM, image list, script or plan file
    │   └── LayoutError        a layout or archive that cannot be used (malformed, read-only)
    │       └── UnsafeArchiveError
    ├── StorageError           local I/O failed (disk full, no permission): not usage, but the
    │                          README's code for an unreadable or unwritable file (1)
    ├── AuthenticationError (3)
    │   └── PermissionDeniedError
    ├── NotFoundError (4)
    ├── TLSError (5), UnreachableError (6)
    ├── IntegrityError (7)
    │   └── BundleError        an imgpkg bundle or BOM image whose content cannot be read
    ├── RegistryError (8)
    │   ├── RetryableError     transient (5xx, 429, reset): worth another try
    │   └── ForeignLayersRefusedError  a manifest with foreign layers the registry refuses
    ├── UnsupportedMediaTypeError (8)
    ├── DependencyError (2)    not attempted: something it depends on failed
    ├── IncompleteError (9)    the destination lacks what a plan needs
    └── PreflightError         destinations that refuse a push (the first refusal's code)
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    USAGE = 1  # bad input: invalid reference, unreadable or malformed file, bad option
    PARTIAL = 2  # some images failed, the others were copied
    AUTH = 3  # 401 / 403: wrong credentials or no permission
    NOT_FOUND = 4  # repository, tag, manifest or blob does not exist
    TLS = 5  # certificate problem: unknown authority, hostname mismatch, expired
    UNREACHABLE = 6  # connection refused, DNS failure, timeout
    INTEGRITY = 7  # digest or size mismatch, corrupt content
    REGISTRY = 8  # the registry refused or answered outside the protocol
    INCOMPLETE = 9  # verify found missing or different content
    INCOMPATIBLE = 14  # an archive in a format this transship does not read (10-13: ca check)
    INTERRUPTED = 130  # Ctrl-C (SIGINT), as a shell reports a process killed by it


class TransshipError(Exception):
    """Base class: a message for people and an exit code for scripts."""

    exit_code: ExitCode = ExitCode.REGISTRY

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: facts for advisors: a push into this repository was refused (401/403/404)
        self.refused_push: str | None = None

    def __str__(self) -> str:
        hint = self.hint or advice_for(self)
        if hint:
            return f"{self.message} ({hint})"
        return self.message


#: turns an error's facts into what to do, for a kind of registry (`transship.harbor`);
#: the core raises facts only, and vendor wings register what those facts mean for them
Advisor = Callable[[TransshipError], str | None]
_ADVISORS: list[Advisor] = []


def register_advisor(advisor: Advisor) -> None:
    if advisor not in _ADVISORS:
        _ADVISORS.append(advisor)


def advice_for(error: TransshipError) -> str | None:
    """The first registered advisor's hint for `error`, if any."""
    for advisor in _ADVISORS:
        hint = advisor(error)
        if hint:
            return hint
    return None


class UsageError(TransshipError):
    """The user gave us something we cannot use."""

    exit_code = ExitCode.USAGE


class InvalidReferenceError(UsageError):
    """An image reference does not follow the reference grammar."""


class InvalidDigestError(UsageError):
    """A digest string is not `algorithm:hex` with a known algorithm and the right length."""


class AuthenticationError(TransshipError):
    """The registry rejected our credentials (401) or we have none."""

    exit_code = ExitCode.AUTH


class PermissionDeniedError(AuthenticationError):
    """The credentials are valid but lack the permission (403 / insufficient scope)."""


class NotFoundError(TransshipError):
    """The repository, manifest or blob does not exist."""

    exit_code = ExitCode.NOT_FOUND


class TLSError(TransshipError):
    """The server's certificate cannot be trusted as configured."""

    exit_code = ExitCode.TLS


class UnreachableError(TransshipError):
    """The registry could not be reached at all."""

    exit_code = ExitCode.UNREACHABLE


class HostDownError(UnreachableError):
    """Every attempt to reach a registry failed to connect for a while (`remote.health`).

    Fatal for the run, not for one entry: every later request would fail the same way, so
    commands stop starting work and say it once.
    """


class IntegrityError(TransshipError):
    """Content does not match its digest or size: never accepted, never pushed upon."""

    exit_code = ExitCode.INTEGRITY


class IncompatibleArchiveError(TransshipError):
    """An archive written in a format this version of transship does not read."""

    exit_code = ExitCode.INCOMPATIBLE


class RegistryError(TransshipError):
    """The registry answered with an error or outside the protocol."""

    exit_code = ExitCode.REGISTRY

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        hint: str | None = None,
        codes: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.codes = codes  # distribution error codes, e.g. MANIFEST_BLOB_UNKNOWN


class RetryableError(RegistryError):
    """A transient failure (5xx, 429, connection reset) worth another try."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        exhausted: bool = False,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        #: the wire layer already spent its retry budget on it: retrying again multiplies it
        self.exhausted = exhausted


class ForeignLayersRefusedError(RegistryError):
    """A manifest refused because of its foreign (non-distributable) layers, whose `urls`
    the registry's configuration does not allow: the same on every try, so never retried."""


class UnsupportedMediaTypeError(TransshipError):
    """A manifest we refuse to copy, such as Docker schema 1."""

    exit_code = ExitCode.REGISTRY


class DependencyError(TransshipError):
    """Not attempted: content it depends on failed earlier in the same run."""

    exit_code = ExitCode.PARTIAL


class CertificateError(UsageError):
    """A CA given to us is not a usable CA certificate."""


class PlanError(UsageError):
    """An input file for planning is unreadable, malformed or inconsistent."""


class BundleError(IntegrityError):
    """An image labelled as an imgpkg bundle (or a BOM image) whose content cannot be read."""


class LayoutError(UsageError):
    """A layout or archive that cannot be used: missing, malformed, read-only, locked."""


class UnsafeArchiveError(LayoutError):
    """A tar member we refuse to read: traversal, links, devices, duplicates, absurd sizes."""


class StorageError(TransshipError):
    """Local storage failed under us (disk full, quota, permission, I/O error).

    Not the user's input being wrong, so not a `UsageError`; the exit code stays the README's
    code for a file that cannot be read or written (1).
    """

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, hint: str | None = None, errno: int | None = None):
        super().__init__(message, hint=hint)
        self.errno = errno

    @property
    def out_of_space(self) -> bool:
        return self.errno in _NO_SPACE


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


#: what may follow an auth scheme or sit in a URL's user part: never shown
_SECRET_SHAPES = re.compile(r"(?i)\b(basic|bearer)(\s+|=|:\s*)[^\s'\",)}>]+|(?<=://)[^/@\s'\"]+@")


#: a secret shorter than this found inside a word is not masked there (a password `a` would
#: turn "project name" into "project n***me"): the whole text is withheld instead
_SHORTEST_MASKED_INSIDE = 4
_MASK = "\0"  # stands for *** until every secret is masked: a secret `*` never matches a mask


def shown_text(
    text: str,
    secrets: Iterable[str] = (),
    *,
    withheld: str = "(reason withheld: it may quote a password)",
) -> str:
    """Text from elsewhere (an exception's, a server's answer) as a message may show it: its
    first line, what may follow an auth scheme or sit in a URL's user part and each of
    `secrets` (the run's own credentials) replaced by ***, at most 200 characters.

    A secret is masked where it stands as a token (no letter or digit on either side), the
    longest first so a shorter one cannot break a longer one apart; one of 4 characters or more
    found inside a word is masked there too; a shorter one found there makes the whole text
    `withheld`, as masking it would garble the words around it."""
    first = (text.strip().splitlines() or [""])[0].replace(_MASK, "")
    longest_first = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
    if longest_first:
        alternatives = "|".join(map(re.escape, longest_first))
        first = re.sub(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", _MASK, first)
        for secret in longest_first:
            if secret in first:
                if len(secret) < _SHORTEST_MASKED_INSIDE:
                    return withheld
                first = first.replace(secret, _MASK)
        first = first.replace(_MASK, "***")
    first = _SECRET_SHAPES.sub(lambda m: f"{m.group(1)} ***" if m.group(1) else "***@", first)
    return first if len(first) <= 200 else first[:200] + "..."


def describe_unexpected(exc: BaseException) -> str:
    """An exception nobody foresaw, for a message or a report: its type and the first line of
    its text, secrets scrubbed, never its repr (aiohttp's carry the request's headers, the
    Authorization header included)."""
    text = shown_text(str(exc))
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def io_error(where: str, exc: OSError) -> StorageError:
    """One line naming what failed, without a traceback: `oci:/x: cannot write blob: No space`."""
    hint = None
    if exc.errno in _NO_SPACE:
        hint = "free some space and run the same command again: what was written is kept"
    return StorageError(f"{where}: {exc.strerror or exc}", hint=hint, errno=exc.errno)


class IncompleteError(TransshipError):
    """The destination lacks content a plan (or TKG) needs: refuse to go on."""

    exit_code = ExitCode.INCOMPLETE


class PreflightError(TransshipError):
    """Some destination repositories refuse a push; each refusal is kept for the renderer.

    The exit code is the first refusal's, so a script can tell "no permission" from "down".
    """

    def __init__(self, problems: Sequence[TransshipError], asked: int) -> None:
        first = problems[0]
        super().__init__(
            f"preflight: {len(problems)} of {asked} destination repositories refuse a push; "
            f"first: {first.message}",
            hint=first.hint,
        )
        self.problems = tuple(problems)
        self.asked = asked
        self.exit_code = first.exit_code
        self.refused_push = first.refused_push


class NamespaceFullError(RegistryError):
    """The destination refuses more content under `namespace` (a repository prefix, such as a
    project over its storage quota). The engine starts no new upload there; a registry-specific
    wing (`transship.harbor`) decides which refusals mean this. `first` is None on the refusal
    itself and names it on the tasks that were then not attempted."""

    def __init__(
        self,
        message: str,
        *,
        namespace: str,
        limit: int | None = None,
        used: int | None = None,
        first: NamespaceFullError | None = None,
    ) -> None:
        super().__init__(message)
        self.namespace = namespace
        self.limit = limit
        self.used = used
        self.first = first

    def covers(self, repository: str) -> bool:
        return repository == self.namespace or repository.startswith(self.namespace + "/")


def as_outcome(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and the one line the CLI ends with for `exc`, or None for what is not
    ours to describe (a bug: Python's traceback says more). The one mapping: `cli.main`
    prints and exits with it, a report written on the way out records the same code."""
    if isinstance(exc, TransshipError):
        return int(exc.exit_code), f"error: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return int(ExitCode.INTERRUPTED), "interrupted"
    if isinstance(exc, OSError):  # a file the user named cannot be read or written
        error = io_error(exc.filename or "transship", exc)
        return int(error.exit_code), f"error: {error}"
    return None


def exit_code_of(exc: BaseException) -> int:
    """The code the CLI exits with for `exc`, for a report written on the way out."""
    outcome = as_outcome(exc)
    return outcome[0] if outcome is not None else 1  # as Python ends on an uncaught error
