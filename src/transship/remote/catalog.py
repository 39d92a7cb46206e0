"""Reading a registry's catalog (`GET /v2/_catalog`) near a prefix, whatever its order.

Registries page their catalog in different orders. Distribution walks its storage tree with
each directory's entries sorted, so its order is path-aware (`lessPath`: `/` sorts before any
other character, so `a/b` < `a-b`) and `last=` may be any string. Harbor sorts plain strings
(`a-b` < `a/b`) and answers 400 unless `last` names an existing repository. Others may keep
no order at all. So `CatalogWalk` starts just before the prefix, keeps the names that start
with it, and stops early only once *every* order the pages so far are consistent with says
that no such name can follow; pages that fit neither order are read to the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: the orders a catalog may come in: plain strings (Harbor), and distribution's `lessPath`,
#: which compares paths as if `/` were the smallest character
ORDERS: tuple[Callable[[str], str], ...] = (str, lambda name: name.replace("/", "\x00"))


def start_after(prefix: str) -> str:
    """The `last=` to start a catalog at so that no name starting with `prefix` is skipped.

    A proper prefix of `prefix` sorts before every name starting with it in any order that
    compares character by character, and distribution returns only names after `last`. The
    separators it would end with are dropped so that it still looks like a repository name.
    Empty: start at the beginning.
    """
    return prefix[:-1].rstrip("/._-")


@dataclass
class CatalogWalk:
    """The names under `prefix` found in the pages read so far, and whether to read on."""

    prefix: str
    #: where the listing started (`last=`); "" for the beginning
    last: str = ""
    names: set[str] = field(default_factory=set)
    #: the orders the pages read so far are consistent with
    _orders: list[Callable[[str], str]] = field(
        default_factory=lambda: list(ORDERS), init=False, repr=False
    )
    _previous: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        self._previous = self.last

    def take(self, page: Sequence[str]) -> bool:
        """Read one page; True when the pages after it cannot hold a name under the prefix."""
        for name in page:
            self._orders = [k for k in self._orders if k(self._previous) < k(name)]
            self._previous = name
            if name.startswith(self.prefix):
                self.names.add(name)
        if not page or not self._orders:
            return False
        final = page[-1]
        return not final.startswith(self.prefix) and all(
            key(final) > key(self.prefix) for key in self._orders
        )
