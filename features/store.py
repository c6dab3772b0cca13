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
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd

from features.profiles import NEVER_DAYS, ProfileConfig, build_profiles
from features.schema import (
    ADD_TO_CART,
    CANONICAL_COLUMNS,
    CATEGORY,
    CHANNEL,
    COOKIE_ID,
    CUSTOMER_ID,
    DEVICE_ID,
    EMAIL,
    EVENT_ID,
    EVENT_TYPE,
    IDENTIFIER_COLUMNS,
    ITEM_ID,
    NUMERIC_COLUMNS,
    OPTIONAL_COLUMNS,
    PHONE,
    PROFILE_ID,
    PURCHASE,
    RATING,
    REMOVE_FROM_CART,
    RETURN,
    TS,
    VIEW,
    IdentifierHasher,
    empty_events,
    normalise_email,
    normalise_phone,
    validate_events,
)

_EVENT_COLUMNS: tuple[str, ...] = CANONICAL_COLUMNS + OPTIONAL_COLUMNS
_DEVICE_COLUMNS = (DEVICE_ID, COOKIE_ID)
_NS = 10**9
_SQL_CHUNK = 900  # bound parameters per IN (...) query


class ViewEntry(NamedTuple):
    item_id: str
    category: str | None
    ts: dt.datetime


class ItemEntry(NamedTuple):
    item_id: str
    ts: dt.datetime


@dataclass(frozen=True)
class OnlineProfile:
    """What serving needs about a person right now (no raw contact details, identifier *types* only)."""

    profile_id: str
    recent_views: tuple[ViewEntry, ...]  # newest first
    cart_items: tuple[ItemEntry, ...]  # in the cart now (added, not removed or bought)
    purchases: tuple[ItemEntry, ...]  # newest first
    returns: tuple[ItemEntry, ...]  # newest first
    category_counts: Mapping[str, int]
    channel_last_seen: Mapping[str, dt.datetime]
    last_negative_ts: dt.datetime | None
    identifiers: tuple[str, ...]  # identifier columns seen, e.g. ("customer_id", "email")
    updated_at: dt.datetime  # time of the latest event
    replenish_days: Mapping[str, float] = field(default_factory=dict)  # item -> own median re-buy interval

    @property
    def cart(self) -> tuple[ItemEntry, ...]:
        return self.cart_items


@dataclass(frozen=True)
class AppendResult:
    accepted: int  # new events stored
    duplicates: int  # already stored (idempotent re-send) or repeated in the batch
    profile_ids: tuple[str, ...]  # profiles the accepted events belong to (after merges)
    rejected: int = 0  # rows that failed validation (see errors)
    suppressed: int = 0  # events of erased profiles (tombstoned), never stored
    merged: tuple[str, ...] = ()  # profile ids that were merged into another
    errors: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    synchronous: str = "NORMAL"  # "FULL" to survive power loss, not only process crashes
    max_profiles_per_device: int = 3
    recent_views: int = 50
    max_purchases: int = 200
    cache_profiles: int = 100_000  # online states and feature rows kept in memory (LRU)
    feature_granularity_s: int = 60  # as_of=None means now floored to this, so cached rows are reused
    busy_timeout_ms: int = 30_000
    profile_config: ProfileConfig = ProfileConfig()

    def __post_init__(self) -> None:
        if self.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be OFF, NORMAL, FULL or EXTRA")
        if self.max_profiles_per_device < 1 or self.feature_granularity_s < 1:
            raise ValueError("max_profiles_per_device and feature_granularity_s must be positive")


class ProfileStore(Protocol):
    def append_events(self, events: pd.DataFrame) -> AppendResult: ...
    def resolve(self, identifiers: Mapping[str, str]) -> str | None: ...
    def get_profile(self, profile_id: str) -> OnlineProfile | None: ...
    def events_for(self, profile_ids: Sequence[str]) -> pd.DataFrame: ...
    def features_for(self, profile_ids: Sequence[str], as_of: Any = None) -> pd.DataFrame: ...
    def set_consent(self, profile_id: str, purpose: str, granted: bool) -> None: ...
    def get_consent(self, profile_id: str) -> dict[str, bool]: ...
    def reserve_contact(self, profile_id: str, channel: str, now: Any, caps: Mapping[Any, int]) -> bool: ...
    def erase_profile(self, profile_id: str) -> int: ...
    def export_events(self) -> pd.DataFrame: ...
    def set_stock(self, item_id: str, in_stock: bool) -> None: ...
    def in_stock(self, item_ids: Sequence[str]) -> dict[str, bool]: ...


