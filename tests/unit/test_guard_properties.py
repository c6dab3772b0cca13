"""Property tests: whatever the signals, consent, channel and policy, no guarded output leaks.

Names in the generated catalogue are letters only (no digits), so any digit in an output is a leak of
a time, date, duration, count or size; adversarial names that carry such details must be refused.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.schema import BRAND, CHANNELS, COLOR, ITEM_ID, SIZE
from serving import guard as g
from serving.guard import (
    KINDS,
    NBA_MESSAGE,
    ORIGINS,
    PERSONALIZATION,
    PURPOSES,
    SIGNAL_EVENT_TYPES,
    ConsentState,
    GuardRequest,
    Signal,
    Specificity,
    guard,
    load_policy,
)

BASE = load_policy()
SAFE_CATEGORIES = ["running shoes", "jackets", "kitchen", "garden tools", "tents", "board games"]
SENSITIVE_CATEGORIES = ["Maternity Dresses", "Women's Lingerie", "pregnancy", "Health & Beauty", "Adult toys"]
ADVERSARIAL_CATEGORIES = ["Size guide", "Monday deals", "Store pickup", "Minutes to midnight"]
SAFE_ITEMS = ["Trail Runner jacket", "Chef Knife", "Cloud Tee", "Alpine Tent", "Garden Fork"]
ADVERSARIAL_ITEMS = ["Size Ten Runner", "Monday Night Jacket", "Nine PM Watch", "Store Exclusive Tote",
                     "Visited Mug", "Five minutes Timer", "Nursing Pillow", "Blue Ridge Shirt", "Soho Tote"]
ITEM_IDS = ["sku_alpha", "sku_beta", "sku_gamma", "sku_delta"]
COLOURS = ["blue", "crimson", "teal"]
SIZES = ["10", "XL", "42", "medium"]
STORES = ["st_soho", "Soho", "Main Street branch"]
LOCATIONS = ["51.5074,-0.1278", "Soho", "near the park"]
ACTIONS = [g.CART_REMINDER, g.CROSS_SELL, g.UPSELL, g.WINBACK_OFFER, g.SERVICE_RECOVERY,
           g.REPLENISHMENT_REMINDER, g.LOYALTY_REWARD, g.THANK_YOU, "brand_new_action"]
# generic markers of what must never be said, independent of the guard's own scrubber
LEAK_WORDS = {"minute", "minutes", "second", "seconds", "hour", "hours", "times", "size", "sizes", "store",
              "stores", "visited", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
              "am", "pm", "midnight", "ten", "nine", "five", "soho", "street", "branch", "park"}
WORD = re.compile(r"[^\W_]+")

@st.composite
def signals(draw: st.DrawFn) -> Signal:
    channel = draw(st.sampled_from(CHANNELS))
    attrs = {}
    if draw(st.booleans()):
        attrs[COLOR] = draw(st.sampled_from(COLOURS))
    if draw(st.booleans()):
        attrs[SIZE] = draw(st.sampled_from(SIZES))
    if draw(st.booleans()):
        attrs[BRAND] = draw(st.sampled_from(["Nike", "Patagonia", "Acme"]))
    return Signal(
        source_event_type=draw(st.sampled_from(sorted(SIGNAL_EVENT_TYPES))),
        channel=channel,
        item_id=draw(st.none() | st.sampled_from(ITEM_IDS)),
        item_name=draw(st.none() | st.sampled_from(SAFE_ITEMS + ADVERSARIAL_ITEMS)),
        category=draw(st.none() | st.sampled_from(SAFE_CATEGORIES + SENSITIVE_CATEGORIES + ADVERSARIAL_CATEGORIES)),
        attributes=MappingProxyType(attrs),
        ts=draw(st.none() | st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                                         timezones=st.just(UTC))),
        duration_s=draw(st.none() | st.floats(0, 10_000)),
        count=draw(st.none() | st.integers(1, 500)),
        store_id=draw(st.none() | st.sampled_from(STORES)),
        location=draw(st.none() | st.sampled_from(LOCATIONS)),
        origin=draw(st.sampled_from(ORIGINS)),
    )


consents = st.builds(
    ConsentState,
    level=st.sampled_from(list(Specificity)),
    granted=st.frozensets(st.sampled_from(PURPOSES)),
    timezone=st.sampled_from([None, "Europe/Paris", "Asia/Tokyo", "America/Los_Angeles"]),
    location_opt_in=st.booleans(),
)


@st.composite
def policies(draw: st.DrawFn) -> g.GuardPolicy:
    ceilings = {ch: draw(st.sampled_from(list(Specificity))) for ch in CHANNELS}
    return dataclasses.replace(
        BASE,
        channel_ceilings=MappingProxyType(ceilings),
        anonymous_ceiling=draw(st.sampled_from(list(Specificity))),
        brand_at_item_level=draw(st.booleans()),
    )


@st.composite
def requests(draw: st.DrawFn) -> GuardRequest:
    sigs = tuple(draw(st.lists(signals(), max_size=4)))
    kind = draw(st.sampled_from(KINDS))
    params = {}
    if kind == NBA_MESSAGE:
        params = {
            "item_ids": draw(st.lists(st.sampled_from(ITEM_IDS), max_size=3)),
            "categories": draw(st.lists(st.sampled_from(SAFE_CATEGORIES + SENSITIVE_CATEGORIES), max_size=3)),
            "discount_pct": draw(st.integers(0, 50)),
            "last_seen": "Monday 11:45 PM",
            "dwell": "7 minutes",
        }
    return GuardRequest(
        kind=kind, channel=draw(st.sampled_from(CHANNELS)), consent=draw(consents), signals=sigs,
        action=draw(st.sampled_from(ACTIONS)) if kind == NBA_MESSAGE else None, params=params,
        now=datetime(2025, 3, 3, 15, 0, tzinfo=UTC) + timedelta(hours=draw(st.integers(0, 23))),
        logged_in=draw(st.booleans()),
    )


def _strings(v: object) -> list[str]:
    if isinstance(v, (list, tuple)):
        return [s for x in v for s in _strings(x)]
    if isinstance(v, dict | MappingProxyType):
        return [s for x in v.values() for s in _strings(x)]
    return [str(v)]


def _output(d: g.GuardDecision) -> str:
    params = {k: v for k, v in d.params.items() if k != "discount_pct"}  # an offer, not about the person
    return " | ".join([d.text, *_strings(params)])


RUN = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RUN
@given(requests(), policies())
def test_no_output_leaks_times_durations_counts_sizes_places_or_sensitive_names(
    req: GuardRequest, policy: g.GuardPolicy
) -> None:
    d = guard(req, policy)
    out = _output(d)
    low = out.lower()
    words = set(WORD.findall(low))
    assert not re.search(r"\d", out), out  # every time, date, duration, count and size has a digit here
    assert not (words & LEAK_WORDS), (out, words & LEAK_WORDS)
    for s in req.signals:
        for v in (*s.attributes.get(COLOR, "").split(), s.attributes.get(SIZE, "")):
            if v:
                assert v.lower() not in words, (v, out)
        for place in (s.store_id, s.location):
            assert not place or place.lower() not in low, (place, out)
    assert not policy.is_sensitive(out), out
    for name in SENSITIVE_CATEGORIES:
        assert name.lower() not in low
    # audit entries are for operators only
    for a in d.audit:
        assert a.reason not in out and a.what not in d.text


@RUN
@given(requests(), policies())
def test_level_never_exceeds_consent_or_channel_and_items_are_named_only_at_item_level(
    req: GuardRequest, policy: g.GuardPolicy
) -> None:
    d = guard(req, policy)
    allowed = min(req.consent.level, policy.ceiling(req.channel, req.logged_in))
    if PERSONALIZATION not in req.consent.granted:
        allowed = Specificity.NONE
    assert d.level <= allowed
    out = _output(d)
    named = [s for s in req.signals if s.item_name and s.item_name in out]
    ids = [i for i in ITEM_IDS if i in out]
    if named or ids:
        assert allowed == Specificity.ITEM and d.level == Specificity.ITEM
        for s in named:
            assert not policy.is_sensitive(s.category) and not policy.is_sensitive(s.item_name)
    if allowed == Specificity.NONE:
        assert not any(c.lower() in out.lower() for c in SAFE_CATEGORIES) and not ids
    # only consented sources shape the output
    for s in d.signals_used:
        assert s.source in req.consent.granted


@RUN
@given(requests(), policies(), st.sampled_from(PURPOSES))
def test_revoking_a_purpose_removes_its_signals_from_the_very_next_output(
    req: GuardRequest, policy: g.GuardPolicy, purpose: str
) -> None:
    revoked = dataclasses.replace(req.consent, granted=req.consent.granted - {purpose})
    d = guard(dataclasses.replace(req, consent=revoked), policy)
    assert all(s.source != purpose for s in d.signals_used)
    out = _output(d).lower()
    # a name or category only an unconsented signal carried cannot appear
    for s in req.signals:
        if s.source in revoked.granted and PERSONALIZATION in revoked.granted:
            continue
        others = [o for o in req.signals if o.source in revoked.granted and PERSONALIZATION in revoked.granted]
        if s.item_name and not any(o.item_name == s.item_name for o in others):
            assert s.item_name.lower() not in out
        if s.item_id and not any(o.item_id == s.item_id for o in others):
            assert s.item_id not in out
    if purpose == PERSONALIZATION:
        assert d.level == Specificity.NONE and not d.signals_used
        assert not any(k in d.params for k in (ITEM_ID, "item_ids", "categories", g.CATEGORY))


LIFE_EVENT_CATEGORIES = ["Baby > Diapers", "Bridal > Veils", "Nursery furniture"]
SUBJECT_ACTIONS = [g.CART_REMINDER, g.REPLENISHMENT_REMINDER, g.TRIED_ON_OFFER, g.POST_PURCHASE_CARE]


@st.composite
def subject_requests(draw: st.DrawFn) -> tuple[GuardRequest, frozenset[str]]:
    """An NBA message about items (`item_ids`: its cart, its order), the customer's history besides: (request,
    the categories only that other history carries)."""
    subject = draw(st.lists(st.sampled_from(ITEM_IDS[:2]), min_size=1, max_size=2, unique=True))
    tiered = draw(st.booleans())
    own = [dataclasses.replace(draw(signals()), item_id=i, origin=g.FIRST_PARTY,
                               category=draw(st.sampled_from(LIFE_EVENT_CATEGORIES + SENSITIVE_CATEGORIES
                                                             if tiered else SAFE_CATEGORIES[:2])))
           for i in subject]
    others = [dataclasses.replace(s, item_id=draw(st.none() | st.sampled_from(ITEM_IDS[2:])),
                                  category=draw(st.sampled_from(SAFE_CATEGORIES[2:])))
              for s in draw(st.lists(signals(), min_size=1, max_size=5))]
    sigs = draw(st.permutations(own + others))
    channel = draw(st.sampled_from(CHANNELS))
    params = {"item_ids": subject, "categories": sorted({s.category for s in sigs if s.category})}
    req = GuardRequest(NBA_MESSAGE, channel, draw(consents), tuple(sigs), action=draw(st.sampled_from(SUBJECT_ACTIONS)),
                       params=params, now=datetime(2025, 3, 3, 15, 0, tzinfo=UTC), logged_in=draw(st.booleans()))
    return req, frozenset(s.category for s in others if s.category) - {s.category for s in own}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject_requests(), policies())
def test_a_message_about_items_never_names_what_only_the_rest_of_the_history_carries(
    case: tuple[GuardRequest, frozenset[str]], policy: g.GuardPolicy
) -> None:
    """A cart of diapers is never "Still thinking about pet?": the wording and params rest on the subject's
    own signals; when none of them may be named the message is the action's generic (`none`) wording."""
    req, elsewhere = case
    d = guard(req, policy)
    out = _output(d).lower()
    for cat in elsewhere:
        assert cat.lower() not in out, (cat, d.text, dict(d.params))
    own_names = {s.item_name for s in req.signals if s.item_id in req.params["item_ids"]}
    for s in req.signals:
        if s.item_id not in req.params["item_ids"] and s.item_name and s.item_name not in own_names:
            assert s.item_name.lower() not in out, (s.item_name, d.text)
    if all(g.signal_tier(s, policy) != g.Sensitivity.NONE for s in req.signals if s.item_id in req.params["item_ids"]):
        assert d.level == Specificity.NONE and not ({"categories", "items", "item_ids"} & set(d.params)), d
