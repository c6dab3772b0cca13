"""The profile-store contract (`store_contract.ProfileStoreContract`) on the SQLite backend, opened by URL
as the service and the CLI open it; plus the URL and config rules of `open_store`."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_contract import ProfileStoreContract

from features.store import (
    CAPABILITIES,
    RedisConfig,
    SQLiteConfig,
    SQLiteProfileStore,
    StoreConfig,
    capabilities,
    missing_capabilities,
    open_store,
    parse_store_url,
)


class TestSQLiteStore(ProfileStoreContract):
    def make_store(self, tmp_path: Path, config: StoreConfig) -> SQLiteProfileStore:
        tmp_path.mkdir(parents=True, exist_ok=True)
        store = open_store(f"sqlite:///{tmp_path / 'store.db'}", config=config)
        assert isinstance(store, SQLiteProfileStore)
        return store

    def reopen(self, store: SQLiteProfileStore) -> SQLiteProfileStore:
        return SQLiteProfileStore(store.path, store.hasher, store.config)

    def test_sqlite_has_every_capability(self, store: SQLiteProfileStore) -> None:
        assert capabilities(store) == frozenset(CAPABILITIES) and missing_capabilities(store) == frozenset()


def test_store_urls_pick_the_backend_and_are_validated(tmp_path: Path) -> None:
    assert parse_store_url("sqlite:///var/lib/mirror/store.db") == SQLiteConfig("/var/lib/mirror/store.db")
    assert parse_store_url("data/store.db") == SQLiteConfig("data/store.db")
    assert parse_store_url(tmp_path / "s.db") == SQLiteConfig(str(tmp_path / "s.db"))
    assert parse_store_url("redis://cache.internal:6380/2?prefix=shop1:") == RedisConfig(
        "cache.internal", 6380, 2, "shop1:")
    assert parse_store_url("redis://:secret@localhost") == RedisConfig("localhost", password="secret")
    assert RedisConfig("h", password="secret").url == "redis://h:6379/0"  # never the password
    for bad, part in (("postgres://x/y", "scheme"), ("redis://h/zero", "db"), ("redis://h:99999/0", "port"),
                      ("redis://h/0?pool=3", "option"), ("sqlite://", "path"), ("", "non-empty")):
        with pytest.raises(ValueError, match=part):
            parse_store_url(bad)
    with pytest.raises(ValueError, match="db"):
        RedisConfig(db=-1)
    assert isinstance(open_store(tmp_path / "bare.db"), SQLiteProfileStore)
    with pytest.raises(RuntimeError, match="redis://127.0.0.1:1/0"):  # no server there: named, never a stub
        open_store("redis://127.0.0.1:1/0?socket_timeout=0.5")
