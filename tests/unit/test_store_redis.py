"""The profile-store contract (`store_contract.ProfileStoreContract`) on the Redis backend, against the local
server (MIRROR_TEST_REDIS_URL, default redis://127.0.0.1:6379/15). Every store gets its own key prefix and all
its keys are deleted after the test; without a server answering, the module is skipped, naming the URL."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_contract import ProfileStoreContract

from features.store import StoreConfig, capabilities, missing_capabilities, open_store, parse_store_url

redis = pytest.importorskip("redis", reason="the Redis backend needs the `redis` extra (pip install '.[redis]')")
from features.store.redis import RedisProfileStore  # noqa: E402  (after the skip: it imports redis)

URL = os.environ.get("MIRROR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _server_answers() -> bool:
    cfg = parse_store_url(URL)
    try:
        return bool(redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db, password=cfg.password,  # type: ignore[union-attr]
                                socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


pytestmark = pytest.mark.skipif(not _server_answers(), reason=f"no Redis server answers at {URL}")


class TestRedisStore(ProfileStoreContract):
    @pytest.fixture(autouse=True)
    def _cleanup(self) -> Iterator[None]:
        self._made: list[RedisProfileStore] = []
        yield
        for store in self._made:
            store.drop()
            store.close()

    def make_store(self, tmp_path: Path, config: StoreConfig) -> RedisProfileStore:
        store = open_store(f"{URL}?prefix=mirror-test-{uuid.uuid4().hex[:12]}:", config=config)
        assert isinstance(store, RedisProfileStore)
        self._made.append(store)
        return store

    def reopen(self, store: RedisProfileStore) -> RedisProfileStore:
        other = RedisProfileStore(store.backend, store.hasher, store.config)
        self._made.append(other)
        return other

    def test_redis_declares_what_it_lacks(self, store: RedisProfileStore) -> None:
        assert capabilities(store) == {"catalog", "sentiment"}
        assert missing_capabilities(store) == {"decisions", "served_lists"}
        assert not hasattr(store, "record_decision") and not hasattr(store, "record_recommendations")

    def test_erasure_deletes_every_key_of_the_person(self, store: RedisProfileStore) -> None:
        from store_contract import ev, frame

        store.append_events(frame(ev("e1", "2025-01-01T00:00:00Z", customer_id="c1", device_id="d1"),
                                  ev("e2", "2025-01-02T00:00:00Z", customer_id="c2")))
        pid = store.resolve({"customer_id": "c1"})
        store.set_consent(pid, "personalization", True)
        store.reserve_contact(pid, "email", "2025-01-03T00:00:00Z", {"24h": 1})
        client: Any = store._client
        before = set(client.scan_iter(match=store.backend.prefix + "*"))
        store.erase_profile(pid)
        after = set(client.scan_iter(match=store.backend.prefix + "*"))
        held: list[str] = []  # every field, member and value left under the store's prefix
        for k in after:
            kind = client.type(k)
            if kind == "hash":
                held += [x for kv in client.hgetall(k).items() for x in kv]
            elif kind in ("set", "zset"):
                held += list(client.smembers(k) if kind == "set" else client.zrange(k, 0, -1))
            else:
                held.append(str(client.get(k)))
        for secret in ("customer_id:c1", "device_id:d1", pid):
            assert not any(secret in x for x in held) and not any(secret in k for k in after), secret
        assert "e1" not in held and "e2" in held  # the other person's event stays
        assert before - after  # the person's own keys went


def test_open_warns_without_the_append_only_file(caplog: pytest.LogCaptureFixture) -> None:
    if not _server_answers():
        pytest.skip(f"no Redis server answers at {URL}")
    appendonly = redis.Redis.from_url(URL).config_get("appendonly").get("appendonly")  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="features.store.redis"):
        store = open_store(f"{URL}?prefix=mirror-test-{uuid.uuid4().hex[:12]}:")
    store.close()
    warned = [r for r in caplog.records if "appendonly" in r.getMessage()]
    assert bool(warned) == (appendonly != "yes")
