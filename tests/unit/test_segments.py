"""Segment exports by the retailer's own ids, and the batch path behind them and /scores.

The job runner (`serving.segments.SegmentRunner`) with a fake scorer: chunks of at most `chunk_size`
ids, each of the kind asked; unknown ids in the order asked; erasure of a person named by customer id;
the file's columns typed as /scores' fields. Then `DecisionEngine.score_asked` / `score_store` over a
real SQLite store and tiny models: rows keyed by the retailer's ids, a preview that reserves nothing,
quiet hours in the customer's own zone.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.schema import CUSTOMER_ID, EMAIL, PROFILE_ID, IdentifierHasher
from features.store import SQLiteProfileStore
from serving import api, decisions, nba, segments
from serving.guard import load_policy
from serving.recommend import RecommendationPolicy


def _rows(ids: list[str], by: str | None, known: set[str]) -> tuple[pd.DataFrame, list[str]]:
    """A scorer's answer: one row per known id, with every kind of column an export carries."""
    found = [i for i in ids if i in known]
    table = pd.DataFrame({
        decisions.SCORE_ID: found, CUSTOMER_ID: found, PROFILE_ID: [f"p-{i}" for i in found],
        nba.CHURN_PROBABILITY: [0.5] * len(found), decisions.HOLDOUT: [i.endswith("0") for i in found],
        nba.TOP_ACTION: ["cross_sell"] * len(found),
        decisions.MESSAGE_PARAMS: [{"items": [{"item_id": "i1", "price": 9.5}], "by": by} for _ in found]})
    return table, [i for i in ids if i not in known]


def _wait(r: segments.SegmentRunner, task_id: str) -> segments.Job:
    deadline = time.monotonic() + 30
    while (job := r.job(task_id)).status is segments.JobStatus.IN_PROGRESS:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return job


def _runner(tmp: Path, score, chunk: int) -> segments.SegmentRunner:
    r = segments.SegmentRunner(tmp / "exports", score=score, list_profiles=list, chunk_size=chunk, workers=1,
                               queue_size=2, retention_s=3600)
    r.start(sweep_every_s=3600)
    return r


def _read(r: segments.SegmentRunner, task_id: str) -> pd.DataFrame:
    fh, name, _, _ = r.open_result(task_id)
    with fh:
        data = io.BytesIO(fh.read())
    return pd.read_parquet(data) if name.endswith(".parquet") else pd.read_csv(data, keep_default_na=False)


def test_customer_id_export_is_scored_in_chunks_of_at_most_n_of_the_kind_asked(tmp_path):
    calls: list[tuple[int, str | None, dict]] = []
    ids = [f"c{i:04d}" for i in range(1_003)]
    known = set(ids) - {"c0005", "c0500", "c1002"}

    def score(chunk, by, /, **options):
        if len(chunk):
            calls.append((len(chunk), by, options))
        return _rows(list(chunk), by, known)

    r = _runner(tmp_path, score, chunk=100)
    job = _wait(r, r.submit([*ids[:5], "nobody", *ids[5:]], "parquet", by=CUSTOMER_ID,
                            options={"campaign": "spring"}).task_id)
    assert job.status is segments.JobStatus.COMPLETED, job.error
    assert max(n for n, _, _ in calls) <= 100 and sum(n for n, _, _ in calls) == len(ids) + 1
    assert {by for _, by, _ in calls} == {CUSTOMER_ID} and all(o == {"campaign": "spring"} for *_, o in calls)
    assert job.unknown == ["nobody", "c0005", "c0500", "c1002"]  # in the order asked
    f = pq.ParquetFile(r.open_result(job.task_id)[0])
    assert f.metadata.num_row_groups == len(calls) and f.metadata.num_rows == job.rows == len(known)