def profile_id_for(min_token: str) -> str:
    """The component id rule shared with features/identity.py."""
    return "p_" + hashlib.sha1(min_token.encode()).hexdigest()[:16]


def _tomb(token: str) -> str:
    """Tombstones keep a digest, not the identifier itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def _to_ns(value: Any) -> int:
    """Seconds since epoch (float), datetime, Timestamp or ISO string -> epoch ns (UTC)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return int(round(float(value) * _NS))
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.as_unit("ns").value)


def _window_ns(window: Any) -> int:
    """A cap window: Timedelta/timedelta, pandas offset string ("24h", "7D") or seconds."""
    if isinstance(window, (int, float, np.integer, np.floating)) and not isinstance(window, bool):
        ns = int(float(window) * _NS)
    else:
        ns = int(pd.Timedelta(window).value)
    if ns <= 0:
        raise ValueError(f"cap window must be positive, got {window!r}")
    return ns


def _dt(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / _NS, tz=dt.UTC)


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, {PROFILE_ID} TEXT NOT NULL, ts_ns INTEGER NOT NULL,
    {", ".join(f'"{c}" {"REAL" if c in NUMERIC_COLUMNS else "TEXT"}' for c in _EVENT_COLUMNS if c not in (EVENT_ID, TS))}
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
CREATE TABLE IF NOT EXISTS contacts ({PROFILE_ID} TEXT NOT NULL, channel TEXT NOT NULL, ts_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS contacts_key ON contacts({PROFILE_ID}, channel, ts_ns);
CREATE TABLE IF NOT EXISTS stock (item_id TEXT PRIMARY KEY, in_stock INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sentiment (event_id TEXT PRIMARY KEY, score REAL NOT NULL);
CREATE TABLE IF NOT EXISTS erased_events (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS erased_tokens (digest TEXT PRIMARY KEY, erased_ns INTEGER NOT NULL);
"""


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = self.parent.setdefault(x, x)
        while root != self.parent[root]:
            root = self.parent[root]
        while x != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _empty_state() -> dict[str, Any]:
    return {"views": [], "cart": {}, "purchases": [], "returns": [], "cats": {}, "chan": {}, "neg": None,
            "ids": [], "last": 0}


class SQLiteProfileStore:
    """The embedded ProfileStore (see module docstring for durability and threading)."""

    def __init__(self, path: str | Path, hasher: IdentifierHasher | None = None,
                 config: StoreConfig = StoreConfig(), *, cache: bool = True) -> None:
        self.path = str(path)
        self.hasher = hasher or IdentifierHasher.from_env()
        self.config = config
        self._cache_on = cache
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._cache_lock = threading.Lock()
        self._state_cache: OrderedDict[str, OnlineProfile | None] = OrderedDict()
        self._feat_cache: OrderedDict[tuple[str, int], tuple[Any, ...]] = OrderedDict()
        self._feat_columns: list[str] | None = None
        with self._write_lock:
            self._conn().executescript(_SCHEMA)

    # -- connections --------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.config.busy_timeout_ms / 1000,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.config.synchronous.upper()}")
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

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _invalidate(self, pids: set[str]) -> None:
        if not pids:
            return
        with self._cache_lock:
            for pid in pids:
                self._state_cache.pop(pid, None)
            for key in [k for k in self._feat_cache if k[0] in pids]:
                del self._feat_cache[key]

    @staticmethod
    def _select_in(conn: sqlite3.Connection, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for i in range(0, len(values), _SQL_CHUNK):
            chunk = list(values[i:i + _SQL_CHUNK])
            rows += conn.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return rows

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
                norm = normalise_email(value) if col == EMAIL else normalise_phone(value)
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

    def _canonical_id(self, conn: sqlite3.Connection, profile_id: str) -> str:
        row = conn.execute("SELECT new_id FROM aliases WHERE old_id=?", (profile_id,)).fetchone()
        return row[0] if row else profile_id

    def _link(self, conn: sqlite3.Connection,
              ev: pd.DataFrame) -> tuple[np.ndarray, set[str], list[str], set[str]]:
        """Assign a profile id to every row of ev (time-ordered); returns ids, touched profiles, merged ids."""
        tok_cols = [c for c in IDENTIFIER_COLUMNS if c in ev]
        per_row: list[list[str]] = [[] for _ in range(len(ev))]
        for c in tok_cols:
            vals = ev[c].to_numpy(dtype=object)
            for i in np.flatnonzero(pd.notna(vals)):
                per_row[i].append(f"{c}:{vals[i]}")
        all_tokens = sorted({t for ts in per_row for t in ts})
        known = dict(self._select_in(conn, f"SELECT token, {PROFILE_ID} FROM tokens WHERE token IN ({{}})",
                                     all_tokens))

        # shared devices: a device/cookie with more customer ids than allowed stops linking
        shared = {r[0] for r in self._select_in(conn, "SELECT device FROM shared_devices WHERE device IN ({})",
                                                 [t for t in all_tokens if t.split(":", 1)[0] in _DEVICE_COLUMNS])}
        pairs = {(t, c) for ts in per_row for t in ts if t.split(":", 1)[0] in _DEVICE_COLUMNS
                 for c in ts if c.startswith(CUSTOMER_ID + ":")}
        if pairs:
            conn.executemany("INSERT OR IGNORE INTO device_customers VALUES (?, ?)", sorted(pairs))
            devices = sorted({d for d, _ in pairs} - shared)
            for d, n in self._select_in(conn, "SELECT device, COUNT(*) FROM device_customers WHERE device IN ({})"
                                              " GROUP BY device", devices):
                if n > self.config.max_profiles_per_device:
                    shared.add(d)
                    conn.execute("INSERT OR IGNORE INTO shared_devices VALUES (?)", (d,))

        uf = _UnionFind()
        for ts in per_row:
            linking = [t for t in ts if t not in shared] or ts[:1]
            for t in linking:
                uf.find(t)
                if t in known:
                    uf.union(t, "pid:" + known[t])
            for t in linking[1:]:
                uf.union(linking[0], t)
        # component -> (existing profiles, min token)
        comp_pids: dict[str, set[str]] = {}
        comp_min: dict[str, str] = {}
        for node in list(uf.parent):
            root = uf.find(node)
            if node.startswith("pid:"):
                comp_pids.setdefault(root, set()).add(node[4:])
            else:
                comp_min[root] = min(comp_min.get(root, node), node)
        olds = sorted({p for ps in comp_pids.values() for p in ps})
        min_of = dict(self._select_in(conn, f"SELECT {PROFILE_ID}, min_token FROM profiles "
                                            f"WHERE {PROFILE_ID} IN ({{}})", olds))
        final: dict[str, str] = {}
        touched: set[str] = set()
        merged: list[str] = []
        merged_into: set[str] = set()
        for root, m in comp_min.items():
            existing = comp_pids.get(root, set())
            mins = [m] + [min_of[p] for p in existing if p in min_of]
            low = min(mins)
            pid = profile_id_for(low)
            final[root] = pid
            touched.add(pid)
            conn.execute(f"INSERT INTO profiles ({PROFILE_ID}, min_token) VALUES (?, ?) ON CONFLICT({PROFILE_ID}) "
                         "DO UPDATE SET min_token=excluded.min_token", (pid, low))
            for old in existing - {pid}:  # merge: re-key the history, keep it all
                conn.execute(f"UPDATE tokens SET {PROFILE_ID}=? WHERE {PROFILE_ID}=?", (pid, old))
                conn.execute(f"UPDATE events SET {PROFILE_ID}=? WHERE {PROFILE_ID}=?", (pid, old))
                for table in ("consent", "contacts"):
                    conn.execute(f"UPDATE OR IGNORE {table} SET {PROFILE_ID}=? WHERE {PROFILE_ID}=?", (pid, old))
                    conn.execute(f"DELETE FROM {table} WHERE {PROFILE_ID}=?", (old,))
                conn.execute(f"DELETE FROM state WHERE {PROFILE_ID}=?", (old,))
                conn.execute(f"DELETE FROM profiles WHERE {PROFILE_ID}=?", (old,))
                conn.execute("UPDATE aliases SET new_id=? WHERE new_id=?", (pid, old))
                conn.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?)", (old, pid))
                merged.append(old)
                merged_into.add(pid)
        new_tokens = [(t, final[uf.find(t)]) for t in all_tokens
                      if t in uf.parent and (t not in known or known[t] != final[uf.find(t)])]
        conn.executemany(f"INSERT OR REPLACE INTO tokens (token, {PROFILE_ID}) VALUES (?, ?)", new_tokens)
        pids = np.array([final[uf.find(([t for t in ts if t not in shared] or ts[:1])[0])] for ts in per_row],
                        dtype=object)
        return pids, touched, merged, merged_into

    # -- writes -------------------------------------------------------------------------------
    def append_events(self, events: pd.DataFrame, sentiment: pd.Series | None = None) -> AppendResult:
        """Validate, de-duplicate, link and store a batch in one transaction; durable on return."""
        checked = validate_events(events, self.hasher, allow_unknown_columns=PROFILE_ID in events)
        ev = checked.valid
        errors = tuple(checked.error_records())
        n_in = len(ev)
        batch_dups = int(events[EVENT_ID].duplicated().sum()) if EVENT_ID in events else 0
        if not n_in:
            return AppendResult(0, batch_dups, (), checked.n_rejected, 0, (), errors)
        ev = ev.drop(columns=[PROFILE_ID], errors="ignore").sort_values(TS, kind="stable").reset_index(drop=True)
        with self._write() as conn:
            ids = ev[EVENT_ID].astype(str).tolist()
            seen = {r[0] for r in self._select_in(conn, "SELECT event_id FROM events WHERE event_id IN ({})", ids)}
            erased = {r[0] for r in self._select_in(conn, "SELECT event_id FROM erased_events WHERE event_id IN ({})",
                                                    ids)}
            keep = ~ev[EVENT_ID].isin(seen | erased).to_numpy()
            suppressed = int(ev[EVENT_ID].isin(erased - seen).sum())
            ev = ev.loc[keep].reset_index(drop=True)
            ev, late = self._drop_tombstoned(conn, ev)
            suppressed += late
            dups = len(seen) + batch_dups
            if not len(ev):
                return AppendResult(0, dups, (), checked.n_rejected, suppressed, (), errors)
            pids, touched, merged, merged_into = self._link(conn, ev)
            ev = ev.assign(**{PROFILE_ID: pids})
            self._insert_events(conn, ev)
            if sentiment is not None and len(sentiment):
                conn.executemany("INSERT OR REPLACE INTO sentiment VALUES (?, ?)",
                                 [(str(k), float(v)) for k, v in sentiment.items()])
            self._update_states(conn, ev, merged_into)
        self._invalidate(touched | set(merged))
        return AppendResult(len(ev), dups, tuple(sorted(set(pids))), checked.n_rejected, suppressed,
                            tuple(merged), errors)

    def load_events(self, events: pd.DataFrame, batch_size: int = 50_000, progress: bool = True) -> AppendResult:
        """Bulk seeding (demo, benchmarks): append in large batches, one transaction each."""
        from tqdm.auto import tqdm

        acc = dups = rej = sup = 0
        pids: set[str] = set()
        merged: list[str] = []
        ordered = events.sort_values(TS, kind="stable") if TS in events else events
        for start in tqdm(range(0, len(ordered), batch_size), disable=not progress, desc="loading events"):
            r = self.append_events(ordered.iloc[start:start + batch_size])
            acc, dups, rej, sup = acc + r.accepted, dups + r.duplicates, rej + r.rejected, sup + r.suppressed
            pids |= set(r.profile_ids)
            merged += r.merged
        pids -= set(merged)
        return AppendResult(acc, dups, tuple(sorted(pids)), rej, sup, tuple(merged))

    def _drop_tombstoned(self, conn: sqlite3.Connection, ev: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        """Events carrying an erased identifier and older than its erasure never come back."""
        if not len(ev) or conn.execute("SELECT 1 FROM erased_tokens LIMIT 1").fetchone() is None:
            return ev, 0
        drop = np.zeros(len(ev), dtype=bool)
        ts_ns = ev[TS].dt.as_unit("ns").array.asi8
        for c in IDENTIFIER_COLUMNS:
            if c not in ev:
                continue
            vals = ev[c].to_numpy(dtype=object)
            idx = np.flatnonzero(pd.notna(vals))
            digests = [_tomb(f"{c}:{vals[i]}") for i in idx]
            when = dict(self._select_in(conn, "SELECT digest, erased_ns FROM erased_tokens WHERE digest IN ({})",
                                        sorted(set(digests))))
            for i, d in zip(idx, digests, strict=True):
                if d in when and ts_ns[i] <= when[d]:
                    drop[i] = True
        return ev.loc[~drop].reset_index(drop=True), int(drop.sum())

    def _insert_events(self, conn: sqlite3.Connection, ev: pd.DataFrame) -> None:
        cols = [c for c in _EVENT_COLUMNS if c != TS]
        data = {c: (ev[c].astype(object).where(ev[c].notna(), None).tolist() if c in ev else [None] * len(ev))
                for c in cols}
        ts_ns = ev[TS].dt.as_unit("ns").array.asi8.tolist()
        rows = zip(data[EVENT_ID], ev[PROFILE_ID].tolist(), ts_ns, *(data[c] for c in cols if c != EVENT_ID),
                   strict=True)
        names = ", ".join(f'"{c}"' for c in [EVENT_ID, PROFILE_ID, "ts_ns"] + [c for c in cols if c != EVENT_ID])
        conn.executemany(f"INSERT OR IGNORE INTO events ({names}) VALUES ({','.join('?' * (len(cols) + 2))})", rows)

    # -- online state -------------------------------------------------------------------------
    @staticmethod
    def _columns(ev: pd.DataFrame) -> dict[str, np.ndarray]:
        """The few columns the online state needs, as plain arrays (once per batch, not per profile)."""
        cols: dict[str, np.ndarray] = {}
        for c in (EVENT_TYPE, CHANNEL, ITEM_ID, CATEGORY):
            cols[c] = (ev[c].astype(object).where(ev[c].notna(), None).to_numpy() if c in ev
                       else np.full(len(ev), None, dtype=object))
        cols[RATING] = ev[RATING].to_numpy(dtype=float) if RATING in ev else np.full(len(ev), np.nan)
        cols[TS] = np.asarray(ev[TS].dt.as_unit("ns").array.asi8)
        cols["_ids"] = np.array([",".join(c for c in IDENTIFIER_COLUMNS if c in ev and pd.notna(r[c]))
                                 for r in ev[[c for c in IDENTIFIER_COLUMNS if c in ev]].to_dict("records")]
                                if len(ev) else [], dtype=object)
        return cols

    def _apply(self, state: dict[str, Any], cols: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, Any]:
        """Fold time-ordered events (rows of the batch arrays) into the JSON state."""
        cfg = self.config
        neg_cut = cfg.profile_config.negative_threshold
        ids = set(state["ids"])
        etypes, chans, items, cats = cols[EVENT_TYPE], cols[CHANNEL], cols[ITEM_ID], cols[CATEGORY]
        ratings, tss, idcols = cols[RATING], cols[TS], cols["_ids"]
        for i in rows:
            t = int(tss[i])
            etype, item, cat, chan = etypes[i], items[i], cats[i], chans[i]
            ids.update(x for x in idcols[i].split(",") if x)
            state["chan"][chan] = max(state["chan"].get(chan, 0), t)
            state["last"] = max(state["last"], t)
            if cat is not None:
                state["cats"][cat] = state["cats"].get(cat, 0) + 1
            if etype == VIEW and item is not None:
                state["views"].append([item, cat, t])
            elif etype == ADD_TO_CART and item is not None:
                state["cart"][item] = t
            elif etype in (REMOVE_FROM_CART, PURCHASE) and item is not None:
                state["cart"].pop(item, None)
                if etype == PURCHASE:
                    state["purchases"].append([item, t])
            elif etype == RETURN and item is not None:
                state["returns"].append([item, t])
            rating = ratings[i]
            if not np.isnan(rating) and (rating - 3.0) / 2.0 <= neg_cut:
                state["neg"] = max(state["neg"] or 0, t)
        state["views"] = state["views"][-cfg.recent_views:]
        state["purchases"] = state["purchases"][-cfg.max_purchases:]
        state["returns"] = state["returns"][-cfg.max_purchases:]
        state["ids"] = sorted(ids)
        return state

    def _update_states(self, conn: sqlite3.Connection, ev: pd.DataFrame, merged_into: set[str]) -> None:
        cols = self._columns(ev)
        codes, uniques = pd.factorize(ev[PROFILE_ID])
        order = np.argsort(codes, kind="stable")  # ev is time-ordered, so each group stays time-ordered
        bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(uniques)))]
        pids = [str(p) for p in uniques]
        states = dict(self._select_in(conn, f"SELECT {PROFILE_ID}, doc FROM state WHERE {PROFILE_ID} IN ({{}})",
                                      pids))
        out = []
        for k, pid in enumerate(pids):
            rows = order[bounds[k]:bounds[k + 1]]
            doc = states.get(pid)
            state = json.loads(doc) if doc is not None else None
            if pid in merged_into or (state is not None and int(cols[TS][rows[0]]) < state["last"]):
                # merged or late (out of order): replay the whole stored history, exact
                hist = self._events(conn, [pid])
                state = self._apply(_empty_state(), self._columns(hist), np.arange(len(hist)))
            else:
                state = self._apply(state or _empty_state(), cols, rows)
            out.append((pid, json.dumps(state, separators=(",", ":")), state["last"]))
        conn.executemany(f"INSERT OR REPLACE INTO state ({PROFILE_ID}, doc, last_ns) VALUES (?, ?, ?)", out)

    def get_profile(self, profile_id: str) -> OnlineProfile | None:
        """Current online state (one JSON row, LRU-cached until this profile's next write)."""
        if self._cache_on:
            with self._cache_lock:
                if profile_id in self._state_cache:
                    self._state_cache.move_to_end(profile_id)
                    return self._state_cache[profile_id]
        conn = self._conn()
        row = conn.execute(f"SELECT doc FROM state WHERE {PROFILE_ID}=?", (profile_id,)).fetchone()
        if row is None:
            canon = self._canonical_id(conn, profile_id)
            if canon != profile_id:
                return self.get_profile(canon)
            return None
        prof = self._to_profile(profile_id, json.loads(row[0]))
        if self._cache_on:
            with self._cache_lock:
                self._state_cache[profile_id] = prof
                if len(self._state_cache) > self.config.cache_profiles:
                    self._state_cache.popitem(last=False)
        return prof

    @staticmethod
    def _to_profile(pid: str, s: dict[str, Any]) -> OnlineProfile:
        buys: dict[str, list[int]] = {}
        for item, t in s["purchases"]:
            buys.setdefault(item, []).append(t)
        replenish = {}
        for item, times in buys.items():
            gaps = np.diff(sorted(set(times))) / (86_400 * _NS)
            gaps = gaps[gaps >= 1.0]
            if len(gaps):
                replenish[item] = float(np.median(gaps))
        return OnlineProfile(
            profile_id=pid,
            recent_views=tuple(ViewEntry(i, c, _dt(t)) for i, c, t in reversed(s["views"])),
            cart_items=tuple(ItemEntry(i, _dt(t)) for i, t in sorted(s["cart"].items(), key=lambda x: -x[1])),
            purchases=tuple(ItemEntry(i, _dt(t)) for i, t in reversed(s["purchases"])),
            returns=tuple(ItemEntry(i, _dt(t)) for i, t in reversed(s["returns"])),
            category_counts=dict(s["cats"]),
            channel_last_seen={c: _dt(t) for c, t in s["chan"].items()},
            last_negative_ts=_dt(s["neg"]) if s["neg"] else None,
            identifiers=tuple(s["ids"]),
            updated_at=_dt(s["last"]),
            replenish_days=replenish,
        )

    # -- reads --------------------------------------------------------------------------------
    def _events(self, conn: sqlite3.Connection, profile_ids: Sequence[str] | None) -> pd.DataFrame:
        cols = [c for c in _EVENT_COLUMNS if c != TS]
        names = ", ".join(f'"{c}"' for c in [PROFILE_ID, "ts_ns"] + cols)
        if profile_ids is None:
            rows = conn.execute(f"SELECT {names} FROM events ORDER BY ts_ns, event_id").fetchall()
        else:
            ids = sorted(set(profile_ids))
            rows = self._select_in(conn, f"SELECT {names} FROM events WHERE {PROFILE_ID} IN ({{}})", ids)
            rows.sort(key=lambda r: (r[1], r[2]))
        return _frame(rows, cols)

    def events_for(self, profile_ids: Sequence[str]) -> pd.DataFrame:
        """Stored events of these profiles (canonical columns + PROFILE_ID), oldest first."""
        return self._events(self._conn(), list(profile_ids))

    def export_events(self) -> pd.DataFrame:
        """Every stored event for training (erased profiles are gone, so never included)."""
        return self._events(self._conn(), None)

    def record_sentiment(self, scores: Mapping[str, float]) -> None:
        """Model sentiment scores by event_id; features_for uses them in place of ratings."""
        rows = [(str(k), float(np.clip(v, -1.0, 1.0))) for k, v in scores.items()]
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO sentiment VALUES (?, ?)", rows)
            pids = {r[0] for r in self._select_in(conn, f"SELECT {PROFILE_ID} FROM events WHERE event_id IN ({{}})",
                                                  [r[0] for r in rows])}
        self._invalidate(pids)

    def sentiment_for(self, event_ids: Sequence[str]) -> pd.Series:
        rows = self._select_in(self._conn(), "SELECT event_id, score FROM sentiment WHERE event_id IN ({})",
                               list(event_ids))
        return pd.Series(dict(rows), dtype="float64")

    def features_for(self, profile_ids: Sequence[str], as_of: Any = None) -> pd.DataFrame:
        """Exactly build_profiles(events_for(ids), as_of) (with stored sentiment), rows cached per profile.

        as_of=None means now, floored to `feature_granularity_s`, so repeated calls reuse cached rows.
        """
        if as_of is None:
            g = self.config.feature_granularity_s * _NS
            as_of_ns = (pd.Timestamp.now(tz="UTC").value // g) * g
        else:
            as_of_ns = _to_ns(as_of)
        wanted = sorted(set(map(str, profile_ids)))
        rows: dict[str, tuple[Any, ...] | None] = {}
        if self._cache_on:
            with self._cache_lock:
                for pid in wanted:
                    key = (pid, as_of_ns)
                    if key in self._feat_cache:
                        self._feat_cache.move_to_end(key)
                        rows[pid] = self._feat_cache[key]
        missing = [p for p in wanted if p not in rows]
        if missing:
            ev = self.events_for(missing)
            sent = self.sentiment_for(ev[EVENT_ID].tolist()) if len(ev) else None
            built = build_profiles(ev, pd.Timestamp(as_of_ns, tz="UTC"), self.config.profile_config,
                                   sentiment=sent if sent is not None and len(sent) else None)
            self._feat_columns = list(built.columns)
            got = dict(zip(built[PROFILE_ID].tolist(), built.itertuples(index=False, name=None), strict=True))
            for pid in missing:
                rows[pid] = got.get(pid)
            if self._cache_on:
                with self._cache_lock:
                    for pid in missing:
                        self._feat_cache[(pid, as_of_ns)] = rows[pid]
                    while len(self._feat_cache) > self.config.cache_profiles:
                        self._feat_cache.popitem(last=False)
        if self._feat_columns is None:
            self._feat_columns = list(build_profiles(empty_events().assign(**{PROFILE_ID: pd.Series(
                dtype="string")}), pd.Timestamp(as_of_ns, tz="UTC"), self.config.profile_config).columns)
        cols = self._feat_columns
        records = [rows[p] for p in wanted if rows.get(p) is not None]
        frame = pd.DataFrame.from_records(records, columns=cols) if records else pd.DataFrame(
            {c: pd.Series(dtype="float64") for c in cols})
        for c in cols:
            if c == PROFILE_ID or frame[c].dtype == object or not pd.api.types.is_numeric_dtype(frame[c]):
                frame[c] = frame[c].astype("string")
            else:
                frame[c] = frame[c].astype("float64")
        return frame

    # -- consent, contacts, stock -------------------------------------------------------------
    def set_consent(self, profile_id: str, purpose: str, granted: bool) -> None:
        if not purpose:
            raise ValueError("purpose must be non-empty")
        now = pd.Timestamp.now(tz="UTC").value
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO consent VALUES (?, ?, ?, ?)",
                         (profile_id, purpose, int(bool(granted)), now))

    def get_consent(self, profile_id: str) -> dict[str, bool]:
        rows = self._conn().execute(f"SELECT purpose, granted FROM consent WHERE {PROFILE_ID}=?",
                                    (profile_id,)).fetchall()
        return {p: bool(g) for p, g in rows}

    def reserve_contact(self, profile_id: str, channel: str, now: Any, caps: Mapping[Any, int]) -> bool:
        """Atomically: if every cap (window -> max contacts on this channel) has room, record one contact."""
        now_ns = _to_ns(now)
        limits = [(_window_ns(w), int(m)) for w, m in caps.items()]
        with self._write() as conn:
            for window, most in limits:
                (n,) = conn.execute(f"SELECT COUNT(*) FROM contacts WHERE {PROFILE_ID}=? AND channel=? "
                                    "AND ts_ns > ? AND ts_ns <= ?",
                                    (profile_id, channel, now_ns - window, now_ns)).fetchone()
                if n >= most:
                    return False
            conn.execute("INSERT INTO contacts VALUES (?, ?, ?)", (profile_id, channel, now_ns))
        return True

    def set_stock(self, item_id: str, in_stock: bool) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO stock VALUES (?, ?)", (str(item_id), int(bool(in_stock))))

    def in_stock(self, item_ids: Sequence[str]) -> dict[str, bool]:
        """Unknown items count as in stock (no stock feed must not empty the recommendations)."""
        ids = [str(i) for i in item_ids]
        known = dict(self._select_in(self._conn(), "SELECT item_id, in_stock FROM stock WHERE item_id IN ({})", ids))
        return {i: bool(known.get(i, 1)) for i in ids}

    # -- erasure ------------------------------------------------------------------------------
    def erase_profile(self, profile_id: str) -> int:
        """Delete events, identifiers, state, consent, contacts; tombstone event ids and identifiers.

        Returns the number of events deleted.  Re-sent old events (same id, or an erased identifier
        with a timestamp before now) are suppressed on append, so nothing erased comes back.
        """
        now = pd.Timestamp.now(tz="UTC").value
        with self._write() as conn:
            pid = self._canonical_id(conn, profile_id)
            ev_ids = [r[0] for r in conn.execute(f"SELECT event_id FROM events WHERE {PROFILE_ID}=?", (pid,))]
            tokens = [r[0] for r in conn.execute(f"SELECT token FROM tokens WHERE {PROFILE_ID}=?", (pid,))]
            conn.executemany("INSERT OR IGNORE INTO erased_events VALUES (?)", [(e,) for e in ev_ids])
            conn.executemany("INSERT OR REPLACE INTO erased_tokens VALUES (?, ?)", [(_tomb(t), now) for t in tokens])
            self._select_in(conn, "DELETE FROM sentiment WHERE event_id IN ({})", ev_ids)
            for table in ("events", "tokens", "state", "consent", "contacts", "profiles"):
                conn.execute(f"DELETE FROM {table} WHERE {PROFILE_ID}=?", (pid,))
            olds = [r[0] for r in conn.execute("SELECT old_id FROM aliases WHERE new_id=?", (pid,))]
            conn.execute("DELETE FROM aliases WHERE new_id=?", (pid,))
            for t in tokens:
                conn.execute("DELETE FROM device_customers WHERE device=? OR customer=?", (t, t))
        self._invalidate({pid, profile_id, *olds})
        return len(ev_ids)


def _frame(rows: list[tuple[Any, ...]], cols: list[str]) -> pd.DataFrame:
    """Rows (profile_id, ts_ns, *cols) -> canonical dtypes, PROFILE_ID last."""
    if not rows:
        out = empty_events()
        for c in OPTIONAL_COLUMNS:
            out[c] = pd.Series(dtype="float64" if c in NUMERIC_COLUMNS else "string")
        out[PROFILE_ID] = pd.Series(dtype="string")
        return out
    arr = list(zip(*rows, strict=True))
    data: dict[str, Any] = {}
    data[TS] = pd.to_datetime(np.asarray(arr[1], dtype=np.int64), utc=True)
    for j, c in enumerate(cols):
        vals = arr[j + 2]
        if c in NUMERIC_COLUMNS:
            data[c] = np.array([np.nan if v is None else v for v in vals], dtype="float64")
        else:
            data[c] = pd.array(vals, dtype="string")
    data[PROFILE_ID] = pd.array(arr[0], dtype="string")
    order = [EVENT_ID, TS] + [c for c in cols if c != EVENT_ID] + [PROFILE_ID]
    return pd.DataFrame(data)[order].reset_index(drop=True)


__all__ = ["AppendResult", "ItemEntry", "NEVER_DAYS", "OnlineProfile", "ProfileStore", "SQLiteProfileStore",
           "StoreConfig", "ViewEntry", "profile_id_for"]
