"""All three model families on synthetic omnichannel data (100,000 customers), scored against the planted truth.

One data set from `features.synthetic.generate` (180 days, seed 42) and its truth tables; then, timed stage by
stage: identity resolution (pairwise precision/recall of merges against the true person of every identifier),
the recommender pipeline (`train_recommender`: tuned on a validation window before the cutoff, scored on the 14
days after it beside popularity and random, then planted-complement recovery), churn propensity (profile
features as of the cutoff, LightGBM vs logistic regression, also scored against the planted churners) and
sentiment (MiniLM + TF-IDF vs TF-IDF on a stratified sample of the generated texts, planted labels).

Run: `.venv/bin/python benchmarks/accuracy.py --only synthetic` (records a section in RESULTS.md), or
`.venv/bin/python benchmarks/acc_synthetic.py --customers 5000` for a quick look (prints only).
The size comes from $MIRROR_ACC_SYNTH_CUSTOMERS (default 100000), read when `run()` is called.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from features.schema import IDENTIFIER_COLUMNS, ITEM_ID, PROFILE_ID, TS  # noqa: E402
from training.evaluation import pairwise_precision_recall  # noqa: E402

CUSTOMERS_ENV = "MIRROR_ACC_SYNTH_CUSTOMERS"
DEFAULT_CUSTOMERS = 100_000
DAYS = 180
SEED = 42
#: Texts (training + test) for the sentiment part: the MiniLM embedding runs at ~30 texts/s on 2 shared cores.
SENTIMENT_SAMPLE = 3000
REC_TEST_DAYS = 14
COMPLEMENT_K = 5
#: Churn horizons: 60 days is the pipeline's default; 30 is what tests/model uses on synthetic data, because
#: only a late enough training cutoff has planted churners (churn dates at 55-90% of the period) in its labels.
CHURN_HORIZONS = (60, 30)
#: Above this many customers the recommender's 3x3 tuning grid is cut to its first point (the pipeline
#: defaults): at 20,000 customers each grid point took ~35 s on 2 shared cores, ~3 min each at 100,000.
REC_FULL_GRID_MAX_CUSTOMERS = 20_000


def customers() -> int:
    return int(os.environ.get(CUSTOMERS_ENV, DEFAULT_CUSTOMERS))


def _r(d: dict[str, Any], nd: int = 4) -> dict[str, Any]:
    return {k: round(float(v), nd) if isinstance(v, (float, np.floating)) else v for k, v in d.items()}


class _Clock:
    """Seconds per stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        print(f"[acc_synthetic] {name} ...", file=sys.stderr, flush=True)
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"[acc_synthetic] {name}: {self.seconds[name]} s", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------
def identifier_profiles(resolved: pd.DataFrame) -> pd.DataFrame:
    """(identifier_type, identifier_value, profile_id, n_profiles): the profile(s) of each identifier's events."""
    from features.synthetic import IDENTIFIER_TYPE, IDENTIFIER_VALUE

    parts = []
    for col in IDENTIFIER_COLUMNS:
        if col not in resolved:
            continue
        sub = resolved.loc[resolved[col].notna(), [col, PROFILE_ID]]
        vc = sub.value_counts(sort=True).reset_index()  # most events first, so the first row is the main profile
        n_prof = vc.groupby(col, sort=False)[PROFILE_ID].transform("size")
        top = vc.assign(n_profiles=n_prof).drop_duplicates(col)
        parts.append(pd.DataFrame({IDENTIFIER_TYPE: col, IDENTIFIER_VALUE: top[col].astype(str).to_numpy(),
                                   PROFILE_ID: top[PROFILE_ID].astype(str).to_numpy(),
                                   "n_profiles": top["n_profiles"].to_numpy()}))
    return pd.concat(parts, ignore_index=True)


def profile_owner(profile: pd.Series, person: pd.Series) -> pd.Series:
    """The true person behind each resolved profile (the person of most of its events)."""
    vc = pd.DataFrame({PROFILE_ID: profile.to_numpy(), "person_id": person.to_numpy()}).dropna().value_counts()
    top = vc.reset_index().drop_duplicates(PROFILE_ID)
    return pd.Series(top["person_id"].to_numpy(), index=top[PROFILE_ID].to_numpy())


