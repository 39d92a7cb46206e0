"""transship: bring container images into air-gapped OCI registries, byte for byte."""

__version__ = "0.1.0"
