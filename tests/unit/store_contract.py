"""`ProfileStoreContract`: what every profile-store backend must answer, as a test mixin (the shape of
implicit's recommender_base_test and gorse's storage base suite).

A backend's test module subclasses it and provides `make_store(tmp_path, config)` (a fresh, empty store)
and `reopen(store)` (another store object on the same data: another process's view). Known answers for
identity merges, the state fold, idempotency and conflicts, erasure (no trace through the public API),
consent, contact caps under concurrency, catalog and stock, and `features_for` equal to `build_profiles`.
Tests of an optional capability (`features.store.CAPABILITIES`) the backend declares absent are skipped,
naming it. Not collected on its own: the module name does not start with `test_`.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.catalog import CatalogItem
from features.profiles import FEATURE_COLUMNS, NEVER_DAYS, TOP_CATEGORY, build_profiles
from features.schema import CUSTOMER_ID, DEVICE_ID, EMAIL, EVENT_ID, PROFILE_ID
from features.store import (
    CONFLICT_REASON,
    DECISION_COLUMNS,
    RECOMMENDATION_COLUMNS,
    ServedList,
    StoreConfig,
    capabilities,
    profile_id_for,
)

AS_OF = "2025-02-01T00:00:00Z"


def ev(eid: str, ts: str, etype: str = "view", channel: str = "web", **kw: object) -> dict[str, object]:
    """One raw event row (item events get an item unless given)."""
    row: dict[str, object] = {"event_id": eid, "ts": ts, "channel": channel, "event_type": etype}
    if etype in ("view", "add_to_cart", "purchase", "return", "remove_from_cart", "try_on",
                 "social_like") and "item_id" not in kw:
        kw["item_id"] = "sku1"
    row.update(kw)
    return row


def frame(*rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def _utc(ts: str) -> dt.datetime:
    return pd.Timestamp(ts).to_pydatetime()


class ProfileStoreContract:
    """Subclass and implement `make_store` / `reopen`; every test here runs on that backend."""

    def make_store(self, tmp_path: Path, config: StoreConfig) -> Any:
        raise NotImplementedError

    def reopen(self, store: Any) -> Any:
        raise NotImplementedError

    @pytest.fixture()
    def store(self, tmp_path: Path) -> Any:
        return self.make_store(tmp_path, StoreConfig())

    @staticmethod
    def require(store: Any, capability: str) -> None:
        """Skip (naming the capability) when the backend declares it absent."""
        if capability not in capabilities(store):
            pytest.skip(f"{type(store).__name__} does not implement the optional capability {capability!r}")

    # -- idempotency and conflicts ------------------------------------------------------------------
    def test_resend_is_idempotent(self, store: Any) -> None:
        batch = frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1"),
                      ev("e2", "2025-01-02T00:00:00Z", "purchase", customer_id="c1", price=5.0))
        first = store.append_events(batch)
        assert (first.accepted, first.duplicates) == (2, 0)
        assert first.accepted_ids == ("e1", "e2")
        pid = first.profile_ids[0]
        before = store.get_profile(pid)
        again = store.append_events(batch)
        assert (again.accepted, again.duplicates, again.rejected) == (0, 2, 0)
        assert len(store.export_events()) == 2
        assert store.get_profile(pid) == before

    def test_same_id_other_content_is_a_conflict_and_the_stored_event_stays(self, store: Any) -> None:
        store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", item_id="a")))
        r = store.append_events(frame(ev("e0", "2025-01-01T00:00:00Z", customer_id="c1", item_id="b"),
                                      ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", item_id="OTHER")))
        assert (r.accepted, r.duplicates, r.rejected) == (1, 0, 1)
        assert [(e["row"], e["event_id"], e["field"], e["reason"]) for e in r.errors] == [
            (1, "e1", EVENT_ID, CONFLICT_REASON)]
        stored = store.export_events().set_index(EVENT_ID)
        assert stored.loc["e1", "item_id"] == "a"

    def test_bad_rows_reported_good_rows_kept(self, store: Any) -> None:
        r = store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1"),
                                      ev("e2", "2025-01-01T00:00:00Z", channel="fax", customer_id="c1")))
        assert (r.accepted, r.rejected) == (1, 1)
        assert r.errors[0]["field"] == "channel"

    def test_acknowledged_events_are_seen_by_another_store_object(self, store: Any) -> None:
        r = store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", item_id="a")))
        other = self.reopen(store)
        assert list(other.export_events()[EVENT_ID]) == ["e1"]
        assert other.get_profile(r.profile_ids[0]) == store.get_profile(r.profile_ids[0])

    # -- identity --------------------------------------------------------------------------------------
    def test_profile_id_rule_and_raw_email_resolves(self, store: Any) -> None:
        r = store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", email="Ann@Example.com")))
        # component id = sha1 of the smallest token; email is stored hashed, so the customer token is smaller
        assert r.profile_ids == (profile_id_for("customer_id:c1"),)
        assert store.resolve({EMAIL: " ann@example.COM "}) == r.profile_ids[0]
        assert store.resolve({CUSTOMER_ID: "nobody"}) is None
        assert store.resolve_many(CUSTOMER_ID, ["c1", "nobody"]) == {"c1": r.profile_ids[0], "nobody": None}
        assert store.identifiers_of([r.profile_ids[0]]) == {r.profile_ids[0]: ["c1"]}
        assert "Ann@Example.com" not in store.export_events().to_string()

    def test_merge_keeps_both_histories_and_state(self, store: Any) -> None:
        a = store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", device_id="d9", item_id="x")))
        b = store.append_events(frame(ev("e2", "2025-01-02T00:00:00Z", "purchase", customer_id="c1", item_id="y")))
        assert a.profile_ids == (profile_id_for("device_id:d9"),) and a.profile_ids != b.profile_ids
        link = store.append_events(frame(ev("e3", "2025-01-03T00:00:00Z", customer_id="c1", device_id="d9",
                                            item_id="z")))
        pid = profile_id_for("customer_id:c1")
        assert link.profile_ids == (pid,) and link.merged == a.profile_ids
        assert set(store.events_for([pid])[EVENT_ID]) == {"e1", "e2", "e3"}
        prof = store.get_profile(pid)
        assert [v.item_id for v in prof.recent_views] == ["z", "x"]
        assert [p.item_id for p in prof.purchases] == ["y"]
        assert prof.identifiers == (CUSTOMER_ID, DEVICE_ID)
        # the old id still finds the merged profile, in single and batch reads
        assert store.get_profile(a.profile_ids[0]).profile_id == pid
        assert store.get_profiles([a.profile_ids[0], pid, "p_nobody"]) == [prof, prof, None]
        assert store.resolve({DEVICE_ID: "d9"}) == pid

    def test_merge_in_one_batch_and_across_batches_agree(self, tmp_path: Path) -> None:
        rows = [ev("e1", "2025-01-01T00:00:00Z", device_id="d9", item_id="x"),
                ev("e2", "2025-01-02T00:00:00Z", "purchase", customer_id="c1", item_id="y"),
                ev("e3", "2025-01-03T00:00:00Z", customer_id="c1", device_id="d9", item_id="z")]
        one = self.make_store(tmp_path / "one", StoreConfig())
        one.append_events(frame(*rows))
        each = self.make_store(tmp_path / "each", StoreConfig())
        for r in rows:
            each.append_events(frame(r))
        pid = profile_id_for("customer_id:c1")
        assert one.get_profile(pid) == each.get_profile(pid)
        assert one.profile_ids() == each.profile_ids() == [pid]

    def test_shared_device_stops_linking(self, tmp_path: Path) -> None:
        store = self.make_store(tmp_path, StoreConfig(max_profiles_per_device=1))
        store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", device_id="kiosk")))
        r = store.append_events(frame(ev("e2", "2025-01-02T00:00:00Z", customer_id="c2", device_id="kiosk")))
        assert r.profile_ids == (profile_id_for("customer_id:c2"),)
        assert store.resolve({CUSTOMER_ID: "c1"}) != store.resolve({CUSTOMER_ID: "c2"})

    # -- the state fold ----------------------------------------------------------------------------------
    def test_online_state_known_answer(self, store: Any) -> None:
        store.append_events(frame(
            ev("e1", "2025-01-01T00:00:00Z", "add_to_cart", customer_id="c1", item_id="a", category="shoes"),
            ev("e2", "2025-01-01T01:00:00Z", "add_to_cart", customer_id="c1", item_id="b", category="bags"),
            ev("e3", "2025-01-01T02:00:00Z", "purchase", customer_id="c1", item_id="a", category="shoes"),
            ev("e4", "2025-01-02T00:00:00Z", "view", customer_id="c1", item_id="c", category="shoes"),
            ev("e5", "2025-01-05T00:00:00Z", "review", "email", customer_id="c1", rating=1.0, text="broke"),
        ))
        prof = store.get_profile(store.resolve({CUSTOMER_ID: "c1"}))
        assert [c.item_id for c in prof.cart_items] == ["b"]
        assert [(p.item_id, p.channel, p.event_type) for p in prof.purchases] == [("a", "web", "purchase")]
        assert [v.item_id for v in prof.recent_views] == ["c"]
        assert dict(prof.category_counts) == {"shoes": 3, "bags": 1}
        assert prof.last_negative_ts == _utc("2025-01-05T00:00:00Z")
        assert prof.updated_at == _utc("2025-01-05T00:00:00Z")
        assert prof.channel_last_seen == {"web": _utc("2025-01-02T00:00:00Z"), "email": _utc("2025-01-05T00:00:00Z")}
        assert prof.identifiers == (CUSTOMER_ID,)

    def test_a_late_event_folds_as_if_it_had_come_in_order(self, tmp_path: Path) -> None:
        rows = [ev("e1", "2025-01-01T00:00:00Z", "add_to_cart", customer_id="c1", item_id="a"),
                ev("e2", "2025-01-03T00:00:00Z", "view", customer_id="c1", item_id="b"),
                ev("e3", "2025-01-02T00:00:00Z", "remove_from_cart", customer_id="c1", item_id="a")]
        late = self.make_store(tmp_path / "late", StoreConfig())
        for r in rows:
            late.append_events(frame(r))
        ordered = self.make_store(tmp_path / "ordered", StoreConfig())
        ordered.append_events(frame(*rows))
        pid = profile_id_for("customer_id:c1")
        assert late.get_profile(pid) == ordered.get_profile(pid)
        assert late.get_profile(pid).cart_items == ()

    # -- feature rows ------------------------------------------------------------------------------------
    def test_features_for_equals_build_profiles_and_follows_writes(self, store: Any) -> None:
        rows = [ev(f"e{i}", f"2025-01-{1 + i:02d}T00:00:00Z", "purchase" if i % 3 == 0 else "view",
                   customer_id=f"c{i % 4}", item_id=f"i{i % 5}", category=f"k{i % 2}", price=float(i))
                for i in range(20)]
        store.append_events(frame(*rows))
        pids = sorted({store.resolve({CUSTOMER_ID: f"c{i}"}) for i in range(4)})
        online = store.features_for(pids[:3], AS_OF)
        pd.testing.assert_frame_equal(online, build_profiles(store.events_for(pids[:3]), AS_OF))
        store.append_events(frame(ev("new", "2025-01-30T00:00:00Z", "purchase", customer_id="c0", price=100.0)))
        after = store.features_for(pids[:3], AS_OF).set_index(PROFILE_ID)
        c0 = store.resolve({CUSTOMER_ID: "c0"})
        assert after.loc[c0, "spend_total"] == online.set_index(PROFILE_ID).loc[c0, "spend_total"] + 100.0
        assert store.warm_features(AS_OF) == 4
        pd.testing.assert_frame_equal(store.features_for(pids, AS_OF), build_profiles(store.events_for(pids), AS_OF))

    # -- consent -----------------------------------------------------------------------------------------
    def test_consent_is_recorded_read_in_batches_and_gates_feature_rows(self, store: Any) -> None:
        store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", "purchase", customer_id="c1", price=9.0)))
        pid = store.resolve({CUSTOMER_ID: "c1"})
        assert store.get_consent(pid) == {}
        store.set_consent(pid, "email_marketing", True)
        store.set_consent("b", "personalization", False)
        assert store.get_consents([pid, "b", "c"]) == {pid: {"email_marketing": True}, "b": {"personalization": False}}
        assert store.get_consents([]) == {}
        with pytest.raises(ValueError):
            store.set_consent(pid, "personalization", "yes")
        before = store.features_for([pid], AS_OF)
        assert before["spend_total"].iloc[0] == 9.0
        store.set_consent(pid, "personalization", False)  # the cached row goes at once
        row = store.features_for([pid], AS_OF).iloc[0]
        for col in FEATURE_COLUMNS:
            assert row[col] == (NEVER_DAYS if col.startswith("days_") or col == "purchase_cadence_days" else 0.0), col
        assert row[TOP_CATEGORY] == ""

    # -- contacts ----------------------------------------------------------------------------------------
    def test_contact_cap_never_exceeded_under_threads(self, store: Any) -> None:
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

    def test_one_decision_key_from_many_threads_is_one_contact(self, store: Any) -> None:
        results: list[bool] = []
        lock = threading.Lock()

        def worker() -> None:
            ok = store.reserve_contact("p1", "email", "2025-01-01T12:00:00Z", {"24h": 5}, key="camp|b1|offer")
            with lock:
                results.append(ok)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [True] * 8
        assert store.contacts_for("p1") == [("email", _utc("2025-01-01T12:00:00Z"), "camp|b1|offer")]
        assert self.reopen(store).reserve_contact("p1", "email", "2025-01-01T12:00:00Z", {"24h": 5}, key="camp|b1|offer")
        assert len(store.contacts_for("p1")) == 1

    def test_caps_count_contacts_on_both_sides_of_now(self, store: Any) -> None:
        t = dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)
        caps = {86_400.0: 1}
        assert store.reserve_contact("p", "email", t, caps)
        assert not store.reserve_contact("p", "email", t - dt.timedelta(seconds=1), caps)
        assert store.reserve_contact("q", "email", t + dt.timedelta(hours=10), caps)  # deferred to the morning
        assert not store.reserve_contact("q", "email", t, caps)
        assert store.reserve_contact("p", "email", t + dt.timedelta(days=1, seconds=1), caps)

    # -- erasure -----------------------------------------------------------------------------------------
    def test_erasure_leaves_no_trace_and_resent_events_do_not_resurrect(self, store: Any) -> None:
        store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", device_id="d1"),
                                  ev("e2", "2025-01-02T00:00:00Z", customer_id="c2")))
        pid = store.resolve({CUSTOMER_ID: "c1"})
        store.set_consent(pid, "personalization", True)
        store.reserve_contact(pid, "email", "2025-01-03T00:00:00Z", {"24h": 1})
        assert store.erased_at(pid) is None
        assert store.erase_profile(pid) == 1
        assert store.get_profile(pid) is None and store.get_profiles([pid]) == [None]
        assert store.resolve({CUSTOMER_ID: "c1"}) is None and store.resolve({DEVICE_ID: "d1"}) is None
        assert store.get_consent(pid) == {} and store.contacts_for(pid) == []
        assert store.identifiers_of([pid]) == {}
        assert list(store.export_events()[EVENT_ID]) == ["e2"]
        assert store.erased_at(pid) is not None
        exported = store.export_profile(pid)
        assert exported["events"] == [] and exported["identifiers"] == [] and exported["online_state"] is None
        # the same event re-sent, and an old event with another id carrying the erased identifier
        r = store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", device_id="d1"),
                                      ev("e9", "2025-01-01T12:00:00Z", device_id="d1")))
        assert (r.accepted, r.suppressed) == (0, 2)
        assert list(self.reopen(store).export_events()[EVENT_ID]) == ["e2"]
        # a person who comes back later starts again under the same id, its erasure time on the profile
        back = store.append_events(frame(ev("e10", pd.Timestamp.now(tz="UTC").isoformat(), customer_id="c1")))
        assert back.profile_ids == (pid,) and store.get_profile(pid).erased_at == store.erased_at(pid)

    # -- catalog and stock (optional capability) ---------------------------------------------------------
    def test_stock_overall_and_per_store(self, store: Any) -> None:
        self.require(store, "catalog")
        v0 = store.catalog_version()
        store.upsert_items(pd.DataFrame({"item_id": ["a", "b", "c"], "in_stock": [True, False, None]}))
        store.set_stock("d", False)  # an item the catalog does not know yet gets a row
        assert store.in_stock(["a", "b", "c", "d", "zz"]) == {"a": True, "b": False, "c": True, "d": False,
                                                               "zz": True}
        store.set_stock("a", False, store_id="paris")
        store.set_stock("b", True, store_id="paris")
        assert store.in_stock(["a", "b", "c", "d"], store_id="paris") == {"a": False, "b": True, "c": True,
                                                                           "d": False}
        assert store.in_stock(["a", "b"], store_id="lyon") == {"a": True, "b": False}  # unknown there: overall
        assert store.catalog().get("d") == CatalogItem("d", in_stock=False)
        assert len({v0, store.catalog_version()}) == 2
        assert self.reopen(store).catalog_version() == store.catalog_version()
        for bad in (("a", "yes"), ("", True)):
            with pytest.raises(ValueError):
                store.set_stock(*bad)
        with pytest.raises(ValueError):
            store.set_stock("a", True, store_id=" ")

    def test_upserts_replace_given_fields_and_keep_the_rest(self, store: Any) -> None:
        self.require(store, "catalog")
        store.upsert_items(pd.DataFrame({"item_id": ["a"], "name": ["Red shoe"], "price": [10.0]}))
        before = store.catalog_version()
        r = store.upsert_items(pd.DataFrame({"item_id": ["a", ""], "price": [12.0, 1.0]}))
        assert r.upserted == 1 and len(r.errors) == 1
        item = self.reopen(store).catalog().get("a")
        assert (item.name, item.price) == ("Red shoe", 12.0)
        assert store.catalog_version() != before

    # -- decision log and served lists (optional capabilities) -------------------------------------------
    def test_decision_log_is_idempotent_and_erased_with_the_profile(self, store: Any) -> None:
        self.require(store, "decisions")
        store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1")))
        pid = store.resolve({CUSTOMER_ID: "c1"})
        assert store.record_decision("d1", pid, "camp", "offer", "email", False, "2025-01-02T00:00:00Z", {"m": "3"})
        assert not store.record_decision("d1", pid, "camp", "other", "sms", True, "2025-01-02T00:00:00Z")
        log = store.decisions()
        assert tuple(log.columns) == DECISION_COLUMNS and log["action"].tolist() == ["offer"]
        with pytest.raises(ValueError, match="campaign_id"):
            store.record_decision("d2", pid, "", "offer", "email", False, "2025-01-02T00:00:00Z")
        store.erase_profile(pid)
        assert len(store.decisions()) == 0

    def test_served_lists_are_idempotent_and_erased_with_the_profile(self, store: Any) -> None:
        self.require(store, "served_lists")
        store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1")))
        pid = store.resolve({CUSTOMER_ID: "c1"})
        lst = ServedList("rec_1", _utc("2025-01-02T00:00:00Z"), pid, "home", "web", "mirror-recommender", "3",
                         ("a", "b"))
        assert store.record_recommendations([lst, lst]) == 1 and not store.record_recommendation(lst)
        served = store.recommendations()
        assert tuple(served.columns) == RECOMMENDATION_COLUMNS and served["item_ids"].tolist() == [("a", "b")]
        store.erase_profile(pid)
        assert len(store.recommendations()) == 0
