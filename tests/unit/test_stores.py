"""Stores on one node's disk are named, and refused on a cluster that spans machines."""

import pytest
from typer.testing import CliRunner

from maas.cli import app
from maas.config import parse_config
from maas.stores import NodeLocalStores, node_local_stores, require_shared_stores

pytestmark = pytest.mark.unit
SHARED = {"access": {"store": "postgresql+psycopg://maas:pw@db:5432/access"},
          "tracking": {"uri": "http://mlflow:5000"}}


def _cfg(tmp_path, **extra):
    return parse_config({"state_dir": str(tmp_path), "models": [{"name": "m"}], **extra})


def test_the_default_stores_are_on_this_machines_disk(tmp_path):
    local = node_local_stores(_cfg(tmp_path))
    assert [entry.split(" ")[0] for entry in local] == ["access.store", "tracking.uri"]
    assert "database and artifacts" in local[1]
    require_shared_stores(_cfg(tmp_path), machines=1)  # one machine: fine
    with pytest.raises(NodeLocalStores, match="spans 2 machines.*postgresql") as refused:
        require_shared_stores(_cfg(tmp_path), machines=2)
    assert refused.value.status == 409


def test_postgresql_and_an_mlflow_server_are_shared(tmp_path):
    assert node_local_stores(_cfg(tmp_path, **SHARED)) == []
    require_shared_stores(_cfg(tmp_path, **SHARED), machines=3)
    # A tracking database on a server still leaves MLflow's artifacts on this node.
    on_db = SHARED | {"tracking": {"uri": "postgresql+psycopg://maas:pw@db:5432/mlflow"}}
    (entry,) = node_local_stores(_cfg(tmp_path, **on_db))
    assert entry.startswith("tracking.uri") and "its artifacts on" in entry


def test_a_payload_log_needs_a_folder_every_node_mounts(tmp_path):
    logged = {"models": [{"name": "m", "agreement": {
        "license": "MIT", "allowed_uses": ["x"], "data_usage": {"log_payloads": True}}}]}
    (entry,) = node_local_stores(parse_config({"state_dir": str(tmp_path), **SHARED, **logged}))
    assert entry.startswith("access.payload_dir (unset: the payloads of m")
    shared = SHARED | {"access": SHARED["access"] | {"payload_dir": "/mnt/shared/payloads"}}
    assert node_local_stores(parse_config({"state_dir": str(tmp_path), **shared,
                                           **logged})) == []


def test_validate_names_the_one_machine_stores(tmp_path):
    path = tmp_path / "deploy.yaml"
    path.write_text(f"state_dir: {tmp_path}\nmodels:\n  - name: m\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "One machine only: access.store" in result.output


def test_answers_wait_for_their_usage_where_nodes_share_a_store(tmp_path):
    """access.usage_durable unset: on with PostgreSQL (several nodes, any of which may be lost
    on its own), off with SQLite (one machine); set, as set."""
    from maas.app_args import access_args

    assert access_args(_cfg(tmp_path)).usage_durable is False
    assert access_args(_cfg(tmp_path, **SHARED)).usage_durable is True
    off = SHARED | {"access": SHARED["access"] | {"usage_durable": False}}
    assert access_args(_cfg(tmp_path, **off)).usage_durable is False
    assert access_args(_cfg(tmp_path, access={"usage_durable": True})).usage_durable is True
