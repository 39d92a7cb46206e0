"""Sizes as people write them on command lines: `4G`, `700M`, `650MiB`, `1.5M`, `1000000`.

One parser for every option that takes a size (`--split-size`, `--project-quota`,
`--limit-rate`): K, M, G and T are binary multiples, as split(1), curl's `--limit-rate` and
Harbor's quota page use them; an optional `B`/`iB` is accepted; zero and negatives are refused
with one line naming the option.
"""

from __future__ import annotations

import re
from fractions import Fraction

from transship.errors import UsageError

#: ASCII only: `\d` would take other scripts' digits (`١٢٣`, `１０G`), and a case-blind `k`
#: the Kelvin sign (U+212A), which `.upper()` leaves out of "KMGT"; so `\s` is ASCII too, and
#: other whitespace (a no-break space copied from a page: `4\u00a0G`) is made a space first
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", re.IGNORECASE | re.ASCII)


def parse_size(text: str, *, option: str, example: str = "4G or 700M") -> int:
    """`text` in bytes; anything that is not a positive size is a one-line `UsageError`."""
    m = _SIZE.fullmatch("".join(" " if c.isspace() else c for c in text))
    size = 0
    if m and len(m.group(1)) <= 30:  # longer is a typo, not a size (and would overflow)
        # exact (a float would round 2**63-1 up): a fraction of a byte is dropped
        size = int(Fraction(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))
    if size <= 0:
        raise UsageError(f"{option} {text!r}: give a positive size such as {example}")
    return size
