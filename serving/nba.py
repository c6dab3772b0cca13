"""Next-best-action: which message (if any) to send a customer, on which channel, and why.

Pure decisions, no I/O. Every action is one `Action` entry in `ACTIONS`: its eligibility and expected
value are written once, as numpy expressions over a table of per-customer features, so the single
customer path (`decide_actions`, for `/next_best_action`) and the batch path (`decide_top_actions`,
for `/scores`) run the same code and cannot drift apart. Both read their inputs from ONE derivation,
`contexts_from_profiles` (store profile + feature row + model scores -> `NBAContext`), and both drop
the actions a caller-supplied contact rule (the guard's suppression, quiet hours) refuses, so `/scores`'
top action is `/next_best_action`'s first action for the same customer, window and campaign.

Two guarantees the channels rely on:
- Consistency: the decision uses the profile and the time bucket `floor(now / window)` (ages are
  measured from the bucket start), never the asking channel, so email, app and web asking within one
  window get the same answer and never contradict each other.
- Holdout: a configurable share of customers, drawn deterministically from a hash of
  (campaign id, profile id), gets `do_nothing` flagged `holdout=True`, so lift can be measured
  against them; each campaign draws its own holdout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import pandas as pd

from features.schema import PROFILE_ID

# ---------------------------------------------------------------------------------------------
# Action names (the service and the guard refer to these)
# ---------------------------------------------------------------------------------------------
CART_REMINDER: Final = "cart_reminder"
REPLENISHMENT_REMINDER: Final = "replenishment_reminder"
CROSS_SELL: Final = "cross_sell"
WINBACK_OFFER: Final = "winback_offer"
SERVICE_RECOVERY: Final = "service_recovery"
LOYALTY_REWARD: Final = "loyalty_reward"
TRIED_ON_OFFER: Final = "tried_on_offer"
POST_PURCHASE_CARE: Final = "post_purchase_care"
DO_NOTHING: Final = "do_nothing"
#: `content` param of post_purchase_care: its two phases (care first, complementary products later), and the
#: guard's template name of the second phase.
CARE_CONTENT: Final = "care"
#: Param of the products an action suggests (cross-sell picks, a purchase's complements): the guard's
#: `SUGGESTED_ITEM_IDS`, named as suggestions, never as something the customer did (`item_ids` are the
#: customer's own: their cart, their order, what they tried on).
SUGGESTED_ITEM_IDS: Final = "suggested_item_ids"
COMPLEMENTS_CONTENT: Final = "complements"
COMPLEMENTS_TEMPLATE: Final = "post_purchase_complements"

# Message tone (the guard's `TONES`): chosen once per decision from recent sentiment across channels.
APOLOGETIC: Final = "apologetic"
NEUTRAL: Final = "neutral"
WARM: Final = "warm"

# ---------------------------------------------------------------------------------------------
# Batch frame columns (input of `decide_top_actions_batch`)
# ---------------------------------------------------------------------------------------------
CHURN_PROBABILITY: Final = "churn_probability"
PURCHASE_PROPENSITY: Final = "purchase_propensity"
EXPECTED_ORDER_VALUE: Final = "expected_order_value"
CART_VALUE: Final = "cart_value"
DAYS_SINCE_LAST_PURCHASE: Final = "days_since_last_purchase"
NEGATIVE_SENTIMENT_RECENT: Final = "negative_sentiment_recent"
RETURNED_RECENTLY: Final = "returned_recently"
REPLENISHMENT_DUE: Final = "replenishment_due"  # value of the items due for replenishment (0 = none)
ORDER_COUNT: Final = "order_count"
LIFETIME_VALUE: Final = "lifetime_value"
HAS_CANDIDATES: Final = "has_candidates"
TRIED_ON_VALUE: Final = "tried_on_value"  # value of the best item tried on and not bought (0 = none)
CARE_DUE: Final = "care_due"  # 1 when a purchase is in its care window
COMPLEMENTS_DUE: Final = "complements_due"  # 1 when a purchase is in its complementary-products window
# Feature-row columns (features.profiles) `contexts_from_profiles` reads besides the profile itself.
FEATURE_ORDER_VALUE: Final = "avg_order_value"
FEATURE_LIFETIME_VALUE: Final = "spend_total"
FEATURE_ORDER_COUNT: Final = "n_orders"
FEATURE_CADENCE: Final = "purchase_cadence_days"
#: Required batch columns; the others default (see `BATCH_DEFAULTS`).
BATCH_REQUIRED: Final[tuple[str, ...]] = (PROFILE_ID, CHURN_PROBABILITY, PURCHASE_PROPENSITY)
BATCH_DEFAULTS: Final[Mapping[str, float]] = {
    EXPECTED_ORDER_VALUE: math.nan,
    CART_VALUE: 0.0,
    DAYS_SINCE_LAST_PURCHASE: math.nan,
    NEGATIVE_SENTIMENT_RECENT: 0.0,
    RETURNED_RECENTLY: 0.0,
    REPLENISHMENT_DUE: 0.0,
    ORDER_COUNT: 0.0,
    LIFETIME_VALUE: 0.0,
    HAS_CANDIDATES: 1.0,
    TRIED_ON_VALUE: 0.0,
    CARE_DUE: 0.0,
    COMPLEMENTS_DUE: 0.0,
}
# Batch output columns.
TOP_ACTION: Final = "top_action"
EXPECTED_VALUE: Final = "expected_value"
HOLDOUT: Final = "holdout"
COUNTERFACTUAL_ACTION: Final = "counterfactual_action"

SECONDS_PER_DAY: Final = 86_400.0

Instant = datetime | float | int


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NBAConfig:
    """Economics and windows of the decision. Defaults are deliberately conservative retail figures;
    retailers override them from configuration."""

    margin: float = 0.30  # gross margin on revenue an action brings in
    contact_cost: float = 0.05  # cost of sending one message (email/SMS/push blended)
    default_order_value: float = 50.0  # when neither the model nor the history gives one
    # cart reminder: EV = uplift * propensity * cart value * margin - contact cost
    cart_reminder_uplift: float = 0.15
    # replenishment: EV = uplift * propensity * due value * margin - contact cost
    replenishment_uplift: float = 0.20
    # cross-sell: EV = acceptance * propensity * order value * margin - contact cost
    cross_sell_acceptance: float = 0.05
    cross_sell_min_orders: int = 1
    # winback: EV = churn * customer value * acceptance - offer cost - contact cost,
    # customer value = order value * orders saved * margin
    winback_min_churn: float = 0.30
    winback_min_days: float = 30.0
    winback_acceptance: float = 0.10
    winback_orders_saved: float = 3.0
    winback_offer_cost: float = 1.0
    winback_discount_pct: int = 15
    # service recovery after a negative review/support message or a return within the window:
    # EV = churn * customer value * save rate + goodwill - cost; always outranks any sales action.
    recovery_days: float = 14.0
    recovery_save_rate: float = 0.30
    recovery_goodwill: float = 2.0
    recovery_cost: float = 0.50
    # loyalty reward: EV = uplift * propensity * order value * margin - reward cost
    loyalty_min_orders: int = 5
    loyalty_max_churn: float = 0.30
    loyalty_uplift: float = 0.10
    loyalty_reward_cost: float = 0.50
    loyalty_points: int = 100
    # decision window (consistency across channels) and holdout
    window_s: float = 3600.0
    holdout_share: float = 0.05
    max_message_items: int = 3
    # replenishment: an item is due from this fraction of its re-buy interval until this multiple of it
    replenish_due_from: float = 0.9
    replenish_due_until: float = 3.0
    # tried on in a store, not bought: an offer on that item from `tried_on_wait_days` after the try-on
    # (time to buy it anyway) until `tried_on_max_days`; EV = acceptance * propensity * value * margin - cost
    tried_on_wait_days: float = 3.0
    tried_on_max_days: float = 30.0
    tried_on_acceptance: float = 0.08
    tried_on_discount_pct: int = 10
    tried_on_offer_cost: float = 0.50
    # after a purchase: care and how-to content for `care_days` (EV: goodwill - contact cost), then
    # complementary products from max(complements_min_days, complements_cadence_share * the customer's
    # own purchase cadence) for `complements_window_days` (EV as cross-sell, with `complements_acceptance`)
    care_days: float = 7.0
    care_goodwill: float = 0.30
    complements_min_days: float = 7.0
    complements_cadence_share: float = 0.5
    complements_window_days: float = 14.0
    # EV of the complements phase as cross-sell's, with this acceptance: a product that completes a fresh
    # purchase, at the customer's own pace, is taken up more often than a generic pick (so it leads)
    complements_acceptance: float = 0.08
    # tone: sentiment this recent sets it (the latest of negative and positive wins)
    tone_days: float = 14.0
    #: Channel preference when the customer's own preferred channel is not reachable for an action.
    channel_priority: tuple[str, ...] = (
        "email",
        "app",
        "sms",
        "web",
        "chat",
        "social",
        "call_center",
        "store",
    )


# ---------------------------------------------------------------------------------------------
# Context (plain data the service fills from the profile store and the models)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemValue:
    """An item in the cart or due for replenishment, with its value (price x quantity)."""

    item_id: str
    value: float = 0.0
    category: str | None = None


@dataclass(frozen=True)
class CandidateItem:
    """A recommender candidate for cross-sell."""

    item_id: str
    score: float = 0.0
    category: str | None = None


@dataclass(frozen=True)
class NBAContext:
    """Everything a decision may depend on. `channel` (the asker) is recorded, never decided on."""

    profile_id: str
    now: Instant
    channel: str | None = None
    campaign_id: str = "default"
    cart: tuple[ItemValue, ...] = ()
    replenishment_due: tuple[ItemValue, ...] = ()
    candidate_items: tuple[CandidateItem, ...] = ()
    last_purchase_ts: Instant | None = None
    #: Used only when `last_purchase_ts` is unknown (ages from timestamps respect the time bucket).
    days_since_last_purchase: float | None = None
    last_negative_sentiment_ts: Instant | None = None
    last_return_ts: Instant | None = None
    lifetime_value: float = 0.0
    order_count: int = 0
    reachable_channels: tuple[str, ...] = ()
    preferred_channel: str | None = None
    churn_probability: float = 0.0
    purchase_propensity: float = 0.0
    expected_order_value: float | None = None
    #: Whether cross-sell has candidates; None means "whether `candidate_items` is non-empty". Set by
    #: `contexts_from_profiles` (the recommender always has candidates: it falls back to popular items),
    #: so a decision never depends on a recommender call the batch path does not make.
    has_candidates: bool | None = None
    last_positive_sentiment_ts: Instant | None = None
    #: Items tried on in a store, not bought, reserved or returned since, inside the offer window (best first).
    tried_on: tuple[ItemValue, ...] = ()
    #: The latest purchase (not returned) in its care window, and the one in its complements window.
    care_item: ItemValue | None = None
    complements_item: ItemValue | None = None
    #: Complementary products of `complements_item` (the recommender's; the single-customer path fills it).
    complement_items: tuple[CandidateItem, ...] = ()
    #: Channels the customer declared they prefer (preference centre), first choice first.
    declared_channels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScoredAction:
    name: str
    expected_value: float
    channel: str | None
    params: Mapping[str, object] = field(default_factory=dict)
    holdout: bool = False


@dataclass(frozen=True)
class NBADecision:
    """Actions ranked best first; `actions[0]` is what to do. `counterfactual` is the action a held-out
    customer would have got (for lift analysis), None otherwise."""

    profile_id: str
    campaign_id: str
    time_bucket: int
    actions: tuple[ScoredAction, ...]
    holdout: bool = False
    counterfactual: str | None = None
    #: One tone for every message of the decision (every channel asking in the window gets the same).
    tone: str = NEUTRAL

    @property
    def top(self) -> ScoredAction:
        return self.actions[0]


# ---------------------------------------------------------------------------------------------
# The action registry: ONE entry per action
# ---------------------------------------------------------------------------------------------
Features = Mapping[str, np.ndarray]
Vec = Callable[[Features, NBAConfig], np.ndarray]
Params = Callable[[NBAContext, NBAConfig], dict[str, object]]


@dataclass(frozen=True)
class Action:
    """One action. `eligible` and `value` are vectorised over `Features` (1-d arrays, one entry per
    customer); `priority` ranks above value (service recovery outranks any sale); `sales` actions are
    suppressed while a customer is in recovery."""

    name: str
    eligible: Vec
    value: Vec
    channels: tuple[str, ...]
    params: Params
    priority: int = 0
    sales: bool = False


def _order_value(f: Features, c: NBAConfig) -> np.ndarray:
    """Model's expected order value, else average historical order, else the configured default."""
    hist = np.divide(
        f["lifetime_value"],
        f["order_count"],
        out=np.full_like(f["lifetime_value"], np.nan),
        where=f["order_count"] > 0,
    )
    v = np.where(np.isfinite(f["order_value"]) & (f["order_value"] > 0), f["order_value"], hist)
    return np.where(np.isfinite(v) & (v > 0), v, c.default_order_value)


