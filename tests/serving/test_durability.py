"""Server-level durability: events acknowledged by POST /events survive a kill -9 of the whole server.

Client threads stream single events and small batches (unique event ids) at a real `bentoml serve`;
after some hundreds are acknowledged the whole server is killed with SIGKILL while requests are still in
flight: the serve process (own process group) first, so it cannot respawn workers, then each worker
(BentoML starts its workers in sessions of their own, so a signal to the server's group misses them). A new server is then started on the same store
with no manual step (the WAL and shared-memory files the killed server left are not touched), and:

- every event whose id came back in `accepted` of a 2xx answer is in the store, exactly once, and the
  store holds nothing the client did not send (requests in flight at the kill may or may not be there);
- the online state was recovered too: the buyer's purchase is in their profile and /recommend leaves it out;
- re-sending every acknowledged event is answered as duplicates and changes neither events nor state.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mirror_server import N_ITEMS, Server, event, profile_id_for, running_server

from features.schema import EVENT_ID
from features.store import SQLiteProfileStore

KILL_AFTER = 400  # acknowledged events before the kill
STREAMS = 2  # client threads, so that the kill lands while requests are in flight
BUYER = "c2"  # a customer the tiny recommender knows: the stream makes them buy their top item
ACK_TIMEOUT_S = 120

pytestmark = pytest.mark.slow  # two server starts: about a minute (make test-slow)


class Stream(threading.Thread):
    """Posts events until the server stops answering; records what was sent and what was acknowledged."""

    def __init__(self, url: str, n: int, first: dict[str, object] | None = None) -> None:
        super().__init__(daemon=True, name=f"stream-{n}")
        self.url, self.n, self.first = url, n, first
        self.rng = random.Random(n)
        self.sent: dict[str, dict[str, object]] = {}  # every event put on the wire
        self.acked: list[str] = []  # ids listed as accepted in a 2xx answer
        self.unexpected: list[str] = []  # answers other than "all accepted" before the kill
        self.transport_error: str | None = None
        self.stop = threading.Event()

    def _events(self, seq: int) -> list[dict[str, object]]:
        size = 1 if seq % 2 == 0 else self.rng.randint(2, 8)
        out = []
        for j in range(size):
            eid = f"dur-{self.n}-{seq}-{j}"
            customer = self.rng.choice(["c1", "c3", "c4", "c5", "c6", f"new-{self.n}-{self.rng.randint(0, 30)}"])
            item = self.rng.randrange(N_ITEMS)
            etype = self.rng.choice(["view", "view", "add_to_cart", "purchase"])
            if self.rng.random() < 0.2:  # the buyer only views: their one purchase is the planted one
                customer, etype = BUYER, "view"
            extra = {"quantity": 1} if etype == "purchase" else {}
            out.append(event(eid, customer, etype, item, days_ago=self.rng.uniform(0, 1), **extra))
        return out

    def run(self) -> None:
        seq = 0
        with httpx.Client(base_url=self.url, timeout=30,
                          headers={"Authorization": "Bearer write-key"}) as client:
            while not self.stop.is_set():
                batch = [self.first] if seq == 0 and self.first is not None else self._events(seq)
                seq += 1
                ids = [str(e[EVENT_ID]) for e in batch]
                body = {"event": batch[0]} if len(batch) == 1 and seq % 4 else {"events": batch}
                for e in batch:
                    self.sent[str(e[EVENT_ID])] = e
                try:
                    r = client.post("/events", json=body)
                except httpx.TransportError as exc:  # the server is gone
                    self.transport_error = repr(exc)
                    return
                if 200 <= r.status_code < 300:
                    accepted = [str(x) for x in r.json()["accepted"]]
                    self.acked += [i for i in accepted if i in set(ids)]
                    if sorted(accepted) != sorted(ids):
                        self.unexpected.append(f"{body} -> {r.status_code} {r.text}")
                else:
                    self.unexpected.append(f"{body} -> {r.status_code} {r.text}")


def _recommend(srv: Server, customer: str, k: int = 5) -> dict[str, object]:
    r = srv.post("/recommend", {"customer_id": customer, "k": k}, key="read-key")
    assert r.status_code == 200, r.text
    return r.json()


def _store_rows(path: Path) -> tuple[int, int, list[tuple[object, ...]]]:
    """Read-only view of the store file: (event rows, distinct event ids, online state rows)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        n, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events").fetchone()
        state = conn.execute("SELECT * FROM state ORDER BY 1").fetchall()
    finally:
        conn.close()
    return int(n), int(distinct), state


