"""Mirror's OpenAPI document and its pages: `/docs.json`, Swagger UI at `/docs`, a short page at `/`.

Why our own document rather than BentoML's: BentoML 1.4 writes version `None` (a generated client will
not install), machine-made operation ids (`mirror__recommend`, `put_consent_consent_put`), one tag for
everything, no security, its own error bodies, and a boilerplate page at `/` that loads a third-party
tag manager. The document is built from the same sources the service runs on, so it cannot drift:

- request/response bodies: the pydantic models the endpoints are annotated with (BentoML APIs) and the
  mounted FastAPI app's own document;
- security and tags: `serving.auth.required_access`, the one table of what each route needs;
- errors: `serving.problems.Problem` (what `ProblemMiddleware` answers);
- the canonical event: `features.schema` (columns, CHANNELS, EVENT_TYPES, limits).

Every operation gets a readable `operationId` (the endpoint function's name, a few renamed in
`OPERATION_IDS`), a tag for who uses it (from the key scope it needs, unless the endpoint names its own
tags), its security, and the problem answers that apply. OpenAPI 3.0.3, because the Swagger UI that
`swagger-ui-bundle` ships (4.x) does not render 3.1; JSON Schema constructs 3.0 lacks are rewritten.
"""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from features import schema as es
from serving import auth, problems

PACKAGE = "mirror-personalization"
OPENAPI_VERSION = "3.0.3"
REF = "#/components/schemas/{model}"
#: The canonical event's component (`serving.api.EventRecord` names it with SCHEMA_MARKER).
EVENT_SCHEMA = "CanonicalEvent"
#: A model's JSON schema naming one of our components: `{"x-mirror-schema": name}` becomes its $ref.
SCHEMA_MARKER = "x-mirror-schema"
PROBLEM_SCHEMA = "Problem"

#: Ids of the demo data (`make demo`: features.synthetic) the examples use: the synthetic generator's
#: first customer and item, whatever the seed (tests/serving/test_api_surface.py checks they exist).
DEMO_CUSTOMER = "C0000000011"
DEMO_ITEM = "i000001"

DESCRIPTION = """\
Mirror is an open-source personalization service for retailers: one profile per customer across web,
app, store, email, SMS, social, chat and call centre; recommendations and next best actions from models
trained on that history; and a guard that keeps every answer from being creepy (consent, sensitive
categories, quiet hours, contact caps).

**Errors** are Problem Details (RFC 9457, `application/problem+json`): `type`, `title`, `status`,
`detail`, `errors` (`[{{field, reason}}]`) and `request_id`. Every answer carries `X-Request-ID` (yours,
echoed, when you send a plausible one: up to 128 of `A-Z a-z 0-9 . _ : -`).

**Keys** are sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Scopes:
{scopes}

Customer-level reads (`/scores`, `/next_best_action`, segment exports) always need `read`;
recommendations need a `browser` or `read` key only when `MIRROR_REQUIRE_KEY_FOR_READ` is set. Without
configured keys (demo mode) everything is open.

**Browsers** may call from the origins in `MIRROR_CORS_ORIGINS`; give a web page a `browser` key only.
"""

