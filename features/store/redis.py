"""The Redis backend: the storage primitives of `ProfileStoreBase` on one Redis database (redis-py), so that
several service workers and replicas share one online state, cache-free of each other's writes.

Durability: a call that returned has had every write acknowledged by Redis. That is durable only when Redis
persists each write before it answers: run it with ``appendonly yes`` and ``appendfsync always`` (README,
"Running on Redis"). Opening the store logs a WARNING when ``CONFIG GET appendonly`` says ``no`` (or cannot be
read: managed services often disable CONFIG). With ``appendfsync everysec`` up to a second of acknowledged
writes can be lost when the Redis host crashes.

Layout (every key starts with `RedisConfig.prefix`, so stores and tests can share a server): ``ev`` hash
event id -> JSON [ts_ns, stored values..., digest] and ``own`` hash event id -> profile id (the event log);
``pev:<pid>`` set of a profile's event ids; ``tok`` hash token -> profile id and ``ptok:<pid>`` its tokens;
``prof`` hash profile id -> smallest token; ``alias`` hash merged id -> id and ``aliases:<pid>``; ``dev:<device>``
/ ``cdev:<customer>`` device-customer pairs, ``shared`` set; ``st`` hash profile id -> state doc (JSON);
``con:<pid>`` hash purpose -> [granted, ns] (``conp``: profiles with a choice); contacts ``ct:<pid>:<channel>``
sorted sets (score: microseconds), ``ctk:<pid>`` decision keys, ``ctc:<pid>`` channels; ``tomb:<kind>`` hash
keyed digest -> erasure ns; ``sent`` hash event id -> score; ``cat`` hash item -> JSON, ``stock:<store>``,
``meta`` (catalog_version); ``lock:write``. No Redis stream holds the events: erasure must reach every copy,
and a stream entry is a second copy to find and XDEL.

Concurrency: every write runs under a Redis lock (``SET NX PX``, the redis-py `Lock`) shared by all processes
on the store, plus a thread lock; the writes of one step go out in one MULTI/EXEC pipeline, reads first flush
it (read-your-writes). The contact ledger's check-and-record is one Lua script (atomic on the server, no lock).
A Mirror process killed in the middle of a write may leave part of that write applied (it was never
acknowledged; re-sending the batch is idempotent for the events themselves).

Erasure deletes every key of the person; Redis has no secure-delete, but after an erasure the append-only file
is rewritten (``BGREWRITEAOF``), so the log on disk no longer holds what was deleted.

Capabilities: catalog and stock, sentiment. Absent (declared, see `features.store.missing_capabilities`):
the decision log and served lists. Contact times are kept to the microsecond in window counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import redis

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
from features.schema import EVENT_ID, ITEM_ID, NUMERIC_COLUMNS, IdentifierHasher, event_digest
from features.store.base import FEATURE_INPUT, EventRow, ProfileStoreBase
from features.store.codec import _STORED, _Batch, _batch_from_rows, _frame, _store_id
from features.store.config import RedisConfig, StoreConfig
from features.store.fold import to_profile
from features.store.model import CatalogUpsert

logger = logging.getLogger(__name__)
_DEFAULT_CONFIG = StoreConfig()
_CHUNK = 10_000  # hash fields per HSET/HMGET command
_LOCK_TIMEOUT_S = 120.0  # a writer killed while holding the lock frees it after this long
_LOCK_WAIT_S = 60.0
_NUMERIC_AT = frozenset(j for j, c in enumerate(_STORED) if c in NUMERIC_COLUMNS)
_FEATURE_AT = [_STORED.index(c) for c in FEATURE_INPUT]
_SEP = "\x1f"  # between channel and decision key in a hash field (neither holds control characters)
_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False, ensure_ascii=False)

# KEYS: contacts zset, decision-key hash, channel set, sequence counter
# ARGV: channel, key ('' for none), now_us, now_ns, then per cap: low bound, high bound (exclusive, us), most
_RESERVE = """
local field = ARGV[1] .. '\\31' .. ARGV[2]
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[2], field) == 1 then return 1 end
local i = 5
while i <= #ARGV do
  if redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[i], '(' .. ARGV[i + 1]) >= tonumber(ARGV[i + 2]) then return 0 end
  i = i + 3
