"""The `mirror` CLI: user errors are one line and a non-zero exit; commands produce what they say."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.schema import (
    CHANNEL,
    CUSTOMER_ID,
    EVENT_ID,
    EVENT_TYPE,
    ITEM_ID,
    PRICE,
    PROFILE_ID,
    PURCHASE,
    QUANTITY,
    TS,
    VIEW,
    write_events,
)
from training.cli import _finite, _summary, app, example_calls
from training.registry import TrainResult

runner = CliRunner()


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _events(n_customers: int = 3) -> pd.DataFrame:
    """Each customer views one item and buys it: n_customers profiles, 2 * n_customers events."""
    rows = []
    for c in range(n_customers):
        for j, et in enumerate((VIEW, PURCHASE)):
            rows.append({EVENT_ID: f"e{c}-{j}", TS: f"2025-01-0{1 + j}T10:00:00Z", CHANNEL: "web",
                         EVENT_TYPE: et, CUSTOMER_ID: f"c{c}", ITEM_ID: f"i{c}",
                         QUANTITY: 1.0 if et == PURCHASE else None, PRICE: 10.0 if et == PURCHASE else None})
    return pd.DataFrame(rows)



def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("generate", "features", "train", "predict", "models", "serve"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["features", "--events", "missing.parquet", "--out", "x"], "missing.parquet"),
        (["train", "recommender", "--events", "nowhere.csv"], "nowhere.csv"),
        (["train", "all"], "--events is required"),
        (["train", "sentiment", "--reviews", "no-reviews.csv"], "no-reviews.csv"),
        (["predict", "sentiment", "--input", "gone.csv", "--text-column", "t", "--out", "o.csv"], "gone.csv"),
    ],
)
def test_missing_inputs_exit_nonzero_naming_them(args: list[str], needle: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert needle in result.stderr
    assert "Traceback" not in result.output


def test_bad_as_of_is_a_user_error(tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    write_events(_events(), events)
    result = runner.invoke(app, ["features", "--events", str(events), "--as-of", "not-a-date", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "--as-of" in result.stderr


@pytest.mark.parametrize("as_of, what", [("2030-01-01", "no add_to_cart/purchase events in the 14 test days"),
                                          ("2020-01-01", "no training events before it")])
def test_an_as_of_outside_the_data_names_the_data_range(as_of: str, what: str, tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    write_events(_events(), events)
    result = runner.invoke(app, ["train", "recommender", "--events", str(events), "--as-of", as_of])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert what in result.stderr and "the data run from 2025-01-01 10:00:00+00:00 to 2025-01-02" in result.stderr


def test_usage_errors(tmp_path: Path) -> None:
    assert runner.invoke(app, ["generate", "--customers", "0", "--out", str(tmp_path)]).exit_code == 2
    table = tmp_path / "t.csv"
    pd.DataFrame({"x": [1, 2], "churn": [0, 1]}).to_csv(table, index=False)
    no_label = runner.invoke(app, ["train", "propensity", "--features", str(table)])
    assert no_label.exit_code == 2 and "--label" in no_label.stderr
    wrong = runner.invoke(app, ["train", "propensity", "--features", str(table), "--label", "nope"])
    assert wrong.exit_code == 1 and "'nope'" in wrong.stderr and "churn" in wrong.stderr


def test_predict_names_a_missing_text_column(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    pd.DataFrame({"body": ["great"]}).to_csv(src, index=False)
    result = runner.invoke(app, ["predict", "sentiment", "--input", str(src), "--text-column", "review",
                                 "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 1 and "'review'" in result.stderr and "body" in result.stderr


def test_a_csv_with_unquoted_separators_is_refused_not_cut(tmp_path: Path) -> None:
    """An unquoted comma in a text gives rows more fields than the header; pandas would silently make the
    first field the index and score the rest of the text.  The CLI says so and writes nothing."""
    src = tmp_path / "in.csv"
    src.write_text("text\nThis dress is awful, it fell apart\nLove it, fits perfectly\n")
    out = tmp_path / "o.csv"
    result = runner.invoke(app, ["predict", "sentiment", "--input", str(src), "--text-column", "text",
                                 "--out", str(out)])
    assert result.exit_code == 1 and "in.csv" in result.stderr and "more fields than the header" in result.stderr
    assert not out.exists()
    table = tmp_path / "t.csv"
    table.write_text("x,churn\n1,0\n2,1,3\n")
    bad = runner.invoke(app, ["train", "propensity", "--features", str(table), "--label", "churn"])
    assert bad.exit_code == 1 and "t.csv" in bad.stderr and "more fields than the header" in bad.stderr


@pytest.mark.skipif(not (_has("features.profiles") and _has("features.identity")),
                    reason="features.profiles/identity not available")
def test_features_writes_one_row_per_profile(tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    write_events(_events(4), events)
    result = runner.invoke(app, ["features", "--events", str(events), "--out", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    profiles = pd.read_parquet(tmp_path / "f" / "profiles.parquet")
    assert len(profiles) == 4 and profiles[PROFILE_ID].is_unique
    assert "wrote 4 profiles" in result.stdout
    # a cutoff before the purchases: still 4 profiles (they viewed), but nothing bought yet
    early = runner.invoke(app, ["features", "--events", str(events), "--as-of", "2025-01-01T12:00:00Z",
                                "--out", str(tmp_path / "g")])
    assert early.exit_code == 0, early.output


@pytest.mark.skipif(not _has("features.synthetic"), reason="features.synthetic not available")
def test_generate_is_deterministic_and_counts_rows(tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        result = runner.invoke(app, ["generate", "--customers", "30", "--days", "10", "--seed", "3",
                                     "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        outs.append(pd.read_parquet(tmp_path / name / "events.parquet"))
        assert f"wrote {len(outs[-1])} events" in result.stdout
    pd.testing.assert_frame_equal(outs[0], outs[1])
    assert outs[0][CUSTOMER_ID].nunique() <= 30


class _Identity(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ANN001
        return model_input


def test_models_lists_registered_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.registry import (
        configure_tracking,
        default_tracking_uri,
        register_and_promote,
        use_experiment,
    )

    uri = default_tracking_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    empty = runner.invoke(app, ["models"])
    assert empty.exit_code == 0 and "no registered models" in empty.stdout

    configure_tracking(uri)
    use_experiment("cli-test")  # the active experiment of an earlier store does not exist in this one
    try:
        for value in (0.5, 0.4):
            with mlflow.start_run() as run:
                info = mlflow.pyfunc.log_model(name="model", python_model=_Identity(), pip_requirements=[])
            register_and_promote(run.info.run_id, info.model_uri, "cli-test", "auc", value)
        result = runner.invoke(app, ["models"])
    finally:
        mlflow.set_tracking_uri(None)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.strip().splitlines()]
    assert lines[0] == ["name", "version", "champion", "metric"]
    assert lines[1] == ["cli-test", "1", "*", "auc=0.5"]
    assert lines[2] == ["cli-test", "2", "auc=0.4"]


def test_summary_json_has_metrics_and_baselines_and_no_nan() -> None:
    r = TrainResult("run", "models:/m-1", "mirror-churn", "3", False, "not promoted: ...",
                    {"roc_auc": 0.8, "brier": float("nan")}, {"logreg": {"roc_auc": 0.7}})
    text = json.dumps(_finite(_summary([r])))
    back = json.loads(text)
    assert back["mirror-churn"]["metrics"] == {"roc_auc": 0.8, "brier": None}
    assert back["mirror-churn"]["baselines"]["logreg"]["roc_auc"] == 0.7
    assert back["mirror-churn"]["version"] == "3" and back["mirror-churn"]["promoted"] is False


def test_example_calls_cover_every_endpoint() -> None:
    calls = example_calls("http://127.0.0.1:3000", "c42", "i7")
    text = "\n".join(calls)
    for endpoint in ("recommend", "similar_items", "next_best_action", "scores", "events", "consent", "profiles"):
        assert f"/{endpoint}" in text
    assert '"c42"' in text and '"i7"' in text
    # every JSON body is valid JSON
    for call in calls:
        if " -d '" in call:
            json.loads(call.split(" -d '", 1)[1].rstrip("'"))


def test_train_prints_one_json_object_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatch and output contract, with the pipeline replaced by a stand-in (fast)."""
    import training.cli as cli

    events = tmp_path / "events.parquet"
    write_events(_events(), events)
    seen: dict[str, object] = {}

    def fake(events_df: pd.DataFrame, as_of: str | None, experiment: str | None) -> list[TrainResult]:
        seen.update(n=len(events_df), as_of=as_of, experiment=experiment)
        return [TrainResult("r1", "models:/m-1", "mirror-recommender", "2", True, "promoted: better",
                            {"ndcg_at_10": 0.3}, {"popularity": {"ndcg_at_10": 0.1}})]

    monkeypatch.setattr(cli, "_train_recommender", fake)
    result = runner.invoke(app, ["train", "recommender", "--events", str(events), "--as-of", "2025-01-02",
                                 "--experiment", "x"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["mirror-recommender"]["metrics"] == {"ndcg_at_10": 0.3}
    assert payload["mirror-recommender"]["baselines"]["popularity"]["ndcg_at_10"] == 0.1
    assert seen == {"n": 6, "as_of": "2025-01-02T00:00:00+00:00", "experiment": "x"}


@pytest.mark.slow
@pytest.mark.skipif(not (_has("features.synthetic") and _has("training.recommender")),
                    reason="synthetic data or recommender pipeline not available")
def test_train_recommender_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real pipeline on tiny synthetic data (~40 s on 2 shared cores): JSON last, model beats baselines."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert runner.invoke(app, ["generate", "--customers", "300", "--days", "100", "--seed", "3",
                               "--out", "data"]).exit_code == 0
    result = runner.invoke(app, ["train", "recommender", "--events", "data/events.parquet", "--experiment", "t"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])["mirror-recommender"]
    assert out["promoted"] is True and out["version"] == "1"
    assert out["metrics"]["ndcg_at_10"] > out["baselines"]["popularity"]["ndcg_at_10"]
    assert out["metrics"]["ndcg_at_10"] > out["baselines"]["random"]["ndcg_at_10"]
    models = runner.invoke(app, ["models"])
    assert "mirror-recommender" in models.stdout and "*" in models.stdout


