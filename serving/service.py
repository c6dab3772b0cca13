"""Mirror's HTTP service (BentoML 1.4 class API).

Endpoints stay thin: they parse a typed body, call the store, the champion models and the pure
decision modules (`serving.nba`, `serving.guard`), and shape the answer. POST endpoints are
`@bentoml.api` (body validated by pydantic; a bad body is a 400 naming the field); GET/PUT/DELETE
routes live on a small FastAPI app mounted on the service. API keys, scopes and body limits are
checked before anything runs by `serving.auth.GatekeeperMiddleware`.

Run: `bentoml serve serving.service:Mirror --port 3000` (settings: serving/config.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
from bentoml.exceptions import NotFound, ServiceUnavailable
from fastapi import FastAPI, HTTPException, Query

from features.schema import (
    ADD_TO_CART,
    CATEGORY,
    CHURN_MODEL,
    COOKIE_ID,
    CUSTOMER_ID,
    DEVICE_ID,
    ERROR_FIELD,
    ERROR_REASON,
    ERROR_ROW,
    EVENT_ID,
    EVENT_TYPE,
    IDENTIFIER_COLUMNS,
    ITEM_ID,
    PROFILE_ID,
    PURCHASE_MODEL,
    RECOMMENDER_MODEL,
    TEXT,
    TEXT_EVENT_TYPES,
    TS,
    VIEW,
    validate_events,
)
from serving import api, nba
from serving.auth import GatekeeperMiddleware, KeyRing, log_auth_mode
from serving.config import Settings
from serving.models import ChampionSet, PopularityFallback

logger = logging.getLogger("mirror.service")

#: GET/PUT/DELETE routes; BentoML's @api is POST-only. Its own docs are off: /docs.json is BentoML's.
http_app = FastAPI(title="mirror-admin", docs_url=None, redoc_url=None, openapi_url=None)


def hashed_id(value: str | None) -> str:
    """Ids in logs are hashed: logs never carry personal data (issue 6)."""
    return "-" if not value else hashlib.sha256(value.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without a server)
# ---------------------------------------------------------------------------------------------
def _ts_seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT:
        return None
    return (ts if ts.tzinfo else ts.tz_localize("UTC")).timestamp()


def _entry_item(entry: Any) -> str | None:
    """Item id of a store entry (ViewEntry/ItemEntry, a mapping, or a bare id)."""
    if isinstance(entry, str):
        return entry
    v = entry.get(ITEM_ID) if isinstance(entry, Mapping) else getattr(entry, ITEM_ID, None)
    return None if v is None else str(v)


def _entry_ts(entry: Any) -> float | None:
    v = entry.get(TS) if isinstance(entry, Mapping) else getattr(entry, TS, None)
    return _ts_seconds(v)


def profile_items(profile: Any, attr: str) -> list[str]:
    """Item ids of one profile list (the store keeps them newest first), de-duplicated."""
    out: list[str] = []
    for e in getattr(profile, attr, None) or ():
        item = _entry_item(e)
        if item and item not in out:
            out.append(item)
    return out


def _newest_first(profile: Any, attrs: Sequence[str]) -> list[tuple[float | None, str, Any]]:
    """(time, item, entry) of these profile lists, newest first; ties and entries without a time (last)
    keep the store's order."""
    entries = [e for attr in attrs for e in (getattr(profile, attr, None) or ())]
    stamped = [(_entry_ts(e), n, _entry_item(e), e) for n, e in enumerate(entries)]
    stamped.sort(key=lambda x: (-(x[0] or 0.0), x[1]))
    return [(ts, item, e) for ts, _, item, e in stamped if item]


def recent_interest(profile: Any) -> list[str]:
    """Items the customer viewed or put in the cart, newest first, de-duplicated: the order is the
    weight the recommender gives them (what was just seen steers most)."""
    return list(dict.fromkeys(item for _, item, _ in _newest_first(profile, ("recent_views", "cart_items"))))


#: Views this recent are the shopping session: its newest one gets slots of its own in /recommend.
SESSION_WINDOW_S = 30 * 60
#: 0-based ranks that look-alikes of the session's newest view take (the rest stay the model's order).
SESSION_SLOTS = (1, 4)


def session_views(profile: Any, now: float, window_s: float = SESSION_WINDOW_S) -> list[tuple[str, str | None]]:
    """(item, category) the customer viewed in the last `window_s` seconds, newest first, de-duplicated."""
    out: dict[str, str | None] = {}
    for ts, item, e in _newest_first(profile, ("recent_views",)):
        if ts is not None and now - ts <= window_s:
            out.setdefault(item, getattr(e, CATEGORY, None))
    return list(out.items())


def blend_session(personal: Sequence[tuple[str, float]], session: Sequence[tuple[str, float]], k: int,
                  slots: Sequence[int] = SESSION_SLOTS) -> list[tuple[str, float, bool]]:
    """The model's top-k with the session's items (best first) guaranteed at `slots` (0-based ranks):
    by the n-th slot, at least n of them.

    Why: the model's fold-in weighs a fresh view against the whole history, and for a long history one
    view of something new often left the top 10 unchanged (9 of 60 trials); a shopper expects what they
    just looked at to show. A session item the model already ranks high counts where it stands; one it
    ranks lower moves up. A moved item takes the score of the item whose slot it fills, so scores stay
    non-increasing. Both inputs are already filtered (exclusions, stock); pass as many session items as
    there are slots. Returns (item, score, moved by this rule).
    """
    out = [(i, float(s), False) for i, s in personal[:k]]
    own = dict(session)
    for n, slot in enumerate(sorted(slots), start=1):
        if slot >= k:
            break
        head = {x[0] for x in out[: slot + 1]}
        if len(head & own.keys()) >= n:
            continue
        pick = next((i for i, _ in session if i not in head), None)
        if pick is None:
            break
        out = [x for x in out if x[0] != pick]
        score = out[slot][1] if slot < len(out) else min(float(own[pick]), out[-1][1]) if out else float(own[pick])
        out.insert(min(slot, len(out)), (pick, score, True))
        out = out[:k]
    return out


