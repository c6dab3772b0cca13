"""What the ranking stage would cost in serving: LightGBM predict for one request, and top-k neighbour memory.

1. predict: one request = `n` candidates x `f` features scored by one booster call (num_threads=1), for tree
   counts around what early stopping chose (60-300) and beyond; p50/p99 over many calls, numpy input (a pandas
   frame adds column checks per call).  Trees come from a LambdaRank fit on random data with the spike's
   parameters (31 leaves): predict cost depends on trees x depth, not on what was learned.
2. one request end to end on MovieLens: the spike's `build_candidates` for a single user (7 generators, dense
   rows) plus predict: an upper bound for a catalog of 1,682 items (serving would gather candidate columns).
3. memory of item-item top-k neighbour matrices (k=100) as CSR: float32 scores + int32 columns + int64 row
   pointers, for RetailRocket-sized catalogs (235,061 items with events in the full Kaggle events.csv; 417,053
   items in item_properties), against a dense items x items float32 matrix.

Run: PYTHONPATH=. python -m research.ranking_spike.serving_cost
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def predict_cost(n: int = 200, f: int = 40, trees: tuple[int, ...] = (60, 150, 300, 600), reps: int = 300,
                 seed: int = 0) -> dict[str, Any]:
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200 * 500, f))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(size=len(x)) > 1.5).astype(int)
    group = np.full(500, 200)
    params = {"objective": "lambdarank", "num_leaves": 31, "min_data_in_leaf": 100, "learning_rate": 0.05,
              "num_threads": 1, "verbose": -1, "seed": seed}
    booster = lgb.train(params, lgb.Dataset(x, y, group=group), num_boost_round=max(trees))
    req = rng.normal(size=(n, f))
    out: dict[str, Any] = {}
    for t in trees:
        for _ in range(20):  # warm-up
            booster.predict(req, num_iteration=t, num_threads=1)
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            booster.predict(req, num_iteration=t, num_threads=1)
            samples.append(time.perf_counter() - t0)
        out[f"trees_{t}"] = _percentiles(samples)
    return {"candidates": n, "features": f, **out}


def request_cost(reps: int = 100) -> dict[str, Any]:
    """A real single-user request on MovieLens (time split, ratings and attributes): candidates + features +
    predict, through the spike's batch code with a batch of one."""
    import pandas as pd

    from features.schema import ITEM_ID, PROFILE_ID
    from research.ranking_spike.candidates import SideInfo, build_candidates
    from research.ranking_spike.data import PROTOCOLS, Interactions, load_movielens
    from research.ranking_spike.generators import (
        ALS,
        EASE,
        CategoryPopularity,
        ItemKNN,
        Popularity,
        RP3Beta,
        ServingPopularity,
    )

    ds = load_movielens()
    train, _ = PROTOCOLS["time_split"].split(ds.ratings)
    ui = pd.Index(sorted(ds.ratings[PROFILE_ID].unique()))
    ii = pd.Index(sorted(ds.ratings[ITEM_ID].unique()))
    inter = Interactions.from_frame(train, ui, ii)
    side = SideInfo.from_frames(ds.items, ds.users, ii, ui)
    gens = [g.fit(inter) for g in (ALS(), EASE(300.0), RP3Beta(), ItemKNN(), ServingPopularity(), Popularity(),
                                   Popularity(14.0), Popularity(3.0), CategoryPopularity(side.item_genres))]
    import lightgbm as lgb

    users = inter.known_users()[:200]
    cs = build_candidates(gens, inter, users, 200, side)
    booster = lgb.train({"objective": "lambdarank", "num_threads": 1, "verbose": -1},
                        lgb.Dataset(cs.features, (cs.features["als_logrank"] < 2.5).astype(int),
                                    group=cs.groups()), num_boost_round=150)
    cand_t, pred_t = [], []
    for j in range(reps):
        u = users[j % len(users): j % len(users) + 1]
        t0 = time.perf_counter()
        one = build_candidates(gens, inter, u, 200, side)
        t1 = time.perf_counter()
        booster.predict(one.features.to_numpy(np.float64), num_threads=1)
        pred_t.append(time.perf_counter() - t1)
        cand_t.append(t1 - t0)
    return {"features": int(cs.features.shape[1]), "candidates_and_features": _percentiles(cand_t),
            "predict_150_trees": _percentiles(pred_t)}


def topk_memory(k: int = 100, catalogs: tuple[int, ...] = (6_610, 235_061, 417_053)) -> dict[str, Any]:
    """Bytes of an items x k CSR (built, not estimated) against dense items^2 float32."""
    out = {}
    for n in catalogs:
        rng = np.random.default_rng(0)
        indptr = np.arange(0, (n + 1) * k, k, dtype=np.int64)
        m = sp.csr_matrix((rng.random(n * k, dtype=np.float32), rng.integers(0, n, n * k, dtype=np.int32), indptr),
                          shape=(n, n))
        nbytes = m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
        out[f"items_{n}"] = {"csr_mib": round(nbytes / 2**20, 1),
                             "csr_float16_mib": round((m.data.astype(np.float16).nbytes + m.indices.nbytes +
                                                       m.indptr.nbytes) / 2**20, 1),
                             "dense_float32_gib": round(n * n * 4 / 2**30, 1)}
        del m
    return {"k": k, **out}


def main() -> None:
    res = {"predict": predict_cost(), "request": request_cost(), "topk_memory": topk_memory()}
    print(json.dumps(res, indent=1))
    from research.ranking_spike.evaluate import OUT

    OUT.mkdir(exist_ok=True)
    (OUT / "serving_cost.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
