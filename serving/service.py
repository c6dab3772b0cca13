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
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, BinaryIO

import bentoml
import numpy as np
import pandas as pd
from bentoml.exceptions import BentoMLException, NotFound, ServiceUnavailable
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse

from features.catalog import Catalog, CatalogItem, validate_catalog
from features.schema import (
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
    validate_events,
)
from serving import api, nba, segments
from serving.auth import GatekeeperMiddleware, KeyRing, log_auth_mode
from serving.config import Settings
from serving.decisions import TOP_CHANNEL, DecisionEngine, customer_consent
from serving.guard import ConsentState, Sensitivity, load_policy
from serving.models import ChampionSet, PopularityFallback
from serving.recommend import Query as RecommendQuery
from serving.recommend import RecommendationPolicy

logger = logging.getLogger("mirror.service")

#: Seconds between checks whether another process changed the catalog (a local write refreshes at once).
CATALOG_CHECK_S = 0.5

#: GET/PUT/DELETE routes; BentoML's @api is POST-only. Its own docs are off: /docs.json is BentoML's.
http_app = FastAPI(title="mirror-admin", docs_url=None, redoc_url=None, openapi_url=None)


def hashed_id(value: str | None) -> str:
    """Ids in logs are hashed: logs never carry personal data (issue 6)."""
    return "-" if not value else hashlib.sha256(value.encode()).hexdigest()[:12]


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
        self.rejected = Gauge("mirror_model_rejected", "1 when the last reload refused a new version of this model "
                              "(load failure or canary; /status says why)", ["model"],
                              multiprocess_mode="mostrecent")
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
            self.rejected.labels(name).set(1.0 if s.get("error") else 0.0)


#: Routes BentoML serves itself (probes, metrics, docs), beside the service's API and mounted routes.
BENTOML_ROUTES = ("/", "/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json")
#: The one label of every path that is no route of ours (scanners, typos, 404s).
OTHER_ROUTE = "other"


@dataclass(frozen=True)
class RouteLabels:
    """Request path -> the route template that serves it (`/profiles/{profile_id}`), else `other`.

    Why: BentoML labels its request metrics with the raw path, so `/profiles/<email>?by=email` put
    emails and customer ids into /metrics, and every distinct path was a new series for ever (5,000
    requests: 18 KB -> 39 MB, 8-12 s a scrape). Templates are a fixed set, so the label set is bounded
    whatever the traffic and carries no identifier (a query string is never part of the path)."""

    exact: frozenset[str]
    templated: tuple[tuple[re.Pattern[str], str], ...]

    @classmethod
    def of(cls, templates: Iterable[str]) -> RouteLabels:
        from starlette.routing import compile_path

        exact, templated = set(), []
        for t in dict.fromkeys(templates):
            if "{" in t:
                templated.append((compile_path(t)[0], t))
            else:
                exact.add(t)
        return cls(frozenset(exact), tuple(templated))

    @classmethod
    def of_service(cls, service: Any, app: FastAPI) -> RouteLabels:
        """BentoML's routes, the service's APIs and the mounted FastAPI app's paths (from its OpenAPI)."""
        return cls.of([*BENTOML_ROUTES, *(a.route for a in service.apis.values()), *app.openapi()["paths"]])

    def __call__(self, path: str) -> str:
        if path in self.exact:
            return path
        return next((t for rx, t in self.templated if rx.match(path)), OTHER_ROUTE)


