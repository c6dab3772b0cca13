"""Online profile store: durable event log, incremental identity links, current state per profile.

SQLite in WAL mode is the embedded default behind the small `ProfileStore` protocol (a Redis backend
can implement the same).  Durability: a call that returned has committed its transaction.  With
``synchronous=NORMAL`` (default) a committed transaction survives a crash of the *process* (kill -9),
because the WAL frames are already in the OS page cache; only a power loss or kernel crash may drop
the last transactions.  Pass ``synchronous="FULL"`` to fsync every commit and survive power loss too.

Identity rule (the same as features/identity.py): tokens are ``"<identifier column>:<value>"``; a
connected component's id is ``"p_" + sha1(min token)[:16]``, so offline and online agree whatever the
arrival order.  When an event links two profiles they are re-keyed to the component's id and both
histories are kept; the old ids stay resolvable through an alias table.  A device/cookie seen with more
than ``max_profiles_per_device`` customer ids is shared and stops linking (links it made before that
are kept: an incremental store cannot split a profile).

Threads: one SQLite connection per thread; writes go through one process-wide lock plus
``BEGIN IMMEDIATE``, so concurrent callers never interleave a write.  The in-process caches (online
state, feature rows) are invalidated on every write of this process; if several processes write one
file, open the readers with ``cache=False``.

Where a signal came from: every entry of the online state keeps its channel and event type, and every
category count its source purpose (``consent.source_of``), so serving can leave out what a customer did
not grant (an in-store try-on without ``store_visits``) and never present it as something else.  Feature
rows (churn, propensity) are built only from the events whose source the profile granted (none without
``personalization``: then the row of an empty history).

Erasure (``erase_profile``) reaches every copy the file holds: rows go with ``secure_delete=ON`` (on every
connection, so no stale copy an earlier merge or replace left survives in free space either) and the WAL is
checkpointed and truncated; what stays are tombstones keyed with the hash key (HMAC, nothing to brute-force)
that keep re-sent events, bulk loads and sentiment scores of the erased out, and the time of the erasure per
profile id (``erased_at``, also on `OnlineProfile`): a person who comes back has the same id, and serving must
not use model state learned before it.  ``export_events_to`` streams the store to parquet for training and
``export_profile`` answers a data-access request with everything held about one person.

Idempotence: an event id already stored is a duplicate when the event sent again has the same content
(``schema.event_digest``, kept per stored event) and an error when it has other content (a conflict); the
stored event is never replaced.

Also here: the catalog (``upsert_items``, ``catalog``, ``catalog_version``; overall and per-store stock),
and the contact ledger (``reserve_contact``: atomic frequency caps, idempotent per decision key).  A file
written by an older release is migrated on open (see ``_migrate``).

Speed: a batch of at least ``StoreConfig.bulk_rows`` events (bulk seeding, `load_events`) is linked
with scipy connected components and its online states are built with array group-bys, with exactly
the rules of the per-event path (tests hold the two to the same result).  Small batches (one event
from the API) work on plain Python lists, without pandas in the loop; ``validated=True`` skips
re-validating a frame that already went through ``schema.validate_events``.  Feature rows for many
profiles come from one SQL read and one ``build_profiles`` call; ``warm_features`` caches everyone's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import threading
from collections import OrderedDict, deque
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features import schema
from features.catalog import BOOL_COLUMNS as CATALOG_BOOL_COLUMNS
from features.catalog import (
    CATALOG_COLUMNS,
    CATALOG_ERROR_COLUMNS,
    IN_STOCK,
    Catalog,
    CatalogError,
    CatalogItem,
    column_values,
    validate_catalog,
)
from features.catalog import NUMBER_COLUMNS as CATALOG_NUMBER_COLUMNS
from features.consent import PERSONALIZATION, SOURCE_PURPOSES, granted_purposes, usable_sources
from features.identity import link_batch, profile_id_for, token_batch
from features.profiles import NEVER_DAYS, build_profiles
from features.schema import (
    CATEGORY,
    CHANNEL,
    CUSTOMER_ID,
    EMAIL,
    ERROR_FIELD,
    ERROR_REASON,
    ERROR_ROW,
    EVENT_ID,
    EVENT_TYPE,
    HASHED_IDENTIFIERS,
    IDENTIFIER_COLUMNS,
    ITEM_ID,
    NUMERIC_COLUMNS,
    PHONE,
    PREFERENCE,
    PREFERENCE_KEY,
    PREFERENCE_VALUE,
    PRICE,
    PROFILE_ID,
    QUANTITY,
    RATING,
    TS,
    IdentifierHasher,
    empty_events,
    event_digest,
    validate_events,
)
from features.store.codec import (
    _DEVICE_COLUMNS,
    _EVENT_COLUMNS,
    _EXPORT_SCHEMA,
    _STORED,
    _arrow_rows,
    _Batch,
    _batch_from_frame,
    _batch_from_rows,
    _by_row,
    _decision_frame,
    _dt,
    _frame,
    _jsonable,
    _records,
    _served_frame,
    _store_id,
    _strings,
    _to_ns,
    _window_ns,
)
from features.store.config import StoreConfig
from features.store.fold import (
    _STATE_VERSION,
    _build_states,
    _empty_state,
    _source_codes,
    apply_events,
    to_profile,
)
from features.store.model import (
    CONFLICT_REASON,
    EXPORT_BATCH,
    AppendResult,
    CatalogUpsert,
    OnlineProfile,
    ServedList,
)

#: The events column holding `schema.event_digest` of the stored row. NULL where not computed at insert: on the
#: vectorised path (a digest is ~15 us of Python per row, +70% on a bulk load) and in files of older releases;
#: then it is computed from the stored row, and kept, when the id is sent again.
_DIGEST = "content_digest"
# what build_profiles reads (with PROFILE_ID given): the feature path fetches only these
_FEATURE_INPUT = (EVENT_ID, EVENT_TYPE, CHANNEL, ITEM_ID, CATEGORY, QUANTITY, PRICE, RATING, PREFERENCE_KEY,
                  PREFERENCE_VALUE)
_NS = 10**9
#: Features that are NEVER_DAYS for an empty history (with every "days_*" one), per features.profiles.
_NEVER_FEATURES = frozenset({"purchase_cadence_days"})
_IN_JSON = "SELECT value FROM json_each(?)"  # one bound JSON array instead of thousands of parameters
_AS_OF_PER_PROFILE = 4  # cached feature rows per profile (distinct as_of); older ones are dropped
_INVALIDATION_LOG = 4096  # recent writes remembered, so a slow read never caches a row a write replaced
#: Version of the file layout (PRAGMA user_version): 0 = before the catalog, typed entries and contact keys;
#: 2 = before keyed tombstones (erased event ids verbatim, erased identifiers as plain SHA-256 digests);
#: 3 = before state docs v3 (declared preferences, pickups, return reasons: rebuilt from the events on open).
_FILE_VERSION = 4
_REBUILD_CHUNK = 20_000  # profiles whose states are rebuilt per query when a file is migrated
logger = logging.getLogger(__name__)
_DEFAULT_CONFIG = StoreConfig()  # frozen: one shared default


#: Domains of the keyed tombstone digests (one key, the store's IdentifierHasher key; one domain per kind, so
#: an event id and an identifier token spelt alike never share a digest).
_TOKEN_DOMAIN, _EVENT_DOMAIN, _PROFILE_DOMAIN = b"mirror-erased-token\x00", b"mirror-erased-event\x00", \
    b"mirror-erased-profile\x00"


def _legacy_digest(token: str) -> str:
    """The unkeyed SHA-256 tombstone files before version 3 hold (see `erased_tokens` in _SCHEMA)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _catalog_sql_type(column: str) -> str:
    if column in CATALOG_NUMBER_COLUMNS:
        return "REAL"
    return "INTEGER" if column in CATALOG_BOOL_COLUMNS else "TEXT"


