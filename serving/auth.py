"""API keys, scopes and request limits, enforced in one ASGI middleware before any endpoint runs.

Why a middleware: a rejected request (401/403/413) must change nothing, so it is stopped before
BentoML parses the body or an endpoint touches the store; and one table of routes -> scope covers
both the BentoML endpoints and the mounted FastAPI routes.

Scopes are ordered: `admin` implies `write` implies `read`. Keys come from MIRROR_API_KEYS
(`key1=read,write;key2=admin`) or MIRROR_API_KEYS_FILE (YAML/JSON mapping key -> scopes) and are
sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Demo mode: with no keys configured
every request is allowed and the service logs a loud warning at start.

`/metrics` is open unless MIRROR_METRICS_KEY is set: then a scrape needs that key (a Prometheus
`authorization: {credentials: ...}`) or an `admin` key, demo mode or not (setting it asks for it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import yaml

from serving.config import Settings

logger = logging.getLogger("mirror.auth")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Access(IntEnum):
    OPEN = 0
    READ = 1
    WRITE = 2
    ADMIN = 3


SCOPE_NAMES: Mapping[str, Access] = {"read": Access.READ, "write": Access.WRITE, "admin": Access.ADMIN}

#: Endpoints that need a key regardless of MIRROR_REQUIRE_KEY_FOR_READ: (method, path prefix) -> scope.
WRITE_ROUTES: tuple[tuple[str, str, Access], ...] = (
    ("POST", "/events", Access.WRITE),
    ("PUT", "/consent", Access.WRITE),
    ("PUT", "/stock", Access.WRITE),
    ("GET", "/profiles/", Access.ADMIN),
    ("DELETE", "/profiles/", Access.ADMIN),
    ("POST", "/admin/", Access.ADMIN),
)
#: Endpoints that need a `read` key only when MIRROR_REQUIRE_KEY_FOR_READ is set.
READ_ROUTES: tuple[str, ...] = ("/recommend", "/similar_items", "/next_best_action", "/scores", "/score_segment")


def _matches(path: str, route: str) -> bool:
    """`/admin/` is a prefix (anything under it); `/events` is exact (or `/events/...`)."""
    if route.endswith("/"):
        return path.startswith(route) or path == route.rstrip("/")
    return path == route or path.startswith(route + "/")


def required_access(method: str, path: str, require_key_for_read: bool) -> Access:
    """The scope a request needs; probes, metrics and docs stay open."""
    for m, route, access in WRITE_ROUTES:
        if method == m and _matches(path, route):
            return access
    if require_key_for_read and any(_matches(path, p) for p in READ_ROUTES):
        return Access.READ
    return Access.OPEN


#: Prometheus' scrape path (BentoML's route); guarded by MIRROR_METRICS_KEY when it is set.
METRICS_PATH = "/metrics"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _parse_scopes(raw: Any, where: str) -> Access:
    names = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else list(raw)
    if not names:
        raise ValueError(f"{where}: a key needs at least one scope (read, write, admin)")
    unknown = [n for n in names if n not in SCOPE_NAMES]
    if unknown:
        raise ValueError(f"{where}: unknown scope(s) {unknown} (expected read, write, admin)")
    return max(SCOPE_NAMES[n] for n in names)


@dataclass(frozen=True)
class KeyRing:
    """Key digests -> highest scope; raw keys are not kept after loading."""

    grants: Mapping[str, Access]

    @property
    def demo_mode(self) -> bool:
        return not self.grants

    @classmethod
    def parse(cls, spec: str | None = None, file: Path | None = None) -> KeyRing:
        grants: dict[str, Access] = {}
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

    def check(self, key: str | None, needed: Access) -> int:
        """HTTP status for a request: 200 allowed, 401 missing/unknown key, 403 scope too low."""
        if needed == Access.OPEN or self.demo_mode:
            return 200
        if not key:
            return 401
        granted = self.grants.get(_digest(key))
        if granted is None:
            return 401
        return 200 if granted >= needed else 403

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
        return 200 if granted >= Access.ADMIN else 403


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


def _summary(errors: list[Any]) -> str:
    return "; ".join(f"{'.'.join(map(str, e.get('loc') or [])) or 'body'}: {e.get('msg', '')}"
                     for e in errors if isinstance(e, Mapping))


def error_body(message: str, loc: list[str], kind: str) -> dict[str, Any]:
    """The one 4xx shape: `error` and `detail` strings (as BentoML's OpenAPI documents them) and the
    structured `errors` list, each naming the field (`loc`)."""
    errors = [{"loc": loc, "msg": message, "type": kind}]
    return {"error": message, "detail": _summary(errors), "errors": errors}


def normalise_error_body(body: bytes) -> bytes | None:
    """BentoML answers 4xx as `{"error", "detail": [pydantic errors]}` or `[{"error": ...}]`, while its
    OpenAPI documents `{"error": str, "detail": str}`: rewrite to the documented shape, keeping the
    structured list under `errors`. None leaves the body alone (not a BentoML error body)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return None
    detail = data.get("detail")
    if isinstance(detail, list):
        data["errors"] = detail
        data["detail"] = _summary(detail)
    elif detail is not None and not isinstance(detail, str):
        data["detail"] = str(detail)
    return json.dumps(data).encode()


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="mirror"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


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
            msg = "missing or unknown API key" if status == 401 else f"this key lacks the '{needed.name.lower()}' scope"
            await _send_json(send, status, error_body(msg, ["header", "authorization"], "auth"))
            return
        send = _ErrorShaper(send)
        limit = self.settings.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(send, limit)
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
                    await self._too_large(send, limit)
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
    async def _too_large(send: Send, limit: int) -> None:
        msg = f"request body is larger than {limit} bytes (MIRROR_MAX_BODY_BYTES)"
        await _send_json(send, 413, error_body(msg, ["body"], "too_large"))


class _ErrorShaper:
    """Wraps `send`: buffers 4xx JSON answers and rewrites them with `normalise_error_body`."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Message | None = None
        self._chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500 and any(
                k.lower() == b"content-type" and v.startswith(b"application/json") for k, v in message["headers"]):
            self._start = message
            return
        if self._start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self._chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self._chunks)
        body = normalise_error_body(body) or body
        headers = [(k, v) for k, v in self._start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})
        self._start = None


def log_auth_mode(keys: KeyRing) -> None:
    if keys.demo_mode:
        logger.warning(
            "!!! DEMO MODE: no API keys configured (MIRROR_API_KEYS / MIRROR_API_KEYS_FILE); every "
            "endpoint, including writes, erasure and model reload, is open to anyone who can reach it !!!"
        )
    else:
        logger.info("API keys loaded: %d key(s)", len(keys.grants))
