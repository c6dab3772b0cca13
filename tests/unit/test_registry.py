"""The promotion gate: a version takes the champion alias only when it beats the champion."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from features.schema import CHAMPION_ALIAS, champion_uri
from training.registry import (
    TAG_LOST_TO_BASELINE,
    TAG_PROMOTED,
    TAG_REASON,
    TrainResult,
    baseline_metric_name,
    configure_tracking,
    default_tracking_uri,
    frame_digest,
    list_models,
    log_dataset,
    logged_dataset,
    metric_name,
    model_uri,
    parse_metric_name,
    register_and_promote,
    resolve_model,
    run_name,
    use_experiment,
)


class Constant(mlflow.pyfunc.PythonModel):
    """A trivial model whose 'quality' is the constant it predicts."""

    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[float]:  # noqa: ANN001
        return [self.value] * len(model_input)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One SQLite store for the module (creating one costs ~2 s); each test uses its own name."""
    root = tmp_path_factory.mktemp("registry")
    configure_tracking(default_tracking_uri(root))
    use_experiment("registry-tests")
    yield root
    configure_tracking()  # back to the suite's store (MLFLOW_TRACKING_URI)


def _log(value: float) -> tuple[str, str]:
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant(value), pip_requirements=[])
        mlflow.log_metric("score", value)
    return run.info.run_id, info.model_uri


def _score_champion(uri: str) -> float:
    """Re-score a registered model the way a pipeline would: load it and evaluate."""
    return float(mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"x": [0]}))[0])


