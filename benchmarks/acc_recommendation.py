"""Recommendation accuracy on MovieLens-100k under the Microsoft Recommenders protocol.

Protocol (examples/06_benchmarks/movielens.ipynb): 75/25 split stratified per item, seed 42
(`training.evaluation.stratified_split`, the same draw as `python_stratified_split`), every rating
an implicit positive, items seen in train removed, k=10: nDCG, precision, recall, MAP (MAP divided
by all relevant items, as recommenders' table).  Every choice (hyperparameters, input weighting,
ensemble weight) is made on a validation split carved from TRAIN only (a second stratified split,
seed 43); the test set is scored once per model, after all choices are fixed.
Also a time split: one global cut at the 75% quantile of timestamps (train before, test after;
test users with no train history are cold start, served by popularity); its validation split is
the last 25% of train by time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from features.schema import EVENT_TYPE, ITEM_ID, PROFILE_ID, PURCHASE, TS  # noqa: E402
from training.evaluation import recommend_all, score_recs, stratified_split  # noqa: E402
from training.recommender import (  # noqa: E402
    WEIGHT,
    ALSConfig,
    ALSRecommender,
    EASEConfig,
    EASERecommender,
    EnsembleConfig,
    EnsembleRecommender,
    PopularityConfig,
    PopularityRecommender,
    Recommender,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k" / "u.data"
K = 10
ALS_GRID = [
    ALSConfig(factors=f, regularization=r, alpha=a, iterations=30, num_threads=1)
    for f in (16, 32) for r in (1.0, 10.0, 30.0) for a in (1.0, 5.0)
]
EASE_L2 = (300.0, 600.0, 1000.0, 2000.0)
#: Share of ALS in the EASE + ALS ensemble (EASE gets the rest); 0 and 1 are the members alone.
ALS_SHARES = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
#: Interaction weight from the rating: every rating stays a positive, a 5 counts more than a 1.
INPUTS: dict[str, Callable[[pd.Series], np.ndarray]] = {
    "binary": lambda r: np.ones(len(r)),
    "sqrt_rating": lambda r: np.sqrt(r.to_numpy(float) / 3.0),
}


def load(path: Path = DATA) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", names=[PROFILE_ID, ITEM_ID, "rating", "unix"])
    df[PROFILE_ID] = df[PROFILE_ID].astype(str)
    df[ITEM_ID] = df[ITEM_ID].astype(str)
    df[TS] = pd.to_datetime(df["unix"], unit="s", utc=True)
    df[EVENT_TYPE] = PURCHASE
    df[WEIGHT] = 1.0
    return df


def weighted(df: pd.DataFrame, inputs: str) -> pd.DataFrame:
    """The same interactions, weighted by `INPUTS[inputs]` (ratings are input data, never truth)."""
    return df.assign(**{WEIGHT: INPUTS[inputs](df["rating"])})


def _score(model: Recommender, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    seen = {u: set(g) for u, g in train.groupby(PROFILE_ID)[ITEM_ID]}
    users = sorted(test[PROFILE_ID].unique())
    recs = recommend_all(model, users, K, seen)
    m = score_recs(test[[PROFILE_ID, ITEM_ID]], recs, (K,))
    return {k.replace(f"@{K}", ""): round(v, 4) for k, v in m.items() if not k.startswith("hit_rate")}


def _timed_fit(model: Recommender, train: pd.DataFrame) -> tuple[Recommender, float]:
    t0 = time.perf_counter()
    model.fit(train)
    return model, round(time.perf_counter() - t0, 2)


def stratified_carve(train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation for the stratified protocol: the same kind of split, applied to train (seed 43)."""
    return stratified_split(train, 0.75, seed=43, filter_by="item")


