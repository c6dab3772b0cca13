"""The spike's benchmark: tuned generators, the candidate union and the LambdaRank stage on MovieLens-100k.

Per protocol (Recommenders stratified split; time split), everything is chosen on the validation carves of
train (data.PROTOCOLS) and test is scored once:
1. ALS grid and EASE l2 x input on the carves (as benchmarks/acc_recommendation.py, mean nDCG@10);
2. every generator fitted per carve; the union of `n` candidates per validation user; LambdaRank learned on
   them (labels = the carve's held-out items), early-stopped on 15% of the users;
3. validation check: the ranker against each generator on those held-out users (the adoption rule);
4. generators refitted on all of train; test users known to train get the ranker's top 10 over their union,
   cold users popularity (as the benchmark's models do), the same for every row.
Rows: each generator alone, tuned ALS, default ALS, the EASE+ALS z-score blend (ALS share chosen on the
carves), the ranker ratings-only and with attributes (genres, year, demographics).

Run: PYTHONPATH=. python -m research.ranking_spike.evaluate [--protocol stratified|time_split] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from features.schema import ITEM_ID, PROFILE_ID  # noqa: E402
from research.ranking_spike.candidates import (  # noqa: E402
    CandidateSet,
    SideInfo,
    build_candidates,
    score_and_rank,
    union,
    union_weights,
)
from research.ranking_spike.data import (  # noqa: E402
    PROTOCOLS,
    Dataset,
    Interactions,
    Protocol,
    load_movielens,
    stratified_carves,
    truth_matrix,
)
from research.ranking_spike.generators import (  # noqa: E402
    ALS,
    EASE,
    ALSConfig,
    Blend,
    CandidateGenerator,
    CategoryPopularity,
    ItemKNN,
    Popularity,
    RP3Beta,
    ServingPopularity,
)
from research.ranking_spike.ranker import LambdaRanker, RankerConfig, labels, top_k  # noqa: E402

K = 10
ALS_GRID = [ALSConfig(factors=f, regularization=r, alpha=a, inputs="binary")
            for f in (16, 32, 64) for r in (1.0, 10.0, 30.0) for a in (1.0, 5.0)]
EASE_GRID = [(l2, inp) for inp in ("binary", "sqrt_rating") for l2 in (300.0, 600.0, 1000.0, 2000.0)]
BLEND_SHARES = tuple(round(0.1 * j, 1) for j in range(11))
OUT = Path(__file__).resolve().parent / "results"


def ndcg_per_user(top: np.ndarray, truth_rows: sp.csr_matrix, k: int = K) -> np.ndarray:
    """Binary nDCG@k per user (users without held-out items: NaN), as training.evaluation.ndcg_at_k."""
    t = truth_rows.toarray()
    hits = np.take_along_axis(t, top[:, :k], 1)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    n_rel = t.sum(1)
    idcg = np.cumsum(disc)[np.clip(np.minimum(n_rel, k) - 1, 0, None)]
    out = (hits * disc).sum(1) / idcg
    return np.where(n_rel > 0, out, np.nan)


def precision_recall(top: np.ndarray, truth_rows: sp.csr_matrix, k: int = K) -> tuple[float, float]:
    t = truth_rows.toarray()
    hits = np.take_along_axis(t, top[:, :k], 1).sum(1)
    n_rel = t.sum(1)
    ok = n_rel > 0
    return float((hits[ok] / k).mean()), float((hits[ok] / n_rel[ok]).mean())


@dataclass
class Fold:
    """One training frame and its held-out truth, on the protocol's shared indices."""

    inter: Interactions
    truth: sp.csr_matrix
    users: np.ndarray  # every held-out user, those known to the training frame first
    n_known: int

    @classmethod
    def of(cls, train: pd.DataFrame, held: pd.DataFrame, ui: pd.Index, ii: pd.Index) -> Fold:
        inter = Interactions.from_frame(train, ui, ii)
        truth = truth_matrix(held, ui, ii)
        held_users = np.unique(ui.get_indexer(held[PROFILE_ID]))
        known = np.intersect1d(held_users, inter.known_users())
        return cls(inter, truth, np.concatenate([known, np.setdiff1d(held_users, known)]), len(known))

    @property
    def known(self) -> np.ndarray:
        return self.users[: self.n_known]

    @property
    def cold(self) -> np.ndarray:
        return self.users[self.n_known:]


