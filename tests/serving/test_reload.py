"""Champion hot swap on the real server: no request dropped, a corrupt model never replaces a good one."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import httpx
from mirror_server import Server, log_recommender, log_recommender_dir, set_champion, tracking

from features.schema import RECOMMENDER_MODEL


def log_corrupt_recommender(tmp: Path) -> str:
    """A registered version whose artifact cannot be loaded (an unknown format version)."""
    art = tmp / "corrupt-recommender"
    art.mkdir(exist_ok=True)
    (art / "meta.json").write_text('{"format_version": 999}')
    return log_recommender_dir(art)


def test_swap_under_load_drops_no_request(server: Server):
    outcomes: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post("/recommend", json={"customer_id": "c1", "k": 5})
                except httpx.HTTPError:
                    outcomes[-1] += 1
                    continue
                outcomes[r.status_code] += 1
                if r.status_code == 200:
                    versions[r.json()["model_version"]] += 1

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        with tracking(server.tracking_uri):
            new_version = log_recommender(server.tmp, seed=1)
            set_champion(RECOMMENDER_MODEL, new_version)
        r = server.post("/admin/reload", {}, key="admin-key", timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["models"][RECOMMENDER_MODEL]["version"] == new_version
        after = server.post("/recommend", {"customer_id": "c1", "k": 5}).json()
        assert after["model_version"] == new_version
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert set(outcomes) == {200}, outcomes
    assert outcomes[200] >= 5
    assert new_version in versions  # the swap happened while the load was running


def test_corrupt_champion_leaves_the_last_good_one_serving(server: Server):
    good = server.client.get("/status").json()["models"][RECOMMENDER_MODEL]["version"]
    with tracking(server.tracking_uri):
        bad = log_corrupt_recommender(server.tmp)
        set_champion(RECOMMENDER_MODEL, bad)
    try:
        r = server.post("/admin/reload", {}, key="admin-key", timeout=120)
        assert r.status_code == 200, r.text
        status = r.json()["models"][RECOMMENDER_MODEL]
        assert status["version"] == good and status["loaded"] is True and status["fallback"] is False
        assert f"version {bad}" in status["error"]
        rec = server.post("/recommend", {"customer_id": "c1", "k": 3})
        assert rec.status_code == 200 and rec.json()["model_version"] == good
        assert server.client.get("/readyz").status_code == 200
        metrics = server.client.get("/metrics").text
        assert f'mirror_model_version{{model="{RECOMMENDER_MODEL}"}} {float(good)}' in metrics
    finally:
        with tracking(server.tracking_uri):
            set_champion(RECOMMENDER_MODEL, good)


def log_incompatible_churn() -> str:
    """A churn model that loads and predicts, but on two anonymous columns: every real feature row
    would give garbage (it was fitted on a bare array)."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from features.schema import CHURN_MODEL

    rng = np.random.default_rng(0)
    model = LogisticRegression().fit(rng.normal(size=(50, 2)), rng.integers(0, 2, 50))
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=CHURN_MODEL,
                                        pip_requirements=["scikit-learn"])
    return str(info.registered_model_version)


def test_an_incompatible_churn_model_never_replaces_the_good_one(server: Server):
    from features.schema import CHURN_MODEL

    good = server.client.get("/status").json()["models"][CHURN_MODEL]["version"]
    before = server.post("/scores", {"customer_ids": ["c1"]}).json()["scores"][0]["churn_probability"]
    assert before is not None
    with tracking(server.tracking_uri):
        bad = log_incompatible_churn()
        set_champion(CHURN_MODEL, bad)
    try:
        r = server.post("/admin/reload", {}, key="admin-key", timeout=120)
        assert r.status_code == 200, r.text
        status = r.json()["models"][CHURN_MODEL]
        assert status["version"] == good and status["rejected_version"] == bad and "canary" in status["error"]
        after = server.post("/scores", {"customer_ids": ["c1"]}).json()
        assert after["churn_model_version"] == good and after["scores"][0]["churn_probability"] == before
        metrics = server.client.get("/metrics").text
        assert f'mirror_model_rejected{{model="{CHURN_MODEL}"}} 1.0' in metrics
        assert 'mirror_model_reloads_total{outcome="rejected"}' in metrics
    finally:
        with tracking(server.tracking_uri):
            set_champion(CHURN_MODEL, good)
        server.post("/admin/reload", {}, key="admin-key", timeout=120)
