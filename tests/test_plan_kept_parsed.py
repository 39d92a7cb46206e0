"""A large plan is kept parsed (as JSON, under the sha256 of its text): its rerun reads no YAML,
an edited plan or a damaged file is parsed afresh, and what JSON cannot hold is never kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from transship.errors import PlanError
from transship.plan import _yaml
from transship.plan._yaml import KEEP_FROM_CHARS, load_yaml
from transship.plan.model import Plan, PlanEntry


def _plan_text(entries: int = 200) -> str:
    plan = Plan(
        tuple(
            PlanEntry.create(
                f"reg.example/src/app{i}:v1",
                f"dst.example/mirror/app{i}",
                source_digest=None,
            )
            for i in range(entries)
        )
    )
    text = plan.to_yaml()
    assert len(text) >= KEEP_FROM_CHARS
    return text


def _kept(cache: Path) -> list[Path]:
    return sorted((cache / "transship" / "parsed").glob("*.json"))


def _no_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str, name: str, **kw: object) -> object:
        raise AssertionError("parsed the YAML again")

    monkeypatch.setattr(_yaml, "_parse", refuse)


def test_a_rerun_of_the_same_plan_reads_it_back_without_parsing(
    own_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _plan_text()
    first = load_yaml(text, "plan.yaml", keep=True)
    assert len(_kept(own_cache_dir)) == 1
    _no_yaml(monkeypatch)
    again = load_yaml(text, "plan.yaml", keep=True)
    assert again == first  # same file name, path and value
    assert Plan.from_dict(again.value, "plan.yaml") == Plan.from_dict(first.value, "plan.yaml")


def test_an_edited_plan_or_a_damaged_file_is_parsed_afresh(own_cache_dir: Path) -> None:
    text = _plan_text()
    load_yaml(text, "plan.yaml", keep=True)
    edited = text.replace("app7:", "app7b:", 1)
    assert load_yaml(edited, "plan.yaml", keep=True).value != load_yaml(text, "p").value
    assert len(_kept(own_cache_dir)) == 2
    for kept in _kept(own_cache_dir):  # one byte of the body changed: the checksum fails
        data = bytearray(kept.read_bytes())
        data[-20] ^= 1
        kept.write_bytes(bytes(data))
    assert load_yaml(text, "plan.yaml", keep=True).value == load_yaml(text, "p").value


def test_only_large_documents_json_holds_exactly_are_kept(own_cache_dir: Path) -> None:
    load_yaml("a: 1\n", "small.yaml", keep=True)
    load_yaml(_plan_text(), "plan.yaml")  # not asked to keep
    padding = "# " + "x" * 78 + "\n"
    dated = "created: 2026-11-30\n" + padding * (KEEP_FROM_CHARS // len(padding) + 1)
    node = load_yaml(dated, "dated.yaml", keep=True)
    assert type(node.value).__name__ == "dict" and not isinstance(node.value["created"], str)
    assert _kept(own_cache_dir) == []


def test_no_cache_keeps_nothing(own_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSSHIP_NO_CACHE", "1")
    load_yaml(_plan_text(), "plan.yaml", keep=True)
    assert not (own_cache_dir / "transship" / "parsed").exists()


def test_a_bad_plan_is_still_refused_in_one_line(own_cache_dir: Path) -> None:
    text = _plan_text() + "  - [unclosed\n"
    with pytest.raises(PlanError, match=r"plan\.yaml:.*invalid YAML"):
        load_yaml(text, "plan.yaml", keep=True)
    assert _kept(own_cache_dir) == []


def test_only_the_newest_documents_stay(own_cache_dir: Path) -> None:
    text = _plan_text()
    for i in range(_yaml.KEEP_AT_MOST + 3):
        load_yaml(f"# version {i}\n{text}", "plan.yaml", keep=True)
    assert len(_kept(own_cache_dir)) == _yaml.KEEP_AT_MOST


def _age(path: Path, seconds: float) -> None:
    """Set `path`'s mtime `seconds` in the past (explicit times: no sleeps, no clock races)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_documents_beyond_the_byte_budget_go_oldest_first(
    own_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded by count only, 8 kept plans could take 8 × 64 MiB: a byte budget holds too."""
    text = _plan_text()
    load_yaml(text, "plan.yaml", keep=True)
    (first,) = _kept(own_cache_dir)
    size = first.stat().st_size
    monkeypatch.setattr(_yaml, "KEEP_BYTES", 3 * size + size // 2, raising=False)  # room for 3
    names = [first.name]
    for i in range(5):
        load_yaml(f"# v{i}\n{text}", "plan.yaml", keep=True)
        new = [p for p in _kept(own_cache_dir) if p.name not in names]
        names += [p.name for p in new]
        for path in _kept(own_cache_dir):  # older ones older still, in writing order
            _age(path, 1000 - 10 * names.index(path.name))
    left = _kept(own_cache_dir)
    assert len(left) == 3
    assert sorted(p.name for p in left) == sorted(names[-3:])


def test_a_hit_makes_the_document_the_newest(own_cache_dir: Path) -> None:
    """The plan every run rereads was evicted first (a hit left its mtime as written)."""
    text = _plan_text()
    load_yaml(text, "plan.yaml", keep=True)
    (kept,) = _kept(own_cache_dir)
    _age(kept, 10_000)
    old = kept.stat().st_mtime
    load_yaml(text, "plan.yaml", keep=True)
    assert kept.stat().st_mtime > old
    for i in range(_yaml.KEEP_AT_MOST - 1):  # a full cache, then one more: the reread stays
        load_yaml(f"# other {i}\n{text}", "plan.yaml", keep=True)
        for path in _kept(own_cache_dir):
            if path != kept:
                _age(path, 5000 - i)
    load_yaml(f"# one more\n{text}", "plan.yaml", keep=True)
    assert kept in _kept(own_cache_dir) and len(_kept(own_cache_dir)) == _yaml.KEEP_AT_MOST


def test_temporary_files_of_killed_writes_are_removed_when_stale(own_cache_dir: Path) -> None:
    text = _plan_text()
    load_yaml(text, "plan.yaml", keep=True)
    parsed = own_cache_dir / "transship" / "parsed"
    stale = parsed / f".{'a' * 64}.json.x1y2.tmp"
    fresh = parsed / f".{'b' * 64}.json.x3y4.tmp"  # another run may be writing it now
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    _age(stale, 2 * 3600)  # left two hours ago: no write takes that long
    load_yaml(f"# edited\n{text}", "plan.yaml", keep=True)
    assert not stale.exists() and fresh.exists()
    assert len(_kept(own_cache_dir)) == 2


def test_a_document_kept_from_a_read_with_repeated_keys_is_not_served_unique(
    own_cache_dir: Path,
) -> None:
    """Kept from a read that lets a key repeat (the last wins), a document must not answer a
    read with `unique_keys`, which refuses it: the key of a kept document says how it was read."""
    padding = "# " + "x" * 78 + "\n"
    text = "a: 1\na: 2\n" + padding * (KEEP_FROM_CHARS // len(padding) + 1)
    assert load_yaml(text, "doubled.yaml", keep=True).value == {"a": 2}
    assert len(_kept(own_cache_dir)) == 1
    with pytest.raises(PlanError, match=r"doubled\.yaml:2"):
        load_yaml(text, "doubled.yaml", keep=True, unique_keys=True)
