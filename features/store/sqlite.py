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
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
from features.schema import (
    EVENT_ID,
    ITEM_ID,
    NUMERIC_COLUMNS,
    PROFILE_ID,
    TS,
    IdentifierHasher,
    event_digest,
)
from features.store.base import FEATURE_INPUT, TOMB_EVENT, TOMB_PROFILE, TOMB_TOKEN, ProfileStoreBase
from features.store.codec import (
    _EVENT_COLUMNS,
    _STORED,
    _Batch,
    _batch_from_rows,
    _decision_frame,
    _frame,
    _served_frame,
    _store_id,
    _to_ns,
)
from features.store.config import StoreConfig
from features.store.fold import (
    _STATE_VERSION,
    to_profile,
)
from features.store.model import (
    CatalogUpsert,
    ServedList,
)

#: The events column holding `schema.event_digest` of the stored row. NULL where not computed at insert: on the
#: vectorised path (a digest is ~15 us of Python per row, +70% on a bulk load) and in files of older releases;
#: then it is computed from the stored row, and kept, when the id is sent again.
_DIGEST = "content_digest"
_IN_JSON = "SELECT value FROM json_each(?)"  # one bound JSON array instead of thousands of parameters
#: Version of the file layout (PRAGMA user_version): 0 = before the catalog, typed entries and contact keys;
#: 2 = before keyed tombstones (erased event ids verbatim, erased identifiers as plain SHA-256 digests);
#: 3 = before state docs v3 (declared preferences, pickups, return reasons: rebuilt from the events on open).
_FILE_VERSION = 4
_REBUILD_CHUNK = 20_000  # profiles whose states are rebuilt per query when a file is migrated
logger = logging.getLogger(__name__)
_DEFAULT_CONFIG = StoreConfig()  # frozen: one shared default


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



_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _doc(state: dict[str, Any]) -> str:
    return _JSON.encode(state)



