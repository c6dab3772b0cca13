"""The union of candidates and the ranking features of each (user, item) pair.

Union: items ordered by their best rank in any generator (round-robin over the generators' lists), ties by
the sum of ranks, the first `n` unseen kept; every user gets exactly `n` candidates.
Features (one row per pair): each generator's raw score, per-user z-score and log-rank; item statistics from
the training interactions only (popularity, recent popularity, mean rating, age, days since last rating);
user statistics (activity, mean/std rating, span, days since last rating); with `side` also item attributes
(genres, year) and user attributes (age, gender, occupation) and the user's affinity to the item's genres.
Everything is measured at the training cutoff `Interactions.now` (point in time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from research.ranking_spike.data import DAY, GENRES, Interactions
from research.ranking_spike.generators import CandidateGenerator, mask_seen


@dataclass(frozen=True)
class SideInfo:
    """Item and user attributes aligned to the Interactions' indices (rows = item / user index)."""

    item_genres: np.ndarray  # items x genres, 0/1
    item_year: np.ndarray  # items (NaN unknown)
    user_attrs: np.ndarray  # users x (age, gender_f, occupation)

    @classmethod
    def from_frames(cls, items: pd.DataFrame, users: pd.DataFrame, item_index: pd.Index,
                    user_index: pd.Index) -> SideInfo:
        it = items.reindex(item_index)
        return cls(it[list(GENRES)].fillna(0).to_numpy(np.float32), it["year"].to_numpy(np.float32),
                   users.reindex(user_index)[["age", "gender_f", "occupation"]].to_numpy(np.float32))


USER_ATTRS = ("user_age", "user_gender_f", "user_occupation")
CATEGORICAL = ("user_occupation",)


@dataclass
class CandidateSet:
    """Pairs (row into `users`, item index), their features, and the users they belong to."""

    users: np.ndarray  # user indices, one per query
    rows: np.ndarray  # query row of each pair
    items: np.ndarray  # item index of each pair
    features: pd.DataFrame

    def groups(self) -> np.ndarray:
        return np.bincount(self.rows, minlength=len(self.users))


def _ranks(s: np.ndarray) -> np.ndarray:
    """0 = best, per row; items the generator cannot score (-inf: seen, or no history) rank last (n_items), so a
    generator with nothing to say for a user puts nothing into that user's union."""
    order = np.argsort(-s, axis=1, kind="stable")
    r = np.empty_like(order)
    np.put_along_axis(r, order, np.arange(s.shape[1])[None, :].repeat(s.shape[0], 0), 1)
    r[~np.isfinite(s)] = s.shape[1]
    return r


def _zscore(s: np.ndarray) -> np.ndarray:
    f = np.where(np.isfinite(s), s, np.nan)
    mu, sd = np.nanmean(f, 1, keepdims=True), np.nanstd(f, 1, keepdims=True)
    return ((f - mu) / np.maximum(sd, 1e-9)).astype(np.float32)


def item_stats(inter: Interactions) -> dict[str, np.ndarray]:
    """Per-item statistics of the training interactions (no attributes)."""
    n, i = inter.n_items, inter.iidx
    cnt = np.bincount(i, minlength=n).astype(float)
    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    order = np.argsort(inter.ts)
    first[i[order[::-1]]] = inter.ts[order[::-1]]  # the earliest write wins
    last[i[order]] = inter.ts[order]
    prior, k = inter.rating.mean(), 5.0
    mean = (np.bincount(i, weights=inter.rating, minlength=n) + k * prior) / (cnt + k)
    recent = np.bincount(i, weights=0.5 ** ((inter.now - inter.ts) / (14 * DAY)), minlength=n)
    return {"item_log_pop": np.log1p(cnt), "item_log_recent_pop": np.log1p(recent), "item_mean_rating": mean,
            "item_age_days": (inter.now - first) / DAY, "item_days_since_last": (inter.now - last) / DAY}


def user_stats(inter: Interactions) -> dict[str, np.ndarray]:
    n, u = inter.n_users, inter.uidx
    cnt = np.bincount(u, minlength=n).astype(float)
    s1 = np.bincount(u, weights=inter.rating, minlength=n)
    s2 = np.bincount(u, weights=inter.rating ** 2, minlength=n)
    mean = s1 / np.maximum(cnt, 1)
    first, last = np.full(n, np.nan), np.full(n, np.nan)
    order = np.argsort(inter.ts)
    first[u[order[::-1]]] = inter.ts[order[::-1]]
    last[u[order]] = inter.ts[order]
    return {"user_log_n": np.log1p(cnt), "user_mean_rating": mean,
            "user_std_rating": np.sqrt(np.maximum(s2 / np.maximum(cnt, 1) - mean ** 2, 0)),
            "user_span_days": (last - first) / DAY, "user_days_since_last": (inter.now - last) / DAY}


