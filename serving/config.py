"""Service settings, read from environment variables once at service start (never at import).

| variable                     | meaning                                                         | default            |
|------------------------------|-----------------------------------------------------------------|--------------------|
| MIRROR_STORE                 | the online profile store: a SQLite path, `sqlite:///path` or `redis://host:port/db` (`features.store.open_store`) | `mirror-store.db`  |
| MIRROR_STORE_BACKEND         | ProfileStore implementation, `module:Class`, given MIRROR_STORE as its path (kept for compatibility; a URL in MIRROR_STORE needs the default) | `features.store:SQLiteProfileStore` |
| MLFLOW_TRACKING_URI          | MLflow tracking/registry the champions are loaded from          | MLflow's default   |
| MLFLOW_REGISTRY_URI          | model registry, when it differs from the tracking store          | MLFLOW_TRACKING_URI |
| MIRROR_GUARD_CONFIG          | guard policy YAML                                               | `serving/guard.yaml` |
| MIRROR_API_KEYS              | `key=read,write;key2=admin` (scopes per key)                    | none (demo mode)   |
| MIRROR_API_KEYS_FILE         | YAML/JSON file mapping key -> list of scopes                    | none               |
| MIRROR_REQUIRE_KEY_FOR_READ  | `1/true`: recommendation and score endpoints need a `read` key | false              |
| MIRROR_MAX_BODY_BYTES        | largest request body accepted (413 above)                       | 8 MiB              |
| MIRROR_MAX_BATCH             | most customers per /scores call and events per /events call      | 10000              |
| MIRROR_MAX_K                 | largest `k`                                                     | 100                |
| MIRROR_EXPORT_DIR            | where segment exports write their result files                  | `mirror-exports`   |
| MIRROR_EXPORT_RETENTION_S    | seconds a segment export's file is kept, then deleted           | 86400 (1 day)      |
| MIRROR_EXPORT_WORKERS        | segment exports running at once                                 | 2                  |
| MIRROR_EXPORT_QUEUE          | segment exports waiting to run (429 when full)                  | 8                  |
| MIRROR_METRICS_KEY           | when set, `/metrics` needs `Authorization: Bearer <it>` or an admin key | none (open) |
| MIRROR_GC_INTERVAL_S         | seconds between the worker's scheduled full garbage collections | 30                 |
| MIRROR_CORS_ORIGINS          | origins browsers may call from, comma-separated (`https://shop.example`; `*` any) | none (no CORS) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_STORE_BACKEND = "features.store:SQLiteProfileStore"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_BATCH = 10_000
DEFAULT_MAX_K = 100
DEFAULT_GC_INTERVAL_S = 30
DEFAULT_EXPORT_RETENTION_S = 24 * 3600
DEFAULT_EXPORT_WORKERS = 2
DEFAULT_EXPORT_QUEUE = 8
DEFAULT_GUARD_CONFIG = Path(__file__).resolve().parent / "guard.yaml"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _origins(raw: str | None) -> tuple[str, ...]:
    """`https://a.example, https://b.example` -> the origins, each `scheme://host[:port]` or `*`."""
    out = []
    for part in (raw or "").split(","):
        origin = part.strip().rstrip("/")
        if not origin:
            continue
        if origin != "*" and ("://" not in origin or "/" in origin.split("://", 1)[1]):
            raise ValueError(f"MIRROR_CORS_ORIGINS: {origin!r} is not an origin (scheme://host[:port], or *)")
        out.append(origin)
    return tuple(out)


def _store_url(raw: str, backend: str) -> str:
    """MIRROR_STORE, checked at start: a store URL (`features.store.parse_store_url`) only with the default
    backend (a `module:Class` backend takes a path)."""
    from features.store.config import parse_store_url

    if "://" in raw and backend != DEFAULT_STORE_BACKEND:
        raise ValueError(f"MIRROR_STORE: a store URL needs the default MIRROR_STORE_BACKEND, got {backend!r}")
    try:
        parse_store_url(raw)
    except ValueError as exc:
        raise ValueError(f"MIRROR_STORE: {exc}") from None
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment, validated in one place."""

    store_path: Path = Path("mirror-store.db")
    #: MIRROR_STORE as given (a path or a store URL: `redis://...` must not go through Path, which folds "//")
    store_url: str = "mirror-store.db"
    store_backend: str = DEFAULT_STORE_BACKEND
    tracking_uri: str | None = None
    registry_uri: str | None = None
    guard_config: Path = DEFAULT_GUARD_CONFIG
    api_keys: str | None = field(default=None, repr=False)  # secrets stay out of any log of the settings
    api_keys_file: Path | None = None
    require_key_for_read: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch: int = DEFAULT_MAX_BATCH
    max_k: int = DEFAULT_MAX_K
    export_dir: Path = Path("mirror-exports")
    export_retention_s: int = DEFAULT_EXPORT_RETENTION_S
    export_workers: int = DEFAULT_EXPORT_WORKERS
    export_queue: int = DEFAULT_EXPORT_QUEUE
    metrics_key: str | None = field(default=None, repr=False)
    gc_interval_s: int = DEFAULT_GC_INTERVAL_S
    #: origins allowed to call from a browser (CORS); empty: none is, a preflight gets no CORS header
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        keys_file = env.get("MIRROR_API_KEYS_FILE")
        backend = env.get("MIRROR_STORE_BACKEND") or DEFAULT_STORE_BACKEND
        return cls(
            store_path=Path(env.get("MIRROR_STORE", "mirror-store.db")),
            store_url=_store_url(env.get("MIRROR_STORE") or "mirror-store.db", backend),
            store_backend=backend,
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            registry_uri=env.get("MLFLOW_REGISTRY_URI") or env.get("MLFLOW_TRACKING_URI") or None,
            guard_config=Path(env.get("MIRROR_GUARD_CONFIG") or DEFAULT_GUARD_CONFIG),
            api_keys=env.get("MIRROR_API_KEYS") or None,
            api_keys_file=Path(keys_file) if keys_file else None,
            require_key_for_read=_flag(env.get("MIRROR_REQUIRE_KEY_FOR_READ")),
            max_body_bytes=_int(env, "MIRROR_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            max_batch=_int(env, "MIRROR_MAX_BATCH", DEFAULT_MAX_BATCH),
            max_k=_int(env, "MIRROR_MAX_K", DEFAULT_MAX_K),
            export_dir=Path(env.get("MIRROR_EXPORT_DIR", "mirror-exports")),
            export_retention_s=_int(env, "MIRROR_EXPORT_RETENTION_S", DEFAULT_EXPORT_RETENTION_S),
            export_workers=_int(env, "MIRROR_EXPORT_WORKERS", DEFAULT_EXPORT_WORKERS),
            export_queue=_int(env, "MIRROR_EXPORT_QUEUE", DEFAULT_EXPORT_QUEUE),
            metrics_key=(env.get("MIRROR_METRICS_KEY") or "").strip() or None,
            gc_interval_s=_int(env, "MIRROR_GC_INTERVAL_S", DEFAULT_GC_INTERVAL_S),
            cors_origins=_origins(env.get("MIRROR_CORS_ORIGINS")),
        )
