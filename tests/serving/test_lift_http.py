"""The decision log over HTTP: an outbound NBA decision, treated or held out, lands in the store's log,
and `mirror report lift --store` reads it together with what the customers bought afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from mirror_server import profile_id_for

from features.store import SQLiteProfileStore
from serving import nba

TREATED, HELD = "lift-http-treated", "lift-http-held"


def _campaign() -> str:
    """A campaign whose holdout draw holds out one of the two customers and not the other."""
    share = nba.NBAConfig().holdout_share
    for i in range(100_000):
        name = f"lift-{i}"
        if (nba.is_holdout(name, profile_id_for(HELD), share)
                and not nba.is_holdout(name, profile_id_for(TREATED), share)):
            return name
    raise AssertionError("no campaign splits the two customers")


def _event(eid: str, customer: str, etype: str, **extra: object) -> dict[str, object]:
    return {"event_id": eid, "ts": pd.Timestamp.now(tz="UTC").isoformat(), "channel": "web", "event_type": etype,
            "customer_id": customer, "item_id": "i01", "category": "shirts", "price": 40.0, **extra}


def test_treated_and_held_out_decisions_land_in_the_log_and_the_lift_report_reads_them(server, tmp_path: Path):
    for c in (TREATED, HELD):
        r = server.post("/events", {"events": [_event(f"{c}-cart", c, "add_to_cart", quantity=1)]}, key="write-key")
        assert r.status_code == 200, r.text
        r = server.client.put("/consent", json={"customer_id": c, "purpose": "email_marketing", "granted": True},
                              headers=server.headers("write-key"))
        assert r.status_code == 200, r.text
    campaign = _campaign()
    answers = {}
    for c in (TREATED, HELD):
        r = server.post("/next_best_action", {"customer_id": c, "channel": "email", "campaign": campaign},
                        key="read-key")
        assert r.status_code == 200, r.text
        answers[c] = r.json()
    sent = answers[TREATED]["actions"][0]
    assert not answers[TREATED]["holdout"] and sent["decision_id"] and sent["action"] != nba.DO_NOTHING
    assert answers[HELD]["holdout"] and answers[HELD]["actions"][0]["action"] == nba.DO_NOTHING
    # asking again in the same window is the same decision: no second row
    again = server.post("/next_best_action", {"customer_id": TREATED, "channel": "email", "campaign": campaign},
                        key="read-key")
    assert again.json()["actions"][0]["decision_id"] == sent["decision_id"]

    log = SQLiteProfileStore(server.store_path).decisions()
    mine = log.loc[log["campaign_id"] == campaign].set_index("profile_id")
    assert len(mine) == 2
    treated, held = mine.loc[profile_id_for(TREATED)], mine.loc[profile_id_for(HELD)]
    assert treated["decision_id"] == sent["decision_id"] and not treated["holdout"]
    assert treated["action"] == sent["action"] and treated["channel"] == "email"
    assert held["holdout"] and held["action"] == sent["action"]  # what it would have been sent
    assert held["decision_id"] != sent["decision_id"]
    assert "mirror-churn" in treated["model_versions"]

    # the treated customer buys (echoing the decision), the held-out one does not
    r = server.post("/events", {"events": [_event(f"{TREATED}-buy", TREATED, "purchase", quantity=1,
                                                  decision_id=sent["decision_id"])]}, key="write-key")
    assert r.status_code == 200 and r.json()["accepted"], r.text
    out = tmp_path / "lift.csv"
    run = subprocess.run([sys.executable, "-m", "training.cli", "report", "lift", "--store", str(server.store_path),
                          "--no-mlflow", "--out", str(out)], capture_output=True, text=True,
                         env=dict(os.environ), cwd=Path(__file__).parents[2])
    assert run.returncode == 0, run.stderr
    report = pd.read_csv(out)
    row = report.loc[(report["action"] == sent["action"]) & (report["channel"] == "email")].iloc[0]
    assert (row["n_treated"], row["n_holdout"]) >= (1, 1)
    assert row["conversion_treated"] > 0 and row["revenue_per_customer_treated"] > 0
    assert "normal approximation" in run.stderr
