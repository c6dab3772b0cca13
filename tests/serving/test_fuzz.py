"""Schema-driven fuzzing of the running service from its own OpenAPI document (`make test-slow`).

Invariants: whatever the input, no 5xx, and answers conform to the documented schema. Schemathesis
generates the cases from /docs.json (BentoML's, which includes the mounted GET/PUT/DELETE routes); the
operations that look an id up also get cases built on ids that exist (fuzz_plan.py), and must answer 2xx
in a good share of them: otherwise only their 404 would ever be fuzzed, never the answer that matters.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from fuzz_plan import CHECKS, KNOWN_ID_OPERATIONS, SKIP, cases, label_of, prepare
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mirror_server import Server
from schemathesis.core.failures import FailureGroup

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 40
#: Least share of 2xx answers, over all cases, of these operations (with generated ids alone it is 0)
MIN_SHARE_2XX = 0.25
#: The operations whose success paths generated ids never reached
MUST_SUCCEED = {"POST /similar_items", "POST /next_best_action", "PUT /consent", "GET /profiles/{profile_id}"}


def test_no_server_errors_schema_conformant_answers_and_success_paths(server: Server):
    ids = prepare(server)
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json").exclude(path_regex=SKIP)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    failures: dict[str, str] = {}  # every operation is fuzzed, so one failure does not hide another
    shares: dict[str, float] = {}
    for op in operations:
        try:
            status = fuzz_operation(server, cases(op, ids))
        except (Exception, FailureGroup) as exc:  # a BaseExceptionGroup: `Exception` alone misses it
            log = server.log_text()
            start = log.rfind("Traceback")
            excerpt = log[start:][:4000] if start >= 0 else log[-4000:]
            failures[label_of(op)] = f"{exc}\n--- server log ---\n{excerpt}"
            continue
        if label_of(op) in KNOWN_ID_OPERATIONS:
            shares[label_of(op)] = round(status["2xx"] / sum(status.values()), 3)
    assert not failures, "\n\n".join([*(f"{label}: {text}" for label, text in failures.items()),
                                       f"2xx shares of the others: {shares}"])
    assert set(shares) >= MUST_SUCCEED, sorted(shares)
    assert all(shares[label] >= MIN_SHARE_2XX for label in MUST_SUCCEED), shares


def fuzz_operation(server: Server, strategy: st.SearchStrategy) -> Counter[str]:
    """Every case sent and checked; the answers counted by status class."""
    status: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, derandomize=True)  # the same cases every run: a share that moves is the server's
    @given(drawn=strategy)
    def fuzz(drawn) -> None:  # noqa: ANN001 - (a schemathesis Case, whether it was built on known ids)
        case, _known = drawn
        headers = server.headers("admin-key")
        response = case.call(base_url=server.url, headers=headers, timeout=60)
        status[f"{response.status_code // 100}xx"] += 1
        case.validate_response(response, checks=list(CHECKS), headers=headers)

    fuzz()
    return status
