"""`mirror`: a thin command line around Mirror's pure functions.

Each command imports its module lazily, so `mirror --help` is fast and a missing or broken module
fails only its own command, with a message rather than a traceback.  User errors (a missing file,
a bad date, an unknown column) exit non-zero with one line on stderr naming the problem.
`mirror train` prints the run's metrics, baselines included, as one JSON object on its last line.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    name="mirror",
    help="Mirror: unified customer profiles, recommendations, next-best-action and a creepiness guard.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train models and register champions in MLflow.", no_args_is_help=True)
predict_app = typer.Typer(help="Score data with the champion models.", no_args_is_help=True)
app.add_typer(train_app, name="train")
report_app = typer.Typer(help="Reports on what Mirror served and what it earned.", no_args_is_help=True)
app.add_typer(predict_app, name="predict")
app.add_typer(report_app, name="report")

DEFAULT_PORT = 3000
DEFAULT_STORE = "mirror-store.db"
SERVICE_TARGET = "serving.service:Mirror"

#: Environment for the commands that train and score (never `serve`: the service keeps its own), set
#: before numpy, implicit or MLflow are first imported, and only where the user has not set them:
#: implicit warns on every ALS fit unless OpenBLAS runs one thread (it parallelises itself), and MLflow's
#: INFO lines and artifact progress bars say nothing a user can act on; nor do transformers' "Loading
#: weights" bar (the bundled MiniLM, read from disk in a second) and its load reports. Hugging Face's
#: switch turns off only the bars of its own libraries: Mirror's tqdm bars (embedding, fine-tuning) stay.
QUIET_ENV: dict[str, str] = {
    "OPENBLAS_NUM_THREADS": "1",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


@app.callback()
def _quiet_libraries(ctx: typer.Context) -> None:
    """Before any command: the library settings of QUIET_ENV (a process that already loaded numpy, such as
    a test runner, is left alone: the settings would not take effect there, only leak)."""
    if ctx.invoked_subcommand == "serve" or "numpy" in sys.modules:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
class UserError(Exception):
    """A problem with what the user asked for: reported in one line, no traceback."""


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors that describe bad input into a one-line message and exit code 1.

    MIRROR_DEBUG=1 re-raises them with the traceback (for developers).
    """
    try:
        yield
    except (UserError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("MIRROR_DEBUG"):
            raise
        _fail(str(exc) or type(exc).__name__)
    except ImportError as exc:
        if os.environ.get("MIRROR_DEBUG"):
            raise
        _fail(f"a module this command needs is not available: {exc}")


def _module(name: str, command: str) -> ModuleType:
    """Import `name` for `command`; a missing module is a clear error, not a traceback."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _fail(f"`mirror {command}` needs {name}, which could not be imported: {exc}")


def _function(module: ModuleType, name: str, command: str) -> Any:
    fn = getattr(module, name, None)
    if fn is None:
        _fail(f"`mirror {command}` needs {module.__name__}.{name}, which does not exist yet")
    return fn


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    return path


def _config(cls: type, **values: Any) -> Any:
    """Build a frozen config from the fields it has; None means 'keep the default'."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def _timestamp(value: str | None, option: str) -> Any:
    if value is None:
        return None
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{option}: not a date or timestamp: {value!r}") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _read_table(path: Path) -> Any:
    from features.schema import read_table

    _existing(path, "table")
    return read_table(path)


def _load_events(path: Path) -> Any:
    """Read a canonical events file (CSV or parquet) and keep its valid rows, reporting the rest.

    A `profile_id` column (a store's export, `mirror export-events`) is kept: training then uses the
    store's own profile ids, the ones serving answers with, instead of resolving identities again.
    """
    from features.schema import PROFILE_ID, read_events, validate_events

    _existing(path, "events file")
    raw = read_events(path)
    profile_ids = raw.pop(PROFILE_ID) if PROFILE_ID in raw.columns else None  # not a channel's column
    checked = validate_events(raw)
    if checked.n_rejected:
        typer.echo(f"warning: {checked.n_rejected} of {len(raw)} events in {path} are invalid and skipped; "
                   f"first: {checked.error_records()[0]}", err=True)
    if not len(checked.valid):
        raise UserError(f"no valid events in {path}")
    if profile_ids is None:
        return checked.valid
    return _with_profile_ids(checked.valid, raw, profile_ids, path)


def load_events(path: Path) -> Any:
    """The events `mirror train --events FILE` trains on: the file's valid rows (invalid ones reported),
    with its profile ids when it has them.  Notebooks read a champion's logged data source with this."""
    return _load_events(Path(path))


def _with_profile_ids(valid: Any, raw: Any, profile_ids: Any, path: Path) -> Any:
    """The valid rows with the file's profile ids, matched by event id (validation renumbers rows)."""
    import pandas as pd

    from features.schema import EVENT_ID, PROFILE_ID, normalise_id

    by_event = {normalise_id(str(e)): str(p) for e, p in zip(raw[EVENT_ID], profile_ids, strict=True)
                if not pd.isna(e) and not pd.isna(p) and str(p).strip()}
    ids = valid[EVENT_ID].map(by_event)
    if ids.isna().any():
        raise UserError(f"{path}: column {PROFILE_ID!r} is empty on {int(ids.isna().sum())} valid events "
                        f"(first: event_id {valid[EVENT_ID][ids.isna()].iloc[0]!r}); give it on every row, "
                        "or drop the column to resolve identities from the identifiers")
    return valid.assign(**{PROFILE_ID: ids.astype("string")})


def _store_events(store: Path) -> Any:
    """The store's own export (every stored event, never an erased person's), read as an events file.

    Through a temporary parquet file beside the store (the same data, in the same place and with the
    same access as the store itself; deleted on return): the store streams it in batches and training
    reads the columns back compactly, instead of every row as Python objects.
    """
    import tempfile

    _existing(store, "store")
    with tempfile.TemporaryDirectory(prefix=f".{store.name}.export-", dir=store.resolve().parent) as tmp:
        path = Path(tmp) / "events.parquet"
        with _opened_store(store, "train") as db:
            n = db.export_events_to(path)
        if not n:
            raise UserError(f"store {store} holds no events")
        return _load_events(path)


def _finite(value: Any) -> Any:
    """JSON has no NaN: non-finite numbers become null, numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _results(result: Any) -> list[Any]:
    """A pipeline returns one TrainResult, or several (a dict or a sequence) for several models."""
    if isinstance(result, dict):
        return [r for r in result.values()]
    if isinstance(result, (list, tuple)):
        return list(result)
    return [result]


def _summary(results: list[Any]) -> dict[str, Any]:
    """{model name: {version, promoted, reason, run_id, metrics, baselines}}."""
    out: dict[str, Any] = {}
    for r in results:
        out[r.model_name] = {
            "run_id": r.run_id,
            "version": r.version,
            "promoted": r.promoted,
            "reason": r.reason,
            "metrics": dict(r.metrics),
            "baselines": {k: dict(v) for k, v in r.baselines.items()},
        }
    return out


def _print_json(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(_finite(payload), sort_keys=True))


def _tracking(experiment: str | None) -> str:
    """Configure MLflow and pre-create the experiment so its artifacts sit beside the store."""
    from training.registry import configure_tracking, use_experiment

    uri = configure_tracking()
    if experiment:
        use_experiment(experiment)
    return uri


# ---------------------------------------------------------------------------------------------
# generate / features
# ---------------------------------------------------------------------------------------------
@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Output folder (events.parquet, items.parquet, truth/).")],
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="Days of history.")] = 90,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    end: Annotated[str | None, typer.Option(
        help="Date the data end on (UTC midnight; they start --days before). Default: today (UTC), so a "
             "service started now scores fresh data.")] = None,
    start: Annotated[str | None, typer.Option(
        help="Pin the first day instead of --end (same seed and start: the same data on any day).")] = None,
    journeys: Annotated[bool, typer.Option(
        "--journeys", help="Also plant the journeys: return reasons, declared preferences and past decisions "
                           "with a holdout and planted effects (truth/decisions.parquet: the decision log "
                           "`mirror report lift` and `mirror train uplift` read with --decisions).")] = False,
) -> None:
    """Generate synthetic omnichannel events and a catalog (items.parquet) with planted, known structure."""
    if start is not None and end is not None:
        _fail("give either --start or --end, not both", 2)
    if start is None and end is None:
        end = datetime.now(UTC).date().isoformat()
    synthetic = _module("features.synthetic", "generate")
    t0 = time.perf_counter()
    with _user_errors():
        if journeys:  # `generate_to_dir` has no journeys switch: the same config, written the same way
            config = synthetic.SyntheticConfig(customers=customers, days=days, seed=seed, start=start, end=end,
                                               journeys=True)
            synthetic.write(synthetic.generate(config), out)
        else:
            synthetic.generate_to_dir(customers=customers, days=days, seed=seed, out=out, start=start, end=end)
    events = out / "events.parquet"
    n = _count_rows(events)
    typer.echo(f"wrote {n} events for {customers} customers over {days} days to {out} "
               f"in {time.perf_counter() - t0:.1f}s")
    if journeys:
        log = out / "truth" / f"{synthetic.DECISIONS}.parquet"
        typer.echo(f"journeys: {_count_rows(log)} past decisions in {log} (mirror report lift --decisions {log} "
                   f"--events {events})")


def _count_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows) if path.exists() else 0


@app.command()
def features(
    events: Annotated[Path, typer.Option(help="Canonical events (CSV or parquet).")],
    out: Annotated[Path, typer.Option(help="Output folder for profiles.parquet.")],
    as_of: Annotated[str | None, typer.Option(help="Cutoff: only events before it count (default: all).")] = None,
) -> None:
    """Build point-in-time profile features, one row per unified profile."""
    profiles = _module("features.profiles", "features")
    build = _function(profiles, "build_features_to_dir", "features")
    t0 = time.perf_counter()
    with _user_errors():
        _existing(events, "events file")
        cut = _timestamp(as_of, "--as-of")
        _check_events_file(events, cut)
        path = build(events, cut, out)
        n = _count_rows(Path(path))
        if not n:
            raise UserError(f"no profiles built from {events}" + (f" before --as-of {cut}" if cut is not None else "")
                            + f"; {path} holds 0 rows")
    typer.echo(f"wrote {n} profiles to {path} in {time.perf_counter() - t0:.1f}s")


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq") or path.is_dir()


def _read_columns(path: Path, columns: list[str] | None = None) -> Any:
    """`columns` of a CSV or parquet file (None: no rows, only the header); unreadable is one line."""
    import pandas as pd
    import pyarrow.dataset as pads

    from features.schema import read_csv_strict

    try:
        if _is_parquet(path):
            data = pads.dataset(path, format="parquet")
            return pd.DataFrame(columns=data.schema.names) if columns is None else \
                data.to_table(columns=columns).to_pandas()
        return read_csv_strict(path, nrows=0) if columns is None else read_csv_strict(path, usecols=columns)
    except (OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(message if str(path) in message else f"cannot read {path}: {message}") from exc


def _check_events_file(path: Path, as_of: Any) -> None:
    """A file that is not canonical events, or a cutoff before its first event, is one line naming it."""
    import pandas as pd

    from features.schema import IDENTIFIER_COLUMNS, PROFILE_ID, REQUIRED_COLUMNS, TS

    columns = [str(c) for c in _read_columns(path).columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UserError(f"{path} is not an events file: it lacks the required column(s) {', '.join(missing)} "
                        f"(its columns: {', '.join(columns) or 'none'})")
    if not any(c in columns for c in (*IDENTIFIER_COLUMNS, PROFILE_ID)):
        raise UserError(f"{path} has no identifier column to build profiles from (one of "
                        f"{', '.join((*IDENTIFIER_COLUMNS, PROFILE_ID))}); its columns: {', '.join(columns)}")
    if as_of is None:
        return
    ts = pd.to_datetime(_read_columns(path, [TS])[TS], utc=True, errors="coerce", format="ISO8601").dropna()
    if not len(ts):
        raise UserError(f"{path}: column {TS!r} holds no timestamps")
    if ts.min() >= as_of:
        raise UserError(f"--as-of {as_of} is not after the first event in {path} ({ts.min()}): no profile has "
                        f"any history before it (the events run from {ts.min()} to {ts.max()})")


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
def _source(path: Path | None) -> str | None:
    """The data file a run logs with its datasets (absolute), so notebooks read the same data back."""
    return str(path.resolve()) if path is not None else None


def _train_recommender(events_df: Any, as_of: Any, experiment: str | None, source: str | None = None) -> list[Any]:
    mod = _module("training.recommender", "train recommender")
    fn = _function(mod, "train_recommender", "train recommender")
    cfg_cls = _function(mod, "RecommenderTrainConfig", "train recommender")
    config = _config(cfg_cls, as_of=as_of, experiment=experiment, source=source)
    _tracking(getattr(config, "experiment", None))
    return _results(fn(config, events_df))


def _train_propensity(events_df: Any, as_of: Any, experiment: str | None, source: str | None = None) -> list[Any]:
    mod = _module("training.propensity", "train propensity")
    fn = _function(mod, "train_propensity", "train propensity")
    cfg_cls = _function(mod, "PropensityConfig", "train propensity")
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    targets: tuple[str | None, ...] = ("churn", "purchase") if "target" in names else (None,)
    results: list[Any] = []
    for target in targets:
        config = _config(cfg_cls, as_of=as_of, experiment=experiment, target=target, source=source)
        _tracking(getattr(config, "experiment", None))
        results += _results(fn(config, events_df))
    return results


@dataclasses.dataclass(frozen=True)
class TextColumns:
    """Which columns of a --reviews file hold the text and its rating (1-5) or label."""

    text: str = "text"
    rating: str | None = None
    label: str | None = None


def _need_columns(table: Any, path: Path, wanted: dict[str, str]) -> None:
    """One line naming the file, the first missing column (and its option) and the file's columns."""
    for option, column in wanted.items():
        if column not in table.columns:
            raise UserError(f"{path}: no column {column!r} ({option}); its columns: "
                            f"{', '.join(map(str, table.columns))}")


def _review_texts(reviews: Path, columns: TextColumns) -> Any:
    """(text, label) rows of a reviews file: labels from --label-column (negative/neutral/positive),
    else from --rating-column (1-2 negative, 3 neutral, 4-5 positive; default column 'rating')."""
    import pandas as pd

    from features.schema import RATING, SENTIMENT_LABELS, TEXT

    mod = _module("training.sentiment", "train sentiment")
    table = _read_table(reviews)
    rating = columns.rating or (None if columns.label else RATING)
    wanted = {"--text-column": columns.text}
    wanted.update({"--label-column": columns.label} if columns.label else {"--rating-column": rating})
    _need_columns(table, reviews, wanted)
    if columns.label:
        labels = table[columns.label].astype("string").str.strip().str.lower()
        bad = sorted(set(labels.dropna()) - set(SENTIMENT_LABELS))
        if bad:
            raise UserError(f"{reviews}: column {columns.label!r} (--label-column) holds {bad[:5]}; labels are "
                            f"{', '.join(SENTIMENT_LABELS)} (or give --rating-column for 1-5 ratings)")
    else:
        numbers = pd.to_numeric(table[rating], errors="coerce")
        if not numbers.notna().any():
            raise UserError(f"{reviews}: column {rating!r} (--rating-column) holds no numbers")
        labels = mod.labels_from_ratings(numbers)
    texts = pd.DataFrame({TEXT: table[columns.text].astype("string"), "label": labels.astype("string")})
    return texts.dropna().reset_index(drop=True)


def _sentiment_texts(events_path: Path | None, events_df: Any, reviews: Path | None,
                     columns: TextColumns | None = None) -> Any:
    """Labelled texts: a --reviews file (text + rating or label), else the events' texts with truth or ratings."""
    import pandas as pd

    mod = _module("training.sentiment", "train sentiment")
    if reviews is not None:
        return _review_texts(reviews, columns or TextColumns())
    truth_path = events_path.parent / "truth" / "sentiment.parquet" if events_path else None
    truth = pd.read_parquet(truth_path) if truth_path is not None and truth_path.exists() else None
    texts = mod.texts_from_events(events_df, truth)
    if not len(texts):
        raise UserError("no labelled review or support texts in the events (pass --reviews FILE)")
    return texts


def _train_sentiment(events_path: Path | None, events_df: Any, reviews: Path | None,
                     experiment: str | None, columns: TextColumns | None = None, **options: Any) -> list[Any]:
    mod = _module("training.sentiment", "train sentiment")
    fn = _function(mod, "train_sentiment", "train sentiment")
    config = _config(mod.SentimentConfig, experiment=experiment, source=_source(reviews or events_path), **options)
    texts = _sentiment_texts(events_path, events_df, reviews, columns)
    _tracking(getattr(config, "experiment", None))
    return _results(fn(config, texts))


class Family(StrEnum):
    recommender = "recommender"
    propensity = "propensity"
    sentiment = "sentiment"
    all = "all"


def _run_training(family: Family, events: Path | None, reviews: Path | None, as_of: str | None,
                  experiment: str | None, store: Path | None = None, columns: TextColumns | None = None,
                  **sentiment_options: Any) -> None:
    if events is not None and store is not None:
        _fail("give either --events or --store, not both", 2)
    with _user_errors():
        ts = _timestamp(as_of, "--as-of")
        cut = ts.isoformat() if ts is not None else None
        if events is None and store is None and not (family is Family.sentiment and reviews is not None):
            raise UserError("--events is required (or --store" + (", or --reviews for sentiment)"
                                                                 if family is Family.sentiment else ")"))
        if reviews is not None:
            _existing(reviews, "reviews file")
        events_df = _load_events(events) if events is not None else _store_events(store) if store is not None \
            else None
        results: list[Any] = []
        source = _source(events)  # a store's export is a temporary file: no source to read back
        if family in (Family.recommender, Family.all):
            results += _train_recommender(events_df, cut, experiment, source)
        if family in (Family.propensity, Family.all):
            results += _train_propensity(events_df, cut, experiment, source)
        if family in (Family.sentiment, Family.all):
            results += _train_sentiment(events, events_df, reviews, experiment, columns, **sentiment_options)
    _report(results)


def _report(results: list[Any]) -> None:
    """One line per model on stderr (version and why it is or is not champion), then the JSON summary."""
    for r in results:
        typer.echo(f"{r.model_name} v{r.version or '-'}: {r.reason}", err=True)
    _print_json(_summary(results))


EventsOpt = Annotated[Path | None, typer.Option(help="Canonical events (CSV or parquet).")]
StoreOpt = Annotated[Path | None, typer.Option(
    "--store", help="Train from this profile store's own export instead of --events: what the store holds now, "
                    "so an erased person is out of the training.")]
ReviewsOpt = Annotated[Path | None, typer.Option(
    help="Sentiment: a CSV or parquet of labelled texts (columns: --text-column and --rating-column or "
         "--label-column).")]
TextColumnOpt = Annotated[str, typer.Option(help="--reviews: the column holding the text.")]
RatingColumnOpt = Annotated[str | None, typer.Option(
    help="--reviews: the column of 1-5 ratings (1-2 negative, 3 neutral, 4-5 positive). Default: 'rating'.")]
LabelColumnOpt = Annotated[str | None, typer.Option(
    help="--reviews: a column of labels (negative, neutral, positive) instead of ratings.")]
AsOfOpt = Annotated[str | None, typer.Option(help="Cut between past (training) and future (evaluation).")]
ExperimentOpt = Annotated[str | None, typer.Option(help="MLflow experiment name.")]


@train_app.command("recommender")
def train_recommender_cmd(events: EventsOpt = None, as_of: AsOfOpt = None, experiment: ExperimentOpt = None,
                          store: StoreOpt = None) -> None:
    """ALS recommender with complements and popularity, against popularity and random baselines."""
    _run_training(Family.recommender, events, None, as_of, experiment, store)


class ServedTarget(StrEnum):
    """The propensity models the service loads (features.schema CHURN_MODEL, PURCHASE_MODEL)."""

    churn = "churn"
    purchase = "purchase"


@train_app.command("propensity")
def train_propensity_cmd(
    events: EventsOpt = None,
    as_of: AsOfOpt = None,
    experiment: ExperimentOpt = None,
    features: Annotated[Path | None, typer.Option(help="A feature table (CSV/parquet), one row per customer.")] = None,
    label: Annotated[str | None, typer.Option(
        "--label-column", "--label", help="The 0/1 (or yes/no, true/false) label column of --features.")] = None,
    register_as: Annotated[ServedTarget | None, typer.Option(
        help="--features: register the model as the service's churn or purchase model (its columns must be "
             "the profile features `mirror features` writes). Default: mirror-propensity-<label>, "
             "for batch scoring with `mirror predict propensity`.")] = None,
    store: StoreOpt = None,
) -> None:
    """Churn and purchase propensity (LightGBM vs logistic regression), or one model on --features."""
    if features is None:
        for given, option in ((label, "--label-column"), (register_as, "--register-as")):
            if given is not None:
                _fail(f"{option} goes with --features", 2)
        _run_training(Family.propensity, events, None, as_of, experiment, store)
        return
    if label is None:
        _fail("--features needs --label-column COLUMN", 2)
    if events is not None or store is not None:
        _fail(f"give either --{'events' if events is not None else 'store'} or --features, not both", 2)
    with _user_errors():
        table = _read_table(features)
        _need_columns(table, features, {"--label-column": label})
        mod = _module("training.propensity", "train propensity")
        fn = _function(mod, "train_propensity_table", "train propensity")
        config = _config(mod.PropensityConfig, experiment=experiment, source=_source(features))
        if register_as is not None:  # refused before any training: the service could not feed it
            try:
                mod.check_servable(mod.prepare_table(table, label)[0], register_as.value)
            except ValueError as exc:
                raise UserError(f"--register-as {register_as.value}: {features}: {exc}") from exc
        _tracking(getattr(config, "experiment", None))
        results = _results(fn(config, table, label, serve_as=register_as.value if register_as else None))
    _report(results)


@train_app.command("sentiment")
def train_sentiment_cmd(
    events: EventsOpt = None, reviews: ReviewsOpt = None, experiment: ExperimentOpt = None,
    text_column: TextColumnOpt = "text", rating_column: RatingColumnOpt = None, label_column: LabelColumnOpt = None,
    finetune_epochs: Annotated[float, typer.Option(
        min=0.0, help="Fine-tune MiniLM for this many epochs (0: frozen embeddings; CPU-heavy, ~20 texts/s "
                      "on 2 cores).")] = 0.0,
    finetune_members: Annotated[int, typer.Option(
        min=1, help="With --finetune-epochs: independent fine-tunes (other seeds) averaged.")] = 1,
    store: StoreOpt = None,
) -> None:
    """Review/support-text sentiment (MiniLM head vs TF-IDF baseline)."""
    if finetune_members > 1 and finetune_epochs <= 0:
        _fail("--finetune-members needs --finetune-epochs above 0", 2)
    if rating_column is not None and label_column is not None:
        _fail("give either --rating-column or --label-column, not both", 2)
    if reviews is None and (text_column != "text" or rating_column or label_column):
        _fail("--text-column, --rating-column and --label-column go with --reviews", 2)
    _run_training(Family.sentiment, events, reviews, None, experiment, store,
                  TextColumns(text_column, rating_column, label_column),
                  finetune_epochs=finetune_epochs, finetune_members=finetune_members,
                  finetune_max_texts=1_000_000 if finetune_epochs > 0 else None)


@train_app.command("all")
def train_all_cmd(
    events: EventsOpt = None, reviews: ReviewsOpt = None, as_of: AsOfOpt = None, experiment: ExperimentOpt = None,
    store: StoreOpt = None,
) -> None:
    """All three families, one after another; one JSON object with every model's metrics."""
    _run_training(Family.all, events, reviews, as_of, experiment, store)


def _decisions_and_events(store: Path | None, decisions: Path | None, events: Path | None, command: str
                          ) -> tuple[Any, Any, str]:
    """(decision log, events with profile ids, where they came from): a store's own, or two files
    (a decision log as `features.store.DECISION_COLUMNS`, CSV or parquet, and canonical events)."""
    if store is not None and (decisions is not None or events is not None):
        raise UserError("give either --store or --decisions with --events, not both")
    if store is None and (decisions is None or events is None):
        raise UserError("give --store, or --decisions FILE and --events FILE")
    if store is not None:
        _existing(store, "store")
        with _opened_store(store, command) as db:
            log = db.decisions()
        return log, _store_events(store), str(store)
    assert decisions is not None and events is not None
    log = _read_table(decisions)
    ev = _load_events(events)
    from features.schema import PROFILE_ID

    if PROFILE_ID not in ev.columns:
        from features.identity import resolve_identities

        ev = resolve_identities(ev)
    return log, ev, f"{decisions} + {events}"


DecisionsOpt = Annotated[Path | None, typer.Option(help="A decision log file (CSV or parquet; the store's "
                                                        "decision columns), with --events.")]
WindowOpt = Annotated[float, typer.Option(min=0.001, help="Days after each decision its outcome is measured in.")]


@train_app.command("uplift")
def train_uplift_cmd(
    events: EventsOpt = None,
    decisions: DecisionsOpt = None,
    store: StoreOpt = None,
    window_days: WindowOpt = 7.0,
    budget: Annotated[float, typer.Option(min=0.001, max=1.0, help="Contact budget of uplift@k: the top "
                                                                   "share contacted.")] = 0.2,
    experiment: ExperimentOpt = None,
) -> None:
    """Uplift T-learner (LightGBM) on decisions with a holdout; registered as mirror-uplift, champion only
    when its Qini beats propensity ranking and random order on held-out customers (training.uplift)."""
    mod = _module("training.uplift", "train uplift")
    with _user_errors():
        log, ev, _ = _decisions_and_events(store, decisions, events, "train uplift")
        config = _config(mod.UpliftConfig, window_days=window_days, budget=budget, experiment=experiment)
        _tracking(config.experiment)
        results = _results(mod.train_uplift(config, log, ev))
    _report(results)


# ---------------------------------------------------------------------------------------------
# predict / models
# ---------------------------------------------------------------------------------------------
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "--model-uri",
    help="NAME (its champion), NAME@ALIAS, NAME/VERSION, or a models:/ or runs:/ URI.")]


