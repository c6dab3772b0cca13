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
from datetime import UTC, datetime, time, timedelta
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from features.consent import (
    BEHAVIORAL,
    DEFAULT_PURPOSES,
    DETAILED_PERSONALIZATION,
    LOCATION,
    MARKETING_PURPOSES,
    PERSONALIZATION,
    PURPOSES,
    SOURCE_PURPOSES,
    granted_purposes,
    source_of,
)
from features.consent import (
    EMAIL_ENGAGEMENT as EMAIL_ENGAGEMENT,  # re-exported
)
from features.consent import (
    EMAIL_MARKETING as EMAIL_MARKETING,  # re-exported
)
from features.consent import (
    FEEDBACK as FEEDBACK,  # re-exported
)
from features.consent import (
    PURCHASE_HISTORY as PURCHASE_HISTORY,  # re-exported
)
from features.consent import (
    SMS_MARKETING as SMS_MARKETING,  # re-exported
)
from features.consent import (
    SOCIAL as SOCIAL,  # re-exported
)
from features.consent import (
    SOCIAL_MARKETING as SOCIAL_MARKETING,  # re-exported
)
from features.consent import (
    STORE_VISITS as STORE_VISITS,  # re-exported
)
from features.schema import (
    ADD_TO_CART,
    BRAND,
    CATEGORY,
    CHANNEL,
    CHANNELS,
    COLOR,
    DECLARED_TIMEZONE,
    DURATION_S,
    EMAIL_CLICK,
    EVENT_TYPE,
    EVENT_TYPES,
    INTEREST,
    ITEM_ID,
    PERSONALIZATION_LEVEL,
    PREFERRED_CHANNEL,
    PROFILE_ID,
    PURCHASE,
    QUANTITY,
    SEARCH,
    SIZE,
    SOCIAL_LIKE,
    STORE_ID,
    TRY_ON,
    TS,
    VIEW,
)
from features.store import OnlineProfile
from serving import scrubber
from serving.scrubber import SensitiveMatcher, Sensitivity, display_category

DEFAULT_POLICY_PATH: Final = Path(__file__).resolve().parent / "guard.yaml"

# ---------------------------------------------------------------------------------------------
# Names. Consent purposes live in `features.consent` (the store filters inputs by them too); they are
# re-exported here because every caller of the guard needs them.
# ---------------------------------------------------------------------------------------------
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

# What a recommendation reason rests on (`GuardRequest.basis`). Only PERSONAL ones may say "you", and
# only from the person's own consented signals; the others describe the page or the shop, not the person.
PERSONAL: Final = "personal"  # the person's own consented data (their signals back the item)
SIMILAR: Final = "similar"  # a look-alike of the item on the page (`subject`)
COMPLEMENT: Final = "complement"  # goes with the item on the page (`subject`)
POPULAR: Final = "popular"  # popular overall
POPULAR_CATEGORY: Final = "popular_category"  # popular in the category on the page (`subject`)
REASON_BASES: Final[tuple[str, ...]] = (PERSONAL, SIMILAR, COMPLEMENT, POPULAR, POPULAR_CATEGORY)

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
TRIED_ON_OFFER: Final = "tried_on_offer"
POST_PURCHASE_CARE: Final = "post_purchase_care"
DO_NOTHING: Final = "do_nothing"

# Tone of an NBA message (chosen by serving.nba from recent sentiment across channels): `neutral` is the
# action's own wording (`templates.actions`); the others have their own variants (`templates.tones`).
APOLOGETIC: Final = "apologetic"
NEUTRAL: Final = "neutral"
WARM: Final = "warm"
TONES: Final[tuple[str, ...]] = (APOLOGETIC, NEUTRAL, WARM)

# Mapping keys a raw event may carry beyond the canonical columns (used by `signal_from_event`).
ITEM_NAME: Final = "item_name"
COUNT: Final = "count"
LOCATION_KEY: Final = "location"
ORIGIN: Final = "origin"
SOURCE: Final = "source"

# Message params that may leave the guard. Personal ones need a level and must match a kept signal.
#: `items`: the products a message may show, each a mapping of `ITEM_FIELDS` (names come from the catalog).
ITEMS: Final = "items"
ITEM_FIELDS: Final[frozenset[str]] = frozenset({ITEM_ID, "name", "price", "currency", "url", "image_url"})
ITEM_PARAMS: Final[frozenset[str]] = frozenset({ITEM_ID, "item_ids", ITEM_NAME, ITEMS})
CATEGORY_PARAMS: Final[frozenset[str]] = frozenset({CATEGORY, "categories"})
OFFER_PARAMS: Final[frozenset[str]] = frozenset({"discount_pct", "points", "offer_code"})
#: Products Mirror suggests (complementary products, cross-sell picks): `suggested_item_ids` as the action
#: chose them and `suggestions` as catalog records (`ITEM_FIELDS`, plus the input-only `SUGGESTION_INPUT_FIELDS`
#: the guard judges them by). A suggestion makes no claim about the customer, so it is not backed by a signal
#: as `item_ids`/`items` are (those are the customer's own: what they did, named at that signal's level); see
#: `_suggestion_records` for when one may be named.
SUGGESTED_ITEM_IDS: Final = "suggested_item_ids"
SUGGESTIONS: Final = "suggestions"
SUGGESTION_INPUT_FIELDS: Final[frozenset[str]] = frozenset({CATEGORY, "brand", "sensitive"})
#: What kind of content a message carries (post-purchase care: how-to and care, then complementary products).
CONTENT: Final = "content"
CONTENT_KINDS: Final[frozenset[str]] = frozenset({"care", "complements"})