def _customer_value(f: Features, c: NBAConfig) -> np.ndarray:
    return _order_value(f, c) * c.winback_orders_saved * c.margin


def _item_params(items: tuple[ItemValue, ...] | tuple[CandidateItem, ...], c: NBAConfig) -> dict[str, object]:
    top = items[: c.max_message_items]
    return {
        "item_ids": [i.item_id for i in top],
        "categories": sorted({i.category for i in top if i.category}),
    }


def _cart_params(ctx: NBAContext, c: NBAConfig) -> dict[str, object]:
    return _item_params(tuple(sorted(ctx.cart, key=lambda i: (-i.value, i.item_id))), c)


def _replenish_params(ctx: NBAContext, c: NBAConfig) -> dict[str, object]:
    return _item_params(tuple(sorted(ctx.replenishment_due, key=lambda i: (-i.value, i.item_id))), c)


def _suggestion_params(items: tuple[CandidateItem, ...], c: NBAConfig) -> dict[str, object]:
    """The top products an action suggests, best first, and their categories."""
    top = items[: c.max_message_items]
    return {SUGGESTED_ITEM_IDS: [i.item_id for i in top], "categories": sorted({i.category for i in top if i.category})}


def _cross_sell_params(ctx: NBAContext, c: NBAConfig) -> dict[str, object]:
    """The recommender's picks (not in the cart) as suggestions."""
    cart_ids = {i.item_id for i in ctx.cart}
    cands = tuple(
        i
        for i in sorted(ctx.candidate_items, key=lambda i: (-i.score, i.item_id))
        if i.item_id not in cart_ids
    )
    return _suggestion_params(cands, c)