def _identity(data: Any, resolved: pd.DataFrame, person: pd.Series) -> dict[str, Any]:
    from features.synthetic import IDENTIFIER_TYPE, IDENTIFIER_VALUE, IDENTITIES, PERSON_ID, SHARED_DEVICES

    truth = data.truth[IDENTITIES]
    got = identifier_profiles(resolved)
    t = pd.DataFrame({IDENTIFIER_TYPE: truth[IDENTIFIER_TYPE].astype(str).to_numpy(),
                      IDENTIFIER_VALUE: truth[IDENTIFIER_VALUE].astype(str).to_numpy(),
                      PERSON_ID: truth[PERSON_ID].astype(str).to_numpy()})
    m = t.merge(got, on=[IDENTIFIER_TYPE, IDENTIFIER_VALUE], how="left")
    if m[PROFILE_ID].isna().any():
        raise RuntimeError(f"{int(m[PROFILE_ID].isna().sum())} true identifiers never seen on an event")
    id_p, id_r = pairwise_precision_recall(m[PERSON_ID], m[PROFILE_ID])
    ev_p, ev_r = pairwise_precision_recall(person, resolved[PROFILE_ID].astype(str))
    shared = data.truth[SHARED_DEVICES]
    sh_vals = set(shared[IDENTIFIER_VALUE].astype(str))
    sh = got.loc[got[IDENTIFIER_VALUE].isin(sh_vals)]
    n_persons = int(t[PERSON_ID].nunique())
    n_profiles = int(resolved[PROFILE_ID].nunique())
    return {
        "identifiers": len(t),
        "persons": n_persons,
        "profiles": n_profiles,
        "profiles_per_person": round(n_profiles / n_persons, 4),
        "pairwise_identifiers": {"precision": round(id_p, 5), "recall": round(id_r, 5),
                                 "f1": round(2 * id_p * id_r / (id_p + id_r), 5)},
        "pairwise_events": {"precision": round(ev_p, 5), "recall": round(ev_r, 5)},
        "identifiers_split_over_profiles": int((m["n_profiles"] > 1).sum()),
        "planted_shared_devices": len(sh_vals),
        "shared_devices_guarded": int((sh["n_profiles"] > 1).sum()),
    }


# ---------------------------------------------------------------------------------------------
# Recommendation
# ---------------------------------------------------------------------------------------------
def _complement_recovery(served: Any, pairs: pd.DataFrame, k: int = COMPLEMENT_K) -> dict[str, Any]:
    """Top-k recall of each planted X -> Y from the served model's complements / similar items (X known)."""
    from features.synthetic import COMPLEMENT_ITEM_ID

    xs, ys = pairs[ITEM_ID].astype(str).tolist(), pairs[COMPLEMENT_ITEM_ID].astype(str).tolist()
    known = [served.has_item(x) for x in xs]
    popular = {i for i, _ in served.popular(k + 1)}
    hits: dict[str, list[bool]] = {"complements": [], "similar_items_als": [], "popularity_top5": []}
    for x, y, ok in zip(xs, ys, known, strict=True):
        if not ok:
            continue
        hits["complements"].append(y in {i for i, _ in served.complements(x, k)})
        hits["similar_items_als"].append(y in {i for i, _ in served.similar_items(x, k)})
        hits["popularity_top5"].append(y in (popular - {x}))
    n_known = int(sum(known))
    out: dict[str, Any] = {"planted_pairs": len(xs), "pairs_with_known_antecedent": n_known, "k": k}
    for name, h in hits.items():
        out[f"recall@{k}_{name}"] = round(float(np.mean(h)), 4) if h else float("nan")
    out[f"recall@{k}_complements_all_pairs"] = round(float(np.sum(hits["complements"]) / max(len(xs), 1)), 4)
    return out


