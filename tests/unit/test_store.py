"""Online store: idempotence, crash durability, merges, erasure, caps, and agreement with the offline build."""

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

from features.profiles import build_profiles
from features.schema import CUSTOMER_ID, DEVICE_ID, EMAIL, EVENT_ID, PROFILE_ID
from features.store import SQLiteProfileStore, StoreConfig, profile_id_for

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
