"""The API surface a front end meets first (issue 16, "For front ends"), over HTTP against the real server:
the OpenAPI document, Swagger UI at /docs without third-party scripts, CORS, the browser key scope, one
error shape (Problem Details) on every kind of endpoint, and X-Request-ID.

One server for the module: it needs settings the session server does not have (allowed origins, a
browser key, keys for reads).
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterator
from typing import Any

import pytest
from mirror_server import CUSTOMERS, KEYS, Server, event, item_id, profile_id_for, running_server

from features.schema import CHANNELS, EVENT_TYPES
from serving import api, openapi

ORIGIN = "https://shop.example"
BROWSER_KEY = "browser-key"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"MIRROR_CORS_ORIGINS": f"{ORIGIN}, https://app.shop.example",
           "MIRROR_REQUIRE_KEY_FOR_READ": "true",
           "MIRROR_API_KEYS": ";".join([*(f"{k}={v}" for k, v in KEYS.items()), f"{BROWSER_KEY}=browser"])}
    with running_server(tmp_path_factory.mktemp("surface"), env) as s:
        yield s


@pytest.fixture(scope="module")
def spec(srv: Server) -> dict[str, Any]:
    r = srv.client.get("/docs.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    return r.json()


def post(srv: Server, path: str, body: object, key: str | None = "admin-key",
         headers: dict[str, str] | None = None) -> Any:
    """`srv.post` with extra headers."""
    return srv.client.post(path, json=body, headers={**(srv.headers(key) if key else {}), **(headers or {})})


def assert_problem(r: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """The one error shape: RFC 9457 members, the field named, the request id of the header."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert {"type", "title", "status", "detail", "errors", "request_id"} <= set(body), body
    assert body["status"] == status and body["type"].startswith("urn:mirror:problem:") and body["detail"]
    assert body["request_id"] == r.headers["x-request-id"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
        assert all(e["reason"] for e in body["errors"])
    return body


# -- the document ------------------------------------------------------------------------------
def test_spec_names_mirror_its_version_and_tags_every_operation(spec):
    info = spec["info"]
    assert info["title"] == "Mirror"
    assert info["version"] == importlib.metadata.version("mirror-personalization")
    assert "personalization" in info["description"] and "BentoML" not in info["description"]
    tag_names = {t["name"] for t in spec["tags"]}
    assert {"Front ends", "Email and SMS tools", "Data and admin", "Operations"} <= tag_names
    ids = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op["tags"] and set(op["tags"]) <= tag_names, (method, path)
            assert re.fullmatch(r"[a-z][a-z0-9_]*", op["operationId"]), op["operationId"]
            ids.append(op["operationId"])
    assert len(ids) == len(set(ids))
    assert {"recommend", "similar_items", "post_events", "scores", "next_best_action", "put_consent",
            "get_profile", "delete_profile", "score_segment_submit", "score_segment_status"} <= set(ids)
    assert "Front ends" in spec["paths"]["/recommend"]["post"]["tags"]
    assert spec["paths"]["/scores"]["post"]["tags"] == ["Email and SMS tools"]


def test_spec_states_security_from_the_key_table(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["in"] == "header" and schemes["apiKeyHeader"]["name"] == "X-API-Key"
    paths = spec["paths"]
    assert paths["/scores"]["post"]["x-mirror-scopes"] == ["read"]
    assert {} not in paths["/scores"]["post"]["security"]  # always needs a key
    assert set(paths["/recommend"]["post"]["x-mirror-scopes"]) == {"browser", "read"}
    assert {} in paths["/recommend"]["post"]["security"]  # only with MIRROR_REQUIRE_KEY_FOR_READ
    assert set(paths["/events"]["post"]["x-mirror-scopes"]) == {"browser", "write"}
    assert paths["/profiles/{profile_id}"]["delete"]["x-mirror-scopes"] == ["admin"]
    assert paths["/readyz"]["get"].get("security", []) == []
    for scope in ("browser", "read", "write", "admin"):
        assert f"`{scope}`" in spec["info"]["description"]


def test_spec_types_the_canonical_event_with_enums_from_the_schema_module(spec):
    schemas = spec["components"]["schemas"]
    ev = schemas["CanonicalEvent"]
    assert ev["properties"]["channel"]["enum"] == list(CHANNELS)
    assert ev["properties"]["event_type"]["enum"] == list(EVENT_TYPES)
    assert set(ev["required"]) == {"event_id", "ts", "channel", "event_type"}
    body = schemas["EventsRequest"]["properties"]
    assert body["events"]["items"] == {"$ref": "#/components/schemas/CanonicalEvent"}
    assert "#/components/schemas/CanonicalEvent" in str(body["event"])


def test_spec_declares_problem_answers(spec):
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "errors", "request_id"} <= set(problem["properties"])
    rec = spec["paths"]["/recommend"]["post"]["responses"]
    assert {"400", "401", "403", "413", "500"} <= set(rec)
    assert rec["400"]["content"][PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert "422" in spec["paths"]["/consent"]["put"]["responses"]  # FastAPI-validated routes
    assert "429" in spec["paths"]["/score_segment/submit"]["post"]["responses"]
    assert "422" in spec["paths"]["/events"]["post"]["responses"]  # nothing accepted
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["openapi"].startswith("3.0")


def test_examples_are_valid_bodies_and_use_demo_ids(spec):
    from features.synthetic import SyntheticConfig, generate

    demo = generate(SyntheticConfig(customers=50, days=30, seed=7))
    assert openapi.DEMO_CUSTOMER in set(demo.events["customer_id"].dropna())
    assert openapi.DEMO_ITEM in set(demo.items["item_id"])
    models = {"recommend": api.RecommendRequest, "similar_items": api.SimilarItemsRequest,
              "next_best_action": api.NBARequest, "scores": api.ScoresRequest, "post_events": api.EventsRequest,
              "put_consent": api.ConsentRequest, "put_stock": api.StockRequest, "put_items": api.ItemsRequest,
              "score_segment_submit": api.SegmentExportRequest}
    for op_id, model in models.items():
        model.model_validate(openapi.EXAMPLES[op_id], strict=False)
    rec = spec["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]
    assert rec["example"]["customer_id"] == openapi.DEMO_CUSTOMER


# -- pages -------------------------------------------------------------------------------------
def test_docs_is_swagger_ui_with_only_same_origin_scripts(srv):
    r = srv.client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "swagger-ui" in html
    sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assert sources and all("//" not in s for s in sources), sources
    assert "script-src 'self'" in r.headers["content-security-policy"]
    for s in sources:
        asset = srv.client.get("/" + s.lstrip("/"))
        assert asset.status_code == 200, s
    assert "googletagmanager" not in html
    index = srv.client.get("/")
    assert index.status_code == 200 and "Mirror" in index.text
    assert "<script" not in index.text and "BentoML" not in index.text
    assert srv.client.get("/docs/assets/../docs.json").status_code != 500


# -- CORS --------------------------------------------------------------------------------------
def preflight(srv: Server, origin: str) -> Any:
    return srv.client.options("/recommend", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})


def test_cors_preflight_for_an_allowed_origin_and_none_for_others(srv):
    ok = preflight(srv, ORIGIN)
    assert ok.status_code in (200, 204)
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    refused = preflight(srv, "https://evil.example")
    assert "access-control-allow-origin" not in refused.headers
    assert refused.status_code >= 400
    assert_problem(refused, refused.status_code)
    r = post(srv, "/recommend", {"customer_id": CUSTOMERS[0], "k": 3}, BROWSER_KEY, {"Origin": ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


# -- the browser key ---------------------------------------------------------------------------
def test_browser_key_fetches_recommendations_and_posts_events_only(srv):
    assert srv.post("/recommend", {"customer_id": CUSTOMERS[0], "k": 3}, key=BROWSER_KEY).status_code == 200
    assert srv.post("/similar_items", {"item_id": item_id(0), "k": 3}, key=BROWSER_KEY).status_code == 200
    ev = event("surface-browser-1", CUSTOMERS[1], "view", 3)
    assert srv.post("/events", {"event": ev}, key=BROWSER_KEY).status_code == 200
    pid = profile_id_for(CUSTOMERS[0])
    refused = [
        srv.post("/scores", {"customer_ids": [CUSTOMERS[0]]}, key=BROWSER_KEY),
        srv.post("/next_best_action", {"customer_id": CUSTOMERS[0]}, key=BROWSER_KEY),
        srv.post("/score_segment/submit", {"format": "csv"}, key=BROWSER_KEY),
        srv.client.get(f"/profiles/{pid}", headers=srv.headers(BROWSER_KEY)),
        srv.client.put("/consent", json={"customer_id": CUSTOMERS[0], "purpose": "email_marketing",
                                         "granted": True}, headers=srv.headers(BROWSER_KEY)),
        srv.post("/admin/reload", {}, key=BROWSER_KEY),
    ]
    for r in refused:
        assert_problem(r, 403, "authorization")
    # churn scores are never open: no key is a 401 even where recommendations would be open
    assert_problem(srv.post("/scores", {"customer_ids": [CUSTOMERS[0]]}, key=None), 401, "authorization")
    assert srv.post("/scores", {"customer_ids": [CUSTOMERS[0]]}, key="read-key").status_code == 200
    # a read key is for servers: it cannot post events
    assert_problem(srv.post("/events", {"event": ev}, key="read-key"), 403)


# -- one error shape ---------------------------------------------------------------------------
def test_problem_shape_for_a_bad_body_on_a_bentoml_endpoint(srv):
    body = assert_problem(srv.post("/recommend", {"customer_id": CUSTOMERS[0], "k": 0}), 400, "k")
    assert "k" in body["detail"]
    assert_problem(srv.post("/recommend", {"customerid": "x"}), 400, "customerid")
    nested = assert_problem(srv.post("/recommend", {"context": {"item": "x"}}), 400)
    assert nested["errors"][0]["field"] == "context.item"


def test_problem_shape_on_mounted_routes_auth_404_413_and_unknown_paths(srv):
    r = srv.client.put("/consent", json={"customer_id": CUSTOMERS[0], "purpose": "nope", "granted": True},
                       headers=srv.headers("write-key"))
    assert_problem(r, 422, "purpose")
    assert_problem(srv.client.get("/score_segment/status", params={"task_id": "0" * 32},
                                  headers=srv.headers()), 404, "task_id")
    assert_problem(srv.client.get("/profiles/nobody", headers=srv.headers()), 404, "profile_id")
    assert_problem(srv.post("/events", {"event": {}}, key=None), 401, "authorization")
    big = b'{"events": [' + b'{"a": 1},' * 600_000 + b'{}]}'
    r = srv.client.post("/events", content=big, headers={**srv.headers("write-key"), "Content-Type": "application/json"})
    assert_problem(r, 413, "body")
    assert_problem(srv.client.get("/no/such/path"), 404)
    assert_problem(srv.client.delete("/recommend", headers=srv.headers()), 405)


def test_events_says_clearly_when_nothing_was_accepted(srv):
    bad = {"events": [event("surface-bad-1", CUSTOMERS[0], "teleport"),
                      {**event("surface-bad-2", CUSTOMERS[0], "view", 1), "channel": "pigeon"}]}
    body = assert_problem(srv.post("/events", bad, key="write-key"), 422, "events[0].event_type")
    assert "events[1].channel" in [e["field"] for e in body["errors"]]
    assert [r["row"] for r in body["rejected"]] == [0, 1]
    single = assert_problem(srv.post("/events", {"event": {"event_id": "x"}}, key="write-key"), 422)
    assert all(e["field"].startswith("event.") for e in single["errors"])
    mixed = srv.post("/events", {"events": [event("surface-ok-1", CUSTOMERS[0], "view", 2), bad["events"][0]]},
                     key="write-key")
    assert mixed.status_code == 200 and mixed.json()["accepted"] == ["surface-ok-1"]
    assert [r["row"] for r in mixed.json()["rejected"]] == [1]


# -- request ids -------------------------------------------------------------------------------
def test_request_id_is_echoed_or_made_and_matches_the_problem(srv):
    r = post(srv, "/recommend", {"customer_id": CUSTOMERS[0], "k": 2}, headers={"X-Request-ID": "shop-42.a"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "shop-42.a"
    bad = post(srv, "/recommend", {"k": "two"}, headers={"X-Request-ID": "shop-43"})
    assert assert_problem(bad, 400, "k")["request_id"] == "shop-43"
    made = post(srv, "/recommend", {"k": 1}, headers={"X-Request-ID": "no spaces allowed <script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert srv.client.get("/readyz").headers["x-request-id"] != srv.client.get("/readyz").headers["x-request-id"]
