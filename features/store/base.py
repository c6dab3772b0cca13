"""The logic every profile-store backend shares, written once above the storage primitives.

`ProfileStoreBase` implements the public `ProfileStoreCore` API (and the sentiment capability's
`record_sentiment`) in terms of a small set of storage primitives that a backend implements: the abstract
methods below, grouped as events (append durably with content digests, read rows), profile state docs,
identity tokens and links, consent, the contact ledger, tombstones, sentiment and erasure. What lives here,
once, so no backend can get it subtly different:

- validation, idempotency and conflicts (`schema.event_digest` per stored event), tombstone suppression;
- identity linking (`features.identity.link_batch`, the component id rule `profile_id_for`) and merges;
- the state fold calls (`fold.apply_events` for small batches, `fold._build_states` for bulk ones);
- tombstone keying: HMAC-SHA256 with the store's `IdentifierHasher` key, one domain per kind;
- the in-process caches (online states, feature rows) and their invalidation generation log;
- feature rows: `build_profiles` over the events whose source the profile granted (consent masking).

A primitive receives the backend's transaction handle `tx` (what `_write()`, `_read()` or `_snapshot()`
gave); within one `_write()` every primitive sees the writes made before it (read-your-writes), and the
writes of one `_write()` are exclusive against every other writer of the same store, in any process.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import hmac
import threading
from collections import OrderedDict, deque
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

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
    _EXPORT_SCHEMA,
    _STORED,
    _arrow_rows,
    _Batch,
    _batch_from_frame,
    _batch_from_rows,
    _by_row,
    _dt,
    _frame,
    _jsonable,
    _records,
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
from features.store.model import CONFLICT_REASON, EXPORT_BATCH, AppendResult, OnlineProfile

#: What build_profiles reads (with PROFILE_ID given): the feature path fetches only these event columns.
FEATURE_INPUT = (EVENT_ID, EVENT_TYPE, CHANNEL, ITEM_ID, CATEGORY, QUANTITY, PRICE, RATING, PREFERENCE_KEY,
                 PREFERENCE_VALUE)
_NS = 10**9
#: Features that are NEVER_DAYS for an empty history (with every "days_*" one), per features.profiles.
_NEVER_FEATURES = frozenset({"purchase_cadence_days"})
_AS_OF_PER_PROFILE = 4  # cached feature rows per profile (distinct as_of); older ones are dropped
_INVALIDATION_LOG = 4096  # recent writes remembered, so a slow read never caches a row a write replaced

#: Tombstone kinds (`_tombstones` / `_put_tombstones`), each its own HMAC domain, so an event id and an
#: identifier token spelt alike never share a digest.
TOMB_EVENT, TOMB_TOKEN, TOMB_PROFILE = "event", "token", "profile"
_DOMAINS = {TOMB_EVENT: b"mirror-erased-event\x00", TOMB_TOKEN: b"mirror-erased-token\x00",
            TOMB_PROFILE: b"mirror-erased-profile\x00"}

#: One event row as primitives exchange it: (profile_id, ts_ns, *codec._STORED values).
EventRow = tuple[Any, ...]


def input_purposes(granted: frozenset[str]) -> frozenset[str]:
    """What a feature row may be built from: the usable sources, and declarations (zero-party: given for
    personalization itself) while `personalization` is granted."""
    usable = usable_sources(granted)
    return usable | {PERSONALIZATION} if PERSONALIZATION in granted else usable


def _unknown_identifier(column: str) -> str:
    """The error of a lookup by a column that is no identifier (resolve and identifiers_of alike)."""
    return f"unknown identifier {column!r} (expected one of {', '.join(IDENTIFIER_COLUMNS)})"


def clean_scores(scores: Mapping[Any, Any] | pd.Series, stored: Container[str]) -> list[tuple[str, float]]:
    """(event id, score clipped to [-1, 1]) of the events in `stored` only; ValueError for a non-finite score.
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
    return rows


