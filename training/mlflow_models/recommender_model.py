"""The serving recommender: numpy arrays in, ranked (item_id, score) lists out.

Logged to MLflow *from code*, so this file must stay self-contained: numpy, pandas and mlflow only,
no import of `training` or `implicit`.  Training builds the arrays (`training.recommender`) and
writes them with `RecommenderCore.save`; serving gets them back through `load_model(...)
.unwrap_python_model()`, whose methods are called once per request.

What it answers:
- known users: their ALS factors, blended with a fold-in of `recent_items` (events ingested a
  moment ago move the results without retraining);
- new or anonymous users with recent items: the same least-squares fold-in ALS uses for a user
  update (confidence = alpha * weight), solved against the stored item factors;
- no history at all: popularity (overall blended with a recent window, or per category);
- product pages: directional co-occurrence complements ("bought together", "viewed, then bought").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

_FORMAT_VERSION = 1
_ARRAYS = (
    "user_factors",
    "item_factors",
    "comp_indptr",
    "comp_indices",
    "comp_scores",
    "popularity",
    "recent_popularity",
)
#: The name of the artifact (a directory) the MLflow model carries.
ARTIFACT_KEY = "recommender"


class RecommenderCore:
    """Every answer the recommender service gives, from plain arrays (fast: one matvec per call)."""

    def __init__(
        self,
        *,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        item_categories: Sequence[str | None],
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        comp_indptr: np.ndarray,
        comp_indices: np.ndarray,
        comp_scores: np.ndarray,
        popularity: np.ndarray,
        recent_popularity: np.ndarray,
        config: dict[str, Any],
    ) -> None:
        n_items = len(item_ids)
        if item_factors.shape[0] != n_items or user_factors.shape[0] != len(user_ids):
            raise ValueError("factor shapes do not match the id lists")
        if len(comp_indptr) != n_items + 1 or len(popularity) != n_items:
            raise ValueError("complement/popularity arrays do not match the item list")
        self.user_ids = list(map(str, user_ids))
        self.item_ids = list(map(str, item_ids))
        self.item_categories = [None if c is None else str(c) for c in item_categories]
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.item_index = {it: i for i, it in enumerate(self.item_ids)}
        self.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.comp_indptr = np.asarray(comp_indptr, dtype=np.int64)
        self.comp_indices = np.asarray(comp_indices, dtype=np.int64)
        self.comp_scores = np.asarray(comp_scores, dtype=np.float32)
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.recent_popularity = np.asarray(recent_popularity, dtype=np.float64)
        self.config = dict(config)
        self.alpha = float(self.config.get("alpha", 1.0))
        self.regularization = float(self.config.get("regularization", 0.01))
        self.recent_item_weight = float(self.config.get("recent_item_weight", 1.0))
        self.recent_blend = float(self.config.get("recent_blend", 0.5))
        self.recent_decay = float(self.config.get("recent_decay", 1.0))
        self.recent_popularity_share = float(self.config.get("recent_popularity_share", 0.5))
        f = self.item_factors.astype(np.float64)
        self._yty = f.T @ f + self.regularization * np.eye(f.shape[1])
        self._category_items: dict[str, np.ndarray] = {}
        cats = pd.Series(self.item_categories, dtype="object")
        for cat, idx in cats.groupby(cats, sort=False).indices.items():
            self._category_items[str(cat)] = np.asarray(idx, dtype=np.int64)
        pop = self._normalise(self.popularity)
        recent = self._normalise(self.recent_popularity)
        share = self.recent_popularity_share
        self._pop_score = (1 - share) * pop + share * recent
        self._pop_order = np.argsort(-self._pop_score, kind="stable")

    # -- lookups ---------------------------------------------------------------------------------
    def has_user(self, user_id: str) -> bool:
        return str(user_id) in self.user_index

    def has_item(self, item_id: str) -> bool:
        return str(item_id) in self.item_index

    def item_category(self, item_id: str) -> str | None:
        i = self.item_index.get(str(item_id))
        return None if i is None else self.item_categories[i]

    # -- answers ---------------------------------------------------------------------------------
    def recommend(
        self,
        user_id: str | None,
        k: int = 10,
        exclude: Iterable[str] = (),
        recent_items: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        """Top-k for a user; `recent_items` (newest first, not yet trained on) shift the result."""
        k = self._check_k(k)
        recent = self._indices(recent_items)
        uidx = None if user_id is None else self.user_index.get(str(user_id))
        query: np.ndarray | None = None
        if uidx is not None:
            query = self.user_factors[uidx].astype(np.float64)
        if len(recent):
            # newest first: each older item weighs `recent_decay` times the one after it, so the item
            # just seen moves the list even behind a long history of views
            folded = self.fold_in(recent, self.recent_item_weight * self.recent_decay ** np.arange(len(recent)))
            if query is None:
                query = folded
            else:  # blend directions, keep the user's scale: the fold-in of a few items is much shorter
                scale = float(np.linalg.norm(query))
                unit_u = query / max(scale, 1e-12)
                unit_f = folded / max(float(np.linalg.norm(folded)), 1e-12)
                query = scale * ((1 - self.recent_blend) * unit_u + self.recent_blend * unit_f)
        if query is None:
            return self.popular(k, exclude=exclude)
        scores = self.item_factors @ query.astype(np.float32)
        return self._top(scores.astype(np.float64), k, self._indices(exclude))

    def fold_in(self, item_idx: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Least-squares user vector for these items, exactly as one ALS user step would give it."""
        w = np.full(len(item_idx), self.recent_item_weight) if weights is None else np.asarray(weights, float)
        conf = self.alpha * w
        y = self.item_factors[item_idx].astype(np.float64)
        a = self._yty + (y.T * (conf - 1.0)) @ y
        b = y.T @ conf
        return np.linalg.solve(a, b)

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """Items whose factors point the same way (cosine): 'more like this'."""
        k = self._check_k(k)
        i = self.item_index.get(str(item_id))
        if i is None:
            return []
        f = self.item_factors
        norms = np.linalg.norm(f, axis=1) + 1e-12
        scores = (f @ f[i]) / (norms * norms[i])
        return self._top(scores.astype(np.float64), k, np.array([i]))

    def complements(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """Items bought with / after this one (directional lift), best first."""
        k = self._check_k(k)
        i = self.item_index.get(str(item_id))
        if i is None:
            return []
        lo, hi = self.comp_indptr[i], self.comp_indptr[i + 1]
        idx, sc = self.comp_indices[lo:hi], self.comp_scores[lo:hi]
        order = np.argsort(-sc, kind="stable")[:k]
        return [(self.item_ids[j], float(sc[o])) for o, j in zip(order, idx[order], strict=True)]

    def popular(self, k: int = 10, category: str | None = None, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """Cold start: overall popularity blended with the recent window, optionally one category."""
        k = self._check_k(k)
        excl = set(self._indices(exclude).tolist())
        order = self._pop_order
        if category is not None:
            members = self._category_items.get(str(category))
            if members is None:
                return []
            order = members[np.argsort(-self._pop_score[members], kind="stable")]
        out: list[tuple[str, float]] = []
        for j in order:
            if j in excl:
                continue
            out.append((self.item_ids[j], float(self._pop_score[j])))
            if len(out) == k:
                break
        return out

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Plain .npy arrays and json id maps: loadable with numpy alone."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            np.save(out / f"{name}.npy", getattr(self, name), allow_pickle=False)
        meta = {
            "format_version": _FORMAT_VERSION,
            "user_ids": self.user_ids,
            "item_ids": self.item_ids,
            "item_categories": self.item_categories,
            "config": self.config,
        }
        (out / "meta.json").write_text(json.dumps(meta))
        return out

    @classmethod
    def load(cls, path: str | Path) -> RecommenderCore:
        src = Path(path)
        meta = json.loads((src / "meta.json").read_text())
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported recommender format {meta.get('format_version')!r} in {src}")
        arrays = {name: np.load(src / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
        return cls(
            user_ids=meta["user_ids"],
            item_ids=meta["item_ids"],
            item_categories=meta["item_categories"],
            config=meta["config"],
            **arrays,
        )

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _check_k(k: int) -> int:
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return int(k)

    @staticmethod
    def _normalise(x: np.ndarray) -> np.ndarray:
        m = float(np.max(x)) if len(x) else 0.0
        return x / m if m > 0 else np.zeros_like(x, dtype=np.float64)

    def _indices(self, ids: Iterable[str]) -> np.ndarray:
        if isinstance(ids, str):
            ids = (ids,)
        idx = [self.item_index[s] for s in map(str, ids) if s in self.item_index]
        return np.asarray(idx, dtype=np.int64)

    def _top(self, scores: np.ndarray, k: int, exclude: np.ndarray) -> list[tuple[str, float]]:
        if len(exclude):
            scores = scores.copy()
            scores[exclude] = -np.inf
        n = len(scores)
        kk = min(k, n)
        part = np.argpartition(-scores, kk - 1)[:kk] if kk < n else np.arange(n)
        order = part[np.lexsort((part, -scores[part]))]
        return [(self.item_ids[j], float(scores[j])) for j in order if np.isfinite(scores[j])]


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: `predict` for batch use, the core's methods for per-request serving."""

    def __init__(self) -> None:
        self.core: RecommenderCore | None = None

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's context type
        self.core = RecommenderCore.load(context.artifacts[ARTIFACT_KEY])

    def _c(self) -> RecommenderCore:
        if self.core is None:
            raise RuntimeError("model not loaded: call load_context (mlflow.pyfunc.load_model does)")
        return self.core

    def recommend(self, user_id, k=10, exclude=(), recent_items=()):  # noqa: ANN001, ANN201
        return self._c().recommend(user_id, k, exclude=exclude, recent_items=recent_items)

    def similar_items(self, item_id, k=10):  # noqa: ANN001, ANN201
        return self._c().similar_items(item_id, k)

    def complements(self, item_id, k=10):  # noqa: ANN001, ANN201
        return self._c().complements(item_id, k)

    def popular(self, k=10, category=None, exclude=()):  # noqa: ANN001, ANN201
        return self._c().popular(k, category=category, exclude=exclude)

    def item_category(self, item_id):  # noqa: ANN001, ANN201
        return self._c().item_category(item_id)

    def has_user(self, user_id):  # noqa: ANN001, ANN201
        return self._c().has_user(user_id)

    def has_item(self, item_id):  # noqa: ANN001, ANN201
        return self._c().has_item(item_id)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ANN001
        """Batch form: rows of (user_id, k) -> rows of (user_id, item_id, score, rank)."""
        core = self._c()
        df = pd.DataFrame(model_input)
        if "user_id" not in df:
            raise ValueError("input needs a 'user_id' column")
        ks = df["k"] if "k" in df else pd.Series(10, index=df.index)
        rows: list[tuple[str, str, float, int]] = []
        for uid, k in zip(df["user_id"].astype(str), ks.astype(int), strict=True):
            for rank, (item, score) in enumerate(core.recommend(uid, int(k)), start=1):
                rows.append((uid, item, score, rank))
        return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank"])


def signature() -> Any:
    """The pyfunc contract, declared rather than inferred: `k` may be left out (10), and inferring it
    from an example made it a required integer and printed MLflow's missing-integer warning."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "k", required=False)]),
        outputs=Schema([ColSpec("string", "user_id"), ColSpec("string", "item_id"), ColSpec("double", "score"),
                        ColSpec("long", "rank")]),
    )


# MLflow's models-from-code loader executes this file as a module named "code_model_<hex>" and
# needs `set_model`; a plain import (training, tests) must have no side effects, so only then.
if __name__.startswith("code_model_") or __name__ == "__main__":
    mlflow.models.set_model(RecommenderModel())