def blocked_purchases(profile: Any, now: float) -> set[str]:
    """Items bought recently enough to leave out; a consumable comes back at its replenishment time
    (the profile's own re-buy interval for that item)."""
    if profile is None:
        return set()
    replenish = dict(getattr(profile, "replenish_days", None) or {})
    last: dict[str, float] = {}
    for e in getattr(profile, "purchases", None) or ():
        item, ts = _entry_item(e), _entry_ts(e)
        if item:
            last[item] = max(last.get(item, float("-inf")), now if ts is None else ts)
    return {item for item, ts in last.items()
            if item not in replenish or now < ts + float(replenish[item]) * 86_400.0}


def personal_query(profile: Any, now: float) -> tuple[list[str], list[str]]:
    """(recent items newest first, items to leave out) for a customer's personal recommendations: one
    query for /recommend and /next_best_action's cross-sell, so both follow what was just seen and neither
    shows a recent purchase (consumables come back at their re-buy time) or a returned item."""
    if profile is None:
        return [], []
    suppressed = blocked_purchases(profile, now) | set(profile_items(profile, "returns"))
    return recent_interest(profile), sorted(suppressed)


def rank_candidates(candidates: Iterable[tuple[str, float]], k: int, exclude: set[str],
                    in_stock: Mapping[str, bool]) -> list[tuple[str, float]]:
    """First k candidates not excluded and not known to be out of stock, in the model's order."""
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for item, score in candidates:
        if item in exclude or item in seen or in_stock.get(item, True) is False:
            continue
        seen.add(item)
        out.append((item, float(score)))
        if len(out) >= k:
            break
    return out


class RedactClientErrors(logging.Filter):
    """BentoML logs a full traceback for every rejected body, pydantic input values included (which
    could be an email). Client errors become one line naming only the fields; logs stay free of data."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            fields = sorted({".".join(map(str, e["loc"])) or "body" for e in exc.errors()})
            record.msg, record.args = "rejected request: invalid %s", (", ".join(fields),)
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.INFO, "INFO"
        elif exc is not None and 400 <= int(getattr(getattr(exc, "error_code", 500), "value", 500)) < 500:
            record.msg, record.args = "rejected request: %s", (type(exc).__name__,)
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.INFO, "INFO"
        return True


class RedactAccessPaths(logging.Filter):
    """Access-log lines name the path, and /profiles/{id} carries a customer identifier: hash it."""

    _profile_path = re.compile(r"/profiles/([^,\s)]+)")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/profiles/" in message:
            record.msg = self._profile_path.sub(lambda m: "/profiles/" + hashed_id(m.group(1)), message)
            record.args = ()
        return True


# ---------------------------------------------------------------------------------------------
# Metrics (prometheus_client imported late: BentoML sets its multiprocess dir after import)
# ---------------------------------------------------------------------------------------------
class ServiceMetrics:
    _instance: ServiceMetrics | None = None

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.model_version = Gauge("mirror_model_version", "Registry version of the champion in use",
                                   ["model"], multiprocess_mode="mostrecent")
        self.model_loaded = Gauge("mirror_model_loaded", "1 when the champion is loaded",
                                  ["model"], multiprocess_mode="mostrecent")
        self.fallback = Gauge("mirror_model_fallback", "1 when the popularity fallback answers",
                              ["model"], multiprocess_mode="mostrecent")
        self.reloads = Counter("mirror_model_reloads", "Champion reloads", ["outcome"])
        self.events = Counter("mirror_events", "Events received", ["outcome"])
        self.cold_start = Counter("mirror_recommend_cold_start", "Recommendations answered cold start")

    @classmethod
    def get(cls) -> ServiceMetrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def observe_models(self, status: Mapping[str, Mapping[str, Any]]) -> None:
        for name, s in status.items():
            v = s.get("version")
            self.model_version.labels(name).set(float(v) if v and str(v).isdigit() else 0.0)
            self.model_loaded.labels(name).set(1.0 if s.get("loaded") else 0.0)
            self.fallback.labels(name).set(1.0 if s.get("fallback") else 0.0)


# ---------------------------------------------------------------------------------------------
# Adapters to modules written alongside this one (kept thin so the contract is one place)
# ---------------------------------------------------------------------------------------------
def _release_free_memory() -> None:
    """Hand the memory a bulk rebuild freed back to the OS (glibc keeps it otherwise).

    Why: each hourly feature warm-up allocates temporaries; without this the server's RSS steps up by
    about 50 MiB the first time and looks like growth in the soak. Measured: 773 -> 755 MiB after a warm.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
            ctypes.CDLL(name).malloc_trim(0)


# Automatic full collections only after this many middle-generation ones (CPython's default: 10).
_GC_FULL_EVERY = 1000


