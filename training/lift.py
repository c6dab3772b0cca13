"""Lift: did acting beat not acting? Treated against holdout customers, per NBA action and channel.

The decision log (`features.store.DECISION_COLUMNS`: one row per outbound decision, the holdout's
included, with the action it would have been sent) says who was decided for, when, and whether they
were held out; the events say what each customer did afterwards.  For every decision the outcome is
measured in the window after it (``ts <= purchase < ts + window``, the same profile): converted (any
purchase) and revenue (sum of price x quantity, quantity 1 when missing; gross, returns not netted).
A purchase in two overlapping windows counts for both decisions (each decision is its own trial).

Confidence intervals are the normal approximation (Wald): for conversion the difference of two
proportions, ``se = sqrt(p1 (1 - p1) / n1 + p0 (1 - p0) / n0)``; for revenue per customer the
difference of two means with unequal variances (Welch), ``se = sqrt(s1^2 / n1 + s0^2 / n0)`` with
sample variances.  Relative lift is the absolute lift over the holdout's level (NaN when it is 0).
Holdout membership is drawn per (campaign, customer) by hashing, independently of everything the
customer did, so the difference is the causal effect of the decision (intent to treat: a treated
decision the channel then failed to deliver still counts as treated).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from features.schema import CHANNEL as DECISION_CHANNEL
from features.schema import EVENT_TYPE, PRICE, PROFILE_ID, PURCHASE, QUANTITY, TS
from features.store import ACTION, DECISION_COLUMNS, HOLDOUT

# -- per-decision outcome columns (`decision_outcomes`) ---------------------------------------------
CONVERTED: Final = "converted"
REVENUE: Final = "revenue"

# -- report columns (`lift_report`), defined once -----------------------------------------------------
N_TREATED: Final = "n_treated"
N_HOLDOUT: Final = "n_holdout"
CONVERSION_TREATED: Final = "conversion_treated"
CONVERSION_HOLDOUT: Final = "conversion_holdout"
CONVERSION_LIFT: Final = "conversion_lift"
CONVERSION_LIFT_LOW: Final = "conversion_lift_low"
CONVERSION_LIFT_HIGH: Final = "conversion_lift_high"
CONVERSION_RELATIVE_LIFT: Final = "conversion_relative_lift"
REVENUE_TREATED: Final = "revenue_per_customer_treated"
REVENUE_HOLDOUT: Final = "revenue_per_customer_holdout"
REVENUE_LIFT: Final = "revenue_lift"
REVENUE_LIFT_LOW: Final = "revenue_lift_low"
REVENUE_LIFT_HIGH: Final = "revenue_lift_high"
REVENUE_RELATIVE_LIFT: Final = "revenue_relative_lift"
REPORT_COLUMNS: Final[tuple[str, ...]] = (
    ACTION, DECISION_CHANNEL, N_TREATED, N_HOLDOUT,
    CONVERSION_TREATED, CONVERSION_HOLDOUT, CONVERSION_LIFT, CONVERSION_LIFT_LOW, CONVERSION_LIFT_HIGH,
    CONVERSION_RELATIVE_LIFT,
    REVENUE_TREATED, REVENUE_HOLDOUT, REVENUE_LIFT, REVENUE_LIFT_LOW, REVENUE_LIFT_HIGH, REVENUE_RELATIVE_LIFT,
)
#: The action and channel of the row over every decision (the campaign's overall lift).
ALL: Final = "all"
CI_METHOD: Final = "normal approximation (Wald; Welch for revenue)"
DEFAULT_WINDOW: Final = pd.Timedelta(days=7)


def _window(window: pd.Timedelta | float | int) -> pd.Timedelta:
    """A Timedelta, or a number of days."""
    w = window if isinstance(window, pd.Timedelta) else pd.Timedelta(days=float(window))
    if not w > pd.Timedelta(0):
        raise ValueError(f"window must be positive, got {window!r}")
    return w


def _check_decisions(decisions: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in (PROFILE_ID, ACTION, DECISION_CHANNEL, HOLDOUT, TS) if c not in decisions.columns]
    if missing:
        raise ValueError(f"decisions: missing columns {missing} (expected {list(DECISION_COLUMNS)})")
    ts = pd.to_datetime(decisions[TS], utc=True)
    if ts.isna().any():
        raise ValueError(f"decisions: column {TS!r} has missing or unreadable times")
    hold = decisions[HOLDOUT].map(lambda v: _BOOLS.get(str(v).strip().lower()))
    if hold.isna().any():
        bad = decisions[HOLDOUT][hold.isna()].iloc[0]
        raise ValueError(f"decisions: column {HOLDOUT!r} must be true/false on every row, got {bad!r}")
    return pd.DataFrame({PROFILE_ID: decisions[PROFILE_ID].astype(str).to_numpy(),
                         ACTION: decisions[ACTION].astype(str).to_numpy(),
                         DECISION_CHANNEL: decisions[DECISION_CHANNEL].astype(str).to_numpy(),
                         HOLDOUT: hold.astype(bool).to_numpy(), TS: ts.to_numpy()})


#: Spellings of a holdout flag a decision file may hold (parquet bools, CSV text, 0/1).
_BOOLS: Final[dict[str, bool]] = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}


def decision_outcomes(decisions: pd.DataFrame, events: pd.DataFrame,
                      window: pd.Timedelta | float = DEFAULT_WINDOW) -> pd.DataFrame:
    """The decisions (a copy, same rows and order) with CONVERTED (bool) and REVENUE (float) in the window
    after each.  `events` need PROFILE_ID, TS, EVENT_TYPE and (for revenue) PRICE/QUANTITY; vectorised
    (one sort and two searchsorted calls, whatever the number of decisions)."""
    w = _window(window)
    d = _check_decisions(decisions)
    for c in (PROFILE_ID, TS, EVENT_TYPE):
        if c not in events.columns:
            raise ValueError(f"events: missing column {c!r} (resolve identities first for {PROFILE_ID!r})")
    buys = events.loc[events[EVENT_TYPE] == PURCHASE]
    price = buys[PRICE].to_numpy(dtype=float, na_value=np.nan) if PRICE in buys else np.zeros(len(buys))
    qty = buys[QUANTITY].to_numpy(dtype=float, na_value=np.nan) if QUANTITY in buys else np.ones(len(buys))
    value = np.nan_to_num(price) * np.where(np.isnan(qty), 1.0, qty)
    # one key per (profile, second): profile code in the high bits, seconds since the earliest time below
    codes, uniques = pd.factorize(pd.concat([d[PROFILE_ID], buys[PROFILE_ID].astype(str)], ignore_index=True))
    d_code, b_code = codes[:len(d)].astype(np.int64), codes[len(d):].astype(np.int64)
    d_s = pd.DatetimeIndex(d[TS]).as_unit("s").asi8
    b_s = pd.DatetimeIndex(pd.to_datetime(buys[TS], utc=True)).as_unit("s").asi8
    origin = min(d_s.min(initial=0), b_s.min(initial=0))
    span = int(max(d_s.max(initial=0), b_s.max(initial=0)) - origin + w.total_seconds() + 2)
    if len(uniques) >= 2**62 // max(span, 1):
        raise ValueError("too many profiles over too long a time span for one report")
    b_key = b_code * span + (b_s - origin)
    order = np.argsort(b_key, kind="stable")
    b_key, value = b_key[order], value[order]
    lo = np.searchsorted(b_key, d_code * span + (d_s - origin), side="left")
    hi = np.searchsorted(b_key, d_code * span + (d_s - origin) + math.ceil(w.total_seconds()), side="left")
    csum = np.concatenate([[0.0], np.cumsum(value)])
    out = decisions.copy()
    out[HOLDOUT], out[TS] = d[HOLDOUT].to_numpy(), d[TS].to_numpy()  # normalised (a CSV's text flags, times)
    out[CONVERTED] = hi > lo
    out[REVENUE] = csum[hi] - csum[lo]
    return out


def _z(confidence: float) -> float:
    from scipy.stats import norm

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2.0))


def _compare(treated: np.ndarray, control: np.ndarray, z: float, binary: bool) -> tuple[float, ...]:
    """(mean treated, mean control, lift, low, high, relative lift) with the normal approximation."""
    n1, n0 = len(treated), len(control)
    m1 = float(treated.mean()) if n1 else math.nan
    m0 = float(control.mean()) if n0 else math.nan
    if binary:
        var1, var0 = m1 * (1 - m1), m0 * (1 - m0)
    else:
        var1 = float(treated.var(ddof=1)) if n1 > 1 else math.nan
        var0 = float(control.var(ddof=1)) if n0 > 1 else math.nan
    lift = m1 - m0
    se = math.sqrt(var1 / n1 + var0 / n0) if n1 and n0 else math.nan
    rel = lift / m0 if n0 and m0 != 0 else math.nan
    return m1, m0, lift, lift - z * se, lift + z * se, rel


def summarize(outcomes: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """REPORT_COLUMNS from per-decision outcomes (`decision_outcomes`): one row per action and channel,
    then one ALL row over every decision."""
    z = _z(confidence)
    rows: list[dict[str, Any]] = []
    groups = list(outcomes.groupby([ACTION, DECISION_CHANNEL], sort=True)) if len(outcomes) else []
    for (action, channel), g in [*groups, ((ALL, ALL), outcomes)]:
        hold = g[HOLDOUT].to_numpy(dtype=bool)
        conv = g[CONVERTED].to_numpy(dtype=float)
        rev = g[REVENUE].to_numpy(dtype=float)
        c = _compare(conv[~hold], conv[hold], z, binary=True)
        r = _compare(rev[~hold], rev[hold], z, binary=False)
        rows.append(dict(zip(REPORT_COLUMNS, (action, channel, int((~hold).sum()), int(hold.sum()), *c, *r),
                             strict=True)))
    out = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    return out.astype({N_TREATED: "int64", N_HOLDOUT: "int64"})


def lift_report(decisions: pd.DataFrame, events: pd.DataFrame, window: pd.Timedelta | float = DEFAULT_WINDOW,
                confidence: float = 0.95) -> pd.DataFrame:
    """Per action and channel (then ALL): conversion rate and revenue per customer of treated and held-out
    decisions in `window` (a Timedelta or days) after each, absolute and relative lift, and the
    `confidence` interval of each absolute lift (CI_METHOD).  Pure: the inputs are not modified."""
    return summarize(decision_outcomes(decisions, events, window), confidence)


# ---------------------------------------------------------------------------------------------
# plot and MLflow
# ---------------------------------------------------------------------------------------------
def plot_lift(report: pd.DataFrame, confidence: float = 0.95) -> Any:
    """Treated against holdout per action and channel, conversion and revenue per customer, each bar with
    its own normal-approximation interval (a matplotlib Figure; no pyplot, so no backend is switched)."""
    from matplotlib.figure import Figure

    z = _z(confidence)
    labels = [f"{a}\n{c}" for a, c in zip(report[ACTION], report[DECISION_CHANNEL], strict=True)]
    x = np.arange(len(report))
    fig = Figure(figsize=(max(6.0, 1.6 * len(report)), 7.5))
    ax_c, ax_r = fig.subplots(2, 1, sharex=True)
    width = 0.38
    for j, (name, n_col, c_col, r_col) in enumerate((("treated", N_TREATED, CONVERSION_TREATED, REVENUE_TREATED),
                                                      ("holdout", N_HOLDOUT, CONVERSION_HOLDOUT, REVENUE_HOLDOUT))):
        n = report[n_col].to_numpy(dtype=float)
        p = report[c_col].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            p_err = z * np.sqrt(p * (1 - p) / n)
        ax_c.bar(x + (j - 0.5) * width, p, width, yerr=p_err, capsize=3, label=name)
        ax_r.bar(x + (j - 0.5) * width, report[r_col].to_numpy(dtype=float), width, label=name)
    ax_c.set(ylabel="conversion rate", title=f"Treated vs holdout ({confidence:.0%} CI, {CI_METHOD})")
    ax_r.set(ylabel="revenue per customer")
    ax_r.errorbar(x, report[REVENUE_TREATED].to_numpy(dtype=float),
                  yerr=np.abs(np.vstack([report[REVENUE_LIFT] - report[REVENUE_LIFT_LOW],
                                         report[REVENUE_LIFT_HIGH] - report[REVENUE_LIFT]]).astype(float)),
                  fmt="none", ecolor="black", capsize=3, label="CI of the lift (on treated)")
    ax_r.set_xticks(x, labels, fontsize=8)
    ax_c.legend()
    ax_r.legend(fontsize=8)
    return fig


@dataclass(frozen=True)
class LiftRun:
    """Where `log_lift_report` put the report."""

    run_id: str
    report: pd.DataFrame


def log_lift_report(report: pd.DataFrame, *, window: pd.Timedelta, confidence: float = 0.95,
                    experiment: str = "mirror-lift", source: str = "") -> LiftRun:
    """One MLflow run: the table (CSV and JSON), the plot, and the ALL row's figures as metrics."""
    import mlflow

    from training.registry import TAG_PIPELINE, use_experiment

    use_experiment(experiment)
    with mlflow.start_run(run_name="lift-report") as run:
        mlflow.log_params({"window_days": window.total_seconds() / 86_400, "confidence": confidence,
                           "ci_method": CI_METHOD, "source": source[:250]})
        overall = report.loc[(report[ACTION] == ALL) & (report[DECISION_CHANNEL] == ALL)]
        if len(overall):
            row = overall.iloc[0]
            mlflow.log_metrics({c: float(row[c]) for c in REPORT_COLUMNS[2:] if np.isfinite(float(row[c]))})
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "lift.csv"
            report.to_csv(table, index=False)
            mlflow.log_artifact(str(table))
            fig = plot_lift(report, confidence)
            png = Path(tmp) / "lift.png"
            fig.savefig(png, dpi=100, bbox_inches="tight")
            mlflow.log_artifact(str(png))
        mlflow.log_dict({"columns": list(report.columns), "rows": report.astype(object).where(report.notna(), None)
                        .to_dict(orient="records")}, "lift.json")
        mlflow.set_tags({TAG_PIPELINE: "lift"})
        return LiftRun(run.info.run_id, report)


__all__ = [
    "ALL", "CI_METHOD", "CONVERTED", "REPORT_COLUMNS", "REVENUE", "LiftRun", "decision_outcomes", "lift_report",
    "log_lift_report", "plot_lift", "summarize",
]