def _mean_ndcg(gen: CandidateGenerator, f: Fold) -> float:
    """Known users only while tuning: every model serves cold users the same fallback."""
    return float(np.nanmean(ndcg_per_user(gen.top(f.known, K, f.inter.seen()), f.truth[f.known])))


def tune(folds: Sequence[Fold], makers: Sequence[Callable[[], CandidateGenerator]]) -> tuple[int, list[float]]:
    """Index of the best maker by mean validation nDCG@10 over the folds, and every maker's score."""
    s = [float(np.mean([_mean_ndcg(m().fit(f.inter), f) for f in folds])) for m in makers]
    return int(np.argmax(s)), [round(x, 4) for x in s]


def union_recall(cs: CandidateSet, truth: sp.csr_matrix, n_known: int | None = None) -> dict[str, float]:
    """Share of each user's held-out items among their candidates (mean over users), and over all pairs;
    with `n_known` (the first users are those known to train) also over known users alone."""
    y = labels(cs, truth)
    hit = np.bincount(cs.rows, weights=y, minlength=len(cs.users))
    rel = np.asarray(truth[cs.users].sum(1)).ravel()
    ok = rel > 0
    out = {"per_user": round(float((hit[ok] / rel[ok]).mean()), 4),
           "pairs": round(float(hit.sum() / rel.sum()), 4)}
    if n_known is not None and n_known < len(cs.users):
        k = ok[:n_known]
        out["per_user_known"] = round(float((hit[:n_known][k] / rel[:n_known][k]).mean()), 4)
    return out


def _blend(scores: dict[str, np.ndarray], share: float) -> np.ndarray:
    """EASE + ALS, per-user z-scored and weighted (the benchmark's ensemble)."""
    def z(s: np.ndarray) -> np.ndarray:
        f = np.where(np.isfinite(s), s, np.nan)
        return np.nan_to_num((f - np.nanmean(f, 1, keepdims=True)) / np.nanstd(f, 1, keepdims=True), nan=-np.inf)
    return share * z(scores["als"]) + (1 - share) * z(scores["ease"])


def _masked_scores(gen: CandidateGenerator, f: Fold, users: np.ndarray) -> np.ndarray:
    s = gen.score(users).astype(np.float32)
    r, c = f.inter.seen()[users].nonzero()
    s[r, c] = -np.inf
    return s


def _top_of(s: np.ndarray, k: int = K) -> np.ndarray:
    part = np.argpartition(-s, k, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(s, part, 1), 1, kind="stable"), 1)


#: Ranker settings tried on the carves; the adoption check on the held-out users picks one (test never does).
RANKER_CONFIGS = {
    "base": RankerConfig(),
    "regularised": RankerConfig(num_leaves=15, min_data_in_leaf=300, learning_rate=0.03, early_stopping=150,
                                eval_share=0.25, lambda_l2=30.0),
    "regularised_no_raw": RankerConfig(num_leaves=15, min_data_in_leaf=300, learning_rate=0.03, early_stopping=150,
                                       eval_share=0.25, lambda_l2=30.0, drop_suffixes=("_score",)),
    "pointwise": RankerConfig(extra={"objective": "binary"}, early_stopping=100, eval_share=0.25),
    "xendcg": RankerConfig(extra={"objective": "rank_xendcg"}, early_stopping=100, eval_share=0.25),
}
UNION_POWERS = (0.0, 1.0, 2.0, 4.0, 8.0)


def _tune_generators(folds: Sequence[Fold]) -> dict[str, Any]:
    best_als, als_scores = tune(folds, [lambda c=c: ALS(c) for c in ALS_GRID])
    als_cfg = ALS_GRID[best_als]
    sq = ALSConfig(als_cfg.factors, als_cfg.regularization, als_cfg.alpha, als_cfg.iterations, "sqrt_rating")
    _, (s_sq,) = tune(folds, [lambda: ALS(sq)])
    if s_sq > max(als_scores):
        als_cfg = sq
    best_ease, ease_scores = tune(folds, [lambda p=p: EASE(*p) for p in EASE_GRID])
    return {"als": asdict(als_cfg), "ease": {"l2": EASE_GRID[best_ease][0], "inputs": EASE_GRID[best_ease][1]},
            "val_als": max(max(als_scores), s_sq), "val_ease": max(ease_scores)}


