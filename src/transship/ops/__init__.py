"""Use cases: what each command does, as functions that return results and raise typed errors.

Nothing here prints or reads options: `transship.commands` turns options into calls of these
and renders what they return. Progress reaches the caller through the engine's `Observer`.
"""
