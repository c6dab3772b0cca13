"""The canonical event record: every column and event name Mirror uses lives here, once.

Every channel (web, app, email, SMS, social, store POS, chat, call center) is mapped onto this one
record.  Validation is vectorised so that a batch with bad rows keeps the good ones and returns a
report naming each bad row, field and reason: nothing is silently dropped or coerced.  Ids and
identifiers are NFC-normalised and refuse control and format characters (a NUL or a zero-width
character would make an id that can never be looked up, or a look-alike customer); every string
has a length limit, timestamps a time window (`EventLimits`), and the content rules live here once.
Emails and phone numbers are normalised and hashed with a keyed hash on the way in, so raw
contact details are never stored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import json
import os
import re
import sys
import unicodedata
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

# ---------------------------------------------------------------------------------------------
# Column names
# ---------------------------------------------------------------------------------------------
EVENT_ID: Final = "event_id"
TS: Final = "ts"
CHANNEL: Final = "channel"
EVENT_TYPE: Final = "event_type"

CUSTOMER_ID: Final = "customer_id"
EMAIL: Final = "email"
PHONE: Final = "phone"
LOYALTY_ID: Final = "loyalty_id"
DEVICE_ID: Final = "device_id"
COOKIE_ID: Final = "cookie_id"
IDENTIFIER_COLUMNS: Final[tuple[str, ...]] = (
    CUSTOMER_ID,
    EMAIL,
    PHONE,
    LOYALTY_ID,
    DEVICE_ID,
    COOKIE_ID,
)
#: Identifiers that are personal contact details: normalised and hashed before anything is stored.
HASHED_IDENTIFIERS: Final[tuple[str, ...]] = (EMAIL, PHONE)

ITEM_ID: Final = "item_id"
CATEGORY: Final = "category"
QUANTITY: Final = "quantity"
PRICE: Final = "price"
TEXT: Final = "text"
RATING: Final = "rating"
STORE_ID: Final = "store_id"
QUERY: Final = "query"

#: Added by identity resolution, never sent by a channel.
PROFILE_ID: Final = "profile_id"
#: Product display name (catalog attribute, not an event column): what an item-level reason may say.
ITEM_NAME: Final = "item_name"

# Optional attribute columns some channels send (used by the guard, never required).
COLOR: Final = "color"
SIZE: Final = "size"
BRAND: Final = "brand"
DURATION_S: Final = "duration_s"
#: The customer's own IANA time zone as the app/site knows it (e.g. "Europe/Paris"), for quiet hours.
TIMEZONE: Final = "timezone"
#: Attribution: the `recommendation_id` of a served list and the item's 0-based position in it, echoed
#: back by the channel on the click/cart/purchase it led to; `decision_id` of an NBA decision likewise.
RECOMMENDATION_ID: Final = "recommendation_id"
POSITION: Final = "position"
#: The rule of `position` (0 is the first item of the list), the same in both validation paths.
POSITION_RULE: Final = "must be a non-negative integer (0 is the first item of the list)"
DECISION_ID: Final = "decision_id"
#: Why an item was returned, as the till or the returns form records it (e.g. "too small").
RETURN_REASON: Final = "return_reason"
#: A declared (zero-party) preference: which one (`PREFERENCE_KEYS`) and its value.
PREFERENCE_KEY: Final = "preference_key"
PREFERENCE_VALUE: Final = "preference_value"
OPTIONAL_COLUMNS: Final[tuple[str, ...]] = (
    COLOR, SIZE, BRAND, DURATION_S, TIMEZONE, RECOMMENDATION_ID, POSITION, DECISION_ID, RETURN_REASON,
    PREFERENCE_KEY, PREFERENCE_VALUE,
)

PAYLOAD_COLUMNS: Final[tuple[str, ...]] = (
    ITEM_ID,
    CATEGORY,
    QUANTITY,
    PRICE,
    TEXT,
    RATING,
    STORE_ID,
    QUERY,
)
REQUIRED_COLUMNS: Final[tuple[str, ...]] = (EVENT_ID, TS, CHANNEL, EVENT_TYPE)
#: Every canonical column, in the order files are written.
CANONICAL_COLUMNS: Final[tuple[str, ...]] = (
    REQUIRED_COLUMNS + IDENTIFIER_COLUMNS + PAYLOAD_COLUMNS
)
KNOWN_COLUMNS: Final[frozenset[str]] = frozenset(CANONICAL_COLUMNS + OPTIONAL_COLUMNS)

STRING_COLUMNS: Final[tuple[str, ...]] = (
    (EVENT_ID, CHANNEL, EVENT_TYPE) + IDENTIFIER_COLUMNS + (ITEM_ID, CATEGORY, TEXT, STORE_ID, QUERY)
    + (COLOR, SIZE, BRAND, TIMEZONE, RECOMMENDATION_ID, DECISION_ID, RETURN_REASON, PREFERENCE_KEY,
       PREFERENCE_VALUE)
)
NUMERIC_COLUMNS: Final[tuple[str, ...]] = (QUANTITY, PRICE, RATING, DURATION_S, POSITION)

# ---------------------------------------------------------------------------------------------
# Channels and event types (the one place to extend them)
# ---------------------------------------------------------------------------------------------
CHANNELS: Final[tuple[str, ...]] = (
    "web",
    "app",
    "email",
    "sms",
    "social",
    "store",
    "chat",
    "call_center",
)

VIEW: Final = "view"
SEARCH: Final = "search"
ADD_TO_CART: Final = "add_to_cart"
REMOVE_FROM_CART: Final = "remove_from_cart"
PURCHASE: Final = "purchase"
RETURN: Final = "return"
EMAIL_OPEN: Final = "email_open"
EMAIL_CLICK: Final = "email_click"
SOCIAL_LIKE: Final = "social_like"
TRY_ON: Final = "try_on"
REVIEW: Final = "review"
SUPPORT_MESSAGE: Final = "support_message"
# Buy online, pick up in store: order states are events like any other (a return at the till is
# RETURN on channel "store").
RESERVE: Final = "reserve"
READY_FOR_PICKUP: Final = "ready_for_pickup"
PICKUP: Final = "pickup"
#: A declared preference (preference centre): PREFERENCE_KEY / PREFERENCE_VALUE say which and what.
PREFERENCE: Final = "preference"

EVENT_TYPES: Final[tuple[str, ...]] = (
    VIEW,
    SEARCH,
    ADD_TO_CART,
    REMOVE_FROM_CART,
    PURCHASE,
    RETURN,
    EMAIL_OPEN,
    EMAIL_CLICK,
    SOCIAL_LIKE,
    TRY_ON,
    REVIEW,
    SUPPORT_MESSAGE,
    RESERVE,
    READY_FOR_PICKUP,
    PICKUP,
    PREFERENCE,
)
#: Event types that concern one product and so must name it.
ITEM_EVENT_TYPES: Final[frozenset[str]] = frozenset(
    {VIEW, ADD_TO_CART, REMOVE_FROM_CART, PURCHASE, RETURN, TRY_ON, SOCIAL_LIKE, RESERVE, READY_FOR_PICKUP,
     PICKUP}
)
#: Event types that carry free text.
TEXT_EVENT_TYPES: Final[frozenset[str]] = frozenset({REVIEW, SUPPORT_MESSAGE})

# Declared (zero-party) preferences: a `preference` event names one key and one value. Set-valued keys
# (interests, preferred channels) hold the values declared at their latest time (one preference-centre
# save writes its events with one timestamp, so a save replaces the set); the others, the latest value.
# NO_PREFERENCE is the customer's "none of these": no interest, no preferred channel, no declared zone
# (the observed one applies again), and for `personalization_level` the level `none`.
INTEREST: Final = "interest"  # value: a catalog category path, e.g. "Shoes > Running"
PREFERRED_CHANNEL: Final = "channel"  # value: one of CHANNELS
DECLARED_TIMEZONE: Final = "timezone"  # value: an IANA zone (quiet hours follow it)
PERSONALIZATION_LEVEL: Final = "personalization_level"  # value: one of PERSONALIZATION_LEVELS
PREFERENCE_KEYS: Final[tuple[str, ...]] = (INTEREST, PREFERRED_CHANNEL, DECLARED_TIMEZONE, PERSONALIZATION_LEVEL)
SET_PREFERENCE_KEYS: Final[frozenset[str]] = frozenset({INTEREST, PREFERRED_CHANNEL})
NO_PREFERENCE: Final = "none"
#: How personal the customer wants outputs to be: the guard's specificity levels by name (serving.guard
#: `Specificity`), generic to specific. A declared level caps what the guard shows; it never raises it.
PERSONALIZATION_LEVELS: Final[tuple[str, ...]] = ("none", "category", "item")

#: Why an item came back, as codes (a till or a returns form picks one; free text belongs in `text`).
RETURN_REASONS: Final[tuple[str, ...]] = (
    "too_small", "too_large", "poor_fit", "not_as_described", "damaged", "wrong_item", "changed_mind", "other",
)
#: Reasons about fit: the product was wrong for the body, not the category for the person.
FIT_RETURN_REASONS: Final[frozenset[str]] = frozenset({"too_small", "too_large", "poor_fit"})

# Sentiment labels, shared by the synthetic truth, training and the profile features.
NEGATIVE: Final = "negative"
NEUTRAL: Final = "neutral"
POSITIVE: Final = "positive"
SENTIMENT_LABELS: Final[tuple[str, ...]] = (NEGATIVE, NEUTRAL, POSITIVE)

RATING_MIN: Final = 1
RATING_MAX: Final = 5


def rating_to_sentiment(rating: float) -> str:
    """1-2 negative, 3 neutral, 4-5 positive: the labelling every sentiment model uses."""
    if rating <= 2:
        return NEGATIVE
    if rating < 4:
        return NEUTRAL
    return POSITIVE


# ---------------------------------------------------------------------------------------------
# Keyed hashing of contact details
# ---------------------------------------------------------------------------------------------
HASH_KEY_ENV: Final = "MIRROR_HASH_KEY"
#: Used only when no key is configured (demo and tests); production deployments set MIRROR_HASH_KEY.
DEV_HASH_KEY: Final = "mirror-dev-key-change-me"
HASH_PREFIX: Final = "h:"

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_email(value: str) -> str | None:
    """Lower-case, trim and NFC-normalise (one address, one hash); None when it is not an email address."""
    v = normalise_id(value.lower())
    return v if _EMAIL_RE.match(v) else None


#: The region whose national formats a phone number without a country code is read in ("415-555-0100" is
#: +14155550100 in "US"): ISO 3166 alpha-2, set per deployment (read by `IdentifierHasher.from_env`).
PHONE_REGION_ENV: Final = "MIRROR_PHONE_REGION"
DEFAULT_PHONE_REGION: Final = "US"
#: Longer than any phone number in any formatting (E.164 has at most 15 digits): refused before parsing.
_MAX_PHONE_TEXT: Final = 64


def phone_region(region: str) -> str:
    """A region code phone numbers can be read in (upper-cased); ValueError naming MIRROR_PHONE_REGION."""
    code = str(region).strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{PHONE_REGION_ENV}: {region!r} is not a region code phone numbers are known for "
                         "(ISO 3166 alpha-2, e.g. US, GB, FR)")
    return code


@functools.lru_cache(maxsize=65_536)
def normalise_phone(value: str, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """The number in E.164 ("+14155550100") whatever its formatting; None when it is no phone number.

    Why E.164 through `phonenumbers`: one person, one hash, however a channel writes the number:
    "+1 (415) 555-0100", "415-555-0100" (national, read in `region`), "00 1 415 555 0100" and
    "011 1 415 555 0100" (international dialling prefixes) are one number. A number must have a possible
    length for its country (`is_possible_number`); a number too short to call from anywhere in the
    country (a local-only "555-0100") identifies nobody and is refused. Assigned ranges
    (`is_valid_number`) are not checked: they change with each numbering-plan update, and refusing a
    real customer's number would drop their whole event. Extensions are dropped (one line, one person).
    """
    v = value.strip()
    if not v or len(v) > _MAX_PHONE_TEXT:
        return None
    if v.startswith("00"):  # the ITU international prefix, whatever the region's own one is
        v = "+" + v[2:]
    try:
        number = phonenumbers.parse(v, region)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True)
class IdentifierHasher:
    """HMAC-SHA256 of normalised contact details; the key never leaves configuration.

    `phone_region`: where national phone formats are read (`normalise_phone`); every path that hashes
    or looks up a phone number (validation, the store's lookups) reads it from the hasher, so one
    deployment has one rule."""

    key: str = field(default=DEV_HASH_KEY, repr=False)
    phone_region: str = DEFAULT_PHONE_REGION

    def __post_init__(self) -> None:
        object.__setattr__(self, "phone_region", phone_region(self.phone_region))

    @classmethod
    def from_env(cls) -> IdentifierHasher:
        return cls(os.environ.get(HASH_KEY_ENV, DEV_HASH_KEY),
                   os.environ.get(PHONE_REGION_ENV, "").strip() or DEFAULT_PHONE_REGION)

    def normalise_phone(self, value: str) -> str | None:
        """`normalise_phone` in this deployment's region."""
        return normalise_phone(value, self.phone_region)

    def normalise(self, column: str, value: str) -> str | None:
        """The normalised email or phone (what `hash` takes); None when the value is not one."""
        if column == EMAIL:
            return normalise_email(value)
        if column == PHONE:
            return self.normalise_phone(value)
        raise ValueError(f"{column!r} is not a hashed identifier (expected one of {', '.join(HASHED_IDENTIFIERS)})")

    def hash(self, normalised: str) -> str:
        digest = hmac.new(self.key.encode(), normalised.encode(), hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest[:32]

    def is_hashed(self, value: str) -> bool:
        return value.startswith(HASH_PREFIX) and len(value) == len(HASH_PREFIX) + 32


# ---------------------------------------------------------------------------------------------
# Content rules: characters, lengths, time window, time zones (the one place for each limit)
# ---------------------------------------------------------------------------------------------
#: Ids and identifiers: NFC-normalised, and no control or format characters (a NUL makes an id that
#: can never be looked up or erased; zero-width and bidi characters make look-alike customers).
ID_COLUMNS: Final[tuple[str, ...]] = (EVENT_ID, *IDENTIFIER_COLUMNS, ITEM_ID, STORE_ID)
#: Free text: kept as sent (not normalised), and may keep tabs and line breaks, no other control character.
FREE_TEXT_COLUMNS: Final[tuple[str, ...]] = (TEXT, QUERY)
FREE_TEXT_CONTROLS: Final = "\t\n\r"
#: Columns compared as keys (every string column but free text): NFC-normalised, so that "é" composed
#: and decomposed are one customer, one category.
NFC_COLUMNS: Final[frozenset[str]] = frozenset(STRING_COLUMNS) - frozenset(FREE_TEXT_COLUMNS)

#: The API's id fields allow 256 characters: a longer id could be stored but never looked up.
MAX_ID_LENGTH: Final = 256
MAX_CATEGORY_LENGTH: Final = 300
MAX_TEXT_LENGTH: Final = 10_000
MAX_QUERY_LENGTH: Final = 1_000
MAX_OTHER_LENGTH: Final = 100
#: Longest value (in characters, after stripping and normalising) of each string column.  Channel and
#: event type need none: they must be one of CHANNELS / EVENT_TYPES.
MAX_LENGTHS: Final[Mapping[str, int]] = MappingProxyType({
    **dict.fromkeys((EVENT_ID, *IDENTIFIER_COLUMNS, ITEM_ID), MAX_ID_LENGTH),
    CATEGORY: MAX_CATEGORY_LENGTH,
    TEXT: MAX_TEXT_LENGTH,
    QUERY: MAX_QUERY_LENGTH,
    **dict.fromkeys((STORE_ID, COLOR, SIZE, BRAND, TIMEZONE, RETURN_REASON, PREFERENCE_KEY), MAX_OTHER_LENGTH),
    PREFERENCE_VALUE: MAX_CATEGORY_LENGTH,  # an interest is a category path
    **dict.fromkeys((RECOMMENDATION_ID, DECISION_ID), MAX_ID_LENGTH),
})

#: Zones zoneinfo knows that are no customer's zone: the server's own, and IANA's placeholders.
_NOT_CUSTOMER_ZONES: Final = frozenset({"localtime", "Factory", "posixrules"})
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*")
_CATEGORY_NAMES: Final = {"Cc": "control", "Cf": "format", "Cs": "surrogate"}


def normalise_id(value: str) -> str:
    """Stripped and NFC-normalised: the one spelling of an id or identifier, for storing and for lookups."""
    v = value.strip()
    return v if v.isascii() else unicodedata.normalize("NFC", v)


@functools.cache
def _format_characters() -> tuple[int, ...]:
    """Unicode category Cf in this Python's tables (computed once, on first use: ~0.1 s)."""
    return tuple(cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) == "Cf")


@functools.cache
def _refused(kind: str) -> re.Pattern[str]:
    """One character class: control (Cc, fixed by Unicode's stability policy) and surrogate (Cs) characters,
    plus format characters (Cf) for ids; free text keeps tabs and line breaks."""
    cps = {*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0xD800, 0xE000)}
    if kind == "id":
        cps |= set(_format_characters())
    elif kind == "text":
        cps -= {ord(c) for c in FREE_TEXT_CONTROLS}
    ranges: list[list[int]] = []
    for cp in sorted(cps):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return re.compile("[" + "".join(f"\\U{a:08X}-\\U{b:08X}" for a, b in ranges) + "]")


