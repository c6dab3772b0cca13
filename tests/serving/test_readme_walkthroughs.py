"""README's walk-throughs run verbatim against a demo-like server, and answer what README shows.

The front-end and email sub-sections of README's "Walk-throughs" are run as one bash script, block by
block, in a folder laid out like a clone after `make demo` (`.venv`, `data/demo/store.db`,
`mlruns/mlflow.db`), with only README's URL, `http://localhost:3000`, replaced by the test server's.
`curl` fails on an HTTP error (`--fail-with-body`), so a call that breaks fails here. Each answer README
shows after a block (```json, ```csv or ```text) is compared with the block's real output:

- JSON: every key shown is in the answer with a value of the same type. Strings, booleans, null and
  integers must be equal; a number with a decimal point is an example (any number); `...` in a string
  is any text (`"rec_..."`: any string starting `rec_`); a bare `...` is any value; a list shows the
  whole list, unless its last element is a bare `...` (then the answer's list starts with those shown).
- CSV: the header line equal, as many lines, each cell under the same rules as JSON strings and numbers.
- text (a CLI's table): every column name of the shown header line is in the real header line.

The server is demo-like: the synthetic generator's seed 7 (customer ids are index-based, so the demo's
`C0000000011` is here too), data ending today, the generator's catalog, and champions with the demo's
ids: a small co-occurrence recommender built from the events (no training, so the test stays fast),
the tiny churn, purchase and sentiment models of mirror_server.py. No API keys (the demo's mode).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mirror_server import (
    REPO,
    Server,
    log_classifier,
    log_recommender_dir,
    log_sentiment,
    set_champion,
    start_server,
    tracking,
)
from scipy import sparse

from features.identity import resolve_identities
from features.schema import (
    CHURN_MODEL,
    EVENT_TYPE,
    ITEM_ID,
    PROFILE_ID,
    PURCHASE,
    PURCHASE_MODEL,
    RECOMMENDER_MODEL,
    SENTIMENT_MODEL,
    TS,
)
from features.store import SQLiteProfileStore
from features.synthetic import SyntheticConfig, generate

README = REPO / "README.md"
WALKTHROUGHS = "## Walk-throughs"
#: the sub-sections whose blocks run here (the data scientist's trains models: too slow for this test)
RUN_SECTIONS = ("### Front end", "### Email and SMS")
README_URL = "http://localhost:3000"
CUSTOMERS, DAYS, SEED = 300, 120, 7
ANY = "\x00any"  # what a bare `...` in an example answer becomes
MARK = "@@readme-block@@"
SCRIPT_TIMEOUT_S = 240


# -- README ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One bash block of a walk-through and the answer README shows after it (kind None: none)."""

    section: str
    code: str
    answer_kind: str | None = None
    answer: str | None = None

    @property
    def title(self) -> str:
        return f"{self.section}: {self.code.strip().splitlines()[0][:90]}"


_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def walkthrough_steps(text: str) -> tuple[str, list[Step]]:
    """(setup code, steps of RUN_SECTIONS) of README's Walk-throughs section, in order."""
    start = text.index(WALKTHROUGHS)
    end = text.find("\n## ", start + len(WALKTHROUGHS))
    body = text[start:end if end > 0 else len(text)]
    headings = [(m.start(), m.group(0).strip()) for m in re.finditer(r"^### .*$", body, re.M)]
    setup: list[str] = []
    steps: list[Step] = []
    for m in _FENCE.finditer(body):
        kind, code = m.group(1), m.group(2)
        section = next((h for pos, h in reversed(headings) if pos < m.start()), None)
        if kind == "bash" and section is None:
            setup.append(code)
        elif section is None or not section.startswith(RUN_SECTIONS):
            continue
        elif kind == "bash":
            steps.append(Step(section, code))
        elif steps and steps[-1].answer_kind is None and steps[-1].section == section:
            steps[-1] = Step(section, steps[-1].code, kind, code)
        else:
            raise AssertionError(f"README: a ```{kind} answer in {section!r} follows no bash block:\n{code}")
    return "\n".join(setup), steps


