"""Champion models from the MLflow registry, validated, swapped atomically, with a popularity fallback.

Why one immutable `Champions` snapshot behind one reference: a request reads `champions.current`
once and uses that snapshot to the end, so a reload running in another thread can never hand it
half-old, half-new models; the swap is a single attribute assignment. Why a canary before the swap:
a model can load and still be unusable (wrong feature columns, NaN probabilities, an empty item
table); such a version is rejected exactly like one that fails to load, and the last good model
keeps serving. A recommender that never loaded is replaced by `PopularityFallback`.
Serving never imports `training`: models arrive only through the registry (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from numbers import Real
from typing import Any, Final, TypeVar

import numpy as np
import pandas as pd

from features.profiles import FEATURE_COLUMNS, build_profiles
from features.schema import (
    CATEGORY,
    CHAMPION_ALIAS,
    CHURN_MODEL,
    ITEM_ID,
    PURCHASE_MODEL,
    RECOMMENDER_MODEL,
    SENTIMENT_LABELS,
    SENTIMENT_MODEL,
    TEXT,
    TS,
)

logger = logging.getLogger("mirror.models")

MODEL_NAMES: tuple[str, ...] = (RECOMMENDER_MODEL, CHURN_MODEL, PURCHASE_MODEL, SENTIMENT_MODEL)
SKLEARN_MODELS: frozenset[str] = frozenset({CHURN_MODEL, PURCHASE_MODEL})

#: `Champions.outcome` of a reload, the label the service counts it under.
RELOAD_OK: Final = "ok"
RELOAD_REJECTED: Final = "rejected"  # a new version failed to load or failed its canary
RELOAD_ERROR: Final = "error"  # the registry could not be asked about some model
RELOAD_OUTCOMES: Final[tuple[str, ...]] = (RELOAD_OK, RELOAD_REJECTED, RELOAD_ERROR)

_MAX_ERROR_CHARS: Final = 300
_T = TypeVar("_T")


def _one_line(text: str) -> str:
    """A status reason: one line, bounded (exception texts can span pages)."""
    return " ".join(str(text).split())[:_MAX_ERROR_CHARS]


def _category_or_none(value: Any) -> str | None:
    """A category as the fallback keeps it: NA-likes (None, NaN, pd.NA) and "" mean 'no category'."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    return str(value) or None


class PopularityFallback:
    """The recommender interface answered from item popularity alone (no personalisation).

    `source_item_events` is what readiness needs to tell "the store has no items yet" (0) from "the
    fallback could not be built" (None, the bare constructor): both are empty, only one is healthy.
    """

    is_fallback = True

    def __init__(self, counts: Iterable[tuple[str, str | None, float]] = (), *,
                 source_item_events: int | None = None) -> None:
        if source_item_events is not None and (
                isinstance(source_item_events, bool) or not isinstance(source_item_events, int)
                or source_item_events < 0):
            raise ValueError(f"source_item_events: must be a non-negative int or None, got {source_item_events!r}")
        self.source_item_events = source_item_events
        self._score: dict[str, float] = {}
        self._category: dict[str, str] = {}
        for row, (item, category, weight) in enumerate(counts):
            if not isinstance(item, str):
                raise ValueError(f"counts[{row}].item: must be a str, got {type(item).__name__}")
            w = float(weight) if isinstance(weight, Real) and not isinstance(weight, bool) else math.nan
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"counts[{row}].weight: must be a finite number >= 0, got {weight!r}")
            self._score[item] = self._score.get(item, 0.0) + w
            cat = _category_or_none(category)
            if cat is not None:
                self._category[item] = cat
        self._ranked = sorted(self._score.items(), key=lambda kv: (-kv[1], kv[0]))
        top = self._ranked[0][1] if self._ranked else 1.0
        self._norm = top or 1.0

    @classmethod
    def from_events(cls, events: pd.DataFrame | None) -> PopularityFallback:
        """Popularity = number of events naming the item; its category = the last one its events name.

        Works on any frame the store can hold: no rows or no ITEM_ID column (an empty fallback that
        knows the source had no item events), items whose events carry no category, and object,
        pandas `string`, categorical or all-NA columns. Rows without an item (searches, emails) are
        not item events, so they do not count. The caller's frame is never modified.
        """
        if events is None:
            return cls()
        if ITEM_ID not in events.columns or not len(events):
            return cls(source_item_events=0)
        items = events[ITEM_ID]
        named = items.notna().to_numpy(dtype=bool)
        n_item_events = int(named.sum())
        if not n_item_events:
            return cls(source_item_events=0)
        ids = pd.Series(items[named].astype(str).to_numpy(dtype=object))
        counts = ids.value_counts(sort=False)
        categories: dict[str, str] = {}
        if CATEGORY in events.columns:
            cats = pd.Series(events[CATEGORY][named].to_numpy(dtype=object))
            has_cat = cats.notna().to_numpy(dtype=bool)
            pairs = pd.DataFrame({"i": ids[has_cat].to_numpy(dtype=object),
                                  "c": cats[has_cat].astype(str).to_numpy(dtype=object)})
            pairs = pairs[pairs["c"] != ""].drop_duplicates("i", keep="last")
            categories = dict(zip(pairs["i"].tolist(), pairs["c"].tolist(), strict=True))
        return cls(((str(i), categories.get(str(i)), float(n)) for i, n in counts.items()),
                   source_item_events=n_item_events)

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
    """What `/status` says about one model: the version serving, and why a newer one is not."""

    name: str
    version: str | None = None
    loaded: bool = False
    fallback: bool = False
    error: str | None = None  # one line: the last reload's complaint about this model, None when fine
    loaded_at: float | None = None  # epoch seconds the serving version was swapped in
    rejected_version: str | None = None  # the version the last reload refused (load failure or canary)
    last_checked: float | None = None  # epoch seconds of the last reload that asked the registry

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "loaded": self.loaded, "fallback": self.fallback,
                "error": self.error, "loaded_at": self.loaded_at,
                "rejected_version": self.rejected_version, "last_checked": self.last_checked}


