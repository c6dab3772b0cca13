"""Point-in-time profile features: one numeric row per profile as of a cutoff.

Only events with ``ts < as_of`` count, so a training row never sees its own future.  Every feature
of a profile depends on that profile's events alone (no population statistics), which makes the
online store's ``features_for`` (a handful of profiles) agree exactly with the offline build
(everyone): no train/serve skew.

Speed matters (millions of events per run): everything is vectorised over integer codes with
``np.bincount`` / ``ufunc.at``; only the purchase and cart subsets are sorted.  No per-profile Python.

Missing values are never left in model columns.  "Days since X" when X never happened, cadence with
fewer than two orders and "days until replenishment" with nothing to replenish are all ``NEVER_DAYS``
(ten years: "long ago / not expected"); rates with a zero denominator are 0; the sentiment mean with no
scored event is 0 (neutral).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse

from features.catalog import CATEGORY_SEPARATOR
from features.identity import encode_strings, resolve_identities
from features.schema import (
    ADD_TO_CART,
    CATEGORY,
    CHANNEL,
    CHANNELS,
    EMAIL_CLICK,
    EMAIL_OPEN,
    EVENT_ID,
    EVENT_TYPE,
    EVENT_TYPES,
    INTEREST,
    ITEM_ID,
    NO_PREFERENCE,
    PREFERENCE,
    PREFERENCE_KEY,
    PREFERENCE_VALUE,
    PRICE,
    PROFILE_ID,
    PURCHASE,
    QUANTITY,
    RATING,
    RETURN,
    TS,
    read_events,
)

#: Sentinel for "days since X" when X never happened and for "not expected" durations.
NEVER_DAYS: Final = 3650.0
_NS_PER_DAY: Final = 86_400 * 10**9

#: Non-model column: the profile's most interacted category ("" when none).
TOP_CATEGORY: Final = "top_category"
#: Long-format affinity column.
AFFINITY_SCORE: Final = "score"


@dataclass(frozen=True)
class ProfileConfig:
    """Knobs of the feature build; defaults are what training and serving use."""

    replenish_min_purchases: int = 2  # purchases of one item before it counts as repeat-bought
    replenish_min_gap_days: float = 1.0  # re-buys closer than this are the same shopping trip
    cart_abandon_hours: float = 24.0  # add_to_cart without purchase of that item within this = abandoned
    windows_days: tuple[int, ...] = (30, 90, 365)
    monetary_window_days: int = 90
    top_categories: int = 3  # share of interactions in the top-k categories
    negative_threshold: float = -0.25  # sentiment score at or below this is negative (rating <= 2)
    positive_threshold: float = 0.25  # at or above this is positive (rating >= 4): a warm tone
    # weights of event types in category affinity (others weigh 0)
    affinity_weights: tuple[tuple[str, float], ...] = (
        ("view", 1.0), ("search", 0.5), ("add_to_cart", 2.0), ("try_on", 2.0), ("social_like", 1.0),
        ("purchase", 4.0), ("review", 1.0),
    )
    affinity_half_life_days: float | None = 90.0  # recent interest counts more; None = no decay

    def __post_init__(self) -> None:
        if self.replenish_min_purchases < 2:
            raise ValueError("replenish_min_purchases must be at least 2 (an interval needs two purchases)")
        if self.cart_abandon_hours <= 0:
            raise ValueError("cart_abandon_hours must be positive")
        if not self.windows_days or any(w <= 0 for w in self.windows_days):
            raise ValueError("windows_days must be positive")
        if self.top_categories < 1:
            raise ValueError("top_categories must be at least 1")
        if self.affinity_half_life_days is not None and self.affinity_half_life_days <= 0:
            raise ValueError("affinity_half_life_days must be positive or None")
        unknown = {t for t, _ in self.affinity_weights} - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"affinity_weights name unknown event types: {sorted(unknown)}")


_DEFAULT = ProfileConfig()


def _feature_columns(config: ProfileConfig) -> tuple[str, ...]:
    cols = ["tenure_days", "days_since_last_event", "days_since_last_purchase", "n_events"]
    cols += [f"n_{t}" for t in EVENT_TYPES]
    for w in config.windows_days:
        cols += [f"n_events_{w}d", f"n_purchases_{w}d", f"n_orders_{w}d"]
    cols += ["n_orders", "spend_total", f"spend_{config.monetary_window_days}d", "avg_order_value",
             "purchase_cadence_days", "days_until_replenishment", "n_replenish_items",
             "n_categories", "top_category_share", f"top{config.top_categories}_category_share",
             "category_entropy"]
    cols += [f"share_{c}" for c in CHANNELS]
    cols += [f"days_since_{c}" for c in CHANNELS]
    cols += ["n_channels", "carts_decided", "carts_abandoned", "cart_abandon_rate", "open_cart_items",
             "return_rate", "email_click_rate", "days_since_email_click",
             "sentiment_mean", "sentiment_count", "n_negative", "days_since_negative",
             "n_declared_interests", "declared_interest_share"]
    return tuple(cols)


#: The numeric, NaN-free, model-ready columns (default config), defined once here.
FEATURE_COLUMNS: Final[tuple[str, ...]] = _feature_columns(_DEFAULT)


def _as_of_ns(as_of: pd.Timestamp | str) -> int:
    ts = pd.Timestamp(as_of)
    if ts is pd.NaT:
        raise ValueError("as_of must be a timestamp")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.as_unit("ns").value)


def _ts_ns(s: pd.Series) -> np.ndarray:
    if not isinstance(s.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"column {TS!r} must be timezone-aware datetimes (validate events first)")
    if s.isna().any():
        raise ValueError(f"column {TS!r} has missing timestamps")
    return np.asarray(s.dt.as_unit("ns").array.asi8)  # epoch ns, UTC whatever the display zone


def _factorize(s: pd.Series, sort: bool = False) -> tuple[np.ndarray, pa.Array]:
    """Codes (-1 = missing) and the distinct values as arrow strings (in sorted order when asked).

    Arrow-backed strings (what validated events hold) are hashed once in arrow with no Python object
    per row; anything else goes through pandas and has its distinct values converted to strings.
    """
    arrow_str = isinstance(s.dtype, pd.ArrowDtype) and s.dtype.pyarrow_dtype in (pa.string(), pa.large_string())
    if not (isinstance(s.dtype, pd.StringDtype) or arrow_str):
        codes, uniques = pd.factorize(s, sort=sort, use_na_sentinel=True)
        return codes, pa.array(pd.array(np.asarray(uniques, dtype=object), dtype="string"))
    codes, uniques = encode_strings(s)
    if sort and len(uniques):
        order = pc.sort_indices(uniques).to_numpy()
        rank = np.empty(len(order) + 1, np.int64)
        rank[order] = np.arange(len(order))
        rank[-1] = -1  # code -1 stays -1
        codes, uniques = rank[codes], uniques.take(pa.array(order))
    return codes, uniques


def _strings(uniques: pa.Array, codes: np.ndarray, default: str) -> pd.arrays.ArrowStringArray:
    """uniques[codes] as a pandas string array, ``default`` where the code is -1."""
    table = pa.concat_arrays([uniques.cast(pa.large_string()), pa.array([default], pa.large_string())])
    return pd.arrays.ArrowStringArray(table.take(pa.array(np.where(codes < 0, len(uniques), codes))))


def _codes(s: pd.Series, vocabulary: tuple[str, ...]) -> np.ndarray:
    """Index into vocabulary (-1 for missing or unknown); factorize first so the map is tiny."""
    codes, uniques = _factorize(s)
    lookup = {v: i for i, v in enumerate(vocabulary)}
    mapped = np.array([lookup.get(str(u), -1) for u in uniques.to_pylist()] + [-1], dtype=np.int64)
    return mapped[codes]  # code -1 picks the trailing -1


def _group_max(idx: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    out = np.full(size, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(out, idx, values)
    return out


def _days_since(last_ns: np.ndarray, as_of_ns: int) -> np.ndarray:
    """Days from the latest event to as_of; NEVER_DAYS where there was none."""
    missing = last_ns == np.iinfo(np.int64).min
    days = (as_of_ns - np.where(missing, as_of_ns, last_ns)) / _NS_PER_DAY
    return np.where(missing, NEVER_DAYS, days)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=float)
    return np.divide(a, b, out=np.zeros(len(b), dtype=float), where=b > 0)


def _pair_codes(a: np.ndarray, b: np.ndarray, n_b: int) -> np.ndarray:
    """One int64 code per (profile code, value code) pair; value code -1 (missing) is a value of its own."""
    return a.astype(np.int64) * (n_b + 1) + (b + 1)


def _sentiment_scores(ev: pd.DataFrame, sentiment: pd.Series | None) -> np.ndarray:
    """Score in [-1, 1] per event, NaN when unscored: the model's score where given, else (rating-3)/2."""
    score = ((ev[RATING].to_numpy(dtype=float) - 3.0) / 2.0) if RATING in ev else np.full(len(ev), np.nan)
    if sentiment is not None and len(sentiment):
        pos = pd.Index(sentiment.index.astype("string")).get_indexer(ev[EVENT_ID].astype("string"))
        hit = pos >= 0
        vals = sentiment.to_numpy(dtype=float)
        score = score.copy()
        score[hit] = np.clip(vals[pos[hit]], -1.0, 1.0)
    return score


