"""Synthetic omnichannel retail events with planted, known structure (and the truth to check it by).

Why synthetic: no public data set has identities fragmented across channels, returns, try-ons,
support messages and churn together, with ground truth.  Everything here is vectorised numpy so
that 1,000 to 1,000,000 customers run at the same per-event cost; it is deterministic for a seed.

Planted structure (all recorded in ``SyntheticData.truth``):

* each person prefers 1-3 categories, where most of their sessions happen;
* consumable items are re-bought every ``replenish_days`` (+/- ``replenish_jitter``);
* items come in complement pairs X -> Y: a buyer of X buys Y 1-14 days later with
  probability ``complement_prob``;
* churners fade out over ``fade_days`` before their ``churn_date`` (in the later part of the
  period) and then stop; unhappy persons (more returns, more negative text) churn more often;
* each person has a preferred channel and a time zone (sessions happen in local daytime);
* identities are fragmented: a customer id (when logged in), 1-3 cookies, 1-3 devices, a hashed
  email and phone, a loyalty card; every identifier appears at least once beside the customer id,
  so resolution can link everything, and no identifier is shared between persons except the
  planted shared devices (truth ``shared_devices``), which are always used logged in;
* returns (more for "bad" items and unhappy persons), store try-ons without purchase, email
  opens/clicks, searches, and reviews/support messages whose text and rating follow the
  experience (a return leads to negative text).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from features import catalog, schema
from features.catalog import REPLENISH_DAYS
from features.schema import (
    ADD_TO_CART,
    CANONICAL_COLUMNS,
    CATEGORY,
    CHANNEL,
    CHANNELS,
    COLOR,
    COOKIE_ID,
    CUSTOMER_ID,
    DEVICE_ID,
    EMAIL,
    EMAIL_CLICK,
    EMAIL_OPEN,
    EVENT_ID,
    EVENT_TYPE,
    EVENT_TYPES,
    ITEM_ID,
    LOYALTY_ID,
    NUMERIC_COLUMNS,
    PHONE,
    PRICE,
    PURCHASE,
    QUANTITY,
    QUERY,
    RATING,
    REMOVE_FROM_CART,
    RETURN,
    REVIEW,
    SEARCH,
    SENTIMENT_LABELS,
    SOCIAL_LIKE,
    STORE_ID,
    SUPPORT_MESSAGE,
    TEXT,
    TRY_ON,
    TS,
    VIEW,
    IdentifierHasher,
)

# ---------------------------------------------------------------------------------------------
# Catalogue vocabulary
# ---------------------------------------------------------------------------------------------
#: name -> (product nouns, consumable, sensitive, complement category)
CATEGORY_SPECS: Final[dict[str, tuple[tuple[str, ...], bool, bool, str]]] = {
    "outerwear": (("jacket", "parka", "raincoat", "vest"), False, False, "accessories"),
    "footwear": (("sneakers", "boots", "sandals", "loafers"), False, False, "activewear"),
    "tops": (("t-shirt", "blouse", "sweater", "hoodie"), False, False, "bottoms"),
    "bottoms": (("jeans", "chinos", "shorts", "skirt"), False, False, "tops"),
    "dresses": (("maxi dress", "wrap dress", "shirt dress"), False, False, "accessories"),
    "activewear": (("leggings", "sports bra", "running shorts", "running socks"), False, False, "footwear"),
    "accessories": (("scarf", "belt", "hat", "sunglasses"), False, False, "bags"),
    "bags": (("backpack", "tote", "crossbody bag"), False, False, "accessories"),
    "home": (("candle", "throw blanket", "cushion", "vase"), False, False, "kitchen"),
    "kitchen": (("skillet", "knife set", "mug", "blender"), False, False, "coffee"),
    "coffee": (("espresso beans", "ground coffee", "coffee pods"), True, False, "kitchen"),
    "skincare": (("moisturizer", "cleanser", "serum", "sunscreen"), True, False, "beauty"),
    "beauty": (("lipstick", "mascara", "eyeshadow palette"), False, False, "skincare"),
    "pet": (("dog food", "cat litter", "pet treats"), True, False, "pet"),
    # not flagged: the guard's life-event terms make baby the milder tier (named at category level only)
    "baby": (("diapers", "baby wipes", "infant formula"), True, False, "baby"),
    "health": (("vitamins", "pregnancy test", "allergy relief"), True, True, "health"),
    "intimates": (("bra", "underwear", "lingerie set"), False, True, "intimates"),
    "electronics": (("headphones", "charger", "smartwatch"), False, False, "electronics"),
    "toys": (("puzzle", "building blocks", "plush toy"), False, False, "toys"),
    "outdoor": (("tent", "sleeping bag", "water bottle"), False, False, "outdoor"),
}
LINES: Final[tuple[str, ...]] = (
    "Trail Runner", "Urban", "Classic", "Everyday", "Summit", "Coastal", "Nordic", "Essential",
    "Heritage", "Metro", "Breeze", "Alpine", "Harbor", "Canyon", "Velvet", "Studio",
)
BRANDS: Final[tuple[str, ...]] = ("Northwind", "Aster", "Kestrel", "Lumen", "Oakline", "Brightside", "Juniper", "Mosaic")
COLORS: Final[tuple[str, ...]] = ("black", "white", "navy", "red", "green", "beige", "grey", "blue", "pink")
TIMEZONES: Final[tuple[str, ...]] = (
    "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
    "Europe/London", "Europe/Berlin",
)
TIMEZONE_WEIGHTS: Final[tuple[float, ...]] = (0.3, 0.2, 0.08, 0.17, 0.13, 0.12)
CURRENCY: Final = "USD"
SHOP_URL: Final = "https://shop.example"
#: Where the data start when neither ``start`` nor ``end`` is pinned (the figures in benchmarks/ use it).
DEFAULT_START: Final = "2025-01-01"

# Review / support text: label-specific fragments plus fillers shared by every label, so a
# classifier has to learn the words that carry sentiment, not a template fingerprint.
POSITIVE_PHRASES: Final[tuple[str, ...]] = (
    "love the fit", "great quality", "exactly as described", "fits perfectly", "super comfortable",
    "would buy again", "really happy with it", "the color is gorgeous", "excellent value",
    "arrived quickly and well packed", "my new favourite", "highly recommend", "feels premium",
    "works beautifully", "better than expected",
)
NEGATIVE_PHRASES: Final[tuple[str, ...]] = (
    "arrived damaged", "very disappointed", "poor quality", "fell apart after a week",
    "does not fit at all", "cheap material", "would not recommend", "the color is nothing like the photo",
    "waste of money", "broke on first use", "sending it back", "terrible stitching", "smells odd",
    "stopped working", "refund took forever",
)
NEUTRAL_PHRASES: Final[tuple[str, ...]] = (
    "it's okay", "average", "does the job", "nothing special", "as expected I guess", "fine for the price",
    "decent enough", "not sure yet", "fits as usual", "pretty standard", "mixed feelings about it",
    "it's alright",
)
FILLERS: Final[tuple[str, ...]] = (
    "Ordered it last week.", "Bought it for my sister.", "Second order from this shop.",
    "Picked it up in store.", "Got it on sale.", "Used it a few times now.", "Gift for my partner.", "",
)
SUPPORT_NEGATIVE: Final[tuple[str, ...]] = (
    "my order arrived damaged and I want a refund", "this is the second faulty item, very disappointed",
    "the return label does not work and nobody answers", "still waiting for my refund, not happy",
    "wrong size delivered again, frustrating",
)
SUPPORT_NEUTRAL: Final[tuple[str, ...]] = (
    "how do I change my delivery address", "where is my order", "can I swap the size",
    "do you have this in another color", "what are your store opening hours",
)
SUPPORT_POSITIVE: Final[tuple[str, ...]] = (
    "thanks for the quick help, all sorted", "great service, the exchange was easy",
    "thank you, the replacement arrived and it is perfect", "very helpful staff, thanks",
)

# Truth table names
IDENTITIES: Final = "identities"
PERSONS: Final = "persons"
COMPLEMENTS: Final = "complements"
SENTIMENT: Final = "sentiment"
REPLENISHMENT: Final = "replenishment"
SHARED_DEVICES: Final = "shared_devices"
ITEM_COLORS: Final = "item_colors"  # item_id, color: an attribute the catalog record does not carry
TRUTH_TABLES: Final[tuple[str, ...]] = (
    IDENTITIES, PERSONS, COMPLEMENTS, SENTIMENT, REPLENISHMENT, SHARED_DEVICES, ITEM_COLORS,
)
# Truth tables of the journeys (only with `SyntheticConfig.journeys`)
RETURN_REASON_TRUTH: Final = "return_reasons"  # event_id, person_id, return_reason, size_fit
DECLARED_PREFERENCES: Final = "declared_preferences"  # person_id, preference_key, preference_value
DECISIONS: Final = "decisions"  # the decision log of past NBA decisions (features.store.DECISION_COLUMNS)
UPLIFT: Final = "uplift"  # per decision: the planted effect of acting (see `_plant_decisions`)
JOURNEY_TABLES: Final[tuple[str, ...]] = (RETURN_REASON_TRUTH, DECLARED_PREFERENCES, DECISIONS, UPLIFT)
# columns of truth `uplift`
BASE_RATE: Final = "base_rate"  # P(the planted response) without the message
EFFECT: Final = "effect"  # the planted change of that probability by the message (negative: it harms)
CONVERSION_EFFECT: Final = "conversion_effect"  # expected change of P(any purchase in the window)
REVENUE_EFFECT: Final = "revenue_effect"  # expected change of revenue in the window
RESPONDED: Final = "responded"  # the planted response purchase happened
SIZE_FIT: Final = "size_fit"  # a person's planted fit: "runs_small", "true_to_size", "runs_large"
#: NBA actions the decision log is planted with (names as serving.nba defines them; features cannot import it).
TRIED_ON_OFFER: Final = "tried_on_offer"
WINBACK_OFFER: Final = "winback_offer"
CROSS_SELL: Final = "cross_sell"
PLANTED_ACTIONS: Final[tuple[str, ...]] = (TRIED_ON_OFFER, WINBACK_OFFER, CROSS_SELL)
#: The channel each planted action goes out on.
PLANTED_CHANNELS: Final[dict[str, str]] = {TRIED_ON_OFFER: "sms", WINBACK_OFFER: "email", CROSS_SELL: "email"}

PERSON_ID: Final = "person_id"
IDENTIFIER_TYPE: Final = "identifier_type"
IDENTIFIER_VALUE: Final = "identifier_value"
LABEL: Final = "label"
COMPLEMENT_ITEM_ID: Final = "complement_item_id"

# Independent seeded streams for fields added after the main stream was fixed: drawing them from the
# main generator would shift every later draw, and with it every seed's events and planted truth.
_STOCK_STREAM: Final = 1
_TIMEZONE_STREAM: Final = 2
_JOURNEY_STREAM: Final = 3

_CH = {c: i for i, c in enumerate(CHANNELS)}
_ET = {e: i for i, e in enumerate(EVENT_TYPES)}
_ID_COLS: Final = (CUSTOMER_ID, EMAIL, PHONE, LOYALTY_ID, DEVICE_ID, COOKIE_ID)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, seed and the knobs of the planted structure."""

    customers: int = 1000
    days: int = 90
    seed: int = 0
    start: str | None = None  # first day (UTC); default DEFAULT_START unless `end` is given
    end: str | None = None  # the data end at this date's UTC midnight: start = end - days
    items: int | None = None  # default scales with customers
    categories: int = 20
    churn_rate: float = 0.2
    sessions_per_week: float = 0.9
    purchase_prob: float = 0.3  # per browsing session
    complement_share: float = 0.35  # share of non-consumable items that have a planted complement
    complement_prob: float = 0.7
    replenish_continue_prob: float = 0.9
    replenish_jitter: float = 0.1  # relative standard deviation of the replenishment interval
    return_rate: float = 0.08
    bad_item_share: float = 0.05
    review_prob: float = 0.2
    email_weeks_interval: int = 7
    fade_days: int = 21
    shared_device_rate: float = 0.002  # planted shared devices per customer
    stores: int = 25
    out_of_stock_share: float = 0.03  # items whose catalog record says in_stock = False
    timezone_share: float = 0.6  # web/app events that carry the device's time zone (schema TIMEZONE)
    # journeys (off by default: the events of a seed stay what tests and figures were made with; their own
    # seeded stream, so turning them on adds events and truth and changes nothing else): return reasons,
    # declared preferences, and past NBA decisions with a holdout and planted per-customer effects
    journeys: bool = False
    preference_share: float = 0.3  # persons who declare their preferences in the preference centre
    decision_share: float = 0.6  # eligible persons decided for in each decision wave
    decision_holdout_share: float = 0.3  # decisions held out (nothing sent): the measure of lift
    decision_every_days: int = 14  # days between decision waves (the first one after as many days)
    decision_window_days: int = 7  # planted responses fall in this window after the decision

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError(f"customers must be >= 1, got {self.customers}")
        if self.days < 7:
            raise ValueError(f"days must be >= 7, got {self.days}")
        if not 1 <= self.categories <= 200:
            raise ValueError(f"categories must be in 1..200, got {self.categories}")
        if self.items is not None and self.items < 2 * self.categories:
            raise ValueError(f"items must be >= 2 * categories ({2 * self.categories}), got {self.items}")
        for name in ("churn_rate", "purchase_prob", "complement_share", "complement_prob",
                     "replenish_continue_prob", "return_rate", "bad_item_share", "review_prob",
                     "out_of_stock_share", "timezone_share", "preference_share", "decision_share",
                     "decision_holdout_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.decision_every_days < 1 or not 1 <= self.decision_window_days <= self.decision_every_days:
            raise ValueError("decision_every_days must be >= 1 and decision_window_days in 1..decision_every_days, "
                             f"got {self.decision_every_days} and {self.decision_window_days}")
        if self.start is not None and self.end is not None:
            raise ValueError(f"give start or end, not both (start={self.start!r}, end={self.end!r})")
        if self.end is not None:
            end = _utc_timestamp(self.end, "end")
            if end != end.normalize():
                raise ValueError(f"end must be a date (UTC midnight), got {self.end!r}")
        else:
            _utc_timestamp(DEFAULT_START if self.start is None else self.start, "start")

    @property
    def start_ts(self) -> pd.Timestamp:
        """The first instant of the data (UTC)."""
        if self.end is not None:
            return _utc_timestamp(self.end, "end") - pd.Timedelta(days=self.days)
        return _utc_timestamp(DEFAULT_START if self.start is None else self.start, "start")

    @property
    def end_ts(self) -> pd.Timestamp:
        """The instant the data end (exclusive, UTC)."""
        return self.start_ts + pd.Timedelta(days=self.days)

    @property
    def n_items(self) -> int:
        return self.items if self.items is not None else int(np.clip(self.customers // 4, 200, 50_000))


@dataclass(frozen=True)
class SyntheticData:
    events: pd.DataFrame
    items: pd.DataFrame
    truth: dict[str, pd.DataFrame] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _utc_timestamp(value: str, name: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be a date, got {value!r}") from exc
    if ts is pd.NaT:
        raise ValueError(f"{name} must be a date, got {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _side_rng(cfg: SyntheticConfig, stream: int) -> np.random.Generator:
    """A generator for one added field, seeded by (seed, stream): leaves the main stream untouched."""
    return np.random.default_rng([cfg.seed, stream])


def _scramble(x: np.ndarray, salt: int) -> np.ndarray:
    """A bijection on 40-bit integers, so ids look random but never collide."""
    m = (1 << 40) - 1
    return ((x.astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64(salt)) & np.uint64(m)).astype(np.uint64)


def _ids(prefix: str, x: np.ndarray, salt: int) -> np.ndarray:
    return np.array([f"{prefix}{v:010x}" for v in _scramble(x, salt).tolist()], dtype=object)


def _take_str(values: np.ndarray, codes: np.ndarray) -> pd.Series:
    """values[codes] as a pandas string Series, missing where code < 0 (arrow take: fast at 10M rows)."""
    codes = np.asarray(codes, dtype=np.int64)
    # large_string: what pandas stores, so no per-row cast after the take
    taken = pc.take(pa.array(values, type=pa.large_string()), pa.array(codes, mask=codes < 0))
    return pd.Series(pd.arrays.ArrowStringArray(taken))


def _utc(start: pd.Timestamp, days: np.ndarray) -> pd.Series:
    """Days since ``start`` (float, NaN allowed) as datetime64[ns, UTC]."""
    ns = np.where(np.isnan(days), 0, days * 86_400e9).astype(np.int64) + start.value
    out = pd.Series(ns.view("datetime64[ns]")).dt.tz_localize("UTC")
    return out.where(~np.isnan(days), pd.NaT).astype("datetime64[ns, UTC]")


def _category_names(n: int) -> list[str]:
    names = list(CATEGORY_SPECS)
    return names[:n] if n <= len(names) else names + [f"category_{i:03d}" for i in range(len(names), n)]


def _tz_offsets_hours(start: pd.Timestamp) -> np.ndarray:
    when = start.to_pydatetime().replace(tzinfo=None) if start.tzinfo else start.to_pydatetime()
    return np.array(
        [ZoneInfo(tz).utcoffset(when + dt.timedelta(days=1)).total_seconds() / 3600 for tz in TIMEZONES]
    )


@dataclass
class _Block:
    """Column arrays of one batch of events (internal, mutable while assembling)."""

    person: np.ndarray
    t: np.ndarray  # days since start, float
    etype: np.ndarray
    channel: np.ndarray
    item: np.ndarray  # -1 = none
    session: np.ndarray  # -1 = none; used to share identifiers within a session
    text: np.ndarray | None = None  # object (None = none); after _concat: index into its pool, -1 = none
    rating: np.ndarray | None = None
    query: np.ndarray | None = None  # like text
    label: np.ndarray | None = None  # sentiment label code, -1 none
    shared: np.ndarray | None = None  # planted shared device index, -1 none

    def __len__(self) -> int:
        return len(self.person)


def _block(person, t, etype, channel, item=None, session=None, **kw) -> _Block:  # type: ignore[no-untyped-def]
    n = len(person)
    return _Block(
        person=np.asarray(person, dtype=np.int64),
        t=np.asarray(t, dtype=np.float64),
        etype=np.broadcast_to(np.asarray(etype, dtype=np.int16), (n,)).copy(),
        channel=np.broadcast_to(np.asarray(channel, dtype=np.int16), (n,)).copy(),
        item=np.full(n, -1, np.int64) if item is None else np.asarray(item, dtype=np.int64),
        session=np.full(n, -1, np.int64) if session is None else np.asarray(session, dtype=np.int64),
        **kw,
    )


def _concat(blocks: list[_Block]) -> tuple[_Block, dict[str, np.ndarray]]:
    """One block, plus the pooled values of the text fields (which it holds as int indices into them).

    Why indices: sorting and filtering millions of mostly-empty object arrays is slow; ints are not.
    """
    n_total = sum(len(b) for b in blocks)

    def cat(name: str, fill: object, dtype: object) -> np.ndarray:
        out = np.full(n_total, fill, dtype=dtype)  # blocks without the field keep the fill (no per-block filler)
        start = 0
        for b in blocks:
            v = getattr(b, name)
            if v is not None:
                out[start:start + len(b)] = v
            start += len(b)
        return out

    pools: dict[str, np.ndarray] = {}

    def pooled(name: str) -> np.ndarray:
        parts = [np.asarray(getattr(b, name), dtype=object) for b in blocks if getattr(b, name) is not None]
        pools[name] = np.concatenate(parts) if parts else np.empty(0, dtype=object)
        idx = np.full(n_total, -1, dtype=np.int64)
        start = at = 0
        for b in blocks:
            if getattr(b, name) is not None:
                idx[start:start + len(b)] = np.arange(at, at + len(b))
                at += len(b)
            start += len(b)
        return idx

    block = _Block(
        person=cat("person", 0, np.int64), t=cat("t", 0.0, np.float64), etype=cat("etype", 0, np.int16),
        channel=cat("channel", 0, np.int16), item=cat("item", -1, np.int64), session=cat("session", -1, np.int64),
        text=pooled("text"), rating=cat("rating", np.nan, np.float64), query=pooled("query"),
        label=cat("label", -1, np.int16), shared=cat("shared", -1, np.int64),
    )
    return block, pools


def _subset(b: _Block, mask: np.ndarray) -> _Block:
    return _Block(**{k: (None if v is None else v[mask]) for k, v in b.__dict__.items()})


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------
def _make_items(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Catalogue, planted complement pairs, and per-item (complement, bad, colour) codes.

    ``rng`` draws exactly what it drew before the catalog gained stock, links and currency, so a seed's
    events are unchanged; the new fields come from their own seeded stream (:func:`_side_rng`).
    """
    cats = _category_names(cfg.categories)
    n_items = cfg.n_items
    cat_of = np.sort(np.concatenate([np.arange(cfg.categories), rng.integers(0, cfg.categories, n_items - cfg.categories)]))
    spec = [CATEGORY_SPECS.get(c, (("item",), False, False, c)) for c in cats]
    consumable_cat = np.array([s[1] for s in spec])
    sensitive_cat = np.array([s[2] for s in spec])
    nouns = [s[0] for s in spec]
    noun_pick = rng.integers(0, 1 << 30, n_items)
    line_pick = rng.integers(0, len(LINES), n_items)
    names = [f"{LINES[line_pick[i]]} {nouns[c][noun_pick[i] % len(nouns[c])]}" for i, c in enumerate(cat_of.tolist())]
    consumable = consumable_cat[cat_of]
    replenish = np.where(consumable, rng.choice(np.array([14, 21, 30, 45]), n_items), np.nan)
    price = np.round(np.exp(rng.normal(np.log(np.where(consumable, 18, 55)), 0.5)), 2)
    brand = np.array(BRANDS, dtype=object)[rng.integers(0, len(BRANDS), n_items)]
    color = rng.integers(0, len(COLORS), n_items)
    ids = np.array([f"i{i:06d}" for i in range(n_items)], dtype=object)
    in_stock = _side_rng(cfg, _STOCK_STREAM).random(n_items) >= cfg.out_of_stock_share
    items = pd.DataFrame({
        catalog.ITEM_ID: pd.array(ids, dtype="string"),
        catalog.NAME: pd.array(names, dtype="string"),
        catalog.CATEGORY: pd.array(np.array(cats, dtype=object)[cat_of], dtype="string"),
        catalog.BRAND: pd.array(brand, dtype="string"),
        catalog.PRICE: price.astype(np.float64),
        catalog.CURRENCY: pd.array([CURRENCY] * n_items, dtype="string"),
        catalog.SENSITIVE: sensitive_cat[cat_of].astype(bool),
        catalog.CONSUMABLE: consumable.astype(bool),
        catalog.REPLENISH_DAYS: replenish.astype(np.float64),
        catalog.IN_STOCK: in_stock,
        catalog.URL: pd.array([f"{SHOP_URL}/items/{i}" for i in ids], dtype="string"),
        catalog.IMAGE_URL: pd.array([f"{SHOP_URL}/images/{i}.jpg" for i in ids], dtype="string"),
    })[list(catalog.CATALOG_COLUMNS)]
    # complements: X (non-consumable) -> Y in X's complement category
    cat_index = {c: i for i, c in enumerate(cats)}
    comp_cat = np.array([cat_index.get(s[3], i) for i, s in enumerate(spec)])
    starts = np.searchsorted(cat_of, np.arange(cfg.categories))
    counts = np.bincount(cat_of, minlength=cfg.categories)
    has = (~consumable) & (rng.random(n_items) < cfg.complement_share)
    xs = np.flatnonzero(has)
    ycat = comp_cat[cat_of[xs]]
    ys = starts[ycat] + (rng.random(len(xs)) * counts[ycat]).astype(np.int64)
    keep = ys != xs
    xs, ys = xs[keep], ys[keep]
    complements = pd.DataFrame({ITEM_ID: items[ITEM_ID].to_numpy()[xs], COMPLEMENT_ITEM_ID: items[ITEM_ID].to_numpy()[ys]})
    complements[ITEM_ID] = complements[ITEM_ID].astype("string")
    complements[COMPLEMENT_ITEM_ID] = complements[COMPLEMENT_ITEM_ID].astype("string")
    comp_of = np.full(n_items, -1, np.int64)
    comp_of[xs] = ys
    bad = rng.random(n_items) < cfg.bad_item_share
    return items, complements, np.stack([comp_of, bad.astype(np.int64), color])


def generate(config: SyntheticConfig) -> SyntheticData:
    """Generate events, catalogue and truth for ``config`` (deterministic for ``config.seed``)."""
    return _generate(config, progress=False)


def _generate(cfg: SyntheticConfig, progress: bool) -> SyntheticData:
    rng = np.random.default_rng(cfg.seed)
    bar = tqdm(total=9, desc="synthetic", disable=not progress, unit="step")
    start = cfg.start_ts
    n, days, C = cfg.customers, float(cfg.days), cfg.categories

    # ---- catalogue ------------------------------------------------------------------------
    items, complements, extra = _make_items(cfg, rng)
    comp_of, bad_item, color = extra[0], extra[1].astype(bool), extra[2]
    n_items = len(items)
    cat_of = pd.Categorical(items[CATEGORY].to_numpy(dtype=object), categories=_category_names(C)).codes.astype(np.int64)
    consumable = items[catalog.CONSUMABLE].to_numpy()
    replenish = items[REPLENISH_DAYS].to_numpy()
    price = items[PRICE].to_numpy()
    # popularity within category (Zipf-like); global cdf laid out as c + [0, 1)
    pop = 1.0 / np.power(rng.permutation(n_items) % 50 + 1.0, 0.8)
    cat_tot = np.bincount(cat_of, weights=pop, minlength=C)
    within = np.cumsum(pop) - np.concatenate([[0.0], np.cumsum(cat_tot)[:-1]])[cat_of]
    cdf = cat_of + within / cat_tot[cat_of]
    cdf[np.r_[np.flatnonzero(np.diff(cat_of)), n_items - 1]] = np.arange(C) + 1.0 - 1e-12

    def pick_items(cat: np.ndarray) -> np.ndarray:
        u = cat + rng.random(len(cat)) * (1 - 1e-9)
        return np.minimum(np.searchsorted(cdf, u, side="right"), n_items - 1)

    bar.update()

    # ---- persons ----------------------------------------------------------------------------
    k_pref = rng.choice(np.array([1, 2, 3]), n, p=[0.35, 0.4, 0.25])
    order = np.argsort(rng.random((n, C)), axis=1)[:, :3]
    pref = np.where(np.arange(3)[None, :] < k_pref[:, None], order, -1)
    browse_channels = np.array([_CH["web"], _CH["app"], _CH["store"]])
    pref_channel = browse_channels[rng.choice(3, n, p=[0.45, 0.35, 0.2])]
    tz = rng.choice(len(TIMEZONES), n, p=np.array(TIMEZONE_WEIGHTS) / sum(TIMEZONE_WEIGHTS))
    tz_off = _tz_offsets_hours(start)[tz]
    unhappy = rng.random(n) < 0.25
    p_churn = np.clip(cfg.churn_rate * np.where(unhappy, 2.0, 2.0 / 3.0), 0, 1)
    churned = rng.random(n) < p_churn
    churn_day = np.where(churned, np.floor(rng.uniform(0.55, 0.9, n) * days), np.nan)
    join_day = np.where(rng.random(n) < 0.7, 0.0, np.floor(rng.uniform(0, 0.6, n) * days))
    join_day = np.where(churned, np.minimum(join_day, np.nan_to_num(churn_day) - 14), join_day).clip(0)
    end_day = np.where(churned, churn_day, days)
    fade = float(min(cfg.fade_days, days / 4))
    rate = np.exp(rng.normal(np.log(cfg.sessions_per_week / 7.0), 0.5, n))
    buy_p = np.clip(rng.beta(2, 5, n) * cfg.purchase_prob / (2 / 7), 0, 0.95)
    email_eng = rng.beta(1.5, 3.5, n)
    has_phone = rng.random(n) < 0.7
    has_loyalty = rng.random(n) < 0.6
    n_cookies = rng.integers(1, 4, n)
    n_devices = rng.integers(1, 4, n)
    bar.update()

    def alive(person: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Before the person's end, after joining, thinned linearly over the fade window."""
        e = end_day[person]
        ok = (t < e) & (t >= join_day[person]) & (t < days)
        in_fade = churned[person] & (t >= e - fade)
        keep_p = np.clip((e - t) / fade, 0, 1)
        return ok & (~in_fade | (rng.random(len(t)) < keep_p))

    # ---- sessions -------------------------------------------------------------------------
    span = np.maximum(end_day - join_day, 1.0)
    n_sess = rng.poisson(rate * span) + 1
    s_person = np.repeat(np.arange(n), n_sess)
    first = np.r_[0, np.cumsum(n_sess)[:-1]]
    S = len(s_person)
    s_day = join_day[s_person] + np.floor(rng.random(S) * span[s_person])
    s_day[first] = join_day  # everyone has at least one session, on the day they join
    hour = np.clip(rng.normal(15.0, 3.5, S), 7.0, 22.5)  # local daytime
    s_t = s_day + (hour - tz_off[s_person]) / 24.0
    keep = alive(s_person, s_t)
    keep[first] = True
    s_t[first] = np.clip(s_t[first], join_day, None)
    s_person, s_t = s_person[keep], s_t[keep]
    S = len(s_person)
    s_channel = np.where(rng.random(S) < 0.65, pref_channel[s_person], browse_channels[rng.integers(0, 3, S)])
    n_pref = np.maximum((pref[s_person] >= 0).sum(axis=1), 1)
    in_pref = rng.random(S) < 0.85
    s_cat = np.where(in_pref, pref[s_person, (rng.random(S) * n_pref).astype(np.int64)], rng.integers(0, C, S))
    is_store = s_channel == _CH["store"]
    bar.update()

    # views / try-ons
    n_view = np.where(is_store, 1 + rng.poisson(0.7, S), 1 + rng.poisson(1.2, S))
    v_sess = np.repeat(np.arange(S), n_view)
    v_rank = np.arange(len(v_sess)) - np.repeat(np.cumsum(n_view) - n_view, n_view)
    v_t = s_t[v_sess] + (v_rank + 1) * rng.uniform(0.5, 4.0, len(v_sess)) / 1440.0
    v_item = pick_items(s_cat[v_sess])
    v_type = np.where(is_store[v_sess], _ET[TRY_ON], _ET[VIEW])
    blocks = [_block(s_person[v_sess], v_t, v_type, s_channel[v_sess], v_item, v_sess)]

    # searches at the start of some online sessions
    srch = np.flatnonzero(~is_store & (rng.random(S) < 0.3))
    cats_arr = np.array(_category_names(C), dtype=object)
    q = cats_arr[s_cat[srch]]
    blocks.append(_block(s_person[srch], s_t[srch], _ET[SEARCH], s_channel[srch], None, srch, query=q))

    # carts and purchases: the item is one of the session's viewed items
    sess_first = np.cumsum(n_view) - n_view
    chosen = sess_first + (rng.random(S) * n_view).astype(np.int64)
    buy = rng.random(S) < np.where(is_store, 0.45, 1.0) * buy_p[s_person]
    cart = ~is_store & (buy | (rng.random(S) < 0.25))
    b_t = v_t[sess_first + n_view - 1] + rng.uniform(1, 6, S) / 1440.0
    c_idx = np.flatnonzero(cart)
    blocks.append(_block(s_person[c_idx], b_t[c_idx] - 0.5 / 1440, _ET[ADD_TO_CART], s_channel[c_idx],
                         v_item[chosen[c_idx]], c_idx))
    rm = np.flatnonzero(cart & ~buy & (rng.random(S) < 0.2))
    blocks.append(_block(s_person[rm], b_t[rm], _ET[REMOVE_FROM_CART], s_channel[rm], v_item[chosen[rm]], rm))
    o_idx = np.flatnonzero(buy)
    p_person, p_t, p_item, p_chan, p_sess = s_person[o_idx], b_t[o_idx], v_item[chosen[o_idx]], s_channel[o_idx], o_idx
    bar.update()

    # replenishment of consumables: first organic purchase per (person, item) starts a chain
    cons = consumable[p_item]
    organic_cons = pd.DataFrame({"p": p_person[cons], "i": p_item[cons], "t": p_t[cons], "j": np.flatnonzero(cons)})
    organic_cons = organic_cons.sort_values(["t", "j"], kind="stable")
    dup = organic_cons.duplicated(["p", "i"], keep="first").to_numpy()
    drop_rows = organic_cons["j"].to_numpy()[dup]
    keep_p = np.ones(len(p_person), bool)
    keep_p[drop_rows] = False
    heads = organic_cons.loc[~dup]
    h_p, h_i, h_t = heads["p"].to_numpy(), heads["i"].to_numpy(), heads["t"].to_numpy()
    max_k = int(math.ceil(days / 14)) + 1
    iv = replenish[h_i][:, None] * (1 + cfg.replenish_jitter * rng.standard_normal((len(h_i), max_k)))
    r_t = h_t[:, None] + np.cumsum(np.maximum(iv, 1.0), axis=1)
    cont = np.cumprod(rng.random((len(h_i), max_k)) < cfg.replenish_continue_prob, axis=1).astype(bool)
    r_p = np.broadcast_to(h_p[:, None], r_t.shape)[cont]
    r_i = np.broadcast_to(h_i[:, None], r_t.shape)[cont]
    r_t = r_t[cont]
    ok = alive(r_p, r_t)
    r_p, r_i, r_t = r_p[ok], r_i[ok], r_t[ok]
    r_ch = np.where(pref_channel[r_p] == _CH["store"], _CH["store"], np.where(rng.random(len(r_p)) < 0.5, _CH["web"], _CH["app"]))

    # complements: a buyer of X buys Y 1-14 days later
    has_c = (comp_of[p_item] >= 0) & keep_p
    cx = np.flatnonzero(has_c & (rng.random(len(p_item)) < cfg.complement_prob))
    c_p, c_i = p_person[cx], comp_of[p_item[cx]]
    c_t = p_t[cx] + rng.uniform(1, 14, len(cx))
    ok = alive(c_p, c_t)
    c_p, c_i, c_t = c_p[ok], c_i[ok], c_t[ok]
    c_ch = np.where(rng.random(len(c_p)) < 0.7, pref_channel[c_p], browse_channels[rng.integers(0, 3, len(c_p))])

    # derived purchases are preceded by a view (or try-on) of the item
    d_p, d_i, d_t = np.r_[r_p, c_p], np.r_[r_i, c_i], np.r_[r_t, c_t]
    d_ch = np.r_[r_ch, c_ch].astype(np.int16)
    pre_t = d_t - rng.uniform(1, 10, len(d_t)) / 1440.0
    blocks.append(_block(d_p, pre_t, np.where(d_ch == _CH["store"], _ET[TRY_ON], _ET[VIEW]), d_ch, d_i))

    all_p = np.r_[p_person[keep_p], d_p]
    all_i = np.r_[p_item[keep_p], d_i]
    all_t = np.r_[p_t[keep_p], d_t]
    all_ch = np.r_[p_chan[keep_p], d_ch].astype(np.int16)
    all_sess = np.r_[p_sess[keep_p], np.full(len(d_p), -1)]
    blocks.append(_block(all_p, all_t, _ET[PURCHASE], all_ch, all_i, all_sess))
    bar.update()

    # returns, more for bad items and unhappy persons
    P = len(all_p)
    ret_p = cfg.return_rate * np.where(bad_item[all_i], 5.0, 1.0) * np.where(unhappy[all_p], 2.0, 1.0)
    returned = rng.random(P) < np.clip(ret_p, 0, 0.9)
    ret_t = all_t + rng.uniform(2, 20, P)
    returned &= ret_t < np.minimum(end_day[all_p], days)
    ri = np.flatnonzero(returned)
    ret_ch = np.where(all_ch[ri] == _CH["store"], _CH["store"], np.where(rng.random(len(ri)) < 0.5, _CH["store"], _CH["web"]))
    blocks.append(_block(all_p[ri], ret_t[ri], _ET[RETURN], ret_ch, all_i[ri]))

    # reviews follow the experience
    rev = np.flatnonzero(rng.random(P) < cfg.review_prob * np.where(returned, 1.5, 1.0))
    rev_t = np.where(returned[rev], ret_t[rev], all_t[rev]) + rng.uniform(1, 10, len(rev))
    ok = rev_t < np.minimum(end_day[all_p[rev]], days)
    rev, rev_t = rev[ok], rev_t[ok]
    u = rng.random(len(rev))
    is_bad = bad_item[all_i[rev]] | unhappy[all_p[rev]]
    lab = np.where(returned[rev], np.where(u < 0.9, 0, 1),
                   np.where(is_bad, np.where(u < 0.35, 0, np.where(u < 0.7, 1, 2)),
                            np.where(u < 0.05, 0, np.where(u < 0.25, 1, 2))))
    rating = np.where(lab == 0, rng.integers(1, 3, len(rev)), np.where(lab == 1, 3, rng.integers(4, 6, len(rev))))
    nouns = np.array([s.split(" ", 1)[1] for s in items[catalog.NAME].to_numpy(dtype=object)], dtype=object)
    text = _texts(rng, lab, nouns[all_i[rev]])
    rev_ch = np.where(rng.random(len(rev)) < 0.5, _CH["web"], _CH["app"])
    blocks.append(_block(all_p[rev], rev_t, _ET[REVIEW], rev_ch, all_i[rev], text=text,
                         rating=rating.astype(np.float64), label=lab.astype(np.int16)))

    # support messages: complaints after some returns, plus everyday questions and thanks
    sup_r = ri[rng.random(len(ri)) < 0.5]
    sr_t = ret_t[sup_r] + rng.uniform(0.01, 3, len(sup_r))
    n_q = rng.poisson(0.15 * span / 30.0)
    q_p = np.repeat(np.arange(n), n_q)
    q_t = join_day[q_p] + rng.random(len(q_p)) * span[q_p]
    q_lab = np.where(rng.random(len(q_p)) < 0.7, 1, 2)
    sp_p = np.r_[all_p[sup_r], q_p]
    sp_t = np.r_[sr_t, q_t]
    sp_lab = np.r_[np.zeros(len(sup_r), np.int64), q_lab]
    sp_item = np.r_[all_i[sup_r], np.full(len(q_p), -1)]
    ok = (sp_t < days) & (sp_t < end_day[sp_p]) & (sp_t >= join_day[sp_p])
    sp_p, sp_t, sp_lab, sp_item = sp_p[ok], sp_t[ok], sp_lab[ok], sp_item[ok]
    pools = (SUPPORT_NEGATIVE, SUPPORT_NEUTRAL, SUPPORT_POSITIVE)
    sp_text = np.empty(len(sp_p), dtype=object)
    for k, pool in enumerate(pools):
        m = sp_lab == k
        sp_text[m] = np.array(pool, dtype=object)[rng.integers(0, len(pool), int(m.sum()))]
    sp_ch = np.where(rng.random(len(sp_p)) < 0.6, _CH["chat"], _CH["call_center"])
    blocks.append(_block(sp_p, sp_t, _ET[SUPPORT_MESSAGE], sp_ch, sp_item, text=sp_text, label=sp_lab.astype(np.int16)))
    bar.update()

    # email campaigns: opens and clicks; social likes
    sends = np.arange(2.0, days, cfg.email_weeks_interval)
    e_p = np.repeat(np.arange(n), len(sends))
    e_t = np.tile(sends, n) + (10.0 - tz_off[e_p]) / 24.0 + rng.uniform(0, 0.3, len(e_p))
    opened = (rng.random(len(e_p)) < email_eng[e_p]) & alive(e_p, e_t)
    e_p, e_t = e_p[opened], e_t[opened]
    blocks.append(_block(e_p, e_t, _ET[EMAIL_OPEN], _CH["email"]))
    clk = rng.random(len(e_p)) < 0.3
    blocks.append(_block(e_p[clk], e_t[clk] + rng.uniform(0.5, 20, int(clk.sum())) / 1440, _ET[EMAIL_CLICK], _CH["email"]))
    soc = np.flatnonzero(rng.random(len(v_item)) < 0.03)
    blocks.append(_block(s_person[v_sess[soc]], v_t[soc] + 0.01, _ET[SOCIAL_LIKE], _CH["social"], v_item[soc]))

    # planted shared devices (a family tablet, a store kiosk): each used, logged in, by 5 persons
    n_shared = int(round(cfg.shared_device_rate * n)) if n >= 50 else 0
    if n_shared:
        members = rng.choice(n, size=n_shared * 5, replace=False).astype(np.int64)
        sh_idx = np.repeat(np.arange(n_shared), 5)
        m_p, m_dev = np.repeat(members, 2), np.repeat(sh_idx, 2)
        m_t = join_day[m_p] + rng.random(len(m_p)) * np.maximum(end_day[m_p] - join_day[m_p] - 1, 0.5)
        blocks.append(_block(m_p, m_t, _ET[VIEW], _CH["app"], pick_items(pref[m_p, 0]), shared=m_dev))
    bar.update()

    ev, pools = _concat(blocks)
    order = np.lexsort((ev.etype, ev.person, ev.t))
    inside = (ev.t >= join_day[ev.person]) & (ev.t < end_day[ev.person]) & (ev.t < days)
    ev = _subset(ev, order[inside[order]])  # sort and filter in one pass over the columns
    events, truth_ids, shared = _identifiers(ev, rng, n, has_phone, has_loyalty, n_cookies, n_devices)
    bar.update()

    # ---- assemble ------------------------------------------------------------------------
    N = len(ev)
    seq = pc.utf8_lpad(pc.cast(pa.array(np.arange(N)), pa.string()), 9, "0")
    events[EVENT_ID] = pd.Series(pd.arrays.ArrowStringArray(pc.binary_join_element_wise(f"s{cfg.seed}-", seq, "")))
    events[TS] = _utc(start, ev.t)
    events[CHANNEL] = _take_str(np.array(CHANNELS, dtype=object), ev.channel.astype(np.int64))
    events[EVENT_TYPE] = _take_str(np.array(EVENT_TYPES, dtype=object), ev.etype.astype(np.int64))
    events[ITEM_ID] = _take_str(items[ITEM_ID].to_numpy(dtype=object), ev.item)
    events[CATEGORY] = _take_str(cats_arr, np.where(ev.item >= 0, cat_of[np.maximum(ev.item, 0)], -1))
    is_buy = ev.etype == _ET[PURCHASE]
    is_ret = ev.etype == _ET[RETURN]
    has_price = is_buy | is_ret | (ev.etype == _ET[ADD_TO_CART])
    events[QUANTITY] = np.where(has_price, 1.0, np.nan)
    events[PRICE] = np.where(has_price, price[np.maximum(ev.item, 0)], np.nan)
    events[TEXT] = _take_str(pools["text"], ev.text)
    events[RATING] = ev.rating
    store_of = (_scramble(ev.person, 7) % np.uint64(cfg.stores)).astype(np.int64)
    events[STORE_ID] = _take_str(np.array([f"store-{i:03d}" for i in range(cfg.stores)], dtype=object),
                                 np.where(ev.channel == _CH["store"], store_of, -1))
    events[QUERY] = _take_str(pools["query"], ev.query)
    events = pd.DataFrame({c: events[c] for c in CANONICAL_COLUMNS})
    for c in CANONICAL_COLUMNS:
        if c in NUMERIC_COLUMNS:
            events[c] = events[c].astype("float64")
    tz_col = getattr(schema, "TIMEZONE", None)  # the optional event column, where the schema has it
    if tz_col is not None and tz_col in schema.OPTIONAL_COLUMNS:
        # web/app clients report the device's zone (a share of them), so quiet hours can use the customer's
        carry = np.isin(ev.channel, [_CH["web"], _CH["app"]]) & (
            _side_rng(cfg, _TIMEZONE_STREAM).random(N) < cfg.timezone_share)
        events[tz_col] = _take_str(np.array(TIMEZONES, dtype=object), np.where(carry, tz[ev.person], -1))

    person_ids = np.array([f"person-{i:07d}" for i in range(n)], dtype=object)
    cat_names = cats_arr.tolist()
    lab_rows = np.flatnonzero(ev.label >= 0)
    sentiment = pd.DataFrame({
        EVENT_ID: events[EVENT_ID].iloc[lab_rows].to_numpy(),
        LABEL: pd.array(np.array(SENTIMENT_LABELS, dtype=object)[ev.label[lab_rows]], dtype="string"),
    })
    sentiment[EVENT_ID] = sentiment[EVENT_ID].astype("string")
    truth_ids[PERSON_ID] = pd.array(person_ids[truth_ids.pop("_p").to_numpy()], dtype="string")
    shared[PERSON_ID] = pd.array(person_ids[shared.pop("_p").to_numpy()], dtype="string")
    persons = pd.DataFrame({
        PERSON_ID: pd.array(person_ids, dtype="string"),
        "churned": churned,
        "churn_date": _utc(start, churn_day),
        "join_date": _utc(start, join_day),
        "preferred_categories": [[cat_names[c] for c in r if c >= 0] for r in pref.tolist()],
        "preferred_channel": pd.array(np.array(CHANNELS, dtype=object)[pref_channel], dtype="string"),
        "timezone": pd.array(np.array(TIMEZONES, dtype=object)[tz], dtype="string"),
        "unhappy": unhappy,
        CUSTOMER_ID: pd.array(_customer_ids(n), dtype="string"),
    })
    repl = items.loc[items[catalog.CONSUMABLE], [ITEM_ID, REPLENISH_DAYS]].reset_index(drop=True)
    colors = pd.DataFrame({ITEM_ID: items[ITEM_ID].to_numpy(),
                           COLOR: pd.array(np.array(COLORS, dtype=object)[color], dtype="string")})
    colors[ITEM_ID] = colors[ITEM_ID].astype("string")
    truth = {IDENTITIES: truth_ids, PERSONS: persons, COMPLEMENTS: complements, SENTIMENT: sentiment,
             REPLENISHMENT: repl, SHARED_DEVICES: shared, ITEM_COLORS: colors}
    if cfg.journeys:
        world = _World(cfg, ev, events, items, cat_of, comp_of, bad_item, pref, pref_channel, tz, tz_off, join_day,
                       end_day, person_ids, _profile_ids(truth_ids, n))
        events, journey_truth = _plant_journeys(world)
        truth.update(journey_truth)
    bar.update()
    bar.close()
    return SyntheticData(events=events.reset_index(drop=True), items=items, truth=truth)


def _texts(rng: np.random.Generator, lab: np.ndarray, noun: np.ndarray) -> np.ndarray:
    """Review text: one or two label phrases, the product noun, and an optional shared filler."""
    pools = [np.array(p, dtype=object) for p in (NEGATIVE_PHRASES, NEUTRAL_PHRASES, POSITIVE_PHRASES)]
    m = len(lab)
    a = np.empty(m, dtype=object)
    b = np.empty(m, dtype=object)
    for k, pool in enumerate(pools):
        sel = lab == k
        a[sel] = pool[rng.integers(0, len(pool), int(sel.sum()))]
        b[sel] = pool[rng.integers(0, len(pool), int(sel.sum()))]
    two = rng.random(m) < 0.5
    fill = np.array(FILLERS, dtype=object)[rng.integers(0, len(FILLERS), m)]
    s = pd.Series(a).str.capitalize() + pd.Series(np.where(two, ", " + b, "")) + " - the " + pd.Series(noun) + "."
    s = (pd.Series(fill) + " " + s).str.strip()
    return s.to_numpy(dtype=object)


def _customer_ids(n: int) -> np.ndarray:
    return np.array([f"C{v:010d}" for v in (_scramble(np.arange(n), 11) % np.uint64(10**10)).tolist()], dtype=object)


def _identifiers(ev: _Block, rng: np.random.Generator, n: int, has_phone: np.ndarray,
                 has_loyalty: np.ndarray, n_cookies: np.ndarray, n_devices: np.ndarray,
                 ) -> tuple[dict[str, pd.Series], pd.DataFrame, pd.DataFrame]:
    """Which identifiers each event carries, fixed up so every identifier links to its customer id."""
    N = len(ev)
    p = ev.person
    ch = ev.channel
    et = ev.etype
    # the cookie/device used: one per session, random for events outside a session
    slot_rand = np.where(ev.session >= 0, _scramble(np.maximum(ev.session, 0), 3).astype(np.int64) >> 8,
                         rng.integers(0, 1 << 30, N))
    cookie_slot = slot_rand % n_cookies[p]
    device_slot = slot_rand % n_devices[p]
    web, app, store = ch == _CH["web"], ch == _CH["app"], ch == _CH["store"]
    email_ch, social = ch == _CH["email"], ch == _CH["social"]
    support = (ch == _CH["chat"]) | (ch == _CH["call_center"])
    sess_login = np.where(ev.session >= 0, (_scramble(np.maximum(ev.session, 0), 5) % np.uint64(100)).astype(np.int64),
                          rng.integers(0, 100, N))
    must_login = np.isin(et, [_ET[PURCHASE], _ET[REVIEW]]) | (et == _ET[EMAIL_CLICK])
    logged = must_login | (web & (sess_login < 35)) | (app & (sess_login < 70))

    cust = (logged & (web | app | email_ch)) | (support & (ch == _CH["chat"]))
    cookie = web | (support & (ch == _CH["chat"]) & ~cust)
    device = app | social
    use_loyalty = store & has_loyalty[p]
    use_phone = (store & ~has_loyalty[p] & has_phone[p]) | ((ch == _CH["call_center"]) & has_phone[p])
    use_email = email_ch | (store & ~has_loyalty[p] & ~has_phone[p]) | ((ch == _CH["call_center"]) & ~has_phone[p])

    shared_dev = ev.shared
    on_shared = shared_dev >= 0
    cust |= on_shared
    device &= ~on_shared
    used_sh = np.unique(np.stack([shared_dev[on_shared], p[on_shared]]), axis=1)
    n_shared = int(shared_dev.max()) + 1 if len(shared_dev) else 0
    shared_values = _ids("dvs_", np.arange(max(n_shared, 0)), 13)
    shared_rows = pd.DataFrame({"_p": used_sh[1], IDENTIFIER_TYPE: DEVICE_ID,
                                IDENTIFIER_VALUE: pd.array(shared_values[used_sh[0]], dtype="string")})

    hasher = IdentifierHasher.from_env()
    codes: dict[str, np.ndarray] = {
        CUSTOMER_ID: np.where(cust, p, -1),
        EMAIL: np.where(use_email, p, -1),
        PHONE: np.where(use_phone, p, -1),
        LOYALTY_ID: np.where(use_loyalty, p, -1),
        DEVICE_ID: np.where(device, p * 3 + device_slot, -1),
        COOKIE_ID: np.where(cookie, p * 3 + cookie_slot, -1),
    }
    # fix-up: each identifier must appear at least once beside the customer id
    for col in (EMAIL, PHONE, LOYALTY_ID, DEVICE_ID, COOKIE_ID):
        c = codes[col]
        rows = np.flatnonzero(c >= 0)
        if not len(rows):
            continue
        linked = np.zeros(len(rows), bool)
        linked[:] = codes[CUSTOMER_ID][rows] >= 0
        df = pd.DataFrame({"c": c[rows], "l": linked, "r": rows})
        any_l = df.groupby("c", sort=False)["l"].transform("any").to_numpy()
        firsts = df.loc[~any_l].drop_duplicates("c", keep="first")["r"].to_numpy()
        codes[CUSTOMER_ID][firsts] = p[firsts]

    values = {
        CUSTOMER_ID: _customer_ids(n),
        EMAIL: np.array([hasher.hash(f"person{i}@example.com") for i in range(n)], dtype=object),
        PHONE: np.array([hasher.hash(f"+1555{i:07d}") for i in range(n)], dtype=object),
        LOYALTY_ID: np.array([f"L{v:010d}" for v in (_scramble(np.arange(n), 17) % np.uint64(10**10)).tolist()],
                             dtype=object),
        DEVICE_ID: _ids("dv_", np.arange(3 * n), 19),
        COOKIE_ID: _ids("ck_", np.arange(3 * n), 23),
    }
    out: dict[str, pd.Series] = {}
    truth_parts = []
    for col in _ID_COLS:
        c = codes[col]
        if col == DEVICE_ID and on_shared.any():  # planted shared devices take their own values
            out[col] = _take_str(np.concatenate([values[col], shared_values]),
                                 np.where(on_shared, len(values[col]) + shared_dev, c))
        else:
            out[col] = _take_str(values[col], c)
        used = np.flatnonzero(np.bincount(c[c >= 0], minlength=len(values[col])))  # sorted, no sort
        owner = used // 3 if col in (DEVICE_ID, COOKIE_ID) else used
        truth_parts.append(pd.DataFrame({"_p": owner, IDENTIFIER_TYPE: col,
                                         IDENTIFIER_VALUE: pd.array(values[col][used], dtype="string")}))
    truth = pd.concat(truth_parts, ignore_index=True)
    truth[IDENTIFIER_TYPE] = truth[IDENTIFIER_TYPE].astype("string")
    shared_rows[IDENTIFIER_TYPE] = shared_rows[IDENTIFIER_TYPE].astype("string")
    return out, truth, shared_rows.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# journeys: return reasons, declared preferences, past NBA decisions with planted effects
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _World:
    """What the journeys read of the generated history (arrays indexed by person code or event row)."""

    cfg: SyntheticConfig
    ev: _Block  # the history's events, row-aligned with `events`, sorted by time
    events: pd.DataFrame
    items: pd.DataFrame
    cat_of: np.ndarray
    comp_of: np.ndarray
    bad_item: np.ndarray
    pref: np.ndarray
    pref_channel: np.ndarray
    tz: np.ndarray
    tz_off: np.ndarray
    join_day: np.ndarray
    end_day: np.ndarray
    person_ids: np.ndarray
    profile_ids: np.ndarray  # the profile id identity resolution gives each person


def _profile_ids(truth_ids: pd.DataFrame, n: int) -> np.ndarray:
    """Each person's profile id by the identity rule (`identity.profile_id_for` of the smallest token of the
    person's identifiers: every one of them is linked to the customer id, and no other person shares one)."""
    from features.identity import profile_id_for, token

    tokens = pd.Series([token(t, v) for t, v in zip(truth_ids[IDENTIFIER_TYPE], truth_ids[IDENTIFIER_VALUE],
                                                     strict=True)])
    person = truth_ids[PERSON_ID].str.slice(len("person-")).astype(int).to_numpy()
    low = tokens.groupby(person).min().reindex(range(n))
    return np.array([profile_id_for(t) if isinstance(t, str) else "" for t in low.tolist()], dtype=object)


class _Timeline:
    """Events of some types per person, sorted, for point-in-time questions at many (person, time) pairs."""

    _SCALE: Final = 1e5  # days per person slot: more than any history is long

    def __init__(self, person: np.ndarray, t: np.ndarray, payload: np.ndarray | None = None) -> None:
        key = person * self._SCALE + t
        order = np.argsort(key, kind="stable")
        self.key, self.payload = key[order], None if payload is None else payload[order]

    def count(self, person: np.ndarray, t_from: np.ndarray, t_to: np.ndarray) -> np.ndarray:
        """Events with t_from <= t < t_to, per pair."""
        base = person * self._SCALE
        return np.searchsorted(self.key, base + t_to) - np.searchsorted(self.key, base + np.maximum(t_from, 0.0))

    def last(self, person: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(time, payload) of the latest event before t, per pair; time NaN and payload -1 where none."""
        base = person * self._SCALE
        i = np.searchsorted(self.key, base + t) - 1
        ok = (i >= 0) & (self.key[np.maximum(i, 0)] >= base)
        when = np.where(ok, self.key[np.maximum(i, 0)] - base, np.nan)
        what = np.where(ok, self.payload[np.maximum(i, 0)], -1) if self.payload is not None else np.full(len(t), -1)
        return when, what


def _plant_journeys(w: _World) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The history's events with the journeys added (return reasons on its returns, preference events, the
    planted responses to past decisions), and the journeys' truth tables; one seeded stream of its own."""
    cfg, ev = w.cfg, w.ev
    rng = _side_rng(cfg, _JOURNEY_STREAM)
    n = len(w.person_ids)
    events = w.events.copy()
    truth: dict[str, pd.DataFrame] = {}
    string = events[EVENT_ID].dtype

    # returns with reasons: damaged or not as described for bad items; otherwise mostly the person's fit
    size_fit = rng.choice(3, n, p=[0.3, 0.4, 0.3])  # 0 runs small (returns "too small"), 1 true to size, 2 large
    ri = np.flatnonzero(ev.etype == _ET[RETURN])
    rp = ev.person[ri]
    u = rng.random(len(ri))
    fit_reason = np.where(size_fit[rp] == 0, "too_small", np.where(size_fit[rp] == 2, "too_large", "poor_fit"))
    other = np.array(["not_as_described", "changed_mind", "wrong_item", "other"], dtype=object)[
        rng.integers(0, 4, len(ri))]
    by_fit = np.where(size_fit[rp] == 1, u < 0.15, u < 0.75)
    reason = np.where(w.bad_item[ev.item[ri]], np.where(u < 0.7, "damaged", "not_as_described"),
                      np.where(by_fit, fit_reason, other)).astype(object)
    col = np.full(len(events), None, dtype=object)
    col[ri] = reason
    events[schema.RETURN_REASON] = pd.Series(col, dtype=string)
    fits = np.array(["runs_small", "true_to_size", "runs_large"], dtype=object)
    truth[RETURN_REASON_TRUTH] = pd.DataFrame({
        EVENT_ID: events[EVENT_ID].to_numpy()[ri], PERSON_ID: w.person_ids[rp], schema.RETURN_REASON: reason,
        SIZE_FIT: fits[size_fit[rp]]}).astype("string")

    new: list[dict[str, np.ndarray]] = []  # added events: person, t, etype, channel, item, and text columns

    # declared preferences, all true: one preference-centre save per declaring person
    levels = np.array(schema.PERSONALIZATION_LEVELS, dtype=object)
    level = levels[rng.choice(len(levels), n, p=[0.1, 0.3, 0.6] if len(levels) == 3 else None)]
    who = np.flatnonzero(rng.random(n) < cfg.preference_share)
    t_save = w.join_day[who] + rng.random(len(who)) * np.maximum(w.end_day[who] - w.join_day[who] - 0.5, 0.1)
    cats = np.array(_category_names(cfg.categories), dtype=object)
    keys, values, pp, pt = [], [], [], []
    for j, p in enumerate(who.tolist()):
        declared = [(schema.INTEREST, cats[c]) for c in w.pref[p] if c >= 0]
        declared += [(schema.PREFERRED_CHANNEL, CHANNELS[w.pref_channel[p]]), (schema.DECLARED_TIMEZONE,
                     TIMEZONES[w.tz[p]]), (schema.PERSONALIZATION_LEVEL, level[p])]
        for k, v in declared:
            keys.append(k), values.append(v), pp.append(p), pt.append(t_save[j])
    pp_a = np.array(pp, dtype=np.int64)
    new.append({"person": pp_a, "t": np.array(pt, dtype=float), "etype": np.full(len(pp), _ET[schema.PREFERENCE]),
                "channel": np.where(w.pref_channel[pp_a] == _CH["app"], _CH["app"], _CH["web"]),
                "item": np.full(len(pp), -1), schema.PREFERENCE_KEY: np.array(keys, dtype=object),
                schema.PREFERENCE_VALUE: np.array(values, dtype=object)})
    truth[DECLARED_PREFERENCES] = pd.DataFrame({PERSON_ID: w.person_ids[pp_a], schema.PREFERENCE_KEY: keys,
                                                schema.PREFERENCE_VALUE: values}).astype("string")

    responses, log, effects = _plant_decisions(w, rng)
    new.append(responses)
    truth[DECISIONS], truth[UPLIFT] = log, effects

    # the added events, in the history's columns and dtypes, with their own ids
    add = {k: np.concatenate([part[k] for part in new]) for k in ("person", "t", "etype", "channel", "item")}
    m = len(add["t"])
    frame: dict[str, pd.Series] = {}
    seq = [f"s{cfg.seed}-j{i:08d}" for i in range(m)]
    item_ids = w.items[ITEM_ID].to_numpy(dtype=object)
    price = w.items[PRICE].to_numpy()
    has_item = add["item"] >= 0
    is_buy = add["etype"] == _ET[PURCHASE]
    cust = _customer_ids(n)
    for c in events.columns:
        frame[c] = pd.Series(np.full(m, None, dtype=object), dtype=events[c].dtype)
    frame[EVENT_ID] = pd.Series(seq, dtype=string)
    frame[TS] = _utc(cfg.start_ts, add["t"])
    frame[CHANNEL] = pd.Series(np.array(CHANNELS, dtype=object)[add["channel"]], dtype=string)
    frame[EVENT_TYPE] = pd.Series(np.array(EVENT_TYPES, dtype=object)[add["etype"]], dtype=string)
    frame[CUSTOMER_ID] = pd.Series(cust[add["person"]], dtype=string)  # logged in: the preference centre, checkout
    frame[ITEM_ID] = pd.Series(np.where(has_item, item_ids[np.maximum(add["item"], 0)], None), dtype=string)
    frame[CATEGORY] = pd.Series(np.where(has_item, cats[w.cat_of[np.maximum(add["item"], 0)]], None), dtype=string)
    frame[QUANTITY] = pd.Series(np.where(is_buy, 1.0, np.nan))
    frame[PRICE] = pd.Series(np.where(is_buy, price[np.maximum(add["item"], 0)], np.nan))
    for c in (schema.PREFERENCE_KEY, schema.PREFERENCE_VALUE, schema.DECISION_ID):
        vals = np.concatenate([part.get(c, np.full(len(part["t"]), None, dtype=object)) for part in new])
        frame[c] = pd.Series(vals, dtype=string)
    for c in (schema.DECISION_ID, schema.PREFERENCE_KEY, schema.PREFERENCE_VALUE):
        if c not in events.columns:
            events[c] = pd.Series(np.full(len(events), None, dtype=object), dtype=string)
    added = pd.DataFrame(frame)[list(events.columns)]
    out = pd.concat([events, added], ignore_index=True).sort_values(TS, kind="stable").reset_index(drop=True)
    return out, truth


def _plant_decisions(w: _World, rng: np.random.Generator
                     ) -> tuple[dict[str, np.ndarray], pd.DataFrame, pd.DataFrame]:
    """Past NBA decisions in waves, a share held out, and the planted response to each.

    Every `decision_every_days` the persons alive through the response window who bought before (winback,
    cross-sell) or tried an item on in a store in the last 14 days without buying it (tried-on offer) are
    decided for (`decision_share`), one eligible action drawn at random, held out with
    `decision_holdout_share`. A decision plants a response purchase in the window with probability
    `base_rate` without the message and `base_rate + effect` with it. Both depend on what the customer's
    profile shows at the decision (its features, point in time), so a model can learn them:

    * base rate (who buys anyway): higher for recent (bought in 14 days) and frequent (3+ orders) buyers;
    * winback: +0.20 for the lapsed (no purchase in 30 days), -0.03 for the others;
    * cross-sell: +0.10 for the email-engaged (2+ opens in 6 weeks), +0.04 for recent buyers;
    * tried-on offer: +0.30 (the item they tried on);
    * every action harms a customer who returned something before (-0.15, -0.10, -0.15): a sleeping dog.

    The lift report measures any purchase in the window: `conversion_effect` is the effect on that
    (zero where the history has a purchase in the window anyway), `revenue_effect` the effect times the
    responded item's price.
    """
    cfg, ev = w.cfg, w.ev
    days, window = float(cfg.days), float(cfg.decision_window_days)
    n_items = len(w.items)
    price = w.items[PRICE].to_numpy()
    buys = ev.etype == _ET[PURCHASE]
    purchases = _Timeline(ev.person[buys], ev.t[buys], ev.item[buys])
    returns = _Timeline(ev.person[ev.etype == _ET[RETURN]], ev.t[ev.etype == _ET[RETURN]])
    opens = _Timeline(ev.person[ev.etype == _ET[EMAIL_OPEN]], ev.t[ev.etype == _ET[EMAIL_OPEN]])
    tried = (ev.etype == _ET[TRY_ON]) & (ev.channel == _CH["store"])
    try_ons = _Timeline(ev.person[tried], ev.t[tried], ev.item[tried])
    pair_buys = _Timeline(ev.person[buys] * n_items + ev.item[buys], ev.t[buys])
    starts = np.searchsorted(w.cat_of, np.arange(cfg.categories))
    counts = np.bincount(w.cat_of, minlength=cfg.categories)

    cols: dict[str, list[np.ndarray]] = {k: [] for k in (
        "person", "t", "action", "holdout", "base", "effect", "organic", "item", "responded", "t_resp", "wave")}
    waves = np.arange(float(cfg.decision_every_days), days - window - 1.0 + 1e-9, float(cfg.decision_every_days))
    for k, day in enumerate(waves.tolist()):
        p = np.flatnonzero((w.join_day <= day) & (w.end_day >= day + window + 1.0))
        t = day + (10.0 - w.tz_off[p]) / 24.0 + rng.uniform(0, 0.1, len(p))  # mid-morning, the person's time
        n_orders = purchases.count(p, np.zeros(len(p)), t)
        last_t, last_item = purchases.last(p, t)
        recency = np.where(np.isnan(last_t), np.inf, t - last_t)
        returned = returns.count(p, np.zeros(len(p)), t) >= 1
        engaged = opens.count(p, t - 42.0, t) >= 2
        try_t, try_item = try_ons.last(p, t)
        fresh = ~np.isnan(try_t) & (t - np.nan_to_num(try_t) <= 14.0)
        not_bought = pair_buys.count(p * n_items + np.maximum(try_item, 0), np.nan_to_num(try_t), t) == 0
        elig = np.stack([fresh & not_bought, n_orders >= 1, n_orders >= 1], axis=1)  # PLANTED_ACTIONS order
        chosen = (rng.random(len(p)) < cfg.decision_share) & elig.any(axis=1)
        a = np.argmax(rng.random(elig.shape) * elig, axis=1)
        base = 0.03 + 0.12 * (recency <= 14) + 0.05 * (n_orders >= 3) + 0.10 * (a == 0)
        tau = np.select([a == 0, a == 1], [0.30 - 0.15 * returned,
                                           np.where(recency > 30, 0.20, -0.03) - 0.15 * returned],
                        0.10 * engaged + 0.04 * (recency <= 14) - 0.10 * returned)
        effect = np.clip(base + tau, 0.0, 0.95) - base
        holdout = rng.random(len(p)) < cfg.decision_holdout_share
        responded = rng.random(len(p)) < np.where(holdout, base, base + effect)
        t_resp = t + rng.uniform(0.05, window - 0.05, len(p))
        own_cat = w.pref[p, 0]
        in_cat = starts[own_cat] + (rng.random(len(p)) * counts[own_cat]).astype(np.int64)
        comp = w.comp_of[np.maximum(last_item, 0)]
        item = np.select([a == 0, (a == 2) & (last_item >= 0) & (comp >= 0)], [try_item, comp], in_cat)
        organic = purchases.count(p, t, t + window) > 0
        for key, val in (("person", p), ("t", t), ("action", a), ("holdout", holdout), ("base", base),
                         ("effect", effect), ("organic", organic), ("item", item), ("responded", responded),
                         ("t_resp", t_resp), ("wave", np.full(len(p), k + 1))):
            cols[key].append(val[chosen])
    d = {k: np.concatenate(v) if v else np.empty(0) for k, v in cols.items()}
    d["person"], d["action"], d["item"], d["wave"] = (d[c].astype(np.int64) for c in ("person", "action", "item", "wave"))
    d["holdout"], d["organic"], d["responded"] = (d[c].astype(bool) for c in ("holdout", "organic", "responded"))
    m = len(d["person"])
    order = np.lexsort((d["person"], d["t"]))
    d = {k: v[order] for k, v in d.items()}
    ids = np.array([f"dsyn-{cfg.seed}-{i:07d}" for i in range(m)], dtype=object)
    actions = np.array(PLANTED_ACTIONS, dtype=object)[d["action"]]
    channels = np.array([PLANTED_CHANNELS[a] for a in actions.tolist()], dtype=object)
    from features.store import DECISION_COLUMNS  # the decision log's layout (the store's own table)

    log = pd.DataFrame({
        schema.DECISION_ID: pd.array(ids, dtype="string"), schema.PROFILE_ID: pd.array(w.profile_ids[d["person"]],
                                                                                      dtype="string"),
        "campaign_id": pd.array([f"synthetic-wave-{k}" for k in d["wave"].tolist()], dtype="string"),
        "action": pd.array(actions, dtype="string"), CHANNEL: pd.array(channels, dtype="string"),
        "holdout": d["holdout"], TS: _utc(cfg.start_ts, d["t"]), "model_versions": pd.array([None] * m, dtype="string"),
    })[list(DECISION_COLUMNS)]
    effects = pd.DataFrame({
        schema.DECISION_ID: pd.array(ids, dtype="string"), PERSON_ID: pd.array(w.person_ids[d["person"]], dtype="string"),
        "action": pd.array(actions, dtype="string"), "holdout": d["holdout"], BASE_RATE: d["base"], EFFECT: d["effect"],
        CONVERSION_EFFECT: np.where(d["organic"], 0.0, d["effect"]), REVENUE_EFFECT: d["effect"] * price[d["item"]],
        RESPONDED: d["responded"],
    })
    r = d["responded"]
    echo = r & ~d["holdout"] & (rng.random(m) < 0.6)  # the message's link carries the decision id
    responses = {"person": d["person"][r], "t": d["t_resp"][r], "etype": np.full(int(r.sum()), _ET[PURCHASE]),
                 "channel": np.where(w.pref_channel[d["person"][r]] == _CH["app"], _CH["app"], _CH["web"]),
                 "item": d["item"][r], schema.DECISION_ID: np.where(echo, ids, None)[r].astype(object)}
    return responses, log, effects


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def write(data: SyntheticData, out_dir: Path) -> None:
    """events.parquet, items.parquet and truth/<name>.parquet under ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    data.events.to_parquet(out_dir / "events.parquet", index=False)
    data.items.to_parquet(out_dir / "items.parquet", index=False)
    for name, table in data.truth.items():
        table.to_parquet(out_dir / "truth" / f"{name}.parquet", index=False)


def read(out_dir: Path) -> SyntheticData:
    """Read what :func:`write` wrote."""
    out_dir = Path(out_dir)
    ev_path = out_dir / "events.parquet"
    if not ev_path.is_file():
        raise FileNotFoundError(f"no synthetic data at {out_dir} (missing {ev_path.name})")
    events = pd.read_parquet(ev_path)
    items = pd.read_parquet(out_dir / "items.parquet")
    truth = {p.stem: pd.read_parquet(p) for p in sorted((out_dir / "truth").glob("*.parquet"))}
    return SyntheticData(events=events, items=items, truth=truth)


def generate_to_dir(customers: int, days: int, seed: int, out: Path, *, start: str | None = None,
                    end: str | None = None) -> Path:
    """Generate and write a data set (the CLI's entry point); returns ``out``."""
    config = SyntheticConfig(customers=customers, days=days, seed=seed, start=start, end=end)
    data = _generate(config, progress=True)
    write(data, Path(out))
    return Path(out)


def event_person_ids(data: SyntheticData) -> pd.Series:
    """The true person behind each event (from truth ``identities``), aligned with ``data.events``.

    Customer id decides first (shared-device events always carry one), then the other identifiers.
    """
    ids = data.truth[IDENTITIES]
    out = pd.Series(pd.NA, index=data.events.index, dtype="string")
    for col in _ID_COLS:
        sub = ids.loc[ids[IDENTIFIER_TYPE] == col]
        lookup = pd.Series(sub[PERSON_ID].to_numpy(), index=sub[IDENTIFIER_VALUE].to_numpy())
        need = out.isna() & data.events[col].notna()
        if need.any():
            out[need] = data.events.loc[need, col].map(lookup).astype("string")
    return out