end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], ARGV[3], seq .. '|' .. ARGV[4] .. '|' .. ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], field, '1') end
return 1
"""


def _plain(v: Any) -> Any:
    """numpy scalars -> Python (JSON)."""
    return v.item() if isinstance(v, np.generic) else v


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class _Tx:
    """A write's (or a read's) handle: writes queue on one MULTI/EXEC pipeline, reads flush it first."""

    def __init__(self, client: redis.Redis, lock: Any = None) -> None:
        self.client = client
        self._lock = lock
        self._pipe: Any = None
        self._renewed = time.monotonic()

    @property
    def w(self) -> Any:
        if self._pipe is None:
            self._pipe = self.client.pipeline(transaction=True)
        return self._pipe

    @property
    def r(self) -> redis.Redis:
        self.flush()
        return self.client

    def flush(self) -> None:
        """Send the queued writes (one MULTI/EXEC); the pipeline is reset and stays the one `w` gives."""
        if self._pipe is not None and len(self._pipe):
            self._pipe.execute()
        if self._lock is not None and time.monotonic() - self._renewed > _LOCK_TIMEOUT_S / 4:
            self._lock.reacquire()  # a long bulk write keeps its lock
            self._renewed = time.monotonic()


class RedisProfileStore(ProfileStoreBase):
    """The ProfileStore on Redis (module docstring: durability, layout, concurrency, erasure)."""

    def __init__(self, backend: RedisConfig, hasher: IdentifierHasher | None = None,
                 config: StoreConfig = _DEFAULT_CONFIG, *, cache: bool = True) -> None:
        super().__init__(hasher, config, cache=cache)
        self.backend = backend
        self._p = backend.prefix
        self._client = redis.Redis(host=backend.host, port=backend.port, db=backend.db, password=backend.password,
                                   socket_timeout=backend.socket_timeout_s,
                                   socket_connect_timeout=backend.socket_timeout_s, decode_responses=True)
        try:
            self._client.ping()
        except redis.RedisError as err:
            raise RuntimeError(f"store url {backend.url}: no Redis server answers ({err})") from err
        self._thread_lock = threading.RLock()
        self._local = threading.local()
        self._catalog_cached: tuple[int, Catalog] | None = None
        self._reserve_script = self._client.register_script(_RESERVE)
        self._aof = self._check_persistence()

    def _check_persistence(self) -> bool:
        """Whether Redis logs every write (appendonly); WARNING when it does not, or when it cannot be read."""
        try:
            aof = str(self._client.config_get("appendonly").get("appendonly", "")).lower() == "yes"
            fsync = str(self._client.config_get("appendfsync").get("appendfsync", "")).lower()
        except redis.RedisError as err:
            logger.warning("Redis store %s: could not read its persistence settings (%s); acknowledged events "
                           "are durable only with appendonly yes and appendfsync always", self.backend.url, err)
            return False
        if not aof:
            logger.warning("Redis store %s runs without the append-only file (appendonly no): acknowledged events "
                           "are lost when Redis stops; set appendonly yes and appendfsync always", self.backend.url)
        elif fsync != "always":
            logger.warning("Redis store %s: appendfsync %s may lose the last acknowledged writes when the host "
                           "crashes; set appendfsync always", self.backend.url, fsync)
        return aof

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    # -- transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[_Tx]:
        current = getattr(self._local, "tx", None)
        if current is not None:  # re-entered on this thread: the same write
            yield current
            return
        with self._thread_lock:
            lock = self._client.lock(self._k("lock", "write"), timeout=_LOCK_TIMEOUT_S,
                                     blocking_timeout=_LOCK_WAIT_S, thread_local=False)
            if not lock.acquire():
                raise TimeoutError(f"store {self.backend.url}: another writer held the write lock for "
                                   f"{_LOCK_WAIT_S:.0f} s")
            tx = _Tx(self._client, lock)
            self._local.tx = tx
            try:
                yield tx
                tx.flush()
            finally:
                self._local.tx = None
                with contextlib.suppress(redis.exceptions.LockError):
                    lock.release()

    def _read(self) -> _Tx:
        return getattr(self._local, "tx", None) or _Tx(self._client)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[_Tx]:
        """Under the write lock: no write lands between the reads of the block."""
        with self._write() as tx:
            yield tx

    def close(self) -> None:
        self._client.close()

    def drop(self) -> int:
        """Delete every key of this store (its prefix): tests, and retiring a store. Returns keys deleted."""
        n = 0
        for keys in _chunks(list(self._client.scan_iter(match=self._p + "*", count=1000)), 1000):
            n += self._client.delete(*keys)
        return n

    # -- events ----------------------------------------------------------------------------------
    @staticmethod
    def _decode(eid: str, pid: str, doc: str) -> tuple[EventRow, str | None]:
        """An `ev` value -> ((pid, ts_ns, *_STORED), digest); numbers as floats, as SQL REAL gives them."""
        vals = json.loads(doc)
        stored = [eid, *vals[1:-1]]
        for j in _NUMERIC_AT:
            if stored[j] is not None:
                stored[j] = float(stored[j])
        return (pid, int(vals[0]), *stored), vals[-1]

    def _rows_of(self, tx: _Tx, eids: Sequence[str], owners: Sequence[str] | None = None
                 ) -> list[tuple[EventRow, str | None]]:
        """(row, digest) of the stored ones among `eids`; `owners` their profiles when known (else read)."""
        r = tx.r
        ids = list(eids)
        out = []
        for start in range(0, len(ids), _CHUNK):
            part = ids[start:start + _CHUNK]
            docs = r.hmget(self._k("ev"), part)
            own = r.hmget(self._k("own"), part) if owners is None else owners[start:start + _CHUNK]
            for e, pid, d in zip(part, own, docs, strict=True):
                if d is not None:
                    out.append(self._decode(e, pid, d))
        return out

    def _stored_digests(self, tx: _Tx, ids: Sequence[str]) -> dict[str, str]:
        if not ids:
            return {}
        rows = self._rows_of(tx, ids, [""] * len(ids))
        found = {row[2]: d for row, d in rows}
        missing = [row for row, d in rows if d is None]
        if missing:  # stored by the vectorised path: computed now, written back for the next re-send
            b, _ = _batch_from_rows(missing)
            docs = tx.r.hmget(self._k("ev"), [r[2] for r in missing])
            for i, (e, doc) in enumerate(zip(b.cols[EVENT_ID], docs, strict=True)):
                found[e] = event_digest(b.row(i))
                vals = json.loads(doc)
                vals[-1] = found[e]
                tx.w.hset(self._k("ev"), e, _JSON.encode(vals))
        return found

    def _insert_events(self, tx: _Tx, b: _Batch, pids: Sequence[str], digests: Sequence[str | None]) -> None:
        cols = [b.cols[c] for c in _STORED[1:]]
        ids = b.cols[EVENT_ID]
        docs = {e: _JSON.encode([b.ts[i], *(_plain(c[i]) for c in cols), digests[i]]) for i, e in enumerate(ids)}
        by_pid: dict[str, list[str]] = {}
        for e, p in zip(ids, pids, strict=True):
            by_pid.setdefault(p, []).append(e)
        w = tx.w
        for part in _chunks(list(docs.items())):
            w.hset(self._k("ev"), mapping=dict(part))
        own = dict(zip(ids, pids, strict=True))
        for part in _chunks(list(own.items())):
            w.hset(self._k("own"), mapping=dict(part))
        for p, es in by_pid.items():
            w.sadd(self._k("pev", p), *es)

    def _event_ids_of(self, tx: _Tx, profile_ids: Sequence[str]) -> list[tuple[str, list[str]]]:
        pipe = tx.r.pipeline(transaction=False)
        for p in profile_ids:
            pipe.smembers(self._k("pev", p))
        return list(zip(profile_ids, [sorted(s) for s in pipe.execute()], strict=True))

    def _event_rows(self, tx: _Tx, profile_ids: Sequence[str] | None) -> list[EventRow]:
        if profile_ids is None:
            own = tx.r.hgetall(self._k("own"))
            pairs = list(own.items())
            rows = [row for row, _ in self._rows_of(tx, [e for e, _ in pairs], [p for _, p in pairs])]
        else:
            eids, owners = [], []
            for p, es in self._event_ids_of(tx, sorted(set(profile_ids))):
                eids += es
                owners += [p] * len(es)
            rows = [row for row, _ in self._rows_of(tx, eids, owners)]
        rows.sort(key=lambda r: (r[1], r[2]))
        return rows

    def _iter_event_rows(self, batch_size: int) -> Iterator[list[EventRow]]:
        with self._snapshot() as tx:  # the rows of one moment (the sort needs them all: memory-bound)
            rows = self._event_rows(tx, None)
        for part in _chunks(rows, batch_size):
            yield list(part)

    def _feature_input(self, tx: _Tx, profile_ids: Sequence[str] | None, as_of_ns: int
                       ) -> tuple[pd.DataFrame, pd.Series | None]:
        rows = [r for r in self._event_rows(tx, profile_ids) if r[1] < as_of_ns]
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        picked = [(r[0], r[1], *(r[2 + j] for j in _FEATURE_AT)) for r in rows]
        sent = None
        if rows and tx.r.exists(self._k("sent")):
            scores = self._stored_scores(tx, [r[2] for r in rows])
            if scores:
                sent = pd.Series(scores, dtype="float64")
                sent.index = sent.index.astype("string")
        return _frame(picked, list(FEATURE_INPUT)), sent

    def _event_owners(self, tx: _Tx, event_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in _chunks(list(event_ids)):
            out.update((e, p) for e, p in zip(part, tx.r.hmget(self._k("own"), part), strict=True) if p is not None)
        return out

    def has_events(self) -> bool:
        return bool(self._client.exists(self._k("ev")))

    # -- sentiment -------------------------------------------------------------------------------
    def _stored_scores(self, tx: _Tx, event_ids: Sequence[str]) -> dict[str, float]:
        ids = list(event_ids)
        if not ids or not tx.r.exists(self._k("sent")):
            return {}
        out: dict[str, float] = {}
        for part in _chunks(ids):
            out.update((e, float(s)) for e, s in zip(part, tx.r.hmget(self._k("sent"), part), strict=True)
                       if s is not None)
        return out

    def _write_scores(self, tx: _Tx, rows: Sequence[tuple[str, float]]) -> None:
        for part in _chunks(list(rows)):
            tx.w.hset(self._k("sent"), mapping={e: repr(s) for e, s in part})

    # -- identity --------------------------------------------------------------------------------
    def _hmap(self, tx: _Tx, key: str, fields: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in _chunks(list(fields)):
            out.update((f, v) for f, v in zip(part, tx.r.hmget(key, part), strict=True) if v is not None)
        return out

    def _token_profiles(self, tx: _Tx, tokens: Sequence[str]) -> dict[str, str]:
        return self._hmap(tx, self._k("tok"), tokens)

    def _profile_tokens(self, tx: _Tx, profile_ids: Sequence[str]) -> list[tuple[str, str]]:
        pipe = tx.r.pipeline(transaction=False)
        for p in profile_ids:
            pipe.smembers(self._k("ptok", p))
        return sorted((t, p) for p, ts in zip(profile_ids, pipe.execute(), strict=True) for t in ts)

    def _put_tokens(self, tx: _Tx, rows: Sequence[tuple[str, str]]) -> None:
        if not rows:
            return
        before = self._token_profiles(tx, [t for t, _ in rows])
        w = tx.w
        for t, p in rows:
            if (old := before.get(t)) is not None and old != p:
                w.srem(self._k("ptok", old), t)
            w.sadd(self._k("ptok", p), t)
        for part in _chunks(list(rows)):
            w.hset(self._k("tok"), mapping=dict(part))

    def _shared_devices(self, tx: _Tx, devices: Sequence[str]) -> set[str]:
        if not devices:
            return set()
        flags = tx.r.smismember(self._k("shared"), list(devices))
        return {d for d, f in zip(devices, flags, strict=True) if f}

    def _record_device_pairs(self, tx: _Tx, pairs: Sequence[tuple[str, str]]) -> dict[str, int]:
        w = tx.w
        for d, c in pairs:
            w.sadd(self._k("dev", d), c)
            w.sadd(self._k("cdev", c), d)
        devices = sorted({d for d, _ in pairs})
        pipe = tx.r.pipeline(transaction=False)
        for d in devices:
            pipe.scard(self._k("dev", d))
        return dict(zip(devices, pipe.execute(), strict=True))

    def _mark_shared_devices(self, tx: _Tx, devices: Sequence[str]) -> None:
        tx.w.sadd(self._k("shared"), *devices)

    def _min_tokens(self, tx: _Tx, profile_ids: Sequence[str]) -> dict[str, str]:
        return self._hmap(tx, self._k("prof"), profile_ids)

    def _put_profiles(self, tx: _Tx, rows: Sequence[tuple[str, str]]) -> None:
        for part in _chunks(list(rows)):
            tx.w.hset(self._k("prof"), mapping=dict(part))

    def _merge_profile(self, tx: _Tx, old: str, new: str) -> None:
        r = tx.r
        tokens, events = r.smembers(self._k("ptok", old)), r.smembers(self._k("pev", old))
        old_consent, new_consent = r.hgetall(self._k("con", old)), r.hgetall(self._k("con", new))
        channels, merged = r.smembers(self._k("ctc", old)), r.smembers(self._k("aliases", old))
        w = tx.w
        if tokens:
            w.hset(self._k("tok"), mapping=dict.fromkeys(tokens, new))
            w.sadd(self._k("ptok", new), *tokens)
        if events:
            for part in _chunks(sorted(events)):
                w.hset(self._k("own"), mapping=dict.fromkeys(part, new))
            w.sadd(self._k("pev", new), *events)
        if moved := {k: v for k, v in old_consent.items() if k not in new_consent}:  # `new` wins where both chose
            w.hset(self._k("con", new), mapping=moved)
        if old_consent:
            w.sadd(self._k("conp"), new)
        for ch in channels:
            w.zunionstore(self._k("ct", new, ch), [self._k("ct", new, ch), self._k("ct", old, ch)])
        if channels:
            w.sadd(self._k("ctc", new), *channels)
        if keys := r.hgetall(self._k("ctk", old)):
            w.hset(self._k("ctk", new), mapping=keys)
        w.delete(self._k("ptok", old), self._k("pev", old), self._k("con", old), self._k("ctc", old),
                 self._k("ctk", old), self._k("aliases", old), *(self._k("ct", old, ch) for ch in channels))
        w.srem(self._k("conp"), old)
        w.hdel(self._k("st"), old)
        w.hdel(self._k("prof"), old)
        w.hset(self._k("alias"), mapping=dict.fromkeys([*merged, old], new))
        w.sadd(self._k("aliases", new), *merged, old)

    def _canonical_id(self, tx: _Tx, profile_id: str) -> str:
        return tx.r.hget(self._k("alias"), profile_id) or profile_id

    def _aliases_of(self, tx: _Tx, profile_id: str) -> list[str]:
        return sorted(tx.r.smembers(self._k("aliases", profile_id)))

    # -- state docs ------------------------------------------------------------------------------
    def _state_docs(self, tx: _Tx, profile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {p: json.loads(d) for p, d in self._hmap(tx, self._k("st"), profile_ids).items()}

    def _states_present(self, tx: _Tx, profile_ids: Sequence[str]) -> set[str]:
        pipe = tx.r.pipeline(transaction=False)
        for p in profile_ids:
            pipe.hexists(self._k("st"), p)
        return {p for p, f in zip(profile_ids, pipe.execute(), strict=True) if f}

    def _put_states(self, tx: _Tx, docs: Mapping[str, dict[str, Any]]) -> None:
        for part in _chunks(list(docs.items())):
            tx.w.hset(self._k("st"), mapping={p: _JSON.encode(s) for p, s in part})

    def _state_ids(self, tx: _Tx) -> list[str]:
        return sorted(tx.r.hkeys(self._k("st")))

    # -- consent and contacts --------------------------------------------------------------------
    def _consent_rows(self, tx: _Tx, profile_ids: Sequence[str] | None) -> list[tuple[str, str, bool, int]]:
        ids = sorted(tx.r.smembers(self._k("conp"))) if profile_ids is None else list(profile_ids)
        pipe = tx.r.pipeline(transaction=False)
        for p in ids:
            pipe.hgetall(self._k("con", p))
        out = []
        for p, choices in zip(ids, pipe.execute(), strict=True):
            for purpose in sorted(choices):
                granted, ns = json.loads(choices[purpose])
                out.append((p, purpose, bool(granted), int(ns)))
        return out

    def _put_consent(self, tx: _Tx, profile_id: str, purpose: str, granted: bool, now_ns: int) -> None:
        tx.w.hset(self._k("con", profile_id), purpose, _JSON.encode([int(granted), now_ns]))
        tx.w.sadd(self._k("conp"), profile_id)

    def _reserve(self, profile_id: str, channel: str, now_ns: int, limits: Sequence[tuple[int, int]],
                 key: str | None) -> bool:
        now_us = now_ns // 1000
        args: list[Any] = [channel, key or "", now_us, now_ns]
        for window, most in limits:
            w_us = window // 1000
            args += [now_us - w_us, now_us + w_us, most]
        keys = [self._k("ct", profile_id, channel), self._k("ctk", profile_id), self._k("ctc", profile_id),
                self._k("ctseq")]
        return bool(self._reserve_script(keys=keys, args=args))

    def _contacts(self, tx: _Tx, profile_id: str) -> list[tuple[str, int, str | None]]:
        channels = sorted(tx.r.smembers(self._k("ctc", profile_id)))
        pipe = tx.r.pipeline(transaction=False)
        for ch in channels:
            pipe.zrange(self._k("ct", profile_id, ch), 0, -1)
        rows = []
        for ch, members in zip(channels, pipe.execute(), strict=True):
            for m in members:
                seq, ns, key = m.split("|", 2)
                rows.append((int(ns), int(seq), ch, key or None))
        return [(ch, ns, key) for ns, _, ch, key in sorted(rows)]

    # -- tombstones and erasure ------------------------------------------------------------------
    def _tombstones(self, tx: _Tx, kind: str, digests: Sequence[str]) -> dict[str, int]:
        return {d: int(ns) for d, ns in self._hmap(tx, self._k("tomb", kind), digests).items()}

    def _put_tombstones(self, tx: _Tx, kind: str, rows: Sequence[tuple[str, int]]) -> None:
        for part in _chunks(list(rows)):
            tx.w.hset(self._k("tomb", kind), mapping=dict(part))

    def _delete_person(self, tx: _Tx, profile_id: str, all_ids: Sequence[str], event_ids: Sequence[str],
                       tokens: Sequence[str]) -> None:
        r = tx.r
        channels = r.smembers(self._k("ctc", profile_id))
        pipe = r.pipeline(transaction=False)
        for t in tokens:
            pipe.smembers(self._k("dev", t))
            pipe.smembers(self._k("cdev", t))
        linked = pipe.execute()
        w = tx.w
        for i, t in enumerate(tokens):  # the device-customer pairs of its tokens, from both sides
            for c in linked[2 * i]:
                w.srem(self._k("cdev", c), t)
            for d in linked[2 * i + 1]:
                w.srem(self._k("dev", d), t)
            w.delete(self._k("dev", t), self._k("cdev", t))
        if tokens:
            w.hdel(self._k("tok"), *tokens)
            w.srem(self._k("shared"), *tokens)
        for part in _chunks(list(event_ids)):
            w.hdel(self._k("ev"), *part)
            w.hdel(self._k("own"), *part)
            w.hdel(self._k("sent"), *part)
        for old in self._aliases_of(tx, profile_id):
            w.hdel(self._k("alias"), old)
        w.delete(self._k("pev", profile_id), self._k("ptok", profile_id), self._k("con", profile_id),
                 self._k("ctc", profile_id), self._k("ctk", profile_id), self._k("aliases", profile_id),
                 *(self._k("ct", profile_id, ch) for ch in channels))
        w.srem(self._k("conp"), profile_id)
        w.hdel(self._k("st"), profile_id)
        w.hdel(self._k("prof"), profile_id)

    def _erasure_done(self) -> None:
        """Rewrite the append-only file, so the log on disk no longer holds what the erasure deleted."""
        if not self._aof:
            return
        try:
            self._client.bgrewriteaof()
        except redis.RedisError as err:  # one already running: the next rewrite drops the values too
            logger.warning("Redis store %s: AOF rewrite after an erasure not started (%s); erased values stay "
                           "in the append-only file until the next rewrite", self.backend.url, err)

    # -- access request --------------------------------------------------------------------------
    def export_profile(self, profile_id: str) -> dict[str, Any]:
        """Everything the store holds about a person (see `SQLiteProfileStore.export_profile`); the decision
        log and served lists are not kept by this backend, so they come empty."""
        with self._snapshot() as tx:
            pid = self._canonical_id(tx, profile_id)
            events = _frame(self._event_rows(tx, [pid]), list(_STORED))
            ev_ids = [str(e) for e in events[EVENT_ID].tolist()]
            tokens = [t for t, _ in self._profile_tokens(tx, [pid])]
            doc = self._state_docs(tx, [pid]).get(pid)
            erased = self._erased_ns(tx, sorted({pid, profile_id}))
            state = None if doc is None else to_profile(pid, self._current(tx, {pid: doc})[pid], erased.get(pid))
            return self._export_document(
                pid=pid, requested=profile_id, merged=self._aliases_of(tx, pid), events=events, tokens=tokens,
                shared=self._shared_devices(tx, tokens), state=state,
                consent=[(p, g, t) for _, p, g, t in self._consent_rows(tx, [pid])], contacts=self._contacts(tx, pid),
                decisions=None, served=None, scores=dict(sorted(self._stored_scores(tx, ev_ids).items())),
                erased=erased)

    # -- catalog and stock (the CatalogStore capability) -----------------------------------------
    def catalog_version(self) -> int:
        """A number that changes on every catalog upsert or stock change, by any process on this store."""
        return int(self._client.hget(self._k("meta"), "catalog_version") or 0)

    def upsert_items(self, frame: pd.DataFrame, *, validated: bool = False) -> CatalogUpsert:
        """Validate (unless validated) and upsert items; a row replaces the fields it gives (non-missing
        values) and keeps the rest. Durable on return."""
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
        rows = [dict(zip(given, r, strict=True)) for r in zip(*(values[c] for c in given), strict=True)]
        with self._write() as tx:
            stored = self._hmap(tx, self._k("cat"), [r[ITEM_ID] for r in rows])
            docs: dict[str, dict[str, Any]] = {}
            for row in rows:
                item = row[ITEM_ID]
                doc = docs.get(item) or (json.loads(stored[item]) if item in stored else {ITEM_ID: item})
                doc.update((c, _plain(v)) for c, v in row.items() if v is not None)
                docs[item] = doc
            tx.w.hset(self._k("cat"), mapping={i: _JSON.encode(d) for i, d in docs.items()})
            tx.w.hincrby(self._k("meta"), "catalog_version", 1)
        return CatalogUpsert(len(rows), errors)

    def catalog(self) -> Catalog:
        """Every stored item, as an immutable Catalog (rebuilt only when `catalog_version` changed)."""
        version = self.catalog_version()  # before the rows: a newer read is refreshed next time, never missed
        cached = self._catalog_cached
        if cached is not None and cached[0] == version:
            return cached[1]
        docs = self._client.hgetall(self._k("cat"))
        cat = Catalog(CatalogItem(*(json.loads(docs[i]).get(c) for c in CATALOG_COLUMNS)) for i in sorted(docs))
        self._catalog_cached = (version, cat)
        return cat

    def set_stock(self, item_id: str, in_stock: bool, store_id: str | None = None) -> None:
        """Stock of an item: overall (the catalog's `in_stock`; an unknown item gets a catalog entry with only
        its id and stock), or in one store when `store_id` is given."""
        checked = validate_catalog(pd.DataFrame({ITEM_ID: [item_id], IN_STOCK: pd.array([in_stock], dtype=object)}))
        if len(checked.errors):
            raise CatalogError(checked.errors)
        if not isinstance(in_stock, (bool, np.bool_)):
            raise ValueError(f"{IN_STOCK} must be true or false, got {in_stock!r}")
        store = None if store_id is None else _store_id(store_id)
        item = str(checked.valid[ITEM_ID].iloc[0])
        with self._write() as tx:
            if store is None:
                raw = tx.r.hget(self._k("cat"), item)
                doc = json.loads(raw) if raw else {ITEM_ID: item}
                doc[IN_STOCK] = bool(in_stock)
                tx.w.hset(self._k("cat"), item, _JSON.encode(doc))
            else:
                tx.w.hset(self._k("stock", store), item, int(bool(in_stock)))
            tx.w.hincrby(self._k("meta"), "catalog_version", 1)

    def in_stock(self, item_ids: Sequence[str], store_id: str | None = None) -> dict[str, bool]:
        """Without store_id: the catalog's stock. With one: that store's stock where known, else the item's
        overall stock. Unknown items count as in stock."""
        ids = [str(i) for i in item_ids]
        tx = self._read()
        known: dict[str, bool] = {}
        for i, raw in self._hmap(tx, self._k("cat"), ids).items():
            flag = json.loads(raw).get(IN_STOCK)
            if flag is not None:
                known[i] = bool(flag)
        if store_id is not None and ids:
            known.update((i, v == "1") for i, v in self._hmap(tx, self._k("stock", _store_id(store_id)), ids).items())
        return {i: known.get(i, True) for i in ids}

