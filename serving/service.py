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
    CATEGORY,
    CHANNEL,
    CHURN_MODEL,
    COOKIE_ID,
    DEVICE_ID,
    EMAIL,
    ERROR_FIELD,
    ERROR_REASON,
    ERROR_ROW,
    EVENT_ID,
    EVENT_TYPE,
    IDENTIFIER_COLUMNS,
    ITEM_EVENT_TYPES,
    ITEM_ID,
    PHONE,
    PREFERENCE,
    PREFERENCE_KEY,
    PREFERENCE_VALUE,
    PROFILE_ID,
    PURCHASE_MODEL,
    RECOMMENDER_MODEL,
    TEXT,
    TEXT_EVENT_TYPES,
    TS,
    IdentifierHasher,
    normalise_id,
    validate_events,
)
from features.store import ServedList, ServedListLog
from serving import api, nba, openapi, problems, segments
from serving.auth import CorsMiddleware, GatekeeperMiddleware, KeyRing, log_auth_mode
from serving.config import Settings
from serving.decisions import DecisionEngine, customer_consent
from serving.guard import ConsentState, load_policy
from serving.models import ChampionSet, PopularityFallback
from serving.recommend import InputWarning, RecommendationPolicy, identifier_warnings
from serving.recommend import Query as RecommendQuery
from serving.served import ServedRecorder, new_recommendation_id

logger = logging.getLogger("mirror.service")

#: Seconds between checks whether another process changed the catalog (a local write refreshes at once).
CATALOG_CHECK_S = 0.5
#: The `model` recorded for a list the popularity fallback answered (no registered champion served it).
FALLBACK_MODEL = "popularity-fallback"
#: Surfaces of /similar_items' two lists (a /recommend list's surface is its page: api.PAGE_TYPES).
SIMILAR_SURFACE, COMPLEMENTS_SURFACE = "similar_items", "complements"

