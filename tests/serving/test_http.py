"""The real BentoML server over HTTP: every endpoint, bad input, real-time events, erasure, auth."""

from __future__ import annotations

import io
import json
import time

import pytest
from mirror_server import CUSTOMERS, N_ITEMS, event, item_id, profile_id_for

from serving import nba


def ids(resp_items: list[dict]) -> list[str]:
    return [x["item_id"] for x in resp_items]


# -- probes and metrics ---------------------------------------------------------------------------
def test_probes_and_metrics(server):
    assert server.client.get("/readyz").status_code == 200
    assert server.client.get("/healthz").status_code == 200
    assert server.client.get("/livez").status_code == 200
    status = server.client.get("/status").json()
    assert status["ready"] is True
    assert status["models"]["mirror-recommender"]["loaded"] is True
    assert status["models"]["mirror-recommender"]["fallback"] is False
    metrics = server.client.get("/metrics").text
    assert 'mirror_model_loaded{model="mirror-recommender"} 1.0' in metrics
    assert 'mirror_model_fallback{model="mirror-recommender"} 0.0' in metrics


# -- /recommend -----------------------------------------------------------------------------------
def test_recommend_known_customer_leaves_out_purchases(server):
    r = server.post("/recommend", {"customer_id": "c1", "k": 5}, key=None)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["profile_id"] == profile_id_for("c1")
    assert body["cold_start"] is False
    items = ids(body["items"])
    assert len(items) == 5 == len(set(items))
    assert item_id(0) not in items  # c1 bought i00 five days ago (not a consumable)
    assert all(isinstance(x["reason"], str) and x["reason"] for x in body["items"])
    scores = [x["score"] for x in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_recommend_exclusions_and_k(server):
    first = ids(server.post("/recommend", {"customer_id": "c1", "k": 3}).json()["items"])
    r = server.post("/recommend", {"customer_id": "c1", "k": 3, "exclude": first[:2]})
    again = ids(r.json()["items"])
    assert not set(first[:2]) & set(again)
    assert len(again) == 3
    assert len(server.post("/recommend", {"customer_id": "c1", "k": 100}).json()["items"]) <= N_ITEMS


def test_recommend_anonymous_cold_start_uses_context(server):
    r = server.post("/recommend", {"customer_id": "nobody-knows-me", "k": 4, "context": {"item_id": item_id(0)}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] is True and body["profile_id"] is None
    items = ids(body["items"])
    assert items[:2] == [item_id(1), item_id(2)]  # the product page's complements come first
    assert item_id(0) not in items
    popular = ids(server.post("/recommend", {"k": 3}).json()["items"])
    assert popular == [item_id(0), item_id(1), item_id(2)]  # popularity order of the tiny model


def test_recommend_category_context(server):
    r = server.post("/recommend", {"k": 3, "context": {"category": "socks"}})
    assert r.status_code == 200
    # the three most popular socks (i % 4 == 2): i02, i06, i10
    assert ids(r.json()["items"]) == [item_id(2), item_id(6), item_id(10)]


def test_events_show_in_the_next_call(server):
    before = ids(server.post("/recommend", {"customer_id": "c2", "k": 5}).json()["items"])
    bought = before[0]
    r = server.post("/events", {"event": {**event("rt-buy-1", "c2", "purchase"), "item_id": bought}},
                    key="write-key")
    assert r.status_code == 200 and r.json()["accepted"] == ["rt-buy-1"], r.text
    after = ids(server.post("/recommend", {"customer_id": "c2", "k": 5}).json()["items"])
    assert bought not in after  # a just-bought item disappears

    views = [event(f"rt-view-{i}", "c2", "view", i) for i in (16, 17, 18, 19)]
    assert server.post("/events", {"events": views}, key="write-key").status_code == 200
    shifted = ids(server.post("/recommend", {"customer_id": "c2", "k": 5}).json()["items"])
    assert shifted != after  # a just-viewed item shifts the results


def test_a_view_in_this_session_brings_its_look_alikes_up(server):
    """Views older than the session window steer only through the model; a fresh one gets slots of its
    own (serving.service.SESSION_SLOTS: ranks 2 and 5), filled with that item's look-alikes."""
    old = [event(f"sess-old-{i}", "sess-c", "view", i, days_ago=3) for i in (0, 4, 8)]
    assert server.post("/events", {"events": old}, key="write-key").status_code == 200
    before = server.post("/recommend", {"customer_id": "sess-c", "k": 5}).json()
    assert before["cold_start"] is False
    r = server.post("/events", {"event": event("sess-new-13", "sess-c", "view", 13)}, key="write-key")
    assert r.status_code == 200 and r.json()["accepted"] == ["sess-new-13"], r.text
    after = server.post("/recommend", {"customer_id": "sess-c", "k": 5}).json()["items"]
    closest = ids(server.post("/similar_items", {"item_id": item_id(13), "k": 2}).json()["similar"])
    assert set(closest) & set(ids(after)[:2]) and set(closest) <= set(ids(after)[:5])
    assert all(x["reason"] for x in after) and ids(after) != ids(before["items"])
    scores = [x["score"] for x in after]
    assert scores == sorted(scores, reverse=True)


def test_out_of_stock_items_leave_the_results(server):
    body = {"k": 3, "context": {"category": "hats"}}  # most popular hats: i03, i07, i11, then i15
    assert ids(server.post("/recommend", body).json()["items"]) == [item_id(3), item_id(7), item_id(11)]
    r = server.client.put("/stock", json={"items": [{"item_id": item_id(7), "in_stock": False}]},
                          headers=server.headers("write-key"))
    assert r.status_code == 200, r.text
    try:
        assert ids(server.post("/recommend", body).json()["items"]) == [item_id(3), item_id(11), item_id(15)]
        similar = server.post("/similar_items", {"item_id": item_id(3), "k": 19}).json()["similar"]
        assert item_id(7) not in ids(similar)
    finally:
        server.client.put("/stock", json={"items": [{"item_id": item_id(7), "in_stock": True}]},
                          headers=server.headers("write-key"))
    assert server.client.put("/stock", json={"items": [{"item_id": "x", "in_stock": False}]}).status_code == 401
    bad = server.client.put("/stock", json={"items": [{"item_id": "x"}]}, headers=server.headers("write-key"))
    assert bad.status_code == 422 and "in_stock" in bad.text


def test_new_customer_first_event_is_personal_at_once(server):
    assert server.post("/recommend", {"customer_id": "fresh-1", "k": 3}).json()["cold_start"] is True
    r = server.post("/events", {"event": event("fresh-view-1", "fresh-1", "view", 7)}, key="write-key")
    assert r.status_code == 200
    body = server.post("/recommend", {"customer_id": "fresh-1", "k": 3}).json()
    assert body["cold_start"] is False and body["profile_id"] == r.json()["profile_ids"][0]


# -- /similar_items -------------------------------------------------------------------------------
def test_similar_items(server):
    r = server.post("/similar_items", {"item_id": item_id(0), "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert ids(body["complements"]) == [item_id(1), item_id(2)]
    assert item_id(0) not in ids(body["similar"]) and len(body["similar"]) == 3
    # an item nobody knows: popular items and a warning naming it, not a 404 (tests/serving/test_recommend_answers.py)
    missing = server.post("/similar_items", {"item_id": "no-such-item"})
    assert missing.status_code == 200 and [w["field"] for w in missing.json()["warnings"]] == ["item_id"]


# -- /events --------------------------------------------------------------------------------------
def test_events_report_accepted_duplicates_rejections(server):
    good = event("ev-good-1", "c3", "view", 3)
    bad = {k: v for k, v in event("ev-bad-1", "c3", "view", 3).items() if k != "ts"}
    wrong_type = {**event("ev-bad-2", "c3", "view", 3), "price": "cheap"}
    r = server.post("/events", {"events": [good, bad, good, wrong_type]}, key="write-key")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == ["ev-good-1"]
    assert body["duplicates"] == ["ev-good-1"]
    rej = {(x["row"], x["field"]) for x in body["rejected"]}
    assert rej == {(1, "ts"), (3, "price")}
    again = server.post("/events", {"event": good}, key="write-key").json()
    assert again["accepted"] == [] and again["duplicates"] == ["ev-good-1"]


def test_reviews_are_scored_for_sentiment(server):
    review = event("rev-1", "c6", "review", 6, text="Terrible, it arrived broken", rating=1)
    view = event("rev-view-1", "c6", "view", 6)
    r = server.post("/events", {"events": [review, view]}, key="write-key")
    assert r.status_code == 200, r.text
    assert r.json()["sentiment_scored"] == 1 and sorted(r.json()["accepted"]) == ["rev-1", "rev-view-1"]


# -- bad input: 4xx naming the field, never 5xx ---------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/recommend", {"customer_id": "c1", "k": "ten"}, "k"),
        ("/recommend", {"customer_id": "c1", "k": 0}, "k"),
        ("/recommend", {"customer_id": "c1", "k": 101}, "k"),
        ("/recommend", {"customer_id": "c1", "kk": 3}, "kk"),
        ("/recommend", {"customer_id": 12}, "customer_id"),
        ("/recommend", {"channel": "carrier_pigeon"}, "channel"),
        ("/recommend", {"context": {"item_id": "i1", "colour": "red"}}, "colour"),
        ("/recommend", {"exclude": "i01"}, "exclude"),
        ("/similar_items", {"k": 3}, "item_id"),
        ("/next_best_action", {"channel": "email"}, "customer_id"),
        ("/scores", {"profile_ids": "p1"}, "profile_ids"),
        ("/scores", {"profile_ids": ["p"] * 10_001}, "profile_ids"),
        ("/scores", {}, "profile_ids"),
        ("/events", {"events": [event(f"x{i}", "c1", "view", 1) for i in range(10_001)]}, "events"),
        ("/events", {"event": {"event_id": "x"}, "events": []}, "event"),
        ("/events", {"events": ["not an object"]}, "events"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(server, path, body, field):
    r = server.post(path, body, key="admin-key")
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text


def test_malformed_json_and_oversize_body(server):
    r = server.client.post("/recommend", content=b'{"customer_id": "c1", "k": ', headers={
        "Content-Type": "application/json"})
    assert r.status_code == 400 and "json" in r.text.lower()
    big = b'{"customer_id": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    r = server.client.post("/recommend", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "body" in r.text


def test_unknown_customers(server):
    assert server.post("/next_best_action", {"customer_id": "ghost"}).status_code == 404
    r = server.client.get("/profiles/ghost", params={"by": "customer_id"}, headers=server.headers())
    assert r.status_code == 404 and "profile_id" in r.text
    r = server.client.get("/profiles/ghost", params={"by": "shoe_size"}, headers=server.headers())
    assert r.status_code == 422 and "by" in r.text
    r = server.client.put("/consent", json={"customer_id": "ghost", "purpose": "behavioral", "granted": True},
                          headers=server.headers())
    assert r.status_code == 404


# -- /next_best_action ----------------------------------------------------------------------------
def test_next_best_action_is_consistent_across_channels(server):
    """One decision whichever channel asks: each channel gets the first action offered on it, in the
    decision's order, and the answer's channel is the one asked for."""
    r = server.client.put("/consent", json={"customer_id": "c4", "purpose": "email_marketing", "granted": True},
                          headers=server.headers("write-key"))
    assert r.status_code == 200, r.text
    answers = {}
    for channel in ("web", "app", "email"):
        r = server.post("/next_best_action", {"customer_id": "c4", "channel": channel, "campaign": "consistency"})
        assert r.status_code == 200, r.text
        answers[channel] = r.json()
        assert answers[channel]["channel"] == channel
        assert all(a["channel"] == channel for a in answers[channel]["actions"])
    assert answers["web"]["profile_id"] == profile_id_for("c4")
    web = [a["action"] for a in answers["web"]["actions"]]
    assert all(a in nba.ACTION_NAMES for a in web)
    for channel in ("app", "email"):
        first = answers[channel]["actions"][0]["action"]
        offered = [a for a in web if channel in nba.ACTION_CHANNELS.get(a, ())]
        assert first == (offered[0] if offered else "do_nothing"), (channel, web, first)
    assert len(answers["email"]["actions"]) == 1  # outbound: one message, one slot


def test_scores_top_action_is_next_best_actions_first_action(server):
    """Channels never contradict each other: /scores and /next_best_action decide from the same facts,
    rank the same way and drop what the guard's contact policy suppresses, so they agree."""
    extra = {  # situations beyond the seeded history: an open cart, a return, a lapsed loyal buyer
        "nba-cart": [event("nba-cart-buy", "nba-cart", "purchase", 9, days_ago=20),
                     event("nba-cart-add", "nba-cart", "add_to_cart", 8, days_ago=2)],
        "nba-return": [event("nba-ret-buy", "nba-return", "purchase", 10, days_ago=6),
                       event("nba-ret-add", "nba-return", "add_to_cart", 11, days_ago=2),
                       event("nba-ret-ret", "nba-return", "return", 10, days_ago=2)],
        "nba-lapsed": [event(f"nba-lap-{i}", "nba-lapsed", "purchase", i, days_ago=60 + 9 * i) for i in range(6)],
    }
    r = server.post("/events", {"events": [e for evs in extra.values() for e in evs]}, key="write-key")
    assert r.status_code == 200 and not r.json()["rejected"], r.text
    customers = [*CUSTOMERS, *extra]
    for _ in range(3):  # the decision window is an hour: ask again if the calls straddled its end
        bucket = int(time.time() // 3600)
        scores = server.post("/scores", {"customer_ids": customers})
        assert scores.status_code == 200, scores.text
        assert scores.json()["unknown"] == []
        top = {s["id"]: s["top_action"] for s in scores.json()["scores"]}
        first = {}
        channels = {s["id"]: s["top_channel"] for s in scores.json()["scores"]}
        for c in customers:  # asked on the channel /scores names for its top action
            r = server.post("/next_best_action", {"customer_id": c, "channel": channels[c] or "web"})
            assert r.status_code == 200, r.text
            first[c] = r.json()["actions"][0]["action"]
        if int(time.time() // 3600) == bucket:
            break
    assert top == first
    assert set(top.values()) <= set(nba.ACTION_NAMES)


# -- /scores and the segment task -----------------------------------------------------------------
def test_scores(server):
    r = server.post("/scores", {"customer_ids": [*CUSTOMERS[:4], "ghost"], "profile_ids": [profile_id_for("c5")]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unknown"] == ["ghost"]
    assert {s["id"] for s in body["scores"]} == {*CUSTOMERS[:4], profile_id_for("c5")}
    for s in body["scores"]:
        assert 0.0 <= s["churn_probability"] <= 1.0 and 0.0 <= s["purchase_propensity"] <= 1.0
        assert s["top_action"] in nba.ACTION_NAMES
    assert body["churn_model_version"] == "1"


def test_score_segment_task_writes_a_file(server):
    import pandas as pd

    pids = [profile_id_for(c) for c in CUSTOMERS]
    r = server.post("/score_segment/submit", {"profile_ids": pids, "format": "csv"}, key="read-key")
    assert r.status_code == 200, r.text
    task = r.json()["task_id"]
    deadline = time.monotonic() + 60
    while (status := server.client.get("/score_segment/status", params={"task_id": task}).json())["status"] \
            == "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status["status"] == "completed", (status, server.log_text()[-3000:])
    result = server.client.get("/score_segment/get", params={"task_id": task})  # the file itself, not a path
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/csv")
    table = pd.read_csv(io.BytesIO(result.content))
    assert status["rows"] == len(table) == len(pids)
    assert set(table["profile_id"]) == set(pids)


# -- auth -----------------------------------------------------------------------------------------
def test_writes_need_a_key_with_the_right_scope_and_change_nothing(server):
    ev = event("auth-ev-1", "auth-person", "view", 1)
    assert server.post("/events", {"event": ev}, key=None).status_code == 401
    assert server.post("/events", {"event": ev}, key="wrong-key").status_code == 401
    assert server.post("/events", {"event": ev}, key="read-key").status_code == 403
    r = server.client.get("/profiles/auth-person", params={"by": "customer_id"}, headers=server.headers())
    assert r.status_code == 404  # nothing was stored
    assert server.post("/admin/reload", {}, key="write-key").status_code == 403
    r = server.client.delete(f"/profiles/{profile_id_for('c1')}", headers=server.headers("write-key"))
    assert r.status_code == 403
    assert server.client.get(f"/profiles/{profile_id_for('c1')}").status_code == 401
    # reads are open unless MIRROR_REQUIRE_KEY_FOR_READ is set
    assert server.post("/recommend", {"customer_id": "c1"}, key=None).status_code == 200


def test_logs_carry_no_raw_contact_details(server):
    email = "Jane.Doe+secret@example.com"
    ev = {**event("pii-1", "pii-person", "view", 2), "email": email, "phone": "+1 415 555 0100"}
    assert server.post("/events", {"event": ev}, key="write-key").status_code == 200
    server.post("/recommend", {"email": email, "k": "bad"})
    assert server.post("/recommend", {"email": email}).json()["profile_id"] is not None
    by_email = server.client.get(f"/profiles/{email}", params={"by": "email"}, headers=server.headers())
    assert by_email.status_code == 200, by_email.text
    assert server.client.get("/profiles/pii-person", params={"by": "customer_id"}).status_code == 401
    log = server.log_text().lower()
    assert "jane.doe" not in log and "555 0100" not in log and "4155550100" not in log
    assert "pii-person" not in log
    assert "path=/profiles/" in log  # the access log does record the request, with the id hashed
    assert "feature rows and scores warmed for" in log and "events accepted=1" in log  # Mirror's own INFO lines show


# -- consent, profile view, erasure ---------------------------------------------------------------
def test_consent_changes_the_profile_view(server):
    r = server.client.put("/consent", json={"customer_id": "c5", "purpose": "detailed_personalization",
                                            "granted": True}, headers=server.headers("write-key"))
    assert r.status_code == 200, r.text
    assert r.json()["consent"]["detailed_personalization"] is True
    view = server.client.get("/profiles/c5", params={"by": "customer_id"}, headers=server.headers()).json()
    assert view["profile_id"] == profile_id_for("c5") and view["level"] == "item"
    assert view["identifier_types"] == ["customer_id"]
    bad = server.client.put("/consent", json={"customer_id": "c5", "purpose": "x", "granted": "maybe"},
                            headers=server.headers("write-key"))
    assert bad.status_code == 422 and "granted" in bad.text


def test_consent_purpose_must_be_one_the_guard_knows(server):
    from serving.guard import PURPOSES

    r = server.client.put("/consent", json={"customer_id": "c5", "purpose": "newsletter_tracking", "granted": True},
                          headers=server.headers("write-key"))
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]  # a problem (serving/problems.py)
    assert [e["field"] for e in errors] == ["purpose"]
    assert all(p in errors[0]["reason"] for p in PURPOSES)
    ok = server.client.put("/consent", json={"customer_id": "c5", "purpose": "email_engagement", "granted": False},
                           headers=server.headers("write-key"))
    assert ok.status_code == 200 and ok.json()["consent"]["email_engagement"] is False, ok.text
    assert "newsletter_tracking" not in ok.json()["consent"]  # the rejected purpose was never stored


def test_erasure_is_complete(server):
    evs = [event(f"erase-{i}", "to-erase", "view", i, days_ago=2) for i in range(3)]
    pid = server.post("/events", {"events": evs}, key="write-key").json()["profile_ids"][0]
    r = server.client.delete("/profiles/to-erase", params={"by": "customer_id"}, headers=server.headers())
    assert r.status_code == 200 and r.json()["profile_id"] == pid
    assert server.client.get(f"/profiles/{pid}", headers=server.headers()).status_code == 404
    rec = server.post("/recommend", {"customer_id": "to-erase"}).json()
    assert rec["profile_id"] is None and rec["cold_start"] is True
    assert server.post("/scores", {"profile_ids": [pid]}).json()["unknown"] == [pid]
    # re-sending the erased events does not bring the person back
    again = server.post("/events", {"events": evs}, key="write-key").json()
    assert again["accepted"] == [] and again["suppressed"] == 3
    assert sorted(again["suppressed_ids"]) == sorted(e["event_id"] for e in evs)
    assert json.dumps(again).count(pid) == 0
