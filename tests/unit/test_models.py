"""Champion loading (serving/models.py): a reload never makes serving worse, the fallback works on any data.

Fakes drive the ChampionSet logic; one test logs tiny real models to a temporary MLflow registry (helpers
from tests/serving/mirror_server.py) so the canary is checked against the formats serving really loads.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import threading
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.profiles import FEATURE_COLUMNS
from features.schema import (
    CATEGORY,
    CHURN_MODEL,
    EVENT_TYPE,
    ITEM_ID,
    PURCHASE_MODEL,
    RECOMMENDER_MODEL,
    SENTIMENT_LABELS,
    SENTIMENT_MODEL,
)
from serving.models import (
    RELOAD_ERROR,
    RELOAD_OK,
    RELOAD_REJECTED,
    CanaryError,
    ChampionSet,
    PopularityFallback,
    canary_features,
    model_feature_columns,
    validate_model,
)

MIRROR_SERVER = Path(__file__).resolve().parents[1] / "serving" / "mirror_server.py"


def _mirror_server() -> ModuleType:
    """tests/serving/mirror_server.py, imported by path (tests/serving is not on sys.path from here)."""
    if "mirror_server" in sys.modules:
        return sys.modules["mirror_server"]
    spec = importlib.util.spec_from_file_location("mirror_server", MIRROR_SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mirror_server"] = module
    spec.loader.exec_module(module)
    return module


# -- fakes ----------------------------------------------------------------------------------------
class Proba:
    """A churn/purchase estimator answering a fixed P(class 1) (NaN or out of range on request)."""

    def __init__(self, version: str, p1: float = 0.25, columns: tuple[str, ...] = FEATURE_COLUMNS[:3],
                 n_classes: int = 2) -> None:
        self.version, self.p1, self.n_classes = version, p1, n_classes
        self.feature_names_in_ = np.array(columns, dtype=object)
        self.seen: list[list[str]] = []

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        self.seen.append(list(x.columns))
        p = np.full((len(x), 1), self.p1)
        return p if self.n_classes == 1 else np.hstack([1 - p, p])


class Recommender:
    """A real (non-fallback) recommender over a few items; `scores` lets a test break it."""

    def __init__(self, version: str, items: tuple[str, ...] = ("i1", "i2", "i3"), score: float = 1.0) -> None:
        self.version, self.items, self.score = version, items, score
        self.user_ids = ["p_known"]

    def popular(self, k: int, category: str | None = None) -> list[tuple[str, float]]:
        return [(i, self.score / (n + 1)) for n, i in enumerate(self.items)][:k]

    def recommend(self, user_id: str, k: int, exclude: Any = (), recent_items: Any = ()) -> list[tuple[str, float]]:
        return self.popular(k)

    def similar_items(self, item_id: str, k: int) -> list[tuple[str, float]]:
        return [p for p in self.popular(k + 1) if p[0] != item_id][:k]

    def item_category(self, item_id: str) -> str | None:
        return "cat"

    def has_user(self, user_id: str) -> bool:
        return user_id in self.user_ids

    def has_item(self, item_id: str) -> bool:
        return item_id in self.items


class Sentiment:
    """The mirror-sentiment output format; `probas`/`label`/`score` override it to break it."""

    def __init__(self, version: str = "1", probas: tuple[float, float, float] = (0.1, 0.2, 0.7),
                 label: str = SENTIMENT_LABELS[-1], score: float | None = None) -> None:
        self.version, self.probas, self.label, self.score = version, probas, label, score

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        n = len(frame)
        p_neg, p_neu, p_pos = self.probas
        score = p_pos - p_neg if self.score is None else self.score
        return pd.DataFrame({"label": [self.label] * n, "p_negative": [p_neg] * n, "p_neutral": [p_neu] * n,
                             "p_positive": [p_pos] * n, "score": [score] * n})


class Registry:
    """resolver/loader pair over {name: {version: model}}; `champion` is what the alias points at."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.champion: dict[str, str | None] = {}
        self.down = False
        self.loads: Counter[str] = Counter()

    def publish(self, name: str, version: str, model: Any) -> None:
        self.models.setdefault(name, {})[version] = model
        self.champion[name] = version

    def resolve(self, name: str) -> str | None:
        if self.down:
            raise ConnectionError("registry unreachable")
        return self.champion.get(name)

    def load(self, name: str, version: str) -> Any:
        self.loads[name] += 1
        model = self.models[name][version]
        if isinstance(model, Exception):
            raise model
        return model


