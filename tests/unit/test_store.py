"""Online store: idempotence, crash durability, merges, erasure, caps, agreement with the offline build,
and the bulk (vectorised) paths giving exactly what the per-event paths give."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd
import pytest

import features.store as store_module
from features.identity import IdentityConfig, resolve_identities
from features.profiles import build_profiles
from features.schema import CUSTOMER_ID, DEVICE_ID, EMAIL, EVENT_ID, PROFILE_ID, validate_events
from features.store import SQLiteProfileStore, StoreConfig, profile_id_for
from features.synthetic import SyntheticConfig, generate

ROOT = Path(__file__).resolve().parents[2]


def ev(eid: str, ts: str, etype: str = "view", channel: str = "web", **kw: object) -> dict[str, object]:
    row: dict[str, object] = {"event_id": eid, "ts": ts, "channel": channel, "event_type": etype}
    if etype in ("view", "add_to_cart", "purchase", "return", "remove_from_cart") and "item_id" not in kw:
        kw["item_id"] = "sku1"
    row.update(kw)
    return row


@pytest.fixture()
def store(tmp_path: Path) -> SQLiteProfileStore:
    return SQLiteProfileStore(tmp_path / "s.db")


def test_resend_is_idempotent(store: SQLiteProfileStore) -> None:
    batch = pd.DataFrame([ev("e1", "2025-01-01T00:00:00Z", customer_id="c1"),
                          ev("e2", "2025-01-02T00:00:00Z", "purchase", customer_id="c1", price=5.0)])
    first = store.append_events(batch)
    assert (first.accepted, first.duplicates) == (2, 0)
    pid = first.profile_ids[0]
    before = store.get_profile(pid)
    again = store.append_events(batch)
    assert (again.accepted, again.duplicates) == (0, 2)
    assert len(store.export_events()) == 2
    assert store.get_profile(pid) == before


def test_bad_rows_reported_good_rows_kept(store: SQLiteProfileStore) -> None:
    batch = pd.DataFrame([ev("e1", "2025-01-01T00:00:00Z", customer_id="c1"),
                          ev("e2", "2025-01-01T00:00:00Z", channel="fax", customer_id="c1")])
    r = store.append_events(batch)
    assert (r.accepted, r.rejected) == (1, 1)
    assert r.errors[0]["field"] == "channel"


def test_profile_id_rule_and_raw_email_resolves(store: SQLiteProfileStore) -> None:
    r = store.append_events(pd.DataFrame([ev("e1", "2025-01-01T00:00:00Z", customer_id="c1",
                                             email="Ann@Example.com")]))
    # component id = sha1 of the smallest token; email is stored hashed, so the customer token is smaller
    assert r.profile_ids == (profile_id_for("customer_id:c1"),)
    assert store.resolve({EMAIL: " ann@example.COM "}) == r.profile_ids[0]
    assert store.resolve({CUSTOMER_ID: "nobody"}) is None
    assert "Ann@Example.com" not in store.export_events().to_string()


def test_merge_keeps_both_histories_and_state(store: SQLiteProfileStore) -> None:
    a = store.append_events(pd.DataFrame([ev("e1", "2025-01-01T00:00:00Z", device_id="d9", item_id="x")]))
    b = store.append_events(pd.DataFrame([ev("e2", "2025-01-02T00:00:00Z", "purchase", customer_id="c1",
                                             item_id="y")]))
    assert a.profile_ids != b.profile_ids
    link = store.append_events(pd.DataFrame([ev("e3", "2025-01-03T00:00:00Z", customer_id="c1", device_id="d9",
                                                item_id="z")]))
    pid = profile_id_for("customer_id:c1")
    assert link.profile_ids == (pid,) and set(link.merged) == {a.profile_ids[0]}
    assert set(store.events_for([pid])[EVENT_ID]) == {"e1", "e2", "e3"}
    prof = store.get_profile(pid)
    assert [v.item_id for v in prof.recent_views] == ["z", "x"]
    assert [p.item_id for p in prof.purchases] == ["y"]
    # the old id still finds the merged profile
    assert store.get_profile(a.profile_ids[0]).profile_id == pid


def test_get_profiles_equals_get_profile_one_by_one(tmp_path: Path) -> None:
    """The bulk read (batch scoring) answers exactly what single reads do: merged ids followed, unknown None,
    and a write after a cached bulk read is seen by the next one."""
    fresh = SQLiteProfileStore(tmp_path / "a.db")
    fresh.append_events(pd.DataFrame([ev("e1", "2025-01-01T00:00:00Z", device_id="d9", item_id="x"),
                                      ev("e2", "2025-01-02T00:00:00Z", "purchase", customer_id="c1", item_id="y"),
                                      ev("e3", "2025-01-02T00:00:00Z", "purchase", customer_id="c2", item_id="w")]))
    old = fresh.resolve({"device_id": "d9"})
    fresh.append_events(pd.DataFrame([ev("e4", "2025-01-03T00:00:00Z", customer_id="c1", device_id="d9")]))
    ids = [profile_id_for("customer_id:c1"), old, "p_nobody", profile_id_for("customer_id:c2")]
    single = SQLiteProfileStore(tmp_path / "a.db")  # own cache: the single path from cold
    expected = [single.get_profile(i) for i in ids]
    assert fresh.get_profiles(ids) == expected == SQLiteProfileStore(tmp_path / "a.db").get_profiles(ids)
    assert expected[0] == expected[1] and expected[2] is None
    uncached = SQLiteProfileStore(tmp_path / "a.db", cache=False)
    assert [uncached.get_profile(i) for i in ids] == uncached.get_profiles(ids) == expected
    fresh.append_events(pd.DataFrame([ev("e5", "2025-01-04T00:00:00Z", "purchase", customer_id="c2", item_id="v")]))
    assert {p.item_id for p in fresh.get_profiles(ids)[3].purchases} == {"w", "v"}


def test_shared_device_stops_linking(tmp_path: Path) -> None:
    store = SQLiteProfileStore(tmp_path / "s.db", config=StoreConfig(max_profiles_per_device=1))
    store.append_events(pd.DataFrame([ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", device_id="kiosk")]))
    r = store.append_events(pd.DataFrame([ev("e2", "2025-01-02T00:00:00Z", customer_id="c2", device_id="kiosk")]))
    assert r.profile_ids == (profile_id_for("customer_id:c2"),)
    assert store.resolve({CUSTOMER_ID: "c1"}) != store.resolve({CUSTOMER_ID: "c2"})


def test_online_state_cart_and_negative(store: SQLiteProfileStore) -> None:
    store.append_events(pd.DataFrame([
        ev("e1", "2025-01-01T00:00:00Z", "add_to_cart", customer_id="c1", item_id="a"),
        ev("e2", "2025-01-01T01:00:00Z", "add_to_cart", customer_id="c1", item_id="b"),
        ev("e3", "2025-01-01T02:00:00Z", "purchase", customer_id="c1", item_id="a"),
        ev("e4", "2025-01-05T00:00:00Z", "review", "email", customer_id="c1", rating=1.0, text="broke"),
    ]))
    prof = store.get_profile(store.resolve({CUSTOMER_ID: "c1"}))
    assert [c.item_id for c in prof.cart_items] == ["b"]
    assert prof.last_negative_ts == pd.Timestamp("2025-01-05T00:00:00Z").to_pydatetime()
    assert prof.channel_last_seen["email"] > prof.channel_last_seen["web"]
    assert prof.identifiers == (CUSTOMER_ID,)


def test_features_for_equals_offline_build_and_cache_invalidates(store: SQLiteProfileStore) -> None:
    rows = [ev(f"e{i}", f"2025-01-{1 + i:02d}T00:00:00Z", "purchase" if i % 3 == 0 else "view",
               customer_id=f"c{i % 4}", item_id=f"i{i % 5}", category=f"k{i % 2}", price=float(i))
            for i in range(20)]
    store.append_events(pd.DataFrame(rows))
    pids = sorted({store.resolve({CUSTOMER_ID: f"c{i}"}) for i in range(4)})
    as_of = "2025-02-01T00:00:00Z"
    online = store.features_for(pids[:3], as_of)
    offline = build_profiles(store.events_for(pids[:3]), as_of)
    pd.testing.assert_frame_equal(online, offline)
    # a new event must change the (cached) row
    store.append_events(pd.DataFrame([ev("new", "2025-01-30T00:00:00Z", "purchase", customer_id="c0",
                                         price=100.0)]))
    after = store.features_for(pids[:3], as_of).set_index(PROFILE_ID)
    c0 = store.resolve({CUSTOMER_ID: "c0"})
    assert after.loc[c0, "spend_total"] == online.set_index(PROFILE_ID).loc[c0, "spend_total"] + 100.0


def test_erase_is_complete_and_resent_events_do_not_resurrect(store: SQLiteProfileStore) -> None:
    batch = pd.DataFrame([ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", device_id="d1"),
                          ev("e2", "2025-01-02T00:00:00Z", customer_id="c2")])
    store.append_events(batch)
    pid = store.resolve({CUSTOMER_ID: "c1"})
    store.set_consent(pid, "personalization", True)
    store.reserve_contact(pid, "email", "2025-01-03T00:00:00Z", {"24h": 1})
    assert store.erase_profile(pid) == 1
    assert store.get_profile(pid) is None
    assert store.resolve({CUSTOMER_ID: "c1"}) is None and store.resolve({DEVICE_ID: "d1"}) is None
    assert store.get_consent(pid) == {}
    assert list(store.export_events()[EVENT_ID]) == ["e2"]
    # the same event re-sent, and an old event with another id carrying the erased identifier
    late = pd.DataFrame([ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", device_id="d1"),
                         ev("e9", "2025-01-01T12:00:00Z", device_id="d1")])
    r = store.append_events(late)
    assert (r.accepted, r.suppressed) == (0, 2)
    assert list(store.export_events()[EVENT_ID]) == ["e2"]
    con = store._conn()
    for table in ("events", "tokens", "state", "consent", "contacts"):
        assert con.execute(f"SELECT COUNT(*) FROM {table} WHERE profile_id=?", (pid,)).fetchone()[0] == 0


def test_contact_cap_never_exceeded_under_threads(tmp_path: Path) -> None:
    store = SQLiteProfileStore(tmp_path / "s.db")
    granted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            ok = store.reserve_contact("p1", "email", "2025-01-01T12:00:00Z", {"24h": 3, "7D": 5})
            with lock:
                granted.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 3
    # outside the 24h window (but inside 7 days) two more fit, then the weekly cap holds
    later = [store.reserve_contact("p1", "email", "2025-01-03T12:00:00Z", {"24h": 3, "7D": 5}) for _ in range(4)]
    assert later == [True, True, False, False]
    assert store.reserve_contact("p1", "sms", "2025-01-03T12:00:00Z", {"24h": 1})


def test_stock_defaults_to_in_stock(store: SQLiteProfileStore) -> None:
    store.set_stock("a", False)
    assert store.in_stock(["a", "b"]) == {"a": False, "b": True}


# -- bulk paths: same answers as the per-event paths --------------------------------------------
AS_OF = "2030-01-01T00:00:00Z"
SMALL_ONLY = 10**9  # bulk_rows no batch reaches: everything goes the per-event way


def _synthetic(customers: int = 60, shared_device_rate: float = 0.0) -> pd.DataFrame:
    return generate(SyntheticConfig(customers=customers, days=14, seed=3,
                                    shared_device_rate=shared_device_rate)).events


def _snapshot(store: SQLiteProfileStore) -> dict[str, object]:
    """Everything a caller can observe: event -> profile, tokens, aliases, online states, features."""
    con = store._conn()
    exported = store.export_events()
    pids = sorted(exported[PROFILE_ID].unique())
    return {
        "event_profile": dict(zip(exported[EVENT_ID], exported[PROFILE_ID], strict=True)),
        "tokens": sorted(con.execute("SELECT token, profile_id FROM tokens").fetchall()),
        "aliases": sorted(con.execute("SELECT old_id, new_id FROM aliases").fetchall()),
        "shared": sorted(con.execute("SELECT device FROM shared_devices").fetchall()),
        "profiles": {p: store.get_profile(p) for p in pids},
        "features": store.features_for(pids, AS_OF),
    }


def _assert_same(a: dict[str, object], b: dict[str, object], aliases: bool = True) -> None:
    for key in ("event_profile", "tokens", "shared", "profiles") + (("aliases",) if aliases else ()):
        assert a[key] == b[key], key
    pd.testing.assert_frame_equal(a["features"], b["features"])


def test_bulk_load_equals_appending_batch_by_batch(tmp_path: Path) -> None:
    events = _synthetic()
    cfg = IdentityConfig().max_profiles_per_device
    bulk = SQLiteProfileStore(tmp_path / "bulk.db", config=StoreConfig(bulk_rows=100))
    res = bulk.load_events(events, progress=False)
    assert res.accepted == len(events) == len(res.accepted_ids)
    small = SQLiteProfileStore(tmp_path / "small.db", config=StoreConfig(bulk_rows=SMALL_ONLY))
    ordered = events.sort_values("ts", kind="stable")
    for start in range(0, len(ordered), 37):  # odd-sized batches: links and merges happen across batches
        small.append_events(ordered.iloc[start:start + 37])
    assert cfg >= 3  # no planted shared devices here, so batch boundaries cannot change the links
    # (aliases differ by design: only merges across batches leave old ids behind)
    _assert_same(_snapshot(bulk), _snapshot(small), aliases=False)
    # and the features are the offline build of the same events
    snap = _snapshot(bulk)
    offline = build_profiles(bulk.export_events(), AS_OF)
    pd.testing.assert_frame_equal(snap["features"], offline)


def test_bulk_load_links_like_offline_resolution_with_shared_devices(tmp_path: Path) -> None:
    events = _synthetic(customers=120, shared_device_rate=0.05)
    store = SQLiteProfileStore(tmp_path / "s.db", config=StoreConfig(bulk_rows=100))
    store.load_events(events, progress=False)
    stored = store.export_events().set_index(EVENT_ID)[PROFILE_ID]
    offline = resolve_identities(events).set_index(EVENT_ID)[PROFILE_ID]
    assert len(store._conn().execute("SELECT * FROM shared_devices").fetchall()) > 0
    pd.testing.assert_series_equal(stored.sort_index(), offline.sort_index().astype(stored.dtype),
                                   check_names=False)


def test_bulk_and_per_event_paths_agree_on_one_batch_into_an_existing_store(tmp_path: Path) -> None:
    """Merges with stored profiles, a device that turns shared, events with only shared tokens, late events."""
    first = pd.DataFrame([
        ev("a1", "2025-01-01T00:00:00Z", device_id="kiosk", customer_id="c1"),
        ev("a2", "2025-01-02T00:00:00Z", "add_to_cart", device_id="d2", item_id="x"),
        ev("a3", "2025-01-03T00:00:00Z", "purchase", customer_id="c3", item_id="y", price=3.0),
        ev("a4", "2025-01-04T00:00:00Z", email="z@example.com"),
    ])
    second = pd.DataFrame([
        ev("b1", "2025-01-05T00:00:00Z", device_id="kiosk", customer_id="c2"),  # kiosk now shared
        ev("b2", "2025-01-06T00:00:00Z", "review", "email", device_id="kiosk", rating=1.0, text="no"),
        ev("b3", "2025-01-07T00:00:00Z", "add_to_cart", customer_id="c3", device_id="d2", item_id="w"),
        ev("b4", "2025-01-01T12:00:00Z", "view", customer_id="c3", email="z@example.com"),  # late, merges a4
        ev("b5", "2025-01-08T00:00:00Z", "remove_from_cart", customer_id="c3", item_id="x"),
        ev("a3", "2025-01-03T00:00:00Z", "purchase", customer_id="c3", item_id="y", price=3.0),  # re-sent
    ])
    snaps, results = [], []
    for name, rows in (("small", SMALL_ONLY), ("bulk", 1)):
        store = SQLiteProfileStore(tmp_path / f"{name}.db", config=StoreConfig(max_profiles_per_device=1))
        store.append_events(first)
        store.config = StoreConfig(max_profiles_per_device=1, bulk_rows=rows)
        results.append(store.append_events(second))
        snaps.append(_snapshot(store))
    _assert_same(*snaps)
    small, bulk = results
    assert (small.accepted, small.duplicates, small.profile_ids, small.merged) == \
        (bulk.accepted, bulk.duplicates, bulk.profile_ids, bulk.merged)
    assert small.merged  # the batch did merge stored profiles
    prof = snaps[0]["profiles"][profile_id_for("customer_id:c3")]
    assert [c.item_id for c in prof.cart_items] == ["w"] and prof.purchases[0].item_id == "y"


def test_validated_append_skips_validation_and_stays_idempotent(store: SQLiteProfileStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    batch = validate_events(pd.DataFrame([ev("e1", "2025-01-01T00:00:00Z", customer_id="c1",
                                             email="Ann@Example.com"),
                                          ev("e2", "2025-01-02T00:00:00Z", "purchase", customer_id="c1")]))
    def boom(*_: object, **__: object) -> None:
        raise AssertionError("validated frames must not be validated again")

    monkeypatch.setattr(store_module, "validate_events", boom)
    first = store.append_events(batch.valid, validated=True)
    assert (first.accepted, first.accepted_ids) == (2, ("e1", "e2"))
    again = store.append_events(batch.valid, validated=True)
    assert (again.accepted, again.duplicates, again.accepted_ids) == (0, 2, ())
    assert store.resolve({EMAIL: "ann@example.com"}) == first.profile_ids[0]


def test_warm_features_serves_from_cache_until_a_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteProfileStore(tmp_path / "s.db")
    store.load_events(_synthetic(customers=30), progress=False)
    pids = sorted(store.export_events()[PROFILE_ID].unique())
    assert store.warm_features(AS_OF) == len(pids)
    builds: list[int] = []
    real = store._build_features

    def counting(conn: object, ids: object, as_of_ns: int) -> dict[str, tuple[object, ...]]:
        builds.append(len(ids) if ids is not None else -1)
        return real(conn, ids, as_of_ns)

    monkeypatch.setattr(store, "_build_features", counting)
    warm = store.features_for(pids, AS_OF)
    assert builds == []  # all from the warmed cache
    pd.testing.assert_frame_equal(warm, build_profiles(store.events_for(pids), AS_OF))
    pid = pids[0]
    cust = store.events_for([pid])[CUSTOMER_ID].dropna().iloc[0]
    r = store.append_events(pd.DataFrame([ev("late-buy", "2029-12-31T00:00:00Z", "purchase", customer_id=cust,
                                             price=1000.0)]))
    assert r.profile_ids == (pid,)
    after = store.features_for(pids, AS_OF).set_index(PROFILE_ID)
    assert builds == [1]  # only the written profile was rebuilt
    before = warm.set_index(PROFILE_ID)
    assert after.loc[pid, "spend_total"] == before.loc[pid, "spend_total"] + 1000.0
    pd.testing.assert_frame_equal(after.drop(index=pid), before.drop(index=pid))


_WRITER = textwrap.dedent("""
    import sys, pandas as pd
    from features.store import SQLiteProfileStore
    store = SQLiteProfileStore(sys.argv[1])
    for i in range(100000):
        store.append_events(pd.DataFrame([{"event_id": f"k{i}", "ts": "2025-01-01T00:00:00Z", "channel": "web",
                                           "event_type": "search", "customer_id": f"c{i % 7}"}]))
        print(f"ACK k{i}", flush=True)
""")


def test_acknowledged_events_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    acked: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acked.append(line.split()[1])
        if len(acked) >= 40:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stored = set(SQLiteProfileStore(db).export_events()[EVENT_ID])
    assert set(acked) <= stored