def _out_path(out: Path) -> Path:
    if out.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UserError(f"--out: write a .csv or .parquet file (got {out})")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


@predict_app.command("sentiment")
def predict_sentiment_cmd(
    input: Annotated[Path, typer.Option("--input", help="CSV or parquet with a text column.")],
    text_column: Annotated[str, typer.Option(help="Name of the text column.")],
    out: Annotated[Path, typer.Option(
        help="Output CSV or parquet: the input's columns unchanged, then sentiment_label, sentiment_p_negative, "
             "sentiment_p_neutral, sentiment_p_positive, sentiment_score.")],
    model: ModelOpt = None,
    prefix: Annotated[str, typer.Option(
        help="Prefix of the added columns; an input that already has one of them is refused, not "
             "overwritten.")] = "sentiment_",
) -> None:
    """Score texts with the champion sentiment model (or --model)."""
    from features.schema import SENTIMENT_MODEL

    with _user_errors():
        _existing(input, "input file")
        header = _read_columns(input)
        _need_columns(header, input, {"--text-column": text_column})
        mod = _module("training.sentiment", "predict sentiment")
        fn = _function(mod, "predict_sentiment_csv", "predict sentiment")
        from training.registry import configure_tracking, model_uri

        configure_tracking()
        uri = model_uri(model or SENTIMENT_MODEL)
        try:
            fn(input, text_column, _out_path(out), uri, prefix=prefix)
        except Exception as exc:
            if type(exc).__name__ == "MlflowException":
                raise UserError(f"cannot load {uri}: {_first_line(exc)} (train one with `mirror train sentiment`)"
                                ) from exc
            raise
    typer.echo(f"wrote {out}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@predict_app.command("propensity")
def predict_propensity_cmd(
    model: Annotated[str, typer.Option(
        "--model", help="A registered propensity model: NAME (its champion), NAME@ALIAS or NAME/VERSION "
                        "(e.g. mirror-churn, mirror-propensity-converted@champion, mirror-churn/3).")],
    features: Annotated[Path, typer.Option(help="A table (CSV/parquet) with the model's feature columns.")],
    out: Annotated[Path, typer.Option(
        help="Output CSV or parquet: the table's columns unchanged, then <prefix>score (probability of the "
             "positive class) and <prefix>model (NAME/VERSION).")],
    prefix: Annotated[str, typer.Option(
        help="Prefix of the added columns; a table that already has one of them is refused.")] = "propensity_",
) -> None:
    """Batch-score a feature table with any registered propensity model."""
    with _user_errors():
        table = _read_table(features)
        mod = _module("training.propensity", "predict propensity")
        from training.registry import configure_tracking, resolve_model

        configure_tracking()
        uri, label = resolve_model(model)
        _out_path(out)
        try:
            scored = mod.score_table(uri, table, prefix=prefix, label=label, what=str(features))
        except Exception as exc:
            if type(exc).__name__ == "MlflowException":
                raise UserError(f"cannot load {label}: {_first_line(exc)}") from exc
            raise
        if out.suffix.lower() == ".csv":
            scored.to_csv(out, index=False)
        else:
            scored.to_parquet(out, index=False)
    typer.echo(f"wrote {len(scored)} scored rows ({label}) to {out}")


@app.command()
def models() -> None:
    """List registered models, their versions, which is champion, and the promotion metric."""
    from training.registry import configure_tracking, list_models

    uri = configure_tracking()
    table = list_models()
    if not len(table):
        typer.echo(f"no registered models in {uri}")
        return
    view = table.assign(
        champion=table["champion"].map({True: "*", False: ""}),
        metric=[f"{n}={v:.4g}" if n else "" for n, v in zip(table["metric_name"], table["metric"], strict=True)],
    )[["name", "version", "champion", "metric"]]
    typer.echo(view.to_string(index=False))


# ---------------------------------------------------------------------------------------------
# store and catalog
# ---------------------------------------------------------------------------------------------
@contextmanager
def _opened_store(store: Path, command: str) -> Iterator[Any]:
    """The SQLite profile store at `store`, closed after the block.

    A file that is not an SQLite database (or cannot be opened) is a one-line error naming it, not a
    traceback, and not a service whose worker restarts forever on it.
    """
    import sqlite3

    store_mod = _module("features.store", command)
    try:
        db = store_mod.SQLiteProfileStore(store)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"store {store} is not a usable SQLite database: {exc}") from exc
    try:
        yield db
    except sqlite3.DatabaseError as exc:
        raise UserError(f"store {store} is not a usable SQLite database: {exc}") from exc
    finally:
        db.close()