def _char_kind(column: str) -> str:
    return "id" if column in ID_COLUMNS else "text" if column in FREE_TEXT_COLUMNS else "other"


def _char_reason(column: str, value: str) -> str | None:
    """Why `value` may not be in `column` because of a character it holds; None when none is refused."""
    if value.isascii() and value.isprintable():  # the common case, and exact: ASCII printable is 0x20-0x7E
        return None
    m = _refused(_char_kind(column)).search(value)
    if m is None:
        return None
    ch = m.group()
    return f"contains disallowed character U+{ord(ch):04X} ({_CATEGORY_NAMES[unicodedata.category(ch)]})"


def _too_long(limit: int) -> str:
    return f"longer than {limit} characters"


def _length_reason(column: str, value: str) -> str | None:
    limit = MAX_LENGTHS.get(column)
    return _too_long(limit) if limit is not None and len(value) > limit else None


def value_problems(column: str, value: str) -> tuple[str, ...]:
    """Why a string breaks `column`'s character and length rules (checked after `normalise_id` for key
    columns); empty when it breaks none.  For callers that take ids outside events (lookups, erasure)."""
    if column in NFC_COLUMNS:
        value = normalise_id(value)
    return tuple(r for r in (_char_reason(column, value), _length_reason(column, value)) if r is not None)


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_CUSTOMER_ZONES