def champion_set(reg: Registry, names: tuple[str, ...], **kw: Any) -> ChampionSet:
    return ChampionSet(names, loader=reg.load, resolver=reg.resolve, **kw)


# -- fallback on any data -------------------------------------------------------------------------
NA_VALUES = (None, pd.NA, np.nan)
KINDS = ("object", "string", "category", "all_na", "missing")


def _column(kind: str, values: list[Any], draw: st.DrawFn) -> pd.Series | None:
    if kind == "missing":
        return None
    if kind == "all_na":
        dtype = draw(st.sampled_from(("float64", "object", "string")))
        if dtype == "float64":  # what pandas makes of a column that never had a value
            return pd.Series([np.nan] * len(values), dtype=dtype)
        return pd.Series([draw(st.sampled_from(NA_VALUES)) for _ in values], dtype=dtype)
    return pd.Series(values, dtype=kind)


@st.composite
def event_frames(draw: st.DrawFn) -> pd.DataFrame:
    """Frames as the store could hand them over: any mix of dtypes, NAs, missing columns, no rows."""
    n = draw(st.integers(0, 25))
    items = [draw(st.one_of(st.sampled_from(("a", "b", "c", "d")), st.sampled_from(NA_VALUES))) for _ in range(n)]
    cats = [draw(st.one_of(st.sampled_from(("x", "y", "")), st.sampled_from(NA_VALUES))) for _ in range(n)]
    frame = pd.DataFrame({EVENT_TYPE: pd.Series(["view"] * n, dtype="string")})
    for name, values in ((ITEM_ID, items), (CATEGORY, cats)):
        col = _column(draw(st.sampled_from(KINDS)), values, draw)
        if col is not None:
            frame[name] = col
    return frame


def _reference(frame: pd.DataFrame) -> tuple[dict[str, int], dict[str, str], int]:
    """Row by row: event counts per item, the last non-empty category each item's events name."""
    counts: Counter[str] = Counter()
    cats: dict[str, str] = {}
    if ITEM_ID not in frame:
        return {}, {}, 0
    for row in range(len(frame)):
        item = frame[ITEM_ID].iloc[row]
        if pd.isna(item):
            continue
        counts[str(item)] += 1
        cat = frame[CATEGORY].iloc[row] if CATEGORY in frame else None
        if not pd.isna(cat) and str(cat) != "":
            cats[str(item)] = str(cat)
    return dict(counts), cats, sum(counts.values())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_frames())
def test_fallback_from_any_frame_ranks_by_event_count_and_keeps_last_category(frame: pd.DataFrame):
    before = frame.copy()
    fb = PopularityFallback.from_events(frame)
    counts, cats, n_item_events = _reference(frame)
    pd.testing.assert_frame_equal(frame, before)  # the caller's frame is untouched
    assert fb.source_item_events == n_item_events
    assert bool(fb.popular(1)) == (n_item_events > 0)  # never empty while there are item events
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    top = max(counts.values(), default=1)
    assert fb.popular(len(ranked) + 1) == [(i, pytest.approx(counts[i] / top)) for i in ranked]
    for item in ranked:
        assert fb.has_item(item) and fb.item_category(item) == cats.get(item)
    for cat in set(cats.values()):
        assert [i for i, _ in fb.popular(50, category=cat)] == [i for i in ranked if cats.get(i) == cat]
    assert fb.recommend("anyone", 2, exclude=ranked[:1]) == [p for p in fb.popular(3) if p[0] not in ranked[:1]][:2]


