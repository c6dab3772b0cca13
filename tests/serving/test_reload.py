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
