"""One contract every Recommender passes, on block-structured data with a known answer.

Users of block A interact only with A-items (category "A"), users of block B only with B-items,
so a sensible model must recommend A-items to A-users, place a new user whose recent items are
B-items in block B, and keep those answers across save/load (implicit's RecommenderBase tests style).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.schema import CATEGORY, EVENT_TYPE, ITEM_ID, PROFILE_ID, PURCHASE, TS, VIEW
from training.recommender import (
    ALSConfig,
    ALSRecommender,
    BlendConfig,
    BlendRecommender,
    ComplementsRecommender,
    EASEConfig,
    EASERecommender,
    EnsembleConfig,
    EnsembleRecommender,
    EventWeights,
    GFCFConfig,
    GFCFRecommender,
    PopularityConfig,
    PopularityRecommender,
    RandomRecommender,
    Recommender,
    RP3BetaConfig,
    RP3BetaRecommender,
    interactions_from_events,
)

N_ITEMS = 12  # per block
N_USERS = 30  # per block
PER_USER = 6


def block_events(seed: int = 0) -> pd.DataFrame:
    """Each user views then buys items of their own block, two per basket."""
    rng = np.random.default_rng(seed)
    rows = []
    t0 = pd.Timestamp("2025-01-01", tz="UTC")
    for block in ("A", "B"):
        for u in range(N_USERS):
            items = rng.choice(N_ITEMS, size=PER_USER, replace=False)
            for j, it in enumerate(items):
                ts = t0 + pd.Timedelta(days=int(j // 2) * 3 + int(rng.integers(0, 2)), hours=u % 7)
                iid = f"{block}{it:02d}"
                rows.append((f"{block}-u{u:02d}", iid, ts - pd.Timedelta(hours=1), VIEW, block))
                rows.append((f"{block}-u{u:02d}", iid, ts, PURCHASE, block))
    df = pd.DataFrame(rows, columns=[PROFILE_ID, ITEM_ID, TS, EVENT_TYPE, CATEGORY])
    return df.sort_values(TS, kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def interactions() -> pd.DataFrame:
    return interactions_from_events(block_events(), EventWeights(half_life_days=None))


def _block(item: str) -> str:
    return item[0]


def _seen(inter: pd.DataFrame, user: str) -> set[str]:
    return set(inter.loc[inter[PROFILE_ID] == user, ITEM_ID])


class RecommenderContract:
    """Mixin: subclasses give `make()`; `personalised = False` skips the known-answer block tests."""

    personalised = True

    def make(self) -> Recommender:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, interactions: pd.DataFrame) -> Recommender:
        return cls().make().fit(interactions)

    def test_known_user_gets_own_block(self, fitted: Recommender, interactions: pd.DataFrame) -> None:
        if not self.personalised:
            pytest.skip("not a personalised model")
        for user in ("A-u03", "B-u07"):
            recs = fitted.recommend(user, k=4, exclude=_seen(interactions, user))
            assert len(recs) == 4
            assert {_block(i) for i, _ in recs} == {user[0]}, recs

    def test_exclusions_respected(self, fitted: Recommender, interactions: pd.DataFrame) -> None:
        user = "A-u01"
        first = [i for i, _ in fitted.recommend(user, k=5)]
        again = [i for i, _ in fitted.recommend(user, k=5, exclude=first[:2])]
        assert not set(first[:2]) & set(again)
        assert len(again) == 5

    def test_seen_items_filtered(self, fitted: Recommender, interactions: pd.DataFrame) -> None:
        user = "B-u02"
        seen = _seen(interactions, user)
        recs = fitted.recommend(user, k=2 * N_ITEMS, exclude=seen)
        assert not seen & {i for i, _ in recs}
        assert len(recs) == 2 * N_ITEMS - len(seen)  # everything else, once each

    def test_scores_sorted_and_unique(self, fitted: Recommender) -> None:
        recs = fitted.recommend("A-u05", k=10)
        scores = [s for _, s in recs]
        assert scores == sorted(scores, reverse=True)
        assert len({i for i, _ in recs}) == len(recs)

    def test_new_user_from_recent_items(self, fitted: Recommender) -> None:
        if not self.personalised:
            pytest.skip("not a personalised model")
        assert not fitted.has_user("nobody")
        recent = ["B00", "B03", "B05"]
        recs = fitted.recommend("nobody", k=4, exclude=recent, recent_items=recent)
        assert {_block(i) for i, _ in recs} == {"B"}, recs

    def test_cold_start_without_items(self, fitted: Recommender) -> None:
        recs = fitted.recommend("nobody", k=5)
        assert len(recs) == 5
        assert all(fitted.has_item(i) for i, _ in recs)

    def test_similar_items_same_block(self, fitted: Recommender) -> None:
        if not self.personalised:
            pytest.skip("not a personalised model")
        sims = fitted.similar_items("A04", k=3)
        assert "A04" not in {i for i, _ in sims}
        assert {_block(i) for i, _ in sims} == {"A"}, sims
        assert fitted.similar_items("unknown-item", k=3) == []

    def test_save_load_roundtrip(self, fitted: Recommender, tmp_path: Path) -> None:
        fitted.save(tmp_path / "m")
        loaded = type(fitted).load(tmp_path / "m")
        for user, recent in (("A-u04", ()), ("B-u09", ("A01",)), ("nobody", ("B02",)), ("nobody", ())):
            a = fitted.recommend(user, k=6, recent_items=recent)
            b = loaded.recommend(user, k=6, recent_items=recent)
            assert [i for i, _ in a] == [i for i, _ in b]
            np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-5)

    def test_bad_k_rejected(self, fitted: Recommender) -> None:
        with pytest.raises(ValueError):
            fitted.recommend("A-u01", k=0)


FAST_ALS = ALSConfig(factors=4, regularization=0.05, iterations=15, alpha=5.0, num_threads=1)


class TestALS(RecommenderContract):
    def make(self) -> Recommender:
        return ALSRecommender(FAST_ALS)

    def test_recent_items_shift_known_user(self, fitted: Recommender) -> None:
        """An event ingested a moment ago moves a known user's results without retraining."""
        def b_ranks(recs: list[tuple[str, float]]) -> float:
            return float(np.mean([r for r, (i, _) in enumerate(recs) if _block(i) == "B"]))

        base = fitted.recommend("A-u00", k=2 * N_ITEMS)
        moved = fitted.recommend("A-u00", k=2 * N_ITEMS, recent_items=["B01", "B02", "B03", "B04"])
        assert b_ranks(moved) < b_ranks(base) - 2  # B-items move up the list


