"""Request and response bodies of the HTTP API.

Every request model forbids unknown fields, so a typo ("customerid") is a 400 naming the field,
never a silent drop. Hard limits (k, batch sizes) live in the schema so they show in OpenAPI;
deployments can lower them with MIRROR_MAX_K / MIRROR_MAX_BATCH (checked in the service).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError, ValidationError

from features.schema import CHANNELS, IDENTIFIER_COLUMNS
from serving.config import DEFAULT_MAX_BATCH, DEFAULT_MAX_K
from serving.guard import PURPOSES

Channel = Literal[CHANNELS]  # type: ignore[valid-type]
Purpose = Literal[PURPOSES]  # type: ignore[valid-type]
ExportFormat = Literal["csv", "parquet"]
Id = Field(default=None, min_length=1, max_length=256)
MAX_EXCLUDE = 1000


def _openapi_nullable(schema: dict[str, Any]) -> None:
    """`X | None` as OpenAPI 3.0's `nullable: true`: BentoML flattens `anyOf` to its first member when
    it writes /docs.json, which would document optional answers as never null."""
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if options and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            if len(rest) == 1:
                prop.pop("anyOf")
                prop.update(rest[0])
                prop["nullable"] = True


class _Out(BaseModel):
    model_config = ConfigDict(json_schema_extra=_openapi_nullable)


class _Strict(BaseModel):
    #: strict: `k: "5"`, `k: true` or `granted: "yes"` are errors naming the field, never coerced
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True,
                              json_schema_extra=_openapi_nullable)


class Identifiers(_Strict):
    """Any identifier a channel knows a customer by, named as in the canonical event schema."""

    customer_id: str | None = Id
    email: str | None = Id
    phone: str | None = Id
    loyalty_id: str | None = Id
    device_id: str | None = Id
    cookie_id: str | None = Id

    def identifiers(self) -> dict[str, str]:
        return {c: v for c in IDENTIFIER_COLUMNS if (v := getattr(self, c, None))}


class RequiredIdentifiers(Identifiers):
    @model_validator(mode="after")
    def _at_least_one(self) -> RequiredIdentifiers:
        if not self.identifiers():
            raise PydanticCustomError(
                "missing_identifier", f"at least one of {', '.join(IDENTIFIER_COLUMNS)} is required"
            )
        return self


class RecommendContext(_Strict):
    item_id: str | None = Id
    category: str | None = Id
    page: str | None = Field(default=None, max_length=256)


class RecommendRequest(Identifiers):
    k: int = Field(default=10, ge=1, le=DEFAULT_MAX_K)
    channel: Channel = "web"
    context: RecommendContext = Field(default_factory=RecommendContext)
    exclude: list[str] = Field(default_factory=list, max_length=MAX_EXCLUDE)


class ScoredItem(_Out):
    item_id: str
    score: float
    #: why this item is here, in words the customer may see (guarded; describes this item)
    reason: str | None = None
    #: what the item's place rests on: personal, similar, complement, popular, popular_category
    basis: str | None = None
    # catalog metadata, when the catalog knows the item
    name: str | None = None
    category: str | None = None
    price: float | None = None
    currency: str | None = None
    url: str | None = None
    image_url: str | None = None


class RecommendResponse(_Out):
    profile_id: str | None
    #: whether the ranking used the customer's own (consented) data; false without `personalization`
    personalized: bool
    cold_start: bool
    items: list[ScoredItem]
    model_version: str | None
    fallback: bool


class SimilarItemsRequest(_Strict):
    item_id: str = Field(min_length=1, max_length=256)
    k: int = Field(default=10, ge=1, le=DEFAULT_MAX_K)


class SimilarItemsResponse(_Out):
    item_id: str
    similar: list[ScoredItem]
    complements: list[ScoredItem]


class NBARequest(RequiredIdentifiers):
    channel: Channel = "email"
    campaign: str = Field(default="default", min_length=1, max_length=128)


class ActionOut(_Out):
    action: str
    score: float
    expected_value: float | None = None
    #: the channel asked for (an action not offered there is not in the answer)
    channel: str | None = None
    #: the customer's best channel for this action, when it differs from the one asked for
    recommended_channel: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    #: the guarded message text; for `do_nothing`, why nothing is offered
    reason: str | None = None
    #: the message falls in the customer's quiet hours: send it at this time (ISO-8601, UTC)
    send_at: str | None = None
    #: the same id for a repeated request for the same decision (it used no second contact slot)
    decision_id: str | None = None


class NBAResponse(_Out):
    profile_id: str
    channel: str
    #: false without `personalization`: no action rests on the customer's data
    personalized: bool
    holdout: bool
    actions: list[ActionOut]
    decided_at: str | None = None


class ScoresRequest(_Strict):
    """Profile ids (as returned by /recommend or the batch exports) or customer ids."""

    profile_ids: list[str] = Field(default_factory=list, max_length=DEFAULT_MAX_BATCH)
    customer_ids: list[str] = Field(default_factory=list, max_length=DEFAULT_MAX_BATCH)

    @model_validator(mode="after")
    def _some(self) -> ScoresRequest:
        if not self.profile_ids and not self.customer_ids:
            raise PydanticCustomError("missing_ids", "give profile_ids or customer_ids (up to 10,000)")
        return self


class CustomerScore(_Out):
    id: str
    profile_id: str | None
    churn_probability: float | None
    purchase_propensity: float | None
    top_action: str | None
    #: the customer's best channel for the top action (ask /next_best_action there for its message)
    top_channel: str | None = None


class ScoresResponse(_Out):
    scores: list[CustomerScore]
    unknown: list[str]
    churn_model_version: str | None
    purchase_model_version: str | None


#: Most profile ids one segment export may list (the whole store: leave `profile_ids` out).
MAX_SEGMENT_IDS = 1_000_000
SegmentProfileId = Annotated[str, Field(min_length=1, max_length=256)]


class SegmentExportRequest(_Strict):
    """A whole segment (every profile, or a list of profile ids) scored in the background into a file.

    Checked at submit (a 400 naming the field), not when the job runs: a list that is empty, too long,
    holds an empty or repeated id, or a format other than csv/parquet. Ids the store does not know are
    not an error: the finished job lists them (`unknown`)."""

    profile_ids: list[SegmentProfileId] | None = Field(default=None, min_length=1, max_length=MAX_SEGMENT_IDS)
    format: ExportFormat = "parquet"

    @field_validator("profile_ids")
    @classmethod
    def _no_repeats(cls, ids: list[str] | None) -> list[str] | None:
        if ids is not None and len(set(ids)) != len(ids):
            seen: dict[str, int] = {}
            for i, pid in enumerate(ids):
                if pid in seen:  # positions only: the answer never echoes ids back
                    raise PydanticCustomError(
                        "duplicate", "profile_ids[{i}] repeats profile_ids[{first}]: list each profile once",
                        {"i": i, "first": seen[pid]})
                seen[pid] = i
        return ids


class SegmentTask(_Out):
    """A submitted export: poll `/score_segment/status?task_id=`, then fetch `/score_segment/get`."""

    task_id: str
    status: str


class SegmentTaskStatus(_Out):
    task_id: str
    #: in_progress (queued or running), completed, failed, or deleted (it held a profile since erased)
    status: str
    format: str
    created_at: str
    executed_at: str | None = None
    completed_at: str | None = None
    #: rows written so far (all of them once completed)
    rows: int | None = None
    #: requested profile ids the store does not know (or no longer: erased), once scored
    unknown: list[str] = Field(default_factory=list)
    #: why a job failed or was deleted
    error: str | None = None


class EventsRequest(_Strict):
    """One event (`event`) or a batch (`events`); each event is a canonical-schema record."""

    event: dict[str, Any] | None = None
    events: list[dict[str, Any]] | None = Field(default=None, max_length=DEFAULT_MAX_BATCH)

    @model_validator(mode="after")
    def _one_of(self) -> EventsRequest:
        if (self.event is None) == (self.events is None):
            raise PydanticCustomError("one_of", "give exactly one of 'event' or 'events'")
        return self

    def records(self) -> list[dict[str, Any]]:
        return [self.event] if self.event is not None else list(self.events or [])


class EventRejection(_Out):
    row: int
    event_id: str | None
    field: str
    reason: str


class EventsResponse(_Out):
    accepted: list[str]
    duplicates: list[str]
    rejected: list[EventRejection]
    #: events of erased profiles: valid, but never stored (erasure is permanent)
    suppressed: int = 0
    suppressed_ids: list[str] = Field(default_factory=list)
    profile_ids: list[str]
    sentiment_scored: int = 0


class ConsentRequest(RequiredIdentifiers):
    #: One of the guard's consent purposes (`serving.guard.PURPOSES`); anything else is a 422 naming
    #: `purpose` and listing them, never a flag stored that nothing reads.
    purpose: Purpose
    granted: bool


class StockItem(_Strict):
    item_id: str = Field(min_length=1, max_length=256)
    in_stock: bool


class StockRequest(_Strict):
    """Stock levels from the retailer's inventory feed; unknown items count as in stock."""

    items: list[StockItem] = Field(min_length=1, max_length=DEFAULT_MAX_BATCH)


class ItemsRequest(_Strict):
    """Catalog records (`features.catalog`): each upserts the fields it gives; bad rows are reported."""

    items: list[dict[str, Any]] = Field(min_length=1, max_length=DEFAULT_MAX_BATCH)


class ItemRejection(_Out):
    row: int
    item_id: str | None
    field: str
    reason: str


class ItemsResponse(_Out):
    upserted: int
    rejected: list[ItemRejection]


class ConsentResponse(_Out):
    profile_id: str
    consent: dict[str, bool]


class ReloadResponse(_Out):
    ready: bool
    models: dict[str, dict[str, Any]]


def field_error(title: str, loc: tuple[str | int, ...], message: str, value: Any = None) -> ValidationError:
    """A pydantic ValidationError for a check the schema cannot express (configured limits).

    BentoML answers these with a 400 whose `detail` names the field, like any schema error.
    """
    return ValidationError.from_exception_data(
        title, [{"type": PydanticCustomError("limit", message), "loc": loc, "input": value}]
    )