#: GET/PUT/DELETE routes; BentoML's @api is POST-only. Its own docs are off: serving.openapi writes one
#: document for both; operation ids are the endpoint functions' names (`put_consent`), not machine output.
http_app = FastAPI(title="mirror-admin", docs_url=None, redoc_url=None, openapi_url=None,
                   generate_unique_id_function=lambda route: route.name)


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
BENTOML_ROUTES = ("/livez", "/healthz", "/readyz", "/metrics", "/schema.json", *openapi.DOCS_ROUTES)
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
                body = problems.problem(504, f"not able to answer within {self.timeout} seconds",
                                        request_id=problems.current_request_id(scope))
                resp = JSONResponse(body, status_code=504, media_type=problems.PROBLEM_JSON)
                await resp(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    cls.__call__ = __call__
    cls._mirror_releases_timers = True
    return True


def _open_store(settings: Settings) -> Any:
    """The store MIRROR_STORE names: a URL (`redis://`, `sqlite:///`) through `features.store.open_store`; a
    path with the ProfileStore implementation MIRROR_STORE_BACKEND names (`module:Class`), SQLite by default."""
    import importlib

    if "://" in settings.store_url:
        from features.store import open_store

        return open_store(settings.store_url)
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
        self._hasher: IdentifierHasher = getattr(self.store, "hasher", None) or IdentifierHasher.from_env()
        if isinstance(self.store, ServedListLog):
            self.served: ServedRecorder | None = ServedRecorder(self.store.record_recommendations).start()
        else:
            logger.warning("this profile store cannot record served lists: attribution reports stay empty")
            self.served = None
        self.decisions = DecisionEngine(self.store, self.policy, self.recommendation)
        self._catalog_lock = threading.Lock()
        self._catalog, self._catalog_version, self._catalog_checked = self.store.catalog(), -1, 0.0
        self._catalog_version = self.store.catalog_version()
        self.metrics = ServiceMetrics.get()
        label_request_metrics(RouteLabels.of_service(Mirror, http_app))
        self.segments = segments.SegmentRunner(
            self.settings.export_dir, score=self.score_segment_chunk, list_profiles=self.store.profile_ids,
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
        rec, catalog = champ.recommender, self.catalog()
        ids = req.identifiers()
        pid = self.store.resolve(ids) if ids else None
        profile = self.store.get_profile(pid) if pid else None
        q = RecommendQuery(channel=req.channel, k=req.k, now=datetime.now(UTC), logged_in=_logged_in(pid, ids),
                           context_item=req.context.item_id, context_category=req.context.category,
                           exclude=frozenset(req.exclude), exclude_order=tuple(req.exclude))
        q, ignored = self.recommendation.checked(rec, catalog, q)  # what it cannot use leaves the query
        surface, page_warning = _surface(req.context.page)
        warnings = [*identifier_warnings(ids, pid is not None, self._hasher.normalise), *page_warning, *ignored]
        out = self.recommendation.recommend(rec, catalog, profile, self._consent(pid, profile), q)
        if not out.personalized:
            self.metrics.cold_start.inc()
        if logger.isEnabledFor(logging.DEBUG):  # the hash is not worth computing for a line nobody logs
            logger.debug("recommend profile=%s personal=%s n=%d", hashed_id(pid), out.personalized, len(out.items))
        return api.RecommendResponse(
            recommendation_id=self._served(surface, pid, q, champ, [p.item_id for p in out.items]),
            profile_id=pid, identified=pid is not None, personalized=out.personalized,
            cold_start=not out.personalized,
            items=[_scored_item(p.item_id, p.score, p.item, rec, position=n, reason=p.reason, basis=p.basis)
                   for n, p in enumerate(out.items)],
            model_version=champ.status[RECOMMENDER_MODEL].version, fallback=champ.recommender_is_fallback,
            warnings=_warnings(warnings))

    def _served(self, surface: str, pid: str | None, q: RecommendQuery, champ: Any, items: list[str]) -> str:
        """A new list id, its list queued for the store (serving.served: in the background, not lost on a
        clean shutdown): what `mirror report attribution` joins the events echoing the id to."""
        rid = new_recommendation_id()
        if self.served is not None:
            fallback = champ.recommender_is_fallback
            self.served.submit(ServedList(
                recommendation_id=rid, ts=q.now, profile_id=pid, surface=surface, channel=q.channel,
                model=FALLBACK_MODEL if fallback else RECOMMENDER_MODEL,
                model_version=None if fallback else champ.status[RECOMMENDER_MODEL].version, item_ids=tuple(items)))
        return rid

    @bentoml.on_shutdown
    def _write_served_lists(self) -> None:
        if self.served is not None:
            self.served.close()

    @bentoml.api(route="/similar_items")
    async def similar_items(self, req: api.SimilarItemsRequest, /) -> api.SimilarItemsResponse:
        """Look-alikes and complements for a product page; for an item the model does not know yet, popular
        items of its catalog category, then the shop's. With the customer's identifiers, /recommend's
        consent and guard rules apply (serving.recommend `RecommendationPolicy.similar`)."""
        return self._similar_items(req)

    def _similar_items(self, req: api.SimilarItemsRequest) -> api.SimilarItemsResponse:
        self._check_k("SimilarItemsRequest", req.k)
        champ = self.champions.current
        rec, catalog = champ.recommender, self.catalog()
        ids = req.identifiers()
        pid = self.store.resolve(ids) if ids else None
        profile = self.store.get_profile(pid) if pid else None
        q = RecommendQuery(channel=req.channel, k=req.k, now=datetime.now(UTC), logged_in=_logged_in(pid, ids),
                           context_item=req.item_id, exclude=frozenset(req.exclude), exclude_order=tuple(req.exclude))
        out = self.recommendation.similar(rec, catalog, profile, self._consent(pid, profile), q)
        warnings = [*identifier_warnings(ids, pid is not None, self._hasher.normalise), *out.warnings,
                    *self.recommendation.unknown_items(req.exclude, catalog, rec, "exclude")]

        def shown(picks: Sequence[Any]) -> list[api.ScoredItem]:
            return [_scored_item(p.item_id, p.score, p.item, rec, position=n, reason=p.reason, basis=p.basis)
                    for n, p in enumerate(picks)]

        return api.SimilarItemsResponse(
            item_id=req.item_id, similar=shown(out.similar), complements=shown(out.complements),
            similar_recommendation_id=self._served(SIMILAR_SURFACE, pid, q, champ, [p.item_id for p in out.similar]),
            complements_recommendation_id=self._served(COMPLEMENTS_SURFACE, pid, q, champ,
                                                       [p.item_id for p in out.complements]),
            profile_id=pid, identified=pid is not None, model_version=champ.status[RECOMMENDER_MODEL].version,
            warnings=_warnings(warnings))

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
                                 decision_id=a.decision_id, tone=a.tone) for a in out.actions]
        if not actions:
            actions = [api.ActionOut(action=nba.DO_NOTHING, score=0.0, expected_value=0.0, channel=req.channel,
                                     reason=out.reason)]
        return api.NBAResponse(profile_id=pid, channel=req.channel, personalized=out.personalized,
                               holdout=out.holdout, actions=actions,
                               decided_at=_window_start(out.decided_at, self.decisions.config.window_s),
                               tone=out.tone if out.personalized else None)

    # -- events ---------------------------------------------------------------------------------
    @bentoml.api(route="/events")
    def events(self, req: api.EventsRequest, /) -> api.EventsResponse:
        """Validated, scored (reviews/support messages) and durably stored before the answer."""
        records = req.records()
        if len(records) > self.settings.max_batch:
            raise api.field_error("EventsRequest", ("events",),
                                  f"at most {self.settings.max_batch} events per call", len(records))
        records = with_catalog_categories(records, self.catalog())
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
        if rejected and not accepted and not duplicates and not suppressed_n:
            return _nothing_accepted(rejected, single=req.event is not None)
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
    def _score_options(self, campaign: str, messages: bool = True) -> dict[str, Any]:  # exports: with messages
        """What `DecisionEngine.score` needs besides the ids: this request's catalog and recommender."""
        return {"catalog": self.catalog(), "recommender": self.champions.current.recommender, "campaign": campaign,
                "messages": messages}

    def score_segment_chunk(self, ids: Sequence[str], by: str | None, /, **options: Any) -> tuple[pd.DataFrame,
                                                                                                  list[str]]:
        """One chunk of a segment export (`segments.Scorer`): rows of /scores' fields, and the unknown ids."""
        champ = self.champions.current
        opts = self._score_options(**options)
        if by is None:  # the whole store: keyed by each profile's own customer ids
            return self.decisions.score_store(champ.churn, champ.purchase, list(ids), **opts), []
        return self.decisions.score_asked(champ.churn, champ.purchase, [(by, v) for v in ids], **opts)

    def _check_batch_ids(self, title: str, lists: Mapping[str, Sequence[str] | None]) -> None:
        """Emails and phones must be ones (the store hashes them after normalising): a 400 naming the
        first that is not, e.g. `phones[3]`, rather than an id silently reported unknown."""
        hasher = self._hasher
        for field, kind in api.BATCH_ID_FIELDS.items():
            if kind not in (EMAIL, PHONE):
                continue
            for i, v in enumerate(lists.get(field) or ()):
                if not hasher.is_hashed(v) and hasher.normalise(kind, v) is None:
                    what = "an email address" if kind == EMAIL else "a phone number"
                    raise api.field_error(title, (field, i), f"not {what}")

    @bentoml.api(route="/scores")
    def scores(self, req: api.ScoresRequest, /) -> api.ScoresResponse:
        """Churn, propensity, holdout and the top action with its channel, send time and guarded message,
        per customer asked, by the retailer's ids or Mirror's (`DecisionEngine.score_asked`). A preview:
        no contact slot is reserved (that is /next_best_action's, when the message is decided)."""
        asked = req.asked()
        if len(asked) > self.settings.max_batch:
            raise api.field_error("ScoresRequest", ("customer_ids",),
                                  f"at most {self.settings.max_batch} customers per call (all lists together)",
                                  len(asked))
        self._check_batch_ids("ScoresRequest", {f: getattr(req, f) for f in api.BATCH_ID_FIELDS})
        champ = self.champions.current
        table, unknown = self.decisions.score_asked(champ.churn, champ.purchase, asked,
                                                    **self._score_options(req.campaign, req.messages))
        records = table.astype(object).where(table.notna(), None).to_dict("records")
        return api.ScoresResponse(scores=[api.CustomerScore(**r) for r in records], unknown=unknown,
                                  churn_model_version=champ.status[CHURN_MODEL].version,
                                  purchase_model_version=champ.status[PURCHASE_MODEL].version)

    # -- segment exports (serving.segments: Mirror's own job runner, nothing of a request on disk) ------
    @bentoml.api(route="/score_segment/submit")
    def score_segment_submit(self, req: api.SegmentExportRequest, /) -> api.SegmentTask:
        """Queues a segment export (every profile, or one list of ids) scored in chunks into a CSV/parquet
        file whose columns are /scores' fields.

        The body is checked now (a 400 naming the field), not when the job runs; 429 when the export
        queue is full (MIRROR_EXPORT_WORKERS running + MIRROR_EXPORT_QUEUE waiting): retry later."""
        listed = req.listed()
        self._check_batch_ids("SegmentExportRequest", {f: getattr(req, f) for f in api.BATCH_ID_FIELDS})
        try:
            job = self.segments.submit(None if listed is None else listed[1], req.format,
                                       by=PROFILE_ID if listed is None else listed[0],
                                       options={"campaign": req.campaign})
        except segments.ExportQueueFull as exc:
            raise BentoMLException(str(exc), error_code=HTTPStatus.TOO_MANY_REQUESTS) from exc
        logger.info("segment export %s queued (%s, %s)", job.task_id, job.format,
                    "every profile" if listed is None else f"{len(listed[1])} by {listed[0]}")
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

    @http_app.put("/preferences")
    def put_preferences(self, req: api.PreferencesRequest) -> api.PreferencesResponse:
        """A preference-centre save (declared interests, preferred channels, time zone, personalization
        level), written as `preference` events through the store's one event path: the events carry only
        the request's identifiers that already belong to the customer, so a save never links profiles."""
        pid = self.store.resolve(req.identifiers())
        if pid is None:
            raise HTTPException(404, detail=[{"loc": ["body", *req.identifiers()], "msg": "unknown customer",
                                              "type": "not_found"}])
        own = {c: v for c, v in req.identifiers().items() if self.store.resolve({c: v}) == pid}
        now = pd.Timestamp.now(tz="UTC")  # one time for the save: it replaces each declaration it names
        records = [{EVENT_ID: "pref-" + hashlib.blake2b(f"{pid}\x1f{now.value}\x1f{k}\x1f{v}".encode(),
                                                         digest_size=12).hexdigest(),
                    TS: now.isoformat(), CHANNEL: req.via, EVENT_TYPE: PREFERENCE, PREFERENCE_KEY: k,
                    PREFERENCE_VALUE: v, **own} for k, v in req.declarations()]
        checked = validate_events(records)
        if len(checked.errors):  # the request model checks the same rules: this is a guard against drift
            raise HTTPException(422, detail=[{"loc": ["body", str(r[ERROR_FIELD])], "msg": str(r[ERROR_REASON]),
                                              "type": "value_error"} for r in checked.error_records()])
        try:
            res = self.store.append_events(checked.valid, validated=True)
        except Exception as exc:
            logger.exception("preference append failed")
            raise ServiceUnavailable("the profile store could not record the preferences; retry") from exc
        profile = self.store.get_profile(pid)
        declared = {} if profile is None else {f: list(profile.declared_values(k)) for f, k in api.PREFERENCE_FIELDS.items()}
        for f in ("timezone", "personalization_level"):
            declared[f] = declared[f][0] if declared.get(f) else None
        logger.info("preferences of %s: %d declarations", hashed_id(pid), len(records))
        return api.PreferencesResponse(profile_id=pid, declared=declared, accepted=[str(e) for e in res.accepted_ids])

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


