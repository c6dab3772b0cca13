"""Known-answer tests for the creepiness guard (serving/guard.py)."""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from features.schema import (
    BRAND,
    CATEGORY,
    CHANNEL,
    COLOR,
    DURATION_S,
    EVENT_TYPE,
    ITEM_ID,
    SIZE,
    STORE_ID,
    TS,
)
from serving import guard as g
from serving.guard import (
    BEHAVIORAL,
    DETAILED_PERSONALIZATION,
    INFERRED,
    LOCATION,
    NBA_MESSAGE,
    PERSONALIZATION,
    PROFILE_VIEW,
    PURCHASE_HISTORY,
    RECOMMENDATION_REASON,
    SOCIAL,
    STORE_VISITS,
    ZERO_PARTY,
    ConsentState,
    ContactCap,
    ContactContext,
    GuardRequest,
    InMemoryContactLedger,
    PolicyError,
    Signal,
    Specificity,
    consent_from_flags,
    filter_signals,
    guard,
    load_policy,
    policy_from_dict,
    profile_view,
    signal_from_event,
)

POLICY = load_policy()
# Monday 2025-01-06 23:45 in New York (the policy's default time zone) = 04:45 UTC on Tuesday.
MONDAY_NIGHT = datetime(2025, 1, 7, 4, 45, tzinfo=UTC)
NOON_NY = datetime(2025, 1, 7, 17, 0, tzinfo=UTC)

CREEPY = Signal(
    "view", "web", item_id="sku_trail", item_name="Trail Runner jacket", category="running shoes",
    attributes={COLOR: "blue", SIZE: "10", BRAND: "Nike"}, ts=MONDAY_NIGHT, duration_s=420.0, count=7,
)
FORBIDDEN = ("7", "420", "minutes", "blue", "10", "11:45", "23:45", "monday", "size", "times")


def reason(channel: str, consent: ConsentState, signals=(CREEPY,), logged_in: bool = True, policy=POLICY):
    return guard(GuardRequest(RECOMMENDATION_REASON, channel, consent, tuple(signals), logged_in=logged_in), policy)


def _raw_policy() -> dict:
    return yaml.safe_load(g.DEFAULT_POLICY_PATH.read_text())


def _no_forbidden(d: g.GuardDecision) -> None:
    blob = (d.text + " " + " ".join(map(str, d.params.values()))).lower()
    for bad in FORBIDDEN:
        assert bad not in blob.split() and bad not in d.text.lower(), (bad, d.text, d.params)


# --------------------------------------------------------------------------------------------- levels
def test_creepy_signal_becomes_category_on_email() -> None:
    d = reason("email", ConsentState(level=Specificity.ITEM), logged_in=False)
    assert d.allowed and d.level == Specificity.CATEGORY
    assert d.text == "Because you like running shoes"
    assert dict(d.params) == {CATEGORY: "running shoes"}
    _no_forbidden(d)
    assert "Nike" not in d.text and "Trail Runner" not in d.text


def test_item_level_only_on_logged_in_web_with_item_consent() -> None:
    d = reason("web", ConsentState(level=Specificity.ITEM))
    assert d.level == Specificity.ITEM
    assert d.text == "Because you viewed the Nike Trail Runner jacket"
    assert d.params[ITEM_ID] == "sku_trail"
    _no_forbidden(d)
    # default consent is category (opt-in, not opt-out)
    assert reason("web", ConsentState()).text == "Because you like running shoes"
    # anonymous session: category ceiling
    assert reason("web", ConsentState(level=Specificity.ITEM), logged_in=False).level == Specificity.CATEGORY
    # social: none
    d = reason("social", ConsentState(level=Specificity.ITEM))
    assert (d.level, d.text, dict(d.params)) == (Specificity.NONE, "Picked for you", {})


def test_brand_only_when_policy_allows() -> None:
    no_brand = dataclasses.replace(POLICY, brand_at_item_level=False)
    d = reason("web", ConsentState(level=Specificity.ITEM), policy=no_brand)
    assert d.text == "Because you viewed the Trail Runner jacket"


def test_inferred_and_declared_signals_never_claim_an_action() -> None:
    inferred = dataclasses.replace(CREEPY, origin=INFERRED)
    assert reason("web", ConsentState(level=Specificity.ITEM), [inferred]).level == Specificity.CATEGORY
    declared = Signal(g.DECLARED_PREFERENCE, "web", category="trail running", origin=ZERO_PARTY)
    assert declared.source == PERSONALIZATION
    d = reason("web", ConsentState(level=Specificity.ITEM), [declared])
    assert d.text == "Because you told us you like trail running"