@dataclass(frozen=True)
class Champions:
    """One consistent set of models; never mutated after construction.

    `outcome` says how the reload that made this snapshot went (one of RELOAD_OUTCOMES), so the
    caller can count it without re-reading the status.
    """

    recommender: Any = None
    churn: Any = None
    purchase: Any = None
    sentiment: Any = None
    status: dict[str, ModelStatus] = field(default_factory=dict)
    outcome: str = RELOAD_OK

    def __post_init__(self) -> None:
        if self.outcome not in RELOAD_OUTCOMES:
            raise ValueError(f"outcome: must be one of {RELOAD_OUTCOMES}, got {self.outcome!r}")

    def get(self, name: str) -> Any:
        return {RECOMMENDER_MODEL: self.recommender, CHURN_MODEL: self.churn,
                PURCHASE_MODEL: self.purchase, SENTIMENT_MODEL: self.sentiment}[name]

    @property
    def recommender_is_fallback(self) -> bool:
        return bool(getattr(self.recommender, "is_fallback", False))


_ATTR = {RECOMMENDER_MODEL: "recommender", CHURN_MODEL: "churn", PURCHASE_MODEL: "purchase",
         SENTIMENT_MODEL: "sentiment"}


# -- canary ---------------------------------------------------------------------------------------
class CanaryError(ValueError):
    """A loaded model answered the canary batch wrongly; the message is the one-line reason."""


#: Texts every sentiment model must score (clearly positive, clearly negative, neutral).
CANARY_TEXTS: Final[tuple[str, ...]] = (
    "I love it, great quality and it fits perfectly",
    "Terrible: it arrived broken and I want a refund",
    "The parcel came on Tuesday.",
)
#: A user id no model is trained on (profile ids are "p_" + 16 hex digits).
CANARY_UNKNOWN_USER: Final = "canary:unknown-user"
CANARY_K: Final = 5
_PROBA_SUM_TOLERANCE: Final = 1e-3
_SENTIMENT_LABEL: Final = "label"
_SENTIMENT_SCORE: Final = "score"
_SENTIMENT_PROBAS: Final[tuple[str, ...]] = tuple(f"p_{label}" for label in SENTIMENT_LABELS)


@functools.cache
def _canary_profiles() -> pd.DataFrame:
    from features.synthetic import SyntheticConfig, generate

    data = generate(SyntheticConfig(customers=12, days=30, seed=0))
    return build_profiles(data.events, data.events[TS].max() + pd.Timedelta(seconds=1))


def canary_features() -> pd.DataFrame:
    """FEATURE_COLUMNS for a dozen seeded synthetic profiles, built once per process on first use.

    Rows the real feature pipeline produces (not hand-typed values), so the canary follows
    FEATURE_COLUMNS wherever it goes and a model that cannot score these cannot score the store's.
    """
    return _canary_profiles()[list(FEATURE_COLUMNS)].copy()


def model_feature_columns(model: Any) -> list[str]:
    """The columns a churn/purchase estimator scores, in its order: `feature_names_in_` when it was
    fitted on a frame, else all of FEATURE_COLUMNS. The service's `_predict_proba` follows this rule."""
    names = getattr(model, "feature_names_in_", None)
    return [str(c) for c in names] if names is not None and len(names) else list(FEATURE_COLUMNS)