def with_catalog_categories(records: Sequence[Mapping[str, Any]], catalog: Catalog) -> list[Mapping[str, Any]]:
    """Item events that carry no `category` get the catalog's (a site that posts only the item id still
    builds interests by category); a given category is never overwritten. The caller's records are not
    changed: a filled event is a copy. One dict lookup per item event: the events path is hot."""
    out: list[Mapping[str, Any]] = []
    for rec in records:
        item, given = rec.get(ITEM_ID), rec.get(CATEGORY)
        if (isinstance(item, str) and rec.get(EVENT_TYPE) in ITEM_EVENT_TYPES
                and (given is None or (isinstance(given, str) and not given.strip()))):
            known = catalog.get(normalise_id(item))
            if known is not None and known.category:
                rec = {**rec, CATEGORY: known.category}
        out.append(rec)
    return out


def _nothing_accepted(rejected: Sequence[api.EventRejection], *, single: bool) -> Any:
    """POST /events when every row is rejected: a 422 problem naming each row's field (`events[3].ts`),
    with the rejections as in a 200 answer (`rejected`), so a caller cannot mistake it for success."""
    errors = [{"field": f"event.{r.field}" if single else f"events[{r.row}].{r.field}", "reason": r.reason}
              for r in rejected]
    n = len({r.row for r in rejected})
    return problems.problem_response(
        422, f"no event was accepted: all {n} rejected; " + "; ".join(f"{e['field']}: {e['reason']}"
                                                                        for e in errors[:20]),
        errors, rejected=[r.model_dump() for r in rejected])