def _event_sql_type(column: str) -> str:
    return "REAL" if column in NUMERIC_COLUMNS else "TEXT"


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, {PROFILE_ID} TEXT NOT NULL, ts_ns INTEGER NOT NULL,
    {", ".join(f'"{c}" {_event_sql_type(c)}' for c in _EVENT_COLUMNS if c not in (EVENT_ID, TS))},
    "{_DIGEST}" TEXT
);
CREATE INDEX IF NOT EXISTS events_profile ON events({PROFILE_ID}, ts_ns);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, {PROFILE_ID} TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tokens_profile ON tokens({PROFILE_ID});
CREATE TABLE IF NOT EXISTS profiles ({PROFILE_ID} TEXT PRIMARY KEY, min_token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (old_id TEXT PRIMARY KEY, new_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS device_customers (device TEXT, customer TEXT, PRIMARY KEY (device, customer));
CREATE TABLE IF NOT EXISTS shared_devices (device TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS state ({PROFILE_ID} TEXT PRIMARY KEY, doc TEXT NOT NULL, last_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS consent ({PROFILE_ID} TEXT, purpose TEXT, granted INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL, PRIMARY KEY ({PROFILE_ID}, purpose));
CREATE TABLE IF NOT EXISTS contacts ({PROFILE_ID} TEXT NOT NULL, channel TEXT NOT NULL, ts_ns INTEGER NOT NULL,
    key TEXT);
CREATE INDEX IF NOT EXISTS contacts_key ON contacts({PROFILE_ID}, channel, ts_ns);
CREATE TABLE IF NOT EXISTS catalog (
    {", ".join(f'"{c}" {_catalog_sql_type(c)}' + (" PRIMARY KEY" if c == ITEM_ID else "") for c in CATALOG_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS store_stock (item_id TEXT NOT NULL, store_id TEXT NOT NULL, in_stock INTEGER NOT NULL,
    PRIMARY KEY (item_id, store_id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sentiment (event_id TEXT PRIMARY KEY, score REAL NOT NULL);
CREATE TABLE IF NOT EXISTS erased_event_keys (digest TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS erased_identifier_keys (digest TEXT PRIMARY KEY, erased_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS erased_profile_keys (digest TEXT PRIMARY KEY, erased_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS erased_events (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS erased_tokens (digest TEXT PRIMARY KEY, erased_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (decision_id TEXT PRIMARY KEY, {PROFILE_ID} TEXT NOT NULL,
    campaign_id TEXT NOT NULL, action TEXT NOT NULL, channel TEXT NOT NULL, holdout INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL, model_versions TEXT);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions(ts_ns);
CREATE INDEX IF NOT EXISTS decisions_profile ON decisions({PROFILE_ID});
CREATE TABLE IF NOT EXISTS recommendations (recommendation_id TEXT PRIMARY KEY, ts_ns INTEGER NOT NULL,
    {PROFILE_ID} TEXT, surface TEXT NOT NULL, channel TEXT NOT NULL, model TEXT NOT NULL, model_version TEXT,
    item_ids TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS recommendations_ts ON recommendations(ts_ns);
CREATE INDEX IF NOT EXISTS recommendations_profile ON recommendations({PROFILE_ID});
"""
# Tombstones (what erasure leaves so nothing erased comes back) are HMAC-SHA256 digests keyed with the store's
# IdentifierHasher key, so a stolen file cannot be brute-forced for the phone numbers or customer ids it once
# held: `erased_event_keys` (event ids), `erased_identifier_keys` (identifier tokens, with the erasure time),
# `erased_profile_keys` (profile ids, with the time of their last erasure: `erased_at`). Legacy tables, never
# written by this release: `erased_events` held erased event ids verbatim (moved into erased_event_keys on
# open, then emptied); `erased_tokens` holds the plain SHA-256 digests of files before version 3. Those cannot
# be converted (the token they hash is gone), so they stay and are checked as well, next to the keyed ones.




_INSERT_NAMES = ", ".join(f'"{c}"' for c in (EVENT_ID, PROFILE_ID, "ts_ns", *_STORED[1:], _DIGEST))
_INSERT_EVENTS = f"INSERT OR IGNORE INTO events ({_INSERT_NAMES}) VALUES ({','.join('?' * (len(_STORED) + 3))})"
_SELECT_NAMES = ", ".join(f'"{c}"' for c in (PROFILE_ID, "ts_ns", *_STORED))


def _input_purposes(granted: frozenset[str]) -> frozenset[str]:
    """What a feature row may be built from: the usable sources, and declarations (zero-party: given for
    personalization itself) while `personalization` is granted."""
    usable = usable_sources(granted)
    return usable | {PERSONALIZATION} if PERSONALIZATION in granted else usable



_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _doc(state: dict[str, Any]) -> str:
    return _JSON.encode(state)


class SQLiteProfileStore:
    """The embedded ProfileStore (see module docstring for durability, threading and speed)."""

    def __init__(self, path: str | Path, hasher: IdentifierHasher | None = None,
                 config: StoreConfig = _DEFAULT_CONFIG, *, cache: bool = True) -> None:
        self.path = str(path)
        self.hasher = hasher or IdentifierHasher.from_env()
        self._tomb_key = self.hasher.key.encode()
        self.config = config
        self._cache_on = cache
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._cache_lock = threading.Lock()
        self._state_cache: OrderedDict[str, OnlineProfile | None] = OrderedDict()
        # profile -> {as_of_ns: feature row or None}: invalidating a profile is one pop, whatever the size
        self._feat_cache: OrderedDict[str, dict[int, tuple[Any, ...] | None]] = OrderedDict()
        self._feat_columns: list[str] | None = None
        self._feat_text: set[str] = set()
        self._gen = 0  # write generation: bumped by every invalidation
        self._inval_log: deque[tuple[int, frozenset[str]]] = deque(maxlen=_INVALIDATION_LOG)
        self._catalog_cached: tuple[int, Catalog] | None = None
        with self._write_lock:
            self._conn().executescript(_SCHEMA)
            self._migrate()

    # -- file layout --------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Bring a file written by an older version up to date, on open, in one transaction.

        Added columns are added; the old `stock` table's rows move into the catalog (then the table
        goes); state docs of an older version are rebuilt from the stored events (vectorised). Why on
        open and not lazily on read: the hot read path stays one JSON row with no write, and every
        reader of the file (other processes too) sees one layout. Reads still rebuild a stale doc in
        memory, for a doc an older release writes into an already migrated file. The content digest
        column comes empty: old rows get theirs from the stored row only when their id is sent again
        (no backfill: opening a file of millions of events stays instant, and re-sends are few).
        """
        conn = self._conn()
        wanted = {"events": {**{c: _event_sql_type(c) for c in _EVENT_COLUMNS if c not in (EVENT_ID, TS)},
                             _DIGEST: "TEXT"},  # NULL in old rows: computed from the row when needed
                  "contacts": {"key": "TEXT"}}

        def missing_columns() -> dict[str, list[tuple[str, str]]]:
            out = {}
            for table, cols in wanted.items():
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                if add := [(c, typ) for c, typ in cols.items() if c not in have]:
                    out[table] = add
            return out

        def old_stock() -> bool:
            return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='stock'").fetchone() \
                is not None

        def version() -> int:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

        def verbatim_tombstones() -> bool:  # erased event ids as an older release wrote them
            return conn.execute("SELECT 1 FROM erased_events LIMIT 1").fetchone() is not None

        if version() >= _FILE_VERSION and not missing_columns() and not old_stock() and not verbatim_tombstones():
            return
        scrub = verbatim_tombstones()
        with self._write():  # checked again under the write lock: another process may have done it
            if verbatim_tombstones():  # keyed from now on; the verbatim rows go (their bytes too: scrubbed below)
                ids = [r[0] for r in conn.execute("SELECT event_id FROM erased_events")]
                conn.executemany("INSERT OR IGNORE INTO erased_event_keys VALUES (?)",
                                 [(self._keyed(_EVENT_DOMAIN, e),) for e in ids])
                conn.execute("DELETE FROM erased_events")
            for table, add in missing_columns().items():
                for c, typ in add:
                    conn.execute(f'ALTER TABLE {table} ADD COLUMN "{c}" {typ}')
            if old_stock():
                conn.execute(f"INSERT INTO catalog ({ITEM_ID}, {IN_STOCK}) SELECT item_id, in_stock FROM stock "
                             f"WHERE true ON CONFLICT({ITEM_ID}) DO UPDATE SET {IN_STOCK}=excluded.{IN_STOCK}")
                conn.execute("DROP TABLE stock")
                self._bump_catalog(conn)
            if version() < _FILE_VERSION:
                stale = [r[0] for r in conn.execute(f"SELECT {PROFILE_ID} FROM state WHERE "
                                                    "json_extract(doc, '$.v') IS NOT ?", (_STATE_VERSION,))]
                for start in range(0, len(stale), _REBUILD_CHUNK):
                    states = self._replayed(conn, stale[start:start + _REBUILD_CHUNK])
                    conn.executemany(f"INSERT OR REPLACE INTO state ({PROFILE_ID}, doc, last_ns) VALUES (?, ?, ?)",
                                     [(p, _doc(s), s["last"]) for p, s in states.items()])
                conn.execute(f"PRAGMA user_version={_FILE_VERSION}")
        if scrub:
            self._truncate_wal()

    # -- connections --------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.config.busy_timeout_ms / 1000,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.config.synchronous.upper()}")
            # deleted and replaced content (cells and freed pages) is overwritten with zeros, so that nothing
            # an erasure deletes survives in free space, nor any stale copy an earlier update or merge left
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute(f"PRAGMA busy_timeout={self.config.busy_timeout_ms}")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One writer at a time (lock + BEGIN IMMEDIATE); commit on success, roll back on error."""
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _keyed(self, domain: bytes, value: str) -> str:
        """A tombstone digest: HMAC-SHA256 keyed with the store's hash key (never a plain digest, which a
        stolen file could be brute-forced with: phone numbers and customer ids are few)."""
        return hmac.digest(self._tomb_key, domain + value.encode(), "sha256").hex()

    def _truncate_wal(self) -> bool:
        """Checkpoint the WAL into the file and truncate it to zero bytes, so the page images it held (rows
        deleted since, with their identifiers) are gone. False when a reader kept an older snapshot past the
        busy timeout: then the next checkpoint completes it (logged; nothing personal in the message)."""
        busy, _, _ = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            logger.warning("WAL checkpoint after an erasure was blocked by a reader; erased rows stay in the WAL "
                           "until the next checkpoint completes")
        return not busy

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- caches -------------------------------------------------------------------------------
    def _invalidate(self, pids: set[str]) -> None:
        """After a commit: drop the profiles' cached state and feature rows (every as_of)."""
        if not pids:
            return
        with self._cache_lock:
            self._gen += 1
            self._inval_log.append((self._gen, frozenset(pids)))
            for pid in pids:
                self._state_cache.pop(pid, None)
                self._feat_cache.pop(pid, None)

    def _written_since(self, gen: int) -> frozenset[str] | None:
        """Profiles invalidated after generation `gen` (None: too many to know); call under _cache_lock."""
        if self._gen == gen:
            return frozenset()
        if not self._inval_log or self._inval_log[0][0] > gen + 1:
            return None
        return frozenset().union(*(p for g, p in self._inval_log if g > gen))

    def _cache_features(self, rows: Mapping[str, tuple[Any, ...] | None], as_of_ns: int, gen: int) -> None:
        """Cache rows read at generation `gen`, except those a write has replaced since."""
        if not self._cache_on:
            return
        with self._cache_lock:
            stale = self._written_since(gen)
            if stale is None:
                return
            cache = self._feat_cache
            for pid, row in rows.items():
                if pid in stale:
                    continue
                entry = cache.get(pid)
                if entry is None:
                    entry = cache[pid] = {}
                else:
                    cache.move_to_end(pid)
                entry[as_of_ns] = row
                if len(entry) > _AS_OF_PER_PROFILE:
                    del entry[min(entry)]
            while len(cache) > self.config.cache_profiles:
                cache.popitem(last=False)

    @staticmethod
    def _select_in(conn: sqlite3.Connection, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run `sql` with its `IN ({})` bound to `values` (one JSON array, one query)."""
        if not len(values):
            return []
        return conn.execute(sql.format(_IN_JSON), (json.dumps(list(values)),)).fetchall()

    # -- identity -----------------------------------------------------------------------------
    def _normalise_identifiers(self, identifiers: Mapping[str, str]) -> list[str]:
        tokens = []
        for col, raw in identifiers.items():
            if col not in IDENTIFIER_COLUMNS:
                raise ValueError(f"unknown identifier {col!r} (expected one of {', '.join(IDENTIFIER_COLUMNS)})")
            if raw is None or str(raw).strip() == "":
                continue
            value = str(raw).strip()
            if col in (EMAIL, PHONE) and not self.hasher.is_hashed(value):
                norm = self.hasher.normalise(col, value)  # the deployment's phone region
                if norm is None:
                    continue
                value = self.hasher.hash(norm)
            tokens.append(f"{col}:{value}")
        return tokens

    def resolve(self, identifiers: Mapping[str, str]) -> str | None:
        """Profile of the first identifier that is known (raw email/phone are hashed here)."""
        tokens = self._normalise_identifiers(identifiers)
        if not tokens:
            return None
        conn = self._conn()
        rows = dict(self._select_in(conn, f"SELECT token, {PROFILE_ID} FROM tokens WHERE token IN ({{}})", tokens))
        for t in tokens:
            if t in rows:
                return rows[t]
        return None

    def resolve_many(self, column: str, values: Sequence[str]) -> dict[str, str | None]:
        """Bulk resolve of one identifier column (serving's /scores)."""
        toks = {v: self._normalise_identifiers({column: v}) for v in values}
        flat = sorted({t[0] for t in toks.values() if t})
        rows = dict(self._select_in(self._conn(), f"SELECT token, {PROFILE_ID} FROM tokens WHERE token IN ({{}})",
                                    flat))
        return {v: (rows.get(t[0]) if t else None) for v, t in toks.items()}

    def identifiers_of(self, profile_ids: Sequence[str], column: str = CUSTOMER_ID) -> dict[str, list[str]]:
        """Each profile's stored values of one identifier column, sorted (one query for a batch): the
        retailer's own ids of the people a segment export or /scores names by profile. Email and phone
        are stored hashed, so only plain columns (customer, loyalty, device, cookie ids) say anything."""
        if column not in IDENTIFIER_COLUMNS:
            raise ValueError(f"unknown identifier {column!r} (expected one of {', '.join(IDENTIFIER_COLUMNS)})")
        out: dict[str, list[str]] = {}
        prefix = f"{column}:"
        for token, pid in self._select_in(self._conn(), f"SELECT token, {PROFILE_ID} FROM tokens "
                                                        f"WHERE {PROFILE_ID} IN ({{}})", list(profile_ids)):
            if token.startswith(prefix):
                out.setdefault(pid, []).append(token[len(prefix):])
        for values in out.values():
            values.sort()
        return out

    def _canonical_id(self, conn: sqlite3.Connection, profile_id: str) -> str:
        row = conn.execute("SELECT new_id FROM aliases WHERE old_id=?", (profile_id,)).fetchone()
        return row[0] if row else profile_id

    def _mark_shared(self, conn: sqlite3.Connection, pairs: Sequence[tuple[str, str]], shared: set[str]) -> set[str]:
        """Record (device, customer) pairs; devices now over the cap join `shared` (and the table)."""
        if not pairs:
            return shared
        conn.executemany("INSERT OR IGNORE INTO device_customers VALUES (?, ?)", pairs)
        devices = sorted({d for d, _ in pairs} - shared)
        over = [d for d, n in self._select_in(conn, "SELECT device, COUNT(*) FROM device_customers "
                                                    "WHERE device IN ({}) GROUP BY device", devices)
                if n > self.config.max_profiles_per_device]
        conn.executemany("INSERT OR IGNORE INTO shared_devices VALUES (?)", [(d,) for d in over])
        return shared | set(over)

    def _settle(self, conn: sqlite3.Connection, components: Sequence[tuple[str, frozenset[str] | set[str]]]
                ) -> tuple[list[str], list[str], set[str]]:
        """Per component (min new token, existing profiles in it): its id, upserted, and merges done.

        The id is "p_" + sha1 of the component's smallest token, counting the stored profiles' own
        smallest tokens; every other stored profile in it is re-keyed to that id (history kept).
        """
        olds = sorted({p for _, ps in components for p in ps})
        min_of = dict(self._select_in(conn, f"SELECT {PROFILE_ID}, min_token FROM profiles "
                                            f"WHERE {PROFILE_ID} IN ({{}})", olds))
        final: list[str] = []
        upserts: list[tuple[str, str]] = []
        merged: list[str] = []
        merged_into: set[str] = set()
        for low_new, existing in components:
            low = min([low_new] + [min_of[p] for p in existing if p in min_of])
            pid = profile_id_for(low)
            final.append(pid)
            upserts.append((pid, low))
            for old in sorted(existing - {pid}):  # merge: re-key the history, keep it all
                conn.execute(f"UPDATE tokens SET {PROFILE_ID}=? WHERE {PROFILE_ID}=?", (pid, old))
                conn.execute(f"UPDATE events SET {PROFILE_ID}=? WHERE {PROFILE_ID}=?", (pid, old))
                for table in ("consent", "contacts"):
                    conn.execute(f"UPDATE OR IGNORE {table} SET {PROFILE_ID}=? WHERE {PROFILE_ID}=?", (pid, old))
                    conn.execute(f"DELETE FROM {table} WHERE {PROFILE_ID}=?", (old,))
                conn.execute(f"UPDATE decisions SET {PROFILE_ID}=? WHERE {PROFILE_ID}=?", (pid, old))
                conn.execute(f"UPDATE recommendations SET {PROFILE_ID}=? WHERE {PROFILE_ID}=?", (pid, old))
                conn.execute(f"DELETE FROM state WHERE {PROFILE_ID}=?", (old,))
                conn.execute(f"DELETE FROM profiles WHERE {PROFILE_ID}=?", (old,))
                conn.execute("UPDATE aliases SET new_id=? WHERE new_id=?", (pid, old))
                conn.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?)", (old, pid))
                merged.append(old)
                merged_into.add(pid)
        conn.executemany(f"INSERT INTO profiles ({PROFILE_ID}, min_token) VALUES (?, ?) ON CONFLICT({PROFILE_ID}) "
                         "DO UPDATE SET min_token=excluded.min_token", upserts)
        return final, merged, merged_into

    def _link(self, conn: sqlite3.Connection, b: _Batch) -> tuple[list[str], list[str], set[str]]:
        """Assign a profile id to every row of a batch; returns ids, merged ids, merge targets.

        The rule is `features.identity.link_batch` (one batch links as a whole); this is its storage glue:
        read the stored links of the batch's tokens and the shared devices, record the device/customer
        pairs, settle the components (ids, merges) and write the new token links.
        """
        batch = token_batch({c: b.array(c) for c in IDENTIFIER_COLUMNS})
        vocab = list(batch.tokens)
        any_tokens = conn.execute("SELECT 1 FROM tokens LIMIT 1").fetchone() is not None
        known = dict(self._select_in(conn, f"SELECT token, {PROFILE_ID} FROM tokens WHERE token IN ({{}})",
                                     vocab)) if any_tokens else {}
        any_shared = conn.execute("SELECT 1 FROM shared_devices LIMIT 1").fetchone() is not None
        devices = [t for t in vocab if t.split(":", 1)[0] in _DEVICE_COLUMNS]
        shared = {r[0] for r in self._select_in(conn, "SELECT device FROM shared_devices WHERE device IN ({})",
                                                 devices)} if any_shared else set()
        shared = self._mark_shared(conn, batch.device_customer_pairs(_DEVICE_COLUMNS), shared)
        links = link_batch(batch, known, shared)
        ids, merged, merged_into = self._settle(conn, list(links.components))
        conn.executemany(f"INSERT OR REPLACE INTO tokens (token, {PROFILE_ID}) VALUES (?, ?)",
                         [(t, ids[c]) for t, c in links.token_component.items() if known.get(t) != ids[c]])
        return [ids[c] for c in links.row_component], merged, merged_into

    # -- writes -------------------------------------------------------------------------------
    def append_events(self, events: pd.DataFrame, sentiment: pd.Series | None = None, *,
                      validated: bool = False) -> AppendResult:
        """Validate, de-duplicate, link and store a batch in one transaction; durable on return.

        validated=True: `events` is already `schema.validate_events(...).valid` (the service validates
        each request once), so the ~10-40 ms of validating again is skipped; errors then name rows by their
        position in `events`, else (as validation does) by their position in the input.  An event id that is
        already stored is a duplicate when its content is the same (`schema.event_digest`) and an error
        (field event_id, CONFLICT_REASON) when it is not: a stored event is never replaced, nor a conflict
        passed off as a re-send.
        """
        ev, errors, rejected, batch_dups, rows = self._checked(events, validated)
        res = self._store_frame(ev, rows, sentiment)
        return replace(res, duplicates=res.duplicates + batch_dups, rejected=res.rejected + rejected,
                       errors=_by_row(errors + res.errors))

    def _checked(self, events: pd.DataFrame, validated: bool) -> tuple[pd.DataFrame, tuple[dict[str, object], ...],
                                                                      int, int, np.ndarray]:
        """(good rows, error records, rejected row count, in-batch duplicates, and per good row the row number
        errors name it by: its input position, which the renumbered frame of good rows no longer tells)."""
        if validated:
            return events, (), 0, 0, np.arange(len(events))
        checked = validate_events(events, self.hasher, allow_unknown_columns=PROFILE_ID in events)
        left_out = np.zeros(len(events), dtype=bool)
        left_out[checked.errors[ERROR_ROW].to_numpy(dtype=np.intp)] = True
        left_out[[i for i, _ in checked.duplicates]] = True
        rows = np.flatnonzero(~left_out)  # validation keeps every other row, in input order
        if len(rows) != len(checked.valid):
            raise RuntimeError("validate_events kept rows it neither reported nor counted as duplicates")
        return checked.valid, tuple(checked.error_records()), checked.n_rejected, len(checked.duplicates), rows

    def _store_frame(self, ev: pd.DataFrame, rows: np.ndarray, sentiment: pd.Series | None) -> AppendResult:
        """Store good rows in one transaction; a conflict names its row by `rows` (one number per row of ev)."""
        if not len(ev):
            return AppendResult(0, 0, ())
        b = _batch_from_frame(ev)
        with self._write() as conn:
            acc, dups, pids, sup, merged, conflicts = self._append(conn, b, sentiment)
        self._invalidate(set(pids) | set(merged))
        errors = tuple({ERROR_ROW: int(rows[at]), EVENT_ID: eid, ERROR_FIELD: EVENT_ID, ERROR_REASON: CONFLICT_REASON}
                       for at, eid in conflicts)
        return AppendResult(len(acc), dups, tuple(sorted(set(pids))), len(conflicts), sup, tuple(merged), errors,
                            tuple(acc))

    def load_events(self, events: pd.DataFrame, batch_size: int = 250_000, progress: bool = True, *,
                    validated: bool = False) -> AppendResult:
        """Bulk seeding (demo, benchmarks): validate once, then large vectorised batches, one transaction each.

        One batch links exactly like `append_events` of the same events; across batches a device that
        becomes shared keeps the links it made before (as for any incremental append).  Ids already stored
        are duplicates or conflicts as in `append_events`, and errors name rows the same way.
        """
        from tqdm.auto import tqdm

        ev, errors, rejected, dups, rows = self._checked(events, validated)
        if len(ev):  # time order (stable), each row keeping the number errors name it by
            order = ev[TS].reset_index(drop=True).sort_values(kind="stable").index.to_numpy()
            ev, rows = ev.iloc[order], rows[order]
        acc: list[str] = []
        found: list[dict[str, Any]] = []
        sup = 0
        pids: set[str] = set()
        merged: list[str] = []
        for start in tqdm(range(0, len(ev), batch_size), disable=not progress, desc="loading events"):
            part = slice(start, start + batch_size)
            r = self._store_frame(ev.iloc[part], rows[part], None)
            acc += r.accepted_ids
            dups, sup, rejected = dups + r.duplicates, sup + r.suppressed, rejected + r.rejected
            found += r.errors
            pids |= set(r.profile_ids)
            merged += r.merged
        pids -= set(merged)
        return AppendResult(len(acc), dups, tuple(sorted(pids)), rejected, sup, tuple(merged),
                            _by_row(errors + tuple(found)), tuple(acc))

    def _append(self, conn: sqlite3.Connection, b: _Batch, sentiment: pd.Series | None
                ) -> tuple[list[str], int, list[str], int, list[str], list[tuple[int, str]]]:
        """Inside the write transaction: returns accepted ids, duplicates, row profiles, suppressed, merged, and
        the conflicts as (position in the source frame, event id).

        Each copy of a stored id, and each repeat inside the batch (validated frames have none), is compared by
        content digest with the stored event, else with the batch's first copy (the one stored now): the same
        content is a duplicate, other content a conflict.  Digests are computed only for the rows compared and,
        on the per-event path, for the rows stored (the vectorised path leaves them to `_stored_digests`).
        """
        ids = b.cols[EVENT_ID]
        first: dict[str, int] = {}
        for i, e in enumerate(ids):
            first.setdefault(e, i)
        stored = self._stored_digests(conn, list(first))
        erased = self._erased_event_ids(conn, list(first))
        suppressed = len(erased - stored.keys())
        digests: dict[int, str] = {}  # by position in the source frame (b.at): survives take()

        def digest_at(i: int, batch: _Batch) -> str:
            at = batch.at[i]
            d = digests.get(at)
            if d is None:
                d = digests[at] = event_digest(batch.row(i))
            return d

        dups = 0
        conflicts: list[tuple[int, str]] = []
        if stored or len(first) < len(ids):
            for i, e in enumerate(ids):
                if e in stored:
                    ref = stored[e]
                elif first[e] == i:
                    continue
                elif e in erased:  # a repeat of a suppressed event: nothing stored to compare with
                    dups += 1
                    continue
                else:
                    ref = digest_at(first[e], b)
                if digest_at(i, b) == ref:
                    dups += 1
                else:
                    conflicts.append((b.at[i], e))
        keep = [i for e, i in first.items() if e not in stored and e not in erased]
        b = b.take(keep)  # ascending: dicts keep insertion order
        b, late = self._drop_tombstoned(conn, b)
        suppressed += late
        if not len(b):
            return [], dups, [], suppressed, [], sorted(conflicts)
        bulk = len(b) >= self.config.bulk_rows
        pids, merged, merged_into = self._link(conn, b)
        new_digests = [digests.get(at) for at in b.at] if bulk else [digest_at(i, b) for i in range(len(b))]
        conn.executemany(_INSERT_EVENTS, zip(b.cols[EVENT_ID], pids, b.ts, *(b.cols[c] for c in _STORED[1:]),
                                             new_digests, strict=True))
        if sentiment is not None and len(sentiment):  # only the events stored now: never a suppressed one's
            self._put_scores(conn, sentiment, set(b.cols[EVENT_ID]))
        (self._states_bulk if bulk else self._update_states)(conn, b, pids, merged_into)
        return list(b.cols[EVENT_ID]), dups, pids, suppressed, sorted(merged), sorted(conflicts)

    def _stored_digests(self, conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
        """Content digest of each stored event among `ids`. One stored without (vectorised path, a file of an
        older release) gets it from the stored row now, written back so the next re-send reads it."""
        if not ids or conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is None:
            return {}
        found = dict(self._select_in(conn, f'SELECT event_id, "{_DIGEST}" FROM events WHERE event_id IN ({{}})',
                                     ids))
        missing = [e for e, d in found.items() if d is None]
        if missing:
            rows, _ = _batch_from_rows(self._select_in(
                conn, f"SELECT {_SELECT_NAMES} FROM events WHERE event_id IN ({{}})", missing))
            computed = {e: event_digest(rows.row(i)) for i, e in enumerate(rows.cols[EVENT_ID])}
            conn.executemany(f'UPDATE events SET "{_DIGEST}"=? WHERE event_id=?', [(d, e) for e, d in computed.items()])
            found.update(computed)
        return found

    def _erased_event_ids(self, conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
        """The ids among `ids` of erased events (keyed tombstones, and any verbatim one an older release wrote
        since this file was migrated)."""
        out: set[str] = set()
        if ids and conn.execute("SELECT 1 FROM erased_event_keys LIMIT 1").fetchone():
            by_digest = {self._keyed(_EVENT_DOMAIN, e): e for e in ids}
            out |= {by_digest[d] for (d,) in self._select_in(
                conn, "SELECT digest FROM erased_event_keys WHERE digest IN ({})", list(by_digest))}
        if ids and conn.execute("SELECT 1 FROM erased_events LIMIT 1").fetchone():
            out |= {r[0] for r in self._select_in(conn, "SELECT event_id FROM erased_events WHERE event_id IN ({})",
                                                  ids)}
        return out

    def _drop_tombstoned(self, conn: sqlite3.Connection, b: _Batch) -> tuple[_Batch, int]:
        """Events carrying an erased identifier and older than its erasure never come back."""
        keyed = conn.execute("SELECT 1 FROM erased_identifier_keys LIMIT 1").fetchone() is not None
        legacy = conn.execute("SELECT 1 FROM erased_tokens LIMIT 1").fetchone() is not None
        if not len(b) or not (keyed or legacy):
            return b, 0
        tokens = [[f"{c}:{v}" for c in IDENTIFIER_COLUMNS if (v := b.cols[c][i]) is not None] for i in range(len(b))]
        distinct = sorted({t for ts in tokens for t in ts})
        tables: list[tuple[str, Any]] = []
        if keyed:
            tables.append(("erased_identifier_keys", lambda t: self._keyed(_TOKEN_DOMAIN, t)))
        if legacy:  # plain digests of files before version 3: they cannot be re-keyed, so they are checked too
            tables.append(("erased_tokens", _legacy_digest))
        when: dict[str, int] = {}  # token -> latest erasure time
        for table, digest in tables:
            by_digest = {digest(t): t for t in distinct}
            for d, ns in self._select_in(conn, f"SELECT digest, erased_ns FROM {table} WHERE digest IN ({{}})",
                                         list(by_digest)):
                when[by_digest[d]] = max(ns, when.get(by_digest[d], ns))
        if not when:
            return b, 0
        keep = [i for i, ts in enumerate(tokens) if not any(t in when and b.ts[i] <= when[t] for t in ts)]
        return b.take(keep), len(b) - len(keep)

    @staticmethod
    def _put_scores(conn: sqlite3.Connection, scores: Mapping[Any, Any] | pd.Series, stored: Container[str]) -> int:
        """Write the sentiment scores (clipped to [-1, 1]) of the events in `stored` only; returns how many.
        A score of an event the store does not hold is not kept: it would wait for the event, and an erased
        review sent again (suppressed) would find its score."""
        rows = []
        for k, v in scores.items():
            if str(k) not in stored:
                continue
            try:
                score = float(v)
            except (TypeError, ValueError):
                score = float("nan")
            if not np.isfinite(score):
                raise ValueError(f"sentiment score of event {str(k)!r}: must be a finite number, got {v!r}")
            rows.append((str(k), float(np.clip(score, -1.0, 1.0))))
        conn.executemany("INSERT OR REPLACE INTO sentiment VALUES (?, ?)", rows)
        return len(rows)

    # -- online state -------------------------------------------------------------------------
    def _update_states(self, conn: sqlite3.Connection, b: _Batch, pids: list[str], merged_into: set[str]) -> None:
        """Small batch: fold the new events into each stored state (replay the history when merged or late)."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pids):
            groups.setdefault(p, []).append(i)
        states = dict(self._select_in(conn, f"SELECT {PROFILE_ID}, doc FROM state WHERE {PROFILE_ID} IN ({{}})",
                                      list(groups)))
        out = []
        scores = self._stored_scores(conn, b.cols[EVENT_ID])
        for pid, rows in groups.items():
            doc = states.get(pid)
            state = json.loads(doc) if doc is not None else None
            stale = state is not None and state.get("v") != _STATE_VERSION  # written by an older version
            if pid in merged_into or stale or (state is not None and b.ts[rows[0]] < state["last"]):
                hist, _ = self._history(conn, [pid])  # merged, old or late (out of order): replay, exact
                state = apply_events(_empty_state(), hist, range(len(hist)), self.config,
                                     self._stored_scores(conn, hist.cols[EVENT_ID]))
            else:
                state = apply_events(state or _empty_state(), b, rows, self.config, scores)
            out.append((pid, _doc(state), state["last"]))
        conn.executemany(f"INSERT OR REPLACE INTO state ({PROFILE_ID}, doc, last_ns) VALUES (?, ?, ?)", out)

    def _states_bulk(self, conn: sqlite3.Connection, b: _Batch, pids: list[str], merged_into: set[str]) -> None:
        """Large batch: new profiles' states built vectorised; stored ones folded as in `_update_states`."""
        had = {r[0] for r in self._select_in(conn, f"SELECT {PROFILE_ID} FROM state WHERE {PROFILE_ID} IN ({{}})",
                                             sorted(set(pids)))} \
            if conn.execute("SELECT 1 FROM state LIMIT 1").fetchone() else set()
        stored = had | merged_into
        fresh = [i for i, p in enumerate(pids) if p not in stored]
        if fresh:
            conn.executemany(f"INSERT OR REPLACE INTO state ({PROFILE_ID}, doc, last_ns) VALUES (?, ?, ?)",
                             [(p, _doc(s), last) for p, s, last in
                              _build_states(b.take(fresh), [pids[i] for i in fresh], self.config,
                                            self._stored_scores(conn, b.cols[EVENT_ID]))])
        if stored:
            rest = [i for i, p in enumerate(pids) if p in stored]
            self._update_states(conn, b.take(rest), [pids[i] for i in rest], merged_into)

    def get_profile(self, profile_id: str) -> OnlineProfile | None:
        """Current online state (one JSON row, LRU-cached until this profile's next write)."""
        gen = 0
        if self._cache_on:
            with self._cache_lock:
                if profile_id in self._state_cache:
                    self._state_cache.move_to_end(profile_id)
                    return self._state_cache[profile_id]
                gen = self._gen
        conn = self._conn()
        row = conn.execute(f"SELECT doc FROM state WHERE {PROFILE_ID}=?", (profile_id,)).fetchone()
        if row is None:
            canon = self._canonical_id(conn, profile_id)
            if canon != profile_id:
                return self.get_profile(canon)
            return None
        prof = to_profile(profile_id, self._current(conn, {profile_id: json.loads(row[0])})[profile_id],
                                self._erased_ns(conn, [profile_id]).get(profile_id))
        self._remember_states({profile_id: prof}, gen)
        return prof

    def _replayed(self, conn: sqlite3.Connection, profile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """States rebuilt from the stored events (vectorised, the same rules as the fold)."""
        hist, owners = self._history(conn, profile_ids)
        if not len(hist):
            return {}
        return {p: s for p, s, _ in _build_states(hist, owners, self.config,
                                                  self._stored_scores(conn, hist.cols[EVENT_ID]))}

    def _stored_scores(self, conn: sqlite3.Connection, event_ids: Sequence[str]) -> dict[str, float]:
        """Stored model sentiment of these events (none read when the store holds no score at all)."""
        if not len(event_ids) or conn.execute("SELECT 1 FROM sentiment LIMIT 1").fetchone() is None:
            return {}
        return dict(self._select_in(conn, "SELECT event_id, score FROM sentiment WHERE event_id IN ({})",
                                    list(event_ids)))

    def _current(self, conn: sqlite3.Connection, docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Docs as read, with any of an older version (another process on an older release wrote it after
        this file was migrated) rebuilt from the events; the next write to the profile stores it."""
        stale = [p for p, s in docs.items() if s.get("v") != _STATE_VERSION]
        if stale:
            docs = {**docs, **self._replayed(conn, stale)}
        return docs

    def _remember_states(self, states: Mapping[str, OnlineProfile], gen: int) -> None:
        """Cache states read at generation `gen`, unless a write landed since (they may be stale)."""
        if not self._cache_on:
            return
        with self._cache_lock:
            if self._gen != gen:
                return
            self._state_cache.update(states)
            while len(self._state_cache) > self.config.cache_profiles:
                self._state_cache.popitem(last=False)

    def get_profiles(self, profile_ids: Sequence[str]) -> list[OnlineProfile | None]:
        """`get_profile` for many ids in one query for all cache misses (batch scoring reads 10,000)."""
        ids = [str(p) for p in profile_ids]
        found: dict[str, OnlineProfile | None] = {}
        gen = 0
        if self._cache_on:
            with self._cache_lock:
                for pid in ids:
                    if pid in self._state_cache:
                        found[pid] = self._state_cache[pid]
                gen = self._gen
        missing = sorted({p for p in ids if p not in found})
        if missing:
            conn = self._conn()
            rows = self._select_in(conn, f"SELECT {PROFILE_ID}, doc FROM state WHERE {PROFILE_ID} IN ({{}})",
                                   missing)
            docs = self._current(conn, {pid: json.loads(doc) for pid, doc in rows})
            erased = self._erased_ns(conn, list(docs))
            fresh = {pid: to_profile(pid, s, erased.get(pid)) for pid, s in docs.items()}
            self._remember_states(fresh, gen)
            found.update(fresh)
            for pid in missing:
                if pid not in found:  # merged away or unknown: the single path follows merges
                    found[pid] = self.get_profile(pid)
        return [found[p] for p in ids]

    _to_profile = staticmethod(to_profile)  # the fold's doc -> OnlineProfile (kept for callers of the method)

    # -- reads --------------------------------------------------------------------------------
    def _history(self, conn: sqlite3.Connection, profile_ids: Sequence[str]) -> tuple[_Batch, list[str]]:
        """Stored events of these profiles as a _Batch (oldest first) and their profile ids."""
        rows = self._select_in(conn, f"SELECT {_SELECT_NAMES} FROM events WHERE {PROFILE_ID} IN ({{}}) "
                                     "ORDER BY ts_ns, event_id", list(profile_ids))
        return _batch_from_rows(rows)

    def _events(self, conn: sqlite3.Connection, profile_ids: Sequence[str] | None) -> pd.DataFrame:
        if profile_ids is None:
            rows = conn.execute(f"SELECT {_SELECT_NAMES} FROM events ORDER BY ts_ns, event_id").fetchall()
        else:
            rows = self._select_in(conn, f"SELECT {_SELECT_NAMES} FROM events WHERE {PROFILE_ID} IN ({{}}) "
                                         "ORDER BY ts_ns, event_id", sorted(set(profile_ids)))
        return _frame(rows, list(_STORED))

    def events_for(self, profile_ids: Sequence[str]) -> pd.DataFrame:
        """Stored events of these profiles (canonical columns + PROFILE_ID), oldest first."""
        return self._events(self._conn(), list(profile_ids))

    def export_events(self) -> pd.DataFrame:
        """Every stored event for training (erased profiles are gone, so never included)."""
        return self._events(self._conn(), None)

    def has_events(self) -> bool:
        """Whether any event is stored (one row read: seeding asks this of stores of any size)."""
        return self._conn().execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None

    def export_events_to(self, path: str | Path, *, batch_size: int = EXPORT_BATCH) -> int:
        """`export_events` into a parquet file, `batch_size` rows at a time (one row group each), so a store
        larger than memory exports for training; returns the rows written.

        The same rows, columns and dtypes as `export_events()` (canonical columns + PROFILE_ID, oldest
        first), from one snapshot (a single read statement); the erased are not in the store, so never in the
        file.  Written to `<path>.partial` and renamed at the end: a failed export leaves no file that looks
        complete.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        written = 0
        cursor = self._conn().execute(f"SELECT {_SELECT_NAMES} FROM events ORDER BY ts_ns, event_id")
        try:
            with pq.ParquetWriter(partial, _EXPORT_SCHEMA) as writer:
                while rows := cursor.fetchmany(int(batch_size)):
                    writer.write_table(_arrow_rows(rows))
                    written += len(rows)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            cursor.close()
        return written

    def record_sentiment(self, scores: Mapping[str, float] | pd.Series) -> int:
        """Model sentiment scores by event_id; features_for uses them in place of ratings.

        Only scores of stored events are kept (returns how many): a score of an event the store does not
        hold, never stored or erased, is dropped, so an erased review sent again never finds a score.
        """
        with self._write() as conn:
            owner = dict(self._select_in(conn, f"SELECT event_id, {PROFILE_ID} FROM events WHERE event_id IN ({{}})",
                                         sorted({str(k) for k, _ in scores.items()})))  # a Series iterates values
            kept = self._put_scores(conn, scores, owner)
            states = self._replayed(conn, sorted(set(owner.values())))  # the online state reads scores too
            conn.executemany(f"INSERT OR REPLACE INTO state ({PROFILE_ID}, doc, last_ns) VALUES (?, ?, ?)",
                             [(p, _doc(st), st["last"]) for p, st in states.items()])
        self._invalidate(set(owner.values()))
        return kept

    def sentiment_for(self, event_ids: Sequence[str]) -> pd.Series:
        rows = self._select_in(self._conn(), "SELECT event_id, score FROM sentiment WHERE event_id IN ({})",
                               list(event_ids))
        return pd.Series(dict(rows), dtype="float64")

    def _as_of_ns(self, as_of: Any) -> int:
        if as_of is not None:
            return _to_ns(as_of)
        g = self.config.feature_granularity_s * _NS
        return (pd.Timestamp.now(tz="UTC").value // g) * g

    def _build_features(self, conn: sqlite3.Connection, profile_ids: Sequence[str] | None,
                        as_of_ns: int) -> dict[str, tuple[Any, ...]]:
        """Feature rows of these profiles (None: everyone): one SQL read, one build_profiles call.

        Only the columns build_profiles reads are fetched (event ids and the join only when stored
        sentiment exists); each profile's events come in (ts, event_id) order, as from events_for,
        so a row is the same number whichever other profiles it was built with.
        """
        scored = conn.execute("SELECT 1 FROM sentiment LIMIT 1").fetchone() is not None
        cols = [c for c in _FEATURE_INPUT if scored or c != EVENT_ID]
        names = ", ".join(f'e."{c}"' for c in (PROFILE_ID, "ts_ns", *cols))
        sql = (f"SELECT {names}, s.score FROM events e LEFT JOIN sentiment s ON s.event_id = e.event_id"
               if scored else f"SELECT {names} FROM events e") + " WHERE e.ts_ns < ?"
        params: tuple[Any, ...] = (as_of_ns,)
        if profile_ids is not None:
            sql += f" AND e.{PROFILE_ID} IN ({_IN_JSON})"
            params += (json.dumps(list(profile_ids)),)
        rows = conn.execute(sql + f" ORDER BY e.{PROFILE_ID}, e.ts_ns, e.event_id", params).fetchall()
        sent = None
        if scored and rows:
            score = np.array([r[-1] for r in rows], dtype=float)
            rows = [r[:-1] for r in rows]
            hit = ~np.isnan(score)
            if hit.any():
                ids = np.array([r[2] for r in rows], dtype=object)
                sent = pd.Series(score[hit], index=pd.Index(ids[hit], dtype="string"), dtype="float64")
        ev, blank = self._consented(conn, _frame(rows, cols), profile_ids)
        built = build_profiles(ev, pd.Timestamp(as_of_ns, tz="UTC"), self.config.profile_config, sentiment=sent)
        self._set_feature_columns(built)
        out = dict(zip(built[PROFILE_ID].tolist(), built.itertuples(index=False, name=None), strict=True))
        out.update((pid, self._empty_history_row(pid)) for pid in blank)
        return out

    def _usable_sources(self, conn: sqlite3.Connection, profile_ids: Sequence[str] | None
                        ) -> tuple[dict[str, frozenset[str]], frozenset[str]]:
        """Source purposes each profile allows its signals from (one consent read for all of them),
        and those of a profile with no recorded choice (the defaults)."""
        sql = f"SELECT {PROFILE_ID}, purpose, granted FROM consent"
        if profile_ids is None:
            rows = conn.execute(sql).fetchall()
        else:
            rows = self._select_in(conn, sql + f" WHERE {PROFILE_ID} IN ({{}})", list(profile_ids))
        flags: dict[str, dict[str, bool]] = {}
        for pid, purpose, granted in rows:
            flags.setdefault(pid, {})[purpose] = bool(granted)
        usable = {pid: _input_purposes(granted_purposes(f)) for pid, f in flags.items()}
        return usable, _input_purposes(granted_purposes({}))

    def _consented(self, conn: sqlite3.Connection, ev: pd.DataFrame, profile_ids: Sequence[str] | None
                   ) -> tuple[pd.DataFrame, list[str]]:
        """Only the events whose source each profile has granted (and none without personalization);
        plus the profiles that had events but none usable (they get the row of an empty history)."""
        if not len(ev):
            return ev, []
        usable, default = self._usable_sources(conn, profile_ids)
        bit = {s: 1 << j for j, s in enumerate((*SOURCE_PURPOSES, PERSONALIZATION))}
        src_codes, src_names = _source_codes(ev[EVENT_TYPE], ev[CHANNEL])
        row_bits = np.array([bit.get(s, 0) for s in src_names], dtype=np.int64)[src_codes]
        # a declaration was given for personalization itself (whatever channel it came through)
        row_bits = np.where(ev[EVENT_TYPE].eq(PREFERENCE).to_numpy(dtype=bool, na_value=False),
                            bit[PERSONALIZATION], row_bits)
        p_codes, p_uniq = pd.factorize(ev[PROFILE_ID])

        def mask(sources: frozenset[str]) -> int:
            return sum(bit[s] for s in sources if s in bit)

        allowed = np.full(len(p_uniq), mask(default), dtype=np.int64)  # most profiles made no choice
        if usable:
            at = pd.Index(p_uniq).get_indexer(list(usable))
            allowed[at[at >= 0]] = [mask(s) for s, i in zip(usable.values(), at, strict=True) if i >= 0]
        keep = (row_bits & allowed[p_codes]) != 0
        if keep.all():
            return ev, []
        kept = np.zeros(len(p_uniq), dtype=bool)
        kept[p_codes[keep]] = True
        blank = [str(p) for p, k in zip(p_uniq.tolist(), kept.tolist(), strict=True) if not k]
        return ev.loc[keep], blank

    def _empty_history_row(self, profile_id: str) -> tuple[Any, ...]:
        """The feature row of a profile none of whose events may be used: every feature as for an empty
        history (counts, sums and rates 0; "days since" and expected durations NEVER_DAYS, as
        features.profiles defines them; no top category), so a caller can tell nothing was used."""
        cols = self._feat_columns or []
        return tuple(profile_id if c == PROFILE_ID else "" if c in self._feat_text
                     else NEVER_DAYS if c.startswith("days_") or c in _NEVER_FEATURES else 0.0 for c in cols)

    def _set_feature_columns(self, built: pd.DataFrame) -> None:
        self._feat_columns = list(built.columns)
        self._feat_text = {c for c in built.columns
                           if c == PROFILE_ID or not pd.api.types.is_numeric_dtype(built[c].dtype)}

    def features_for(self, profile_ids: Sequence[str], as_of: Any = None) -> pd.DataFrame:
        """Exactly build_profiles(events_for(ids), as_of) (with stored sentiment), rows cached per profile.

        as_of=None means now, floored to `feature_granularity_s`, so repeated calls reuse cached rows.
        All misses are built together (one read, one vectorised build).
        """
        as_of_ns = self._as_of_ns(as_of)
        wanted = sorted(set(map(str, profile_ids)))
        rows: dict[str, tuple[Any, ...] | None] = {}
        gen = 0
        if self._cache_on:
            with self._cache_lock:
                cache = self._feat_cache
                for pid in wanted:
                    entry = cache.get(pid)
                    if entry is not None and as_of_ns in entry:
                        cache.move_to_end(pid)
                        rows[pid] = entry[as_of_ns]
                gen = self._gen
        missing = [p for p in wanted if p not in rows]
        if missing:
            built = self._build_features(self._conn(), missing, as_of_ns)
            fresh = {pid: built.get(pid) for pid in missing}
            rows.update(fresh)
            self._cache_features(fresh, as_of_ns, gen)
        return self._feature_frame([r for p in wanted if (r := rows[p]) is not None], as_of_ns)

    def warm_features(self, as_of: Any = None) -> int:
        """Build and cache every profile's feature row in one vectorised pass (service start-up).

        Returns the number of profiles with a row.  Cached rows serve `features_for` with the same
        as_of (None: the current `feature_granularity_s` bucket) until a write to that profile.
        """
        as_of_ns = self._as_of_ns(as_of)
        with self._cache_lock:
            gen = self._gen
        conn = self._conn()
        built = self._build_features(conn, None, as_of_ns)
        rows: dict[str, tuple[Any, ...] | None] = {p: None for (p,) in conn.execute(f"SELECT {PROFILE_ID} FROM state")}
        rows.update(built)
        self._cache_features(rows, as_of_ns, gen)
        return len(built)

    def _feature_frame(self, records: list[tuple[Any, ...]], as_of_ns: int) -> pd.DataFrame:
        """Cached/built rows -> the build_profiles frame (text columns "string", the rest float64)."""
        if self._feat_columns is None:
            self._set_feature_columns(build_profiles(empty_events().assign(**{PROFILE_ID: pd.Series(
                dtype="string")}), pd.Timestamp(as_of_ns, tz="UTC"), self.config.profile_config))
        cols = self._feat_columns or []
        data = list(zip(*records, strict=True)) if records else [()] * len(cols)
        return pd.DataFrame({c: _strings(v) if c in self._feat_text else np.array(v, dtype="float64")
                             for c, v in zip(cols, data, strict=True)})

    # -- consent, contacts ---------------------------------------------------------------------
    def set_consent(self, profile_id: str, purpose: str, granted: bool) -> None:
        """Record a choice; the profile's cached feature rows (built from what it granted) go at once."""
        if not purpose:
            raise ValueError("purpose must be non-empty")
        if not isinstance(granted, (bool, np.bool_)):
            raise ValueError(f"consent for {purpose!r} must be true or false, got {granted!r}")
        now = pd.Timestamp.now(tz="UTC").value
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO consent VALUES (?, ?, ?, ?)",
                         (profile_id, purpose, int(bool(granted)), now))
        self._invalidate({profile_id})

    def get_consent(self, profile_id: str) -> dict[str, bool]:
        rows = self._conn().execute(f"SELECT purpose, granted FROM consent WHERE {PROFILE_ID}=?",
                                    (profile_id,)).fetchall()
        return {p: bool(g) for p, g in rows}

    def get_consents(self, profile_ids: Sequence[str]) -> dict[str, dict[str, bool]]:
        """`get_consent` for many profiles in one query (batch scoring reads 10,000); profiles without a
        recorded choice are absent (their defaults apply)."""
        out: dict[str, dict[str, bool]] = {}
        rows = self._select_in(self._conn(), f"SELECT {PROFILE_ID}, purpose, granted FROM consent "
                                             f"WHERE {PROFILE_ID} IN ({{}})", sorted(set(map(str, profile_ids))))
        for pid, purpose, granted in rows:
            out.setdefault(pid, {})[purpose] = bool(granted)
        return out

    def profile_ids(self) -> list[str]:
        """Every profile with an online state (warm-ups score them all)."""
        return [p for (p,) in self._conn().execute(f"SELECT {PROFILE_ID} FROM state ORDER BY {PROFILE_ID}")]

    def reserve_contact(self, profile_id: str, channel: str, now: Any, caps: Mapping[Any, int], *,
                        key: str | None = None) -> bool:
        """Atomically: if every cap (window -> max contacts on this channel) has room, record one contact.

        `key` names the decision (campaign + decision window + action): when a contact with this key is
        already recorded for the profile and channel, the answer is True again and no second slot is
        used, so a retried request never sends (or counts) the same message twice. Durable on return.
        """
        if key is not None and (not isinstance(key, str) or not key.strip()):
            raise ValueError("key must be a non-empty string (or None)")
        now_ns = _to_ns(now)
        limits = [(_window_ns(w), int(m)) for w, m in caps.items()]
        with self._write() as conn:
            if key is not None and conn.execute(
                    f"SELECT 1 FROM contacts WHERE {PROFILE_ID}=? AND channel=? AND key=? LIMIT 1",
                    (profile_id, channel, key)).fetchone():
                return True
            for window, most in limits:
                # contacts on either side of `now` count: a request that started a moment earlier may
                # commit after this one, and a message deferred past quiet hours is recorded ahead
                (n,) = conn.execute(f"SELECT COUNT(*) FROM contacts WHERE {PROFILE_ID}=? AND channel=? "
                                    "AND ts_ns > ? AND ts_ns < ?",
                                    (profile_id, channel, now_ns - window, now_ns + window)).fetchone()
                if n >= most:
                    return False
            conn.execute(f"INSERT INTO contacts ({PROFILE_ID}, channel, ts_ns, key) VALUES (?, ?, ?, ?)",
                         (profile_id, channel, now_ns, key))
        return True

    def contacts_for(self, profile_id: str) -> list[tuple[str, dt.datetime, str | None]]:
        """(channel, time, key) of every recorded contact of the profile, oldest first (tests, operations)."""
        rows = self._conn().execute(f"SELECT channel, ts_ns, key FROM contacts WHERE {PROFILE_ID}=? "
                                    "ORDER BY ts_ns, rowid", (profile_id,)).fetchall()
        return [(ch, _dt(ts), key) for ch, ts, key in rows]

    # -- decision log ---------------------------------------------------------------------------
    def record_decision(self, decision_id: str, profile_id: str, campaign_id: str, action: str, channel: str,
                        holdout: bool, ts: Any, model_versions: Mapping[str, str | None] | None = None) -> bool:
        """Log one NBA decision (treated or holdout), durably. Idempotent by `decision_id`: a repeated request
        for the same decision keeps the first row and answers False. Erased with the profile."""
        for name, value in (("decision_id", decision_id), ("profile_id", profile_id), ("campaign_id", campaign_id),
                            ("action", action), ("channel", channel)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        versions = None if model_versions is None else json.dumps(
            {str(k): None if v is None else str(v) for k, v in model_versions.items()}, sort_keys=True)
        with self._write() as conn:
            cur = conn.execute(
                f"INSERT OR IGNORE INTO decisions (decision_id, {PROFILE_ID}, campaign_id, action, channel, holdout, "
                "ts_ns, model_versions) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (decision_id, profile_id, campaign_id, action, channel, int(bool(holdout)), _to_ns(ts), versions))
        return cur.rowcount > 0

    def decisions(self, since: Any = None) -> pd.DataFrame:
        """The decision log (DECISION_COLUMNS, oldest first), from `since` on when given: the input of
        `mirror report lift` and of uplift training."""
        where, args = ("WHERE ts_ns >= ?", (_to_ns(since),)) if since is not None else ("", ())
        return _decision_frame(self._decision_rows(self._conn(), where, args))

    @staticmethod
    def _decision_rows(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return conn.execute(f"SELECT decision_id, {PROFILE_ID}, campaign_id, action, channel, holdout, ts_ns, "
                            f"model_versions FROM decisions {where} ORDER BY ts_ns, decision_id", args).fetchall()

    # -- served lists (attribution) ---------------------------------------------------------------
    def record_recommendations(self, served: Sequence[ServedList]) -> int:
        """Record served lists in one transaction, durably; returns how many were new.

        Idempotent by `recommendation_id` (a list recorded twice keeps its first row). A list of a profile
        erased at or after the time it was served is not written: serving records lists in the background,
        and a list queued before an erasure must not bring the person back."""
        def text(v: Any) -> str | None:  # None, NaN and NA (a frame's missing value) are all "none"
            return None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)

        rows = [(x.recommendation_id, _to_ns(x.ts), text(x.profile_id), x.surface, x.channel, x.model,
                 text(x.model_version), json.dumps([str(i) for i in x.item_ids])) for x in served]
        for r in rows:
            if not isinstance(r[0], str) or not r[0]:
                raise ValueError(f"recommendation_id must be a non-empty string, got {r[0]!r}")
        if not rows:
            return 0
        with self._write() as conn:
            erased = self._erased_ns(conn, sorted({r[2] for r in rows if r[2] is not None}))
            if erased:
                rows = [r for r in rows if r[2] is None or erased.get(r[2], -1) < r[1]]
            before = conn.total_changes
            conn.executemany(f"INSERT OR IGNORE INTO recommendations (recommendation_id, ts_ns, {PROFILE_ID}, "
                             "surface, channel, model, model_version, item_ids) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return conn.total_changes - before

    def record_recommendation(self, served: ServedList) -> bool:
        """One list (`record_recommendations`); False when it was already recorded or its profile erased."""
        return self.record_recommendations([served]) == 1

    def recommendations(self, since: Any = None) -> pd.DataFrame:
        """Served lists (RECOMMENDATION_COLUMNS, oldest first), from `since` on when given; `item_ids` holds
        each list's items in the order shown (tuples)."""
        where, args = ("WHERE ts_ns >= ?", (_to_ns(since),)) if since is not None else ("", ())
        return _served_frame(self._served_rows(self._conn(), where, args))

    @staticmethod
    def _served_rows(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return conn.execute(f"SELECT recommendation_id, ts_ns, {PROFILE_ID}, surface, channel, model, model_version, "
                            f"item_ids FROM recommendations {where} ORDER BY ts_ns, recommendation_id",
                            args).fetchall()

    def attributed_events(self, since: Any = None) -> pd.DataFrame:
        """Stored events that echo a `recommendation_id` (every event column, canonical dtypes, oldest first),
        from `since` on when given: what `mirror report attribution` joins to the served lists."""
        cond = f'"{schema.RECOMMENDATION_ID}" IS NOT NULL' + (" AND ts_ns >= ?" if since is not None else "")
        args = (_to_ns(since),) if since is not None else ()
        rows = self._conn().execute(f"SELECT {_SELECT_NAMES} FROM events WHERE {cond} ORDER BY ts_ns, event_id",
                                    args).fetchall()
        return _frame(rows, list(_STORED))

    # -- catalog and stock --------------------------------------------------------------------
    @staticmethod
    def _bump_catalog(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('catalog_version', 1) "
                     "ON CONFLICT(key) DO UPDATE SET value = value + 1")

    def catalog_version(self) -> int:
        """A number that changes on every catalog upsert or stock change, by any process on this file
        (a counter row, one primary-key read): a server compares it to refresh its copy cheaply."""
        row = self._conn().execute("SELECT value FROM meta WHERE key='catalog_version'").fetchone()
        return int(row[0]) if row else 0

    def upsert_items(self, frame: pd.DataFrame, *, validated: bool = False) -> CatalogUpsert:
        """Validate (unless validated: already `validate_catalog(...).valid`) and upsert items; durable on
        return. A row replaces the fields it gives (non-missing values); fields it does not give keep
        their stored values, so a price feed can send `item_id, price` only."""
        if validated:
            valid = frame
            errors = pd.DataFrame({c: pd.Series(dtype="object") for c in CATALOG_ERROR_COLUMNS})
        else:
            checked = validate_catalog(frame)
            valid, errors = checked.valid, checked.errors
        if not len(valid):
            return CatalogUpsert(0, errors)
        given = [c for c in CATALOG_COLUMNS if c in valid.columns]
        if ITEM_ID not in given:
            raise ValueError(f"a validated catalog frame has an {ITEM_ID!r} column")
        values = dict(zip(CATALOG_COLUMNS, column_values(valid), strict=True))
        rows = list(zip(*(values[c] for c in given), strict=True))
        rest = [c for c in given if c != ITEM_ID]
        sql = (f"INSERT INTO catalog ({', '.join(given)}) VALUES ({', '.join('?' * len(given))}) "
               f"ON CONFLICT({ITEM_ID}) DO " + (
                   "UPDATE SET " + ", ".join(f"{c}=COALESCE(excluded.{c}, catalog.{c})" for c in rest)
                   if rest else "NOTHING"))
        with self._write() as conn:
            conn.executemany(sql, rows)
            self._bump_catalog(conn)
        return CatalogUpsert(len(rows), errors)

    def catalog(self) -> Catalog:
        """Every stored item, as an immutable Catalog (rebuilt only when `catalog_version` changed)."""
        version = self.catalog_version()  # before the rows: a newer read is refreshed next time, never missed
        with self._cache_lock:
            cached = self._catalog_cached
        if cached is not None and cached[0] == version:
            return cached[1]
        cols = ", ".join(CATALOG_COLUMNS)
        rows = self._conn().execute(f"SELECT {cols} FROM catalog ORDER BY {ITEM_ID}").fetchall()
        bools = [c in CATALOG_BOOL_COLUMNS for c in CATALOG_COLUMNS]
        cat = Catalog(CatalogItem(*(None if v is None else bool(v) if is_bool else v
                                    for v, is_bool in zip(r, bools, strict=True))) for r in rows)
        with self._cache_lock:
            self._catalog_cached = (version, cat)
        return cat

    def set_stock(self, item_id: str, in_stock: bool, store_id: str | None = None) -> None:
        """Stock of an item: overall (the catalog's `in_stock`; an unknown item gets a catalog row with only
        its id and stock), or in one store when `store_id` is given."""
        checked = validate_catalog(pd.DataFrame({ITEM_ID: [item_id], IN_STOCK: pd.array([in_stock], dtype=object)}))
        if len(checked.errors):
            raise CatalogError(checked.errors)
        if not isinstance(in_stock, (bool, np.bool_)):
            raise ValueError(f"{IN_STOCK} must be true or false, got {in_stock!r}")
        store = None if store_id is None else _store_id(store_id)
        item = str(checked.valid[ITEM_ID].iloc[0])
        with self._write() as conn:
            if store_id is None:
                conn.execute(f"INSERT INTO catalog ({ITEM_ID}, {IN_STOCK}) VALUES (?, ?) "
                             f"ON CONFLICT({ITEM_ID}) DO UPDATE SET {IN_STOCK}=excluded.{IN_STOCK}",
                             (item, int(bool(in_stock))))
            else:
                conn.execute("INSERT OR REPLACE INTO store_stock (item_id, store_id, in_stock) VALUES (?, ?, ?)",
                             (item, store, int(bool(in_stock))))
            self._bump_catalog(conn)

    def in_stock(self, item_ids: Sequence[str], store_id: str | None = None) -> dict[str, bool]:
        """Without store_id: the catalog's stock. With one: that store's stock where known, else the
        item's overall stock. Unknown items count as in stock (no stock feed must not empty the
        recommendations)."""
        ids = [str(i) for i in item_ids]
        conn = self._conn()
        known = dict(self._select_in(conn, f"SELECT {ITEM_ID}, {IN_STOCK} FROM catalog WHERE {ITEM_ID} IN ({{}}) "
                                           f"AND {IN_STOCK} IS NOT NULL", ids))
        if store_id is not None and ids:
            sql = f"SELECT item_id, in_stock FROM store_stock WHERE store_id=? AND item_id IN ({_IN_JSON})"
            known.update(conn.execute(sql, (_store_id(store_id), json.dumps(ids))).fetchall())
        return {i: bool(known.get(i, 1)) for i in ids}

    # -- erasure ------------------------------------------------------------------------------
    def erase_profile(self, profile_id: str) -> int:
        """Delete events, identifiers, state, consent, contacts, decisions, served lists, sentiment; leave
        keyed tombstones.

        Returns the number of events deleted.  Re-sent old events (same id, or an erased identifier with a
        timestamp before now) are suppressed on append and on bulk load, so nothing erased comes back; the
        time of the erasure is kept per profile id (`erased_at`) so that model state learned before it is
        not used for the person if they come back.  No byte is left: the deletes run with
        ``secure_delete=ON`` (deleted cells and freed pages overwritten with zeros) and the WAL, which holds
        earlier images of the pages, is checkpointed and truncated to zero bytes afterwards.
        """
        now = pd.Timestamp.now(tz="UTC").value
        with self._write_lock:
            self._conn().execute("PRAGMA secure_delete=ON")  # every connection has it; stated where it matters
            with self._write() as conn:
                pid = self._canonical_id(conn, profile_id)
                ev_ids = [r[0] for r in conn.execute(f"SELECT event_id FROM events WHERE {PROFILE_ID}=?", (pid,))]
                tokens = [r[0] for r in conn.execute(f"SELECT token FROM tokens WHERE {PROFILE_ID}=?", (pid,))]
                olds = [r[0] for r in conn.execute("SELECT old_id FROM aliases WHERE new_id=?", (pid,))]
                conn.executemany("INSERT OR IGNORE INTO erased_event_keys VALUES (?)",
                                 [(self._keyed(_EVENT_DOMAIN, e),) for e in ev_ids])
                conn.executemany("INSERT OR REPLACE INTO erased_identifier_keys VALUES (?, ?)",
                                 [(self._keyed(_TOKEN_DOMAIN, t), now) for t in tokens])
                conn.executemany("INSERT OR REPLACE INTO erased_profile_keys VALUES (?, ?)",
                                 [(self._keyed(_PROFILE_DOMAIN, p), now) for p in sorted({pid, profile_id, *olds})])
                self._select_in(conn, "DELETE FROM sentiment WHERE event_id IN ({})", ev_ids)
                self._select_in(conn, "DELETE FROM erased_events WHERE event_id IN ({})", ev_ids)  # verbatim: legacy
                for table in ("events", "tokens", "state", "consent", "contacts", "profiles"):
                    conn.execute(f"DELETE FROM {table} WHERE {PROFILE_ID}=?", (pid,))
                # the decision log too (an id merged away may still name rows written before the merge)
                conn.execute(f"DELETE FROM decisions WHERE {PROFILE_ID} IN ({_IN_JSON})",
                             (json.dumps(sorted({pid, profile_id, *olds})),))
                conn.execute(f"DELETE FROM recommendations WHERE {PROFILE_ID} IN ({_IN_JSON})",
                             (json.dumps(sorted({pid, profile_id, *olds})),))
                conn.execute("DELETE FROM aliases WHERE new_id=?", (pid,))
                toks = json.dumps(tokens)
                conn.execute(f"DELETE FROM device_customers WHERE device IN ({_IN_JSON}) OR customer IN ({_IN_JSON})",
                             (toks, toks))
                self._select_in(conn, "DELETE FROM shared_devices WHERE device IN ({})", tokens)
        self._invalidate({pid, profile_id, *olds})
        self._truncate_wal()
        return len(ev_ids)

    def export_profile(self, profile_id: str) -> dict[str, Any]:
        """Everything the store holds about a person, for a data-access request (GDPR art. 15): unguarded
        (the guard decides what serving *shows*; an access request gets all of it), JSON-serialisable
        (times ISO 8601 UTC, missing values null), from one read snapshot.

        Keys: profile_id (canonical; `requested_id` the id asked for), merged_ids (profile ids merged into
        it), events (every stored column, oldest first), identifiers (type, stored value; devices and
        cookies say whether they are marked shared), online_state (the OnlineProfile), consent (purpose,
        granted, updated_at), contacts (channel, ts, key), decisions (the decision log's rows), recommendations
        (the lists served to the person: `recommendations()` rows), sentiment (event_id -> model score), erased_at,
        and notes (what the stored values are: email and phone are held only as keyed hashes).  An id the
        store does not know gives the same keys, empty.
        """
        with self._snapshot() as conn:
            pid = self._canonical_id(conn, profile_id)
            events = self._events(conn, [pid])
            ev_ids = [str(e) for e in events[EVENT_ID].tolist()]
            tokens = [r[0] for r in conn.execute(f"SELECT token FROM tokens WHERE {PROFILE_ID}=? ORDER BY token",
                                                 (pid,))]
            shared = {r[0] for r in self._select_in(conn, "SELECT device FROM shared_devices WHERE device IN ({})",
                                                     tokens)}
            merged = [r[0] for r in conn.execute("SELECT old_id FROM aliases WHERE new_id=? ORDER BY old_id", (pid,))]
            consent = conn.execute(f"SELECT purpose, granted, updated_ns FROM consent WHERE {PROFILE_ID}=? "
                                   "ORDER BY purpose", (pid,)).fetchall()
            contacts = conn.execute(f"SELECT channel, ts_ns, key FROM contacts WHERE {PROFILE_ID}=? "
                                    "ORDER BY ts_ns, rowid", (pid,)).fetchall()
            decided = self._decision_rows(conn, "WHERE profile_id=?", (pid,))
            served = self._served_rows(conn, f"WHERE {PROFILE_ID} IN ({_IN_JSON})", (json.dumps([pid, *merged]),))
            scores = self._select_in(conn, "SELECT event_id, score FROM sentiment WHERE event_id IN ({}) "
                                           "ORDER BY event_id", ev_ids)
            doc = conn.execute(f"SELECT doc FROM state WHERE {PROFILE_ID}=?", (pid,)).fetchone()
            erased = self._erased_ns(conn, sorted({pid, profile_id}))
            state = None if doc is None else to_profile(
                pid, self._current(conn, {pid: json.loads(doc[0])})[pid], erased.get(pid))
        identifiers = []
        for token in tokens:
            col, value = token.split(":", 1)
            entry: dict[str, Any] = {"type": col, "value": value}
            if col in _DEVICE_COLUMNS:
                entry["shared_device"] = token in shared
            identifiers.append(entry)
        hashed = ", ".join(HASHED_IDENTIFIERS)
        last_erased = max(erased.values(), default=None)
        return _jsonable({
            PROFILE_ID: pid,
            "requested_id": profile_id,
            "merged_ids": merged,
            "events": _records(events),
            "identifiers": identifiers,
            "online_state": None if state is None else {f.name: getattr(state, f.name) for f in fields(state)},
            "consent": [{"purpose": p, "granted": bool(g), "updated_at": _dt(t)} for p, g, t in consent],
            "contacts": [{"channel": ch, "ts": _dt(t), "key": k} for ch, t, k in contacts],
            "decisions": _records(_decision_frame(decided)),
            "recommendations": _records(_served_frame(served)),
            "sentiment": dict(scores),
            "erased_at": None if last_erased is None else _dt(last_erased),
            "notes": {
                "hashed_identifiers": f"{hashed} are stored only as keyed hashes (HMAC-SHA256 of the normalised "
                                      "value, 'h:' + 32 hex characters), in identifiers and in events; the store "
                                      "never holds the raw values",
                "shared_device": f"a device or cookie id seen with more than {self.config.max_profiles_per_device} "
                                 "customer ids no longer links profiles",
                "sentiment": "scores in [-1, 1] a model gave the person's review and support texts, by event id",
                "erased_at": "when this profile id was last erased (earlier history deleted), if ever",
            },
        })

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query in the block sees the same committed state."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")  # ends the read snapshot (nothing was written)

    def erased_at(self, profile_id: str) -> dt.datetime | None:
        """When this profile id was last erased (None: never), for serving to refuse model state learned
        before it (a recommender's vector of a person who came back under the same id)."""
        ns = self._erased_ns(self._conn(), [profile_id]).get(profile_id)
        return None if ns is None else _dt(ns)

    def _erased_ns(self, conn: sqlite3.Connection, profile_ids: Sequence[str]) -> dict[str, int]:
        """Time of the last erasure (epoch ns) of those of `profile_ids` ever erased (one query)."""
        if len(profile_ids) == 1:  # the hot path (get_profile on a cache miss): one primary-key read
            (pid,) = profile_ids
            row = conn.execute("SELECT erased_ns FROM erased_profile_keys WHERE digest=?",
                               (self._keyed(_PROFILE_DOMAIN, pid),)).fetchone()
            return {} if row is None else {pid: int(row[0])}
        if not profile_ids or conn.execute("SELECT 1 FROM erased_profile_keys LIMIT 1").fetchone() is None:
            return {}
        by_digest = {self._keyed(_PROFILE_DOMAIN, p): p for p in profile_ids}
        rows = self._select_in(conn, "SELECT digest, erased_ns FROM erased_profile_keys WHERE digest IN ({})",
                               list(by_digest))
        return {by_digest[d]: int(ns) for d, ns in rows}
