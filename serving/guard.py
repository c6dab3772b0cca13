"""The creepiness guard: what a personalised output may say about a person, and when it may be sent.

Shoppers welcome "because you like running shoes" and flee "we saw you spend 7 minutes on blue Nike
running shoes in size 10 at 11:45 PM on Monday". Every recommendation reason, next-best-action
message and profile view passes through `guard`, a pure function of its inputs (so revoking consent
changes the very next output), configured by one file, `serving/guard.yaml`.

API (everything else is private):

    policy = load_policy()                                  # serving/guard.yaml, validated
    consent = consent_from_flags(store.get_consent(pid), timezone="Europe/Paris")
    kept, audit = filter_signals(signals, consent)          # inputs: drop unconsented sources
    decision = guard(GuardRequest(kind=RECOMMENDATION_REASON, channel="web", consent=consent,
                                  signals=(Signal(VIEW, "web", item_id="i1", category="running shoes"),),
                                  logged_in=True), policy)
    decision.allowed, decision.level, decision.text, decision.params, decision.audit
    profile_view(profile, consent, policy) -> dict          # GET /profiles/{id}
    check_contact(...) / ContactLedger / InMemoryContactLedger   # caps, quiet hours, suppression

Rules, in order: (1) signals from a source the customer has not consented to are dropped before
anything else (revoking `personalization` drops all of them); (2) the level exposed is the lowest of
consent level, channel ceiling and the sensitive-category rule; (3) text is rendered only from
level-appropriate templates and whitelisted fields (category, item name, brand), then scanned by a
scrubber (times, weekdays, dates, durations, counts, sizes, places, sensitive words); anything that
slips falls back to the `none` text; (4) params keep only whitelisted keys at the allowed level;
(5) outbound messages must pass suppression, quiet hours and frequency caps, and only then reserve a
contact slot. The audit (what was removed and why) is for operators and never reaches text or params.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from features.schema import (
    ADD_TO_CART,
    BRAND,
    CATEGORY,
    CHANNEL,
    CHANNELS,
    COLOR,
    DURATION_S,
    EMAIL_CLICK,
    EMAIL_OPEN,
    EVENT_TYPE,
    EVENT_TYPES,
    ITEM_ID,
    PROFILE_ID,
    PURCHASE,
    QUANTITY,
    RETURN,
    REVIEW,
    SEARCH,
    SIZE,
    SOCIAL_LIKE,
    STORE_ID,
    SUPPORT_MESSAGE,
    TRY_ON,
    TS,
    VIEW,
)

DEFAULT_POLICY_PATH: Final = Path(__file__).resolve().parent / "guard.yaml"

# ---------------------------------------------------------------------------------------------
# Names (defined once here; the store keeps consent as purpose -> granted)
# ---------------------------------------------------------------------------------------------
#: Master switch: revoked means no personal input is used and only `none` outputs are produced.
PERSONALIZATION: Final = "personalization"
#: Opt-in to item-level specificity ("because you viewed the Trail Runner jacket").
DETAILED_PERSONALIZATION: Final = "detailed_personalization"
BEHAVIORAL: Final = "behavioral"  # browsing, search, cart on the retailer's own site and app
PURCHASE_HISTORY: Final = "purchase_history"  # orders and returns
STORE_VISITS: Final = "store_visits"  # in-store behaviour (try-ons, store views)
LOCATION: Final = "location"  # precise location; also governs keeping store ids on signals
EMAIL_ENGAGEMENT: Final = "email_engagement"  # opens and clicks (tracking pixels)
SOCIAL: Final = "social"  # likes and activity on social networks
FEEDBACK: Final = "feedback"  # reviews and support messages
PURPOSES: Final[tuple[str, ...]] = (
    PERSONALIZATION, DETAILED_PERSONALIZATION, BEHAVIORAL, PURCHASE_HISTORY, STORE_VISITS, LOCATION,
    EMAIL_ENGAGEMENT, SOCIAL, FEEDBACK,
)
#: What a careful retailer assumes for a customer who accepted the basic terms: first-party
#: behaviour and purchase history on its own site, nothing from stores, location, social or pixels.
DEFAULT_PURPOSES: Final[frozenset[str]] = frozenset({PERSONALIZATION, BEHAVIORAL, PURCHASE_HISTORY})

FIRST_PARTY: Final = "first_party"
ZERO_PARTY: Final = "zero_party"  # the customer told us (preference centre, quiz)
INFERRED: Final = "inferred"  # a model's guess; never presented as something the person did
ORIGINS: Final[tuple[str, ...]] = (FIRST_PARTY, ZERO_PARTY, INFERRED)

#: Event type of a declared preference (zero-party signal); not a canonical event.
DECLARED_PREFERENCE: Final = "declared_preference"
SIGNAL_EVENT_TYPES: Final[frozenset[str]] = frozenset(EVENT_TYPES) | {DECLARED_PREFERENCE}
#: Event types that may explain a recommendation (a return or a complaint never does).
REASON_EVENT_TYPES: Final[frozenset[str]] = frozenset(
    {VIEW, SEARCH, ADD_TO_CART, PURCHASE, TRY_ON, SOCIAL_LIKE, EMAIL_CLICK, DECLARED_PREFERENCE}
)

# Output kinds
RECOMMENDATION_REASON: Final = "recommendation_reason"
NBA_MESSAGE: Final = "nba_message"
PROFILE_VIEW: Final = "profile_view"
KINDS: Final[tuple[str, ...]] = (RECOMMENDATION_REASON, NBA_MESSAGE, PROFILE_VIEW)

# Actions (same strings as serving/nba.py, plus thank-you and upsell)
CART_REMINDER: Final = "cart_reminder"
CROSS_SELL: Final = "cross_sell"
UPSELL: Final = "upsell"
WINBACK_OFFER: Final = "winback_offer"
SERVICE_RECOVERY: Final = "service_recovery"
REPLENISHMENT_REMINDER: Final = "replenishment_reminder"
LOYALTY_REWARD: Final = "loyalty_reward"
THANK_YOU: Final = "thank_you"
DO_NOTHING: Final = "do_nothing"

# Mapping keys a raw event may carry beyond the canonical columns (used by `signal_from_event`).
ITEM_NAME: Final = "item_name"
COUNT: Final = "count"
LOCATION_KEY: Final = "location"
ORIGIN: Final = "origin"
SOURCE: Final = "source"

# Message params that may leave the guard. Personal ones need a level and must match a kept signal.
ITEM_PARAMS: Final[frozenset[str]] = frozenset({ITEM_ID, "item_ids", ITEM_NAME})
CATEGORY_PARAMS: Final[frozenset[str]] = frozenset({CATEGORY, "categories"})
OFFER_PARAMS: Final[frozenset[str]] = frozenset({"discount_pct", "points", "offer_code"})


class Specificity(IntEnum):
    """How much an output may reveal about what the person did, generic to specific."""

    NONE = 0
    CATEGORY = 1
    ITEM = 2

    @classmethod
    def parse(cls, value: str | int | Specificity) -> Specificity:
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown specificity {value!r} (expected none, category or item)") from None
        return cls(value)


# ---------------------------------------------------------------------------------------------
# Signals and consent
# ---------------------------------------------------------------------------------------------
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


def default_source(event_type: str, channel: str, origin: str = FIRST_PARTY) -> str:
    """The consent purpose a signal depends on, from what produced it."""
    if origin == ZERO_PARTY or event_type == DECLARED_PREFERENCE:
        return PERSONALIZATION  # the customer told us, for this very purpose
    if event_type in (PURCHASE, RETURN):
        return PURCHASE_HISTORY
    if event_type in (REVIEW, SUPPORT_MESSAGE):
        return FEEDBACK
    if event_type in (EMAIL_OPEN, EMAIL_CLICK):
        return EMAIL_ENGAGEMENT
    if event_type == SOCIAL_LIKE or channel == "social":
        return SOCIAL
    if event_type == TRY_ON or channel == "store":
        return STORE_VISITS
    return BEHAVIORAL


@dataclass(frozen=True, slots=True)
class Signal:
    """One structured fact about a customer; the guard decides which parts may ever be said."""

    source_event_type: str
    channel: str
    item_id: str | None = None
    item_name: str | None = None
    category: str | None = None
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # color, size, brand, ...
    ts: datetime | None = None
    duration_s: float | None = None
    count: int | None = None
    store_id: str | None = None
    location: str | None = None
    origin: str = FIRST_PARTY
    source: str = ""  # consent purpose; derived by `default_source` when empty

    def __post_init__(self) -> None:
        if self.source_event_type not in SIGNAL_EVENT_TYPES:
            raise ValueError(f"unknown signal event type {self.source_event_type!r}")
        if self.channel not in CHANNELS:
            raise ValueError(f"unknown channel {self.channel!r} (expected one of {', '.join(CHANNELS)})")
        if self.origin not in ORIGINS:
            raise ValueError(f"unknown origin {self.origin!r} (expected one of {', '.join(ORIGINS)})")
        if not isinstance(self.attributes, MappingProxyType):
            object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))
        if not self.source:
            object.__setattr__(self, "source", default_source(self.source_event_type, self.channel,
                                                              self.origin))

    @property
    def brand(self) -> str | None:
        return self.attributes.get(BRAND) if self.attributes else None


def _missing(v: object) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN
    except (TypeError, ValueError):
        return True  # pandas.NA


def _opt_str(v: object) -> str | None:
    if _missing(v):
        return None
    s = str(v).strip()
    return s or None


def _opt_ts(v: object) -> datetime | None:
    if _missing(v):
        return None
    if isinstance(v, datetime):
        return v
    if isinstance(v, str):
        return datetime.fromisoformat(v)
    raise ValueError(f"{TS} must be a datetime or ISO-8601 string, got {type(v).__name__}")


def signal_from_event(event: Mapping[str, Any]) -> Signal:
    """A `Signal` from a canonical event record (a dict or a DataFrame row); missing values are None."""
    for key in (EVENT_TYPE, CHANNEL):
        if _opt_str(event.get(key)) is None:
            raise ValueError(f"event needs {key!r} to become a signal")
    attrs = {k: s for k in (COLOR, SIZE, BRAND) if (s := _opt_str(event.get(k))) is not None}
    dur = event.get(DURATION_S)
    count = event.get(COUNT, event.get(QUANTITY))
    return Signal(
        source_event_type=str(event[EVENT_TYPE]).strip(),
        channel=str(event[CHANNEL]).strip(),
        item_id=_opt_str(event.get(ITEM_ID)),
        item_name=_opt_str(event.get(ITEM_NAME)),
        category=_opt_str(event.get(CATEGORY)),
        attributes=MappingProxyType(attrs) if attrs else _EMPTY,
        ts=_opt_ts(event.get(TS)),
        duration_s=None if _missing(dur) else float(dur),
        count=None if _missing(count) else int(count),
        store_id=_opt_str(event.get(STORE_ID)),
        location=_opt_str(event.get(LOCATION_KEY)),
        origin=_opt_str(event.get(ORIGIN)) or FIRST_PARTY,
        source=_opt_str(event.get(SOURCE)) or "",
    )


def _check_timezone(tz: str | None) -> None:
    if tz is None:
        return
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r} (expected an IANA name like 'Europe/Paris')") from None


@dataclass(frozen=True, slots=True)
class ConsentState:
    """What the customer opted into. Opt-in: the default level is `category`, not `item`."""

    level: Specificity = Specificity.CATEGORY
    granted: frozenset[str] = DEFAULT_PURPOSES
    timezone: str | None = None  # IANA; None means the policy's default
    location_opt_in: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", Specificity.parse(self.level))
        object.__setattr__(self, "granted", frozenset(self.granted))
        _check_timezone(self.timezone)

    @property
    def personalization(self) -> bool:
        return PERSONALIZATION in self.granted


def consent_from_flags(flags: Mapping[str, bool], timezone: str | None = None) -> ConsentState:
    """Build consent from the store's purpose -> granted table, over `DEFAULT_PURPOSES`.

    Unknown purposes are kept (the store may record more than the guard uses).
    """
    granted = set(DEFAULT_PURPOSES)
    for purpose, ok in flags.items():
        if not isinstance(ok, bool):
            raise ValueError(f"consent for {purpose!r} must be true or false, got {ok!r}")
        (granted.add if ok else granted.discard)(purpose)
    if PERSONALIZATION not in granted:
        return ConsentState(Specificity.NONE, frozenset(), timezone, False)
    level = Specificity.ITEM if DETAILED_PERSONALIZATION in granted else Specificity.CATEGORY
    return ConsentState(level, frozenset(granted), timezone, LOCATION in granted)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """For operators only: what was removed or refused, and why."""

    what: str
    reason: str


def filter_signals(signals: Iterable[Signal], consent: ConsentState) -> tuple[list[Signal], list[AuditEntry]]:
    """Drop signals whose source the customer has not consented to, before anything is decided.

    Recommendation code calls this on its inputs too, so an unconsented source never shapes a score.
    Without `location_opt_in`, store ids and precise locations are stripped from kept signals.
    """
    kept: list[Signal] = []
    audit: list[AuditEntry] = []
    granted = consent.granted
    if PERSONALIZATION not in granted:
        n = sum(1 for _ in signals)
        if n:
            audit.append(AuditEntry(f"{n} signal(s)", "personalization consent revoked"))
        return kept, audit
    for s in signals:
        if s.source not in granted:
            audit.append(AuditEntry(f"{s.source_event_type} signal", f"no consent for source {s.source!r}"))
        elif (s.store_id or s.location) and not consent.location_opt_in:
            kept.append(Signal(s.source_event_type, s.channel, s.item_id, s.item_name, s.category,
                               s.attributes, s.ts, s.duration_s, s.count, None, None, s.origin, s.source))
            audit.append(AuditEntry("store/location", "no location opt-in"))
        else:
            kept.append(s)
    return kept, audit


# ---------------------------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------------------------
class ContactCap(NamedTuple):
    """At most `max_contacts` messages in any rolling `window_s` seconds (a plain tuple, so the store
    can implement the ledger without importing serving)."""

    window_s: float
    max_contacts: int


@dataclass(frozen=True)
class SuppressionPolicy:
    cart_reminder_after_purchase: timedelta
    thank_you_window: timedelta
    after_negative: timedelta
    after_negative_suppressed: frozenset[str]


@dataclass(frozen=True)
class Templates:
    reason_none: str
    reason_category: Mapping[str, str]  # origin or "default" -> template
    reason_item: Mapping[str, str]  # event type or "default" -> template
    actions: Mapping[str, Mapping[Specificity, str]]  # action or "default" -> level -> template
    profile: Mapping[Specificity, str]


@dataclass(frozen=True)
class GuardPolicy:
    """The validated contents of guard.yaml (build it with `load_policy` or `policy_from_dict`)."""

    default_timezone: str
    channel_ceilings: Mapping[str, Specificity]
    anonymous_ceiling: Specificity
    outbound_channels: frozenset[str]
    brand_at_item_level: bool
    sensitive_terms: tuple[str, ...]
    sensitive_declared_allowed_on: frozenset[str]
    frequency_caps: Mapping[str, tuple[ContactCap, ...]]
    quiet_start: time
    quiet_end: time
    quiet_channels: frozenset[str]
    suppression: SuppressionPolicy
    templates: Templates
    _sensitive_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _sensitive_cache: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        terms = [t.strip().lower() for t in self.sensitive_terms if t.strip()]
        pattern = None
        if terms:
            alt = "|".join(r"\s+".join(map(re.escape, t.split())) for t in sorted(terms, key=len, reverse=True))
            pattern = re.compile(rf"(?<![^\W_])(?:{alt})(?![^\W_])", re.IGNORECASE)
        object.__setattr__(self, "_sensitive_re", pattern)

    def is_sensitive(self, text: str | None) -> bool:
        """Whether a category or item name matches a sensitive term (case-insensitive, whole words).
        Memoised: the same few hundred category names come back on every request."""
        if not text or self._sensitive_re is None:
            return False
        cache = self._sensitive_cache
        hit = cache.get(text)
        if hit is None:
            if len(cache) > 100_000:
                cache.clear()
            hit = cache[text] = self._sensitive_re.search(text) is not None
        return hit

    def ceiling(self, channel: str, logged_in: bool) -> Specificity:
        c = self.channel_ceilings[channel]
        if channel in ("web", "app") and not logged_in:
            c = min(c, self.anonymous_ceiling)
        return c


class PolicyError(ValueError):
    """guard.yaml is invalid; the message names the key."""


_TOP_KEYS: Final = {"version", "default_timezone", "channel_ceilings", "anonymous_ceiling", "outbound_channels",
                    "brand_at_item_level", "sensitive", "frequency_caps", "quiet_hours", "suppression",
                    "templates"}
_PLACEHOLDER_RE: Final = re.compile(r"\{([^{}]*)\}")


def _req(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise PolicyError(f"{where} must be a mapping")
    if key not in d:
        raise PolicyError(f"{where}.{key} is missing" if where else f"{key} is missing")
    return d[key]


def _exact_keys(d: Any, keys: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise PolicyError(f"{where} must be a mapping")
    unknown = set(d) - keys
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    missing = keys - set(d)
    if missing:
        raise PolicyError(f"{where}: missing key(s) {', '.join(sorted(missing))}")
    return d


def _level(v: Any, where: str) -> Specificity:
    try:
        return Specificity.parse(v) if isinstance(v, str) else Specificity.parse(str(v))
    except ValueError as exc:
        raise PolicyError(f"{where}: {exc}") from None


def _channels(v: Any, where: str) -> frozenset[str]:
    if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
        raise PolicyError(f"{where} must be a list of channel names")
    bad = [c for c in v if c not in CHANNELS]
    if bad:
        raise PolicyError(f"{where}: unknown channel(s) {', '.join(bad)}")
    return frozenset(v)


def _number(v: Any, where: str, *, minimum: float = 0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < minimum:
        raise PolicyError(f"{where} must be a number >= {minimum}, got {v!r}")
    return float(v)


def _clock(v: Any, where: str) -> time:
    try:
        return time.fromisoformat(str(v))
    except ValueError:
        raise PolicyError(f"{where} must be a time like \"21:00\", got {v!r}") from None


def _template(v: Any, allowed: set[str], where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise PolicyError(f"{where} must be a non-empty string")
    used = set(_PLACEHOLDER_RE.findall(v))
    if used - allowed:
        raise PolicyError(f"{where}: placeholder(s) {', '.join(sorted(used - allowed))} not allowed here "
                          f"(allowed: {', '.join(sorted(allowed)) or 'none'})")
    return v


def _level_templates(v: Any, where: str) -> Mapping[Specificity, str]:
    d = _exact_keys(v, {"none", "category", "item"}, where)
    return MappingProxyType({
        Specificity.NONE: _template(d["none"], set(), f"{where}.none"),
        Specificity.CATEGORY: _template(d["category"], {"category"}, f"{where}.category"),
        Specificity.ITEM: _template(d["item"], {"category", "item"}, f"{where}.item"),
    })


def policy_from_dict(data: Mapping[str, Any]) -> GuardPolicy:
    """Validate a parsed guard.yaml; raises `PolicyError` naming the offending key."""
    d = _exact_keys(data, _TOP_KEYS, "guard.yaml")
    if d["version"] != 1:
        raise PolicyError(f"version must be 1, got {d['version']!r}")
    tz = d["default_timezone"]
    try:
        _check_timezone(str(tz))
    except ValueError as exc:
        raise PolicyError(f"default_timezone: {exc}") from None
    ceilings_raw = _exact_keys(d["channel_ceilings"], set(CHANNELS), "channel_ceilings")
    ceilings = {ch: _level(v, f"channel_ceilings.{ch}") for ch, v in ceilings_raw.items()}
    sens = _exact_keys(d["sensitive"], {"categories", "declared_allowed_on"}, "sensitive")
    terms = sens["categories"]
    if not isinstance(terms, list) or not all(isinstance(t, str) and t.strip() for t in terms):
        raise PolicyError("sensitive.categories must be a list of non-empty strings")
    if not isinstance(d["brand_at_item_level"], bool):
        raise PolicyError("brand_at_item_level must be true or false")

    caps_raw = d["frequency_caps"]
    if not isinstance(caps_raw, Mapping):
        raise PolicyError("frequency_caps must be a mapping of channel -> list of caps")
    _channels(list(caps_raw), "frequency_caps")
    caps: dict[str, tuple[ContactCap, ...]] = {}
    for ch, lst in caps_raw.items():
        if not isinstance(lst, list):
            raise PolicyError(f"frequency_caps.{ch} must be a list")
        out = []
        for i, cap in enumerate(lst):
            where = f"frequency_caps.{ch}[{i}]"
            c = _exact_keys(cap, {"window_hours", "max"}, where)
            hours = _number(c["window_hours"], f"{where}.window_hours", minimum=1e-9)
            mx = c["max"]
            if isinstance(mx, bool) or not isinstance(mx, int) or mx < 0:
                raise PolicyError(f"{where}.max must be a whole number >= 0, got {mx!r}")
            out.append(ContactCap(hours * 3600.0, mx))
        caps[ch] = tuple(out)

    q = _exact_keys(d["quiet_hours"], {"start", "end", "channels"}, "quiet_hours")
    s = _exact_keys(d["suppression"], {"cart_reminder_after_purchase_days", "thank_you_window_days",
                                       "after_negative_days", "after_negative_suppressed"}, "suppression")
    supp_actions = s["after_negative_suppressed"]
    if not isinstance(supp_actions, list) or not all(isinstance(a, str) for a in supp_actions):
        raise PolicyError("suppression.after_negative_suppressed must be a list of action names")
    suppression = SuppressionPolicy(
        timedelta(days=_number(s["cart_reminder_after_purchase_days"], "suppression.cart_reminder_after_purchase_days")),
        timedelta(days=_number(s["thank_you_window_days"], "suppression.thank_you_window_days")),
        timedelta(days=_number(s["after_negative_days"], "suppression.after_negative_days")),
        frozenset(supp_actions),
    )

    t = _exact_keys(d["templates"], {"reason", "actions", "profile"}, "templates")
    r = _exact_keys(t["reason"], {"none", "category", "item"}, "templates.reason")
    cat = _req(r, "category", "templates.reason")
    item = _req(r, "item", "templates.reason")
    for where, m in (("templates.reason.category", cat), ("templates.reason.item", item)):
        if not isinstance(m, Mapping) or "default" not in m:
            raise PolicyError(f"{where} must be a mapping with a 'default' entry")
    bad_origin = set(cat) - set(ORIGINS) - {"default"}
    if bad_origin:
        raise PolicyError(f"templates.reason.category: unknown origin(s) {', '.join(sorted(bad_origin))}")
    bad_event = set(item) - SIGNAL_EVENT_TYPES - {"default"}
    if bad_event:
        raise PolicyError(f"templates.reason.item: unknown event type(s) {', '.join(sorted(bad_event))}")
    actions = t["actions"]
    if not isinstance(actions, Mapping) or "default" not in actions:
        raise PolicyError("templates.actions must be a mapping with a 'default' entry")
    templates = Templates(
        reason_none=_template(r["none"], set(), "templates.reason.none"),
        reason_category=MappingProxyType({k: _template(v, {"category"}, f"templates.reason.category.{k}")
                                          for k, v in cat.items()}),
        reason_item=MappingProxyType({k: _template(v, {"category", "item"}, f"templates.reason.item.{k}")
                                      for k, v in item.items()}),
        actions=MappingProxyType({a: _level_templates(v, f"templates.actions.{a}") for a, v in actions.items()}),
        profile=_level_templates(t["profile"], "templates.profile"),
    )
    return GuardPolicy(
        default_timezone=str(tz),
        channel_ceilings=MappingProxyType(ceilings),
        anonymous_ceiling=_level(d["anonymous_ceiling"], "anonymous_ceiling"),
        outbound_channels=_channels(d["outbound_channels"], "outbound_channels"),
        brand_at_item_level=d["brand_at_item_level"],
        sensitive_terms=tuple(terms),
        sensitive_declared_allowed_on=_channels(sens["declared_allowed_on"], "sensitive.declared_allowed_on"),
        frequency_caps=MappingProxyType(caps),
        quiet_start=_clock(q["start"], "quiet_hours.start"),
        quiet_end=_clock(q["end"], "quiet_hours.end"),
        quiet_channels=_channels(q["channels"], "quiet_hours.channels"),
        suppression=suppression,
        templates=templates,
    )


def load_policy(path: str | Path | None = None) -> GuardPolicy:
    """Read and validate guard.yaml (default: the one next to this module)."""
    p = Path(path) if path is not None else DEFAULT_POLICY_PATH
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read guard policy {p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"guard policy {p} is not valid YAML: {exc}") from None
    try:
        return policy_from_dict(data)
    except PolicyError as exc:
        raise PolicyError(f"{p}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Rendering and scrubbing
# ---------------------------------------------------------------------------------------------
#: Whitelisted names must look like names: letters, digits, spaces and a little punctuation.
_SAFE_NAME_RE: Final = re.compile(r"^\w[\w .,'&+/-]{0,79}$")
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "weekend", "weekday")
_MONTHS = ("january", "february", "march", "april", "june", "july", "august", "september", "october",
           "november", "december")
#: Words that never appear in customer-facing text (checked as a set: regex alternations are slow).
_FORBIDDEN_WORDS: Final[frozenset[str]] = frozenset(
    [*_WEEKDAYS, *(w + "s" for w in _WEEKDAYS), *_MONTHS]
    + ["midnight", "noon", "tonight", "yesterday", "today", "clock", "am", "pm"]  # times of day
    + ["second", "seconds", "sec", "secs", "minute", "minutes", "min", "mins", "hour", "hours", "hr", "hrs"]
    + ["times", "twice", "thrice", "repeatedly", "view", "views", "visit", "visits", "visited"]  # counts
    + ["size", "sizes", "xxs", "xs", "xl", "xxl", "xxxl"]  # sizes
    + ["store", "stores", "branch", "mall", "outlet", "boutique", "nearby", "location", "street", "avenue"]
    + ["aisle", "lat", "lon", "lng", "latitude", "longitude", "gps"]  # places
)
_FORBIDDEN_PHRASES: Final[tuple[str, ...]] = (
    "near you", "this morning", "last night", "late at night", "again and again",
)
_PHRASE_TRIGGERS: Final[frozenset[str]] = frozenset({"near", "morning", "night", "again"})
#: Patterns with digits, only run when the text has a digit.
_DIGIT_RE: Final = re.compile(
    r"\d{1,2}[:.h]\d{2}"  # 11:45, 23.05, 9h30
    r"|\d\s*(?:a\.?m\b|p\.?m\b)"  # 11 PM, 9am
    r"|\bmay\s+\d"
    r"|\d{1,4}[/-]\d{1,2}"  # 2025-01-06, 1/6
    r"|\d\s*(?:days?|weeks?|months?|years?|s|m|h|x)\b"  # 3 days, 420s, 3x
    r"|\d\s*(?:cm|mm|in|inch|inches|eu|uk|us)\b|\b(?:eu|uk|us)\s*\d|\dxl"  # sizes
    r"|\d+\.\d{3,}",  # coordinates
    re.IGNORECASE,
)
_WORD_RE: Final = re.compile(r"[^\W_]+")
_HAS_DIGIT: Final = re.compile(r"\d")


def _safe_name(v: str | None) -> str | None:
    return v if v and _SAFE_NAME_RE.match(v) else None


def scrub_problems(text: str, signals: Sequence[Signal] = (), policy: GuardPolicy | None = None) -> list[str]:
    """Why `text` may not be shown (empty when it is clean): generic patterns, plus the request's own
    store ids, locations, sizes and colours, plus sensitive terms."""
    problems: list[str] = []
    low = text.lower()
    words = set(_WORD_RE.findall(low))
    if (
        not words.isdisjoint(_FORBIDDEN_WORDS)
        or (not words.isdisjoint(_PHRASE_TRIGGERS) and any(ph in low for ph in _FORBIDDEN_PHRASES))
        or (_HAS_DIGIT.search(low) is not None and _DIGIT_RE.search(low) is not None)
    ):
        problems.append("time, date, duration, count, size or place pattern")
    if policy is not None and policy.is_sensitive(text):
        problems.append("sensitive term")
    for s in signals:
        values = [s.store_id, s.location]
        if s.attributes:
            values += [s.attributes.get(SIZE), s.attributes.get(COLOR)]
        for v in values:
            if v:
                v = v.strip().lower()
                parts = _WORD_RE.findall(v)
                if (len(v) >= 4 and v in low) or (parts and words.issuperset(parts)):
                    problems.append("store, location, size or colour of a signal")
                    return problems
    return problems


def _item_label(s: Signal, policy: GuardPolicy) -> str | None:
    name = _safe_name(s.item_name)
    if name is None:
        return None
    brand = _safe_name(s.brand) if policy.brand_at_item_level else None
    if brand and brand.lower() not in name.lower():
        return f"{brand} {name}"
    return name


# ---------------------------------------------------------------------------------------------
# Requests and decisions
# ---------------------------------------------------------------------------------------------
class ContactLedger(Protocol):
    """Records contacts; `reserve` is an atomic check-and-record against every cap."""

    def reserve(self, profile_id: str, channel: str, now: datetime, caps: Sequence[ContactCap]) -> bool: ...


class InMemoryContactLedger:
    """Thread-safe in-process ledger (tests, single-process demos); the store persists the same rule."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: dict[tuple[str, str], deque[float]] = {}

    def reserve(self, profile_id: str, channel: str, now: datetime, caps: Sequence[ContactCap]) -> bool:
        t = _aware(now, "now").timestamp()
        with self._lock:
            sent = self._sent.setdefault((profile_id, channel), deque())
            longest = max((w for w, _ in caps), default=0.0)
            while sent and sent[0] <= t - longest:
                sent.popleft()
            for window_s, max_contacts in caps:
                if sum(1 for x in sent if x > t - window_s) >= max_contacts:
                    return False
            sent.append(t)
            return True

    def count(self, profile_id: str, channel: str) -> int:
        with self._lock:
            return len(self._sent.get((profile_id, channel), ()))


