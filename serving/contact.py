"""Contact policy that binds: the store's durable ledger, one slot per decision, the customer's own clock.

The guard's `check_contact` (pure) decides suppression, marketing consent, quiet hours and caps given a
`ContactLedger`; this module supplies the ledger every worker shares (the profile store: durable, atomic
under concurrent requests, surviving restarts) and the decision key that makes a repeated request for
the same decision use no second slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from features.schema import DECLARED_TIMEZONE
from features.store import OnlineProfile, ProfileStore
from serving.guard import ContactCap, ContactLedger


class StoreContactLedger(ContactLedger):
    """`ContactLedger` over the profile store's contact table (`ProfileStore.reserve_contact`)."""

    def __init__(self, store: ProfileStore) -> None:
        self.store = store

    def reserve(self, profile_id: str, channel: str, now: datetime, caps: Sequence[ContactCap], *,
                key: str | None = None) -> bool:
        limits: dict[float, int] = {}
        for cap in caps:  # two caps on one window: the tighter one binds
            limits[cap.window_s] = min(cap.max_contacts, limits.get(cap.window_s, cap.max_contacts))
        return self.store.reserve_contact(profile_id, channel, now, limits, key=key)


def decision_key(campaign: str, time_bucket: int, action: str) -> str:
    """One decision: the same campaign's action in the same decision window (the channel is the
    ledger's own key). A repeat of the request finds it and uses no second slot."""
    return f"{campaign}|{time_bucket}|{action}"


def decision_id(profile_id: str, channel: str, key: str) -> str:
    """An opaque, stable id of one decision on one channel, for the caller to de-duplicate sends."""
    return "d_" + hashlib.blake2b(f"{profile_id}\x1f{channel}\x1f{key}".encode(), digest_size=10).hexdigest()


def customer_timezone(profile: OnlineProfile | None) -> str | None:
    """The customer's own IANA time zone: the one they declared (preference centre), else the one their
    events told (None: unknown, the policy's default applies). A value the system does not know is ignored
    rather than trusted."""
    if profile is None:
        return None
    declared = profile.declared_values(DECLARED_TIMEZONE)
    for tz in (*declared, profile.timezone):
        if not tz:
            continue
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            continue
        return tz
    return None