@app.command("export-events")
def export_events_cmd(
    store: Annotated[Path, typer.Option(help="Online profile store (SQLite) to export.")],
    out: Annotated[Path, typer.Option(help="Parquet file to write (canonical columns + profile_id).")],
) -> None:
    """Write every event the store holds to a parquet file, for training: never an erased person's.

    Train from it (`mirror train ... --events FILE`) or straight from the store (`--store`); either way the
    profile ids are the store's own.  Replace an old events file with it after erasures, so that no seed
    or training reads erased people again.
    """
    with _user_errors():
        _existing(store, "store")
        if out.suffix.lower() not in (".parquet", ".pq"):
            raise UserError(f"--out: the export is parquet; name the file *.parquet (got {out})")
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with _opened_store(store, "export-events") as db:
            n = db.export_events_to(out)
    typer.echo(f"wrote {n} events from {store} to {out} in {time.perf_counter() - t0:.1f}s")


def _read_catalog(path: Path) -> Any:
    """A catalog file (CSV or parquet) as read by features.catalog, unvalidated."""
    from features.catalog import read_catalog

    _existing(path, "catalog file")
    try:
        return read_catalog(path)
    except OSError as exc:  # unreadable (permissions, a folder that is not a parquet data set, ...)
        raise UserError(f"cannot read catalog file {path}: {exc}") from exc
    except ValueError as exc:
        raise UserError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from exc