def declared_interests(ev: pd.DataFrame, pid: np.ndarray, ts: np.ndarray, et: np.ndarray,
                       n_p: int) -> list[frozenset[str]]:
    """Per profile, the interests declared last (the store's rule: the values of the latest interest
    declaration time, "none" meaning none)."""
    out: list[frozenset[str]] = [frozenset()] * n_p
    if PREFERENCE_KEY not in ev or PREFERENCE_VALUE not in ev:
        return out
    is_pref = et == EVENT_TYPES.index(PREFERENCE)
    if not is_pref.any():
        return out
    keys = ev[PREFERENCE_KEY].to_numpy(dtype=object, na_value=None)
    values = ev[PREFERENCE_VALUE].to_numpy(dtype=object, na_value=None)
    sel = np.flatnonzero(is_pref & (keys == INTEREST) & pd.notna(values))
    latest: dict[int, tuple[int, set[str]]] = {}
    for i in sel.tolist():
        p, t = int(pid[i]), int(ts[i])
        cur = latest.get(p)
        if cur is None or t > cur[0]:
            latest[p] = (t, {values[i]})
        elif t == cur[0]:
            cur[1].add(values[i])
    for p, (_, vals) in latest.items():
        out[p] = frozenset(vals - {NO_PREFERENCE})
    return out


