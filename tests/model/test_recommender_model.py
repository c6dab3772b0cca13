"""Known answers on the synthetic generator, and the MLflow round trip serving relies on."""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pandas as pd
import pytest

from features.identity import resolve_identities
from features.schema import CUSTOMER_ID, ITEM_ID, PROFILE_ID
from features.synthetic import SyntheticConfig, generate
from training.recommender import (
    ALSConfig,
    BlendConfig,
    BlendRecommender,
    EventWeights,
    RecommenderTrainConfig,
    interactions_from_events,
    train_recommender,
)


@pytest.fixture(scope="module")
def data():  # noqa: ANN201
    return generate(SyntheticConfig(customers=3000, days=90, seed=1))


@pytest.fixture(scope="module")
def blend(data) -> BlendRecommender:  # noqa: ANN001
    inter = interactions_from_events(data.events, EventWeights(half_life_days=None), user_col=CUSTOMER_ID)
    return BlendRecommender(BlendConfig(als=ALSConfig(num_threads=1)), user_col=CUSTOMER_ID).fit(inter, data.items)


def test_planted_complements_found(data, blend: BlendRecommender) -> None:  # noqa: ANN001
    pairs = data.truth["complements"]
    assert len(pairs) >= 50
    found = [c in {i for i, _ in blend.complements(a, 5)} for a, c in zip(pairs[ITEM_ID], pairs["complement_item_id"], strict=True)]
    assert np.mean(found) >= 0.8


def test_recommend_latency_under_1ms(blend: BlendRecommender) -> None:
    core = blend._c()
    users = core.user_ids[:200]
    t0 = time.perf_counter()
    for u in users:
        core.recommend(u, 10, exclude=core.item_ids[:5], recent_items=core.item_ids[10:12])
    per_call = (time.perf_counter() - t0) / len(users)
    assert per_call < 1e-3, per_call


def test_pipeline_logs_loads_and_promotes_only_on_improvement(data) -> None:  # noqa: ANN001
    events = data.events
    small = events.loc[events[CUSTOMER_ID].isin(pd.unique(events[CUSTOMER_ID].dropna())[:1200])]
    cfg = RecommenderTrainConfig(
        user_col=CUSTOMER_ID,
        weight_grid=(EventWeights(),),
        als_grid=(ALSConfig(factors=16, iterations=8),),
        num_threads=1,
        progress=False,
        experiment="test-recommender",
        model_name="test-recommender",
    )
    first = train_recommender(cfg, small)
    assert first.promoted and first.version == "1"
    m, pop, rnd = first.metrics, first.baselines["popularity"], first.baselines["random"]
    assert m["test_ndcg_at_10"] > pop["test_ndcg_at_10"] > rnd["test_ndcg_at_10"]
    assert {"test_ndcg_at_20", "test_map_at_10", "test_hit_rate_at_20", "test_coverage_at_10",
            "test_ndcg_at_10_returning"} <= set(m)

    served = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@champion").unwrap_python_model()
    user = next(u for u in pd.unique(small[CUSTOMER_ID].dropna()) if served.has_user(u))
    recs = served.recommend(user, 10)
    assert len(recs) == 10 and all(served.has_item(i) for i, _ in recs)
    moved = served.recommend(user, 10, recent_items=[i for i, _ in served.popular(50)[-5:]])
    assert [i for i, _ in moved] != [i for i, _ in recs]
    item = recs[0][0]
    assert served.item_category(item) is not None
    assert len(served.popular(5, category=served.item_category(item))) == 5

    # the pyfunc contract: k may be left out (10 per user); the output is one ranked row per item
    pyfunc = mlflow.pyfunc.load_model(first.model_uri)
    assert not pyfunc.metadata.get_input_schema().input_dict()["k"].required
    batch = pyfunc.predict(pd.DataFrame({"user_id": [user, user + "-unknown"]}))
    assert batch.groupby("user_id")["rank"].apply(list).to_dict() == {u: list(range(1, 11)) for u in
                                                                      (user, user + "-unknown")}
    assert batch.loc[batch["user_id"] == user, "item_id"].tolist() == [i for i, _ in recs]
    two = pyfunc.predict(pd.DataFrame({"user_id": [user], "k": [2]}))
    assert two["item_id"].tolist() == [i for i, _ in recs[:2]]

    again = train_recommender(cfg, small)  # same seed and data: same score, so no promotion
    assert again.metrics["test_ndcg_at_10"] == pytest.approx(first.metrics["test_ndcg_at_10"])
    assert not again.promoted and again.version == "2"


def test_default_user_column_resolves_events_to_profiles() -> None:
    """Events without profile_id (the raw omnichannel feed) are resolved to profiles before training."""
    events = generate(SyntheticConfig(customers=300, days=60, seed=2)).events
    assert PROFILE_ID not in events
    cfg = RecommenderTrainConfig(
        weight_grid=(EventWeights(),),
        als_grid=(ALSConfig(factors=8, iterations=5),),
        num_threads=1,
        progress=False,
        experiment="test-recommender-profiles",
        model_name="test-recommender-profiles",
    )
    result = train_recommender(cfg, events)
    served = mlflow.pyfunc.load_model(result.model_uri).unwrap_python_model()
    profiles = resolve_identities(events)
    users = set(served._c().user_ids)
    assert users and users <= set(profiles[PROFILE_ID].dropna().astype(str))
    assert not users & set(events[CUSTOMER_ID].dropna().astype(str))  # keyed by profile, not customer
    # a profile whose item events arrived partly anonymously (cookie only) is one user, not two
    anon = profiles.loc[profiles[CUSTOMER_ID].isna() & profiles[ITEM_ID].notna(), PROFILE_ID].astype(str)
    named = profiles.loc[profiles[CUSTOMER_ID].notna(), PROFILE_ID].astype(str)
    linked = sorted(set(anon) & set(named) & users)
    assert linked
    recs = served.recommend(linked[0], 10)
    assert len(recs) == 10 and all(served.has_item(i) for i, _ in recs)
    assert result.metrics["test_ndcg_at_10"] > result.baselines["random"]["test_ndcg_at_10"]
