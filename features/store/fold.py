"""The state fold: a profile's online state (a JSON-able doc) from its time-ordered events, and the
doc -> `OnlineProfile` view. Pure: no storage, the same for every backend.

Two implementations of the same rules remain, held equal by tests (test_store.py's bulk-vs-per-event
tests): `apply_events` folds events one by one into a stored doc (an API append touches one profile), and
`_build_states` builds many profiles' docs at once with array group-bys (bulk loads, replays). Folding
bulk loads one event at a time, or single appends through the array path, would cost one of them its speed;
one rule set would need a combine step for partial docs (issue 18, not done yet)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features import schema
from features.consent import source_of
from features.schema import (
    ADD_TO_CART,
    CATEGORY,
    CHANNEL,
    EVENT_ID,
    EVENT_TYPE,
    IDENTIFIER_COLUMNS,
    ITEM_ID,
    NO_PREFERENCE,
    PREFERENCE,
    PREFERENCE_KEY,
    PREFERENCE_VALUE,
    PURCHASE,
    RATING,
    REMOVE_FROM_CART,
    RESERVE,
    RETURN,
    RETURN_REASON,
    SET_PREFERENCE_KEYS,
)
from features.store.codec import _NS, _TIMEZONE, _Batch, _dt
from features.store.config import StoreConfig
from features.store.model import INTEREST_EVENT_TYPES, PICKUP_EVENT_TYPES, OnlineProfile, ProfileEntry

#: Version of the online state doc; docs of an older version are rebuilt from the stored events.
_STATE_VERSION = 3


def _empty_state() -> dict[str, Any]:
    """The JSON state doc (version _STATE_VERSION). Entries: views [item, cat, t, channel, type] (interest
    events), cart {item: [t, cat, channel]} (the latest add), purchases/returns [item, cat, t, channel];
    cats {cat: n}, csrc {cat: {source: n}}, src [sources seen], chan {channel: t}, neg t, ids [columns],
    last t, tz [t, zone] (the latest; ties broken by the zone name, so the result is order-free); pref {key:
    [t, [values]]} (`_declare`), pick {item: [t, cat, channel, state]} (the latest order state), rr {item: [t,
    reason]} (the latest return reason; ties by the reason), neg / pos t (latest negative / positive sentiment:
    the model's stored score, else the rating)."""
    return {"v": _STATE_VERSION, "views": [], "cart": {}, "purchases": [], "returns": [], "cats": {}, "csrc": {},
            "src": [], "chan": {}, "neg": None, "ids": [], "last": 0, "tz": None, "pref": {}, "pick": {}, "rr": {},
            "pos": None}


def _declare(prefs: dict[str, list[Any]], key: str, value: str, t: int) -> None:
    """Fold one declaration (order-free, so the bulk build and the per-event fold agree): the latest time
    wins; at the latest time, set-valued keys collect every value, the others keep the largest."""
    cur = prefs.get(key)
    if cur is None or t > cur[0]:
        prefs[key] = [t, [value]]
    elif t == cur[0]:
        if key in SET_PREFERENCE_KEYS:
            cur[1] = sorted({*cur[1], value})
        else:
            cur[1] = [max(value, cur[1][0])]


def _latest_pair(slot: list[Any] | None, t: int, value: Any) -> bool:
    """Whether (t, value) is later than what `slot` [t, value, ...] holds (ties by value: order-free)."""
    return slot is None or (t, value) > (slot[0], slot[-1])


def _source_codes(etypes: Any, channels: Any) -> tuple[np.ndarray, list[str]]:
    """Per event, a code into the returned source purposes (`consent.source_of`), computed once per
    distinct (event type, channel) pair."""
    e_codes, e_uniq = pd.factorize(np.asarray(etypes, dtype=object))
    c_codes, c_uniq = pd.factorize(np.asarray(channels, dtype=object))
    e_vals, c_vals = [*e_uniq.tolist(), None], [*c_uniq.tolist(), None]  # code -1 (missing) -> None
    nc = len(c_vals)
    pair = np.where(e_codes < 0, len(e_uniq), e_codes).astype(np.int64) * nc + np.where(c_codes < 0, nc - 1, c_codes)
    u, inv = np.unique(pair, return_inverse=True)
    names = [source_of(e_vals[k // nc], c_vals[k % nc]) for k in u.tolist()]
    s_codes, s_names = pd.factorize(np.asarray(names, dtype=object))
    return s_codes[inv].astype(np.int64), list(s_names)




def _tails(codes: np.ndarray, order: np.ndarray, mask: np.ndarray, limit: int, n_groups: int,
           fields: Sequence[np.ndarray]) -> list[list[tuple[Any, ...]]]:
    """Per group, the last `limit` masked rows (time order kept) as (field, ...) entries (JSON arrays)."""
    sel = order[mask[order]]
    g = codes[sel]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sel = sel[np.arange(len(sel)) - starts[g] >= (counts - limit)[g]]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes[sel], minlength=n_groups))]).tolist()
    entries = list(zip(*(f[sel].tolist() for f in fields), strict=True))
    return [entries[a:z] for a, z in zip(bounds[:-1], bounds[1:], strict=True)]


