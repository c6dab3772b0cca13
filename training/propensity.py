"""Churn and purchase propensity: LightGBM in a scikit-learn Pipeline, calibrated, tracked in MLflow.

Two ways in.  From events: labels come from the window after a cutoff and features are the profile
features as of that cutoff, nothing later; the model learns at an earlier cutoff and is validated at a
later one (time-based).  From a data scientist's own table (one row per customer): a stratified split.
Either way logistic regression (and the base rate) are the baselines in the same run, and the logged
model holds only standard sklearn/LightGBM components, so serving loads it without `training`.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.schema import CHURN_MODEL, EVENT_TYPE, PROFILE_ID, PURCHASE, PURCHASE_MODEL, TS
from training.registry import TAG_PIPELINE

Target = Literal["churn", "purchase"]
DEFAULT_HORIZON: dict[str, int] = {"churn": 60, "purchase": 14}
#: The registered names the service loads, by target: a table model registered under one of them
#: (`train_propensity_table(..., serve_as=target)`) is what `/scores` and the decisions then use.
SERVED_MODELS: dict[str, str] = {"churn": CHURN_MODEL, "purchase": PURCHASE_MODEL}
#: The promotion metric, and the baselines (fitted and scored in the same run) the model must not lose to.
PROMOTION_METRIC = "roc_auc"
PROMOTION_BASELINES: tuple[str, ...] = ("logistic_regression", "base_rate")
#: The baseline registered in LightGBM's place when it beats it (`PropensityConfig.fallback_to_baseline`),
#: its artifact in the run, and the run tag naming the version it got.
FALLBACK_BASELINE = "logistic_regression"
FALLBACK_ARTIFACT = "baseline_model"
TAG_FALLBACK_VERSION = "mirror.baseline_version"
#: What `score_table` adds to a table: the positive-class probability and the model that gave it.
SCORE_PREFIX = "propensity_"
SCORE_COLUMNS: tuple[str, ...] = ("score", "model")


@dataclass(frozen=True)
class PropensityConfig:
    """What to predict, over which window, and how the models are fitted."""

    target: Target = "churn"
    horizon_days: int | None = None          # None: 60 for churn, 14 for purchase
    as_of: str | None = None                 # validation cutoff; None: the end of the data minus the horizon
    active_days: int = 90                    # churn: only customers who bought in this window before the cutoff
    train_gap_days: int | None = None        # training cutoff = as_of - gap; None: the horizon (no overlap)
    min_history_days: int = 21               # the training cutoff keeps at least this much history
    validation_size: float = 0.2             # tables: held-out stratified share (the evaluation)
    stop_size: float = 0.2                   # tables: share of the training part for early stopping
    seed: int = 0
    n_estimators: int = 2000                 # an upper bound: early stopping picks the number
    learning_rate: float = 0.03
    num_leaves: int = 15
    min_child_samples: int = 20
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    early_stopping_rounds: int = 100
    calibration: Literal["sigmoid", "isotonic"] = "sigmoid"
    tune: bool = False                       # small grid on inner CV of the training part only
    tune_folds: int = 5
    lr_C: float = 1.0
    experiment: str = "mirror-propensity"
    register: bool = True
    progress: bool = True
    source: str | None = None                # the file the data were read from (logged with the datasets)
    # when LightGBM loses to its logistic-regression baseline, register that baseline (same run, same
    # evaluation) as a candidate of its own: the champion is then never worse than the linear model
    fallback_to_baseline: bool = True

    @property
    def horizon(self) -> int:
        return int(self.horizon_days if self.horizon_days is not None else DEFAULT_HORIZON[self.target])

    def lgbm_params(self) -> dict[str, Any]:
        return {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "subsample": self.subsample,
            "subsample_freq": 1,
            "colsample_bytree": self.colsample_bytree,
            "reg_lambda": self.reg_lambda,
        }


#: Small, fixed grid for `tune=True` (shallow, regularised trees win on small tabular data).
TUNE_GRID: tuple[dict[str, Any], ...] = tuple(
    {"num_leaves": nl, "learning_rate": lr, "min_child_samples": mcs, "reg_lambda": rl}
    for nl in (4, 8, 15)
    for lr in (0.02,)
    for mcs in (20, 60)
    for rl in (1.0, 10.0)
)


# ---------------------------------------------------------------------------------------------
# Labels and the training table (events path)
# ---------------------------------------------------------------------------------------------
def _utc(ts: pd.Timestamp | str) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    if t is pd.NaT:
        raise ValueError("as_of must be a timestamp")
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _check_events(events: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in (TS, EVENT_TYPE) if c not in events.columns]
    if missing:
        raise ValueError(f"events lack required columns: {missing}")
    if not isinstance(events[TS].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"column {TS!r} must be timezone-aware datetimes (validate events first)")
    if PROFILE_ID not in events.columns:
        from features.identity import resolve_identities

        events = resolve_identities(events)
    return events


def make_labels(events: pd.DataFrame, as_of: pd.Timestamp | str, target: Target = "churn",
                horizon_days: int | None = None, active_days: int = 90) -> pd.Series:
    """0/1 label per profile (index PROFILE_ID, sorted), from the window [as_of, as_of + horizon).

    churn: the population is customers with a purchase in [as_of - active_days, as_of); 1 when they
    buy nothing in the next `horizon_days` (default 60).  purchase: the population is every profile
    with an event before as_of; 1 when it buys in the next `horizon_days` (default 14).
    Raises when the data stop before the end of the label window (the labels would be wrong).
    """
    if target not in DEFAULT_HORIZON:
        raise ValueError(f"target must be one of {sorted(DEFAULT_HORIZON)}; got {target!r}")
    horizon = int(horizon_days if horizon_days is not None else DEFAULT_HORIZON[target])
    if horizon <= 0:
        raise ValueError("horizon_days must be positive")
    events = _check_events(events)
    t0 = _utc(as_of)
    t1 = t0 + pd.Timedelta(days=horizon)
    ts = events[TS]
    if len(events) == 0 or ts.max() < t1 - pd.Timedelta(days=1):
        last = ts.max() if len(events) else "no events"
        raise ValueError(f"label window [{t0}, {t1}) needs events until {t1}; the data end at {last}")
    is_purchase = (events[EVENT_TYPE] == PURCHASE).to_numpy(dtype=bool, na_value=False)
    pid = events[PROFILE_ID]
    future_buyers = set(pid[is_purchase & (ts >= t0).to_numpy() & (ts < t1).to_numpy()])
    if target == "churn":
        lookback = t0 - pd.Timedelta(days=active_days)
        population = pid[is_purchase & (ts >= lookback).to_numpy() & (ts < t0).to_numpy()].unique()
        values = [0 if p in future_buyers else 1 for p in population]
    else:
        population = pid[(ts < t0).to_numpy()].unique()
        values = [1 if p in future_buyers else 0 for p in population]
    out = pd.Series(values, index=pd.Index(population, name=PROFILE_ID), name=target, dtype="int64")
    return out.sort_index()


def build_training_table(events: pd.DataFrame, as_of: pd.Timestamp | str, config: PropensityConfig) -> pd.DataFrame:
    """Profile features as of `as_of` (only events before it) joined with the labels after it.

    One row per labelled profile: PROFILE_ID, FEATURE_COLUMNS, and the label column (config.target).
    """
    from features.profiles import FEATURE_COLUMNS, build_profiles

    events = _check_events(events)
    labels = make_labels(events, as_of, config.target, config.horizon, config.active_days)
    before = events.loc[(events[TS] < _utc(as_of)).to_numpy()]
    feats = build_profiles(before, as_of)
    table = feats[[PROFILE_ID, *FEATURE_COLUMNS]].merge(labels.reset_index(), on=PROFILE_ID, how="inner")
    return table.sort_values(PROFILE_ID, kind="stable").reset_index(drop=True)


def cutoffs(events: pd.DataFrame, config: PropensityConfig) -> tuple[pd.Timestamp, pd.Timestamp, str]:
    """(training cutoff, validation cutoff, note).  The training label window ends at the validation
    cutoff when the data allow it; otherwise the gap shrinks to keep `min_history_days` of history
    and the note says how many days of label window overlap."""
    ts = events[TS]
    start, end = ts.min().floor("D"), ts.max().floor("D") + pd.Timedelta(days=1)
    h = pd.Timedelta(days=config.horizon)
    val = _utc(config.as_of) if config.as_of else end - h
    gap = pd.Timedelta(days=config.train_gap_days if config.train_gap_days is not None else config.horizon)
    train = val - gap
    earliest = start + pd.Timedelta(days=config.min_history_days)
    note = ""
    if train < earliest:
        train = earliest
        if train >= val:
            raise ValueError(f"not enough history: need {config.min_history_days} days before a training cutoff "
                             f"that precedes the validation cutoff {val} (data start {start})")
    overlap = (train + h - val).days
    if overlap > 0:
        note = (f"training labels at {train.date()} overlap the validation window by {overlap} days "
                f"(data too short for a {config.horizon}-day gap)")
    return train, val, note


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
_ID_NAME = re.compile(r"(^|[_\s-])id$|^id|ID$|Id$", re.IGNORECASE)


def prepare_table(table: pd.DataFrame, label: str) -> tuple[pd.DataFrame, pd.Series, list[str]]:
    """Features X, 0/1 label y and notes: ids dropped, numeric-looking text made numeric, label mapped.

    Never modifies `table`.
    """
    if label not in table.columns:
        raise ValueError(f"label column {label!r} not in table; columns: {list(table.columns)}")
    y_raw = table[label]
    if y_raw.isna().any():
        raise ValueError(f"label column {label!r} has {int(y_raw.isna().sum())} missing values")
    y = _binary_label(y_raw, label)
    X = table.drop(columns=[label]).copy()
    notes: list[str] = []
    n = len(X)
    for col in list(X.columns):
        s = X[col]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            num = pd.to_numeric(s.astype("string").str.strip().replace("", pd.NA), errors="coerce")
            if s.notna().sum() and num.notna().sum() >= 0.95 * s.notna().sum():
                X[col] = num.astype("float64")
                notes.append(f"{col}: text parsed as numbers ({int(num.isna().sum())} blanks left missing)")
                continue
            if n > 20 and s.nunique(dropna=True) >= 0.9 * n:
                X = X.drop(columns=[col])
                notes.append(f"{col}: dropped (id-like: {s.nunique()} distinct values in {n} rows)")
                continue
            X[col] = s.astype("string").astype(object).where(s.notna(), np.nan)
        elif _ID_NAME.search(str(col)) and s.nunique(dropna=True) >= 0.9 * n and n > 20:
            X = X.drop(columns=[col])
            notes.append(f"{col}: dropped (id-like name, {s.nunique()} distinct values)")
        else:
            X[col] = s.astype("float64")
    if X.shape[1] == 0:
        raise ValueError("no usable feature columns left")
    return X, y, notes


def _binary_label(s: pd.Series, name: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(s):
        return s.astype("int64")
    if pd.api.types.is_numeric_dtype(s):
        vals = set(np.unique(s.to_numpy(dtype=float)))
        if not vals <= {0.0, 1.0}:
            raise ValueError(f"label column {name!r} must be 0/1; got values {sorted(vals)[:5]}")
        return s.astype("int64")
    low = s.astype("string").str.strip().str.lower()
    pos, neg = {"1", "yes", "true", "y", "t"}, {"0", "no", "false", "n", "f"}
    bad = sorted(set(low.unique()) - pos - neg)
    if bad:
        raise ValueError(f"label column {name!r} must be binary (yes/no, true/false, 0/1); got {bad[:5]}")
    return low.isin(pos).astype("int64")


def _preprocessor(X: pd.DataFrame, scale: bool) -> Any:
    """Numeric columns (imputed and scaled for the linear model), categoricals one-hot encoded."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c])]
    cat = [c for c in X.columns if c not in num]
    num_steps: Any = (
        Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]) if scale
        else "passthrough"
    )
    parts: list[tuple[str, Any, list[str]]] = []
    if num:
        parts.append(("num", num_steps, num))
    if cat:
        parts.append(("cat", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
            ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5, max_categories=30,
                                     sparse_output=False)),
        ]), cat))
    return ColumnTransformer(parts, verbose_feature_names_out=True)


