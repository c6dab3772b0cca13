"""The promotion gate: a version takes the champion alias only when it beats the champion."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from features.schema import CHAMPION_ALIAS, champion_uri
from training.registry import (
    TAG_PROMOTED,
    TAG_REASON,
    TrainResult,
    configure_tracking,
    default_tracking_uri,
    list_models,
    register_and_promote,
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