@dataclass(frozen=True)
class ContactContext:
    """What the contact policy needs to know about the customer's recent history."""

    profile_id: str | None = None
    ledger: ContactLedger | None = None
    purchases: Mapping[str, datetime] = field(default_factory=dict)  # item_id -> last purchase ts
    last_purchase_ts: datetime | None = None
    last_return_ts: datetime | None = None
    last_negative_sentiment_ts: datetime | None = None


@dataclass(frozen=True)
class GuardRequest:
    """One output to guard. `logged_in` matters on web/app: anonymous sessions get a lower ceiling.
    `now` (timezone-aware) is required for NBA messages on outbound channels."""

    kind: str
    channel: str
    consent: ConsentState
    signals: Sequence[Signal] = ()
    action: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    now: datetime | None = None
    logged_in: bool = False
    context: ContactContext | None = None


@dataclass(frozen=True)
class GuardDecision:
    allowed: bool
    level: Specificity
    text: str
    params: Mapping[str, Any]
    signals_used: tuple[Signal, ...]
    audit: tuple[AuditEntry, ...]
    suppressed_reason: str | None = None


@dataclass(frozen=True)
class ContactCheck:
    allowed: bool
    reason: str | None = None


def _aware(t: datetime, name: str) -> datetime:
    if not isinstance(t, datetime):
        raise ValueError(f"{name} must be a datetime, got {type(t).__name__}")
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return t