def _unknown_catalog_columns(frame: Any, path: Path) -> None:
    """A column the catalog does not know is the file's problem, not each row's: one line naming it."""
    from features.catalog import CATALOG_COLUMNS

    unknown = [str(c) for c in frame.columns if c not in CATALOG_COLUMNS]
    if unknown:
        raise UserError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))} "
                        f"(catalog columns: {', '.join(CATALOG_COLUMNS)})")


def _load_catalog(store: Path, path: Path, command: str) -> tuple[int, list[dict[str, Any]]]:
    """Validate `path` and upsert its good rows into `store`: (rows upserted, rejected-row errors)."""
    frame = _read_catalog(path)
    _unknown_catalog_columns(frame, path)
    store.parent.mkdir(parents=True, exist_ok=True)
    with _opened_store(store, command) as db:
        result = db.upsert_items(frame)
    return int(result.upserted), result.errors.to_dict("records")


def _rejected_line(error: dict[str, Any]) -> str:
    """One rejected row of a catalog load: row (0-based, in file order), item_id, field, reason."""
    import pandas as pd

    from features.catalog import ITEM_ID
    from features.schema import ERROR_FIELD, ERROR_REASON, ERROR_ROW

    item = error.get(ITEM_ID)
    item = "" if item is None or pd.isna(item) else item
    return f"rejected: row {error.get(ERROR_ROW)} {ITEM_ID}={item} {error.get(ERROR_FIELD)}: {error.get(ERROR_REASON)}"


