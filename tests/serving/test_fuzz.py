"""Schema-driven fuzzing of the running service from its own OpenAPI document (`make test-slow`).

Invariant: whatever the input, no 5xx, and answers conform to the documented schema. Schemathesis
generates the cases from /docs.json (BentoML's, which includes the mounted GET/PUT/DELETE routes).
"""

from __future__ import annotations

import pytest
import schemathesis
from fuzz_plan import SKIP, checks_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mirror_server import Server

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 40


def test_no_server_errors_and_schema_conformant_answers(server: Server):
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json").exclude(path_regex=SKIP)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for op in operations:
        try:
            fuzz_operation(server, op.as_strategy(), checks_for(op.path))
        except Exception as exc:  # show the server's side of a failure
            log = server.log_text()
            raise AssertionError(f"{op.method.upper()} {op.path}: {exc}\n--- server log ---\n"
                                 f"{log[log.rfind('Traceback'):][:4000]}") from exc


def fuzz_operation(server: Server, strategy: st.SearchStrategy, checks: list) -> None:
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    @given(case=strategy)
    def fuzz(case) -> None:  # noqa: ANN001 - a schemathesis Case
        case.call_and_validate(base_url=server.url, headers=server.headers("admin-key"),
                               checks=checks)

    fuzz()
