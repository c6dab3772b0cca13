"""One error shape for every endpoint: Problem Details (RFC 9457), and a request id on every answer.

Why one ASGI layer rather than per-endpoint handlers: errors come from four places that each had a
shape of their own (BentoML's validated bodies, the mounted FastAPI routes, the gatekeeper, and
Starlette's own 404/405/500 text). `ProblemMiddleware` sits outside all of them and rewrites any
error answer that is not a problem already, so an endpoint added later gets the shape without doing
anything. Endpoints keep raising what they raise today:

- BentoML endpoints: a pydantic `ValidationError` (schema, `api.field_error`) -> 400 with one entry per
  field; any other `BentoMLException` whose message is `"<field>: <reason>"` (`field_message`) names
  that field.
- FastAPI routes: `HTTPException(status, detail=[{"loc": [...], "msg": ..., "type": ...}])` or a plain
  string `detail`; FastAPI's own request validation (422) likewise.

The body: `type` (a `urn:mirror:problem:<kind>` naming the kind of error), `title` (the HTTP phrase),
`status`, `detail` (one readable line), `errors` (`[{field, reason}]`, the field as the caller wrote it:
`events[3].channel`, a query parameter by name) and `request_id` (the answer's `X-Request-ID`),
sent as `application/problem+json`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROBLEM_JSON = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
#: Where the request id travels inside the ASGI scope (child scopes of mounts copy it).
SCOPE_KEY = "mirror.request_id"
#: A caller's request id is echoed when it looks like one (no spaces, control characters or secrets'
#: length); anything else is replaced by a fresh one, so logs and headers never carry arbitrary input.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
#: `"<field>: <reason>"` messages of BentoML exceptions (see `field_message`).
_FIELD_MESSAGE = re.compile(r"^(?P<field>[A-Za-z_][\w.\[\]]*(?:, [A-Za-z_][\w.\[\]]*)*): (?P<reason>.+)$", re.S)
#: Location prefixes of FastAPI/pydantic errors that are not part of the field's name.
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})

#: The kind of error by status, in `type` (`urn:mirror:problem:<kind>`).
KINDS: Mapping[int, str] = {
    400: "invalid-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
    405: "method-not-allowed", 409: "conflict", 410: "gone", 413: "too-large", 415: "unsupported-media-type",
    422: "invalid-request", 429: "too-many-requests", 500: "server-error", 501: "not-implemented",
    503: "unavailable", 504: "timeout",
}
_GENERIC_500 = "an unexpected error happened; the server log has the details (quote the request id)"


class FieldError(BaseModel):
    """One thing wrong with the request: which field (as the caller wrote it) and why."""

    field: str = Field(examples=["events[0].channel"])
    reason: str = Field(examples=["unknown channel (expected one of web, app, ...)"])


class Problem(BaseModel):
    """RFC 9457 Problem Details, as every error answer of Mirror is shaped."""

    type: str = Field(examples=["urn:mirror:problem:invalid-request"],
                      description="the kind of error, `urn:mirror:problem:<kind>`")
    title: str = Field(examples=["Bad Request"], description="the HTTP status phrase")
    status: int = Field(examples=[400])
    detail: str = Field(examples=["k: Input should be less than or equal to 100"],
                        description="one readable line: every field error, or what went wrong")
    errors: list[FieldError] = Field(default_factory=list, description="each field at fault, with why")
    request_id: str | None = Field(default=None, description="the answer's X-Request-ID: quote it in a report")


def field_message(field: str, reason: str) -> str:
    """The message of a BentoML exception that names a field (`NotFound(field_message(...))`): the
    problem then lists `{field, reason}`. One place for the convention, built here and read here."""
    return f"{field}: {reason}"


def field_name(loc: Sequence[Any]) -> str:
    """pydantic/FastAPI `loc` -> the field as the caller wrote it: `("body", "events", 3, "ts")` ->
    `events[3].ts`; `("query", "task_id")` -> `task_id`; the whole body -> `body`."""
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS and len(parts) > 1:
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def problem(status: int, detail: str | None = None, errors: Iterable[Mapping[str, str]] = (),
            request_id: str | None = None) -> dict[str, Any]:
    """The problem body for `status`; `detail` defaults to the field errors joined, else the phrase."""
    errs = [{"field": str(e["field"]), "reason": str(e["reason"])} for e in errors]
    phrase = _phrase(status)
    if not detail:
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errs) or phrase
    return {"type": f"urn:mirror:problem:{KINDS.get(status, 'error')}", "title": phrase, "status": status,
            "detail": detail, "errors": errs, "request_id": request_id}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _pydantic_errors(items: Sequence[Any]) -> list[dict[str, str]]:
    out = []
    for e in items:
        if isinstance(e, Mapping):
            out.append({"field": field_name(e.get("loc") or ()), "reason": str(e.get("msg", ""))})
        else:
            out.append({"field": "body", "reason": str(e)})
    return out


def _from_message(message: str) -> tuple[str, list[dict[str, str]]]:
    m = _FIELD_MESSAGE.match(message.strip())
    if not m:
        return message, []
    return message, [{"field": f, "reason": m.group("reason")} for f in m.group("field").split(", ")]


def from_error_body(status: int, body: bytes, content_type: str, request_id: str | None) -> dict[str, Any]:
    """Any error answer Mirror's layers produce (BentoML, FastAPI, Starlette text) as a problem; a
    problem already (an endpoint's own, with extension members) keeps its body and gets the request id."""
    data: Any = None
    if content_type.startswith(PROBLEM_JSON):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("status"), int):
            if not data.get("request_id"):
                data["request_id"] = request_id
            return data
        data = None
    if content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
    text = body.decode("utf-8", "replace").strip() if data is None else ""
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], Mapping):
        data = data[0]  # BentoML answers some errors as a one-element list
    detail: str | None = None
    errors: list[dict[str, str]] = []
    if isinstance(data, Mapping):
        raw = data.get("detail")
        if isinstance(raw, list):  # pydantic errors: BentoML's 400 and FastAPI's 422/HTTPException lists
            errors = _pydantic_errors(raw)
        elif isinstance(raw, str):
            detail, errors = _from_message(raw)
        elif "error" in data:
            detail, errors = _from_message(str(data["error"]))
    elif text:
        detail, errors = _from_message(text)
    if status >= 500 and status != 501:
        # never echo internals; BentoML's generic text and Starlette's "Internal Server Error" alike
        detail = _GENERIC_500 if status == 500 else detail or _phrase(status)
        errors = []
    return problem(status, detail, errors, request_id)