def test_default_uri_is_sqlite_in_project_mlruns(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"


def test_promotes_only_on_improvement(store: Path) -> None:
    name = "t-improve"
    run1, uri1 = _log(0.5)
    first = register_and_promote(run1, uri1, name, "score", 0.5, evaluate_champion=_score_champion)
    assert first.promoted and first.champion_version is None and "first champion" in first.reason

    run2, uri2 = _log(0.4)
    worse = register_and_promote(run2, uri2, name, "score", 0.4, evaluate_champion=_score_champion)
    assert not worse.promoted
    assert worse.champion_version == first.version and worse.champion_score == pytest.approx(0.5)
    assert "does not beat" in worse.reason and "re-evaluated" in worse.reason

    run3, uri3 = _log(0.5)
    tie = register_and_promote(run3, uri3, name, "score", 0.5, evaluate_champion=_score_champion)
    assert not tie.promoted, "a tie must not replace the champion"

    run4, uri4 = _log(0.7)
    better = register_and_promote(run4, uri4, name, "score", 0.7, evaluate_champion=_score_champion)
    assert better.promoted and "beats champion" in better.reason
    assert better.champion_version == first.version

    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == better.version
    assert _score_champion(champion_uri(name)) == pytest.approx(0.7)
    # every run says why
    assert client.get_run(run2).data.tags[TAG_PROMOTED] == "false"
    assert client.get_run(run2).data.tags[TAG_REASON] == worse.reason
    assert client.get_run(run4).data.tags[TAG_PROMOTED] == "true"


def test_lower_is_better(store: Path) -> None:
    name = "t-lower"
    r1, u1 = _log(0.3)
    register_and_promote(r1, u1, name, "brier", 0.3, higher_is_better=False)
    r2, u2 = _log(0.2)
    d = register_and_promote(r2, u2, name, "brier", 0.2, higher_is_better=False)
    assert d.promoted and "lower is better" in d.reason and "recorded score" in d.reason
    r3, u3 = _log(0.25)
    assert not register_and_promote(r3, u3, name, "brier", 0.25, higher_is_better=False).promoted


def test_failing_champion_evaluation_is_beatable(store: Path) -> None:
    name = "t-broken"
    r1, u1 = _log(0.9)
    register_and_promote(r1, u1, name, "score", 0.9)

    def broken(uri: str) -> float:
        raise ValueError("incompatible artifact")

    r2, u2 = _log(0.1)
    d = register_and_promote(r2, u2, name, "score", 0.1, evaluate_champion=broken)
    assert d.promoted and d.champion_score is None
    assert "could not be re-evaluated" in d.reason and "incompatible artifact" in d.reason


def test_nan_score_never_promotes(store: Path) -> None:
    r1, u1 = _log(0.0)
    d = register_and_promote(r1, u1, "t-nan", "score", float("nan"))
    assert not d.promoted and math.isnan(d.new_score) and "NaN" in d.reason


def test_two_names_in_one_process_are_independent(store: Path) -> None:
    ra, ua = _log(0.6)
    rb, ub = _log(0.2)
    a = register_and_promote(ra, ua, "t-a", "score", 0.6)
    b = register_and_promote(rb, ub, "t-b", "score", 0.2)
    assert a.promoted and b.promoted, "each name has its own champion"
    assert _score_champion(champion_uri("t-a")) == pytest.approx(0.6)
    assert _score_champion(champion_uri("t-b")) == pytest.approx(0.2)

    table = list_models()
    assert list(table.columns[:4]) == ["name", "version", "aliases", "champion"]
    mine = table[table["name"].isin(["t-a", "t-b"])].set_index("name")
    assert mine.loc["t-a", "metric"] == pytest.approx(0.6) and bool(mine.loc["t-a", "champion"])
    assert mine.loc["t-b", "run_id"] == rb and mine.loc["t-b", "aliases"] == CHAMPION_ALIAS


def test_train_result_as_dict_is_json_ready() -> None:
    import json

    r = TrainResult("r", "models:/m-1", "n", "1", True, "why", {"auc": 0.8}, {"lr": {"auc": 0.7}})
    assert json.loads(json.dumps(r.as_dict()))["baselines"] == {"lr": {"auc": 0.7}}


# ---------------------------------------------------------------------------------------------
# A model that loses to its own baseline is never champion
# ---------------------------------------------------------------------------------------------
def test_a_model_that_loses_to_its_baseline_is_registered_without_the_alias(store: Path) -> None:
    name = "t-loses-to-baseline"
    run, uri = _log(0.60)
    d = register_and_promote(run, uri, name, "test_roc_auc", 0.60,
                             baselines={"logistic_regression": 0.65, "base_rate": 0.5})
    assert not d.promoted and d.version == "1"  # even with no champion at all
    assert "loses to its baseline logistic_regression 0.65" in d.reason
    client = mlflow.MlflowClient()
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    tags = client.get_run(run).data.tags
    assert tags[TAG_PROMOTED] == "false" and tags[TAG_LOST_TO_BASELINE] == "logistic_regression"
    assert client.get_model_version(name, "1").tags[TAG_REASON] == d.reason

    # one that beats every baseline is promoted; a tie with a baseline is not a loss
    run2, uri2 = _log(0.70)
    assert register_and_promote(run2, uri2, name, "test_roc_auc", 0.70,
                                baselines={"logistic_regression": 0.70, "base_rate": float("nan")}).promoted
    # and then a better-than-champion model that loses to its baseline still does not take the alias
    run3, uri3 = _log(0.72)
    d3 = register_and_promote(run3, uri3, name, "test_roc_auc", 0.72, evaluate_champion=_score_champion,
                              baselines={"logistic_regression": 0.75})
    assert not d3.promoted and str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "2"


def test_lower_is_better_baselines(store: Path) -> None:
    run, uri = _log(0.3)
    d = register_and_promote(run, uri, "t-brier-baseline", "test_brier", 0.3, higher_is_better=False,
                             baselines={"base_rate": 0.25})
    assert not d.promoted and "base_rate" in d.reason


# ---------------------------------------------------------------------------------------------
# One naming scheme: metrics, baselines, runs, datasets, model references
# ---------------------------------------------------------------------------------------------
def test_metric_names_are_split_prefixed_and_parse_back() -> None:
    assert metric_name("ndcg@10") == "test_ndcg_at_10"
    assert metric_name("roc_auc", "validation") == "validation_roc_auc"
    key = baseline_metric_name("logistic_regression", "roc_auc")
    assert key == "baseline_logistic_regression_test_roc_auc"
    assert parse_metric_name(key) == ("logistic_regression", "test", "roc_auc")
    assert parse_metric_name("test_ndcg_at_10_returning") == ("model", "test", "ndcg_at_10_returning")
    assert parse_metric_name("fit_seconds") is None
    with pytest.raises(ValueError, match="split"):
        metric_name("auc", "holdout")


def test_run_names_are_readable() -> None:
    from datetime import UTC, datetime

    assert run_name("recommender", datetime(2026, 12, 2, 15, 30, tzinfo=UTC)) == "recommender-2026-12-02-1530"


@pytest.mark.parametrize("ref, uri", [
    ("mirror-churn", "models:/mirror-churn@champion"),
    ("mirror-churn@staging", "models:/mirror-churn@staging"),
    ("mirror-churn/3", "models:/mirror-churn/3"),
    ("runs:/abc/model", "runs:/abc/model"),
])
def test_model_references(ref: str, uri: str) -> None:
    assert model_uri(ref) == uri


def test_resolving_an_unknown_model_names_what_is_registered(store: Path) -> None:
    run, uri = _log(0.5)
    register_and_promote(run, uri, "t-resolve", "score", 0.5)
    assert resolve_model("t-resolve") == ("models:/t-resolve/1", "t-resolve/1")
    assert resolve_model("t-resolve/1")[1] == "t-resolve/1"
    with pytest.raises(ValueError, match="registered models: .*t-resolve"):
        resolve_model("t-nope")


def test_datasets_are_logged_with_their_source_and_digest(store: Path, tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": ["a", "b", None]}).astype({"y": "string"})
    src = tmp_path / "data.parquet"
    frame.to_parquet(src)
    with mlflow.start_run() as run:
        log_dataset(frame, "training", name="d-train", source=src, targets="x")
        log_dataset(frame.head(2), "test", name="d-test", source=src)
        log_dataset(frame.head(0), "validation", name="empty")  # nothing to describe: skipped
    got = logged_dataset(run.info.run_id, "test")
    assert got is not None and got.name == "d-test" and got.rows == 2 and got.source == str(src.resolve())
    assert got.digest == frame_digest(frame.head(2)) != frame_digest(frame)
    assert logged_dataset(run.info.run_id, "validation") is None
    with pytest.raises(ValueError, match="context"):
        log_dataset(frame, "holdout", name="x")
