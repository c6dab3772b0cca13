"""The real server on the Redis store (MIRROR_STORE=redis://...): an event posted over HTTP is in Redis and
the next /recommend sees it. Skipped, naming the URL, when no Redis server answers (MIRROR_TEST_REDIS_URL,
default redis://127.0.0.1:6379/15); every key of the test's prefix is deleted after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirror_server import Server, event, profile_id_for, start_server

redis = pytest.importorskip("redis", reason="the Redis backend needs the `redis` extra (pip install '.[redis]')")

URL = os.environ.get("MIRROR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _answers() -> bool:
    try:
        return bool(redis.Redis.from_url(URL, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


pytestmark = pytest.mark.skipif(not _answers(), reason=f"no Redis server answers at {URL}")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    from features.store import open_store

    store_url = f"{URL}?prefix=mirror-http-{uuid.uuid4().hex[:12]}:"
    try:
        for srv in start_server(tmp_path_factory.mktemp("redis-serving"), {"MIRROR_STORE": store_url}):
            yield srv, store_url
    finally:
        store = open_store(store_url)
        store.drop()  # type: ignore[attr-defined]
        store.close()


def test_an_event_posted_is_in_redis_and_the_next_recommend_sees_it(redis_server: tuple[Server, str]) -> None:
    from features.store import open_store

    srv, store_url = redis_server
    assert not Path(srv.store_path).exists()  # nothing went to SQLite
    seeded = srv.post("/recommend", {"customer_id": "c1", "k": 5})
    assert seeded.status_code == 200, seeded.text
    assert seeded.json()["profile_id"] == profile_id_for("c1") and seeded.json()["cold_start"] is False

    newcomer = f"redis-{uuid.uuid4().hex[:8]}"
    assert srv.post("/recommend", {"customer_id": newcomer, "k": 5}).json()["cold_start"] is True
    r = srv.post("/events", {"event": event(f"{newcomer}-view", newcomer, "view", 7)}, key="write-key")
    assert r.status_code == 200 and r.json()["accepted"] == [f"{newcomer}-view"], r.text
    after = srv.post("/recommend", {"customer_id": newcomer, "k": 5}).json()
    assert after["cold_start"] is False and after["profile_id"] == profile_id_for(newcomer)
    bought = after["items"][0]["item_id"]
    r = srv.post("/events", {"event": {**event(f"{newcomer}-buy", newcomer, "purchase"), "item_id": bought}},
                 key="write-key")
    assert r.status_code == 200, r.text
    assert bought not in [x["item_id"] for x in srv.post("/recommend", {"customer_id": newcomer, "k": 5}
                                                         ).json()["items"]]  # a just-bought item disappears

    store = open_store(store_url)  # another process's view of the same Redis store
    try:
        pid = store.resolve({"customer_id": newcomer})
        assert pid == profile_id_for(newcomer)
        assert [p.item_id for p in store.get_profile(pid).purchases] == [bought]
    finally:
        store.close()


def test_outbound_decisions_work_on_a_store_without_a_decision_log(redis_server: tuple[Server, str]) -> None:
    """The Redis store declares no decision log (an optional capability): an email decision is still made
    and answered, and nothing is logged rather than a 500."""
    srv, _ = redis_server
    consent = srv.client.put("/consent", json={"customer_id": "c1", "purpose": "email_marketing", "granted": True},
                             headers={"Authorization": "Bearer write-key"})
    assert consent.status_code == 200, consent.text
    r = srv.post("/next_best_action", {"customer_id": "c1", "channel": "email"}, key="read-key")
    assert r.status_code == 200, r.text
    assert r.json()["channel"] == "email" and r.json()["actions"][0]["action"] != "do_nothing", r.text
