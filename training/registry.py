"""MLflow tracking and registry glue: where runs go, and when a new model becomes the champion.

Serving loads `models:/<name>@champion` and nothing else, so this module is the one gate between
training and production: a new version takes the alias only when it beats the current champion on
the *same* evaluation (the caller re-scores the champion on its own held-out data).  Every
decision is written onto the run and the model version, so `mlflow ui` shows why.

Store: MLflow 3.x refuses the plain file store (`file:./mlruns`) unless `MLFLOW_ALLOW_FILE_STORE`
is set, and its registry is in maintenance mode there, so the default is SQLite inside the
project's `mlruns/` folder, with artifacts beside it:

    sqlite:///<project root>/mlruns/mlflow.db      (artifacts: <project root>/mlruns/<experiment id>/)

`mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` shows it.  A `file:` URI (tests, old
setups) still works: `configure_tracking` opts in to the file store for this process and its
children.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlparse

import pandas as pd

from features.schema import CHAMPION_ALIAS

TRACKING_URI_ENV: Final = "MLFLOW_TRACKING_URI"
ALLOW_FILE_STORE_ENV: Final = "MLFLOW_ALLOW_FILE_STORE"
MLRUNS_DIR: Final = "mlruns"
DB_NAME: Final = "mlflow.db"

# Tags written on runs and model versions (visible in the MLflow UI).
TAG_PROMOTED: Final = "mirror.promoted"
TAG_REASON: Final = "mirror.promotion_reason"
TAG_METRIC: Final = "mirror.metric"
TAG_SCORE: Final = "mirror.score"
TAG_HIGHER_IS_BETTER: Final = "mirror.higher_is_better"
TAG_MODEL_NAME: Final = "mirror.model_name"
TAG_VERSION: Final = "mirror.model_version"
TAG_LOST_TO_BASELINE: Final = "mirror.lost_to_baseline"   # the baseline that beat the model, when one did
TAG_PIPELINE: Final = "mirror.pipeline"

# ---------------------------------------------------------------------------------------------
# One naming scheme for every pipeline's metrics, datasets and runs (MLflow shows these names)
# ---------------------------------------------------------------------------------------------
#: Splits, also the `context` of the datasets a run logs (`mlflow.log_input`): what a model was fitted
#: on, what tuned it (early stopping, calibration, weights), and the held-out data its metrics come from.
TRAINING: Final = "training"
VALIDATION: Final = "validation"
TEST: Final = "test"
SPLITS: Final[tuple[str, ...]] = (TRAINING, VALIDATION, TEST)
BASELINE_PREFIX: Final = "baseline_"
_METRIC_KEY = re.compile(rf"^(?:{BASELINE_PREFIX}(?P<who>.+?)_)?(?P<split>{'|'.join(SPLITS)})_(?P<metric>.+)$")


def metric_name(metric: str, split: str = TEST) -> str:
    """`<split>_<metric>` with MLflow-safe characters: ("ndcg@10", "test") -> "test_ndcg_at_10"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return f"{split}_{metric.replace('@', '_at_')}"


def baseline_metric_name(baseline: str, metric: str, split: str = TEST) -> str:
    """`baseline_<baseline>_<split>_<metric>`: a baseline fitted and scored in the same run."""
    return f"{BASELINE_PREFIX}{baseline}_{metric_name(metric, split)}"


def split_metrics(metrics: Mapping[str, float], split: str = TEST) -> dict[str, float]:
    """Every metric of one evaluation named by `metric_name` (numbers as floats)."""
    return {metric_name(k, split): float(v) for k, v in metrics.items()}


def parse_metric_name(key: str) -> tuple[str, str, str] | None:
    """("model" or the baseline's name, split, metric) of a logged metric key; None for other keys
    (timings such as `fit_seconds`).  The split token makes baseline names with underscores unambiguous."""
    m = _METRIC_KEY.match(key)
    if m is None:
        return None
    return m["who"] or "model", m["split"], m["metric"]


