"""What Harbor means when it refuses a push.

Harbor answers a push into a project that does not exist like a permission problem (404
`NAME_UNKNOWN`, or a token without push and then 401/403). The wire layer records the refused
repository on the error (`TransshipError.refused_push`); this turns that fact into advice.
The project API itself (detect, look up, create, quota) is `transship.harbor.api`.
"""

from __future__ import annotations

from transship.errors import TransshipError, register_advisor


def missing_project_advice(error: TransshipError) -> str | None:
    """ "Create the project first" for a refused push; None for anything else."""
    repository = error.refused_push
    if not repository:
        return None
    project = repository.split("/")[0]
    return (
        f"on Harbor, create the project '{project}' first (a missing project looks like "
        "this; `--create-projects` makes it through Harbor's API); otherwise ask for push "
        "rights on it"
    )


def install() -> None:
    """Let every rendered error carry Harbor's reading of it (called once by the CLI)."""
    register_advisor(missing_project_advice)