def test_train_sentiment_passes_finetune_options_into_the_config(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import training.sentiment as sentiment

    seen = []

    def fake_train(config, texts):  # noqa: ANN001, ANN202
        seen.append(config)
        return TrainResult("run", "models:/m/1", "mirror-sentiment", "1", True, "first model", {"macro_f1": 0.5}, {})

    monkeypatch.setattr(sentiment, "train_sentiment", fake_train)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    reviews = tmp_path / "reviews.csv"
    pd.DataFrame({"text": ["great", "awful", "fine"], "rating": [5, 1, 3]}).to_csv(reviews, index=False)
    args = ["train", "sentiment", "--reviews", str(reviews)]
    assert runner.invoke(app, args).exit_code == 0
    assert seen[-1].finetune_epochs == 0.0 and seen[-1].finetune_members == 1
    result = runner.invoke(app, [*args, "--finetune-epochs", "2", "--finetune-members", "2"])
    assert result.exit_code == 0, result.output
    assert (seen[-1].finetune_epochs, seen[-1].finetune_members) == (2.0, 2)
    assert seen[-1].finetune_max_texts >= 1_000_000  # every text, not the default subsample
    bad = runner.invoke(app, [*args, "--finetune-members", "2"])
    assert bad.exit_code == 2 and "--finetune-epochs" in bad.output and len(seen) == 2
