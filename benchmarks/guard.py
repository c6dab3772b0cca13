"""Cost of the creepiness guard on the recommendation path: microseconds per reason.

Run: `.venv/bin/python benchmarks/guard.py`. The service calls `guard()` once per recommended item
(about 20 a request), so its cost must stay far below the request budget. Baseline in the same run:
rendering the same reason with a bare f-string, which is what an unguarded service would do.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import emit, record  # noqa: E402

from serving.guard import (  # noqa: E402
    RECOMMENDATION_REASON,
    ConsentState,
    GuardRequest,
    Signal,
    Specificity,
    guard,
    load_policy,
)

REPEATS, CALLS = 15, 2000


def _per_call(fn) -> float:
    samples = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(CALLS):
            fn()
        samples.append((time.perf_counter() - t0) / CALLS)
    return statistics.median(samples) * 1e6


def main() -> None:
    policy = load_policy()
    now = datetime(2025, 1, 7, 17, 0, tzinfo=UTC)
    sig = Signal("view", "web", item_id="sku_trail", item_name="Trail Runner jacket", category="running shoes",
                 attributes={"color": "blue", "size": "10", "brand": "Nike"}, ts=now, duration_s=420.0, count=7)
    item_req = GuardRequest(RECOMMENDATION_REASON, "web", ConsentState(level=Specificity.ITEM), (sig,),
                            logged_in=True, now=now)
    email_req = GuardRequest(RECOMMENDATION_REASON, "email", ConsentState(), (sig,), now=now)
    figures = {
        "guard_item_level_web_us": round(_per_call(lambda: guard(item_req, policy)), 1),
        "guard_category_level_email_us": round(_per_call(lambda: guard(email_req, policy)), 1),
        "baseline_fstring_us": round(_per_call(lambda: f"Because you viewed the {sig.item_name}"), 2),
        "budget_us": 50,
    }
    record("guard: cost per recommendation reason", ".venv/bin/python benchmarks/guard.py", figures,
           "Median of 15 repeats of 2,000 calls each, one signal per call. The f-string baseline is what an "
           "unguarded service pays; the difference is the guard's price. Budget: 50 us per call.")
    emit(figures)


if __name__ == "__main__":
    main()