def test_fallback_items_whose_events_have_no_category():
    """The red-team frame: pandas `string` columns, item b only ever seen without a category."""
    ev = pd.DataFrame({ITEM_ID: pd.array(["a", "b", "b", "c", None], dtype="string"),
                       CATEGORY: pd.array(["x", None, None, pd.NA, "x"], dtype="string")})
    fb = PopularityFallback.from_events(ev)
    assert fb.popular(3) == [("b", 1.0), ("a", 0.5), ("c", 0.5)]
    assert fb.item_category("b") is None and fb.item_category("a") == "x" and fb.item_category("c") is None
    assert fb.similar_items("b", 3) == [] and fb.similar_items("a", 3) == []
    assert fb.source_item_events == 4


def test_fallback_on_empty_or_itemless_frames_knows_the_store_had_no_items():
    for frame in (pd.DataFrame(), pd.DataFrame({ITEM_ID: pd.Series([], dtype="string")}),
                  pd.DataFrame({EVENT_TYPE: ["search", "email_open"]}),
                  pd.DataFrame({ITEM_ID: [None, None], CATEGORY: ["x", "y"]})):
        fb = PopularityFallback.from_events(frame)
        assert fb.popular(5) == [] and fb.source_item_events == 0
    assert PopularityFallback().source_item_events is None  # nothing known about the store


