"""What the schema fuzzing covers, shared by tests/serving/test_fuzz.py and benchmarks/fuzz.py: the routes,
the checks, and cases built on ids that exist on the server, so the success paths are fuzzed too.

Schemathesis alone draws ids nobody holds: `/similar_items`, `/next_best_action`, `/consent` and
`/profiles/...` then answer 404 to every case. `cases(op, ids)` mixes its cases with ones whose ids are
drawn from `KnownIds` (the customers and items of tests/serving/mirror_server.py, plus customers and
segment exports the fuzz adds itself with `prepare`), the rest of each case still generated from the schema.
Writes (consent, contact slots, erasure) only ever get the fuzz's own customers: the server is shared with
tests that read the seeded ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from mirror_server import CUSTOMERS, N_ITEMS, Server, event, item_id, profile_id_for
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from features.schema import CUSTOMER_ID, IDENTIFIER_COLUMNS, PROFILE_ID

#: Routes left out: model reload (slow; tests/serving/test_reload.py) and the probes (no input).
SKIP = r"^/(admin/reload|metrics|livez|healthz|readyz)$"

#: Every answer: no 5xx, and the body matches the documented schema.
CHECKS: tuple[Callable[..., Any], ...] = (not_a_server_error, response_schema_conformance)

# Hypothesis never sends the same case twice, so a route whose only input is the id (GET /profiles/{id},
# the segment task routes) gets at most one known-id case per id: enough ids for a good share of cases.
#: Customers the fuzz adds and may change (consent, contact slots); never erased.
FUZZ_CUSTOMERS = tuple(f"fuzz-c{i}" for i in range(1, 51))
#: Customers the fuzz adds for DELETE /profiles to erase (each once: a second erasure is a 404).
ERASABLE_CUSTOMERS = tuple(f"fuzz-erase-{i}" for i in range(1, 151))
#: Finished segment exports the task routes can name (each one seeded customer, CSV and parquet in turn).
SEGMENT_TASKS = 12
EXPORT_WAIT_S = 60.0


@dataclass(frozen=True)
class KnownIds:
    """Ids that exist on the server under fuzz."""

    readable: tuple[str, ...]  # customer ids for reads: the server's own and the fuzz's
    writable: tuple[str, ...]  # customer ids writes may change (the fuzz's)
    erasable: tuple[str, ...]  # customer ids DELETE may erase (the fuzz's)
    items: tuple[str, ...]  # item ids the recommender knows
    task_ids: tuple[str, ...]  # finished segment exports

    def __post_init__(self) -> None:
        for name in ("readable", "writable", "erasable", "items", "task_ids"):
            if not getattr(self, name):
                raise ValueError(f"{name}: at least one id is needed")


def prepare(srv: Server, *, timeout_s: float = EXPORT_WAIT_S) -> KnownIds:
    """Add the fuzz's own customers (one view each) and SEGMENT_TASKS finished segment exports (one seeded
    customer each, one at a time: the export queue is short); the ids cases may draw from."""
    own = FUZZ_CUSTOMERS + ERASABLE_CUSTOMERS
    events = [event(f"fuzz-seed-{c}", c, "view", n % N_ITEMS, days_ago=1.0) for n, c in enumerate(own)]
    r = srv.post("/events", {"events": events}, key="write-key")
    if r.status_code != 200 or len(r.json()["accepted"]) + len(r.json()["duplicates"]) != len(events):
        raise RuntimeError(f"seeding the fuzz's customers failed: {r.status_code} {r.text[:500]}")
    tasks = []
    deadline = time.monotonic() + timeout_s
    for n in range(SEGMENT_TASKS):
        body = {"profile_ids": [profile_id_for(CUSTOMERS[n % len(CUSTOMERS)])],
                "format": ("csv", "parquet")[n % 2]}
        r = srv.post("/score_segment/submit", body)
        if r.status_code != 200:
            raise RuntimeError(f"segment submit failed: {r.status_code} {r.text[:500]}")
        task = str(r.json()["task_id"])
        while (status := srv.client.get("/score_segment/status", params={"task_id": task},
                                        headers=srv.headers()).json()["status"]) != "completed":
            if status == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"segment export {task} did not complete: {status}")
            time.sleep(0.1)
        tasks.append(task)
    return KnownIds(readable=CUSTOMERS + FUZZ_CUSTOMERS, writable=FUZZ_CUSTOMERS,
                    erasable=ERASABLE_CUSTOMERS, items=tuple(item_id(i) for i in range(N_ITEMS)),
                    task_ids=tuple(tasks))


def _with_body(case: Any, **fields: Any) -> Any:
    """The generated case with these body fields set (a copy of the body; the case is this draw's own)."""
    case.body = {**case.body, **fields}
    return case


def _with_customer(case: Any, customer_id: str) -> Any:
    """The generated case identifying the customer by this customer id only (another generated identifier
    would be looked up first when it happens to exist, or make the case about someone else)."""
    case.body = {k: v for k, v in case.body.items() if k not in IDENTIFIER_COLUMNS}
    case.body[CUSTOMER_ID] = customer_id
    return case


def _by_profile(op: Any, customers: Sequence[str]) -> st.SearchStrategy[Any]:
    """Cases for a `/profiles/{profile_id}` route naming a known person, by profile id or by customer id."""
    named = [(ident, by) for c in customers
             for ident, by in ((profile_id_for(c), PROFILE_ID), (c, CUSTOMER_ID))]
    return st.one_of([op.as_strategy(path_parameters={"profile_id": ident}, query={"by": by})
                      for ident, by in named])


def _with_json_body(op: Any) -> st.SearchStrategy[Any]:
    """The operation's cases that carry a JSON object body (BentoML documents its request bodies as
    optional, so some cases have none: those stay with the generated half)."""
    return op.as_strategy().filter(lambda case: isinstance(case.body, dict))


def _similar_items(op: Any, ids: KnownIds) -> st.SearchStrategy[Any]:
    items = st.sampled_from(ids.items)
    return st.tuples(_with_json_body(op), items).map(lambda t: _with_body(t[0], item_id=t[1]))


def _writable_customer(op: Any, ids: KnownIds) -> st.SearchStrategy[Any]:
    return st.tuples(_with_json_body(op), st.sampled_from(ids.writable)).map(lambda t: _with_customer(*t))


def _finished_task(op: Any, ids: KnownIds) -> st.SearchStrategy[Any]:
    return st.one_of([op.as_strategy(query={"task_id": t}) for t in ids.task_ids])


#: The operations that look an id up, and how their known-id cases are built.
_KNOWN_ID_BUILDERS: dict[str, Callable[[Any, KnownIds], st.SearchStrategy[Any]]] = {
    "POST /similar_items": _similar_items,
    "POST /next_best_action": _writable_customer,
    "PUT /consent": _writable_customer,
    "GET /profiles/{profile_id}": lambda op, ids: _by_profile(op, ids.readable),
    "GET /profiles/{profile_id}/export": lambda op, ids: _by_profile(op, ids.readable),
    "DELETE /profiles/{profile_id}": lambda op, ids: _by_profile(op, ids.erasable),
    "GET /score_segment/status": _finished_task,
    "GET /score_segment/get": _finished_task,
}
KNOWN_ID_OPERATIONS = frozenset(_KNOWN_ID_BUILDERS)


def label_of(op: Any) -> str:
    """`METHOD /path`, as the figures and KNOWN_ID_OPERATIONS name an operation."""
    return f"{op.method.upper()} {op.path}"


def known_id_cases(op: Any, ids: KnownIds) -> st.SearchStrategy[Any] | None:
    """Cases of this operation built on ids that exist, or None when it takes no id to look up."""
    build = _KNOWN_ID_BUILDERS.get(label_of(op))
    return None if build is None else build(op, ids)


def cases(op: Any, ids: KnownIds) -> st.SearchStrategy[tuple[Any, bool]]:
    """(case, built on known ids): schemathesis' own cases, and for the operations that look an id up,
    known-id ones too (Hypothesis picks the branch of each draw)."""
    generated = op.as_strategy().map(lambda case: (case, False))
    known = known_id_cases(op, ids)
    return generated if known is None else st.one_of(known.map(lambda case: (case, True)), generated)