def example_json(text: str) -> Any:
    """An example answer as JSON, a bare `...` (outside strings) read as ANY."""
    out = re.sub(r'"(?:[^"\\]|\\.)*"|\.\.\.', lambda m: json.dumps(ANY) if m.group(0) == "..." else m.group(0),
                 text)
    return json.loads(out)


def mismatches(shown: Any, real: Any, path: str = "$") -> list[str]:
    """What in `real` contradicts the example `shown` (the rules of this module's docstring)."""
    if shown == ANY:
        return []
    if isinstance(shown, dict):
        if not isinstance(real, dict):
            return [f"{path}: an object expected, got {real!r}"]
        out = [f"{path}.{k}: missing" for k in shown if k not in real]
        for k, v in shown.items():
            if k in real:
                out += mismatches(v, real[k], f"{path}.{k}")
        return out
    if isinstance(shown, list):
        if not isinstance(real, list):
            return [f"{path}: a list expected, got {real!r}"]
        more = bool(shown) and shown[-1] == ANY
        items = shown[:-1] if more else shown
        if len(real) < len(items) or (not more and len(real) != len(items)):
            return [f"{path}: {len(items)}{' or more' if more else ''} elements expected, got {len(real)}: {real!r}"]
        return [e for n, v in enumerate(items) for e in mismatches(v, real[n], f"{path}[{n}]")]
    return [] if _scalar_matches(shown, real) else [f"{path}: {shown!r} expected, got {real!r}"]


def _scalar_matches(shown: Any, real: Any) -> bool:
    if isinstance(shown, bool) or shown is None:
        return real is shown
    if isinstance(shown, float):
        return isinstance(real, int | float) and not isinstance(real, bool)
    if isinstance(shown, int):
        return isinstance(real, int) and not isinstance(real, bool) and real == shown
    if isinstance(shown, str) and "..." in shown:
        return isinstance(real, str) and _text_matches(shown, real)
    return real == shown


def _text_matches(shown: str, real: str) -> bool:
    """`shown` with each `...` standing for any text."""
    return re.fullmatch(".*".join(map(re.escape, shown.split("..."))), real, re.S) is not None


def _cell_matches(shown: str, real: str) -> bool:
    """A CSV cell: `...` and decimal-point numbers as in JSON, anything else as written."""
    if "..." in shown:
        return _text_matches(shown, real)
    if re.fullmatch(r"-?\d+\.\d+", shown):
        return re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", real) is not None
    return real == shown


def answer_mismatches(step: Step, output: str) -> list[str]:
    if step.answer_kind == "json":
        try:
            real = json.loads(output)
        except json.JSONDecodeError:
            return [f"the output is not one JSON document:\n{output}"]
        return mismatches(example_json(step.answer or ""), real)
    if step.answer_kind == "csv":
        shown = list(csv.reader(io.StringIO(step.answer or "")))
        real = list(csv.reader(io.StringIO(output)))
        if len(real) != len(shown) or real[:1] != shown[:1]:
            return [f"CSV with header {shown[:1]} and {len(shown)} lines expected, got:\n{output}"]
        return [f"line {n + 1}, column {c + 1}: {s!r} expected, got {r!r}" for n, (srow, rrow) in
                enumerate(zip(shown, real, strict=True)) for c, (s, r) in enumerate(zip(srow, rrow, strict=False))
                if not _cell_matches(s, r)] + [f"line {n + 1}: {len(srow)} cells expected, got {len(rrow)}"
                                               for n, (srow, rrow) in enumerate(zip(shown, real, strict=True))
                                               if len(srow) != len(rrow)]
    if step.answer_kind == "text":
        lines = [ln for ln in output.splitlines() if ln.strip()]
        header = set(lines[0].split()) if lines else set()
        wanted = [w for w in (step.answer or "").splitlines()[0].split() if w != "..."]
        return [f"column {w!r} not in the output's header: {lines[:1]}" for w in wanted if w not in header]
    return []


