"""Ranking metrics and splits, with the semantics of microsoft/recommenders' python_evaluation.

Inputs are DataFrames: `truth` has one row per relevant (user, item); `recs` has (user, item,
`score`).  Only users present in both are scored (as recommenders' `merge_ranking_true_pred`
does); `evaluate_recommender` recommends for every test user, so there that means all of them.
Relevance is binary; ranks come from `score`, descending (ties: the order given).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.schema import ITEM_ID, PROFILE_ID, TS

SCORE = "score"
RANK = "rank"


class _Scorer(Protocol):
    def recommend(
        self, user_id: str | None, k: int = 10, exclude: Iterable[str] = (), recent_items: Iterable[str] = ()
    ) -> list[tuple[str, float]]: ...

    def has_user(self, user_id: str) -> bool: ...


def _hits(truth: pd.DataFrame, recs: pd.DataFrame, k: int, user_col: str) -> tuple[pd.DataFrame, pd.Series, int]:
    """Top-k recs of common users with rank and hit flag; relevant counts per user; number of users."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for name, df, cols in (("truth", truth, (user_col, ITEM_ID)), ("recs", recs, (user_col, ITEM_ID, SCORE))):
        missing = set(cols) - set(df.columns)
        if missing:
            raise ValueError(f"{name} lacks columns {sorted(missing)}")
    t = truth[[user_col, ITEM_ID]].drop_duplicates()
    common = pd.Index(t[user_col].unique()).intersection(pd.Index(recs[user_col].unique()))
    t = t.loc[t[user_col].isin(common)]
    r = recs.loc[recs[user_col].isin(common), [user_col, ITEM_ID, SCORE]].drop_duplicates([user_col, ITEM_ID])
    r = r.sort_values([user_col, SCORE], ascending=[True, False], kind="stable")
    r = r.groupby(user_col, sort=False).head(k).copy()
    r[RANK] = r.groupby(user_col, sort=False).cumcount() + 1
    key_t = pd.MultiIndex.from_frame(t[[user_col, ITEM_ID]])
    r["hit"] = pd.MultiIndex.from_frame(r[[user_col, ITEM_ID]]).isin(key_t)
    n_rel = t.groupby(user_col).size()
    return r, n_rel, len(common)


def precision_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, user_col: str = PROFILE_ID) -> float:
    """Mean over users of hits in the top k / k (k, not the number of recs, as recommenders does)."""
    r, _, n = _hits(truth, recs, k, user_col)
    return float(r["hit"].sum() / (k * n)) if n else 0.0


def recall_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, user_col: str = PROFILE_ID) -> float:
    """Mean over users of hits in the top k / number of relevant items."""
    r, n_rel, n = _hits(truth, recs, k, user_col)
    if not n:
        return 0.0
    hits = r.groupby(user_col)["hit"].sum().reindex(n_rel.index, fill_value=0)
    return float((hits / n_rel).sum() / n)


def hit_rate_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, user_col: str = PROFILE_ID) -> float:
    """Share of users with at least one relevant item in their top k."""
    r, _, n = _hits(truth, recs, k, user_col)
    return float(r.groupby(user_col)["hit"].any().sum() / n) if n else 0.0


def ndcg_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, user_col: str = PROFILE_ID) -> float:
    """Binary-relevance nDCG with log2 discount; the ideal list has min(relevant, k) hits."""
    r, n_rel, n = _hits(truth, recs, k, user_col)
    if not n:
        return 0.0
    dcg = (r["hit"] / np.log2(r[RANK] + 1)).groupby(r[user_col]).sum().reindex(n_rel.index, fill_value=0.0)
    disc = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    idcg = disc[np.minimum(n_rel.to_numpy(), k) - 1]
    return float((dcg.to_numpy() / idcg).sum() / n)


def map_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, user_col: str = PROFILE_ID) -> float:
    """Mean average precision of the top k, each user's AP divided by ALL their relevant items.

    This is recommenders' `map` (and its `map_at_k` before 1.2, which its published MovieLens
    table used): sum of precision@rank over hit ranks / number of relevant items.  It can stay
    below 1 even for a perfect top k when a user has more than k relevant items.
    """
    r, n_rel, n = _hits(truth, recs, k, user_col)
    if not n:
        return 0.0
    h = r.loc[r["hit"]].copy()
    h["prec"] = (h.groupby(user_col).cumcount() + 1) / h[RANK]
    ap = h.groupby(user_col)["prec"].sum().reindex(n_rel.index, fill_value=0.0)
    return float((ap / n_rel).sum() / n)


def catalog_coverage(recs: pd.DataFrame, catalog: Iterable[str], k: int | None = None, user_col: str = PROFILE_ID) -> float:
    """Share of the catalog that appears in anyone's top k (k=None: all recs given)."""
    items = pd.Index(pd.unique(pd.Series(list(catalog), dtype="object").astype(str)))
    if len(items) == 0:
        raise ValueError("empty catalog")
    r = recs
    if k is not None:
        r = recs.sort_values([user_col, SCORE], ascending=[True, False], kind="stable").groupby(user_col).head(k)
    return float(items.isin(r[ITEM_ID].astype(str).unique()).sum() / len(items))


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
def pairwise_precision_recall(truth: pd.Series | np.ndarray, pred: pd.Series | np.ndarray) -> tuple[float, float]:
    """(precision, recall) of 'in the same cluster' over all pairs of rows, position by position:
    how identity resolution is scored against the true person of each event or identifier."""

    def pairs(counts: pd.Series) -> float:
        x = counts.to_numpy(dtype=float)
        return float((x * (x - 1) / 2).sum())

    t, p = np.asarray(truth), np.asarray(pred)
    both = pairs(pd.DataFrame({"t": t, "p": p}).value_counts())
    return both / pairs(pd.Series(p).value_counts()), both / pairs(pd.Series(t).value_counts())


