"""The Harbor options of `copy` and `load`, and what they print (the work is `transship.harbor`).

`--create-projects` (with `--project-public`, `--project-quota`) makes missing destination
projects; `--preflight` without it lists them, each with the command that creates it. A push
refused over a project's quota ends with one line naming the project, its limit and the bytes
still to send.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from transship.connect import RegistryPool
from transship.engine import CopyTask, TaskResult
from transship.errors import UsageError
from transship.harbor.api import parse_quota
from transship.harbor.projects import MissingProjectsError, ProjectSettings, ensure_projects
from transship.harbor.quota import explain_full_projects, install_quota_readers

F = TypeVar("F", bound=Callable[..., Any])


def project_options(func: F) -> F:
    options = [
        click.option(
            "--create-projects",
            is_flag=True,
            help="On Harbor, create destination projects that do not exist (POST "
            "/api/v2.0/projects with the destination credentials).",
        ),
        click.option(
            "--project-public",
            is_flag=True,
            help="With --create-projects: make the new projects public (default private).",
        ),
        click.option(
            "--project-quota",
            metavar="SIZE",
            help="With --create-projects: storage quota of new projects (10G, 500M; -1 none).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def project_settings(kwargs: dict[str, Any]) -> ProjectSettings:
    create = bool(kwargs.pop("create_projects", False))
    public = bool(kwargs.pop("project_public", False))
    quota_text = kwargs.pop("project_quota", None)
    if (public or quota_text) and not create:
        raise UsageError("--project-public and --project-quota apply with --create-projects")
    quota = parse_quota(quota_text) if quota_text else None
    return ProjectSettings(create=create, public=public, storage_limit=quota)


async def before_push(
    task_phases: Sequence[Sequence[CopyTask]],
    settings: ProjectSettings,
    dests: RegistryPool,
    *,
    preflight: bool,
    quiet: bool,
) -> None:
    """The Harbor wing between building tasks and the engine: quota readers on every
    destination; projects checked (and made) when asked to (`--create-projects`), or listed
    with the command that makes them (`--preflight`). The vendor-neutral preflight is
    `commands.common.before_engine`'s, after this."""
    install_quota_readers((t.dest for tasks in task_phases for t in tasks), dests.registry_of)
    if settings.create or preflight:
        await _ensure_projects(task_phases, settings, dests, quiet=quiet)


async def _ensure_projects(
    task_phases: Sequence[Sequence[CopyTask]],
    settings: ProjectSettings,
    dests: RegistryPool,
    *,
    quiet: bool,
) -> None:
    report = await ensure_projects(task_phases, settings, dests.registry_of)
    for host in report.other_hosts if settings.create and not quiet else ():
        print(
            f"transship: {host} is not Harbor (its API did not answer as Harbor's): "
            "--create-projects has nothing to create there",
            file=sys.stderr,
        )
    for host, name in report.created if not quiet else ():
        print(f"transship: created Harbor project '{name}' on {host}", file=sys.stderr)
    for host, name in report.raced if not quiet else ():
        print(f"transship: Harbor project '{name}' on {host} appeared meanwhile", file=sys.stderr)
    if report.missing:
        for missing in report.missing:
            print(
                f"transship: preflight: Harbor project '{missing.name}' does not exist on "
                f"{missing.host}; create it with: {missing.command}",
                file=sys.stderr,
            )
        names = ", ".join(f"'{m.name}'" for m in report.missing)
        raise MissingProjectsError(
            f"preflight: {len(report.missing)} Harbor project(s) missing: {names}",
            hint="rerun with --create-projects, or create them with the commands above",
        )


async def after_push(results: list[TaskResult]) -> None:
    """The one line per project that ran out of quota (a single image's error says it)."""
    lines = await explain_full_projects(results)
    if len(results) > 1:
        for line in lines:
            print(f"transship: error: {line}", file=sys.stderr)
