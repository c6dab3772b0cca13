"""Erasure reaches every copy the store holds: keyed tombstones (nothing to brute-force), no byte of the
person left in the SQLite files, bulk loads and exports that respect erasure, the time of the erasure
for serving, and the data-access export."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import features.store as store_module
from features.schema import (
    CUSTOMER_ID,
    DEVICE_ID,
    EMAIL,
    EVENT_ID,
    IDENTIFIER_COLUMNS,
    PHONE,
    PROFILE_ID,
    TEXT,
    IdentifierHasher,
    normalise_email,
)
from features.store import ServedList, SQLiteProfileStore, StoreConfig
from features.synthetic import SyntheticConfig, generate

KEY = "test-key-for-erasure"


def ev(eid: str, ts: str, etype: str = "view", channel: str = "web", **kw: object) -> dict[str, object]:
    row: dict[str, object] = {"event_id": eid, "ts": ts, "channel": channel, "event_type": etype}
    if etype in ("view", "add_to_cart", "purchase") and "item_id" not in kw:
        kw["item_id"] = "sku1"
    row.update(kw)
    return row


def frame(*rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


@pytest.fixture()
def store(tmp_path: Path) -> SQLiteProfileStore:
    return SQLiteProfileStore(tmp_path / "s.db", IdentifierHasher(KEY))


def _tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
    con = sqlite3.connect(path)
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    out = {n: con.execute(f"SELECT * FROM {n}").fetchall() for n in names}
    con.close()
    return out


def _file_bytes(db: Path) -> dict[str, bytes]:
    """The raw bytes of the store and its WAL and shared-memory files (absent ones: empty)."""
    out = {}
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(db) + suffix)
        out[suffix or ".db"] = p.read_bytes() if p.exists() else b""
    return out


def _found(needles: set[str], files: dict[str, bytes]) -> dict[str, list[str]]:
    return {name: sorted(n for n in needles if n.encode() in raw) for name, raw in files.items()
            if any(n.encode() in raw for n in needles)}


# -- keyed tombstones -----------------------------------------------------------------------------
def test_tombstones_are_keyed_digests_a_stolen_file_cannot_be_brute_forced_with(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SQLiteProfileStore(db, IdentifierHasher(KEY))
    store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", phone="+33 6 12 34 56 78"),
                              ev("e2", "2025-01-02T00:00:00Z", customer_id="c2")))
    pid = store.resolve({CUSTOMER_ID: "c1"})
    hashed_phone = store.hasher.hash("+33612345678")
    store.erase_profile(pid)
    tables = _tables(db)
    stored = {str(v) for rows in tables.values() for row in rows for v in row}
    # neither the erased values nor their plain digests: the candidates an attacker would try
    candidates = [f"{CUSTOMER_ID}:c1", f"{PHONE}:{hashed_phone}", "e1", pid]
    for c in candidates:
        assert c not in stored and hashlib.sha256(c.encode()).hexdigest() not in stored, c
    assert not stored & {"c1", hashed_phone} and not any(c in v for v in stored for c in candidates[:2])
    assert tables["erased_events"] == [] and tables["erased_tokens"] == []  # legacy tables: never written
    assert len(tables["erased_event_keys"]) == 1 and len(tables["erased_identifier_keys"]) == 2
    # the digests depend on the key: the same file read with another key recognises nothing
    late = frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1"),
                 ev("e9", "2025-01-01T06:00:00Z", customer_id="c1"))
    store.close()
    other = SQLiteProfileStore(db, IdentifierHasher("another key"))
    assert other.append_events(late).suppressed == 0
    same = SQLiteProfileStore(tmp_path / "copy.db", IdentifierHasher(KEY))
    con = sqlite3.connect(tmp_path / "copy.db")
    for table in ("erased_event_keys", "erased_identifier_keys"):
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(tables[table][0]))})", tables[table])
    con.commit()
    con.close()
    assert same.append_events(late).suppressed == 2


def test_resent_erased_events_are_suppressed_and_leave_no_sentiment_score(store: SQLiteProfileStore) -> None:
    store.append_events(frame(ev("r1", "2025-01-01T00:00:00Z", "review", customer_id="c1", item_id="sku1",
                                 text="awful, broke at once", rating=1.0),
                              ev("x1", "2025-01-01T00:00:00Z", customer_id="c2")),
                        sentiment=pd.Series({"r1": -0.9}))
    pid = store.resolve({CUSTOMER_ID: "c1"})
    assert list(store.sentiment_for(["r1"])) == [-0.9]
    store.erase_profile(pid)
    assert len(store.sentiment_for(["r1"])) == 0
    # the review re-sent, scored again by the service; an older event of the erased customer id; and a new one
    resent = frame(ev("r1", "2025-01-01T00:00:00Z", "review", customer_id="c1", item_id="sku1",
                      text="awful, broke at once", rating=1.0),
                   ev("r2", "2025-01-01T05:00:00Z", "review", customer_id="c1", item_id="sku1", text="bad", rating=2.0),
                   ev("n1", pd.Timestamp.now(tz="UTC").isoformat(), "review", customer_id="c1", item_id="sku2",
                      text="fine now", rating=4.0))
    r = store.append_events(resent, sentiment=pd.Series({"r1": -0.9, "r2": -0.5, "n1": 0.4}))
    assert (r.accepted, r.suppressed, r.accepted_ids) == (1, 2, ("n1",))
    assert store.sentiment_for(["r1", "r2", "n1"]).to_dict() == {"n1": 0.4}
    # record_sentiment keeps scores of stored events only, and says how many
    assert store.record_sentiment({"r1": -0.9, "r2": -0.1, "x1": 0.2}) == 1
    assert store.sentiment_for(["r1", "r2", "x1"]).to_dict() == {"x1": 0.2}
    with pytest.raises(ValueError, match="'x1'.*finite"):
        store.record_sentiment({"x1": float("nan")})


def _legacy_file(path: Path) -> tuple[str, list[str]]:
    """A store as release 2 left it after an erasure: event ids verbatim, identifiers as plain SHA-256."""
    store = SQLiteProfileStore(path, IdentifierHasher(KEY))
    store.append_events(frame(ev("old-evt-1", "2025-01-01T00:00:00Z", customer_id="cust-legacy", device_id="dv-9"),
                              ev("keep-1", "2025-01-02T00:00:00Z", customer_id="c2")))
    pid = store.resolve({CUSTOMER_ID: "cust-legacy"})
    store.erase_profile(pid)
    store.close()
    tokens = [f"{CUSTOMER_ID}:cust-legacy", f"{DEVICE_ID}:dv-9"]
    con = sqlite3.connect(path)
    for table in ("erased_event_keys", "erased_identifier_keys", "erased_profile_keys"):
        con.execute(f"DELETE FROM {table}")
    con.execute("INSERT INTO erased_events VALUES ('old-evt-1')")
    con.executemany("INSERT INTO erased_tokens VALUES (?, ?)",
                    [(hashlib.sha256(t.encode()).hexdigest(), pd.Timestamp("2025-02-01", tz="UTC").value)
                     for t in tokens])
    con.execute("PRAGMA user_version=2")
    con.commit()
    con.close()
    return pid, tokens


def test_an_old_file_gets_keyed_event_tombstones_and_its_plain_digests_still_count(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _legacy_file(db)
    assert b"old-evt-1" in b"".join(_file_bytes(db).values())
    store = SQLiteProfileStore(db, IdentifierHasher(KEY))
    tables = _tables(db)
    assert tables["erased_events"] == [] and len(tables["erased_event_keys"]) == 1
    assert len(tables["erased_tokens"]) == 2  # plain digests cannot be re-keyed: kept, and checked
    assert _found({"old-evt-1"}, _file_bytes(db)) == {}  # the verbatim id is gone from every file
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == store_module._FILE_VERSION
    r = store.append_events(frame(ev("old-evt-1", "2025-03-01T00:00:00Z", customer_id="someone-else"),
                                  ev("e7", "2025-01-15T00:00:00Z", device_id="dv-9"),
                                  ev("e8", "2025-02-02T00:00:00Z", customer_id="cust-legacy")))
    # the old id by its keyed tombstone, the device by its plain digest; an event after the erasure is new
    assert (r.accepted, r.suppressed, r.accepted_ids) == (1, 2, ("e8",))


# -- no byte left -----------------------------------------------------------------------------------
def _secure_delete_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite as most builds ship it: Debian's turns secure_delete on at compile time, python.org's,
    Homebrew's and Windows' leave it off. The store must not depend on the build."""
    connect = sqlite3.connect

    def off_by_default(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)  # type: ignore[arg-type]
        conn.execute("PRAGMA secure_delete=OFF")
        return conn

    monkeypatch.setattr(sqlite3, "connect", off_by_default)


