"""Champion models from the MLflow registry, swapped atomically, with a popularity fallback.

Why one immutable `Champions` snapshot behind one reference: a request reads `champions.current`
once and uses that snapshot to the end, so a reload running in another thread can never hand it
half-old, half-new models; the swap is a single attribute assignment. A model that fails to load
keeps its last good version; a recommender that never loaded is replaced by `PopularityFallback`.
Serving never imports `training`: models arrive only through the registry (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from features.schema import (
    CATEGORY,
    CHAMPION_ALIAS,
    CHURN_MODEL,
    ITEM_ID,
    PURCHASE_MODEL,
    RECOMMENDER_MODEL,
    SENTIMENT_MODEL,
)

logger = logging.getLogger("mirror.models")

MODEL_NAMES: tuple[str, ...] = (RECOMMENDER_MODEL, CHURN_MODEL, PURCHASE_MODEL, SENTIMENT_MODEL)
SKLEARN_MODELS: frozenset[str] = frozenset({CHURN_MODEL, PURCHASE_MODEL})


class PopularityFallback:
    """The recommender interface answered from item popularity alone (no personalisation)."""

    is_fallback = True

    def __init__(self, counts: Iterable[tuple[str, str | None, float]] = ()) -> None:
        self._score: dict[str, float] = {}
        self._category: dict[str, str] = {}
        for item, category, weight in counts:
            self._score[item] = self._score.get(item, 0.0) + float(weight)
            if category:
                self._category[item] = category
        self._ranked = sorted(self._score.items(), key=lambda kv: (-kv[1], kv[0]))
        top = self._ranked[0][1] if self._ranked else 1.0
        self._norm = top or 1.0

    @classmethod
    def from_events(cls, events: pd.DataFrame) -> PopularityFallback:
        if events is None or not len(events) or ITEM_ID not in events:
            return cls()
        ev = events[events[ITEM_ID].notna()]
        cats = ev[CATEGORY] if CATEGORY in ev else pd.Series(None, index=ev.index)
        grouped = pd.DataFrame({"i": ev[ITEM_ID].astype(str), "c": cats}).groupby("i")
        counts = grouped.size()
        cat = grouped["c"].agg(lambda s: s.dropna().iloc[-1] if s.notna().any() else None)
        return cls((i, cat.get(i), float(n)) for i, n in counts.items())

    def popular(self, k: int, category: str | None = None) -> list[tuple[str, float]]:
        out = []
        for item, score in self._ranked:
            if category is None or self._category.get(item) == category:
                out.append((item, score / self._norm))
                if len(out) >= k:
                    break
        return out

    def recommend(self, user_id: str, k: int, exclude: Sequence[str] = (),
                  recent_items: Sequence[str] = ()) -> list[tuple[str, float]]:
        skip = set(exclude)
        return [p for p in self.popular(k + len(skip)) if p[0] not in skip][:k]

    def similar_items(self, item_id: str, k: int) -> list[tuple[str, float]]:
        cat = self._category.get(item_id)
        return [p for p in self.popular(k + 1, cat) if p[0] != item_id][:k] if cat else []

    def complements(self, item_id: str, k: int) -> list[tuple[str, float]]:
        return []

    def item_category(self, item_id: str) -> str | None:
        return self._category.get(item_id)

    def has_user(self, user_id: str) -> bool:
        return False

    def has_item(self, item_id: str) -> bool:
        return item_id in self._score


@dataclass(frozen=True)
class ModelStatus:
    name: str
    version: str | None = None
    loaded: bool = False
    fallback: bool = False
    error: str | None = None
    loaded_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "loaded": self.loaded, "fallback": self.fallback,
                "error": self.error, "loaded_at": self.loaded_at}


@dataclass(frozen=True)
class Champions:
    """One consistent set of models; never mutated after construction."""

    recommender: Any = None
    churn: Any = None
    purchase: Any = None
    sentiment: Any = None
    status: dict[str, ModelStatus] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return {RECOMMENDER_MODEL: self.recommender, CHURN_MODEL: self.churn,
                PURCHASE_MODEL: self.purchase, SENTIMENT_MODEL: self.sentiment}[name]

    @property
    def recommender_is_fallback(self) -> bool:
        return bool(getattr(self.recommender, "is_fallback", False))


_ATTR = {RECOMMENDER_MODEL: "recommender", CHURN_MODEL: "churn", PURCHASE_MODEL: "purchase",
         SENTIMENT_MODEL: "sentiment"}


def champion_version(name: str) -> str | None:
    """The registry version aliased `champion`, or None when there is none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def load_model(name: str, version: str) -> Any:
    """Load one registered version in the form serving uses (unwrapped pyfunc or sklearn estimator)."""
    import mlflow

    uri = f"models:/{name}/{version}"
    if name in SKLEARN_MODELS:
        return mlflow.sklearn.load_model(uri)
    model = mlflow.pyfunc.load_model(uri)
    if name == RECOMMENDER_MODEL:
        return model.unwrap_python_model()
    return model


class ChampionSet:
    """Holds the current `Champions`; `reload()` loads in the caller's thread, then swaps."""

    def __init__(
        self,
        names: Sequence[str] = MODEL_NAMES,
        fallback_factory: Callable[[], PopularityFallback] = PopularityFallback,
        loader: Callable[[str, str], Any] = load_model,
        resolver: Callable[[str], str | None] = champion_version,
    ) -> None:
        self.names = tuple(names)
        self._fallback_factory = fallback_factory
        self._loader = loader
        self._resolver = resolver
        self._lock = threading.Lock()
        self.current = Champions(recommender=fallback_factory(), status={
            n: ModelStatus(n, fallback=n == RECOMMENDER_MODEL, error="not loaded yet") for n in self.names})
        self.loaded_once = False

    def reload(self, force: bool = False) -> Champions:
        """Load each champion whose version changed; keep the last good model on any failure."""
        with self._lock:
            old = self.current
            models = {n: old.get(n) for n in self.names}
            status = dict(old.status)
            for name in self.names:
                prev = old.status.get(name, ModelStatus(name))
                try:
                    version = self._resolver(name)
                except Exception as exc:  # registry unreachable: keep what we have
                    status[name] = replace(prev, error=f"registry: {type(exc).__name__}: {exc}"[:300])
                    continue
                if version is None:
                    status[name] = replace(prev, error="no champion registered")
                    continue
                if not force and prev.loaded and prev.version == version:
                    continue
                try:
                    models[name] = self._loader(name, version)
                    status[name] = ModelStatus(name, version, loaded=True, loaded_at=time.time())
                    logger.info("loaded %s version %s", name, version)
                except Exception as exc:  # corrupt or incompatible artifact: last good one stays
                    logger.exception("could not load %s version %s; keeping version %s", name, version,
                                     prev.version)
                    status[name] = replace(prev, error=f"version {version}: {type(exc).__name__}: {exc}"[:300])
            if RECOMMENDER_MODEL in self.names and not status[RECOMMENDER_MODEL].loaded:
                models[RECOMMENDER_MODEL] = self._fallback_factory()
                status[RECOMMENDER_MODEL] = replace(status[RECOMMENDER_MODEL], fallback=True)
            new = Champions(**{_ATTR[n]: m for n, m in models.items()}, status=status)
            self.current = new  # the atomic swap
            self.loaded_once = True
            return new

    def status(self) -> dict[str, dict[str, Any]]:
        return {n: s.as_dict() for n, s in self.current.status.items()}