def _recommendation(resolved: pd.DataFrame, data: Any, as_of: pd.Timestamp, clock: _Clock, tmp: Path) -> dict:
    import mlflow

    from features.schema import CATEGORY, EVENT_TYPE
    from features.synthetic import COMPLEMENTS
    from training.recommender import (
        DEFAULT_ALS_GRID,
        DEFAULT_WEIGHT_GRID,
        RecommenderTrainConfig,
        train_recommender,
    )
    from training.registry import metric_name

    full_grid = customers() <= REC_FULL_GRID_MAX_CUSTOMERS
    grids = {} if full_grid else {"weight_grid": DEFAULT_WEIGHT_GRID[:1], "als_grid": DEFAULT_ALS_GRID[:1]}
    cfg = RecommenderTrainConfig(
        as_of=str(as_of), test_days=REC_TEST_DAYS, ks=(10,), seed=SEED, num_threads=0, progress=True,
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="acc-synthetic-recommender",
        model_name="acc-synthetic-recommender", **grids,
    )
    # only the columns the pipeline reads (its time split copies the frame: all 20 columns would double memory)
    cols = [PROFILE_ID, ITEM_ID, EVENT_TYPE, TS, CATEGORY]
    with clock.stage("recommender_tune_fit_evaluate_log"):
        res = train_recommender(cfg, resolved[cols])
    params = mlflow.get_run(res.run_id).data.params
    chosen = {k: v for k, v in params.items() if k.startswith(("weights.", "als.factors", "als.regularization",
                                                                "als.alpha", "als.iterations"))}
    keys = ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "hit_rate_at_10", "coverage_at_10")
    seg = ("ndcg_at_10_returning", "ndcg_at_10_new", "n_users", "n_users_returning", "n_users_new")
    out: dict[str, Any] = {
        "cutoff": str(as_of), "test_days": REC_TEST_DAYS,
        "tuning_grid_points": len(cfg.weight_grid) * len(cfg.als_grid), "chosen": chosen,
        # TrainResult names are `<split>_<metric>` (training.registry.metric_name); the report keeps its own
        "model_blend": _r({k: res.metrics[metric_name(k)] for k in (*keys, *seg) if metric_name(k) in res.metrics}),
        "popularity": _r({k: res.baselines["popularity"][metric_name(k)] for k in keys}),
        "random": _r({k: res.baselines["random"][metric_name(k)] for k in keys}),
        "train_s": clock.seconds["recommender_tune_fit_evaluate_log"],
    }
    with clock.stage("recommender_complements_check"):
        served = mlflow.pyfunc.load_model(res.model_uri).unwrap_python_model()
        out["planted_complements"] = _complement_recovery(served, data.truth[COMPLEMENTS])
    return out


# ---------------------------------------------------------------------------------------------
# Churn propensity
# ---------------------------------------------------------------------------------------------
def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def _propensity_at(resolved: pd.DataFrame, owner: pd.Series, persons: pd.DataFrame, clock: _Clock,
                   horizon: int) -> dict:
    """train_propensity's protocol through its pure functions (no MLflow), plus the planted-truth check."""
    from sklearn.model_selection import train_test_split

    from features.profiles import FEATURE_COLUMNS
    from training.propensity import PropensityConfig, build_training_table, cutoffs, fit_propensity

    cfg = PropensityConfig(target="churn", horizon_days=horizon, seed=SEED, progress=True, register=False)
    t_train, t_val, note = cutoffs(resolved, cfg)
    feats, fit_stage = f"features_churn_h{horizon}", f"propensity_fit_h{horizon}"
    with clock.stage(feats):
        train = build_training_table(resolved, t_train, cfg)
        val = build_training_table(resolved, t_val, cfg)
    y = cfg.target
    # the split of train_propensity: half of the validation profiles early-stop and calibrate, half evaluate
    stop, ev = train_test_split(val, test_size=0.5, stratify=val[y], random_state=cfg.seed)
    cols = list(FEATURE_COLUMNS)
    with clock.stage(fit_stage):
        fit = fit_propensity(train[cols], train[y], stop[cols], stop[y], ev[cols], ev[y], cfg)
    p_lr = fit.baseline.predict_proba(fit.X_eval)[:, 1]

    # planted truth for the evaluation profiles
    who = owner.reindex(ev[PROFILE_ID].astype(str).to_numpy()).to_numpy()
    per = persons.reindex(who)
    churned = per["churned"].fillna(False).to_numpy(dtype=bool)
    cdate = per["churn_date"]
    end = t_val + pd.Timedelta(days=cfg.horizon)
    gone = churned & (cdate < t_val).to_numpy()
    in_window = churned & ((cdate >= t_val) & (cdate < end)).to_numpy()
    label = ev[y].to_numpy()

    def aucs(truth: np.ndarray) -> dict[str, float]:
        return {"lightgbm_calibrated": round(_auc(truth, fit.p_eval), 4),
                "logistic_regression": round(_auc(truth, p_lr), 4),
                "behavioural_label_itself": round(_auc(truth, label), 4)}

    planted = {
        "share_planted_churned": round(float(churned.mean()), 4),
        "share_churned_before_cutoff": round(float(gone.mean()), 4),
        "share_churns_in_horizon": round(float(in_window.mean()), 4),
        "roc_auc_vs_planted_churned": aucs(churned),
        "roc_auc_vs_planted_churn_in_horizon": aucs(in_window),
        "profiles_without_true_person": int(pd.isna(who).sum()),
    }
    return {
        "train_cutoff": str(t_train), "validation_cutoff": str(t_val), "horizon_days": cfg.horizon,
        "cutoff_note": note,
        "n_train": fit.params["n_train"], "n_stop": fit.params["n_stop"], "n_eval": fit.params["n_eval"],
        "positive_rate_train": fit.params["positive_rate_train"],
        "positive_rate_eval": fit.params["positive_rate_eval"],
        "best_iteration": fit.params["best_iteration"],
        "lightgbm_calibrated": _r(fit.metrics),
        "logistic_regression": _r(fit.baselines["logistic_regression"]),
        "base_rate": _r(fit.baselines["base_rate"]),
        "planted_truth": planted,
        "features_s": clock.seconds[feats],
        "train_s": clock.seconds[fit_stage],
    }


