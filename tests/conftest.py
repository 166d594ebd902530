"""Shared test setup. Ray reads RAY_AUTH_MODE when it is first imported: set it before that."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
