"""Uplift: whom does a message change? A T-learner on LightGBM, trained on decisions with a holdout.

Propensity ranking contacts the customers most likely to buy, many of whom buy anyway (and some of
whom a message puts off); uplift ranking contacts those whose buying the message *changes*.  The
decision log gives both arms: treated decisions and held-out ones (`features.store.DECISION_COLUMNS`,
the holdout row naming the action it would have been sent).  Per decision:

* features: the profile's feature row at the decision, point in time (`features.profiles.build_profiles`
  with ``as_of`` = the start of the decision's day: nothing the customer did later, not even that day),
  plus the action as indicators;
* outcome: converted in the window after it (`training.lift.decision_outcomes`, the lift report's rule).

T-learner: one LightGBM classifier on the treated decisions, one on the held-out ones; the uplift of
(customer, action) is the difference of their probabilities (`UpliftCore.rank_actions` ranks every action
per customer).  scikit-uplift and causalml were not used: both pin old scikit-learn/numpy versions or pull
heavy dependencies, and the learner is a few lines on LightGBM.

Evaluation on held-out customers (split by profile, so no customer is on both sides): Qini coefficient and
uplift@k (incremental conversions per contact in the top k of the ranking, the contact budget), against
propensity ranking (a LightGBM P(convert) on the same rows, both arms pooled: what targeting by purchase
propensity does) and a random order.  Every run follows `training.registry`'s conventions: metrics named
`<split>_<metric>` (`test_qini`, `test_uplift_at_budget`; the baselines' `baseline_propensity_test_qini`, ...),
a `run_name("uplift")`, its training and test decision tables logged as datasets, and one gate: the model
is registered as `mirror-uplift` through `register_and_promote` with its baselines (`PROMOTION_BASELINES`:
propensity ranking and random, on `PROMOTION_METRIC` = Qini, the same held-out decisions), which never makes
a version that loses to one of them champion and re-scores the current champion on the same data; the
run's tag `mirror.winner` names the winner (uplift, or the baseline it lost to).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from features.profiles import FEATURE_COLUMNS, build_profiles
from features.schema import PROFILE_ID, TS
from features.store import ACTION, HOLDOUT
from training.lift import CONVERTED, decision_outcomes
from training.mlflow_models.uplift_model import ACTION_COLUMN, UpliftCore

UPLIFT_MODEL: Final = "mirror-uplift"
#: Metric names (MLflow, the CLI's JSON), defined once.
QINI: Final = "qini"
UPLIFT_AT_BUDGET: Final = "uplift_at_budget"
PROPENSITY: Final = "propensity"
RANDOM: Final = "random"
#: What the registry's gate compares (`register_and_promote(..., baselines=...)`): the whole ranking's Qini
#: against propensity ranking and random order on the same held-out decisions.
PROMOTION_METRIC: Final = QINI
PROMOTION_BASELINES: Final[tuple[str, ...]] = (PROPENSITY, RANDOM)
#: Value of the run tag `mirror.winner` when the uplift model beats every baseline.
UPLIFT: Final = "uplift"
TAG_WINNER: Final = "mirror.winner"
assert ACTION == ACTION_COLUMN  # the logged model reads the decision log's column name


@dataclass(frozen=True)
class UpliftConfig:
    """Outcome window, evaluation split and contact budget, and the boosters' settings."""

    window_days: float = 7.0
    test_size: float = 0.3  # held-out share of profiles (the evaluation)
    budget: float = 0.2  # contact budget of uplift@k: the top share of the ranking contacted
    feature_bucket: str = "1D"  # decisions' features as of the start of this period (point in time)
    seed: int = 0
    n_estimators: int = 300
    learning_rate: float = 0.03
    num_leaves: int = 7
    min_child_samples: int = 40
    reg_lambda: float = 5.0
    experiment: str = "mirror-uplift"
    register: bool = True
    source: str | None = None  # the events file the decisions were joined with (logged with the datasets)

    def __post_init__(self) -> None:
        if not 0 < self.test_size < 1 or not 0 < self.budget <= 1:
            raise ValueError(f"test_size must be in (0, 1) and budget in (0, 1], got {self.test_size}, {self.budget}")
        if not self.window_days > 0:
            raise ValueError(f"window_days must be positive, got {self.window_days}")