def test_acknowledged_events_survive_kill_9_and_a_plain_restart(tmp_path: Path):
    with running_server(tmp_path) as srv:
        top = _recommend(srv, BUYER)
        assert top["cold_start"] is False and top["items"], top
        target = str(top["items"][0]["item_id"])
        item = int(target.lstrip("i"))
        purchase = event("dur-buy", BUYER, "purchase", item, days_ago=0.01, quantity=1)
        streams = [Stream(srv.url, n, first=purchase if n == 0 else None) for n in range(STREAMS)]
        t_stream = time.monotonic()
        for s in streams:
            s.start()
        killed = False
        try:
            deadline = time.monotonic() + ACK_TIMEOUT_S
            while sum(len(s.acked) for s in streams) < KILL_AFTER:
                assert all(s.is_alive() for s in streams), [s.transport_error for s in streams]
                assert time.monotonic() < deadline, f"only {sum(len(s.acked) for s in streams)} acknowledged"
                time.sleep(0.01)
            t_kill = time.monotonic()
            srv.kill()  # SIGKILL to the server and its workers, mid-stream: the streams are still posting
            killed = True
        finally:
            for s in streams:
                if not killed:  # the wait above failed and the server is still up: end the streams
                    s.stop.set()
                s.join(timeout=60)
        assert not any(s.is_alive() for s in streams)
        (tmp_path / "server-killed.log").write_bytes(srv.log.read_bytes())

    acked = [i for s in streams for i in s.acked]
    sent = {i: e for s in streams for i, e in s.sent.items()}
    print(f"[durability] {len(acked)} acknowledged of {len(sent)} sent in {t_kill - t_stream:.1f}s; streams "
          f"ended {time.monotonic() - t_kill:.1f}s after the kill: {[s.transport_error for s in streams]}",
          file=sys.stderr)
    assert all(s.transport_error for s in streams), "a stream stopped before the kill"
    assert not [u for s in streams for u in s.unexpected], [u for s in streams for u in s.unexpected][:3]
    assert len(acked) >= KILL_AFTER and len(set(acked)) == len(acked)
    assert "dur-buy" in acked
    # the killed server left its WAL behind; the restart must cope with it as it is
    assert Path(f"{tmp_path / 'store.db'}-wal").exists()

    with running_server(tmp_path, tiny_champions=False, seed=False) as srv:
        t_checks = time.monotonic()
        assert srv.client.get("/readyz").status_code == 200

        store = SQLiteProfileStore(srv.store_path, cache=False)
        try:
            stored = store.export_events()[EVENT_ID].astype(str)
            stream_ids = stored[stored.str.startswith("dur-")]
            missing = sorted(set(acked) - set(stream_ids))
            assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:5]}"
            assert not stream_ids.duplicated().any()
            assert set(stream_ids) <= set(sent)  # only requests in flight at the kill may add to acked
            profile = store.get_profile(profile_id_for(BUYER))
            assert profile is not None
            assert target in {p.item_id for p in profile.purchases}
            events_before = store.export_events().sort_values(EVENT_ID).reset_index(drop=True)
        finally:
            store.close()
        n_rows, n_distinct, state_before = _store_rows(srv.store_path)
        assert n_rows == n_distinct == len(events_before)

        # the purchase counts after the restart: the bought item is left out
        after = _recommend(srv, BUYER)
        assert after["cold_start"] is False
        assert target not in [i["item_id"] for i in after["items"]], after

        # re-sending everything acknowledged: all duplicates, nothing changes
        for start in range(0, len(acked), 100):
            ids = acked[start:start + 100]
            r = srv.post("/events", {"events": [sent[i] for i in ids]}, key="write-key")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["accepted"] == [] and sorted(body["duplicates"]) == sorted(ids), body
        store = SQLiteProfileStore(srv.store_path, cache=False)
        try:
            events_after = store.export_events().sort_values(EVENT_ID).reset_index(drop=True)
        finally:
            store.close()
        pd.testing.assert_frame_equal(events_after, events_before)
        assert _store_rows(srv.store_path) == (n_rows, n_distinct, state_before)
        assert target not in [i["item_id"] for i in _recommend(srv, BUYER)["items"]]
    print(f"[durability] {len(set(stream_ids) - set(acked))} unacknowledged in-flight events were stored; "
          f"checks after the restart took {time.monotonic() - t_checks:.1f}s", file=sys.stderr)
