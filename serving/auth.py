"""API keys, scopes, CORS and request limits, enforced in ASGI middleware before any endpoint runs.

Why a middleware: a rejected request (401/403/413) must change nothing, so it is stopped before
BentoML parses the body or an endpoint touches the store; and one table of routes -> scopes
(`ROUTES`) covers both the BentoML endpoints and the mounted FastAPI routes, and is what the
OpenAPI document states (serving/openapi.py reads it: one place for the rule).

Scopes (`SCOPES`): `browser` is the key a web page or app may hold: it can fetch recommendations
(/recommend, /similar_items) and post the events it observes (POST /events), nothing else: no scores,
no decisions about a customer, no segment exports, no profile reads, no admin. `read` is for servers
(an email or SMS tool): recommendations, /scores, /next_best_action and segment exports. `write` adds
events, consent, catalog and stock, and implies `read` and `browser`; `admin` implies everything
(profile views, erasure, model reload). Keys come from MIRROR_API_KEYS (`key1=read,write;key2=admin`)
or MIRROR_API_KEYS_FILE (YAML/JSON mapping key -> scopes) and are sent as `Authorization: Bearer <key>`
or `X-API-Key: <key>`.

What a route needs: customer-level reads (/scores, /next_best_action, /score_segment/submit) always
need a `read` key; recommendations and the segment task's status/file (the task id is the
capability) only with MIRROR_REQUIRE_KEY_FOR_READ; a method that changes something and is in no
table needs `write` (so a new endpoint is never open by default); other GETs (probes, docs, /status)
are open. Demo mode: with no keys configured every request is allowed and the service logs a loud
warning at start.

`/metrics` is open unless MIRROR_METRICS_KEY is set: then a scrape needs that key (a Prometheus
`authorization: {credentials: ...}`) or an `admin` key, demo mode or not (setting it asks for it).

CORS (`CorsMiddleware`): origins allowed by MIRROR_CORS_ORIGINS get the CORS headers (preflight 200
with the allowed methods and headers, `X-Request-ID` exposed); any other origin gets none.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from serving import problems
from serving.config import Settings

logger = logging.getLogger("mirror.auth")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BROWSER, READ, WRITE, ADMIN = "browser", "read", "write", "admin"
#: Every scope a key may be given, and the scopes each one implies.
SCOPES: Mapping[str, frozenset[str]] = {
    BROWSER: frozenset({BROWSER}),
    READ: frozenset({READ}),
    WRITE: frozenset({WRITE, READ, BROWSER}),
    ADMIN: frozenset({ADMIN, WRITE, READ, BROWSER}),
}
#: What each scope is for, as README and the OpenAPI document say it.
SCOPE_DESCRIPTIONS: Mapping[str, str] = {
    BROWSER: "safe in a web page or app: /recommend, /similar_items and POST /events only",
    READ: "server-side reads: recommendations, /scores, /next_best_action, segment exports",
    WRITE: "read and browser, plus events, consent, catalog (/items) and stock",
    ADMIN: "everything: profile views and exports, erasure, model reload",
}


@dataclass(frozen=True)
class Need:
    """What a request needs: a key holding any one of `scopes` (none: open)."""

    name: str
    scopes: frozenset[str]

    @property
    def is_open(self) -> bool:
        return not self.scopes

    def describe(self) -> str:
        return " or ".join(f"'{s}'" for s in sorted(self.scopes)) or "none"


class Access:
    """The needs routes have (a namespace: `Access.READ`)."""

    OPEN: ClassVar[Need] = Need("open", frozenset())
    #: Recommendations: a browser key is enough (a read key too).
    FRONT_END: ClassVar[Need] = Need("browser", frozenset({BROWSER, READ}))
    #: Posting observed events: a browser key or a write key.
    EVENTS: ClassVar[Need] = Need("events", frozenset({BROWSER, WRITE}))
    READ: ClassVar[Need] = Need(READ, frozenset({READ}))
    WRITE: ClassVar[Need] = Need(WRITE, frozenset({WRITE}))
    ADMIN: ClassVar[Need] = Need(ADMIN, frozenset({ADMIN}))


#: (method, path, access): always asked for when keys are configured. A path ending in "/" is a prefix.
ROUTES: tuple[tuple[str, str, Need], ...] = (
    ("POST", "/events", Access.EVENTS),
    ("POST", "/scores", Access.READ),
    ("POST", "/next_best_action", Access.READ),
    ("POST", "/score_segment/submit", Access.READ),
    ("PUT", "/consent", Access.WRITE),
    ("PUT", "/preferences", Access.WRITE),
    ("PUT", "/stock", Access.WRITE),
    ("PUT", "/items", Access.WRITE),
    ("GET", "/profiles/", Access.ADMIN),
    ("DELETE", "/profiles/", Access.ADMIN),
    ("POST", "/admin/", Access.ADMIN),
)
#: (method, path, access) asked for only when MIRROR_REQUIRE_KEY_FOR_READ is set; open otherwise.
READ_ROUTES: tuple[tuple[str, str, Need], ...] = (
    ("POST", "/recommend", Access.FRONT_END),
    ("POST", "/similar_items", Access.FRONT_END),
    ("GET", "/score_segment/status", Access.READ),
    ("GET", "/score_segment/get", Access.READ),
)
#: Methods that read: open when in no table. Any other method in no table needs `write`.
SAFE_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"})
#: CORS: what a browser may send from an allowed origin.
CORS_METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "DELETE")
CORS_HEADERS: tuple[str, ...] = ("Authorization", "X-API-Key", "Content-Type", problems.REQUEST_ID_HEADER)
CORS_MAX_AGE_S = 600


def _matches(path: str, route: str) -> bool:
    """`/admin/` is a prefix (anything under it); `/events` is exact (or `/events/...`)."""
    if route.endswith("/"):
        return path.startswith(route) or path == route.rstrip("/")
    return path == route or path.startswith(route + "/")


def required_access(method: str, path: str, require_key_for_read: bool) -> Need:
    """The scope a request needs (see the module's docstring); probes, metrics and docs stay open."""
    for m, route, access in ROUTES:
        if method == m and _matches(path, route):
            return access
    for m, route, access in READ_ROUTES:
        if method == m and _matches(path, route):
            return access if require_key_for_read else Access.OPEN
    return Access.OPEN if method in SAFE_METHODS else Access.WRITE


#: Prometheus' scrape path (BentoML's route); guarded by MIRROR_METRICS_KEY when it is set.
METRICS_PATH = "/metrics"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _parse_scopes(raw: Any, where: str) -> frozenset[str]:
    names = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else [str(s).strip() for s in raw]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{where}: a key needs at least one scope ({', '.join(SCOPES)})")
    unknown = [n for n in names if n not in SCOPES]
    if unknown:
        raise ValueError(f"{where}: unknown scope(s) {unknown} (expected {', '.join(SCOPES)})")
    return frozenset().union(*(SCOPES[n] for n in names))


@dataclass(frozen=True)
class KeyRing:
    """Key digests -> the scopes they hold (implied ones included); raw keys are not kept after loading."""

    grants: Mapping[str, frozenset[str]]

    @property
    def demo_mode(self) -> bool:
        return not self.grants

    @classmethod
    def parse(cls, spec: str | None = None, file: Path | None = None) -> KeyRing:
        grants: dict[str, frozenset[str]] = {}
        for part in (spec or "").split(";"):
            if not part.strip():
                continue
            key, sep, scopes = part.partition("=")
            if not sep or not key.strip():
                raise ValueError("MIRROR_API_KEYS: entries look like key=scope1,scope2 separated by ';'")
            grants[_digest(key.strip())] = _parse_scopes(scopes, "MIRROR_API_KEYS")
        if file is not None:
            text = Path(file).read_text()
            data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
            if not isinstance(data, dict):
                raise ValueError(f"{file}: expected a mapping key -> scopes")
            for key, scopes in data.items():
                grants[_digest(str(key))] = _parse_scopes(scopes, str(file))
        return cls(grants)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls.parse(settings.api_keys, settings.api_keys_file)

    def check(self, key: str | None, needed: Need) -> int:
        """HTTP status for a request: 200 allowed, 401 missing/unknown key, 403 scope too low."""
        if needed.is_open or self.demo_mode:
            return 200
        if not key:
            return 401
        granted = self.grants.get(_digest(key))
        if granted is None:
            return 401
        return 200 if granted & needed.scopes else 403

    def check_metrics(self, key: str | None, metrics_key: str | None) -> int:
        """HTTP status for a scrape of /metrics: open without a metrics key; with one, that key or an
        admin key (never demo mode's anything-goes: an operator who set the key wants it asked for)."""
        if metrics_key is None:
            return 200
        if not key:
            return 401
        if hmac.compare_digest(_digest(key), _digest(metrics_key)):
            return 200
        granted = self.grants.get(_digest(key))
        if granted is None:
            return 401
        return 200 if ADMIN in granted else 403


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def api_key_from(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization")
    if auth and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return _header(scope, b"x-api-key")


async def _refuse(scope: Scope, send: Send, status: int, field: str, reason: str) -> None:
    body = problems.problem(status, None, [{"field": field, "reason": reason}], problems.current_request_id(scope))
    extra = [(b"www-authenticate", b'Bearer realm="mirror"')] if status == 401 else []
    await problems.send_problem(send, body, extra)


class GatekeeperMiddleware:
    """Checks the API key scope and the body size before the request reaches BentoML."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or Settings.from_env()
        self.keys = KeyRing.from_settings(self.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _matches(scope["path"], METRICS_PATH):
            needed = Access.ADMIN
            status = self.keys.check_metrics(api_key_from(scope), self.settings.metrics_key)
        else:
            needed = required_access(scope["method"], scope["path"], self.settings.require_key_for_read)
            status = self.keys.check(api_key_from(scope), needed)
        if status != 200:
            reason = ("missing or unknown API key (send Authorization: Bearer <key> or X-API-Key)" if status == 401
                      else f"this key lacks the scope this endpoint needs ({needed.describe()})")
            await _refuse(scope, send, status, "authorization", reason)
            return
        limit = self.settings.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(scope, send, limit)
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # Chunked upload: buffer up to the limit, then replay, so an oversize body is refused whole.
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    await self._too_large(scope, send, limit)
                    return
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _too_large(scope: Scope, send: Send, limit: int) -> None:
        await _refuse(scope, send, 413, "body", f"request body is larger than {limit} bytes (MIRROR_MAX_BODY_BYTES)")


class CorsMiddleware:
    """CORS for the origins of MIRROR_CORS_ORIGINS (Starlette's implementation): a preflight from one of
    them is answered 200 with the methods and headers Mirror accepts, and its answers carry
    `Access-Control-Allow-Origin` and expose `X-Request-ID`; any other origin gets no CORS header
    (its preflight is a 400 problem). Keys are sent as headers, never cookies: no credentials mode."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        from starlette.middleware.cors import CORSMiddleware

        origins = (settings or Settings.from_env()).cors_origins
        # no origin allowed: nothing to add to any answer, so requests skip the wrapper (a browser's
        # preflight then reaches the routes and gets their 405, as from any server without CORS)
        self.app = CORSMiddleware(app, allow_origins=list(origins), allow_methods=list(CORS_METHODS),
                                  allow_headers=list(CORS_HEADERS), expose_headers=[problems.REQUEST_ID_HEADER],
                                  max_age=CORS_MAX_AGE_S) if origins else app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def log_auth_mode(keys: KeyRing) -> None:
    if keys.demo_mode:
        logger.warning(
            "!!! DEMO MODE: no API keys configured (MIRROR_API_KEYS / MIRROR_API_KEYS_FILE); every "
            "endpoint, including writes, erasure and model reload, is open to anyone who can reach it !!!"
        )
    else:
        logger.info("API keys loaded: %d key(s)", len(keys.grants))