class TestBlend(RecommenderContract):
    def make(self) -> Recommender:
        return BlendRecommender(BlendConfig(als=FAST_ALS))

    def test_complements_same_block(self, fitted: BlendRecommender) -> None:
        comps = fitted.complements("A02", k=5)
        assert comps and {_block(i) for i, _ in comps} == {"A"}
        assert [s for _, s in comps] == sorted((s for _, s in comps), reverse=True)

    def test_popular_per_category(self, fitted: BlendRecommender) -> None:
        assert {fitted.item_category(i) for i, _ in fitted.popular(5, category="B")} == {"B"}
        assert fitted.popular(3, category="no-such-category") == []


class TestComplements(RecommenderContract):
    def make(self) -> Recommender:
        return ComplementsRecommender()


class TestEASE(RecommenderContract):
    def make(self) -> Recommender:
        return EASERecommender(EASEConfig(l2=5.0))


class TestEASEWeightedInputBinaryTarget(RecommenderContract):
    def make(self) -> Recommender:
        return EASERecommender(EASEConfig(l2=5.0, binary=False, binary_target=True))


class TestRP3Beta(RecommenderContract):
    def make(self) -> Recommender:
        return RP3BetaRecommender(RP3BetaConfig(alpha=0.8, beta=0.3, top_k=10))

    def test_walk_scores_match_a_dense_reference(self, fitted: RP3BetaRecommender) -> None:
        """W = (P_iu^a P_ui^a) / pop^beta, diagonal removed: row A04 against a dense recomputation."""
        x = fitted._hist.toarray().astype(float)
        p_ui = (x / x.sum(1, keepdims=True)) ** 0.8
        p_iu = (x.T / x.sum(0)[:, None]) ** 0.8
        w = (p_iu @ p_ui) / x.sum(0)[None, :] ** 0.3
        np.fill_diagonal(w, 0.0)
        i = fitted.item_ids.index("A04")
        want = np.sort(w[i])[::-1][:10]
        got = [s for _, s in fitted.similar_items("A04", k=10)]
        np.testing.assert_allclose(got, want, rtol=1e-5)