catalog_app = typer.Typer(help="The product catalog: names, category paths, flags and stock.",
                          no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("load")
def catalog_load_cmd(
    file: Annotated[Path, typer.Argument(help="Catalog file, CSV or parquet (columns of features.catalog).")],
    store: Annotated[Path, typer.Option(envvar="MIRROR_STORE", help="Online profile store (SQLite).")] = Path(
        DEFAULT_STORE
    ),
) -> None:
    """Validate a catalog and upsert its items into the store.

    Good rows are kept even when other rows are rejected: each rejected row is printed (row, item_id,
    field, reason) and the exit code is then 1, so a script notices; fix those rows and load again
    (loading is an upsert by item_id).
    """
    with _user_errors():
        upserted, errors = _load_catalog(store, file, "catalog load")
    from features.schema import ERROR_ROW

    rows = {e.get(ERROR_ROW) for e in errors}
    typer.echo(f"loaded {upserted} items from {file} into {store}; {len(rows)} rows rejected")
    for e in errors:
        typer.echo(_rejected_line(e), err=True)
    raise typer.Exit(1 if errors else 0)


# ---------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------
#: Seconds the server gets to stop its workers after SIGTERM before everything left is killed.
STOP_GRACE_S = 20.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _seed_store(store: Path, events: Path) -> None:
    """Load events into the store when it holds none (the store shows its own progress bar).

    The store's `load_events` drops the events of erased people (their tombstoned identifiers and event
    ids) exactly as a live append does, so a seed from an old events file never brings them back; how many
    were skipped is said (a count only).
    """
    with _opened_store(store, "serve") as db:
        if db.has_events():
            typer.echo(f"store {store} already holds events; not seeding", err=True)
            return
        df = _load_events(events)
        result = db.load_events(df, validated=True)
        skipped = f"; {result.suppressed} events of erased profiles skipped" if result.suppressed else ""
        typer.echo(f"seeded {store} with {result.accepted} events ({len(result.profile_ids)} profiles){skipped}",
                   err=True)


def _example_customer(store: Path, events: Path | None) -> str | None:
    """A real customer id to put in the examples: from the events file, else from the store."""
    from features.schema import CUSTOMER_ID, EVENT_TYPE, PURCHASE

    try:
        if events is not None and events.exists():
            from features.schema import read_events

            df = read_events(events)
        else:
            with _opened_store(store, "serve") as db:
                df = db.export_events()
    except Exception:  # noqa: BLE001 - examples are a convenience; fall back to a placeholder
        return None
    if CUSTOMER_ID not in df or not df[CUSTOMER_ID].notna().any():
        return None
    buyers = df.loc[(df[EVENT_TYPE] == PURCHASE) & df[CUSTOMER_ID].notna(), CUSTOMER_ID]
    pool = buyers if len(buyers) else df[CUSTOMER_ID].dropna()
    return str(pool.value_counts().index[0])


def _example_item(events: Path | None) -> str | None:
    from features.schema import ITEM_ID, read_events

    try:
        if events is None or not events.exists():
            return None
        items = read_events(events)[ITEM_ID].dropna()
        return str(items.value_counts().index[0]) if len(items) else None
    except Exception:  # noqa: BLE001 - placeholder instead
        return None


def _example_record(store: Path, item_id: str | None) -> dict[str, Any] | None:
    """The store's catalog record of the example item (else its first), for a PUT /items that changes
    nothing; None when the store holds no catalog."""
    try:
        with _opened_store(store, "serve") as db:
            items = db.catalog()
        item = (items.get(item_id) if item_id is not None else None) or next(iter(items), None)
    except Exception:  # noqa: BLE001 - examples are a convenience; fall back to a demo record
        return None
    if item is None:
        return None
    return {k: v for k, v in dataclasses.asdict(item).items() if v is not None}


def example_calls(base_url: str, customer_id: str, item_id: str,
                  catalog_record: dict[str, Any] | None = None) -> list[str]:
    """curl calls for every public endpoint, for a real customer and item (bodies as serving/api.py).

    `catalog_record` is an item as the catalog holds it, so the PUT /items example rewrites what is
    there; without one it adds a demo item rather than overwrite a real item with made-up fields.
    """
    from features import catalog as cat

    j = "-H 'Content-Type: application/json'"
    at = datetime.now(UTC)
    now = at.isoformat(timespec="seconds")  # a view happening now: it shows in /recommend
    # one id per printing: the ts differs between printings, so a fixed id pasted from a second
    # printing would be the same id with other content (rejected); the same printing pasted twice
    # stays one event (a duplicate, answered 200)
    event_id = f"demo-{at:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    record = catalog_record or {cat.ITEM_ID: "demo-item-1", cat.NAME: "Demo item", cat.CATEGORY: "demo",
                                cat.PRICE: 9.99, cat.CURRENCY: "USD", cat.IN_STOCK: True}

    def post(path: str, body: dict[str, Any], method: str = "POST") -> str:
        return f"curl -s -X {method} {base_url}/{path} {j} -d '{json.dumps(body)}'"

    return [
        post("recommend", {"customer_id": customer_id, "k": 5, "channel": "web"}),
        post("similar_items", {"item_id": item_id, "k": 5}),
        post("next_best_action", {"customer_id": customer_id, "channel": "web"}),
        # marketing email needs its own opt-in: grant it, then ask for the email decision
        post("consent", {"customer_id": customer_id, "purpose": "email_marketing", "granted": True}, "PUT"),
        post("next_best_action", {"customer_id": customer_id, "channel": "email"}),
        post("scores", {"customer_ids": [customer_id]}),
        post("events", {"event": {"event_id": event_id, "ts": now, "channel": "web",
                                  "event_type": "view", "customer_id": customer_id, "item_id": item_id}}),
        post("items", {"items": [record]}, "PUT"),
        f"curl -s '{base_url}/profiles/{customer_id}?by=customer_id'",
    ]


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _die_with(parent: int) -> Any:
    """A preexec_fn: the kernel sends the server SIGTERM when `mirror serve` dies, even by SIGKILL.

    SIGTERM, not SIGKILL: BentoML's arbiter then stops its workers, which run in sessions of their own
    and would otherwise outlive it, holding the port.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the wrapper died before prctl took effect
            os._exit(1)

    return preexec


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc; empty elsewhere), children before grandchildren."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop(0)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:  # gone meanwhile
                continue
            out += kids
            todo += kids
    return out


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def _stop_server(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM to the server's process group (BentoML then stops its workers); after `grace_s`, SIGKILL to
    the group and to every descendant (the workers are in sessions of their own). Returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # stuck, or a second Ctrl-C: no more waiting
        pass
    workers = _descendants(proc.pid)  # read while the arbiter lives: afterwards they are init's
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    _signal(workers, signal.SIGKILL)
    return proc.wait()


class _Terminated(Exception):
    """SIGTERM to `mirror serve`: unwind like Ctrl-C, stopping the server on the way out."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise _Terminated