def walkthrough_script(setup: str, steps: list[Step], url: str) -> str:
    """One bash script: README's setup, then each step followed by a marker line on stdout."""
    parts = ["set -eo pipefail",
             # an HTTP error fails the step (README's own lines stay as written)
             'curl() { command curl --fail-with-body --show-error "$@"; }',
             setup.replace(README_URL, url)]
    for step in steps:
        parts += [step.code.replace(README_URL, url), f"printf '\\n%s\\n' '{MARK}'"]
    return "\n".join(parts) + "\n"


# -- a demo-like server ------------------------------------------------------------------------------
def demo_recommender(events: pd.DataFrame, items: pd.DataFrame, out: Path) -> Path:
    """A recommender artifact over the catalog and profiles of `events` (resolved): category factors,
    co-occurrence complements, popularity by purchases (recent: the last 30 days)."""
    from training.mlflow_models.recommender_model import RecommenderCore

    item_ids = items[ITEM_ID].astype(str).tolist()
    categories = items["category"].astype(str).tolist()
    index = {i: n for n, i in enumerate(item_ids)}
    seen = events[events[ITEM_ID].isin(list(index))]
    users = sorted(seen[PROFILE_ID].astype(str).unique())
    uindex = {u: n for n, u in enumerate(users)}
    rows, cols = seen[PROFILE_ID].astype(str).map(uindex).to_numpy(), seen[ITEM_ID].astype(str).map(index).to_numpy()
    x = sparse.csr_matrix((np.ones(len(seen)), (rows, cols)), shape=(len(users), len(item_ids)))
    x.data[:] = 1.0
    levels = sorted(set(categories))
    rng = np.random.default_rng(SEED)
    item_f = np.eye(len(levels))[[levels.index(c) for c in categories]] + rng.normal(0, 0.05, (len(item_ids), len(levels)))
    user_f = np.asarray(x @ item_f) / np.maximum(np.asarray(x.sum(axis=1)), 1.0)
    co = (x.T @ x).tolil()
    co.setdiag(0)
    co = co.tocsr()
    indptr, indices, scores = [0], [], []
    for n in range(len(item_ids)):
        row = co.getrow(n)
        top = row.indices[np.argsort(-row.data, kind="stable")][:5]
        indices += top.tolist()
        scores += (row[0, top].toarray().ravel() / max(row.data.max(initial=1.0), 1.0)).tolist()
        indptr.append(len(indices))
    bought = seen[seen[EVENT_TYPE] == PURCHASE]
    recent = bought[bought[TS] >= bought[TS].max() - pd.Timedelta(days=30)]
    count = lambda f: np.bincount(f[ITEM_ID].astype(str).map(index), minlength=len(item_ids)).astype(float)  # noqa: E731
    core = RecommenderCore(user_ids=users, item_ids=item_ids, item_categories=categories, user_factors=user_f,
                           item_factors=item_f, comp_indptr=np.array(indptr), comp_indices=np.array(indices, dtype=np.int64),
                           comp_scores=np.array(scores), popularity=count(bought) + 0.1, recent_popularity=count(recent),
                           config={"alpha": 10.0, "regularization": 0.1, "recent_blend": 0.5})
    return core.save(out)


@dataclass
class Demo:
    server: Server
    clone: Path  # laid out like a clone after `make demo`: README's commands run here


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    clone = tmp_path_factory.mktemp("clone")
    (clone / "data" / "demo").mkdir(parents=True)
    (clone / "mlruns").mkdir()
    (clone / ".venv").symlink_to(REPO / ".venv")  # README's `source .venv/bin/activate`
    today = datetime.now(UTC).date().isoformat()
    data = generate(SyntheticConfig(customers=CUSTOMERS, days=DAYS, seed=SEED, end=today))
    store_path = clone / "data" / "demo" / "store.db"
    store = SQLiteProfileStore(store_path)
    try:
        store.load_events(data.events, progress=False)
        upsert = store.upsert_items(data.items)
        assert not len(upsert.errors), upsert.errors
    finally:
        store.close()
    uri = f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}"  # what README's setup exports, as `make demo` does
    # artifacts go under the current directory's ./mlruns (MLflow's default with a database backend)
    with contextlib.chdir(clone), tracking(uri):
        events = resolve_identities(data.events)
        set_champion(RECOMMENDER_MODEL, log_recommender_dir(demo_recommender(events, data.items, clone / "rec")))
        set_champion(CHURN_MODEL, log_classifier(CHURN_MODEL, 1))
        set_champion(PURCHASE_MODEL, log_classifier(PURCHASE_MODEL, 2))
        set_champion(SENTIMENT_MODEL, log_sentiment())
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "MIRROR_STORE": str(store_path),
           "MIRROR_API_KEYS": ""}  # no keys: the demo's mode, as README's calls expect
    gen = start_server(clone, env, tiny_champions=False, seed=False)
    server = next(gen)
    try:
        yield Demo(server, clone)
    finally:
        for _ in gen:
            pass


