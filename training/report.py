"""Attribution: what the lists Mirror served earned, per model version and surface.

`mirror report attribution` joins the store's served lists (`SQLiteProfileStore.recommendations`) to the
events that echo their `recommendation_id` (`attributed_events`): a front end sends the id (and the item's
`position`) back on the click, add-to-cart and purchase a list led to. One row per (model, model version,
surface); the definitions, once:

- `lists_served`: lists answered; `items_shown`: items in them (impressions).
- `clicks`: distinct (list, item) pairs with a view or email click echoing the list's id; `ctr` =
  clicks / items_shown.
- `add_to_carts`: distinct (list, item) pairs added to the cart from the list.
- `purchases`: purchase events echoing a list's id (each order line once); `revenue`: their price x
  quantity (quantity 1 when not given, price 0 when not given).
- `conversion_rate`: the share of clicked (list, item) pairs that were bought from the same list.

Events echoing an id that was never served (or served before `since`) are not counted anywhere: an id is
attributed to the list it names, never guessed. Rates are NaN where their denominator is 0.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from features.schema import (
    ADD_TO_CART,
    EMAIL_CLICK,
    EVENT_TYPE,
    ITEM_ID,
    PRICE,
    PURCHASE,
    QUANTITY,
    RECOMMENDATION_ID,
    VIEW,
)
from features.store import ITEM_IDS, MODEL, MODEL_VERSION, SURFACE

LISTS_SERVED: Final = "lists_served"
ITEMS_SHOWN: Final = "items_shown"
CLICKS: Final = "clicks"
CTR: Final = "ctr"
ADD_TO_CARTS: Final = "add_to_carts"
PURCHASES: Final = "purchases"
CONVERSION_RATE: Final = "conversion_rate"
REVENUE: Final = "revenue"
#: What a row is for, and the report's columns in order.
ATTRIBUTION_KEYS: Final[tuple[str, ...]] = (MODEL, MODEL_VERSION, SURFACE)
ATTRIBUTION_COLUMNS: Final[tuple[str, ...]] = (*ATTRIBUTION_KEYS, LISTS_SERVED, ITEMS_SHOWN, CLICKS, CTR,
                                               ADD_TO_CARTS, PURCHASES, CONVERSION_RATE, REVENUE)
#: Event types that count as a click on a listed item.
CLICK_EVENT_TYPES: Final[frozenset[str]] = frozenset({VIEW, EMAIL_CLICK})

_COUNTS: Final = (LISTS_SERVED, ITEMS_SHOWN, CLICKS, ADD_TO_CARTS, PURCHASES)


def attribution_report(served: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, model_version, surface) of `served` (the store's `recommendations()` frame:
    recommendation_id, model, model_version, surface, item_ids) with what the `events` echoing its lists'
    ids earned (see the module doc for each column). Neither frame is modified; rows are sorted by key."""
    for name, frame, cols in (("served", served, (RECOMMENDATION_ID, *ATTRIBUTION_KEYS, ITEM_IDS)),
                              ("events", events, (RECOMMENDATION_ID, EVENT_TYPE, ITEM_ID))):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
    if not len(served):
        return _typed(pd.DataFrame({c: [] for c in ATTRIBUTION_COLUMNS}))
    lists = pd.DataFrame({
        RECOMMENDATION_ID: served[RECOMMENDATION_ID].astype(str).to_numpy(),
        # a model version is text ("3"); a list the fallback served has none: shown as ""
        **{k: served[k].astype(object).where(served[k].notna(), "").astype(str).to_numpy() for k in ATTRIBUTION_KEYS},
        ITEMS_SHOWN: served[ITEM_IDS].map(len).to_numpy(dtype=np.int64),
    }).drop_duplicates(RECOMMENDATION_ID)
    ev = _attributed(events, set(lists[RECOMMENDATION_ID]))
    group = lists.set_index(RECOMMENDATION_ID)[list(ATTRIBUTION_KEYS)]
    keys = list(ATTRIBUTION_KEYS)
    out = lists.groupby(keys).agg(**{LISTS_SERVED: (RECOMMENDATION_ID, "size"), ITEMS_SHOWN: (ITEMS_SHOWN, "sum")})

    def per_group(frame: pd.DataFrame, value: str | None = None) -> pd.Series:
        """Rows of `frame` (or the sum of its `value`) per report row, 0 where none."""
        keyed = frame.join(group, on=RECOMMENDATION_ID)
        counted = keyed.groupby(keys).size() if value is None else keyed.groupby(keys)[value].sum()
        return counted.reindex(out.index, fill_value=0)

    pairs = [RECOMMENDATION_ID, ITEM_ID]
    clicked = ev[ev[EVENT_TYPE].isin(CLICK_EVENT_TYPES)][pairs].drop_duplicates()
    carted = ev[ev[EVENT_TYPE] == ADD_TO_CART][pairs].drop_duplicates()
    bought = ev[ev[EVENT_TYPE] == PURCHASE]
    converted = clicked.merge(bought[pairs].drop_duplicates(), on=pairs)
    out[CLICKS] = per_group(clicked)
    out[ADD_TO_CARTS] = per_group(carted)
    out[PURCHASES] = per_group(bought)
    out[REVENUE] = per_group(bought.assign(**{REVENUE: bought[PRICE] * bought[QUANTITY]}), REVENUE).astype(float)
    shown, clicks = out[ITEMS_SHOWN].astype(float), out[CLICKS].astype(float)
    out[CTR] = (clicks / shown.where(shown > 0)).to_numpy()
    out[CONVERSION_RATE] = (per_group(converted).astype(float) / clicks.where(clicks > 0)).to_numpy()
    return _typed(out.reset_index().sort_values(list(ATTRIBUTION_KEYS), kind="stable").reset_index(drop=True))


def _attributed(events: pd.DataFrame, served_ids: set[str]) -> pd.DataFrame:
    """The events echoing a served list's id: id, type, item, price and quantity (defaults filled)."""
    rid = events[RECOMMENDATION_ID].astype(object)
    keep = rid.notna().to_numpy(dtype=bool) & rid.astype(str).isin(served_ids).to_numpy(dtype=bool)
    sub = events.loc[keep]
    n = len(sub)

    def number(col: str, default: float) -> np.ndarray:
        if col not in sub.columns:
            return np.full(n, default)
        return pd.to_numeric(sub[col], errors="coerce").fillna(default).to_numpy(dtype="float64")

    return pd.DataFrame({
        RECOMMENDATION_ID: sub[RECOMMENDATION_ID].astype(str).to_numpy(),
        EVENT_TYPE: sub[EVENT_TYPE].astype(str).to_numpy(),
        ITEM_ID: sub[ITEM_ID].astype(object).where(sub[ITEM_ID].notna(), None).to_numpy(),
        PRICE: number(PRICE, 0.0),
        QUANTITY: number(QUANTITY, 1.0),
    })


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """ATTRIBUTION_COLUMNS in order: keys as text, counts as integers, rates and revenue as floats."""
    out = frame.reindex(columns=list(ATTRIBUTION_COLUMNS))
    for c in ATTRIBUTION_KEYS:
        out[c] = out[c].astype("string")
    for c in _COUNTS:
        out[c] = out[c].astype("int64")
    for c in (CTR, CONVERSION_RATE, REVENUE):
        out[c] = out[c].astype("float64")
    return out