def test_returns_never_explain_a_recommendation() -> None:
    ret = Signal("return", "web", item_id="sku_trail", item_name="Trail Runner jacket", category="running shoes")
    assert reason("web", ConsentState(level=Specificity.ITEM), [ret]).level == Specificity.NONE


def test_picks_the_most_specific_allowed_signal() -> None:
    cat_only = Signal("search", "web", category="tents")
    d = reason("web", ConsentState(level=Specificity.ITEM), [cat_only, CREEPY])
    assert d.level == Specificity.ITEM and "Trail Runner" in d.text


# --------------------------------------------------------------------------------------------- scrubber
@pytest.mark.parametrize(
    "name",
    ["Size 10 Runner", "Monday Night Jacket", "9 PM Watch", "2025-01-06 Tee", "Store Exclusive Tote", "Visited Mug", "3 minutes Timer"],
)
def test_scrubber_falls_back_to_none_when_a_name_slips(name: str) -> None:
    s = dataclasses.replace(CREEPY, item_name=name)
    d = reason("web", ConsentState(level=Specificity.ITEM), [s])
    assert d.level == Specificity.NONE and d.text == "Picked for you" and not d.params
    assert any("replaced by the none text" in a.reason for a in d.audit)
    assert not any(a.reason in d.text or a.what in d.text for a in d.audit)


def test_unrenderable_item_name_falls_back_to_category() -> None:
    s = dataclasses.replace(CREEPY, item_name="<b>{Trail}</b>")
    d = reason("web", ConsentState(level=Specificity.ITEM), [s])
    assert d.text == "Because you like running shoes"


def test_signal_store_and_colour_values_are_never_shown() -> None:
    s = dataclasses.replace(CREEPY, item_name="Soho Classic Tee", store_id="Soho", location="Soho")
    consent = ConsentState(level=Specificity.ITEM, granted=g.DEFAULT_PURPOSES | {STORE_VISITS, LOCATION},
                           location_opt_in=True)
    assert reason("web", consent, [s]).text == "Picked for you"
    blue = dataclasses.replace(CREEPY, item_name="Blue Ridge jacket")
    assert reason("web", consent, [blue]).text == "Picked for you"


# --------------------------------------------------------------------------------------------- sensitive
@pytest.mark.parametrize("category", ["Maternity Dresses", "women's LINGERIE", "Pregnancy tests", "Adult", "intimates"])
def test_sensitive_categories_are_never_named(category: str) -> None:
    s = dataclasses.replace(CREEPY, category=category, item_name="Comfort Wrap")
    for channel in ("web", "email", "app"):
        d = reason(channel, ConsentState(level=Specificity.ITEM), [s])
        assert d.level == Specificity.NONE and d.text == "Picked for you", channel


def test_sensitive_matching_is_whole_word() -> None:
    assert POLICY.is_sensitive("Health & Beauty") and POLICY.is_sensitive("WEIGHT  LOSS shakes")
    assert not POLICY.is_sensitive("Healthy snacks") and not POLICY.is_sensitive("running shoes")


def test_declared_sensitive_interest_only_where_policy_allows() -> None:
    declared = Signal(g.DECLARED_PREFERENCE, "web", category="maternity", origin=ZERO_PARTY)
    consent = ConsentState(level=Specificity.ITEM)
    assert reason("web", consent, [declared]).level == Specificity.NONE  # default: never named
    lenient = dataclasses.replace(POLICY, sensitive_declared_allowed_on=frozenset({"web", "email"}))
    # scrubber still refuses the sensitive word, so even the lenient policy cannot leak it
    d = reason("web", consent, [declared], policy=lenient)
    assert d.text == "Picked for you"
    assert reason("email", consent, [declared], policy=lenient).level == Specificity.NONE


