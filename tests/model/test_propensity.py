"""Propensity pipeline on small synthetic data with planted churners: known answers, no leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.schema import CHURN_MODEL, PROFILE_ID, TS
from training import propensity as pr


@pytest.fixture(scope="module")
def synthetic():
    from features.identity import resolve_identities
    from features.synthetic import SyntheticConfig, event_person_ids, generate

    data = generate(SyntheticConfig(customers=1200, days=120, seed=3))
    events = resolve_identities(data.events)
    person = event_person_ids(data)
    owner = pd.DataFrame({PROFILE_ID: events[PROFILE_ID].to_numpy(), "person_id": person.to_numpy()})
    owner = owner.dropna().groupby(PROFILE_ID)["person_id"].agg(lambda s: s.mode().iloc[0])
    persons = data.truth["persons"].set_index("person_id")
    return events, owner, persons


@pytest.fixture(scope="module")
def tracking() -> None:
    from training.registry import configure_tracking

    configure_tracking()


def test_features_ignore_events_after_the_cutoff(synthetic) -> None:
    events, _, _ = synthetic
    cfg = pr.PropensityConfig(progress=False)
    cut = events[TS].min() + pd.Timedelta(days=50)
    base = pr.build_training_table(events, cut, cfg)
    later = events[TS] >= cut
    changed = events.copy()
    changed.loc[later, TS] = changed.loc[later, TS] + pd.Timedelta(days=1)   # shift the future a little
    changed = changed.loc[~(later & (np.arange(len(events)) % 3 == 0))]     # and drop a third of it
    after = pr.build_training_table(changed, cut, cfg)
    feats = [c for c in base.columns if c != cfg.target]
    pd.testing.assert_frame_equal(base[feats].set_index(PROFILE_ID),
                                  after[feats].set_index(PROFILE_ID).reindex(base[PROFILE_ID]))
    assert not base[cfg.target].equals(after.set_index(PROFILE_ID).reindex(base[PROFILE_ID])[cfg.target]
                                       .reset_index(drop=True))  # labels do see the future


def test_same_seed_same_metrics(synthetic) -> None:
    events, _, _ = synthetic
    cfg = pr.PropensityConfig(progress=False, seed=7)
    t_train, t_val, _ = pr.cutoffs(events, cfg)
    tr, va = pr.build_training_table(events, t_train, cfg), pr.build_training_table(events, t_val, cfg)
    cols = [c for c in tr.columns if c not in (PROFILE_ID, cfg.target)]
    half = len(va) // 2
    args = (tr[cols], tr[cfg.target], va[cols].iloc[:half], va[cfg.target].iloc[:half],
            va[cols].iloc[half:], va[cfg.target].iloc[half:], cfg)
    a, b = pr.fit_propensity(*args), pr.fit_propensity(*args)
    assert a.metrics == b.metrics and a.baselines == b.baselines
    np.testing.assert_array_equal(a.p_eval, b.p_eval)


def test_planted_churner_scores_above_loyal_customer(synthetic, tracking) -> None:
    import mlflow
    from sklearn.metrics import roc_auc_score

    from features.profiles import FEATURE_COLUMNS

    events, owner, persons = synthetic
    # a 30-day horizon puts the cutoff late enough that part of the planted churners have already faded out
    cfg = pr.PropensityConfig(progress=False, horizon_days=30, experiment="test-propensity")
    res = pr.train_propensity(cfg, events)
    assert res.model_name == CHURN_MODEL and res.promoted and res.version == "1"
    assert {"test_roc_auc", "test_pr_auc", "test_brier", "test_lift_top_decile"} <= set(res.metrics)
    assert set(res.baselines) == {"logistic_regression", "base_rate"}
    assert res.metrics["test_roc_auc"] > 0.65 > res.baselines["base_rate"]["test_roc_auc"]

    # score the validation population as serving would: from the registry, FEATURE_COLUMNS only
    _, t_val, _ = pr.cutoffs(events, cfg)
    table = pr.build_training_table(events, t_val, cfg)
    model = mlflow.sklearn.load_model(res.model_uri)
    p = model.predict_proba(table[list(FEATURE_COLUMNS)])[:, 1]
    truth = persons.loc[owner.reindex(table[PROFILE_ID]).to_numpy()]
    churned = truth["churned"].to_numpy(dtype=bool)
    gone = churned & (truth["churn_date"] < t_val).to_numpy()     # planted churners already gone at the cutoff
    assert roc_auc_score(churned, p) > 0.58                          # against the planted truth, all churners
    assert roc_auc_score(gone[gone | ~churned], p[gone | ~churned]) > 0.68
    loyal = np.flatnonzero(~churned)
    most_loyal = loyal[np.argmax(table["n_orders"].to_numpy()[loyal])]
    first_gone = np.flatnonzero(gone)[np.argmin(truth["churn_date"].to_numpy()[gone])]
    assert p[first_gone] > p[most_loyal]
    assert np.median(p[gone]) > np.median(p[~churned])


def test_table_path_registers_and_keeps_champion_on_worse_model(tracking) -> None:
    import mlflow

    rng = np.random.default_rng(0)
    n = 800
    tenure = rng.integers(0, 72, n)
    plan = rng.choice(["monthly", "yearly", "two_year"], n)
    logit = 1.0 - 0.05 * tenure + np.where(plan == "monthly", 1.5, -1.0)
    churn = rng.random(n) < 1 / (1 + np.exp(-logit))
    table = pd.DataFrame({"cust_id": [f"x{i}" for i in range(n)], "tenure": tenure, "plan": plan,
                          "noise": rng.normal(size=n), "Churned": np.where(churn, "Yes", "No")})
    cfg = pr.PropensityConfig(progress=False, seed=1, experiment="test-propensity")
    good = pr.train_propensity_table(cfg, table, "Churned")
    assert good.model_name == "mirror-propensity-churned" and good.promoted
    assert good.metrics["test_roc_auc"] > 0.75
    model = mlflow.sklearn.load_model(good.model_uri)
    proba = model.predict_proba(table.drop(columns=["cust_id", "Churned"]).head(3))
    assert proba.shape == (3, 2) and np.allclose(proba.sum(1), 1)
    # same columns, signal destroyed: the champion is re-scored on the same evaluation and kept
    shuffled = table.assign(tenure=rng.permutation(tenure), plan=rng.permutation(plan))
    worse = pr.train_propensity_table(cfg, shuffled, "Churned")
    # not champion: it does not beat the champion (or is already below its own baselines)
    assert not worse.promoted and ("does not beat" in worse.reason or "loses to its baseline" in worse.reason)


def test_a_lightgbm_that_loses_to_its_logistic_baseline_is_not_champion(tracking) -> None:
    """A purely linear signal over many weak features, few rows: logistic regression wins on the same test
    split, so the LightGBM model is registered without the alias and the run says why; the logistic
    regression itself is then registered as a candidate (and, with no champion yet, becomes it)."""
    import mlflow

    from training.registry import TAG_LOST_TO_BASELINE

    rng = np.random.default_rng(4)
    n, k = 300, 12
    X = rng.normal(size=(n, k))
    y = rng.random(n) < 1 / (1 + np.exp(-(X @ np.full(k, 0.45))))
    table = pd.DataFrame(X, columns=[f"f{i}" for i in range(k)]).assign(bought=y.astype(int))
    client = mlflow.MlflowClient()
    cfg = pr.PropensityConfig(progress=False, seed=0, experiment="test-propensity", fallback_to_baseline=False)
    res = pr.train_propensity_table(cfg, table, "bought", model_name="test-loses-to-lr")
    lr = res.baselines["logistic_regression"]["test_roc_auc"]
    assert res.metrics["test_roc_auc"] < lr
    assert not res.promoted and res.version == "1"
    assert res.reason.startswith("not promoted: test_roc_auc") and "loses to its baseline logistic_regression" in res.reason
    assert client.get_run(res.run_id).data.tags[TAG_LOST_TO_BASELINE] == "logistic_regression"
    assert not client.get_registered_model("test-loses-to-lr").aliases

    again = pr.train_propensity_table(pr.with_overrides(cfg, fallback_to_baseline=True), table, "bought",
                                      model_name="test-loses-to-lr")
    assert not again.promoted and again.version == "2"  # LightGBM: never champion
    assert "logistic_regression registered instead as v3: promoted" in again.reason
    assert {k: str(v) for k, v in client.get_registered_model("test-loses-to-lr").aliases.items()} == {"champion": "3"}
    served = mlflow.sklearn.load_model("models:/test-loses-to-lr@champion")
    assert type(served.named_steps["model"]).__name__ == "LogisticRegression"


def test_logged_input_example_is_no_customers_own_row() -> None:
    """The example MLflow keeps with the model outlives any erasure: medians and modes, not a person."""
    import pandas as pd

    from training.propensity import typical_row

    X = pd.DataFrame({"spend": [10.0, 20.0, 990.0], "plan": pd.array(["a", "b", "b"], dtype="string"),
                      "n": [1, 3, 5]})
    row = typical_row(X)
    assert row.to_dict("records") == [{"spend": 20.0, "plan": "b", "n": 3}]
    assert row.dtypes.to_dict() == X.dtypes.to_dict()
    assert X["spend"].tolist() == [10.0, 20.0, 990.0]  # the caller's frame is untouched