def _lgbm(config: PropensityConfig, **overrides: Any) -> Any:
    from lightgbm import LGBMClassifier

    params = {**config.lgbm_params(), **overrides}
    return LGBMClassifier(**params, random_state=config.seed, n_jobs=1, deterministic=True,
                          force_col_wise=True, verbose=-1)


def _fit_lgbm_pipeline(X: pd.DataFrame, y: pd.Series, X_stop: pd.DataFrame, y_stop: pd.Series,
                       config: PropensityConfig, **overrides: Any) -> Any:
    """Pipeline(preprocess, LGBM) with the number of trees chosen by early stopping on the stop set."""
    from lightgbm import early_stopping
    from sklearn.pipeline import Pipeline

    pre = _preprocessor(X, scale=False).fit(X)
    model = _lgbm(config, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.fit(pre.transform(X), y, eval_X=(pre.transform(X_stop),), eval_y=(y_stop,), eval_metric="auc",
                  callbacks=[early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False)])
    return Pipeline([("preprocess", pre), ("model", model)])


def _tune(X: pd.DataFrame, y: pd.Series, config: PropensityConfig) -> tuple[dict[str, Any], dict[str, float]]:
    """Pick LGBM settings by stratified inner CV ROC AUC on the training part only."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(config.tune_folds, shuffle=True, random_state=config.seed)
    folds = list(skf.split(X, y))
    scores: dict[str, float] = {}
    best, best_score = TUNE_GRID[0], -np.inf
    grid: Any = TUNE_GRID
    if config.progress:
        from tqdm.auto import tqdm

        grid = tqdm(TUNE_GRID, desc="tuning LightGBM (inner CV)")
    for params in grid:
        aucs = []
        for tr, te in folds:
            pipe = _fit_lgbm_pipeline(X.iloc[tr], y.iloc[tr], X.iloc[te], y.iloc[te], config, **params)
            aucs.append(roc_auc_score(y.iloc[te], pipe.predict_proba(X.iloc[te])[:, 1]))
        score = float(np.mean(aucs))
        scores[",".join(f"{k}={v}" for k, v in params.items())] = score
        if score > best_score:
            best, best_score = params, score
    return dict(best), scores


def lift_at(y: np.ndarray, p: np.ndarray, fraction: float = 0.1) -> float:
    """Positive rate among the top `fraction` by score over the overall positive rate."""
    y = np.asarray(y, dtype=float)
    base = y.mean()
    if base == 0:
        return float("nan")
    k = max(1, int(np.ceil(fraction * len(y))))
    top = np.argsort(-np.asarray(p), kind="stable")[:k]
    return float(y[top].mean() / base)


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision), Brier score and lift in the top decile."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y)
    one_class = len(np.unique(y)) < 2
    return {
        "roc_auc": float("nan") if one_class else float(roc_auc_score(y, p)),
        "pr_auc": float("nan") if one_class else float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "lift_top_decile": lift_at(y, p, 0.1),
    }


@dataclass(frozen=True)
class FittedPropensity:
    """Everything a run produced, before it is logged."""

    model: Any                      # calibrated pipeline (what is served)
    baseline: Any                   # logistic regression pipeline
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    params: dict[str, Any]
    X_eval: pd.DataFrame
    y_eval: pd.Series
    p_eval: np.ndarray
    notes: list[str] = field(default_factory=list)


def fit_propensity(X_train: pd.DataFrame, y_train: pd.Series, X_stop: pd.DataFrame, y_stop: pd.Series,
                   X_eval: pd.DataFrame, y_eval: pd.Series, config: PropensityConfig) -> FittedPropensity:
    """LGBM (early-stopped on the stop set, then calibrated on it) and the logistic baseline, scored on eval."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    for name, yy in (("training", y_train), ("early-stopping", y_stop)):
        if yy.nunique() < 2:
            raise ValueError(f"the {name} labels hold one class only ({int(yy.sum())} positives of {len(yy)})")
    params: dict[str, Any] = {}
    tuned: dict[str, float] = {}
    if config.tune:
        params, tuned = _tune(X_train, y_train, config)
    pipe = _fit_lgbm_pipeline(X_train, y_train, X_stop, y_stop, config, **params)
    best_iter = int(pipe.named_steps["model"].best_iteration_ or pipe.named_steps["model"].n_estimators)
    model = CalibratedClassifierCV(FrozenEstimator(pipe), method=config.calibration).fit(X_stop, y_stop)
    baseline = Pipeline([("preprocess", _preprocessor(X_train, scale=True)),
                         ("model", LogisticRegression(C=config.lr_C, max_iter=5000))]).fit(X_train, y_train)
    p = model.predict_proba(X_eval)[:, 1]
    p_lr = baseline.predict_proba(X_eval)[:, 1]
    prior = np.full(len(y_eval), float(y_train.mean()))
    metrics = binary_metrics(y_eval, p)
    metrics["roc_auc_uncalibrated"] = binary_metrics(y_eval, pipe.predict_proba(X_eval)[:, 1])["roc_auc"]
    baselines = {"logistic_regression": binary_metrics(y_eval, p_lr), "base_rate": binary_metrics(y_eval, prior)}
    all_params = {**config.lgbm_params(), **params, "best_iteration": best_iter,
                  "n_train": len(y_train), "n_stop": len(y_stop), "n_eval": len(y_eval),
                  "positive_rate_train": round(float(y_train.mean()), 4),
                  "positive_rate_eval": round(float(y_eval.mean()), 4)}
    notes = [f"tuned on inner CV: {params}"] if params else []
    if tuned:
        all_params["tune_scores"] = tuned
    return FittedPropensity(model, baseline, metrics, baselines, all_params, X_eval, y_eval, p, notes)


