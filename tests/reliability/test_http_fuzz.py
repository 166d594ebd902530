"""schemathesis against the OpenAPI documents that the served apps publish: generated requests,
valid and invalid, to every route of a model app and of the server app. None may get a 5xx,
and every answer must match what the document declares (status, content type, body schema)."""

from collections import Counter

import pytest
import requests

from maas.config import ModelConfig
from maas.serving import base_url, deploy_model, model_app_name, model_route, wait_for_version
from tests.conftest import register_versions

pytestmark = pytest.mark.reliability
NAME = "fuzzed"
CASES_PER_OPERATION = 200  # the infer routes get them all; routes with few inputs run out sooner
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


def _fuzz(base: str, outcomes: Counter, failures: list[str]) -> None:
    """Every operation of the document at ``base``/openapi.json, positive and negative cases."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.core.failures import FailureGroup
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            strategy = (operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
                        | operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))

            @settings(max_examples=CASES_PER_OPERATION, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=strategy)
            def run(case):
                response = case.call(base_url=base, session=session, timeout=30)
                outcomes[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} {case.body!r:.300} -> "
                                    f"{response.status_code}: {response.text[:300]}")
                try:
                    # A schema-valid body may still be refused with 400: JSON Schema cannot
                    # say that a tensor's data holds prod(shape) values of the model's input.
                    case.validate_response(response, excluded_checks=[positive_data_acceptance])
                except FailureGroup as exc:  # a finding: collected, reported at the end
                    failures.append(f"{case.method} {case.formatted_path} -> "
                                    f"{response.status_code}: {str(exc)[:400]}")

            run()


def test_generated_requests_get_no_5xx_and_match_the_documents(served, figures):
    outcomes: Counter = Counter()
    failures: list[str] = []
    _fuzz(served["model"], outcomes, failures)
    _fuzz(served["server"], outcomes, failures)
    sent = sum(outcomes.values())
    server_errors = sum(n for status, n in outcomes.items() if status >= 500)
    figures.append({"test": "schemathesis", "fault": "generated valid and invalid requests",
                    "load": f"every route of a model app and the server app; statuses "
                            f"{dict(sorted(outcomes.items()))}",
                    "sent": sent, "failed": server_errors + len(failures), "retries": 0,
                    "recovery_s": 0.0, "command": "make test-reliability"})
    assert not failures, "\n".join(failures[:10])
    assert sent >= WANT_CASES, outcomes