def _server_env(store: Path, uri: str, port: int) -> dict[str, str]:
    """The server's environment: its store, models and port, and a BentoML home of its own.

    BentoML clears part of its home when a server starts, so two instances sharing one deleted each
    other's task results: unless the operator set BENTOML_HOME, each store gets `<store>.bentoml/`.
    """
    env = {**os.environ, "MIRROR_STORE": str(store.resolve()), "MLFLOW_TRACKING_URI": uri,
           "MIRROR_PORT": str(port)}
    if not os.environ.get("BENTOML_HOME"):
        home = store.resolve().with_name(store.name + ".bentoml")
        home.mkdir(parents=True, exist_ok=True)
        env["BENTOML_HOME"] = str(home)
    return env


@app.command()
def serve(
    port: Annotated[int, typer.Option(envvar="MIRROR_PORT", min=1, max=65535, help="HTTP port.")] = DEFAULT_PORT,
    store: Annotated[Path, typer.Option(envvar="MIRROR_STORE", help="Online profile store (SQLite).")] = Path(
        DEFAULT_STORE
    ),
    events: Annotated[Path | None, typer.Option(help="Events to seed the store with when it is empty.")] = None,
    catalog: Annotated[Path | None, typer.Option(
        help="Catalog (CSV or parquet) to upsert into the store before starting; rejected rows are "
             "reported and skipped, good rows kept.")] = None,
    examples: Annotated[bool, typer.Option(help="Print example curl calls once ready.")] = False,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for /readyz.")] = 300.0,
) -> None:
    """Run the BentoML service in the foreground (Ctrl-C or SIGTERM stops it, and it never outlives this
    command: the server stops with it however it ends, kill -9 included)."""
    from training.registry import configure_tracking

    with _user_errors():
        store.parent.mkdir(parents=True, exist_ok=True)
        with _opened_store(store, "serve"):  # a file that is not a store fails here, in one line
            pass
        if events is not None:
            _existing(events, "events file")
            _seed_store(store, events)
        if catalog is not None:
            upserted, errors = _load_catalog(store, catalog, "serve")
            typer.echo(f"loaded {upserted} catalog items from {catalog} into {store}", err=True)
            for e in errors:
                typer.echo(f"warning: {_rejected_line(e)}", err=True)
        uri = configure_tracking()
    env = _server_env(store, uri, port)
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET, "--port", str(port)]
    typer.echo(f"starting {' '.join(cmd)} (store {store}, models from {uri})", err=True)
    # its own process group, so a Ctrl-C in this terminal reaches only us and we stop it in order
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with(os.getpid()))
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    base = f"http://127.0.0.1:{port}"
    code: int | None = None
    try:
        deadline = time.monotonic() + ready_timeout
        while not _ready(f"{base}/readyz"):
            if proc.poll() is not None:
                _fail(f"the service exited with code {proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                typer.echo(f"warning: {base}/readyz not ready after {ready_timeout:.0f}s; still running", err=True)
                break
            time.sleep(0.5)
        else:
            typer.echo(f"Mirror is ready on {base}", err=True)
        if examples:
            customer = _example_customer(store, events) or "<customer_id>"
            item = _example_item(events) or "<item_id>"
            typer.echo("\nExample calls:")
            for line in example_calls(base, customer, item, _example_record(store, item)):
                typer.echo(f"  {line}")
        code = proc.wait()
    except (KeyboardInterrupt, _Terminated):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stop short
        code = _stop_server(proc)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        _stop_server(proc)  # whatever ended us (an error, _fail): the server does not outlive this command
    raise typer.Exit(code if code and code > 0 else 0)


@report_app.command("attribution")
def report_attribution(
    store: Annotated[Path, typer.Option(help="Online profile store (SQLite) the service records served lists in.")],
    since: Annotated[str | None, typer.Option(help="Only lists served from this date or time on (UTC unless "
                                                   "it says otherwise).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the report to this CSV file.")] = None,
) -> None:
    """Lists served, items shown, clicks, CTR, add-to-carts, purchases, conversion and revenue per model
    version and surface, from the events that echo a list's `recommendation_id` (training.report)."""
    with _user_errors():
        _existing(store, "store")
        start = _timestamp(since, "--since")
        if out is not None and out.suffix.lower() != ".csv":
            raise UserError(f"--out: the report is CSV; name the file *.csv (got {out})")
        report = _module("training.report", "report attribution")
        with _opened_store(store, "report attribution") as db:
            table = report.attribution_report(db.recommendations(since=start), db.attributed_events(since=start))
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(out, index=False)
    if not len(table):
        typer.echo(f"no served lists in {store}" + (f" since {start.isoformat()}" if start is not None else ""))
    else:
        typer.echo(table.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-"))
    if out is not None:
        typer.echo(f"wrote {len(table)} rows to {out}", err=True)


@report_app.command("lift")
def report_lift(
    store: Annotated[Path | None, typer.Option(help="Online profile store (SQLite): its decision log and "
                                                    "events.")] = None,
    decisions: DecisionsOpt = None,
    events: EventsOpt = None,
    window_days: WindowOpt = 7.0,
    experiment: ExperimentOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write the report to this CSV file.")] = None,
    log_mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the table and plot to "
                                                                          "MLflow.")] = True,
) -> None:
    """Did acting pay? Per action and channel: conversion and revenue per customer of treated against
    held-out decisions in the window after each, lift with 95% intervals (normal approximation), and a
    plot, logged to MLflow (training.lift)."""
    lift = _module("training.lift", "report lift")
    with _user_errors():
        if out is not None and out.suffix.lower() != ".csv":
            raise UserError(f"--out: the report is CSV; name the file *.csv (got {out})")
        log, ev, source = _decisions_and_events(store, decisions, events, "report lift")
        if not len(log):
            raise UserError(f"no decisions in {source}")
        import pandas as pd

        window = pd.Timedelta(days=window_days)
        table = lift.lift_report(log, ev, window)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(out, index=False)
        run = None
        if log_mlflow:
            _tracking(experiment or "mirror-lift")
            run = lift.log_lift_report(table, window=window, experiment=experiment or "mirror-lift", source=source)
    typer.echo(table.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-"))
    typer.echo(f"intervals: 95%, {lift.CI_METHOD}; window {window_days:g} days", err=True)
    if run is not None:
        typer.echo(f"logged to MLflow run {run.run_id}", err=True)
    if out is not None:
        typer.echo(f"wrote {len(table)} rows to {out}", err=True)


def main() -> None:  # pragma: no cover - console entry alternative
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
