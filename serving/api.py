"""Request and response bodies of the HTTP API.

Every request model forbids unknown fields, so a typo ("customerid") is a 400 naming the field,
never a silent drop. Hard limits (k, batch sizes) live in the schema so they show in OpenAPI;
deployments can lower them with MIRROR_MAX_K / MIRROR_MAX_BATCH (checked in the service).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, ValidationError

from features.schema import (
    CHANNELS,
    CUSTOMER_ID,
    DECLARED_TIMEZONE,
    EMAIL,
    IDENTIFIER_COLUMNS,
    INTEREST,
    MAX_CATEGORY_LENGTH,
    MAX_OTHER_LENGTH,
    NO_PREFERENCE,
    PERSONALIZATION_LEVEL,
    PERSONALIZATION_LEVELS,
    PHONE,
    PREFERENCE_VALUE,
    PREFERRED_CHANNEL,
    PROFILE_ID,
    preference_value_problem,
    value_problems,
)
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
            if len(rest) == 1 and "$ref" not in rest[0]:  # a $ref's siblings are ignored: serving.openapi wraps it
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


#: Page types a list may be asked for (`context.page`): the surfaces `mirror report attribution` reports
#: on. Another value is answered as usual, recorded as OTHER_PAGE and warned about (free text is never
#: stored: a page name could carry a URL with an email in it).
PAGE_TYPES: tuple[str, ...] = ("home", "product", "category", "search", "cart", "checkout", "confirmation",
                               "account", "wishlist", "landing", "email", "other")
OTHER_PAGE = "other"
#: The surface of a /recommend list that names no page.
RECOMMEND_SURFACE = "recommend"


class RecommendContext(_Strict):
    """The page the list is for. An unknown field is a 400; a value the service cannot use (an item or
    category it does not know, a page type not in PAGE_TYPES) is answered with a warning naming it."""

    item_id: str | None = Id
    category: str | None = Id
    page: str | None = Field(default=None, max_length=256, description=f"one of {', '.join(PAGE_TYPES)}")


class RecommendRequest(Identifiers):
    k: int = Field(default=10, ge=1, le=DEFAULT_MAX_K)
    channel: Channel = "web"
    context: RecommendContext = Field(default_factory=RecommendContext)
    exclude: list[str] = Field(default_factory=list, max_length=MAX_EXCLUDE)


class AnswerWarning(_Out):
    """A value of the request the answer could not use (it was ignored): `field` names it as sent
    (`customer_id`, `context.category`, `exclude[3]`), `reason` says why and what happened instead."""

    field: str
    reason: str


class ScoredItem(_Out):
    item_id: str
    score: float
    #: 0-based place in its list: echo it as the event's `position`, with the list's `recommendation_id`
    position: int = Field(ge=0)
    #: why this item is here, in words the customer may see (guarded; describes this item)
    reason: str | None = None
    #: what the item's place rests on: personal, similar, complement, popular, popular_category
    basis: str | None = None
    # catalog metadata, when the catalog knows the item (category: else the model's)
    name: str | None = None
    brand: str | None = None
    category: str | None = None
    price: float | None = None
    currency: str | None = None
    url: str | None = None
    image_url: str | None = None


class RecommendResponse(_Out):
    #: opaque id of this list (random, nothing personal in it): send it back on the events it leads to
    #: (`recommendation_id`, with the item's `position`) so clicks and purchases are attributed to it
    recommendation_id: str
    profile_id: str | None
    #: whether the identifiers sent named a customer Mirror knows (false: anonymous, or unknown ids)
    identified: bool
    #: whether the ranking used the customer's own (consented) data; false without `personalization`
    personalized: bool
    cold_start: bool
    items: list[ScoredItem]
    model_version: str | None
    fallback: bool
    #: what the request held that the answer could not use
    warnings: list[AnswerWarning] = Field(default_factory=list)


class SimilarItemsRequest(Identifiers):
    """A product page. The customer's identifiers are optional: with them, the same consent and guard
    rules as /recommend apply (their recent purchases and returns are left out, with `personalization`)."""

    item_id: str = Field(min_length=1, max_length=256)
    k: int = Field(default=10, ge=1, le=DEFAULT_MAX_K)
    channel: Channel = "web"
    exclude: list[str] = Field(default_factory=list, max_length=MAX_EXCLUDE)


class SimilarItemsResponse(_Out):
    item_id: str
    #: look-alikes; for an item the model does not know yet, popular items of its catalog category
    #: (then of the category above, then the shop's): each item's `basis` says which
    similar: list[ScoredItem]
    complements: list[ScoredItem]
    #: ids of the two lists (see RecommendResponse.recommendation_id)
    similar_recommendation_id: str
    complements_recommendation_id: str
    profile_id: str | None = None
    identified: bool = False
    model_version: str | None = None
    warnings: list[AnswerWarning] = Field(default_factory=list)


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
    #: the wording's tone (apologetic, neutral, warm): from recent sentiment on any channel, one per decision
    tone: str | None = None


class NBAResponse(_Out):
    profile_id: str
    channel: str
    #: false without `personalization`: no action rests on the customer's data
    personalized: bool
    holdout: bool
    actions: list[ActionOut]
    #: start of the decision window (ISO 8601, UTC): asking again within it returns the same decision
    decided_at: str | None = None
    #: the decision's tone: every channel asking within the decision window gets the same
    tone: str | None = None


#: One identifier of a batch (/scores, segment exports).
BatchId = Annotated[str, Field(min_length=1, max_length=256)]
#: The id lists a batch may name customers by, in the order their kinds are listed (field -> kind).
BATCH_ID_FIELDS: dict[str, str] = {"profile_ids": PROFILE_ID, "customer_ids": CUSTOMER_ID, "emails": EMAIL,
                                   "phones": PHONE}
Campaign = Annotated[str, Field(min_length=1, max_length=128)]


def _first_repeat(field: str, ids: list[str] | None) -> list[str] | None:
    """A list that names one customer twice is a 400 naming both positions (never echoing the ids)."""
    if ids is not None and len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for i, v in enumerate(ids):
            if v in seen:
                raise PydanticCustomError("duplicate", "{field}[{i}] repeats {field}[{first}]: list each customer once",
                                          {"field": field, "i": i, "first": seen[v]})
            seen[v] = i
    return ids


class ScoresRequest(_Strict):
    """Customers by the retailer's own ids (`customer_ids`, `emails`, `phones`: raw, hashed by Mirror) or
    Mirror's `profile_ids`, any mix, up to MIRROR_MAX_BATCH in all. Ids Mirror does not know are listed
    in `unknown`, in the order asked; an email or phone that is not one is a 400 naming it."""

    profile_ids: list[BatchId] = Field(default_factory=list, max_length=DEFAULT_MAX_BATCH)
    customer_ids: list[BatchId] = Field(default_factory=list, max_length=DEFAULT_MAX_BATCH)
    emails: list[BatchId] = Field(default_factory=list, max_length=DEFAULT_MAX_BATCH)
    phones: list[BatchId] = Field(default_factory=list, max_length=DEFAULT_MAX_BATCH)
    #: the campaign decided for: its holdout (as /next_best_action's `campaign`)
    campaign: Campaign = "default"
    #: true adds each top action's guarded message text and parameters (the guard runs per customer:
    #: measured ~1.6x the time of a call without); segment export files always carry them
    messages: bool = False

    @model_validator(mode="after")
    def _some(self) -> ScoresRequest:
        if not any(getattr(self, f) for f in BATCH_ID_FIELDS):
            raise PydanticCustomError("missing_ids", "give customer_ids, emails, phones or profile_ids (up to 10,000)")
        return self

    def asked(self) -> list[tuple[str, str]]:
        """(kind, value) of every id asked, field by field in BATCH_ID_FIELDS order, each list in its order."""
        return [(kind, v) for f, kind in BATCH_ID_FIELDS.items() for v in getattr(self, f)]


class CustomerScore(_Out):
    """One customer's row: the same fields, in the same order, as a segment export file's columns."""

    #: the identifier as asked (whole-store exports: the customer id, else the profile id)
    id: str
    #: the retailer's customer id: the one asked, else the profile's own (the smallest of several)
    customer_id: str | None = None
    profile_id: str | None
    churn_probability: float | None
    purchase_propensity: float | None
    #: in the campaign's holdout: send nothing (the top action is `do_nothing`); the lift is measured on them
    holdout: bool = False
    top_action: str | None
    #: the customer's best channel for the top action (ask /next_best_action there for its message)
    top_channel: str | None = None
    #: the top channel is in the customer's quiet hours (their own time zone): send at this time (ISO-8601, UTC)
    send_at: str | None = None
    #: the decision's tone (apologetic, neutral or warm, from recent sentiment across channels): the one every
    #: channel's message uses in the decision window (as /next_best_action's `tone`)
    tone: str | None = None
    #: the guarded message text of the top action (as /next_best_action's `reason`); null for do_nothing
    #: and unless asked (`messages: true`; export files always have it)
    message: str | None = None
    #: the message's guarded template parameters (items with catalog name, price, url, image; offer)
    params: dict[str, Any] | None = None


class ScoresResponse(_Out):
    scores: list[CustomerScore]
    #: ids asked that Mirror does not know (or no longer: erased), in the order asked
    unknown: list[str]
    churn_model_version: str | None
    purchase_model_version: str | None


#: Most ids one segment export may list (the whole store: leave the lists out).
MAX_SEGMENT_IDS = 1_000_000


class SegmentExportRequest(_Strict):
    """A whole segment (every profile, or one list of ids) scored in the background into a file.

    Checked at submit (a 400 naming the field), not when the job runs: more than one list, a list that
    is empty, too long, holds an empty or repeated id (or an email or phone that is not one), a format
    other than csv/parquet, a bad campaign. Ids the store does not know are not an error: the finished
    job lists them (`unknown`)."""

    profile_ids: list[BatchId] | None = Field(default=None, min_length=1, max_length=MAX_SEGMENT_IDS)
    customer_ids: list[BatchId] | None = Field(default=None, min_length=1, max_length=MAX_SEGMENT_IDS)
    emails: list[BatchId] | None = Field(default=None, min_length=1, max_length=MAX_SEGMENT_IDS)
    phones: list[BatchId] | None = Field(default=None, min_length=1, max_length=MAX_SEGMENT_IDS)
    format: ExportFormat = "parquet"
    campaign: Campaign = "default"

    @field_validator("profile_ids", "customer_ids", "emails", "phones")
    @classmethod
    def _one_list_no_repeats(cls, ids: list[str] | None, info: ValidationInfo) -> list[str] | None:
        earlier = [f for f in BATCH_ID_FIELDS if f != info.field_name and info.data.get(f) is not None]
        if ids is not None and earlier:  # fields validate in order: the second list given is named
            raise PydanticCustomError("one_of", "give one list of ids ({fields}), or none for every profile; "
                                      "{earlier} is given too", {"fields": ", ".join(BATCH_ID_FIELDS),
                                                                 "earlier": earlier[0]})
        return _first_repeat(info.field_name, ids)

    def listed(self) -> tuple[str, list[str]] | None:
        """(kind, ids) of the one list given; None for the whole store."""
        for f, kind in BATCH_ID_FIELDS.items():
            if (ids := getattr(self, f)) is not None:
                return kind, ids
        return None


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


#: An event as sent: checked row by row by `features.schema.validate_events` (a bad row is reported,
#: the others kept), so the body model takes any object; the OpenAPI document shows the canonical
#: event's schema in its place (serving/openapi.py builds it from features.schema and swaps in a
#: reference wherever `x-mirror-schema` names it: a bare $ref here would break pydantic's own schemas).
EventRecord = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-mirror-schema": "CanonicalEvent"})]


class EventsRequest(_Strict):
    """One event (`event`) or a batch (`events`); each event is a canonical-schema record.

    Rows are validated one by one: the answer lists the accepted ids and each rejected row with its
    field and reason. When no event is accepted at all (every row rejected), the answer is a 422
    problem listing every row's errors (`events[3].ts`), not a 200."""

    event: EventRecord | None = None
    events: list[EventRecord] | None = Field(default=None, max_length=DEFAULT_MAX_BATCH)

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