# ---------------------------------------------------------------------------------------------
# metrics (plain functions of outcome, arm and score)
# ---------------------------------------------------------------------------------------------
def _sorted(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, t, s = (np.asarray(a) for a in (y, treated, score))
    if not len(y) == len(t) == len(s):
        raise ValueError("y, treated and score must have the same length")
    order = np.argsort(-s.astype(float), kind="stable")
    return y[order].astype(float), t[order].astype(bool)


def qini_curve(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share targeted, incremental conversions) after each customer, best score first:
    Q(k) = conversions of the treated in the top k - those of the held-out there, scaled to the treated count."""
    ys, ts = _sorted(y, treated, score)
    n_t, n_c = np.cumsum(ts), np.cumsum(~ts)
    y_t, y_c = np.cumsum(ys * ts), np.cumsum(ys * ~ts)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(n_c > 0, y_t - y_c * n_t / n_c, y_t)
    share = np.arange(1, len(ys) + 1) / max(len(ys), 1)
    return np.r_[0.0, share], np.r_[0.0, q]


def qini_coefficient(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> float:
    """Area between the Qini curve and the random-targeting line, per treated customer (0: no better than
    random; higher is better)."""
    share, q = qini_curve(y, treated, score)
    n_t = float(np.sum(np.asarray(treated, dtype=bool)))
    if len(share) < 2 or n_t == 0:
        return math.nan
    gain = q - share * q[-1]
    return float(np.trapezoid(gain, share) / n_t)


def uplift_at_k(y: np.ndarray, treated: np.ndarray, score: np.ndarray, k: float = 0.2) -> float:
    """Incremental conversions per contact in the top `k` share of the ranking: conversion rate of the
    treated there minus that of the held-out there (NaN when an arm is empty there)."""
    ys, ts = _sorted(y, treated, score)
    top = max(1, math.ceil(k * len(ys)))
    ys, ts = ys[:top], ts[:top]
    if not ts.any() or ts.all():
        return math.nan
    return float(ys[ts].mean() - ys[~ts].mean())


def ranking_metrics(y: np.ndarray, treated: np.ndarray, score: np.ndarray, budget: float) -> dict[str, float]:
    return {QINI: qini_coefficient(y, treated, score), UPLIFT_AT_BUDGET: uplift_at_k(y, treated, score, budget)}


# ---------------------------------------------------------------------------------------------
# data: point-in-time features and outcomes per decision
# ---------------------------------------------------------------------------------------------
def decision_table(decisions: pd.DataFrame, events: pd.DataFrame, config: UpliftConfig = UpliftConfig()
                   ) -> pd.DataFrame:
    """One row per decision: DECISION_COLUMNS, the outcome (CONVERTED) and FEATURE_COLUMNS as of the start
    of the decision's `feature_bucket` (NaN where the profile had no events yet). Inputs are not modified."""
    if PROFILE_ID not in events.columns:
        from features.identity import resolve_identities

        events = resolve_identities(events)
    out = decision_outcomes(decisions, events, pd.Timedelta(days=config.window_days)).reset_index(drop=True)
    as_of = pd.to_datetime(out[TS], utc=True).dt.floor(config.feature_bucket)
    pid = out[PROFILE_ID].astype(str)
    ev_pid = events[PROFILE_ID].astype(str)
    parts = []
    for when, idx in as_of.groupby(as_of).groups.items():
        wanted = set(pid[idx])
        feats = build_profiles(events.loc[ev_pid.isin(wanted)], when)
        rows = feats.set_index(feats[PROFILE_ID].astype(str))[list(FEATURE_COLUMNS)]
        parts.append(rows.reindex(pid[idx].to_numpy()).set_axis(idx))
    feats = pd.concat(parts).sort_index() if parts else pd.DataFrame(columns=list(FEATURE_COLUMNS))
    return pd.concat([out, feats.reindex(out.index)], axis=1)


# ---------------------------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------------------------
def _classifier(config: UpliftConfig) -> Any:
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=config.n_estimators, learning_rate=config.learning_rate,
                          num_leaves=config.num_leaves, min_child_samples=config.min_child_samples,
                          reg_lambda=config.reg_lambda, subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                          random_state=config.seed, verbose=-1)


def _fit(x: np.ndarray, y: np.ndarray, config: UpliftConfig) -> Any:
    """A LightGBM booster of P(y=1)."""
    if len(np.unique(y)) < 2:
        raise ValueError(f"an arm of {len(y)} decisions has only one outcome; uplift needs conversions and "
                         "non-conversions among both treated and held-out decisions")
    return _classifier(config).fit(x, y).booster_