def request_id_from(scope: Scope) -> str:
    """The caller's `X-Request-ID` when it is a plausible id, else a fresh one (uuid4 hex)."""
    for k, v in scope.get("headers", ()):
        if k.lower() == _REQUEST_ID_KEY:
            value = v.decode("latin-1").strip()
            if _VALID_REQUEST_ID.match(value):
                return value
            break
    return uuid.uuid4().hex


def current_request_id(scope: Scope) -> str | None:
    """The request id `ProblemMiddleware` gave this request (None outside it)."""
    return scope.get(SCOPE_KEY)


def encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


async def send_problem(send: Send, body: Mapping[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer with a problem body (its `status`) and extra headers (e.g. WWW-Authenticate)."""
    payload = encode(body)
    await send({"type": "http.response.start", "status": int(body["status"]), "headers": [
        (b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


def problem_response(status: int, detail: str | None = None, errors: Iterable[Mapping[str, str]] = (),
                     **extensions: Any) -> Any:
    """A problem answer an endpoint returns itself (a starlette Response; BentoML passes it through),
    with extension members (RFC 9457 allows them); `ProblemMiddleware` fills in the request id."""
    from starlette.responses import Response

    return Response(encode({**problem(status, detail, errors), **extensions}), status_code=status,
                    media_type=PROBLEM_JSON)


class ProblemMiddleware:
    """Outermost Mirror layer: gives each request its id (`X-Request-ID` on every answer) and rewrites
    every 4xx/5xx answer into a problem with that id (a problem already only gets the id)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope)
        scope[SCOPE_KEY] = rid
        shaper = _Shaper(send, rid, head=scope.get("method") == "HEAD")
        await self.app(scope, receive, shaper)


class _Shaper:
    """Wraps `send`: adds the request id header; buffers an error answer and sends it as a problem."""

    def __init__(self, send: Send, request_id: str, *, head: bool) -> None:
        self._send = send
        self._rid = request_id
        self._head = head
        self._start: Message | None = None
        self._content_type = ""
        self._chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _REQUEST_ID_KEY]
            headers.append((_REQUEST_ID_KEY, self._rid.encode()))
            message = {**message, "headers": headers}
            ctype = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")
            if message["status"] >= 400 and not self._head:
                self._start, self._content_type = message, ctype
                return
            await self._send(message)
            return
        if self._start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self._chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        status = int(self._start["status"])
        payload = encode(from_error_body(status, b"".join(self._chunks), self._content_type, self._rid))
        headers = [(k, v) for k, v in self._start["headers"] if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode())]
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": payload})
        self._start = None
