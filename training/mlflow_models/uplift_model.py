"""The uplift model as MLflow holds it: two LightGBM boosters (a T-learner) and the columns they read.

Logged *from code*, so this file stays self-contained (numpy, pandas, lightgbm, mlflow; no `training`
import).  Input rows are a customer's profile features (`features.profiles.FEATURE_COLUMNS`, point in
time) plus the `action` considered; the output is P(convert | message), P(convert | no message) and
their difference, the incremental effect (`uplift`) the message is expected to have.
`UpliftCore.rank_actions` scores every known action per customer, best first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

ARTIFACT_KEY = "uplift"
ACTION_COLUMN = "action"
UPLIFT = "uplift"
P_TREATED = "p_treated"
P_CONTROL = "p_control"
_FORMAT_VERSION = 1


class UpliftCore:
    """P(convert) with and without the message from one booster each; `uplift` is the difference."""

    def __init__(self, treated: Any, control: Any, features: list[str], actions: list[str]) -> None:
        self.treated, self.control = treated, control
        self.features, self.actions = list(features), list(actions)

    def design(self, frame: pd.DataFrame) -> np.ndarray:
        """The boosters' input: the feature columns (missing ones NaN), then one indicator per action."""
        x = np.column_stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float) if c in frame
                             else np.full(len(frame), np.nan) for c in self.features]) if self.features \
            else np.empty((len(frame), 0))
        acts = frame[ACTION_COLUMN].astype(str).to_numpy() if ACTION_COLUMN in frame else np.full(len(frame), "")
        onehot = np.column_stack([acts == a for a in self.actions]).astype(float) if self.actions \
            else np.empty((len(frame), 0))
        return np.hstack([x, onehot])

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """uplift, p_treated, p_control per row (`frame` needs the action column)."""
        x = self.design(frame)
        p1 = np.asarray(self.treated.predict(x), dtype=float) if len(x) else np.empty(0)
        p0 = np.asarray(self.control.predict(x), dtype=float) if len(x) else np.empty(0)
        return pd.DataFrame({UPLIFT: p1 - p0, P_TREATED: p1, P_CONTROL: p0}, index=frame.index)

    def rank_actions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Every known action for every row of `frame` (its action column ignored), by uplift, best first:
        columns row (the frame's index), action, uplift, p_treated, p_control."""
        rows = pd.concat([frame.drop(columns=[ACTION_COLUMN], errors="ignore").assign(**{ACTION_COLUMN: a})
                          for a in self.actions], keys=self.actions, names=[ACTION_COLUMN + "_", "row"])
        scored = self.predict(rows.reset_index(drop=True))
        scored.insert(0, ACTION_COLUMN, rows[ACTION_COLUMN].to_numpy())
        scored.insert(0, "row", rows.index.get_level_values("row"))
        return scored.sort_values(["row", UPLIFT], ascending=[True, False], kind="stable").reset_index(drop=True)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "treated.txt").write_text(self.treated.model_to_string())
        (folder / "control.txt").write_text(self.control.model_to_string())
        (folder / "meta.json").write_text(json.dumps({"format": _FORMAT_VERSION, "features": self.features,
                                                      "actions": self.actions}))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> UpliftCore:
        import lightgbm

        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != _FORMAT_VERSION:
            raise ValueError(f"uplift artifact format {meta.get('format')!r}, expected {_FORMAT_VERSION}")
        boost = [lightgbm.Booster(model_str=(folder / f).read_text()) for f in ("treated.txt", "control.txt")]
        return cls(boost[0], boost[1], meta["features"], meta["actions"])


class UpliftModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: `predict(frame)` -> uplift, p_treated, p_control; `unwrap_python_model().core`."""

    def __init__(self) -> None:
        self.core: UpliftCore | None = None

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's context type
        self.core = UpliftCore.load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ANN001
        if self.core is None:
            raise RuntimeError("model not loaded: call load_context (mlflow.pyfunc.load_model does)")
        return self.core.predict(pd.DataFrame(model_input))


# MLflow's models-from-code loader executes this file as a module named "code_model_<hex>" and
# needs `set_model`; a plain import (training, tests) must have no side effects, so only then.
if __name__.startswith("code_model_") or __name__ == "__main__":
    mlflow.models.set_model(UpliftModel())