def _freeze_startup_heap() -> None:
    """Move everything alive at start-up (models, libraries, warm caches: ~700k objects) out of the
    garbage collector's reach, and leave full collections to a schedule (`_collect_on_schedule`).

    Why: a full collection walks every tracked object and holds the GIL while it does: ~0.3-0.5 s over
    the start-up heap, then still 60-100 ms over what requests build later (cached profile states, ~130k
    objects at 2,000 profiles). With CPython's default thresholds one fired every 5-10 s at 100 requests/s
    and each was the p99 of /recommend. Frozen objects are never freed, which is what start-up state is.
    Young garbage is still collected as usual. Measured on the serving benchmark's machine: fixed-rate
    p99 of /recommend 40-100 ms -> 6-7 ms.
    """
    import gc

    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _GC_FULL_EVERY)


def _collect_on_schedule(interval_s: float) -> None:
    """A full collection every `interval_s` seconds, for ever (a daemon thread's body).

    Why: with automatic full collections made rare, reference cycles that outlive the young
    generations waited minutes: a 10-minute soak grew 4.6% without levelling off (+2.4%, flat, before).
    A full pass costs about the same whatever the interval (it walks the live objects: ~50-60 ms at
    2,000 cached profiles), plus the garbage gathered since; every two minutes, one landing after a load
    burst took ~300 ms. Every 30 s keeps both the pause and the garbage small: about 5 requests in 3,000
    wait for it at 100 requests/s.
    """
    import gc

    while True:
        time.sleep(interval_s)
        t0 = time.perf_counter()
        found = gc.collect()
        ms = (time.perf_counter() - t0) * 1000
        # a long pause is every in-flight request's latency: worth a warning an operator sees
        logger.log(logging.WARNING if ms > 100 else logging.DEBUG,
                   "scheduled full collection: %.0f ms, %d unreachable objects", ms, found)


