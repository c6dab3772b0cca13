"""Recommendation models behind one interface, and the pipeline that trains, evaluates and registers them.

Models (all `Recommender`s, all passing tests/unit/test_recommender_contract.py):
- `ALSRecommender`: implicit ALS (the core); new/anonymous users by least-squares fold-in.
- `ComplementsRecommender`: directional item-to-item co-occurrence with lift (bought together;
  viewed, then bought) for product pages.
- `PopularityRecommender`: overall / recent-window popularity, optionally per the user's categories.
- `EASERecommender`: closed-form item-item model (Steck 2019), strong on small catalogs; optionally
  asymmetric (weighted input, binary target).
- `RP3BetaRecommender`: graph random-walk item-item model with a popularity penalty (RP3beta).
- `RandomRecommender`: the floor every model must clear.
- `EnsembleRecommender`: a weighted sum of members' per-user z-scored scores (EASE + ALS is the
  best MovieLens-100k model here); weights tuned on validation via `with_weights`.
- `BlendRecommender`: what production serves: ALS for known users, complements for product
  pages, popularity for cold start, all in one `RecommenderCore` (the MLflow serving object).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.schema import (
    ADD_TO_CART,
    CATEGORY,
    EVENT_TYPE,
    ITEM_ID,
    PROFILE_ID,
    PURCHASE,
    RECOMMENDER_MODEL,
    RETURN,
    TS,
    VIEW,
)
from training.mlflow_models.recommender_model import RecommenderCore

#: Column added by `interactions_from_events`: the decayed, event-type weight of one event.
WEIGHT = "weight"


# ---------------------------------------------------------------------------------------------
# Interactions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventWeights:
    """How much one event says about preference; tuned on a validation window, not guessed."""

    view: float = 1.0
    add_to_cart: float = 3.0
    purchase: float = 5.0
    return_: float = -5.0
    half_life_days: float | None = 30.0

    def by_type(self) -> dict[str, float]:
        return {VIEW: self.view, ADD_TO_CART: self.add_to_cart, PURCHASE: self.purchase, RETURN: self.return_}


def interactions_from_events(
    events: pd.DataFrame,
    weights: EventWeights = EventWeights(),
    as_of: pd.Timestamp | str | None = None,
    user_col: str = PROFILE_ID,
) -> pd.DataFrame:
    """One row per weighted item event (user, item, ts, type, category, weight); a new frame.

    Time decay halves an event's weight every `half_life_days` before `as_of` (default: the last
    event), so recent taste counts more than old taste.
    """
    need = {user_col, ITEM_ID, EVENT_TYPE, TS}
    missing = need - set(events.columns)
    if missing:
        raise ValueError(f"events lack columns {sorted(missing)}")
    by_type = weights.by_type()
    ev = events.loc[events[EVENT_TYPE].isin(list(by_type)) & events[ITEM_ID].notna() & events[user_col].notna()]
    cols = [user_col, ITEM_ID, TS, EVENT_TYPE] + ([CATEGORY] if CATEGORY in ev else [])
    out = ev[cols].copy()
    out[user_col] = out[user_col].astype(str)
    out[ITEM_ID] = out[ITEM_ID].astype(str)
    w = out[EVENT_TYPE].map(by_type).astype(float)
    if weights.half_life_days and len(out):
        ref = pd.Timestamp(as_of) if as_of is not None else out[TS].max()
        if ref.tzinfo is None and out[TS].dt.tz is not None:
            ref = ref.tz_localize("UTC")
        age_days = (ref - out[TS]).dt.total_seconds().to_numpy() / 86400.0
        w = w * np.power(0.5, np.clip(age_days, 0, None) / weights.half_life_days)
    out[WEIGHT] = w.to_numpy()
    return out.loc[out[WEIGHT] != 0].reset_index(drop=True)


@dataclass(frozen=True)
class _Matrix:
    users: np.ndarray  # user ids, index order
    items: np.ndarray  # item ids, index order
    matrix: sp.csr_matrix  # users x items, summed weights clipped at zero

    @property
    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.users)}

    @property
    def item_index(self) -> dict[str, int]:
        return {it: i for i, it in enumerate(self.items)}


def _matrix(inter: pd.DataFrame, user_col: str, items: Iterable[str] | None = None) -> _Matrix:
    if len(inter) == 0:
        raise ValueError("no interactions to fit on")
    agg = inter.groupby([user_col, ITEM_ID], sort=False, observed=True)[WEIGHT].sum().reset_index()
    agg = agg.loc[agg[WEIGHT] > 0]
    users = np.asarray(sorted(inter[user_col].astype(str).unique()), dtype=object)
    item_list = sorted(set(inter[ITEM_ID].astype(str)) | set(map(str, () if items is None else items)))
    item_arr = np.asarray(item_list, dtype=object)
    ui = pd.Index(users).get_indexer(agg[user_col].astype(str))
    ii = pd.Index(item_arr).get_indexer(agg[ITEM_ID].astype(str))
    m = sp.csr_matrix((agg[WEIGHT].to_numpy(np.float32), (ui, ii)), shape=(len(users), len(item_arr)))
    m.sum_duplicates()
    return _Matrix(users, item_arr, m)


def _categories(inter: pd.DataFrame, items: np.ndarray, item_table: pd.DataFrame | None) -> list[str | None]:
    """Item -> category from the item table, else the most recent category seen in events."""
    cat: dict[str, str] = {}
    if CATEGORY in inter:
        c = inter.loc[inter[CATEGORY].notna(), [ITEM_ID, CATEGORY]].drop_duplicates(ITEM_ID, keep="last")
        cat.update(zip(c[ITEM_ID].astype(str), c[CATEGORY].astype(str), strict=True))
    if item_table is not None and CATEGORY in item_table:
        t = item_table.loc[item_table[CATEGORY].notna()]
        cat.update(zip(t[ITEM_ID].astype(str), t[CATEGORY].astype(str), strict=True))
    return [cat.get(str(i)) for i in items]


# ---------------------------------------------------------------------------------------------
# Complements (directional co-occurrence) and popularity: shared by several models
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComplementConfig:
    """`antecedent -> purchase` within `window_days`, scored by shrunk lift; top `top_k` kept per item."""

    window_days: float = 14.0
    view_weight: float = 0.3  # a view (or cart) before a purchase counts this much; a purchase 1
    min_support: float = 2.0
    shrinkage: float = 5.0
    top_k: int = 50


def complement_matrix(inter: pd.DataFrame, items: np.ndarray, config: ComplementConfig, user_col: str) -> sp.csr_matrix:
    """items x items; row A holds the items bought after A (same basket or within the window).

    score(A -> B) = support(A -> B) / (n(A) + shrinkage) / P(B): a lift with its confidence shrunk
    towards zero for rarely seen antecedents, so one lucky pair does not top the list.
    """
    n = len(items)
    idx = pd.Index(items)
    ev = inter.loc[inter[WEIGHT] > 0, [user_col, ITEM_ID, TS, EVENT_TYPE]]
    buys = ev.loc[ev[EVENT_TYPE] == PURCHASE, [user_col, ITEM_ID, TS]]
    if len(buys) == 0 or n == 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    ante = ev.assign(_w=np.where(ev[EVENT_TYPE] == PURCHASE, 1.0, config.view_weight))
    pairs = ante.merge(buys, on=user_col, suffixes=("_a", "_b"))
    dt = (pairs[f"{TS}_b"] - pairs[f"{TS}_a"]).dt.total_seconds() / 86400.0
    keep = (dt >= 0) & (dt <= config.window_days) & (pairs[f"{ITEM_ID}_a"] != pairs[f"{ITEM_ID}_b"])
    # a purchase pair at the same instant is one basket: it counts both ways (dt == 0 keeps both)
    pairs = pairs.loc[keep, [user_col, f"{ITEM_ID}_a", f"{ITEM_ID}_b", "_w"]]
    per_user = pairs.groupby([user_col, f"{ITEM_ID}_a", f"{ITEM_ID}_b"], sort=False)["_w"].max().reset_index()
    support = per_user.groupby([f"{ITEM_ID}_a", f"{ITEM_ID}_b"], sort=False)["_w"].sum().reset_index()
    support = support.loc[support["_w"] >= config.min_support]
    n_users = max(ev[user_col].nunique(), 1)
    ante_users = ante.groupby(ITEM_ID)[user_col].nunique()
    buy_users = buys.groupby(ITEM_ID)[user_col].nunique()
    a = support[f"{ITEM_ID}_a"]
    b = support[f"{ITEM_ID}_b"]
    conf = support["_w"].to_numpy() / (ante_users.reindex(a).to_numpy() + config.shrinkage)
    p_b = buy_users.reindex(b).to_numpy() / n_users
    score = conf / p_b
    rows, cols = idx.get_indexer(a), idx.get_indexer(b)
    ok = (rows >= 0) & (cols >= 0)
    m = sp.csr_matrix((score[ok].astype(np.float32), (rows[ok], cols[ok])), shape=(n, n))
    return _top_k_per_row(m, config.top_k)


def _top_k_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    m = m.tocsr()
    m.sort_indices()
    indptr, indices, data = [0], [], []
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        d, c = m.data[lo:hi], m.indices[lo:hi]
        if len(d) > k:
            sel = np.argsort(-d, kind="stable")[:k]
            d, c = d[sel], c[sel]
        indices.append(c)
        data.append(d)
        indptr.append(indptr[-1] + len(d))
    ind = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    dat = np.concatenate(data) if data else np.zeros(0, np.float32)
    return sp.csr_matrix((dat, ind, np.asarray(indptr)), shape=m.shape)


@dataclass(frozen=True)
class PopularityConfig:
    """Popularity = summed positive weight; `recent_days` window blended in with `recent_share`."""

    recent_days: float = 14.0
    recent_share: float = 0.5
    personal_categories: bool = True  # rank within the user's own categories first
    log_scale: bool = False  # PopularityRecommender: log(1 + popularity), e.g. as a popularity-penalty member


def _popularity(inter: pd.DataFrame, items: np.ndarray, recent_days: float) -> tuple[np.ndarray, np.ndarray]:
    pos = inter.loc[inter[WEIGHT] > 0]
    idx = pd.Index(items)
    overall = np.zeros(len(items))
    recent = np.zeros(len(items))
    if len(pos):
        g = pos.groupby(ITEM_ID)[WEIGHT].sum()
        overall[idx.get_indexer(g.index)] = g.to_numpy()
        cut = pos[TS].max() - pd.Timedelta(days=recent_days)
        r = pos.loc[pos[TS] > cut].groupby(ITEM_ID)[WEIGHT].sum()
        if len(r):
            recent[idx.get_indexer(r.index)] = r.to_numpy()
    return overall, recent


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------
class Recommender(ABC):
    """fit on interactions (see `interactions_from_events`), then answer per user or per item."""

    user_col: str = PROFILE_ID

    @abstractmethod
    def fit(self, interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> Self: ...

    @abstractmethod
    def recommend(
        self, user_id: str | None, k: int = 10, exclude: Iterable[str] = (), recent_items: Iterable[str] = ()
    ) -> list[tuple[str, float]]:
        """Top-k (item_id, score); unknown users are served from `recent_items`, else popularity."""

    @abstractmethod
    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]: ...

    @abstractmethod
    def has_user(self, user_id: str) -> bool: ...

    @abstractmethod
    def has_item(self, item_id: str) -> bool: ...

    @abstractmethod
    def save(self, path: str | Path) -> Path: ...

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> Self: ...


# ---------------------------------------------------------------------------------------------
# ALS and the production blend: both compile to a RecommenderCore (the serving object)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ALSConfig:
    factors: int = 32
    regularization: float = 0.1
    alpha: float = 2.0
    iterations: int = 20
    bm25: bool = False
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    recent_item_weight: float = 1.0  # weight a just-seen item gets in the fold-in
    recent_blend: float = 0.5  # known user: share of the fold-in of recent items in the query
    recent_decay: float = 0.6  # weight of each recent item relative to the next newer one
    seed: int = 0
    num_threads: int = 0
    show_progress: bool = False


def fit_als(matrix: sp.csr_matrix, config: ALSConfig) -> tuple[np.ndarray, np.ndarray]:
    """implicit's CPU ALS on users x items; returns (user_factors, item_factors) as float32 arrays."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import bm25_weight

    x = matrix.astype(np.float32)
    if config.bm25:
        x = bm25_weight(x, K1=config.bm25_k1, B=config.bm25_b).tocsr().astype(np.float32)
    model = AlternatingLeastSquares(
        factors=config.factors,
        regularization=config.regularization,
        alpha=config.alpha,
        iterations=config.iterations,
        random_state=config.seed,
        num_threads=config.num_threads,
    )
    model.fit(x, show_progress=config.show_progress)
    return np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)