#: Tags, in the order Swagger UI shows them: who uses the endpoints.
FRONT_ENDS, EMAIL_SMS, DATA_ADMIN, OPERATIONS = "Front ends", "Email and SMS tools", "Data and admin", "Operations"
TAGS: tuple[dict[str, str], ...] = (
    {"name": FRONT_ENDS, "description": "Web pages and apps: recommendations and the events they observe "
                                        "(a `browser` key is enough)."},
    {"name": EMAIL_SMS, "description": "Email, SMS and campaign tools: scores, next best actions, segment "
                                       "exports (a `read` key, server-side only)."},
    {"name": DATA_ADMIN, "description": "Data pipelines and administrators: events, consent, catalog, stock, "
                                        "profiles, erasure, model reload."},
    {"name": OPERATIONS, "description": "Probes, metrics and model status for operators."},
)
#: Operation ids that read better than the function's name.
OPERATION_IDS: Mapping[str, str] = {"events": "post_events", "status": "get_status"}
#: Answers only some endpoints give, by operation id (status -> why).
EXTRA_ANSWERS: Mapping[str, Mapping[int, str]] = {
    "post_events": {422: "no event was accepted: every row is rejected (each listed in `errors` and `rejected`)"},
    "score_segment_submit": {429: "the export queue is full (MIRROR_EXPORT_WORKERS running, "
                                  "MIRROR_EXPORT_QUEUE waiting): retry later"},
    "score_segment_get": {409: "the export is still running", 410: "the export was deleted (it held an erased "
                                                                    "person) or has expired"},
    "export_profile": {501: "this profile store cannot export a profile"},
}
#: A product view of the demo's first customer, as a web page posts it.
EXAMPLE_EVENT: Mapping[str, Any] = {es.EVENT_ID: "web-000123", es.TS: "2025-06-01T12:00:00+00:00", es.CHANNEL: "web",
                                    es.EVENT_TYPE: "view", es.CUSTOMER_ID: DEMO_CUSTOMER, es.ITEM_ID: DEMO_ITEM}
#: Request examples by operation id: they work against the demo data (`make demo`), and
#: tests/serving/test_api_surface.py validates each against its request model.
EXAMPLES: Mapping[str, dict[str, Any]] = {
    "recommend": {"customer_id": DEMO_CUSTOMER, "k": 5, "channel": "web", "context": {"page": "home"}},
    "similar_items": {"item_id": DEMO_ITEM, "k": 5},
    "next_best_action": {"customer_id": DEMO_CUSTOMER, "channel": "email"},
    "scores": {"customer_ids": [DEMO_CUSTOMER]},
    "score_segment_submit": {"format": "csv"},
    "post_events": {"event": EXAMPLE_EVENT},
    "put_consent": {"customer_id": DEMO_CUSTOMER, "purpose": "email_marketing", "granted": True},
    "put_stock": {"items": [{"item_id": DEMO_ITEM, "in_stock": True}]},
    "put_items": {"items": [{"item_id": "demo-item-1", "name": "Demo item", "category": "demo", "price": 9.99,
                             "currency": "USD"}]},
}
_PROBE_PATHS = {"/livez": "livez", "/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics"}


