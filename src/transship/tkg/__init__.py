"""Tanzu Kubernetes Grid knowledge: the BOM chain, TKG's settings and its CA form.

`bom` reads TKG/TKR BOMs and compatibility documents offline; `release` reads a release from a
registry as TKG does; `config` writes the `TKG_CUSTOM_IMAGE_REPOSITORY*` settings; `ca` is
TKG's one-line CA form; `env` takes TKG's variables as destination defaults. The core
(engine, remote, layout, reference, manifest) imports nothing from here.
"""
