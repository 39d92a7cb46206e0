"""The registry wire protocol: TLS, auth, retries and the OCI distribution API."""

from transship.remote.registry import Registry, RegistryOptions

__all__ = ["Registry", "RegistryOptions"]