def _under(category: str, declared: frozenset[str]) -> bool:
    """Whether a category path is a declared interest or lies under one ("Shoes > Running" under "Shoes")."""
    return any(category == d or category.startswith(d + CATEGORY_SEPARATOR) for d in declared)


def _prepare(events: pd.DataFrame, as_of: pd.Timestamp | str,
             columns: tuple[str, ...]) -> tuple[pd.DataFrame, int]:
    """The events before as_of, reduced to the columns a build reads (so the cutoff copies nothing else)."""
    as_of_ns = _as_of_ns(as_of)
    missing = [c for c in (TS, EVENT_TYPE, CHANNEL) if c not in events]
    if missing:
        raise ValueError(f"events lack required columns: {missing}")
    if PROFILE_ID not in events:
        events = resolve_identities(events)
    events = events[[c for c in (PROFILE_ID, TS, EVENT_TYPE, CHANNEL, *columns) if c in events]]
    ts = _ts_ns(events[TS])
    keep = ts < as_of_ns
    ev = events.loc[keep] if not keep.all() else events
    if ev[PROFILE_ID].isna().any():
        raise ValueError(f"column {PROFILE_ID!r} has missing values")
    return ev, as_of_ns


def _category_weights(ev: pd.DataFrame, et: np.ndarray, age_days: np.ndarray,
                      config: ProfileConfig) -> np.ndarray:
    wt = np.zeros(len(EVENT_TYPES) + 1)
    for t, w in config.affinity_weights:
        wt[EVENT_TYPES.index(t)] = w
    w = wt[et]
    if config.affinity_half_life_days is not None:
        w = w * np.exp2(-age_days / config.affinity_half_life_days)
    return w


