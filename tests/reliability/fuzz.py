"""schemathesis over a served OpenAPI document: generated requests, valid and invalid, to
every operation; a 5xx or an answer the document does not declare is a finding."""

from collections import Counter

import requests

CASES_PER_OPERATION = 200  # the infer routes get them all; routes with few inputs run out sooner


def fuzz_document(base: str, outcomes: Counter, failures: list[str],
                  headers: dict[str, str] | None = None,
                  cases: int = CASES_PER_OPERATION, prepare=None, tag: str | None = None) -> None:
    """Every operation of the document at ``base``/openapi.json (those tagged ``tag``, when
    given), positive and negative cases, sent with ``headers``; statuses are counted into
    ``outcomes``, findings into ``failures``. ``prepare(case)``, when given, may edit each
    case before it is sent (e.g. to name a model that exists, which no generator could
    guess)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.core.failures import FailureGroup
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    if tag is not None:
        schema = schema.include(tag=tag)
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            strategy = (operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
                        | operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))

            @settings(max_examples=cases, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=strategy)
            def run(case):
                if prepare is not None:
                    prepare(case)
                response = case.call(base_url=base, session=session, timeout=30, headers=headers)
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
                                    f"{response.status_code}: {str(exc)[:1500]}")

            run()
