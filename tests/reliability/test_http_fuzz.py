"""schemathesis against the OpenAPI documents that the served apps publish: generated requests,
valid and invalid, to every route of a model app and of the server app. None may get a 5xx,
and every answer must match what the document declares (status, content type, body schema)."""

from collections import Counter

import pytest

from maas.config import ModelConfig
from maas.serving import base_url, deploy_model, model_app_name, model_route, wait_for_version
from tests.conftest import register_versions
from tests.reliability.fuzz import fuzz_document

pytestmark = pytest.mark.reliability
NAME = "fuzzed"
WANT_CASES = 1000


@pytest.fixture(scope="module")
def served(deploy_cfg, tmp_path_factory):
    from ray import serve

    register_versions(deploy_cfg, NAME, [0, 1], tmp_path_factory.mktemp("fuzzed"))
    model = ModelConfig(name=NAME, serve={"cpus_per_replica": 0.2})
    deploy_model(deploy_cfg, model)
    wait_for_version(deploy_cfg, model, 1)
    root = base_url(deploy_cfg)
    yield {"model": f"{root}{model_route(NAME)}", "server": f"{root}/v2"}
    serve.delete(model_app_name(NAME))
    serve.delete("maas")


def test_generated_requests_get_no_5xx_and_match_the_documents(served, figures):
    outcomes: Counter = Counter()
    failures: list[str] = []
    fuzz_document(served["model"], outcomes, failures)
    fuzz_document(served["server"], outcomes, failures)
    sent = sum(outcomes.values())
    server_errors = sum(n for status, n in outcomes.items() if status >= 500)
    figures.append({"test": "schemathesis", "fault": "generated valid and invalid requests",
                    "load": f"every route of a model app and the server app; statuses "
                            f"{dict(sorted(outcomes.items()))}",
                    "sent": sent, "failed": server_errors + len(failures), "retries": 0,
                    "recovery_s": 0.0, "command": "make test-reliability"})
    assert not failures, "\n".join(failures[:10])
    assert sent >= WANT_CASES, outcomes