def _bash_env() -> dict[str, str]:
    """This environment without MLflow's variables (README's setup exports its own) or the test's venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p) != Path(sys.executable).parent)
    return env


# -- tests -------------------------------------------------------------------------------------------
def test_the_walkthroughs_are_there_and_shown_with_answers():
    """The runner below is only as good as what it finds: each sub-section it runs has calls with
    answers, and the setup points at README's URL."""
    setup, steps = walkthrough_steps(README.read_text())
    assert f"MIRROR={README_URL}" in setup, setup
    for section in RUN_SECTIONS:
        mine = [s for s in steps if s.section.startswith(section)]
        assert sum(s.answer_kind == "json" for s in mine) >= 4, section
        assert all("curl" in s.code or "mirror " in s.code for s in mine if s.answer_kind), section
    assert any("mirror report lift" in s.code for s in steps) and any("mirror report attribution" in s.code
                                                                       for s in steps)


def test_the_example_rules():
    shown = example_json('{"a": "rec_...", "b": ..., "c": [{"x": 1.5}, ...], "d": [], "e": true, "f": 0}')
    assert mismatches(shown, {"a": "rec_12", "b": None, "c": [{"x": 2}, {"x": 3}], "d": [], "e": True, "f": 0}) == []
    bad = mismatches(shown, {"a": "p_1", "c": [], "d": [1], "e": 1, "f": 0.0})
    assert [m.split(":")[0] for m in bad] == ["$.b", "$.a", "$.c", "$.d", "$.e", "$.f"], bad
    assert mismatches("The ... is in your ...", "The Trail runner is in your cart") == []
    assert mismatches("The ... is in your ...", "Your cart") != []


def test_readme_walkthroughs_run_verbatim_and_answer_as_shown(demo: Demo):
    setup, steps = walkthrough_steps(README.read_text())
    script = walkthrough_script(setup, steps, demo.server.url)
    run = subprocess.run(["bash", "-c", script], cwd=demo.clone, env=_bash_env(), capture_output=True,
                         text=True, timeout=SCRIPT_TIMEOUT_S)
    outputs = run.stdout.split(f"\n{MARK}\n")
    if run.returncode != 0:
        failed = steps[len(outputs) - 1] if len(outputs) <= len(steps) else None
        pytest.fail(f"README step failed (exit {run.returncode}): {failed.title if failed else '?'}\n"
                    f"output: {outputs[-1][-2000:]}\nstderr: {run.stderr[-3000:]}")
    problems = []
    for step, output in zip(steps, outputs, strict=False):
        problems += [f"{step.title}\n    {m}" for m in answer_mismatches(step, output.strip("\n"))]
    assert not problems, "README answers differ from the service's:\n" + "\n".join(problems)


def test_a_decision_says_when_its_window_began(demo: Demo):
    """`decided_at` is the start of the decision window, a time (it was the window's bare number)."""
    r = demo.server.post("/next_best_action", {"customer_id": "C0000000011", "channel": "web"}, key=None)
    assert r.status_code == 200, r.text
    start = datetime.fromisoformat(r.json()["decided_at"])
    assert start.tzinfo is not None and timedelta(0) <= datetime.now(UTC) - start <= timedelta(days=1), start