def time_carve(train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation for the time split: the last 25% of train by time."""
    cut = train[TS].quantile(0.75)
    return train.loc[train[TS] < cut], train.loc[train[TS] >= cut]


def _ease(l2: float, inputs: str) -> EASERecommender:
    return EASERecommender(EASEConfig(l2=l2, binary=inputs == "binary"))


def _tune(train: pd.DataFrame, carve: Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]) -> dict[str, Any]:
    """Every choice, on validation only: ALS grid, EASE grid x inputs, then the ensemble's ALS share."""
    fit, val = carve(train)
    log: dict[str, list[dict[str, Any]]] = {"als": [], "ease": [], "ensemble": []}

    def keep(kind: str, cfg: dict[str, Any], model: Recommender, data: pd.DataFrame) -> float:
        s = _score(model.fit(data), fit, val)["ndcg"]
        log[kind].append({**cfg, "val_ndcg": s})
        return s

    # ALS: the grid on binary input, then the best point on rating-weighted input
    als_s = [keep("als", {"factors": c.factors, "regularization": c.regularization, "alpha": c.alpha,
                          "inputs": "binary"}, ALSRecommender(c), fit) for c in ALS_GRID]
    als_cfg = ALS_GRID[int(np.argmax(als_s))]
    als_in = {"binary": max(als_s)}
    als_in["sqrt_rating"] = keep("als", {"factors": als_cfg.factors, "regularization": als_cfg.regularization,
                                         "alpha": als_cfg.alpha, "inputs": "sqrt_rating"},
                                 ALSRecommender(als_cfg), weighted(fit, "sqrt_rating"))
    als_inputs = max(als_in, key=als_in.__getitem__)
    # EASE: l2 x inputs
    ease_pts = [(l2, inp) for inp in INPUTS for l2 in EASE_L2]
    ease_s = [keep("ease", {"l2": l2, "inputs": inp}, _ease(l2, inp), weighted(fit, inp)) for l2, inp in ease_pts]
    ease_l2, ease_inputs = ease_pts[int(np.argmax(ease_s))]
    # ensemble: members fitted once on the validation-fit part, then only the share varies
    members = [_ease(ease_l2, ease_inputs).fit(weighted(fit, ease_inputs)),
               ALSRecommender(als_cfg).fit(weighted(fit, als_inputs))]
    base = EnsembleRecommender.of_fitted(members, EnsembleConfig((0.5, 0.5)))
    ens_s = []
    for share in ALS_SHARES:
        s = _score(base.with_weights((1.0 - share, share)), fit, val)["ndcg"]
        log["ensemble"].append({"als_share": share, "val_ndcg": s})
        ens_s.append(s)
    share = ALS_SHARES[int(np.argmax(ens_s))]
    return {"als": als_cfg, "als_inputs": als_inputs, "ease_l2": ease_l2, "ease_inputs": ease_inputs,
            "als_share": share, "log": log}


def _protocol(train: pd.DataFrame, test: pd.DataFrame,
              carve: Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t = _tune(train, carve)
    ens_members = [_ease(t["ease_l2"], t["ease_inputs"]), ALSRecommender(t["als"])]
    rows: dict[str, tuple[Recommender, str]] = {
        "popularity": (PopularityRecommender(PopularityConfig(recent_share=0.0, personal_categories=False)), "binary"),
        "als_default": (ALSRecommender(ALSConfig(factors=100, regularization=0.01, alpha=1.0, iterations=15,
                                                 num_threads=1)), "binary"),
        "als_tuned": (ALSRecommender(t["als"]), t["als_inputs"]),
        "ease_tuned": (_ease(t["ease_l2"], t["ease_inputs"]), t["ease_inputs"]),
    }
    for name, (model, inputs) in rows.items():
        fitted, secs = _timed_fit(model, weighted(train, inputs))
        out[name] = {**_score(fitted, train, test), "fit_s": secs}
    # the ensemble's members are the two tuned models, each on its own input weighting
    t0 = time.perf_counter()
    ens_members[0].fit(weighted(train, t["ease_inputs"]))
    ens_members[1].fit(weighted(train, t["als_inputs"]))
    ens = EnsembleRecommender.of_fitted(ens_members, EnsembleConfig((1.0 - t["als_share"], t["als_share"])))
    out["ensemble_ease_als"] = {**_score(ens, train, test), "fit_s": round(time.perf_counter() - t0, 2)}
    out["chosen_on_validation"] = {
        "als": {"factors": t["als"].factors, "regularization": t["als"].regularization, "alpha": t["als"].alpha,
                "iterations": t["als"].iterations, "inputs": t["als_inputs"]},
        "ease": {"l2": t["ease_l2"], "inputs": t["ease_inputs"]},
        "ensemble_als_share": t["als_share"],
    }
    out["tuning"] = t["log"]
    return out


def run() -> dict[str, Any]:
    t0 = time.perf_counter()
    df = load()
    train, test = stratified_split(df, 0.75, seed=42, filter_by="item")
    figures: dict[str, Any] = {"stratified": _protocol(train, test, stratified_carve)}
    cut = df[TS].quantile(0.75)
    figures["time_split"] = _protocol(df.loc[df[TS] < cut], df.loc[df[TS] >= cut], time_carve)
    figures["time_split"]["cut"] = str(cut)
    figures["total_s"] = round(time.perf_counter() - t0, 1)
    return figures


def notes() -> str:
    return (
        "MovieLens-100k, Microsoft Recommenders protocol (75/25 stratified per item, seed 42, every rating an "
        "implicit positive, seen items removed, k=10, MAP over all relevant items). Nothing is chosen on test: a "
        "validation split is carved from TRAIN (stratified per item, seed 43; for the time split, the last 25% of "
        "train by time) and on it are chosen, in order: the ALS point (factors 16/32 x regularization 1/10/30 x "
        "alpha 1/5, 30 iterations, binary input), then whether ALS takes rating-weighted input (weight "
        "sqrt(rating/3): every rating stays a positive, ratings are input data, test items are only truth); the "
        "EASE l2 (300/600/1000/2000) x input (binary / sqrt-rating); then the ALS share (0..1) of "
        "ensemble_ease_als, a weighted sum of the two tuned models' per-user z-scored scores. Each model is then "
        "refit on all of train and scored once on test. On the stratified protocol the ensemble gains about "
        "+0.01 nDCG@10 over EASE alone, on validation and on test, and stays just under the 0.50 target; on the "
        "time split validation picked an ALS-heavy ensemble that does not beat tuned ALS on test. Also tried on "
        "validation only, gains under 0.002 so left out: RP3beta as a third member, EASE with "
        "popularity-scaled (dropout, EDLAE-style) l2, averaging ALS over seeds, bm25 weighting for ALS, a "
        "time-of-rating popularity prior, user-kNN. Time split: global cut at the 75% timestamp quantile; "
        "cold-start test users get popularity. Anchors: hand-tuned ALS 0.479, BiVAE 0.4751 nDCG@10."
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1, default=float))