def in_quiet_hours(now: datetime, consent: ConsentState, policy: GuardPolicy) -> bool:
    """Whether `now` falls in the quiet hours of the customer's local time."""
    local = _aware(now, "now").astimezone(ZoneInfo(consent.timezone or policy.default_timezone)).time()
    start, end = policy.quiet_start, policy.quiet_end
    if start == end:
        return False
    return start <= local < end if start < end else (local >= start or local < end)


def _within(ts: datetime | None, now: datetime, window: timedelta) -> bool:
    return ts is not None and timedelta(0) <= now - _aware(ts, "context timestamp") <= window


def check_contact(channel: str, action: str, now: datetime, consent: ConsentState, policy: GuardPolicy,
                  context: ContactContext | None = None, item_ids: Iterable[str] = ()) -> ContactCheck:
    """Suppression, then quiet hours, then frequency caps (reserving a slot only if all else passed)."""
    _aware(now, "now")
    ctx = context or ContactContext()
    sup = policy.suppression
    if action in sup.after_negative_suppressed and (
        _within(ctx.last_return_ts, now, sup.after_negative)
        or _within(ctx.last_negative_sentiment_ts, now, sup.after_negative)
    ):
        return ContactCheck(False, "recent return or negative sentiment: service recovery first")
    if action == CART_REMINDER:
        bought = [i for i in item_ids if _within(ctx.purchases.get(i), now, sup.cart_reminder_after_purchase)]
        if bought:
            return ContactCheck(False, "cart item already purchased")
    if action == THANK_YOU:
        last = ctx.last_purchase_ts or max(ctx.purchases.values(), default=None)
        if not _within(last, now, sup.thank_you_window):
            return ContactCheck(False, "no recent purchase to thank for")
    if channel in policy.quiet_channels and in_quiet_hours(now, consent, policy):
        return ContactCheck(False, "quiet hours in the customer's time zone")
    caps = policy.frequency_caps.get(channel, ())
    if channel in policy.outbound_channels and ctx.ledger is not None:
        if not ctx.profile_id:
            raise ValueError("context.profile_id is required to reserve a contact slot")
        if not ctx.ledger.reserve(ctx.profile_id, channel, now, caps):
            return ContactCheck(False, "frequency cap reached")
    return ContactCheck(True)