Scored = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]


def score_and_rank(gens: Sequence[CandidateGenerator], inter: Interactions, users: np.ndarray) -> Scored:
    """Every generator's masked scores (seen items and, for personal generators, users without history: -inf)
    and per-user ranks (0 = best)."""
    seen = inter.seen()[users]
    cold = np.asarray(seen.sum(1)).ravel() == 0
    scores, ranks = {}, {}
    for g in gens:
        s = g.score(users).astype(np.float32)
        mask_seen(s, seen)
        if g.personal:
            s[cold] = -np.inf  # no history: this generator has nothing to say
        scores[g.name], ranks[g.name] = s, _ranks(s)
    return scores, ranks


def union(ranks: dict[str, np.ndarray], n: int, weights: dict[str, float] | None = None) -> np.ndarray:
    """n candidates per user: by the best weighted rank over generators (rank / weight), ties by rank sum.

    `weights` (by generator name, default 1): a weak generator contributes only its very best items.
    """
    stack = np.stack(list(ranks.values()))
    w = np.array([(weights or {}).get(name, 1.0) for name in ranks], dtype=np.float64)[:, None, None]
    key = (stack / np.maximum(w, 1e-6)).min(0) + stack.sum(0) / (len(ranks) * stack.shape[2] + 1.0)
    return np.argpartition(key, n, axis=1)[:, :n]


def union_weights(quality: dict[str, float], power: float) -> dict[str, float]:
    """Weights from each generator's validation quality: (quality / best) ** power (0: plain round-robin)."""
    best = max(quality.values())
    return {k: (max(v, 0.0) / best) ** power for k, v in quality.items()}


def build_candidates(gens: Sequence[CandidateGenerator], inter: Interactions, users: np.ndarray, n: int = 200,
                     side: SideInfo | None = None, weights: dict[str, float] | None = None,
                     scored: Scored | None = None) -> CandidateSet:
    """The n-item union per user and the feature frame of every pair (see the module docstring)."""
    scores, ranks = scored if scored is not None else score_and_rank(gens, inter, users)
    cand = union(ranks, n, weights)
    stack = np.stack(list(ranks.values()))
    rows = np.repeat(np.arange(len(users)), n)
    items = cand.ravel()
    f: dict[str, np.ndarray] = {}
    for name, s in scores.items():
        f[f"{name}_score"] = np.nan_to_num(s[rows, items], neginf=np.nan)
        f[f"{name}_z"] = _zscore(s)[rows, items]
        lr = np.log1p(ranks[name][rows, items]).astype(np.float32)
        f[f"{name}_logrank"] = np.where(np.isfinite(s[rows, items]), lr, np.nan)
    f["min_logrank"] = np.log1p(stack.min(0)[rows, items])
    f["votes_top50"] = (stack[:, rows, items] < 50).sum(0)
    for k, v in item_stats(inter).items():
        f[k] = v[items]
    for k, v in user_stats(inter).items():
        f[k] = v[users][rows]
    if side is not None:
        _side_features(f, side, inter, users, rows, items)
    return CandidateSet(users, rows, items, pd.DataFrame(f))


def _side_features(f: dict[str, np.ndarray], side: SideInfo, inter: Interactions, users: np.ndarray,
                   rows: np.ndarray, items: np.ndarray) -> None:
    """Catalog and profile features: genres, year, demographics, the user's genre affinity and era."""
    g = side.item_genres
    for j, name in enumerate(GENRES):
        f[f"genre_{name}"] = g[items, j]
    f["item_year"] = side.item_year[items]
    for j, name in enumerate(USER_ATTRS):
        f[name] = side.user_attrs[users, j][rows]
    x = inter.matrix("binary")[users]
    prof = np.asarray((x @ sp.csr_matrix(g)).todense())
    prof = prof / np.maximum(prof.sum(1, keepdims=True), 1e-9)
    ig = g[items]
    aff = prof[rows] * ig
    f["genre_affinity_mean"] = aff.sum(1) / np.maximum(ig.sum(1), 1)
    f["genre_affinity_max"] = aff.max(1)
    yr = np.nan_to_num(side.item_year, nan=np.nanmean(side.item_year))
    cnt = np.asarray(x.sum(1)).ravel()
    mean_year = np.asarray(x @ yr).ravel() / np.maximum(cnt, 1)
    f["year_minus_user_mean_year"] = side.item_year[items] - mean_year[rows]
