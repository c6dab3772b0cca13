"""Churn propensity on the IBM Telco table through the table path (`mirror train propensity --features`).

20% stratified validation (seed 42) is the evaluation; LightGBM settings are chosen by 5-fold inner CV on
the training part only (a small fixed grid), trees by early stopping on a stratified 20% of the training
part, which also calibrates.  Logistic regression is the baseline in the same run, on the same rows.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

DATA = ROOT.parent / "shared" / "data" / "telco-churn" / "Telco-Customer-Churn.csv"
LABEL = "Churn"


def run() -> dict:
    """Raw CSV in, as a data scientist would pass it (ids and text-typed numbers handled by the pipeline)."""
    from training.propensity import PropensityConfig, fit_propensity, prepare_table, split_table

    table = pd.read_csv(DATA)
    X, y, notes_ = prepare_table(table, LABEL)
    r = lambda d: {k: round(v, 4) for k, v in d.items()}  # noqa: E731
    out: dict = {"rows": len(table), "positive_rate": round(float(y.mean()), 4), "prepare_notes": notes_}
    for name, tune in (("default", False), ("tuned_inner_cv", True)):
        cfg = PropensityConfig(seed=42, validation_size=0.2, tune=tune, progress=True)
        t0 = time.perf_counter()
        fit = fit_propensity(*split_table(X, y, cfg), cfg)
        out[name] = {
            "lightgbm_calibrated": r(fit.metrics),
            "logistic_regression": r(fit.baselines["logistic_regression"]),
            "best_iteration": fit.params["best_iteration"],
            "params": {k: fit.params[k] for k in ("num_leaves", "learning_rate", "min_child_samples", "reg_lambda")},
            "fit_seconds": round(time.perf_counter() - t0, 1),
        }
    best = out["tuned_inner_cv"]["lightgbm_calibrated"]["roc_auc"]
    out["target_roc_auc"] = 0.845
    out["meets_target"] = bool(best > 0.845)
    return out


def notes() -> str:
    return (
        "Raw Telco CSV through training.propensity (table path): customerID dropped as id-like, TotalCharges "
        "parsed as numbers (11 blanks left missing, LightGBM handles them; the baseline imputes the median), "
        "categoricals one-hot encoded inside the sklearn Pipeline. Evaluation: 20% stratified hold-out, seed 42 "
        "(1,409 rows). 'tuned_inner_cv' picks LightGBM settings from a 12-point grid by 5-fold CV ROC AUC on "
        "the training part only. Published reference (different split): GB 0.8434, LR 0.8419."
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
