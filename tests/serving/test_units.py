"""Pure pieces of serving without a server: settings, keys and scopes, champion swap, filters."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from features.schema import CHURN_MODEL, RECOMMENDER_MODEL
from serving.auth import Access, GatekeeperMiddleware, KeyRing, required_access
from serving.config import Settings
from serving.models import ChampionSet, PopularityFallback
from serving.recommend import (
    blend_session,
    blocked_purchases,
    personal_query,
    rank_candidates,
    recent_interest,
    session_views,
)


# -- settings -------------------------------------------------------------------------------------
def test_settings_from_env_and_bad_values():
    s = Settings.from_env({"MIRROR_STORE": "/x/s.db", "MIRROR_MAX_K": "20", "MIRROR_REQUIRE_KEY_FOR_READ": "yes"})
    assert s.store_path == Path("/x/s.db") and s.max_k == 20 and s.require_key_for_read is True
    assert s.max_batch == 10_000 and Settings.from_env({}).require_key_for_read is False
    with pytest.raises(ValueError, match="MIRROR_MAX_BATCH"):
        Settings.from_env({"MIRROR_MAX_BATCH": "lots"})
    with pytest.raises(ValueError, match="MIRROR_MAX_K"):
        Settings.from_env({"MIRROR_MAX_K": "0"})
    assert Settings.from_env({}).gc_interval_s == 30 and Settings.from_env({"MIRROR_GC_INTERVAL_S": "90"}).gc_interval_s == 90
    with pytest.raises(ValueError, match="MIRROR_GC_INTERVAL_S"):
        Settings.from_env({"MIRROR_GC_INTERVAL_S": "-5"})


# -- request timers ---------------------------------------------------------------------------------
def test_request_timers_are_released_when_the_answer_goes_out():
    """BentoML's timeout middleware kept each request alive for the whole timeout; ours cancels the timer
    at once, and a slow request still gets its 504."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from serving.service import release_request_timers

    assert release_request_timers() and release_request_timers()  # idempotent

    async def fast(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def slow(scope, receive, send):
        await asyncio.sleep(5)

    async def run():
        loop = asyncio.get_running_loop()
        answers: list[dict] = []

        async def send(message):
            answers.append(message)

        await TimeoutMiddleware(fast, timeout=60)({"type": "http"}, None, send)
        pending = [h for h in loop._scheduled if not h.cancelled()]
        await TimeoutMiddleware(slow, timeout=0.05)({"type": "http"}, None, send)
        return answers, pending

    answers, pending = asyncio.run(run())
    assert pending == []
    assert [m["status"] for m in answers if m["type"] == "http.response.start"] == [200, 504]


# -- keys and scopes ------------------------------------------------------------------------------
def test_keyring_scopes_are_ordered(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("ops-key: [admin]\n")
    ring = KeyRing.parse("r=read; w=read,write", keys_file)
    assert ring.check("r", Access.READ) == 200
    assert ring.check("r", Access.WRITE) == 403
    assert ring.check("w", Access.WRITE) == 200 and ring.check("w", Access.ADMIN) == 403
    assert ring.check("ops-key", Access.WRITE) == 200  # admin implies write
    assert ring.check(None, Access.WRITE) == 401 and ring.check("nope", Access.READ) == 401
    assert ring.check(None, Access.OPEN) == 200
    assert not {"r", "w", "ops-key"} & set(ring.grants)  # only digests are kept


def test_browser_scope_fetches_recommendations_and_posts_events_only():
    ring = KeyRing.parse("b=browser; r=read; w=write")
    assert ring.check("b", Access.FRONT_END) == 200 and ring.check("b", Access.EVENTS) == 200
    assert all(ring.check("b", need) == 403 for need in (Access.READ, Access.WRITE, Access.ADMIN))
    assert ring.check("r", Access.FRONT_END) == 200 and ring.check("r", Access.EVENTS) == 403
    assert ring.check("w", Access.EVENTS) == 200 and ring.check("w", Access.READ) == 200


def test_keyring_rejects_bad_config():
    with pytest.raises(ValueError, match="unknown scope"):
        KeyRing.parse("k=superuser")
    with pytest.raises(ValueError, match="key=scope"):
        KeyRing.parse("justakey")


def test_demo_mode_allows_everything():
    ring = KeyRing.parse(None)
    assert ring.demo_mode and ring.check(None, Access.ADMIN) == 200


@pytest.mark.parametrize(
    ("method", "path", "read_flag", "expected"),
    [
        ("POST", "/events", False, Access.EVENTS),  # a browser or a write key
        ("PUT", "/consent", False, Access.WRITE),
        ("PUT", "/stock", False, Access.WRITE),
        ("GET", "/profiles/p_1", False, Access.ADMIN),
        ("DELETE", "/profiles/p_1", False, Access.ADMIN),
        ("POST", "/admin/reload", False, Access.ADMIN),
        ("POST", "/recommend", False, Access.OPEN),
        ("POST", "/recommend", True, Access.FRONT_END),  # a browser or a read key
        ("POST", "/score_segment/submit", True, Access.READ),
        ("POST", "/scores", False, Access.READ),  # customer scores: a read key whatever the flag
        ("POST", "/next_best_action", False, Access.READ),
        ("PUT", "/items", False, Access.WRITE),
        ("GET", "/score_segment/status", False, Access.OPEN),  # the task id is the capability
        ("GET", "/docs", True, Access.OPEN),
        ("GET", "/readyz", True, Access.OPEN),
        ("GET", "/metrics", True, Access.OPEN),
        ("POST", "/eventsX", False, Access.WRITE),  # not /events: a change in no table needs write
        ("PUT", "/somewhere-new", False, Access.WRITE),
    ],
)
def test_required_access(method, path, read_flag, expected):
    assert required_access(method, path, read_flag) == expected


def _call(mw: GatekeeperMiddleware, method: str, path: str, headers: list[tuple[bytes, bytes]],
          chunks: list[bytes]) -> tuple[int, bool]:
    """Run the middleware on one request; returns (status, whether the inner app ran)."""
    ran = threading.Event()
    sent: list[dict] = []

    async def app(scope, receive, send):
        ran.set()
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw.app = app
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    asyncio.run(mw({"type": "http", "method": method, "path": path, "headers": headers}, receive, send))
    return sent[0]["status"], ran.is_set()


def test_gatekeeper_stops_requests_before_the_app():
    settings = Settings(api_keys="w=write", max_body_bytes=10)
    mw = GatekeeperMiddleware(lambda *a: None, settings)
    assert _call(mw, "POST", "/events", [], [b"{}"]) == (401, False)
    assert _call(mw, "POST", "/events", [(b"x-api-key", b"w")], [b"{}"]) == (200, True)
    assert _call(mw, "POST", "/events", [(b"authorization", b"Bearer w")], [b"{}"]) == (200, True)
    assert _call(mw, "POST", "/admin/reload", [(b"x-api-key", b"w")], [b"{}"]) == (403, False)
    too_big = [(b"x-api-key", b"w"), (b"content-length", b"11")]
    assert _call(mw, "POST", "/events", too_big, [b"x" * 11]) == (413, False)
    # chunked upload without a length: counted as it arrives
    assert _call(mw, "POST", "/events", [(b"x-api-key", b"w")], [b"x" * 6, b"x" * 6]) == (413, False)
    assert _call(mw, "POST", "/events", [(b"x-api-key", b"w")], [b"x" * 4, b"x" * 4]) == (200, True)


# -- champions ------------------------------------------------------------------------------------
class FakeRegistry:
    def __init__(self) -> None:
        self.versions: dict[str, str | None] = {RECOMMENDER_MODEL: "1", CHURN_MODEL: None}
        self.broken: set[tuple[str, str]] = set()
        self.loads = 0

    def resolve(self, name: str) -> str | None:
        return self.versions.get(name)

    def load(self, name: str, version: str) -> object:
        self.loads += 1
        if (name, version) in self.broken:
            raise ValueError("corrupt artifact")
        return SimpleNamespace(name=name, version=version)


def test_champion_set_swaps_keeps_last_good_and_falls_back():
    reg = FakeRegistry()
    champs = ChampionSet((RECOMMENDER_MODEL, CHURN_MODEL), loader=reg.load, resolver=reg.resolve, validator=None)
    assert champs.current.recommender_is_fallback and not champs.loaded_once
    first = champs.reload()
    assert first.recommender.version == "1" and first.churn is None
    assert champs.status()[CHURN_MODEL]["error"] == "no champion registered"
    loads = reg.loads
    champs.reload()
    assert reg.loads == loads  # unchanged versions are not reloaded
    reg.versions[RECOMMENDER_MODEL] = "2"
    reg.broken.add((RECOMMENDER_MODEL, "2"))
    kept = champs.reload()
    assert kept.recommender is first.recommender  # last good one keeps serving
    assert "version 2" in champs.status()[RECOMMENDER_MODEL]["error"]
    assert first.recommender.version == "1"  # snapshots are never mutated

    fresh = ChampionSet((RECOMMENDER_MODEL,), loader=reg.load, resolver=reg.resolve, validator=None,
                        fallback_factory=lambda: PopularityFallback([("a", "x", 3.0), ("b", "y", 1.0)]))
    fell_back = fresh.reload()
    assert fell_back.recommender_is_fallback and fresh.status()[RECOMMENDER_MODEL]["fallback"] is True
    assert fell_back.recommender.recommend("anyone", 2) == [("a", 1.0), ("b", pytest.approx(1 / 3))]


def test_popularity_fallback_from_events():
    ev = pd.DataFrame({"item_id": ["a", "b", "b", "c", None], "category": ["x", "y", "y", "x", None]})
    fb = PopularityFallback.from_events(ev)
    assert [i for i, _ in fb.popular(3)] == ["b", "a", "c"]
    assert [i for i, _ in fb.popular(3, category="x")] == ["a", "c"]
    assert [i for i, _ in fb.similar_items("a", 5)] == ["c"]
    assert fb.recommend("u", 2, exclude=["b"]) == [("a", 0.5), ("c", 0.5)]
    assert not fb.has_user("u") and fb.has_item("a") and not fb.has_item("zz")


# -- filters --------------------------------------------------------------------------------------
def test_rank_candidates_excludes_and_respects_stock():
    cands = [("a", 0.9), ("b", 0.8), ("a", 0.7), ("c", 0.6), ("d", 0.5)]
    assert rank_candidates(cands, 3, {"b"}, {"c": False, "d": True}) == [("a", 0.9), ("d", 0.5)]
    assert rank_candidates(cands, 1, set(), {}) == [("a", 0.9)]


def test_blocked_purchases_consumables_come_back_at_replenishment_time():
    now = datetime(2025, 6, 1, tzinfo=UTC)
    entry = SimpleNamespace
    profile = SimpleNamespace(
        purchases=(entry(item_id="coffee", ts=now - timedelta(days=20)),
                   entry(item_id="shampoo", ts=now - timedelta(days=5)),
                   entry(item_id="sofa", ts=now - timedelta(days=400))),
        replenish_days={"coffee": 14.0, "shampoo": 30.0},
    )
    assert blocked_purchases(profile, now) == {"shampoo", "sofa"}
    assert blocked_purchases(None, now) == set()


# -- recent interest ------------------------------------------------------------------------------
def test_recent_interest_is_newest_first_over_views_and_cart():
    view = lambda i, t: SimpleNamespace(item_id=i, ts=pd.Timestamp(t, tz="UTC"))  # noqa: E731
    profile = SimpleNamespace(recent_views=[view("v2", "2025-01-03"), view("v1", "2025-01-01")],
                              cart_items=[view("c1", "2025-01-02"), view("v2", "2025-01-01")])
    assert recent_interest(profile) == ["v2", "c1", "v1"]
    assert recent_interest(None) == []


def test_personal_query_is_newest_first_and_leaves_out_purchases_and_returns():
    """/recommend and /next_best_action's cross-sell ask the model the same question: what was just seen
    steers most (views and cart together, newest first), and bought or returned items never come back."""
    now = pd.Timestamp("2025-06-01", tz="UTC")
    e = lambda i, days: SimpleNamespace(item_id=i, ts=now - pd.Timedelta(days=days))  # noqa: E731
    profile = SimpleNamespace(recent_views=[e("v-new", 0.1), e("v-old", 9)], cart_items=[e("cart", 2)],
                              purchases=[e("bought", 3)], returns=[e("returned", 1)], replenish_days={})
    recent, exclude = personal_query(profile, now)
    assert recent == ["v-new", "cart", "v-old"]  # the cart no longer jumps ahead of a newer view
    assert exclude == ["bought", "returned"]
    assert personal_query(None, now) == ([], [])


def test_session_views_are_the_recent_window_newest_first():
    now = pd.Timestamp("2025-01-01 12:00", tz="UTC")
    view = lambda i, c, minutes: SimpleNamespace(item_id=i, category=c, ts=now - pd.Timedelta(minutes=minutes))  # noqa: E731
    profile = SimpleNamespace(recent_views=[view("a", "shoes", 40), view("b", "hats", 5), view("c", None, 1),
                                            view("b", "hats", 20)])
    def seen(**kw):
        return [(e.item_id, e.category) for e in session_views(profile, now, **kw)]

    assert seen() == [("c", None), ("b", "hats")]
    assert seen(window=timedelta(hours=1)) == [("c", None), ("b", "hats"), ("a", "shoes")]
    assert session_views(None, now) == []


def test_blend_session_gives_the_slots_to_the_session_and_keeps_scores_descending():
    personal = [("p1", 0.9), ("p2", 0.8), ("p3", 0.7), ("p4", 0.6), ("p5", 0.5), ("p6", 0.4)]
    out = blend_session(personal, [("s1", 0.99), ("s2", 0.98)], k=6, slots=(1, 4))
    assert [i for i, _, _ in out] == ["p1", "s1", "p2", "p3", "s2", "p4"]
    assert [x for _, _, x in out] == [False, True, False, False, True, False]
    scores = [s for _, s, _ in out]
    assert scores == sorted(scores, reverse=True)
    # a session item the model ranks lower moves up; one it already ranks high counts where it stands
    out = blend_session(personal, [("p3", 0.7), ("s8", 0.1)], k=6, slots=(1, 4))
    assert [i for i, _, _ in out] == ["p1", "p3", "p2", "p4", "s8", "p5"]
    assert [s for _, s, _ in out] == [0.9, 0.8, 0.8, 0.6, 0.5, 0.5]
    assert blend_session(personal, [("p1", 0.9), ("p5", 0.5)], k=6, slots=(1, 4)) == \
        [(i, s, False) for i, s in personal]
    # nothing to add, or slots beyond k: the model's list unchanged
    assert [i for i, _, _ in blend_session(personal, [], k=3)] == ["p1", "p2", "p3"]
    assert [i for i, _, _ in blend_session(personal, [("s1", 1.0)], k=1, slots=(1,))] == ["p1"]
    # a short personal list still gets its session items, scores not above the last
    out = blend_session([("p1", 0.9)], [("s1", 2.0), ("s2", 0.1)], k=5, slots=(1, 4))
    assert [i for i, _, _ in out] == ["p1", "s1", "s2"] and [s for _, s, _ in out] == [0.9, 0.9, 0.1]


def test_newest_recent_item_steers_the_fold_in_most():
    """With recency decay the order of recent items matters (newest first); without it, it does not."""
    import numpy as np

    from training.mlflow_models.recommender_model import RecommenderCore

    rng = np.random.default_rng(3)
    n_items = 30

    def core(decay: float) -> RecommenderCore:
        return RecommenderCore(
            user_ids=["u"], item_ids=[f"i{j}" for j in range(n_items)], item_categories=["c"] * n_items,
            user_factors=rng.normal(size=(1, 4)), item_factors=np.eye(4)[np.arange(n_items) % 4] + 0.01 * j_noise,
            comp_indptr=np.zeros(n_items + 1, dtype=np.int64), comp_indices=np.zeros(0, dtype=np.int64),
            comp_scores=np.zeros(0), popularity=np.ones(n_items), recent_popularity=np.ones(n_items),
            config={"alpha": 10.0, "regularization": 0.1, "recent_decay": decay})

    j_noise = rng.normal(size=(n_items, 4))
    fresh, older = ["i0"], ["i1", "i5", "i9"]  # i0 points along axis 0; i1, i5, i9 along axis 1
    decayed = core(0.3)
    top = decayed.recommend(None, 3, exclude=fresh + older, recent_items=fresh + older)
    assert all(int(i[1:]) % 4 == 0 for i, _ in top)  # the newest view's direction wins
    flat = core(1.0)
    assert flat.recommend(None, 5, recent_items=fresh + older) == flat.recommend(None, 5, recent_items=older + fresh)