# ---------------------------------------------------------------------------------------------
# Plots and logging
# ---------------------------------------------------------------------------------------------
def _plots(fit: FittedPropensity, out: Path) -> list[Path]:
    from matplotlib.figure import Figure  # no pyplot: never switches a notebook's backend
    from sklearn.calibration import calibration_curve

    paths = []
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k:", label="perfect")
    p_lr = fit.baseline.predict_proba(fit.X_eval)[:, 1]
    for name, p in (("LightGBM (calibrated)", fit.p_eval), ("logistic regression", p_lr)):
        frac, mean = calibration_curve(fit.y_eval, p, n_bins=10, strategy="quantile")
        ax.plot(mean, frac, "o-", label=name)
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="Calibration (evaluation set)")
    ax.legend()
    paths.append(out / "calibration.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")

    imp = feature_importance(fit.model)
    top = imp.head(20)[::-1]
    fig = Figure(figsize=(6, max(3, 0.3 * len(top))))
    ax = fig.subplots()
    ax.barh(top.index, top.to_numpy())
    ax.set(xlabel="total gain", title="LightGBM feature importance")
    paths.append(out / "feature_importance.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    return paths


def feature_importance(model: Any) -> pd.Series:
    """Total gain per transformed feature of the calibrated pipeline's LightGBM, largest first."""
    pipe = model.estimator.estimator if hasattr(model, "estimator") else model
    pre, lgbm = pipe.named_steps["preprocess"], pipe.named_steps["model"]
    gain = lgbm.booster_.feature_importance(importance_type="gain")
    return pd.Series(gain, index=pre.get_feature_names_out()).sort_values(ascending=False)


#: Module prefixes whose types the served (skops-serialised) model may contain.
TRUSTED_PREFIXES: tuple[str, ...] = ("sklearn.", "lightgbm.", "numpy.", "collections.OrderedDict")


def typical_row(X: pd.DataFrame) -> pd.DataFrame:
    """One row of column medians (numbers) and most common values (the rest), dtypes kept: the logged
    model's input example, so no customer's own row is copied into MLflow (it would outlive erasure)."""
    row = X.head(1).copy()
    for col in X.columns:
        s = X[col]
        value = s.median() if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) else (
            s.mode(dropna=True).iloc[0] if s.notna().any() else s.iloc[0])
        row[col] = pd.Series([value], index=row.index).astype(s.dtype)
    return row


