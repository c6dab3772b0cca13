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

Target = Literal["churn", "purchase"]
DEFAULT_HORIZON: dict[str, int] = {"churn": 60, "purchase": 14}


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
                      data_summary: dict[str, Any], tags: dict[str, str]) -> Any:
    import mlflow
    from mlflow.models import infer_signature

    from training.registry import TrainResult, register_and_promote, use_experiment

    use_experiment(config.experiment)
    with mlflow.start_run(run_name=f"propensity-{model_name}") as run:
        cfg = {k: v for k, v in asdict(config).items() if v is not None}
        mlflow.log_params({f"config.{k}": v for k, v in cfg.items()})
        mlflow.log_params({k: v for k, v in fit.params.items() if k != "tune_scores"})
        mlflow.log_metrics(fit.metrics)
        for base, m in fit.baselines.items():
            mlflow.log_metrics({f"{base}.{k}": v for k, v in m.items() if np.isfinite(v)})
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
                           fit.metrics, fit.baselines)
    X_eval, y_eval = fit.X_eval, fit.y_eval

    def evaluate_champion(uri: str) -> float:
        champ = mlflow.sklearn.load_model(uri)
        return binary_metrics(y_eval, champ.predict_proba(X_eval)[:, 1])["roc_auc"]

    decision = register_and_promote(run_id, info.model_uri, model_name, "roc_auc", fit.metrics["roc_auc"],
                                    evaluate_champion=evaluate_champion)
    return TrainResult(run_id, info.model_uri, model_name, decision.version, decision.promoted, decision.reason,
                       fit.metrics, fit.baselines)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def train_propensity(config: PropensityConfig, events: pd.DataFrame) -> Any:
    """Events path: train at an earlier cutoff, early-stop/calibrate and evaluate at a later one.

    The validation profiles are split in half (stratified, seeded): one half early-stops and
    calibrates, the other is the evaluation (metrics and the champion comparison).
    """
    from sklearn.model_selection import train_test_split

    from features.profiles import FEATURE_COLUMNS

    events = _check_events(events)
    t_train, t_val, note = cutoffs(events, config)
    train = build_training_table(events, t_train, config)
    val = build_training_table(events, t_val, config)
    y_col = config.target
    if val[y_col].nunique() < 2 or val[y_col].value_counts().min() < 4:
        raise ValueError(f"validation labels at {t_val} are too one-sided: {val[y_col].value_counts().to_dict()}")
    stop, ev = train_test_split(val, test_size=0.5, stratify=val[y_col], random_state=config.seed)
    cols = list(FEATURE_COLUMNS)
    fit = fit_propensity(train[cols], train[y_col], stop[cols], stop[y_col], ev[cols], ev[y_col], config)
    if note:
        fit = replace(fit, notes=[*fit.notes, note])
    name = CHURN_MODEL if config.target == "churn" else PURCHASE_MODEL
    summary = {"events": len(events), "profiles_train": len(train), "profiles_validation": len(val),
               "train_cutoff": str(t_train), "validation_cutoff": str(t_val), "horizon_days": config.horizon,
               "ts_min": str(events[TS].min()), "ts_max": str(events[TS].max())}
    tags = {"mirror.pipeline": "propensity", "mirror.target": config.target, "mirror.source": "events"}
    return _log_and_register(fit, config, name, summary, tags)


def split_table(X: pd.DataFrame, y: pd.Series, config: PropensityConfig) -> tuple[pd.DataFrame, ...]:
    """(X_train, y_train, X_stop, y_stop, X_eval, y_eval): stratified eval share, then a stop share of train."""
    from sklearn.model_selection import train_test_split

    X_tr, X_ev, y_tr, y_ev = train_test_split(X, y, test_size=config.validation_size, stratify=y,
                                              random_state=config.seed)
    X_fit, X_stop, y_fit, y_stop = train_test_split(X_tr, y_tr, test_size=config.stop_size, stratify=y_tr,
                                                    random_state=config.seed)
    return X_fit, y_fit, X_stop, y_stop, X_ev, y_ev


def train_propensity_table(config: PropensityConfig, table: pd.DataFrame, label: str,
                           model_name: str | None = None) -> Any:
    """Table path: a data scientist's own features (one row per customer) and a binary label column.

    Registered as `mirror-propensity-<label>` unless `model_name` is given.
    """
    X, y, notes = prepare_table(table, label)
    if y.value_counts().min() < 10:
        raise ValueError(f"label {label!r} needs at least 10 rows of each class; got {y.value_counts().to_dict()}")
    X_fit, y_fit, X_stop, y_stop, X_ev, y_ev = split_table(X, y, config)
    fit = fit_propensity(X_fit, y_fit, X_stop, y_stop, X_ev, y_ev, config)
    fit = replace(fit, notes=[*fit.notes, *notes])
    name = model_name or f"mirror-propensity-{_slug(label)}"
    summary = {"rows": len(table), "columns_used": list(X.columns), "label": label,
               "positive_rate": round(float(y.mean()), 4), "notes": notes}
    tags = {"mirror.pipeline": "propensity", "mirror.target": label, "mirror.source": "table"}
    return _log_and_register(fit, config, name, summary, tags)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "label"


def with_overrides(config: PropensityConfig, **kw: Any) -> PropensityConfig:
    """A copy of `config` with fields replaced (CLI convenience)."""
    return replace(config, **kw)


__all__ = [
    "PropensityConfig", "make_labels", "build_training_table", "cutoffs", "prepare_table", "fit_propensity",
    "train_propensity", "train_propensity_table", "binary_metrics", "lift_at", "feature_importance",
    "split_table", "with_overrides", "FittedPropensity", "TUNE_GRID",
]