def test_fallback_constructor_names_the_bad_field():
    with pytest.raises(ValueError, match=r"counts\[1\]\.weight"):
        PopularityFallback([("a", "x", 1.0), ("b", "y", float("nan"))])
    with pytest.raises(ValueError, match=r"counts\[0\]\.item"):
        PopularityFallback([(7, "x", 1.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="source_item_events"):
        PopularityFallback(source_item_events=-1)
    assert PopularityFallback([("a", pd.NA, 1.0)]).item_category("a") is None  # type: ignore[list-item]


# -- the canary -----------------------------------------------------------------------------------
def test_canary_features_are_real_profile_rows():
    frame = canary_features()
    assert list(frame.columns) == list(FEATURE_COLUMNS) and len(frame) >= 5
    assert np.isfinite(frame.to_numpy(dtype=float)).all()
    frame.iloc[0, 0] = -1.0  # a caller's edit does not reach the next canary
    assert canary_features().iloc[0, 0] >= 0


@pytest.mark.parametrize(("model", "reason"), [
    (Proba("2", p1=float("nan")), "churn probabilities not finite"),
    (Proba("2", p1=1.5), "churn probabilities outside [0, 1]"),
    (Proba("2", n_classes=1), "expected"),
    (Proba("2", columns=("n_events", "tenure_months")), "not in FEATURE_COLUMNS: ['tenure_months']"),
    (object(), "churn predict_proba raised AttributeError"),
])
def test_churn_canary_rejects_what_would_serve_null_scores(model: Any, reason: str):
    with pytest.raises(CanaryError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        validate_model(CHURN_MODEL, model)


def test_probability_canary_scores_the_columns_the_model_names():
    model = Proba("1", columns=("n_orders", "n_events"))
    validate_model(PURCHASE_MODEL, model)
    assert model.seen == [["n_orders", "n_events"]]
    assert model_feature_columns(model) == ["n_orders", "n_events"]
    assert model_feature_columns(object()) == list(FEATURE_COLUMNS)


def test_recommender_canary():
    validate_model(RECOMMENDER_MODEL, Recommender("1"))
    validate_model(RECOMMENDER_MODEL, PopularityFallback([("a", "x", 2.0), ("b", "x", 1.0)]))
    with pytest.raises(CanaryError, match="popular\\(\\) is empty"):
        validate_model(RECOMMENDER_MODEL, Recommender("1", items=()))
    with pytest.raises(CanaryError, match="scores not finite"):
        validate_model(RECOMMENDER_MODEL, Recommender("1", score=float("inf")))

    class Lies(Recommender):
        def has_user(self, user_id: str) -> bool:
            return True

    with pytest.raises(CanaryError, match="not False for an unknown user"):
        validate_model(RECOMMENDER_MODEL, Lies("1"))

    class Forgets(Recommender):
        def recommend(self, user_id: str, k: int, exclude: Any = (), recent_items: Any = ()) -> list:
            return [] if self.has_user(user_id) else self.popular(k)

    with pytest.raises(CanaryError, match="recommend\\(\\) for a known user is empty"):
        validate_model(RECOMMENDER_MODEL, Forgets("1"))

    class Raises(Recommender):
        def item_category(self, item_id: str) -> str | None:
            raise KeyError(item_id)

    with pytest.raises(CanaryError, match="item_category\\(\\) raised KeyError"):
        validate_model(RECOMMENDER_MODEL, Raises("1"))


def test_sentiment_canary():
    validate_model(SENTIMENT_MODEL, Sentiment())
    with pytest.raises(CanaryError, match="labels not in"):
        validate_model(SENTIMENT_MODEL, Sentiment(label="meh"))
    with pytest.raises(CanaryError, match="not a distribution"):
        validate_model(SENTIMENT_MODEL, Sentiment(probas=(0.5, 0.5, 0.5)))
    with pytest.raises(CanaryError, match="not finite"):
        validate_model(SENTIMENT_MODEL, Sentiment(probas=(float("nan"), 0.5, 0.5)))
    with pytest.raises(CanaryError, match=r"score outside \[-1, 1\]"):
        validate_model(SENTIMENT_MODEL, Sentiment(score=2.0))
    with pytest.raises(ValueError, match="unknown model"):
        validate_model("mirror-other", Sentiment())


# -- validated reloads ----------------------------------------------------------------------------
def test_incompatible_churn_model_keeps_the_last_good_one_and_says_why():
    reg = Registry()
    reg.publish(CHURN_MODEL, "1", Proba("1", p1=0.3))
    champs = champion_set(reg, (CHURN_MODEL,))
    good = champs.reload()
    assert good.outcome == RELOAD_OK and good.churn.version == "1"
    assert champs.status()[CHURN_MODEL]["error"] is None

    reg.publish(CHURN_MODEL, "2", Proba("2", p1=float("nan")))
    kept = champs.reload()
    assert kept.outcome == RELOAD_REJECTED
    assert kept.churn is good.churn  # the last good model keeps serving
    st_ = champs.status()[CHURN_MODEL]
    assert st_["version"] == "1" and st_["loaded"] is True
    assert st_["error"] == "canary: churn probabilities not finite" and st_["rejected_version"] == "2"
    assert st_["last_checked"] >= st_["loaded_at"]

    reg.publish(CHURN_MODEL, "1", reg.models[CHURN_MODEL]["1"])  # the alias goes back to the good one
    back = champs.reload()
    assert back.outcome == RELOAD_OK and back.churn is good.churn
    assert champs.status()[CHURN_MODEL]["error"] is None and champs.status()[CHURN_MODEL]["rejected_version"] is None


def test_load_failures_and_registry_outages_are_reported_not_ok():
    reg = Registry()
    reg.publish(SENTIMENT_MODEL, "1", Sentiment("1"))
    champs = champion_set(reg, (SENTIMENT_MODEL,))
    assert champs.reload().outcome == RELOAD_OK
    reg.publish(SENTIMENT_MODEL, "2", OSError("artifact\nmissing"))
    failed = champs.reload()
    assert failed.outcome == RELOAD_REJECTED and failed.sentiment.version == "1"
    status = champs.status()[SENTIMENT_MODEL]
    assert status["error"] == "version 2: OSError: artifact missing" and status["rejected_version"] == "2"
    reg.down = True
    assert champs.reload().outcome == RELOAD_ERROR and champs.current.sentiment.version == "1"
    assert champs.status()[SENTIMENT_MODEL]["error"].startswith("registry: ConnectionError")


def test_a_rejected_recommender_that_never_loaded_leaves_the_fallback():
    reg = Registry()
    reg.publish(RECOMMENDER_MODEL, "1", Recommender("1", score=float("nan")))
    champs = champion_set(reg, (RECOMMENDER_MODEL,),
                          fallback_factory=lambda: PopularityFallback([("a", "x", 2.0)], source_item_events=2))
    snap = champs.reload()
    assert snap.outcome == RELOAD_REJECTED and snap.recommender_is_fallback
    status = champs.status()[RECOMMENDER_MODEL]
    assert status["fallback"] is True and status["rejected_version"] == "1"
    assert status["error"] == "canary: recommender popular() scores not finite"
    assert snap.recommender.recommend("anyone", 3) == [("a", 1.0)]


def test_a_validator_that_breaks_rejects_instead_of_letting_the_model_through():
    reg = Registry()
    reg.publish(CHURN_MODEL, "1", Proba("1"))

    def broken(name: str, model: Any) -> None:
        raise RuntimeError("bug in the check")

    champs = champion_set(reg, (CHURN_MODEL,), validator=broken)
    assert champs.reload().outcome == RELOAD_REJECTED and champs.current.churn is None
    assert champs.status()[CHURN_MODEL]["error"] == "canary: churn check raised RuntimeError: bug in the check"


def test_no_reader_ever_sees_half_old_half_new_models_or_a_rejected_one():
    """Churn and purchase are published together; every other churn release is broken (NaN)."""
    reg = Registry()
    names = (CHURN_MODEL, PURCHASE_MODEL)
    for name in names:
        reg.publish(name, "0", Proba("0"))
    champs = champion_set(reg, names)
    champs.reload()
    stop = threading.Event()
    bad: list[str] = []

    def read() -> None:
        while not stop.is_set():
            snap = champs.current
            if math.isnan(snap.churn.p1):
                bad.append(f"rejected churn {snap.churn.version} served")
            for name in names:  # the status describes exactly the models of its own snapshot
                if snap.status[name].version != snap.get(name).version:
                    bad.append(f"{name}: status {snap.status[name].version}, model {snap.get(name).version}")

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for v in range(1, 40):
            reg.publish(CHURN_MODEL, str(v), Proba(str(v), p1=float("nan") if v % 2 else 0.4))
            reg.publish(PURCHASE_MODEL, str(v), Proba(str(v)))
            assert champs.reload().outcome == (RELOAD_REJECTED if v % 2 else RELOAD_OK)
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=10)
    assert not bad, bad[:5]
    assert champs.current.churn.version == "38" and champs.current.purchase.version == "39"


# -- readiness ------------------------------------------------------------------------------------
def test_can_recommend_is_false_while_the_store_has_items_the_recommender_cannot_name():
    store = {"events": pd.DataFrame({ITEM_ID: pd.Series([], dtype="string")})}
    builds: Counter[str] = Counter()

    def from_store() -> PopularityFallback:
        builds["n"] += 1
        return PopularityFallback.from_events(store["events"])

    reg = Registry()
    champs = champion_set(reg, (RECOMMENDER_MODEL,), fallback_factory=from_store, fallback_refresh_s=0.0)
    champs.reload()
    assert champs.can_recommend()  # an empty store: nothing to recommend yet, and that is fine
    store["events"] = pd.DataFrame({ITEM_ID: pd.array(["a", "b", "b"], dtype="string"),
                                    CATEGORY: pd.array([None, None, None], dtype="string")})
    assert champs.can_recommend()  # the empty fallback is rebuilt from the store's new items
    assert [i for i, _ in champs.current.recommender.popular(2)] == ["b", "a"]


def test_can_recommend_is_false_when_the_fallback_could_not_be_built():
    calls: Counter[str] = Counter()
    healthy = {"ok": False}

    def flaky() -> PopularityFallback:
        calls["n"] += 1
        if not healthy["ok"]:
            raise OSError("store unavailable")
        return PopularityFallback.from_events(pd.DataFrame({ITEM_ID: ["a"]}))

    reg = Registry()
    champs = champion_set(reg, (RECOMMENDER_MODEL,), fallback_factory=flaky, fallback_refresh_s=3600.0)
    champs.reload()
    assert not champs.can_recommend()
    n = calls["n"]
    healthy["ok"] = True
    assert not champs.can_recommend() and calls["n"] == n  # rate-limited: no store read per probe
    champs.fallback_refresh_s = 0.0
    assert champs.can_recommend() and champs.current.recommender.popular(1) == [("a", 1.0)]

    healthy["ok"] = False  # a failed rebuild never replaces a fallback that answers
    champs.reload()
    assert champs.can_recommend() and champs.current.recommender.popular(1) == [("a", 1.0)]


def test_can_recommend_with_a_real_recommender():
    reg = Registry()
    reg.publish(RECOMMENDER_MODEL, "1", Recommender("1"))
    champs = champion_set(reg, (RECOMMENDER_MODEL,), fallback_factory=PopularityFallback)
    assert not champs.can_recommend()  # bare fallback: nothing known about the store
    champs.reload()
    assert champs.can_recommend() and not champs.current.recommender_is_fallback


def test_champion_set_rejects_bad_config():
    with pytest.raises(ValueError, match="names"):
        ChampionSet(("mirror-other",))
    with pytest.raises(ValueError, match="fallback_refresh_s"):
        ChampionSet((CHURN_MODEL,), fallback_refresh_s=-1)


# -- the real formats -----------------------------------------------------------------------------
def test_real_champions_pass_the_canary_and_an_incompatible_churn_is_rejected(tmp_path: Path):
    ms = _mirror_server()
    with ms.tracking(f"file:{tmp_path / 'mlruns'}"):
        ms.set_champion(RECOMMENDER_MODEL, ms.log_recommender(tmp_path))
        good = ms.log_classifier(CHURN_MODEL, 1)
        ms.set_champion(CHURN_MODEL, good)
        ms.set_champion(PURCHASE_MODEL, ms.log_classifier(PURCHASE_MODEL, 2))
        ms.set_champion(SENTIMENT_MODEL, ms.log_sentiment())
        champs = ChampionSet(fallback_factory=PopularityFallback)
        snap = champs.reload()
        assert snap.outcome == RELOAD_OK, champs.status()
        assert all(s["loaded"] and s["error"] is None for s in champs.status().values()), champs.status()
        assert champs.can_recommend() and not snap.recommender_is_fallback

        import mlflow
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(0)
        x = rng.normal(size=(50, 2))  # fitted on a bare array: it names no columns and wants two
        bad_model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
        with mlflow.start_run():
            bad = str(mlflow.sklearn.log_model(bad_model, name="model", registered_model_name=CHURN_MODEL,
                                               pip_requirements=["scikit-learn"]).registered_model_version)
        ms.set_champion(CHURN_MODEL, bad)
        after = champs.reload()
    assert after.outcome == RELOAD_REJECTED and after.churn is snap.churn
    status = champs.status()[CHURN_MODEL]
    assert status["version"] == good and status["rejected_version"] == bad
    assert status["error"].startswith("canary: churn predict_proba raised ValueError") and "\n" not in status["error"]
    p = after.churn.predict_proba(canary_features()[model_feature_columns(after.churn)])[:, 1]
    assert np.isfinite(p).all() and not math.isnan(float(p.mean()))
