"""Schema-driven fuzzing of the running service, counted: the figures behind tests/serving/test_fuzz.py.

Run: `.venv/bin/python benchmarks/fuzz.py [--examples N] [--seed S]` (N per operation, default 100).

Starts the real `bentoml serve` with tiny champions (tests/serving/mirror_server.py), loads its OpenAPI
document (/docs.json), leaves out the same operations as test_fuzz.py, and sends N schemathesis cases to
every other operation with the admin key. Operations that look an id up also get cases built on
ids that exist (tests/serving/fuzz_plan.py: the server's customers and items, customers and segment exports
the fuzz adds itself), so their success paths are fuzzed too. Every response is checked, and every failure
collected rather than stopping at the first: no 5xx (`not_a_server_error`) and the answer conforms to the
documented schema (`response_schema_conformance`). Per operation: cases sent, responses by status class and
the share of 2xx (of all cases and of the known-id ones), 5xx count, schema violations; the distinct failures
are listed with their request (curl) and response.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serving"))

import schemathesis  # noqa: E402
from _results import emit, record  # noqa: E402
from fuzz_plan import CHECKS, SKIP, KnownIds, cases, label_of, prepare  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from mirror_server import running_server  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

EXAMPLES_PER_OPERATION = 100
MAX_FAILURE_EXAMPLES = 20  # distinct failures reported in full (request and response)


def share_2xx(status: Counter[str] | dict[str, int]) -> float | None:
    """The share of answers in 2xx (None without answers)."""
    n = sum(status.values())
    return round(status.get("2xx", 0) / n, 3) if n else None


def fuzz_operation(url: str, headers: dict[str, str], op: Any, ids: KnownIds, examples: int, seed: int,
                   failures: list[dict[str, Any]], seen: set[tuple[str, ...]]) -> dict[str, Any]:
    """Send `examples` cases to one operation; count statuses and check failures (never raise)."""
    label = label_of(op)
    stats: dict[str, Any] = {"cases": 0, "status": Counter(), "known_id_cases": 0,
                             "known_id_status": Counter(), "5xx": 0, "schema_violations": 0,
                             "transport_errors": 0,
                             "checks": [c.__name__ for c in CHECKS]}

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              phases=[Phase.explicit, Phase.generate])
    @hypothesis_seed(seed)  # reproducible cases for a given --seed
    @given(drawn=cases(op, ids))
    def run(drawn: tuple[Any, bool]) -> None:
        case, known = drawn
        stats["cases"] += 1
        stats["known_id_cases"] += known
        try:
            response = case.call(base_url=url, headers=headers, timeout=60)
        except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
            stats["transport_errors"] += 1
            failures.append({"operation": label, "check": "transport", "title": repr(exc)[:300],
                             "request": case.as_curl_command(headers=headers, base_url=url)})
            return
        status_class = f"{response.status_code // 100}xx"
        stats["status"][status_class] += 1
        if known:
            stats["known_id_status"][status_class] += 1
        if response.status_code >= 500:
            stats["5xx"] += 1
        for check in CHECKS:
            try:
                case.validate_response(response, checks=[check], headers=headers)
            except FailureGroup as group:
                if check is response_schema_conformance:
                    stats["schema_violations"] += 1
                for failure in group.exceptions:
                    key = (label, check.__name__, str(response.status_code), failure.title)
                    if key in seen:
                        continue
                    seen.add(key)
                    failures.append({
                        "operation": label, "check": check.__name__, "title": failure.title,
                        "message": str(failure.message)[:1500],
                        "request": case.as_curl_command(headers=headers, base_url=url),
                        "status": response.status_code, "response": response.text[:1500],
                    })

    run()
    for key in ("status", "known_id_status"):
        stats[key] = dict(sorted(stats[key].items()))
    stats["share_2xx"] = share_2xx(stats["status"])
    stats["known_id_share_2xx"] = share_2xx(stats["known_id_status"])
    return stats


def _failures_md(failures: list[dict[str, Any]]) -> str:
    if not failures:
        return "No failures: every answer was below 500 and matched the documented schema."
    lines = [f"Distinct failures ({len(failures)}; first {MAX_FAILURE_EXAMPLES} shown):", ""]
    for f in failures[:MAX_FAILURE_EXAMPLES]:
        lines += [f"- **{f['operation']}** `{f['check']}`: {f['title']} (status {f.get('status', '-')})",
                  f"  - request: `{f['request']}`",
                  f"  - response: `{str(f.get('response', ''))[:400]}`"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=EXAMPLES_PER_OPERATION, help="cases per operation")
    ap.add_argument("--seed", type=int, default=0, help="Hypothesis seed")
    args = ap.parse_args()

    t0 = time.monotonic()
    per_op: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    with tempfile.TemporaryDirectory(prefix="mirror-fuzz-") as tmp, running_server(Path(tmp)) as srv:
        t_ready = time.monotonic()
        schema = schemathesis.openapi.from_url(f"{srv.url}/docs.json")
        every = [r.ok() for r in schema.get_all_operations()]
        excluded = sorted(label_of(o) for o in every if re.search(SKIP, o.path))
        operations = [o for o in every if not re.search(SKIP, o.path)]
        headers = srv.headers("admin-key")
        ids = prepare(srv)
        for op in operations:
            label = label_of(op)
            t_op = time.monotonic()
            per_op[label] = fuzz_operation(srv.url, headers, op, ids, args.examples, args.seed, failures,
                                           seen)
            per_op[label]["seconds"] = round(time.monotonic() - t_op, 1)
            print(f"[fuzz] {label}: {per_op[label]}", file=sys.stderr)
        server_log = srv.log_text()
    total_status: Counter[str] = Counter()
    for s in per_op.values():
        total_status.update(s["status"])
    figures = {
        "examples_per_operation": args.examples,
        "seed": args.seed,
        "operations": len(per_op),
        "cases": sum(s["cases"] for s in per_op.values()),
        "status": dict(sorted(total_status.items())),
        "share_2xx_by_operation": {k: s["share_2xx"] for k, s in per_op.items()},
        "known_id_cases": sum(s["known_id_cases"] for s in per_op.values()),
        "5xx": sum(s["5xx"] for s in per_op.values()),
        "schema_violations": sum(s["schema_violations"] for s in per_op.values()),
        "transport_errors": sum(s["transport_errors"] for s in per_op.values()),
        "distinct_failures": len(failures),
        "server_tracebacks": server_log.count("Traceback"),
        "seconds": round(time.monotonic() - t0, 1),
        "seconds_fuzzing": round(time.monotonic() - t_ready, 1),
        "per_operation": per_op,
        "excluded_operations": excluded,
    }
    notes = "\n".join([
        "Schemathesis cases generated from the running service's own OpenAPI document (`/docs.json`, "
        "BentoML's, which includes the mounted GET/PUT/DELETE routes), sent with the admin key to the real "
        "`bentoml serve` with tiny champions (tests/serving/mirror_server.py). Positive generation "
        "(schema-valid inputs) plus the schema's explicit examples, as in tests/serving/test_fuzz.py. "
        "`cases` can be below the requested number when an operation has fewer distinct inputs (e.g. no "
        "parameters). Every response is checked, against both checks on every operation; failures are "
        "collected, not stopped at.",
        "",
        "Known ids (tests/serving/fuzz_plan.py): the operations that look an id up get cases built on ids "
        "that exist (`known_id_cases`), the rest of each case still generated, mixed with schemathesis' own "
        "cases (Hypothesis picks the branch; it never sends the same case twice, so a route whose only input "
        "is the id gets at most one known-id case per id): `POST /similar_items` an item of the tiny "
        "recommender; `POST /next_best_action` and `PUT /consent` one of the fuzz's own customers (added "
        "before fuzzing, so grants and contact slots never touch the customers other tests read); `GET "
        "/profiles/{id}` and `/export` a seeded or fuzz customer, by profile id or by customer id; `DELETE "
        "/profiles/{id}` one of 150 customers added to be erased (a second draw of one already erased is a "
        "404); `GET /score_segment/status` and `/get` one of 12 finished CSV or parquet exports. `share_2xx` "
        "is over all of an operation's cases, `known_id_share_2xx` over the known-id ones.",
        "",
        "Excluded (same as test_fuzz.py): `/admin/reload` (reloads every model from the registry: slow, "
        "covered by tests/serving/test_reload.py) and the probes `/metrics`, `/livez`, `/healthz`, `/readyz` "
        "(no input). The segment export routes are Mirror's own job runner (serving/segments.py): submit, "
        "status and get are all fuzzed, with the schema check.",
        "",
        _failures_md(failures),
    ])
    record("fuzz", f".venv/bin/python benchmarks/fuzz.py --examples {args.examples} --seed {args.seed}",
           figures, notes)
    emit(figures)


if __name__ == "__main__":
    main()
