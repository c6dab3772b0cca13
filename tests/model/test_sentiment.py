"""Sentiment pipeline on small synthetic-style texts: known answers, baselines, MLflow round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.schema import (
    EVENT_ID,
    EVENT_TYPE,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    PURCHASE,
    REVIEW,
    SUPPORT_MESSAGE,
    TEXT,
)
from training import sentiment as s

POS = ["love", "great", "perfect", "beautiful", "excellent", "wonderful", "amazing", "comfortable"]
NEG = ["hate", "terrible", "awful", "broken", "ripped", "disappointing", "horrible", "cheap"]
NEU = ["okay", "average", "fine", "decent", "so-so", "ordinary", "acceptable", "mediocre"]
ITEMS = ["dress", "jacket", "shoes", "sweater", "jeans", "blouse"]


def make_texts(n: int, seed: int) -> pd.DataFrame:
    """Templated reviews whose sentiment is known (the same recipe as the synthetic generator's)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = (NEGATIVE, NEUTRAL, POSITIVE)[i % 3]
        words = {NEGATIVE: NEG, NEUTRAL: NEU, POSITIVE: POS}[label]
        w1, w2 = rng.choice(words, 2, replace=False)
        rows.append({TEXT: f"The {rng.choice(ITEMS)} is {w1}, really {w2}.", "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tracking() -> None:
    from training.registry import configure_tracking

    configure_tracking()


@pytest.fixture(scope="module")
def trained(tracking: None):
    cfg = s.SentimentConfig(seed=1, progress=False, experiment="test-sentiment")
    return s.train_sentiment(cfg, make_texts(240, seed=0))


def test_labels_from_ratings() -> None:
    got = s.labels_from_ratings(pd.Series([1, 2, 3, 4, 5, np.nan]))
    assert got.iloc[:5].tolist() == [NEGATIVE, NEGATIVE, NEUTRAL, POSITIVE, POSITIVE]
    assert pd.isna(got.iloc[5])


def test_tune_bias_recovers_a_shifted_prior() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    logits = np.eye(3)[y] * 2.0 + rng.normal(0, 1.0, (600, 3))
    logp = np.log(s.sm.softmax(logits))
    shifted = logp - np.array([1.5, 1.5, 0.0])  # a head that under-predicts classes 0 and 1
    from sklearn.metrics import f1_score

    bias = s.tune_bias(shifted, y)
    assert f1_score(y, (shifted + bias).argmax(1), average="macro") > f1_score(y, shifted.argmax(1), average="macro")
    assert bias[0] > 0.5 and bias[1] > 0.5


def test_train_sentiment_known_answers(trained) -> None:
    assert trained.promoted and trained.version == "1"
    assert trained.metrics["macro_f1"] > 0.9
    assert set(trained.baselines) == {"tfidf_logreg", "minilm_frozen_logreg"}
    model = s.load_sentiment_model(trained.model_uri)
    out = s.score_texts(model, ["I hate this dress, it is terrible and ripped.",
                                "I love these shoes, perfect and so comfortable!"])
    assert list(out.columns) == ["label", "p_negative", "p_neutral", "p_positive", "score"]
    assert out["label"].tolist() == [NEGATIVE, POSITIVE]
    assert out.loc[0, "score"] < 0 < out.loc[1, "score"]
    np.testing.assert_allclose(out[["p_negative", "p_neutral", "p_positive"]].sum(axis=1), 1.0, atol=1e-6)
    assert ((out["score"] >= -1) & (out["score"] <= 1)).all()


def test_champion_kept_when_not_beaten(trained) -> None:
    # a much weaker model (no TF-IDF, tiny C, no bias tuning, few texts) must not take the alias
    cfg = s.SentimentConfig(seed=1, progress=False, experiment="test-sentiment", head="embedding", C=0.001,
                            tune_bias=False)
    weak = s.train_sentiment(cfg, make_texts(240, seed=0))
    assert not weak.promoted and "does not beat" in weak.reason


def test_scores_for_events_and_csv(trained, tmp_path) -> None:
    events = pd.DataFrame({
        EVENT_ID: ["e1", "e2", "e3", "e4"],
        EVENT_TYPE: [REVIEW, SUPPORT_MESSAGE, PURCHASE, REVIEW],
        TEXT: ["Awful, horrible jacket.", "Wonderful service, amazing!", None, None],
    })
    model = s.load_sentiment_model(trained.model_uri)
    scores = s.sentiment_scores_for_events(events, model)
    assert list(scores.index) == ["e1", "e2"]
    assert scores["e1"] < 0 < scores["e2"]

    src = tmp_path / "in.csv"
    pd.DataFrame({"id": [1, 2], "comment": ["terrible, broken", "excellent, beautiful"]}).to_csv(src, index=False)
    out = s.predict_sentiment_csv(src, "comment", tmp_path / "out.csv", model_uri=trained.model_uri)
    assert out["label"].tolist() == [NEGATIVE, POSITIVE]
    assert pd.read_csv(tmp_path / "out.csv").shape == (2, 7)
    with pytest.raises(ValueError, match="'review'"):
        s.predict_sentiment_csv(src, "review", tmp_path / "x.csv", model_uri=trained.model_uri)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="label"):
        s.fit_sentiment(pd.DataFrame({TEXT: ["a", "b"]}), s.SentimentConfig(), None)  # type: ignore[arg-type]
    bad = make_texts(30, 0).assign(label="angry")
    with pytest.raises(ValueError, match="unknown sentiment labels"):
        s.fit_sentiment(bad, s.SentimentConfig(), None)  # type: ignore[arg-type]


def test_embedding_cache_gives_same_vectors(tmp_path) -> None:
    texts = ["short one", "a slightly longer review text here", "short one"]
    direct = s.embed_texts(texts)
    cached = s.embed_texts(texts, cache_dir=tmp_path)
    again = s.embed_texts(texts[::-1], cache_dir=tmp_path)
    np.testing.assert_allclose(direct, cached, atol=1e-5)
    np.testing.assert_allclose(again, cached[::-1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(direct, axis=1), 1.0, atol=1e-5)


def test_fast_macro_f1_matches_sklearn() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    assert s._macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    assert s._macro_f1(np.array([0, 0]), np.array([0, 0])) == pytest.approx(1 / 3)  # absent classes count 0


def test_short_finetune_path_changes_the_encoder_and_still_separates(tmp_path) -> None:
    cfg = s.SentimentConfig(seed=2, progress=False, finetune_epochs=1.0, finetune_max_texts=32,
                            finetune_batch_size=8, tune_bias=False, finetune_lr=1e-4)
    fit = s.fit_sentiment(make_texts(90, seed=5), cfg, tmp_path)
    assert fit.encoder_dir is not None and (fit.encoder_dir / "config.json").exists()
    tuned = s.sm.TextEncoder(fit.encoder_dir, cfg.max_length).encode(["a lovely dress"])
    assert not np.allclose(tuned, s.embed_texts(["a lovely dress"]), atol=1e-4)  # weights really moved
    assert fit.metrics["macro_f1"] > 0.8
