"""Candidate generators behind one interface: fit on `Interactions`, score users x items.

Every generator answers `score(users) -> float32 (len(users), n_items)`: higher is better, comparable only
within one user and one generator (the ranker sees per-user ranks and z-scores as well as raw scores).
Dense rows suit MovieLens (1,682 items); the package version should add `score_items(user, item_idx)` so the
ranker can score another generator's candidates without a full row (ALS: a dot product; item-item: history
times the candidates' columns of the top-k matrix), and keep item-item models as top-k CSR (items x k).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Self

import numpy as np
import scipy.sparse as sp

from research.ranking_spike.data import DAY, Interactions

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class CandidateGenerator(ABC):
    """One source of candidates and of ranking features."""

    name: str = "generator"
    #: scores come from the user's history: users without one get no candidates and NaN features from it
    personal: bool = True

    @abstractmethod
    def fit(self, inter: Interactions) -> Self: ...

    @abstractmethod
    def score(self, users: np.ndarray) -> np.ndarray:
        """Scores of every item for each of `users` (row indices of the fitted Interactions)."""

    def top(self, users: np.ndarray, n: int, seen: sp.csr_matrix) -> np.ndarray:
        """The n best unseen items per user, best first (item indices)."""
        s = self.score(users)
        mask_seen(s, seen[users])
        part = np.argpartition(-s, n, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        return np.take_along_axis(part, order, 1)


def mask_seen(scores: np.ndarray, seen_rows: sp.csr_matrix) -> None:
    """Seen items to -inf in place (they are never recommended)."""
    r, c = seen_rows.nonzero()
    scores[r, c] = -np.inf


def top_k_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each row: memory grows with items x k, not items^2."""
    m = m.tocsr()
    rows, cols, vals = [], [], []
    for i in range(m.shape[0]):
        a, b = m.indptr[i], m.indptr[i + 1]
        if b - a == 0:
            continue
        d, ix = m.data[a:b], m.indices[a:b]
        keep = np.argpartition(-d, k)[:k] if b - a > k else np.arange(b - a)
        rows.append(np.full(len(keep), i))
        cols.append(ix[keep])
        vals.append(d[keep])
    if not rows:
        return sp.csr_matrix(m.shape, dtype=np.float32)
    return sp.csr_matrix((np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                         shape=m.shape)


@dataclass(frozen=True)
class ALSConfig:
    factors: int = 32
    regularization: float = 30.0
    alpha: float = 5.0
    iterations: int = 30
    inputs: str = "sqrt_rating"


class ALS(CandidateGenerator):
    """implicit's CPU ALS; alpha scales the confidence of the input (implicit >= 0.5 convention)."""

    name = "als"

    def __init__(self, config: ALSConfig = ALSConfig()) -> None:
        self.config = config

    def fit(self, inter: Interactions) -> Self:
        from implicit.cpu.als import AlternatingLeastSquares

        c = self.config
        m = AlternatingLeastSquares(factors=c.factors, regularization=c.regularization, alpha=c.alpha,
                                    iterations=c.iterations, random_state=0, num_threads=1)
        m.fit(inter.matrix(c.inputs), show_progress=False)
        self.u, self.v = np.asarray(m.user_factors, np.float32), np.asarray(m.item_factors, np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.u[users] @ self.v.T


class _ItemItem(CandidateGenerator):
    """Scores = the user's history times an item x item matrix W (dense for EASE, top-k CSR otherwise)."""

    inputs = "binary"
    w: np.ndarray | sp.csr_matrix

    def score(self, users: np.ndarray) -> np.ndarray:
        s = self.x[users] @ self.w
        return np.asarray(s.toarray() if sp.issparse(s) else s, dtype=np.float32)


class EASE(_ItemItem):
    """Steck 2019: B = I - P / diag(P), P = (X'X + l2 I)^-1; exact, dense, small catalogs only."""

    name = "ease"

    def __init__(self, l2: float = 600.0, inputs: str = "sqrt_rating") -> None:
        self.l2, self.inputs = l2, inputs

    def fit(self, inter: Interactions) -> Self:
        self.x = inter.matrix(self.inputs)
        g = (self.x.T @ self.x).toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += self.l2
        p = np.linalg.inv(g)
        b = -p / np.diag(p)
        b[np.diag_indices_from(b)] = 0.0
        self.w = b.astype(np.float32)
        return self


class RP3Beta(_ItemItem):
    """Paudel et al. 2017: item -> user -> item walk, damped by popularity^beta; top-k neighbours kept."""

    name = "rp3beta"

    def __init__(self, alpha: float = 0.8, beta: float = 0.5, top_k: int = 100) -> None:
        self.alpha, self.beta, self.top_k = alpha, beta, top_k

    def fit(self, inter: Interactions) -> Self:
        x = self.x = inter.matrix("binary")
        ud, idg = np.asarray(x.sum(1)).ravel(), np.asarray(x.sum(0)).ravel()
        p_ui = sp.diags(1.0 / np.maximum(ud, 1e-12)) @ x
        p_iu = sp.diags(1.0 / np.maximum(idg, 1e-12)) @ x.T.tocsr()
        p_ui.data **= self.alpha
        p_iu.data **= self.alpha
        w = (p_iu @ p_ui) @ sp.diags(1.0 / np.power(np.maximum(idg, 1e-12), self.beta))
        w = w.tocsr()
        w.setdiag(0.0)
        w.eliminate_zeros()
        self.w = top_k_per_row(w, self.top_k)
        return self


class ItemKNN(_ItemItem):
    """Cosine item-item with shrinkage (Sarwar et al.), top-k neighbours per item."""

    name = "itemknn"

    def __init__(self, top_k: int = 100, shrink: float = 10.0) -> None:
        self.top_k, self.shrink = top_k, shrink

    def fit(self, inter: Interactions) -> Self:
        x = self.x = inter.matrix("binary")
        co = (x.T @ x).tocsr()
        norm = np.sqrt(np.asarray(x.multiply(x).sum(0)).ravel())
        co = co.tocoo()
        co.data = co.data / (norm[co.row] * norm[co.col] + self.shrink)
        w = co.tocsr()
        w.setdiag(0.0)
        w.eliminate_zeros()
        self.w = top_k_per_row(w, self.top_k)
        return self


class Popularity(CandidateGenerator):
    """log(1 + interactions); `half_life_days` set: exponentially decayed from the cutoff (recent popularity)."""

    personal = False

    def __init__(self, half_life_days: float | None = None) -> None:
        self.half_life_days = half_life_days
        self.name = "popularity" if half_life_days is None else f"recent_pop_{half_life_days:g}d"

    def fit(self, inter: Interactions) -> Self:
        w = np.ones(len(inter.iidx))
        if self.half_life_days is not None:
            w = 0.5 ** ((inter.now - inter.ts) / (self.half_life_days * DAY))
        self.pop = np.log1p(np.bincount(inter.iidx, weights=w, minlength=inter.n_items)).astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.pop, (len(users), len(self.pop))).copy()


class ServingPopularity(CandidateGenerator):
    """What the product serves a cold user today (RecommenderCore.popular): overall and last-`window_days`
    counts, each divided by its max, blended `recent_share`; the cold-start fallback of every baseline row."""

    name = "pop_blend"
    personal = False

    def __init__(self, window_days: float = 14.0, recent_share: float = 0.5) -> None:
        self.window_days, self.recent_share = window_days, recent_share

    def fit(self, inter: Interactions) -> Self:
        n = inter.n_items
        allc = np.bincount(inter.iidx, minlength=n).astype(float)
        rec = np.bincount(inter.iidx[inter.ts > inter.now - self.window_days * DAY], minlength=n).astype(float)
        self.pop = ((1 - self.recent_share) * allc / max(allc.max(), 1) +
                    self.recent_share * rec / max(rec.max(), 1)).astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.pop, (len(users), len(self.pop))).copy()


