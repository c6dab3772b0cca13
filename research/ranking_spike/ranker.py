"""LightGBM LambdaRank over candidate sets: learned on validation carves, applied to the test candidates.

Queries are users; labels 1 for a held-out item of the carve.  Queries without a positive among their candidates
carry no gradient in LambdaRank and are dropped.  A share of the queries (by user) is kept aside for early
stopping, so the number of trees is chosen on data the trees did not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from research.ranking_spike.candidates import CATEGORICAL, CandidateSet


def labels(cs: CandidateSet, truth: sp.csr_matrix) -> np.ndarray:
    """1 where the pair's item is held out for that user."""
    t = truth[cs.users].tocsr()
    return np.asarray(t[cs.rows, cs.items]).ravel().astype(np.int32)


@dataclass
class RankerConfig:
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 10.0
    max_rounds: int = 1000
    early_stopping: int = 50
    eval_share: float = 0.15
    truncation_level: int = 30
    seed: int = 0
    #: feature-name suffixes left out (e.g. "_score": raw scores shift between carve-sized and full fits)
    drop_suffixes: tuple[str, ...] = ()
    #: treat CATEGORICAL columns as categories (False: their codes as numbers; categories overfit small data)
    categorical: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        return {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
                "feature_fraction": self.feature_fraction, "bagging_fraction": self.bagging_fraction,
                "bagging_freq": 1, "lambda_l2": self.lambda_l2, "lambdarank_truncation_level": self.truncation_level,
                "num_threads": 1, "verbose": -1, "seed": self.seed, **self.extra}


class LambdaRanker:
    """Fit on one or more labelled candidate sets (one per carve), score any candidate set."""

    def __init__(self, config: RankerConfig | None = None) -> None:
        self.config = config or RankerConfig()

    def fit(self, sets: Sequence[tuple[CandidateSet, np.ndarray]]) -> Self:
        import lightgbm as lgb

        xs, ys, gs, qkeys = [], [], [], []
        for j, (cs, y) in enumerate(sets):
            pos = np.bincount(cs.rows, weights=y, minlength=len(cs.users)) > 0
            keep = pos[cs.rows]
            xs.append(cs.features.loc[keep])
            ys.append(y[keep])
            gs.append(cs.groups()[pos])
            qkeys.append(np.stack([np.full(pos.sum(), j), cs.users[pos]], 1))
        x, y, g, q = pd.concat(xs, ignore_index=True), np.concatenate(ys), np.concatenate(gs), np.concatenate(qkeys)
        self.columns = [c for c in x.columns if not c.endswith(self.config.drop_suffixes or ("\0",))]
        x = x[self.columns]
        # early-stopping queries: a share of users (all of their carves), so the same user is not on both sides
        rng = np.random.default_rng(self.config.seed)
        users = np.unique(q[:, 1])
        held = set(rng.choice(users, int(len(users) * self.config.eval_share), replace=False).tolist())
        is_eval_q = np.array([u in held for u in q[:, 1]])
        is_eval_row = np.repeat(is_eval_q, g)
        cat = [c for c in CATEGORICAL if c in self.columns] if self.config.categorical else []
        dtr = lgb.Dataset(x.loc[~is_eval_row], y[~is_eval_row], group=g[~is_eval_q], categorical_feature=cat,
                          free_raw_data=False)
        dva = lgb.Dataset(x.loc[is_eval_row], y[is_eval_row], group=g[is_eval_q], reference=dtr,
                          categorical_feature=cat)
        self.model = lgb.train(self.config.params(), dtr, num_boost_round=self.config.max_rounds, valid_sets=[dva],
                               callbacks=[lgb.early_stopping(self.config.early_stopping, verbose=False)])
        self.held_users = held
        self.best_iteration = int(self.model.best_iteration)
        self.eval_ndcg = float(self.model.best_score["valid_0"]["ndcg@10"])
        self.train_rows = int((~is_eval_row).sum())
        return self

    def predict(self, cs: CandidateSet) -> np.ndarray:
        return self.model.predict(cs.features[self.columns], num_iteration=self.best_iteration, num_threads=1)

    def importance(self, top: int = 15) -> list[tuple[str, float]]:
        gain = self.model.feature_importance("gain", iteration=self.best_iteration)
        order = np.argsort(-gain)[:top]
        tot = gain.sum() or 1.0
        return [(self.columns[i], round(float(gain[i] / tot), 3)) for i in order]


def top_k(cs: CandidateSet, scores: np.ndarray, k: int = 10) -> np.ndarray:
    """Per query, the k candidate items with the highest scores (item indices, best first)."""
    n = len(cs.users)
    per = cs.groups()
    if not (per == per[0]).all():
        raise ValueError("top_k expects the same number of candidates per user")
    s = scores.reshape(n, per[0])
    it = cs.items.reshape(n, per[0])
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(it, order, 1)
