"""What an email or SMS tool integrates with, over HTTP: /scores and segment exports by the retailer's
own ids (customer ids, raw emails and phones), unknown ids listed in the order asked, the holdout flag,
the top action with its channel, send time and guarded message, a preview that reserves no contact
slot, segment bodies checked at submit, and export files whose rows are /scores' answers.
"""

from __future__ import annotations

import io
import json
import math
import time

import pandas as pd
import pytest
from mirror_server import CUSTOMERS, event, profile_id_for

from features.schema import CUSTOMER_ID, PROFILE_ID
from features.store import SQLiteProfileStore
from serving import api, decisions, nba

ANN = "email-tool-ann"
ANN_EMAIL, ANN_PHONE = "Ann.Tool@Example.com", "+1 (415) 555-0199"


@pytest.fixture(scope="module")
def ann(server) -> str:
    """A customer the email tool knows by customer id, email and phone, opted in to email."""
    evs = [event("et-ann-1", ANN, "view", 3, days_ago=3, email=ANN_EMAIL, phone=ANN_PHONE),
           event("et-ann-2", ANN, "add_to_cart", 3, days_ago=2),
           {**event("et-ann-3", ANN, "email_click", days_ago=1), "channel": "email"}]
    r = server.post("/events", {"events": evs}, key="write-key")
    assert r.status_code == 200 and len(r.json()["accepted"]) == 3, r.text
    r = server.client.put("/consent", json={"customer_id": ANN, "purpose": "email_marketing", "granted": True},
                          headers=server.headers("write-key"))
    assert r.status_code == 200, r.text
    return r.json()["profile_id"]


def _contacts(server, pid: str) -> list:
    store = SQLiteProfileStore(server.store_path)
    try:
        return store.contacts_for(pid)
    finally:
        store.close()


def test_scores_take_and_return_the_retailers_ids(server, ann):
    body = {"profile_ids": [profile_id_for("c1")], "customer_ids": [ANN, "ghost-1"],
            "emails": ["ann.tool@example.COM", "ghost@example.com"], "phones": ["415-555-0199"], "messages": True}
    r = server.post("/scores", body, key="read-key")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["unknown"] == ["ghost-1", "ghost@example.com"]  # in the order asked
    rows = out["scores"]
    assert [s["id"] for s in rows] == [profile_id_for("c1"), ANN, "ann.tool@example.COM", "415-555-0199"]
    assert [s["customer_id"] for s in rows] == ["c1", ANN, ANN, ANN]  # the retailer's id, whatever was asked
    assert {s["profile_id"] for s in rows[1:]} == {ann}
    for s in rows:
        assert list(s) == list(decisions.SCORE_COLUMNS)
        assert isinstance(s["holdout"], bool) and s["top_action"] in nba.ACTION_NAMES
        if s["top_action"] == nba.DO_NOTHING:
            assert s["message"] is None and s["top_channel"] is None
        else:
            assert s["message"] and isinstance(s["params"], dict) and s["top_channel"]
    assert ANN_EMAIL.lower() not in r.text and "555-0199" not in r.text.replace("415-555-0199", "")  # no raw data


def test_scores_message_is_next_best_actions_and_reserves_nothing(server, ann):
    """A preview: /scores decides as /next_best_action would on the top channel, with the same guarded
    message and parameters, but takes no contact slot; /next_best_action then takes one."""
    for _ in range(3):  # a decision is per hour: ask again if the calls straddled the hour
        hour = int(time.time() // 3600)
        first = server.post("/scores", {"customer_ids": [ANN], "messages": True}).json()["scores"][0]
        again = server.post("/scores", {"customer_ids": [ANN], "messages": True}).json()["scores"][0]
        assert first == again and _contacts(server, ann) == []
        assert first["top_action"] != nba.DO_NOTHING and first["top_channel"] == "email", first
        r = server.post("/next_best_action", {"customer_id": ANN, "channel": first["top_channel"]})
        if int(time.time() // 3600) == hour:
            break
    assert r.status_code == 200, r.text
    offered = r.json()["actions"][0]
    assert offered["action"] == first["top_action"]
    assert offered["reason"] == first["message"] and offered["params"] == first["params"]
    assert offered["send_at"] == first["send_at"]
    assert len(_contacts(server, ann)) == 1  # /next_best_action holds the slot, /scores never did


def test_scores_leave_messages_out_unless_asked(server, ann):
    full = server.post("/scores", {"customer_ids": [ANN], "messages": True}).json()["scores"][0]
    bare = server.post("/scores", {"customer_ids": [ANN]}).json()["scores"][0]  # the fast default
    assert bare["message"] is None and bare["params"] is None
    assert {k: v for k, v in bare.items() if k not in ("message", "params")} == \
        {k: v for k, v in full.items() if k not in ("message", "params")}


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/scores", {"emails": ["not-an-email"]}, "emails"),
    ("/scores", {"phones": ["12"]}, "phones"),
    ("/scores", {"customer_ids": [""]}, "customer_ids"),
    ("/scores", {"customer_ids": ["c1"], "campaign": ""}, "campaign"),
    ("/scores", {"customer_ids": ["c1"], "messages": "yes"}, "messages"),
    ("/score_segment/submit", {"customer_ids": ["c1"], "profile_ids": ["p"]}, "profile_ids"),
    ("/score_segment/submit", {"customer_ids": []}, "customer_ids"),
    ("/score_segment/submit", {"customer_ids": ["c1", "c1"]}, "customer_ids"),
    ("/score_segment/submit", {"emails": ["a@example.com", "nope"]}, "emails"),
    ("/score_segment/submit", {"phones": ["555"]}, "phones"),
    ("/score_segment/submit", {"customer_ids": ["c1"], "format": "xlsx"}, "format"),
    ("/score_segment/submit", {"campaign": "x" * 200}, "campaign"),
    ("/score_segment/submit", {"customer_id": ["c1"]}, "customer_id"),
])
def test_a_bad_body_is_a_4xx_at_once_naming_the_field(server, path, body, field):
    r = server.post(path, body, key="read-key")
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text and "task_id" not in r.text  # refused at submit: no task was queued