def run_protocol(ds: Dataset, protocol: Protocol, n: int = 200, chosen: dict[str, Any] | None = None,
                 ranker_configs: dict[str, RankerConfig] | None = None,
                 variants: Sequence[str] = ("ratings_only", "with_attributes")) -> dict[str, Any]:
    """The whole run for one protocol (module docstring); `chosen`: generator settings of an earlier run of
    the same protocol (the grids are deterministic, so this only skips recomputing them)."""
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    df = ds.ratings
    train, test = protocol.split(df)
    ui, ii = pd.Index(sorted(df[PROFILE_ID].unique())), pd.Index(sorted(df[ITEM_ID].unique()))
    side = SideInfo.from_frames(ds.items, ds.users, ii, ui)
    folds = [Fold.of(a, b, ui, ii) for a, b in protocol.carve(train)]
    ranker_configs = ranker_configs or RANKER_CONFIGS

    # 1. generator hyperparameters on the carves
    tuned = chosen or _tune_generators(folds)
    als_cfg = ALSConfig(**tuned["als"])
    ease_p = (tuned["ease"]["l2"], tuned["ease"]["inputs"])
    times["tune_s"] = round(time.perf_counter() - t0, 1)

    def generators() -> list[CandidateGenerator]:
        """Index 4 is the serving fallback; the last is category popularity (attributes only)."""
        return [ALS(als_cfg), EASE(*ease_p), RP3Beta(0.8, 0.5, 100), ItemKNN(100, 10.0), ServingPopularity(),
                Popularity(), Popularity(14.0), Popularity(3.0), CategoryPopularity(side.item_genres)]

    def uses(gens: list[CandidateGenerator], v: str, share: float) -> list[CandidateGenerator]:
        base = gens if v == "with_attributes" else gens[:-1]
        return [*base, Blend([gens[0], gens[1]], [share, 1 - share])]

    def baseline_tops(gens: Sequence[CandidateGenerator], f: Fold, share: float) -> dict[str, np.ndarray]:
        """Top 10 of every generator alone for f.users: known users from it, cold users the serving fallback."""
        fallback = _top_of(_masked_scores(gens[4], f, f.cold)) if len(f.cold) else np.empty((0, K), int)
        out = {g.name: np.concatenate([_top_of(_masked_scores(g, f, f.known)), fallback])
               for g in [*gens, Blend([gens[0], gens[1]], [share, 1 - share])]}
        out["blend_ease_als"] = out.pop("blend")
        return out

    # 2. generators per carve; the blend share; union weights; candidate sets; rankers
    t1 = time.perf_counter()
    val: dict[str, Any] = {"als_grid_best": tuned["val_als"], "ease_grid_best": tuned["val_ease"]}
    carve_gens = [[g.fit(f.inter) for g in generators()] for f in folds]
    blend_val = [float(np.mean([np.nanmean(ndcg_per_user(_top_of(_blend(
        {g.name: _masked_scores(g, f, f.known) for g in gens[:2]}, sh)), f.truth[f.known]))
        for gens, f in zip(carve_gens, folds, strict=True)])) for sh in BLEND_SHARES]
    share = BLEND_SHARES[int(np.argmax(blend_val))]
    val["blend_ease_als_known_users"] = round(max(blend_val), 4)
    carve_tops = [baseline_tops(gens, f, share) for gens, f in zip(carve_gens, folds, strict=True)]
    quality = {name: float(np.mean([np.nanmean(ndcg_per_user(bt[name][: f.n_known], f.truth[f.known]))
                                    for bt, f in zip(carve_tops, folds, strict=True)])) for name in carve_tops[0]}
    quality["blend"] = quality.pop("blend_ease_als")
    val["generator_ndcg_known"] = {k: round(v, 4) for k, v in quality.items()}
    carve_sets: dict[str, list[tuple[CandidateSet, np.ndarray]]] = {v: [] for v in variants}
    powers: dict[str, float] = {}
    val["union_recall_by_power"] = {}
    for v in variants:
        scored = [score_and_rank(uses(gens, v, share), f.inter, f.users) for gens, f in zip(carve_gens, folds,
                                                                                            strict=True)]
        rec = {}
        for pw in UNION_POWERS:
            w = union_weights({k: quality[k] for k in scored[0][1]}, pw)
            rec[pw] = float(np.mean([_recall_of(union(r, n, w), f.users, f.truth) for (_, r), f in
                                     zip(scored, folds, strict=True)]))
        powers[v] = max(rec, key=rec.__getitem__)
        val["union_recall_by_power"][v] = {str(k): round(x, 4) for k, x in rec.items()}
        w = union_weights({k: quality[k] for k in scored[0][1]}, powers[v])
        for (gens, f), sc in zip(zip(carve_gens, folds, strict=True), scored, strict=True):
            cs = build_candidates(uses(gens, v, share), f.inter, f.users, n,
                                  side if v == "with_attributes" else None, w, sc)
            carve_sets[v].append((cs, labels(cs, f.truth)))
        del scored
    times["carve_candidates_s"] = round(time.perf_counter() - t1, 1)

    # 3. rankers per variant and config; the adoption check on each one's early-stopping users
    rankers: dict[str, LambdaRanker] = {}
    adoption: dict[str, Any] = {}
    for v in variants:
        per_cfg = {}
        for cname, cfg in ranker_configs.items():
            t2 = time.perf_counter()
            rk = LambdaRanker(cfg).fit(carve_sets[v])
            times[f"ranker_fit_{v}_{cname}_s"] = round(time.perf_counter() - t2, 1)
            per: dict[str, list[float]] = {}
            for (cs, _), bt, f in zip(carve_sets[v], carve_tops, folds, strict=True):
                held = np.isin(cs.users, list(rk.held_users))
                tr = f.truth[cs.users[held]]
                per.setdefault("ranker", []).extend(ndcg_per_user(top_k(cs, rk.predict(cs))[held], tr).tolist())
                for name, top in bt.items():
                    if v == "ratings_only" and name == "category_pop":
                        continue
                    per.setdefault(name, []).extend(ndcg_per_user(top[held], tr).tolist())
            a = {k: round(float(np.nanmean(x)), 4) for k, x in per.items()}
            best = max((k for k in a if k != "ranker"), key=a.__getitem__)
            a["best_generator"] = best
            a["ranker_gain_over_best"] = round(a["ranker"] - a[best], 4)
            a["trees"] = rk.best_iteration
            per_cfg[cname] = (rk, a)
        pick = max(per_cfg, key=lambda c: per_cfg[c][1]["ranker_gain_over_best"])
        rankers[v] = per_cfg[pick][0]
        adoption[v] = {"picked_config": pick, **{c: a for c, (_, a) in per_cfg.items()},
                       "winner": "ranker" if per_cfg[pick][1]["ranker_gain_over_best"] > 0
                       else per_cfg[pick][1]["best_generator"]}
    val["adoption_check"] = adoption

    # 4. test: refit on all of train, score once
    t3 = time.perf_counter()
    full = Fold.of(train, test, ui, ii)
    gens = [g.fit(full.inter) for g in generators()]
    tops = baseline_tops(gens, full, share)
    fallback = tops["pop_blend"][full.n_known:]
    als_def = ALS(ALSConfig(100, 0.01, 1.0, 15, "binary")).fit(full.inter)
    tops["als_default"] = np.concatenate([_top_of(_masked_scores(als_def, full, full.known)), fallback])
    tr = full.truth[full.users]

    def row(top: np.ndarray) -> dict[str, float]:
        p, r = precision_recall(top, tr)
        nd = ndcg_per_user(top, tr)
        out = {"ndcg": round(float(np.nanmean(nd)), 4), "precision": round(p, 4), "recall": round(r, 4),
               "ndcg_known": round(float(np.nanmean(nd[: full.n_known])), 4)}
        if len(full.cold):
            out["ndcg_cold"] = round(float(np.nanmean(nd[full.n_known:])), 4)
        return out

    res: dict[str, Any] = {name: row(top) for name, top in tops.items()}
    recall: dict[str, Any] = {}
    for v in variants:
        use = uses(gens, v, share)
        w = union_weights({g.name: quality[g.name] for g in use}, powers[v])
        cs = build_candidates(use, full.inter, full.users, n, side if v == "with_attributes" else None, w)
        t4 = time.perf_counter()
        pred = rankers[v].predict(cs)
        times[f"predict_{v}_ms_per_user"] = round(1000 * (time.perf_counter() - t4) / len(full.users), 3)
        res[f"ranker_{v}"] = row(top_k(cs, pred))
        recall[v] = union_recall(cs, full.truth, full.n_known)
        rankers[v].model.save_model(str(OUT / f"{protocol.name}_{v}_ranker.txt"),
                                    num_iteration=rankers[v].best_iteration)
    for g in gens[:2]:
        recall[f"{g.name}_top{n}"] = union_recall_of_top(_masked_scores(g, full, full.known), full, full.known, n)
    times["test_s"] = round(time.perf_counter() - t3, 1)
    times["total_s"] = round(time.perf_counter() - t0, 1)
    return {
        "protocol": protocol.name, "n_candidates": n, "test": res, "test_recall_at_n": recall,
        "test_users": {"known": int(full.n_known), "cold": int(len(full.cold))},
        "chosen": {**tuned, "blend_als_share": share, "union_power": powers},
        "validation": val,
        "ranker": {v: {"trees": rk.best_iteration, "early_stop_ndcg": round(rk.eval_ndcg, 4),
                       "train_rows": rk.train_rows, "features": len(rk.columns), "top_gain": rk.importance(12)}
                   for v, rk in rankers.items()},
        "times": times,
    }


