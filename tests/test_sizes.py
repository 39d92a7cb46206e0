"""One size parser for --split-size, --project-quota and --limit-rate."""

from __future__ import annotations

import pytest

from transship.errors import UsageError
from transship.sizes import parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1000000", 1_000_000),
        ("4G", 4 * 1024**3),
        ("700m", 700 * 1024**2),
        ("650MiB", 650 * 1024**2),
        ("1T", 1024**4),
        ("512KB", 512 * 1024),
        ("1.5M", int(1.5 * 1024**2)),
        (" 7 ", 7),
        ("4\u00a0G", 4 * 1024**3),  # a no-break space, copied from a page
        ("\u00a0650\u2009MiB\u00a0", 650 * 1024**2),
        ("\u300010", 10),  # a wide space: whitespace, as any other
    ],
)
def test_sizes_take_binary_multiples(text: str, size: int) -> None:
    assert parse_size(text, option="--x") == size


@pytest.mark.parametrize(
    "text",
    [
        *("", "0", "0K", "-5M", "big", "5X", "M", "5MB/s", "1e3", "1" * 400),
        *("١٢٣", "１０G", "10\u212a", "4\u00a00G"),  # other digits, the Kelvin sign, a split number
    ],
)
def test_anything_else_is_one_line_naming_the_option(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text, option="--split-size")
    message = str(info.value)
    assert message.startswith("--split-size ") and "\n" not in message
