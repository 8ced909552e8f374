"""embedserve: a self-hosted text-embedding inference server."""

__version__ = "0.1.0"
