"""SQLite online store specifics (the backend-independent answers are in store_contract.py, run by
test_store_sqlite.py): idempotence, crash durability, merges, erasure, caps, agreement with the offline build,
the bulk (vectorised) paths giving exactly what the per-event paths give, typed profile entries, consent
on the inputs of feature rows, idempotent contact reservations, the catalog and stock, and old files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import features.store as store_module
import features.store.base as store_base
from features.catalog import Catalog
from features.consent import granted_purposes, source_of, usable_sources
from features.identity import IdentityConfig, resolve_identities
from features.profiles import FEATURE_COLUMNS, NEVER_DAYS, TOP_CATEGORY, build_profiles
from features.schema import (
    CHANNEL,
    CUSTOMER_ID,
    EMAIL,
    EVENT_ID,
    EVENT_TYPE,
    PROFILE_ID,
    TS,
    event_digest,
    validate_events,
)
from features.store import CONFLICT_REASON, SQLiteProfileStore, StoreConfig, profile_id_for
from features.synthetic import SyntheticConfig, generate

ROOT = Path(__file__).resolve().parents[2]


def ev(eid: str, ts: str, etype: str = "view", channel: str = "web", **kw: object) -> dict[str, object]:
    row: dict[str, object] = {"event_id": eid, "ts": ts, "channel": channel, "event_type": etype}
    if etype in ("view", "add_to_cart", "purchase", "return", "remove_from_cart", "try_on",
                 "social_like") and "item_id" not in kw:
        kw["item_id"] = "sku1"
    row.update(kw)
    return row


def consented_events(store: SQLiteProfileStore, events: pd.DataFrame) -> pd.DataFrame:
    """The events each profile's consent lets into its feature row, decided row by row (the reference)."""
    usable = {p: usable_sources(granted_purposes(store.get_consent(p))) for p in events[PROFILE_ID].unique()}
    keep = [source_of(e, c) in usable[p]
            for e, c, p in zip(events[EVENT_TYPE], events[CHANNEL], events[PROFILE_ID], strict=True)]
    return events.loc[keep]


def assert_features_are_the_consented_build(store: SQLiteProfileStore, online: pd.DataFrame,
                                            events: pd.DataFrame, as_of: str) -> set[str]:
    """`online` is build_profiles of the consented events, plus an empty-history row for every profile
    that had events before as_of but none it allows; returns those profiles."""
    offline = build_profiles(consented_events(store, events), as_of)
    built = online[PROFILE_ID].isin(offline[PROFILE_ID])
    pd.testing.assert_frame_equal(online.loc[built].reset_index(drop=True), offline)
    before = set(events.loc[events[TS] < pd.Timestamp(as_of), PROFILE_ID])
    blank = set(online.loc[~built, PROFILE_ID])
    assert blank == before - set(offline[PROFILE_ID])
    assert_empty_history(online.loc[~built])
    return blank


def assert_empty_history(rows: pd.DataFrame) -> None:
    """Rows of profiles none of whose events were used: nothing counted, nothing recent, all alike."""
    for _, row in rows.iterrows():
        for col in FEATURE_COLUMNS:
            expected = NEVER_DAYS if col.startswith("days_") or col == "purchase_cadence_days" else 0.0
            assert row[col] == expected, (col, row[col])
        assert row[TOP_CATEGORY] == ""


@pytest.fixture()
def store(tmp_path: Path) -> SQLiteProfileStore:
    return SQLiteProfileStore(tmp_path / "s.db")






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