def package_version() -> str:
    """The installed package's version (what a generated client is versioned with)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # a source tree never installed
        return "0.0.0+unknown"


# ---------------------------------------------------------------------------------------------
# The canonical event, from features.schema
# ---------------------------------------------------------------------------------------------
def canonical_event_schema() -> dict[str, Any]:
    """The canonical event record as a JSON schema (OpenAPI 3.0): columns, enums and limits of
    `features.schema`, so the document follows the schema module, never a copy of it."""
    numeric: dict[str, dict[str, Any]] = {
        es.QUANTITY: {"type": "number", "exclusiveMinimum": True, "minimum": 0},
        es.PRICE: {"type": "number", "minimum": 0},
        es.RATING: {"type": "number", "minimum": es.RATING_MIN, "maximum": es.RATING_MAX},
        es.POSITION: {"type": "integer", "minimum": 0, "description": "0-based position in the served list"},
        es.DURATION_S: {"type": "number", "minimum": 0},
    }
    enums = {es.CHANNEL: es.CHANNELS, es.EVENT_TYPE: es.EVENT_TYPES, es.RETURN_REASON: es.RETURN_REASONS,
             es.PREFERENCE_KEY: es.PREFERENCE_KEYS}
    props: dict[str, dict[str, Any]] = {}
    for col in (*es.CANONICAL_COLUMNS, *es.OPTIONAL_COLUMNS):
        if col in numeric or col in es.NUMERIC_COLUMNS:
            prop = dict(numeric.get(col, {"type": "number"}))
        elif col == es.TS:
            prop = {"type": "string", "format": "date-time",
                    "description": "when it happened (ISO 8601 with a zone offset)"}
        elif col in enums:
            prop = {"type": "string", "enum": list(enums[col])}
        else:
            prop = {"type": "string", "minLength": 1}
            if col in es.MAX_LENGTHS:
                prop["maxLength"] = es.MAX_LENGTHS[col]
        if col not in es.REQUIRED_COLUMNS:
            prop["nullable"] = True
        props[col] = prop
    props[es.EMAIL]["description"] = "raw address: normalised and hashed (keyed HMAC) on the way in"
    props[es.PHONE]["description"] = "raw number: normalised and hashed (keyed HMAC) on the way in"
    return {
        "type": "object", "title": EVENT_SCHEMA, "properties": props, "required": list(es.REQUIRED_COLUMNS),
        "additionalProperties": False,
        "description": "One event of any channel in the canonical schema (features/schema.py). Invalid rows "
                       "are rejected one by one (row, field, reason); the valid ones of a batch are kept. "
                       f"Item events ({', '.join(sorted(es.ITEM_EVENT_TYPES))}) need `item_id`.",
        "example": dict(EXAMPLE_EVENT),
    }


# ---------------------------------------------------------------------------------------------
# JSON Schema (pydantic, FastAPI: 2020-12) -> OpenAPI 3.0
# ---------------------------------------------------------------------------------------------
def to_openapi30(node: Any) -> Any:
    """Rewrite what OpenAPI 3.0 lacks: `anyOf [X, null]` -> X + `nullable`, `const` -> one-value `enum`,
    `examples` -> `example`, `x-mirror-schema` markers -> `$ref`, numeric `exclusiveMinimum/Maximum` -> the 3.0 boolean form."""
    if isinstance(node, list):
        return [to_openapi30(v) for v in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get(SCHEMA_MARKER), str):  # a model field documented by a component of ours
        node = {"$ref": REF.format(model=node[SCHEMA_MARKER])}
    out = {k: to_openapi30(v) for k, v in node.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            out.pop(key)
            if len(rest) == 1:
                only = rest[0]
                if "$ref" in only:  # siblings of $ref are ignored in 3.0: wrap it
                    out["allOf"] = [only]
                else:
                    out.update({k: v for k, v in only.items() if k not in out})
            elif rest:
                out[key] = rest
            out["nullable"] = True
    if out.get("type") == "null":
        out.pop("type")
        out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if "examples" in out and isinstance(out["examples"], list):
        examples = out.pop("examples")
        if examples and "example" not in out:
            out["example"] = examples[0]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(exclusive)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[bound], out[exclusive] = value, True
    return out


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------
def _sample_path(template: str) -> str:
    """`/profiles/{profile_id}` -> `/profiles/x`: what the access table is matched with."""
    return "/".join("x" if p.startswith("{") else p for p in template.split("/"))


def _needs(method: str, path: str) -> tuple[auth.Need, auth.Need]:
    """(always, with MIRROR_REQUIRE_KEY_FOR_READ): the key scopes the route needs."""
    sample = _sample_path(path)
    return auth.required_access(method, sample, False), auth.required_access(method, sample, True)


def _tags_for(method: str, path: str) -> list[str]:
    """Who uses an endpoint, from the key it needs: a browser key -> front ends (events also data
    pipelines); read -> email and SMS tools; write/admin -> data and admin; open -> operations."""
    _, need = _needs(method, path)
    if need is auth.Access.EVENTS:
        return [FRONT_ENDS, DATA_ADMIN]
    if auth.BROWSER in need.scopes:
        return [FRONT_ENDS]
    if need is auth.Access.READ:
        return [EMAIL_SMS]
    if need.is_open:
        return [OPERATIONS]
    return [DATA_ADMIN]


def _security(op: dict[str, Any], method: str, path: str) -> bool:
    """Set the operation's security from the access table; True when it may need a key."""
    always, flagged = _needs(method, path)
    if flagged.is_open:
        op["security"] = []
        return False
    schemes = [{"bearerAuth": []}, {"apiKeyHeader": []}]
    scopes = ", ".join(f"`{s}`" for s in sorted(flagged.scopes))
    if always.is_open:
        op["security"] = [{}, *schemes]
        note = f"Key: one with {scopes} when `MIRROR_REQUIRE_KEY_FOR_READ` is set; open otherwise."
    else:
        op["security"] = schemes
        note = f"Key: one with {scopes}."
    op["x-mirror-scopes"] = sorted(flagged.scopes)
    op["description"] = (op.get("description", "").rstrip() + "\n\n" + note).strip()
    return True


