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

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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


@dataclass(frozen=True)
class PromotionDecision:
    """What happened to a newly registered version, and why."""

    promoted: bool
    reason: str
    version: str
    champion_version: str | None
    champion_score: float | None
    new_score: float


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


def _current_champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None


def _recorded_score(client: Any, mv: Any, metric: str) -> float | None:
    """The score recorded when `mv` was registered, else its run's metric of that name."""
    tags = getattr(mv, "tags", None) or {}
    if tags.get(TAG_METRIC) == metric and TAG_SCORE in tags:
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
) -> PromotionDecision:
    """Register `model_uri` under `name`; alias it `champion` only if it beats the current one.

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
    if math.isnan(new_score):
        promoted = False
        reason = f"not promoted: new {metric} is NaN (evaluation failed)"
        champion_version = str(champion.version) if champion is not None else None
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
    for key, value in ((TAG_PROMOTED, str(promoted).lower()), (TAG_REASON, reason)):
        client.set_model_version_tag(name, version, key, value)
    if run_id:
        for key, value in (
            (TAG_PROMOTED, str(promoted).lower()),
            (TAG_REASON, reason),
            (TAG_MODEL_NAME, name),
            (TAG_VERSION, version),
        ):
            client.set_tag(run_id, key, value)
    return PromotionDecision(
        promoted=promoted,
        reason=reason,
        version=version,
        champion_version=champion_version,
        champion_score=champion_score,
        new_score=new_score,
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
            metric_name = tags.get(TAG_METRIC)
            score = _recorded_score(client, mv, metric_name) if metric_name else None
            rows.append(
                {
                    "name": rm.name,
                    "version": int(mv.version),
                    "aliases": ",".join(aliases),
                    "champion": CHAMPION_ALIAS in aliases,
                    "run_id": mv.run_id or "",
                    "metric_name": metric_name or "",
                    "metric": float("nan") if score is None else score,
                    "created": pd.Timestamp(mv.creation_timestamp or 0, unit="ms", tz="UTC"),
                }
            )
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in LIST_COLUMNS})
    out = pd.DataFrame(rows, columns=list(LIST_COLUMNS))
    return out.sort_values(["name", "version"], kind="stable").reset_index(drop=True)