def _signal_level(s: Signal, ceiling: Specificity, channel: str, policy: GuardPolicy) -> Specificity:
    """The most this one signal may expose: sensitivity, origin and renderable fields included."""
    if (policy.is_sensitive(s.category) or policy.is_sensitive(s.item_name)) and not (
        s.origin == ZERO_PARTY and channel in policy.sensitive_declared_allowed_on
        and channel not in policy.outbound_channels
    ):
        return Specificity.NONE
    lvl = ceiling
    if s.origin != FIRST_PARTY or s.item_id is None:
        lvl = min(lvl, Specificity.CATEGORY)  # an inference or a declaration is not "you viewed X"
    if lvl == Specificity.ITEM and _item_label(s, policy) is None:
        lvl = Specificity.CATEGORY
    if lvl >= Specificity.CATEGORY and _safe_name(s.category) is None:
        lvl = Specificity.NONE
    return lvl


_ORIGIN_RANK: Final = {ZERO_PARTY: 2, FIRST_PARTY: 1, INFERRED: 0}


def _pick(signals: Sequence[Signal], ceiling: Specificity, channel: str,
          policy: GuardPolicy) -> tuple[Signal | None, Specificity]:
    best: Signal | None = None
    best_key: tuple[int, int] = (-1, -1)
    best_lvl = Specificity.NONE
    for s in signals:
        if s.source_event_type not in REASON_EVENT_TYPES:
            continue
        lvl = _signal_level(s, ceiling, channel, policy)
        key = (int(lvl), _ORIGIN_RANK[s.origin])
        if key > best_key:
            best, best_key, best_lvl = s, key, lvl
    return best, best_lvl