# --------------------------------------------------------------------------------------------- consent
def test_consent_from_flags() -> None:
    c = consent_from_flags({})
    assert c.level == Specificity.CATEGORY and c.granted == g.DEFAULT_PURPOSES and not c.location_opt_in
    assert SOCIAL not in c.granted and STORE_VISITS not in c.granted
    assert consent_from_flags({DETAILED_PERSONALIZATION: True}).level == Specificity.ITEM
    off = consent_from_flags({PERSONALIZATION: False, DETAILED_PERSONALIZATION: True, "email_marketing": True})
    assert off.level == Specificity.NONE and not off.personalization and not off.sources
    assert off.allows_marketing("email")  # a newsletter without profiling stays possible
    assert consent_from_flags({LOCATION: True}).location_opt_in
    with pytest.raises(ValueError, match="time zone"):
        consent_from_flags({}, timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="true or false"):
        consent_from_flags({BEHAVIORAL: "yes"})  # type: ignore[dict-item]


def test_filter_signals_drops_unconsented_sources_and_strips_stores() -> None:
    store = Signal("try_on", "store", item_id="sku_x", category="boots", store_id="st_12")
    social = Signal("social_like", "social", item_id="sku_y", category="hats")
    kept, audit = filter_signals([CREEPY, store, social], ConsentState())
    assert kept == [CREEPY] and len(audit) == 2
    consent = ConsentState(granted=g.DEFAULT_PURPOSES | {STORE_VISITS})
    kept, audit = filter_signals([store], consent)
    assert len(kept) == 1 and kept[0].store_id is None and kept[0].category == "boots"
    kept, _ = filter_signals([store], dataclasses.replace(consent, location_opt_in=True))
    assert kept[0].store_id == "st_12"
    kept, audit = filter_signals([CREEPY, store], consent_from_flags({PERSONALIZATION: False}))
    assert kept == [] and "revoked" in audit[0].reason


def test_revoking_consent_changes_the_very_next_output() -> None:
    flags = {DETAILED_PERSONALIZATION: True}
    before = reason("web", consent_from_flags(flags))
    assert before.level == Specificity.ITEM
    after = reason("web", consent_from_flags({**flags, BEHAVIORAL: False}))
    assert after.level == Specificity.NONE and after.signals_used == ()
    off = reason("web", consent_from_flags({**flags, PERSONALIZATION: False}))
    assert off.text == "You may also like" and not off.params  # nothing about the person at all
    # purchase history still explains when only behaviour is revoked
    bought = Signal("purchase", "web", item_id="sku_k", item_name="Chef Knife", category="kitchen")
    d = reason("web", consent_from_flags({**flags, BEHAVIORAL: False}), [CREEPY, bought])
    assert d.text == "Because you bought the Chef Knife"
    assert reason("web", consent_from_flags({**flags, BEHAVIORAL: False, PURCHASE_HISTORY: False}),
                  [CREEPY, bought]).level == Specificity.NONE


# --------------------------------------------------------------------------------------------- NBA
#: Marketing consent on email and SMS over the default purposes (outbound marketing needs its own).
MARKETING = ConsentState(granted=g.DEFAULT_PURPOSES | {"email_marketing", "sms_marketing"})


def nba(action: str, channel: str, consent: ConsentState, params: dict, signals=(CREEPY,), now=NOON_NY,
        context: ContactContext | None = None, policy=POLICY) -> g.GuardDecision:
    return guard(GuardRequest(NBA_MESSAGE, channel, consent, tuple(signals), action=action, params=params,
                              now=now, logged_in=True, context=context), policy)


def test_nba_params_are_whitelisted_and_level_gated() -> None:
    params = {"item_ids": ["sku_trail", "sku_unbacked"], "categories": ["running shoes", "maternity"],
              "discount_pct": 15, "reasons": ["negative_sentiment"], "offer_code": "<script>", "points": -3}
    d = nba(g.CROSS_SELL, "email", dataclasses.replace(MARKETING, level=Specificity.ITEM), params)
    assert d.allowed and d.text == "More running shoes picks for you"
    assert dict(d.params) == {"categories": ["running shoes"], "discount_pct": 15}
    d = nba(g.CROSS_SELL, "web", ConsentState(level=Specificity.ITEM), params)
    assert dict(d.params) == {"item_ids": ["sku_trail"], "categories": ["running shoes"], "discount_pct": 15}
    assert d.text == "Goes well with the Nike Trail Runner jacket"
    revoked = nba(g.CROSS_SELL, "web", consent_from_flags({BEHAVIORAL: False}), params)
    assert dict(revoked.params) == {"discount_pct": 15}