def release_request_timers() -> bool:
    """Make BentoML's request-timeout middleware cancel its timer when the request is answered.

    Why: BentoML 1.4's `TimeoutMiddleware` schedules `loop.call_later(timeout, ...)` per request and
    never cancels it, so every request's future, context and tracing span stay alive for the whole
    `traffic.timeout` (120 s here). Measured after the serving benchmark's load: ~19,000 requests'
    objects alive, and full garbage collections grew from ~60 ms to ~300 ms walking them (the p99 of
    /recommend at 100 requests/s). The replacement behaves the same (504 after the timeout) and cancels
    the timer in a `finally`. Returns False, changing nothing, if BentoML's class is not the one we know.
    """
    import asyncio

    from bentoml._internal.server.http import traffic

    cls = traffic.TimeoutMiddleware
    if getattr(cls, "_mirror_releases_timers", False):
        return True
    if not callable(getattr(cls, "_set_timer_out", None)):
        logger.warning("BentoML's TimeoutMiddleware changed; request timers are left as they are")
        return False
    from starlette.responses import JSONResponse

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                    status_code=504)
                await resp(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    cls.__call__ = __call__
    cls._mirror_releases_timers = True
    return True


def _open_store(settings: Settings) -> Any:
    """The ProfileStore implementation named by MIRROR_STORE_BACKEND (`module:Class`), SQLite by default."""
    import importlib

    module_name, _, cls_name = settings.store_backend.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    settings.store_path.parent.mkdir(parents=True, exist_ok=True)
    return cls(settings.store_path)


def _signals_from_profile(profile: Any, limit: int = 5) -> list[Any]:
    """The guard's view of what the customer did recently (views and cart), newest first."""
    from serving.guard import Signal

    out = []
    for attr, etype in (("cart_items", ADD_TO_CART), ("recent_views", VIEW)):
        for e in list(getattr(profile, attr, None) or ())[:limit]:
            out.append(Signal(etype, "web", item_id=_entry_item(e), category=getattr(e, CATEGORY, None),
                              ts=getattr(e, TS, None)))
    return out


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------
@bentoml.asgi_app(http_app, path="/")
@bentoml.service(name="mirror", workers=1, threads=8, traffic={"timeout": 120})
class Mirror:
    """Opens the store and loads the champions at start; every request reads one champion snapshot."""

    def __init__(self) -> None:
        from serving.guard import consent_from_flags, load_policy

        self.settings = Settings.from_env()
        release_request_timers()
        mirror_log = logging.getLogger("mirror")
        if mirror_log.level == logging.NOTSET:  # BentoML leaves the root at WARNING, which hid our reloads,
            mirror_log.setLevel(logging.INFO)   # warm-ups and erasures; a level set by the operator is kept
        logging.getLogger("bentoml._internal.server.http_app").addFilter(RedactClientErrors())
        logging.getLogger("bentoml.access").addFilter(RedactAccessPaths())
        log_auth_mode(KeyRing.from_settings(self.settings))
        import mlflow

        for uri in (self.settings.tracking_uri, self.settings.registry_uri):
            if uri and uri.startswith("file:"):  # MLflow 3 refuses file stores unless asked
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if self.settings.tracking_uri:
            mlflow.set_tracking_uri(self.settings.tracking_uri)
        if self.settings.registry_uri:
            mlflow.set_registry_uri(self.settings.registry_uri)
        self.policy = load_policy(self.settings.guard_config)
        self._default_consent = consent_from_flags({})
        self.store = _open_store(self.settings)
        self.metrics = ServiceMetrics.get()
        self.champions = ChampionSet(fallback_factory=self._popularity_fallback)
        self._reload_lock = threading.Lock()
        self.reload_models()
        self._warmed = threading.Event()  # ready only after the first warm-up: no stall after /readyz
        threading.Thread(target=self._keep_features_warm, name="mirror-feature-warmer", daemon=True).start()

    def _keep_features_warm(self) -> None:
        """Build every profile's feature row in one vectorised pass, now and after each cache bucket.

        /scores reads cached rows (the store caches per time bucket and refreshes a profile on each
        write), so batch scoring never pays for per-profile feature building on the request path.
        """
        warm = getattr(self.store, "warm_features", None)
        if warm is None:
            self._settle_heap()
            self._warmed.set()
            return
        bucket = float(getattr(getattr(self.store, "config", None), "feature_granularity_s", 3600))
        while True:
            try:
                n = warm()
                _release_free_memory()
                logger.info("feature cache warmed for %d profiles", n)
            except Exception:  # a cold cache is slower, never wrong
                logger.exception("feature cache warm-up failed")
            finally:
                if not self._warmed.is_set():
                    self._settle_heap()
                self._warmed.set()
            time.sleep(bucket - (time.time() % bucket) + 1.0)

    def _settle_heap(self) -> None:
        """Once, when start-up is done: freeze its heap and put full collections on a schedule."""
        _freeze_startup_heap()
        threading.Thread(target=_collect_on_schedule, args=(float(self.settings.gc_interval_s),),
                         name="mirror-gc", daemon=True).start()

    # -- readiness and models ------------------------------------------------------------------
    def __is_ready__(self) -> bool:
        return self.store is not None and self.champions.loaded_once and self._warmed.is_set()

    def _popularity_fallback(self) -> PopularityFallback:
        try:
            return PopularityFallback.from_events(self.store.export_events())
        except Exception:  # the fallback must never be the thing that fails
            logger.exception("could not build the popularity fallback from the store")
            return PopularityFallback()

    def reload_models(self) -> dict[str, dict[str, Any]]:
        with self._reload_lock:
            try:
                self.champions.reload()
                self.metrics.reloads.labels("ok").inc()
            except Exception:
                logger.exception("champion reload failed; the previous champions keep serving")
                self.metrics.reloads.labels("error").inc()
            status = self.champions.status()
            self.metrics.observe_models(status)
            return status

    @bentoml.api(route="/admin/reload")
    def admin_reload(self) -> api.ReloadResponse:
        """Loads new champions in this worker thread while other threads keep serving, then swaps."""
        status = self.reload_models()
        return api.ReloadResponse(ready=self.__is_ready__(), models=status)

    # -- guard ----------------------------------------------------------------------------------
    def _consent(self, pid: str | None) -> Any:
        from serving.guard import consent_from_flags

        return consent_from_flags(self.store.get_consent(pid) if pid else {})

    def _reason(self, signals: Sequence[Any], channel: str, consent: Any, logged_in: bool) -> str:
        from serving.guard import RECOMMENDATION_REASON, GuardRequest, guard

        d = guard(GuardRequest(RECOMMENDATION_REASON, channel, consent, tuple(signals), logged_in=logged_in),
                  self.policy)
        return d.text

    # -- recommendations -----------------------------------------------------------------------
    def _check_k(self, title: str, k: int) -> None:
        if k > self.settings.max_k:
            raise api.field_error(title, ("k",), f"k must be at most {self.settings.max_k}", k)

    # /recommend and /similar_items run on the event loop: ~1 ms of in-memory work with cached profile
    # reads, cheaper than the hop to a worker thread, which cost a third of the throughput (measured:
    # 0.65 -> 0.85-0.99 of the bare endpoint). Slower endpoints (NBA, scores, events) keep the threads.
    @bentoml.api(route="/recommend")
    async def recommend(self, req: api.RecommendRequest, /) -> api.RecommendResponse:
        """Personal when the profile or its fresh events say something, else cold start from context."""
        return self._recommend(req)

    def _recommend(self, req: api.RecommendRequest) -> api.RecommendResponse:
        from serving.guard import Signal

        self._check_k("RecommendRequest", req.k)
        champ = self.champions.current
        rec = champ.recommender
        ids = req.identifiers()
        pid = self.store.resolve(ids) if ids else None
        profile = self.store.get_profile(pid) if pid else None
        ctx_item = req.context.item_id
        now = time.time()
        recent, suppressed = personal_query(profile, now)
        recent_items = list(dict.fromkeys(([ctx_item] if ctx_item else []) + recent))
        exclude = set(req.exclude) | set(suppressed)
        if ctx_item:
            exclude.add(ctx_item)
        want = req.k + len(exclude) + 10
        personal = pid is not None and (rec.has_user(pid) or any(rec.has_item(i) for i in recent_items))
        candidates: list[tuple[str, float, str]] = []
        session: list[tuple[str, float, str]] = []
        viewed: tuple[str, str | None] | None = None  # the session's newest view the model knows
        if personal:
            candidates = [(i, s, "personal") for i, s in rec.recommend(pid, want, exclude=sorted(exclude),
                                                                      recent_items=recent_items)]
            fresh = ([(ctx_item, req.context.category)] if ctx_item else []) + session_views(profile, now)
            viewed = next(((i, c) for i, c in fresh if rec.has_item(i)), None)
            if viewed:
                session = [(i, s, "session") for i, s in rec.similar_items(viewed[0], want)]
        else:
            if ctx_item and rec.has_item(ctx_item):
                candidates += [(i, s, "context") for i, s in rec.complements(ctx_item, want)]
                candidates += [(i, s, "context") for i, s in rec.similar_items(ctx_item, want)]
            category = req.context.category or (rec.item_category(ctx_item) if ctx_item else None)
            if category:
                candidates += [(i, s, "popular") for i, s in rec.popular(want, category=category)]
            candidates += [(i, s, "popular") for i, s in rec.popular(want)]
            self.metrics.cold_start.inc()
        kinds: dict[str, str] = {}
        for i, _, kind in candidates + session:
            kinds.setdefault(i, kind)
        stock = self.store.in_stock(list(kinds)) if kinds else {}
        chosen = rank_candidates(((i, s) for i, s, _ in candidates), req.k, exclude, stock)
        if session and viewed:
            closest = rank_candidates(((i, s) for i, s, _ in session), len(SESSION_SLOTS), exclude | {viewed[0]}, stock)
            blended = blend_session(chosen, closest, req.k)
            chosen = [(i, s) for i, s, _ in blended]
            kinds.update({i: "session" for i, _, from_session in blended if from_session})
        # one guard decision per kind of reason: the reason never names more than the guard allows
        consent = self._consent(pid)
        logged_in = pid is not None and any(c not in (DEVICE_ID, COOKIE_ID) for c in ids)
        ctx_signal = ([Signal(VIEW, req.channel, item_id=ctx_item,
                              category=req.context.category or rec.item_category(ctx_item))] if ctx_item else [])
        session_signal = ([Signal(VIEW, req.channel, item_id=viewed[0],
                                  category=viewed[1] or rec.item_category(viewed[0]))] if viewed else [])
        signals = {"personal": ctx_signal + _signals_from_profile(profile), "context": ctx_signal,
                   "session": session_signal, "popular": []}
        reasons = {k: self._reason(signals[k], req.channel, consent, logged_in) for k in {kinds[i] for i, _ in chosen}}
        items = [api.ScoredItem(item_id=i, score=s, reason=reasons[kinds[i]]) for i, s in chosen]
        logger.debug("recommend profile=%s personal=%s n=%d", hashed_id(pid), personal, len(items))
        return api.RecommendResponse(
            profile_id=pid, cold_start=not personal, items=items,
            model_version=champ.status[RECOMMENDER_MODEL].version, fallback=champ.recommender_is_fallback)

    @bentoml.api(route="/similar_items")
    async def similar_items(self, req: api.SimilarItemsRequest, /) -> api.SimilarItemsResponse:
        """Look-alikes and complements for a product page (no personal data involved)."""
        return self._similar_items(req)

    def _similar_items(self, req: api.SimilarItemsRequest) -> api.SimilarItemsResponse:
        self._check_k("SimilarItemsRequest", req.k)
        rec = self.champions.current.recommender
        if not rec.has_item(req.item_id):
            raise NotFound(f"item_id: unknown item {req.item_id!r}")
        sim = rec.similar_items(req.item_id, req.k + 5)
        comp = rec.complements(req.item_id, req.k + 5)
        stock = self.store.in_stock([i for i, _ in sim + comp])
        skip = {req.item_id}
        return api.SimilarItemsResponse(
            item_id=req.item_id,
            similar=[api.ScoredItem(item_id=i, score=s) for i, s in rank_candidates(sim, req.k, skip, stock)],
            complements=[api.ScoredItem(item_id=i, score=s) for i, s in rank_candidates(comp, req.k, skip, stock)],
        )

    # -- next best action -----------------------------------------------------------------------
    @bentoml.api(route="/next_best_action")
    def next_best_action(self, req: api.NBARequest, /) -> api.NBAResponse:
        """serving.nba decides; every action's message passes the guard (suppressed ones are dropped)."""
        from serving.guard import NBA_MESSAGE, GuardRequest, guard

        pid = self.store.resolve(req.identifiers())
        if pid is None:
            raise NotFound(f"{', '.join(req.identifiers())}: unknown customer")
        now = datetime.now(UTC)
        ctx, profile = self._nba_context(pid, now=now, campaign_id=req.campaign, channel=req.channel)
        rec = self.champions.current.recommender
        recent, exclude = personal_query(profile, time.time())
        candidates = rec.recommend(pid, 5, exclude=exclude, recent_items=recent)
        # the items only fill the cross-sell message; whether to cross-sell does not depend on them
        ctx = dataclasses.replace(
            ctx, candidate_items=tuple(nba.CandidateItem(i, s, rec.item_category(i)) for i, s in candidates))
        decision = nba.decide_actions(ctx)
        consent = self._consent(pid)
        signals = tuple(_signals_from_profile(profile))
        contact = nba_contact_context(ctx, profile)
        allowed = nba_contact_rule(self.policy, now, consent, {pid: profile})
        actions = []
        for a in decision.actions:
            if not allowed(ctx, a):  # the same rule /scores applies, so both give the same first action
                continue
            channel = a.channel or req.channel
            d = guard(GuardRequest(NBA_MESSAGE, channel, consent, signals, action=a.name, params=dict(a.params),
                                   now=now, logged_in=True, context=contact), self.policy)
            if not d.allowed:
                continue
            actions.append(api.ActionOut(action=a.name, score=a.expected_value, expected_value=a.expected_value,
                                         channel=a.channel, params=_jsonable(dict(d.params)), reason=d.text))
        if not actions:
            actions = [api.ActionOut(action=nba.DO_NOTHING, score=0.0, expected_value=0.0)]
        return api.NBAResponse(profile_id=pid, holdout=decision.holdout, actions=actions,
                               decided_at=str(decision.time_bucket))

    # -- events ---------------------------------------------------------------------------------
    @bentoml.api(route="/events")
    def events(self, req: api.EventsRequest, /) -> api.EventsResponse:
        """Validated, scored (reviews/support messages) and durably stored before the answer."""
        records = req.records()
        if len(records) > self.settings.max_batch:
            raise api.field_error("EventsRequest", ("events",),
                                  f"at most {self.settings.max_batch} events per call", len(records))
        frame = pd.DataFrame.from_records(records) if records else pd.DataFrame({EVENT_ID: []})
        result = validate_events(frame)
        rejected = [api.EventRejection(row=int(r[ERROR_ROW]),
                                       event_id=None if pd.isna(r[EVENT_ID]) else str(r[EVENT_ID]),
                                       field=str(r[ERROR_FIELD]), reason=str(r[ERROR_REASON]))
                    for r in result.error_records()]
        bad_rows = {rej.row for rej in rejected}
        valid = result.valid
        ids = valid[EVENT_ID].astype(str).tolist()
        first_seen: set[str] = set()
        duplicates: list[str] = []  # repeats inside the batch (the first copy counts), then re-sends
        for i, r in enumerate(records):
            eid = str(r.get(EVENT_ID)).strip()
            if i in bad_rows:
                continue
            (duplicates.append if eid in first_seen else first_seen.add)(eid)
        accepted: list[str] = []
        suppressed: list[str] = []
        suppressed_n = 0
        profile_ids: list[str] = []
        scored = 0
        if ids:
            sentiment = self._score_sentiment(valid)
            scored = len(sentiment)
            try:
                res = self.store.append_events(valid, sentiment=sentiment if scored else None, validated=True)
            except Exception as exc:
                logger.exception("event append failed")
                raise ServiceUnavailable("the profile store could not record the events; retry") from exc
            acc_ids = getattr(res, "accepted_ids", None)
            if acc_ids is not None:
                accepted = [str(x) for x in acc_ids]
            elif res.accepted == len(ids):
                accepted = ids
            elif res.accepted == 0:
                pass
            else:  # mixed batch and a store that reports only counts: look the new ones up
                stored = set(self.store.events_for(list(res.profile_ids))[EVENT_ID].astype(str))
                accepted = [i for i in ids if i in stored]
            acc_set = set(accepted)
            rest = [i for i in ids if i not in acc_set]
            suppressed_n = int(getattr(res, "suppressed", 0) or 0)
            if suppressed_n and suppressed_n == len(rest):
                suppressed = rest  # every one belongs to an erased profile: never stored
            else:
                duplicates += rest
            profile_ids = sorted({str(p) for p in res.profile_ids})
        self.metrics.events.labels("accepted").inc(len(accepted))
        self.metrics.events.labels("duplicate").inc(len(duplicates))
        self.metrics.events.labels("rejected").inc(len(bad_rows))
        logger.info("events accepted=%d duplicates=%d rejected=%d", len(accepted), len(duplicates), len(bad_rows))
        return api.EventsResponse(accepted=accepted, duplicates=duplicates, rejected=rejected,
                                  suppressed=suppressed_n, profile_ids=profile_ids, sentiment_scored=scored,
                                  suppressed_ids=suppressed)

    def _score_sentiment(self, events: pd.DataFrame) -> pd.Series:
        """Sentiment score in [-1, 1] by event id for reviews and support messages, when the model is loaded."""
        model = self.champions.current.sentiment
        texts = events[events[EVENT_TYPE].isin(TEXT_EVENT_TYPES) & events[TEXT].notna()]
        if model is None or not len(texts):
            return pd.Series(dtype="float64")
        try:
            out = model.predict(pd.DataFrame({TEXT: texts[TEXT].astype(str).tolist()}))
            return pd.Series(np.asarray(out["score"], dtype=float), index=texts[EVENT_ID].astype(str).to_numpy())
        except Exception:
            logger.exception("sentiment scoring failed; events are stored unscored")
            return pd.Series(dtype="float64")

    # -- scores ---------------------------------------------------------------------------------
    def score_profiles(self, profile_ids: Sequence[str]) -> pd.DataFrame:
        """Churn, propensity and top action for known profiles: one features_for, one predict_proba each."""

        feats = self.store.features_for(list(profile_ids)) if len(profile_ids) else pd.DataFrame()
        return self._score_features(feats)

    def _score_features(self, feats: pd.DataFrame) -> pd.DataFrame:
        """Churn, propensity and top action per feature row: `/next_best_action`'s first action for the
        default campaign (same contexts, same ranking, same contact rule), decided vectorised."""
        if not len(feats):
            return pd.DataFrame({PROFILE_ID: [], nba.CHURN_PROBABILITY: [], nba.PURCHASE_PROPENSITY: [],
                                 nba.TOP_ACTION: []})
        now = datetime.now(UTC)
        churn, prop, ctxs, profiles = self._nba_inputs(feats, now=now)
        # Consent enters the contact rule only through the customer's time zone (quiet hours), which the
        # store does not keep (`_consent` builds every customer's state without one): the default state
        # is what a per-customer read would give, without 10,000 consent reads.
        rule = nba_contact_rule(self.policy, now, self._default_consent, profiles)
        top = nba.decide_top_actions(ctxs, allowed=rule)
        return pd.DataFrame({PROFILE_ID: feats[PROFILE_ID].astype(str).to_numpy(), nba.CHURN_PROBABILITY: churn,
                             nba.PURCHASE_PROPENSITY: prop, nba.TOP_ACTION: top[nba.TOP_ACTION].to_numpy()})

    def _nba_inputs(self, feats: pd.DataFrame, *, now: datetime, campaign_id: str = "default",
                    channel: str | None = None) -> tuple[np.ndarray, np.ndarray, list[nba.NBAContext],
                                                          dict[str, Any]]:
        """Model scores, decision contexts and store profiles of feature rows: the one place both
        `/scores` and `/next_best_action` get their decision inputs from (`nba.contexts_from_profiles`)."""
        champ = self.champions.current
        churn = _predict_proba(champ.churn, feats)
        prop = _predict_proba(champ.purchase, feats)
        pids = feats[PROFILE_ID].astype(str).tolist()
        profiles = self.store.get_profiles(pids)
        ctxs = nba.contexts_from_profiles(profiles, feats, churn, prop, now=now, campaign_id=campaign_id,
                                          channel=channel)
        return churn, prop, ctxs, dict(zip(pids, profiles, strict=True))

    def _nba_context(self, pid: str, *, now: datetime, campaign_id: str,
                     channel: str | None) -> tuple[nba.NBAContext, Any]:
        """One customer's decision context (as `/scores` builds it) and store profile."""
        feats = self.store.features_for([pid])
        if len(feats):
            _, _, ctxs, profiles = self._nba_inputs(feats, now=now, campaign_id=campaign_id, channel=channel)
            return ctxs[0], profiles[pid]
        # no feature row yet (first events in the current feature bucket): no scores, /scores says unknown
        profile = self.store.get_profile(pid)
        ctx = nba.contexts_from_profiles([profile], pd.DataFrame({PROFILE_ID: [pid]}), [np.nan], [np.nan],
                                         now=now, campaign_id=campaign_id, channel=channel)[0]
        return ctx, profile

    @bentoml.api(route="/scores")
    def scores(self, req: api.ScoresRequest, /) -> api.ScoresResponse:
        total = len(req.profile_ids) + len(req.customer_ids)
        if total > self.settings.max_batch:
            raise api.field_error("ScoresRequest", ("profile_ids",),
                                  f"at most {self.settings.max_batch} customers per call", total)
        requested: list[tuple[str, str | None]] = [(p, p) for p in req.profile_ids]
        if req.customer_ids:
            resolved = self.store.resolve_many(CUSTOMER_ID, list(req.customer_ids))
            requested += [(c, resolved.get(c)) for c in req.customer_ids]
        pids = sorted({p for _, p in requested if p})
        table = self.score_profiles(pids)
        known = set(table[PROFILE_ID])
        cols = {c: table[c].to_numpy() for c in (nba.CHURN_PROBABILITY, nba.PURCHASE_PROPENSITY, nba.TOP_ACTION)}
        pos = {p: i for i, p in enumerate(table[PROFILE_ID])}
        out, unknown = [], []
        for ident, pid in requested:
            if pid is None or pid not in known:
                unknown.append(ident)
                continue
            i = pos[pid]
            out.append(api.CustomerScore(id=ident, profile_id=pid,
                                         churn_probability=_nan_none(cols[nba.CHURN_PROBABILITY][i]),
                                         purchase_propensity=_nan_none(cols[nba.PURCHASE_PROPENSITY][i]),
                                         top_action=cols[nba.TOP_ACTION][i]))
        champ = self.champions.current
        return api.ScoresResponse(scores=out, unknown=unknown,
                                  churn_model_version=champ.status[CHURN_MODEL].version,
                                  purchase_model_version=champ.status[PURCHASE_MODEL].version)

    @bentoml.task(route="/score_segment")
    def score_segment(self, req: api.SegmentExportRequest, /) -> api.SegmentExportResult:
        """Scores a whole segment in chunks in the background and writes one CSV/parquet file."""
        if req.profile_ids is not None:
            pids = list(dict.fromkeys(req.profile_ids))
        else:
            pids = sorted(self.store.export_events()[PROFILE_ID].dropna().astype(str).unique())
        step = self.settings.max_batch
        parts = [self.score_profiles(pids[i:i + step]) for i in range(0, len(pids), step)]
        table = pd.concat(parts, ignore_index=True) if parts else self.score_profiles([])
        self.settings.export_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        path = Path(self.settings.export_dir) / f"scores-{stamp}.{req.format}"
        if req.format == "csv":
            table.to_csv(path, index=False)
        else:
            table.to_parquet(path, index=False)
        return api.SegmentExportResult(path=str(path.resolve()), rows=len(table), format=req.format)

    # -- GET / PUT / DELETE (FastAPI class views: `self` is the service instance) ----------------
    @http_app.put("/consent")
    def put_consent(self, req: api.ConsentRequest) -> api.ConsentResponse:
        pid = self.store.resolve(req.identifiers())
        if pid is None:
            raise HTTPException(404, detail=[{"loc": ["body", *req.identifiers()], "msg": "unknown customer",
                                              "type": "not_found"}])
        self.store.set_consent(pid, req.purpose, req.granted)
        return api.ConsentResponse(profile_id=pid, consent=dict(self.store.get_consent(pid)))

    @http_app.put("/stock")
    def put_stock(self, req: api.StockRequest) -> dict[str, int]:
        """Out-of-stock items leave /recommend and /similar_items from the next call."""
        for it in req.items:
            self.store.set_stock(it.item_id, it.in_stock)
        return {"updated": len(req.items)}

    def _profile_id(self, ident: str, by: str | None) -> str:
        if by is None or by == PROFILE_ID:
            pid = ident if self.store.get_profile(ident) is not None else None
        elif by in IDENTIFIER_COLUMNS:
            pid = self.store.resolve({by: ident})
        else:
            raise HTTPException(422, detail=[{"loc": ["query", "by"], "type": "enum",
                                              "msg": f"by must be profile_id or one of {', '.join(IDENTIFIER_COLUMNS)}"}])
        if pid is None:
            raise HTTPException(404, detail=[{"loc": ["path", "profile_id"], "msg": "unknown profile",
                                              "type": "not_found"}])
        return pid

    @http_app.get("/profiles/{profile_id}")
    def get_profile(self, profile_id: str, by: str | None = Query(default=None)) -> dict[str, Any]:
        """What Mirror holds about a person, as the guard lets them see it (`?by=customer_id` etc.)."""
        from serving.guard import profile_view

        pid = self._profile_id(profile_id, by)
        return _jsonable(profile_view(self.store.get_profile(pid), self._consent(pid), self.policy))

    @http_app.delete("/profiles/{profile_id}")
    def delete_profile(self, profile_id: str, by: str | None = Query(default=None)) -> dict[str, Any]:
        """Erasure: events, identities, state and consent; later training never sees them."""
        pid = self._profile_id(profile_id, by)
        removed = self.store.erase_profile(pid)
        logger.info("erased profile %s (%d events)", hashed_id(pid), removed)
        return {PROFILE_ID: pid, "erased": True, "events_removed": int(removed)}

    @http_app.get("/status")
    def status(self) -> dict[str, Any]:
        """Readiness detail: which versions serve, which failed to load, whether fallback answers."""
        return {"ready": self.__is_ready__(), "models": self.champions.status()}


def _nan_none(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def _predict_proba(model: Any, features: pd.DataFrame) -> np.ndarray:
    """P(class 1) for each row, or NaN when the model is not loaded or fails on this input."""
    if model is None:
        return np.full(len(features), np.nan)
    cols = list(getattr(model, "feature_names_in_", []))
    if not cols:
        from features.profiles import FEATURE_COLUMNS

        cols = [c for c in FEATURE_COLUMNS if c in features]
    try:
        return np.asarray(model.predict_proba(features[cols])[:, 1], dtype=float)
    except Exception:
        logger.exception("predict_proba failed; answering without this score")
        return np.full(len(features), np.nan)


def _aware_ts(t: Any) -> datetime | None:
    """An NBAContext instant (epoch seconds or datetime) as the aware datetime the guard expects."""
    if t is None:
        return None
    if isinstance(t, datetime):
        return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(t), tz=UTC)


def nba_contact_context(ctx: nba.NBAContext, profile: Any) -> Any:
    """The guard's ContactContext of a decision context. `purchases` (item -> latest purchase) holds the
    cart's items only: all the contact policy reads it for (a cart reminder for an item just bought;
    the thank-you window reads `last_purchase_ts`), and this runs per customer on the /scores path."""
    from serving.guard import ContactContext

    purchases: dict[str, datetime] = {}
    cart = {i.item_id for i in ctx.cart}
    for e in (getattr(profile, "purchases", None) or ()) if cart else ():
        item = _entry_item(e)
        ts = _aware_ts(getattr(e, TS, None)) if item in cart else None
        if item is not None and ts is not None and (item not in purchases or ts > purchases[item]):
            purchases[item] = ts
    return ContactContext(profile_id=ctx.profile_id, purchases=purchases,
                          last_purchase_ts=_aware_ts(ctx.last_purchase_ts),
                          last_return_ts=_aware_ts(ctx.last_return_ts),
                          last_negative_sentiment_ts=_aware_ts(ctx.last_negative_sentiment_ts))


def nba_contact_rule(policy: Any, now: datetime, consent: Any, profiles: Mapping[str, Any]) -> nba.ContactRule:
    """The guard's contact policy (`serving.guard.check_contact`: no upsell/cross-sell/reminders after a
    return or negative sentiment, no cart reminder for an item just bought, quiet hours) as the one rule
    `/next_best_action` and `/scores` both apply to a ranked action. Every cart item is checked, so the
    guard's own check (on the message's items) never refuses what this allowed. No frequency-cap slot
    is reserved here."""
    from serving.guard import check_contact

    contacts: dict[str, Any] = {}  # one ContactContext per customer, however many actions are checked

    def allowed(ctx: nba.NBAContext, action: nba.ScoredAction) -> bool:
        if action.name == nba.DO_NOTHING:
            return True
        contact = contacts.get(ctx.profile_id)
        if contact is None:
            contact = contacts[ctx.profile_id] = nba_contact_context(ctx, profiles.get(ctx.profile_id))
        check = check_contact(action.channel or "web", action.name, now, consent, policy, contact,
                              [i.item_id for i in ctx.cart])
        return check.allowed

    return allowed


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (datetime, pd.Timestamp)):
        return x.isoformat()
    if isinstance(x, (np.generic,)):
        return x.item()
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


Mirror.add_asgi_middleware(GatekeeperMiddleware)