def _recovery_params(ctx: NBAContext, c: NBAConfig) -> dict[str, object]:
    ref = _bucket_start(ctx.now, c)
    reasons = [
        name
        for name, ts in (
            ("negative_sentiment", ctx.last_negative_sentiment_ts),
            ("return", ctx.last_return_ts),
        )
        if _age_days(ts, ref) <= c.recovery_days
    ]
    return {"reasons": reasons}


def _tried_on_params(ctx: NBAContext, c: NBAConfig) -> dict[str, object]:
    """The one item tried on and an offer on it: never where, when or in which size it was tried."""
    return {**_item_params(ctx.tried_on[:1], c), "discount_pct": c.tried_on_discount_pct}


def _care_params(ctx: NBAContext, c: NBAConfig) -> dict[str, object]:
    """Care content for the purchase in its care window (`item_ids`: the customer's own order), else the
    complements of the one in its window (`suggested_item_ids`: products to go with it, not something the
    customer did; `categories` holds the purchase's, which the message's wording may name)."""
    if ctx.care_item is not None:
        return {**_item_params((ctx.care_item,), c), "content": CARE_CONTENT}
    bought = ctx.complements_item
    cands = tuple(sorted(ctx.complement_items, key=lambda i: (-i.score, i.item_id)))[: c.max_message_items]
    cats = sorted({i.category for i in (bought, *cands) if i is not None and i.category})
    return {SUGGESTED_ITEM_IDS: [i.item_id for i in cands], "categories": cats, "content": COMPLEMENTS_CONTENT}


