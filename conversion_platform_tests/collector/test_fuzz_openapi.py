"""Fuzzing the collector with schemathesis against its own `/openapi.json`, over real HTTP
on loopback: schema-conforming and schema-breaking requests for every operation, sent
with a write key; no request may produce a 5xx, and answers must match the document
(status codes, response schemas). Bounded: a few hundred requests.

schemathesis is used as a library (its strategies under `hypothesis.given`): its pytest
plugin's lazy-fixture loader does not run on pytest 9."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    response_schema_conformance,
    status_code_conformance,
)

from conversion_platform_tests.collector.conftest import (  # noqa: E402
    BACKEND_KEY,
    RunningCollector,
)

#: Not `content_type_conformance`: a request line uvicorn's HTTP parser refuses (an
#: over-long query string, say) is answered by uvicorn itself with a text/plain 400 before
#: the app sees it; every answer from the app is JSON (or the GIF and script).
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_produces_a_server_error(collector: RunningCollector, mode: GenerationMode):
    schema = schemathesis.openapi.from_url(f"{collector.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    seen: set[str] = set()

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case) -> None:  # type: ignore[no-untyped-def]
        seen.add(case.operation.label)
        headers = {"Authorization": f"Bearer {BACKEND_KEY}"}
        response = case.call(base_url=collector.url, headers=headers)
        case.validate_response(response, checks=CHECKS, headers=headers)

    fuzz()
    # Schema-breaking data exists only for operations that take input (three of them).
    expected = 5 if mode == GenerationMode.POSITIVE else 3
    assert len(seen) >= expected, f"only {sorted(seen)} were exercised"
