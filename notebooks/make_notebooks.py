"""Write Mirror's notebooks from source, without outputs, so they diff cleanly and cannot drift.

    .venv/bin/python notebooks/make_notebooks.py        # rewrites notebooks/01_profiles.ipynb, 02_models.ipynb

Both notebooks read their size from environment variables (MIRROR_NB_CUSTOMERS, MIRROR_NB_DAYS,
MIRROR_NB_SEED) and MLflow's store from MLFLOW_TRACKING_URI, so the test suite can run them top to
bottom on small synthetic data in a temporary store (tests/data/test_notebooks.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

# The notebooks live in notebooks/; make the project importable when it is not installed.
ROOT = Path.cwd().resolve().parent if Path.cwd().name == "notebooks" else Path.cwd().resolve()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CUSTOMERS = int(os.environ.get("MIRROR_NB_CUSTOMERS", "2000"))
DAYS = int(os.environ.get("MIRROR_NB_DAYS", "120"))
SEED = int(os.environ.get("MIRROR_NB_SEED", "7"))
pd.set_option("display.width", 160)
print(f"{CUSTOMERS} customers, {DAYS} days, seed {SEED}")"""

PROFILES: list[tuple[str, str]] = [
    ("md", """\
# Unified customer profiles

Mirror receives events from every channel (web, app, email, SMS, social, store POS, chat, call
center), links the identifiers seen together into one `profile_id` per person, and computes
point-in-time features per profile.  This notebook generates a small synthetic retailer with known
structure, resolves identities, builds profiles and shows what they look like.

Size: `MIRROR_NB_CUSTOMERS`, `MIRROR_NB_DAYS`, `MIRROR_NB_SEED` (environment variables)."""),
    ("code", SETUP),
    ("md", "## 1. Synthetic omnichannel events\nCanonical events: one record schema for every channel; "
           "email and phone are already keyed hashes."),
    ("code", """\
from features.schema import CHANNEL, EVENT_TYPE, PROFILE_ID, TS, IDENTIFIER_COLUMNS
from features.synthetic import SyntheticConfig, generate

data = generate(SyntheticConfig(customers=CUSTOMERS, days=DAYS, seed=SEED))
events = data.events
print(f"{len(events):,} events, {events[TS].min()} .. {events[TS].max()}")
events.head()"""),
    ("code", """\
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
events[CHANNEL].value_counts().plot.bar(ax=axes[0], color="tab:blue", title="Events per channel")
events[EVENT_TYPE].value_counts().plot.bar(ax=axes[1], color="tab:orange", title="Events per type")
for ax in axes:
    ax.set_ylabel("events")
plt.tight_layout()"""),
    ("md", "## 2. Identity resolution\nIdentifiers seen on the same event are linked, transitively; "
           "each connected component is one profile.  The generator knows the true person behind each "
           "identifier, so we can check the merge."),
    ("code", """\
from features.identity import resolve_identities

resolved = resolve_identities(events)
truth = data.truth["identities"]
print(f"{resolved[PROFILE_ID].nunique():,} profiles for {truth['person_id'].nunique():,} true persons")

# identifier value -> profile, then compare with the true person of that identifier
long = pd.concat(
    [resolved[[c, PROFILE_ID]].dropna().rename(columns={c: "identifier_value"}).assign(identifier_type=c)
     for c in IDENTIFIER_COLUMNS if c in resolved],
    ignore_index=True,
).drop_duplicates(["identifier_type", "identifier_value"])
joined = long.merge(truth, on=["identifier_type", "identifier_value"], how="inner")
frag = joined.groupby("person_id").agg(identifiers=("identifier_value", "nunique"),
                                       profiles=(PROFILE_ID, "nunique"))
purity = joined.groupby(PROFILE_ID)["person_id"].nunique()
print(f"persons split across >1 profile: {(frag['profiles'] > 1).mean():.2%}; "
      f"profiles mixing >1 person: {(purity > 1).mean():.2%}")"""),
    ("code", """\
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
frag["identifiers"].clip(upper=15).plot.hist(bins=range(1, 17), ax=axes[0], color="tab:purple",
                                             title="Identifier fragments per true person")
axes[0].set_xlabel("distinct identifiers (devices, cookies, email, phone, loyalty, ...)")
frag["profiles"].value_counts().sort_index().plot.bar(ax=axes[1], color="tab:green",
                                                      title="Profiles per true person after resolution")
axes[1].set_xlabel("profiles")
plt.tight_layout()"""),
    ("md", "## 3. Point-in-time profiles\nOnly events before the cutoff count, so the same code builds "
           "training features (as of a past date) and current ones."),
    ("code", """\
from features.profiles import AFFINITY_SCORE, FEATURE_COLUMNS, build_profiles, category_affinity

as_of = events[TS].max() + pd.Timedelta(seconds=1)
profiles = build_profiles(resolved, as_of)
print(f"{len(profiles):,} profiles x {len(FEATURE_COLUMNS)} features")
profiles.describe().T.head(25)"""),
    ("code", """\
rfm = {
    "recency (days since last purchase)": "days_since_last_purchase",
    "frequency (orders)": "n_orders",
    "monetary (total spend)": "spend_total",
}
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
buyers = profiles[profiles["n_orders"] > 0]
for ax, (title, col) in zip(axes, rfm.items()):
    vals = buyers[col].replace([np.inf, -np.inf], np.nan).dropna()
    ax.hist(vals.clip(upper=vals.quantile(0.99)), bins=40, color="tab:blue")
    ax.set_title(title)
fig.suptitle(f"RFM of the {len(buyers):,} profiles that bought")
plt.tight_layout()"""),
    ("code", """\
share_cols = [c for c in profiles.columns if c.startswith("share_")]
mix = profiles[share_cols].rename(columns=lambda c: c.removeprefix("share_"))
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
mix.mean().sort_values().plot.barh(ax=axes[0], color="tab:cyan", title="Average channel mix per profile")
profiles["n_channels"].value_counts().sort_index().plot.bar(ax=axes[1], color="tab:gray",
                                                             title="Channels used per profile")
plt.tight_layout()"""),
    ("code", """\
aff = category_affinity(resolved, as_of)
# the 40 profiles with the most categorised activity
busiest = profiles.sort_values("n_events", ascending=False)[PROFILE_ID].head(40)
heat = (aff[aff[PROFILE_ID].isin(busiest)]
        .pivot_table(index=PROFILE_ID, columns="category", values=AFFINITY_SCORE, fill_value=0.0))
heat = heat.loc[:, heat.sum().sort_values(ascending=False).index]
heat = heat.iloc[np.argsort(heat.to_numpy().argmax(axis=1), kind="stable")]  # group rows by top category
fig, ax = plt.subplots(figsize=(12, 7))
im = ax.imshow(heat.to_numpy(), aspect="auto", cmap="viridis")
ax.set_xticks(range(heat.shape[1]), heat.columns, rotation=90)
ax.set_yticks([])
ax.set_ylabel(f"{len(heat)} profiles")
ax.set_title("Category affinity (time-decayed share of interactions)")
fig.colorbar(im, ax=ax)
plt.tight_layout()"""),
    ("md", "## 4. One unified profile\nEverything Mirror knows about one person, across channels."),
    ("code", """\
pid = profiles.sort_values("n_channels", ascending=False)[PROFILE_ID].iloc[0]
one = resolved[resolved[PROFILE_ID] == pid].sort_values(TS)
print(f"profile {pid}: {len(one)} events on {one[CHANNEL].nunique()} channels, "
      f"{one[list(c for c in IDENTIFIER_COLUMNS if c in one)].nunique().sum()} identifiers")
profiles.set_index(PROFILE_ID).loc[pid, ["tenure_days", "n_orders", "spend_total", "n_channels",
                                         "cart_abandon_rate", "return_rate", "sentiment_mean"]]"""),
]