def _zero(f: Features, c: NBAConfig) -> np.ndarray:
    return np.zeros_like(f["churn"])


ACTIONS: Final[tuple[Action, ...]] = (
    Action(
        name=SERVICE_RECOVERY,
        eligible=lambda f, c: f["recovery"] > 0,
        value=lambda f, c: (
            f["churn"] * _customer_value(f, c) * c.recovery_save_rate + c.recovery_goodwill - c.recovery_cost
        ),
        channels=("email", "chat", "call_center", "sms", "app"),
        params=_recovery_params,
        priority=1,
    ),
    Action(
        name=CART_REMINDER,
        eligible=lambda f, c: f["cart_value"] > 0,
        value=lambda f, c: (
            c.cart_reminder_uplift * f["propensity"] * f["cart_value"] * c.margin - c.contact_cost
        ),
        channels=("email", "app", "sms", "web"),
        params=_cart_params,
        sales=True,
    ),
    Action(
        name=REPLENISHMENT_REMINDER,
        eligible=lambda f, c: f["replenish_value"] > 0,
        value=lambda f, c: (
            c.replenishment_uplift * f["propensity"] * f["replenish_value"] * c.margin - c.contact_cost
        ),
        channels=("email", "app", "sms", "web"),
        params=_replenish_params,
        sales=True,
    ),
    Action(
        name=CROSS_SELL,
        eligible=lambda f, c: (f["has_candidates"] > 0) & (f["order_count"] >= c.cross_sell_min_orders),
        value=lambda f, c: (
            c.cross_sell_acceptance * f["propensity"] * _order_value(f, c) * c.margin - c.contact_cost
        ),
        channels=("email", "app", "web", "social"),
        params=_cross_sell_params,
        sales=True,
    ),
    Action(
        name=WINBACK_OFFER,
        eligible=lambda f, c: (
            (f["churn"] >= c.winback_min_churn)
            & (f["days_since"] >= c.winback_min_days)
            & (f["order_count"] >= 1)
        ),
        value=lambda f, c: (
            f["churn"] * _customer_value(f, c) * c.winback_acceptance - c.winback_offer_cost - c.contact_cost
        ),
        channels=("email", "sms", "app"),
        params=lambda ctx, c: {"discount_pct": c.winback_discount_pct},
    ),
    Action(
        name=LOYALTY_REWARD,
        eligible=lambda f, c: (f["order_count"] >= c.loyalty_min_orders) & (f["churn"] < c.loyalty_max_churn),
        value=lambda f, c: (
            c.loyalty_uplift * f["propensity"] * _order_value(f, c) * c.margin - c.loyalty_reward_cost
        ),
        channels=("app", "email", "sms"),
        params=lambda ctx, c: {"points": c.loyalty_points},
    ),
    Action(
        name=TRIED_ON_OFFER,
        eligible=lambda f, c: f["tried_value"] > 0,
        value=lambda f, c: (
            c.tried_on_acceptance * f["propensity"] * f["tried_value"] * c.margin - c.tried_on_offer_cost
            - c.contact_cost
        ),
        channels=("app", "email", "web", "sms"),
        params=_tried_on_params,
        sales=True,
    ),
    Action(
        name=POST_PURCHASE_CARE,
        # care content is service (allowed in recovery); the complements phase is a sale (not in recovery)
        eligible=lambda f, c: (f["care_due"] > 0) | ((f["complements_due"] > 0) & (f["recovery"] <= 0)),
        value=lambda f, c: np.where(
            f["care_due"] > 0, c.care_goodwill - c.contact_cost,
            c.complements_acceptance * f["propensity"] * _order_value(f, c) * c.margin - c.contact_cost),
        channels=("email", "app", "web"),
        params=_care_params,
    ),
)
ACTION_NAMES: Final[tuple[str, ...]] = tuple(a.name for a in ACTIONS) + (DO_NOTHING,)
#: The channels each action may be offered on (a request on another channel is not offered it).
ACTION_CHANNELS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({a.name: a.channels for a in ACTIONS})
ACTION_BY_NAME: Final[Mapping[str, Action]] = MappingProxyType({a.name: a for a in ACTIONS})


# ---------------------------------------------------------------------------------------------
# Time and hashing helpers
# ---------------------------------------------------------------------------------------------
def to_epoch(t: Instant) -> float:
    """Seconds since the epoch; naive datetimes are taken as UTC (hot path: no pandas per call)."""
    if isinstance(t, datetime):
        return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()
    return float(t)


def time_bucket(now: Instant, window_s: float) -> int:
    """The decision window `now` falls in: floor(now / window)."""
    return math.floor(to_epoch(now) / window_s)


def _bucket_start(now: Instant, c: NBAConfig) -> float:
    return time_bucket(now, c.window_s) * c.window_s


def _age_days(ts: Instant | None, ref: float) -> float:
    """Days from `ts` to the reference time; events after it count as age 0; unknown is +inf."""
    if ts is None:
        return math.inf
    return max(0.0, ref - to_epoch(ts)) / SECONDS_PER_DAY