def _ask(what: str, call: Callable[[], _T]) -> _T:
    """Run one canary call; any exception becomes the reason the model is rejected."""
    try:
        return call()
    except CanaryError:
        raise
    except Exception as exc:
        raise CanaryError(f"{what} raised {type(exc).__name__}: {exc}") from exc


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool | np.bool_)


def _is_bool(x: Any) -> bool:
    return isinstance(x, bool | np.bool_)


def _is_true(x: Any) -> bool:
    return _is_bool(x) and bool(x)


def _check_proba(label: str, model: Any) -> None:
    cols = model_feature_columns(model)
    unknown = [c for c in cols if c not in FEATURE_COLUMNS]
    if unknown:
        raise CanaryError(f"{label} model needs columns not in FEATURE_COLUMNS: {unknown[:5]}")
    frame = canary_features()[cols]
    p = _ask(f"{label} predict_proba", lambda: np.asarray(model.predict_proba(frame), dtype=float))
    if p.shape != (len(frame), 2):
        raise CanaryError(f"{label} predict_proba returned shape {p.shape}, expected ({len(frame)}, 2)")
    if not np.isfinite(p).all():
        raise CanaryError(f"{label} probabilities not finite")
    if ((p < 0) | (p > 1)).any():
        raise CanaryError(f"{label} probabilities outside [0, 1]")
    if not np.allclose(p.sum(axis=1), 1.0, atol=_PROBA_SUM_TOLERANCE):
        raise CanaryError(f"{label} class probabilities do not sum to 1")


def _check_ranked(what: str, answer: Any, *, non_empty: bool) -> list[tuple[str, float]]:
    """A recommender answer: at most CANARY_K (str item, finite number) pairs."""
    if not isinstance(answer, list | tuple):
        raise CanaryError(f"{what} returned {type(answer).__name__}, not a list")
    for pair in answer:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[0], str)
                and _is_number(pair[1])):
            raise CanaryError(f"{what} returned an entry that is not (str, float)")
        if not math.isfinite(float(pair[1])):
            raise CanaryError(f"{what} scores not finite")
    if len(answer) > CANARY_K:
        raise CanaryError(f"{what} returned {len(answer)} items for k={CANARY_K}")
    if non_empty and not answer:
        raise CanaryError(f"{what} is empty")
    return [(str(i), float(s)) for i, s in answer]


def _known_user(model: Any) -> str | None:
    """A user id the model was trained on, where it shows them (the registry's recommender keeps them
    on its `core`); the contract has no listing, so otherwise only the unknown-user path is checked."""
    for holder in (model, getattr(model, "core", None)):
        ids = getattr(holder, "user_ids", None)
        if ids is not None and len(ids):
            return str(ids[0])
    return None


def _check_recommender(model: Any) -> None:
    top = _check_ranked("recommender popular()", _ask("recommender popular()", lambda: model.popular(CANARY_K)),
                        non_empty=True)
    item = top[0][0]
    if not _is_true(_ask("recommender has_item()", lambda: model.has_item(item))):
        raise CanaryError("recommender has_item() is not True for its own popular item")
    category = _ask("recommender item_category()", lambda: model.item_category(item))
    if category is not None and not isinstance(category, str):
        raise CanaryError(f"recommender item_category() returned {type(category).__name__}, not str or None")
    similar = _check_ranked("recommender similar_items()",
                            _ask("recommender similar_items()", lambda: model.similar_items(item, CANARY_K)),
                            non_empty=len(top) > 1)
    if any(i == item for i, _ in similar):
        raise CanaryError("recommender similar_items() returned the item itself")
    unknown = _ask("recommender has_user()", lambda: model.has_user(CANARY_UNKNOWN_USER))
    if not _is_bool(unknown) or bool(unknown):
        raise CanaryError("recommender has_user() is not False for an unknown user")
    _check_ranked("recommender recommend() for an unknown user",
                  _ask("recommender recommend()", lambda: model.recommend(CANARY_UNKNOWN_USER, CANARY_K)),
                  non_empty=True)
    known = _known_user(model)
    if known is not None:
        if not _is_true(_ask("recommender has_user()", lambda: model.has_user(known))):
            raise CanaryError("recommender has_user() is not True for a user it was trained on")
        _check_ranked("recommender recommend() for a known user",
                      _ask("recommender recommend()", lambda: model.recommend(known, CANARY_K)), non_empty=True)


