"""Reading a catalog near a prefix (`transship.remote.catalog`): where to start, when to stop.

Pure logic; the same walk against a real docker-registry is in test_cold_requests.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from transship.remote.catalog import CatalogWalk, start_after

#: names around the prefix `bench/tkg`: `-` and `.` sort before `/` as strings, after it
#: in distribution's path order
NAMES = [
    "bench/tk",
    "bench/tk-a",
    "bench/tkf",
    "bench/tkg",
    "bench/tkg-x",
    "bench/tkg.y",
    "bench/tkg/a",
    "bench/tkg/x",
    "bench/tkg/x/deep",
    "bench/tkg0",
    "bench/tkga",
    "bench/tkh",
    "zzz/other",
]


def path_order(names: Sequence[str]) -> list[str]:
    """distribution's order (`lessPath`): `/` before every other character."""
    return sorted(names, key=lambda n: n.replace("/", "\x00"))


def pages_read(
    catalog: Sequence[str], prefix: str, size: int, *, honours_last: bool = True
) -> tuple[set[str], int]:
    """Page through `catalog` as a registry would from `start_after(prefix)`: the names
    found under the prefix and how many pages were read before the walk stopped."""
    walk = CatalogWalk(prefix, start_after(prefix))
    remaining = list(catalog)
    if honours_last and walk.last:
        key = (
            (lambda n: n)
            if list(catalog) == sorted(catalog)
            else (lambda n: n.replace("/", "\x00"))
        )
        remaining = [n for n in remaining if key(n) > key(walk.last)]
    pages = 0
    while True:
        page, remaining = remaining[:size], remaining[size:]
        pages += 1
        if walk.take(page) or not remaining:
            return walk.names, pages


def under(prefix: str) -> set[str]:
    return {n for n in NAMES if n.startswith(prefix)}


def test_start_after_is_a_proper_prefix_without_trailing_separators() -> None:
    assert start_after("mirror/cold/app") == "mirror/cold/ap"
    assert start_after("bench/tkg/") == "bench/tkg"
    assert start_after("bench/tkg-") == "bench/tkg"
    assert start_after("a__b") == "a"
    assert start_after("m") == "" and start_after("") == ""
    for prefix in ("bench/tkg", "bench/tkg/", "bench/tkg-", "bench/tk"):
        last = start_after(prefix)  # below every name under the prefix, in both orders
        assert all(last < n for n in under(prefix))
        assert all(last.replace("/", "\0") < n.replace("/", "\0") for n in under(prefix))


@pytest.mark.parametrize("prefix", ["bench/tkg", "bench/tkg/", "bench/tkg-", "bench/tk", ""])
@pytest.mark.parametrize("order", ["path", "string"])
@pytest.mark.parametrize("size", [1, 2, 3, 100])
def test_every_name_under_the_prefix_is_found_in_either_order(
    prefix: str, order: str, size: int
) -> None:
    catalog = path_order(NAMES) if order == "path" else sorted(NAMES)
    found, _ = pages_read(catalog, prefix, size)
    assert found == under(prefix)


def test_paging_stops_once_past_the_prefix_in_every_consistent_order() -> None:
    # distribution's order: bench/tkg-x follows bench/tkg/x/deep, so the pages are not in
    # string order (where it would come first); in path order it is past `bench/tkg/`: stop
    catalog = path_order(NAMES)
    found, pages = pages_read(catalog, "bench/tkg/", 1)
    assert found == {"bench/tkg/a", "bench/tkg/x", "bench/tkg/x/deep"}
    start = [n for n in catalog if n.replace("/", "\0") > "bench\0tkg"]
    assert start[:pages][-1] == "bench/tkg-x"  # tkg-x after tkg/x/deep: not a string order
    assert pages < len(start)  # and it did stop: bench/tkg0 onwards were never asked for
    # one page holding everything: no second page
    assert pages_read(catalog, "bench/tkg/", 100)[1] == 1


def test_a_name_past_the_prefix_as_a_string_is_not_the_end_in_path_order() -> None:
    # The trap: plan repositories bench/tkg-a, bench/tkg-b (prefix "bench/tkg-"). In
    # distribution's order bench/tkg/x comes first, past "bench/tkg-" as a string, and
    # bench/tkg-a only after it: stopping at bench/tkg/x would call bench/tkg-a missing.
    walk = CatalogWalk("bench/tkg-", start_after("bench/tkg-"))
    assert walk.take(["bench/tkg/x"]) is False
    assert walk.take(["bench/tkg-a"]) is False and walk.names == {"bench/tkg-a"}
    assert walk.take(["bench/tkh"]) is True


def test_a_catalog_in_no_order_is_read_to_the_end() -> None:
    walk = CatalogWalk("bench/tkg/", start_after("bench/tkg/"))
    assert walk.take(["bench/tkg/b", "bench/tkh"]) is True  # ordered so far: past in both
    shuffled = CatalogWalk("bench/tkg/", start_after("bench/tkg/"))
    assert shuffled.take(["bench/tkh", "bench/tkg/b"]) is False  # a name went backwards
    assert shuffled.take(["zzz", "bench/tkg/a"]) is False  # from then on: never stop early
    assert shuffled.names == {"bench/tkg/b", "bench/tkg/a"}


def test_a_registry_ignoring_last_is_read_on_not_trusted_to_be_past() -> None:
    # names before `last` on the first page: it did not start there, so no order is assumed
    catalog = sorted(NAMES)
    found, pages = pages_read(catalog, "bench/tkg/", 2, honours_last=False)
    assert found == under("bench/tkg/") and pages == len(catalog) // 2 + 1


def test_an_empty_prefix_reads_everything() -> None:
    found, pages = pages_read(sorted(NAMES), "", 5)
    assert found == set(NAMES) and pages == 3
