"""Basic auth against an htpasswd file of bcrypt entries (`htpasswd -B`), as distribution does.

bcrypt is slow on purpose (milliseconds per check), and a client sends credentials on every
request, so a password that matched is remembered by its SHA-256 for the life of the process;
checks run in a thread so the event loop keeps serving. Only bcrypt entries are accepted:
distribution refuses the others too, and MD5/SHA1/crypt entries are too weak to keep.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

import bcrypt

from transship.errors import UsageError
from transship.serve.errors import APIError

REALM = "transship"
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_MAX_REMEMBERED = 1024
#: bcrypt reads only this many bytes of a password; bcrypt 5 raises on longer ones, htpasswd and
#: distribution (Go's bcrypt) use the first 72 and ignore the rest
_BCRYPT_MAX_PASSWORD = 72
_WELL_FORMED = re.compile(rb"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_DEFAULT_COST = 12  # bcrypt.gensalt's own default
#: htpasswd -B's own maximum: a costlier entry takes minutes to hours per check (31: days), and the
#: decoy made at load is as costly as the costliest entry, so serve would not start
_MAX_COST = 17


class Htpasswd:
    """Users and their bcrypt hashes; `require` raises 401 unless the header matches one."""

    def __init__(self, users: dict[str, bytes], origin: str) -> None:
        self.users = users
        self.origin = origin
        self._good: dict[str, bytes] = {}  # user → sha256 of a password that matched
        #: an unknown user's password is checked against this and refused whatever the result:
        #: answering at once would tell, by the time a 401 takes, which user names exist. A hash
        #: of a random secret made here at the highest cost the file uses (load refuses a
        #: malformed entry and one above htpasswd's maximum cost), not one of its entries
        self._decoy = decoy_hash(users.values())

    @classmethod
    def load(cls, path: Path) -> Htpasswd:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read htpasswd file {path}: {exc}") from None
        users: dict[str, bytes] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                raise UsageError(f"{path}:{number}: not a 'user:hash' line")
            if not hashed.startswith(_BCRYPT_PREFIXES):
                raise UsageError(
                    f"{path}:{number}: the entry of {user!r} is not bcrypt; "
                    "create it with `htpasswd -B`"
                )
            cost = bcrypt_cost(hashed.encode())
            if cost is None:
                raise UsageError(
                    f"{path}:{number}: the entry of {user!r} is not a well-formed bcrypt hash; "
                    "create it again with `htpasswd -B`"
                )
            if cost > _MAX_COST:
                raise UsageError(
                    f"{path}:{number}: the entry of {user!r} has bcrypt cost {cost}, above "
                    f"htpasswd's maximum of {_MAX_COST}; create it again with `htpasswd -B`"
                )
            users[user] = hashed.encode()
        if not users:
            raise UsageError(f"htpasswd file {path} holds no users")
        return cls(users, str(path))

    async def require(self, header: str | None) -> str:
        """The authenticated user; raises APIError UNAUTHORIZED otherwise."""
        user, password = _basic(header)
        if user is None or password is None:
            raise _unauthorized()
        hashed = self.users.get(user)
        if hashed is None:
            await asyncio.to_thread(_check, password, self._decoy)
            raise _unauthorized()
        fingerprint = hashlib.sha256(password).digest()
        remembered = self._good.get(user)
        if remembered is not None and hmac.compare_digest(remembered, fingerprint):
            return user
        if not await asyncio.to_thread(_check, password, hashed):
            raise _unauthorized()
        if len(self._good) >= _MAX_REMEMBERED:
            self._good.clear()
        self._good[user] = fingerprint
        return user


def bcrypt_cost(hashed: bytes) -> int | None:
    """The cost of a well-formed bcrypt hash; None for one bcrypt would refuse."""
    match = _WELL_FORMED.fullmatch(hashed)
    if match is None:
        return None
    cost = int(match[1])
    return cost if 4 <= cost <= 31 else None


def decoy_hash(hashes: Iterable[bytes]) -> bytes:
    """A bcrypt hash of a random secret, as costly as the costliest well-formed one given
    (Htpasswd.load refuses a malformed hash and one costlier than htpasswd makes)."""
    costs = (cost for cost in map(bcrypt_cost, hashes) if cost and cost <= _MAX_COST)
    cost = max(costs, default=_DEFAULT_COST)
    return bytes(bcrypt.hashpw(secrets.token_bytes(32), bcrypt.gensalt(rounds=cost)))


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bool(bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed))
    except ValueError:  # a malformed hash in the file: nobody gets in with it
        return False


def _basic(header: str | None) -> tuple[str | None, bytes | None]:
    if not header:
        return None, None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or len(value) > 4096:
        return None, None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None, None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None, None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None, None


def _unauthorized() -> APIError:
    return APIError("UNAUTHORIZED", headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})