MODELS: list[tuple[str, str]] = [
    ("md", """\
# Models compared from MLflow

Every training run is tracked in MLflow with its baselines in the same run.  This notebook reads the
runs back (`mlflow.search_runs`), compares each model with its baselines, checks the calibration of
the champion churn model and breaks results down by segment.  When the store has no runs (a fresh
checkout, or the test suite's temporary store) it trains small models on synthetic data first.

`MLFLOW_TRACKING_URI` chooses the store; `MIRROR_NB_TRAIN` (default `propensity,recommender`; also
`churn`, `purchase`, `sentiment`) which models to train when none exist."""),
    ("code", SETUP),
    ("code", """\
import mlflow

from features.schema import CHURN_MODEL, champion_uri
from training.registry import configure_tracking, list_models

uri = configure_tracking()
print("MLflow store:", uri)
runs = mlflow.search_runs(search_all_experiments=True)
print(f"{len(runs)} runs found")"""),
    ("code", """\
from features.schema import write_events
from features.synthetic import SyntheticConfig, generate
from training.cli import load_events

if runs.empty:
    # a file beside the MLflow store, so the runs log it as their data source like `mirror train --events`
    store_dir = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else ROOT / "mlruns"
    data_file = store_dir / "notebook-data" / f"events-{CUSTOMERS}-{DAYS}-{SEED}.parquet"
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data = generate(SyntheticConfig(customers=CUSTOMERS, days=DAYS, seed=SEED))
    write_events(data.events, data_file)
    events, source = load_events(data_file), str(data_file)
    families = [f.strip() for f in os.environ.get("MIRROR_NB_TRAIN", "propensity,recommender").split(",") if f.strip()]
    targets = [t for t in ("churn", "purchase") if "propensity" in families or t in families]
    if targets:
        from training.propensity import PropensityConfig, train_propensity
        for target in targets:
            cfg = PropensityConfig(target=target, seed=SEED, experiment="mirror-notebook", source=source)
            r = train_propensity(cfg, events)
            print(r.model_name, r.reason)
    if "recommender" in families:
        from training.recommender import RecommenderTrainConfig, train_recommender
        r = train_recommender(RecommenderTrainConfig(experiment="mirror-notebook", source=source), events)
        print(r.model_name, r.reason)
    if "sentiment" in families:
        from training.sentiment import SentimentConfig, texts_from_events, train_sentiment
        texts = texts_from_events(events, data.truth.get("sentiment"))
        r = train_sentiment(SentimentConfig(experiment="mirror-notebook", seed=SEED, source=source), texts)
        print(r.model_name, r.reason)
    runs = mlflow.search_runs(search_all_experiments=True)
    %matplotlib inline
print(f"{len(runs)} runs")
runs[["run_id", "tags.mlflow.runName", "start_time", "tags.mirror.promoted"]
     if "tags.mirror.promoted" in runs else ["run_id", "start_time"]].head(20)"""),
    ("md", "## 1. The registry\nWhich version of each model is champion, and the metric that decided it."),
    ("code", "list_models()"),
    ("md", "## 2. Each model against its baselines\nEvery metric is named `<split>_<metric>` (`test_roc_auc`); "
           "`baseline_<baseline>_<split>_<metric>` belongs to a baseline fitted and scored in the same run, "
           "on the same test data (`training.registry.parse_metric_name` reads both)."),
    ("code", """\
from training.registry import TEST, parse_metric_name


def long_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    \"\"\"One row per (run, model or baseline, split, metric).\"\"\"
    rows = []
    for _, run in runs.iterrows():
        name = run.get("tags.mirror.model_name") or run.get("tags.mlflow.runName") or run["run_id"][:8]
        for col in runs.columns:
            if not col.startswith("metrics.") or pd.isna(run[col]):
                continue
            parsed = parse_metric_name(col.removeprefix("metrics."))
            if parsed is None:  # timings and counts outside the scheme
                continue
            who, split, m = parsed
            rows.append({"run": name, "run_id": run["run_id"], "who": who, "split": split, "metric": m,
                         "value": float(run[col])})
    return pd.DataFrame(rows, columns=["run", "run_id", "who", "split", "metric", "value"])

latest = runs.sort_values("start_time").groupby(
    runs.get("tags.mirror.model_name", runs["run_id"]).fillna(runs["run_id"]), sort=False).tail(1)
metrics = long_metrics(latest)
metrics = metrics[metrics["split"] == TEST]
table = metrics.pivot_table(index=["run", "metric"], columns="who", values="value", aggfunc="first")
table"""),
    ("code", """\
headline = ["roc_auc", "pr_auc", "lift_top_decile", "lift_at_10", "ndcg_at_10", "precision_at_10", "recall_at_10",
            "hit_rate_at_10", "coverage", "macro_f1", "accuracy"]
shown = metrics[metrics["metric"].isin(headline)]
groups = list(shown.groupby("run"))
if groups:
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (run_name, g) in zip(axes[0], groups):
        g.pivot_table(index="metric", columns="who", values="value").plot.bar(ax=ax, rot=30)
        ax.set_title(run_name)
        ax.set_ylim(0, None)
    plt.tight_layout()
else:
    print("no headline metrics logged yet")"""),
    ("md", "## 3. Calibration of the champion churn model\nOn the champion's own test data: the run logged "
           "its data source and config, so the same events give the same test split (its digest is checked "
           "against the logged one); predicted probability against the observed churn rate."),
    ("code", """\
from mlflow import MlflowClient
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from features.profiles import FEATURE_COLUMNS
from training.propensity import PROMOTION_METRIC, config_from_params, event_splits
from training.registry import frame_digest, logged_dataset, metric_name

try:
    champion = MlflowClient().get_model_version_by_alias(CHURN_MODEL, "champion")
    churn_model = mlflow.sklearn.load_model(champion_uri(CHURN_MODEL))
except Exception as exc:  # no champion yet
    churn_model = None
    print("no churn champion:", exc)
if churn_model is not None:
    champion_run = mlflow.get_run(champion.run_id)
    cfg = config_from_params(champion_run.data.params)
    logged = logged_dataset(champion.run_id, TEST)
    if logged is None or logged.source is None or not Path(logged.source).exists():
        raise RuntimeError(f"the champion's run {champion.run_id} logged no readable data source ({logged}); "
                           "retrain it with `mirror train propensity --events FILE`")
    champion_events = load_events(Path(logged.source))
    _, _, table_eval, (_, t_eval, _) = event_splits(champion_events, cfg)
    cols = [c for c in FEATURE_COLUMNS if c in table_eval]
    same = frame_digest(table_eval[[*cols, cfg.target]]) == logged.digest
    print(f"champion v{champion.version}: test data {logged.source} at {t_eval.date()}, "
          f"{len(table_eval)} customers; same as the run's logged test set: {same}")
    p = churn_model.predict_proba(table_eval[cols])[:, 1]
    y = table_eval[cfg.target].to_numpy()
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=8, strategy="quantile")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].plot([0, 1], [0, 1], "k--", label="perfect")
    axes[0].plot(mean_pred, frac_pos, "o-", label="champion")
    axes[0].set(xlabel="predicted churn probability", ylabel="observed churn rate", title="Calibration")
    axes[0].legend()
    axes[1].hist([p[y == 0], p[y == 1]], bins=20, label=["stayed", "churned"], stacked=True)
    axes[1].set(title="Scores by outcome", xlabel="predicted churn probability")
    axes[1].legend()
    plt.tight_layout()
    logged_auc = champion_run.data.metrics.get(metric_name(PROMOTION_METRIC))
    print(f"ROC AUC on the champion's test set: {roc_auc_score(y, p):.3f} (logged: {logged_auc})")"""),
    ("md", "## 4. Per-segment results\nThe same churn scores split by the customer's main channel and "
           "by tenure: a model can look good overall and fail a segment."),
    ("code", """\
if churn_model is not None:
    seg = table_eval.assign(p=p, y=y)
    share_cols = [c for c in seg.columns if c.startswith("share_")]
    seg["main_channel"] = seg[share_cols].idxmax(axis=1).str.removeprefix("share_")
    seg["tenure"] = pd.cut(seg["tenure_days"], bins=[-1, 30, 90, 100000], labels=["<30d", "30-90d", ">90d"])

    def summarise(g: pd.DataFrame) -> pd.Series:
        auc = roc_auc_score(g["y"], g["p"]) if g["y"].nunique() == 2 else np.nan
        return pd.Series({"customers": len(g), "churn_rate": g["y"].mean(), "mean_score": g["p"].mean(),
                          "roc_auc": auc})

    by_channel = seg.groupby("main_channel").apply(summarise, include_groups=False)
    by_tenure = seg.groupby("tenure", observed=True).apply(summarise, include_groups=False)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    by_channel[["churn_rate", "mean_score"]].plot.bar(ax=axes[0], title="By main channel", rot=30)
    by_tenure[["churn_rate", "mean_score"]].plot.bar(ax=axes[1], title="By tenure", rot=0)
    plt.tight_layout()
    display(pd.concat({"channel": by_channel, "tenure": by_tenure}))"""),
    ("code", """\
# Recommender: new vs returning users, if the run logged them (metric names containing 'new' / 'returning').
rec = metrics[metrics["metric"].str.contains("new|returning", regex=True)]
if len(rec):
    rec.pivot_table(index="metric", columns="who", values="value").plot.barh(figsize=(8, 5),
                                                                             title="Recommender by user segment")
else:
    print("no per-segment recommender metrics in these runs")"""),
]


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (Mirror .venv)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    return nb


def write_all(out_dir: Path = HERE) -> list[Path]:
    """Write both notebooks (no outputs) and return their paths."""
    paths = []
    for name, cells in (("01_profiles.ipynb", PROFILES), ("02_models.ipynb", MODELS)):
        nb = build(cells)
        nbformat.validate(nb)
        path = out_dir / name
        nbformat.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {p}")