def _export(server, body: dict) -> tuple[pd.DataFrame, dict]:
    r = server.post("/score_segment/submit", body, key="read-key")
    assert r.status_code == 200, r.text
    task = r.json()["task_id"]
    deadline = time.monotonic() + 60
    while (status := server.client.get("/score_segment/status", params={"task_id": task},
                                       headers=server.headers("read-key")).json())["status"] == "in_progress":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["status"] == "completed", (status, server.log_text()[-2000:])
    got = server.client.get("/score_segment/get", params={"task_id": task}, headers=server.headers("read-key"))
    assert got.status_code == 200
    assert str(server.tmp) not in json.dumps(status) + r.text + str(got.headers)  # never a server path
    if body.get("format") == "csv":
        table = pd.read_csv(io.BytesIO(got.content), dtype=str, keep_default_na=False)
    else:
        table = pd.read_parquet(io.BytesIO(got.content))
    assert list(table.columns) == list(api.CustomerScore.model_fields)  # the file's columns are /scores' fields
    return table, status


def _as_answer(row: dict) -> dict:
    """A file row in /scores' JSON types (CSV cells are text; parquet's nulls are None or NaN)."""
    out: dict = {}
    for k, v in row.items():
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
            v = None
        elif k in (nba.CHURN_PROBABILITY, nba.PURCHASE_PROPENSITY):
            v = round(float(v), 9)
        elif k == decisions.HOLDOUT:
            v = v if isinstance(v, bool) else {"true": True, "false": False}[str(v).lower()]
        elif k == decisions.MESSAGE_PARAMS and isinstance(v, str):  # JSON text in the file
            v = json.loads(v)
        out[k] = v
    return out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_whole_store_export_rows_are_scores_answers(server, ann, fmt):
    table, status = _export(server, {"format": fmt})
    assert status["rows"] == len(table) and status["unknown"] == []
    rows = [_as_answer(r) for r in table.to_dict("records")]
    by_customer = {r[CUSTOMER_ID]: r for r in rows if r[CUSTOMER_ID] is not None}
    assert {*CUSTOMERS, ANN} <= set(by_customer)  # keyed by the retailer's ids
    assert len(by_customer) == sum(r[CUSTOMER_ID] is not None for r in rows)  # each account once
    others = [r[PROFILE_ID] for r in rows if r[CUSTOMER_ID] is None]
    answer = server.post("/scores", {"customer_ids": sorted(by_customer), "profile_ids": others,
                                     "messages": True}).json()
    assert answer["unknown"] == []
    scored = [_as_answer(s) for s in answer["scores"]]
    assert sorted(map(json.dumps, scored)) == sorted(map(json.dumps, rows))


def test_export_by_customer_ids_lists_unknown_ones(server, ann):
    asked = [CUSTOMERS[1], "ghost-9", ANN, "ghost-3"]
    table, status = _export(server, {"customer_ids": asked, "format": "parquet", "campaign": "spring"})
    assert status["unknown"] == ["ghost-9", "ghost-3"]
    assert table[decisions.SCORE_ID].tolist() == table[CUSTOMER_ID].tolist() == [CUSTOMERS[1], ANN]
    assert table[PROFILE_ID].tolist() == [profile_id_for(CUSTOMERS[1]), ann]
    answer = server.post("/scores", {"customer_ids": [CUSTOMERS[1], ANN], "campaign": "spring",
                                     "messages": True}).json()["scores"]
    assert [_as_answer(r) for r in table.to_dict("records")] == [_as_answer(s) for s in answer]