def time_split(
    events: pd.DataFrame, as_of: pd.Timestamp | str | None, test_days: float = 14.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events before as_of, events in [as_of, as_of + test_days)); as_of None: the last test_days."""
    if TS not in events:
        raise ValueError(f"events lack {TS!r}")
    if test_days <= 0:
        raise ValueError("test_days must be positive")
    ts = events[TS]
    if as_of is None:
        cut = ts.max() - pd.Timedelta(days=test_days) + pd.Timedelta(1, "ns")  # window ends at the last event
    else:
        cut = pd.Timestamp(as_of)
        if cut.tzinfo is None and getattr(ts.dt, "tz", None) is not None:
            cut = cut.tz_localize("UTC")
    end = cut + pd.Timedelta(days=test_days)
    return events.loc[ts < cut].copy(), events.loc[(ts >= cut) & (ts < end)].copy()


def stratified_split(
    df: pd.DataFrame,
    ratio: float = 0.75,
    seed: int = 42,
    filter_by: str = "item",
    user_col: str = PROFILE_ID,
    item_col: str = ITEM_ID,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """recommenders' `python_stratified_split` (two-way): per user/item, a `ratio` share to train.

    Same draw as the original (legacy `np.random.seed(seed); rand(n)`, hence RandomState here),
    same sort by (group, draw) and the same `rank / count <= ratio` rule, so the rows chosen match.
    """
    if filter_by not in ("user", "item"):
        raise ValueError("filter_by must be 'user' or 'item'")
    if not 0 < ratio < 1:
        raise ValueError("ratio must be in (0, 1)")
    by = user_col if filter_by == "user" else item_col
    if by not in df:
        raise ValueError(f"df lacks {by!r}")
    data = df.copy()
    data["_random"] = np.random.RandomState(seed).rand(len(data))
    data = data.sort_values([by, "_random"])
    g = data.groupby(by, sort=False)
    rank = (g.cumcount() + 1) / g[by].transform("count")
    data = data.drop(columns="_random")
    return data.loc[rank <= ratio], data.loc[rank > ratio]


# ---------------------------------------------------------------------------------------------
# Whole-model evaluation
# ---------------------------------------------------------------------------------------------
METRICS: dict[str, Callable[..., float]] = {
    "precision": precision_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "map": map_at_k,
    "hit_rate": hit_rate_at_k,
}


def recommend_all(
    model: _Scorer,
    users: Sequence[str],
    k: int,
    seen: dict[str, set[str]] | None = None,
    user_col: str = PROFILE_ID,
    progress: bool = False,
    desc: str = "recommend",
) -> pd.DataFrame:
    """Top-k per user as a recs frame (user, item, score), with each user's seen items excluded."""
    rows: list[tuple[str, str, float]] = []
    for u in tqdm(users, desc=desc, disable=not progress, leave=False):
        for item, s in model.recommend(u, k, exclude=(seen or {}).get(u, ())):
            rows.append((u, item, s))
    return pd.DataFrame(rows, columns=[user_col, ITEM_ID, SCORE])


def score_recs(
    truth: pd.DataFrame, recs: pd.DataFrame, ks: Sequence[int] = (10, 20), user_col: str = PROFILE_ID
) -> dict[str, float]:
    """Every metric at every k, named like 'ndcg@10'."""
    return {f"{name}@{k}": fn(truth, recs, k, user_col) for k in ks for name, fn in METRICS.items()}


def evaluate_recommender(
    model: _Scorer,
    train: pd.DataFrame,
    test: pd.DataFrame,
    ks: Sequence[int] = (10, 20),
    user_col: str = PROFILE_ID,
    segments: bool = True,
    exclude_seen: bool = True,
    catalog: Iterable[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics over all test users, plus '_new' / '_returning' splits (known to the model or not).

    `train` and `test` hold (user, item) interactions; items seen in train are never recommended
    (exclude_seen) and test items are what the user went on to interact with.
    """
    if len(test) == 0:
        raise ValueError("empty test set")
    kmax = max(ks)
    users = sorted(test[user_col].astype(str).unique())
    seen: dict[str, set[str]] = {}
    if exclude_seen and len(train):
        tr = train[[user_col, ITEM_ID]].astype(str).drop_duplicates()
        seen = {u: set(g) for u, g in tr.groupby(user_col)[ITEM_ID]}
    recs = recommend_all(model, users, kmax, seen, user_col, progress)
    truth = test[[user_col, ITEM_ID]].astype(str).drop_duplicates()
    out: dict[str, Any] = score_recs(truth, recs, ks, user_col)
    cat = catalog if catalog is not None else pd.concat([train[ITEM_ID], test[ITEM_ID]]).astype(str).unique()
    for k in ks:
        out[f"coverage@{k}"] = catalog_coverage(recs, cat, k, user_col)
    out["n_users"] = float(len(users))
    if segments:
        known = np.array([model.has_user(u) for u in users], dtype=bool)
        for seg, mask in (("returning", known), ("new", ~known)):
            us = set(np.asarray(users, dtype=object)[mask])
            out[f"n_users_{seg}"] = float(len(us))
            if not us:
                continue
            sub = score_recs(truth.loc[truth[user_col].isin(us)], recs.loc[recs[user_col].isin(us)], ks, user_col)
            out.update({f"{k}_{seg}": v for k, v in sub.items()})
    return out
