"""The creepiness guard's text safety and cost: leaks, ordinary-name pass rate, microseconds per reason.

Run: `.venv/bin/python benchmarks/guard.py`. In one run:

- leaks on the seeded adversarial generator of `tests/unit/test_guard_adversarial.py` (100,000 signals,
  every class of creepy fragment and disguise, every channel and consent combination, reasons and NBA
  messages), judged by that test's oracle (what was planted must not come out);
- the pass rate of the ordinary-name corpus (`tests/data/ordinary_names.txt`: clean for the scrubber,
  tier none, accepted as a name) and the catch rate of the sensitive corpus
  (`tests/data/sensitive_names.txt`);
- the cost of `guard()` per recommendation reason, warm (the names seen before: the memo caches hit, as
  in steady state) and cold (every name new), against a bare f-string, which is what an unguarded
  service pays. The service calls `guard()` about ten times per /recommend, whose budget is a few ms.
"""

from __future__ import annotations

import random
import statistics
import string
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from _results import emit, record  # noqa: E402
from test_guard_adversarial import N_SIGNALS, SEED, generate, leaks  # noqa: E402

from serving.guard import (  # noqa: E402
    RECOMMENDATION_REASON,
    ConsentState,
    GuardRequest,
    Signal,
    Specificity,
    guard,
    load_policy,
)
from serving.scrubber import Sensitivity, safe_name, scrub_problems  # noqa: E402

REPEATS, CALLS = 15, 2000
BUDGET_US = 50
DATA = ROOT / "tests" / "data"


def _lines(name: str) -> list[str]:
    return [
        line
        for line in (DATA / name).read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _per_call(fn) -> float:
    samples = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(CALLS):
            fn()
        samples.append((time.perf_counter() - t0) / CALLS)
    return statistics.median(samples) * 1e6


def _cold_per_call(policy, now: datetime) -> float:
    """Median cost when every category and item name is new (nothing memoised)."""
    rng = random.Random(SEED)
    samples = []
    consent = ConsentState(level=Specificity.ITEM)
    for _ in range(REPEATS):
        reqs = []
        for _ in range(CALLS):
            tag = "".join(rng.choices(string.ascii_lowercase, k=8))
            s = Signal(
                "view",
                "web",
                item_id="sku_trail",
                item_name=f"Trail Runner {tag} jacket",
                category=f"Sports > {tag} shoes",
                attributes={"brand": "Nike"},
                ts=now,
            )
            reqs.append(GuardRequest(RECOMMENDATION_REASON, "web", consent, (s,), logged_in=True, now=now))
        t0 = time.perf_counter()
        for r in reqs:
            guard(r, policy)
        samples.append((time.perf_counter() - t0) / CALLS)
    return statistics.median(samples) * 1e6


def main() -> None:
    t_load = time.perf_counter()
    policy = load_policy()
    load_ms = (time.perf_counter() - t_load) * 1e3

    t0 = time.perf_counter()
    n_signals = n_decisions = n_leaks = 0
    for case in generate(N_SIGNALS, SEED):
        n_signals += case.n_signals
        for req in (case.reason, case.nba):
            n_decisions += 1
            n_leaks += bool(leaks(req, guard(req, policy), case.plants, policy))
    adversarial_s = time.perf_counter() - t0

    names = _lines("ordinary_names.txt")
    passed = sum(
        1
        for n in names
        if not scrub_problems(n) and policy.sensitivity(n) == Sensitivity.NONE and safe_name(n) == n
    )
    rows = [line.split("\t") for line in _lines("sensitive_names.txt")]
    caught = sum(1 for tier, n in rows if policy.sensitivity(n) == Sensitivity[tier.upper()])

    now = datetime(2025, 1, 7, 17, 0, tzinfo=UTC)
    sig = Signal(
        "view",
        "web",
        item_id="sku_trail",
        item_name="Trail Runner jacket",
        category="running shoes",
        attributes={"color": "blue", "size": "10", "brand": "Nike"},
        ts=now,
        duration_s=420.0,
        count=7,
    )
    item_req = GuardRequest(
        RECOMMENDATION_REASON, "web", ConsentState(level=Specificity.ITEM), (sig,), logged_in=True, now=now
    )
    email_req = GuardRequest(RECOMMENDATION_REASON, "email", ConsentState(), (sig,), now=now)
    figures = {
        "adversarial_signals": n_signals,
        "adversarial_decisions": n_decisions,
        "adversarial_leaks": n_leaks,
        "adversarial_seconds": round(adversarial_s, 1),
        "ordinary_names": len(names),
        "ordinary_pass_rate": round(passed / len(names), 4),
        "sensitive_names": len(rows),
        "sensitive_caught_rate": round(caught / len(rows), 4),
        "guard_item_level_web_us": round(_per_call(lambda: guard(item_req, policy)), 1),
        "guard_category_level_email_us": round(_per_call(lambda: guard(email_req, policy)), 1),
        "guard_item_level_web_cold_us": round(_cold_per_call(policy, now), 1),
        "baseline_fstring_us": round(_per_call(lambda: f"Because you viewed the {sig.item_name}"), 2),
        "policy_load_ms": round(load_ms, 1),
        "budget_us": BUDGET_US,
    }
    record(
        "guard: cost per recommendation reason",
        ".venv/bin/python benchmarks/guard.py",
        figures,
        f"Leaks: the seeded adversarial generator of `tests/unit/test_guard_adversarial.py` (seed {SEED}, "
        f"{N_SIGNALS:,} signals, each decision judged by that test's oracle); a decision counts once however "
        "many fragments it lets out. Pass rate: ordinary names that are clean for the scrubber, of tier none "
        "and accepted by `safe_name`; caught rate: sensitive corpus names classified in their expected tier. "
        "Cost: median of 15 repeats of 2,000 calls, one signal per call; warm = the same names each call "
        "(memo caches hit, the steady state), cold = every category and item name new. The f-string "
        f"baseline is what an unguarded service pays. Budget: {BUDGET_US} us per call.",
    )
    emit(figures)


if __name__ == "__main__":
    main()