def _problem_answer(description: str) -> dict[str, Any]:
    return {"description": description, "headers": {problems.REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
            "content": {problems.PROBLEM_JSON: {"schema": {"$ref": REF.format(model=PROBLEM_SCHEMA)}}}}


def _answers(op: dict[str, Any], *, keyed: bool, body_status: int | None, looks_up: bool) -> None:
    """Declare the problem answers an operation can give (FastAPI's 422 schema replaced)."""
    responses = {s: r for s, r in op.get("responses", {}).items() if str(s).startswith("2")}
    for r in responses.values():
        r.setdefault("headers", {})[problems.REQUEST_ID_HEADER] = {"$ref": "#/components/headers/RequestId"}
    wanted: dict[int, str] = {}
    if body_status is not None:
        wanted[body_status] = ("the request does not match the schema or breaks a limit "
                               "(MIRROR_MAX_K, MIRROR_MAX_BATCH): each field is named in `errors`")
    if keyed:
        wanted[401] = "missing or unknown API key"
        wanted[403] = "the key lacks the scope this endpoint needs"
    if looks_up:
        wanted[404] = "unknown customer, item, task or profile (the field is named)"
    if "requestBody" in op:
        wanted[413] = "the body is larger than MIRROR_MAX_BODY_BYTES"
    wanted.update(EXTRA_ANSWERS.get(op["operationId"], {}))
    wanted[500] = "unexpected error (quote the request id)"
    wanted[503] = "overloaded, or the store is unavailable: retry"
    for status, why in sorted(wanted.items()):
        responses[str(status)] = _problem_answer(why)
    op["responses"] = responses


def _decorate(method: str, path: str, op: dict[str, Any], name: str, *, bentoml_api: bool) -> None:
    """The rules every operation gets (so an endpoint added later is documented without a list)."""
    op["operationId"] = OPERATION_IDS.get(name, name)
    if not op.get("tags"):
        op["tags"] = _tags_for(method, path)
    doc = (op.get("description") or "").strip()
    if doc and not op.get("summary"):
        op["summary"] = doc.split("\n", 1)[0].rstrip(".")
    if op["operationId"] in EXAMPLES and "requestBody" in op:
        for media in op["requestBody"].get("content", {}).values():
            media["example"] = EXAMPLES[op["operationId"]]
    keyed = _security(op, method, path)
    has_input = "requestBody" in op or bool(op.get("parameters"))
    body_status = (400 if bentoml_api else 422) if has_input else None
    _answers(op, keyed=keyed, body_status=body_status, looks_up=has_input and OPERATIONS not in op["tags"])


def _bentoml_operations(service: Any) -> tuple[dict[str, dict[str, Any]], list[tuple[type[BaseModel], str]],
                                               list[tuple[str, type[BaseModel], str]]]:
    """POST operations of the BentoML APIs, from their annotated request/response models."""
    paths: dict[str, dict[str, Any]] = {}
    models: list[tuple[type[BaseModel], str]] = []
    refs: list[tuple[str, type[BaseModel], str]] = []  # (route, model, "request"/"response")
    for api in service.apis.values():
        hints = get_type_hints(api.func)
        params = [p for p in inspect.signature(api.func).parameters if p != "self" and p in hints]
        op: dict[str, Any] = {"description": inspect.cleandoc(api.doc or ""), "responses": {}}
        if params and isinstance(hints[params[0]], type) and issubclass(hints[params[0]], BaseModel):
            models.append((hints[params[0]], "validation"))
            refs.append((api.route, hints[params[0]], "request"))
        out = hints.get("return")
        if isinstance(out, type) and issubclass(out, BaseModel):
            models.append((out, "serialization"))
            refs.append((api.route, out, "response"))
        else:
            op["responses"]["200"] = {"description": "OK", "content": {"application/json": {"schema": {}}}}
        paths[api.route] = {"post": op}
        op["x-mirror-name"] = api.name
    return paths, models, refs


def _probe_paths() -> dict[str, dict[str, Any]]:
    out = {}
    for path, name in _PROBE_PATHS.items():
        what = {"livez": "alive", "healthz": "alive", "readyz": "ready: models and store loaded (503 until then)",
                "metrics": "Prometheus metrics (MIRROR_METRICS_KEY, when set, or an admin key)"}[name]
        media = "text/plain"
        out[path] = {"get": {"operationId": name, "summary": what, "tags": [OPERATIONS],
                             "responses": {"200": {"description": what,
                                                   "content": {media: {"schema": {"type": "string"}}}}}}}
    return out


def build_spec(service: Any, http_app: Any) -> dict[str, Any]:
    """The whole OpenAPI document of `service` (a BentoML service class) and its mounted FastAPI app."""
    from fastapi.openapi.utils import get_openapi

    fast = get_openapi(title="mounted", version="0", routes=http_app.routes, openapi_version=OPENAPI_VERSION,
                       separate_input_output_schemas=False)
    bento_paths, models, refs = _bentoml_operations(service)
    key_map, defs = models_json_schema([(m, mode) for m, mode in models], ref_template=REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = dict(fast.get("components", {}).get("schemas", {}))
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(defs.get("$defs", {}))
    schemas[EVENT_SCHEMA] = canonical_event_schema()
    _, problem_defs = models_json_schema([(problems.Problem, "serialization")], ref_template=REF)
    schemas.update(problem_defs.get("$defs", {}))
    for route, model, kind in refs:
        mode = "validation" if kind == "request" else "serialization"
        ref = key_map[(model, mode)]  # type: ignore[index]
        op = bento_paths[route]["post"]
        if kind == "request":
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        else:
            op["responses"]["200"] = {"description": "OK", "content": {"application/json": {"schema": ref}}}

    paths: dict[str, dict[str, Any]] = {}
    for path, item in fast.get("paths", {}).items():
        for method, op in item.items():
            _decorate(method.upper(), path, op, _fastapi_name(op, method, path), bentoml_api=False)
        paths[path] = item
    for path, item in bento_paths.items():
        op = item["post"]
        _decorate("POST", path, op, op.pop("x-mirror-name"), bentoml_api=True)
        paths.setdefault(path, {}).update(item)
    paths.update(_probe_paths())
    scopes = "\n".join(f"- `{name}`: {why}" for name, why in auth.SCOPE_DESCRIPTIONS.items())
    spec = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Mirror", "version": package_version(), "description": DESCRIPTION.format(scopes=scopes),
                 "license": {"name": "Apache-2.0"}},
        "servers": [{"url": "/"}],
        "tags": list(TAGS),
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "`Authorization: Bearer <key>`. Scopes: " + ", ".join(auth.SCOPES)},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": "the same key in `X-API-Key`"},
            },
            "headers": {"RequestId": {"description": "the request's id: the caller's when valid, else a new one",
                                      "schema": {"type": "string"}}},
        },
    }
    return to_openapi30(spec)