def test_erasure_leaves_no_row_in_any_sqlite_table(store: SQLiteProfileStore) -> None:
    """The backend-independent answers are in store_contract; here, no row of the profile in the file."""
    store.append_events(pd.DataFrame([ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", device_id="d1"),
                                      ev("e2", "2025-01-02T00:00:00Z", customer_id="c2")]))
    pid = store.resolve({CUSTOMER_ID: "c1"})
    store.set_consent(pid, "personalization", True)
    store.reserve_contact(pid, "email", "2025-01-03T00:00:00Z", {"24h": 1})
    assert store.erase_profile(pid) == 1
    con = store._conn()
    for table in ("events", "tokens", "state", "consent", "contacts", "profiles"):
        assert con.execute(f"SELECT COUNT(*) FROM {table} WHERE profile_id=?", (pid,)).fetchone()[0] == 0




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
    # and the features are the offline build of the same events, as far as each profile's consent allows
    snap = _snapshot(bulk)
    blank = assert_features_are_the_consented_build(bulk, snap["features"], bulk.export_events(), AS_OF)
    assert len(snap["features"]) == len(blank) + len(build_profiles(consented_events(
        bulk, bulk.export_events()), AS_OF))


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

    monkeypatch.setattr(store_base, "validate_events", boom)  # validation lives above the backends
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
    assert_features_are_the_consented_build(store, warm, store.events_for(pids), AS_OF)
    pid = pids[0]
    cust = store.events_for([pid])[CUSTOMER_ID].dropna().iloc[0]
    r = store.append_events(pd.DataFrame([ev("late-buy", "2025-06-01T00:00:00Z", "purchase", customer_id=cust,
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


# -- typed profile entries ----------------------------------------------------------------------
def _typed_history() -> pd.DataFrame:
    return pd.DataFrame([
        ev("t1", "2025-01-01T10:00:00Z", "view", "web", customer_id="c1", item_id="a", category="Women>Dresses"),
        ev("t2", "2025-01-01T11:00:00Z", "try_on", "store", customer_id="c1", item_id="b", category="Women > Dresses",
           store_id="s1"),
        ev("t3", "2025-01-01T12:00:00Z", "social_like", "social", customer_id="c1", item_id="c", category="Beauty"),
        ev("t4", "2025-01-01T13:00:00Z", "email_click", "email", customer_id="c1", item_id="d", category="Beauty"),
        ev("t5", "2025-01-01T14:00:00Z", "add_to_cart", "app", customer_id="c1", item_id="e", category="Shoes"),
        ev("t6", "2025-01-01T15:00:00Z", "purchase", "store", customer_id="c1", item_id="f", category="Shoes"),
        ev("t7", "2025-01-01T16:00:00Z", "return", "web", customer_id="c1", item_id="f", category="Shoes"),
        ev("t8", "2025-01-01T17:00:00Z", "email_open", "email", customer_id="c1"),
    ])


@pytest.mark.parametrize("bulk_rows", [SMALL_ONLY, 1])
def test_profile_entries_keep_channel_event_type_and_sources(tmp_path: Path, bulk_rows: int) -> None:
    store = SQLiteProfileStore(tmp_path / "s.db", config=StoreConfig(bulk_rows=bulk_rows))
    r = store.append_events(_typed_history())
    assert r.accepted == 8
    prof = store.get_profile(store.resolve({CUSTOMER_ID: "c1"}))
    dresses = "Women > Dresses"  # the events' categories are taken as they come (the catalog normalises its own)
    assert [(e.item_id, e.channel, e.event_type) for e in prof.recent_views] == [
        ("d", "email", "email_click"), ("c", "social", "social_like"), ("b", "store", "try_on"), ("a", "web", "view")]
    assert [e.category for e in prof.recent_views] == ["Beauty", "Beauty", dresses, "Women>Dresses"]
    assert [tuple(e)[:1] + tuple(e)[3:] for e in prof.cart_items] == [("e", "app", "add_to_cart")]
    assert [(e.item_id, e.category, e.channel, e.event_type) for e in prof.purchases] == [
        ("f", "Shoes", "store", "purchase")]
    assert [(e.item_id, e.channel, e.event_type) for e in prof.returns] == [("f", "web", "return")]
    assert all(e.ts.tzinfo is not None and e.ts.utcoffset().total_seconds() == 0
               for e in prof.recent_views + prof.cart_items + prof.purchases + prof.returns)
    assert prof.recent_views[-1].ts == pd.Timestamp("2025-01-01T10:00:00Z").to_pydatetime()
    assert prof.category_counts == {"Women>Dresses": 1, dresses: 1, "Beauty": 2, "Shoes": 3}
    assert prof.category_sources == {"Women>Dresses": {"behavioral": 1}, dresses: {"store_visits": 1},
                                     "Beauty": {"social": 1, "email_engagement": 1},
                                     "Shoes": {"behavioral": 1, "purchase_history": 2}}
    for cat, n in prof.category_counts.items():
        assert sum(prof.category_sources[cat].values()) == n
    assert prof.sources == {"behavioral", "store_visits", "social", "email_engagement", "purchase_history"}
    assert prof.timezone is None  # no event said


@pytest.mark.parametrize("bulk_rows", [SMALL_ONLY, 1])
def test_timezone_is_the_latest_given_one(tmp_path: Path, bulk_rows: int) -> None:
    valid = validate_events(_typed_history()).valid
    zones = pd.array(["Europe/Paris", None, "America/New_York", None, None, None, None, None], dtype="string")
    store = SQLiteProfileStore(tmp_path / "s.db", config=StoreConfig(bulk_rows=bulk_rows))
    store.append_events(valid.assign(timezone=zones), validated=True)
    pid = store.resolve({CUSTOMER_ID: "c1"})
    assert store.get_profile(pid).timezone == "America/New_York"
    # a later event without a zone keeps it; a late (older) one with another zone does not replace it
    later = validate_events(pd.DataFrame([ev("t9", "2025-01-02T00:00:00Z", "search", customer_id="c1"),
                                          ev("t0", "2024-12-31T00:00:00Z", "search", customer_id="c1")])).valid
    store.append_events(later.assign(timezone=pd.array([None, "Asia/Tokyo"], dtype="string")), validated=True)
    assert store.get_profile(pid).timezone == "America/New_York"
    newest = validate_events(pd.DataFrame([ev("t10", "2025-01-03T00:00:00Z", "search", customer_id="c1")])).valid
    store.append_events(newest.assign(timezone=pd.array(["Asia/Tokyo"], dtype="string")), validated=True)
    assert store.get_profile(pid).timezone == "Asia/Tokyo"


def test_bulk_and_per_event_folds_agree_on_sources_and_timezones(tmp_path: Path) -> None:
    """The vectorised fold and the event-by-event fold give the same typed state, zones with ties included."""
    raw = _synthetic(customers=80).drop(columns=["timezone"], errors="ignore")
    valid = validate_events(raw).valid
    rng = np.random.default_rng(5)
    zones = np.array(["Europe/Paris", "America/New_York", "Asia/Tokyo", None], dtype=object)
    valid = valid.assign(timezone=pd.array(zones[rng.integers(0, len(zones), len(valid))], dtype="string"))
    # ties: the same instant with two zones, in both orders
    cust = valid[CUSTOMER_ID].dropna().iloc[0]
    tie = validate_events(pd.DataFrame([ev("tie1", "2025-06-01T00:00:00Z", "search", customer_id=cust),
                                        ev("tie2", "2025-06-01T00:00:00Z", "search", customer_id=cust)])).valid
    assert len(tie) == 2
    valid = pd.concat([valid, tie.assign(timezone=pd.array(["Asia/Tokyo", "Europe/Paris"], dtype="string"))],
                      ignore_index=True)
    bulk = SQLiteProfileStore(tmp_path / "bulk.db", config=StoreConfig(bulk_rows=100))
    bulk.load_events(valid, progress=False, validated=True)
    small = SQLiteProfileStore(tmp_path / "small.db", config=StoreConfig(bulk_rows=SMALL_ONLY))
    ordered = valid.sort_values("ts", kind="stable")
    for start in range(0, len(ordered), 37):
        small.append_events(ordered.iloc[start:start + 37], validated=True)
    # and a late batch, so the per-event path also replays histories
    rev = SQLiteProfileStore(tmp_path / "rev.db", config=StoreConfig(bulk_rows=SMALL_ONLY))
    for start in range(0, len(ordered), 500):
        rev.append_events(ordered.iloc[len(ordered) - start - 500 if len(ordered) > start + 500 else 0:
                                       len(ordered) - start], validated=True)
    a, b, c = _snapshot(bulk), _snapshot(small), _snapshot(rev)
    _assert_same(a, b, aliases=False)
    assert a["profiles"] == c["profiles"]
    profiles = list(a["profiles"].values())
    assert any(len(p.sources) >= 3 for p in profiles)  # not vacuous: mixed sources are compared
    assert any(len(srcs) >= 2 for p in profiles for srcs in p.category_sources.values())
    assert sum(p.timezone is not None for p in profiles) > len(profiles) // 2
    assert a["profiles"][bulk.resolve({CUSTOMER_ID: cust})].timezone == "Europe/Paris"  # the larger name wins a tie


# -- files written by the previous release ------------------------------------------------------
def _v1_doc(doc: str) -> str:
    """The state doc as the release before typed entries wrote it."""
    s = json.loads(doc)
    return json.dumps({"views": [[i, c, t] for i, c, t, _, e in s["views"] if e == "view"],
                       "cart": {i: v[0] for i, v in s["cart"].items()},
                       "purchases": [[i, t] for i, _, t, _ in s["purchases"]],
                       "returns": [[i, t] for i, _, t, _ in s["returns"]],
                       "cats": s["cats"], "chan": s["chan"], "neg": s["neg"], "ids": s["ids"], "last": s["last"]})


def _downgrade(path: Path, stock: list[tuple[str, int]]) -> None:
    """Turn a store file into the previous release's layout: no catalog, a `stock` table, contacts
    without keys, events without the timezone column, version-less state docs."""
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE events DROP COLUMN timezone")
    con.execute("ALTER TABLE contacts DROP COLUMN key")
    for table in ("catalog", "store_stock", "meta"):
        con.execute(f"DROP TABLE {table}")
    con.execute("CREATE TABLE stock (item_id TEXT PRIMARY KEY, in_stock INTEGER NOT NULL)")
    con.executemany("INSERT INTO stock VALUES (?, ?)", stock)
    docs = con.execute("SELECT profile_id, doc FROM state").fetchall()
    con.executemany("UPDATE state SET doc=? WHERE profile_id=?", [(_v1_doc(d), p) for p, d in docs])
    con.execute("PRAGMA user_version=0")
    con.commit()
    con.close()


def test_an_old_file_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    first = SQLiteProfileStore(path)
    first.append_events(pd.concat([_typed_history(), pd.DataFrame([ev("o1", "2025-01-02T00:00:00Z", "try_on",
                                                                       "store", customer_id="c2")])]))
    pids = sorted(first.export_events()[PROFILE_ID].unique())
    expected = {p: first.get_profile(p) for p in pids}
    c1 = first.resolve({CUSTOMER_ID: "c1"})
    caps = {"24h": 2}
    assert [first.reserve_contact(c1, "email", "2025-01-05T00:00:00Z", caps) for _ in range(3)] == [True, True, False]
    first.close()
    _downgrade(path, [("sku-out", 0), ("sku-in", 1)])
    assert all("v" not in json.loads(d) for (d,) in sqlite3.connect(path).execute("SELECT doc FROM state"))

    store = SQLiteProfileStore(path)
    assert {p: store.get_profile(p) for p in pids} == expected  # typed entries rebuilt from the events
    assert store.in_stock(["sku-out", "sku-in", "never-heard-of"]) == {"sku-out": False, "sku-in": True,
                                                                        "never-heard-of": True}
    assert store.catalog().get("sku-out").in_stock is False and store.catalog_version() > 0
    assert not store.reserve_contact(c1, "email", "2025-01-05T01:00:00Z", caps)  # earlier contacts still count
    assert len(store.contacts_for(c1)) == 2
    con = sqlite3.connect(path)
    assert con.execute("SELECT name FROM sqlite_master WHERE name='stock'").fetchone() is None
    assert con.execute("PRAGMA user_version").fetchone()[0] == store_module._FILE_VERSION
    assert {json.loads(d)["v"] for (d,) in con.execute("SELECT doc FROM state")} == {store_module._STATE_VERSION}
    con.close()
    # opening again changes nothing (the migration ran once)
    version = store.catalog_version()
    assert SQLiteProfileStore(path).catalog_version() == version

    # a doc an older release writes into the migrated file is rebuilt on read, and stored by the next write
    con = sqlite3.connect(path)
    (doc,) = con.execute("SELECT doc FROM state WHERE profile_id=?", (c1,)).fetchone()
    con.execute("UPDATE state SET doc=? WHERE profile_id=?", (_v1_doc(doc), c1))
    con.commit()
    reader = SQLiteProfileStore(path, cache=False)
    assert reader.get_profile(c1) == expected[c1] and reader.get_profiles([c1]) == [expected[c1]]
    reader.append_events(pd.DataFrame([ev("o2", "2025-01-03T00:00:00Z", "view", customer_id="c1", item_id="z")]))
    assert json.loads(con.execute("SELECT doc FROM state WHERE profile_id=?", (c1,)).fetchone()[0])["v"] == store_module._STATE_VERSION
    assert reader.get_profile(c1).recent_views[0].item_id == "z"
    con.close()


# -- consent on the inputs of feature rows ------------------------------------------------------
def _store_with_mixed_sources(tmp_path: Path) -> tuple[SQLiteProfileStore, dict[str, str]]:
    store = SQLiteProfileStore(tmp_path / "s.db")
    store.load_events(_synthetic(customers=40), progress=False)
    events = store.export_events()
    by_src = events.assign(src=[source_of(e, c) for e, c in zip(events[EVENT_TYPE], events[CHANNEL], strict=True)])
    in_store = by_src.loc[by_src["src"] == "store_visits", PROFILE_ID].value_counts()
    web = by_src.loc[by_src["src"] == "behavioral", PROFILE_ID].value_counts()
    picks = {"store": in_store.index[0], "no_behavioral": web.index[0], "off": web.index[1]}
    assert len(set(picks.values())) == 3
    return store, picks


def test_feature_rows_are_built_only_from_granted_sources(tmp_path: Path) -> None:
    store, picks = _store_with_mixed_sources(tmp_path)
    pids = sorted(store.export_events()[PROFILE_ID].unique())
    before = store.features_for(pids, AS_OF).set_index(PROFILE_ID)
    assert before.loc[picks["store"], "n_try_on"] == 0  # by default in-store behaviour is left out
    assert (before["n_try_on"] == 0).all() and (before["n_social_like"] == 0).all()
    store.set_consent(picks["store"], "store_visits", True)
    store.set_consent(picks["no_behavioral"], "behavioral", False)
    store.set_consent(picks["off"], "personalization", False)
    online = store.features_for(pids, AS_OF)
    blank = assert_features_are_the_consented_build(store, online, store.events_for(pids), AS_OF)
    assert picks["off"] in blank
    after = online.set_index(PROFILE_ID)
    assert after.loc[picks["store"], "n_try_on"] > 0  # granted at once: the cached row was dropped
    assert after.loc[picks["no_behavioral"], "n_view"] == 0 < before.loc[picks["no_behavioral"], "n_view"]
    assert list(online.columns) == list(before.reset_index().columns)
    # warm path: the same rows, one consent read for everyone
    warm = SQLiteProfileStore(tmp_path / "s.db")
    statements: list[str] = []
    warm._conn().set_trace_callback(statements.append)
    warm.warm_features(AS_OF)
    warm._conn().set_trace_callback(None)
    assert sum("FROM consent" in s for s in statements) == 1
    pd.testing.assert_frame_equal(warm.features_for(pids, AS_OF), online)
    statements.clear()
    fresh = SQLiteProfileStore(tmp_path / "s.db")
    fresh._conn().set_trace_callback(statements.append)
    pd.testing.assert_frame_equal(fresh.features_for(pids, AS_OF), online)
    assert sum("FROM consent" in s for s in statements) == 1


def test_without_personalization_a_profile_gets_the_empty_history_row(tmp_path: Path) -> None:
    store = SQLiteProfileStore(tmp_path / "s.db")
    store.append_events(pd.DataFrame([
        ev("a1", "2025-01-01T00:00:00Z", "purchase", customer_id="buyer", price=50.0),
        ev("a2", "2025-01-02T00:00:00Z", "view", customer_id="buyer"),
        ev("b1", "2025-01-01T00:00:00Z", "try_on", "store", customer_id="shopper"),  # store only: not granted
        ev("c1", "2025-01-03T00:00:00Z", "view", customer_id="other"),
    ]))
    buyer, shopper, other = (store.resolve({CUSTOMER_ID: c}) for c in ("buyer", "shopper", "other"))
    as_of = "2025-02-01T00:00:00Z"
    assert store.features_for([buyer], as_of)["spend_total"].iloc[0] == 50.0
    store.set_consent(buyer, "personalization", False)
    rows = store.features_for([buyer, shopper, other, "p_unknown"], as_of).set_index(PROFILE_ID)
    assert set(rows.index) == {buyer, shopper, other}  # an unknown id still has no row
    assert_empty_history(rows.loc[[buyer, shopper]].reset_index())
    pd.testing.assert_series_equal(rows.loc[buyer], rows.loc[shopper], check_names=False)
    assert rows.loc[other, "n_events"] == 1
    store.set_consent(buyer, "personalization", True)
    assert store.features_for([buyer], as_of)["spend_total"].iloc[0] == 50.0


# -- idempotent contact reservations ------------------------------------------------------------
def test_a_repeated_decision_uses_no_second_slot_and_survives_a_restart(tmp_path: Path) -> None:
    store = SQLiteProfileStore(tmp_path / "s.db")
    caps, now = {"24h": 2}, "2025-01-01T12:00:00Z"
    assert store.reserve_contact("p1", "email", now, caps, key="spring|7|cart")
    assert store.reserve_contact("p1", "email", now, caps, key="spring|7|cart")  # the same decision again
    assert [k for _, _, k in store.contacts_for("p1")] == ["spring|7|cart"]
    assert store.reserve_contact("p1", "email", now, caps, key="spring|7|winback")
    assert not store.reserve_contact("p1", "email", now, caps, key="spring|7|other")  # the cap is full
    assert store.reserve_contact("p1", "email", now, caps, key="spring|7|cart")  # but a repeat still answers
    assert store.reserve_contact("p1", "sms", now, caps, key="spring|7|cart")  # another channel: its own slot
    contacts = store.contacts_for("p1")
    assert [(ch, k) for ch, _, k in contacts] == [("email", "spring|7|cart"), ("email", "spring|7|winback"),
                                                  ("sms", "spring|7|cart")]
    assert contacts[0][1] == pd.Timestamp(now).to_pydatetime()
    with pytest.raises(ValueError):
        store.reserve_contact("p1", "email", now, caps, key="")
    store.close()
    again = SQLiteProfileStore(tmp_path / "s.db")  # a restart
    assert again.contacts_for("p1") == contacts
    assert not again.reserve_contact("p1", "email", now, caps)
    assert again.reserve_contact("p1", "email", now, caps, key="spring|7|winback")
    assert len(again.contacts_for("p1")) == 3


@pytest.mark.parametrize("keyed", [False, True])
def test_caps_hold_for_two_store_objects_on_one_file(tmp_path: Path, keyed: bool) -> None:
    """Two workers (two store objects, each with its own connections and lock) on one file."""
    stores = [SQLiteProfileStore(tmp_path / "s.db"), SQLiteProfileStore(tmp_path / "s.db")]
    granted: list[bool] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(10):
            key = f"k{n}-{i}" if keyed else None
            ok = stores[(n + i) % 2].reserve_contact("p1", "email", "2025-01-01T12:00:00Z", {"24h": 3}, key=key)
            with lock:
                granted.append(ok)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 3 and len(granted) == 80
    assert len(stores[0].contacts_for("p1")) == 3


def test_one_key_from_many_threads_is_one_contact(tmp_path: Path) -> None:
    stores = [SQLiteProfileStore(tmp_path / "s.db"), SQLiteProfileStore(tmp_path / "s.db")]
    answers: list[bool] = []

    def worker(n: int) -> None:
        answers.append(stores[n % 2].reserve_contact("p1", "email", "2025-01-01T12:00:00Z", {"24h": 1},
                                                     key="spring|7|cart"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [True] * 8 and len(stores[1].contacts_for("p1")) == 1



# -- the catalog and stock in the store ---------------------------------------------------------
def test_upserts_replace_given_fields_keep_the_rest_and_are_durable(tmp_path: Path) -> None:
    store = SQLiteProfileStore(tmp_path / "s.db")
    first = store.upsert_items(pd.DataFrame({
        "item_id": ["a", "b", "bad"], "name": ["Alpha", "Beta", "Bad"],
        "category": ["Women>Dresses", "Men > Shoes", "X"], "price": [10.0, 20.0, -1.0], "currency": ["EUR", "EUR", "EUR"], "in_stock": [True, None, True]}))
    assert first.upserted == 2
    assert first.errors[["row", "item_id", "field"]].values.tolist() == [[2, "bad", "price"]]
    # a price feed: id and price only (and a new item)
    feed = store.upsert_items(pd.DataFrame({"item_id": ["a", "n"], "price": ["12.5", "3"]}).astype("string"))
    assert feed.upserted == 2 and len(feed.errors) == 0
    store.close()
    cat = SQLiteProfileStore(tmp_path / "s.db").catalog()  # a reopened store: durable
    expected = Catalog.from_frame(pd.DataFrame({
        "item_id": ["a", "b"], "name": ["Alpha", "Beta"], "category": ["Women > Dresses", "Men > Shoes"],
        "price": [10.0, 20.0], "currency": ["EUR", "EUR"], "in_stock": [True, None]})).merged(
        pd.DataFrame({"item_id": ["a", "n"], "price": [12.5, 3.0]}))
    assert cat == expected
    assert cat.get("a").name == "Alpha" and cat.get("a").price == 12.5 and cat.get("n").name is None
    assert cat.item_ids_in("Women") == ("a",)
    assert store.upsert_items(pd.DataFrame({"item_id": ["only-id"]})).upserted == 1


def test_catalog_version_changes_on_every_write_and_across_store_objects(tmp_path: Path) -> None:
    writer, server = SQLiteProfileStore(tmp_path / "s.db"), SQLiteProfileStore(tmp_path / "s.db")
    seen = [server.catalog_version()]
    cached = server.catalog()
    assert server.catalog() is cached  # unchanged version: the same object, no re-read
    writer.upsert_items(pd.DataFrame({"item_id": ["a"], "name": ["Alpha"]}))
    seen.append(server.catalog_version())
    assert server.catalog().get("a").name == "Alpha"
    writer.set_stock("a", False)
    seen.append(server.catalog_version())
    assert server.catalog().get("a").in_stock is False
    writer.set_stock("a", True, store_id="paris")
    seen.append(server.catalog_version())
    writer.upsert_items(pd.DataFrame({"item_id": ["bad"], "price": [-1.0]}))  # nothing written
    seen.append(server.catalog_version())
    assert len(set(seen[:4])) == 4 and seen[4] == seen[3]





# -- a stored event id sent again with other content ---------------------------------------------
def _conflicts(result: store_module.AppendResult) -> dict[int, str]:
    """Row -> event id of the rows refused because their id is stored with other content."""
    return {e["row"]: e["event_id"] for e in result.errors if e["field"] == EVENT_ID and e["reason"] == CONFLICT_REASON}


def _stored_digests(path: Path) -> dict[str, str | None]:
    con = sqlite3.connect(path)
    try:
        return dict(con.execute("SELECT event_id, content_digest FROM events"))
    finally:
        con.close()


@pytest.mark.parametrize("bulk_rows", [SMALL_ONLY, 1])
def test_a_stored_id_sent_again_with_other_content_is_a_conflict(tmp_path: Path, bulk_rows: int) -> None:
    store = SQLiteProfileStore(tmp_path / "s.db", config=StoreConfig(bulk_rows=bulk_rows))
    e1 = ev("e1", "2025-01-02T00:00:00Z", customer_id="c1", item_id="sku1")
    e2 = ev("e2", "2025-01-03T00:00:00Z", "purchase", customer_id="c1", item_id="sku2", price=5.0)
    store.append_events(pd.DataFrame([e1, e2]))
    before = store.export_events()
    e3 = ev("e3", "2025-01-04T00:00:00Z", customer_id="c1", item_id="sku3")
    batch = pd.DataFrame([
        {**e1, "channel": "fax"},  # 0: invalid
        e3,  # 1: new
        {**e2, "price": 6.0},  # 2: stored id, other price
        e3,  # 3: the same again in the batch: a duplicate
        {**e1, "item_id": "sku9", "ts": "2025-01-01T00:00:00Z"},  # 4: stored id, other item (sorts first by time)
    ])
    r = store.append_events(batch)
    assert _conflicts(r) == {2: "e2", 4: "e1"}  # named by input row, whatever the time order
    assert [e["row"] for e in r.errors] == [0, 2, 4]
    assert (r.accepted, r.accepted_ids, r.duplicates, r.rejected) == (1, ("e3",), 1, 3)
    # validated frames: rows are positions in the frame given (e3, e2', e1')
    r = store.append_events(validate_events(batch).valid, validated=True)
    assert _conflicts(r) == {1: "e2", 2: "e1"}
    assert (r.accepted, r.duplicates, r.rejected) == (0, 1, 2)
    # nothing stored was replaced, and an identical re-send is still a plain duplicate
    after = store.export_events()
    pd.testing.assert_frame_equal(after[after[EVENT_ID] != "e3"].reset_index(drop=True), before)
    r = store.append_events(pd.DataFrame([e1, e2, e3]))
    assert (r.accepted, r.duplicates, r.rejected, r.errors) == (0, 3, 0, ())


def test_in_batch_repeats_are_counted_as_validation_counts_them(store: SQLiteProfileStore) -> None:
    a = ev("k1", "2025-01-01T00:00:00Z", customer_id="c1")
    b = ev("k2", "2025-01-02T00:00:00Z", customer_id="c1")
    # " k1 " and " k1" are k1 once validated (identical repeats); k2 with another item is a conflict, not a repeat
    r = store.append_events(pd.DataFrame([a, {**a, "event_id": " k1 "}, {**a, "event_id": " k1"}, b,
                                          {**b, "item_id": "sku2"}]))
    assert (r.accepted, r.duplicates, r.rejected) == (2, 2, 1)
    assert [(e["row"], e["field"]) for e in r.errors] == [(4, EVENT_ID)]


def test_rows_stored_without_a_digest_get_it_from_the_stored_row(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    rows = [ev("o1", "2025-01-01T00:00:00Z", customer_id="c1", item_id="a", category="Shoes > Boots"),
            ev("o2", "2025-01-02T00:00:00Z", "purchase", customer_id="c1", email="Ann@Example.com", item_id="b",
               price=3.5, quantity=2.0, timezone="Europe/Paris")]
    valid = validate_events(pd.DataFrame(rows)).valid
    expected = {row[EVENT_ID]: event_digest(row) for row in valid.to_dict("records")}
    first = SQLiteProfileStore(path)
    first.append_events(pd.DataFrame(rows))
    assert _stored_digests(path) == expected  # the per-event path stores the digest of the validated row
    first.close()
    con = sqlite3.connect(path)  # the file as the previous release wrote it: no digest column
    con.execute("ALTER TABLE events DROP COLUMN content_digest")
    con.commit()
    con.close()

    store = SQLiteProfileStore(path)
    assert _stored_digests(path) == dict.fromkeys(expected)  # migrated: the column is back, empty
    r = store.append_events(pd.DataFrame(rows))  # identical re-send
    assert (r.accepted, r.duplicates, r.rejected, r.errors) == (0, 2, 0, ())
    assert _stored_digests(path) == expected  # computed from the stored rows, and kept
    r = store.append_events(pd.DataFrame([{**rows[1], "quantity": 3.0}]))
    assert _conflicts(r) == {0: "o2"} and (r.accepted, r.duplicates, r.rejected) == (0, 0, 1)


def test_load_events_names_conflicts_by_input_row(tmp_path: Path) -> None:
    events = _synthetic(customers=20)
    store = SQLiteProfileStore(tmp_path / "s.db", config=StoreConfig(bulk_rows=50))
    store.load_events(events, progress=False, validated=True)
    assert set(_stored_digests(tmp_path / "s.db").values()) == {None}  # the vectorised path leaves them to later
    again = events.sample(frac=1.0, random_state=7).reset_index(drop=True)  # row order is not time order
    changed = sorted(np.random.default_rng(5).choice(len(again), 25, replace=False).tolist())
    again.loc[changed, TS] = again.loc[changed, TS] + pd.Timedelta(seconds=1)
    bad = again.iloc[[0]].assign(**{EVENT_ID: "bad-1", CHANNEL: "fax"})
    again = pd.concat([bad, again, again.iloc[[3]]], ignore_index=True)  # row 0 invalid, the last one a repeat
    r = store.load_events(again, batch_size=97, progress=False)
    assert _conflicts(r) == {c + 1: again[EVENT_ID].iloc[c + 1] for c in changed}
    assert [e["row"] for e in r.errors] == [0] + [c + 1 for c in changed]
    assert (r.accepted, r.duplicates, r.rejected) == (0, len(events) - len(changed) + 1, 1 + len(changed))
    pd.testing.assert_series_equal(store.export_events().set_index(EVENT_ID)[TS].sort_index(),
                                   events.set_index(EVENT_ID)[TS].sort_index(), check_names=False)
