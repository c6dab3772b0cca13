"""Profile features: known answers on hand-made events, point-in-time correctness and invariants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.profiles import (
    FEATURE_COLUMNS,
    NEVER_DAYS,
    TOP_CATEGORY,
    ProfileConfig,
    build_features_to_dir,
    build_profiles,
    category_affinity,
)
from features.schema import CHANNELS, EVENT_ID, EVENT_TYPES, PROFILE_ID, validate_events, write_events

AS_OF = "2025-03-12T10:00:00Z"


def make(rows: list[dict[str, object]]) -> pd.DataFrame:
    for r in rows:
        if r["event_type"] in ("view", "add_to_cart", "purchase", "return") and "item_id" not in r:
            r["item_id"] = "x"
    checked = validate_events(pd.DataFrame(rows))
    assert checked.errors.empty, checked.errors
    out = checked.valid
    out[PROFILE_ID] = out["customer_id"]
    return out


def e(eid: str, ts: str, etype: str, pid: str = "a", channel: str = "web", **kw: object) -> dict[str, object]:
    return {"event_id": eid, "ts": ts, "channel": channel, "event_type": etype, "customer_id": pid, **kw}


@pytest.fixture()
def three_purchases() -> pd.DataFrame:
    return make([
        e("e1", "2025-01-01T10:00:00Z", "purchase", item_id="x", category="food", price=10.0, quantity=2),
        e("e2", "2025-01-31T10:00:00Z", "purchase", channel="store", item_id="x", category="food", price=10.0),
        e("e3", "2025-03-02T10:00:00Z", "purchase", item_id="x", category="food", price=10.0),
        e("e4", "2025-03-05T10:00:00Z", "add_to_cart", item_id="y", category="toys"),
        e("e5", "2025-03-06T10:00:00Z", "review", channel="email", rating=1.0, text="bad"),
        e("e6", "2025-03-06T10:00:00Z", "view", pid="b", item_id="y", category="toys"),
    ])


def test_known_rfm_cadence_and_replenishment(three_purchases: pd.DataFrame) -> None:
    p = build_profiles(three_purchases, AS_OF).set_index(PROFILE_ID)
    a = p.loc["a"]
    assert a["tenure_days"] == 70 and a["days_since_last_event"] == 6
    assert a["days_since_last_purchase"] == 10
    assert (a["n_purchases_30d"], a["n_purchases_90d"], a["n_orders"]) == (1, 3, 3)
    assert a["spend_total"] == 40 and a["avg_order_value"] == pytest.approx(40 / 3)
    assert a["purchase_cadence_days"] == 30
    # last purchase Mar 2 + 30-day interval = Apr 1, i.e. 20 days after Mar 12
    assert a["days_until_replenishment"] == 20 and a["n_replenish_items"] == 1
    assert a["share_web"] == pytest.approx(3 / 5) and a["share_store"] == pytest.approx(1 / 5)
    assert a["days_since_store"] == 40 and a["days_since_app"] == NEVER_DAYS
    assert (a["carts_decided"], a["carts_abandoned"], a["cart_abandon_rate"]) == (1, 1, 1.0)
    assert (a["sentiment_mean"], a["n_negative"], a["days_since_negative"]) == (-1.0, 1, 6)
    assert a[TOP_CATEGORY] == "food"
    b = p.loc["b"]
    assert b["days_since_last_purchase"] == NEVER_DAYS and b["purchase_cadence_days"] == NEVER_DAYS
    assert b["top_category_share"] == 1.0 and b["n_orders"] == 0 and b["avg_order_value"] == 0


def test_no_future_event_leaks(three_purchases: pd.DataFrame) -> None:
    before = build_profiles(three_purchases, AS_OF)
    future = make([e("f1", AS_OF, "purchase", item_id="z", category="cars", price=999.0),
                   e("f2", "2025-06-01T00:00:00Z", "return", pid="b", item_id="y"),
                   e("f3", "2025-06-01T00:00:00Z", "view", pid="new")])
    after = build_profiles(pd.concat([three_purchases, future], ignore_index=True), AS_OF)
    pd.testing.assert_frame_equal(before, after)


def test_model_columns_numeric_nan_free_and_input_untouched(three_purchases: pd.DataFrame) -> None:
    copy = three_purchases.copy()
    p = build_profiles(three_purchases, AS_OF)
    pd.testing.assert_frame_equal(three_purchases, copy)
    assert list(p.columns) == [PROFILE_ID, *FEATURE_COLUMNS, TOP_CATEGORY]
    assert all(p[c].dtype == np.float64 for c in FEATURE_COLUMNS)
    assert not p[list(FEATURE_COLUMNS)].isna().any().any()
    assert np.allclose(p[[f"share_{c}" for c in CHANNELS]].sum(axis=1), 1.0)


def test_profile_features_depend_only_on_own_events() -> None:
    rng = np.random.default_rng(7)
    n = 400
    rows = [e(f"r{i}", (pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(hours=int(h))).isoformat(),
              str(rng.choice(["view", "add_to_cart", "purchase", "return", "email_open", "email_click"])),
              pid=f"c{rng.integers(0, 12)}", channel=str(rng.choice(CHANNELS)), item_id=f"i{rng.integers(0, 6)}",
              category=f"k{rng.integers(0, 4)}", price=float(rng.integers(1, 50)))
            for i, h in enumerate(rng.integers(0, 24 * 80, n))]
    events = make(rows)
    full = build_profiles(events, "2025-04-01T00:00:00Z").set_index(PROFILE_ID)
    some = ["c1", "c5", "c9"]
    part = build_profiles(events[events[PROFILE_ID].isin(some)], "2025-04-01T00:00:00Z").set_index(PROFILE_ID)
    pd.testing.assert_frame_equal(full.loc[some], part)
    assert (full["n_events"].sum(), full["n_purchase"].sum()) == (n, (events["event_type"] == "purchase").sum())
    counts = full[[f"n_{t}" for t in EVENT_TYPES]].sum(axis=1)
    assert (counts == full["n_events"]).all()
    assert full["return_rate"].between(0, 1).all() and full["email_click_rate"].between(0, 1).all()


def test_cart_window_open_decided_and_bought() -> None:
    ev = make([
        e("c1", "2025-03-01T00:00:00Z", "add_to_cart", item_id="x"),
        e("p1", "2025-03-01T05:00:00Z", "purchase", item_id="x"),  # bought within 24h: not abandoned
        e("c2", "2025-03-02T00:00:00Z", "add_to_cart", item_id="y"),
        e("p2", "2025-03-04T00:00:00Z", "purchase", item_id="y"),  # bought too late: abandoned
        e("c3", "2025-03-12T00:00:00Z", "add_to_cart", item_id="z"),  # window still open at as_of
    ])
    a = build_profiles(ev, AS_OF).iloc[0]
    assert (a["carts_decided"], a["carts_abandoned"], a["open_cart_items"]) == (2, 1, 1)
    longer = build_profiles(ev, AS_OF, ProfileConfig(cart_abandon_hours=72)).iloc[0]
    assert (longer["carts_abandoned"], longer["open_cart_items"]) == (0, 1)


def test_email_return_and_sentiment_series() -> None:
    ev = make([
        e("o1", "2025-03-01T00:00:00Z", "email_open", channel="email"),
        e("o2", "2025-03-02T00:00:00Z", "email_open", channel="email"),
        e("k1", "2025-03-02T00:01:00Z", "email_click", channel="email"),
        e("b1", "2025-03-03T00:00:00Z", "purchase", item_id="x", price=20.0),
        e("b2", "2025-03-03T00:00:00Z", "purchase", item_id="y", price=30.0),
        e("r1", "2025-03-04T00:00:00Z", "return", item_id="y"),
        e("s1", "2025-03-05T00:00:00Z", "support_message", channel="chat", text="where is my parcel"),
        e("s2", "2025-03-06T00:00:00Z", "review", rating=5.0, text="lovely"),
    ])
    a = build_profiles(ev, AS_OF).iloc[0]
    assert a["email_click_rate"] == 0.5 and a["return_rate"] == 0.5
    assert a["n_orders"] == 1 and a["avg_order_value"] == 50  # one basket, two lines
    assert (a["sentiment_count"], a["sentiment_mean"]) == (1, 1.0)  # only the rating stands in
    scored = build_profiles(ev, AS_OF, sentiment=pd.Series({"s1": -0.8, "s2": 0.2})).iloc[0]
    assert scored["sentiment_count"] == 2 and scored["sentiment_mean"] == pytest.approx(-0.3)
    assert scored["n_negative"] == 1 and scored["days_since_negative"] == pytest.approx(7 + 10 / 24)


def test_id_and_category_dtypes_do_not_change_features(three_purchases: pd.DataFrame) -> None:
    """Arrow strings take a fast path; object columns the pandas one: same profiles, same order."""
    fast = build_profiles(three_purchases, AS_OF)
    slow = build_profiles(three_purchases.astype({PROFILE_ID: object, "category": object, "item_id": object}), AS_OF)
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)
    assert list(fast[PROFILE_ID]) == ["a", "b"]


def test_category_affinity_long_format() -> None:
    ev = make([e("v1", "2025-03-01T00:00:00Z", "view", category="shoes"),
               e("v2", "2025-03-01T00:00:00Z", "view", category="shoes"),
               e("v3", "2025-03-01T00:00:00Z", "purchase", category="bags"),
               e("v4", "2025-03-01T00:00:00Z", "view", pid="b")])
    aff = category_affinity(ev, AS_OF, ProfileConfig(affinity_half_life_days=None))
    assert list(aff.columns) == [PROFILE_ID, "category", "score"]
    a = aff[aff[PROFILE_ID] == "a"].set_index("category")["score"]
    assert a["bags"] == pytest.approx(4 / 6) and a["shoes"] == pytest.approx(2 / 6)
    assert list(aff[PROFILE_ID]) == ["a", "a"]  # no category, no row
    top = build_profiles(ev, AS_OF, ProfileConfig(affinity_half_life_days=None)).set_index(PROFILE_ID)
    assert top.loc["a", TOP_CATEGORY] == "bags" and top.loc["a", "top_category_share"] == pytest.approx(4 / 6)


def test_bad_input_is_refused(three_purchases: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="timezone"):
        build_profiles(three_purchases.assign(ts=three_purchases["ts"].dt.tz_localize(None)), AS_OF)
    with pytest.raises(ValueError, match="required"):
        build_profiles(three_purchases.drop(columns=["channel"]), AS_OF)
    with pytest.raises(ValueError):
        ProfileConfig(cart_abandon_hours=0)


def test_empty_and_build_to_dir(three_purchases: pd.DataFrame, tmp_path) -> None:
    empty = build_profiles(three_purchases, "2020-01-01T00:00:00Z")
    assert len(empty) == 0 and list(empty.columns)[:2] == [PROFILE_ID, FEATURE_COLUMNS[0]]
    src = tmp_path / "events.parquet"
    write_events(three_purchases, src)
    path = build_features_to_dir(src, None, tmp_path / "out")
    got = pd.read_parquet(path)
    assert len(got) == 2 and got.set_index(PROFILE_ID).loc["b", "days_since_last_event"] == pytest.approx(1 / 86400)
    assert EVENT_ID not in got
