"""The server on champions from the REAL training pipelines (tiny synthetic data); `make test-slow`.

Slow because training logs three models (~40 s on the shared machine) and starts a second server.
The answers are checked against the registered models themselves, loaded in this process.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirror_server import Server, start_server, tracking

from features.schema import (
    CHAMPION_ALIAS,
    CHURN_MODEL,
    EVENT_TYPE,
    ITEM_ID,
    PROFILE_ID,
    PURCHASE,
    PURCHASE_MODEL,
    RECOMMENDER_MODEL,
    champion_uri,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, object, object]]:
    import mlflow

    from features.store import SQLiteProfileStore
    from features.synthetic import SyntheticConfig, generate
    from training.propensity import PropensityConfig, train_propensity
    from training.recommender import RecommenderTrainConfig, train_recommender

    tmp: Path = tmp_path_factory.mktemp("real")
    data = generate(SyntheticConfig(customers=300, days=120, seed=3))
    uri = f"file:{tmp / 'mlruns'}"
    with tracking(uri):
        grid = RecommenderTrainConfig()
        rec = train_recommender(RecommenderTrainConfig(weight_grid=grid.weight_grid[:1], als_grid=grid.als_grid[:1],
                                                       tracking_uri=uri), data.events)
        assert rec.promoted
        for target in ("churn", "purchase"):
            result = train_propensity(PropensityConfig(target=target, n_estimators=100, progress=False),
                                      data.events)
            # on 300 customers LightGBM may lose to its logistic-regression baseline, which is then the
            # champion registered from the same run: either way the service gets a champion
            champion = mlflow.MlflowClient().get_model_version_by_alias(result.model_name, CHAMPION_ALIAS)
            assert champion.run_id == result.run_id, result.reason
        model = mlflow.pyfunc.load_model(champion_uri(RECOMMENDER_MODEL)).unwrap_python_model()
    store = SQLiteProfileStore(tmp / "store.db")
    store.load_events(data.events, progress=False)
    events = store.export_events()
    store.close()
    gen = start_server(tmp, tiny_champions=False, seed=False)
    server = next(gen)
    try:
        yield server, model, events
    finally:
        for _ in gen:
            pass
        shutil.rmtree(tmp / "mlruns", ignore_errors=True)


def test_recommend_on_trained_champions(trained):
    server, model, events = trained
    models = server.client.get("/status").json()["models"]
    for name in (RECOMMENDER_MODEL, CHURN_MODEL, PURCHASE_MODEL):
        assert models[name]["loaded"] is True and models[name]["fallback"] is False, models
    buyers = events[events[EVENT_TYPE] == PURCHASE]
    pid = buyers[PROFILE_ID].value_counts().index[0]
    r = server.post("/recommend", {"customer_id": "unknown-person", "k": 5})
    assert r.status_code == 200 and r.json()["cold_start"] is True
    # GET the profile by id, then ask for it by its customer id
    cust = events.loc[events[PROFILE_ID] == pid, "customer_id"].dropna()
    body = server.post("/recommend", {"customer_id": str(cust.iloc[0]), "k": 10}).json()
    assert body["profile_id"] == pid and body["cold_start"] is False and len(body["items"]) == 10
    # bought items stay out, except consumables whose own re-buy interval has passed (the synthetic
    # history ended long before now, so every consumable is due again)
    from features.store import SQLiteProfileStore

    profile = SQLiteProfileStore(server.tmp / "store.db").get_profile(pid)
    durable = {e.item_id for e in profile.purchases} - set(profile.replenish_days)
    assert durable, "the busiest buyer should own something that is not a consumable"
    assert not durable & {x["item_id"] for x in body["items"]}
    assert all(model.has_item(x["item_id"]) for x in body["items"])


def test_similar_items_match_the_model(trained):
    server, model, events = trained
    item = events[ITEM_ID].dropna().value_counts().index[0]
    body = server.post("/similar_items", {"item_id": item, "k": 5}).json()
    assert [x["item_id"] for x in body["complements"]] == [i for i, _ in model.complements(item, 6) if i != item][:5]


def test_scores_on_trained_champions(trained):
    server, _, events = trained
    pids = sorted(events[PROFILE_ID].unique())[:200]
    r = server.post("/scores", {"profile_ids": pids})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["scores"]) + len(body["unknown"]) == len(pids)
    assert len(body["scores"]) > 150
    assert all(0 <= s["churn_probability"] <= 1 and 0 <= s["purchase_propensity"] <= 1 for s in body["scores"])
