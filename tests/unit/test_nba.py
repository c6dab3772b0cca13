"""Next-best-action: known answers, ranking invariants, channel consistency, holdout, batch = scalar."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.schema import CHANNELS, PROFILE_ID
from serving.nba import (
    ACTION_NAMES,
    ACTIONS,
    CART_REMINDER,
    CART_VALUE,
    CHURN_PROBABILITY,
    COUNTERFACTUAL_ACTION,
    CROSS_SELL,
    DAYS_SINCE_LAST_PURCHASE,
    DO_NOTHING,
    EXPECTED_ORDER_VALUE,
    EXPECTED_VALUE,
    HAS_CANDIDATES,
    HOLDOUT,
    LIFETIME_VALUE,
    LOYALTY_REWARD,
    NEGATIVE_SENTIMENT_RECENT,
    ORDER_COUNT,
    POST_PURCHASE_CARE,
    PURCHASE_PROPENSITY,
    REPLENISHMENT_DUE,
    REPLENISHMENT_REMINDER,
    RETURNED_RECENTLY,
    SERVICE_RECOVERY,
    TOP_ACTION,
    TRIED_ON_OFFER,
    WINBACK_OFFER,
    CandidateItem,
    ItemValue,
    NBAConfig,
    NBAContext,
    decide_actions,
    decide_top_actions_batch,
    holdout_draw,
    is_holdout,
    time_bucket,
)

NO_HOLDOUT = NBAConfig(holdout_share=0.0)
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def ctx(**kw: object) -> NBAContext:
    base: dict[str, object] = {"profile_id": "p_1", "now": NOW, "channel": "web"}
    base.update(kw)
    return NBAContext(**base)  # type: ignore[arg-type]


def names(decision) -> list[str]:
    return [a.name for a in decision.actions]


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def test_registry_names_every_action_once() -> None:
    assert sorted(ACTION_NAMES) == sorted(
        {
            CART_REMINDER,
            REPLENISHMENT_REMINDER,
            CROSS_SELL,
            WINBACK_OFFER,
            SERVICE_RECOVERY,
            LOYALTY_REWARD,
            TRIED_ON_OFFER,
            POST_PURCHASE_CARE,
            DO_NOTHING,
        }
    )
    assert len(set(ACTION_NAMES)) == len(ACTION_NAMES)
    assert all(a.channels for a in ACTIONS)


# ---------------------------------------------------------------------------------------------
# Known answers
# ---------------------------------------------------------------------------------------------
def test_cart_reminder_expected_value_known_answer() -> None:
    c = NO_HOLDOUT
    d = decide_actions(
        ctx(cart=(ItemValue("a", 100.0, "shoes"), ItemValue("b", 20.0, "socks")), purchase_propensity=0.5), c
    )
    top = d.top
    assert top.name == CART_REMINDER
    # uplift 0.15 * propensity 0.5 * cart 120 * margin 0.3 - contact 0.05
    assert top.expected_value == pytest.approx(0.15 * 0.5 * 120 * 0.3 - 0.05)
    assert top.params == {"item_ids": ["a", "b"], "categories": ["shoes", "socks"]}
    assert names(d)[-1] == DO_NOTHING


def test_winback_expected_value_known_answer() -> None:
    c = NO_HOLDOUT
    d = decide_actions(
        ctx(churn_probability=0.6, order_count=4, lifetime_value=400.0, last_purchase_ts=NOW - 60 * DAY), c
    )
    wb = next(a for a in d.actions if a.name == WINBACK_OFFER)
    # customer value = avg order 100 * 3 orders saved * margin 0.3 = 90; 0.6*90*0.1 - 1 - 0.05
    assert wb.expected_value == pytest.approx(0.6 * 90 * 0.1 - 1.0 - 0.05)
    assert wb.params == {"discount_pct": 15}


def test_winback_needs_churn_risk_and_lapse() -> None:
    c = NO_HOLDOUT
    recent = decide_actions(
        ctx(churn_probability=0.9, order_count=4, lifetime_value=400.0, last_purchase_ts=NOW - 5 * DAY), c
    )
    loyal = decide_actions(
        ctx(churn_probability=0.1, order_count=4, lifetime_value=400.0, last_purchase_ts=NOW - 60 * DAY), c
    )
    assert WINBACK_OFFER not in names(recent)
    assert WINBACK_OFFER not in names(loyal)


def test_do_nothing_wins_when_nothing_is_positive() -> None:
    # a tiny cart and a low propensity: the reminder costs more than it brings in
    d = decide_actions(ctx(cart=(ItemValue("a", 1.0),), purchase_propensity=0.01), NO_HOLDOUT)
    assert d.top.name == DO_NOTHING and d.top.expected_value == 0.0
    assert names(d) == [DO_NOTHING, CART_REMINDER]
    assert d.actions[1].expected_value < 0


def test_empty_profile_gets_do_nothing_only() -> None:
    d = decide_actions(ctx(), NO_HOLDOUT)
    assert names(d) == [DO_NOTHING] and not d.holdout


def test_ranking_is_by_expected_value() -> None:
    d = decide_actions(
        ctx(
            cart=(ItemValue("a", 200.0),),
            replenishment_due=(ItemValue("r", 30.0, "soap"),),
            candidate_items=(CandidateItem("x", 0.9, "hats"),),
            purchase_propensity=0.8,
            order_count=6,
            lifetime_value=600.0,
            churn_probability=0.1,
        ),
        NO_HOLDOUT,
    )
    positive = [a for a in d.actions if a.name != DO_NOTHING and a.expected_value > 0]
    assert [a.expected_value for a in positive] == sorted((a.expected_value for a in positive), reverse=True)
    assert d.top.name == CART_REMINDER
    assert {CROSS_SELL, REPLENISHMENT_REMINDER, LOYALTY_REWARD} <= set(names(d))


def test_cross_sell_params_skip_cart_items_and_follow_scores() -> None:
    d = decide_actions(
        ctx(
            cart=(ItemValue("a", 1.0),),
            order_count=2,
            lifetime_value=500.0,
            purchase_propensity=0.9,
            candidate_items=(
                CandidateItem("a", 0.99),
                CandidateItem("y", 0.2, "c2"),
                CandidateItem("x", 0.5, "c1"),
            ),
        ),
        NO_HOLDOUT,
    )
    cs = next(a for a in d.actions if a.name == CROSS_SELL)
    assert cs.params == {"suggested_item_ids": ["x", "y"], "categories": ["c1", "c2"]}  # picks are suggestions


# ---------------------------------------------------------------------------------------------
# Service recovery
# ---------------------------------------------------------------------------------------------
SALES_HEAVY = {
    "cart": (ItemValue("a", 5000.0),),
    "replenishment_due": (ItemValue("r", 500.0),),
    "candidate_items": (CandidateItem("x", 1.0),),
    "purchase_propensity": 0.99,
    "order_count": 10,
    "lifetime_value": 5000.0,
    "churn_probability": 0.05,
}


@pytest.mark.parametrize("trigger", ["last_negative_sentiment_ts", "last_return_ts"])
def test_service_recovery_outranks_and_suppresses_sales(trigger: str) -> None:
    d = decide_actions(ctx(**SALES_HEAVY, **{trigger: NOW - 3 * DAY}), NO_HOLDOUT)
    assert d.top.name == SERVICE_RECOVERY
    assert not {CART_REMINDER, REPLENISHMENT_REMINDER, CROSS_SELL} & set(names(d))
    reason = "negative_sentiment" if trigger == "last_negative_sentiment_ts" else "return"
    assert d.top.params == {"reasons": [reason]}


def test_service_recovery_expires_after_the_window() -> None:
    d = decide_actions(ctx(**SALES_HEAVY, last_negative_sentiment_ts=NOW - 30 * DAY), NO_HOLDOUT)
    assert SERVICE_RECOVERY not in names(d)
    assert d.top.name == CART_REMINDER


# ---------------------------------------------------------------------------------------------
# Channels and consistency
# ---------------------------------------------------------------------------------------------
def test_channel_is_the_customers_best_reachable_not_the_asker() -> None:
    base = {"cart": (ItemValue("a", 100.0),), "purchase_propensity": 0.5}
    assert (
        decide_actions(
            ctx(**base, channel="web", reachable_channels=("sms", "email"), preferred_channel="sms"),
            NO_HOLDOUT,
        ).top.channel
        == "sms"
    )
    # preferred not reachable: first suitable reachable channel of the action
    assert (
        decide_actions(
            ctx(**base, channel="web", reachable_channels=("app", "sms"), preferred_channel="email"),
            NO_HOLDOUT,
        ).top.channel
        == "app"
    )
    # nothing reachable: the action's default, still not the asker
    assert decide_actions(ctx(**base, channel="web"), NO_HOLDOUT).top.channel == "email"


profiles = st.builds(
    dict,
    cart=st.lists(st.builds(ItemValue, st.sampled_from("abcdef"), st.floats(0, 500)), max_size=3).map(tuple),
    churn_probability=st.floats(0, 1),
    purchase_propensity=st.floats(0, 1),
    order_count=st.integers(0, 12),
    lifetime_value=st.floats(0, 3000),
    last_purchase_ts=st.none() | st.integers(0, 200).map(lambda d: NOW - d * DAY),
    last_negative_sentiment_ts=st.none() | st.integers(0, 40).map(lambda d: NOW - d * DAY),
    reachable_channels=st.lists(st.sampled_from(CHANNELS), max_size=4, unique=True).map(tuple),
    preferred_channel=st.none() | st.sampled_from(CHANNELS),
)


@settings(max_examples=60, deadline=None)
@given(
    p=profiles,
    a=st.sampled_from(CHANNELS),
    b=st.sampled_from(CHANNELS),
    offsets=st.tuples(st.floats(0, 3599.9), st.floats(0, 3599.9)),
)
def test_same_decision_whichever_channel_asks_within_the_window(
    p: dict, a: str, b: str, offsets: tuple[float, float]
) -> None:
    config = NBAConfig(window_s=3600.0)
    start = time_bucket(NOW, 3600.0) * 3600.0
    d1 = decide_actions(ctx(**p, channel=a, now=start + offsets[0]), config)
    d2 = decide_actions(ctx(**p, channel=b, now=start + offsets[1]), config)
    assert d1 == d2


@settings(max_examples=60, deadline=None)
@given(p=profiles)
def test_ranking_invariants(p: dict) -> None:
    d = decide_actions(ctx(**p), NO_HOLDOUT)
    ns = names(d)
    assert ns.count(DO_NOTHING) == 1 and len(set(ns)) == len(ns)
    i = ns.index(DO_NOTHING)
    assert all(a.expected_value > 0 for a in d.actions[:i])
    assert all(a.expected_value <= 0 for a in d.actions[i + 1 :])
    if SERVICE_RECOVERY in ns:
        assert not {CART_REMINDER, REPLENISHMENT_REMINDER, CROSS_SELL} & set(ns)
        if d.actions[0].name != DO_NOTHING:
            assert d.actions[0].name == SERVICE_RECOVERY


def test_window_boundary_can_change_the_decision() -> None:
    """Ages are measured from the bucket start, so recovery ends exactly at a bucket boundary."""
    config = NBAConfig(window_s=3600.0, recovery_days=1.0, holdout_share=0.0)
    start = time_bucket(NOW, 3600.0) * 3600.0
    neg = start - 86_400.0 + 1.0  # 1 day minus 1 s before this bucket's start: recent now, not next hour
    now_d = decide_actions(ctx(last_negative_sentiment_ts=neg, now=start + 10), config)
    next_d = decide_actions(ctx(last_negative_sentiment_ts=neg, now=start + 3600 + 10), config)
    assert now_d.top.name == SERVICE_RECOVERY
    assert SERVICE_RECOVERY not in names(next_d)


# ---------------------------------------------------------------------------------------------
# Holdout
# ---------------------------------------------------------------------------------------------
IDS = [f"p_{i:06d}" for i in range(10_000)]


def test_holdout_share_is_within_tolerance_and_stable() -> None:
    share = 0.1
    picked = [is_holdout("spring", p, share) for p in IDS]
    # binomial sd = sqrt(10000 * .1 * .9) = 30: 5 sd tolerance
    assert abs(sum(picked) - 1000) < 150
    assert picked == [is_holdout("spring", p, share) for p in IDS]


def test_campaigns_pick_different_customers() -> None:
    a = {p for p in IDS if is_holdout("spring", p, 0.1)}
    b = {p for p in IDS if is_holdout("summer", p, 0.1)}
    # independent draws overlap on ~share^2 = 1% of ids (100), far from identical sets
    assert 40 < len(a & b) < 200


def test_holdout_customer_gets_flagged_do_nothing_with_counterfactual() -> None:
    config = NBAConfig(holdout_share=0.5)
    held = next(p for p in IDS if holdout_draw("c", p) < 0.5)
    d = decide_actions(
        ctx(profile_id=held, campaign_id="c", cart=(ItemValue("a", 100.0),), purchase_propensity=0.9), config
    )
    assert d.holdout and names(d) == [DO_NOTHING] and d.top.holdout
    assert d.counterfactual == CART_REMINDER
    # share 0 holds out no one, share 1 everyone
    assert not decide_actions(ctx(profile_id=held, campaign_id="c"), NBAConfig(holdout_share=0.0)).holdout
    assert decide_actions(ctx(profile_id="x", campaign_id="c"), NBAConfig(holdout_share=1.0)).holdout


# ---------------------------------------------------------------------------------------------
# Batch agrees with the scalar path
# ---------------------------------------------------------------------------------------------
def random_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            PROFILE_ID: [f"p_{seed}_{i}" for i in range(n)],
            CHURN_PROBABILITY: rng.random(n),
            PURCHASE_PROPENSITY: rng.random(n),
            EXPECTED_ORDER_VALUE: np.where(rng.random(n) < 0.3, np.nan, rng.gamma(2.0, 40.0, n)),
            CART_VALUE: rng.gamma(1.5, 60.0, n) * (rng.random(n) < 0.3),
            DAYS_SINCE_LAST_PURCHASE: np.where(rng.random(n) < 0.1, np.nan, rng.random(n) * 120),
            NEGATIVE_SENTIMENT_RECENT: rng.random(n) < 0.08,
            RETURNED_RECENTLY: rng.random(n) < 0.08,
            REPLENISHMENT_DUE: rng.gamma(1.0, 20.0, n) * (rng.random(n) < 0.2),
            ORDER_COUNT: rng.integers(0, 12, n),
            LIFETIME_VALUE: rng.gamma(2.0, 150.0, n),
            HAS_CANDIDATES: rng.random(n) < 0.9,
        }
    )


def context_from_row(row: pd.Series, now: float, campaign_id: str) -> NBAContext:
    eov = row[EXPECTED_ORDER_VALUE]
    days = row[DAYS_SINCE_LAST_PURCHASE]
    return NBAContext(
        profile_id=row[PROFILE_ID],
        now=now,
        campaign_id=campaign_id,
        cart=(ItemValue("c", float(row[CART_VALUE])),) if row[CART_VALUE] > 0 else (),
        replenishment_due=(ItemValue("r", float(row[REPLENISHMENT_DUE])),)
        if row[REPLENISHMENT_DUE] > 0
        else (),
        candidate_items=(CandidateItem("x"),) if row[HAS_CANDIDATES] else (),
        days_since_last_purchase=None if math.isnan(days) else float(days),
        last_negative_sentiment_ts=now if row[NEGATIVE_SENTIMENT_RECENT] else None,
        last_return_ts=now if row[RETURNED_RECENTLY] else None,
        lifetime_value=float(row[LIFETIME_VALUE]),
        order_count=int(row[ORDER_COUNT]),
        churn_probability=float(row[CHURN_PROBABILITY]),
        purchase_propensity=float(row[PURCHASE_PROPENSITY]),
        expected_order_value=None if math.isnan(eov) else float(eov),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_agrees_with_decide_actions_row_by_row(seed: int) -> None:
    config = NBAConfig(holdout_share=0.2)
    now = 1_740_830_400.0  # a bucket start, so "recent" flags map to timestamps at `now`
    frame = random_frame(300, seed)
    out = decide_top_actions_batch(frame, config, now, "camp")
    assert list(out[PROFILE_ID]) == list(frame[PROFILE_ID])
    assert set(out[TOP_ACTION]) >= {DO_NOTHING, SERVICE_RECOVERY, CART_REMINDER, WINBACK_OFFER}
    for i, row in frame.iterrows():
        d = decide_actions(context_from_row(row, now, "camp"), config)
        assert out.at[i, TOP_ACTION] == d.top.name, i
        assert out.at[i, EXPECTED_VALUE] == pytest.approx(d.top.expected_value), i
        assert bool(out.at[i, HOLDOUT]) == d.holdout
        assert out.at[i, COUNTERFACTUAL_ACTION] == d.counterfactual


def test_batch_minimal_columns_and_missing_required() -> None:
    frame = pd.DataFrame(
        {PROFILE_ID: ["a", "b"], CHURN_PROBABILITY: [0.5, 0.1], PURCHASE_PROPENSITY: [0.2, 0.9]}
    )
    out = decide_top_actions_batch(frame, NO_HOLDOUT)
    # no cart, no orders, no history: nothing to do
    assert list(out[TOP_ACTION]) == [DO_NOTHING, DO_NOTHING]
    assert list(out[EXPECTED_VALUE]) == [0.0, 0.0]
    with pytest.raises(ValueError, match=CHURN_PROBABILITY):
        decide_top_actions_batch(frame.drop(columns=[CHURN_PROBABILITY]), NO_HOLDOUT)


def test_batch_holdout_matches_scalar_draw() -> None:
    config = dataclasses.replace(NO_HOLDOUT, holdout_share=0.3)
    frame = random_frame(2000, 3)
    out = decide_top_actions_batch(frame, config, 0.0, "camp")
    expected = [is_holdout("camp", p, 0.3) for p in frame[PROFILE_ID]]
    assert list(out[HOLDOUT]) == expected
    assert (out.loc[out[HOLDOUT], TOP_ACTION] == DO_NOTHING).all()
    assert abs(out[HOLDOUT].mean() - 0.3) < 0.05


# ---------------------------------------------------------------------------------------------
# From a store profile
# ---------------------------------------------------------------------------------------------
def store_profile(**kw: object):
    from features.store import ItemEntry, OnlineProfile

    base: dict[str, object] = dict(
        profile_id="p_9",
        recent_views=(),
        cart_items=(),
        purchases=(),
        returns=(),
        category_counts={},
        channel_last_seen={},
        last_negative_ts=None,
        identifiers=("customer_id",),
        updated_at=NOW,
        replenish_days={},
    )
    base.update(kw)
    base["purchases"] = tuple(ItemEntry(i, t) for i, t in base["purchases"])  # type: ignore[union-attr]
    base["returns"] = tuple(ItemEntry(i, t) for i, t in base["returns"])  # type: ignore[union-attr]
    base["cart_items"] = tuple(ItemEntry(i, NOW) for i in base["cart_items"])  # type: ignore[union-attr]
    return OnlineProfile(**base)  # type: ignore[arg-type]


def test_context_from_profile_derives_facts() -> None:
    from serving.nba import context_from_profile

    prof = store_profile(
        cart_items=("a", "b", "a"),
        purchases=[
            ("soap", NOW - 28 * DAY),
            ("soap", NOW - 58 * DAY),
            ("tv", NOW - 10 * DAY),
            ("old", NOW - 400 * DAY),
        ],
        returns=[("tv", NOW - 2 * DAY)],
        channel_last_seen={"web": NOW - 5 * DAY, "app": NOW - DAY, "email": NOW - 9 * DAY},
        last_negative_ts=NOW - 3 * DAY,
        replenish_days={"soap": 30.0, "old": 30.0},
    )
    c = context_from_profile(
        prof, now=NOW, expected_order_value=40.0, item_values={"a": 10.0}, item_categories={"a": "shoes"}
    )
    assert [(i.item_id, i.value, i.category) for i in c.cart] == [("a", 10.0, "shoes"), ("b", 40.0, None)]
    # soap: 28 of 30 days (>= 0.9 x interval) is due; "old" lapsed long ago (> 3 x interval)
    assert [i.item_id for i in c.replenishment_due] == ["soap"]
    assert c.preferred_channel == "app" and c.reachable_channels == ("app", "web", "email")
    assert c.order_count == 4
    d = decide_actions(dataclasses.replace(c, churn_probability=0.2), NO_HOLDOUT)
    assert d.top.name == SERVICE_RECOVERY
    assert d.top.params == {"reasons": ["negative_sentiment", "return"]}
    assert d.top.channel == "app"


# ---------------------------------------------------------------------------------------------
# /scores and /next_best_action: one derivation, one contact rule, the same first action
# ---------------------------------------------------------------------------------------------
def consistency_profiles() -> list:
    """Profiles covering every situation the two endpoints must agree on."""
    return [
        store_profile(profile_id="cart", cart_items=("a", "b"), purchases=[("x", NOW - 10 * DAY)],
                      channel_last_seen={"app": NOW - DAY}),
        store_profile(profile_id="cart_bought", cart_items=("soap",), purchases=[("soap", NOW - 5 * DAY)],
                      channel_last_seen={"email": NOW - DAY}),
        store_profile(profile_id="replenish", purchases=[("soap", NOW - 28 * DAY), ("soap", NOW - 58 * DAY)],
                      replenish_days={"soap": 30.0}, channel_last_seen={"email": NOW - 2 * DAY}),
        store_profile(profile_id="returned", cart_items=("c",), purchases=[("tv", NOW - 9 * DAY)],
                      returns=[("tv", NOW - 2 * DAY)], channel_last_seen={"web": NOW - 2 * DAY}),
        store_profile(profile_id="negative", cart_items=("d",), purchases=[("e", NOW - 20 * DAY)],
                      last_negative_ts=NOW - 3 * DAY, channel_last_seen={"email": NOW - 3 * DAY}),
        store_profile(profile_id="lapsed", purchases=[("f", NOW - 120 * DAY), ("g", NOW - 150 * DAY)],
                      channel_last_seen={"email": NOW - 100 * DAY}),
        store_profile(profile_id="loyal", purchases=[(f"l{i}", NOW - (3 + 7 * i) * DAY) for i in range(8)],
                      channel_last_seen={"app": NOW - DAY, "email": NOW - 4 * DAY}),
        store_profile(profile_id="empty"),
    ]


def _holdout_id() -> str:
    return next(p for p in (f"hold_{i}" for i in range(10_000)) if is_holdout("default", p, NBAConfig().holdout_share))


def _consistency_case(now: datetime, churn: float, propensity: float):
    from serving.nba import contexts_from_profiles

    profiles = [*consistency_profiles(), store_profile(profile_id=_holdout_id(), cart_items=("h",))]
    n = len(profiles)
    feats = pd.DataFrame({
        PROFILE_ID: [p.profile_id for p in profiles],
        "avg_order_value": [60.0] * n,
        "spend_total": [60.0 * len({t for _, t in p.purchases}) for p in profiles],
        "n_orders": [float(len({t for _, t in p.purchases})) for p in profiles],
    })
    ctxs = contexts_from_profiles(profiles, feats, np.full(n, churn), np.full(n, propensity), now=now)
    return profiles, ctxs


def _first_allowed(ctx: NBAContext, allowed) -> str:
    """What /next_best_action answers first: decide_actions, then drop what the contact rule refuses."""
    d = decide_actions(ctx)
    return next((a.name for a in d.actions if allowed(ctx, a)), DO_NOTHING)


@pytest.mark.parametrize("hour", [12, 18])  # 12:00 UTC is quiet hours in New York (email refused), 18:00 not
def test_scores_top_action_is_next_best_actions_first_action(hour: int) -> None:
    from serving.decisions import contact_rule
    from serving.guard import consent_from_flags, load_policy
    from serving.nba import decide_top_actions

    now = NOW.replace(hour=hour)
    policy = load_policy()
    seen: dict[str, set[str]] = {}
    marketing = consent_from_flags({"email_marketing": True, "sms_marketing": True})
    for churn, propensity in [(0.1, 0.9), (0.5, 0.5), (0.9, 0.2), (0.2, 0.05)]:
        profiles, ctxs = _consistency_case(now, churn, propensity)
        rule = contact_rule(policy, now, lambda _pid: marketing, {p.profile_id: p for p in profiles})
        batch = decide_top_actions(ctxs, allowed=rule)
        assert list(batch[PROFILE_ID]) == [c.profile_id for c in ctxs]
        for ctx, top, hold in zip(ctxs, batch[TOP_ACTION], batch[HOLDOUT], strict=True):
            assert top == _first_allowed(ctx, rule), (ctx.profile_id, churn, propensity)
            assert bool(hold) == decide_actions(ctx).holdout
            seen.setdefault(ctx.profile_id, set()).add(top)
    assert seen[_holdout_id()] == {DO_NOTHING}
    # the guard's suppression ran in the batch: a recent return or negative review stops the cart
    # reminder (service recovery first), and a cart item bought days ago gets no reminder
    assert CART_REMINDER not in seen["returned"] | seen["negative"] | seen["cart_bought"]
    assert SERVICE_RECOVERY in seen["returned"] or hour == 12
    if hour == 18:
        assert CART_REMINDER in seen["cart"] and REPLENISHMENT_REMINDER in seen["replenish"]
        assert WINBACK_OFFER in seen["lapsed"] and LOYALTY_REWARD in seen["loyal"]


def test_contexts_from_profiles_derive_replenishment_returns_and_scores() -> None:
    from serving.nba import contexts_from_profiles

    profiles, ctxs = _consistency_case(NOW, 0.3, 0.6)
    by_id = {c.profile_id: c for c in ctxs}
    assert [i.item_id for i in by_id["replenish"].replenishment_due] == ["soap"]
    assert by_id["returned"].last_return_ts is not None
    assert by_id["cart"].cart and by_id["cart"].cart[0].value == 60.0
    assert all(c.churn_probability == 0.3 and c.purchase_propensity == 0.6 for c in ctxs)
    assert all(c.has_candidates for c in ctxs)
    # a feature row without a profile still decides (nothing known beyond the scores)
    lone = contexts_from_profiles([None], pd.DataFrame({PROFILE_ID: ["ghost"]}), [np.nan], [0.5], now=NOW)
    assert lone[0].profile_id == "ghost" and lone[0].churn_probability == 0.0 and not lone[0].cart
    with pytest.raises(ValueError, match="one entry per feature row"):
        contexts_from_profiles(profiles[:1], pd.DataFrame({PROFILE_ID: ["a", "b"]}), [0.1], [0.1], now=NOW)


def test_decide_top_actions_without_a_rule_is_decide_actions_top() -> None:
    from serving.nba import decide_top_actions

    for churn, propensity in [(0.1, 0.9), (0.9, 0.2)]:
        _, ctxs = _consistency_case(NOW, churn, propensity)
        out = decide_top_actions(ctxs)
        for ctx, top, ev in zip(ctxs, out[TOP_ACTION], out[EXPECTED_VALUE], strict=True):
            d = decide_actions(ctx)
            assert top == d.top.name and ev == pytest.approx(d.top.expected_value)
    assert decide_top_actions([]).empty