def _render(level: Specificity, s: Signal | None, kind: str, action: str | None,
            policy: GuardPolicy) -> tuple[str, dict[str, Any]]:
    t = policy.templates
    if kind == NBA_MESSAGE:
        by_level = t.actions.get(action or "", t.actions["default"])
        tmpl = by_level[level]
    elif level == Specificity.NONE:
        tmpl = t.reason_none
    elif level == Specificity.CATEGORY:
        tmpl = t.reason_category.get(s.origin, t.reason_category["default"])  # type: ignore[union-attr]
    else:
        tmpl = t.reason_item.get(s.source_event_type, t.reason_item["default"])  # type: ignore[union-attr]
    if level == Specificity.NONE or s is None:
        return tmpl, {}
    params: dict[str, Any] = {CATEGORY: s.category}
    values = {"category": s.category}
    if level == Specificity.ITEM:
        values["item"] = _item_label(s, policy)
        params[ITEM_ID] = s.item_id
        params[ITEM_NAME] = s.item_name
    return tmpl.format(**values), params


def _offer_value(key: str, v: Any) -> Any | None:
    if key == "offer_code":
        return v if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,32}", v) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return None
    if key == "discount_pct" and v > 100:
        return None
    return v


def _sanitise_params(raw: Mapping[str, Any], level: Specificity, used: Sequence[Signal], channel: str,
                     policy: GuardPolicy, audit: list[AuditEntry]) -> dict[str, Any]:
    """Whitelisted keys only; items and categories only at their level and only when a kept,
    non-sensitive signal backs them (so nothing unconsented or sensitive can leak through params)."""
    ok_items = {s.item_id: s for s in used if s.item_id and _signal_level(s, level, channel, policy) >= Specificity.ITEM}
    ok_cats = {s.category for s in used if s.category and _signal_level(s, level, channel, policy) >= Specificity.CATEGORY}
    out: dict[str, Any] = {}
    for key, v in raw.items():
        if key in OFFER_PARAMS:
            val = _offer_value(key, v)
        elif key in (ITEM_ID, "item_ids"):
            ids = [v] if key == ITEM_ID else (list(v) if isinstance(v, (list, tuple)) else [])
            kept = [i for i in ids if i in ok_items]
            val = (kept[0] if kept else None) if key == ITEM_ID else (kept or None)
        elif key in (CATEGORY, "categories"):
            cats = [v] if key == CATEGORY else (list(v) if isinstance(v, (list, tuple)) else [])
            kept = [c for c in cats if c in ok_cats]
            val = (kept[0] if kept else None) if key == CATEGORY else (kept or None)
        else:
            val = None
        if val is None:
            audit.append(AuditEntry(f"param {key}", "not allowed at this level, unbacked, or not whitelisted"))
        else:
            out[key] = val
    return out