def _check_sentiment(model: Any) -> None:
    texts = list(CANARY_TEXTS)
    out = _ask("sentiment predict", lambda: model.predict(pd.DataFrame({TEXT: texts})))
    if not isinstance(out, pd.DataFrame) or len(out) != len(texts):
        n = len(out) if isinstance(out, pd.DataFrame) else type(out).__name__
        raise CanaryError(f"sentiment predict returned {n} rows for {len(texts)} texts")
    missing = [c for c in (_SENTIMENT_LABEL, *_SENTIMENT_PROBAS, _SENTIMENT_SCORE) if c not in out.columns]
    if missing:
        raise CanaryError(f"sentiment predict lacks columns {missing}")
    bad = sorted({str(v) for v in out[_SENTIMENT_LABEL].tolist() if v not in SENTIMENT_LABELS})
    if bad:
        raise CanaryError(f"sentiment labels not in {SENTIMENT_LABELS}: {bad[:3]}")
    p = _ask("sentiment probabilities", lambda: out[list(_SENTIMENT_PROBAS)].to_numpy(dtype=float))
    score = _ask("sentiment score", lambda: out[_SENTIMENT_SCORE].to_numpy(dtype=float))
    if not (np.isfinite(p).all() and np.isfinite(score).all()):
        raise CanaryError("sentiment probabilities not finite")
    if ((p < 0) | (p > 1)).any() or not np.allclose(p.sum(axis=1), 1.0, atol=_PROBA_SUM_TOLERANCE):
        raise CanaryError("sentiment probabilities are not a distribution (each in [0, 1], summing to 1)")
    if ((score < -1) | (score > 1)).any():
        raise CanaryError("sentiment score outside [-1, 1]")


_CHECKS: Final[dict[str, Callable[[Any], None]]] = {
    RECOMMENDER_MODEL: _check_recommender,
    CHURN_MODEL: functools.partial(_check_proba, _ATTR[CHURN_MODEL]),
    PURCHASE_MODEL: functools.partial(_check_proba, _ATTR[PURCHASE_MODEL]),
    SENTIMENT_MODEL: _check_sentiment,
}