class Specificity(IntEnum):
    """How much an output may reveal about what the person did, generic to specific (their names are the
    declared `schema.PERSONALIZATION_LEVELS`)."""

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
    """The consent purpose a signal depends on, from what produced it (`features.consent.source_of`)."""
    if origin == ZERO_PARTY or event_type == DECLARED_PREFERENCE:
        return PERSONALIZATION  # the customer told us, for this very purpose
    return source_of(event_type, channel)


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
    #: The catalog flags the item sensitive: never named, whatever its words (`GuardPolicy.sensitivity`).
    sensitive: bool = False

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

    @property
    def sources(self) -> frozenset[str]:
        """Source purposes whose signals may be used (none without `personalization`)."""
        return self.granted & frozenset(SOURCE_PURPOSES) if self.personalization else frozenset()

    def allows_marketing(self, channel: str) -> bool:
        """Whether marketing messages may be sent on `channel` (channels without a marketing purpose,
        such as the customer's own logged-in site or app, need none)."""
        purpose = MARKETING_PURPOSES.get(channel)
        return purpose is None or purpose in self.granted


def consent_from_flags(flags: Mapping[str, bool], timezone: str | None = None) -> ConsentState:
    """Build consent from the store's purpose -> granted table, over `DEFAULT_PURPOSES`.

    Unknown purposes are kept (the store may record more than the guard uses). Without
    `personalization` the level is `none` and no source is usable, but marketing grants stand: a
    customer may take a newsletter without being profiled.
    """
    granted = granted_purposes(flags)
    if PERSONALIZATION not in granted:
        return ConsentState(Specificity.NONE, granted, timezone, False)
    level = Specificity.ITEM if DETAILED_PERSONALIZATION in granted else Specificity.CATEGORY
    return ConsentState(level, granted, timezone, LOCATION in granted)


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
    reason_none: str  # popular overall
    #: Non-personal and fallback wordings by basis: `personal_none` (personal, nothing nameable),
    #: `context_none` (nothing about anyone), `similar`/`complement` ({item}: the page's item),
    #: `popular_category` ({category}: the page's category).
    reason_basis: Mapping[str, str]
    reason_category: Mapping[str, str]  # origin or "default" -> template
    reason_item: Mapping[str, str]  # event type or "default" -> template
    actions: Mapping[str, Mapping[Specificity, str]]  # action or "default" -> level -> template
    profile: Mapping[Specificity, str]
    #: tone (not `neutral`) -> template name (an action, or an action's variant) -> level -> template; a
    #: name without a variant in a tone uses its neutral wording
    tones: Mapping[str, Mapping[str, Mapping[Specificity, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class GuardPolicy:
    """The validated contents of guard.yaml (build it with `load_policy` or `policy_from_dict`)."""

    default_timezone: str
    channel_ceilings: Mapping[str, Specificity]
    anonymous_ceiling: Specificity
    outbound_channels: frozenset[str]
    brand_at_item_level: bool
    #: Sensitive and life-event terms and safe phrases of `sensitive:` (serving/scrubber.py); built once
    #: by `policy_from_dict`, so `dataclasses.replace` of another field does not rebuild it.
    sensitive_matcher: SensitiveMatcher
    sensitive_declared_allowed_on: frozenset[str]
    frequency_caps: Mapping[str, tuple[ContactCap, ...]]
    quiet_start: time
    quiet_end: time
    quiet_channels: frozenset[str]
    suppression: SuppressionPolicy
    templates: Templates
    #: Items the customer knowingly created (cart, orders) may be named in these actions on these
    #: channels when the channel's marketing consent is granted; observed browsing never.
    own_item_actions: frozenset[str]
    own_item_channels: frozenset[str]
    #: Service messages (an apology, an order's thank-you) need no marketing consent.
    service_actions: frozenset[str]

    def __post_init__(self) -> None:
        if not isinstance(self.sensitive_matcher, SensitiveMatcher):
            raise TypeError("sensitive_matcher must be a SensitiveMatcher, got "
                            f"{type(self.sensitive_matcher).__name__}")

    def sensitivity(self, text: str | None) -> Sensitivity:
        """The tier of a category or item name (memoised in the matcher; see serving/scrubber.py)."""
        return self.sensitive_matcher.tier(text)

    def is_sensitive(self, text: str | None) -> bool:
        """Whether a category or item name is of the `sensitive` tier (life events are not)."""
        return self.sensitive_matcher.tier(text) == Sensitivity.SENSITIVE

    def ceiling(self, channel: str, logged_in: bool) -> Specificity:
        c = self.channel_ceilings[channel]
        if channel in ("web", "app") and not logged_in:
            c = min(c, self.anonymous_ceiling)
        return c


class PolicyError(ValueError):
    """guard.yaml is invalid; the message names the key."""


_TOP_KEYS: Final = {"version", "default_timezone", "channel_ceilings", "anonymous_ceiling", "outbound_channels",
                    "brand_at_item_level", "sensitive", "frequency_caps", "quiet_hours", "suppression",
                    "own_items", "service_messages", "templates"}
_REASON_BASIS_KEYS: Final = {"personal_none": set(), "context_none": set(), "similar": {"item"},
                             "complement": {"item"}, "popular_category": {"category"}}
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


def _tone_templates(v: Any, actions: Mapping[str, Any]) -> Mapping[str, Mapping[str, Mapping[Specificity, str]]]:
    """templates.tones: every tone but neutral, each a mapping of template names of `templates.actions` to
    level templates (a variant of a name that has no neutral wording would be unreachable: an error)."""
    d = _exact_keys(v, set(TONES) - {NEUTRAL}, "templates.tones")
    out = {}
    for tone, names in d.items():
        where = f"templates.tones.{tone}"
        if not isinstance(names, Mapping):
            raise PolicyError(f"{where} must be a mapping of template name -> level templates")
        unknown = set(names) - set(actions)
        if unknown:
            raise PolicyError(f"{where}: no neutral wording in templates.actions for {', '.join(sorted(unknown))}")
        out[tone] = MappingProxyType({a: _level_templates(x, f"{where}.{a}") for a, x in names.items()})
    return MappingProxyType(out)


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
    sens = _exact_keys(d["sensitive"], {"categories", "life_event", "safe_phrases", "declared_allowed_on"},
                       "sensitive")
    try:
        terms = SensitiveMatcher(sens["categories"], sens["life_event"], sens["safe_phrases"], where="sensitive")
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
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

    t = _exact_keys(d["templates"], {"reason", "actions", "profile", "tones"}, "templates")
    r = _exact_keys(t["reason"], {"none", "category", "item", *_REASON_BASIS_KEYS}, "templates.reason")
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
        reason_basis=MappingProxyType({k: _template(r[k], allowed, f"templates.reason.{k}")
                                       for k, allowed in _REASON_BASIS_KEYS.items()}),
        reason_category=MappingProxyType({k: _template(v, {"category"}, f"templates.reason.category.{k}")
                                          for k, v in cat.items()}),
        reason_item=MappingProxyType({k: _template(v, {"category", "item"}, f"templates.reason.item.{k}")
                                      for k, v in item.items()}),
        actions=MappingProxyType({a: _level_templates(v, f"templates.actions.{a}") for a, v in actions.items()}),
        profile=_level_templates(t["profile"], "templates.profile"),
        tones=_tone_templates(t["tones"], actions),
    )
    own = _exact_keys(d["own_items"], {"actions", "channels"}, "own_items")
    if not isinstance(own["actions"], list) or not all(isinstance(a, str) for a in own["actions"]):
        raise PolicyError("own_items.actions must be a list of action names")
    service = d["service_messages"]
    if not isinstance(service, list) or not all(isinstance(a, str) for a in service):
        raise PolicyError("service_messages must be a list of action names")
    return GuardPolicy(
        service_actions=frozenset(service),
        own_item_actions=frozenset(own["actions"]),
        own_item_channels=_channels(own["channels"], "own_items.channels"),
        default_timezone=str(tz),
        channel_ceilings=MappingProxyType(ceilings),
        anonymous_ceiling=_level(d["anonymous_ceiling"], "anonymous_ceiling"),
        outbound_channels=_channels(d["outbound_channels"], "outbound_channels"),
        brand_at_item_level=d["brand_at_item_level"],
        sensitive_matcher=terms,
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
# The text rules live in serving/scrubber.py (pure, tested and benchmarked on their own); these two
# keep the names and signatures the rest of this module calls.
def _safe_name(v: str | None) -> str | None:
    """`v` when it looks like a name (`scrubber.safe_name`), else None."""
    return scrubber.safe_name(v)


def scrub_problems(text: str, signals: Sequence[Signal] = (), policy: GuardPolicy | None = None) -> list[str]:
    """Why `text` may not be shown (empty when it is clean): `scrubber.scrub_problems` with the
    request's own store ids, locations, sizes and colours, plus sensitive terms of the policy. A brand
    that carries a sensitive or life-event term counts as an own value too: the level rule reads the
    category and item name, and the brand only reaches the text."""
    own = [v for s in signals for v in (s.store_id, s.location,
                                        *((s.attributes.get(SIZE), s.attributes.get(COLOR)) if s.attributes else ()))
           if v]
    if policy is not None:
        own += [b for s in signals if (b := s.brand) and policy.sensitivity(b) != Sensitivity.NONE]
    problems = scrubber.scrub_problems(text, own)
    if policy is not None and policy.is_sensitive(text):
        problems.append("sensitive term")
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
    """Records contacts; `reserve` is an atomic check-and-record against every cap. With a `key` (one
    decision: campaign, decision window, action), a key already recorded for this customer and channel
    answers True again without using a second slot."""

    def reserve(self, profile_id: str, channel: str, now: datetime, caps: Sequence[ContactCap], *,
                key: str | None = None) -> bool: ...


class InMemoryContactLedger:
    """Thread-safe in-process ledger (tests, single-process demos); the store persists the same rule."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: dict[tuple[str, str], deque[float]] = {}
        self._keys: set[tuple[str, str, str]] = set()

    def reserve(self, profile_id: str, channel: str, now: datetime, caps: Sequence[ContactCap], *,
                key: str | None = None) -> bool:
        t = _aware(now, "now").timestamp()
        with self._lock:
            if key is not None and (profile_id, channel, key) in self._keys:
                return True
            sent = self._sent.setdefault((profile_id, channel), deque())
            longest = max((w for w, _ in caps), default=0.0)
            while sent and sent[0] <= t - longest:
                sent.popleft()
            for window_s, max_contacts in caps:
                if sum(1 for x in sent if t - window_s < x < t + window_s) >= max_contacts:  # as the store
                    return False
            sent.append(t)
            if key is not None:
                self._keys.add((profile_id, channel, key))
            return True

    def count(self, profile_id: str, channel: str) -> int:
        with self._lock:
            return len(self._sent.get((profile_id, channel), ()))


@dataclass(frozen=True)
class ContactContext:
    """What the contact policy needs to know about the customer's recent history."""

    profile_id: str | None = None
    ledger: ContactLedger | None = None
    #: The decision this message belongs to (see `ContactLedger.reserve`): a repeated request for the
    #: same decision uses no second slot.
    key: str | None = None
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
    #: Recommendation reasons: what the item's place in the list rests on (`REASON_BASES`), and for
    #: non-personal bases the page's item or category (`subject`: not the person's data).
    basis: str = PERSONAL
    subject: Signal | None = None
    #: NBA messages: the tone of the wording (`TONES`) and the template set, when it is not the action's
    #: own (a phase of the action, e.g. "post_purchase_complements"); policy rules follow `action` either way.
    tone: str = NEUTRAL
    template: str | None = None


@dataclass(frozen=True)
class GuardDecision:
    allowed: bool
    level: Specificity
    text: str
    params: Mapping[str, Any]
    signals_used: tuple[Signal, ...]
    audit: tuple[AuditEntry, ...]
    suppressed_reason: str | None = None
    send_at: datetime | None = None  # a message deferred past quiet hours goes out then (UTC)


@dataclass(frozen=True)
class ContactCheck:
    """May the message go out; when it falls in quiet hours, `send_at` is the next allowed time
    (aware, UTC) and the slot is reserved for then."""

    allowed: bool
    reason: str | None = None
    send_at: datetime | None = None


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


def quiet_hours_end(now: datetime, consent: ConsentState, policy: GuardPolicy) -> datetime:
    """The first instant after `now` that is outside quiet hours, in the customer's time zone
    (returned in UTC). Why a loop over local days: a DST change can move the wall clock past `end`."""
    tz = ZoneInfo(consent.timezone or policy.default_timezone)
    local = _aware(now, "now").astimezone(tz)
    for days in range(3):
        day = (local + timedelta(days=days)).date()
        candidate = datetime.combine(day, policy.quiet_end, tzinfo=tz)
        if candidate > local and not in_quiet_hours(candidate, consent, policy):
            return candidate.astimezone(UTC)
    raise ValueError("quiet hours never end")  # start == end never reaches here (no quiet hours)


def _within(ts: datetime | None, now: datetime, window: timedelta) -> bool:
    return ts is not None and timedelta(0) <= now - _aware(ts, "context timestamp") <= window


def check_contact(channel: str, action: str, now: datetime, consent: ConsentState, policy: GuardPolicy,
                  context: ContactContext | None = None, item_ids: Iterable[str] = ()) -> ContactCheck:
    """Suppression, then marketing consent, then quiet hours (which defer: `send_at`), then frequency
    caps counted at the send time (reserving a slot only if all else passed)."""
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
    if (channel in policy.outbound_channels and action not in policy.service_actions
            and not consent.allows_marketing(channel)):
        return ContactCheck(False, f"no {MARKETING_PURPOSES[channel]} consent")
    send_at = None
    if channel in policy.quiet_channels and in_quiet_hours(now, consent, policy):
        send_at = quiet_hours_end(now, consent, policy)
    caps = policy.frequency_caps.get(channel, ())
    if channel in policy.outbound_channels and ctx.ledger is not None:
        if not ctx.profile_id:
            raise ValueError("context.profile_id is required to reserve a contact slot")
        if not ctx.ledger.reserve(ctx.profile_id, channel, send_at or now, caps, key=ctx.key):
            return ContactCheck(False, "frequency cap reached")
    return ContactCheck(True, None, send_at)


#: Event types of what the customer knowingly created (their cart, their orders): nameable in their own
#: reminders (`GuardPolicy.own_item_actions`); everything else was only observed.
OWN_ITEM_EVENT_TYPES: Final[frozenset[str]] = frozenset({ADD_TO_CART, PURCHASE})
#: Where a life-event category (the milder sensitive tier) may be recommended: the customer's own
#: logged-in site and app. Never outbound (a lock screen, a shared inbox), never a shared screen; and,
#: erring on the careful side, never named in any text (a family may share one logged-in laptop).
_OWN_SCREENS: Final[frozenset[str]] = frozenset({"web", "app"})


def signal_tier(s: Signal, policy: GuardPolicy) -> Sensitivity:
    """How sensitive a signal's item is: the catalog's flag and the configured terms decide together."""
    tier = Sensitivity.SENSITIVE if s.sensitive else Sensitivity.NONE
    return max(tier, policy.sensitivity(s.category), policy.sensitivity(s.item_name), policy.sensitivity(s.brand))


def may_show(tier: Sensitivity, channel: str, logged_in: bool, policy: GuardPolicy, *,
             interested: bool) -> bool:
    """Whether an item of this sensitivity may appear at all in an output on this channel (never named:
    naming is `_signal_level`'s). Sensitive items only on the customer's own logged-in site or app and
    only for a customer who showed or declared interest; life-event items on their own site or app."""
    if tier == Sensitivity.NONE:
        return True
    own_screen = channel in _OWN_SCREENS and logged_in and channel not in policy.outbound_channels
    if tier == Sensitivity.LIFE_EVENT:
        return own_screen
    return own_screen and interested


def _signal_level(s: Signal, ceiling: Specificity, channel: str, policy: GuardPolicy, *,
                  logged_in: bool = False, own_items: bool = False) -> Specificity:
    """The most this one signal may expose: sensitivity, origin and renderable fields included.
    `own_items`: this output may name what the customer knowingly created (see `OWN_ITEM_EVENT_TYPES`)."""
    tier = signal_tier(s, policy)
    if tier == Sensitivity.SENSITIVE and not (
        s.origin == ZERO_PARTY and channel in policy.sensitive_declared_allowed_on
        and channel not in policy.outbound_channels
    ):
        return Specificity.NONE
    if tier == Sensitivity.LIFE_EVENT:
        return Specificity.NONE  # recommendable on their own screens (`may_show`), never named anywhere
    lvl = ceiling
    if (own_items and ceiling > Specificity.NONE and s.origin == FIRST_PARTY and s.item_id is not None
            and s.source_event_type in OWN_ITEM_EVENT_TYPES):
        lvl = Specificity.ITEM
    if s.origin != FIRST_PARTY or s.item_id is None:
        lvl = min(lvl, Specificity.CATEGORY)  # an inference or a declaration is not "you viewed X"
    if lvl == Specificity.ITEM and _item_label(s, policy) is None:
        lvl = Specificity.CATEGORY
    if lvl >= Specificity.CATEGORY and _safe_name(s.category) is None:
        lvl = Specificity.NONE
    return lvl


_ORIGIN_RANK: Final = {ZERO_PARTY: 2, FIRST_PARTY: 1, INFERRED: 0}


def _pick(signals: Sequence[Signal], ceiling: Specificity, channel: str, policy: GuardPolicy, *,
          logged_in: bool = False, own_items: bool = False) -> tuple[Signal | None, Specificity]:
    best: Signal | None = None
    best_key: tuple[int, int] = (-1, -1)
    best_lvl = Specificity.NONE
    for s in signals:
        if s.source_event_type not in REASON_EVENT_TYPES:
            continue
        lvl = _signal_level(s, ceiling, channel, policy, logged_in=logged_in, own_items=own_items)
        key = (int(lvl), _ORIGIN_RANK[s.origin])
        if key > best_key:
            best, best_key, best_lvl = s, key, lvl
    return best, best_lvl


def _render(level: Specificity, s: Signal | None, kind: str, action: str | None,
            policy: GuardPolicy, tone: str = NEUTRAL) -> tuple[str, dict[str, Any]]:
    t = policy.templates
    if kind == NBA_MESSAGE:
        name = action or ""
        by_level = t.tones.get(tone, {}).get(name) or t.actions.get(name, t.actions["default"])
        tmpl = by_level[level]
    elif level == Specificity.NONE:
        tmpl = t.reason_basis["personal_none"]
    elif level == Specificity.CATEGORY:
        tmpl = t.reason_category.get(s.origin, t.reason_category["default"])  # type: ignore[union-attr]
    else:
        tmpl = t.reason_item.get(s.source_event_type, t.reason_item["default"])  # type: ignore[union-attr]
    if level == Specificity.NONE or s is None:
        return tmpl, {}
    params: dict[str, Any] = {CATEGORY: s.category}
    values = {"category": display_category(s.category or "")}
    if level == Specificity.ITEM:
        values["item"] = _item_label(s, policy)
        params[ITEM_ID] = s.item_id
        params[ITEM_NAME] = s.item_name
    return tmpl.format(**values), params


def _render_context(r: GuardRequest, policy: GuardPolicy, audit: list[AuditEntry]) -> str:
    """A reason that rests on the page or the shop, never on the person: the page's item or category is
    named only when it is neither sensitive nor a life-event category, and the text passes the scrubber."""
    t = policy.templates
    s = r.subject
    fallback = t.reason_none if r.basis in (POPULAR, POPULAR_CATEGORY) else t.reason_basis["context_none"]
    if r.basis == POPULAR or s is None:
        return fallback
    if signal_tier(s, policy) != Sensitivity.NONE:
        audit.append(AuditEntry("subject", "not named: sensitive or life-event"))
        return fallback
    if r.basis == POPULAR_CATEGORY:
        name = _safe_name(s.category)
        text = t.reason_basis[POPULAR_CATEGORY].format(category=display_category(name)) if name else None
    else:
        label = _item_label(s, policy)
        text = t.reason_basis[r.basis].format(item=label) if label else None
    if text is None or scrub_problems(text, (s,), policy):
        audit.append(AuditEntry("subject", "not named: not a clean name"))
        return fallback
    return text


def _offer_value(key: str, v: Any) -> Any | None:
    if key == "offer_code":
        return v if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,32}", v) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return None
    if key == "discount_pct" and v > 100:
        return None
    return v


def _item_records(v: Any, ok_items: Mapping[str, Signal], policy: GuardPolicy) -> list[dict[str, Any]] | None:
    """The `items` param: records of nameable, backed items with whitelisted fields only."""
    if not isinstance(v, (list, tuple)):
        return None
    out = []
    for rec in v:
        if not isinstance(rec, Mapping) or rec.get(ITEM_ID) not in ok_items:
            continue
        kept = {k: x for k, x in rec.items() if k in ITEM_FIELDS and x is not None}
        name = kept.get("name")
        if name is not None and (_safe_name(str(name)) is None or scrub_problems(str(name), (), policy)
                                 or policy.sensitivity(str(name)) != Sensitivity.NONE):
            continue  # a tiered name is never said, whatever signal backs the id
        for k in ("url", "image_url"):
            if k in kept and not (isinstance(kept[k], str) and re.match(r"https?://", kept[k])):
                del kept[k]
        out.append(kept)
    return out or None


def _suggestion_records(v: Any, level: Specificity, used: Sequence[Signal], claimed: set[str],
                        policy: GuardPolicy) -> list[dict[str, Any]] | None:
    """The `suggestions` param: products named from the catalog as suggestions, never as something the
    customer did. Unlike `items` no signal backs them (the customer never interacted with them: that is what
    makes them suggestions), so the rule is about the product and the message instead:

    - only when the output may be personal at all (`level` >= category: a suggestion is chosen from the
      customer's data, and a customer who declared `none` gets generic messages);
    - never when anything the message rests on (`used`) is sensitive or life-event: what goes with such an
      item points at it;
    - never an item of the customer's own signals (`claimed`, kept or not): naming it would be a claim about
      them in disguise ("the jacket you looked at"), which only `items` may make, at that signal's level;
    - the product itself is never sensitive or life-event (the record's catalog `sensitive` flag must be
      given and false; its name, category and brand are read by the configured terms), and its name is clean.
    Output records carry `ITEM_FIELDS` only."""
    if level < Specificity.CATEGORY or not isinstance(v, (list, tuple)):
        return None
    if any(signal_tier(s, policy) != Sensitivity.NONE for s in used):
        return None
    out = []
    for rec in v:
        if not isinstance(rec, Mapping) or not isinstance(rec.get(ITEM_ID), str) or rec[ITEM_ID] in claimed:
            continue
        name = rec.get("name")
        if rec.get("sensitive") is not False or not isinstance(name, str) or _safe_name(name) is None:
            continue
        if max(policy.sensitivity(name), policy.sensitivity(_opt_str(rec.get(CATEGORY))),
               policy.sensitivity(_opt_str(rec.get("brand")))) != Sensitivity.NONE or scrub_problems(name, (), policy):
            continue
        kept = {k: x for k, x in rec.items() if k in ITEM_FIELDS and x is not None}
        for k in ("url", "image_url"):
            if k in kept and not (isinstance(kept[k], str) and re.match(r"https?://", kept[k])):
                del kept[k]
        out.append(kept)
    return out or None


def _sanitise_params(raw: Mapping[str, Any], level: Specificity, used: Sequence[Signal], channel: str,
                     policy: GuardPolicy, audit: list[AuditEntry], *, logged_in: bool = False,
                     own_items: bool = False, claimed: set[str] | None = None) -> dict[str, Any]:
    """Whitelisted keys only; items and categories only at their level and only when a kept,
    non-sensitive signal backs them (so nothing unconsented or sensitive can leak through params);
    suggestions by `_suggestion_records` (`suggested_item_ids` keeps the ids of the records kept)."""
    def lvl(s: Signal) -> Specificity:
        return _signal_level(s, level, channel, policy, logged_in=logged_in, own_items=own_items)

    ok_items = {s.item_id: s for s in used if s.item_id and lvl(s) >= Specificity.ITEM}
    ok_cats = {s.category for s in used if s.category and lvl(s) >= Specificity.CATEGORY}
    suggested = _suggestion_records(raw.get(SUGGESTIONS), level, used, claimed or set(), policy)
    named = {rec[ITEM_ID] for rec in suggested or ()}
    out: dict[str, Any] = {}
    for key, v in raw.items():
        if key == SUGGESTIONS:
            val = suggested
        elif key == SUGGESTED_ITEM_IDS:
            val = ([i for i in v if i in named] or None) if isinstance(v, (list, tuple)) else None
        elif key in OFFER_PARAMS:
            val = _offer_value(key, v)
        elif key == CONTENT:
            val = v if v in CONTENT_KINDS else None
        elif key == ITEMS:
            val = _item_records(v, ok_items, policy)
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


def _param_text(key: str, v: Any) -> str:
    """What the scrubber reads of a param: for `items`, only the names (ids, prices and urls are data
    the message tool needs, not text shown as a sentence)."""
    if key in (ITEMS, SUGGESTIONS):
        return " | ".join(str(rec.get("name", "")) for rec in v)
    return _flat(v)


def message_subject(params: Mapping[str, Any]) -> frozenset[str]:
    """The items an NBA message is about (`item_id`, `item_ids`: the cart of a cart reminder, the items due
    of a replenishment, the item tried on, the order cared for); empty for an action about the customer at
    large (cross-sell, winback, ...)."""
    many = params.get("item_ids")
    ids = [params.get(ITEM_ID), *(many if isinstance(many, (list, tuple)) else ())]
    return frozenset(i for i in ids if isinstance(i, str) and i)


def message_basis(r: GuardRequest, kept: Sequence[Signal]) -> list[Signal]:
    """What an NBA message's wording and params may rest on: a message about items rests only on those items'
    own signals, never on the rest of the customer's history (a cart of diapers is never "Still thinking
    about pet?"). When none of them may be named on the channel (sensitive or life-event), the guard's
    level falls to `none` and the action's generic wording is used. Other outputs rest on every kept signal."""
    subject = message_subject(r.params) if r.kind == NBA_MESSAGE else frozenset()
    return [s for s in kept if s.item_id in subject] if subject else list(kept)


def guard(request: GuardRequest, policy: GuardPolicy) -> GuardDecision:
    """Decide what one output may say (and, for outbound messages, whether it may be sent at all)."""
    r = request
    if r.kind not in KINDS:
        raise ValueError(f"unknown output kind {r.kind!r} (expected one of {', '.join(KINDS)})")
    if r.channel not in policy.channel_ceilings:
        raise ValueError(f"unknown channel {r.channel!r} (expected one of {', '.join(CHANNELS)})")
    if r.kind == NBA_MESSAGE and not r.action:
        raise ValueError("an NBA message needs an action")
    if r.basis not in REASON_BASES:
        raise ValueError(f"unknown basis {r.basis!r} (expected one of {', '.join(REASON_BASES)})")
    if r.tone not in TONES:
        raise ValueError(f"unknown tone {r.tone!r} (expected one of {', '.join(TONES)})")
    if r.kind == PROFILE_VIEW:
        return _profile_decision(r, policy)
    audit: list[AuditEntry] = []
    if r.kind == RECOMMENDATION_REASON and (r.basis != PERSONAL or not r.consent.personalization):
        if r.basis == PERSONAL:  # nothing personal may be used: say nothing about the person
            audit.append(AuditEntry("reason", "personalization not granted"))
            text = policy.templates.reason_basis["context_none"]
        else:
            text = _render_context(r, policy, audit)
        return GuardDecision(True, Specificity.NONE, text, MappingProxyType({}), (), tuple(audit))
    kept, audit = filter_signals(r.signals, r.consent)
    ceiling = min(r.consent.level, policy.ceiling(r.channel, r.logged_in))
    if not r.consent.personalization:
        ceiling = Specificity.NONE
    own = (r.kind == NBA_MESSAGE and r.action in policy.own_item_actions and r.channel in policy.own_item_channels
           and r.consent.personalization and r.consent.allows_marketing(r.channel))
    basis = message_basis(r, kept)
    chosen, level = _pick(basis, ceiling, r.channel, policy, logged_in=r.logged_in, own_items=own)
    if level < ceiling:
        audit.append(AuditEntry("specificity", f"lowered to {level.name.lower()} (ceiling {ceiling.name.lower()}: "
                                               "sensitive, inferred or unrenderable signal)"))
    wording = r.template or r.action
    text, used_params = _render(level, chosen, r.kind, wording, policy, r.tone)
    if level > Specificity.NONE:
        # the text and the params it came with are scanned together (one pass: this path is hot)
        problems = scrub_problems(" | ".join((text, *map(str, used_params.values()))), r.signals, policy)
        if problems:
            audit.append(AuditEntry("rendered text", "replaced by the none text: " + "; ".join(problems)))
            level, chosen = Specificity.NONE, None
            text, used_params = _render(level, None, r.kind, wording, policy, r.tone)
    if r.kind == NBA_MESSAGE:
        params = _sanitise_params(r.params, max(ceiling, level), basis, r.channel, policy, audit,
                                  logged_in=r.logged_in, own_items=own,
                                  claimed={s.item_id for s in r.signals if s.item_id})
        for key in [k for k in params if k not in OFFER_PARAMS and k != CONTENT
                    and scrub_problems(_param_text(k, params[k]), r.signals, policy)]:
            audit.append(AuditEntry(f"param {key}", "removed by the scrubber"))
            del params[key]
        if SUGGESTIONS not in params:
            params.pop(SUGGESTED_ITEM_IDS, None)  # ids of suggestions the guard does not name stay unsaid
        params = dict(sorted(params.items()))  # one order whatever the action's: answers and files agree
    else:
        params = used_params
    signals_used = tuple(kept)
    send_at = None
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
        send_at = check.send_at
        if send_at is not None:
            audit.append(AuditEntry("message", "deferred: quiet hours in the customer's time zone"))
    return GuardDecision(True, level, text, MappingProxyType(params), signals_used, tuple(audit), None, send_at)


# ---------------------------------------------------------------------------------------------
# Profile view (GET /profiles/{id})
# ---------------------------------------------------------------------------------------------
def _profile_signals(profile: OnlineProfile) -> list[Signal]:
    """Signals of an online profile, each with its real channel and event type; interests by source, so
    an interest that only a store visit or a social like shows stays hidden without that consent."""
    out = [Signal(e.event_type, e.channel, item_id=e.item_id, category=e.category)
           for entries in (profile.recent_views, profile.cart_items, profile.purchases) for e in entries]
    by_category = profile.category_sources or {c: {BEHAVIORAL: n} for c, n in profile.category_counts.items()}
    for cat, sources in sorted(by_category.items(), key=lambda kv: (-sum(kv[1].values()), str(kv[0]))):
        out += [Signal(VIEW, "web", category=str(cat), origin=INFERRED, source=src) for src in sorted(sources)]
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


def profile_view(profile: OnlineProfile, consent: ConsentState, policy: GuardPolicy, *, channel: str = "web",
                 logged_in: bool = True) -> dict[str, Any]:
    """What `GET /profiles/{id}` shows the person: interests as categories (never timings, counts or
    sensitive categories), item ids only with item-level consent, identifier types (never values)."""
    d = guard(GuardRequest(PROFILE_VIEW, channel, consent, _profile_signals(profile), logged_in=logged_in),
              policy)
    out: dict[str, Any] = {
        PROFILE_ID: profile.profile_id,
        "personalization": consent.personalization,
        "level": d.level.name.lower(),
        "consent": {p: p in consent.granted for p in PURPOSES},
        "interests": list(d.params.get("interests", [])),
        "identifier_types": sorted({str(i).split(":", 1)[0] for i in profile.identifiers}),
        "channels": sorted(str(c) for c in profile.channel_last_seen),
        "summary": d.text,
    }
    if "recent_items" in d.params:
        out["recent_items"] = list(d.params["recent_items"])
    out["declared"] = declared_view(profile, channel, policy)
    return out


def declared_signals(profile: OnlineProfile | None, channel: str = "web") -> list[Signal]:
    """The customer's declared interests as zero-party signals ("because you told us you like X")."""
    if profile is None:
        return []
    return [Signal(DECLARED_PREFERENCE, channel, category=c, origin=ZERO_PARTY)
            for c in profile.declared_values(INTEREST)]


def declared_view(profile: OnlineProfile, channel: str, policy: GuardPolicy) -> dict[str, Any]:
    """What the customer declared (preference centre), for their profile view: a declared interest in a
    sensitive or life-event category is named back only where `sensitive.declared_allowed_on` allows it
    (the others are counted, `interests_withheld`), so a screen never shows one."""
    shown = [s.category for s in declared_signals(profile, channel)
             if _signal_level(s, Specificity.CATEGORY, channel, policy) >= Specificity.CATEGORY]
    level = profile.declared_values(PERSONALIZATION_LEVEL)
    zone = profile.declared_values(DECLARED_TIMEZONE)
    return {"interests": shown, "interests_withheld": len(profile.declared_values(INTEREST)) - len(shown),
            "channels": list(profile.declared_values(PREFERRED_CHANNEL)),
            "timezone": zone[0] if zone else None, "personalization_level": level[0] if level else None}


def declared_level(profile: OnlineProfile | None) -> Specificity | None:
    """The most the customer wants outputs to reveal (their declared personalization level), if declared."""
    level = profile.declared_values(PERSONALIZATION_LEVEL) if profile is not None else ()
    return Specificity.parse(level[0]) if level else None
