"""schemathesis against the OpenAPI documents that the served apps publish: generated requests,
valid and invalid, to every route of a model app and of the server app. None may get a 5xx,
and every answer must match what the document declares (status, content type, body schema)."""

from collections import Counter

import pytest

from maas.config import ModelConfig
from serve_apps.deploy import deploy_model, wait_for_version
from maas.routes import SERVER_APP, model_app_name, model_route
from tests.conftest import delete_apps, register_versions
from serve_apps.openapi import SERVER_TAG
from tests.reliability.fuzz import fuzz_document

pytestmark = pytest.mark.reliability
NAME = "fuzzed"
WANT_CASES = 1000


@pytest.fixture(scope="module")
def served(deploy_cfg, tmp_path_factory):

    register_versions(deploy_cfg, NAME, [0, 1], tmp_path_factory.mktemp("fuzzed"))
    model = ModelConfig(name=NAME, serve={"cpus_per_replica": 0.2})
    deploy_model(deploy_cfg, model)
    wait_for_version(deploy_cfg, model, 1)
    root = deploy_cfg.cluster.base_url
    yield {"model": f"{root}{model_route(NAME)}", "server": root}
    delete_apps(model_app_name(NAME), SERVER_APP)


def test_generated_requests_get_no_5xx_and_match_the_documents(served, figures):
    outcomes: Counter = Counter()
    failures: list[str] = []
    fuzz_document(served["model"], outcomes, failures)
    # The server's document (GET /openapi.json) covers every app; its own routes are tagged.
    fuzz_document(served["server"], outcomes, failures, tag=SERVER_TAG)
    sent = sum(outcomes.values())
    server_errors = sum(n for status, n in outcomes.items() if status >= 500)
    figures.append({"test": "schemathesis", "fault": "generated valid and invalid requests",
                    "load": f"every route of a model app and the server app; statuses "
                            f"{dict(sorted(outcomes.items()))}",
                    "sent": sent, "failed": server_errors + len(failures), "retries": 0,
                    "recovery_s": 0.0, "command": "make test-reliability"})
    assert not failures, "\n".join(failures[:10])
    assert sent >= WANT_CASES, outcomes
