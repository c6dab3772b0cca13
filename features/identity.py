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
from collections.abc import Container, Iterable, Mapping
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
def encode_strings(values: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode a column as strings: int32 codes (-1 = missing) and its distinct values.

    Why: hashing each value once in arrow, with no Python object per row, is what makes factorising
    millions of string ids cheap.  pandas keeps arrow strings chunked; the chunks of one
    ``dictionary_encode`` share a single dictionary, so their indices are simply concatenated.
    """
    arr = pa.array(values.astype("string").array)
    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr])
    enc = pc.dictionary_encode(arr)
    if enc.num_chunks == 0:
        return np.empty(0, np.int32), pa.array([], type=arr.type)
    size = len(enc.chunks[-1].dictionary)
    if any(len(ch.dictionary) != size for ch in enc.chunks):  # not one shared dictionary: unify first
        enc = pa.chunked_array([enc.combine_chunks()])
    codes = np.concatenate([pc.fill_null(ch.indices, -1).to_numpy() for ch in enc.chunks])
    return codes, enc.chunks[-1].dictionary


def _sorted_tokens(values: pd.Series) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """A column's codes, the sorted rank of each code (-1 for missing or empty: rank[-1] is the slot
    that code -1 picks) and its non-empty distinct values in sorted order."""
    codes, dictionary = encode_strings(values)
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order) + 1, np.int64)
    rank[order] = np.arange(len(order))
    if len(order) and len(dictionary[int(order[0])].as_py()) == 0:  # "" sorts first: treat it as missing
        rank -= 1
        order = order[1:]
    rank[-1] = -1
    return codes, rank, pc.take(dictionary, pa.array(order))


def resolve_identities(events: pd.DataFrame, config: IdentityConfig = IdentityConfig()) -> pd.DataFrame:
    """A copy of ``events`` with ``profile_id`` added (vectorised; scipy connected components).

    Rows without any identifier get a missing profile id.
    """
    present = [c for c in config.identifier_columns if c in events.columns]
    if not present:
        raise ValueError(f"events have none of the identifier columns {', '.join(config.identifier_columns)}")
    n = len(events)
    out = events.copy(deep=False)  # copy-on-write: adding a column never reaches the caller's frame
    if n == 0:
        out[PROFILE_ID] = pd.Series(dtype="string")
        return out

    # Token codes: each column factorised once; columns ordered by their "<column>:" prefix and values
    # sorted within a column, so code order is token string order (a component's smallest code is its
    # min token).  Token strings are built for distinct values only.  Values are expected canonical.
    ordered = sorted(present, key=lambda c: f"{c}:")
    local = {col: _sorted_tokens(events[col]) for col in ordered}
    offsets = np.cumsum([0] + [len(local[c][2]) for c in ordered])
    n_tok = int(offsets[-1])
    if n_tok == 0:
        out[PROFILE_ID] = pd.Series(pd.NA, index=out.index, dtype="string")
        return out
    missing = n_tok  # code of "no token"; arrays indexed by code get one extra slot for it
    itype = np.int32 if n_tok < np.iinfo(np.int32).max else np.int64  # half the memory traffic of int64
    codes: dict[str, np.ndarray] = {}
    for col, off in zip(ordered, offsets[:-1], strict=True):
        c, rank, _ = local[col]
        codes[col] = np.where(rank >= 0, rank + off, missing).astype(itype)[c]  # one gather per row

    # shared-device guard: device/cookie tokens seen with too many distinct customer ids
    shared = np.zeros(n_tok + 1, bool)
    if CUSTOMER_ID in codes:
        cust = codes[CUSTOMER_ID]
        for colname in config.shared_token_columns:
            if colname not in codes:
                continue
            dev = codes[colname]
            both = (dev < missing) & (cust < missing)
            if both.any():
                keys = pd.unique(dev[both].astype(np.int64) * n_tok + cust[both])
                shared[:n_tok] |= np.bincount(keys // n_tok, minlength=n_tok) > config.max_profiles_per_device

    # anchor of each row: its smallest non-shared token (or smallest token when all are shared);
    # each linking token of a row is joined to the row's anchor.  Only guard columns can be shared.
    link_map = np.arange(n_tok + 1, dtype=itype)
    link_map[shared] = missing
    guarded = set(config.shared_token_columns) if shared.any() else set()
    linking = [link_map[codes[col]] if col in guarded else codes[col] for col in present]
    anchor = np.minimum(linking[0], linking[1]) if len(linking) > 1 else linking[0].copy()
    for lk in linking[2:]:
        np.minimum(anchor, lk, out=anchor)
    src_parts, dst_parts = [], []
    edge = np.empty(n, bool)
    for lk in linking:
        np.not_equal(lk, anchor, out=edge)  # skip self-loops: they link nothing
        edge &= lk < missing
        src_parts.append(anchor[edge])
        dst_parts.append(lk[edge])
    src = np.concatenate(src_parts)
    dst = np.concatenate(dst_parts)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n_tok, n_tok)).tocsr()
    n_comp, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # tokens are sorted: first member = min token
    big_str = pa.large_string()
    uniq = pa.chunked_array(
        [pc.binary_join_element_wise(pa.scalar(f"{col}:", big_str), local[col][2].cast(big_str),
                                     pa.scalar("", big_str)) for col in ordered], type=big_str)
    # profile_id_for, inlined: one sha1 per component is the only per-profile Python left
    min_tokens = pc.take(uniq, pa.array(first)).cast(pa.large_binary()).to_pylist()
    sha1 = hashlib.sha1
    comp_ids = pa.array([PROFILE_PREFIX + sha1(t).hexdigest()[:16] for t in min_tokens] + [None],
                        type=pa.large_string())
    node = anchor
    alone = np.flatnonzero(anchor == missing)  # only shared tokens (or none): the smallest token on its own
    if len(alone):
        node[alone] = np.min(np.stack([codes[col][alone] for col in present]), axis=0)
    row_comp = np.append(labels, n_comp)[node]  # no token at all: the trailing null
    taken = pc.take(comp_ids, pa.array(row_comp))
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


# ---------------------------------------------------------------------------------------------
# one batch against stored links (the online store's rule, every backend and batch size)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenBatch:
    """The identifier tokens of a batch of events: `tokens` (distinct, in first-seen column order) and per
    row and identifier column the index of its token (-1: missing)."""

    tokens: tuple[str, ...]
    codes: np.ndarray  # (rows, len(columns)) int64
    columns: tuple[str, ...]  # the identifier columns present in the batch, IDENTIFIER_COLUMNS order

    def device_customer_pairs(self, shared_token_columns: Iterable[str]) -> list[tuple[str, str]]:
        """Distinct (device or cookie token, customer token) pairs seen on one event: the shared-device
        guard counts the customers per device from these."""
        if CUSTOMER_ID not in self.columns:
            return []
        n_tok = len(self.tokens)
        cust = self.codes[:, self.columns.index(CUSTOMER_ID)]
        guard = set(shared_token_columns)
        both = [dev[(dev >= 0) & (cust >= 0)] * n_tok + cust[(dev >= 0) & (cust >= 0)]
                for j, c in enumerate(self.columns) if c in guard for dev in (self.codes[:, j],)]
        if not both:
            return []
        key = np.unique(np.concatenate(both))
        tok = np.array(self.tokens, dtype=object)
        return list(zip(tok[key // n_tok].tolist(), tok[key % n_tok].tolist(), strict=True))


def token_batch(columns: Mapping[str, np.ndarray], identifier_columns: Iterable[str] = IDENTIFIER_COLUMNS
                ) -> TokenBatch:
    """Tokens of a batch given as identifier column -> object array (None / NaN where missing); ValueError
    when a row has no identifier at all."""
    code_cols: list[np.ndarray] = []
    vocab: list[str] = []
    present: list[str] = []
    n = len(next(iter(columns.values()))) if columns else 0
    for c in identifier_columns:
        if c not in columns:
            continue
        values = np.asarray(columns[c], dtype=object)
        has = ~pd.isna(values)
        if not has.any():
            continue
        k, uniq = pd.factorize(values[has])
        codes = np.full(n, -1, dtype=np.int64)
        codes[has] = k + len(vocab)
        vocab += [token(c, u) for u in uniq.tolist()]
        code_cols.append(codes)
        present.append(c)
    mat = np.stack(code_cols, axis=1) if code_cols else np.full((n, 0), -1, dtype=np.int64)
    if n and (not code_cols or not (mat >= 0).any(axis=1).all()):
        raise ValueError("every event needs an identifier (validate events first)")
    return TokenBatch(tuple(vocab), mat, tuple(present))


@dataclass(frozen=True)
class BatchLinks:
    """How a batch links: its components, each `(smallest linking token, stored profile ids in it)`; per row
    the index of its component; per linking token the index of its component."""

    components: tuple[tuple[str, frozenset[str]], ...]
    row_component: tuple[int, ...]
    token_component: Mapping[str, int]


def link_batch(batch: TokenBatch, known: Mapping[str, str], shared: Container[str]) -> BatchLinks:
    """The linking rule, once: the tokens of one event are linked, except shared devices/cookies (`shared`,
    already counting this batch); an event with only shared tokens links its smallest token on its own.
    A token already linked to a stored profile (`known`: token -> profile id) joins that profile, so one
    event can merge profiles. Pure; the component's id is `profile_id_for` of its smallest token, counting
    the stored profiles' own smallest tokens (the caller knows those).

    One code path for an API event and a bulk load of millions, so the two cannot drift (only the graph
    primitive, `_component_labels`, picks its algorithm by size).
    """
    mat = batch.codes
    n, n_tok = mat.shape[0], len(batch.tokens)
    if n == 0:
        return BatchLinks((), (), {})
    vocab = batch.tokens
    tok = np.array(vocab, dtype=object)
    by_rank = np.argsort(tok, kind="stable")  # token order = string order (min token of a component)
    rank = np.empty(n_tok, dtype=np.int64)
    rank[by_rank] = np.arange(n_tok)
    has = mat >= 0
    is_shared = np.fromiter((t in shared for t in vocab), dtype=bool, count=n_tok)
    # linking tokens of each row: the non-shared ones, else its smallest token alone
    safe = np.where(has, mat, 0)
    active = has & ~is_shared[safe]
    lone = ~active.any(axis=1)
    if lone.any():
        smallest = np.where(has, rank[safe], np.iinfo(np.int64).max).argmin(axis=1)
        active[np.flatnonzero(lone), smallest[lone]] = True
    anchor = mat[np.arange(n), active.argmax(axis=1)]
    src = np.broadcast_to(anchor[:, None], mat.shape)[active]
    dst = mat[active]
    act = np.unique(dst)
    act_list = act.tolist()
    stored = [(t, known[vocab[t]]) for t in act_list if vocab[t] in known]  # linking token -> its profile
    old_ids = sorted({p for _, p in stored})
    old_node = {p: n_tok + j for j, p in enumerate(old_ids)}
    kt = [(t, old_node[p]) for t, p in stored]
    if kt:
        ka = np.array(kt, dtype=np.int64)
        src, dst = np.concatenate([src, ka[:, 0]]), np.concatenate([dst, ka[:, 1]])
    size = n_tok + len(old_ids)
    labels = _component_labels(src, dst, size)
    comps = np.unique(labels[act])
    best = np.full(labels.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, labels[act], rank[act])
    comp_olds: dict[int, set[str]] = {}
    for p, node in old_node.items():
        comp_olds.setdefault(int(labels[node]), set()).add(p)
    lows = tok[by_rank[best[comps]]].tolist()
    index = np.full(labels.max() + 1, -1, dtype=np.int64)
    index[comps] = np.arange(len(comps))
    return BatchLinks(
        components=tuple((low, frozenset(comp_olds.get(c, ()))) for low, c in zip(lows, comps.tolist(), strict=True)),
        row_component=tuple(index[labels[anchor]].tolist()),
        token_component=dict(zip((vocab[t] for t in act_list), index[labels[act]].tolist(), strict=True)),
    )


_SMALL_GRAPH = 64  # nodes: below this plain union-find beats building a sparse matrix (~10x for one event)


def _component_labels(src: np.ndarray, dst: np.ndarray, size: int) -> np.ndarray:
    """Connected-component label of each of `size` nodes of the undirected graph with edges src-dst.
    Labels are arbitrary ints (callers only compare them)."""
    if size > _SMALL_GRAPH:
        graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(size, size))
        return connected_components(graph, directed=False)[1]
    parent = list(range(size))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(src.tolist(), dst.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(x) for x in range(size)], dtype=np.int64)