def _fastapi_name(op: dict[str, Any], method: str, path: str) -> str:
    """The endpoint function's name: the mounted app's operation ids are its routes' names
    (`generate_unique_id_function` in serving/service.py)."""
    return str(op.get("operationId") or f"{method}_{path.strip('/').replace('/', '_')}")


# ---------------------------------------------------------------------------------------------
# Pages: /, /docs (Swagger UI from local files), /docs.json
# ---------------------------------------------------------------------------------------------
DOCS_PATH, SPEC_PATH, ASSETS = "/docs", "/docs.json", "/docs/assets/"
#: Paths the docs layer answers (route labels of the request metrics).
DOCS_ROUTES: tuple[str, ...] = ("/", DOCS_PATH, SPEC_PATH, ASSETS + "{name}")
#: Files of swagger-ui-bundle that /docs loads; nothing else of the package is served.
_SWAGGER_FILES = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript",
                  "favicon-32x32.png": "image/png"}
#: Scripts, styles, images and the document only from this origin (Swagger UI sets inline styles).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mirror</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>Mirror <small style="color:#666">{version}</small></h1>
<p>Open-source personalization for retailers: unified customer profiles, recommendations, next best
actions and a guard that keeps them from being creepy.</p>
<ul>
<li><a href="docs">API documentation</a> (Swagger UI)</li>
<li><a href="docs.json">OpenAPI document</a> (for client generators)</li>
<li><a href="readyz">Readiness</a> and <a href="status">model status</a></li>
</ul>
</body></html>
"""

_SWAGGER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mirror API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png"></head>
<body><div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/mirror-docs.js"></script>
</body></html>
"""