def test_quiet_hours_use_the_customer_time_zone_and_defer_to_send_at() -> None:
    d = nba(g.CART_REMINDER, "email", MARKETING, {}, now=MONDAY_NIGHT)
    assert d.allowed and d.send_at is not None  # deferred, not dropped
    local = d.send_at.astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (8, 0) and d.send_at > MONDAY_NIGHT
    assert any("quiet hours" in a.reason for a in d.audit)
    tokyo = dataclasses.replace(MARKETING, timezone="Asia/Tokyo")  # 13:45 there
    assert nba(g.CART_REMINDER, "email", tokyo, {}, now=MONDAY_NIGHT).send_at is None
    assert nba(g.CART_REMINDER, "web", ConsentState(), {}, now=MONDAY_NIGHT).send_at is None  # on-site: none


def test_outbound_marketing_needs_its_own_consent_service_messages_do_not() -> None:
    d = nba(g.CART_REMINDER, "email", ConsentState(), {})
    assert not d.allowed and d.suppressed_reason == "no email_marketing consent"
    assert not nba(g.CART_REMINDER, "sms", ConsentState(granted=MARKETING.granted - {"sms_marketing"}), {}).allowed
    assert nba(g.CART_REMINDER, "email", MARKETING, {}).allowed
    assert nba(g.SERVICE_RECOVERY, "email", ConsentState(), {}).allowed  # a service message
    assert nba(g.CART_REMINDER, "app", ConsentState(), {}).allowed  # their own app: no marketing purpose


def test_frequency_cap_and_rejected_messages_take_no_slot() -> None:
    ledger = InMemoryContactLedger()
    ctx = ContactContext(profile_id="p_1", ledger=ledger)
    assert not nba(g.CART_REMINDER, "email", ConsentState(), {}, context=ctx).allowed  # no marketing consent
    assert ledger.count("p_1", "email") == 0
    assert nba(g.CART_REMINDER, "email", MARKETING, {}, context=ctx).allowed
    second = nba(g.CART_REMINDER, "email", MARKETING, {}, now=NOON_NY + timedelta(hours=1), context=ctx)
    assert not second.allowed and second.suppressed_reason == "frequency cap reached"
    assert nba(g.CART_REMINDER, "email", MARKETING, {}, now=NOON_NY + timedelta(hours=24), context=ctx).allowed
    assert nba(g.CART_REMINDER, "sms", MARKETING, {}, context=ctx).allowed  # caps are per channel
    # the same decision asked again takes no second slot
    keyed = dataclasses.replace(ctx, key="default|1|cart_reminder")
    day3 = NOON_NY + timedelta(hours=48)
    assert nba(g.CART_REMINDER, "email", MARKETING, {}, now=day3, context=keyed).allowed
    assert nba(g.CART_REMINDER, "email", MARKETING, {}, now=day3 + timedelta(minutes=1), context=keyed).allowed
    assert ledger.count("p_1", "email") == 3
    # in quiet hours the slot is counted at the send time
    night = nba(g.CART_REMINDER, "sms", MARKETING, {}, now=MONDAY_NIGHT + timedelta(days=7), context=ctx)
    assert night.allowed and night.send_at is not None


def test_purchase_stops_cart_reminder_and_starts_thank_you() -> None:
    cart = Signal("add_to_cart", "web", item_id="sku_trail", item_name="Trail Runner jacket", category="running shoes")
    bought = ContactContext(purchases={"sku_trail": NOON_NY - timedelta(hours=2)},
                            last_purchase_ts=NOON_NY - timedelta(hours=2))
    d = nba(g.CART_REMINDER, "email", MARKETING, {"item_ids": ["sku_trail"]}, [cart], context=bought)
    assert not d.allowed and d.suppressed_reason == "cart item already purchased"
    other = ContactContext(purchases={"sku_other": NOON_NY - timedelta(hours=2)})
    assert nba(g.CART_REMINDER, "email", MARKETING, {}, [cart], context=other).allowed
    assert nba(g.THANK_YOU, "email", ConsentState(), {}, [cart], context=bought).allowed
    assert not nba(g.THANK_YOU, "email", ConsentState(), {}, [cart], context=ContactContext()).allowed