# ---------------------------------------------------------------------------------------------
# Sentiment
# ---------------------------------------------------------------------------------------------
def _sentiment(data: Any, clock: _Clock, tmp: Path) -> dict:
    from sklearn.model_selection import train_test_split

    from features.synthetic import SENTIMENT
    from training.sentiment import LABEL, SentimentConfig, fit_sentiment, texts_from_events

    texts = texts_from_events(data.events, data.truth[SENTIMENT])
    sample = texts
    if len(texts) > SENTIMENT_SAMPLE:
        sample, _ = train_test_split(texts, train_size=SENTIMENT_SAMPLE, stratify=texts[LABEL], random_state=SEED)
    cfg = SentimentConfig(seed=SEED, test_size=0.25, cache_dir=str(tmp / "embeddings"), progress=True,
                          register=False)
    with clock.stage("sentiment_embed_and_fit"):
        fit = fit_sentiment(sample, cfg, tmp)
    train_texts = Counter(sample["text"].astype(str)) - Counter(fit.test_texts)
    seen = float(np.mean([t in train_texts for t in fit.test_texts]))
    return {
        "texts_available": len(texts), "texts_sampled": len(sample),
        "distinct_texts_in_sample": int(sample["text"].nunique()),
        "label_shares_available": _r(texts[LABEL].value_counts(normalize=True).to_dict()),
        "n_train": fit.params["n_train"], "n_test": fit.params["n_test"],
        "test_texts_also_in_train_verbatim": round(seen, 4),
        "model": _r(fit.metrics),
        "baselines": {k: _r(v) for k, v in fit.baselines.items()},
        "bias": fit.params["bias"],
        "train_s": clock.seconds["sentiment_embed_and_fit"],
    }


# ---------------------------------------------------------------------------------------------
def run() -> dict:
    from features.identity import resolve_identities
    from features.synthetic import PERSON_ID, PERSONS, SyntheticConfig, event_person_ids, generate

    n = customers()
    clock = _Clock()
    t0 = time.perf_counter()
    scfg = SyntheticConfig(customers=n, days=DAYS, seed=SEED)
    with clock.stage("generate"):
        data = generate(scfg)
    events = data.events
    out: dict[str, Any] = {"customers": n, "days": DAYS, "seed": SEED, "events": len(events),
                           "items": len(data.items)}
    with clock.stage("identity_resolution"):
        resolved = resolve_identities(events)
    person = event_person_ids(data)
    out["identity"] = {**_identity(data, resolved, person), "resolve_s": clock.seconds["identity_resolution"]}
    owner = profile_owner(resolved[PROFILE_ID], person)
    persons = data.truth[PERSONS].assign(**{PERSON_ID: lambda d: d[PERSON_ID].astype(str)}).set_index(PERSON_ID)

    start = pd.Timestamp(scfg.start, tz="UTC")
    as_of = start + pd.Timedelta(days=DAYS - REC_TEST_DAYS)
    with tempfile.TemporaryDirectory(prefix="acc-synthetic-") as tmp_s:
        tmp = Path(tmp_s)
        out["recommendation"] = _recommendation(resolved, data, as_of, clock, tmp)
        out["propensity_churn"] = {f"horizon_{h}d": _propensity_at(resolved, owner, persons, clock, h)
                                   for h in CHURN_HORIZONS}
        out["sentiment"] = _sentiment(data, clock, tmp)
    out["ts_range"] = [str(events[TS].min()), str(events[TS].max())]
    out["stage_seconds"] = clock.seconds
    out["total_s"] = round(time.perf_counter() - t0, 1)
    return out


