"""maas: model as a service on Ray. The library shared by jobs/, serve_apps/ and the CLI."""

__version__ = "0.1.0"
