"""Journeys without HTTP (issue 19): declarations and return reasons in the schema, the store's fold of
preferences, pickups and return reasons (bulk = per event), declared features, the NBA journeys and tone,
the guard's wording and what it never names."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from features import schema
from features.profiles import FEATURE_COLUMNS, build_profiles
from features.schema import (
    EventLimits,
    IdentifierHasher,
    _validate_rowwise,
    _validate_vectorised,
    validate_events,
)
from features.store import OnlineProfile, ProfileEntry, SQLiteProfileStore, StoreConfig
from serving import guard as g
from serving import nba
from serving.contact import customer_timezone
from serving.decisions import customer_consent

T0 = pd.Timestamp("2025-03-01T12:00:00Z")
LIMITS = EventLimits(now="2025-06-01T00:00:00Z")
POLICY = g.load_policy()


def ev(eid: str, etype: str, hours: float, customer: str = "c1", **kw: object) -> dict[str, object]:
    return {"event_id": eid, "ts": (T0 + pd.Timedelta(hours=hours)).isoformat(), "channel": kw.pop("channel", "web"),
            "event_type": etype, "customer_id": customer, **kw}


JOURNEY = [
    ev("a1", "add_to_cart", 0, item_id="a", category="Shoes > Running"),
    ev("a2", "reserve", 1, item_id="a", category="Shoes > Running"),
    ev("a3", "ready_for_pickup", 2, item_id="a", channel="store"),
    ev("b1", "reserve", 1, item_id="b"), ev("b2", "pickup", 3, item_id="b", channel="store"),
    ev("b3", "return", 4, item_id="b", channel="store", return_reason="too_small"),
    ev("p1", "preference", 5, preference_key="interest", preference_value="Shoes"),
    ev("p2", "preference", 5, preference_key="interest", preference_value="Bags"),
    ev("p0", "preference", 4, preference_key="interest", preference_value="Hats"),  # an older save: replaced
    ev("p3", "preference", 5, preference_key="timezone", preference_value="Asia/Tokyo"),
    ev("p4", "preference", 6, preference_key="channel", preference_value="none"),
    ev("v1", "view", 1, item_id="a", category="Shoes > Running"),
    ev("r1", "review", 7, rating=5, text="lovely"), ev("r2", "review", 2, rating=1, text="late"),
    ev("q1", "preference", 6, customer="c2", preference_key="personalization_level", preference_value="none"),
]


# -- schema ---------------------------------------------------------------------------------------
BAD = [
    (ev("x1", "preference", 0, preference_key="colour", preference_value="red"), "preference_key", "unknown preference"),
    (ev("x2", "preference", 0, preference_key="channel", preference_value="fax"), "preference_value", "unknown channel"),
    (ev("x3", "preference", 0, preference_key="timezone", preference_value="Mars/Base"), "preference_value", "time zone"),
    (ev("x4", "preference", 0, preference_key="personalization_level", preference_value="full"), "preference_value",
     "personalization level"),
    (ev("x5", "preference", 0, preference_key="interest"), "preference_value", "required"),
    (ev("x6", "view", 0, item_id="i", preference_key="channel"), "preference_key", "only on preference events"),
    (ev("x7", "return", 0, item_id="i", return_reason="too small"), "return_reason", "unknown return reason"),
    (ev("x8", "purchase", 0, item_id="i", return_reason="too_small"), "return_reason", "only on return events"),
]


def test_declarations_and_return_reasons_are_checked_alike_on_both_paths() -> None:
    records = JOURNEY + [r for r, _, _ in BAD]
    fast = _validate_rowwise(records, IdentifierHasher("k"), limits=LIMITS)
    slow = _validate_vectorised(records, IdentifierHasher("k"), limits=LIMITS)
    pd.testing.assert_frame_equal(fast.errors, slow.errors)
    pd.testing.assert_frame_equal(fast.valid, slow.valid)
    assert len(fast.valid) == len(JOURNEY)
    got = {(e["event_id"], e["field"]): e["reason"] for e in fast.error_records()}
    for rec, fld, words in BAD:
        assert words in got[(rec["event_id"], fld)], (rec, got)


def test_level_names_are_the_guards_and_every_key_has_a_rule() -> None:
    assert tuple(s.name.lower() for s in g.Specificity) == schema.PERSONALIZATION_LEVELS
    for key in schema.PREFERENCE_KEYS:
        assert schema.preference_value_problem(key, schema.NO_PREFERENCE) is None
    assert schema.preference_value_problem(schema.PREFERRED_CHANNEL, "sms") is None


# -- store ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bulk_rows", [10**9, 1])
def test_store_folds_declarations_pickups_and_return_reasons(tmp_path: Path, bulk_rows: int) -> None:
    store = SQLiteProfileStore(tmp_path / "s.db", IdentifierHasher("k"), config=StoreConfig(bulk_rows=bulk_rows))
    store.append_events(validate_events(JOURNEY, limits=LIMITS).valid, validated=True)
    p = store.get_profile(store.resolve({"customer_id": "c1"}))
    assert p.declared == {"interest": ("Bags", "Shoes"), "timezone": ("Asia/Tokyo",), "channel": ()}
    assert [(e.item_id, e.event_type) for e in p.pickups] == [("b", "pickup"), ("a", "ready_for_pickup")]
    assert [e.item_id for e in p.open_pickups] == ["a"]
    assert p.return_reasons == {"b": "too_small"}
    assert p.cart_items == ()  # a reservation is an order
    assert p.last_positive_ts is not None and p.last_negative_ts is not None
    assert store.get_profile(store.resolve({"customer_id": "c2"})).declared == {"personalization_level": ("none",)}
    row = store.features_for([p.profile_id])
    assert row["n_declared_interests"].iloc[0] == 2 and row["declared_interest_share"].iloc[0] == 1.0
    assert store.erase_profile(p.profile_id) > 0 and store.get_profile(p.profile_id) is None


def test_bulk_and_per_event_folds_agree(tmp_path: Path) -> None:
    events = validate_events(JOURNEY, limits=LIMITS).valid
    got = []
    for rows in (10**9, 1):
        store = SQLiteProfileStore(tmp_path / f"{rows}.db", IdentifierHasher("k"), config=StoreConfig(bulk_rows=rows))
        if rows == 1:
            store.load_events(events, progress=False)
        else:
            for i in range(len(events)):  # one by one, as the API sends them
                store.append_events(events.iloc[[i]], validated=True)
        got.append({c: store.get_profile(store.resolve({"customer_id": c})) for c in ("c1", "c2")})
    assert got[0] == got[1]


def test_declared_interest_features_are_model_columns() -> None:
    assert {"n_declared_interests", "declared_interest_share"} <= set(FEATURE_COLUMNS)
    frame = validate_events(JOURNEY, limits=LIMITS).valid
    out = build_profiles(frame, T0 + pd.Timedelta(days=1))
    assert sorted(out["n_declared_interests"].tolist()) == [0.0, 2.0]


# -- NBA ------------------------------------------------------------------------------------------
NOW = datetime(2025, 3, 20, 12, tzinfo=UTC)
CFG = nba.NBAConfig(holdout_share=0.0)


def entry(item: str, etype: str, days_ago: float, channel: str = "web", cat: str | None = "Shoes") -> ProfileEntry:
    return ProfileEntry(item, cat, NOW - timedelta(days=days_ago), channel, etype)


def profile(**kw: object) -> OnlineProfile:
    base: dict[str, object] = dict(profile_id="p1", recent_views=(), cart_items=(), purchases=(), returns=(),
                                   category_counts={}, channel_last_seen={"web": NOW}, last_negative_ts=None,
                                   identifiers=("customer_id",), updated_at=NOW)
    base.update(kw)
    return OnlineProfile(**base)  # type: ignore[arg-type]


def decide(p: OnlineProfile, **kw: object) -> nba.NBADecision:
    ctx = nba.context_from_profile(p, now=NOW, config=CFG, purchase_propensity=0.9, expected_order_value=400.0,
                                   **kw)  # type: ignore[arg-type]
    return nba.decide_actions(ctx, CFG)


def actions(d: nba.NBADecision) -> dict[str, nba.ScoredAction]:
    return {a.name: a for a in d.actions}


def test_tried_on_offer_waits_and_stops_when_bought_reserved_or_returned() -> None:
    tried = entry("t", "try_on", 5, "store")
    assert actions(decide(profile(recent_views=(tried,))))[nba.TRIED_ON_OFFER].params["item_ids"] == ["t"]
    assert nba.TRIED_ON_OFFER not in actions(decide(profile(recent_views=(entry("t", "try_on", 1, "store"),))))
    for later in ({"purchases": (entry("t", "purchase", 2),)}, {"pickups": (entry("t", "reserve", 2),)},
                  {"returns": (entry("t", "return", 2),)}):
        assert nba.TRIED_ON_OFFER not in actions(decide(profile(recent_views=(tried,), **later))), later


def test_post_purchase_care_then_complements_after_the_customers_cadence() -> None:
    bought = profile(purchases=(entry("shoe", "purchase", 2),))
    care = actions(decide(bought))[nba.POST_PURCHASE_CARE]
    assert care.params["content"] == nba.CARE_CONTENT and care.params["item_ids"] == ["shoe"]
    later = profile(purchases=(entry("shoe", "purchase", 10),))
    assert actions(decide(later))[nba.POST_PURCHASE_CARE].params["content"] == nba.COMPLEMENTS_CONTENT
    # a slow buyer (every 60 days) hears of complements only from 30 days on
    assert nba.POST_PURCHASE_CARE not in actions(decide(later, purchase_cadence_days=60.0))
    assert nba.POST_PURCHASE_CARE not in actions(decide(profile(purchases=(entry("shoe", "purchase", 2),),
                                                                returns=(entry("shoe", "return", 1),))))


def test_no_cart_reminder_for_an_item_waiting_for_pickup_or_returned() -> None:
    cart = (entry("a", "add_to_cart", 1),)
    assert nba.CART_REMINDER in actions(decide(profile(cart_items=cart)))
    assert nba.CART_REMINDER not in actions(decide(profile(cart_items=cart, pickups=(entry("a", "reserve", 2),))))
    assert nba.CART_REMINDER not in actions(decide(profile(cart_items=cart, returns=(entry("a", "return", 2),))))


def test_tone_follows_the_latest_sentiment_and_not_the_channel() -> None:
    neg, pos = NOW - timedelta(days=1), NOW - timedelta(days=3)
    cases = {nba.APOLOGETIC: dict(last_negative_ts=neg, last_positive_ts=pos),
             nba.WARM: dict(last_positive_ts=pos), nba.NEUTRAL: dict(last_positive_ts=NOW - timedelta(days=60))}
    for tone, kw in cases.items():
        p = profile(**kw)
        assert {decide(p, channel=ch).tone for ch in ("email", "app", "chat", "store")} == {tone}, tone


def test_declared_channel_comes_first() -> None:
    p = profile(cart_items=(entry("a", "add_to_cart", 1),), declared={"channel": ("sms",)},
                channel_last_seen={"web": NOW, "email": NOW})
    assert actions(decide(p))[nba.CART_REMINDER].channel == "sms"


# -- guard, consent, contact -------------------------------------------------------------------------
def test_a_try_on_never_names_store_time_or_size_at_any_level_tone_or_channel() -> None:
    s = g.Signal(g.TRY_ON, "store", item_id="t", item_name="Trail Runner jacket", category="running shoes",
                 attributes={"size": "XL", "color": "crimson"}, ts=datetime(2025, 3, 1, 23, 45, tzinfo=UTC),
                 duration_s=420.0, store_id="Paris Opera", location="48.87,2.33")
    params = {"item_ids": ["t"], "discount_pct": 10,
              g.ITEMS: [{"item_id": "t", "name": "Trail Runner jacket", "url": "https://x.test/t"}]}
    for level in g.Specificity:
        for consent_kw in ({}, {"location_opt_in": True}):
            consent = g.ConsentState(level, frozenset({*g.DEFAULT_PURPOSES, g.STORE_VISITS}), **consent_kw)
            for channel in ("web", "app", "email", "sms", "store", "chat"):
                for tone in g.TONES:
                    d = g.guard(g.GuardRequest(g.NBA_MESSAGE, channel, consent, (s,), action=g.TRIED_ON_OFFER,
                                               params=params, now=NOW, logged_in=True, tone=tone), POLICY)
                    shown = f"{d.text} {dict(d.params)}".lower()
                    for leak in ("paris", "opera", "48.87", "xl", "crimson", "23:45", "monday", "7 min", "tried",
                                 "store", "size"):
                        assert leak not in shown, (level, channel, tone, leak, shown)


def test_tone_variants_and_the_complements_wording() -> None:
    consent = g.ConsentState(g.Specificity.CATEGORY)
    texts = {tone: g.guard(g.GuardRequest(g.NBA_MESSAGE, "chat", consent, (), action=g.SERVICE_RECOVERY, now=NOW,
                                          tone=tone), POLICY).text for tone in g.TONES}
    assert len(set(texts.values())) == 3
    s = g.Signal(g.PURCHASE, "web", item_id="shoe", item_name="Trail Runner", category="running shoes")
    def care(channel: str, template: str | None) -> str:
        return g.guard(g.GuardRequest(g.NBA_MESSAGE, channel, consent, (s,), action=g.POST_PURCHASE_CARE, now=NOW,
                                      template=template), POLICY).text

    assert care("chat", nba.COMPLEMENTS_TEMPLATE) == "Goes well with your new running shoes"
    assert care("app", nba.COMPLEMENTS_TEMPLATE) == "Goes well with the Trail Runner"  # their own order, own screen
    assert care("chat", None) == "How to care for your new running shoes"
    with pytest.raises(ValueError, match="tone"):
        g.guard(g.GuardRequest(g.NBA_MESSAGE, "app", consent, (), action=g.CROSS_SELL, now=NOW, tone="sarcastic"),
                POLICY)


def test_declared_level_caps_and_declared_zone_wins() -> None:
    flags = {"detailed_personalization": True}
    assert customer_consent(flags, profile()).level == g.Specificity.ITEM
    capped = profile(declared={"personalization_level": ("category",)}, timezone="Europe/Paris")
    assert customer_consent(flags, capped).level == g.Specificity.CATEGORY
    assert customer_consent({}, profile(declared={"personalization_level": ("item",)})).level == g.Specificity.CATEGORY
    assert customer_timezone(capped) == "Europe/Paris"
    moved = dataclasses.replace(capped, declared={"timezone": ("Asia/Tokyo",)})
    assert customer_timezone(moved) == "Asia/Tokyo" and customer_consent({}, moved).timezone == "Asia/Tokyo"


def test_profile_view_returns_declarations_and_withholds_sensitive_interests() -> None:
    p = profile(declared={"interest": ("Lingerie", "Running shoes"), "channel": ("email",),
                          "personalization_level": ("category",)})
    view = g.profile_view(p, g.ConsentState(), POLICY)
    assert view["declared"] == {"interests": ["Running shoes"], "interests_withheld": 1, "channels": ["email"],
                                "timezone": None, "personalization_level": "category"}


def test_suggestions_are_named_as_suggestions_and_never_as_the_customers_own() -> None:
    """`items` are the customer's own (backed by their signal); `suggestions` are products Mirror suggests:
    named from the catalog without a signal, never sensitive, never one of the customer's own items, never
    when the message rests on something sensitive, never for a customer who wants nothing personal."""
    assert nba.SUGGESTED_ITEM_IDS == g.SUGGESTED_ITEM_IDS  # one name on both sides
    bought = g.Signal(g.PURCHASE, "web", item_id="shoe", item_name="Trail Runner", category="running shoes")
    viewed = g.Signal(g.VIEW, "web", item_id="jacket", item_name="Rain jacket", category="jackets")

    def rec(i: str, name: str, **kw: object) -> dict[str, object]:
        return {"item_id": i, "name": name, "category": "socks", "brand": "Kestrel", "sensitive": False,
                "price": 9.0, "url": "https://x.test/" + i, **kw}

    recs = [rec("sock", "Merino socks"), rec("tube", "Tube socks", sensitive=True), rec("lace", "Laces", url="js:x"),
            rec("bra", "Sports bra", category="Lingerie"), rec("jacket", "Rain jacket"), rec("anon", "Plain socks",
            sensitive=None), {"item_id": "noname", "sensitive": False}]
    params = {g.SUGGESTED_ITEM_IDS: [r["item_id"] for r in recs], g.SUGGESTIONS: recs, "content": "complements"}

    def care(level: g.Specificity, sigs: tuple[g.Signal, ...] = (bought, viewed), channel: str = "email"
             ) -> g.GuardDecision:
        consent = g.ConsentState(level, frozenset({*g.DEFAULT_PURPOSES, "email_marketing"}))
        return g.guard(g.GuardRequest(g.NBA_MESSAGE, channel, consent, sigs, action=g.POST_PURCHASE_CARE,
                                      params=params, now=NOW, template=nba.COMPLEMENTS_TEMPLATE), POLICY)

    d = care(g.Specificity.CATEGORY)
    assert d.params[g.SUGGESTED_ITEM_IDS] == ["sock", "lace"]  # not sensitive, not theirs, named, flagged
    assert d.params[g.SUGGESTIONS] == [{"item_id": "sock", "name": "Merino socks", "price": 9.0,
                                        "url": "https://x.test/sock"}, {"item_id": "lace", "name": "Laces",
                                                                        "price": 9.0}]
    assert "Merino" not in d.text  # the wording is about their order; the suggestions are the message's products
    assert g.SUGGESTIONS not in care(g.Specificity.NONE).params  # "nothing personal": no picks from their data
    assert g.SUGGESTED_ITEM_IDS not in care(g.Specificity.NONE).params
    tiered = dataclasses.replace(bought, item_name="Maternity leggings")
    assert g.SUGGESTIONS not in care(g.Specificity.ITEM, (tiered,), "app").params  # would point at it
