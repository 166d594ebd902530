"""The ``maas`` command line (``maas = "maas.cli:app"``): one module per group of commands.

The only part of the library that may start a job (``maas run`` runs ``jobs.pipeline``);
tests/unit/test_layering.py holds the rest of ``maas`` to that.
"""

from maas.cli.app import app

__all__ = ["app"]
