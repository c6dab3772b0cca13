"""A README walk-through's findings (issue 16), over the real HTTP service (the session server):

- a cart reminder's wording rests only on the cart: a cart of life-event items is never "Still thinking
  about pet?" because the customer also browsed pet food; it falls to the generic "Your cart is waiting";
- an item event posted without `category` takes the catalog's, so interests build by category.
"""

from __future__ import annotations

import pandas as pd
from mirror_server import Server, event, profile_id_for

from features.catalog import Catalog
from serving import nba

WRITE = "write-key"
BABY = "Baby > Diapers"  # life-event tier in guard.yaml (`baby*`, `diaper`): never named outbound
PET = "Pet > Dog food"
CATALOG = [{"item_id": "cw-diapers", "name": "Classic diapers", "category": BABY, "price": 20.0},
           {"item_id": "cw-wipes", "name": "Soft baby wipes", "category": BABY, "price": 6.0},
           *({"item_id": f"cw-pet-{i}", "name": f"Crunchy kibble {i}", "category": PET, "price": 15.0 + i}
             for i in range(3))]


def _customer(prefix: str) -> str:
    """A customer id of this module whose profile is not in the default campaign's holdout."""
    n = 0
    while nba.is_holdout("default", profile_id_for(f"{prefix}{n}"), nba.NBAConfig().holdout_share):
        n += 1
    return f"{prefix}{n}"


def _put_catalog(server: Server) -> None:
    r = server.client.put("/items", json={"items": CATALOG}, headers=server.headers(WRITE))
    assert r.status_code == 200 and not r.json()["rejected"], r.text


def _send(server: Server, *events: dict[str, object]) -> None:
    r = server.post("/events", {"events": list(events)}, key=WRITE)
    assert r.status_code == 200, r.text
    assert len(r.json()["accepted"]) == len(events), r.text


def _item_event(eid: str, customer: str, etype: str, item: str, days_ago: float, **extra: object) -> dict:
    return event(eid, customer, etype, None, days_ago=days_ago, item_id=item, **extra)


def _cart_reminders(server: Server, customer: str, channel: str) -> list[dict]:
    r = server.post("/next_best_action", {"customer_id": customer, "channel": channel, "campaign": "cw"})
    assert r.status_code == 200, r.text
    return [a for a in r.json()["actions"] if a["action"] == nba.CART_REMINDER]


def test_a_cart_of_life_event_items_is_never_worded_with_another_category(server: Server) -> None:
    _put_catalog(server)
    c = _customer("cw-cart")
    pet = [_item_event(f"{c}-pet-{i}", c, etype, f"cw-pet-{i % 3}", days_ago=0.5 - i / 100, category=PET)
           for i, etype in enumerate(("view", "view", "purchase", "view", "view"))]
    _send(server, *pet, _item_event(f"{c}-cart-1", c, "add_to_cart", "cw-diapers", days_ago=0.2, category=BABY),
          _item_event(f"{c}-cart-2", c, "add_to_cart", "cw-wipes", days_ago=0.1, category=BABY))
    r = server.client.put("/consent", json={"customer_id": c, "purpose": "email_marketing", "granted": True},
                          headers=server.headers(WRITE))
    assert r.status_code == 200, r.text
    seen = []
    for channel in ("app", "web", "email"):
        for a in _cart_reminders(server, c, channel):
            shown = f"{a['reason']} {a['params']}".lower()
            assert "pet" not in shown and "dog" not in shown and "kibble" not in shown, (channel, a)
            assert "baby" not in shown and "diaper" not in shown, (channel, a)  # life event: never named
            assert a["reason"].startswith("Your cart is waiting"), (channel, a)  # guard.yaml's `none` wording
            assert not ({"categories", "items", "item_ids"} & set(a["params"])), (channel, a)
            seen.append(channel)
    assert "app" in seen and "email" in seen, seen  # the reminder is offered, generically worded


def test_an_item_event_without_category_takes_the_catalogs(server: Server) -> None:
    _put_catalog(server)
    c = _customer("cw-cat")
    given = _item_event(f"{c}-given", c, "view", "cw-pet-1", days_ago=0.3, category="Pets")  # kept as given
    bare = _item_event(f"{c}-bare", c, "view", "cw-pet-2", days_ago=0.2)
    bare.pop("category", None)
    body = {"events": [given, bare]}
    r = server.post("/events", body, key=WRITE)
    assert r.status_code == 200 and len(r.json()["accepted"]) == 2, r.text
    r = server.client.get(f"/profiles/{c}/export", params={"by": "customer_id"}, headers=server.headers())
    assert r.status_code == 200, r.text
    stored = {e["event_id"]: e.get("category") for e in r.json()["events"]}
    assert stored == {f"{c}-given": "Pets", f"{c}-bare": PET}, stored
    r = server.client.get(f"/profiles/{c}", params={"by": "customer_id"}, headers=server.headers())
    assert r.status_code == 200 and PET in r.text, r.text


def test_catalog_categories_fill_only_missing_ones_on_copies() -> None:
    from serving.service import with_catalog_categories

    catalog = Catalog.from_frame(pd.DataFrame(CATALOG))
    sent = [{"event_type": "view", "item_id": " cw-pet-1 "}, {"event_type": "view", "item_id": "cw-pet-1",
                                                               "category": "Pets"},
            {"event_type": "add_to_cart", "item_id": "cw-diapers", "category": "  "},
            {"event_type": "search", "query": "kibble"}, {"event_type": "view", "item_id": "not-in-catalog"}]
    before = [dict(r) for r in sent]
    out = with_catalog_categories(sent, catalog)
    assert [r.get("category") for r in out] == [PET, "Pets", BABY, None, None]
    assert sent == before  # the caller's records are unchanged