class CategoryPopularity(CandidateGenerator):
    """Popularity within the user's categories: affinity(user, item's categories) x log popularity.

    `categories` is items x categories (0/1, multi-label as MovieLens genres); a user's affinity is the share of
    their history in each category.  Needs item attributes, so only the 'with attributes' runs use it.
    """

    name = "category_pop"

    def __init__(self, categories: np.ndarray) -> None:
        self.g = sp.csr_matrix(categories.astype(np.float32))

    def fit(self, inter: Interactions) -> Self:
        x = inter.matrix("binary")
        prof = np.asarray((x @ self.g).todense())
        self.prof = prof / np.maximum(prof.sum(1, keepdims=True), 1e-9)
        gn = self.g.multiply(1.0 / np.maximum(np.asarray(self.g.sum(1)), 1.0)).tocsr()
        self.gn_t = gn.T.tocsr()
        self.pop = np.log1p(np.bincount(inter.iidx, minlength=inter.n_items)).astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        aff = np.asarray(self.prof[users] @ self.gn_t.toarray(), dtype=np.float32)
        return aff * self.pop[None, :]


class Blend(CandidateGenerator):
    """A weighted sum of fitted members' per-user z-scores (the benchmark's EASE + ALS ensemble), as one more
    generator: a linear combination trees approximate poorly, so the ranker gets it as a feature."""

    name = "blend"

    def __init__(self, members: list[CandidateGenerator], weights: list[float]) -> None:
        self.members, self.weights = members, weights

    def fit(self, inter: Interactions) -> Self:
        return self  # members are fitted already (the same instances the ranker reads)

    def score(self, users: np.ndarray) -> np.ndarray:
        out = np.zeros((len(users), 0), np.float32)
        for m, w in zip(self.members, self.weights, strict=True):
            s = m.score(users).astype(np.float32)
            z = (s - s.mean(1, keepdims=True)) / np.maximum(s.std(1, keepdims=True), 1e-9)
            out = w * z if out.shape[1] == 0 else out + w * z
        return out