def validate_model(name: str, model: Any) -> None:
    """Raise CanaryError (a one-line reason) unless `model` answers a canary batch the way serving
    needs it: finite probabilities in [0, 1]; recommender lists of (str, finite float), non-empty;
    sentiment labels it knows with proper distributions. Pure apart from the model's own calls."""
    if name not in _CHECKS:
        raise ValueError(f"name: unknown model {name!r}; expected one of {MODEL_NAMES}")
    _CHECKS[name](model)


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
    """Holds the current `Champions`; `reload()` loads and validates in the caller's thread, then swaps.

    `validator(name, model)` raises on a model that must not serve (default: `validate_model`, the
    canary; None skips it). `fallback_refresh_s`: how often `can_recommend` may rebuild an empty
    fallback from the store.
    """

    def __init__(
        self,
        names: Sequence[str] = MODEL_NAMES,
        fallback_factory: Callable[[], PopularityFallback] = PopularityFallback,
        loader: Callable[[str, str], Any] = load_model,
        resolver: Callable[[str], str | None] = champion_version,
        validator: Callable[[str, Any], None] | None = validate_model,
        fallback_refresh_s: float = 10.0,
    ) -> None:
        unknown = [n for n in names if n not in _ATTR]
        if unknown:
            raise ValueError(f"names: unknown models {unknown}; expected some of {MODEL_NAMES}")
        if not (_is_number(fallback_refresh_s) and math.isfinite(fallback_refresh_s) and fallback_refresh_s >= 0):
            raise ValueError(f"fallback_refresh_s: must be a finite number >= 0, got {fallback_refresh_s!r}")
        self.names = tuple(names)
        self.fallback_refresh_s = float(fallback_refresh_s)
        self._fallback_factory = fallback_factory
        self._loader = loader
        self._resolver = resolver
        self._validator = validator
        self._lock = threading.Lock()
        self._fallback_built_at = -math.inf
        self.current = Champions(recommender=self._build_fallback(None), status={
            n: ModelStatus(n, fallback=n == RECOMMENDER_MODEL, error="not loaded yet") for n in self.names})
        self.loaded_once = False

    def reload(self, force: bool = False) -> Champions:
        """Load each champion whose version changed and swap it in only if it passes the canary; keep
        the last good model on any failure. The returned snapshot's `outcome` says how it went."""
        with self._lock:
            old = self.current
            models = {n: old.get(n) for n in self.names}
            status = dict(old.status)
            rejected: list[str] = []
            unreachable: list[str] = []
            for name in self.names:
                prev = old.status.get(name, ModelStatus(name))
                now = time.time()
                try:
                    version = self._resolver(name)
                except Exception as exc:  # registry unreachable: keep what we have
                    status[name] = replace(prev, error=_one_line(f"registry: {type(exc).__name__}: {exc}"),
                                           last_checked=now)
                    unreachable.append(name)
                    continue
                if version is None:
                    status[name] = replace(prev, error="no champion registered", last_checked=now)
                    continue
                if not force and prev.loaded and prev.version == version:  # the champion is what serves
                    status[name] = replace(prev, error=None, rejected_version=None, last_checked=now)
                    continue
                try:
                    model = self._loader(name, version)
                except Exception as exc:  # corrupt or incompatible artifact: last good one stays
                    logger.exception("could not load %s version %s; keeping version %s", name, version,
                                     prev.version)
                    reason: str | None = _one_line(f"version {version}: {type(exc).__name__}: {exc}")
                else:  # loadable is not enough: it must answer the canary before anyone sees it
                    reason = self._canary(name, model)
                    if reason is not None:
                        logger.warning("rejected %s version %s (%s); keeping version %s", name, version,
                                       reason, prev.version)
                if reason is not None:
                    status[name] = replace(prev, error=reason, rejected_version=version, last_checked=now)
                    rejected.append(name)
                    continue
                models[name] = model
                status[name] = ModelStatus(name, version, loaded=True, loaded_at=now, last_checked=now)
                logger.info("loaded %s version %s", name, version)
            if RECOMMENDER_MODEL in self.names and not status[RECOMMENDER_MODEL].loaded:
                models[RECOMMENDER_MODEL] = self._build_fallback(old.recommender)
                status[RECOMMENDER_MODEL] = replace(status[RECOMMENDER_MODEL], fallback=True)
            outcome = RELOAD_REJECTED if rejected else RELOAD_ERROR if unreachable else RELOAD_OK
            new = Champions(**{_ATTR[n]: m for n, m in models.items()}, status=status, outcome=outcome)
            self.current = new  # the atomic swap
            self.loaded_once = True
            return new

    def _canary(self, name: str, model: Any) -> str | None:
        """None when `model` may serve, else the one-line reason it may not."""
        if self._validator is None:
            return None
        try:
            self._validator(name, model)
        except CanaryError as exc:
            return _one_line(f"canary: {exc}")
        except Exception as exc:  # a validator that breaks rejects, it never lets a model through
            return _one_line(f"canary: {_ATTR[name]} check raised {type(exc).__name__}: {exc}")
        return None

    def _build_fallback(self, previous: Any) -> Any:
        """A fresh fallback from the factory, unless that one is emptier than `previous` without the
        store being known to be empty (the factory failed): a rebuild never makes the fallback worse."""
        self._fallback_built_at = time.monotonic()
        try:
            built = self._fallback_factory()
        except Exception:
            logger.exception("could not build the popularity fallback")
            built = PopularityFallback()
        keep_previous = (getattr(previous, "is_fallback", False) and not _answers(built)
                         and getattr(built, "source_item_events", None) != 0 and _answers(previous))
        return previous if keep_previous else built

    def can_recommend(self) -> bool:
        """Readiness: the recommender in use, real or fallback, names an item for `popular(1)`, or it is
        a fallback built from a store that truly holds no item events.

        An empty fallback is rebuilt here (at most every `fallback_refresh_s`, never while a reload
        runs), so items that reach the store after start-up make the service ready without a reload.
        """
        champ = self.current
        if _answers(champ.recommender):
            return True
        if not champ.recommender_is_fallback:
            return False
        fallback = self._refresh_fallback(champ)
        return _answers(fallback) or getattr(fallback, "source_item_events", None) == 0

    def _refresh_fallback(self, seen: Champions) -> Any:
        if time.monotonic() - self._fallback_built_at < self.fallback_refresh_s:
            return seen.recommender
        if not self._lock.acquire(blocking=False):  # a reload is under way and will build its own
            return seen.recommender
        try:
            current = self.current
            if current.recommender is not seen.recommender or not current.recommender_is_fallback:
                return current.recommender
            rebuilt = self._build_fallback(current.recommender)
            if rebuilt is not current.recommender:
                self.current = replace(current, recommender=rebuilt)  # the same atomic swap
            return rebuilt
        finally:
            self._lock.release()

    def status(self) -> dict[str, dict[str, Any]]:
        return {n: s.as_dict() for n, s in self.current.status.items()}


def _answers(recommender: Any) -> bool:
    """Whether `recommender.popular(1)` names an item (False when it raises)."""
    try:
        return bool(recommender is not None and recommender.popular(1))
    except Exception:
        logger.exception("the recommender could not answer popular(1)")
        return False