def category_affinity(events: pd.DataFrame, as_of: pd.Timestamp | str,
                      config: ProfileConfig = _DEFAULT) -> pd.DataFrame:
    """Long format [profile_id, category, score]: each profile's weighted, time-decayed share per category.

    Scores of a profile sum to 1 (profiles with no categorised interaction have no rows).  Sorted by
    profile, then score descending, so the first row of each profile is its top category.
    """
    ev, as_of_ns = _prepare(events, as_of, (CATEGORY,))
    cols = [PROFILE_ID, CATEGORY, AFFINITY_SCORE]
    if CATEGORY not in ev or not len(ev):
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == AFFINITY_SCORE else "string") for c in cols})
    has = ev[CATEGORY].notna().to_numpy()
    sub = ev.loc[has]
    et = _codes(sub[EVENT_TYPE], EVENT_TYPES)
    age = (as_of_ns - _ts_ns(sub[TS])) / _NS_PER_DAY
    w = _category_weights(sub, et, age, config)
    frame = pd.DataFrame({PROFILE_ID: sub[PROFILE_ID].astype("string").to_numpy(),
                          CATEGORY: sub[CATEGORY].astype("string").to_numpy(), AFFINITY_SCORE: w})
    frame = frame.loc[frame[AFFINITY_SCORE] > 0]
    out = frame.groupby([PROFILE_ID, CATEGORY], sort=False, observed=True)[AFFINITY_SCORE].sum().reset_index()
    out[AFFINITY_SCORE] = out[AFFINITY_SCORE] / out.groupby(PROFILE_ID)[AFFINITY_SCORE].transform("sum")
    out = out.sort_values([PROFILE_ID, AFFINITY_SCORE, CATEGORY], ascending=[True, False, True])
    return out.reset_index(drop=True)[cols]