def trusted_types(model: Any) -> list[str]:
    """The non-default types skops must trust to load `model`; only standard sklearn/LightGBM ones allowed."""
    import skops.io

    types = sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))
    bad = [t for t in types if not t.startswith(TRUSTED_PREFIXES)]
    if bad:
        raise TypeError(f"the propensity model holds non-standard types serving cannot trust: {bad}")
    return types


def pinned_requirements() -> list[str]:
    """Explicit, pinned requirements: MLflow's inference runs a subprocess that costs ~10-40 s per log."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("mlflow", "scikit-learn", "lightgbm", "skops", "numpy", "pandas", "scipy"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


def _log_and_register(fit: FittedPropensity, config: PropensityConfig, model_name: str,
                      data_summary: dict[str, Any], tags: dict[str, str],
                      datasets: dict[str, pd.DataFrame] | None = None, label: str | None = None) -> Any:
    """Log the run (params, `<split>_<metric>` metrics, datasets, plots, model) and register it.

    `datasets`: {split: frame with the label column} of what was fitted, early-stopped/calibrated and
    evaluated, logged as MLflow inputs (metadata only) with the data's source file.
    """
    import mlflow
    from mlflow.models import infer_signature

    from training.registry import (
        TrainResult,
        log_dataset,
        log_metrics,
        metric_name,
        register_and_promote,
        run_name,
        split_metrics,
        use_experiment,
    )

    use_experiment(config.experiment)
    metrics = split_metrics(fit.metrics)
    baselines = {b: split_metrics(m) for b, m in fit.baselines.items()}
    with mlflow.start_run(run_name=run_name(f"propensity-{_slug(label or config.target)}")) as run:
        cfg = {k: v for k, v in asdict(config).items() if v is not None}
        mlflow.log_params({f"config.{k}": v for k, v in cfg.items()})
        mlflow.log_params({k: v for k, v in fit.params.items() if k != "tune_scores"})
        log_metrics(metrics, baselines)
        for split, frame in (datasets or {}).items():
            log_dataset(frame, split, name=f"{_slug(label or config.target)}-{split}", source=config.source,
                        targets=label or config.target)
        mlflow.log_dict(data_summary, "data_summary.json")
        if "tune_scores" in fit.params:
            mlflow.log_dict(fit.params["tune_scores"], "tune_scores.json")
        mlflow.set_tags({**tags, "mirror.notes": "; ".join(fit.notes)[:4000]})
        with tempfile.TemporaryDirectory() as tmp:
            for p in _plots(fit, Path(tmp)):
                mlflow.log_artifact(str(p), artifact_path="plots")
        example = typical_row(fit.X_eval)
        signature = infer_signature(example, fit.model.predict_proba(example))
        info = mlflow.sklearn.log_model(fit.model, name="model", signature=signature, input_example=example,
                                        pyfunc_predict_fn="predict_proba",
                                        skops_trusted_types=trusted_types(fit.model),
                                        pip_requirements=pinned_requirements())
        run_id = run.info.run_id
    if not config.register:
        return TrainResult(run_id, info.model_uri, model_name, "", False, "not registered (register=False)",
                           metrics, baselines)
    X_eval, y_eval = fit.X_eval, fit.y_eval

    def evaluate_champion(uri: str) -> float:
        champ = mlflow.sklearn.load_model(uri)
        return binary_metrics(y_eval, champ.predict_proba(X_eval)[:, 1])[PROMOTION_METRIC]

    key = metric_name(PROMOTION_METRIC)
    decision = register_and_promote(
        run_id, info.model_uri, model_name, key, fit.metrics[PROMOTION_METRIC],
        evaluate_champion=evaluate_champion,
        baselines={b: fit.baselines[b][PROMOTION_METRIC] for b in PROMOTION_BASELINES if b in fit.baselines})
    reason = decision.reason
    if config.fallback_to_baseline and decision.lost_to_baseline == FALLBACK_BASELINE:
        with mlflow.start_run(run_id=run_id):  # the same run: its metrics are this model's baseline metrics
            b_info = mlflow.sklearn.log_model(fit.baseline, name=FALLBACK_ARTIFACT, signature=signature,
                                              input_example=example, pyfunc_predict_fn="predict_proba",
                                              skops_trusted_types=trusted_types(fit.baseline),
                                              pip_requirements=pinned_requirements())
        others = {b: fit.baselines[b][PROMOTION_METRIC] for b in PROMOTION_BASELINES
                  if b in fit.baselines and b != FALLBACK_BASELINE}
        fallback = register_and_promote("", b_info.model_uri, model_name, key,
                                        fit.baselines[FALLBACK_BASELINE][PROMOTION_METRIC],
                                        evaluate_champion=evaluate_champion, baselines=others)
        mlflow.MlflowClient().set_tag(run_id, TAG_FALLBACK_VERSION, fallback.version)
        reason = f"{reason}; its {FALLBACK_BASELINE} registered instead as v{fallback.version}: {fallback.reason}"
    return TrainResult(run_id, info.model_uri, model_name, decision.version, decision.promoted, reason,
                       metrics, baselines)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def train_propensity(config: PropensityConfig, events: pd.DataFrame) -> Any:
    """Events path: train at an earlier cutoff, early-stop/calibrate and evaluate at a later one.

    The validation profiles are split in half (stratified, seeded): one half early-stops and
    calibrates, the other is the evaluation (metrics and the champion comparison).
    """
    from features.profiles import FEATURE_COLUMNS

    events = _check_events(events)
    train, stop, ev, (t_train, t_val, note) = event_splits(events, config)
    val = pd.concat([stop, ev])
    y_col = config.target
    cols = list(FEATURE_COLUMNS)
    fit = fit_propensity(train[cols], train[y_col], stop[cols], stop[y_col], ev[cols], ev[y_col], config)
    if note:
        fit = replace(fit, notes=[*fit.notes, note])
    # the cutoffs as params: a notebook rebuilds exactly this evaluation from the run (and its data source)
    fit = replace(fit, params={**fit.params, "train_cutoff": str(t_train), "validation_cutoff": str(t_val)})
    summary = {"events": len(events), "profiles_train": len(train), "profiles_validation": len(val),
               "train_cutoff": str(t_train), "validation_cutoff": str(t_val), "horizon_days": config.horizon,
               "ts_min": str(events[TS].min()), "ts_max": str(events[TS].max())}
    tags = {TAG_PIPELINE: "propensity", "mirror.target": config.target, "mirror.source": "events"}
    datasets = {"training": train[[*cols, y_col]], "validation": stop[[*cols, y_col]], "test": ev[[*cols, y_col]]}
    return _log_and_register(fit, config, SERVED_MODELS[config.target], summary, tags, datasets)


def event_splits(events: pd.DataFrame, config: PropensityConfig
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, tuple[pd.Timestamp, pd.Timestamp, str]]:
    """(training table, validation half, test half, cutoffs): what `train_propensity` fits, early-stops and
    calibrates on, and evaluates; a notebook given the run's config (`config_from_params`) and its data
    rebuilds exactly the same tables."""
    from sklearn.model_selection import train_test_split

    events = _check_events(events)
    t_train, t_val, note = cutoffs(events, config)
    train = build_training_table(events, t_train, config)
    val = build_training_table(events, t_val, config)
    y_col = config.target
    if val[y_col].nunique() < 2 or val[y_col].value_counts().min() < 4:
        raise ValueError(f"validation labels at {t_val} are too one-sided: {val[y_col].value_counts().to_dict()}")
    stop, ev = train_test_split(val, test_size=0.5, stratify=val[y_col], random_state=config.seed)
    return train, stop, ev, (t_train, t_val, note)


def config_from_params(params: dict[str, str]) -> PropensityConfig:
    """The PropensityConfig a run logged (`config.<field>` params), for re-evaluating its model."""
    from dataclasses import fields

    values: dict[str, Any] = {}
    for f in fields(PropensityConfig):
        raw = params.get(f"config.{f.name}")
        if raw is None:
            continue
        default = f.default
        if isinstance(default, bool):
            values[f.name] = raw.lower() == "true"
        elif isinstance(default, int) or (default is None and raw.lstrip("-").isdigit()):
            values[f.name] = int(float(raw))
        elif isinstance(default, float):
            values[f.name] = float(raw)
        else:
            values[f.name] = raw
    return PropensityConfig(**values)


def split_table(X: pd.DataFrame, y: pd.Series, config: PropensityConfig) -> tuple[pd.DataFrame, ...]:
    """(X_train, y_train, X_stop, y_stop, X_eval, y_eval): stratified eval share, then a stop share of train."""
    from sklearn.model_selection import train_test_split

    X_tr, X_ev, y_tr, y_ev = train_test_split(X, y, test_size=config.validation_size, stratify=y,
                                              random_state=config.seed)
    X_fit, X_stop, y_fit, y_stop = train_test_split(X_tr, y_tr, test_size=config.stop_size, stratify=y_tr,
                                                    random_state=config.seed)
    return X_fit, y_fit, X_stop, y_stop, X_ev, y_ev


def table_model_name(label: str) -> str:
    """The registered name of a table model that is not served: `mirror-propensity-<label>`."""
    return f"mirror-propensity-{_slug(label)}"


def check_servable(X: pd.DataFrame, target: str) -> None:
    """Raise ValueError unless the service can feed this model: it computes FEATURE_COLUMNS (numbers)
    for each profile and nothing else, and its canary refuses a model that needs another column."""
    from features.profiles import FEATURE_COLUMNS

    if target not in SERVED_MODELS:
        raise ValueError(f"serve as one of {sorted(SERVED_MODELS)}; got {target!r}")
    unknown = [str(c) for c in X.columns if c not in FEATURE_COLUMNS]
    if unknown:
        raise ValueError(f"the service computes only its profile features (features.profiles.FEATURE_COLUMNS, "
                         f"the columns `mirror features` writes), so it cannot serve a {target} model that needs "
                         f"{', '.join(map(repr, unknown[:8]))}{' ...' if len(unknown) > 8 else ''}; drop those "
                         "columns or build the table with `mirror features`")
    text = [str(c) for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    if text:
        raise ValueError(f"profile feature column(s) {', '.join(map(repr, text))} hold text, not numbers")


def train_propensity_table(config: PropensityConfig, table: pd.DataFrame, label: str,
                           model_name: str | None = None, *, serve_as: Target | None = None) -> Any:
    """Table path: a data scientist's own features (one row per customer) and a binary label column.

    Registered as `mirror-propensity-<label>` unless `model_name` is given; `serve_as` ("churn" or
    "purchase") registers it under the name the service loads for that target (`SERVED_MODELS`), after
    checking that its columns are the service's profile features (`check_servable`).
    """
    X, y, notes = prepare_table(table, label)
    if serve_as is not None:
        if model_name is not None:
            raise ValueError("give either model_name or serve_as, not both")
        check_servable(X, serve_as)
        model_name = SERVED_MODELS[serve_as]
    if y.value_counts().min() < 10:
        raise ValueError(f"label {label!r} needs at least 10 rows of each class; got {y.value_counts().to_dict()}")
    X_fit, y_fit, X_stop, y_stop, X_ev, y_ev = split_table(X, y, config)
    fit = fit_propensity(X_fit, y_fit, X_stop, y_stop, X_ev, y_ev, config)
    fit = replace(fit, notes=[*fit.notes, *notes])
    name = model_name or table_model_name(label)
    summary = {"rows": len(table), "columns_used": list(X.columns), "label": label,
               "positive_rate": round(float(y.mean()), 4), "notes": notes}
    tags = {TAG_PIPELINE: "propensity", "mirror.target": serve_as or label, "mirror.source": "table"}
    datasets = {split: Xs.assign(**{label: ys.to_numpy()}) for split, Xs, ys in
                (("training", X_fit, y_fit), ("validation", X_stop, y_stop), ("test", X_ev, y_ev))}
    return _log_and_register(fit, config, name, summary, tags, datasets, label)


# ---------------------------------------------------------------------------------------------
# Batch scoring (`mirror predict propensity`)
# ---------------------------------------------------------------------------------------------
_NUMERIC_SPECS = ("double", "float", "long", "integer", "boolean")


def _input_columns(model_uri: str, model: Any) -> dict[str, str]:
    """{column: MLflow type} the model was fitted on (its signature; else the fitted names, as numbers)."""
    from mlflow.models import get_model_info

    sig = get_model_info(model_uri).signature
    if sig is not None and sig.inputs is not None and getattr(sig.inputs, "has_input_names", lambda: False)():
        return {str(c.name): str(getattr(c.type, "name", c.type)) for c in sig.inputs.inputs}
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        raise ValueError(f"{model_uri} records no input columns (no signature, no fitted names)")
    return {str(c): "double" for c in names}


def features_for_model(table: pd.DataFrame, columns: dict[str, str], what: str = "table") -> pd.DataFrame:
    """The model's input columns of `table`, typed as at training (`prepare_table`): numbers as float64
    (numeric-looking text parsed), the rest as text with NaN for missing.  Never modifies `table`."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) the model needs: {', '.join(map(repr, missing))} "
                         f"(its columns: {', '.join(map(str, table.columns))})")
    out = pd.DataFrame(index=table.index)
    for col, kind in columns.items():
        s = table[col]
        if kind in _NUMERIC_SPECS:
            if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
                s = pd.to_numeric(s.astype("string").str.strip().replace("", pd.NA), errors="coerce")
            out[col] = s.astype("float64")
        else:
            out[col] = s.astype("string").astype(object).where(s.notna(), np.nan)
    return out