def log_metrics(metrics: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]]) -> None:
    """Log a TrainResult's metrics (already `<split>_<metric>`) and its baselines' under their prefix;
    non-finite values are left out (MLflow stores NaN, but no chart or comparison can use it)."""
    import mlflow

    def finite(m: Mapping[str, float]) -> dict[str, float]:
        return {k: float(v) for k, v in m.items() if v is not None and math.isfinite(float(v))}

    mlflow.log_metrics(finite(metrics))
    for base, m in baselines.items():
        mlflow.log_metrics({f"{BASELINE_PREFIX}{base}_{k}": v for k, v in finite(m).items()})


def run_name(pipeline: str, now: datetime | None = None) -> str:
    """A readable run name, `<pipeline>-YYYY-MM-DD-HHMM` (UTC), e.g. `recommender-2026-12-02-1530`."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{pipeline}-{when:%Y-%m-%d-%H%M}"


#: Rows the logged dataset's schema is inferred from (MLflow inspects every value: minutes on 1M rows).
SCHEMA_SAMPLE_ROWS: Final = 1000


def frame_digest(frame: pd.DataFrame) -> str:
    """A content hash of every row and column (MLflow's own digest maps every cell to its type in Python)."""
    h = hashlib.md5(usedforsecurity=False)
    h.update(repr((list(map(str, frame.columns)), frame.shape)).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def log_dataset(frame: pd.DataFrame, context: str, *, name: str, source: str | os.PathLike[str] | None = None,
                targets: str | None = None, tags: Mapping[str, str] | None = None) -> None:
    """`mlflow.log_input` of `frame` (metadata only: name, digest, schema, row count, source; no rows).

    `source`: the file the frame was read from, so that a notebook reads the champion's own data back
    (`dataset_source`); without one MLflow records the code that ran.  `context` is one of SPLITS.
    """
    import mlflow

    if context not in SPLITS:
        raise ValueError(f"context must be one of {SPLITS}; got {context!r}")
    from mlflow.types.utils import _infer_schema

    if not len(frame):
        return  # an empty window (no validation data, say): nothing to describe
    uri = None if source is None else Path(source).resolve().as_uri()
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways", pandas deprecations
        warnings.simplefilter("ignore")
        ds = mlflow.data.from_pandas(frame, source=uri, name=name, targets=targets, digest=frame_digest(frame))
        ds.__dict__["schema"] = _infer_schema(frame.head(SCHEMA_SAMPLE_ROWS))  # the cached property, sampled
        mlflow.log_input(ds, context=context, tags=dict(tags or {}))


@dataclass(frozen=True)
class LoggedDataset:
    """A dataset as a run logged it: enough to read the same data back and check it is the same."""

    name: str
    context: str
    digest: str
    rows: int | None
    source: str | None       # local path of the file it was read from; None when not from a file


def logged_dataset(run_id: str, context: str = TEST) -> LoggedDataset | None:
    """The `context` dataset a run logged (None when it logged none)."""
    import json

    import mlflow

    for di in mlflow.get_run(run_id).inputs.dataset_inputs:
        if not any(t.key == "mlflow.data.context" and t.value == context for t in di.tags):
            continue
        ds = di.dataset
        try:
            uri = json.loads(ds.source or "{}").get("uri")
        except (ValueError, AttributeError):
            uri = None
        try:
            rows = json.loads(ds.profile or "{}").get("num_rows")
        except (ValueError, AttributeError):
            rows = None
        path = unquote(urlparse(uri).path) if uri and uri.startswith("file:") else None
        return LoggedDataset(ds.name, context, ds.digest, rows, path)
    return None


def dataset_source(run_id: str, context: str = TEST) -> str | None:
    """The local path of the file a run's `context` dataset was read from (None: not from a file)."""
    found = logged_dataset(run_id, context)
    return found.source if found is not None else None


LIST_COLUMNS: Final[tuple[str, ...]] = (
    "name",
    "version",
    "aliases",
    "champion",
    "run_id",
    "metric_name",
    "metric",
    "created",
)


def default_tracking_uri(root: str | os.PathLike[str] | None = None) -> str:
    """SQLite in `<root>/mlruns/mlflow.db` (root defaults to the working directory)."""
    base = Path(root) if root is not None else Path.cwd()
    return f"sqlite:///{(base / MLRUNS_DIR / DB_NAME).resolve()}"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    raw = unquote(uri[len("sqlite:///"):])
    return None if raw in ("", ":memory:") else Path(raw)


def _file_store_path(uri: str) -> Path | None:
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    if "://" not in uri and not uri.startswith(("databricks", "sqlite", "postgresql", "mysql")):
        return Path(uri)  # a bare local path means the file store to MLflow
    return None


def configure_tracking(uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at `uri`, else $MLFLOW_TRACKING_URI, else the project store.

    Called explicitly by entry points (never at import).  Creates the local folder a SQLite or
    file store needs, and for a `file:` store sets MLFLOW_ALLOW_FILE_STORE=true so that MLflow 3
    accepts it here and in child processes (the server).  Returns the URI in use.
    """
    import mlflow

    chosen = uri or os.environ.get(TRACKING_URI_ENV) or default_tracking_uri()
    if (db := _sqlite_path(chosen)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    elif (folder := _file_store_path(chosen)) is not None:
        folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault(ALLOW_FILE_STORE_ENV, "true")
    mlflow.set_tracking_uri(chosen)
    mlflow.set_registry_uri(chosen)
    return chosen


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts should live for a local store (beside the database)."""
    if (db := _sqlite_path(uri)) is not None:
        return db.parent.resolve().as_uri()
    return None


def use_experiment(name: str) -> str:
    """Create (if needed) and activate experiment `name`; returns its id.

    For a local SQLite store the artifacts go beside the database rather than into a `mlruns/`
    under whatever the working directory happens to be, so `mlflow ui` and serving find them.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(mlflow.get_tracking_uri())
        location = f"{root}/{_safe(name)}" if root else None
        exp_id = client.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def model_uri(ref: str) -> str:
    """A `models:/` URI for `NAME` (its champion), `NAME@alias` or `NAME/version`; URIs pass unchanged."""
    ref = ref.strip()
    if not ref:
        raise ValueError("model reference must not be empty")
    if "://" in ref or ref.startswith(("models:/", "runs:/")):
        return ref
    if "@" in ref:
        name, _, alias = ref.rpartition("@")
        if not name or not alias:
            raise ValueError(f"model reference {ref!r}: expected NAME@ALIAS")
        return f"models:/{name}@{alias}"
    name, sep, version = ref.rpartition("/")
    if sep and name and version.isdigit():
        return f"models:/{name}/{version}"
    return f"models:/{ref}@{CHAMPION_ALIAS}"


def resolve_model(ref: str) -> tuple[str, str]:
    """(`models:/NAME/VERSION` URI, "NAME/VERSION") of a reference as `model_uri` reads it, the alias
    resolved now so that a run's output names the exact version; ValueError naming what is registered
    when the name, alias or version does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = model_uri(ref)
    if not uri.startswith("models:/"):
        return uri, uri
    body = uri[len("models:/"):]
    client = MlflowClient()
    try:
        if "@" in body:
            name, _, alias = body.rpartition("@")
            version = str(client.get_model_version_by_alias(name, alias).version)
        else:
            name, _, version = body.rpartition("/")
            client.get_model_version(name, version)
    except MlflowException as exc:
        known = sorted(rm.name for rm in client.search_registered_models())
        raise ValueError(f"no registered model version for {ref!r} ({uri}); registered models: "
                         f"{', '.join(known) or 'none'}") from exc
    return f"models:/{name}/{version}", f"{name}/{version}"


@dataclass(frozen=True)
class PromotionDecision:
    """What happened to a newly registered version, and why."""

    promoted: bool
    reason: str
    version: str
    champion_version: str | None
    champion_score: float | None
    new_score: float
    lost_to_baseline: str | None = None   # the baseline that beat it on the same evaluation, if one did


@dataclass(frozen=True)
class TrainResult:
    """What every training pipeline returns: the run, the registered version and its metrics."""

    run_id: str
    model_uri: str
    model_name: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the CLI prints it)."""
        return asdict(self)


def _better(new: float, old: float, higher_is_better: bool) -> bool:
    return new > old if higher_is_better else new < old


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _winning_baseline(new: float, baselines: Mapping[str, float], higher_is_better: bool) -> str | None:
    """The baseline that beats `new` by the most (ties are not losses; NaN baselines are ignored)."""
    scores = {k: float(v) for k, v in baselines.items() if v is not None and not math.isnan(float(v))}
    winners = [k for k, v in scores.items() if _better(v, new, higher_is_better)]
    if not winners or math.isnan(new):
        return None
    return max(winners, key=lambda k: scores[k] if higher_is_better else -scores[k])


def _current_champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None


def _recorded_score(client: Any, mv: Any, metric: str) -> float | None:
    """The score recorded when `mv` was registered, else its run's metric of that name."""
    tags = getattr(mv, "tags", None) or {}
    # versions registered before the `<split>_<metric>` scheme recorded the bare name ("roc_auc")
    legacy = metric.removeprefix(f"{TEST}_")
    if tags.get(TAG_METRIC) in (metric, legacy) and TAG_SCORE in tags:
        try:
            return float(tags[TAG_SCORE])
        except ValueError:
            pass
    if mv.run_id:
        try:
            value = client.get_run(mv.run_id).data.metrics.get(metric)
        except Exception:  # noqa: BLE001 - a deleted run just means no recorded score
            return None
        return None if value is None else float(value)
    return None


def register_and_promote(
    run_id: str,
    model_uri: str,
    name: str,
    metric: str,
    new_score: float,
    *,
    higher_is_better: bool = True,
    evaluate_champion: Callable[[str], float] | None = None,
    baselines: Mapping[str, float] | None = None,
) -> PromotionDecision:
    """Register `model_uri` under `name`; alias it `champion` only if it beats its baselines and the
    current champion.

    `baselines`: the same `metric` of the baselines fitted and scored in the same run on the same
    evaluation (logistic regression, popularity, TF-IDF, ...).  A model worse than any of them is
    registered without the alias whatever the champion is (a model that cannot beat a simple baseline
    must not serve), and the run and version are tagged with that baseline (`TAG_LOST_TO_BASELINE`).
    `evaluate_champion(uri)` re-scores the current champion (`models:/<name>/<version>`) on the
    caller's evaluation, so both numbers come from the same data.  If it raises (an incompatible
    artifact, say) the champion is treated as beatable and the reason says so.  Without the
    callback the champion's recorded score is used, and the reason says that too.  The decision is
    tagged on the run and the new version.
    """
    import mlflow
    from mlflow import MlflowClient

    if not name:
        raise ValueError("model name must not be empty")
    client = MlflowClient()
    champion = _current_champion(client, name)
    new_score = float(new_score)
    mv = mlflow.register_model(
        model_uri,
        name,
        await_registration_for=0,
        tags={
            TAG_METRIC: metric,
            TAG_SCORE: repr(new_score),
            TAG_HIGHER_IS_BETTER: str(higher_is_better).lower(),
        },
    )
    version = str(mv.version)
    direction = "higher" if higher_is_better else "lower"

    champion_version: str | None = None
    champion_score: float | None = None
    lost_to = _winning_baseline(new_score, baselines or {}, higher_is_better)
    if math.isnan(new_score):
        promoted = False
        reason = f"not promoted: new {metric} is NaN (evaluation failed)"
        champion_version = str(champion.version) if champion is not None else None
    elif lost_to is not None:
        promoted = False
        champion_version = str(champion.version) if champion is not None else None
        reason = (f"not promoted: {metric} {_fmt(new_score)} loses to its baseline {lost_to} "
                  f"{_fmt(float(baselines[lost_to]))} on the same evaluation ({direction} is better)")
    elif champion is None:
        promoted = True
        reason = f"promoted: first champion for {name} ({metric}={_fmt(new_score)})"
    else:
        champion_version = str(champion.version)
        if evaluate_champion is not None:
            try:
                champion_score = float(evaluate_champion(f"models:/{name}/{champion_version}"))
                source = "re-evaluated on the same data"
            except Exception as exc:  # noqa: BLE001 - any failure means the champion cannot compete
                champion_score = None
                source = f"could not be re-evaluated ({type(exc).__name__}: {exc})"
        else:
            champion_score = _recorded_score(client, champion, metric)
            source = "recorded score, not re-evaluated" if champion_score is not None else "no recorded score"
        if champion_score is None or math.isnan(champion_score):
            promoted = True
            reason = (
                f"promoted: champion v{champion_version} {source}; treated as beatable "
                f"(new {metric}={_fmt(new_score)})"
            )
        elif _better(new_score, champion_score, higher_is_better):
            promoted = True
            reason = (
                f"promoted: {metric} {_fmt(new_score)} beats champion v{champion_version} "
                f"{_fmt(champion_score)} ({direction} is better; {source})"
            )
        else:
            promoted = False
            reason = (
                f"not promoted: {metric} {_fmt(new_score)} does not beat champion v{champion_version} "
                f"{_fmt(champion_score)} ({direction} is better; {source})"
            )

    if promoted:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    decision_tags = [(TAG_PROMOTED, str(promoted).lower()), (TAG_REASON, reason)]
    if lost_to is not None:
        decision_tags.append((TAG_LOST_TO_BASELINE, lost_to))
    for key, value in decision_tags:
        client.set_model_version_tag(name, version, key, value)
    if run_id:
        for key, value in (*decision_tags, (TAG_MODEL_NAME, name), (TAG_VERSION, version)):
            client.set_tag(run_id, key, value)
    return PromotionDecision(
        promoted=promoted,
        reason=reason,
        version=version,
        champion_version=champion_version,
        champion_score=champion_score,
        new_score=new_score,
        lost_to_baseline=lost_to,
    )


def list_models() -> pd.DataFrame:
    """Every registered version: name, version, aliases, champion, run_id, metric_name, metric, created."""
    from mlflow import MlflowClient

    client = MlflowClient()
    rows: list[dict[str, Any]] = []
    for rm in client.search_registered_models():
        # search_model_versions leaves `aliases` empty on some stores: the registered model has them.
        by_version: dict[str, list[str]] = {}
        for alias, ver in (getattr(rm, "aliases", None) or {}).items():
            by_version.setdefault(str(ver), []).append(alias)
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            aliases = sorted(set(by_version.get(str(mv.version), [])) | set(getattr(mv, "aliases", None) or []))
            tags = getattr(mv, "tags", None) or {}
            promoted_on = tags.get(TAG_METRIC)
            score = _recorded_score(client, mv, promoted_on) if promoted_on else None
            rows.append(
                {
                    "name": rm.name,
                    "version": int(mv.version),
                    "aliases": ",".join(aliases),
                    "champion": CHAMPION_ALIAS in aliases,
                    "run_id": mv.run_id or "",
                    "metric_name": promoted_on or "",
                    "metric": float("nan") if score is None else score,
                    "created": pd.Timestamp(mv.creation_timestamp or 0, unit="ms", tz="UTC"),
                }
            )
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in LIST_COLUMNS})
    out = pd.DataFrame(rows, columns=list(LIST_COLUMNS))
    return out.sort_values(["name", "version"], kind="stable").reset_index(drop=True)