#: Most interests one preference-centre save may declare.
MAX_DECLARED_INTERESTS = 50
Interest = Annotated[str, Field(min_length=1, max_length=MAX_CATEGORY_LENGTH)]
PersonalizationLevel = Literal[PERSONALIZATION_LEVELS]  # type: ignore[valid-type]


class PreferencesRequest(RequiredIdentifiers):
    """A preference-centre save, stored as `preference` events (the path of POST /events, so one fold). Each
    field given replaces that declaration (an empty list declares none); a field left out stays as it was.
    `timezone` "none" withdraws a declared zone (the one the customer's events tell applies again)."""

    interests: list[Interest] | None = Field(default=None, max_length=MAX_DECLARED_INTERESTS)
    channels: list[Channel] | None = Field(default=None, max_length=len(CHANNELS))
    timezone: str | None = Field(default=None, min_length=1, max_length=MAX_OTHER_LENGTH)
    personalization_level: PersonalizationLevel | None = None
    #: the channel the customer made the declaration on (the events' channel)
    via: Channel = "web"

    @field_validator("interests")
    @classmethod
    def _interest_text(cls, v: list[str] | None) -> list[str] | None:
        for i, text in enumerate(v or ()):
            problems = value_problems(PREFERENCE_VALUE, text)
            if problems:
                raise PydanticCustomError("interest", "interests[{i}]: {why}", {"i": i, "why": problems[0]})
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None and (why := preference_value_problem(DECLARED_TIMEZONE, v)) is not None:
            raise PydanticCustomError("timezone", why)
        return v

    @model_validator(mode="after")
    def _something(self) -> PreferencesRequest:
        if all(getattr(self, f) is None for f in PREFERENCE_FIELDS):
            raise PydanticCustomError("missing_preference", f"give at least one of {', '.join(PREFERENCE_FIELDS)}")
        return self

    def declarations(self) -> list[tuple[str, str]]:
        """(preference key, value) pairs to store: one per listed value, "none" for an empty list."""
        out: list[tuple[str, str]] = []
        for fld, key in PREFERENCE_FIELDS.items():
            v = getattr(self, fld)
            if v is None:
                continue
            values = list(dict.fromkeys(v)) if isinstance(v, list) else [v]
            out += [(key, x) for x in values or [NO_PREFERENCE]]
        return out


#: PreferencesRequest field -> the preference key it declares (`features.schema.PREFERENCE_KEYS`).
PREFERENCE_FIELDS: dict[str, str] = {"interests": INTEREST, "channels": PREFERRED_CHANNEL,
                                     "timezone": DECLARED_TIMEZONE, "personalization_level": PERSONALIZATION_LEVEL}


class PreferencesResponse(_Out):
    profile_id: str
    #: the declaration as now stored: interests, channels, timezone, personalization_level
    declared: dict[str, Any]
    #: ids of the preference events written
    accepted: list[str]


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
