"""Identity resolution: link identifiers seen together into one profile per person, transitively.

Every identifier value becomes a token ``"<column>:<value>"`` (email/phone as stored, i.e. hashed).
Tokens that appear on the same event are linked; a profile is a connected component, and its id is
``"p_" + sha1(min token)[:16]``.  The id depends only on the component, never on the order events
arrived in, so the offline resolution (:func:`resolve_identities`) and the incremental one
(:class:`IdentityGraph`) agree.

Shared-device guard: a device or cookie token seen on events with more than
``IdentityConfig.max_profiles_per_device`` distinct customer ids is a shared device (a family
tablet, a store kiosk); it links nothing.  An event that carries only shared tokens gets the
profile of its smallest token on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from features.schema import COOKIE_ID, CUSTOMER_ID, DEVICE_ID, IDENTIFIER_COLUMNS, PROFILE_ID

PROFILE_PREFIX: Final = "p_"


@dataclass(frozen=True)
class IdentityConfig:
    """Linking rules shared by the offline and the incremental resolution."""

    max_profiles_per_device: int = 3
    shared_token_columns: tuple[str, ...] = (DEVICE_ID, COOKIE_ID)
    identifier_columns: tuple[str, ...] = IDENTIFIER_COLUMNS

    def __post_init__(self) -> None:
        if self.max_profiles_per_device < 1:
            raise ValueError(f"max_profiles_per_device must be >= 1, got {self.max_profiles_per_device}")
        unknown = set(self.shared_token_columns) - set(self.identifier_columns)
        if unknown:
            raise ValueError(f"shared_token_columns must be identifier columns; unknown: {sorted(unknown)}")
        if CUSTOMER_ID not in self.identifier_columns:
            raise ValueError("identifier_columns must include customer_id (the shared-device guard counts them)")


@dataclass(frozen=True)
class LinkResult:
    """The event's profile after observing it, and the profile ids that a merge made disappear."""

    profile_id: str
    merged: tuple[str, ...] = ()


def profile_id_for(min_token: str) -> str:
    """The profile id of a component, from its smallest token (order-independent by construction)."""
    return PROFILE_PREFIX + hashlib.sha1(min_token.encode("utf-8")).hexdigest()[:16]


def token(column: str, value: str) -> str:
    return f"{column}:{value}"


# ---------------------------------------------------------------------------------------------
# offline
# ---------------------------------------------------------------------------------------------
def resolve_identities(events: pd.DataFrame, config: IdentityConfig = IdentityConfig()) -> pd.DataFrame:
    """A copy of ``events`` with ``profile_id`` added (vectorised; scipy connected components).

    Rows without any identifier get a missing profile id.
    """
    present = [c for c in config.identifier_columns if c in events.columns]
    if not present:
        raise ValueError(f"events have none of the identifier columns {', '.join(config.identifier_columns)}")
    n = len(events)
    out = events.copy()
    if n == 0:
        out[PROFILE_ID] = pd.Series(dtype="string")
        return out

    # Token codes: columns ordered by their "<column>:" prefix and values sorted within a column, so
    # code order is token string order (the smallest code of a component is its min token).
    # Values are expected canonical (already stripped, as validate_events leaves them).
    big = np.iinfo(np.int64).max
    ordered = sorted(present, key=lambda c: f"{c}:")
    codes_by_col: dict[str, np.ndarray] = {}
    dictionaries: list[tuple[str, pa.Array]] = []
    offset = 0
    for col in ordered:
        arr = pa.array(events[col].astype("string").array)
        arr = arr.cast(pa.string()) if arr.type != pa.string() else arr
        arr = pc.if_else(pc.greater(pc.binary_length(arr), 0), arr, pa.scalar(None, pa.string()))
        enc = pc.dictionary_encode(arr).combine_chunks() if isinstance(arr, pa.ChunkedArray) else pc.dictionary_encode(arr)
        order = pc.sort_indices(enc.dictionary).to_numpy()
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        idx = enc.indices.to_numpy(zero_copy_only=False)
        valid = ~np.isnan(idx) if idx.dtype.kind == "f" else np.ones(len(idx), bool)
        c = np.full(n, big, np.int64)
        c[valid] = offset + rank[idx[valid].astype(np.int64)]
        codes_by_col[col] = c
        dictionaries.append((col, pc.take(enc.dictionary, pa.array(order))))
        offset += len(order)
    n_tok = offset
    if n_tok == 0:
        out[PROFILE_ID] = pd.Series(pd.NA, index=out.index, dtype="string")
        return out
    codes = [codes_by_col[c] for c in present]
    uniq = pa.chunked_array([pc.binary_join_element_wise(f"{col}:", d, "") for col, d in dictionaries],
                            type=pa.string()).combine_chunks()

    # shared-device guard: device/cookie tokens seen with too many distinct customer ids
    shared = np.zeros(n_tok, bool)
    if CUSTOMER_ID in present:
        cust = codes[present.index(CUSTOMER_ID)]
        for colname in config.shared_token_columns:
            if colname not in present:
                continue
            dev = codes[present.index(colname)]
            both = (dev < big) & (cust < big)
            if both.any():
                keys = pd.unique(dev[both] * n_tok + cust[both])
                shared |= np.bincount(keys // n_tok, minlength=n_tok) > config.max_profiles_per_device

    # anchor of each row: its smallest non-shared token (or smallest token when all are shared)
    anchor = np.full(n, big, np.int64)
    fallback = np.full(n, big, np.int64)
    linking: list[np.ndarray] = []
    for c in codes:
        present_c = c < big
        lk = present_c & ~shared[np.where(present_c, c, 0)]
        linking.append(lk)
        anchor = np.where(lk, np.minimum(anchor, c), anchor)
        fallback = np.minimum(fallback, c)
    has_tok = fallback < big
    anchor_ok = anchor < big
    src = np.concatenate([anchor[lk] for lk in linking])
    dst = np.concatenate([c[lk] for c, lk in zip(codes, linking, strict=True)])
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n_tok, n_tok)).tocsr()
    n_comp, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # tokens are sorted: first member = min token
    min_tokens = pc.take(uniq, pa.array(first)).to_pylist()
    comp_ids = np.array([profile_id_for(t) for t in min_tokens], dtype=object)
    node = np.where(anchor_ok, anchor, fallback)
    row_comp = np.where(has_tok, labels[np.where(has_tok, node, 0)], -1)
    taken = pc.take(pa.array(comp_ids, type=pa.string()), pa.array(row_comp, mask=row_comp < 0))
    out[PROFILE_ID] = pd.Series(pd.arrays.ArrowStringArray(taken), index=out.index)
    return out