def fit_t_learner(table: pd.DataFrame, config: UpliftConfig = UpliftConfig(),
                  actions: list[str] | None = None) -> UpliftCore:
    """The T-learner on a `decision_table`: treated and held-out decisions, one LightGBM each."""
    acts = sorted(table[ACTION].astype(str).unique()) if actions is None else list(actions)
    core = UpliftCore(None, None, list(FEATURE_COLUMNS), acts)
    x = core.design(table)
    y = table[CONVERTED].to_numpy(dtype=float)
    hold = table[HOLDOUT].to_numpy(dtype=bool)
    core.treated, core.control = _fit(x[~hold], y[~hold], config), _fit(x[hold], y[hold], config)
    return core


def fit_propensity_ranker(table: pd.DataFrame, core: UpliftCore, config: UpliftConfig = UpliftConfig()) -> Any:
    """The baseline: P(convert | features, action), both arms pooled (targeting by purchase propensity)."""
    return _fit(core.design(table), table[CONVERTED].to_numpy(dtype=float), config)


def split_by_profile(table: pd.DataFrame, config: UpliftConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): every decision of one profile on one side, a seeded `test_size` share of profiles held out."""
    from sklearn.model_selection import GroupShuffleSplit

    gss = GroupShuffleSplit(n_splits=1, test_size=config.test_size, random_state=config.seed)
    tr, te = next(gss.split(table, groups=table[PROFILE_ID].astype(str)))
    return table.iloc[tr].reset_index(drop=True), table.iloc[te].reset_index(drop=True)


@dataclass(frozen=True)
class UpliftEvaluation:
    """Held-out figures (bare metric names: `QINI`, `UPLIFT_AT_BUDGET`) of the uplift model and its baselines,
    and whether it beats propensity ranking on `PROMOTION_METRIC` (the comparison the registry's gate makes)."""

    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    beats_propensity: bool
    winner: str
    reason: str


def evaluate(core: UpliftCore, ranker: Any, test: pd.DataFrame, config: UpliftConfig) -> UpliftEvaluation:
    """Qini and uplift@budget on held-out decisions for the uplift ranking, propensity ranking and random."""
    y = test[CONVERTED].to_numpy(dtype=float)
    t = ~test[HOLDOUT].to_numpy(dtype=bool)
    x = core.design(test)
    ours = ranking_metrics(y, t, core.predict(test)["uplift"].to_numpy(), config.budget)
    prop = ranking_metrics(y, t, np.asarray(ranker.predict(x), dtype=float), config.budget)
    rand = ranking_metrics(y, t, np.random.default_rng(config.seed).random(len(y)), config.budget)
    m = PROMOTION_METRIC
    wins = bool(np.isfinite(ours[m]) and (not np.isfinite(prop[m]) or ours[m] >= prop[m]))  # ties: the gate's rule
    detail = ", ".join(f"{k} {ours[k]:.4g} vs {prop[k]:.4g}" for k in ours)
    reason = (f"uplift ranking beats propensity ranking on held-out {m} ({detail})" if wins else
              f"uplift ranking does not beat propensity ranking on held-out {m} ({detail})")
    return UpliftEvaluation(ours, {PROPENSITY: prop, RANDOM: rand}, wins, UPLIFT if wins else PROPENSITY, reason)


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------
def _qini_plot(core: UpliftCore, ranker: Any, test: pd.DataFrame) -> Any:
    from matplotlib.figure import Figure

    y = test[CONVERTED].to_numpy(dtype=float)
    t = ~test[HOLDOUT].to_numpy(dtype=bool)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for name, score in (("uplift (T-learner)", core.predict(test)["uplift"].to_numpy()),
                        ("propensity", np.asarray(ranker.predict(core.design(test)), dtype=float))):
        share, q = qini_curve(y, t, score)
        ax.plot(share, q, label=name)
    share, q = qini_curve(y, t, np.zeros(len(y)))
    ax.plot([0, 1], [0, q[-1]], "k:", label="random")
    ax.set(xlabel="share of customers contacted", ylabel="incremental conversions", title="Qini curve (held out)")
    ax.legend()
    return fig


def train_uplift(config: UpliftConfig, decisions: pd.DataFrame, events: pd.DataFrame) -> Any:
    """Fit, evaluate against its baselines on held-out profiles, log to MLflow as every pipeline does, and
    register `mirror-uplift` through the registry's one gate (`register_and_promote` with the baselines:
    a version that loses to propensity ranking or random is registered without the champion alias)."""
    import mlflow

    from training.mlflow_models import uplift_model
    from training.registry import (
        TAG_PIPELINE,
        TAG_PROMOTED,
        TEST,
        TRAINING,
        TrainResult,
        log_dataset,
        log_metrics,
        metric_name,
        register_and_promote,
        run_name,
        split_metrics,
        use_experiment,
    )

    table = decision_table(decisions, events, config)  # checks the decisions' columns (training.lift)
    hold = table[HOLDOUT].to_numpy(dtype=bool)
    if hold.sum() < 20 or (~hold).sum() < 20:
        raise ValueError(f"uplift needs at least 20 treated and 20 held-out decisions; got {(~hold).sum()} and "
                         f"{hold.sum()}")
    train, test = split_by_profile(table, config)
    actions = sorted(table[ACTION].astype(str).unique())
    core = fit_t_learner(train, config, actions)
    ranker = fit_propensity_ranker(train, core, config)
    ev = evaluate(core, ranker, test, config)
    metrics = split_metrics(ev.metrics)
    baselines = {b: split_metrics(m) for b, m in ev.baselines.items()}

    use_experiment(config.experiment)
    with mlflow.start_run(run_name=run_name("uplift")) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({f"config.{k}": v for k, v in asdict(config).items()})
        mlflow.log_params({"decisions": len(table), "decisions_train": len(train), "decisions_test": len(test),
                           "actions": ",".join(actions), "learner": "T-learner (LightGBM)"})
        log_metrics(metrics, baselines)
        for frame, split in ((train, TRAINING), (test, TEST)):
            log_dataset(frame, split, name=f"uplift-decisions-{split}", source=config.source, targets=CONVERTED)
        mlflow.log_figure(_qini_plot(core, ranker, test), "qini.png")
        mlflow.set_tags({TAG_PIPELINE: "uplift", TAG_WINNER: ev.winner, "mirror.evaluation": ev.reason})
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(uplift_model.__file__)),
            artifacts={uplift_model.ARTIFACT_KEY: str(core.save(Path(tmp) / "uplift"))},
            pip_requirements=_requirements())
        run_id = run.info.run_id
    if not config.register:
        mlflow.MlflowClient().set_tag(run_id, TAG_PROMOTED, "false")
        return TrainResult(run_id, info.model_uri, UPLIFT_MODEL, "", False,
                           f"{ev.reason}; not registered (register=False)", metrics, baselines)
    y, t = test[CONVERTED].to_numpy(dtype=float), ~test[HOLDOUT].to_numpy(dtype=bool)

    def evaluate_champion(uri: str) -> float:
        champ = mlflow.pyfunc.load_model(uri).unwrap_python_model().core
        return ranking_metrics(y, t, champ.predict(test)["uplift"].to_numpy(), config.budget)[PROMOTION_METRIC]

    decision = register_and_promote(
        run_id, info.model_uri, UPLIFT_MODEL, metric_name(PROMOTION_METRIC), ev.metrics[PROMOTION_METRIC],
        evaluate_champion=evaluate_champion,
        baselines={b: ev.baselines[b][PROMOTION_METRIC] for b in PROMOTION_BASELINES})
    mlflow.MlflowClient().set_tag(run_id, TAG_WINNER, decision.lost_to_baseline or UPLIFT)  # the gate's verdict
    return TrainResult(run_id, info.model_uri, UPLIFT_MODEL, decision.version, decision.promoted,
                       f"{ev.reason}; {decision.reason}", metrics, baselines)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("mlflow", "lightgbm", "numpy", "pandas"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


__all__ = [
    "PROMOTION_BASELINES", "PROMOTION_METRIC", "PROPENSITY", "QINI", "RANDOM", "TAG_WINNER", "UPLIFT",
    "UPLIFT_AT_BUDGET", "UPLIFT_MODEL", "UpliftConfig", "UpliftEvaluation",
    "decision_table", "evaluate", "fit_propensity_ranker", "fit_t_learner", "qini_coefficient", "qini_curve",
    "ranking_metrics", "split_by_profile", "train_uplift", "uplift_at_k",
]