def holdout_draw(campaign_id: str, profile_id: str) -> float:
    """A uniform number in [0, 1) fixed per (campaign, profile): the same customer is always in or out of
    one campaign's holdout, and campaigns draw independently."""
    digest = hashlib.blake2b(f"{campaign_id}\x1f{profile_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def is_holdout(campaign_id: str, profile_id: str, share: float) -> bool:
    return holdout_draw(campaign_id, profile_id) < share


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------
_FEATURE_KEYS: Final = (
    "churn", "propensity", "order_value", "cart_value", "replenish_value", "days_since", "recovery",
    "order_count", "lifetime_value", "has_candidates", "tried_value", "care_due", "complements_due",
)


def _feature_row(ctx: NBAContext, c: NBAConfig, ref: float) -> tuple[float, ...]:
    """The numbers one decision reads from a context (`ref`: its bucket start), in `_FEATURE_KEYS` order."""
    if ctx.last_purchase_ts is not None:
        days_since = _age_days(ctx.last_purchase_ts, ref)
    elif ctx.days_since_last_purchase is not None:
        days_since = float(ctx.days_since_last_purchase)
    else:
        days_since = math.nan
    recovery = min(_age_days(ctx.last_negative_sentiment_ts, ref), _age_days(ctx.last_return_ts, ref))
    eov = ctx.expected_order_value
    has_candidates = ctx.has_candidates if ctx.has_candidates is not None else len(ctx.candidate_items) > 0
    return (
        float(ctx.churn_probability),
        float(ctx.purchase_propensity),
        math.nan if eov is None else float(eov),
        float(sum(max(0.0, i.value) for i in ctx.cart)),
        float(sum(max(0.0, i.value) for i in ctx.replenishment_due)),
        days_since,
        float(recovery <= c.recovery_days),
        float(ctx.order_count),
        float(ctx.lifetime_value),
        float(bool(has_candidates)),
        max((max(0.0, i.value) for i in ctx.tried_on), default=0.0),
        float(ctx.care_item is not None),
        float(ctx.complements_item is not None),
    )


def tone_of(ctx: NBAContext, config: NBAConfig = NBAConfig()) -> str:
    """The tone of a decision's messages, from sentiment on any channel (reviews, chat, calls): apologetic
    after a complaint or a poor rating, warm after praise (the more recent wins) within `tone_days`,
    measured from the decision window's start like every other age, so it never depends on the asker."""
    ref = _bucket_start(ctx.now, config)
    neg = _age_days(ctx.last_negative_sentiment_ts, ref)
    pos = _age_days(ctx.last_positive_sentiment_ts, ref)
    if neg <= config.tone_days and neg <= pos:
        return APOLOGETIC
    if pos <= config.tone_days:
        return WARM
    return NEUTRAL


def _features_from_contexts(ctxs: Sequence[NBAContext], c: NBAConfig) -> dict[str, np.ndarray]:
    """Feature table (one entry per context) for `_evaluate`: the same code for one customer or 10,000."""
    refs: dict[Any, float] = {}  # bucket start per distinct `now` (a batch shares one)
    rows = []
    for ctx in ctxs:
        ref = refs.get(ctx.now)
        if ref is None:
            ref = refs[ctx.now] = _bucket_start(ctx.now, c)
        rows.append(_feature_row(ctx, c, ref))
    table = np.array(rows, dtype=float).reshape(len(ctxs), len(_FEATURE_KEYS))
    return {k: np.ascontiguousarray(table[:, j]) for j, k in enumerate(_FEATURE_KEYS)}


def _evaluate(f: Features, c: NBAConfig) -> tuple[np.ndarray, np.ndarray]:
    """(eligible, value) matrices of shape (n_actions, n_customers); sales actions are off in recovery."""
    recovery = f["recovery"] > 0
    elig = np.empty((len(ACTIONS), len(f["churn"])), dtype=bool)
    val = np.empty(elig.shape, dtype=float)
    for i, a in enumerate(ACTIONS):
        e = np.asarray(a.eligible(f, c), dtype=bool)
        elig[i] = e & ~recovery if a.sales else e
        val[i] = a.value(f, c)
    val = np.where(np.isfinite(val), val, -np.inf)
    return elig, val


def choose_channel(action: Action, ctx: NBAContext, c: NBAConfig) -> str | None:
    """The customer's best reachable channel for the action, independent of who asked: their preferred
    channel when reachable and suitable, else the first suitable reachable one by the action's and
    then the configured priority, else the action's default channel."""
    for ch in ctx.declared_channels:  # what the customer told us comes first
        if ch in action.channels:
            return ch
    reachable = set(ctx.reachable_channels)
    if ctx.preferred_channel in reachable and ctx.preferred_channel in action.channels:
        return ctx.preferred_channel
    for ch in action.channels:
        if ch in reachable:
            return ch
    return action.channels[0] if action.channels else None


def _rank_key(priority: int, ev: float, index: int) -> tuple[int, int, float, int]:
    """Worth doing (EV > 0) first by priority then value; then do_nothing; then the rest by value."""
    if index == len(ACTIONS):  # do_nothing
        return (1, 0, 0.0, index)
    if ev > 0:
        return (0, -priority, -ev, index)
    return (2, 0, -ev, index)


def decide_actions(ctx: NBAContext, config: NBAConfig = NBAConfig()) -> NBADecision:
    """Rank the eligible actions for one customer. Depends on the profile, the scores and the time bucket,
    never on `ctx.channel`; held-out customers get only `do_nothing` flagged holdout."""
    c = config
    bucket = time_bucket(ctx.now, c.window_s)
    f = _features_from_contexts((ctx,), c)
    elig, val = _evaluate(f, c)
    scored: list[tuple[tuple[int, int, float, int], ScoredAction]] = []
    for i, a in enumerate(ACTIONS):
        if elig[i, 0]:
            ev = float(val[i, 0])
            sa = ScoredAction(a.name, ev, choose_channel(a, ctx, c), a.params(ctx, c))
            scored.append((_rank_key(a.priority, ev, i), sa))
    scored.append((_rank_key(0, 0.0, len(ACTIONS)), ScoredAction(DO_NOTHING, 0.0, None, {})))
    ranked = tuple(sa for _, sa in sorted(scored, key=lambda t: t[0]))
    tone = tone_of(ctx, c)
    if is_holdout(ctx.campaign_id, ctx.profile_id, c.holdout_share):
        return NBADecision(
            ctx.profile_id,
            ctx.campaign_id,
            bucket,
            (ScoredAction(DO_NOTHING, 0.0, None, {}, holdout=True),),
            holdout=True,
            counterfactual=ranked[0].name,
            tone=tone,
        )
    return NBADecision(ctx.profile_id, ctx.campaign_id, bucket, ranked, tone=tone)


def context_from_profile(
    profile: Any,
    *,
    now: Instant,
    config: NBAConfig = NBAConfig(),
    channel: str | None = None,
    campaign_id: str = "default",
    churn_probability: float = 0.0,
    purchase_propensity: float = 0.0,
    expected_order_value: float | None = None,
    lifetime_value: float = 0.0,
    order_count: int | None = None,
    candidate_items: tuple[CandidateItem, ...] = (),
    item_values: Mapping[str, float] | None = None,
    item_categories: Mapping[str, str | None] | None = None,
    has_candidates: bool | None = None,
    purchase_cadence_days: float | None = None,
    _ref: float | None = None,
) -> NBAContext:
    """An NBAContext from a store `OnlineProfile` (duck-typed: cart_items, purchases, returns,
    channel_last_seen, last_negative_ts, replenish_days), so every caller derives the facts the same way.

    Reachable channels are those the customer has used; preferred is the most recently used one, unless
    the customer declared channels (`declared`), which come first. An item is due for replenishment from
    `replenish_due_from` to `replenish_due_until` times its own re-buy interval after its last purchase.
    Item values default to the expected order value.

    Journeys: a returned item is never pushed again (no cart reminder, replenishment, try-on offer or care
    for it); an item reserved for pickup counts as bought (never a cart reminder); an item tried on (any
    channel's `try_on`) and not bought, reserved or returned since is offered from `tried_on_wait_days` to
    `tried_on_max_days` after; the latest purchase gets care content for `care_days`, then complementary
    products from max(`complements_min_days`, `complements_cadence_share` * `purchase_cadence_days`).
    """
    values = item_values or {}
    cats = item_categories or {}
    default_value = (
        expected_order_value
        if expected_order_value and expected_order_value > 0
        else config.default_order_value
    )
    ref = _bucket_start(now, config) if _ref is None else _ref

    def item(i: str) -> ItemValue:
        return ItemValue(i, float(values.get(i, default_value)), cats.get(i))

    # every timestamp converted once (this runs per customer on the /scores path)
    bought = [(e.item_id, to_epoch(e.ts)) for e in getattr(profile, "purchases", ()) or ()]
    due = []
    replenish = getattr(profile, "replenish_days", None)
    if replenish:
        last_bought: dict[str, float] = {}
        for i, t in bought:
            if t > last_bought.get(i, -math.inf):
                last_bought[i] = t
        for i, interval in sorted(replenish.items()):
            if i in last_bought and interval and interval > 0:
                age = max(0.0, ref - last_bought[i]) / SECONDS_PER_DAY
                if config.replenish_due_from * interval <= age <= config.replenish_due_until * interval:
                    due.append(item(i))
    returns = getattr(profile, "returns", ()) or ()
    returned = [to_epoch(e.ts) for e in returns]
    returned_items = {e.item_id for e in returns}
    # reserved for pickup (waiting or picked up): an order, so never the subject of a cart reminder
    ordered = returned_items | {e.item_id for e in getattr(profile, "pickups", ()) or ()}
    due = [i for i in due if i.item_id not in returned_items]
    seen = {ch: to_epoch(t) for ch, t in (getattr(profile, "channel_last_seen", None) or {}).items()}
    by_recency = sorted(seen, key=lambda ch: (-seen[ch], ch))
    cart_ids = [i for i in dict.fromkeys(e.item_id for e in (getattr(profile, "cart_items", ()) or ()))
                if i not in ordered]
    declared = getattr(profile, "declared", None) or {}
    tried, care, complements = _journeys(profile, bought, ordered, ref, config, purchase_cadence_days)
    return NBAContext(
        profile_id=profile.profile_id,
        now=now,
        channel=channel,
        campaign_id=campaign_id,
        cart=tuple(item(i) for i in cart_ids),
        replenishment_due=tuple(due),
        candidate_items=candidate_items,
        last_purchase_ts=max((t for _, t in bought), default=None),
        last_negative_sentiment_ts=getattr(profile, "last_negative_ts", None),
        last_return_ts=max(returned, default=None),
        lifetime_value=lifetime_value,
        order_count=len({t for _, t in bought}) if order_count is None else order_count,
        reachable_channels=tuple(by_recency),
        preferred_channel=by_recency[0] if by_recency else None,
        churn_probability=churn_probability,
        purchase_propensity=purchase_propensity,
        expected_order_value=expected_order_value,
        has_candidates=has_candidates,
        last_positive_sentiment_ts=getattr(profile, "last_positive_ts", None),
        tried_on=tuple(item(i) for i in tried),
        care_item=item(care) if care else None,
        complements_item=item(complements) if complements else None,
        declared_channels=tuple(declared.get("channel", ())),
    )


def _journeys(profile: Any, bought: Sequence[tuple[str, float]], ordered: set[str], ref: float, c: NBAConfig,
              cadence_days: float | None) -> tuple[list[str], str | None, str | None]:
    """(items tried on and not bought since, inside the offer window, newest try-on first; the purchase in
    its care window; the purchase in its complements window) of a profile, ages from `ref`."""
    last_bought: dict[str, float] = {}
    for i, t in bought:
        last_bought[i] = max(t, last_bought.get(i, -math.inf))
    tried: list[str] = []
    for e in getattr(profile, "recent_views", ()) or ():  # newest first
        if e.event_type != "try_on" or e.item_id in tried or e.item_id in ordered:
            continue
        t = to_epoch(e.ts)
        age = max(0.0, ref - t) / SECONDS_PER_DAY
        if c.tried_on_wait_days <= age <= c.tried_on_max_days and last_bought.get(e.item_id, -math.inf) < t:
            tried.append(e.item_id)
    came_back: dict[str, float] = {}
    for e in getattr(profile, "returns", ()) or ():
        came_back[e.item_id] = max(to_epoch(e.ts), came_back.get(e.item_id, -math.inf))
    kept = [(i, t) for i, t in bought if came_back.get(i, -math.inf) < t]  # a purchase that came back: no care
    latest = max(kept, key=lambda x: (x[1], x[0]), default=None)
    care = complements = None
    if latest is not None:
        age = max(0.0, ref - latest[1]) / SECONDS_PER_DAY
        cadence = cadence_days if cadence_days is not None and 0 < cadence_days < 3650.0 else 0.0
        start = max(c.complements_min_days, c.complements_cadence_share * cadence)
        if age < c.care_days:
            care = latest[0]
        elif start <= age <= start + c.complements_window_days:
            complements = latest[0]
    return tried, care, complements


def contexts_from_profiles(
    profiles: Sequence[Any | None],
    features: pd.DataFrame,
    churn: np.ndarray | Sequence[float],
    propensity: np.ndarray | Sequence[float],
    *,
    now: Instant,
    config: NBAConfig = NBAConfig(),
    campaign_id: str = "default",
    channel: str | None = None,
) -> list[NBAContext]:
    """THE derivation of decision inputs, shared by `/next_best_action` (one customer) and `/scores`
    (thousands): one context per feature row, in row order.

    `features` are the store's feature rows (PROFILE_ID, `avg_order_value`, `spend_total`, `n_orders`);
    `profiles[i]` is row i's store profile (None: no online state) and gives cart, replenishment due,
    returns, negative sentiment, last purchase and channels (`context_from_profile`); `churn` and
    `propensity` are the models' scores of the rows (NaN counts as 0). Cross-sell candidates count as
    available (the recommender falls back to popular items); callers may add the items themselves.
    """
    n = len(features)
    if not (len(profiles) == len(churn) == len(propensity) == n):
        raise ValueError("profiles, churn and propensity must have one entry per feature row")
    pids = features[PROFILE_ID].astype(str).tolist() if n else []

    def col(name: str) -> list[float | None]:
        if name not in features:
            return [None] * n
        vals = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return [float(v) if math.isfinite(v) else None for v in vals]

    aov, ltv, orders = col(FEATURE_ORDER_VALUE), col(FEATURE_LIFETIME_VALUE), col(FEATURE_ORDER_COUNT)
    cadence = col(FEATURE_CADENCE)
    ch = np.nan_to_num(np.asarray(churn, dtype=float), nan=0.0).tolist()
    pr = np.nan_to_num(np.asarray(propensity, dtype=float), nan=0.0).tolist()
    ref = _bucket_start(now, config)
    out = []
    for i, pid in enumerate(pids):
        prof = profiles[i]
        if prof is None:
            prof = _NoProfile(pid)
        ctx = context_from_profile(
            prof,
            now=now,
            config=config,
            channel=channel,
            campaign_id=campaign_id,
            churn_probability=ch[i],
            purchase_propensity=pr[i],
            expected_order_value=aov[i] if aov[i] is not None and aov[i] > 0 else None,
            lifetime_value=ltv[i] or 0.0,
            order_count=int(orders[i] or 0),
            has_candidates=True,
            purchase_cadence_days=cadence[i],
            _ref=ref,
        )
        out.append(ctx if ctx.profile_id == pid else dataclasses.replace(ctx, profile_id=pid))
    return out


@dataclass(frozen=True)
class _NoProfile:
    profile_id: str


#: A contact rule: may this (non do_nothing) action be sent to this customer now? (`/scores` and
#: `/next_best_action` pass the same one: the guard's suppression and quiet hours.)
ContactRule = Callable[[NBAContext, ScoredAction], bool]


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name in frame:
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return np.full(len(frame), BATCH_DEFAULTS[name], dtype=float)


def _top_actions(
    f: Features,
    pids: list[str],
    c: NBAConfig,
    campaign_id: str,
    contexts: Sequence[NBAContext] | None = None,
    allowed: ContactRule | None = None,
) -> pd.DataFrame:
    """Vectorised `decide_actions(...).actions[0]` (after dropping what `allowed` refuses) per customer."""
    n = len(pids)
    elig, val = _evaluate(f, c)
    worth = elig & (val > 0)
    prio = np.array([a.priority for a in ACTIONS], dtype=float)[:, None]
    index = np.broadcast_to(np.arange(len(ACTIONS))[:, None], elig.shape)
    # the ranking of `_rank_key` among the actions worth doing; the others sort last
    order = np.lexsort((index, -val, np.where(worth, -prio, np.inf)), axis=0)
    cols = np.arange(n)
    first = order[0]
    has = worth[first, cols]
    names = np.array(ACTION_NAMES, dtype=object)
    top = np.where(has, names[first], DO_NOTHING).astype(object)
    ev = np.where(has, val[first, cols], 0.0)
    hold = np.fromiter(
        (holdout_draw(campaign_id, p) < c.holdout_share for p in pids), dtype=bool, count=n
    )
    counterfactual = pd.Series(np.where(hold, top, None), dtype=object)
    if allowed is not None and contexts is not None:
        guarded_top, guarded_ev = top.copy(), ev.copy()
        for j in np.flatnonzero(has & ~hold):
            ctx = contexts[j]
            guarded_top[j], guarded_ev[j] = DO_NOTHING, 0.0
            for i in order[:, j]:
                if not worth[i, j]:
                    break
                a = ACTIONS[i]
                sa = ScoredAction(a.name, float(val[i, j]), choose_channel(a, ctx, c), a.params(ctx, c))
                if allowed(ctx, sa):
                    guarded_top[j], guarded_ev[j] = a.name, float(val[i, j])
                    break
        top, ev = guarded_top, guarded_ev
    return pd.DataFrame(
        {
            PROFILE_ID: pids,
            TOP_ACTION: np.where(hold, DO_NOTHING, top),
            EXPECTED_VALUE: np.where(hold, 0.0, ev),
            HOLDOUT: hold,
            # object dtype keeps None (JSON null) for customers not held out
            COUNTERFACTUAL_ACTION: counterfactual,
        }
    )


def decide_top_actions(
    contexts: Sequence[NBAContext],
    config: NBAConfig = NBAConfig(),
    allowed: ContactRule | None = None,
) -> pd.DataFrame:
    """The first action `decide_actions` would rank for each context, vectorised (for `/scores`).

    With `allowed`, an action it refuses is skipped as `/next_best_action` skips what the guard
    suppresses (the next worth-doing action, else `do_nothing`); it is called only for customers not
    held out, best action first, until one passes. Holdout uses each context's campaign (the first's
    for the whole call: `/scores` decides for one campaign). Returns PROFILE_ID, TOP_ACTION,
    EXPECTED_VALUE, HOLDOUT, COUNTERFACTUAL_ACTION (the unguarded top action of held-out customers).
    """
    c = config
    f = _features_from_contexts(contexts, c)
    campaign = contexts[0].campaign_id if contexts else "default"
    if any(ctx.campaign_id != campaign for ctx in contexts):
        raise ValueError("decide_top_actions decides for one campaign per call")
    return _top_actions(f, [ctx.profile_id for ctx in contexts], c, campaign, contexts, allowed)


def decide_top_actions_batch(
    frame: pd.DataFrame,
    config: NBAConfig = NBAConfig(),
    now: Instant | None = None,
    campaign_id: str = "default",
) -> pd.DataFrame:
    """Top action per customer from a table of already-derived facts, vectorised over the same
    `ACTIONS` as `decide_actions` (exports and tests; the service uses `decide_top_actions`).

    `frame` has PROFILE_ID, CHURN_PROBABILITY, PURCHASE_PROPENSITY and optionally the other batch
    columns (`BATCH_DEFAULTS`); recency flags are booleans already evaluated by the caller, so `now`
    is accepted for symmetry and not otherwise used. Returns PROFILE_ID, TOP_ACTION, EXPECTED_VALUE,
    HOLDOUT, COUNTERFACTUAL_ACTION in input order.
    """
    del now  # the caller evaluated the recency flags; kept in the signature for the /scores contract
    missing = [col for col in BATCH_REQUIRED if col not in frame]
    if missing:
        raise ValueError(f"missing columns: {', '.join(missing)}")
    neg = _column(frame, NEGATIVE_SENTIMENT_RECENT)
    ret = _column(frame, RETURNED_RECENTLY)
    f = {
        "churn": _column(frame, CHURN_PROBABILITY),
        "propensity": _column(frame, PURCHASE_PROPENSITY),
        "order_value": _column(frame, EXPECTED_ORDER_VALUE),
        "cart_value": np.clip(np.nan_to_num(_column(frame, CART_VALUE)), 0.0, None),
        "replenish_value": np.clip(np.nan_to_num(_column(frame, REPLENISHMENT_DUE)), 0.0, None),
        "days_since": _column(frame, DAYS_SINCE_LAST_PURCHASE),
        "recovery": ((np.nan_to_num(neg) > 0) | (np.nan_to_num(ret) > 0)).astype(float),
        "order_count": np.nan_to_num(_column(frame, ORDER_COUNT)),
        "lifetime_value": np.nan_to_num(_column(frame, LIFETIME_VALUE)),
        "has_candidates": np.nan_to_num(_column(frame, HAS_CANDIDATES)),
        "tried_value": np.clip(np.nan_to_num(_column(frame, TRIED_ON_VALUE)), 0.0, None),
        "care_due": np.nan_to_num(_column(frame, CARE_DUE)),
        "complements_due": np.nan_to_num(_column(frame, COMPLEMENTS_DUE)),
    }
    return _top_actions(f, frame[PROFILE_ID].astype(str).tolist(), config, campaign_id)