class TestGFCF(RecommenderContract):
    def make(self) -> Recommender:
        return GFCFRecommender(GFCFConfig(alpha=0.5, factors=4))

    def test_filter_matches_a_dense_reference(self, fitted: GFCFRecommender) -> None:
        """Scores = r R~'R~ + alpha r Di^-1/2 V V' Di^1/2, R~ = Du^-1/2 R Di^-1/2, V from a dense SVD."""
        x = fitted._hist.toarray().astype(float)
        du, di = x.sum(1), x.sum(0)
        rn = x / np.sqrt(du)[:, None] / np.sqrt(di)[None, :]
        v = np.linalg.svd(rn)[2][:4].T
        want = x @ (rn.T @ rn) + 0.5 * (x / np.sqrt(di)) @ v @ v.T * np.sqrt(di)
        u = fitted._uidx["B-u05"]
        np.testing.assert_allclose(fitted.score_vector("B-u05"), want[u], rtol=1e-4, atol=1e-6)

    def test_without_the_ideal_filter_it_is_the_normalised_cooccurrence(self, interactions: pd.DataFrame) -> None:
        """alpha = 0: the linear filter alone; an item never co-occurring with the user's items scores 0."""
        m = GFCFRecommender(GFCFConfig(alpha=0.0)).fit(interactions)
        s = dict(zip(m.item_ids, m.score_vector("A-u01"), strict=True))
        assert all(v == 0.0 for i, v in s.items() if _block(i) == "B")
        assert all(v > 0.0 for i, v in s.items() if _block(i) == "A")


class TestEnsembleOfThree(RecommenderContract):
    def make(self) -> Recommender:
        return EnsembleRecommender(
            [EASERecommender(EASEConfig(l2=5.0)), ALSRecommender(FAST_ALS), RP3BetaRecommender()],
            EnsembleConfig((0.4, 0.4, 0.2)),
        )


class TestEnsembleWithPopularityPenalty(RecommenderContract):
    """A log-popularity member with a negative weight: a popularity penalty that keeps the contract."""

    def make(self) -> Recommender:
        pop = PopularityRecommender(PopularityConfig(recent_share=0.0, personal_categories=False, log_scale=True))
        return EnsembleRecommender([EASERecommender(EASEConfig(l2=5.0)), pop], EnsembleConfig((1.0, -0.1)))


class TestEnsemble(RecommenderContract):
    def make(self) -> Recommender:
        return EnsembleRecommender([EASERecommender(EASEConfig(l2=5.0)), ALSRecommender(FAST_ALS)], EnsembleConfig((0.6, 0.4)))

    def test_scores_are_the_weighted_sum_of_standardised_member_scores(
        self, fitted: EnsembleRecommender, interactions: pd.DataFrame
    ) -> None:
        ease, als = fitted.members
        want = {}
        for w, m in zip((0.6, 0.4), (ease, als), strict=True):
            s = m.score_vector("A-u03")
            for item, z in zip(m.item_ids, (s - s.mean()) / s.std(), strict=True):
                want[item] = want.get(item, 0.0) + w * z
        got = fitted.recommend("A-u03", k=5)
        best = sorted(want.items(), key=lambda kv: -kv[1])[:5]
        assert [i for i, _ in got] == [i for i, _ in best]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in best], rtol=1e-5)

    def test_with_weights_reuses_members_and_extreme_weights_reproduce_a_member(
        self, fitted: EnsembleRecommender
    ) -> None:
        only_ease = fitted.with_weights((1.0, 0.0))
        assert only_ease.members[0] is fitted.members[0]
        a = [i for i, _ in only_ease.recommend("B-u04", k=8)]
        b = [i for i, _ in fitted.members[0].recommend("B-u04", k=8)]
        assert a == b

    def test_rejects_mismatched_weights(self) -> None:
        with pytest.raises(ValueError):
            EnsembleRecommender([EASERecommender()], EnsembleConfig((0.5, 0.5)))


class TestPopularity(RecommenderContract):
    def make(self) -> Recommender:
        return PopularityRecommender()


class TestRandom(RecommenderContract):
    personalised = False

    def make(self) -> Recommender:
        return RandomRecommender(seed=3)


def test_event_weights_order_and_decay() -> None:
    t = pd.Timestamp("2025-02-01", tz="UTC")
    ev = pd.DataFrame(
        {
            PROFILE_ID: ["u"] * 4,
            ITEM_ID: ["i1", "i1", "i2", "i3"],
            TS: [t, t, t - pd.Timedelta(days=10), t],
            EVENT_TYPE: [VIEW, PURCHASE, PURCHASE, "return"],
        }
    )
    before = ev.copy()
    w = interactions_from_events(ev, EventWeights(view=1, purchase=4, return_=-2, half_life_days=10), as_of=t)
    pd.testing.assert_frame_equal(ev, before)  # caller's frame untouched
    got = dict(zip(zip(w[ITEM_ID], w[EVENT_TYPE], strict=True), w["weight"], strict=True))
    assert got[("i1", VIEW)] == pytest.approx(1.0)
    assert got[("i1", PURCHASE)] == pytest.approx(4.0)
    assert got[("i2", PURCHASE)] == pytest.approx(2.0)  # one half-life old
    assert got[("i3", "return")] == pytest.approx(-2.0)
