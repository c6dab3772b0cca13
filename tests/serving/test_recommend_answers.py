"""What a front end gets back from /recommend and /similar_items (issue 16, "For front ends"), over HTTP:
items with their catalog metadata and position, a recommendation id per list recorded in the store,
whether the caller was identified and warnings about what the answer ignored, /similar_items for a
product the model does not know yet, and attribution of clicks and purchases echoing a list's id.

Runs on the session server (tests/serving/mirror_server.py); the catalog records below restate every
field of the seeded items (same categories as the model), so the other tests see the same answers.
The served-list recorder's own promises (batches, nothing lost on close) are tested without a server.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from mirror_server import CUSTOMERS, N_ITEMS, Server, event, item_category, item_id, profile_id_for
from typer.testing import CliRunner

from features.store import ServedList, SQLiteProfileStore
from serving.served import ServedRecorder, new_recommendation_id
from training.cli import app

NEW_SHOE = "ra-new-shoe"  # in the catalog (category "shoes"), not in the model: added today
NEW_TRAIL = "ra-new-trail"  # in the catalog under "shoes > trail", a category the model has never seen
RID = re.compile(r"^rec_[0-9a-f]{32}$")
META = ("name", "brand", "category", "price", "currency", "url", "image_url")


def _record(item: str, category: str, n: int) -> dict[str, object]:
    return {"item_id": item, "name": f"Item {n}", "brand": "Acme", "category": category, "price": 10.0 + n,
            "currency": "USD", "url": f"https://shop.example/p/{item}", "image_url": f"https://img.example/{item}.jpg",
            "sensitive": False, "in_stock": True}


@pytest.fixture(scope="module")
def srv(server: Server) -> Server:
    items = [_record(item_id(i), item_category(i), i) for i in range(N_ITEMS)]
    items += [_record(NEW_SHOE, "shoes", 90), _record(NEW_TRAIL, "shoes > trail", 91)]
    r = server.client.put("/items", json={"items": items}, headers=server.headers("write-key"))
    assert r.status_code == 200 and not r.json()["rejected"], r.text
    return server


def recommend(srv: Server, body: dict, key: str = "read-key") -> dict:
    r = srv.post("/recommend", body, key=key)
    assert r.status_code == 200, r.text
    return r.json()


def similar(srv: Server, body: dict) -> dict:
    r = srv.post("/similar_items", body, key="read-key")
    assert r.status_code == 200, r.text
    return r.json()


def fields(answer: dict) -> dict[str, str]:
    return {w["field"]: w["reason"] for w in answer["warnings"]}


def send(srv: Server, *events: dict) -> None:
    r = srv.post("/events", {"events": list(events)}, key="write-key")
    assert r.status_code == 200 and len(r.json()["accepted"]) == len(events), r.text


def served_lists(srv: Server, ids: set[str], timeout_s: float = 10.0) -> pd.DataFrame:
    """The store's rows for these list ids, once the service's background writer has recorded them."""
    store = SQLiteProfileStore(srv.store_path)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = store.recommendations()
            rows = rows[rows["recommendation_id"].isin(ids)]
            if len(rows) == len(ids) or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)
    finally:
        store.close()


# -- items and ids -----------------------------------------------------------------------------------
def test_items_carry_catalog_metadata_positions_and_each_list_an_opaque_id(srv: Server) -> None:
    customer = CUSTOMERS[0]
    body = recommend(srv, {"customer_id": customer, "k": 5})
    assert [it["position"] for it in body["items"]] == list(range(5))
    for it in body["items"]:
        n = int(it["item_id"][1:])
        assert {f: it[f] for f in META} == {f: v for f, v in _record(it["item_id"], item_category(n), n).items()
                                            if f in META}
    page = similar(srv, {"item_id": item_id(0), "k": 3})
    assert page["complements"][0]["name"] == "Item 1" and page["similar"][0]["price"] is not None
    again = recommend(srv, {"customer_id": customer, "k": 5})
    ids = [body["recommendation_id"], again["recommendation_id"], page["similar_recommendation_id"],
           page["complements_recommendation_id"]]
    assert all(RID.match(i) for i in ids) and len(set(ids)) == 4
    assert not any(profile_id_for(customer)[2:] in i for i in ids)  # random, not derived from the person
    # what was served is in the store: who (profile id), where, which model version, the items in order
    rows = served_lists(srv, set(ids)).set_index("recommendation_id")
    assert len(rows) == 4
    first = rows.loc[body["recommendation_id"]]
    assert first["profile_id"] == profile_id_for(customer) and first["surface"] == "recommend"
    assert (first["model"], first["model_version"]) == ("mirror-recommender", body["model_version"])
    assert list(first["item_ids"]) == [it["item_id"] for it in body["items"]] and first["channel"] == "web"
    assert rows.loc[page["similar_recommendation_id"], "surface"] == "similar_items"
    assert list(rows.loc[page["complements_recommendation_id"], "item_ids"]) == [
        it["item_id"] for it in page["complements"]]
    anonymous = recommend(srv, {"k": 2, "context": {"page": "home"}})
    row = served_lists(srv, {anonymous["recommendation_id"]}).iloc[0]
    assert pd.isna(row["profile_id"]) and row["surface"] == "home"


# -- identified, warnings ----------------------------------------------------------------------------
def test_the_answer_says_whether_the_caller_was_identified(srv: Server) -> None:
    known = recommend(srv, {"customer_id": CUSTOMERS[1], "k": 3})
    assert known["identified"] is True and known["warnings"] == []
    anonymous = recommend(srv, {"k": 3})
    assert anonymous["identified"] is False and anonymous["warnings"] == [] and anonymous["profile_id"] is None
    ghost = recommend(srv, {"customer_id": "ra-ghost-4412", "k": 3})
    assert ghost["identified"] is False and list(fields(ghost)) == ["customer_id"]
    assert "ra-ghost-4412" not in ghost["warnings"][0]["reason"]  # never the identifier itself
    assert [it["item_id"] for it in ghost["items"]] == [it["item_id"] for it in anonymous["items"]]
    # a wrong identifier beside a right one: identified, and the bad phone named
    mixed = recommend(srv, {"customer_id": CUSTOMERS[1], "phone": "12", "k": 3})
    assert mixed["identified"] is True and list(fields(mixed)) == ["phone"]
    assert "device_id" in fields(recommend(srv, {"device_id": "ra-new-device", "k": 1}))


def test_what_the_answer_ignored_is_named_and_left_out(srv: Server) -> None:
    by_category = recommend(srv, {"k": 3, "context": {"category": "shoes"}})
    assert by_category["warnings"] == [] and {it["basis"] for it in by_category["items"]} == {"popular_category"}
    assert {it["category"] for it in by_category["items"]} == {"shoes"}
    miscased = recommend(srv, {"k": 3, "context": {"category": "Shoes"}})
    assert "'shoes'" in fields(miscased)["context.category"]  # the catalog's spelling, suggested
    assert {it["basis"] for it in miscased["items"]} == {"popular"}  # ignored, not half-used
    unknown = recommend(srv, {"k": 3, "context": {"category": "Hovercraft", "item_id": "ra-no-such-item",
                                                  "page": "pdp"}, "exclude": [item_id(0), "ra-nope"]})
    assert set(fields(unknown)) == {"context.category", "context.item_id", "context.page", "exclude[1]"}
    assert "did you mean" not in fields(unknown)["context.category"]
    assert "home" in fields(unknown)["context.page"]  # the page types it knows
    assert item_id(0) not in [it["item_id"] for it in unknown["items"]]
    assert recommend(srv, {"k": 3, "context": {"page": "product", "item_id": item_id(4)}})["warnings"] == []
    # an unknown field is still a 400 naming it, never a warning
    r = srv.post("/recommend", {"k": 3, "context": {"colour": "red"}}, key="read-key")
    assert r.status_code == 400 and "colour" in r.text
    many = recommend(srv, {"k": 3, "exclude": [f"ra-x{i}" for i in range(25)]})
    assert len(many["warnings"]) == 11 and "15 more" in many["warnings"][-1]["reason"]


# -- /similar_items ---------------------------------------------------------------------------------
def test_similar_items_for_a_product_added_today_falls_back_to_its_category(srv: Server) -> None:
    shoes = [item_id(i) for i in range(N_ITEMS) if item_category(i) == "shoes"]  # i00 is the most popular
    page = similar(srv, {"item_id": NEW_SHOE, "k": 3})
    assert [it["item_id"] for it in page["similar"]] == shoes[:3] and page["complements"] == []
    assert {it["basis"] for it in page["similar"]} == {"popular_category"} and page["warnings"] == []
    assert all(it["reason"] for it in page["similar"])
    # a category the model never saw: the level above it, then the shop's popular items
    deep = similar(srv, {"item_id": NEW_TRAIL, "k": 7})
    got = [it["item_id"] for it in deep["similar"]]
    assert got[:len(shoes)] == shoes and {it["basis"] for it in deep["similar"][len(shoes):]} == {"popular"}
    # in neither the catalog nor the model: popular items and a warning, not a 404
    nowhere = similar(srv, {"item_id": "ra-unknown-everywhere", "k": 3})
    assert [it["basis"] for it in nowhere["similar"]] == ["popular"] * 3 and "item_id" in fields(nowhere)


def test_similar_items_takes_the_customer_and_exclusions_under_recommends_rules(srv: Server) -> None:
    customer = "ra-similar-buyer"
    anonymous = [it["item_id"] for it in similar(srv, {"item_id": item_id(0), "k": 4})["similar"]]
    bought = anonymous[1]
    send(srv, event("ra-sim-buy-1", customer, "purchase", int(bought[1:]), days_ago=1, quantity=1))
    theirs = similar(srv, {"item_id": item_id(0), "k": 4, "customer_id": customer, "exclude": [anonymous[0]]})
    assert theirs["identified"] is True and theirs["profile_id"] == profile_id_for(customer)
    got = [it["item_id"] for it in theirs["similar"]]
    assert bought not in got and anonymous[0] not in got and len(got) == 4  # bought recently; excluded
    # without `personalization` nothing of theirs is used: exactly the anonymous answer
    r = srv.client.put("/consent", json={"customer_id": customer, "purpose": "personalization", "granted": False},
                       headers=srv.headers("write-key"))
    assert r.status_code == 200, r.text
    withdrawn = similar(srv, {"item_id": item_id(0), "k": 4, "customer_id": customer})
    assert [it["item_id"] for it in withdrawn["similar"]] == anonymous
    assert "exclude[0]" in fields(similar(srv, {"item_id": item_id(0), "exclude": ["ra-nope"]}))


# -- attribution ------------------------------------------------------------------------------------
def test_a_click_and_a_purchase_echoing_the_id_are_attributed_to_the_list(srv: Server, tmp_path: Path) -> None:
    customer = "ra-attribution-shopper"
    send(srv, event("ra-attr-seen", customer, "view", 6, days_ago=2))
    body = recommend(srv, {"customer_id": customer, "k": 4, "context": {"page": "wishlist"}})
    rid, picked = body["recommendation_id"], body["items"][1]
    echo = {"recommendation_id": rid, "position": picked["position"]}
    n = int(picked["item_id"][1:])
    send(srv, event("ra-attr-click", customer, "view", n, **echo),
         event("ra-attr-cart", customer, "add_to_cart", n, **echo),
         event("ra-attr-buy", customer, "purchase", n, quantity=2, price=12.5, **echo))
    assert len(served_lists(srv, {rid})) == 1
    store = SQLiteProfileStore(srv.store_path)
    try:
        kept = store.attributed_events()
    finally:
        store.close()
    mine = kept[kept["recommendation_id"] == rid]
    assert sorted(mine["event_id"]) == ["ra-attr-buy", "ra-attr-cart", "ra-attr-click"]
    assert set(mine["position"]) == {1.0}
    out = tmp_path / "attribution.csv"
    res = CliRunner().invoke(app, ["report", "attribution", "--store", str(srv.store_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out, dtype={"model_version": str}, keep_default_na=False, na_values=[""])
    row = table[(table["surface"] == "wishlist") & (table["model_version"] == body["model_version"])]
    assert len(row) == 1, table
    got = row.iloc[0]
    assert (got["lists_served"], got["items_shown"], got["clicks"], got["add_to_carts"], got["purchases"]) == (
        1, 4, 1, 1, 1)
    assert got["ctr"] == pytest.approx(0.25) and got["conversion_rate"] == 1.0 and got["revenue"] == 25.0
    # a bad position is refused, naming the field
    r = srv.post("/events", {"event": event("ra-attr-bad", customer, "view", n, recommendation_id=rid,
                                             position=-1)}, key="write-key")
    # (nothing accepted: a 422 problem, its `rejected` as in a 200 answer; serving/problems.py)
    assert r.status_code == 422 and r.json()["rejected"][0]["field"] == "position", r.text


# -- the recorder (no server) --------------------------------------------------------------------------
def _lists(n: int) -> list[ServedList]:
    now = pd.Timestamp.now(tz="UTC")
    return [ServedList(new_recommendation_id(), now, None, "home", "web", "m", "1", ("a",)) for _ in range(n)]


def test_the_recorder_batches_in_the_background_and_loses_nothing_on_close() -> None:
    written: list[list[ServedList]] = []
    gate = threading.Event()

    def record(batch: list[ServedList]) -> int:
        gate.wait(5)  # a slow store: submits pile up behind the first write
        written.append(list(batch))
        return len(batch)

    rec = ServedRecorder(record, max_batch=50).start()
    lists = _lists(120)
    t0 = time.perf_counter()
    for x in lists:
        rec.submit(x)
    assert time.perf_counter() - t0 < 1.0 and not rec.flush(timeout=0.05)  # submit does not wait for the store
    gate.set()
    assert rec.close(timeout=10)
    assert [x for batch in written for x in batch] == lists and max(len(b) for b in written) <= 50
    assert len(written) < 10  # batched


def test_the_recorder_retries_a_failed_write_and_writes_itself_when_the_queue_is_full() -> None:
    calls: list[int] = []

    def flaky(batch: list[ServedList]) -> int:
        calls.append(len(batch))
        if len(calls) == 1:
            raise OSError("disk busy")
        return len(batch)

    rec = ServedRecorder(flaky).start()
    rec.submit(_lists(1)[0])
    assert rec.flush(timeout=10) and calls == [1, 1]  # tried again, not dropped
    rec.close()
    direct: list[int] = []
    unstarted = ServedRecorder(lambda b: direct.append(len(b)) or len(b), max_queue=1)
    unstarted.submit(_lists(1)[0])  # no writer thread: written in the call
    assert direct == [1]


def test_the_category_fallback_walks_up_the_path_merging_the_categories_under_each_level() -> None:
    from datetime import UTC, datetime

    from features.catalog import Catalog, CatalogItem
    from serving.decisions import customer_consent
    from serving.guard import load_policy
    from serving.models import PopularityFallback
    from serving.recommend import Query, RecommendationPolicy

    model = PopularityFallback([("shoe", "Sports > Shoes", 5.0), ("sock", "Sports > Socks", 9.0),
                                ("lamp", "Home > Lamps", 20.0), ("sofa", "Home > Sofas", 1.0)])
    catalog = Catalog([CatalogItem("new", category="Sports > Shoes > Trail"),
                       *(CatalogItem(i, category=c) for i, c in (("shoe", "Sports > Shoes"), ("sock", "Sports > Socks"),
                                                                 ("lamp", "Home > Lamps"), ("sofa", "Home > Sofas")))])
    policy = RecommendationPolicy(load_policy())
    q = Query(channel="web", k=3, now=datetime.now(UTC), context_item="new")
    out = policy.similar(model, catalog, None, customer_consent({}, None), q)
    assert [(p.item_id, p.basis) for p in out.similar] == [
        ("shoe", "popular_category"), ("sock", "popular_category"), ("lamp", "popular")]
    reasons = [p.reason.lower() for p in out.similar]
    assert "shoes" in reasons[0] and "sports" in reasons[1] and "shoes" not in reasons[1]  # each one's level
    assert out.complements == () and out.warnings == ()