# ---------------------------------------------------------------------------------------------
# incremental
# ---------------------------------------------------------------------------------------------
class IdentityGraph:
    """Incremental, in-memory identity graph; same profile ids as :func:`resolve_identities`.

    Keeps every distinct token set it has observed, so that when a device turns out to be shared
    (after it linked a few customers) the graph can be rebuilt without it, exactly as the offline
    resolution would have built it from the same events.
    """

    def __init__(self, config: IdentityConfig = IdentityConfig()) -> None:
        self.config = config
        self._parent: dict[str, str] = {}
        self._min: dict[str, str] = {}  # root -> smallest token of its component
        self._sets: set[frozenset[str]] = set()
        self._customers: dict[str, set[str]] = {}  # guard-column token -> customer tokens seen with it
        self._shared: set[str] = set()

    # -- union-find ---------------------------------------------------------------------------
    def _find(self, t: str) -> str:
        parent = self._parent
        root = t
        while parent[root] != root:
            root = parent[root]
        while parent[t] != root:
            parent[t], t = root, parent[t]
        return root

    def _add(self, t: str) -> None:
        if t not in self._parent:
            self._parent[t] = t
            self._min[t] = t

    def _union(self, a: str, b: str) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if self._min[rb] < self._min[ra]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        del self._min[rb]

    def _tokens(self, identifiers: Mapping[str, str]) -> list[str]:
        toks = []
        for col, value in identifiers.items():
            if col not in self.config.identifier_columns:
                raise ValueError(f"unknown identifier {col!r}; expected one of {', '.join(self.config.identifier_columns)}")
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            v = str(value).strip()
            if v:
                toks.append(token(col, v))
        return toks

    def _profile_of(self, toks: Iterable[str]) -> str:
        toks = list(toks)
        linking = [t for t in toks if t not in self._shared]
        if not linking:
            return profile_id_for(min(toks))
        return profile_id_for(self._min[self._find(min(linking))])

    def _link(self, toks: frozenset[str]) -> None:
        linking = sorted(t for t in toks if t not in self._shared)
        for t in linking:
            self._add(t)
        for t in linking[1:]:
            self._union(linking[0], t)

    def _rebuild(self) -> None:
        self._parent.clear()
        self._min.clear()
        for s in self._sets:
            self._link(s)

    # -- public -------------------------------------------------------------------------------
    def observe(self, identifiers: Mapping[str, str]) -> LinkResult:
        """Record one event's identifiers; links them and returns the resulting profile."""
        toks = self._tokens(identifiers)
        if not toks:
            raise ValueError("an event needs at least one identifier")
        key = frozenset(toks)
        before = {self._profile_of([t]) for t in toks if t in self._parent and t not in self._shared}
        newly_shared = False
        cust = [t for t in toks if t.startswith(f"{CUSTOMER_ID}:")]
        if cust:
            for t in toks:
                col = t.split(":", 1)[0]
                if col in self.config.shared_token_columns and t not in self._shared:
                    seen = self._customers.setdefault(t, set())
                    seen.update(cust)
                    if len(seen) > self.config.max_profiles_per_device:
                        self._shared.add(t)
                        del self._customers[t]
                        newly_shared = True
        if key not in self._sets:
            self._sets.add(key)
            if newly_shared:
                self._rebuild()
            else:
                self._link(key)
        elif newly_shared:
            self._rebuild()
        pid = self._profile_of(toks)
        return LinkResult(profile_id=pid, merged=tuple(sorted(before - {pid})))

    def lookup(self, identifiers: Mapping[str, str]) -> str | None:
        """The profile of the first known identifier (customer id first); None if none is known."""
        toks = self._tokens(identifiers)
        order = {c: i for i, c in enumerate(self.config.identifier_columns)}
        toks.sort(key=lambda t: (order[t.split(":", 1)[0]], t))
        for t in toks:
            if t in self._parent and t not in self._shared:
                return self._profile_of([t])
        shared = [t for t in toks if t in self._shared]
        return profile_id_for(min(shared)) if shared else None

    def is_shared(self, column: str, value: str) -> bool:
        return token(column, value) in self._shared

    def __len__(self) -> int:
        """Number of profiles (components) currently known."""
        return len(self._min)