def build_profiles(events: pd.DataFrame, as_of: pd.Timestamp | str, config: ProfileConfig = _DEFAULT,
                   sentiment: pd.Series | None = None) -> pd.DataFrame:
    """One row per profile (sorted by PROFILE_ID) with FEATURE_COLUMNS plus TOP_CATEGORY, as of `as_of`.

    Only events with ts < as_of count.  Resolves identities first when PROFILE_ID is missing.
    `sentiment`: score in [-1, 1] indexed by event_id (from the sentiment model); without it ratings stand in.
    The input frame is never modified.
    """
    needed = (QUANTITY, PRICE, ITEM_ID, CATEGORY, RATING, PREFERENCE_KEY, PREFERENCE_VALUE) + (
        (EVENT_ID,) if sentiment is not None else ())
    ev, as_of_ns = _prepare(events, as_of, needed)
    feature_cols = _feature_columns(config)
    pid_codes, pid_uniques = _factorize(ev[PROFILE_ID], sort=True)
    n_p = len(pid_uniques)
    out: dict[str, np.ndarray] = {}
    if n_p == 0:
        frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in feature_cols})
        frame.insert(0, PROFILE_ID, pd.Series(dtype="string"))
        frame[TOP_CATEGORY] = pd.Series(dtype="string")
        return frame

    pid = pid_codes.astype(np.int64)
    ts = _ts_ns(ev[TS])
    age = (as_of_ns - ts) / _NS_PER_DAY
    n_t = len(EVENT_TYPES)
    et = _codes(ev[EVENT_TYPE], EVENT_TYPES)
    et = np.where(et < 0, n_t, et)  # unknown types count as events only
    ch = _codes(ev[CHANNEL], CHANNELS)
    n_c = len(CHANNELS)
    ch = np.where(ch < 0, n_c, ch)
    is_purchase = et == EVENT_TYPES.index(PURCHASE)

    # recency, tenure, volume
    first = np.full(n_p, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, pid, ts)
    last = _group_max(pid, ts, n_p)
    out["tenure_days"] = (as_of_ns - first) / _NS_PER_DAY
    out["days_since_last_event"] = (as_of_ns - last) / _NS_PER_DAY
    out["days_since_last_purchase"] = _days_since(
        _group_max(pid[is_purchase], ts[is_purchase], n_p), as_of_ns)
    out["n_events"] = np.bincount(pid, minlength=n_p).astype(float)
    by_type = np.bincount(pid * (n_t + 1) + et, minlength=n_p * (n_t + 1)).reshape(n_p, n_t + 1)
    for i, t in enumerate(EVENT_TYPES):
        out[f"n_{t}"] = by_type[:, i].astype(float)

    # orders = distinct purchase timestamps of a profile (a basket shares its checkout time)
    p_pid, p_ts, p_age = pid[is_purchase], ts[is_purchase], age[is_purchase]
    qty = ev[QUANTITY].to_numpy(dtype=float)[is_purchase] if QUANTITY in ev else np.ones(len(p_pid))
    price = ev[PRICE].to_numpy(dtype=float)[is_purchase] if PRICE in ev else np.zeros(len(p_pid))
    spend = np.nan_to_num(price, nan=0.0) * np.where(np.isnan(qty), 1.0, qty)
    o_sort = np.lexsort((p_ts, p_pid))
    o_pid, o_ts = p_pid[o_sort], p_ts[o_sort]
    distinct = np.ones(len(o_pid), bool)
    distinct[1:] = (o_pid[1:] != o_pid[:-1]) | (o_ts[1:] != o_ts[:-1])
    o_pid, o_ts = o_pid[distinct], o_ts[distinct]  # sorted by profile, then time
    o_age = (as_of_ns - o_ts) / _NS_PER_DAY
    for w in config.windows_days:
        out[f"n_events_{w}d"] = np.bincount(pid[age <= w], minlength=n_p).astype(float)
        out[f"n_purchases_{w}d"] = np.bincount(p_pid[p_age <= w], minlength=n_p).astype(float)
        out[f"n_orders_{w}d"] = np.bincount(o_pid[o_age <= w], minlength=n_p).astype(float)
    n_orders = np.bincount(o_pid, minlength=n_p).astype(float)
    out["n_orders"] = n_orders
    out["spend_total"] = np.bincount(p_pid, weights=spend, minlength=n_p)
    mw = config.monetary_window_days
    recent = p_age <= mw
    out[f"spend_{mw}d"] = np.bincount(p_pid[recent], weights=spend[recent], minlength=n_p)
    out["avg_order_value"] = _safe_div(out["spend_total"], n_orders)

    # cadence: median gap between consecutive orders
    cadence = np.full(n_p, NEVER_DAYS)
    if len(o_pid) > 1:
        same = o_pid[1:] == o_pid[:-1]
        gaps = pd.Series((o_ts[1:] - o_ts[:-1])[same] / _NS_PER_DAY)
        med = gaps.groupby(o_pid[1:][same]).median()
        cadence[med.index.to_numpy()] = med.to_numpy()
    out["purchase_cadence_days"] = cadence

    # replenishment: per (profile, item) bought at least k times on different trips,
    # expected next = last purchase + the profile's own median interval for that item
    until = np.full(n_p, NEVER_DAYS)
    n_rep = np.zeros(n_p)
    if ITEM_ID in ev:
        item, item_uniques = _factorize(ev[ITEM_ID])  # once, for replenishment and carts
        n_item = len(item_uniques)
    if ITEM_ID in ev and len(p_pid) > 1:
        pair = _pair_codes(p_pid, item[is_purchase], n_item)
        order = np.lexsort((p_ts, pair))
        sp, st, spid = pair[order], p_ts[order], p_pid[order]
        gap = np.diff(st) / _NS_PER_DAY
        same = sp[1:] == sp[:-1]
        valid = same & (gap >= config.replenish_min_gap_days)
        g = pd.DataFrame({"pair": sp[1:][valid], "gap": gap[valid]})
        if len(g):
            stats = g.groupby("pair")["gap"].agg(["median", "size"])
            stats = stats.loc[stats["size"] >= config.replenish_min_purchases - 1]
            if len(stats):
                last_idx = np.flatnonzero(np.r_[sp[1:] != sp[:-1], True])  # last purchase of each pair
                last_pairs = pd.Series(last_idx, index=sp[last_idx])
                li = last_pairs.loc[stats.index].to_numpy()
                due = (st[li] - as_of_ns) / _NS_PER_DAY + stats["median"].to_numpy()
                owner = spid[li]
                np.minimum.at(until, owner, due)
                n_rep = np.bincount(owner, minlength=n_p).astype(float)
    out["days_until_replenishment"] = until
    out["n_replenish_items"] = n_rep

    # category affinity (weighted, decayed shares); top category as a non-model column
    k = config.top_categories
    n_cat = np.zeros(n_p)
    top1 = np.zeros(n_p)
    topk = np.zeros(n_p)
    entropy = np.zeros(n_p)
    top_code = np.full(n_p, -1, dtype=np.int64)
    cat_uniques = pa.array([], pa.large_string())
    # declared (zero-party) interests: how many, and how much of the observed affinity lies in them
    declared = declared_interests(ev, pid, ts, et, n_p)
    declared_share = np.zeros(n_p)
    if CATEGORY in ev:
        cat_all, cat_dict = _factorize(ev[CATEGORY])
        has = cat_all >= 0
        w = _category_weights(ev, et[has], age[has], config)
        pos = w > 0
        cpid = pid[has][pos]
        # numbered by first appearance among the weighted events (ties in share rank by this number)
        cat_codes, cat_first = pd.factorize(cat_all[has][pos])
        cat_uniques = cat_dict.take(pa.array(cat_first))
        if len(cpid):
            # sum weights per (profile, category) via a sparse matrix (duplicates are summed), then rank
            mat = sparse.csr_matrix((w[pos], (cpid, cat_codes)), shape=(n_p, len(cat_uniques)))
            mat.sum_duplicates()
            p_arr = np.repeat(np.arange(n_p), np.diff(mat.indptr))
            c_arr = mat.indices.astype(np.int64)
            s_arr = mat.data / np.asarray(mat.sum(axis=1)).ravel()[p_arr]
            order = np.lexsort((c_arr, -s_arr, p_arr))
            p_arr, c_arr, s_arr = p_arr[order], c_arr[order], s_arr[order]
            starts = np.r_[0, np.cumsum(np.bincount(p_arr, minlength=n_p))[:-1]]
            rank = np.arange(len(p_arr)) - starts[p_arr]
            n_cat = np.bincount(p_arr, minlength=n_p).astype(float)
            head = rank == 0
            top1[p_arr[head]] = s_arr[head]
            top_code[p_arr[head]] = c_arr[head]
            in_k = rank < k
            topk = np.bincount(p_arr[in_k], weights=s_arr[in_k], minlength=n_p)
            entropy = np.bincount(p_arr, weights=-s_arr * np.log(s_arr), minlength=n_p)
            with_declared = np.fromiter((bool(d) for d in declared), dtype=bool, count=n_p)
            at = np.flatnonzero(with_declared[p_arr])
            if len(at):
                names = cat_uniques.take(pa.array(c_arr[at])).to_pylist()
                hit = np.fromiter((_under(c, declared[p]) for c, p in zip(names, p_arr[at].tolist(), strict=True)),
                                  dtype=bool, count=len(at))
                declared_share = np.bincount(p_arr[at][hit], weights=s_arr[at][hit], minlength=n_p)
    out["n_categories"] = n_cat
    out["top_category_share"] = top1
    out[f"top{k}_category_share"] = topk
    out["category_entropy"] = entropy
    out["n_declared_interests"] = np.fromiter((len(d) for d in declared), dtype=float, count=n_p)
    out["declared_interest_share"] = declared_share

    # channel mix and last seen per channel
    by_ch = np.bincount(pid * (n_c + 1) + ch, minlength=n_p * (n_c + 1)).reshape(n_p, n_c + 1)
    last_ch = _group_max(pid * (n_c + 1) + ch, ts, n_p * (n_c + 1)).reshape(n_p, n_c + 1)
    for i, c in enumerate(CHANNELS):
        out[f"share_{c}"] = by_ch[:, i] / out["n_events"]
    for i, c in enumerate(CHANNELS):
        out[f"days_since_{c}"] = _days_since(last_ch[:, i], as_of_ns)
    out["n_channels"] = (by_ch[:, :n_c] > 0).sum(axis=1).astype(float)

    # cart abandonment: add_to_cart with no purchase of that item within the window
    decided = np.zeros(n_p)
    abandoned = np.zeros(n_p)
    open_items = np.zeros(n_p)
    is_cart = et == EVENT_TYPES.index(ADD_TO_CART)
    if ITEM_ID in ev and is_cart.any():
        sel = is_cart | is_purchase
        pair = _pair_codes(pid[sel], item[sel], n_item)
        s_cart = is_cart[sel]
        carts = pd.DataFrame({"pair": pair[s_cart], "ts": ts[sel][s_cart], "pid": pid[sel][s_cart]})
        buys = pd.DataFrame({"pair": pair[~s_cart], "bought": ts[sel][~s_cart]})
        carts = carts.sort_values("ts", kind="stable")
        buys = buys.sort_values("bought", kind="stable")
        window = int(config.cart_abandon_hours * 3600 * 10**9)
        m = pd.merge_asof(carts, buys, left_on="ts", right_on="bought", by="pair", direction="forward",
                          allow_exact_matches=True)
        bought = m["bought"].notna().to_numpy() & ((m["bought"].to_numpy(dtype=float) - m["ts"].to_numpy())
                                                   <= window)
        closed = (m["ts"].to_numpy() + window) <= as_of_ns
        mp = m["pid"].to_numpy()
        is_decided = bought | closed
        decided = np.bincount(mp[is_decided], minlength=n_p).astype(float)
        abandoned = np.bincount(mp[closed & ~bought], minlength=n_p).astype(float)
        open_items = np.bincount(mp[~is_decided], minlength=n_p).astype(float)
    out["carts_decided"] = decided
    out["carts_abandoned"] = abandoned
    out["cart_abandon_rate"] = _safe_div(abandoned, decided)
    out["open_cart_items"] = open_items

    out["return_rate"] = np.minimum(_safe_div(out[f"n_{RETURN}"], out[f"n_{PURCHASE}"]), 1.0)
    out["email_click_rate"] = np.minimum(_safe_div(out[f"n_{EMAIL_CLICK}"], out[f"n_{EMAIL_OPEN}"]), 1.0)
    click = et == EVENT_TYPES.index(EMAIL_CLICK)
    out["days_since_email_click"] = _days_since(_group_max(pid[click], ts[click], n_p), as_of_ns)

    # sentiment
    score = _sentiment_scores(ev, sentiment)
    scored = ~np.isnan(score)
    cnt = np.bincount(pid[scored], minlength=n_p).astype(float)
    out["sentiment_mean"] = _safe_div(np.bincount(pid[scored], weights=score[scored], minlength=n_p), cnt)
    out["sentiment_count"] = cnt
    neg = score <= config.negative_threshold  # NaN (unscored) compares False
    out["n_negative"] = np.bincount(pid[neg], minlength=n_p).astype(float)
    out["days_since_negative"] = _days_since(_group_max(pid[neg], ts[neg], n_p), as_of_ns)

    # one preallocated float block in pandas' own layout: a frame built from a dict of a million-row
    # columns spends far longer consolidating them than computing them
    block = np.empty((len(feature_cols), n_p), dtype=np.float64)
    for i, c in enumerate(feature_cols):
        block[i] = out[c]
    frame = pd.DataFrame(block.T, columns=list(feature_cols), copy=False)
    frame.insert(0, PROFILE_ID, pd.arrays.ArrowStringArray(pid_uniques.cast(pa.large_string())))
    frame[TOP_CATEGORY] = _strings(cat_uniques, top_code, "")
    return frame


def build_features_to_dir(events_path: str | os.PathLike[str], as_of: pd.Timestamp | str | None,
                          out_dir: str | os.PathLike[str], config: ProfileConfig = _DEFAULT) -> Path:
    """Read canonical events, build profiles and write `<out_dir>/profiles.parquet` (returns its path).

    as_of defaults to the latest event + 1 second, so every event counts.
    """
    events = read_events(events_path)
    if TS in events and not isinstance(events[TS].dtype, pd.DatetimeTZDtype):
        events = events.assign(**{TS: pd.to_datetime(events[TS], utc=True, format="ISO8601")})
    if as_of is None:
        if not len(events):
            raise ValueError(f"no events in {events_path}; give as_of explicitly")
        as_of = events[TS].max() + pd.Timedelta(seconds=1)
    profiles = build_profiles(events, as_of, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "profiles.parquet"
    profiles.to_parquet(path, index=False)
    return path
