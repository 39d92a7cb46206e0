"""`--shard I/N`: one of N disjoint parts of a plan, split by destination repository.

N hosts (the pods of a Kubernetes Indexed Job) each run the same command on the same plan with
their own `I`; together they copy the plan once. A destination repository is the unit: an
index's children, a bundle's referenced images, its ImageLocations record and every signature
or referrer are planned into the repository of what they belong to, so whatever a repository
needs is in that repository's shard and the phase order (bundle after its images) holds on one
host.

Every host must compute the same assignment from the same input, so it depends on nothing but
the plan:

- `bytes` (a plan that records every entry's size, as `transship plan` writes it): balanced by
  bytes. Repositories in decreasing order of their entries' sizes (ties by name) each go to
  the shard with the fewest bytes so far (ties to the lowest index): the greedy "longest job
  first" rule, within 4/3 of the best split.
- `hash` (an image list, a script, a plan without sizes): shard = the first 8 bytes of
  sha256(repository) mod N. Stable: a repository keeps its shard when others are added.

`I` counts from 1 (`1/3`, `2/3`, `3/3`); a Job's 0-based `JOB_COMPLETION_INDEX` is `I - 1`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from transship.errors import UsageError
from transship.plan.model import Plan, PlanEntry

Assignment = Literal["bytes", "hash"]
_SHARD = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*")
#: more shards than this is a typo, not a fleet
MAX_SHARDS = 10_000


@dataclass(frozen=True)
class Shard:
    """Part `index` (1-based) of `count`."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N` with 1 ≤ I ≤ N; anything else is a usage error that says what to give."""
        found = _SHARD.fullmatch(text)
        if found is None:
            raise UsageError(f"--shard {text!r}: give I/N, e.g. 2/4 (part I of N, counted from 1)")
        index, count = int(found.group(1)), int(found.group(2))
        if not 1 <= count <= MAX_SHARDS:
            raise UsageError(f"--shard {text!r}: N must be 1 to {MAX_SHARDS}")
        if not 1 <= index <= count:
            raise UsageError(
                f"--shard {text!r}: I must be 1 to {count} (counted from 1; a Kubernetes "
                "JOB_COMPLETION_INDEX is I-1)"
            )
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def assignment_of(plan: Plan) -> Assignment:
    """`bytes` when every entry's size is known (a resolved plan file), else `hash`."""
    sized = plan.entries and all(e.size is not None for e in plan.entries)
    return "bytes" if sized else "hash"


def repository_weights(entries: Iterable[PlanEntry]) -> dict[str, int]:
    """Bytes per destination repository: the sum of its entries' sizes (a blob two tags share
    counts twice: an estimate of the work, the same on every host)."""
    weights: dict[str, int] = {}
    for entry in entries:
        weights[entry.destination] = weights.get(entry.destination, 0) + (entry.size or 0)
    return weights


def hash_shard(repository: str, count: int) -> int:
    """The 1-based shard of `repository` by a stable hash (not Python's salted `hash`)."""
    digest = hashlib.sha256(repository.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def balanced(weights: dict[str, int], count: int) -> dict[str, int]:
    """Repository → 1-based shard, greedy by bytes: heaviest first, to the lightest shard."""
    loads = [0] * count
    out: dict[str, int] = {}
    for repository in sorted(weights, key=lambda r: (-weights[r], r)):
        lightest = min(range(count), key=lambda i: (loads[i], i))
        loads[lightest] += weights[repository]
        out[repository] = lightest + 1
    return out


def assign(plan: Plan, count: int) -> dict[str, int]:
    """Every destination repository of `plan` → its 1-based shard of `count`."""
    if assignment_of(plan) == "bytes":
        return balanced(repository_weights(plan.entries), count)
    return {repo: hash_shard(repo, count) for repo in {e.destination for e in plan.entries}}


@dataclass(frozen=True)
class ShardSplit:
    """A plan cut for one shard: its part, the others' entries, and how it was cut."""

    shard: Shard
    assignment: Assignment
    part: Plan
    others: tuple[PlanEntry, ...]  # what the other shards copy (for the shared-blob count)
    whole_unique_bytes: int | None = None  # the whole plan's bytes, each blob once

    @property
    def estimated_unique_bytes(self) -> int | None:
        """This part's bytes, each blob once, for the progress total and its ETA: the whole
        plan's unique bytes in the proportion of this part's sizes to the whole's. An
        estimate (a blob other shards need too counts in each), which the total corrects as
        images finish; the sum of the sizes would count a shared base layer once per image.
        None without sizes."""
        if self.whole_unique_bytes is None or self.assignment != "bytes":
            return None
        part = sum(e.size or 0 for e in self.part.entries)
        whole = part + sum(e.size or 0 for e in self.others)
        return round(self.whole_unique_bytes * part / whole) if whole > 0 else None

    @property
    def repositories(self) -> int:
        return self.part.totals.repositories

    @property
    def planned_bytes(self) -> int | None:
        """This part's bytes by the plan's sizes (each entry whole), when they are known."""
        if self.assignment != "bytes":
            return None
        return sum(repository_weights(self.part.entries).values())

    def describe(self) -> str:
        size = self.planned_bytes
        weight = "" if size is None else f", {size} bytes planned"
        return (
            f"shard {self.shard}: {len(self.part.entries)} of "
            f"{len(self.part.entries) + len(self.others)} entries in {self.repositories} "
            f"repositories{weight} (split by {self.assignment})"
        )


def split(plan: Plan, shard: Shard) -> ShardSplit:
    """This shard's part of `plan` (same prefix and sources; gaps stay with every part, so a
    partial plan never looks complete). The part's `unique_bytes` is unknown: the plan's
    figure counts every shard (`estimated_unique_bytes` is this part's share of it)."""
    owner = assign(plan, shard.count)
    mine = tuple(e for e in plan.entries if owner[e.destination] == shard.index)
    others = tuple(e for e in plan.entries if owner[e.destination] != shard.index)
    part = replace(plan, entries=mine, unique_bytes=None)
    return ShardSplit(shard, assignment_of(plan), part, others, plan.unique_bytes)
