"""Propensity labels, metrics and table preparation on hand-made data with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.schema import EVENT_TYPE, PROFILE_ID, PURCHASE, TS, VIEW
from training.propensity import PropensityConfig, binary_metrics, cutoffs, lift_at, make_labels, prepare_table

AS_OF = pd.Timestamp("2025-03-01", tz="UTC")


def ev(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame({
        PROFILE_ID: [r[0] for r in rows],
        TS: pd.to_datetime([r[1] for r in rows], utc=True),
        EVENT_TYPE: [r[2] for r in rows],
    })


EVENTS = ev([
    ("a", "2025-02-10", PURCHASE), ("a", "2025-03-20", PURCHASE),   # active, buys again -> not churned
    ("b", "2025-02-20", PURCHASE), ("b", "2025-03-05", VIEW),       # active, only views after -> churned
    ("c", "2024-10-01", PURCHASE), ("c", "2025-03-10", PURCHASE),   # bought before the lookback: not active
    ("d", "2025-02-25", VIEW),                                       # never bought: not in churn population
    ("e", "2025-02-27", PURCHASE), ("e", "2025-05-10", PURCHASE),   # buys again only after the window
    ("z", "2025-05-20", VIEW),                                       # data run to 2025-05-20
])


def test_churn_labels_known_answer() -> None:
    got = make_labels(EVENTS, AS_OF, "churn", horizon_days=60, active_days=90)
    assert got.to_dict() == {"a": 0, "b": 1, "e": 1}
    assert got.index.name == PROFILE_ID and got.name == "churn"


def test_purchase_labels_known_answer() -> None:
    got = make_labels(EVENTS, AS_OF, "purchase", horizon_days=14)
    # within [Mar 1, Mar 15): only c buys; z has no event before the cutoff
    assert got.to_dict() == {"a": 0, "b": 0, "c": 1, "d": 0, "e": 0}


def test_labels_never_look_before_or_beyond_the_window() -> None:
    shifted = EVENTS.copy()
    shifted.loc[shifted[PROFILE_ID] == "a", TS] = pd.Timestamp("2025-05-15", tz="UTC")  # a's re-buy leaves window
    # a's first purchase moved too, so a is no longer active before the cutoff
    assert "a" not in make_labels(shifted, AS_OF, "churn", 60).index
    assert EVENTS.loc[0, TS] == pd.Timestamp("2025-02-10", tz="UTC")  # caller's frame untouched


def test_labels_refuse_a_window_past_the_data() -> None:
    with pytest.raises(ValueError, match="needs events until"):
        make_labels(EVENTS, "2025-04-15", "churn", 60)
    with pytest.raises(ValueError, match="target"):
        make_labels(EVENTS, AS_OF, "upsell")  # type: ignore[arg-type]


def test_cutoffs_report_overlap_when_data_are_short() -> None:
    cfg = PropensityConfig(target="churn", horizon_days=60, min_history_days=21)
    t_train, t_val, note = cutoffs(EVENTS, cfg)
    assert t_val == pd.Timestamp("2025-05-21", tz="UTC") - pd.Timedelta(days=60)
    assert t_train == t_val - pd.Timedelta(days=60)  # long enough here: no overlap
    assert note == ""
    short = EVENTS.loc[EVENTS[TS] >= "2025-02-01"]
    t_train, t_val, note = cutoffs(short, cfg)
    assert t_train == pd.Timestamp("2025-02-10", tz="UTC") + pd.Timedelta(days=21)
    assert "overlap" in note


def test_lift_and_metrics_known_values() -> None:
    y = np.array([1] * 10 + [0] * 90)
    p = np.linspace(1, 0, 100)  # perfect ranking
    assert lift_at(y, p, 0.1) == pytest.approx(10.0)
    m = binary_metrics(y, p)
    assert m["roc_auc"] == pytest.approx(1.0) and m["pr_auc"] == pytest.approx(1.0)
    assert binary_metrics(y, np.full(100, 0.1))["brier"] == pytest.approx(0.09)


def test_prepare_table_drops_ids_parses_numbers_and_maps_labels() -> None:
    rng = np.random.default_rng(0)
    n = 50
    table = pd.DataFrame({
        "customerID": [f"c-{i:04d}" for i in range(n)],
        "plan": rng.choice(["basic", "pro"], n),
        "charges": [" " if i == 3 else f"{v:.2f}" for i, v in enumerate(rng.uniform(10, 90, n))],
        "tenure": rng.integers(0, 70, n),
        "Churn": rng.choice(["Yes", "No"], n),
    })
    before = table.copy()
    X, y, notes = prepare_table(table, "Churn")
    assert "customerID" not in X.columns and any("customerID" in s for s in notes)
    assert X["charges"].dtype == "float64" and np.isnan(X.loc[3, "charges"])
    assert y.tolist() == (table["Churn"] == "Yes").astype(int).tolist()
    pd.testing.assert_frame_equal(table, before)
    with pytest.raises(ValueError, match="'missing_col'"):
        prepare_table(table, "missing_col")
    with pytest.raises(ValueError, match="binary"):
        prepare_table(table.assign(Churn=rng.choice(["a", "b", "c"], n)), "Churn")