def test_file_columns_keep_their_types_in_csv_and_parquet(tmp_path):
    r = _runner(tmp_path, lambda ids, by, /, **_: _rows(list(ids), by, set(ids)), chunk=2)
    for fmt in ("csv", "parquet"):
        job = _wait(r, r.submit(["c10", "c11", "c12"], fmt, by=CUSTOMER_ID).task_id)
        table = _read(r, job.task_id)
        assert list(table.columns) == list(_rows([], None, set())[0].columns)
        assert table[decisions.HOLDOUT].tolist() == [True, False, False]  # a boolean in both formats
        params = [json.loads(p) for p in table[decisions.MESSAGE_PARAMS]]  # JSON text, not a Python repr
        assert params[0] == {"items": [{"item_id": "i1", "price": 9.5}], "by": CUSTOMER_ID}


def test_erasure_stops_a_customer_id_export_that_wrote_the_person(tmp_path):
    import threading

    gate, second = threading.Event(), threading.Event()

    def score(chunk, by, /, **_):
        if chunk and chunk[0] == "c2":  # the job is mid-run: chunk one is in the file
            second.set()
            gate.wait(30)
        return _rows(list(chunk), by, set(chunk))

    r = _runner(tmp_path, score, chunk=2)
    job = r.submit(["c0", "c1", "c2", "c3"], "csv", by=CUSTOMER_ID)
    assert second.wait(30)
    assert r.erase("p-c3") == []  # not written yet: left out of the next chunk
    assert r.erase("p-c1") == [job.task_id]  # written (named by customer id, found by profile)
    gate.set()
    assert _wait(r, job.task_id).status is segments.JobStatus.DELETED


@pytest.mark.parametrize(("body", "where"), [
    ({"customer_ids": ["a"], "profile_ids": ["p"]}, "customer_ids"),
    ({"emails": ["a@example.com"], "phones": ["+14155550100"]}, "phones"),
    ({"customer_ids": ["a", "b", "a"]}, "customer_ids"),
    ({"emails": []}, "emails"),
    ({"customer_ids": ["a"], "campaign": ""}, "campaign"),
    ({"customer_ids": [7]}, "customer_ids.0"),
])
def test_segment_request_names_the_field(body, where):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        api.SegmentExportRequest.model_validate(body)
    assert where in {".".join(map(str, e["loc"])) for e in err.value.errors()}


def test_scores_fields_are_the_export_columns():
    """One list of names: /scores' fields, in order, are the batch path's columns (and so the file's)."""
    assert tuple(api.CustomerScore.model_fields) == decisions.SCORE_COLUMNS
    assert set(api.BATCH_ID_FIELDS.values()) == set(decisions.BATCH_ID_KINDS)


# -- the batch path over a real store ---------------------------------------------------------------
def _event(eid: str, etype: str, days_ago: float, now: datetime, **ids: object) -> dict[str, object]:
    ev: dict[str, object] = {"event_id": eid, "ts": pd.Timestamp(now) - pd.Timedelta(days=days_ago),
                             "channel": "web", "event_type": etype, **ids}
    if etype in ("view", "purchase", "add_to_cart"):
        ev.update(item_id="i1", category="shoes", price=20.0)
    return ev


class _Model:
    """A stand-in propensity model: P(class 1) grows with the number of events."""

    feature_names_in_ = np.array(["n_events"])

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        p = 1 - 1 / (1 + x["n_events"].to_numpy(dtype=float))
        return np.column_stack([1 - p, p])


@pytest.fixture()
def engine(tmp_path):
    now = datetime.now(UTC)
    store = SQLiteProfileStore(tmp_path / "store.db", hasher=IdentifierHasher("test-key"))
    events = [_event("a1", "view", 4, now, customer_id="ann"), _event("a2", "purchase", 3, now, customer_id="ann"),
              _event("a3", "view", 2, now, customer_id="ann"),
              # one person, two accounts (linked by their email): one profile, last seen by email
              _event("b1", "view", 3, now, customer_id="bob-2", email="bob@example.com"),
              _event("b2", "add_to_cart", 2.5, now, customer_id="bob-1", email="bob@example.com"),
              {**_event("b3", "email_click", 2, now, customer_id="bob-1"), "channel": "email"},
              _event("d1", "view", 2, now, device_id="dev-9")]  # no customer id at all
    store.append_events(pd.DataFrame(events))
    store.warm_features()
    policy = load_policy(None)
    yield decisions.DecisionEngine(store, policy, RecommendationPolicy(policy)), store, now
    store.close()


