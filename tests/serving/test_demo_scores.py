"""The demo's scores mean something: data that end today (`mirror generate`'s default, `make demo`)
give purchase propensities that differ between customers and a mix of top actions over HTTP, where
the same models on data that ended 17 months ago (the demo before `--end`) score everyone alike.

Slow (`make test-slow`): it trains the two propensity models of the real pipeline on a small
demo-like data set and starts a server of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from mirror_server import log_recommender, set_champion, start_server, tracking

from features.schema import CHURN_MODEL, CUSTOMER_ID, PURCHASE_MODEL, RECOMMENDER_MODEL, champion_uri
from features.store import SQLiteProfileStore
from features.synthetic import DEFAULT_START, SyntheticConfig, generate
from serving import nba

pytestmark = pytest.mark.slow

CUSTOMERS, DAYS, SEED = 300, 120, 7


def _config(**when: str) -> SyntheticConfig:
    return SyntheticConfig(customers=CUSTOMERS, days=DAYS, seed=SEED, **when)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, list[str], Path]]:
    from training.propensity import PropensityConfig, train_propensity

    tmp = tmp_path_factory.mktemp("demo")
    today = datetime.now(UTC).date().isoformat()
    data = generate(_config(end=today))  # what `mirror generate` writes by default
    assert data.events["ts"].max() > datetime.now(UTC) - np.timedelta64(2, "D")
    with tracking(f"file:{tmp / 'mlruns'}"):
        set_champion(RECOMMENDER_MODEL, log_recommender(tmp))
        for target, name in (("churn", CHURN_MODEL), ("purchase", PURCHASE_MODEL)):
            res = train_propensity(PropensityConfig(target=target, n_estimators=60, early_stopping_rounds=20,
                                                    progress=False), data.events)
            if not res.promoted:  # lost to its baseline on this small set: the baseline is served (as in the demo)
                from mlflow import MlflowClient

                latest = max(MlflowClient().search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
                set_champion(name, latest.version)
    store = SQLiteProfileStore(tmp / "store.db")
    store.load_events(data.events, progress=False)
    store.close()
    customers = sorted(data.events[CUSTOMER_ID].dropna().astype(str).unique())
    gen = start_server(tmp, tiny_champions=False, seed=False)
    server = next(gen)
    try:
        yield server, customers, tmp
    finally:
        for _ in gen:
            pass


def test_demo_scores_vary_and_actions_mix(demo):
    server, customers, _ = demo
    r = server.post("/scores", {"customer_ids": customers, "messages": False})
    assert r.status_code == 200, r.text
    rows = r.json()["scores"]
    assert len(rows) == len(customers) and r.json()["unknown"] == []
    propensity = np.array([s["purchase_propensity"] for s in rows], dtype=float)
    assert np.isfinite(propensity).all()
    assert propensity.std() > 0.02 and len(np.unique(propensity.round(4))) > 50, propensity[:10]
    actions = Counter(s["top_action"] for s in rows)
    acting = {a for a in actions if a != nba.DO_NOTHING}
    assert len(acting) >= 3, actions  # not one action for everyone
    assert max(actions.values()) < 0.9 * len(rows), actions


def test_stale_data_is_what_made_the_demo_scores_constant(demo):
    """The same champions on the same customers, but the history ended 17 months ago (the data set
    generated from the old fixed start): every feature is 'long ago', so every propensity is alike."""
    import mlflow

    from serving.decisions import DecisionEngine
    from serving.guard import load_policy
    from serving.recommend import RecommendationPolicy

    server, _, tmp = demo
    stale = generate(_config(start=DEFAULT_START))
    assert stale.events["ts"].max() < datetime.now(UTC) - np.timedelta64(365, "D")
    store = SQLiteProfileStore(tmp / "stale.db")
    try:
        store.load_events(stale.events, progress=False)
        with tracking(server.tracking_uri):
            churn, purchase = (mlflow.sklearn.load_model(champion_uri(m)) for m in (CHURN_MODEL, PURCHASE_MODEL))
        policy = load_policy(None)
        table = DecisionEngine(store, policy, RecommendationPolicy(policy)).score(churn, purchase, store.profile_ids(),
                                                                                  messages=False)
    finally:
        store.close()
    fresh = np.array([s["purchase_propensity"] for s in server.post(
        "/scores", {"customer_ids": demo[1], "messages": False}).json()["scores"]])
    old = table[nba.PURCHASE_PROPENSITY].to_numpy(dtype=float)
    assert old.std() < fresh.std() / 5, (old.std(), fresh.std())
