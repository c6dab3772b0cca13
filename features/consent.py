"""Consent purposes and the source of every event: the one place both are defined.

Why here and not in `serving.guard`: the store filters a profile's inputs by consent (feature rows,
online state), training may too, and `features` imports nothing of ours. The guard re-exports these
names; nothing else spells them.

A *source* purpose names where a signal comes from (`behavioral`, `purchase_history`, ...): a signal
may shape an output only when its source is granted, and only while `personalization` is granted.
A *marketing* purpose (`email_marketing`, ...) allows contacting the customer on that channel at all;
it is independent of personalization (a customer may take a newsletter without being profiled).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from features.schema import (
    EMAIL_CLICK,
    EMAIL_OPEN,
    PURCHASE,
    RETURN,
    REVIEW,
    SOCIAL_LIKE,
    SUPPORT_MESSAGE,
    TRY_ON,
)

#: Master switch: revoked means no personal input is used and only non-personal outputs are produced.
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
EMAIL_MARKETING: Final = "email_marketing"  # may be sent marketing email
SMS_MARKETING: Final = "sms_marketing"  # may be sent marketing SMS
SOCIAL_MARKETING: Final = "social_marketing"  # may be addressed on social networks (DMs, retargeting)

#: Where a signal may come from; each needs its own grant (and `personalization`).
SOURCE_PURPOSES: Final[tuple[str, ...]] = (
    BEHAVIORAL, PURCHASE_HISTORY, STORE_VISITS, LOCATION, EMAIL_ENGAGEMENT, SOCIAL, FEEDBACK,
)
#: Outbound channel -> the purpose that allows marketing messages on it.
MARKETING_PURPOSES: Final[Mapping[str, str]] = {
    "email": EMAIL_MARKETING, "sms": SMS_MARKETING, "social": SOCIAL_MARKETING,
}
PURPOSES: Final[tuple[str, ...]] = (
    PERSONALIZATION, DETAILED_PERSONALIZATION, *SOURCE_PURPOSES, *MARKETING_PURPOSES.values(),
)
#: What a careful retailer assumes for a customer who accepted the basic terms: first-party
#: behaviour and purchase history on its own site; nothing from stores, location, social or pixels,
#: and no marketing messages until the customer opts in.
DEFAULT_PURPOSES: Final[frozenset[str]] = frozenset({PERSONALIZATION, BEHAVIORAL, PURCHASE_HISTORY})


def source_of(event_type: str, channel: str) -> str:
    """The consent purpose an observed event depends on, from its type and channel."""
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


def granted_purposes(flags: Mapping[str, bool], defaults: Iterable[str] = DEFAULT_PURPOSES) -> frozenset[str]:
    """The purposes granted: `defaults` overridden by the customer's own choices (purpose -> granted)."""
    granted = set(defaults)
    for purpose, ok in flags.items():
        if not isinstance(ok, bool):
            raise ValueError(f"consent for {purpose!r} must be true or false, got {ok!r}")
        (granted.add if ok else granted.discard)(purpose)
    return frozenset(granted)


def usable_sources(granted: Iterable[str]) -> frozenset[str]:
    """Source purposes whose signals may be used: none without `personalization`."""
    g = frozenset(granted)
    return g & frozenset(SOURCE_PURPOSES) if PERSONALIZATION in g else frozenset()


__all__ = [
    "BEHAVIORAL", "DEFAULT_PURPOSES", "DETAILED_PERSONALIZATION", "EMAIL_ENGAGEMENT", "EMAIL_MARKETING",
    "FEEDBACK", "LOCATION", "MARKETING_PURPOSES", "PERSONALIZATION", "PURCHASE_HISTORY", "PURPOSES",
    "SMS_MARKETING", "SOCIAL", "SOCIAL_MARKETING", "SOURCE_PURPOSES", "STORE_VISITS", "granted_purposes",
    "source_of", "usable_sources",
]
