"""A keyword sentiment pyfunc in the `mirror-sentiment` output format, logged from code by the serving
tests (the real MiniLM model is too heavy to load in the session fixture)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

NEGATIVE_WORDS = ("terrible", "broken", "awful", "refund")


class TinySentiment(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):  # noqa: ANN001, ANN201
        texts = model_input["text"].astype(str).str.lower()
        neg = texts.str.contains("|".join(NEGATIVE_WORDS)).to_numpy()
        p_neg = np.where(neg, 0.9, 0.05)
        p_pos = np.where(neg, 0.05, 0.9)
        return pd.DataFrame({"label": np.where(neg, "negative", "positive"), "p_negative": p_neg,
                             "p_neutral": 1 - p_neg - p_pos, "p_positive": p_pos, "score": p_pos - p_neg})


if __name__.startswith("code_model_") or __name__ == "__main__":
    mlflow.models.set_model(TinySentiment())
