"""Validated, frozen configuration: `StoreConfig` (the fold's and the SQLite backend's settings, as
before) and one config per backend parsed from a store URL (`parse_store_url`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from features.profiles import ProfileConfig


@dataclass(frozen=True)
class StoreConfig:
    """Behaviour every backend shares (how much state a profile keeps, caches, bulk size) and the SQLite
    backend's durability settings (`synchronous`, `busy_timeout_ms`), as before the split."""

    synchronous: str = "NORMAL"  # "FULL" to survive power loss, not only process crashes
    max_profiles_per_device: int = 3
    recent_views: int = 50
    max_purchases: int = 200
    cache_profiles: int = 100_000  # online states and feature rows kept in memory (LRU)
    # as_of=None means now floored to this, so cached (and warmed) rows are reused; features are
    # day-scale (recency in days, 30/90/365-day windows), so an hour of "now" changes little, and a
    # write to a profile still refreshes its row at once
    feature_granularity_s: int = 3_600
    busy_timeout_ms: int = 30_000
    bulk_rows: int = 1_000  # batches this large are linked and folded vectorised (same result)
    profile_config: ProfileConfig = ProfileConfig()

    def __post_init__(self) -> None:
        if self.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be OFF, NORMAL, FULL or EXTRA")
        if self.max_profiles_per_device < 1 or self.feature_granularity_s < 1 or self.bulk_rows < 1:
            raise ValueError("max_profiles_per_device, feature_granularity_s and bulk_rows must be positive")



#: URL schemes `parse_store_url` (and so `open_store`) understands; a bare path is SQLite.
SQLITE_SCHEME = "sqlite"
REDIS_SCHEME = "redis"
STORE_SCHEMES: tuple[str, ...] = (SQLITE_SCHEME, REDIS_SCHEME)


@dataclass(frozen=True)
class SQLiteConfig:
    """Where the SQLite backend's file is (`sqlite:///abs/path`, `sqlite://rel/path` or a bare path)."""

    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.strip():
            raise ValueError("store url: a SQLite store needs a file path (sqlite:///path/to/store.db)")


@dataclass(frozen=True)
class RedisConfig:
    """One Redis database (`redis://[:password@]host:port/db`); every key starts with `prefix`, so several
    stores (and tests) can share a server without seeing each other's keys."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    prefix: str = "mirror:"
    password: str | None = None
    socket_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("store url: a Redis store needs a host")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"store url: Redis port must be 1..65535, got {self.port!r}")
        if isinstance(self.db, bool) or not isinstance(self.db, int) or self.db < 0:
            raise ValueError(f"store url: Redis db must be a non-negative integer, got {self.db!r}")
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ValueError(f"store url: Redis key prefix must be non-empty without spaces, got {self.prefix!r}")
        if not self.socket_timeout_s > 0:
            raise ValueError(f"store url: socket_timeout_s must be positive, got {self.socket_timeout_s!r}")

    @property
    def url(self) -> str:
        """The URL without the password (safe to log and to put in a skip message)."""
        return f"{REDIS_SCHEME}://{self.host}:{self.port}/{self.db}"


BackendConfig = SQLiteConfig | RedisConfig


def parse_store_url(url: str | os.PathLike[str]) -> BackendConfig:
    """A store URL -> its backend's validated config; ValueError (naming the URL's part) otherwise.

    `sqlite:///abs/path.db` (three slashes: absolute), `sqlite://rel/path.db`, a bare path (SQLite, as
    `SQLiteProfileStore(path)` always took), `redis://[:password@]host[:port][/db][?prefix=...]`.
    """
    text = os.fspath(url)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("store url must be a non-empty string")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return SQLiteConfig(text)
    scheme = scheme.lower()
    if scheme == SQLITE_SCHEME:
        return SQLiteConfig(rest.split("?", 1)[0])
    if scheme == REDIS_SCHEME:
        parts = urlsplit(text)
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - {"prefix", "socket_timeout"})
        if unknown:
            raise ValueError(f"store url: unknown Redis option(s) {', '.join(unknown)} (known: prefix, socket_timeout)")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"store url: Redis db must be a number, got {path!r}")
        try:
            port = parts.port or 6379
        except ValueError as err:
            raise ValueError(f"store url: bad Redis port ({err})") from None
        extra: dict[str, Any] = {}
        if "prefix" in query:
            extra["prefix"] = query["prefix"][-1]
        if "socket_timeout" in query:
            try:
                extra["socket_timeout_s"] = float(query["socket_timeout"][-1])
            except ValueError:
                raise ValueError("store url: socket_timeout must be a number of seconds") from None
        return RedisConfig(host=parts.hostname or "127.0.0.1", port=port, db=int(path or 0),
                           password=parts.password, **extra)
    raise ValueError(f"store url: unknown scheme {scheme!r} (expected one of {', '.join(STORE_SCHEMES)}, "
                     "or a file path)")
