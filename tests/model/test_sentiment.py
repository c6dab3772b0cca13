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
    assert trained.metrics["test_macro_f1"] > 0.9
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
    # not champion: below its own TF-IDF baseline already (the gate checked first), or below the champion
    assert not weak.promoted and ("loses to its baseline" in weak.reason or "does not beat" in weak.reason)


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
    assert out["sentiment_label"].tolist() == [NEGATIVE, POSITIVE]
    written = pd.read_csv(tmp_path / "out.csv")
    assert list(written.columns) == ["id", "comment", "sentiment_label", "sentiment_p_negative",
                                     "sentiment_p_neutral", "sentiment_p_positive", "sentiment_score"]
    # the input's own columns stay apart: one named like an output is refused, another prefix is taken
    mine = tmp_path / "mine.csv"
    pd.read_csv(src).assign(sentiment_label="kept").to_csv(mine, index=False)
    with pytest.raises(ValueError, match="'sentiment_label'"):
        s.predict_sentiment_csv(mine, "comment", tmp_path / "y.csv", model_uri=trained.model_uri)
    again = s.predict_sentiment_csv(mine, "comment", tmp_path / "y.csv", model_uri=trained.model_uri, prefix="m_")
    assert again["sentiment_label"].tolist() == ["kept", "kept"] and again["m_label"].tolist() == [NEGATIVE, POSITIVE]
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
    assert len(fit.encoder_dirs) == 1 and (fit.encoder_dirs[0] / "config.json").exists()
    tuned = s.sm.TextEncoder(fit.encoder_dirs[0], cfg.max_length).encode(["a lovely dress"])
    assert not np.allclose(tuned, s.embed_texts(["a lovely dress"]), atol=1e-4)  # weights really moved
    assert fit.metrics["macro_f1"] > 0.8
    assert fit.params["n_finetune"] == 32 and fit.params["ensemble_weight"] == cfg.finetune_weight
    assert "minilm_finetuned_alone" in fit.baselines
    ft = fit.predictor.head["finetuned"]
    assert ft["W"].shape == (3, 384) and ft["b"].shape == (3,)


def test_finetune_is_cached_by_settings_and_data(tmp_path) -> None:
    cfg = s.SentimentConfig(seed=3, progress=False, finetune_epochs=1.0, finetune_max_texts=24,
                            finetune_batch_size=8, finetune_cache_dir=str(tmp_path / "ft"))
    texts = make_texts(90, seed=6)
    first = s.fit_sentiment(texts, cfg, tmp_path / "a")
    again = s.fit_sentiment(texts, cfg, tmp_path / "b")
    assert not first.params["finetune_cached"] and again.params["finetune_cached"]
    assert first.params["finetune_key"] == again.params["finetune_key"]
    assert again.predictions["model"] == first.predictions["model"]
    key_dir = tmp_path / "ft" / first.params["finetune_key"]
    assert (key_dir / "head.npz").exists() and (key_dir / "proba_finetuned_test.npy").exists()
    assert not (key_dir / "ckpt.pt").exists()  # removed once the fine-tune finished
    other = s.finetune_key(["x"], ["positive"], cfg)
    assert other != s.finetune_key(["x"], ["positive"], s.SentimentConfig(finetune_lr=1e-4))


def test_bucketed_batches_cover_every_text_once_with_similar_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 128, 1000)
    batches = s._bucketed_batches(lengths, 16, np.random.default_rng(1), pool=8)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 20  # vs ~100 for random batches: dynamic padding pads little


def test_tune_ensemble_prefers_the_informative_part() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 900)
    good = np.log(s.sm.softmax(np.eye(3)[y] * 3.0 + rng.normal(0, 1.0, (900, 3))))
    noise = np.log(s.sm.softmax(rng.normal(0, 1.0, (900, 3))))
    w, bias, f1 = s.tune_ensemble(noise, good, y)
    assert w >= 0.8 and f1 > 0.8 and bias.shape == (3,)
    w, _, _ = s.tune_ensemble(good, noise, y)
    assert w <= 0.2


def test_ensemble_of_two_finetunes_round_trips_through_mlflow(tracking, tmp_path) -> None:
    cfg = s.SentimentConfig(seed=4, progress=False, experiment="test-sentiment-ft", register=False,
                            finetune_epochs=1.0, finetune_max_texts=24, finetune_batch_size=8, finetune_members=2)
    res = s.train_sentiment(cfg, make_texts(90, seed=7))
    model = s.load_sentiment_model(res.model_uri)
    texts = ["I hate this dress, it is terrible and ripped.", "I love these shoes, perfect and so comfortable!"]
    out = s.score_texts(model, texts)
    assert out["label"].tolist() == [NEGATIVE, POSITIVE]
    np.testing.assert_allclose(out[["p_negative", "p_neutral", "p_positive"]].sum(axis=1), 1.0, atol=1e-6)
    predictor = model.unwrap_python_model().predictor
    assert len(predictor.encoders) == 2 and len(predictor.head["finetuned"]["members"]) == 2
    a, b = (enc.encode(["a lovely dress"]) for enc in predictor.encoders)
    assert not np.allclose(a, b, atol=1e-4)  # two fine-tunes (seeds 4 and 5), not one loaded twice
    assert {"minilm_finetuned_member0", "minilm_finetuned_member1"} <= set(res.baselines)


class _Uniform:
    """A logistic regression stand-in that says nothing (1/3 each), so only the fine-tuned heads decide."""

    classes_ = np.array(s.SENTIMENT_LABELS)

    def predict_proba(self, X) -> np.ndarray:  # noqa: ANN001
        return np.full((X.shape[0], 3), 1 / 3)


def test_finetuned_members_are_averaged_on_log_probabilities() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    rng = np.random.default_rng(5)
    heads = [{"W": rng.normal(size=(3, 4)), "b": rng.normal(size=3), "scale": 2.0} for _ in range(2)]
    embs = [rng.normal(size=(6, 4)) for _ in range(2)]
    head = {"tfidf": TfidfVectorizer().fit(["good bad"]), "use_embedding": False, "clf": _Uniform(), "bias": np.zeros(3),
            "finetuned": {"members": heads, "weight": 0.75}}
    got = s.sm.SentimentPredictor(head, None).proba(["a"] * 6, embs)
    mean = (s.finetuned_log_proba(heads[0], embs[0]) + s.finetuned_log_proba(heads[1], embs[1])) / 2
    np.testing.assert_allclose(got, s.sm.softmax(0.25 * np.log(1 / 3) + 0.75 * mean), atol=1e-12)
    with pytest.raises(ValueError, match="2 fine-tuned heads but 1"):
        s.sm.SentimentPredictor(head, None).proba(["a"] * 6, embs[:1])
    with pytest.raises(ValueError, match="needs 2 encoder"):
        s.sm.SentimentPredictor(head, None).proba(["a"] * 6)


def test_loading_the_model_is_quiet_and_predict_takes_frames_series_and_lists(trained) -> None:
    """MLflow warns on every load of a pyfunc whose predict has no type hints; the CLI printed it each call."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = s.load_sentiment_model(trained.model_uri)
    assert not [w for w in caught if "type hint" in str(w.message).lower()]
    texts = ["Awful, horrible jacket.", "Wonderful, amazing dress!"]
    by_frame = model.predict(pd.DataFrame({TEXT: texts}))
    assert by_frame["label"].tolist() == [NEGATIVE, POSITIVE]
    python_model = model.unwrap_python_model()
    for other in (pd.Series(texts), texts):
        pd.testing.assert_frame_equal(python_model.predict(None, other).reset_index(drop=True),
                                      by_frame.reset_index(drop=True))
