"""`training.uplift`: the T-learner recovers planted effects (signs, harm included), beats propensity ranking
on Qini, the metrics are right on tiny hand-made cases, and a model that loses is never adopted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.profiles import FEATURE_COLUMNS
from features.schema import PROFILE_ID
from features.store import ACTION, HOLDOUT
from features.synthetic import DECISIONS, UPLIFT, SyntheticConfig, generate
from training import uplift
from training.lift import CONVERTED
from training.uplift import (
    PROPENSITY,
    QINI,
    UPLIFT_AT_BUDGET,
    UpliftConfig,
    evaluate,
    fit_propensity_ranker,
    fit_t_learner,
    qini_coefficient,
    uplift_at_k,
)

FAST = UpliftConfig(n_estimators=60, learning_rate=0.1, min_child_samples=30, experiment="uplift-test")


def planted(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Decisions whose effect depends on two features: lapsed customers gain +0.35, those who returned
    something are harmed (-0.25), everyone else +0.05; frequent buyers convert anyway (base 0.6)."""
    rng = np.random.default_rng(seed)
    lapsed = rng.random(n) < 0.4
    returned = ~lapsed & (rng.random(n) < 0.4)
    frequent = ~lapsed & ~returned
    base = np.where(frequent, 0.6, np.where(returned, 0.35, 0.05))
    effect = np.where(lapsed, 0.35, np.where(returned, -0.25, 0.05))
    hold = rng.random(n) < 0.5
    y = rng.random(n) < base + np.where(hold, 0.0, effect)
    table = pd.DataFrame({c: np.nan for c in FEATURE_COLUMNS}, index=range(n))
    table["days_since_last_purchase"] = np.where(lapsed, rng.uniform(40, 90, n), rng.uniform(0, 20, n))
    table["n_return"] = np.where(returned, rng.integers(1, 4, n), 0).astype(float)
    table["n_orders"] = np.where(frequent, rng.integers(3, 9, n), rng.integers(1, 3, n)).astype(float)
    table[ACTION] = "winback_offer"
    table[HOLDOUT] = hold
    table[CONVERTED] = y
    table[PROFILE_ID] = [f"p{i}" for i in range(n)]
    return table, effect


def test_the_learner_recovers_the_sign_of_planted_effects_and_beats_propensity_ranking() -> None:
    train, _ = planted(4000, seed=1)
    test, effect = planted(3000, seed=2)
    core = fit_t_learner(train, FAST)
    pred = core.predict(test)["uplift"].to_numpy()
    for value in (0.35, -0.25):  # the persuadable gain, the sleeping dogs lose
        assert np.sign(np.median(pred[effect == value])) == np.sign(value)
    assert pred[effect == 0.35].mean() > pred[effect == 0.05].mean() > pred[effect == -0.25].mean()
    ranker = fit_propensity_ranker(train, core, FAST)
    ev = evaluate(core, ranker, test, FAST)
    assert ev.beats_propensity and ev.winner == "uplift"
    assert ev.metrics[QINI] > ev.baselines[PROPENSITY][QINI]
    assert ev.metrics[UPLIFT_AT_BUDGET] > ev.baselines[PROPENSITY][UPLIFT_AT_BUDGET]
    best = core.rank_actions(test.head(3))
    assert best["row"].tolist() == [0, 1, 2] and set(best[ACTION]) == {"winback_offer"}


def test_metrics_by_hand() -> None:
    # 4 customers, best score first: treated converts, held-out does not, treated does not, held-out converts
    y = np.array([1, 0, 0, 1])
    t = np.array([True, False, True, False])
    score = np.array([0.9, 0.8, 0.7, 0.1])
    assert uplift_at_k(y, t, score, 0.5) == 1.0  # top 2: treated 1/1, held out 0/1
    assert uplift_at_k(y, t, score, 1.0) == 0.0  # everyone: 1/2 against 1/2
    assert np.isnan(uplift_at_k(y, t, score, 0.25))  # top 1 has no held-out customer
    assert qini_coefficient(y, t, score) > 0 > qini_coefficient(y, t, -score)


@pytest.fixture(scope="module")
def journeys() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    data = generate(SyntheticConfig(customers=900, days=60, seed=4, journeys=True))
    from features.identity import resolve_identities

    return data.truth[DECISIONS], resolve_identities(data.events), data.truth[UPLIFT]


def test_train_uplift_adopts_a_winner_and_refuses_a_loser(journeys, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from training.registry import configure_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    decisions, events, _ = journeys
    won = uplift.train_uplift(FAST, decisions, events)
    assert won.promoted and won.version == "1" and "beats propensity" in won.reason, won.reason
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(uplift.UPLIFT_MODEL, "champion").version) == "1"
    run = client.get_run(won.run_id)
    assert run.data.tags["mirror.winner"] == "uplift" and run.info.run_name.startswith("uplift-")
    # the registry's names: `<split>_<metric>`, baselines under their prefix, and both decision tables as datasets
    assert set(won.metrics) == {"test_qini", "test_uplift_at_budget"}
    assert won.baselines[PROPENSITY].keys() == won.metrics.keys() and uplift.RANDOM in won.baselines
    assert {"test_qini", "baseline_propensity_test_qini", "baseline_random_test_qini"} <= set(run.data.metrics)
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"uplift-decisions-training", "uplift-decisions-test"}

    real = uplift.evaluate

    def losing(*args: object, **kwargs: object) -> uplift.UpliftEvaluation:
        ev = real(*args, **kwargs)  # type: ignore[arg-type]
        worse = {k: ev.baselines[PROPENSITY][k] - 0.01 for k in ev.metrics}
        return dataclasses.replace(ev, metrics=worse, beats_propensity=False, winner=PROPENSITY,
                                   reason="not adopted: test")

    monkeypatch.setattr(uplift, "evaluate", losing)
    lost = uplift.train_uplift(FAST, decisions, events)
    # the registry's one baseline gate: registered, never champion, tagged with the baseline that beat it
    assert not lost.promoted and lost.version == "2" and "loses to its baseline propensity" in lost.reason, lost.reason
    assert str(client.get_model_version_by_alias(uplift.UPLIFT_MODEL, "champion").version) == "1"
    assert client.get_model_version(uplift.UPLIFT_MODEL, "2").tags["mirror.lost_to_baseline"] == PROPENSITY
    assert client.get_run(lost.run_id).data.tags["mirror.winner"] == PROPENSITY


def test_features_are_point_in_time(journeys) -> None:
    decisions, events, _ = journeys
    some = decisions.head(40)
    table = uplift.decision_table(some, events, FAST)
    assert len(table) == len(some) and table["decision_id"].tolist() == some["decision_id"].tolist()
    # nothing at or after the day of the decision counts: the tenure is at most the days since the first event
    first = events.groupby(PROFILE_ID)["ts"].min()
    day = pd.to_datetime(table["ts"], utc=True).dt.floor("1D")
    upper = (day - table[PROFILE_ID].map(first)).dt.total_seconds() / 86400
    assert (table["tenure_days"].dropna() <= upper[table["tenure_days"].notna()] + 1e-9).all()
