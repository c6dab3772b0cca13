"""Strict input over HTTP (issue 'Erasure that reaches everything', bad input): nothing malformed is
stored, nothing valid in the same batch is lost, every rejection names its field, nothing is coerced."""

from __future__ import annotations

import json

import pandas as pd
from mirror_server import event


def _events(server, events: list[dict], raw: str | None = None, status: int = 200):
    body = raw if raw is not None else json.dumps({"events": events})
    r = server.client.post("/events", content=body, headers={**server.headers("write-key"),
                                                              "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    return r.json()


def _rejected(answer: dict) -> dict[str, str]:
    return {f"{x['row']}:{x['field']}": x["reason"] for x in answer["rejected"]}


def test_bad_rows_are_rejected_by_field_and_the_good_ones_kept(server):
    good = event("strict-good", "strict-1", "view", 1)
    bad = [
        event("strict-nul", "strict\x00nul", "view", 1),
        event("strict-zw", "strict\u200b1", "view", 1),  # a zero-width space: a look-alike customer
        event("strict-long", "x" * 300, "view", 1),
        {**event("strict-old", "strict-1", "view", 1), "ts": "1500-01-01T00:00:00+00:00"},
        {**event("strict-future", "strict-1", "view", 1),
         "ts": (pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=3)).isoformat()},
        {},
    ]
    answer = _events(server, [good, *bad])
    assert answer["accepted"] == ["strict-good"]
    rejected = _rejected(answer)
    for row, field in [(1, "customer_id"), (2, "customer_id"), (3, "customer_id"), (4, "ts"), (5, "ts")]:
        assert f"{row}:{field}" in rejected, (row, field, rejected)
    assert any(k.startswith("6:") for k in rejected)  # the empty event is named, never dropped silently


def test_nan_prices_and_conflicting_duplicates_are_errors(server):
    rows = [event("strict-nan", "strict-2", "purchase", 2, quantity=1)]
    raw = json.dumps({"events": rows}).replace('"price": 10.0', '"price": NaN')
    assert "NaN" in raw
    answer = _events(server, [], raw=raw, status=422)  # nothing accepted: a problem listing the rows
    assert "0:price" in _rejected(answer) and answer["errors"][0]["field"] == "events[0].price"
    same, other = event("strict-dup", "strict-2", "view", 3), event("strict-dup", "strict-2", "view", 4)
    answer = _events(server, [same, same, other])
    assert answer["accepted"] == ["strict-dup"] and answer["duplicates"] == ["strict-dup"]
    assert "conflict" in _rejected(answer)["2:event_id"]


def test_request_fields_are_never_coerced(server):
    for body in ({"customer_id": "c1", "k": "5"}, {"customer_id": "c1", "k": True}, {"customer_id": 7}):
        r = server.post("/recommend", body)
        assert r.status_code in (400, 422), (body, r.text)
        assert any(k in r.text for k in ("k", "customer_id")), r.text
    r = server.client.put("/consent", json={"customer_id": "c1", "purpose": "social", "granted": "yes"},
                          headers=server.headers("write-key"))
    assert r.status_code == 422 and "granted" in r.text, r.text


def test_a_stored_id_sent_again_with_other_content_is_rejected(server):
    stored = event("strict-stored", "strict-3", "view", 5)
    assert _events(server, [stored])["accepted"] == ["strict-stored"]
    other = {**event("strict-stored", "strict-3", "view", 6), "ts": stored["ts"]}  # same id, another item
    fresh = event("strict-fresh", "strict-3", "view", 7)
    # the store sees [fresh, other]: the conflict must be named by its row in the request (3), not there (1)
    answer = _events(server, [{}, fresh, fresh, other])
    assert answer["accepted"] == ["strict-fresh"] and answer["duplicates"] == ["strict-fresh"]
    rejected = _rejected(answer)
    assert {k.split(":")[0] for k in rejected} == {"0", "3"}, rejected
    assert "conflict" in rejected["3:event_id"]
    assert [x["event_id"] for x in answer["rejected"] if x["row"] == 3] == ["strict-stored"]
    answer = _events(server, [stored])  # the stored event was kept as it was: re-sending it is a duplicate
    assert (answer["accepted"], answer["duplicates"], answer["rejected"]) == ([], ["strict-stored"], [])


def test_a_bad_stock_id_is_a_422_naming_it_and_nothing_changes(server):
    r = server.client.put("/stock", json={"items": [{"item_id": "i01", "in_stock": False},
                                                    {"item_id": "bad\u009bid", "in_stock": False}]},
                          headers=server.headers("write-key"))
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "items[1].item_id"  # a problem (serving/problems.py)
    assert "i01" in {x["item_id"] for x in server.post("/recommend", {"k": 20}).json()["items"]}  # unchanged
