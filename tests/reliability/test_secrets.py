"""No secret in any log or error body: API keys (good, wrong, revoked) sent to a gated app,
then every file of the Ray session's logs and of the state dir searched for them and for the
Ray token."""

from pathlib import Path

import pytest
import requests

from maas.access import AccessStore, onboard
from maas.config import DeployConfig
from serve_apps.deploy import deploy_model, wait_for_version
from maas.routes import SERVER_APP, model_app_name
from tests.conftest import delete_apps, files_containing, register_versions, session_token

pytestmark = pytest.mark.reliability
NAME = "secretive"


def test_no_secret_reaches_a_log_or_an_error_body(deploy_cfg, tmp_path_factory, figures):
    import ray

    state = tmp_path_factory.mktemp("secrets-state")
    data = deploy_cfg.model_dump(mode="json") | {
        "state_dir": str(state), "access": {"enabled": True, "refresh_s": 0.5},
        "models": [{"name": NAME, "agreement": {
            "license": "MIT", "allowed_uses": ["testing"],
            "data_usage": {"log_payloads": True, "redaction": "digest"}}}]}
    cfg = DeployConfig.model_validate(data)
    _, splits = register_versions(cfg, NAME, [0], tmp_path_factory.mktemp("secrets"))
    store = AccessStore(cfg.access_store)
    key, _, _ = onboard(store, list(cfg.models), "tight-co", "test")
    revoked, revoked_record = store.create_key("tight-co", [NAME])
    store.revoke(revoked_record.key_id)
    wrong = key[:-6] + "AAAAAA"
    url = deploy_model(cfg, cfg.model(NAME))
    try:
        wait_for_version(cfg, cfg.model(NAME), 1)
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                            "data": splits.x_test[0].tolist()}]}
        sent, statuses = 0, set()
        for bearer in (key, wrong, revoked, f"{key} {key}", key + "x"):
            for _ in range(3):
                reply = requests.post(url, json=body, timeout=30,
                                      headers={"Authorization": f"Bearer {bearer}"})
                sent += 1
                statuses.add(reply.status_code)
                for secret in (key, wrong, revoked):
                    assert secret.split("_", 2)[2] not in reply.text
        assert statuses == {200, 401}
        logs = Path(ray._private.worker._global_node.get_session_dir_path())
        secrets = [s.split("_", 2)[2].encode() for s in (key, wrong, revoked)]
        secrets.append(session_token().encode())
        leaks = {s[:6]: files_containing([logs, state], s) for s in secrets}
    finally:
        delete_apps(model_app_name(NAME), SERVER_APP)
    figures.append({"test": "secrets in logs", "fault": "good, wrong, revoked, doubled keys",
                    "load": f"{sent} requests; Ray session logs and state dir searched",
                    "sent": sent, "failed": sum(len(v) for v in leaks.values()), "retries": 0,
                    "recovery_s": 0.0, "command": "make test-reliability"})
    assert all(not files for files in leaks.values()), leaks
