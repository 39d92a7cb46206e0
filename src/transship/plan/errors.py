"""The planning layer's error types.

Planning reads files people give us (BOMs, image lists, old scripts, plans), so every failure is a
usage error: one line naming the file and line or YAML path, what is wrong and what to do.
"""

from __future__ import annotations

from transship.errors import IntegrityError, UsageError


class PlanError(UsageError):
    """An input file for planning is unreadable, malformed or inconsistent."""


class BundleError(IntegrityError):
    """An image labelled as an imgpkg bundle (or a BOM image) whose content cannot be read."""
