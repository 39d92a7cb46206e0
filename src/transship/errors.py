"""Error types: each carries a one-line human message and the exit code the CLI uses.

Errors are raised where the fact is known and rendered once, by the CLI. Messages never contain
credentials; callers must not interpolate secrets into them.
"""

from __future__ import annotations

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


class TransshipError(Exception):
    """Base class: a message for people and an exit code for scripts."""

    exit_code: ExitCode = ExitCode.REGISTRY

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


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


class UnsupportedMediaTypeError(UsageError):
    """A manifest we refuse to copy, such as Docker schema 1."""

    exit_code = ExitCode.REGISTRY


class DependencyError(TransshipError):
    """Not attempted: content it depends on failed earlier in the same run."""

    exit_code = ExitCode.PARTIAL