def _flat(v: Any) -> str:
    """All strings inside a param value, joined, for the scrubber."""
    if isinstance(v, Mapping):
        return " | ".join(_flat(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return " | ".join(_flat(x) for x in v)
    return str(v) if v is not None else ""


def guard(request: GuardRequest, policy: GuardPolicy) -> GuardDecision:
    """Decide what one output may say (and, for outbound messages, whether it may be sent at all)."""
    r = request
    if r.kind not in KINDS:
        raise ValueError(f"unknown output kind {r.kind!r} (expected one of {', '.join(KINDS)})")
    if r.channel not in policy.channel_ceilings:
        raise ValueError(f"unknown channel {r.channel!r} (expected one of {', '.join(CHANNELS)})")
    if r.kind == NBA_MESSAGE and not r.action:
        raise ValueError("an NBA message needs an action")
    if r.kind == PROFILE_VIEW:
        return _profile_decision(r, policy)
    kept, audit = filter_signals(r.signals, r.consent)
    ceiling = min(r.consent.level, policy.ceiling(r.channel, r.logged_in))
    if not r.consent.personalization:
        ceiling = Specificity.NONE
    chosen, level = _pick(kept, ceiling, r.channel, policy)
    if level < ceiling:
        audit.append(AuditEntry("specificity", f"lowered to {level.name.lower()} (ceiling {ceiling.name.lower()}: "
                                               "sensitive, inferred or unrenderable signal)"))
    text, used_params = _render(level, chosen, r.kind, r.action, policy)
    if level > Specificity.NONE:
        # the text and the params it came with are scanned together (one pass: this path is hot)
        problems = scrub_problems(" | ".join((text, *map(str, used_params.values()))), r.signals, policy)
        if problems:
            audit.append(AuditEntry("rendered text", "replaced by the none text: " + "; ".join(problems)))
            level, chosen = Specificity.NONE, None
            text, used_params = _render(level, None, r.kind, r.action, policy)
    if r.kind == NBA_MESSAGE:
        params = _sanitise_params(r.params, ceiling, kept, r.channel, policy, audit)
        for key in [k for k in params if k not in OFFER_PARAMS and scrub_problems(_flat(params[k]), r.signals,
                                                                                   policy)]:
            audit.append(AuditEntry(f"param {key}", "removed by the scrubber"))
            del params[key]
    else:
        params = used_params
    signals_used = tuple(kept)
    if r.kind == NBA_MESSAGE and r.action != DO_NOTHING and (
        r.channel in policy.outbound_channels or r.channel in policy.quiet_channels or r.context is not None
    ):
        if r.now is None:
            raise ValueError("`now` is required for NBA messages")
        items = [p for p in (r.params.get(ITEM_ID), *(r.params.get("item_ids") or ())) if p]
        items += [s.item_id for s in kept if s.item_id and s.source_event_type == ADD_TO_CART]
        check = check_contact(r.channel, r.action or "", r.now, r.consent, policy, r.context, items)
        if not check.allowed:
            audit.append(AuditEntry("message", f"suppressed: {check.reason}"))
            return GuardDecision(False, Specificity.NONE, "", {}, signals_used, tuple(audit), check.reason)
    return GuardDecision(True, level, text, MappingProxyType(params), signals_used, tuple(audit))


# ---------------------------------------------------------------------------------------------
# Profile view (GET /profiles/{id})
# ---------------------------------------------------------------------------------------------
def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _profile_signals(profile: Any) -> list[Signal]:
    """Signals from an online profile (mapping or object with the OnlineProfile fields)."""
    out: list[Signal] = []
    for key, etype in (("recent_views", VIEW), ("cart_items", ADD_TO_CART), ("purchases", PURCHASE)):
        for entry in _get(profile, key) or ():
            if isinstance(entry, str):
                entry = {ITEM_ID: entry}
            elif not isinstance(entry, Mapping):
                entry = dict(zip((ITEM_ID, CATEGORY, TS), tuple(entry), strict=False))
            ch = _opt_str(entry.get(CHANNEL)) or "web"
            out.append(Signal(etype, ch, item_id=_opt_str(entry.get(ITEM_ID)),
                              item_name=_opt_str(entry.get(ITEM_NAME)), category=_opt_str(entry.get(CATEGORY))))
    counts = _get(profile, "category_counts") or {}
    for cat, _n in sorted(counts.items(), key=lambda kv: (-float(kv[1]), str(kv[0]))):
        out.append(Signal(VIEW, "web", category=str(cat), origin=INFERRED, source=BEHAVIORAL))
    return out


def _profile_decision(r: GuardRequest, policy: GuardPolicy) -> GuardDecision:
    kept, audit = filter_signals(r.signals, r.consent)
    ceiling = min(r.consent.level, policy.ceiling(r.channel, r.logged_in))
    if not r.consent.personalization:
        ceiling = Specificity.NONE
    cats: list[str] = []
    items: list[str] = []
    for s in kept:
        lvl = _signal_level(s, ceiling, r.channel, policy)
        if lvl >= Specificity.CATEGORY and s.category not in cats:
            cats.append(s.category)  # type: ignore[arg-type]
        sensitive = policy.is_sensitive(s.category) or policy.is_sensitive(s.item_name)
        if (ceiling >= Specificity.ITEM and s.origin == FIRST_PARTY and s.item_id and not sensitive
                and s.item_id not in items):
            items.append(s.item_id)  # ids, not names: a name is not needed to show the person their own list
        if lvl < ceiling:
            audit.append(AuditEntry(f"{s.source_event_type} signal", "hidden: sensitive or not renderable"))
    level = Specificity.CATEGORY if cats and ceiling >= Specificity.CATEGORY else Specificity.NONE
    tmpl = policy.templates.profile[level]
    text = tmpl.format(category=", ".join(cats)) if level else tmpl
    if level and scrub_problems(text, r.signals, policy):
        audit.append(AuditEntry("rendered text", "replaced by the none text"))
        cats, items, level = [], [], Specificity.NONE
        text = policy.templates.profile[Specificity.NONE]
    params: dict[str, Any] = {"interests": cats}
    items = [i for i in items if not scrub_problems(i, r.signals, policy)]
    if ceiling >= Specificity.ITEM and items:
        params["recent_items"] = items
        level = Specificity.ITEM
    return GuardDecision(True, level, text, MappingProxyType(params), tuple(kept), tuple(audit))


def profile_view(profile: Any, consent: ConsentState, policy: GuardPolicy, *, channel: str = "web",
                 logged_in: bool = True) -> dict[str, Any]:
    """What `GET /profiles/{id}` shows the person: interests as categories (never timings, counts or
    sensitive categories), item ids only with item-level consent, identifier types (never values)."""
    pid = _opt_str(_get(profile, PROFILE_ID))
    d = guard(GuardRequest(PROFILE_VIEW, channel, consent, _profile_signals(profile), logged_in=logged_in),
              policy)
    identifiers = _get(profile, "identifiers") or ()
    id_types = sorted({str(i).split(":", 1)[0] for i in identifiers})
    channels = _get(profile, "channel_last_seen") or {}
    out: dict[str, Any] = {
        PROFILE_ID: pid,
        "personalization": consent.personalization,
        "level": d.level.name.lower(),
        "consent": {p: p in consent.granted for p in PURPOSES},
        "interests": list(d.params.get("interests", [])),
        "identifier_types": id_types,
        "channels": sorted(str(c) for c in channels),
        "summary": d.text,
    }
    if "recent_items" in d.params:
        out["recent_items"] = list(d.params["recent_items"])
    return out