def label_request_metrics(label: Callable[[str], str]) -> bool:
    """Make BentoML's HTTP request metrics label requests with `label(path)` instead of the raw path.

    BentoML 1.4 records `bentoml_service_request_{total,duration_seconds,in_progress}` in
    `RunnerTrafficMetricsMiddleware` (the outermost middleware, so even a 401 or a 404 counts), with
    `endpoint=scope["path"]` and no setting to change it. The replacement hands BentoML's own code a
    copy of the request scope whose path is the label, and the app below the real scope: metric names,
    buckets and the other labels stay BentoML's. Returns False if BentoML's class is not the one we
    know; its request metrics are then switched off (none rather than personal ones), with a warning.
    """
    import copy

    from bentoml._internal.server.http import instruments

    cls = instruments.RunnerTrafficMetricsMiddleware
    cls._mirror_route_label = staticmethod(label)
    if getattr(cls, "_mirror_relabelled", None) is not None:
        return bool(cls._mirror_relabelled)
    original = cls.__call__

    if not callable(getattr(cls, "_setup", None)):
        async def passthrough(self: Any, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

        cls.__call__, cls._mirror_relabelled = passthrough, False
        logger.warning("BentoML's request-metrics middleware changed; its request metrics are off "
                       "(they would be labelled with raw paths)")
        return False

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await original(self, scope, receive, send)
        if not getattr(self, "_is_setup", True):
            self._setup()  # on the shared instance: the copy below must not register the metrics again
        view = copy.copy(self)  # shares the metric objects; only `app` differs, per request
        app = self.app

        async def routed(_labelled: Any, receive_: Any, send_: Any) -> None:
            await app(scope, receive_, send_)

        view.app = routed
        await original(view, {**scope, "path": cls._mirror_route_label(scope["path"])}, receive, send)

    cls.__call__, cls._mirror_relabelled = __call__, True
    return True


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


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------
@bentoml.asgi_app(http_app, path="/")
@bentoml.service(name="mirror", workers=1, threads=8, traffic={"timeout": 120})
class Mirror:
    """Opens the store and loads the champions at start; every request reads one champion snapshot."""

    def __init__(self) -> None:
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
        self.store = _open_store(self.settings)
        self.recommendation = RecommendationPolicy(self.policy)
        self.decisions = DecisionEngine(self.store, self.policy, self.recommendation)
        self._catalog_lock = threading.Lock()
        self._catalog, self._catalog_version, self._catalog_checked = self.store.catalog(), -1, 0.0
        self._catalog_version = self.store.catalog_version()
        self.metrics = ServiceMetrics.get()
        label_request_metrics(RouteLabels.of_service(Mirror, http_app))
        self.segments = segments.SegmentRunner(
            self.settings.export_dir, score=self.score_profiles, list_profiles=self.store.profile_ids,
            chunk_size=self.settings.max_batch, workers=self.settings.export_workers,
            queue_size=self.settings.export_queue, retention_s=self.settings.export_retention_s)
        self.segments.start()
        self.champions = ChampionSet(fallback_factory=self._popularity_fallback)
        self._reload_lock = threading.Lock()
        self.reload_models()
        self._warmed = threading.Event()  # ready only after the first warm-up: no stall after /readyz
        threading.Thread(target=self._keep_features_warm, name="mirror-feature-warmer", daemon=True).start()

    def _keep_features_warm(self) -> None:
        """Build every profile's feature row and model scores in vectorised passes, now and after each
        feature bucket.

        /scores and /next_best_action read cached rows and scores (the store refreshes a profile's row
        on each write; a changed row is scored again), so no request pays for feature building or a
        model call for a customer already warmed.
        """
        bucket = float(self.store.config.feature_granularity_s)
        while True:
            try:
                n = self.store.warm_features()
                champ = self.champions.current
                self.decisions.warm(champ.churn, champ.purchase, self.store.profile_ids())
                _release_free_memory()
                logger.info("feature rows and scores warmed for %d profiles", n)
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
        return (self.store is not None and self.champions.loaded_once and self._warmed.is_set()
                and self.champions.can_recommend())

    def _popularity_fallback(self) -> PopularityFallback:
        try:
            return PopularityFallback.from_events(self.store.export_events())
        except Exception:  # the fallback must never be the thing that fails
            logger.exception("could not build the popularity fallback from the store")
            return PopularityFallback()

    def reload_models(self) -> dict[str, dict[str, Any]]:
        with self._reload_lock:
            try:
                outcome = self.champions.reload().outcome  # "rejected": a canary refused a new version
                self.decisions.forget_scores()
                self.metrics.reloads.labels(outcome).inc()
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
    def _consent(self, pid: str | None, profile: Any = None) -> ConsentState:
        """The customer's consent, with their own time zone when their events told it."""
        return customer_consent(self.store.get_consent(pid) if pid else {}, profile)

    def catalog(self) -> Catalog:
        """The catalog in memory, refreshed when the store's catalog changed (checked at most every
        `CATALOG_CHECK_S`; a write through this worker refreshes it at once)."""
        now = time.monotonic()
        if now - self._catalog_checked >= CATALOG_CHECK_S:
            self._refresh_catalog()
        return self._catalog

    def _refresh_catalog(self, force: bool = False) -> None:
        with self._catalog_lock:
            self._catalog_checked = time.monotonic()
            version = self.store.catalog_version()
            if force or version != self._catalog_version:
                self._catalog, self._catalog_version = self.store.catalog(), version

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
        self._check_k("RecommendRequest", req.k)
        champ = self.champions.current
        ids = req.identifiers()
        pid = self.store.resolve(ids) if ids else None
        profile = self.store.get_profile(pid) if pid else None
        q = RecommendQuery(channel=req.channel, k=req.k, now=datetime.now(UTC),
                  logged_in=pid is not None and any(c not in (DEVICE_ID, COOKIE_ID) for c in ids),
                  context_item=req.context.item_id, context_category=req.context.category,
                  exclude=frozenset(req.exclude))
        out = self.recommendation.recommend(champ.recommender, self.catalog(), profile,
                                            self._consent(pid, profile), q)
        if not out.personalized:
            self.metrics.cold_start.inc()
        logger.debug("recommend profile=%s personal=%s n=%d", hashed_id(pid), out.personalized, len(out.items))
        return api.RecommendResponse(
            profile_id=pid, personalized=out.personalized, cold_start=not out.personalized,
            items=[_scored_item(p.item_id, p.score, p.item, reason=p.reason, basis=p.basis) for p in out.items],
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
        catalog = self.catalog()

        def shown(pairs: list[tuple[str, float]]) -> list[api.ScoredItem]:
            # an anonymous product page: nothing sensitive or life-event, nothing out of stock
            ok = [(i, s) for i, s in pairs if i != req.item_id
                  and self.recommendation.tier(i, catalog, rec) == Sensitivity.NONE
                  and not ((it := catalog.get(i)) is not None and it.in_stock is False)]
            return [_scored_item(i, s, catalog.get(i)) for i, s in ok[:req.k]]

        return api.SimilarItemsResponse(item_id=req.item_id, similar=shown(rec.similar_items(req.item_id, req.k + 10)),
                                        complements=shown(rec.complements(req.item_id, req.k + 10)))

    # -- next best action -----------------------------------------------------------------------
    @bentoml.api(route="/next_best_action")
    def next_best_action(self, req: api.NBARequest, /) -> api.NBAResponse:
        """serving.decisions decides on consented inputs; every message passes the guard; on an outbound
        channel the action holds a slot in the store's ledger (once per decision)."""
        pid = self.store.resolve(req.identifiers())
        if pid is None:
            raise NotFound(f"{', '.join(req.identifiers())}: unknown customer")
        out = self.decisions.next_best_action(self.champions.current, self.catalog(), pid, channel=req.channel,
                                              campaign=req.campaign, now=datetime.now(UTC))
        actions = [api.ActionOut(action=a.action, score=a.expected_value, expected_value=a.expected_value,
                                 channel=a.channel, params=_jsonable(dict(a.params)), reason=a.message,
                                 recommended_channel=a.recommended_channel if a.recommended_channel != a.channel
                                 else None, send_at=a.send_at.isoformat() if a.send_at else None,
                                 decision_id=a.decision_id) for a in out.actions]
        if not actions:
            actions = [api.ActionOut(action=nba.DO_NOTHING, score=0.0, expected_value=0.0, channel=req.channel,
                                     reason=out.reason)]
        return api.NBAResponse(profile_id=pid, channel=req.channel, personalized=out.personalized,
                               holdout=out.holdout, actions=actions, decided_at=str(out.decided_at))

    # -- events ---------------------------------------------------------------------------------
    @bentoml.api(route="/events")
    def events(self, req: api.EventsRequest, /) -> api.EventsResponse:
        """Validated, scored (reviews/support messages) and durably stored before the answer."""
        records = req.records()
        if len(records) > self.settings.max_batch:
            raise api.field_error("EventsRequest", ("events",),
                                  f"at most {self.settings.max_batch} events per call", len(records))
        # the records themselves, not a frame of them: only they tell a JSON NaN (an error) from null
        # (missing), and keep an empty event as a row to reject rather than no row at all
        result = validate_events(records)
        rejected = [api.EventRejection(row=int(r[ERROR_ROW]),
                                       event_id=None if pd.isna(r[EVENT_ID]) else str(r[EVENT_ID]),
                                       field=str(r[ERROR_FIELD]), reason=str(r[ERROR_REASON]))
                    for r in result.error_records()]
        valid = result.valid
        ids = valid[EVENT_ID].astype(str).tolist()
        # the request row of each row of `valid`: validation left out the rejected rows and the repeats
        left_out = {int(r) for r in result.errors[ERROR_ROW]} | {i for i, _ in result.duplicates}
        request_row = [i for i in range(len(records)) if i not in left_out]
        # identical repeats inside the batch (the first copy counts; ids normalised), then re-sends
        duplicates: list[str] = [eid for _, eid in result.duplicates]
        accepted: list[str] = []
        suppressed: list[str] = []
        suppressed_n = 0
        profile_ids: list[str] = []
        scored = 0
        if ids:
            sentiment = self._score_sentiment(valid)
            try:
                res = self.store.append_events(valid, sentiment=sentiment if len(sentiment) else None,
                                               validated=True)
            except Exception as exc:
                logger.exception("event append failed")
                raise ServiceUnavailable("the profile store could not record the events; retry") from exc
            accepted = [str(x) for x in res.accepted_ids]
            scored = len(set(map(str, sentiment.index)) & set(accepted))  # only stored events keep a score
            # ids stored with other content: errors of the store, by row of `valid`, named by request row
            conflicts = [api.EventRejection(row=request_row[int(e[ERROR_ROW])], event_id=str(e[EVENT_ID]),
                                            field=str(e[ERROR_FIELD]), reason=str(e[ERROR_REASON]))
                         for e in res.errors]
            rejected = sorted(rejected + conflicts, key=lambda rej: rej.row)  # stable: a row keeps its order
            settled = set(accepted) | {rej.event_id for rej in conflicts}
            rest = [i for i in ids if i not in settled]  # duplicates or suppressed
            suppressed_n = int(res.suppressed)
            if suppressed_n and suppressed_n == len(rest):
                suppressed = rest  # every one belongs to an erased profile: never stored
            else:
                duplicates += rest
            profile_ids = sorted({str(p) for p in res.profile_ids})
        self.metrics.events.labels("accepted").inc(len(accepted))
        self.metrics.events.labels("duplicate").inc(len(duplicates))
        bad_rows = len({rej.row for rej in rejected})
        self.metrics.events.labels("rejected").inc(bad_rows)
        logger.info("events accepted=%d duplicates=%d rejected=%d", len(accepted), len(duplicates), bad_rows)
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
        """Churn, propensity and top action for known profiles (`DecisionEngine.score`)."""
        champ = self.champions.current
        return self.decisions.score(champ.churn, champ.purchase, list(profile_ids))

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
        cols = {c: table[c].to_numpy() for c in (nba.CHURN_PROBABILITY, nba.PURCHASE_PROPENSITY, nba.TOP_ACTION,
                                                 TOP_CHANNEL)}
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
                                         top_action=cols[nba.TOP_ACTION][i],
                                         top_channel=ch if isinstance(ch := cols[TOP_CHANNEL][i], str) else None))
        champ = self.champions.current
        return api.ScoresResponse(scores=out, unknown=unknown,
                                  churn_model_version=champ.status[CHURN_MODEL].version,
                                  purchase_model_version=champ.status[PURCHASE_MODEL].version)

    # -- segment exports (serving.segments: Mirror's own job runner, nothing of a request on disk) ------
    @bentoml.api(route="/score_segment/submit")
    def score_segment_submit(self, req: api.SegmentExportRequest, /) -> api.SegmentTask:
        """Queues a segment export (every profile, or a list) scored in chunks into a CSV/parquet file.

        The body is checked now (a 400 naming the field), not when the job runs; 429 when the export
        queue is full (MIRROR_EXPORT_WORKERS running + MIRROR_EXPORT_QUEUE waiting): retry later."""
        try:
            job = self.segments.submit(req.profile_ids, req.format)
        except segments.ExportQueueFull as exc:
            raise BentoMLException(str(exc), error_code=HTTPStatus.TOO_MANY_REQUESTS) from exc
        logger.info("segment export %s queued (%s, %s profiles)", job.task_id, job.format,
                    "all" if req.profile_ids is None else len(req.profile_ids))
        return api.SegmentTask(task_id=job.task_id, status=job.status.value)

    @http_app.get("/score_segment/status")
    def score_segment_status(self, task_id: str = Query(min_length=1, max_length=64)) -> api.SegmentTaskStatus:
        job = self.segments.job(task_id)
        if job is None:
            raise _unknown_task()
        return api.SegmentTaskStatus(
            task_id=job.task_id, status=job.status.value, format=job.format, created_at=job.created_at.isoformat(),
            executed_at=job.executed_at.isoformat() if job.executed_at else None,
            completed_at=job.completed_at.isoformat() if job.completed_at else None,
            rows=job.rows, unknown=list(job.unknown), error=job.error)

    @http_app.get("/score_segment/get", response_model=None)
    def score_segment_get(self, task_id: str = Query(min_length=1, max_length=64)) -> StreamingResponse:
        """The export file itself (CSV or parquet, as an attachment), never a path on the server."""
        try:
            fh, name, media_type, size = self.segments.open_result(task_id)
        except KeyError:
            raise _unknown_task() from None
        except segments.ExportNotReady as exc:
            raise HTTPException(409, detail=[{"loc": ["query", "task_id"], "msg": str(exc),
                                              "type": "not_ready"}]) from None
        except segments.ExportGone as exc:
            raise HTTPException(410, detail=[{"loc": ["query", "task_id"], "msg": str(exc), "type": "gone"}]) from None
        return StreamingResponse(_file_chunks(fh), media_type=media_type, headers={
            "Content-Disposition": f'attachment; filename="{name}"', "Content-Length": str(size)})

    @bentoml.on_shutdown
    def _stop_segment_exports(self) -> None:
        self.segments.close()

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
        """Out-of-stock items leave /recommend and /similar_items from the next call (part of the catalog).
        Every id is checked by the catalog's rules before anything is written: one bad id, nothing changes."""
        checked = validate_catalog(pd.DataFrame({ITEM_ID: [it.item_id for it in req.items]}))
        if len(checked.errors):
            raise HTTPException(422, detail=[{"loc": ["body", "items", int(r[ERROR_ROW]), ITEM_ID],
                                              "msg": str(r[ERROR_REASON]), "type": "value_error"}
                                             for r in checked.error_records()])
        for it in req.items:
            self.store.set_stock(it.item_id, it.in_stock)
        self._refresh_catalog(force=True)
        return {"updated": len(req.items)}

    @http_app.put("/items")
    def put_items(self, req: api.ItemsRequest) -> api.ItemsResponse:
        """Upsert catalog records (each row updates the fields it gives); bad rows are listed, never dropped."""
        res = self.store.upsert_items(pd.DataFrame.from_records(req.items))
        self._refresh_catalog(force=True)
        rejected = [api.ItemRejection(row=int(r[ERROR_ROW]), item_id=None if pd.isna(r[ITEM_ID]) else str(r[ITEM_ID]),
                                      field=str(r[ERROR_FIELD]), reason=str(r[ERROR_REASON]))
                    for r in res.errors.to_dict("records")]
        return api.ItemsResponse(upserted=int(res.upserted), rejected=rejected)

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
        profile = self.store.get_profile(pid)
        return _jsonable(profile_view(profile, self._consent(pid, profile), self.policy))

    @http_app.delete("/profiles/{profile_id}")
    def delete_profile(self, profile_id: str, by: str | None = Query(default=None)) -> dict[str, Any]:
        """Erasure: events, identities, state and consent; later training never sees them; and every
        segment export holding the person is deleted (`exports_deleted`: their task ids)."""
        pid = self._profile_id(profile_id, by)
        removed = self.store.erase_profile(pid)
        exports = self.segments.erase(pid)
        logger.info("erased profile %s (%d events, %d exports)", hashed_id(pid), removed, len(exports))
        return {PROFILE_ID: pid, "erased": True, "events_removed": int(removed), "exports_deleted": exports}

    @http_app.get("/profiles/{profile_id}/export")
    def export_profile(self, profile_id: str, by: str | None = Query(default=None)) -> dict[str, Any]:
        """Data-access request: everything the store holds about the person (`store.export_profile`),
        not filtered by the guard (that is GET /profiles/{id}); admin scope, `?by=` as there."""
        pid = self._profile_id(profile_id, by)
        export = getattr(self.store, "export_profile", None)
        if export is None:
            raise HTTPException(501, detail=[{"loc": ["path", "profile_id"], "type": "not_implemented",
                                              "msg": "this profile store cannot export a profile"}])
        held = export(pid)
        if held is None:  # erased between the lookup and the export
            raise HTTPException(404, detail=[{"loc": ["path", "profile_id"], "msg": "unknown profile",
                                              "type": "not_found"}])
        logger.info("exported profile %s", hashed_id(pid))
        return _jsonable(held)

    @http_app.get("/status")
    def status(self) -> dict[str, Any]:
        """Readiness detail: which versions serve, which failed to load, whether fallback answers."""
        return {"ready": self.__is_ready__(), "models": self.champions.status()}


def _unknown_task() -> HTTPException:
    return HTTPException(404, detail=[{"loc": ["query", "task_id"], "msg": "unknown or expired task",
                                       "type": "not_found"}])


def _file_chunks(fh: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    """A download, read as it is sent (an export can be large); the file is closed at the end."""
    with fh:
        while chunk := fh.read(size):
            yield chunk


def _scored_item(item_id: str, score: float, item: CatalogItem | None, **extra: Any) -> api.ScoredItem:
    """An item of an answer with its catalog metadata (name, category, price, links) when known."""
    meta = {} if item is None else {"name": item.name, "category": item.category, "price": item.price,
                                    "currency": item.currency, "url": item.url, "image_url": item.image_url}
    return api.ScoredItem(item_id=item_id, score=float(score), **meta, **extra)


def _nan_none(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


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