def test_after_return_or_negative_sentiment_service_recovery_first() -> None:
    for ctx in (ContactContext(last_return_ts=NOON_NY - timedelta(days=3)),
                ContactContext(last_negative_sentiment_ts=NOON_NY - timedelta(days=13))):
        assert not nba(g.CROSS_SELL, "email", ConsentState(), {}, context=ctx).allowed
        d = nba(g.SERVICE_RECOVERY, "email", ConsentState(), {}, context=ctx)
        assert d.allowed and d.text == "We're sorry: how can we make it right?"
    old = ContactContext(last_return_ts=NOON_NY - timedelta(days=15))
    assert nba(g.CROSS_SELL, "email", MARKETING, {}, context=old).allowed


def test_action_names_match_nba_module() -> None:
    nba_mod = pytest.importorskip("serving.nba")
    for name in ("CART_REMINDER", "CROSS_SELL", "WINBACK_OFFER", "SERVICE_RECOVERY", "REPLENISHMENT_REMINDER",
                 "LOYALTY_REWARD", "DO_NOTHING"):
        assert getattr(g, name) == getattr(nba_mod, name)
        if name != "DO_NOTHING":
            assert getattr(g, name) in POLICY.templates.actions


# --------------------------------------------------------------------------------------------- ledger
def test_caps_hold_under_concurrent_requests() -> None:
    ledger = InMemoryContactLedger()
    caps = (ContactCap(3600.0, 3), ContactCap(86_400.0, 5))
    now = NOON_NY

    def hit(i: int) -> tuple[str, bool]:
        pid = f"p_{i % 2}"
        return pid, ledger.reserve(pid, "email", now + timedelta(seconds=i % 7), caps)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(hit, range(400)))
    for pid in ("p_0", "p_1"):
        assert sum(ok for p, ok in results if p == pid) == 3
        assert ledger.count(pid, "email") == 3
    # the day cap binds once the hour has passed
    later = [ledger.reserve("p_0", "email", now + timedelta(hours=2, seconds=i), caps) for i in range(5)]
    assert later == [True, True, False, False, False]


def test_ledger_rejects_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        InMemoryContactLedger().reserve("p", "email", datetime(2025, 1, 1), (ContactCap(60.0, 1),))


# --------------------------------------------------------------------------------------------- profile view
def test_profile_view_is_guarded() -> None:
    from features.store import OnlineProfile, ProfileEntry

    profile = OnlineProfile(
        profile_id="p_0123456789abcdef",
        recent_views=(ProfileEntry("sku_trail", "running shoes", MONDAY_NIGHT, "web", "view"),
                      ProfileEntry("sku_m", "Maternity Dresses", MONDAY_NIGHT, "web", "view"),
                      ProfileEntry("sku_t", "tents", MONDAY_NIGHT, "store", "try_on")),
        cart_items=(), returns=(),
        purchases=(ProfileEntry("sku_k", "kitchen", MONDAY_NIGHT, "web", "purchase"),),
        category_counts={"running shoes": 9, "Lingerie": 4, "tents": 2, "kitchen": 1},
        category_sources={"running shoes": {"behavioral": 9}, "Lingerie": {"behavioral": 4},
                          "tents": {"behavioral": 1, "store_visits": 1}, "kitchen": {"purchase_history": 1},
                          "bbq": {"store_visits": 3}},
        channel_last_seen={"web": MONDAY_NIGHT, "email": MONDAY_NIGHT}, last_negative_ts=None,
        identifiers=("email", "device_id", "customer_id"), updated_at=MONDAY_NIGHT,
    )
    v = profile_view(profile, ConsentState(), POLICY)
    assert v["interests"] == ["running shoes", "kitchen", "tents"]
    assert v["identifier_types"] == ["customer_id", "device_id", "email"]
    assert v["channels"] == ["email", "web"] and "recent_items" not in v and v["level"] == "category"
    assert v["summary"] == "Your interests: running shoes, kitchen, tents"
    blob = repr({k: val for k, val in v.items() if k != "profile_id"}).lower()
    for bad in ("maternity", "lingerie", "2025", "bbq", "sku_t", "9"):  # bbq: only seen in a store
        assert bad not in blob
    detailed = profile_view(profile, ConsentState(level=Specificity.ITEM), POLICY)
    assert detailed["recent_items"] == ["sku_trail", "sku_k"] and detailed["level"] == "item"
    off = profile_view(profile, consent_from_flags({PERSONALIZATION: False}), POLICY)
    assert off["interests"] == [] and off["level"] == "none" and off["summary"] == "Personalisation is off"
    assert not off["personalization"]