def _recall_of(cand: np.ndarray, users: np.ndarray, truth: sp.csr_matrix) -> float:
    t = truth[users].toarray()
    hit = np.take_along_axis(t, cand, 1).sum(1)
    rel = t.sum(1)
    return float((hit[rel > 0] / rel[rel > 0]).mean())


def union_recall_of_top(s: np.ndarray, f: Fold, users: np.ndarray, n: int) -> dict[str, float]:
    """Recall of one generator's own top n (for comparison with the union)."""
    top = _top_of(s, n)
    t = f.truth[users].toarray()
    hit = np.take_along_axis(t, top, 1).sum(1)
    rel = t.sum(1)
    ok = rel > 0
    return {"per_user": round(float((hit[ok] / rel[ok]).mean()), 4), "pairs": round(float(hit.sum() / rel.sum()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), action="append")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reuse-choices", action="store_true",
                    help="take the generator settings from the last results file of the protocol (skips the grids)")
    ap.add_argument("--carve-seeds", default="", help="stratified carve seeds (default 43,44,45)")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument("--configs", default=",".join(RANKER_CONFIGS), help="ranker configs to try (comma-separated)")
    a = ap.parse_args()
    configs = {c: RANKER_CONFIGS[c] for c in a.configs.split(",")}
    protocols = dict(PROTOCOLS)
    if a.carve_seeds:  # more stratified carves: more queries for the ranker (same split rule)
        seeds = tuple(int(x) for x in a.carve_seeds.split(","))
        protocols["stratified"] = Protocol("stratified", PROTOCOLS["stratified"].split,
                                           lambda tr: stratified_carves(tr, seeds))
    ds = load_movielens()
    OUT.mkdir(exist_ok=True)
    for name in a.protocol or sorted(PROTOCOLS):
        prev = OUT / f"{name}_n{a.n}.json"
        chosen = None
        if a.reuse_choices and prev.exists():
            c = json.loads(prev.read_text())["chosen"]
            chosen = {k: c[k] for k in ("als", "ease", "val_als", "val_ease")} if "val_als" in c else None
        r = run_protocol(ds, protocols[name], a.n, chosen, configs)
        r["ranker_configs_tried"] = list(configs)
        (OUT / f"{name}_n{a.n}{a.tag}.json").write_text(json.dumps(r, indent=1, default=float))
        print(json.dumps({k: r[k] for k in ("protocol", "test", "test_recall_at_n", "times")}, indent=1))


if __name__ == "__main__":
    main()
