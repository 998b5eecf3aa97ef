"""The HTTP middleware of the API, one module each, installed by `install.install_middleware` (which
lists the order they run in, and why)."""