def notes() -> str:
    n = customers()
    grid = ("the pipeline's 3x3 event-weight x ALS grid is tuned on the 14 days before the cutoff"
            if n <= REC_FULL_GRID_MAX_CUSTOMERS else
            f"NO tuning at this size: above {REC_FULL_GRID_MAX_CUSTOMERS:,} customers the 3x3 event-weight x ALS "
            "grid is cut to its first point (the pipeline defaults: weights view 1 / cart 3 / purchase 5 / "
            "return -5, 30-day half-life; ALS 32 factors, reg 0.1, alpha 2, 15 iterations), because each grid "
            "point costs minutes on 2 shared cores")
    return (
        f"Synthetic data: features.synthetic.generate(customers={n:,}, days={DAYS}, seed={SEED}), truth from its "
        "planted tables. Identity: resolve_identities on all events; pairwise precision/recall of 'same profile' "
        "over all pairs of true identifiers (truth 'identities': the person of every non-shared identifier; an "
        "identifier's profile is the one most of its events got), and over pairs of events (true person per "
        "event, the measure of tests/unit/test_identity.py). Note the generator makes every identifier appear "
        "at least once beside its customer id, so perfect resolution is reachable by design. Recommendation: "
        f"train_recommender (the `mirror train recommender` pipeline) on resolved profiles, cutoff = the last "
        f"{REC_TEST_DAYS} days; {grid}; the blend (ALS + complements + popularity) is fit on everything before "
        "the cutoff and scored on add-to-cart/purchase in the 14 days after (bought items excluded, k=10, "
        "coverage = share of items in anyone's top 10), beside popularity (overall) and random fitted on the "
        "same interactions; logged to a temporary MLflow store (nothing in mlruns/). Planted complements: "
        f"share of planted X -> Y pairs (X seen before the cutoff) with Y in the served model's "
        f"top-{COMPLEMENT_K} complements(X) (the known-answer check of tests/model), also in ALS "
        f"similar_items(X) and in the top {COMPLEMENT_K} popular items (baseline). Churn: train_propensity's "
        "protocol through its pure functions (cutoffs, build_training_table, fit_propensity; no MLflow): "
        "profile features as of a training cutoff and of a validation cutoff one horizon later; label = no "
        "purchase in the horizon after the cutoff, among customers with a purchase in the 90 days before; "
        "half the validation profiles early-stop and calibrate LightGBM, the other half is the evaluation; "
        "logistic regression and the base rate are the baselines. Horizon 60 days (the default) and 30 days "
        "(as tests/model): the generator puts churn dates at 55-90% of the period, so with 60 days the "
        "training cutoff (day 60) precedes every planted churn and its labels hold no planted churner. The "
        "same evaluation scores are also set against the planted truth (profile -> true person by most of its "
        "events): the generator's `churned` flag, and 'churns within the horizon after the cutoff'; "
        "'behavioural_label_itself' is the AUC of the 0/1 label against that truth (how good a proxy the "
        f"label is). Sentiment: review and support texts with the planted labels, a stratified sample of "
        f"{SENTIMENT_SAMPLE:,} (seed {SEED}) because frozen MiniLM embeds ~30 texts/s on the 2 shared cores; "
        "fit_sentiment splits it 75/25 stratified; MiniLM + TF-IDF head vs TF-IDF + logistic regression (and "
        "MiniLM + logistic regression) on the same test texts; embeddings cached only in a temporary folder. "
        "The generated texts are templates (label phrases + product noun + filler), so many test texts occur "
        "verbatim in training (test_texts_also_in_train_verbatim) and the task is easy: it checks the "
        "pipeline, not real-world sentiment accuracy. Times: stage_seconds, wall clock on the shared machine "
        "(the recommender stage includes tuning, the evaluation of the three contenders and MLflow "
        "logging/registration)."
    )


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=None, help=f"overrides ${CUSTOMERS_ENV}")
    args = parser.parse_args()
    if args.customers is not None:
        os.environ[CUSTOMERS_ENV] = str(args.customers)
    print(json.dumps(run(), indent=1, default=float))
