"""The records a profile store returns and takes: `OnlineProfile` and its entries, `AppendResult`,
`CatalogUpsert`, `ServedList`, and the column names of the decision log and served lists (defined once,
whatever the backend)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd

from features import schema
from features.schema import (
    CHANNEL,
    EMAIL_CLICK,
    PICKUP,
    PROFILE_ID,
    READY_FOR_PICKUP,
    RESERVE,
    SOCIAL_LIKE,
    TRY_ON,
    TS,
    VIEW,
)

#: Item events that show interest (the profile's `recent_views`): the customer looked, tried, liked, clicked.
INTEREST_EVENT_TYPES: tuple[str, ...] = (VIEW, TRY_ON, SOCIAL_LIKE, EMAIL_CLICK)
#: Buy online, pick up in store: the states of an order line (a return at the till is RETURN on "store").
PICKUP_EVENT_TYPES: tuple[str, ...] = (RESERVE, READY_FOR_PICKUP, PICKUP)
#: Order states in which the item waits for the customer at the store (reserved, ready; not yet picked up).
OPEN_PICKUP_STATES: frozenset[str] = frozenset({RESERVE, READY_FOR_PICKUP})

# -- decision log (`record_decision`, `decisions`): every outbound NBA decision, treated and holdout alike, so
# that `mirror report lift` can compare what acting earned against not acting. Column names, defined once.
CAMPAIGN_ID: str = "campaign_id"
ACTION: str = "action"
HOLDOUT: str = "holdout"
#: JSON object of the model versions that served the decision (registered model name -> version).
MODEL_VERSIONS: str = "model_versions"
DECISION_COLUMNS: tuple[str, ...] = (schema.DECISION_ID, PROFILE_ID, CAMPAIGN_ID, ACTION, CHANNEL, HOLDOUT, TS,
                                     MODEL_VERSIONS)

# -- served lists (`record_recommendations`, `recommendations`): every list /recommend and /similar_items
# answered, so that clicks and purchases echoing its `recommendation_id` are attributed to a list, a model
# version, a surface and a position (`mirror report attribution`). Column names, defined once.
SURFACE: str = "surface"
MODEL: str = "model"
MODEL_VERSION: str = "model_version"
#: The list's items in the order shown: an item's position is its index (events echo it as `position`).
ITEM_IDS: str = "item_ids"
RECOMMENDATION_COLUMNS: tuple[str, ...] = (schema.RECOMMENDATION_ID, TS, PROFILE_ID, SURFACE, CHANNEL, MODEL,
                                           MODEL_VERSION, ITEM_IDS)



@dataclass(frozen=True, slots=True)
class ServedList:
    """One list as it was served. Nothing personal but `profile_id` (None: an anonymous visitor), so the
    record goes with the profile on erasure; `recommendation_id` is random and opaque."""

    recommendation_id: str
    ts: dt.datetime
    profile_id: str | None
    surface: str
    channel: str
    model: str
    model_version: str | None
    item_ids: tuple[str, ...]


class ProfileEntry(NamedTuple):
    """One item event of the online state, with where it came from (the guard filters on its source,
    `features.consent.source_of(event_type, channel)`)."""

    item_id: str
    category: str | None
    ts: dt.datetime  # aware, UTC
    channel: str
    event_type: str


#: The entries of `recent_views` (kept so `ViewEntry` callers keep working; construct ProfileEntry).
ViewEntry = ProfileEntry


class ItemEntry(NamedTuple):
    """Deprecated: the store returns ProfileEntry everywhere; kept only for callers that build profiles."""

    item_id: str
    ts: dt.datetime


@dataclass(frozen=True)
class OnlineProfile:
    """What serving needs about a person right now (no raw contact details, identifier *types* only).

    Every entry keeps its channel and event type, and every category count its sources, so nothing
    is presented as coming from where it did not (an in-store try-on is not a web view).
    """

    profile_id: str
    recent_views: tuple[ProfileEntry, ...]  # interest entries (INTEREST_EVENT_TYPES), newest first
    cart_items: tuple[ProfileEntry, ...]  # in the cart now (added, not removed or bought): the latest add
    purchases: tuple[ProfileEntry, ...]  # newest first
    returns: tuple[ProfileEntry, ...]  # newest first
    category_counts: Mapping[str, int]  # category -> events with it, every type and source
    channel_last_seen: Mapping[str, dt.datetime]
    last_negative_ts: dt.datetime | None
    identifiers: tuple[str, ...]  # identifier columns seen, e.g. ("customer_id", "email")
    updated_at: dt.datetime  # time of the latest event
    replenish_days: Mapping[str, float] = field(default_factory=dict)  # item -> own median re-buy interval
    # category -> source purpose -> events (the counts of a category sum to its category_counts)
    category_sources: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    sources: frozenset[str] = frozenset()  # every source purpose in the stored history
    timezone: str | None = None  # the latest non-missing `timezone` of the person's events
    #: time of the latest positive review, rating or message (the model's score, else the rating): tone
    last_positive_ts: dt.datetime | None = None
    #: Declared (zero-party) preferences, key (`schema.PREFERENCE_KEYS`) -> values: the set declared last for
    #: interests and channels, the latest value otherwise; a key declared "none" maps to () (for
    #: `personalization_level`, ("none",): that is a level). Keys never declared are absent.
    declared: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Order lines of buy online, pick up in store: per item its latest state (event_type reserve,
    #: ready_for_pickup or pickup), newest first (`open_pickups`: those still waiting at the store).
    pickups: tuple[ProfileEntry, ...] = ()
    #: item -> the reason (`schema.RETURN_REASONS`) of its latest return that gave one.
    return_reasons: Mapping[str, str] = field(default_factory=dict)
    # when this profile id was last erased (None: never). The id is derived from the person's identifiers, so
    # a person who comes back after an erasure has the same id: model state per profile learned before this
    # time (a recommender's user vector) is about the erased history and must not be used.
    erased_at: dt.datetime | None = None

    @property
    def cart(self) -> tuple[ProfileEntry, ...]:
        return self.cart_items

    @property
    def open_pickups(self) -> tuple[ProfileEntry, ...]:
        """Items reserved or ready for pickup, neither picked up nor returned since."""
        returned: dict[str, dt.datetime] = {}
        for e in self.returns:
            returned[e.item_id] = max(e.ts, returned.get(e.item_id, e.ts))
        return tuple(e for e in self.pickups if e.event_type in OPEN_PICKUP_STATES
                     and not (e.item_id in returned and returned[e.item_id] >= e.ts))

    def declared_values(self, key: str) -> tuple[str, ...]:
        """The values the customer declared for `key` (empty when none or never)."""
        return tuple(self.declared.get(key, ()))


@dataclass(frozen=True)
class AppendResult:
    accepted: int  # new events stored
    duplicates: int  # already stored with the same content (idempotent re-send) or repeated in the batch
    profile_ids: tuple[str, ...]  # profiles the accepted events belong to (after merges)
    rejected: int = 0  # rows that failed validation or whose id is stored with other content (see errors)
    suppressed: int = 0  # events of erased profiles (tombstoned), never stored
    merged: tuple[str, ...] = ()  # profile ids that were merged into another
    errors: tuple[dict[str, Any], ...] = ()
    accepted_ids: tuple[str, ...] = ()  # event ids of the accepted events, in time order


@dataclass(frozen=True)
class CatalogUpsert:
    upserted: int  # rows written (new items and updates)
    errors: pd.DataFrame  # per-row report of the rows left out (CATALOG_ERROR_COLUMNS)


#: Why a row whose event id is stored with other content is refused (its error's field is EVENT_ID).
CONFLICT_REASON = "conflicts with a stored event: same event_id, different content"
#: Rows per parquet row group written by `export_events_to` (the default of every backend).
EXPORT_BATCH = 100_000
