"""From command-line settings to endpoints: one `Registry` per host and side, reused.

Source and destination sides have their own CA, TLS and credential settings (as skopeo's
`--src-*` / `--dest-*`), and the option names travel into error hints so a message can say
exactly which flag fixes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from transship.manifeststore import default_store
from transship.remote.auth import Credentials, lookup_docker_config, parse_creds
from transship.remote.registry import Registry, RegistryOptions
from transship.remote.tls import CABundle, load_ca


@dataclass
class SideSettings:
    """What the user said about one side (source or destination)."""

    side: str  # "src" or "dest"
    ca: str | None = None
    insecure: bool = False
    plain_http: bool = False
    creds: str | None = field(default=None, repr=False)
    max_connections: int = 16
    retries: int = 5
    chunk_size: int | None = None

    #: where `ca` came from, named in its errors (default `--SIDE-ca`)
    ca_from: str | None = None

    def ca_bundle(self) -> CABundle | None:
        given_as = self.ca_from or f"--{self.side}-ca"
        return load_ca(self.ca, given_as=given_as) if self.ca else None

    def credentials(self) -> Credentials | None:
        """The credentials given for this side (`--SIDE-creds`): with them, no Docker config
        is read and no credential helper run for this side."""
        if self.creds:
            return parse_creds(self.creds, f"--{self.side}-creds")
        return None

    def credential_lookup(self, host: str) -> Callable[[], Awaitable[Credentials | None]]:
        """The Docker config lookup for `host`, run by the transport only once the registry
        asks for credentials."""
        return partial(lookup_docker_config, host)


class RegistryPool:
    """Lazily opened registries for one side; closing the pool closes them all."""

    def __init__(self, settings: SideSettings) -> None:
        self.settings = settings
        self._ca = settings.ca_bundle()  # validated up front: a bad CA is a usage error
        self._credentials = settings.credentials()  # a malformed --SIDE-creds, too
        self._registries: dict[str, Registry] = {}
        # a source's manifests are kept across runs (`plan`, then `copy --plan`); a
        # destination's never: what it holds is asked of it
        self._manifest_store = default_store() if settings.side == "src" else None

    def get(self, host: str) -> Registry:
        registry = self._registries.get(host)
        if registry is None:
            s = self.settings
            options = RegistryOptions(
                ca=self._ca,
                verify_tls=not s.insecure,
                plain_http=s.plain_http,
                credentials=self._credentials,
                credential_lookup=s.credential_lookup(host),
                max_connections=s.max_connections,
                retries=s.retries,
                ca_option=f"--{s.side}-ca",
                insecure_option=f"--{s.side}-insecure",
                plain_http_option=f"--{s.side}-plain-http",
                creds_option=f"--{s.side}-creds",
                destination=s.side == "dest",
                manifest_store=self._manifest_store,
            )
            if s.chunk_size:
                options.chunk_size = s.chunk_size
            registry = Registry(host, options)
            self._registries[host] = registry
        return registry

    def registry_of(self, endpoint: object) -> Registry | None:
        """The registry this pool opened that is `endpoint`, for a wing that talks to that
        registry's own API (Harbor's); None for any other endpoint (a layout, the other side)."""
        for registry in self._registries.values():
            if registry is endpoint:
                return registry
        return None

    async def close(self) -> None:
        for registry in self._registries.values():
            await registry.close()