def test_score_asked_keys_rows_by_the_ids_asked(engine):
    eng, store, now = engine
    bob = store.resolve({CUSTOMER_ID: "bob-1"})
    asked = [(CUSTOMER_ID, "bob-2"), (CUSTOMER_ID, "ghost"), (EMAIL, " Bob@Example.com "), (PROFILE_ID, bob),
             (CUSTOMER_ID, "ann"), (PROFILE_ID, "p_nobody")]
    rows, unknown = eng.score_asked(_Model(), _Model(), asked, now=now)
    assert list(rows.columns) == list(decisions.SCORE_COLUMNS)
    assert rows[decisions.SCORE_ID].tolist() == ["bob-2", " Bob@Example.com ", bob, "ann"]
    assert rows[CUSTOMER_ID].tolist() == ["bob-2", "bob-1", "bob-1", "ann"]  # as asked, else the smallest own id
    assert unknown == ["ghost", "p_nobody"]
    assert rows[nba.PURCHASE_PROPENSITY].between(0, 1).all() and rows[nba.PURCHASE_PROPENSITY].nunique() == 2
    assert not store.contacts_for(bob)  # a preview: no contact slot reserved


def test_score_store_has_a_row_per_customer_id(engine):
    eng, store, now = engine
    rows = eng.score_store(_Model(), _Model(), store.profile_ids(), now=now)
    device_only = store.resolve({"device_id": "dev-9"})
    assert sorted(zip(rows[decisions.SCORE_ID], rows[CUSTOMER_ID].fillna("-"), strict=True)) == sorted(
        [("ann", "ann"), ("bob-1", "bob-1"), ("bob-2", "bob-2"), (device_only, "-")])
    assert rows.groupby(PROFILE_ID).size().to_dict()[store.resolve({CUSTOMER_ID: "bob-1"})] == 2


def test_top_action_carries_its_guarded_message_and_quiet_hours_send_time(engine):
    eng, store, _ = engine
    bob = store.resolve({CUSTOMER_ID: "bob-1"})
    store.set_consent(bob, "email_marketing", True)
    # 03:00 of the last day in the policy's default zone (New York; the customer's own is unknown): quiet
    zone = ZoneInfo(eng.policy.default_timezone)
    night = (datetime.now(zone) - timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    rows, _ = eng.score_asked(_Model(), _Model(), [(PROFILE_ID, bob)], now=night)
    row = rows.iloc[0]
    if row[nba.TOP_ACTION] == nba.DO_NOTHING:
        pytest.skip("no action for this history under the current NBA rules")
    assert isinstance(row[decisions.MESSAGE], str) and row[decisions.MESSAGE]
    assert isinstance(row[decisions.MESSAGE_PARAMS], dict)
    assert row[decisions.TOP_CHANNEL] == "email"  # the customer's latest channel
    assert datetime.fromisoformat(row[decisions.SEND_AT]) == night.replace(hour=8)  # the end of their quiet hours
    bare, _ = eng.score_asked(_Model(), _Model(), [(PROFILE_ID, bob)], now=night, messages=False)
    assert bare.iloc[0][decisions.MESSAGE] is None and bare.iloc[0][nba.TOP_ACTION] == row[nba.TOP_ACTION]
    assert bare.iloc[0][decisions.SEND_AT] == row[decisions.SEND_AT]  # the send time does not need the message
    assert not store.contacts_for(bob)
