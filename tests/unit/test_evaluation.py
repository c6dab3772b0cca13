"""Ranking metrics and splits against hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.schema import CUSTOMER_ID, ITEM_ID, PROFILE_ID, TS
from training.evaluation import (
    SCORE,
    catalog_coverage,
    evaluate_recommender,
    hit_rate_at_k,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    stratified_split,
    time_split,
)


def _truth(pairs: list[tuple[str, str]], user_col: str = PROFILE_ID) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=[user_col, ITEM_ID])


def _recs(rows: list[tuple[str, str, float]], user_col: str = PROFILE_ID) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[user_col, ITEM_ID, SCORE])


@pytest.fixture()
def example() -> tuple[pd.DataFrame, pd.DataFrame]:
    # u1 relevant {a, b}: recs a, x, b.  u2 relevant {c}: recs y, z, c.  u3 has no truth: ignored.
    truth = _truth([("u1", "a"), ("u1", "b"), ("u2", "c")])
    recs = _recs(
        [("u1", "x", 0.8), ("u1", "a", 0.9), ("u1", "b", 0.7),  # unsorted on purpose
         ("u2", "y", 0.9), ("u2", "z", 0.5), ("u2", "c", 0.1), ("u3", "a", 1.0)]
    )
    return truth, recs


def test_precision_recall_hit(example: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    truth, recs = example
    assert precision_at_k(truth, recs, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert recall_at_k(truth, recs, 3) == pytest.approx(1.0)
    assert hit_rate_at_k(truth, recs, 3) == pytest.approx(1.0)
    assert precision_at_k(truth, recs, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert recall_at_k(truth, recs, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert hit_rate_at_k(truth, recs, 2) == pytest.approx(0.5)


def test_ndcg(example: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    truth, recs = example
    u1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    u2 = (1 / math.log2(4)) / 1
    assert ndcg_at_k(truth, recs, 3) == pytest.approx((u1 + u2) / 2)
    perfect = _recs([("u1", "a", 2.0), ("u1", "b", 1.0), ("u2", "c", 1.0)])
    assert ndcg_at_k(truth, perfect, 10) == pytest.approx(1.0)


def test_map(example: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    truth, recs = example
    u1 = (1 / 1 + 2 / 3) / 2
    u2 = (1 / 3) / 1
    assert map_at_k(truth, recs, 3) == pytest.approx((u1 + u2) / 2)


def test_map_normalised_by_all_relevant_items() -> None:
    truth = _truth([("u", i) for i in "abcd"])
    recs = _recs([("u", "a", 2.0), ("u", "b", 1.0)])
    assert map_at_k(truth, recs, 2) == pytest.approx(2 / 4)  # not 1.0: two relevant items never shown
    assert precision_at_k(truth, recs, 2) == pytest.approx(1.0)


def test_user_column_is_a_parameter() -> None:
    truth = _truth([("c1", "a")], CUSTOMER_ID)
    recs = _recs([("c1", "b", 2.0), ("c1", "a", 1.0)], CUSTOMER_ID)
    assert ndcg_at_k(truth, recs, 2, user_col=CUSTOMER_ID) == pytest.approx(1 / math.log2(3))
    with pytest.raises(ValueError, match="lacks columns"):
        ndcg_at_k(truth, recs, 2)


def test_catalog_coverage(example: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, recs = example
    catalog = list("abcxyzvw")
    assert catalog_coverage(recs, catalog) == pytest.approx(6 / 8)
    # top-1 per user: u1 a, u2 y, u3 a
    assert catalog_coverage(recs, catalog, k=1) == pytest.approx(2 / 8)


def test_stratified_split_matches_recommenders_draw() -> None:
    # np.random.seed(42); rand(4) = [0.375, 0.951, 0.732, 0.599]: rows sorted 0, 3, 2, 1 within item a,
    # ranks 1/4 .. 4/4, so rows 0, 3, 2 (rank <= 0.75) train and row 1 tests.
    df = pd.DataFrame({PROFILE_ID: ["u0", "u1", "u2", "u3"], ITEM_ID: ["a"] * 4})
    before = df.copy()
    train, test = stratified_split(df, ratio=0.75, seed=42, filter_by="item")
    pd.testing.assert_frame_equal(df, before)
    assert sorted(train.index) == [0, 2, 3]
    assert list(test.index) == [1]


def test_stratified_split_invariants() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({PROFILE_ID: rng.integers(0, 50, 500).astype(str), ITEM_ID: rng.integers(0, 20, 500).astype(str)})
    train, test = stratified_split(df, seed=42)
    assert sorted(train.index.tolist() + test.index.tolist()) == list(range(500))
    counts = df.groupby(ITEM_ID).size()
    assert (train.groupby(ITEM_ID).size().reindex(counts.index, fill_value=0) == np.floor(0.75 * counts)).all()
    again, _ = stratified_split(df, seed=42)
    other, _ = stratified_split(df, seed=7)
    assert again.index.equals(train.index)
    assert set(other.index) != set(train.index)


def test_time_split() -> None:
    t0 = pd.Timestamp("2025-01-01", tz="UTC")
    ev = pd.DataFrame({TS: [t0 + pd.Timedelta(days=d) for d in range(30)], ITEM_ID: [str(d) for d in range(30)]})
    train, test = time_split(ev, "2025-01-21", test_days=7)
    assert train[TS].max() < pd.Timestamp("2025-01-21", tz="UTC") <= test[TS].min()
    assert len(train) == 20 and len(test) == 7
    train2, test2 = time_split(ev, None, test_days=5)  # default: the last 5 days
    assert len(test2) == 5 and len(train2) == 25


class _Stub:
    """A model with fixed answers: returning users get their list, new users get 'pop'."""

    def __init__(self, lists: dict[str, list[str]]) -> None:
        self.lists = lists

    def has_user(self, user_id: str) -> bool:
        return user_id in self.lists

    def recommend(self, user_id, k=10, exclude=(), recent_items=()):  # noqa: ANN001, ANN201
        items = self.lists.get(user_id, ["p1", "p2", "p3"])
        items = [i for i in items if i not in set(exclude)]
        return [(i, float(len(items) - r)) for r, i in enumerate(items[:k])]


def test_evaluate_recommender_segments_and_exclusion() -> None:
    model = _Stub({"old": ["seen", "a", "b"]})
    train = _truth([("old", "seen")])
    test = _truth([("old", "a"), ("new", "p2")])
    m = evaluate_recommender(model, train, test, ks=(1, 2))
    # old: 'seen' excluded, so top-1 is 'a' (hit); new: top-1 p1 (miss), top-2 has p2.
    assert m["hit_rate@1_returning"] == 1.0 and m["hit_rate@1_new"] == 0.0
    assert m["hit_rate@1"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert m["ndcg@2_new"] == pytest.approx(1 / math.log2(3))
    assert m["n_users_new"] == 1 and m["n_users_returning"] == 1
    with pytest.raises(ValueError):
        evaluate_recommender(model, train, test.iloc[:0])