class SQLiteProfileStore(ProfileStoreBase):
    """The embedded ProfileStore (see module docstring for durability, threading and speed): the storage
    primitives of `ProfileStoreBase` in SQL, plus the optional capabilities (catalog, decision log, served
    lists, sentiment)."""

    def __init__(self, path: str | Path, hasher: IdentifierHasher | None = None,
                 config: StoreConfig = _DEFAULT_CONFIG, *, cache: bool = True) -> None:
        super().__init__(hasher, config, cache=cache)
        self.path = str(path)
        self._local = threading.local()
        self._write_lock = threading.RLock()
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
                                 [(self._tomb(TOMB_EVENT, e),) for e in ids])
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


    @staticmethod
    def _select_in(conn: sqlite3.Connection, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run `sql` with its `IN ({})` bound to `values` (one JSON array, one query)."""
        if not len(values):
            return []
        return conn.execute(sql.format(_IN_JSON), (json.dumps(list(values)),)).fetchall()


    # -- events (primitives) --------------------------------------------------------------------
    def _read(self) -> sqlite3.Connection:
        return self._conn()

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

    def _insert_events(self, conn: sqlite3.Connection, b: _Batch, pids: Sequence[str],
                       digests: Sequence[str | None]) -> None:
        conn.executemany(_INSERT_EVENTS, zip(b.cols[EVENT_ID], pids, b.ts, *(b.cols[c] for c in _STORED[1:]),
                                             digests, strict=True))

    def _event_rows(self, conn: sqlite3.Connection, profile_ids: Sequence[str] | None) -> list[tuple[Any, ...]]:
        if profile_ids is None:
            return conn.execute(f"SELECT {_SELECT_NAMES} FROM events ORDER BY ts_ns, event_id").fetchall()
        return self._select_in(conn, f"SELECT {_SELECT_NAMES} FROM events WHERE {PROFILE_ID} IN ({{}}) "
                                     "ORDER BY ts_ns, event_id", list(profile_ids))

    def _iter_event_rows(self, batch_size: int) -> Iterator[list[tuple[Any, ...]]]:
        cursor = self._conn().execute(f"SELECT {_SELECT_NAMES} FROM events ORDER BY ts_ns, event_id")
        try:  # one read statement: one snapshot
            while rows := cursor.fetchmany(batch_size):
                yield rows
        finally:
            cursor.close()

    def _feature_input(self, conn: sqlite3.Connection, profile_ids: Sequence[str] | None, as_of_ns: int
                       ) -> tuple[pd.DataFrame, pd.Series | None]:
        """One SQL read: only the columns build_profiles reads (event ids and the sentiment join only when
        stored sentiment exists), each profile's events in (ts, event_id) order."""
        scored = conn.execute("SELECT 1 FROM sentiment LIMIT 1").fetchone() is not None
        cols = [c for c in FEATURE_INPUT if scored or c != EVENT_ID]
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
        return _frame(rows, cols), sent

    def _event_owners(self, conn: sqlite3.Connection, event_ids: Sequence[str]) -> dict[str, str]:
        return dict(self._select_in(conn, f"SELECT event_id, {PROFILE_ID} FROM events WHERE event_id IN ({{}})",
                                    list(event_ids)))

    def has_events(self) -> bool:
        """Whether any event is stored (one row read: seeding asks this of stores of any size)."""
        return self._conn().execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None

    # -- sentiment (primitives) -------------------------------------------------------------------
    def _stored_scores(self, conn: sqlite3.Connection, event_ids: Sequence[str]) -> dict[str, float]:
        """Stored model sentiment of these events (none read when the store holds no score at all)."""
        if not len(event_ids) or conn.execute("SELECT 1 FROM sentiment LIMIT 1").fetchone() is None:
            return {}
        return dict(self._select_in(conn, "SELECT event_id, score FROM sentiment WHERE event_id IN ({})",
                                    list(event_ids)))

    def _write_scores(self, conn: sqlite3.Connection, rows: Sequence[tuple[str, float]]) -> None:
        conn.executemany("INSERT OR REPLACE INTO sentiment VALUES (?, ?)", rows)

    # -- identity (primitives) --------------------------------------------------------------------
    def _token_profiles(self, conn: sqlite3.Connection, tokens: Sequence[str]) -> dict[str, str]:
        if not tokens or conn.execute("SELECT 1 FROM tokens LIMIT 1").fetchone() is None:
            return {}
        return dict(self._select_in(conn, f"SELECT token, {PROFILE_ID} FROM tokens WHERE token IN ({{}})",
                                    list(tokens)))

    def _profile_tokens(self, conn: sqlite3.Connection, profile_ids: Sequence[str]) -> list[tuple[str, str]]:
        return self._select_in(conn, f"SELECT token, {PROFILE_ID} FROM tokens WHERE {PROFILE_ID} IN ({{}}) "
                                     "ORDER BY token", list(profile_ids))

    def _put_tokens(self, conn: sqlite3.Connection, rows: Sequence[tuple[str, str]]) -> None:
        conn.executemany(f"INSERT OR REPLACE INTO tokens (token, {PROFILE_ID}) VALUES (?, ?)", rows)

    def _shared_devices(self, conn: sqlite3.Connection, devices: Sequence[str]) -> set[str]:
        if conn.execute("SELECT 1 FROM shared_devices LIMIT 1").fetchone() is None:
            return set()
        return {r[0] for r in self._select_in(conn, "SELECT device FROM shared_devices WHERE device IN ({})",
                                              list(devices))}

    def _record_device_pairs(self, conn: sqlite3.Connection, pairs: Sequence[tuple[str, str]]) -> dict[str, int]:
        conn.executemany("INSERT OR IGNORE INTO device_customers VALUES (?, ?)", pairs)
        return dict(self._select_in(conn, "SELECT device, COUNT(*) FROM device_customers WHERE device IN ({}) "
                                          "GROUP BY device", sorted({d for d, _ in pairs})))

    def _mark_shared_devices(self, conn: sqlite3.Connection, devices: Sequence[str]) -> None:
        conn.executemany("INSERT OR IGNORE INTO shared_devices VALUES (?)", [(d,) for d in devices])

    def _min_tokens(self, conn: sqlite3.Connection, profile_ids: Sequence[str]) -> dict[str, str]:
        return dict(self._select_in(conn, f"SELECT {PROFILE_ID}, min_token FROM profiles "
                                          f"WHERE {PROFILE_ID} IN ({{}})", list(profile_ids)))

    def _put_profiles(self, conn: sqlite3.Connection, rows: Sequence[tuple[str, str]]) -> None:
        conn.executemany(f"INSERT INTO profiles ({PROFILE_ID}, min_token) VALUES (?, ?) ON CONFLICT({PROFILE_ID}) "
                         "DO UPDATE SET min_token=excluded.min_token", rows)

    def _merge_profile(self, conn: sqlite3.Connection, old: str, pid: str) -> None:
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

    def _canonical_id(self, conn: sqlite3.Connection, profile_id: str) -> str:
        row = conn.execute("SELECT new_id FROM aliases WHERE old_id=?", (profile_id,)).fetchone()
        return row[0] if row else profile_id

    def _aliases_of(self, conn: sqlite3.Connection, profile_id: str) -> list[str]:
        return [r[0] for r in conn.execute("SELECT old_id FROM aliases WHERE new_id=? ORDER BY old_id", (profile_id,))]

    # -- state docs (primitives) ------------------------------------------------------------------
    def _state_docs(self, conn: sqlite3.Connection, profile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if len(profile_ids) == 1:  # the hot path (get_profile on a cache miss): one primary-key read
            row = conn.execute(f"SELECT doc FROM state WHERE {PROFILE_ID}=?", (profile_ids[0],)).fetchone()
            return {} if row is None else {profile_ids[0]: json.loads(row[0])}
        return {p: json.loads(d) for p, d in self._select_in(
            conn, f"SELECT {PROFILE_ID}, doc FROM state WHERE {PROFILE_ID} IN ({{}})", list(profile_ids))}

    def _states_present(self, conn: sqlite3.Connection, profile_ids: Sequence[str]) -> set[str]:
        if conn.execute("SELECT 1 FROM state LIMIT 1").fetchone() is None:
            return set()
        return {r[0] for r in self._select_in(conn, f"SELECT {PROFILE_ID} FROM state WHERE {PROFILE_ID} IN ({{}})",
                                              list(profile_ids))}

    def _put_states(self, conn: sqlite3.Connection, docs: Mapping[str, dict[str, Any]]) -> None:
        conn.executemany(f"INSERT OR REPLACE INTO state ({PROFILE_ID}, doc, last_ns) VALUES (?, ?, ?)",
                         [(p, _doc(s), s["last"]) for p, s in docs.items()])

    def _state_ids(self, conn: sqlite3.Connection) -> list[str]:
        return [p for (p,) in conn.execute(f"SELECT {PROFILE_ID} FROM state ORDER BY {PROFILE_ID}")]

    # -- consent and contacts (primitives) --------------------------------------------------------
    def _consent_rows(self, conn: sqlite3.Connection, profile_ids: Sequence[str] | None
                      ) -> list[tuple[str, str, bool, int]]:
        sql = f"SELECT {PROFILE_ID}, purpose, granted, updated_ns FROM consent"
        order = f" ORDER BY {PROFILE_ID}, purpose"
        if profile_ids is None:
            rows = conn.execute(sql + order).fetchall()
        elif len(profile_ids) == 1:
            rows = conn.execute(sql + f" WHERE {PROFILE_ID}=?" + order, (profile_ids[0],)).fetchall()
        else:
            rows = self._select_in(conn, sql + f" WHERE {PROFILE_ID} IN ({{}})" + order, list(profile_ids))
        return [(p, k, bool(g), int(t)) for p, k, g, t in rows]

    def _put_consent(self, conn: sqlite3.Connection, profile_id: str, purpose: str, granted: bool,
                     now_ns: int) -> None:
        conn.execute("INSERT OR REPLACE INTO consent VALUES (?, ?, ?, ?)", (profile_id, purpose, int(granted), now_ns))

    def _reserve(self, profile_id: str, channel: str, now_ns: int, limits: Sequence[tuple[int, int]],
                 key: str | None) -> bool:
        with self._write() as conn:  # BEGIN IMMEDIATE: the check and the insert are one transaction
            if key is not None and conn.execute(
                    f"SELECT 1 FROM contacts WHERE {PROFILE_ID}=? AND channel=? AND key=? LIMIT 1",
                    (profile_id, channel, key)).fetchone():
                return True
            for window, most in limits:
                (n,) = conn.execute(f"SELECT COUNT(*) FROM contacts WHERE {PROFILE_ID}=? AND channel=? "
                                    "AND ts_ns > ? AND ts_ns < ?",
                                    (profile_id, channel, now_ns - window, now_ns + window)).fetchone()
                if n >= most:
                    return False
            conn.execute(f"INSERT INTO contacts ({PROFILE_ID}, channel, ts_ns, key) VALUES (?, ?, ?, ?)",
                         (profile_id, channel, now_ns, key))
        return True

    def _contacts(self, conn: sqlite3.Connection, profile_id: str) -> list[tuple[str, int, str | None]]:
        return conn.execute(f"SELECT channel, ts_ns, key FROM contacts WHERE {PROFILE_ID}=? ORDER BY ts_ns, rowid",
                            (profile_id,)).fetchall()

    # -- tombstones and erasure (primitives) ------------------------------------------------------
    _TOMB_TABLES = {TOMB_EVENT: "erased_event_keys", TOMB_TOKEN: "erased_identifier_keys",
                    TOMB_PROFILE: "erased_profile_keys"}

    def _tombstones(self, conn: sqlite3.Connection, kind: str, digests: Sequence[str]) -> dict[str, int]:
        table = self._TOMB_TABLES[kind]
        when = "0" if kind == TOMB_EVENT else "erased_ns"  # event tombstones keep no time
        if len(digests) == 1:  # the hot path (get_profile on a cache miss): one primary-key read
            row = conn.execute(f"SELECT {when} FROM {table} WHERE digest=?", (digests[0],)).fetchone()
            return {} if row is None else {digests[0]: int(row[0])}
        if not digests or conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None:
            return {}
        return {d: int(ns) for d, ns in self._select_in(
            conn, f"SELECT digest, {when} FROM {table} WHERE digest IN ({{}})", list(digests))}

    def _put_tombstones(self, conn: sqlite3.Connection, kind: str, rows: Sequence[tuple[str, int]]) -> None:
        if kind == TOMB_EVENT:
            conn.executemany("INSERT OR IGNORE INTO erased_event_keys VALUES (?)", [(d,) for d, _ in rows])
        else:
            conn.executemany(f"INSERT OR REPLACE INTO {self._TOMB_TABLES[kind]} VALUES (?, ?)", rows)

    def _legacy_erased_events(self, conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
        """Verbatim erased ids an older release wrote into this file after it was migrated."""
        if not ids or conn.execute("SELECT 1 FROM erased_events LIMIT 1").fetchone() is None:
            return set()
        return {r[0] for r in self._select_in(conn, "SELECT event_id FROM erased_events WHERE event_id IN ({})",
                                              list(ids))}

    def _legacy_token_erasures(self, conn: sqlite3.Connection, tokens: Sequence[str]) -> dict[str, int]:
        """Plain SHA-256 tombstones of files before version 3 (they cannot be re-keyed, so are checked too)."""
        if not tokens or conn.execute("SELECT 1 FROM erased_tokens LIMIT 1").fetchone() is None:
            return {}
        by_digest = {_legacy_digest(t): t for t in tokens}
        return {by_digest[d]: int(ns) for d, ns in self._select_in(
            conn, "SELECT digest, erased_ns FROM erased_tokens WHERE digest IN ({})", list(by_digest))}

    def _erasure_begins(self) -> None:
        self._conn().execute("PRAGMA secure_delete=ON")  # every connection has it; stated where it matters

    def _erasure_done(self) -> None:
        self._truncate_wal()

    def _delete_person(self, conn: sqlite3.Connection, pid: str, all_ids: Sequence[str], ev_ids: Sequence[str],
                       tokens: Sequence[str]) -> None:
        """The deletes run with ``secure_delete=ON`` (deleted cells and freed pages overwritten with zeros); the
        WAL, which holds earlier images of the pages, is checkpointed and truncated afterwards."""
        self._select_in(conn, "DELETE FROM sentiment WHERE event_id IN ({})", list(ev_ids))
        self._select_in(conn, "DELETE FROM erased_events WHERE event_id IN ({})", list(ev_ids))  # verbatim: legacy
        for table in ("events", "tokens", "state", "consent", "contacts", "profiles"):
            conn.execute(f"DELETE FROM {table} WHERE {PROFILE_ID}=?", (pid,))
        # the decision log too (an id merged away may still name rows written before the merge)
        ids = json.dumps(list(all_ids))
        conn.execute(f"DELETE FROM decisions WHERE {PROFILE_ID} IN ({_IN_JSON})", (ids,))
        conn.execute(f"DELETE FROM recommendations WHERE {PROFILE_ID} IN ({_IN_JSON})", (ids,))
        conn.execute("DELETE FROM aliases WHERE new_id=?", (pid,))
        toks = json.dumps(list(tokens))
        conn.execute(f"DELETE FROM device_customers WHERE device IN ({_IN_JSON}) OR customer IN ({_IN_JSON})",
                     (toks, toks))
        self._select_in(conn, "DELETE FROM shared_devices WHERE device IN ({})", list(tokens))


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
            events = _frame(self._event_rows(conn, [pid]), list(_STORED))
            ev_ids = [str(e) for e in events[EVENT_ID].tolist()]
            tokens = [t for t, _ in self._profile_tokens(conn, [pid])]
            shared = self._shared_devices(conn, tokens)
            merged = self._aliases_of(conn, pid)
            consent = [(p, g, t) for _, p, g, t in self._consent_rows(conn, [pid])]
            contacts = self._contacts(conn, pid)
            decided = self._decision_rows(conn, "WHERE profile_id=?", (pid,))
            served = self._served_rows(conn, f"WHERE {PROFILE_ID} IN ({_IN_JSON})", (json.dumps([pid, *merged]),))
            scores = dict(sorted(self._stored_scores(conn, ev_ids).items()))
            doc = self._state_docs(conn, [pid]).get(pid)
            erased = self._erased_ns(conn, sorted({pid, profile_id}))
            state = None if doc is None else to_profile(pid, self._current(conn, {pid: doc})[pid], erased.get(pid))
        return self._export_document(pid=pid, requested=profile_id, merged=merged, events=events, tokens=tokens,
                                     shared=shared, state=state, consent=consent, contacts=contacts,
                                     decisions=_decision_frame(decided), served=_served_frame(served),
                                     scores=scores, erased=erased)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query in the block sees the same committed state."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")  # ends the read snapshot (nothing was written)