def test_profile_kind_through_guard_entry_point() -> None:
    d = guard(GuardRequest(PROFILE_VIEW, "web", ConsentState(), (CREEPY,), logged_in=True), POLICY)
    assert d.text == "Your interests: running shoes" and d.params["interests"] == ["running shoes"]


# --------------------------------------------------------------------------------------------- inputs
def test_signal_from_event() -> None:
    s = signal_from_event({EVENT_TYPE: "view", CHANNEL: "web", ITEM_ID: "sku_1", CATEGORY: "tents",
                           TS: "2025-01-06T23:45:00+00:00", DURATION_S: math.nan, COLOR: None, SIZE: "10",
                           STORE_ID: None})
    assert (s.source, s.duration_s, s.attributes[SIZE], s.ts.hour) == (BEHAVIORAL, None, "10", 23)
    assert COLOR not in s.attributes
    assert signal_from_event({EVENT_TYPE: "purchase", CHANNEL: "store", ITEM_ID: "x"}).source == PURCHASE_HISTORY
    assert signal_from_event({EVENT_TYPE: "view", CHANNEL: "store", ITEM_ID: "x"}).source == STORE_VISITS
    assert signal_from_event({EVENT_TYPE: "email_click", CHANNEL: "email"}).source == g.EMAIL_ENGAGEMENT
    pd = pytest.importorskip("pandas")
    row = pd.DataFrame({EVENT_TYPE: ["view"], CHANNEL: ["app"], ITEM_ID: [pd.NA], CATEGORY: ["hats"]}).iloc[0]
    assert signal_from_event(row).item_id is None
    with pytest.raises(ValueError, match="event_type"):
        signal_from_event({CHANNEL: "web"})
    with pytest.raises(ValueError, match="channel"):
        Signal("view", "fax")


def test_bad_requests_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="kind"):
        guard(GuardRequest("poster", "web", ConsentState()), POLICY)
    with pytest.raises(ValueError, match="action"):
        guard(GuardRequest(NBA_MESSAGE, "email", ConsentState(), now=NOON_NY), POLICY)
    with pytest.raises(ValueError, match="now"):
        guard(GuardRequest(NBA_MESSAGE, "email", ConsentState(), action=g.CROSS_SELL), POLICY)
    with pytest.raises(ValueError, match="timezone-aware"):
        guard(GuardRequest(NBA_MESSAGE, "email", ConsentState(), action=g.CROSS_SELL, now=datetime(2025, 1, 1)),
              POLICY)


# --------------------------------------------------------------------------------------------- policy file
def test_default_policy_is_careful() -> None:
    assert POLICY.channel_ceilings["email"] == Specificity.CATEGORY
    assert POLICY.channel_ceilings["social"] == Specificity.NONE
    assert POLICY.ceiling("web", logged_in=False) == Specificity.CATEGORY
    assert not POLICY.sensitive_declared_allowed_on
    assert all(POLICY.frequency_caps.get(ch) for ch in POLICY.outbound_channels)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(colour_ceilings={}), "unknown key"),
        (lambda d: d.pop("quiet_hours"), "missing key"),
        (lambda d: d["channel_ceilings"].update(email="everything"), "channel_ceilings.email"),
        (lambda d: d.update(outbound_channels=["email", "carrier_pigeon"]), "carrier_pigeon"),
        (lambda d: d["frequency_caps"]["email"][0].update(max=-1), r"frequency_caps.email\[0\].max"),
        (lambda d: d["quiet_hours"].update(start="late"), "quiet_hours.start"),
        (lambda d: d["templates"]["reason"]["category"].update(default="At {ts} you liked {category}"),
         "placeholder"),
        (lambda d: d["templates"]["reason"].update(none="Because of {category}"), "placeholder"),
        (lambda d: d.update(default_timezone="Nowhere/Land"), "default_timezone"),
    ],
)
def test_policy_validation_names_the_key(mutate, message: str) -> None:
    data = _raw_policy()
    mutate(data)
    with pytest.raises(PolicyError, match=message):
        policy_from_dict(data)


def test_load_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [1\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)
    custom = tmp_path / "guard.yaml"
    data = _raw_policy()
    data["channel_ceilings"]["email"] = "none"
    custom.write_text(yaml.safe_dump(data))
    assert load_policy(custom).channel_ceilings["email"] == Specificity.NONE