def score_table(model_uri: str, table: pd.DataFrame, *, prefix: str = SCORE_PREFIX, label: str | None = None,
                what: str = "table") -> pd.DataFrame:
    """`table` with `<prefix>score` (probability of the positive class) and `<prefix>model` (which model)
    added; the input's own columns are kept as they are, and one that would be overwritten is an error."""
    import mlflow

    added = [f"{prefix}{c}" for c in SCORE_COLUMNS]
    clash = [c for c in added if c in table.columns]
    if clash:
        raise ValueError(f"{what} already has column(s) {', '.join(map(repr, clash))}; choose another prefix "
                         "for the scores")
    model = mlflow.sklearn.load_model(model_uri)
    X = features_for_model(table, _input_columns(model_uri, model), what)
    p = model.predict_proba(X)[:, 1] if len(X) else np.zeros(0)
    return table.assign(**{added[0]: p.astype("float64"), added[1]: label or model_uri})



def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "label"


def with_overrides(config: PropensityConfig, **kw: Any) -> PropensityConfig:
    """A copy of `config` with fields replaced (CLI convenience)."""
    return replace(config, **kw)


__all__ = [
    "PropensityConfig", "make_labels", "build_training_table", "cutoffs", "prepare_table", "fit_propensity",
    "train_propensity", "train_propensity_table", "binary_metrics", "lift_at", "feature_importance",
    "split_table", "with_overrides", "FittedPropensity", "TUNE_GRID", "SERVED_MODELS", "check_servable",
    "score_table", "features_for_model", "table_model_name", "event_splits", "config_from_params",
]
