"""What personal models and the guard may see of a profile: only the entries whose source is granted.

Why one module: consent must act on the *inputs* of every personal output (the ranking, the next best
action, the scores), not only on the wording. Every caller builds its personal inputs through
`consented_profile`, so an in-store try-on without `store_visits`, or a social like without `social`,
never shapes a list, a message or a score; and `signals` turns the kept entries into the guard's
`Signal`s with their real channel and event type and the catalog's names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime

from features.catalog import Catalog, CatalogItem
from features.consent import FEEDBACK, source_of
from features.store import OnlineProfile, ProfileEntry
from serving.guard import ConsentState, Signal


def entry_source(entry: ProfileEntry) -> str:
    """The consent purpose one stored entry depends on."""
    return source_of(entry.event_type, entry.channel)


def _kept(entries: Iterable[ProfileEntry], sources: frozenset[str]) -> tuple[ProfileEntry, ...]:
    return tuple(e for e in entries if entry_source(e) in sources)


def consented_profile(profile: OnlineProfile | None, consent: ConsentState) -> OnlineProfile | None:
    """The profile as its consent allows it to be used: None without `personalization` (nothing
    personal may be used), else a copy keeping only entries, category counts and sources that the
    customer granted (negative sentiment needs `feedback`)."""
    if profile is None or not consent.personalization:
        return None
    ok = consent.sources
    by_source = {c: {s: n for s, n in srcs.items() if s in ok} for c, srcs in profile.category_sources.items()}
    by_source = {c: srcs for c, srcs in by_source.items() if srcs}
    return dataclasses.replace(
        profile,
        recent_views=_kept(profile.recent_views, ok),
        cart_items=_kept(profile.cart_items, ok),
        purchases=_kept(profile.purchases, ok),
        returns=_kept(profile.returns, ok),
        category_counts={c: sum(srcs.values()) for c, srcs in by_source.items()},
        category_sources=by_source,
        last_negative_ts=profile.last_negative_ts if FEEDBACK in ok else None,
        last_positive_ts=profile.last_positive_ts if FEEDBACK in ok else None,
        sources=profile.sources & ok,
    )


def history_is_consented(profile: OnlineProfile | None, consent: ConsentState) -> bool:
    """Whether every source in the person's stored history is granted: only then may per-person model
    state learned from that history (the recommender's user vector) be used."""
    return profile is not None and consent.personalization and profile.sources <= consent.sources


def item_signal(event_type: str, channel: str, item_id: str | None, catalog: Catalog, *,
                category: str | None = None, ts: datetime | None = None) -> Signal:
    """A guard `Signal` for an item, its name, brand, category and sensitive flag from the catalog."""
    item: CatalogItem | None = catalog.get(item_id) if item_id else None
    attrs = {"brand": item.brand} if item is not None and item.brand else {}
    return Signal(event_type, channel, item_id=item_id, item_name=item.name if item else None,
                  category=(item.category if item is not None and item.category else category),
                  attributes=attrs, ts=ts, sensitive=bool(item.sensitive) if item is not None else False)


def signals(profile: OnlineProfile | None, catalog: Catalog, *, limit: int = 5,
            attrs: Sequence[str] = ("cart_items", "recent_views", "purchases")) -> list[Signal]:
    """The guard's view of what the customer did recently (already consented entries), newest first per
    list, each with its real channel and event type."""
    if profile is None:
        return []
    out = []
    for attr in attrs:
        for e in list(getattr(profile, attr))[:limit]:
            out.append(item_signal(e.event_type, e.channel, e.item_id, catalog, category=e.category, ts=e.ts))
    return out
