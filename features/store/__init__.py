"""Online profile store: durable event log, identity links, current state per profile, and what serving
keeps beside them (consent, the contact ledger, the catalog, the decision log, served lists).

A package along its seams; `from features.store import X` is the public surface, whatever the backend:

- `model`: the records (`OnlineProfile`, `ProfileEntry`, `AppendResult`, `CatalogUpsert`, `ServedList`) and
  the column names of the decision log and served lists;
- `protocol`: `ProfileStoreCore` and the optional capabilities (`CatalogStore`, `DecisionLog`,
  `ServedListLog`, `SentimentStore`), `ProfileStore` = all of them, `capabilities(store)`;
- `fold`: the state fold (events -> the online state doc -> `OnlineProfile`), pure;
- `codec`: frames <-> time-ordered rows, times, export rows (pure);
- `config`: `StoreConfig` and one validated frozen config per backend, parsed from a URL;
- `sqlite`: `SQLiteProfileStore`, the embedded backend (durability, threads, erasure: see its docstring).

The identity-linking rule lives in `features.identity` (`profile_id_for`, `link_batch`), shared with the
offline resolution. `open_store(url)` picks the backend by URL (`sqlite:///path`, a bare path,
`redis://host:port/db`), for the service, the CLI and the benchmarks alike.
"""

from __future__ import annotations

import os

from features.catalog import CatalogItem
from features.identity import profile_id_for
from features.profiles import NEVER_DAYS
from features.schema import IdentifierHasher
from features.store.config import (
    REDIS_SCHEME,
    SQLITE_SCHEME,
    STORE_SCHEMES,
    BackendConfig,
    RedisConfig,
    SQLiteConfig,
    StoreConfig,
    parse_store_url,
)
from features.store.fold import _STATE_VERSION
from features.store.model import (
    ACTION,
    CAMPAIGN_ID,
    CONFLICT_REASON,
    DECISION_COLUMNS,
    EXPORT_BATCH,
    HOLDOUT,
    INTEREST_EVENT_TYPES,
    ITEM_IDS,
    MODEL,
    MODEL_VERSION,
    MODEL_VERSIONS,
    OPEN_PICKUP_STATES,
    PICKUP_EVENT_TYPES,
    RECOMMENDATION_COLUMNS,
    SURFACE,
    AppendResult,
    CatalogUpsert,
    ItemEntry,
    OnlineProfile,
    ProfileEntry,
    ServedList,
    ViewEntry,
)
from features.store.protocol import (
    CAPABILITIES,
    CatalogStore,
    DecisionLog,
    ProfileStore,
    ProfileStoreCore,
    SentimentStore,
    ServedListLog,
    capabilities,
    missing_capabilities,
)
from features.store.sqlite import _FILE_VERSION, SQLiteProfileStore

_DEFAULT_CONFIG = StoreConfig()


def open_store(url: str | os.PathLike[str], hasher: IdentifierHasher | None = None,
               config: StoreConfig = _DEFAULT_CONFIG, *, cache: bool = True) -> ProfileStoreCore:
    """The store a URL names (see `parse_store_url`): `sqlite:///path` or a bare path -> SQLiteProfileStore,
    `redis://host:port/db` -> the Redis backend (needs the `redis` extra). ValueError for a bad URL."""
    backend = parse_store_url(url)
    if isinstance(backend, SQLiteConfig):
        return SQLiteProfileStore(backend.path, hasher, config, cache=cache)
    try:
        from features.store.redis import RedisProfileStore  # type: ignore[import-not-found]
    except ModuleNotFoundError as err:
        if err.name != "features.store.redis":  # the backend is there, its client library is not
            raise RuntimeError(f"store url {backend.url}: the Redis backend needs the `redis` client "
                               "(pip install 'mirror-personalization[redis]')") from err
        raise RuntimeError(f"store url {backend.url}: no Redis backend in this release yet (issue 18); "
                           "use sqlite:///path") from None
    return RedisProfileStore(backend, hasher, config, cache=cache)


__all__ = ["ACTION", "CAMPAIGN_ID", "CAPABILITIES", "CONFLICT_REASON", "DECISION_COLUMNS", "EXPORT_BATCH", "HOLDOUT",
           "INTEREST_EVENT_TYPES", "ITEM_IDS", "MODEL", "MODEL_VERSION", "MODEL_VERSIONS", "NEVER_DAYS",
           "OPEN_PICKUP_STATES", "PICKUP_EVENT_TYPES", "RECOMMENDATION_COLUMNS", "REDIS_SCHEME", "SQLITE_SCHEME",
           "STORE_SCHEMES", "SURFACE", "AppendResult", "BackendConfig", "CatalogItem", "CatalogStore",
           "CatalogUpsert", "DecisionLog", "ItemEntry", "OnlineProfile", "ProfileEntry", "ProfileStore",
           "ProfileStoreCore", "RedisConfig", "SQLiteConfig", "SQLiteProfileStore", "SentimentStore", "ServedList",
           "ServedListLog", "StoreConfig", "ViewEntry", "_FILE_VERSION", "_STATE_VERSION", "capabilities",
           "missing_capabilities", "open_store", "parse_store_url", "profile_id_for"]