def _unknown_task() -> HTTPException:
    return HTTPException(404, detail=[{"loc": ["query", "task_id"], "msg": "unknown or expired task",
                                       "type": "not_found"}])


def _file_chunks(fh: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    """A download, read as it is sent (an export can be large); the file is closed at the end."""
    with fh:
        while chunk := fh.read(size):
            yield chunk


def _scored_item(item_id: str, score: float, item: CatalogItem | None, model: Any = None, **extra: Any
                 ) -> api.ScoredItem:
    """An item of an answer with its catalog metadata (name, brand, category, price, currency, links) when
    the catalog knows it; its category is the model's when the catalog gives none."""
    meta: dict[str, Any] = {} if item is None else {
        "name": item.name, "brand": item.brand, "category": item.category, "price": item.price,
        "currency": item.currency, "url": item.url, "image_url": item.image_url}
    if not meta.get("category") and model is not None:
        meta["category"] = model.item_category(item_id)
    return api.ScoredItem(item_id=item_id, score=float(score), **meta, **extra)


def _window_start(bucket: int, window_s: float) -> str:
    """The decision window a decision belongs to, as its start (ISO 8601, UTC): a caller compares it, or
    shows it, where the bare window number meant nothing."""
    return datetime.fromtimestamp(bucket * window_s, UTC).isoformat()


def _logged_in(pid: str | None, identifiers: Mapping[str, str]) -> bool:
    """A known customer named by more than a device or cookie: the guard's `logged_in`."""
    return pid is not None and any(c not in (DEVICE_ID, COOKIE_ID) for c in identifiers)


def _surface(page: str | None) -> tuple[str, list[InputWarning]]:
    """A /recommend list's surface: its page type (api.PAGE_TYPES); another page is recorded as
    api.OTHER_PAGE (free text is never stored) and warned about."""
    if page is None:
        return api.RECOMMEND_SURFACE, []
    if page in api.PAGE_TYPES:
        return page, []
    return api.OTHER_PAGE, [InputWarning("context.page", f"unknown page type: answered as usual, reported as "
                                                         f"{api.OTHER_PAGE!r} (one of {', '.join(api.PAGE_TYPES)})")]


def _warnings(found: Iterable[InputWarning]) -> list[api.AnswerWarning]:
    return [api.AnswerWarning(field=w.field, reason=w.reason) for w in found]


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


# Outermost first: request id and problem shape for whatever answers below (CORS refusals, 401/413 of
# the gatekeeper, BentoML's and FastAPI's errors, unknown paths), CORS, the docs pages, then the keys.
Mirror.add_asgi_middleware(problems.ProblemMiddleware)
Mirror.add_asgi_middleware(CorsMiddleware)
Mirror.add_asgi_middleware(openapi.DocsMiddleware, spec=openapi.spec_factory(Mirror, http_app))
Mirror.add_asgi_middleware(GatekeeperMiddleware)