@pytest.fixture(params=["as built", "secure_delete off by default"])
def sqlite_build(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param != "as built":
        _secure_delete_off_by_default(monkeypatch)
    return str(request.param)


def test_no_byte_of_an_erased_person_is_left_in_the_db_wal_or_shm_file(tmp_path: Path, sqlite_build: str) -> None:
    db = tmp_path / "s.db"
    store = SQLiteProfileStore(db, IdentifierHasher(KEY), StoreConfig(bulk_rows=500))
    store.load_events(generate(SyntheticConfig(customers=150, days=40, seed=3)).events, progress=False)
    # the person: first a device alone, then linked to a customer id (a merge re-keys both histories),
    # a raw email (stored hashed), a loyalty card, a cookie, and a review text
    email = "erase.me.please@example.org"
    store.append_events(frame(ev("evt-dev-only-1", "2025-01-03T00:00:00Z", device_id="dev-erase-4411")))
    device_pid = store.resolve({DEVICE_ID: "dev-erase-4411"})
    store.record_decision("dec-erase-before-merge", device_pid, "camp-erase-8812", "winback_offer", "email", True,
                          "2025-01-03T12:00:00Z", {"mirror-churn": "1"})
    store.record_recommendation(ServedList("rec-erase-before-merge", pd.Timestamp("2025-01-03T12:00:00Z"), device_pid,
                                           "home", "web", "mirror-recommender", "1", ("sku-erase-seen-1",)))
    store.append_events(frame(ev("evt-cookie-1", "2025-01-03T01:00:00Z", cookie_id="ck-erase-9230")))
    store.append_events(frame(
        ev("evt-link-1", "2025-01-04T00:00:00Z", "add_to_cart", customer_id="cust-erase-7731",
           device_id="dev-erase-4411", cookie_id="ck-erase-9230", email=email),
        ev("evt-loyal-1", "2025-01-05T00:00:00Z", "purchase", "store", customer_id="cust-erase-7731",
           loyalty_id="loy-erase-5150", price=20.0, quantity=1.0),
        ev("evt-review-1", "2025-01-06T00:00:00Z", "review", customer_id="cust-erase-7731", item_id="sku1",
           text="my unusual review text qwzx", rating=2.0)))
    pid = store.resolve({CUSTOMER_ID: "cust-erase-7731"})
    store.set_consent(pid, "email_marketing", True)
    store.reserve_contact(pid, "email", "2025-01-07T00:00:00Z", {"24h": 1}, key="camp-1")
    store.record_decision("dec-erase-after-merge", pid, "camp-erase-8812", "cart_reminder", "email", False,
                          "2025-01-07T00:00:00Z")
    assert set(store.decisions()[PROFILE_ID]) == {pid}  # the merge re-keyed the device's decision
    store.record_recommendation(ServedList("rec-erase-after-merge", pd.Timestamp("2025-01-07T00:00:00Z"), pid,
                                           "product", "app", "mirror-recommender", "1", ("sku-erase-seen-2",)))
    assert set(store.recommendations()[PROFILE_ID]) == {pid}  # and its served list
    # and someone from the bulk-loaded data: every value only they had
    events = store.export_events()
    others = events[events[PROFILE_ID] != pid]
    counts = others[PROFILE_ID].value_counts()
    victim = counts.index[len(counts) // 2]
    cols = [*IDENTIFIER_COLUMNS, EVENT_ID, TEXT]
    theirs = {str(v) for c in cols for v in events.loc[events[PROFILE_ID] == victim, c].dropna()}
    rest = {str(v) for c in cols for v in events.loc[~events[PROFILE_ID].isin([victim, pid]), c].dropna()}
    victim_needles = {v for v in theirs - rest if not any(v in o for o in rest)}
    needles = {"dev-erase-4411", "ck-erase-9230", "cust-erase-7731", "loy-erase-5150", store.hasher.hash(
        normalise_email(email) or ""), "evt-dev-only-1", "evt-cookie-1", "evt-link-1", "evt-loyal-1",
        "evt-review-1", "my unusual review text qwzx", "dec-erase-before-merge", "dec-erase-after-merge",
        "rec-erase-before-merge", "rec-erase-after-merge", "sku-erase-seen-1", "sku-erase-seen-2", device_pid, pid}
    assert len(victim_needles) > 10 and store.export_profile(pid)["identifiers"]
    assert set(_found(needles | victim_needles, _file_bytes(db))) & {".db", "-wal"}  # there before

    assert store.erase_profile(pid) == 5
    assert store.erase_profile(victim) > 0
    files = _file_bytes(db)
    assert _found(needles | victim_needles | {email}, files) == {}
    assert files["-wal"] == b""  # checkpointed and truncated
    assert store.get_profile(pid) is None and store.resolve({EMAIL: email}) is None
    assert store.decisions().empty
    assert store.recommendations().empty


def test_the_decision_log_is_durable_idempotent_and_erased_with_the_person_only(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SQLiteProfileStore(db, IdentifierHasher(KEY))
    store.append_events(frame(ev("a1", "2025-01-01T00:00:00Z", customer_id="ann"),
                              ev("b1", "2025-01-01T00:00:00Z", customer_id="bob")))
    ann, bob = store.resolve({CUSTOMER_ID: "ann"}), store.resolve({CUSTOMER_ID: "bob"})
    assert store.record_decision("d-1", ann, "spring", "winback_offer", "email", False, "2025-01-02T00:00:00Z",
                                 {"mirror-churn": "3", "mirror-purchase": None})
    assert not store.record_decision("d-1", ann, "spring", "cross_sell", "sms", True, "2025-01-05T00:00:00Z")
    store.record_decision("d-2", bob, "spring", "winback_offer", "email", True, "2025-01-03T00:00:00Z")
    with pytest.raises(ValueError, match="action"):
        store.record_decision("d-3", bob, "spring", "", "email", True, "2025-01-03T00:00:00Z")
    log = SQLiteProfileStore(db, IdentifierHasher(KEY)).decisions()  # another connection: durable
    assert tuple(log.columns) == store_module.DECISION_COLUMNS
    assert log["decision_id"].tolist() == ["d-1", "d-2"] and log["holdout"].tolist() == [False, True]
    assert log["action"].tolist() == ["winback_offer", "winback_offer"]  # the first row of a decision stays
    assert json.loads(log["model_versions"].iloc[0]) == {"mirror-churn": "3", "mirror-purchase": None}
    assert str(log["ts"].dtype) == "datetime64[ns, UTC]"
    assert store.decisions(since="2025-01-03T00:00:00Z")["decision_id"].tolist() == ["d-2"]
    assert [d["decision_id"] for d in store.export_profile(ann)["decisions"]] == ["d-1"]
    store.erase_profile(ann)
    assert store.decisions()["decision_id"].tolist() == ["d-2"]


def test_served_lists_are_durable_idempotent_and_go_with_the_person_only(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SQLiteProfileStore(db, IdentifierHasher(KEY))
    store.append_events(frame(ev("a1", "2025-01-01T00:00:00Z", customer_id="ann"),
                              ev("b1", "2025-01-01T00:00:00Z", customer_id="bob")))
    ann, bob = store.resolve({CUSTOMER_ID: "ann"}), store.resolve({CUSTOMER_ID: "bob"})

    def served(rid: str, pid: str | None, ts: str, items: tuple[str, ...] = ("sku1", "sku2")) -> ServedList:
        return ServedList(rid, pd.Timestamp(ts), pid, "home", "web", "mirror-recommender", "7", items)

    assert store.record_recommendations([served("r-ann", ann, "2025-01-02T00:00:00Z"),
                                         served("r-anon", None, "2025-01-02T01:00:00Z", ()),
                                         served("r-bob", bob, "2025-01-03T00:00:00Z")]) == 3
    assert not store.record_recommendation(served("r-ann", bob, "2025-01-09T00:00:00Z"))  # first row stays
    log = SQLiteProfileStore(db, IdentifierHasher(KEY)).recommendations()  # another connection: durable
    assert tuple(log.columns) == store_module.RECOMMENDATION_COLUMNS
    assert log["recommendation_id"].tolist() == ["r-ann", "r-anon", "r-bob"]
    assert log["item_ids"].tolist() == [("sku1", "sku2"), (), ("sku1", "sku2")]
    assert log[PROFILE_ID].iloc[0] == ann and pd.isna(log[PROFILE_ID].iloc[1])  # anonymous: no profile
    assert str(log["ts"].dtype) == "datetime64[ns, UTC]"
    assert store.recommendations(since="2025-01-02T00:30:00Z")["recommendation_id"].tolist() == ["r-anon", "r-bob"]
    assert [r["recommendation_id"] for r in store.export_profile(ann)["recommendations"]] == ["r-ann"]
    store.erase_profile(ann)
    assert store.recommendations()["recommendation_id"].tolist() == ["r-anon", "r-bob"]
    # a list served before the erasure and written after it (serving writes in the background) stays out;
    # one served to the person after they came back is theirs again
    assert not store.record_recommendation(served("r-late", ann, "2025-01-02T02:00:00Z"))
    assert store.record_recommendation(served("r-back", ann, (pd.Timestamp.now(tz="UTC")
                                                              + pd.Timedelta(seconds=1)).isoformat()))
    assert "r-late" not in set(store.recommendations()["recommendation_id"])


def test_every_connection_overwrites_what_it_deletes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only during erasure: a merge or replace earlier leaves stale copies in free space otherwise."""
    _secure_delete_off_by_default(monkeypatch)
    store = SQLiteProfileStore(tmp_path / "s.db")
    assert store._conn().execute("PRAGMA secure_delete").fetchone()[0] == 1


# -- seeding and training respect erasure ------------------------------------------------------------
def _history() -> pd.DataFrame:
    rows = [ev(f"a{i}", f"2025-01-{1 + i:02d}T00:00:00Z", customer_id="c1", device_id="d1") for i in range(5)]
    rows += [ev(f"b{i}", f"2025-01-{1 + i:02d}T00:00:00Z", customer_id="c2") for i in range(5)]
    return frame(*rows)


@pytest.mark.parametrize("bulk_rows", [1, 1_000])  # the vectorised path, and the per-event one
def test_load_events_drops_tombstoned_events_exactly_like_append_events(tmp_path: Path, bulk_rows: int) -> None:
    config = StoreConfig(bulk_rows=bulk_rows)
    stores = [SQLiteProfileStore(tmp_path / f"{name}.db", IdentifierHasher(KEY), config) for name in ("a", "b")]
    for s in stores:
        s.append_events(_history())
        s.erase_profile(s.resolve({CUSTOMER_ID: "c1"}))
    now = pd.Timestamp.now(tz="UTC")
    seed = pd.concat([_history(), frame(
        ev("z1", "2025-01-20T00:00:00Z", device_id="d1"),  # an erased identifier, before the erasure
        ev("z2", (now + pd.Timedelta(seconds=1)).isoformat(), customer_id="c1"),  # the person back, after it
        ev("z3", "2025-01-20T00:00:00Z", customer_id="c3"))], ignore_index=True)
    loaded = stores[0].load_events(seed, batch_size=4, progress=False)
    appended = stores[1].append_events(seed)
    assert (loaded.accepted, loaded.suppressed, loaded.duplicates) == (2, 6, 5)
    assert (appended.accepted, appended.suppressed, appended.duplicates) == (2, 6, 5)
    exported = [s.export_events().drop(columns=PROFILE_ID) for s in stores]
    pd.testing.assert_frame_equal(exported[0], exported[1])
    assert sorted(exported[0][EVENT_ID]) == ["b0", "b1", "b2", "b3", "b4", "z2", "z3"]


def test_export_events_to_streams_every_stored_event_and_never_the_erased(store: SQLiteProfileStore,
                                                                        tmp_path: Path) -> None:
    store.append_events(_history())
    store.erase_profile(store.resolve({CUSTOMER_ID: "c1"}))
    store.append_events(frame(ev("t1", "2025-01-09T00:00:00Z", "review", customer_id="c2", item_id="sku2",
                                 text="ok", rating=4.0, timezone="Europe/Paris")))
    out = tmp_path / "export.parquet"
    assert store.export_events_to(out, batch_size=4) == 6
    assert pq.ParquetFile(out).metadata.num_row_groups == 2  # streamed in batches
    pd.testing.assert_frame_equal(pd.read_parquet(out), store.export_events(), check_dtype=False)
    assert not set(pd.read_parquet(out)[EVENT_ID]) & {f"a{i}" for i in range(5)}
    assert not (tmp_path / "export.parquet.partial").exists()
    empty = SQLiteProfileStore(tmp_path / "empty.db")
    assert empty.export_events_to(tmp_path / "none.parquet") == 0
    assert list(pd.read_parquet(tmp_path / "none.parquet").columns) == list(store.export_events().columns)
    with pytest.raises(ValueError, match="batch_size"):
        store.export_events_to(out, batch_size=0)
    assert store.has_events() and not empty.has_events()


# -- the served model forgets ----------------------------------------------------------------------
def test_erased_at_is_recorded_per_profile_id_and_on_the_profile_of_a_returning_person(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SQLiteProfileStore(db, IdentifierHasher(KEY))
    store.append_events(_history())
    pid, other = store.resolve({CUSTOMER_ID: "c1"}), store.resolve({CUSTOMER_ID: "c2"})
    assert store.erased_at(pid) is None and store.get_profile(pid).erased_at is None
    before = pd.Timestamp.now(tz="UTC")
    store.erase_profile(pid)
    when = store.erased_at(pid)
    assert when is not None and before <= pd.Timestamp(when) <= pd.Timestamp.now(tz="UTC")
    assert store.erased_at(other) is None and store.get_profile(pid) is None
    # the table reveals nothing: no profile id in it, plain or as a plain digest
    digests = {d for (d,) in sqlite3.connect(db).execute("SELECT digest FROM erased_profile_keys")}
    assert len(digests) == 1 and not digests & {pid, hashlib.sha256(pid.encode()).hexdigest()}
    # the person comes back with one new view: the same profile id, and it carries the erasure time
    back = frame(ev("n1", (pd.Timestamp(when) + pd.Timedelta(seconds=1)).isoformat(), customer_id="c1",
                    item_id="new-sku"))
    assert store.append_events(back).profile_ids == (pid,)
    prof = store.get_profile(pid)
    assert prof.erased_at == when and [e.item_id for e in prof.recent_views] == ["new-sku"]
    assert store.get_profiles([pid, other]) == [prof, store.get_profile(other)]
    assert store.get_profile(other).erased_at is None
    # both folds: the vectorised bulk build gives the same profile, erasure time included
    bulk = SQLiteProfileStore(db, IdentifierHasher(KEY), StoreConfig(bulk_rows=1), cache=False)
    bulk.append_events(frame(ev("n2", (pd.Timestamp(when) + pd.Timedelta(seconds=2)).isoformat(),
                                customer_id="c1", item_id="sku-b")))
    single = SQLiteProfileStore(db, IdentifierHasher(KEY), cache=False)
    replayed = bulk._replayed(bulk._conn(), [pid])[pid]
    assert single.get_profile(pid) == bulk._to_profile(pid, replayed, int(pd.Timestamp(when).value))
    assert single.get_profile(pid).erased_at == when


# -- data-access export ------------------------------------------------------------------------------
def test_export_profile_gives_everything_the_store_holds_about_the_person(store: SQLiteProfileStore) -> None:
    email = "Ann.Export@Example.com"
    store.append_events(frame(ev("d1", "2025-01-01T00:00:00Z", device_id="dev-a")))
    store.append_events(frame(
        ev("p1", "2025-01-02T00:00:00Z", "purchase", customer_id="ann", device_id="dev-a", email=email, price=12.5,
           quantity=1.0, timezone="Europe/Paris"),
        ev("r1", "2025-01-03T00:00:00Z", "review", customer_id="ann", item_id="sku1", text="love it", rating=5.0),
        ev("o1", "2025-01-03T00:00:00Z", customer_id="bob")), sentiment=pd.Series({"r1": 0.8}))
    pid = store.resolve({CUSTOMER_ID: "ann"})
    device_pid = "p_" + hashlib.sha1(f"{DEVICE_ID}:dev-a".encode()).hexdigest()[:16]
    store.set_consent(pid, "email_marketing", True)
    store.reserve_contact(pid, "email", "2025-01-04T00:00:00Z", {"24h": 1}, key="k1")

    out = store.export_profile(device_pid)  # an id merged away answers for the whole person
    text = json.dumps(out, allow_nan=False)
    assert out[PROFILE_ID] == pid and out["requested_id"] == device_pid and out["merged_ids"] == [device_pid]
    assert [e[EVENT_ID] for e in out["events"]] == ["d1", "p1", "r1"]
    stored = store.events_for([pid])
    assert set(out["events"][0]) == set(stored.columns)
    assert out["events"][1]["price"] == 12.5 and out["events"][1]["timezone"] == "Europe/Paris"
    assert out["events"][2][TEXT] == "love it" and out["events"][0][CUSTOMER_ID] is None
    assert pd.Timestamp(out["events"][0]["ts"]) == pd.Timestamp("2025-01-01T00:00:00Z")
    hashed = store.hasher.hash(normalise_email(email) or "")
    assert {(i["type"], i["value"]) for i in out["identifiers"]} == {
        (CUSTOMER_ID, "ann"), (DEVICE_ID, "dev-a"), (EMAIL, hashed)}
    assert all(i["shared_device"] is False for i in out["identifiers"] if i["type"] == DEVICE_ID)
    assert out["events"][1][EMAIL] == hashed and email not in text and email.lower() not in text
    assert "keyed hash" in out["notes"]["hashed_identifiers"] and EMAIL in out["notes"]["hashed_identifiers"]
    assert [(c["purpose"], c["granted"]) for c in out["consent"]] == [("email_marketing", True)]
    assert pd.Timestamp(out["consent"][0]["updated_at"]) <= pd.Timestamp.now(tz="UTC")
    assert out["contacts"] == [{"channel": "email", "ts": "2025-01-04T00:00:00+00:00", "key": "k1"}]
    assert out["sentiment"] == {"r1": 0.8}
    state = out["online_state"]
    assert state["purchases"][0]["item_id"] == "sku1" and state["timezone"] == "Europe/Paris"
    assert set(state["identifiers"]) == {CUSTOMER_ID, DEVICE_ID, EMAIL} and state["erased_at"] is None
    assert "bob" not in text and "o1" not in text  # nobody else's data
    assert out["erased_at"] is None

    store.erase_profile(pid)
    gone = store.export_profile(pid)
    assert (gone["events"], gone["identifiers"], gone["consent"], gone["contacts"], gone["sentiment"],
            gone["online_state"]) == ([], [], [], [], {}, None)
    assert gone["erased_at"] is not None
    json.dumps(gone, allow_nan=False)