#: No validator badge (it would call validator.swagger.io), the document from this origin.
_INIT_JS = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({url: "docs.json", dom_id: "#swagger-ui", validatorUrl: null,
    deepLinking: true, displayOperationId: true, tryItOutEnabled: false});
});
"""


def _swagger_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


class DocsMiddleware:
    """Answers GET/HEAD of `/`, `/docs`, `/docs.json` and Swagger UI's files before BentoML's routes.

    `spec` builds the document (once, on first use: start-up stays fast); the pages load no
    third-party script, style or font, and say so to the browser (Content-Security-Policy)."""

    def __init__(self, app: Callable[..., Any], spec: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self._build = spec
        self._spec: bytes | None = None
        self._lock = threading.Lock()

    def spec_bytes(self) -> bytes:
        if self._spec is None:
            with self._lock:
                if self._spec is None:
                    self._spec = json.dumps(self._build()).encode()
        return self._spec

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/":
            await _answer(scope, send, _INDEX.format(version=package_version()).encode(), "text/html; charset=utf-8")
        elif path == DOCS_PATH:
            await _answer(scope, send, _SWAGGER.encode(), "text/html; charset=utf-8")
        elif path == DOCS_PATH + "/":  # relative links resolve from /docs only
            await send({"type": "http.response.start", "status": 308, "headers": [
                (b"location", b"../docs"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
        elif path == SPEC_PATH:
            await _answer(scope, send, self.spec_bytes(), "application/json")
        elif path == ASSETS + "mirror-docs.js":
            await _answer(scope, send, _INIT_JS.encode(), "text/javascript", cache=True)
        elif path.startswith(ASSETS) and (name := path[len(ASSETS):]) in _SWAGGER_FILES:
            await _answer(scope, send, (_swagger_dir() / name).read_bytes(), _SWAGGER_FILES[name], cache=True)
        else:
            await self.app(scope, receive, send)


async def _answer(scope: Any, send: Any, body: bytes, media_type: str, *, cache: bool = False) -> None:
    headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode()),
               (b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
               (b"cache-control", b"public, max-age=3600" if cache else b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def spec_factory(service: Any, http_app: Any) -> Callable[[], dict[str, Any]]:
    """What `DocsMiddleware(spec=...)` calls; a copy each time, so a caller may change its own."""
    return lambda: copy.deepcopy(build_spec(service, http_app))
