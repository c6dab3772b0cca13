"""Does acting pay, and whom to contact: the lift report and the uplift model against planted truth.

Run: `.venv/bin/python benchmarks/uplift.py [--customers 6000 --days 120 --seed 0 --budget 0.2]`.

Synthetic data with journeys (`SyntheticConfig(journeys=True)`): past NBA decisions in waves, 30% held out,
each with a planted per-customer effect of the message that depends on what the profile shows (lapsed
customers gain from a winback, customers who returned something are harmed, see
`features.synthetic._plant_decisions`), written to truth `uplift`.  In the same run:

1. `training.lift.lift_report` on the decision log and the events: is the planted average effect on
   conversion (and on revenue per customer), overall and per action, inside the report's 95% interval?
2. `training.uplift`: the T-learner trained on 70% of the profiles ranks the held-out 30%; at the contact
   budget (top 20%) we count incremental conversions per contact, measured (treated minus held-out
   conversion in the top group) and true (the planted `conversion_effect` of the contacted), against
   propensity ranking (P(convert), both arms pooled), a random order and the oracle (the true effect).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))  # for _results; after the root (benchmarks/features.py)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

SECTION = "uplift"


def run(customers: int, days: int, seed: int, budget: float) -> dict:
    from features.identity import resolve_identities
    from features.synthetic import (
        CONVERSION_EFFECT,
        DECISIONS,
        REVENUE_EFFECT,
        UPLIFT,
        SyntheticConfig,
        generate,
    )
    from training import lift
    from training.uplift import (
        PROPENSITY,
        RANDOM,
        UpliftConfig,
        decision_table,
        evaluate,
        fit_propensity_ranker,
        fit_t_learner,
        split_by_profile,
    )

    t0 = time.perf_counter()
    data = generate(SyntheticConfig(customers=customers, days=days, seed=seed, journeys=True))
    events = resolve_identities(data.events)
    log, truth = data.truth[DECISIONS], data.truth[UPLIFT].set_index("decision_id")
    out: dict = {"customers": customers, "days": days, "seed": seed, "events": len(events), "decisions": len(log),
                 "holdout_share": round(float(log["holdout"].mean()), 4), "generate_s": round(time.perf_counter() - t0, 1)}

    # 1. the lift report against the planted average effect
    t1 = time.perf_counter()
    report = lift.lift_report(log, events, window=7)
    eff = log["decision_id"].map(truth[CONVERSION_EFFECT])
    rev = log["decision_id"].map(truth[REVENUE_EFFECT])
    rows = {}
    for _, r in report.iterrows():
        mask = np.ones(len(log), bool) if r["action"] == lift.ALL else (log["action"] == r["action"]).to_numpy()
        planted_c, planted_r = float(eff[mask].mean()), float(rev[mask].mean())
        rows[str(r["action"])] = {
            "n_treated": int(r[lift.N_TREATED]), "n_holdout": int(r[lift.N_HOLDOUT]),
            "conversion_lift": round(float(r[lift.CONVERSION_LIFT]), 4),
            "conversion_ci95": [round(float(r[lift.CONVERSION_LIFT_LOW]), 4), round(float(r[lift.CONVERSION_LIFT_HIGH]), 4)],
            "planted_conversion_effect": round(planted_c, 4),
            "conversion_recovered": bool(r[lift.CONVERSION_LIFT_LOW] <= planted_c <= r[lift.CONVERSION_LIFT_HIGH]),
            "revenue_lift": round(float(r[lift.REVENUE_LIFT]), 3),
            "revenue_ci95": [round(float(r[lift.REVENUE_LIFT_LOW]), 3), round(float(r[lift.REVENUE_LIFT_HIGH]), 3)],
            "planted_revenue_effect": round(planted_r, 3),
            "revenue_recovered": bool(r[lift.REVENUE_LIFT_LOW] <= planted_r <= r[lift.REVENUE_LIFT_HIGH]),
        }
    out["lift"] = rows
    out["lift_ci_method"] = lift.CI_METHOD
    out["lift_s"] = round(time.perf_counter() - t1, 1)

    # 2. uplift ranking against propensity ranking, on held-out profiles
    t2 = time.perf_counter()
    cfg = UpliftConfig(budget=budget, seed=seed)
    table = decision_table(log, events, cfg)
    train, test = split_by_profile(table, cfg)
    core = fit_t_learner(train, cfg)
    ranker = fit_propensity_ranker(train, core, cfg)
    ev = evaluate(core, ranker, test, cfg)
    true_eff = test["decision_id"].map(truth[CONVERSION_EFFECT]).to_numpy(dtype=float)
    k = max(1, int(np.ceil(budget * len(test))))
    scores = {"uplift": core.predict(test)["uplift"].to_numpy(),
              PROPENSITY: np.asarray(ranker.predict(core.design(test)), dtype=float),
              RANDOM: np.random.default_rng(seed).random(len(test)), "oracle": true_eff}
    per_contact = {name: round(float(true_eff[np.argsort(-s, kind="stable")[:k]].mean()), 4)
                   for name, s in scores.items()}
    out["uplift"] = {
        "decisions_train": len(train), "decisions_test": len(test), "budget": budget, "contacts": k,
        "true_incremental_conversions_per_contact": per_contact,
        "measured": {"uplift": {m: round(v, 4) for m, v in ev.metrics.items()},
                     **{b: {m: round(v, 4) for m, v in ev.baselines[b].items()} for b in ev.baselines}},
        "winner": ev.winner,
        "uplift_beats_propensity_true": per_contact["uplift"] > per_contact[PROPENSITY],
        "uplift_beats_propensity_measured": bool(ev.beats_propensity),
        "sign_agreement": round(float(np.mean(np.sign(scores["uplift"]) == np.sign(
            test["decision_id"].map(truth["effect"]).to_numpy(dtype=float)))), 4),
    }
    out["uplift_s"] = round(time.perf_counter() - t2, 1)
    out["both_hold"] = bool(rows[lift.ALL]["conversion_recovered"] and out["uplift"]["uplift_beats_propensity_true"])
    return out


NOTES = (
    "Synthetic journeys (features.synthetic, `journeys=True`): decision waves every 14 days, 30% held out, one "
    "eligible action drawn per decision (tried_on_offer after an unbought store try-on, winback_offer, "
    "cross_sell), planted response purchases in the 7 days after with P = base + effect (effect < 0: the message "
    "harms a customer who returned something). Lift: `training.lift.lift_report`, 7-day window, 95% normal-"
    "approximation intervals (Wald; Welch for revenue); the planted figure is the mean planted effect on 'any "
    "purchase in the window' (organic purchases of the history count on both sides). Uplift: "
    "`training.uplift` T-learner (two LightGBM), point-in-time profile features, 70/30 split by profile; "
    "'true' counts the planted conversion effect of the top `budget` share each ranking contacts, 'measured' is "
    "held-out Qini / uplift@budget from the observed outcomes. Propensity = LightGBM P(convert), both arms pooled."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=6000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args()
    from _results import emit, record

    t0 = time.perf_counter()
    figures = run(args.customers, args.days, args.seed, args.budget)
    figures["wall_s"] = round(time.perf_counter() - t0, 1)
    if not args.no_record:
        record(SECTION, f".venv/bin/python benchmarks/uplift.py --customers {args.customers} --days {args.days} "
                        f"--seed {args.seed} --budget {args.budget}", figures, NOTES)
    emit(figures)


if __name__ == "__main__":
    main()