@functools.lru_cache(maxsize=4096)
def is_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone name zoneinfo can load, e.g. "Europe/Paris" (case as IANA spells it)."""
    if len(name) > MAX_OTHER_LENGTH or _ZONE_NAME.fullmatch(name) is None or name not in _zone_names():
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


_UNKNOWN_PREFERENCE: Final = f"unknown preference (expected one of {', '.join(PREFERENCE_KEYS)})"
_ONLY_ON_PREFERENCE: Final = "only on preference events"
_ONLY_ON_RETURN: Final = "only on return events"
_NEEDED_BY_PREFERENCE: Final = "required for a preference event"
_UNKNOWN_RETURN_REASON: Final = f"unknown return reason (expected one of {', '.join(RETURN_REASONS)})"


def preference_value_problem(key: str, value: str) -> str | None:
    """Why `value` is no valid declaration of the (known) preference `key`; None when it is one.

    The one rule for `preference` events and PUT /preferences: an interest is any category path, a
    channel one of CHANNELS, a time zone an IANA name, a level one of PERSONALIZATION_LEVELS; NO_PREFERENCE
    is valid for every key."""
    if value == NO_PREFERENCE or key == INTEREST:
        return None
    if key == PREFERRED_CHANNEL:
        return None if value in CHANNELS else _UNKNOWN_CHANNEL
    if key == DECLARED_TIMEZONE:
        return None if is_time_zone(value) else _UNKNOWN_ZONE
    if key == PERSONALIZATION_LEVEL:
        return None if value in PERSONALIZATION_LEVELS else \
            f"unknown personalization level (expected one of {', '.join(PERSONALIZATION_LEVELS)})"
    return _UNKNOWN_PREFERENCE


def _declaration_problems(etype: str | None, key: str | None, value: str | None, reason: str | None
                          ) -> list[tuple[str, str]]:
    """(field, reason) of one event's preference and return-reason columns, in the order both validation
    paths report them."""
    out: list[tuple[str, str]] = []
    if etype == PREFERENCE:
        if key is None:
            out.append((PREFERENCE_KEY, _NEEDED_BY_PREFERENCE))
        elif key not in PREFERENCE_KEYS:
            out.append((PREFERENCE_KEY, _UNKNOWN_PREFERENCE))
        if value is None:
            out.append((PREFERENCE_VALUE, _NEEDED_BY_PREFERENCE))
        elif key in PREFERENCE_KEYS and (r := preference_value_problem(key, value)) is not None:
            out.append((PREFERENCE_VALUE, r))
    else:
        out += [(c, _ONLY_ON_PREFERENCE) for c, v in ((PREFERENCE_KEY, key), (PREFERENCE_VALUE, value))
                if v is not None]
    if reason is not None:
        if etype != RETURN:
            out.append((RETURN_REASON, _ONLY_ON_RETURN))
        elif reason not in RETURN_REASONS:
            out.append((RETURN_REASON, _UNKNOWN_RETURN_REASON))
    return out


DEFAULT_EARLIEST_TS: Final = pd.Timestamp("2000-01-01T00:00:00", tz="UTC")
DEFAULT_MAX_AHEAD: Final = pd.Timedelta(days=1)
_NS_MIN: Final = pd.Timestamp.min.tz_localize("UTC")
_NS_MAX: Final = pd.Timestamp.max.tz_localize("UTC")


def _limit_timestamp(value: object, name: str) -> pd.Timestamp:
    if isinstance(value, bool) or not isinstance(value, (dt.datetime, np.datetime64, str)):
        raise TypeError(f"EventLimits.{name} must be a datetime or an ISO-8601 string, got {type(value).__name__}")
    try:
        ts = pd.Timestamp(value)
    except ValueError as exc:
        raise ValueError(f"EventLimits.{name}: not a timestamp ({value!r})") from exc
    if ts is pd.NaT:
        raise ValueError(f"EventLimits.{name} must be a time, got NaT")
    if ts.tzinfo is None:
        raise ValueError(f"EventLimits.{name} must have a time zone, got {value!r}")
    ts = ts.tz_convert("UTC")
    if not _NS_MIN <= ts <= _NS_MAX:
        raise ValueError(f"EventLimits.{name} must be between {_NS_MIN} and {_NS_MAX}, got {ts}")
    return ts.as_unit("ns")


def _duration_text(td: pd.Timedelta) -> str:
    secs = td.total_seconds()
    if secs == 0:
        return "0 seconds"
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if secs >= size and secs % size == 0:
            k = int(secs // size)
            return f"{k} {unit}{'' if k == 1 else 's'}"
    return str(td)


@dataclass(frozen=True)
class EventLimits:
    """The time window event timestamps must fall in, both ends inclusive.

    Why: a timestamp from before the business existed or from the future is a client bug, and a future
    one would outlive an erasure check; outside pandas' range (1677-2262) it could not even be stored.
    `earliest`: the past limit.  `max_ahead`: how far past `now` a clock may run (client clock skew).
    `now`: the reference time; None means the clock when validation runs (fix it for tests and backfills).
    Strings and datetimes are accepted and kept as UTC `pd.Timestamp` / `pd.Timedelta`.
    """

    earliest: pd.Timestamp = DEFAULT_EARLIEST_TS
    max_ahead: pd.Timedelta = DEFAULT_MAX_AHEAD
    now: pd.Timestamp | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "earliest", _limit_timestamp(self.earliest, "earliest"))
        if self.now is not None:
            object.__setattr__(self, "now", _limit_timestamp(self.now, "now"))
        ahead = self.max_ahead
        if isinstance(ahead, bool) or not isinstance(ahead, (dt.timedelta, np.timedelta64, str)):
            raise TypeError(f"EventLimits.max_ahead must be a timedelta or a duration string, "
                            f"got {type(ahead).__name__}")
        try:
            ahead = pd.Timedelta(ahead)
        except ValueError as exc:
            raise ValueError(f"EventLimits.max_ahead: not a duration ({self.max_ahead!r})") from exc
        if ahead is pd.NaT or ahead < pd.Timedelta(0):
            raise ValueError(f"EventLimits.max_ahead must be zero or more, got {self.max_ahead!r}")
        object.__setattr__(self, "max_ahead", ahead)
        self.window()  # an empty or unrepresentable window is refused here, not on the first event

    def window(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """(earliest, latest) accepted timestamps, as UTC; latest = now + max_ahead."""
        now = self.now if self.now is not None else pd.Timestamp.now(tz="UTC")
        try:
            latest = now + self.max_ahead
        except (OverflowError, pd.errors.OutOfBoundsDatetime):
            latest = None
        if latest is None or latest > _NS_MAX:
            raise ValueError(f"EventLimits.max_ahead: {now} + {self.max_ahead} is past {_NS_MAX}")
        if latest < self.earliest:
            raise ValueError(f"EventLimits.earliest ({self.earliest}) is after now + max_ahead ({latest})")
        return self.earliest, latest

    def fixed(self) -> EventLimits:
        """These limits with `now` set (to the clock when None): one window for a whole validation."""
        return self if self.now is not None else dataclasses.replace(self, now=pd.Timestamp.now(tz="UTC"))


_NS_PER_UNIT: Final = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def _window_split(naive_utc: np.ndarray, earliest: pd.Timestamp, latest: pd.Timestamp
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(before, after, ns) for UTC datetime64 values of any unit: exact integer comparison in their own unit
    (casting to ns first would overflow outside 1677-2262), ns only for values inside the window."""
    f = _NS_PER_UNIT[np.datetime_data(naive_utc.dtype)[0]]
    iv = naive_utc.view("int64")
    present = ~np.isnat(naive_utc)
    before = present & (iv < -(-earliest.value // f))  # ceil: a value below the first whole unit is before
    after = present & (iv > latest.value // f)
    inside = present & ~before & ~after
    ns = np.where(inside, iv, 0) * f
    return before, after, np.where(inside, ns, np.iinfo(np.int64).min).view("datetime64[ns]")


def _before_reason(earliest: pd.Timestamp) -> str:
    return f"before {earliest.isoformat()} (the earliest time accepted)"


def _after_reason(limits: EventLimits) -> str:
    return f"more than {_duration_text(limits.max_ahead)} in the future"


_DIGEST_COLUMNS: Final[tuple[str, ...]] = CANONICAL_COLUMNS + OPTIONAL_COLUMNS


def _missing(v: object) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(v != v)
    return isinstance(v, np.datetime64) and bool(np.isnat(v))


def event_digest(row: Mapping[str, Any]) -> str:
    """Digest of one validated event's content: equal exactly when two events say the same thing.

    Why: an event id seen again with other content is a conflict, not a re-send.  Give the event in
    canonical form (a row of `validate_events(...).valid`, or as a store keeps it): every canonical and
    optional column counts, an absent column is missing, missing is one value (None, NA, NaN, NaT),
    `ts` counts to the nanosecond (Timestamp, datetime64 or ISO string, naive read as UTC, or int ns
    since the epoch), numbers as floats, strings as they are.
    """
    vals: list[object] = []
    for c in _DIGEST_COLUMNS:
        v = row.get(c)
        if _missing(v):
            vals.append(None)
        elif c == TS:
            ts = pd.Timestamp(int(v)) if isinstance(v, (int, np.integer)) else pd.Timestamp(v)
            vals.append(int(ts.as_unit("ns").value))
        elif c in NUMERIC_COLUMNS:
            vals.append(float(v))
        else:
            vals.append(str(v))
    blob = json.dumps(vals, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
ERROR_ROW: Final = "row"
ERROR_FIELD: Final = "field"
ERROR_REASON: Final = "reason"
ERROR_COLUMNS: Final[tuple[str, ...]] = (ERROR_ROW, EVENT_ID, ERROR_FIELD, ERROR_REASON)
#: The field errors name when they concern a whole record (empty, or not an object).
RECORD_FIELD: Final = "record"
#: The field errors name when no identifier column has a value.
IDENTIFIERS_FIELD: Final = "identifiers"

_MUST_BE_STRING: Final = "must be a string"
_MUST_BE_NUMBER: Final = "must be a number"
_MUST_BE_FINITE: Final = "must be finite"
_NOT_ISO: Final = "not an ISO-8601 timestamp"
_NO_TZ: Final = "timestamp has no time zone"
_UNKNOWN_FIELD: Final = "unknown field"
_REQUIRED_MISSING: Final = "required field is missing"
_REQUIRED_EMPTY: Final = "required field is empty"
_EMPTY_RECORD: Final = "empty event: no field has a value"
_NOT_A_RECORD: Final = "an event must be an object of field: value pairs"
_UNKNOWN_ZONE: Final = "unknown time zone (expected an IANA name such as Europe/Paris)"
_UNKNOWN_CHANNEL: Final = f"unknown channel (expected one of {', '.join(CHANNELS)})"
_NO_IDENTIFIER: Final = f"at least one of {', '.join(IDENTIFIER_COLUMNS)} is required"
_INT_MIN: Final = -(2**63)
_INT_LIMIT: Final = 2**64  # ints in string columns: what an int64/uint64 id column can hold


def _conflict_reason(first: int) -> str:
    return f"conflicts with row {first}: same event_id, different content"


def _empty_errors() -> pd.DataFrame:
    return pd.DataFrame(np.empty((0, len(ERROR_COLUMNS)), dtype=object), columns=list(ERROR_COLUMNS))


@dataclass(frozen=True)
class ValidationResult:
    """Good rows in canonical form, one error row per (bad row, field, reason), and the identical
    repeats inside the batch, which are no errors: (row, canonical event_id), the first copy counts."""

    valid: pd.DataFrame
    errors: pd.DataFrame
    duplicates: tuple[tuple[int, str], ...] = ()

    @property
    def n_rejected(self) -> int:
        return int(self.errors[ERROR_ROW].nunique()) if len(self.errors) else 0

    def error_records(self) -> list[dict[str, object]]:
        return self.errors.to_dict(orient="records")


def _blank(s: pd.Series) -> pd.Series:
    """Missing, or a string of only whitespace (only text can be blank)."""
    na = s.isna()
    if not (pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype)):
        return na
    return na | (s.astype("string").str.strip() == "").fillna(False).astype(bool)


def _as_string(s: pd.Series) -> pd.Series:
    out = s.astype("string").str.strip()
    return out.mask(out == "")


def _string_like(v: object) -> bool:
    """A value a string column takes: text, or an integer id (never a bool, never beyond 64 bits)."""
    if isinstance(v, str):
        return True
    return (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
            and _INT_MIN <= int(v) < _INT_LIMIT)


def _number_kind(v: object) -> int:
    """0: a number or numeric text; 1: not a number (bools, bytes, containers...); 2: beyond float range."""
    if isinstance(v, (bool, np.bool_)):
        return 1
    if isinstance(v, int):
        try:
            float(v)
        except OverflowError:
            return 2
        return 0
    return 0 if isinstance(v, (str, float, np.integer, np.floating)) else 1


def _not_a_number_dtype(dtype: Any) -> bool:
    """Columns pandas would turn into numbers that are none: bools (1.0), complex (imaginary part dropped),
    datetimes and durations (nanoseconds)."""
    t = pd.api.types
    return bool(t.is_bool_dtype(dtype) or t.is_complex_dtype(dtype) or t.is_datetime64_any_dtype(dtype)
                or t.is_timedelta64_dtype(dtype) or isinstance(dtype, pd.PeriodDtype))


#: One piece of the error report: (rows, field, reason), in the order the checks ran.
_Piece = tuple[np.ndarray, str, str]


@dataclass(frozen=True)
class _Prepared:
    """The input as a frame, with the errors found while reading it and the rows that are no record."""

    frame: pd.DataFrame
    pieces: list[_Piece]
    not_record: np.ndarray  # bool per row


def _scan(name: Any, vals: Sequence[object], nan_is_value: bool, allow_unknown_columns: bool
          ) -> tuple[list[_Piece], list[object] | None]:
    """Errors in one raw column that no pandas column could carry, and the values with those set to None
    (None when nothing needed changing): lone surrogates (no file or database holds them), and in
    records a NaN, which is a value (JSON NaN), not a missing one."""
    pieces: list[_Piece] = []
    strs = [v for v in vals if isinstance(v, str)]
    bad_char: list[int] = []
    try:
        "".join(strs).encode("utf-8")
    except UnicodeEncodeError:
        bad_char = [i for i, v in enumerate(vals) if isinstance(v, str) and _has_surrogate(v)]
    nan_rows, nat_rows = [], []
    if nan_is_value:
        nan_rows = [i for i, v in enumerate(vals) if isinstance(v, (float, np.floating)) and v != v]
        nat_rows = [i for i, v in enumerate(vals) if v is pd.NaT]
    if not (bad_char or nan_rows or nat_rows):
        return pieces, None
    for i in bad_char:
        ch = next(c for c in str(vals[i]) if 0xD800 <= ord(c) <= 0xDFFF)
        pieces.append((np.array([i], dtype=np.intp), name, f"contains disallowed character U+{ord(ch):04X} (surrogate)"))
    reason = (_MUST_BE_FINITE if name in NUMERIC_COLUMNS else _NOT_ISO if name == TS
              else _MUST_BE_STRING if name in KNOWN_COLUMNS else None if allow_unknown_columns else _UNKNOWN_FIELD)
    if nan_rows and reason is not None:
        pieces.append((np.array(nan_rows, dtype=np.intp), name, reason))
    fixed = list(vals)
    for i in bad_char + nan_rows + nat_rows:
        fixed[i] = None
    return pieces, fixed


def _prepare(events: pd.DataFrame | Sequence[Mapping[str, Any]], allow_unknown_columns: bool) -> _Prepared:
    """Read a frame, or records into object columns (None where a key is absent; unlike pandas'
    constructors, which drop an all-empty batch, `from_records([{}])` has no rows, and read NaN as
    missing), and report what no column can carry (see `_scan`)."""
    pieces: list[_Piece] = []
    if isinstance(events, pd.DataFrame):
        frame = events
        if not frame.columns.is_unique:
            twice = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
            raise ValueError(f"events: columns named more than once: {', '.join(twice)}")
        not_record = np.zeros(len(frame), dtype=bool)
        cleaned: dict[int, list[object]] = {}
        for j, (name, dtype) in enumerate(zip(frame.columns, frame.dtypes.tolist(), strict=True)):
            if dtype == np.dtype(object):
                found, fixed = _scan(name, frame.iloc[:, j].tolist(), False, allow_unknown_columns)
                pieces += found
                if fixed is not None:
                    cleaned[j] = fixed
        if cleaned:
            frame = frame.copy(deep=False)
            for j, fixed in cleaned.items():
                frame.isetitem(j, pd.Series(fixed, index=frame.index, dtype=object))
        return _Prepared(frame, pieces, not_record)
    if not isinstance(events, Sequence) or isinstance(events, (str, bytes)):
        raise TypeError(f"events must be a DataFrame or a sequence of records, got {type(events).__name__}")
    n = len(events)
    not_record = np.fromiter((not isinstance(r, Mapping) for r in events), dtype=bool, count=n)
    if not_record.any():
        pieces.append((np.flatnonzero(not_record), RECORD_FIELD, _NOT_A_RECORD))
    rows: list[Mapping[Any, Any]] = [r if isinstance(r, Mapping) else {} for r in events]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    grid = np.empty((n, len(keys)), dtype=object)
    for j, k in enumerate(keys):
        found, fixed = _scan(k, [r.get(k) for r in rows], True, allow_unknown_columns)
        pieces += found
        for i, v in enumerate(fixed if fixed is not None else (r.get(k) for r in rows)):
            grid[i, j] = v  # one by one: a list value must stay one object, not become a row
    return _Prepared(pd.DataFrame(grid, columns=keys, dtype=object), pieces, not_record)


def _has_surrogate(v: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in v)


def _error_frame(frame: pd.DataFrame, rows: np.ndarray, fields: Sequence[str], reasons: Sequence[str]
                 ) -> pd.DataFrame:
    """The error report, sorted by row then field (stable: checks keep their order), with the raw event id."""
    if not len(rows):
        return _empty_errors()
    if EVENT_ID in frame.columns:
        ev = frame[EVENT_ID].iloc[rows].astype("string").to_numpy()
    else:
        ev = pd.Series([None] * len(rows), dtype="string").to_numpy()
    errors = pd.DataFrame({ERROR_ROW: rows, EVENT_ID: ev, ERROR_FIELD: np.asarray(fields, dtype=object),
                           ERROR_REASON: np.asarray(reasons, dtype=object)})
    return errors.sort_values([ERROR_ROW, ERROR_FIELD], kind="stable").reset_index(drop=True)


def _repeats(rows: Sequence[int], ids: Sequence[str], digest: Callable[[int], str]
             ) -> tuple[list[tuple[int, str]], list[tuple[int, int]]]:
    """Rows sharing an event id (in row order): ([(row, id)] identical to the first, [(row, first row)] not)."""
    first: dict[str, int] = {}
    digests: dict[int, str] = {}
    dups: list[tuple[int, str]] = []
    conflicts: list[tuple[int, int]] = []
    for i, eid in zip(rows, ids, strict=True):
        j = first.setdefault(eid, i)
        if j == i:
            continue
        if j not in digests:
            digests[j] = digest(j)
        (dups.append((i, eid)) if digest(i) == digests[j] else conflicts.append((i, j)))
    return dups, conflicts


#: Batches up to this many rows are validated row by row (pandas overhead dominates small batches).
FAST_PATH_MAX_ROWS: Final = 32


def validate_events(
    events: pd.DataFrame | Sequence[Mapping[str, Any]],
    hasher: IdentifierHasher | None = None,
    *,
    allow_unknown_columns: bool = False,
    limits: EventLimits | None = None,
) -> ValidationResult:
    """Check a batch against the canonical schema and return good rows plus a per-row report.

    `events`: a frame, or the records themselves (a list of field -> value mappings, e.g. parsed JSON):
    give records where you have them, since only they tell a JSON NaN (an error) from null (missing)
    and keep an empty record as a row (an error) rather than no row.
    Good rows come back with `ts` as UTC, strings stripped (and key columns NFC-normalised), numbers
    as floats and email/phone replaced by their keyed hashes (already-hashed values pass through).
    The caller's frame is never modified.  Rows are reported by their position in the input (`row`).
    Timestamps must fall in `limits` (default: 2000-01-01 to a day past the current time).  A second
    copy of an event id is dropped as a duplicate when its content is the same (`duplicates`) and is
    an error (field event_id) when it is not.

    Small batches (up to FAST_PATH_MAX_ROWS rows) take a row-wise path that returns exactly what
    the vectorised path would; input shapes it does not handle fall back to the vectorised path.
    """
    limits = (limits or EventLimits()).fixed()
    if len(events) <= FAST_PATH_MAX_ROWS:
        result = _validate_rowwise(events, hasher, allow_unknown_columns=allow_unknown_columns, limits=limits)
        if result is not None:
            return result
    return _validate_vectorised(events, hasher, allow_unknown_columns=allow_unknown_columns, limits=limits)


def _arrow(s: pd.Series) -> pa.Array:
    return pa.array(s, type=pa.large_string(), from_pandas=True)  # no copy for pandas' Arrow strings


def _flags(arr: pa.Array, test: pc.Expression | Any) -> np.ndarray | None:
    """A bool mask (null = False) of an Arrow test, or None when no value passes it (the usual case)."""
    hit = pc.fill_null(test, False)
    if not pc.any(hit).as_py():
        return None
    return np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)


def _validate_vectorised(
    events: pd.DataFrame | Sequence[Mapping[str, Any]],
    hasher: IdentifierHasher | None = None,
    *,
    allow_unknown_columns: bool = False,
    limits: EventLimits | None = None,
) -> ValidationResult:
    """The reference implementation: vectorised with pandas, fast for big batches."""
    hasher = hasher or IdentifierHasher.from_env()
    limits = (limits or EventLimits()).fixed()
    earliest, latest = limits.window()
    prep = _prepare(events, allow_unknown_columns)
    n = len(prep.frame)
    pieces = list(prep.pieces)
    src = prep.frame.reset_index(drop=True)
    out = pd.DataFrame(index=src.index)

    def report(mask: pd.Series | np.ndarray, fld: str, reason: str) -> None:
        m = mask.to_numpy(dtype=bool, na_value=False) if isinstance(mask, pd.Series) else np.asarray(mask, bool)
        report_at(np.flatnonzero(m), fld, reason)

    def report_at(rows: np.ndarray, fld: str, reason: str) -> None:
        if len(rows):
            pieces.append((np.asarray(rows, dtype=np.intp), fld, reason))

    unknown = sorted(set(src.columns) - KNOWN_COLUMNS, key=str)
    if unknown and not allow_unknown_columns:
        for name in unknown:
            report(src[name].notna(), name, _UNKNOWN_FIELD)

    for col in REQUIRED_COLUMNS:
        if col not in src:
            report(np.ones(n, dtype=bool), col, _REQUIRED_MISSING)

    def col(name: str) -> pd.Series:
        return src[name] if name in src else pd.Series(pd.NA, index=src.index, dtype="string")

    # strings: type, then (stripped, NFC-normalised for keys) characters, length, time zone
    for name in STRING_COLUMNS:
        if name not in src:
            out[name] = pd.Series(pd.NA, index=src.index, dtype="string")
            continue
        s = col(name)
        inferred = pd.api.types.infer_dtype(s, skipna=True)
        if inferred in ("string", "empty") or (inferred == "integer" and s.dtype != np.dtype(object)):
            bad_type = pd.Series(False, index=src.index)
        else:
            is_ok = s.map(_string_like, na_action="ignore")
            bad_type = s.notna() & ~is_ok.eq(True)  # NA maps to NA (a float column when all are NA)
        report(bad_type, name, _MUST_BE_STRING)
        o = _as_string(s.mask(bad_type))
        arr = _arrow(o)
        odd_mask = _flags(arr, pc.invert(pc.ascii_is_printable(arr)))  # only those need character checks
        odd = np.flatnonzero(odd_mask) if odd_mask is not None else np.empty(0, dtype=np.intp)
        if len(odd):
            vals = o.iloc[odd].tolist()
            if name in NFC_COLUMNS:
                normed = [unicodedata.normalize("NFC", v) for v in vals]
                changed = [k for k, (a, b) in enumerate(zip(vals, normed, strict=True)) if a != b]
                if changed:
                    o = o.copy()
                    o.iloc[odd[changed]] = [normed[k] for k in changed]
                    arr = _arrow(o)
                vals = normed
            by_reason: dict[str, list[int]] = {}
            for i, v in zip(odd.tolist(), vals, strict=True):
                r = _char_reason(name, v)
                if r is not None:
                    by_reason.setdefault(r, []).append(i)
            for r, rows in by_reason.items():
                report_at(np.array(rows), name, r)
        limit = MAX_LENGTHS.get(name)
        over = _flags(arr, pc.greater(pc.utf8_length(arr), limit)) if limit is not None else None
        if over is not None:
            report(over, name, _too_long(limit))
        if name == TIMEZONE:
            zones = o.dropna().unique()
            unknown_zones = [z for z in zones if not is_time_zone(z)]
            if unknown_zones:
                report(o.isin(unknown_zones), name, _UNKNOWN_ZONE)
        out[name] = o

    # required
    for name in (EVENT_ID, CHANNEL, EVENT_TYPE):
        if name in src:
            report(out[name].isna() & col(name).notna() | _blank(col(name)), name, _REQUIRED_EMPTY)

    # timestamps: timezone-aware only, inside the window, stored as UTC
    ts = pd.Series(pd.NaT, index=src.index, dtype="datetime64[ns, UTC]")
    if TS in src:
        ts_raw = col(TS)
        blank_ts = _blank(ts_raw)
        report(blank_ts, TS, _REQUIRED_EMPTY)
        present = ~blank_ts
        cand: pd.Series | None = None
        if present.any():
            if isinstance(ts_raw.dtype, pd.DatetimeTZDtype):
                cand = ts_raw[present].dt.tz_convert("UTC")
            elif pd.api.types.is_datetime64_dtype(ts_raw.dtype):
                report(present, TS, _NO_TZ)
            else:
                txt = ts_raw[present].astype("string")
                parsed = pd.to_datetime(txt, utc=True, errors="coerce", format="ISO8601")
                naive = ~txt.str.contains(r"(?:Z|[+-]\d\d:?\d\d)\s*$", regex=True, na=False)
                report(present & parsed.reindex(src.index).isna(), TS, _NOT_ISO)
                report(present & naive.reindex(src.index, fill_value=False) & parsed.reindex(src.index).notna(),
                       TS, _NO_TZ)
                cand = parsed[parsed.notna() & ~naive]
        if cand is not None and len(cand):
            before, after, ns = _window_split(cand.dt.tz_localize(None).to_numpy(), earliest, latest)
            at = cand.index.to_numpy()  # row positions: src has a RangeIndex
            report_at(at[before], TS, _before_reason(earliest))
            report_at(at[after], TS, _after_reason(limits))
            full = np.full(n, np.datetime64("NaT", "ns"))
            full[at] = ns
            ts = pd.Series(pd.DatetimeIndex(full).tz_localize("UTC"), index=src.index)
    out[TS] = ts

    report(out[CHANNEL].notna() & ~out[CHANNEL].isin(CHANNELS), CHANNEL, _UNKNOWN_CHANNEL)
    report(out[EVENT_TYPE].notna() & ~out[EVENT_TYPE].isin(EVENT_TYPES), EVENT_TYPE, "unknown event type")

    # identifiers: at least one
    report(out[list(IDENTIFIER_COLUMNS)].isna().all(axis=1), IDENTIFIERS_FIELD, _NO_IDENTIFIER)

    # contact details: normalise and hash
    for name, norm in ((EMAIL, normalise_email), (PHONE, hasher.normalise_phone)):
        s = out[name]
        present = s.notna()
        if present.any():
            vals = s[present]
            raw_vals = vals[~vals.map(hasher.is_hashed).astype(bool)]  # already-hashed values pass through
            if len(raw_vals):
                normed = raw_vals.map(norm)
                report(normed.isna().reindex(src.index, fill_value=False), name, f"not a valid {name}")
                out.loc[raw_vals.index, name] = normed.map(hasher.hash, na_action="ignore")

    # numbers
    for name in NUMERIC_COLUMNS:
        if name not in src:
            out[name] = pd.Series(np.nan, index=src.index, dtype="float64")
            continue
        raw = col(name)
        huge = pd.Series(False, index=src.index)
        if pd.api.types.is_object_dtype(raw.dtype):
            kind = raw.map(_number_kind, na_action="ignore")
            not_num, huge = kind.eq(1).fillna(False).astype(bool), kind.eq(2).fillna(False).astype(bool)
            num = pd.to_numeric(raw.mask(not_num | huge), errors="coerce")
            bad = (raw.notna() & ~_blank(raw) & num.isna() & ~huge) | not_num
        elif _not_a_number_dtype(raw.dtype):
            num = pd.Series(np.nan, index=src.index, dtype="float64")
            bad = raw.notna()
        else:
            num = pd.to_numeric(raw, errors="coerce")
            bad = raw.notna() & ~_blank(raw) & num.isna()
        report(bad, name, _MUST_BE_NUMBER)
        num = num.where(~bad)
        fin = (num.notna() & ~np.isfinite(num.astype(float))) | huge
        report(fin, name, _MUST_BE_FINITE)
        out[name] = num.where(~fin).astype("float64")
    report(out[QUANTITY].notna() & (out[QUANTITY] <= 0), QUANTITY, "must be positive")
    report(out[PRICE].notna() & (out[PRICE] < 0), PRICE, "must not be negative")
    report(out[RATING].notna() & ((out[RATING] < RATING_MIN) | (out[RATING] > RATING_MAX)), RATING,
           f"must be between {RATING_MIN} and {RATING_MAX}")
    report(out[DURATION_S].notna() & (out[DURATION_S] < 0), DURATION_S, "must not be negative")
    pos = out[POSITION]
    report(pos.notna() & ((pos < 0) | (pos % 1 != 0)), POSITION, POSITION_RULE)

    # per-type requirements
    report(out[EVENT_TYPE].isin(ITEM_EVENT_TYPES) & out[ITEM_ID].isna(), ITEM_ID, "required for this event type")
    report(out[EVENT_TYPE].isin(TEXT_EVENT_TYPES) & out[TEXT].isna() & out[RATING].isna(), TEXT,
           "a review or support message needs text or a rating")
    # declarations: only the (few) rows that are preferences or carry one of their columns are looked at
    declared = (out[EVENT_TYPE].eq(PREFERENCE).fillna(False) | out[PREFERENCE_KEY].notna()
                | out[PREFERENCE_VALUE].notna() | out[RETURN_REASON].notna()).to_numpy(dtype=bool)
    at = np.flatnonzero(declared)
    if len(at):
        found: dict[tuple[str, str], list[int]] = {}
        cols = [out[c].iloc[at].astype(object).where(out[c].iloc[at].notna(), None).tolist()
                for c in (EVENT_TYPE, PREFERENCE_KEY, PREFERENCE_VALUE, RETURN_REASON)]
        for i, et_, k_, v_, r_ in zip(at.tolist(), *cols, strict=True):
            for problem in _declaration_problems(et_, k_, v_, r_):
                found.setdefault(problem, []).append(i)
        for (fld, why), rows_ in found.items():
            report_at(np.array(rows_), fld, why)

    # empty records: only rows without any required value can be empty, so only those are looked at
    pre_rows = np.zeros(n, dtype=bool)
    for idx, _, _ in prep.pieces:
        pre_rows[idx] = True
    cand_rows = np.flatnonzero((out[EVENT_ID].isna() & out[CHANNEL].isna() & out[EVENT_TYPE].isna()
                                & out[TS].isna()).to_numpy(dtype=bool) & ~pre_rows)
    empty = np.zeros(n, dtype=bool)
    if len(cand_rows):
        sub = src.iloc[cand_rows]
        blank = np.ones(len(cand_rows), dtype=bool)
        for j in range(sub.shape[1]):
            blank &= _blank(sub.iloc[:, j]).to_numpy(dtype=bool)
        empty[cand_rows[blank]] = True
    report(empty, RECORD_FIELD, _EMPTY_RECORD)

    # a record-level error is the only one its row reports
    record_rows = prep.not_record | empty
    bad = np.zeros(n, dtype=bool)
    kept: list[_Piece] = []
    for idx, fld, reason in pieces:
        if fld != RECORD_FIELD:
            idx = idx[~record_rows[idx]]
        if len(idx):
            kept.append((idx, fld, reason))
            bad[idx] = True

    # repeated event ids among the good rows: identical copies are duplicates, others conflicts
    good = np.flatnonzero(~bad)
    ids = out[EVENT_ID].iloc[good]
    repeated = ids.duplicated(keep=False).to_numpy(dtype=bool)
    dups: list[tuple[int, str]] = []
    drop = bad
    if repeated.any():
        dups, conflicts = _repeats(good[repeated].tolist(), ids[repeated].tolist(),
                                   lambda i: event_digest({c: out[c].iat[i] for c in _DIGEST_COLUMNS}))
        for i, j in conflicts:
            kept.append((np.array([i], dtype=np.intp), EVENT_ID, _conflict_reason(j)))
        drop = bad.copy()
        drop[[i for i, _ in conflicts] + [i for i, _ in dups]] = True

    if kept:
        rows = np.concatenate([p[0] for p in kept]).astype(np.intp)
        sizes = [len(p[0]) for p in kept]
        errors = _error_frame(src, rows, np.repeat(np.array([p[1] for p in kept], dtype=object), sizes),
                              np.repeat(np.array([p[2] for p in kept], dtype=object), sizes))
    else:
        errors = _empty_errors()
    cols = list(CANONICAL_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in src.columns]
    valid = out.loc[~drop, cols].reset_index(drop=True)
    return ValidationResult(valid=valid, errors=errors, duplicates=tuple((int(i), str(e)) for i, e in dups))


# ---------------------------------------------------------------------------------------------
# Row-wise fast path for small batches: same result as _validate_vectorised, without the
# per-column pandas overhead.  Anything it does not handle exactly returns None (vectorised path).
# ---------------------------------------------------------------------------------------------
_TZ_SUFFIX = re.compile(r"(?:Z|[+-][0-9][0-9]:?[0-9][0-9])[\t\n\f\r ]*\Z")
_OBJECT_SCALARS: Final = (str, int, float, type(None), type(pd.NA), np.integer)


class _Unsupported(Exception):
    """An input shape the row-wise path does not reproduce exactly."""


def _na(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def _strip(v: str) -> str:
    return v.strip()  # pandas' str.strip removes exactly the characters Python's does (every code point checked)


def _values(s: pd.Series, *, allow_timestamps: bool = False) -> list[object]:
    dt_ = s.dtype
    if isinstance(dt_, pd.StringDtype):
        return s.to_numpy(dtype=object).tolist()
    if dt_ == np.dtype(object):
        vals = s.tolist()
        for v in vals:
            if not isinstance(v, _OBJECT_SCALARS) and not (
                allow_timestamps and isinstance(v, pd.Timestamp) and v is not pd.NaT
            ):
                raise _Unsupported
        return vals
    if dt_ in (np.dtype("int64"), np.dtype("float64"), np.dtype("bool")):
        return s.tolist()
    raise _Unsupported


def _validate_rowwise(
    events: pd.DataFrame | Sequence[Mapping[str, Any]],
    hasher: IdentifierHasher | None = None,
    *,
    allow_unknown_columns: bool = False,
    limits: EventLimits | None = None,
) -> ValidationResult | None:
    """Row-by-row validation of a small batch; None where the input needs the vectorised path."""
    prep = _prepare(events, allow_unknown_columns)
    df = prep.frame
    names = list(df.columns)
    if len(df) == 0 or not df.columns.is_unique or not all(type(c) is str for c in names):
        return None
    try:
        return _rowwise(prep, names, hasher or IdentifierHasher.from_env(), allow_unknown_columns,
                        (limits or EventLimits()).fixed())
    except _Unsupported:
        return None


def _rowwise(
    prep: _Prepared, names: list[str], hasher: IdentifierHasher, allow_unknown_columns: bool, limits: EventLimits
) -> ValidationResult:
    df = prep.frame
    n = len(df)
    earliest, latest = limits.window()
    present = set(names)
    errs: list[tuple[tuple[int, ...], int, str, str]] = []
    rows = range(n)

    def report(stage: tuple[int, ...], i: int, fld: str, reason: str) -> None:
        errs.append((stage, i, fld, reason))

    pre_rows: set[int] = set()
    for j, (idx, fld, reason) in enumerate(prep.pieces):
        for i in idx.tolist():
            report((-1, j), i, fld, reason)
            pre_rows.add(i)
    if not allow_unknown_columns:
        for k, name in enumerate(sorted(present - KNOWN_COLUMNS)):
            for i in np.flatnonzero(df[name].notna().to_numpy(dtype=bool, na_value=False)):
                report((0, k), int(i), name, _UNKNOWN_FIELD)
    for k, name in enumerate(REQUIRED_COLUMNS):
        if name not in present:
            for i in rows:
                report((1, k), i, name, _REQUIRED_MISSING)

    out: dict[str, list] = {}
    none_col = [None] * n
    for k, name in enumerate(STRING_COLUMNS):
        if name not in present:
            out[name] = none_col
            continue
        col: list[str | None] = []
        nfc = name in NFC_COLUMNS
        for i, v in enumerate(_values(df[name])):
            if _na(v):
                col.append(None)
            elif isinstance(v, str):
                v = normalise_id(v) if nfc else _strip(v)
                col.append(v or None)
            elif _string_like(v):
                col.append(str(v))
            else:
                report((2, k, 0), i, name, _MUST_BE_STRING)
                col.append(None)
        for i, v in enumerate(col):
            if v is None:
                continue
            r = _char_reason(name, v)
            if r is not None:
                report((2, k, 1), i, name, r)
            r = _length_reason(name, v)
            if r is not None:
                report((2, k, 2), i, name, r)
            if name == TIMEZONE and not is_time_zone(v):
                report((2, k, 3), i, name, _UNKNOWN_ZONE)
        out[name] = col

    for k, name in enumerate((EVENT_ID, CHANNEL, EVENT_TYPE)):
        if name in present:
            for i in rows:
                if out[name][i] is None:
                    report((3, k), i, name, _REQUIRED_EMPTY)

    ts_ns = np.full(n, np.datetime64("NaT", "ns"))
    if TS in present:
        raw = _values(df[TS], allow_timestamps=True)
        txt_rows: list[int] = []
        txts: list[str] = []
        for i, v in enumerate(raw):
            t = None if _na(v) else (v if isinstance(v, str) else str(v))
            if t is None or not _strip(t):
                report((4, 0), i, TS, _REQUIRED_EMPTY)
            else:
                txt_rows.append(i)
                txts.append(t)
        if txts:
            parsed = pd.to_datetime(pd.Series(txts, dtype="string"), utc=True, errors="coerce",
                                    format="ISO8601")
            ok = parsed.notna().to_numpy()
            early, late, ns = _window_split(parsed.dt.tz_localize(None).to_numpy(), earliest, latest)
            for j, i in enumerate(txt_rows):
                if not ok[j]:
                    report((4, 1), i, TS, _NOT_ISO)
                elif _TZ_SUFFIX.search(txts[j]) is None:
                    report((4, 2), i, TS, _NO_TZ)
                elif early[j]:
                    report((4, 3), i, TS, _before_reason(earliest))
                elif late[j]:
                    report((4, 4), i, TS, _after_reason(limits))
                else:
                    ts_ns[i] = ns[j]

    for i in rows:
        ch = out[CHANNEL][i]
        if ch is not None and ch not in CHANNELS:
            report((5, 0), i, CHANNEL, _UNKNOWN_CHANNEL)
        et = out[EVENT_TYPE][i]
        if et is not None and et not in EVENT_TYPES:
            report((5, 1), i, EVENT_TYPE, "unknown event type")
        if all(out[c][i] is None for c in IDENTIFIER_COLUMNS):
            report((5, 2), i, IDENTIFIERS_FIELD, _NO_IDENTIFIER)

    for k, (name, norm) in enumerate(((EMAIL, normalise_email), (PHONE, hasher.normalise_phone))):
        if name not in present:
            continue
        col = list(out[name])
        for i, v in enumerate(col):
            if v is None:
                continue
            if hasher.is_hashed(v):
                continue
            normed = norm(v)
            if normed is None:
                report((5, 3 + k), i, name, f"not a valid {name}")
                col[i] = None
            else:
                col[i] = hasher.hash(normed)
        out[name] = col

    nums: dict[str, np.ndarray] = {}
    for k, name in enumerate(NUMERIC_COLUMNS):
        if name not in present:
            nums[name] = np.full(n, np.nan)
            continue
        s = df[name]
        dt_ = s.dtype
        if dt_ == np.dtype("float64") or dt_ == np.dtype("int64"):
            num = s.to_numpy(dtype="float64")
            bad = [False] * n
        elif dt_ == np.dtype("bool"):
            num = np.full(n, np.nan)
            bad = [True] * n
        else:
            raw = _values(s)
            try:
                conv = pd.to_numeric(s, errors="coerce")
            except OverflowError:  # an int beyond float range: the vectorised path reports it
                raise _Unsupported from None
            if not (pd.api.types.is_numeric_dtype(conv.dtype) or pd.api.types.is_bool_dtype(conv.dtype)):
                raise _Unsupported
            num = conv.to_numpy(dtype="float64", na_value=np.nan)
            is_obj = dt_ == np.dtype(object)
            bad = [
                (not _na(v) and not (isinstance(v, str) and not _strip(v)) and num[i] != num[i])
                or (is_obj and isinstance(v, bool))
                for i, v in enumerate(raw)
            ]
        vals = np.full(n, np.nan)
        for i in rows:
            x = float(num[i])
            if bad[i]:
                report((6, k, 0), i, name, _MUST_BE_NUMBER)
            elif x != x:
                pass
            elif not np.isfinite(x):
                report((6, k, 1), i, name, _MUST_BE_FINITE)
            else:
                vals[i] = x
        nums[name] = vals

    for i in rows:
        q, p, r, d = (nums[c][i] for c in (QUANTITY, PRICE, RATING, DURATION_S))
        if q <= 0:
            report((7, 0), i, QUANTITY, "must be positive")
        if p < 0:
            report((7, 1), i, PRICE, "must not be negative")
        if r < RATING_MIN or r > RATING_MAX:
            report((7, 2), i, RATING, f"must be between {RATING_MIN} and {RATING_MAX}")
        if d < 0:
            report((7, 3), i, DURATION_S, "must not be negative")
        pos = nums[POSITION][i]
        if pos == pos and (pos < 0 or pos % 1 != 0):
            report((7, 4), i, POSITION, POSITION_RULE)
        et = out[EVENT_TYPE][i]
        if et in ITEM_EVENT_TYPES and out[ITEM_ID][i] is None:
            report((8, 0), i, ITEM_ID, "required for this event type")
        if et in TEXT_EVENT_TYPES and out[TEXT][i] is None and r != r:
            report((8, 1), i, TEXT, "a review or support message needs text or a rating")
        for fld, why in _declaration_problems(et, out[PREFERENCE_KEY][i], out[PREFERENCE_VALUE][i],
                                              out[RETURN_REASON][i]):
            report((8, 3), i, fld, why)

    # empty records (see the vectorised path: only rows with no required value are looked at)
    cand = [i for i in rows if i not in pre_rows and out[EVENT_ID][i] is None and out[CHANNEL][i] is None
            and out[EVENT_TYPE][i] is None and np.isnat(ts_ns[i])]
    empty: set[int] = set()
    if cand:
        blank = np.ones(len(cand), dtype=bool)
        for j in range(df.shape[1]):
            blank &= _blank(df.iloc[cand, j]).to_numpy(dtype=bool)
        empty = {i for i, b in zip(cand, blank.tolist(), strict=True) if b}
        for i in sorted(empty):
            report((8, 2), i, RECORD_FIELD, _EMPTY_RECORD)

    record_rows = empty | {int(i) for i in np.flatnonzero(prep.not_record)}
    if record_rows:
        errs = [e for e in errs if e[2] == RECORD_FIELD or e[1] not in record_rows]
    bad_rows = {e[1] for e in errs}
    good = [i for i in rows if i not in bad_rows]
    ids = [out[EVENT_ID][i] for i in good]
    seen: dict[str | None, int] = {}
    for eid in ids:
        seen[eid] = seen.get(eid, 0) + 1
    dups: list[tuple[int, str]] = []
    dropped: set[int] = set()
    if len(seen) < len(ids):
        def row_of(i: int) -> dict[str, object]:
            return {c: ts_ns[i] if c == TS else nums[c][i] if c in nums else out[c][i] for c in _DIGEST_COLUMNS}

        rep = [(i, eid) for i, eid in zip(good, ids, strict=True) if seen[eid] > 1]
        dups, conflicts = _repeats([i for i, _ in rep], [e for _, e in rep], lambda i: event_digest(row_of(i)))
        for i, j in conflicts:
            report((9,), i, EVENT_ID, _conflict_reason(j))
        dropped = {i for i, _ in dups} | {i for i, _ in conflicts}
    keep = [i for i in good if i not in dropped]

    if errs:
        errs.sort(key=lambda e: (e[0], e[1]))
        errors = _error_frame(df, np.array([e[1] for e in errs], dtype=np.intp), [e[2] for e in errs],
                              [e[3] for e in errs])
    else:
        errors = _empty_errors()
    data: dict[str, object] = {}
    cols = list(CANONICAL_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in present]
    for c in cols:
        if c == TS:
            data[c] = pd.DatetimeIndex(ts_ns[keep]).tz_localize("UTC")
        elif c in NUMERIC_COLUMNS:
            data[c] = nums[c][keep]
        else:
            vals = out[c]
            data[c] = pd.array([vals[i] for i in keep], dtype="string")
    valid = pd.DataFrame(data, index=pd.RangeIndex(len(keep)))
    return ValidationResult(valid=valid, errors=errors, duplicates=tuple((int(i), str(e)) for i, e in dups))


def empty_events() -> pd.DataFrame:
    """A zero-row frame with canonical columns and dtypes."""
    data: dict[str, pd.Series] = {}
    for c in CANONICAL_COLUMNS:
        if c == TS:
            data[c] = pd.Series(dtype="datetime64[ns, UTC]")
        elif c in NUMERIC_COLUMNS:
            data[c] = pd.Series(dtype="float64")
        else:
            data[c] = pd.Series(dtype="string")
    return pd.DataFrame(data)


def read_csv_strict(path: str | os.PathLike[str], **kwargs: Any) -> pd.DataFrame:
    """pandas' read_csv, but a row with more fields than the header is an error naming the file, as is any
    other parse failure.

    Why: given such rows (typically an unquoted comma in a text), pandas silently turns the first field
    into the index, so the text column loses its start; a user's file must fail loudly instead.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, index_col=False, **kwargs)
    except (pd.errors.ParserWarning, pd.errors.ParserError) as exc:
        raise ValueError(f"{os.fspath(path)}: rows with more fields than the header ({str(exc).strip()}); "
                         "quote fields that contain the separator") from exc
    except ValueError as exc:  # empty file, not text, bad options: the file is named, never a bare traceback
        raise ValueError(f"{os.fspath(path)}: cannot parse as CSV ({exc})") from exc


def read_table(path: str | os.PathLike[str], **csv_kwargs: Any) -> pd.DataFrame:
    """A parquet file or directory (by its suffix, any case), else a CSV read by `read_csv_strict`."""
    p = os.fspath(path)
    if p.lower().endswith((".parquet", ".pq")) or os.path.isdir(p):
        return pd.read_parquet(p)
    return read_csv_strict(p, **csv_kwargs)


def read_events(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a canonical events file (CSV or parquet) without validating it."""
    return read_table(path, dtype={c: "string" for c in STRING_COLUMNS}, keep_default_na=True)


def write_events(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write canonical events as parquet (or CSV if the name says so)."""
    p = os.fspath(path)
    if p.endswith(".csv"):
        df.to_csv(p, index=False)
    else:
        df.to_parquet(p, index=False)


# ---------------------------------------------------------------------------------------------
# Registered model names: shared by training (which registers) and serving (which loads)
# ---------------------------------------------------------------------------------------------
RECOMMENDER_MODEL: Final = "mirror-recommender"
CHURN_MODEL: Final = "mirror-churn"
PURCHASE_MODEL: Final = "mirror-purchase"
SENTIMENT_MODEL: Final = "mirror-sentiment"
CHAMPION_ALIAS: Final = "champion"


def champion_uri(model_name: str) -> str:
    """The registry URI serving loads: the version currently aliased `champion`."""
    return f"models:/{model_name}@{CHAMPION_ALIAS}"
