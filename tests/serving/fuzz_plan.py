"""What the schema fuzzing covers, shared by tests/serving/test_fuzz.py and benchmarks/fuzz.py."""

from __future__ import annotations

from typing import Any

from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

#: Routes left out: the background task plumbing (needs a task id from a submit; submit itself is
#: fuzzed), model reload (slow; tests/serving/test_reload.py) and the probes (no input).
SKIP = r"^/(score_segment/(status|get|retry|cancel)|admin/reload|metrics|livez|healthz|readyz)$"


def checks_for(path: str) -> list[Any]:
    """No 5xx anywhere; schema conformance too, except on BentoML's own task-submit answer, which lacks
    fields its OpenAPI marks required."""
    return [not_a_server_error] if path.endswith("/submit") else [not_a_server_error, response_schema_conformance]