class ProfileStoreBase(abc.ABC):
    """The public ProfileStore API over storage primitives (module docstring); backends subclass it."""

    def __init__(self, hasher: IdentifierHasher | None, config: StoreConfig, *, cache: bool = True) -> None:
        self.hasher = hasher or IdentifierHasher.from_env()
        self._tomb_key = self.hasher.key.encode()
        self.config = config
        self._cache_on = cache
        self._cache_lock = threading.Lock()
        self._state_cache: OrderedDict[str, OnlineProfile | None] = OrderedDict()
        # profile -> {as_of_ns: feature row or None}: invalidating a profile is one pop, whatever the size
        self._feat_cache: OrderedDict[str, dict[int, tuple[Any, ...] | None]] = OrderedDict()
        self._feat_columns: list[str] | None = None
        self._feat_text: set[str] = set()
        self._gen = 0  # write generation: bumped by every invalidation
        self._inval_log: deque[tuple[int, frozenset[str]]] = deque(maxlen=_INVALIDATION_LOG)

    # == storage primitives (a backend implements these) =================================================
    # -- transactions
    @abc.abstractmethod
    def _write(self) -> contextlib.AbstractContextManager[Any]:
        """One writer at a time across processes; read-your-writes inside; durable when the block exits."""

    @abc.abstractmethod
    def _read(self) -> Any:
        """A handle for reads outside a write (each primitive call sees committed data)."""

    @abc.abstractmethod
    def _snapshot(self) -> contextlib.AbstractContextManager[Any]:
        """A handle whose reads see one consistent state (as far as the backend can give it)."""

    # -- events
    @abc.abstractmethod
    def _stored_digests(self, tx: Any, ids: Sequence[str]) -> dict[str, str]:
        """`schema.event_digest` of each stored event among `ids` (computed from the stored row if missing)."""

    @abc.abstractmethod
    def _insert_events(self, tx: Any, b: _Batch, pids: Sequence[str], digests: Sequence[str | None]) -> None:
        """Store new events (their ids are not stored yet) under their profiles, with their digests."""

    @abc.abstractmethod
    def _event_rows(self, tx: Any, profile_ids: Sequence[str] | None) -> list[EventRow]:
        """Stored events of these profiles (None: all), ordered by (ts_ns, event_id)."""

    @abc.abstractmethod
    def _iter_event_rows(self, batch_size: int) -> Iterator[list[EventRow]]:
        """Every stored event in (ts_ns, event_id) order, `batch_size` rows at a time, from one snapshot."""

    @abc.abstractmethod
    def _feature_input(self, tx: Any, profile_ids: Sequence[str] | None, as_of_ns: int
                       ) -> tuple[pd.DataFrame, pd.Series | None]:
        """Events before `as_of_ns` of these profiles (None: all) as a frame of PROFILE_ID + FEATURE_INPUT
        columns ordered by (profile, ts, event_id), and the stored sentiment of those events (None: none)."""

    @abc.abstractmethod
    def _event_owners(self, tx: Any, event_ids: Sequence[str]) -> dict[str, str]:
        """event id -> profile id, for the stored ones among `event_ids`."""

    @abc.abstractmethod
    def has_events(self) -> bool:
        """Whether any event is stored (cheap whatever the size)."""

    # -- sentiment
    @abc.abstractmethod
    def _stored_scores(self, tx: Any, event_ids: Sequence[str]) -> dict[str, float]:
        """Stored model sentiment of these events."""

    @abc.abstractmethod
    def _write_scores(self, tx: Any, rows: Sequence[tuple[str, float]]) -> None:
        """Store (event id, score) rows, replacing earlier scores."""

    # -- identity
    @abc.abstractmethod
    def _token_profiles(self, tx: Any, tokens: Sequence[str]) -> dict[str, str]:
        """token -> profile id, for the linked ones among `tokens`."""

    @abc.abstractmethod
    def _profile_tokens(self, tx: Any, profile_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(token, profile id) of every token linked to these profiles, sorted by token."""

    @abc.abstractmethod
    def _put_tokens(self, tx: Any, rows: Sequence[tuple[str, str]]) -> None:
        """Link tokens to profiles (a token already linked is moved)."""

    @abc.abstractmethod
    def _shared_devices(self, tx: Any, devices: Sequence[str]) -> set[str]:
        """Those of `devices` marked shared."""

    @abc.abstractmethod
    def _record_device_pairs(self, tx: Any, pairs: Sequence[tuple[str, str]]) -> dict[str, int]:
        """Record (device, customer) token pairs; per device of `pairs`, its number of distinct customers."""

    @abc.abstractmethod
    def _mark_shared_devices(self, tx: Any, devices: Sequence[str]) -> None:
        """Mark devices shared (they stop linking)."""

    @abc.abstractmethod
    def _min_tokens(self, tx: Any, profile_ids: Sequence[str]) -> dict[str, str]:
        """profile id -> its smallest token, for the stored ones."""

    @abc.abstractmethod
    def _put_profiles(self, tx: Any, rows: Sequence[tuple[str, str]]) -> None:
        """Upsert (profile id, smallest token) rows."""

    @abc.abstractmethod
    def _merge_profile(self, tx: Any, old: str, new: str) -> None:
        """Re-key everything of profile `old` to `new` (tokens, events, consent, contacts, logs; `new` wins
        where both have a row), drop `old`'s state and profile row, and make `old` an alias of `new`."""

    @abc.abstractmethod
    def _canonical_id(self, tx: Any, profile_id: str) -> str:
        """The id a merged-away id now lives under (itself otherwise)."""

    @abc.abstractmethod
    def _aliases_of(self, tx: Any, profile_id: str) -> list[str]:
        """Ids merged into this (canonical) profile, sorted."""

    # -- state docs
    @abc.abstractmethod
    def _state_docs(self, tx: Any, profile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored state docs of these profiles (absent: none stored)."""

    @abc.abstractmethod
    def _states_present(self, tx: Any, profile_ids: Sequence[str]) -> set[str]:
        """Those of `profile_ids` with a stored state doc (without reading the docs)."""

    @abc.abstractmethod
    def _put_states(self, tx: Any, docs: Mapping[str, dict[str, Any]]) -> None:
        """Store state docs (replacing)."""

    @abc.abstractmethod
    def _state_ids(self, tx: Any) -> list[str]:
        """Every profile with a state doc, sorted."""

    # -- consent and contacts
    @abc.abstractmethod
    def _consent_rows(self, tx: Any, profile_ids: Sequence[str] | None) -> list[tuple[str, str, bool, int]]:
        """(profile id, purpose, granted, updated_ns) of these profiles (None: all), by profile and purpose."""

    @abc.abstractmethod
    def _put_consent(self, tx: Any, profile_id: str, purpose: str, granted: bool, now_ns: int) -> None:
        """Record one consent choice (replacing the earlier one of that purpose)."""

    @abc.abstractmethod
    def _reserve(self, profile_id: str, channel: str, now_ns: int, limits: Sequence[tuple[int, int]],
                 key: str | None) -> bool:
        """Atomically (against every process): True if `key` is already recorded for (profile, channel);
        else if every (window_ns, most) has room (contacts with |ts - now| < window counted), record one
        contact and answer True; else False. Durable on return."""

    @abc.abstractmethod
    def _contacts(self, tx: Any, profile_id: str) -> list[tuple[str, int, str | None]]:
        """(channel, ts_ns, key) of the profile's contacts, oldest first (ties in recording order)."""

    # -- tombstones and erasure
    @abc.abstractmethod
    def _tombstones(self, tx: Any, kind: str, digests: Sequence[str]) -> dict[str, int]:
        """digest -> erasure time (epoch ns) of the stored tombstones of `kind` among `digests`."""

    @abc.abstractmethod
    def _put_tombstones(self, tx: Any, kind: str, rows: Sequence[tuple[str, int]]) -> None:
        """Store (digest, erasure ns) tombstones of `kind` (replacing: the latest erasure wins)."""

    @abc.abstractmethod
    def _delete_person(self, tx: Any, profile_id: str, all_ids: Sequence[str], event_ids: Sequence[str],
                       tokens: Sequence[str]) -> None:
        """Delete every trace of the (canonical) profile: its events and their sentiment, tokens, device
        pairs and shared marks of its tokens, state, consent, contacts, profile row, aliases into it, and
        the optional logs' rows of any of `all_ids` (the profile and the ids merged into it)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    # -- optional hooks (defaults: nothing to do) ----------------------------------------------------------
    def _legacy_erased_events(self, tx: Any, ids: Sequence[str]) -> set[str]:
        """Erased event ids held in a form an older release wrote (SQLite files); none by default."""
        return set()

    def _legacy_token_erasures(self, tx: Any, tokens: Sequence[str]) -> dict[str, int]:
        """token -> erasure ns from tombstones an older release wrote (SQLite files); none by default."""
        return {}

    def _erasure_begins(self) -> None:
        """Called before an erasure's write (SQLite: secure_delete)."""
        return None

    def _erasure_done(self) -> None:
        """Called after an erasure committed (SQLite: truncate the WAL, which held the rows' old pages)."""
        return None

    # == shared logic ====================================================================================
    def _keyed(self, domain: bytes, value: str) -> str:
        """A tombstone digest: HMAC-SHA256 keyed with the store's hash key (never a plain digest, which a
        stolen store could be brute-forced with: phone numbers and customer ids are few)."""
        return hmac.digest(self._tomb_key, domain + value.encode(), "sha256").hex()

    def _tomb(self, kind: str, value: str) -> str:
        return self._keyed(_DOMAINS[kind], value)

    # -- caches ---------------------------------------------------------------------------------------
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

    # -- identity -------------------------------------------------------------------------------------
    def _normalise_identifiers(self, identifiers: Mapping[str, str]) -> list[str]:
        tokens = []
        for col, raw in identifiers.items():
            if col not in IDENTIFIER_COLUMNS:
                raise ValueError(_unknown_identifier(col))
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
        rows = self._token_profiles(self._read(), tokens)
        return next((rows[t] for t in tokens if t in rows), None)

    def resolve_many(self, column: str, values: Sequence[str]) -> dict[str, str | None]:
        """Bulk resolve of one identifier column (serving's /scores)."""
        toks = {v: self._normalise_identifiers({column: v}) for v in values}
        rows = self._token_profiles(self._read(), sorted({t[0] for t in toks.values() if t}))
        return {v: (rows.get(t[0]) if t else None) for v, t in toks.items()}

    def identifiers_of(self, profile_ids: Sequence[str], column: str = CUSTOMER_ID) -> dict[str, list[str]]:
        """Each profile's stored values of one identifier column, sorted (one read for a batch): the
        retailer's own ids of the people a segment export or /scores names by profile. Email and phone
        are stored hashed, so only plain columns (customer, loyalty, device, cookie ids) say anything."""
        if column not in IDENTIFIER_COLUMNS:
            raise ValueError(_unknown_identifier(column))
        out: dict[str, list[str]] = {}
        prefix = f"{column}:"
        if profile_ids:
            for token, pid in self._profile_tokens(self._read(), list(profile_ids)):
                if token.startswith(prefix):
                    out.setdefault(pid, []).append(token[len(prefix):])
        for vals in out.values():
            vals.sort()
        return out

    def _settle(self, tx: Any, components: Sequence[tuple[str, frozenset[str] | set[str]]]
                ) -> tuple[list[str], list[str], set[str]]:
        """Per component (min new token, existing profiles in it): its id, upserted, and merges done.

        The id is "p_" + sha1 of the component's smallest token, counting the stored profiles' own
        smallest tokens; every other stored profile in it is re-keyed to that id (history kept).
        """
        olds = sorted({p for _, ps in components for p in ps})
        min_of = self._min_tokens(tx, olds) if olds else {}
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
                self._merge_profile(tx, old, pid)
                merged.append(old)
                merged_into.add(pid)
        self._put_profiles(tx, upserts)
        return final, merged, merged_into

    def _link(self, tx: Any, b: _Batch) -> tuple[list[str], list[str], set[str]]:
        """Assign a profile id to every row of a batch; returns ids, merged ids, merge targets.

        The rule is `features.identity.link_batch` (one batch links as a whole); this is its glue: read the
        stored links of the batch's tokens and the shared devices, record the device/customer pairs (devices
        over `max_profiles_per_device` become shared), settle the components and write the new links.
        """
        batch = token_batch({c: b.array(c) for c in IDENTIFIER_COLUMNS})
        vocab = list(batch.tokens)
        known = self._token_profiles(tx, vocab)
        devices = [t for t in vocab if t.split(":", 1)[0] in _DEVICE_COLUMNS]
        shared = self._shared_devices(tx, devices) if devices else set()
        pairs = batch.device_customer_pairs(_DEVICE_COLUMNS)
        if pairs:
            counts = self._record_device_pairs(tx, pairs)
            over = sorted(d for d, n in counts.items() if n > self.config.max_profiles_per_device and d not in shared)
            if over:
                self._mark_shared_devices(tx, over)
                shared |= set(over)
        links = link_batch(batch, known, shared)
        ids, merged, merged_into = self._settle(tx, list(links.components))
        self._put_tokens(tx, [(t, ids[c]) for t, c in links.token_component.items() if known.get(t) != ids[c]])
        return [ids[c] for c in links.row_component], merged, merged_into

    # -- writes ---------------------------------------------------------------------------------------
    def append_events(self, events: pd.DataFrame, sentiment: pd.Series | None = None, *,
                      validated: bool = False) -> AppendResult:
        """Validate, de-duplicate, link and store a batch in one write; durable on return.

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
        """Store good rows in one write; a conflict names its row by `rows` (one number per row of ev)."""
        if not len(ev):
            return AppendResult(0, 0, ())
        b = _batch_from_frame(ev)
        with self._write() as tx:
            acc, dups, pids, sup, merged, conflicts = self._append(tx, b, sentiment)
        self._invalidate(set(pids) | set(merged))
        errors = tuple({ERROR_ROW: int(rows[at]), EVENT_ID: eid, ERROR_FIELD: EVENT_ID, ERROR_REASON: CONFLICT_REASON}
                       for at, eid in conflicts)
        return AppendResult(len(acc), dups, tuple(sorted(set(pids))), len(conflicts), sup, tuple(merged), errors,
                            tuple(acc))

    def load_events(self, events: pd.DataFrame, batch_size: int = 250_000, progress: bool = True, *,
                    validated: bool = False) -> AppendResult:
        """Bulk seeding (demo, benchmarks): validate once, then large vectorised batches, one write each.

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

    def _append(self, tx: Any, b: _Batch, sentiment: pd.Series | None
                ) -> tuple[list[str], int, list[str], int, list[str], list[tuple[int, str]]]:
        """Inside the write: returns accepted ids, duplicates, row profiles, suppressed, merged, and the
        conflicts as (position in the source frame, event id).

        Each copy of a stored id, and each repeat inside the batch (validated frames have none), is compared by
        content digest with the stored event, else with the batch's first copy (the one stored now): the same
        content is a duplicate, other content a conflict.  Digests are computed only for the rows compared and,
        on the per-event path, for the rows stored (the vectorised path leaves them to `_stored_digests`).
        """
        ids = b.cols[EVENT_ID]
        first: dict[str, int] = {}
        for i, e in enumerate(ids):
            first.setdefault(e, i)
        stored = self._stored_digests(tx, list(first))
        erased = self._erased_event_ids(tx, list(first))
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
        b, late = self._drop_tombstoned(tx, b)
        suppressed += late
        if not len(b):
            return [], dups, [], suppressed, [], sorted(conflicts)
        bulk = len(b) >= self.config.bulk_rows
        pids, merged, merged_into = self._link(tx, b)
        new_digests = [digests.get(at) for at in b.at] if bulk else [digest_at(i, b) for i in range(len(b))]
        self._insert_events(tx, b, pids, new_digests)
        if sentiment is not None and len(sentiment):  # only the events stored now: never a suppressed one's
            self._write_scores(tx, clean_scores(sentiment, set(b.cols[EVENT_ID])))
        (self._states_bulk if bulk else self._update_states)(tx, b, pids, merged_into)
        return list(b.cols[EVENT_ID]), dups, pids, suppressed, sorted(merged), sorted(conflicts)

    def _erased_event_ids(self, tx: Any, ids: Sequence[str]) -> set[str]:
        """The ids among `ids` of erased events (keyed tombstones, and any a backend holds in a legacy form)."""
        if not ids:
            return set()
        by_digest = {self._tomb(TOMB_EVENT, e): e for e in ids}
        out = {by_digest[d] for d in self._tombstones(tx, TOMB_EVENT, list(by_digest))}
        return out | self._legacy_erased_events(tx, ids)

    def _drop_tombstoned(self, tx: Any, b: _Batch) -> tuple[_Batch, int]:
        """Events carrying an erased identifier and older than its erasure never come back."""
        if not len(b):
            return b, 0
        tokens = [[f"{c}:{v}" for c in IDENTIFIER_COLUMNS if (v := b.cols[c][i]) is not None] for i in range(len(b))]
        distinct = sorted({t for ts in tokens for t in ts})
        by_digest = {self._tomb(TOMB_TOKEN, t): t for t in distinct}
        when = {by_digest[d]: ns for d, ns in self._tombstones(tx, TOMB_TOKEN, list(by_digest)).items()}
        for t, ns in self._legacy_token_erasures(tx, distinct).items():
            when[t] = max(ns, when.get(t, ns))
        if not when:
            return b, 0
        keep = [i for i, ts in enumerate(tokens) if not any(t in when and b.ts[i] <= when[t] for t in ts)]
        return b.take(keep), len(b) - len(keep)

    # -- online state ---------------------------------------------------------------------------------
    def _history(self, tx: Any, profile_ids: Sequence[str]) -> tuple[_Batch, list[str]]:
        """Stored events of these profiles as a _Batch (oldest first) and their profile ids."""
        return _batch_from_rows(self._event_rows(tx, list(profile_ids)))

    def _update_states(self, tx: Any, b: _Batch, pids: list[str], merged_into: set[str]) -> None:
        """Small batch: fold the new events into each stored state (replay the history when merged or late)."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pids):
            groups.setdefault(p, []).append(i)
        states = self._state_docs(tx, list(groups))
        out: dict[str, dict[str, Any]] = {}
        scores = self._stored_scores(tx, b.cols[EVENT_ID])
        for pid, rows in groups.items():
            state = states.get(pid)
            stale = state is not None and state.get("v") != _STATE_VERSION  # written by an older version
            if pid in merged_into or stale or (state is not None and b.ts[rows[0]] < state["last"]):
                hist, _ = self._history(tx, [pid])  # merged, old or late (out of order): replay, exact
                state = apply_events(_empty_state(), hist, range(len(hist)), self.config,
                                     self._stored_scores(tx, hist.cols[EVENT_ID]))
            else:
                state = apply_events(state or _empty_state(), b, rows, self.config, scores)
            out[pid] = state
        self._put_states(tx, out)

    def _states_bulk(self, tx: Any, b: _Batch, pids: list[str], merged_into: set[str]) -> None:
        """Large batch: new profiles' states built vectorised; stored ones folded as in `_update_states`."""
        stored = self._states_present(tx, sorted(set(pids))) | merged_into
        fresh = [i for i, p in enumerate(pids) if p not in stored]
        if fresh:
            self._put_states(tx, {p: s for p, s, _ in _build_states(
                b.take(fresh), [pids[i] for i in fresh], self.config, self._stored_scores(tx, b.cols[EVENT_ID]))})
        if stored:
            rest = [i for i, p in enumerate(pids) if p in stored]
            self._update_states(tx, b.take(rest), [pids[i] for i in rest], merged_into)

    def _replayed(self, tx: Any, profile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """States rebuilt from the stored events (vectorised, the same rules as the fold)."""
        hist, owners = self._history(tx, profile_ids)
        if not len(hist):
            return {}
        return {p: s for p, s, _ in _build_states(hist, owners, self.config,
                                                  self._stored_scores(tx, hist.cols[EVENT_ID]))}

    def _current(self, tx: Any, docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Docs as read, with any of an older version (an older release wrote it) rebuilt from the events;
        the next write to the profile stores it."""
        stale = [p for p, s in docs.items() if s.get("v") != _STATE_VERSION]
        if stale:
            docs = {**docs, **self._replayed(tx, stale)}
        return docs

    def get_profile(self, profile_id: str) -> OnlineProfile | None:
        """Current online state (one doc read, LRU-cached until this profile's next write)."""
        gen = 0
        if self._cache_on:
            with self._cache_lock:
                if profile_id in self._state_cache:
                    self._state_cache.move_to_end(profile_id)
                    return self._state_cache[profile_id]
                gen = self._gen
        tx = self._read()
        doc = self._state_docs(tx, [profile_id]).get(profile_id)
        if doc is None:
            canon = self._canonical_id(tx, profile_id)
            return self.get_profile(canon) if canon != profile_id else None
        prof = to_profile(profile_id, self._current(tx, {profile_id: doc})[profile_id],
                          self._erased_ns(tx, [profile_id]).get(profile_id))
        self._remember_states({profile_id: prof}, gen)
        return prof

    def get_profiles(self, profile_ids: Sequence[str]) -> list[OnlineProfile | None]:
        """`get_profile` for many ids in one read for all cache misses (batch scoring reads 10,000)."""
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
            tx = self._read()
            docs = self._current(tx, self._state_docs(tx, missing))
            erased = self._erased_ns(tx, list(docs))
            fresh = {pid: to_profile(pid, s, erased.get(pid)) for pid, s in docs.items()}
            self._remember_states(fresh, gen)
            found.update(fresh)
            for pid in missing:
                if pid not in found:  # merged away or unknown: the single path follows merges
                    found[pid] = self.get_profile(pid)
        return [found[p] for p in ids]

    _to_profile = staticmethod(to_profile)  # the fold's doc -> OnlineProfile (kept for callers of the method)

    # -- reads ----------------------------------------------------------------------------------------
    def events_for(self, profile_ids: Sequence[str]) -> pd.DataFrame:
        """Stored events of these profiles (canonical columns + PROFILE_ID), oldest first."""
        return _frame(self._event_rows(self._read(), sorted(set(profile_ids))), list(_STORED))

    def export_events(self) -> pd.DataFrame:
        """Every stored event for training (erased profiles are gone, so never included)."""
        return _frame(self._event_rows(self._read(), None), list(_STORED))

    def export_events_to(self, path: str | Path, *, batch_size: int = EXPORT_BATCH) -> int:
        """`export_events` into a parquet file, `batch_size` rows at a time (one row group each), so a store
        larger than memory exports for training; returns the rows written.

        The same rows, columns and dtypes as `export_events()` (canonical columns + PROFILE_ID, oldest
        first), from one snapshot; the erased are not in the store, so never in the file.  Written to
        `<path>.partial` and renamed at the end: a failed export leaves no file that looks complete.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        written = 0
        chunks = self._iter_event_rows(int(batch_size))
        try:
            with pq.ParquetWriter(partial, _EXPORT_SCHEMA) as writer:
                for rows in chunks:
                    writer.write_table(_arrow_rows(rows))
                    written += len(rows)
            target.parent.mkdir(parents=True, exist_ok=True)
            Path(partial).replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return written

    # -- sentiment ------------------------------------------------------------------------------------
    def record_sentiment(self, scores: Mapping[str, float] | pd.Series) -> int:
        """Model sentiment scores by event_id; features_for uses them in place of ratings.

        Only scores of stored events are kept (returns how many): a score of an event the store does not
        hold, never stored or erased, is dropped, so an erased review sent again never finds a score.
        """
        with self._write() as tx:
            owner = self._event_owners(tx, sorted({str(k) for k, _ in scores.items()}))  # a Series iterates values
            rows = clean_scores(scores, owner)
            self._write_scores(tx, rows)
            self._put_states(tx, self._replayed(tx, sorted(set(owner.values()))))  # the state reads scores too
        self._invalidate(set(owner.values()))
        return len(rows)

    def sentiment_for(self, event_ids: Sequence[str]) -> pd.Series:
        return pd.Series(self._stored_scores(self._read(), list(event_ids)), dtype="float64")

    # -- feature rows ---------------------------------------------------------------------------------
    def _as_of_ns(self, as_of: Any) -> int:
        if as_of is not None:
            return _to_ns(as_of)
        g = self.config.feature_granularity_s * _NS
        return (pd.Timestamp.now(tz="UTC").value // g) * g

    def _build_features(self, tx: Any, profile_ids: Sequence[str] | None, as_of_ns: int
                        ) -> dict[str, tuple[Any, ...]]:
        """Feature rows of these profiles (None: everyone): one read, one build_profiles call, over the
        events each profile's consent allows (the rest get the row of an empty history)."""
        ev, sent = self._feature_input(tx, profile_ids, as_of_ns)
        ev, blank = self._consented(tx, ev, profile_ids)
        built = build_profiles(ev, pd.Timestamp(as_of_ns, tz="UTC"), self.config.profile_config, sentiment=sent)
        self._set_feature_columns(built)
        out = dict(zip(built[PROFILE_ID].tolist(), built.itertuples(index=False, name=None), strict=True))
        out.update((pid, self._empty_history_row(pid)) for pid in blank)
        return out

    def _usable_sources(self, tx: Any, profile_ids: Sequence[str] | None
                        ) -> tuple[dict[str, frozenset[str]], frozenset[str]]:
        """Source purposes each profile allows its signals from (one consent read for all of them),
        and those of a profile with no recorded choice (the defaults)."""
        flags = self._consent_flags(tx, profile_ids)
        usable = {pid: input_purposes(granted_purposes(f)) for pid, f in flags.items()}
        return usable, input_purposes(granted_purposes({}))

    def _consented(self, tx: Any, ev: pd.DataFrame, profile_ids: Sequence[str] | None
                   ) -> tuple[pd.DataFrame, list[str]]:
        """Only the events whose source each profile has granted (and none without personalization);
        plus the profiles that had events but none usable (they get the row of an empty history)."""
        if not len(ev):
            return ev, []
        usable, default = self._usable_sources(tx, profile_ids)
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
            built = self._build_features(self._read(), missing, as_of_ns)
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
        tx = self._read()
        built = self._build_features(tx, None, as_of_ns)
        rows: dict[str, tuple[Any, ...] | None] = dict.fromkeys(self._state_ids(tx))
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

    # -- consent, contacts ----------------------------------------------------------------------------
    def set_consent(self, profile_id: str, purpose: str, granted: bool) -> None:
        """Record a choice; the profile's cached feature rows (built from what it granted) go at once."""
        if not purpose:
            raise ValueError("purpose must be non-empty")
        if not isinstance(granted, (bool, np.bool_)):
            raise ValueError(f"consent for {purpose!r} must be true or false, got {granted!r}")
        with self._write() as tx:
            self._put_consent(tx, profile_id, purpose, bool(granted), pd.Timestamp.now(tz="UTC").value)
        self._invalidate({profile_id})

    def _consent_flags(self, tx: Any, profile_ids: Sequence[str] | None) -> dict[str, dict[str, bool]]:
        """Profile -> purpose -> granted, from one consent read (None: every profile); profiles without a
        recorded choice are absent."""
        out: dict[str, dict[str, bool]] = {}
        for pid, purpose, granted, _ in self._consent_rows(tx, profile_ids):
            out.setdefault(pid, {})[purpose] = bool(granted)
        return out

    def get_consent(self, profile_id: str) -> dict[str, bool]:
        return self._consent_flags(self._read(), [profile_id]).get(profile_id, {})

    def get_consents(self, profile_ids: Sequence[str]) -> dict[str, dict[str, bool]]:
        """`get_consent` for many profiles in one read (batch scoring reads 10,000); profiles without a
        recorded choice are absent (their defaults apply)."""
        ids = sorted(set(map(str, profile_ids)))
        return self._consent_flags(self._read(), ids) if ids else {}

    def profile_ids(self) -> list[str]:
        """Every profile with an online state (warm-ups score them all)."""
        return self._state_ids(self._read())

    def reserve_contact(self, profile_id: str, channel: str, now: Any, caps: Mapping[Any, int], *,
                        key: str | None = None) -> bool:
        """Atomically: if every cap (window -> max contacts on this channel) has room, record one contact.

        Contacts on either side of `now` count (a request that started a moment earlier may commit after
        this one, and a message deferred past quiet hours is recorded ahead). `key` names the decision
        (campaign + decision window + action): when a contact with this key is already recorded for the
        profile and channel, the answer is True again and no second slot is used, so a retried request never
        sends (or counts) the same message twice. Durable on return.
        """
        if key is not None and (not isinstance(key, str) or not key.strip()):
            raise ValueError("key must be a non-empty string (or None)")
        limits = [(_window_ns(w), int(m)) for w, m in caps.items()]
        return self._reserve(profile_id, channel, _to_ns(now), limits, key)

    def contacts_for(self, profile_id: str) -> list[tuple[str, dt.datetime, str | None]]:
        """(channel, time, key) of every recorded contact of the profile, oldest first (tests, operations)."""
        return [(ch, _dt(ts), key) for ch, ts, key in self._contacts(self._read(), profile_id)]

    # -- erasure --------------------------------------------------------------------------------------
    def erase_profile(self, profile_id: str) -> int:
        """Delete events, identifiers, state, consent, contacts, decisions, served lists, sentiment; leave
        keyed tombstones.

        Returns the number of events deleted.  Re-sent old events (same id, or an erased identifier with a
        timestamp before now) are suppressed on append and on bulk load, so nothing erased comes back; the
        time of the erasure is kept per profile id (`erased_at`) so that model state learned before it is
        not used for the person if they come back.  How no byte is left is the backend's (`_erasure_begins`,
        `_delete_person`, `_erasure_done`).
        """
        now = pd.Timestamp.now(tz="UTC").value
        self._erasure_begins()
        with self._write() as tx:
            pid = self._canonical_id(tx, profile_id)
            ev_ids = [r[2] for r in self._event_rows(tx, [pid])]
            tokens = [t for t, _ in self._profile_tokens(tx, [pid])]
            olds = self._aliases_of(tx, pid)
            all_ids = sorted({pid, profile_id, *olds})
            self._put_tombstones(tx, TOMB_EVENT, [(self._tomb(TOMB_EVENT, e), now) for e in ev_ids])
            self._put_tombstones(tx, TOMB_TOKEN, [(self._tomb(TOMB_TOKEN, t), now) for t in tokens])
            self._put_tombstones(tx, TOMB_PROFILE, [(self._tomb(TOMB_PROFILE, p), now) for p in all_ids])
            self._delete_person(tx, pid, all_ids, ev_ids, tokens)
        self._invalidate(set(all_ids))
        self._erasure_done()
        return len(ev_ids)

    def erased_at(self, profile_id: str) -> dt.datetime | None:
        """When this profile id was last erased (None: never), for serving to refuse model state learned
        before it (a recommender's vector of a person who came back under the same id)."""
        ns = self._erased_ns(self._read(), [profile_id]).get(profile_id)
        return None if ns is None else _dt(ns)

    def _erased_ns(self, tx: Any, profile_ids: Sequence[str]) -> dict[str, int]:
        """Time of the last erasure (epoch ns) of those of `profile_ids` ever erased (one read)."""
        if not profile_ids:
            return {}
        by_digest = {self._tomb(TOMB_PROFILE, p): p for p in profile_ids}
        return {by_digest[d]: int(ns) for d, ns in self._tombstones(tx, TOMB_PROFILE, list(by_digest)).items()}

    def _export_document(self, *, pid: str, requested: str, merged: list[str], events: pd.DataFrame,
                         tokens: Sequence[str], shared: Container[str], state: OnlineProfile | None,
                         consent: Sequence[tuple[str, bool, int]], contacts: Sequence[tuple[str, int, str | None]],
                         decisions: pd.DataFrame | None, served: pd.DataFrame | None, scores: Mapping[str, float],
                         erased: Mapping[str, int]) -> dict[str, Any]:
        """The access-request document (`export_profile`) from what a backend read in one snapshot."""
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
            "requested_id": requested,
            "merged_ids": merged,
            "events": _records(events),
            "identifiers": identifiers,
            "online_state": None if state is None else {f.name: getattr(state, f.name) for f in fields(state)},
            "consent": [{"purpose": p, "granted": bool(g), "updated_at": _dt(t)} for p, g, t in consent],
            "contacts": [{"channel": ch, "ts": _dt(t), "key": k} for ch, t, k in contacts],
            "decisions": [] if decisions is None else _records(decisions),
            "recommendations": [] if served is None else _records(served),
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