class _CoreRecommender(Recommender):
    """Models whose answers come from a `RecommenderCore` (identical in training and serving)."""

    kind: ClassVar[str] = "core"

    def __init__(self) -> None:
        self.core: RecommenderCore | None = None

    def _c(self) -> RecommenderCore:
        if self.core is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return self.core

    def recommend(self, user_id, k=10, exclude=(), recent_items=()):  # noqa: ANN001, ANN201
        return self._c().recommend(user_id, k, exclude=exclude, recent_items=recent_items)

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        return self._c().similar_items(item_id, k)

    def complements(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        return self._c().complements(item_id, k)

    def popular(self, k: int = 10, category: str | None = None) -> list[tuple[str, float]]:
        return self._c().popular(k, category=category)

    def item_category(self, item_id: str) -> str | None:
        return self._c().item_category(item_id)

    def has_user(self, user_id: str) -> bool:
        return self._c().has_user(user_id)

    @property
    def item_ids(self) -> list[str]:
        return self._c().item_ids

    def score_vector(self, user_id: str | None, recent_items: Iterable[str] = ()) -> np.ndarray:
        """Scores of every item (in `item_ids` order) before exclusions: what `recommend` ranks."""
        core = self._c()
        out = np.full(len(core.item_ids), -np.inf)
        for item, s in core.recommend(user_id, len(core.item_ids), recent_items=recent_items):
            out[core.item_index[item]] = s
        return out

    def has_item(self, item_id: str) -> bool:
        return self._c().has_item(item_id)

    def save(self, path: str | Path) -> Path:
        return self._c().save(path)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        obj = cls.__new__(cls)
        _CoreRecommender.__init__(obj)
        obj.core = RecommenderCore.load(path)
        return obj


@dataclass(frozen=True)
class BlendConfig:
    als: ALSConfig = field(default_factory=ALSConfig)
    complements: ComplementConfig = field(default_factory=ComplementConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    with_complements: bool = True


class BlendRecommender(_CoreRecommender):
    """Production: ALS for known users (+ fold-in of recent items), complements, popularity."""

    def __init__(self, config: BlendConfig = BlendConfig(), user_col: str = PROFILE_ID) -> None:
        super().__init__()
        self.config = config
        self.user_col = user_col

    def fit(self, interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        cfg = self.config
        item_ids = None if items is None else items[ITEM_ID].astype(str)
        mx = _matrix(interactions, self.user_col, item_ids)
        uf, itf = fit_als(mx.matrix, cfg.als)
        if cfg.with_complements:
            comp = complement_matrix(interactions, mx.items, cfg.complements, self.user_col)
        else:
            comp = sp.csr_matrix((len(mx.items), len(mx.items)), dtype=np.float32)
        pop, recent = _popularity(interactions, mx.items, cfg.popularity.recent_days)
        self.core = RecommenderCore(
            user_ids=list(mx.users),
            item_ids=list(mx.items),
            item_categories=_categories(interactions, mx.items, items),
            user_factors=uf,
            item_factors=itf,
            comp_indptr=comp.indptr,
            comp_indices=comp.indices,
            comp_scores=comp.data,
            popularity=pop,
            recent_popularity=recent,
            config={
                "alpha": cfg.als.alpha,
                "regularization": cfg.als.regularization,
                "recent_item_weight": cfg.als.recent_item_weight,
                "recent_blend": cfg.als.recent_blend,
                "recent_decay": cfg.als.recent_decay,
                "recent_popularity_share": cfg.popularity.recent_share,
                "model": type(self).__name__,
                "params": json.loads(json.dumps(asdict(cfg))),
            },
        )
        return self


class ALSRecommender(BlendRecommender):
    """implicit ALS alone (no complements): the core model, and what the benchmarks compare."""

    def __init__(self, config: ALSConfig = ALSConfig(), user_col: str = PROFILE_ID) -> None:
        super().__init__(BlendConfig(als=config, with_complements=False), user_col)


# ---------------------------------------------------------------------------------------------
# Models that score items from the user's interaction vector
# ---------------------------------------------------------------------------------------------
def _ones(x: sp.csr_matrix) -> sp.csr_matrix:
    """The same sparsity pattern with every stored value 1 (a copy)."""
    out = x.copy()
    out.data = np.ones_like(out.data)
    return out


class _HistoryRecommender(Recommender):
    """Scores = f(user's history vector + recent items); unknown users with no items get popularity."""

    name: ClassVar[str] = "history"
    recent_weight: float = 1.0

    def __init__(self, user_col: str = PROFILE_ID) -> None:
        self.user_col = user_col
        self._state: dict[str, np.ndarray] = {}
        self._meta: dict[str, Any] = {}

    # subclasses fill these
    def _fit_state(self, inter: pd.DataFrame, mx: _Matrix, items: pd.DataFrame | None) -> None: ...

    @abstractmethod
    def _scores(self, x: sp.csr_matrix, uidx: int | None) -> np.ndarray: ...

    def _input(self, mx: _Matrix, binary: bool) -> sp.csr_matrix:
        """The interactions as float64 CSR; `binary`: every interaction counts 1, in the model and in the
        history it scores users from."""
        x = mx.matrix.astype(np.float64).tocsr()
        if binary:
            x = _ones(x)
            self._hist = x.astype(np.float32)
        return x

    def _item_sim(self, i: int) -> np.ndarray:
        x = sp.csr_matrix(([1.0], ([0], [i])), shape=(1, len(self._items)))
        return self._scores(x, None)

    def fit(self, interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        mx = _matrix(interactions, self.user_col, None if items is None else items[ITEM_ID].astype(str))
        self._users, self._items = list(map(str, mx.users)), list(map(str, mx.items))
        self._hist = mx.matrix.tocsr()
        pop, _ = _popularity(interactions, mx.items, 14.0)
        self._pop = pop
        self._cats = _categories(interactions, mx.items, items)
        self._fit_state(interactions, mx, items)
        self._index()
        return self

    def _index(self) -> None:
        self._uidx = {u: i for i, u in enumerate(self._users)}
        self._iidx = {it: i for i, it in enumerate(self._items)}

    def has_user(self, user_id: str) -> bool:
        return str(user_id) in self._uidx

    def has_item(self, item_id: str) -> bool:
        return str(item_id) in self._iidx

    def _ids(self, ids: Iterable[str]) -> list[int]:
        if isinstance(ids, str):
            ids = (ids,)
        return [self._iidx[s] for s in map(str, ids) if s in self._iidx]

    def score_vector(self, user_id: str | None, recent_items: Iterable[str] = ()) -> np.ndarray:
        """Scores of every item (in `item_ids` order) before exclusions: what `recommend` ranks."""
        uidx = None if user_id is None else self._uidx.get(str(user_id))
        n = len(self._items)
        x = self._hist[uidx] if uidx is not None else sp.csr_matrix((1, n), dtype=np.float32)
        recent = self._ids(recent_items)
        if recent:
            x = x + sp.csr_matrix((np.full(len(recent), self.recent_weight), ([0] * len(recent), recent)), shape=(1, n))
        if x.nnz == 0 and uidx is None:
            return self._pop.astype(np.float64)
        return np.asarray(self._scores(sp.csr_matrix(x), uidx), dtype=np.float64).ravel()

    @property
    def item_ids(self) -> list[str]:
        return self._items

    def recommend(self, user_id, k=10, exclude=(), recent_items=()):  # noqa: ANN001, ANN201
        k = RecommenderCore._check_k(k)
        return self._top(self.score_vector(user_id, recent_items), k, self._ids(exclude))

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        i = self._iidx.get(str(item_id))
        if i is None:
            return []
        return self._top(np.asarray(self._item_sim(i), np.float64).ravel(), RecommenderCore._check_k(k), [i])

    def _top(self, scores: np.ndarray, k: int, exclude: list[int]) -> list[tuple[str, float]]:
        if exclude:
            scores = scores.copy()
            scores[exclude] = -np.inf
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        return [(self._items[j], float(scores[j])) for j in order if np.isfinite(scores[j])]

    def save(self, path: str | Path) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {
            "hist_data": self._hist.data, "hist_indices": self._hist.indices, "hist_indptr": self._hist.indptr,
            "pop": self._pop, **self._state,
        }
        np.savez(out / "arrays.npz", **arrays)
        meta = {"model": self.name, "users": self._users, "items": self._items, "cats": self._cats,
                "user_col": self.user_col, **self._meta}
        (out / "meta.json").write_text(json.dumps(meta))
        return out

    @classmethod
    def load(cls, path: str | Path) -> Self:
        src = Path(path)
        meta = json.loads((src / "meta.json").read_text())
        if meta.get("model") != cls.name:
            raise ValueError(f"{src} holds a {meta.get('model')!r} model, not {cls.name!r}")
        obj = cls.__new__(cls)
        _HistoryRecommender.__init__(obj, meta["user_col"])
        with np.load(src / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        obj._users, obj._items, obj._cats = meta["users"], meta["items"], meta["cats"]
        obj._hist = sp.csr_matrix(
            (arrays.pop("hist_data"), arrays.pop("hist_indices"), arrays.pop("hist_indptr")),
            shape=(len(obj._users), len(obj._items)),
        )
        obj._pop = arrays.pop("pop")
        obj._state = arrays
        obj._meta = {k: v for k, v in meta.items() if k not in {"model", "users", "items", "cats", "user_col"}}
        obj._restore()
        obj._index()
        return obj

    def _restore(self) -> None:
        """Rebuild derived fields from `_state`/`_meta` after load."""


class ComplementsRecommender(_HistoryRecommender):
    """Item-to-item: for a user, the summed complements of everything they interacted with."""

    name = "complements"

    def __init__(self, config: ComplementConfig = ComplementConfig(), user_col: str = PROFILE_ID) -> None:
        super().__init__(user_col)
        self.config = config

    def _fit_state(self, inter, mx, items):  # noqa: ANN001, ANN202
        c = complement_matrix(inter, mx.items, self.config, self.user_col)
        self._state = {"c_data": c.data, "c_indices": c.indices, "c_indptr": c.indptr}
        self._restore()

    def _restore(self) -> None:
        n = len(self._items)
        s = self._state
        self._c = sp.csr_matrix((s["c_data"], s["c_indices"], s["c_indptr"]), shape=(n, n))

    def _scores(self, x, uidx):  # noqa: ANN001, ANN202
        return (_ones(x) @ self._c).toarray().ravel() + 1e-9 * self._pop / max(self._pop.max(), 1.0)


class PopularityRecommender(_HistoryRecommender):
    """Popularity; with `personal_categories`, the user's own categories first (cold-start fallback)."""

    name = "popularity"

    def __init__(self, config: PopularityConfig = PopularityConfig(), user_col: str = PROFILE_ID) -> None:
        super().__init__(user_col)
        self.config = config

    def _fit_state(self, inter, mx, items):  # noqa: ANN001, ANN202
        overall, recent = _popularity(inter, mx.items, self.config.recent_days)
        if self.config.log_scale:
            overall, recent = np.log1p(overall), np.log1p(recent)
        score = (1 - self.config.recent_share) * overall / max(overall.max(), 1e-12)
        score = score + self.config.recent_share * recent / max(recent.max(), 1e-12)
        self._state = {"score": score}
        self._meta = {"personal_categories": self.config.personal_categories}
        self._restore()

    def _restore(self) -> None:
        cats = pd.Series([c if c is not None else "" for c in self._cats])
        codes, _ = pd.factorize(cats)
        n = len(self._items)
        self._cat_of = sp.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, codes.max() + 1 if n else 0))

    def _scores(self, x, uidx):  # noqa: ANN001, ANN202
        score = self._state["score"]
        if not self._meta.get("personal_categories", True):
            return score
        share = (x @ self._cat_of).toarray().ravel()
        share = share / max(share.sum(), 1e-12)
        return (self._cat_of @ share) + 1e-3 * score  # category share first, popularity breaks ties

    def _item_sim(self, i: int) -> np.ndarray:
        same = (self._cat_of @ self._cat_of[i].T).toarray().ravel()
        return same + 1e-3 * self._state["score"]


class RandomRecommender(_HistoryRecommender):
    """Uniform random scores from a seeded generator: the floor in every evaluation."""

    name = "random"

    def __init__(self, seed: int = 0, user_col: str = PROFILE_ID) -> None:
        super().__init__(user_col)
        self.seed = seed

    def _fit_state(self, inter, mx, items):  # noqa: ANN001, ANN202
        self._meta = {"seed": self.seed}

    def _scores(self, x, uidx):  # noqa: ANN001, ANN202
        key = -1 if uidx is None else uidx
        rng = np.random.default_rng([self._meta["seed"], key + 1])
        return rng.random(len(self._items))


@dataclass(frozen=True)
class EASEConfig:
    """EASE (Steck 2019): B = I - P / diag(P), P = (X'X + l2 I)^-1; dense items x items."""

    l2: float = 300.0
    binary: bool = True
    #: with weighted input (binary=False): learn to reproduce the binary interaction matrix from the
    #: weighted one (asymmetric EASE: strong signals weigh more as evidence, every item counts as a target)
    binary_target: bool = False
    max_items: int = 20_000  # memory guard: the model is a dense items x items matrix


class EASERecommender(_HistoryRecommender):
    """Closed-form shallow autoencoder over items; no factors, exact for small catalogs."""

    name = "ease"

    def __init__(self, config: EASEConfig = EASEConfig(), user_col: str = PROFILE_ID) -> None:
        super().__init__(user_col)
        self.config = config

    def _fit_state(self, inter, mx, items):  # noqa: ANN001, ANN202
        n = mx.matrix.shape[1]
        if n > self.config.max_items:
            raise ValueError(f"EASE needs a dense {n}x{n} matrix; raise max_items or use ALS")
        x = self._input(mx, self.config.binary)
        g = (x.T @ x).toarray()
        g[np.diag_indices(n)] += self.config.l2
        p = np.linalg.inv(g)
        if self.config.binary_target and not self.config.binary:
            # min ||X01 - X B||^2 + l2 ||B||^2, diag(B) = 0:  B = P X'X01 - P diag(mu)
            b = p @ (x.T @ _ones(x)).toarray()
            b -= p * (np.diag(b) / np.diag(p))[None, :]
        else:
            b = -p / np.diag(p)
        b[np.diag_indices(n)] = 0.0
        self._state = {"b": b.astype(np.float32)}

    def _scores(self, x, uidx):  # noqa: ANN001, ANN202
        return np.asarray(x @ self._state["b"]).ravel()


@dataclass(frozen=True)
class RP3BetaConfig:
    """RP3beta (Paudel et al. 2017): 3-step random walk item -> user -> item, damped by popularity.

    W[i, j] = sum_u P(u | i)^alpha P(j | u)^alpha / pop(j)^beta, the `top_k` largest kept per row
    (None: all); a user's scores are their history times W.
    """

    alpha: float = 0.5
    beta: float = 0.5
    top_k: int | None = 100
    binary: bool = True


class RP3BetaRecommender(_HistoryRecommender):
    """Graph-based item-item model: a popularity-penalised random walk of length 3 on the user-item graph."""

    name = "rp3beta"

    def __init__(self, config: RP3BetaConfig = RP3BetaConfig(), user_col: str = PROFILE_ID) -> None:
        super().__init__(user_col)
        self.config = config

    def _fit_state(self, inter, mx, items):  # noqa: ANN001, ANN202
        cfg = self.config
        x = self._input(mx, cfg.binary)
        user_deg = np.asarray(x.sum(axis=1)).ravel()
        item_deg = np.asarray(x.sum(axis=0)).ravel()
        p_ui = sp.diags(1.0 / np.maximum(user_deg, 1e-12)) @ x  # P(item | user)
        p_iu = sp.diags(1.0 / np.maximum(item_deg, 1e-12)) @ x.T.tocsr()  # P(user | item)
        p_ui.data **= cfg.alpha
        p_iu.data **= cfg.alpha
        w = (p_iu @ p_ui).tocsr()
        w = w @ sp.diags(1.0 / np.power(np.maximum(item_deg, 1e-12), cfg.beta))
        w = w.tolil()
        w.setdiag(0.0)
        w = w.tocsr()
        w.eliminate_zeros()
        if cfg.top_k is not None:
            w = _top_k_per_row(w, cfg.top_k)
        w = w.astype(np.float32)
        self._state = {"w_data": w.data, "w_indices": w.indices, "w_indptr": w.indptr}
        self._restore()

    def _restore(self) -> None:
        n = len(self._items)
        s = self._state
        self._w = sp.csr_matrix((s["w_data"], s["w_indices"], s["w_indptr"]), shape=(n, n))

    def _scores(self, x, uidx):  # noqa: ANN001, ANN202
        return (x @ self._w).toarray().ravel()


def _inv_sqrt(d: np.ndarray) -> np.ndarray:
    """d^-1/2, and 0 where d is 0 (a user or item with no interactions carries no signal)."""
    return np.where(d > 0, 1.0 / np.sqrt(np.maximum(d, 1e-300)), 0.0)


@dataclass(frozen=True)
class GFCFConfig:
    """GF-CF (Shen et al. 2021): a graph filter, no training.  With R~ = Du^-1/2 R Di^-1/2 (degree-normalised
    interactions), a user's scores are r R~'R~ (linear filter) + alpha r Di^-1/2 V V' Di^1/2, V the top
    `factors` right singular vectors of R~ (ideal low-pass filter); dense items x items, as EASE."""

    alpha: float = 0.3
    factors: int = 64
    binary: bool = True
    max_items: int = 20_000  # memory guard: the model is a dense items x items matrix


class GFCFRecommender(_HistoryRecommender):
    """Graph-filter collaborative filtering: item-item smoothing by the normalised co-occurrence graph plus
    its leading spectral components; a closed form (one truncated SVD), so refits cost seconds."""

    name = "gfcf"

    def __init__(self, config: GFCFConfig = GFCFConfig(), user_col: str = PROFILE_ID) -> None:
        super().__init__(user_col)
        self.config = config

    def _fit_state(self, inter, mx, items):  # noqa: ANN001, ANN202
        from scipy.sparse.linalg import svds

        cfg = self.config
        n_users, n = mx.matrix.shape
        if n > cfg.max_items:
            raise ValueError(f"GF-CF needs a dense {n}x{n} matrix; raise max_items or use ALS")
        x = self._input(mx, cfg.binary)
        du = np.asarray(x.sum(axis=1)).ravel()
        di = np.asarray(x.sum(axis=0)).ravel()
        ri, rsqrt = _inv_sqrt(di), np.sqrt(np.maximum(di, 0.0))
        norm = (sp.diags(_inv_sqrt(du)) @ x @ sp.diags(ri)).tocsr()
        w = (norm.T @ norm).toarray()
        k = min(cfg.factors, min(n_users, n) - 1)
        if cfg.alpha and k > 0:
            _, _, vt = svds(norm, k=k, random_state=0)
            # Di^-1/2 V V' Di^1/2: items with no interactions (ri = 0) get no ideal-filter score
            w += cfg.alpha * (ri[:, None] * (vt.T @ vt) * rsqrt[None, :])
        self._state = {"w": w.astype(np.float32)}

    def _scores(self, x, uidx):  # noqa: ANN001, ANN202
        return np.asarray(x @ self._state["w"]).ravel()


@dataclass(frozen=True)
class EnsembleConfig:
    """Weights of the members' per-user standardised scores; tuned on validation, not guessed."""

    weights: tuple[float, ...] = (0.5, 0.5)


def _standardise(x: np.ndarray) -> np.ndarray:
    """z-score over the finite entries (a user's scale differs per model; their ranking does not)."""
    ok = np.isfinite(x)
    if not ok.any():
        return x
    mu, sd = float(x[ok].mean()), float(x[ok].std())
    return np.where(ok, (x - mu) / (sd if sd > 0 else 1.0), -np.inf)


class _Sum:
    """Weighted sum of score vectors; an item any member could not score (-inf) stays -inf, whatever the
    sign of that member's weight (a negative weight, e.g. a popularity penalty, must not turn it into +inf)."""

    def __init__(self, n: int) -> None:
        self.total = np.zeros(n)
        self.bad = np.zeros(n, bool)

    def add(self, w: float, z: np.ndarray) -> None:
        ok = np.isfinite(z)
        self.total += w * np.where(ok, z, 0.0)
        self.bad |= ~ok

    def value(self) -> np.ndarray:
        return np.where(self.bad, -np.inf, self.total)


class EnsembleRecommender(Recommender):
    """Weighted sum of members' standardised scores (e.g. EASE + ALS): their errors differ, so it ranks better.

    Members are fitted on the same interactions (same item list); `with_weights` re-weights fitted
    members without refitting, which is how the weights are tuned on a validation split.
    """

    def __init__(self, members: Sequence[Recommender], config: EnsembleConfig = EnsembleConfig(),
                 user_col: str = PROFILE_ID) -> None:
        if len(members) != len(config.weights) or not members:
            raise ValueError("one weight per member, at least one member")
        if any(not hasattr(m, "score_vector") for m in members):
            raise TypeError("every member needs score_vector (ALS/Blend/EASE/popularity/... models have it)")
        self.members = list(members)
        self.config = config
        self.user_col = user_col
        for m in self.members:
            m.user_col = user_col

    def fit(self, interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> Self:
        for m in self.members:
            m.fit(interactions, items)
        self._check_items()
        return self

    @classmethod
    def of_fitted(cls, members: Sequence[Recommender], config: EnsembleConfig = EnsembleConfig(),
                  user_col: str = PROFILE_ID) -> Self:
        """An ensemble of members already fitted (each may have had its own input weighting)."""
        out = cls(members, config, user_col)
        out._check_items()
        return out

    def with_weights(self, weights: Sequence[float]) -> Self:
        """The same fitted members under other weights (no refit)."""
        return self.of_fitted(self.members, EnsembleConfig(tuple(float(w) for w in weights)), self.user_col)

    def _check_items(self) -> None:
        ids = [list(m.item_ids) for m in self.members]  # type: ignore[attr-defined]
        if any(i != ids[0] for i in ids[1:]):
            raise ValueError("ensemble members were fitted on different item lists")
        self._items = ids[0]
        self._iidx = {it: i for i, it in enumerate(self._items)}

    @property
    def item_ids(self) -> list[str]:
        return self._items

    def score_vector(self, user_id: str | None, recent_items: Iterable[str] = ()) -> np.ndarray:
        recent = list(recent_items) if not isinstance(recent_items, str) else [recent_items]
        total = _Sum(len(self._items))
        for w, m in zip(self.config.weights, self.members, strict=True):
            if w:
                total.add(w, _standardise(m.score_vector(user_id, recent)))  # type: ignore[attr-defined]
        return total.value()

    def recommend(self, user_id, k=10, exclude=(), recent_items=()):  # noqa: ANN001, ANN201
        k = RecommenderCore._check_k(k)
        return self._top(self.score_vector(user_id, recent_items), k, exclude)

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        k = RecommenderCore._check_k(k)
        if not self.has_item(item_id):
            return []
        total = _Sum(len(self._items))
        for w, m in zip(self.config.weights, self.members, strict=True):
            if not w:
                continue
            v = np.full(len(self._items), -np.inf)
            for it, s in m.similar_items(item_id, len(self._items)):
                v[self._iidx[it]] = s
            total.add(w, _standardise(v))
        return self._top(total.value(), k, (item_id,))

    def _top(self, scores: np.ndarray, k: int, exclude: Iterable[str]) -> list[tuple[str, float]]:
        if isinstance(exclude, str):
            exclude = (exclude,)
        excl = [self._iidx[s] for s in map(str, exclude) if s in self._iidx]
        if excl:
            scores = scores.copy()
            scores[excl] = -np.inf
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        return [(self._items[j], float(scores[j])) for j in order if np.isfinite(scores[j])]

    def has_user(self, user_id: str) -> bool:
        return any(m.has_user(user_id) for m in self.members)

    def has_item(self, item_id: str) -> bool:
        return str(item_id) in self._iidx

    def save(self, path: str | Path) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        for j, m in enumerate(self.members):
            m.save(out / f"member_{j}")
        meta = {"model": "ensemble", "members": [type(m).__name__ for m in self.members],
                "weights": list(self.config.weights), "user_col": self.user_col}
        (out / "ensemble.json").write_text(json.dumps(meta))
        return out

    @classmethod
    def load(cls, path: str | Path) -> Self:
        src = Path(path)
        meta = json.loads((src / "ensemble.json").read_text())
        kinds = _loadable()
        unknown = [k for k in meta["members"] if k not in kinds]
        if unknown:
            raise ValueError(f"{src}: unknown ensemble members {unknown}")
        members = [kinds[k].load(src / f"member_{j}") for j, k in enumerate(meta["members"])]
        return cls.of_fitted(members, EnsembleConfig(tuple(meta["weights"])), meta["user_col"])


def _loadable() -> dict[str, type[Recommender]]:
    """Classes an ensemble can hold, by name (a function: they are defined above, the ensemble too)."""
    return {c.__name__: c for c in (ALSRecommender, BlendRecommender, ComplementsRecommender, PopularityRecommender,
                                    EASERecommender, GFCFRecommender, RP3BetaRecommender, RandomRecommender,
                                    EnsembleRecommender)}


# ---------------------------------------------------------------------------------------------
# The pipeline: split by time, tune on a validation window, fit, evaluate, log, register
# ---------------------------------------------------------------------------------------------
DEFAULT_WEIGHT_GRID: tuple[EventWeights, ...] = (
    EventWeights(view=1.0, add_to_cart=3.0, purchase=5.0, return_=-5.0, half_life_days=30.0),
    EventWeights(view=1.0, add_to_cart=2.0, purchase=3.0, return_=-3.0, half_life_days=None),
    EventWeights(view=0.5, add_to_cart=3.0, purchase=10.0, return_=-10.0, half_life_days=60.0),
)
DEFAULT_ALS_GRID: tuple[ALSConfig, ...] = (
    ALSConfig(factors=32, regularization=0.1, alpha=2.0, iterations=15),
    ALSConfig(factors=64, regularization=1.0, alpha=5.0, iterations=15),
    ALSConfig(factors=16, regularization=0.1, alpha=1.0, iterations=15),
)


@dataclass(frozen=True)
class RecommenderTrainConfig:
    """`as_of` cuts past from future: fit before it, test on the `test_days` after it.

    Tuning uses the `val_days` just before `as_of` (fit on what precedes them), so the test window
    is never looked at until the final evaluation.  The registered model is the one evaluated
    (fit on everything before `as_of`); `refit_all=True` refits on train + test window before
    logging, for production freshness, and says so in the run's tags.
    """

    as_of: str | None = None
    test_days: float = 14.0
    val_days: float = 14.0
    ks: tuple[int, ...] = (10, 20)
    truth_event_types: tuple[str, ...] = (ADD_TO_CART, PURCHASE)
    exclude_event_types: tuple[str, ...] = (PURCHASE,)  # already bought: never recommended again
    weight_grid: tuple[EventWeights, ...] = DEFAULT_WEIGHT_GRID
    als_grid: tuple[ALSConfig, ...] = DEFAULT_ALS_GRID
    complements: ComplementConfig = field(default_factory=ComplementConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    refit_all: bool = False
    user_col: str = PROFILE_ID
    experiment: str = "mirror-recommender"
    model_name: str = RECOMMENDER_MODEL
    tracking_uri: str | None = None
    seed: int = 0
    num_threads: int = 0
    progress: bool = True
    source: str | None = None  # the events file (logged with the run's datasets)


#: The promotion metric (`training.evaluation` name), and the baselines the model must not lose to.
PROMOTION_METRIC = "ndcg@10"
PROMOTION_BASELINES: tuple[str, ...] = ("popularity", "random")


def _truth(events: pd.DataFrame, types: Iterable[str], user_col: str) -> pd.DataFrame:
    ev = events.loc[events[EVENT_TYPE].isin(list(types)) & events[ITEM_ID].notna() & events[user_col].notna()]
    return ev[[user_col, ITEM_ID]].astype(str).drop_duplicates().reset_index(drop=True)


def _summary(events: pd.DataFrame, user_col: str) -> dict[str, Any]:
    return {
        "events": int(len(events)),
        "users": int(events[user_col].nunique()),
        "items": int(events[ITEM_ID].nunique()),
        "first_ts": str(events[TS].min()),
        "last_ts": str(events[TS].max()),
        "event_types": {str(k): int(v) for k, v in events[EVENT_TYPE].value_counts().items()},
    }


def _bar_chart(metrics: dict[str, dict[str, float]], keys: list[str]) -> Any:
    from matplotlib.figure import Figure  # no pyplot: never switches a notebook's backend


    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    width = 0.8 / max(len(metrics), 1)
    for j, (label, m) in enumerate(metrics.items()):
        ax.bar(np.arange(len(keys)) + j * width, [m.get(k, 0.0) for k in keys], width, label=label)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=30)
    ax.set_title("Recommendation on the test window: model vs baselines")
    ax.legend()
    fig.tight_layout()
    return fig


def train_recommender(config: RecommenderTrainConfig, events: pd.DataFrame) -> Any:
    """Tune, fit, evaluate (beside popularity and random), log to MLflow and register.

    Returns a `training.registry.TrainResult`; metric names are `<split>_<metric>` ('test_ndcg_at_10', ...).
    """
    import tempfile

    import mlflow
    from tqdm.auto import tqdm

    from training.evaluation import evaluate_recommender, time_split
    from training.mlflow_models import recommender_model
    from training.registry import (
        TrainResult,
        configure_tracking,
        log_dataset,
        log_metrics,
        metric_name,
        register_and_promote,
        run_name,
        split_metrics,
        use_experiment,
    )

    ucol = config.user_col
    if ucol not in events:
        if ucol != PROFILE_ID:
            raise ValueError(f"events lack the user column {ucol!r}")
        from features.identity import resolve_identities

        events = resolve_identities(events)
    if len(events) == 0:
        raise ValueError("no events")
    train_ev, test_ev = time_split(events, config.as_of, config.test_days)
    as_of = test_ev[TS].min() if config.as_of is None else pd.Timestamp(config.as_of)
    if as_of.tzinfo is None:
        as_of = as_of.tz_localize("UTC")
    test_truth = _truth(test_ev, config.truth_event_types, ucol)
    if len(train_ev) == 0 or len(test_truth) == 0:
        what = ("no training events before it" if len(train_ev) == 0 else
                f"no {'/'.join(config.truth_event_types)} events in the {config.test_days:g} test days after it")
        raise ValueError(f"as_of={as_of} leaves {what}; the data run from {events[TS].min()} to {events[TS].max()}")

    def blend(weights_als: ALSConfig) -> BlendRecommender:
        als = replace(weights_als, seed=config.seed, num_threads=config.num_threads)
        return BlendRecommender(BlendConfig(als, config.complements, config.popularity), ucol)

    def seen(ev: pd.DataFrame) -> pd.DataFrame:
        return _truth(ev, config.exclude_event_types, ucol)

    # 1. tune on the validation window before as_of
    fit_ev, val_ev = time_split(train_ev, as_of - pd.Timedelta(days=config.val_days), config.val_days)
    val_truth = _truth(val_ev, config.truth_event_types, ucol)
    grid = [(w, a) for w in config.weight_grid for a in config.als_grid]
    tuning: list[dict[str, Any]] = []
    best = (config.weight_grid[0], config.als_grid[0])
    if len(grid) > 1 and len(val_truth) and len(fit_ev):
        best_score = -1.0
        val_cut = val_ev[TS].min()
        for j, (w, a) in enumerate(tqdm(grid, desc="tune recommender", disable=not config.progress)):
            m = blend(a).fit(interactions_from_events(fit_ev, w, val_cut, ucol))
            s = evaluate_recommender(m, seen(fit_ev), val_truth, ks=(10,), user_col=ucol, segments=False)["ndcg@10"]
            tuning.append({"candidate": j, "ndcg@10": s, "weights": asdict(w), "als": asdict(a)})
            if s > best_score:
                best_score, best = s, (w, a)
    weights, als = best

    # 2. fit before as_of, evaluate on the test window with baselines in the same run
    inter = interactions_from_events(train_ev, weights, as_of, ucol)
    model = blend(als).fit(inter)
    excl = seen(train_ev)
    ks = tuple(config.ks)
    results: dict[str, dict[str, float]] = {}
    contenders: dict[str, Recommender] = {
        "model": model,
        "popularity": PopularityRecommender(replace(config.popularity, personal_categories=False), ucol).fit(inter),
        "random": RandomRecommender(config.seed, ucol).fit(inter),
    }
    for label, m in tqdm(contenders.items(), desc="evaluate", disable=not config.progress):
        results[label] = evaluate_recommender(m, excl, test_truth, ks=ks, user_col=ucol)

    def evaluate_champion(uri: str) -> float:
        champion = mlflow.pyfunc.load_model(uri).unwrap_python_model()
        return evaluate_recommender(champion, excl, test_truth, ks=(10,), user_col=ucol,
                                    segments=False)[PROMOTION_METRIC]

    final = model
    if config.refit_all:
        final = blend(als).fit(interactions_from_events(pd.concat([train_ev, test_ev]), weights, None, ucol))

    # 3. log and register
    configure_tracking(config.tracking_uri)
    use_experiment(config.experiment)
    metrics = split_metrics(results["model"])
    baselines = {lab: split_metrics(results[lab]) for lab in PROMOTION_BASELINES}
    with mlflow.start_run(run_name=run_name("recommender")) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({"as_of": str(as_of), "test_days": config.test_days, "val_days": config.val_days,
                           "refit_all": config.refit_all, "seed": config.seed, "grid_size": len(grid)})
        mlflow.log_params({f"weights.{k}": v for k, v in asdict(weights).items()})
        mlflow.log_params({f"als.{k}": v for k, v in asdict(als).items() if k not in ("show_progress",)})
        mlflow.log_params({f"complements.{k}": v for k, v in asdict(config.complements).items()})
        log_metrics(metrics, baselines)
        for split, frame in (("training", train_ev), ("validation", val_ev), ("test", test_ev)):
            log_dataset(frame, split, name=f"events-{split}", source=config.source)
        mlflow.log_dict({"train": _summary(train_ev, ucol), "test": _summary(test_ev, ucol)}, "data_summary.json")
        mlflow.log_dict({"candidates": tuning}, "tuning.json")
        keys = [f"{n}@{k}" for k in ks for n in ("precision", "recall", "ndcg", "map", "hit_rate")]
        fig = _bar_chart(results, keys)
        mlflow.log_figure(fig, "metrics_vs_baselines.png")
        art = final.save(Path(tmp) / "recommender")
        # no real customer in the logged example: it outlives any erasure (an unknown id gets popularity)
        example = pd.DataFrame({"user_id": ["p_example_user"], "k": [10]})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(recommender_model.__file__)),
            artifacts={recommender_model.ARTIFACT_KEY: str(art)},
            signature=recommender_model.signature(),
            input_example=example,
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"],
        )
        run_id = run.info.run_id
    score = float(results["model"][PROMOTION_METRIC])
    decision = register_and_promote(run_id, info.model_uri, config.model_name, metric_name(PROMOTION_METRIC), score,
                                    evaluate_champion=evaluate_champion,
                                    baselines={b: results[b][PROMOTION_METRIC] for b in PROMOTION_BASELINES})
    return TrainResult(
        run_id=run_id,
        model_uri=info.model_uri,
        model_name=config.model_name,
        version=decision.version,
        promoted=decision.promoted,
        reason=decision.reason,
        metrics=metrics,
        baselines=baselines,
    )