def _pair_keys(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(group, value) -> one int key; returns keys, value uniques and the key stride."""
    vcodes, uniques = pd.factorize(values)
    stride = max(1, len(uniques))
    return codes.astype(np.int64) * stride + vcodes, np.asarray(uniques, dtype=object), stride


def _sentiment(b: _Batch, scores: Mapping[str, float], config: StoreConfig) -> tuple[np.ndarray, np.ndarray]:
    """(negative, positive) per event from the rating's (rating-3)/2 and the model's stored score (`scores`, by
    event id), against the profile thresholds. Careful on purpose: either one negative makes the event
    negative (a one-star review with polite words is still a complaint); positive only when neither is."""
    rating = (np.array(b.cols[RATING], dtype=float) - 3.0) / 2.0
    model = np.full(len(b), np.nan)
    if scores:
        model = np.array([np.nan if (v := scores.get(e)) is None else v for e in b.cols[EVENT_ID]], dtype=float)
    pc = config.profile_config
    with np.errstate(invalid="ignore"):
        negative = (rating <= pc.negative_threshold) | (model <= pc.negative_threshold)
        return negative, ~negative & ((rating >= pc.positive_threshold) | (model >= pc.positive_threshold))


def _build_states(b: _Batch, pids: Sequence[str], config: StoreConfig,
                  scores: Mapping[str, float] | None = None) -> list[tuple[str, dict[str, Any], int]]:
    """Online state of every profile from its whole time-ordered history, with array group-bys.

    The same rules as `apply_events` folding the events one by one (tested equal):
    last N interest entries/purchases/returns, cart = items whose latest cart event is an add, category
    counts (per source too), sources seen, latest time per channel, latest negative rating, identifier
    types, latest event, latest timezone.
    """
    n = len(b)
    codes, uniq = pd.factorize(np.asarray(pids, dtype=object))
    n_p = len(uniq)
    ts = np.asarray(b.ts, dtype=np.int64)
    et, item, cat, chan = b.array(EVENT_TYPE), b.array(ITEM_ID), b.array(CATEGORY), b.array(CHANNEL)
    et_codes, et_uniq = pd.factorize(et)
    et_uniq = et_uniq.tolist()

    def of_type(*types: str) -> np.ndarray:
        return np.isin(et_codes, [k for k, u in enumerate(et_uniq) if u in types])

    has_item = ~pd.isna(item)
    order = np.argsort(codes, kind="stable")  # by profile, time order kept
    views = _tails(codes, order, of_type(*INTEREST_EVENT_TYPES) & has_item, config.recent_views, n_p,
                   (item, cat, ts, chan, et))
    is_buy, is_add = of_type(PURCHASE), of_type(ADD_TO_CART)
    buys = _tails(codes, order, is_buy & has_item, config.max_purchases, n_p, (item, cat, ts, chan))
    rets = _tails(codes, order, of_type(RETURN) & has_item, config.max_purchases, n_p, (item, cat, ts, chan))

    carts: list[dict[str, list[Any]]] = [{} for _ in range(n_p)]
    sel = np.flatnonzero((is_add | of_type(REMOVE_FROM_CART, RESERVE) | is_buy) & has_item)
    if len(sel):
        keys, _, _ = _pair_keys(codes[sel], item[sel])
        _, first_from_end = np.unique(keys[::-1], return_index=True)
        last = sel[np.sort(len(sel) - 1 - first_from_end)]  # latest cart event per (profile, item)
        last = last[is_add[last]]
        for k, it, t, c, ch in zip(codes[last].tolist(), item[last].tolist(), ts[last].tolist(), cat[last].tolist(),
                                   chan[last].tolist(), strict=True):
            carts[k][it] = [t, c, ch]

    picks: list[dict[str, list[Any]]] = [{} for _ in range(n_p)]
    rrs: list[dict[str, list[Any]]] = [{} for _ in range(n_p)]
    prefs: list[dict[str, list[Any]]] = [{} for _ in range(n_p)]
    for i in np.flatnonzero(of_type(*PICKUP_EVENT_TYPES) & has_item).tolist():  # order states are few
        slot = picks[codes[i]].get(item[i])
        if _latest_pair(slot, b.ts[i], et[i]):
            picks[codes[i]][item[i]] = [b.ts[i], cat[i], chan[i], et[i]]
    reason = b.array(RETURN_REASON)
    for i in np.flatnonzero(of_type(RETURN) & has_item & ~pd.isna(reason)).tolist():
        if _latest_pair(rrs[codes[i]].get(item[i]), b.ts[i], reason[i]):
            rrs[codes[i]][item[i]] = [b.ts[i], reason[i]]
    keys_, values_ = b.array(PREFERENCE_KEY), b.array(PREFERENCE_VALUE)
    for i in np.flatnonzero(of_type(PREFERENCE) & ~pd.isna(keys_) & ~pd.isna(values_)).tolist():
        _declare(prefs[codes[i]], keys_[i], values_[i], b.ts[i])

    src_codes, src_names = _source_codes(et, chan)
    n_s = max(1, len(src_names))
    src_bits = np.zeros(n_p, dtype=np.int64)
    np.bitwise_or.at(src_bits, codes, np.left_shift(1, src_codes))
    cats: list[dict[str, int]] = [{} for _ in range(n_p)]
    csrc: list[dict[str, dict[str, int]]] = [{} for _ in range(n_p)]
    has_cat = ~pd.isna(cat)
    if has_cat.any():
        keys, names, stride = _pair_keys(codes[has_cat], cat[has_cat])
        u, cnt = np.unique(keys * n_s + src_codes[has_cat], return_counts=True)
        pc = u // n_s
        for k, c, s, m in zip((pc // stride).tolist(), names[pc % stride].tolist(), (u % n_s).tolist(),
                              cnt.tolist(), strict=True):
            cats[k][c] = cats[k].get(c, 0) + m
            csrc[k].setdefault(c, {})[src_names[s]] = m

    chans: list[dict[str, int]] = [{} for _ in range(n_p)]
    keys, names, stride = _pair_keys(codes, chan)
    u, inv = np.unique(keys, return_inverse=True)
    latest = np.zeros(len(u), dtype=np.int64)
    np.maximum.at(latest, inv, ts)
    for k, c, t in zip((u // stride).tolist(), names[u % stride].tolist(), latest.tolist(), strict=True):
        chans[k][c] = t

    tzs: list[list[Any] | None] = [None] * n_p
    if _TIMEZONE in b.cols:
        zone = b.array(_TIMEZONE)
        at = np.flatnonzero(~pd.isna(zone))
        if len(at):
            z_codes, z_uniq = pd.factorize(zone[at], sort=True)
            z_ts, z_pid = ts[at], codes[at]
            o = np.lexsort((z_codes, z_ts, z_pid))  # by profile, then time, then zone name
            p_sorted = z_pid[o]
            last = o[np.flatnonzero(np.r_[p_sorted[1:] != p_sorted[:-1], True])]  # each profile's latest
            names = z_uniq[z_codes[last]].tolist()
            for k, t, z in zip(z_pid[last].tolist(), z_ts[last].tolist(), names, strict=True):
                tzs[k] = [t, z]

    neg_rows, pos_rows = _sentiment(b, scores or {}, config)
    neg = np.zeros(n_p, dtype=np.int64)
    np.maximum.at(neg, codes[neg_rows], ts[neg_rows])
    pos = np.zeros(n_p, dtype=np.int64)
    np.maximum.at(pos, codes[pos_rows], ts[pos_rows])
    last_ts = np.zeros(n_p, dtype=np.int64)
    np.maximum.at(last_ts, codes, ts)
    bits = np.zeros(n, dtype=np.int64)
    for j, c in enumerate(IDENTIFIER_COLUMNS):
        bits |= b.present(c).astype(np.int64) << j
    id_bits = np.zeros(n_p, dtype=np.int64)
    np.bitwise_or.at(id_bits, codes, bits)
    names_of = {m: sorted(c for j, c in enumerate(IDENTIFIER_COLUMNS) if m >> j & 1) for m in set(id_bits.tolist())}
    sources_of = {m: sorted(s for j, s in enumerate(src_names) if m >> j & 1) for m in set(src_bits.tolist())}

    out = []
    for k, (pid, nt, pt, lt, m, sb) in enumerate(zip(uniq.tolist(), neg.tolist(), pos.tolist(), last_ts.tolist(),
                                                     id_bits.tolist(), src_bits.tolist(), strict=True)):
        state = {"v": _STATE_VERSION, "views": views[k], "cart": carts[k], "purchases": buys[k], "returns": rets[k],
                 "cats": cats[k], "csrc": csrc[k], "src": sources_of[sb], "chan": chans[k], "neg": nt or None,
                 "ids": names_of[m], "last": lt, "tz": tzs[k], "pref": prefs[k], "pick": picks[k], "rr": rrs[k],
                 "pos": pt or None}
        out.append((str(pid), state, lt))
    return out


def apply_events(state: dict[str, Any], b: _Batch, rows: Sequence[int], cfg: StoreConfig,
                 scores: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Fold time-ordered events (rows of the batch) into the JSON state (see `_build_states`); `scores`:
    stored model sentiment by event id."""
    negative, positive = _sentiment(b, scores or {}, cfg)
    ids = set(state["ids"])
    srcs = set(state["src"])
    etypes, chans, items, cats = b.cols[EVENT_TYPE], b.cols[CHANNEL], b.cols[ITEM_ID], b.cols[CATEGORY]
    tss = b.ts
    zones = b.cols.get(_TIMEZONE)
    reasons, pkeys, pvalues = b.cols[RETURN_REASON], b.cols[PREFERENCE_KEY], b.cols[PREFERENCE_VALUE]
    idcols = [(c, b.cols[c]) for c in IDENTIFIER_COLUMNS]
    source: dict[tuple[str, str], str] = {}
    counts, by_source = state["cats"], state["csrc"]
    for i in rows:
        t = tss[i]
        etype, item, cat, chan = etypes[i], items[i], cats[i], chans[i]
        src = source.get((etype, chan))
        if src is None:
            src = source[(etype, chan)] = source_of(etype, chan)
        srcs.add(src)
        ids.update(c for c, vals in idcols if vals[i] is not None)
        state["chan"][chan] = max(state["chan"].get(chan, 0), t)
        state["last"] = max(state["last"], t)
        if cat is not None:
            counts[cat] = counts.get(cat, 0) + 1
            per = by_source.setdefault(cat, {})
            per[src] = per.get(src, 0) + 1
        if item is not None:
            if etype in INTEREST_EVENT_TYPES:
                state["views"].append([item, cat, t, chan, etype])
            elif etype == ADD_TO_CART:
                state["cart"][item] = [t, cat, chan]
            elif etype in (REMOVE_FROM_CART, PURCHASE, RESERVE):  # a reservation is an order
                state["cart"].pop(item, None)
                if etype == PURCHASE:
                    state["purchases"].append([item, cat, t, chan])
            elif etype == RETURN:
                state["returns"].append([item, cat, t, chan])
                if reasons[i] is not None and _latest_pair(state["rr"].get(item), t, reasons[i]):
                    state["rr"][item] = [t, reasons[i]]
            if etype in PICKUP_EVENT_TYPES and _latest_pair(state["pick"].get(item), t, etype):
                state["pick"][item] = [t, cat, chan, etype]
        if etype == PREFERENCE and pkeys[i] is not None and pvalues[i] is not None:
            _declare(state["pref"], pkeys[i], pvalues[i], t)
        if negative[i]:
            state["neg"] = max(state["neg"] or 0, t)
        if positive[i]:
            state["pos"] = max(state.get("pos") or 0, t)
        zone = zones[i] if zones is not None else None
        if zone is not None and (state["tz"] is None or [t, zone] > state["tz"]):
            state["tz"] = [t, zone]
    state["views"] = state["views"][-cfg.recent_views:]
    state["purchases"] = state["purchases"][-cfg.max_purchases:]
    state["returns"] = state["returns"][-cfg.max_purchases:]
    state["ids"] = sorted(ids)
    state["src"] = sorted(srcs)
    return state


def to_profile(pid: str, s: dict[str, Any], erased_ns: int | None = None) -> OnlineProfile:
    buys: dict[str, list[int]] = {}
    for item, _, t, _ in s["purchases"]:
        buys.setdefault(item, []).append(t)
    replenish = {}
    for item, times in buys.items():
        gaps = np.diff(sorted(set(times))) / (86_400 * _NS)
        gaps = gaps[gaps >= 1.0]
        if len(gaps):
            replenish[item] = float(np.median(gaps))
    cart = sorted(s["cart"].items(), key=lambda x: (-x[1][0], x[0]))
    return OnlineProfile(
        profile_id=pid,
        recent_views=tuple(ProfileEntry(i, c, _dt(t), ch, e) for i, c, t, ch, e in reversed(s["views"])),
        cart_items=tuple(ProfileEntry(i, c, _dt(t), ch, ADD_TO_CART) for i, (t, c, ch) in cart),
        purchases=tuple(ProfileEntry(i, c, _dt(t), ch, PURCHASE) for i, c, t, ch in reversed(s["purchases"])),
        returns=tuple(ProfileEntry(i, c, _dt(t), ch, RETURN) for i, c, t, ch in reversed(s["returns"])),
        category_counts=dict(s["cats"]),
        channel_last_seen={c: _dt(t) for c, t in s["chan"].items()},
        last_negative_ts=_dt(s["neg"]) if s["neg"] else None,
        identifiers=tuple(s["ids"]),
        updated_at=_dt(s["last"]),
        replenish_days=replenish,
        category_sources={c: dict(v) for c, v in s["csrc"].items()},
        sources=frozenset(s["src"]),
        timezone=s["tz"][1] if s["tz"] else None,
        erased_at=None if erased_ns is None else _dt(erased_ns),
        declared={k: _declared_values(k, vals) for k, (_, vals) in sorted(s["pref"].items())},
        pickups=tuple(ProfileEntry(i, c, _dt(t), ch, e) for i, (t, c, ch, e) in
                      sorted(s["pick"].items(), key=lambda x: (-x[1][0], x[0]))),
        return_reasons={i: r for i, (_, r) in s["rr"].items()},
        last_positive_ts=_dt(s["pos"]) if s.get("pos") else None,
    )


def _declared_values(key: str, values: Sequence[str]) -> tuple[str, ...]:
    """Stored declaration -> OnlineProfile.declared: "none" is the empty declaration, except as a level."""
    if key == schema.PERSONALIZATION_LEVEL:
        return tuple(values)
    return tuple(v for v in values if v != NO_PREFERENCE)

