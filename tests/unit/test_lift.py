"""`training.lift`: a known answer by hand, the window's edges, and the plot/MLflow artifacts."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from features.schema import CHANNEL, DECISION_ID, EVENT_TYPE, PRICE, PROFILE_ID, QUANTITY, TS
from features.store import ACTION, DECISION_COLUMNS, HOLDOUT
from training import lift
from training.lift import (
    ALL,
    CONVERSION_HOLDOUT,
    CONVERSION_LIFT,
    CONVERSION_LIFT_HIGH,
    CONVERSION_LIFT_LOW,
    CONVERSION_RELATIVE_LIFT,
    CONVERSION_TREATED,
    CONVERTED,
    N_HOLDOUT,
    N_TREATED,
    REPORT_COLUMNS,
    REVENUE,
    REVENUE_HOLDOUT,
    REVENUE_LIFT,
    REVENUE_LIFT_HIGH,
    REVENUE_LIFT_LOW,
    REVENUE_TREATED,
    decision_outcomes,
    lift_report,
)

T0 = pd.Timestamp("2025-03-01T10:00:00Z")


def decisions(rows: list[tuple[str, str, bool]], action: str = "winback_offer", channel: str = "email") -> pd.DataFrame:
    return pd.DataFrame({DECISION_ID: [f"d{i}" for i in range(len(rows))], PROFILE_ID: [p for p, _, _ in rows],
                         "campaign_id": "spring", ACTION: action, CHANNEL: channel,
                         HOLDOUT: [h for _, _, h in rows], TS: [pd.Timestamp(t) for _, t, _ in rows],
                         "model_versions": None})[list(DECISION_COLUMNS)]


def purchases(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame({PROFILE_ID: [p for p, _, _ in rows], TS: pd.to_datetime([t for _, t, _ in rows], utc=True),
                         EVENT_TYPE: "purchase", PRICE: [v for _, _, v in rows], QUANTITY: 1.0})


def test_known_answer_by_hand() -> None:
    """4 treated (2 buy: 30 and 10) against 4 held out (1 buys: 20), a 7-day window.

    conversion 2/4 vs 1/4: lift 0.25, se = sqrt(.5*.5/4 + .25*.75/4) = sqrt(0.109375);
    revenue per customer 10 vs 5: lift 5, sample variances 200 and 100 (ddof 1): se = sqrt(200/4 + 100/4).
    """
    t = "2025-03-01T10:00:00Z"
    dec = decisions([("a", t, False), ("b", t, False), ("c", t, False), ("d", t, False),
                     ("e", t, True), ("f", t, True), ("g", t, True), ("h", t, True)])
    ev = purchases([("a", "2025-03-02T00:00:00Z", 30.0), ("b", "2025-03-08T09:59:59Z", 10.0),
                    ("c", "2025-03-08T10:00:00Z", 99.0),  # the window's end: not counted
                    ("d", "2025-03-01T09:59:59Z", 99.0),  # before the decision: not counted
                    ("e", "2025-03-05T00:00:00Z", 20.0), ("zz", "2025-03-02T00:00:00Z", 50.0)])
    before = dec.copy()
    report = lift_report(dec, ev, window=pd.Timedelta(days=7))
    pd.testing.assert_frame_equal(dec, before)  # the caller's frame is untouched
    assert tuple(report.columns) == REPORT_COLUMNS
    assert report[ACTION].tolist() == ["winback_offer", ALL] and report[CHANNEL].tolist() == ["email", ALL]
    row = report.iloc[0]
    z = 1.959963984540054
    assert (row[N_TREATED], row[N_HOLDOUT]) == (4, 4)
    assert row[CONVERSION_TREATED] == 0.5 and row[CONVERSION_HOLDOUT] == 0.25 and row[CONVERSION_LIFT] == 0.25
    se = math.sqrt(0.109375)
    assert row[CONVERSION_LIFT_LOW] == pytest.approx(0.25 - z * se) and row[CONVERSION_LIFT_HIGH] == pytest.approx(
        0.25 + z * se)
    assert row[CONVERSION_RELATIVE_LIFT] == pytest.approx(1.0)
    assert row[REVENUE_TREATED] == 10.0 and row[REVENUE_HOLDOUT] == 5.0 and row[REVENUE_LIFT] == 5.0
    se_r = math.sqrt(200 / 4 + 100 / 4)
    assert row[REVENUE_LIFT_LOW] == pytest.approx(5 - z * se_r) and row[REVENUE_LIFT_HIGH] == pytest.approx(5 + z * se_r)
    pd.testing.assert_series_equal(report.iloc[1][list(REPORT_COLUMNS[2:])], row[list(REPORT_COLUMNS[2:])],
                                   check_names=False)


def test_outcomes_per_decision_and_groups_per_action_and_channel() -> None:
    dec = pd.concat([decisions([("a", "2025-03-01T00:00:00Z", False), ("a", "2025-03-03T00:00:00Z", True)]),
                     decisions([("b", "2025-03-01T00:00:00Z", False)], action="cross_sell", channel="sms")],
                    ignore_index=True)
    ev = purchases([("a", "2025-03-03T12:00:00Z", 12.5)])
    ev = pd.concat([ev, ev.assign(**{EVENT_TYPE: "view", PRICE: 1000.0})], ignore_index=True)  # views are not sales
    out = decision_outcomes(dec, ev, window=3)  # days
    assert out[CONVERTED].tolist() == [True, True, False]  # one purchase in two overlapping windows counts twice
    assert out[REVENUE].tolist() == [12.5, 12.5, 0.0]
    report = lift_report(dec, ev, window=3)
    assert list(zip(report[ACTION], report[CHANNEL], strict=True)) == [
        ("cross_sell", "sms"), ("winback_offer", "email"), (ALL, ALL)]
    cross = report.iloc[0]
    assert cross[N_TREATED] == 1 and cross[N_HOLDOUT] == 0 and math.isnan(cross[CONVERSION_LIFT])


def test_holdout_flags_from_a_csv_and_bad_input_name_the_column(tmp_path: Path) -> None:
    dec = decisions([("a", "2025-03-01T00:00:00Z", False), ("b", "2025-03-01T00:00:00Z", True)])
    path = tmp_path / "d.csv"
    dec.to_csv(path, index=False)
    back = pd.read_csv(path).assign(**{HOLDOUT: ["false", "true"]})
    report = lift_report(back, purchases([("a", "2025-03-02T00:00:00Z", 5.0)]))
    assert report.iloc[0][N_TREATED] == 1 and report.iloc[0][CONVERSION_LIFT] == 1.0
    with pytest.raises(ValueError, match=HOLDOUT):
        lift_report(back.assign(**{HOLDOUT: ["maybe", "true"]}), purchases([]))
    with pytest.raises(ValueError, match=ACTION):
        lift_report(back.drop(columns=[ACTION]), purchases([]))
    with pytest.raises(ValueError, match="window"):
        lift_report(back, purchases([]), window=0)


def test_the_report_goes_to_mlflow_with_its_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from training.registry import configure_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    dec = decisions([("a", "2025-03-01T00:00:00Z", False), ("b", "2025-03-01T00:00:00Z", True),
                     ("c", "2025-03-01T00:00:00Z", False)])
    report = lift_report(dec, purchases([("a", "2025-03-02T00:00:00Z", 5.0)]))
    run = lift.log_lift_report(report, window=pd.Timedelta(days=7), experiment="lift-test")
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.run_id)}
    assert {"lift.csv", "lift.png", "lift.json"} <= names
    assert mlflow.get_run(run.run_id).data.metrics[CONVERSION_LIFT] == pytest.approx(0.5)
