"""Harbor projects for a copy: find the missing ones, create them when asked.

Harbor does not create a project on push (goharbor/harbor #6892); a push into a missing one is
refused as if permission were lacking. Before moving bytes, this use case looks every
destination project up (`HEAD /api/v2.0/projects?project_name=`) and, with `--create-projects`,
creates the missing ones (`POST /api/v2.0/projects`). It never prints: it returns what it found
and did, and raises typed errors.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transship.engine import CopyTask
from transship.errors import ExitCode, TransshipError
from transship.harbor.api import HarborAPI, RegistryOf, project_body
from transship.remote.registry import Registry


@dataclass(frozen=True)
class ProjectSettings:
    """`--create-projects`, `--project-public`, `--project-quota` (bytes, -1 unlimited)."""

    create: bool = False
    public: bool = False
    storage_limit: int | None = None


@dataclass(frozen=True)
class MissingProject:
    host: str
    name: str
    command: str  # what creates it, for a person to run


@dataclass
class ProjectReport:
    harbor_hosts: list[str] = field(default_factory=list)
    other_hosts: list[str] = field(default_factory=list)  # answered, but not as Harbor
    created: list[tuple[str, str]] = field(default_factory=list)  # (host, project)
    raced: list[tuple[str, str]] = field(default_factory=list)  # 409: someone else made it
    missing: list[MissingProject] = field(default_factory=list)


class MissingProjectsError(TransshipError):
    """Destination projects do not exist on Harbor and were not to be created."""

    exit_code = ExitCode.NOT_FOUND


def destination_projects(
    task_phases: Sequence[Sequence[CopyTask]], registry_of: RegistryOf
) -> dict[Registry, set[str]]:
    """Registry destinations and the projects (first path component) the tasks push into."""
    found: dict[int, tuple[Registry, set[str]]] = {}
    for tasks in task_phases:
        for task in tasks:
            dest = registry_of(task.dest)
            if dest is not None and "/" in task.dest_repository:
                found.setdefault(id(dest), (dest, set()))[1].add(task.dest_repository.split("/")[0])
    return {registry: projects for registry, projects in found.values()}


def create_command(api: HarborAPI, base: str, name: str, settings: ProjectSettings) -> str:
    """A curl command that creates project `name` (it prompts for the password)."""
    body = project_body(name, public=settings.public, storage_limit=settings.storage_limit)
    user = api.user or "ADMIN_USER"
    options = api.registry.options
    trust: list[str] = []  # what transship was told to trust, curl is told too
    if not options.verify_tls:
        trust = ["-k"]
    elif options.ca is not None:
        given = Path(options.ca.origin)
        trust = ["--cacert", shlex.quote(str(given) if given.is_file() else "CA.crt")]
    return " ".join(
        [
            "curl",
            *trust,
            "-u",
            shlex.quote(user),
            "-X",
            "POST",
            shlex.quote(f"{base}/api/v2.0/projects"),
            "-H",
            "'Content-Type: application/json'",
            "-d",
            shlex.quote(json.dumps(body, separators=(",", ":"))),
        ]
    )


async def ensure_projects(
    task_phases: Sequence[Sequence[CopyTask]], settings: ProjectSettings, registry_of: RegistryOf
) -> ProjectReport:
    """Look up every destination project on each Harbor destination; create the missing ones
    if `settings.create`, else list them with the command that creates each."""
    report = ProjectReport()
    for registry, projects in destination_projects(task_phases, registry_of).items():
        api = HarborAPI(registry)
        if await api.detect() is None:
            report.other_hosts.append(registry.host)
            continue  # not Harbor: repositories appear on push there
        report.harbor_hosts.append(registry.host)
        names = sorted(projects)
        exists = await asyncio.gather(*(api.project_exists(n) for n in names))
        missing = [n for n, present in zip(names, exists, strict=True) if not present]
        if not settings.create:
            base = await registry.transport.base_url()
            report.missing += [
                MissingProject(registry.host, n, create_command(api, base, n, settings))
                for n in missing
            ]
            continue
        for name in missing:
            made = await api.create_project(
                name, public=settings.public, storage_limit=settings.storage_limit
            )
            (report.created if made else report.raced).append((registry.host, name))
    return report
