"""Start the real BentoML server in a subprocess, with tiny champions in a temporary MLflow registry.

Used by tests/serving/conftest.py (one server per session) and by tests that need their own server.
The champions are minimal models in the exact MLflow formats serving loads (the recommender logged
from `training/mlflow_models/recommender_model.py`, sklearn pipelines for churn and purchase).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from features.schema import (
    CHAMPION_ALIAS,
    CHURN_MODEL,
    CUSTOMER_ID,
    PURCHASE_MODEL,
    RECOMMENDER_MODEL,
    SENTIMENT_MODEL,
)

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
N_ITEMS = 20
CATEGORIES = ("shoes", "shirts", "socks", "hats")
CUSTOMERS = tuple(f"c{i}" for i in range(1, 7))
KEYS = {"read-key": "read", "write-key": "read,write", "admin-key": "admin"}
START_TIMEOUT_S = 90


def item_id(i: int) -> str:
    return f"i{i:02d}"


def item_category(i: int) -> str:
    return CATEGORIES[i % len(CATEGORIES)]


def profile_id_for(customer_id: str) -> str:
    """The identity rule of docs/ARCHITECTURE.md for a profile known by one customer id."""
    return "p_" + hashlib.sha1(f"{CUSTOMER_ID}:{customer_id}".encode()).hexdigest()[:16]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recommender_dir(out: Path, seed: int) -> Path:
    sys.path.insert(0, str(REPO))
    from training.mlflow_models.recommender_model import RecommenderCore

    rng = np.random.default_rng(seed)
    n_f = 4
    items = [item_id(i) for i in range(N_ITEMS)]
    # complements: i00 -> i01, i02; i04 -> i05
    comp = {0: [1, 2], 4: [5]}
    indptr, indices, scores = [0], [], []
    for i in range(N_ITEMS):
        for j in comp.get(i, []):
            indices.append(j)
            scores.append(1.0)
        indptr.append(len(indices))
    core = RecommenderCore(
        user_ids=[profile_id_for(c) for c in CUSTOMERS],
        item_ids=items,
        item_categories=[item_category(i) for i in range(N_ITEMS)],
        user_factors=rng.normal(size=(len(CUSTOMERS), n_f)),
        item_factors=rng.normal(size=(N_ITEMS, n_f)),
        comp_indptr=np.array(indptr),
        comp_indices=np.array(indices, dtype=np.int64),
        comp_scores=np.array(scores),
        popularity=np.arange(N_ITEMS, 0, -1, dtype=float),  # i00 most popular
        recent_popularity=np.arange(N_ITEMS, 0, -1, dtype=float),
        config={"alpha": 10.0, "regularization": 0.1, "recent_blend": 0.9},
    )
    return core.save(out)


def log_recommender(tmp: Path, seed: int = 0) -> str:
    return log_recommender_dir(_recommender_dir(tmp / f"rec-{seed}", seed))


def log_recommender_dir(art: Path) -> str:
    """Register a recommender artifact folder (good or deliberately broken) as a new version."""
    import mlflow

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="recommender",
            python_model=str(REPO / "training" / "mlflow_models" / "recommender_model.py"),
            artifacts={"recommender": str(art)},
            registered_model_name=RECOMMENDER_MODEL,
            pip_requirements=["mlflow", "numpy", "pandas"],  # skips slow requirement inference
        )
    return str(info.registered_model_version)


def log_classifier(name: str, seed: int) -> str:
    import mlflow
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from features.profiles import FEATURE_COLUMNS

    cols = ["n_events", "n_orders", "days_since_last_event", "spend_total"]
    assert set(cols) <= set(FEATURE_COLUMNS)
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(200, len(cols))), columns=cols)
    y = (X["n_events"] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                        pip_requirements=["scikit-learn"])
    return str(info.registered_model_version)


def log_sentiment() -> str:
    import mlflow

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="sentiment", python_model=str(HERE / "tiny_sentiment_model.py"),
                                       registered_model_name=SENTIMENT_MODEL, pip_requirements=["mlflow"])
    return str(info.registered_model_version)


def set_champion(name: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, CHAMPION_ALIAS, version)


@dataclass
class Server:
    url: str
    client: httpx.Client
    tmp: Path
    tracking_uri: str
    proc: subprocess.Popen[bytes]
    log: Path

    def headers(self, key: str = "admin-key") -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def post(self, path: str, body: object, key: str | None = "admin-key", **kw: object) -> httpx.Response:
        headers = self.headers(key) if key else {}
        return self.client.post(path, json=body, headers=headers, **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def store_path(self) -> Path:
        """The SQLite profile store this server writes (env MIRROR_STORE)."""
        return self.tmp / "store.db"

    def kill(self) -> None:
        """kill -9 of the whole server: `bentoml serve` and every worker it spawned, then reap it."""
        _kill_tree(self.proc, signal.SIGKILL)
        self.proc.wait(timeout=30)


def _tree(proc: subprocess.Popen[bytes]) -> list[Any]:
    """The server process and its descendants (BentoML's workers run in sessions of their own, so a
    signal to the server's process group does not reach them), as psutil handles: safe from pid reuse."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill_tree(proc: subprocess.Popen[bytes], sig: int, procs: list[Any] | None = None) -> None:
    """Signal the server first (after a SIGKILL it cannot respawn workers), then every worker."""
    import psutil

    for p in procs if procs is not None else _tree(proc):
        with suppress(psutil.NoSuchProcess):  # already gone
            p.send_signal(sig)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server (it stops its workers), then SIGKILL whatever is left, workers included."""
    procs = _tree(proc)
    if proc.poll() is None:
        proc.terminate()
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    _kill_tree(proc, signal.SIGKILL, procs)  # stray workers of a server that exited or was killed
    proc.wait()


@contextmanager
def tracking(uri: str) -> Iterator[None]:
    """Point this process's MLflow client at `uri` for a block (the server gets it by env var)."""
    import mlflow
    import mlflow.tracking.fluent as fluent

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    saved = {k: os.environ.get(k) for k in keys}
    previous = mlflow.get_tracking_uri()
    previous_experiment = fluent._active_experiment_id
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # training entry points read the env var
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # an experiment id made active by earlier tests belongs to another store: start clean here
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
    mlflow.set_experiment("mirror-serving-tests")
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        mlflow.set_registry_uri(previous)
        fluent._active_experiment_id = previous_experiment
        for k, v in saved.items():  # MLflow's setters also write these env vars: put them back
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_server(tmp: Path, extra_env: dict[str, str] | None = None, *, tiny_champions: bool = True,
                 seed: bool = True) -> Iterator[Server]:
    """Register tiny champions (or use what `tmp/mlruns` holds), start `bentoml serve`, wait for /readyz,
    seed events; stop the server at the end."""
    tracking_uri = f"file:{tmp / 'mlruns'}"
    t0 = time.monotonic()
    if tiny_champions:
        with tracking(tracking_uri):
            set_champion(RECOMMENDER_MODEL, log_recommender(tmp))
            set_champion(CHURN_MODEL, log_classifier(CHURN_MODEL, 1))
            set_champion(PURCHASE_MODEL, log_classifier(PURCHASE_MODEL, 2))
            set_champion(SENTIMENT_MODEL, log_sentiment())
        print(f"[mirror_server] champions registered in {time.monotonic() - t0:.1f}s", file=sys.stderr)

    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "MIRROR_STORE": str(tmp / "store.db"),
        "MIRROR_API_KEYS": ";".join(f"{k}={v}" for k, v in KEYS.items()),
        "MIRROR_MAX_BODY_BYTES": str(4 * 1024 * 1024),
        "MIRROR_EXPORT_DIR": str(tmp / "exports"),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")]),
        "BENTOML_HOME": str(tmp / "bentoml"),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    env.update(extra_env or {})
    log = tmp / "server.log"
    bentoml_bin = Path(sys.executable).parent / "bentoml"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [str(bentoml_bin), "serve", "serving.service:Mirror", "--port", str(port), "--host", "127.0.0.1"],
            cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True,  # a signal to the test's process group (Ctrl-C) is not the server's
        )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")
            time.sleep(0.3)
        print(f"[mirror_server] ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        srv = Server(url, client, tmp, tracking_uri, proc, log)
        if seed:
            _seed(srv)
        yield srv
    finally:
        client.close()
        _stop(proc)


#: `with running_server(tmp) as srv:` — start_server as a context manager (same arguments).
running_server = contextmanager(start_server)


def event(eid: str, customer: str, etype: str, item: int | None = None, days_ago: float = 0.0,
          **extra: object) -> dict[str, object]:
    ts = pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=days_ago)
    ev: dict[str, object] = {"event_id": eid, "ts": ts.isoformat(), "channel": "web",
                             "event_type": etype, "customer_id": customer}
    if item is not None:
        ev["item_id"] = item_id(item)
        ev["category"] = item_category(item)
        ev["price"] = 10.0
    ev.update(extra)
    return ev


def _seed(srv: Server) -> None:
    """A little history for every known customer, so the store has profiles and features."""
    events = []
    for n, c in enumerate(CUSTOMERS):
        for j in range(3):
            events.append(event(f"seed-{c}-{j}", c, "view", (n * 3 + j) % N_ITEMS, days_ago=10 - j))
        events.append(event(f"seed-{c}-buy", c, "purchase", (n * 3) % N_ITEMS, days_ago=5, quantity=1))
    r = srv.post("/events", {"events": events}, key="write-key")
    assert r.status_code == 200, r.text
    assert len(r.json()["accepted"]) == len(events), r.text
