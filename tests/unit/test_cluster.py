"""Which Ray cluster maas talks to, and with which auth mode (no cluster is started)."""

import os

import pytest

from maas.cluster import configured_address, ensure_auth_mode
from maas.config import ClusterConfig

pytestmark = pytest.mark.unit


def test_ray_address_from_the_environment_wins(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    assert configured_address(ClusterConfig(address="10.0.0.5:6379")) == "10.0.0.9:6379"


def test_config_address_is_used_without_the_environment(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert configured_address(ClusterConfig(address="10.0.0.5:6379")) == "10.0.0.5:6379"
    assert configured_address(ClusterConfig()) is None


def test_auth_mode_is_made_explicit_but_never_overridden(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    ensure_auth_mode()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "k8s")
    ensure_auth_mode()
    assert os.environ["RAY_AUTH_MODE"] == "k8s"
