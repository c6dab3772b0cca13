"""The canonical event record: every column and event name Mirror uses lives here, once.

Every channel (web, app, email, SMS, social, store POS, chat, call center) is mapped onto this one
record.  Validation is vectorised so that a batch with bad rows keeps the good ones and returns a
report naming each bad row, field and reason: nothing is silently dropped or coerced.
Emails and phone numbers are normalised and hashed with a keyed hash on the way in, so raw
contact details are never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

# ---------------------------------------------------------------------------------------------
# Column names
# ---------------------------------------------------------------------------------------------
EVENT_ID: Final = "event_id"
TS: Final = "ts"
CHANNEL: Final = "channel"
EVENT_TYPE: Final = "event_type"

CUSTOMER_ID: Final = "customer_id"
EMAIL: Final = "email"
PHONE: Final = "phone"
LOYALTY_ID: Final = "loyalty_id"
DEVICE_ID: Final = "device_id"
COOKIE_ID: Final = "cookie_id"
IDENTIFIER_COLUMNS: Final[tuple[str, ...]] = (
    CUSTOMER_ID,
    EMAIL,
    PHONE,
    LOYALTY_ID,
    DEVICE_ID,
    COOKIE_ID,
)
#: Identifiers that are personal contact details: normalised and hashed before anything is stored.
HASHED_IDENTIFIERS: Final[tuple[str, ...]] = (EMAIL, PHONE)

ITEM_ID: Final = "item_id"
CATEGORY: Final = "category"
QUANTITY: Final = "quantity"
PRICE: Final = "price"
TEXT: Final = "text"
RATING: Final = "rating"
STORE_ID: Final = "store_id"
QUERY: Final = "query"

#: Added by identity resolution, never sent by a channel.
PROFILE_ID: Final = "profile_id"
#: Product display name (catalog attribute, not an event column): what an item-level reason may say.
ITEM_NAME: Final = "item_name"

# Optional attribute columns some channels send (used by the guard, never required).
COLOR: Final = "color"
SIZE: Final = "size"
BRAND: Final = "brand"
DURATION_S: Final = "duration_s"
OPTIONAL_COLUMNS: Final[tuple[str, ...]] = (COLOR, SIZE, BRAND, DURATION_S)

PAYLOAD_COLUMNS: Final[tuple[str, ...]] = (
    ITEM_ID,
    CATEGORY,
    QUANTITY,
    PRICE,
    TEXT,
    RATING,
    STORE_ID,
    QUERY,
)
REQUIRED_COLUMNS: Final[tuple[str, ...]] = (EVENT_ID, TS, CHANNEL, EVENT_TYPE)
#: Every canonical column, in the order files are written.
CANONICAL_COLUMNS: Final[tuple[str, ...]] = (
    REQUIRED_COLUMNS + IDENTIFIER_COLUMNS + PAYLOAD_COLUMNS
)
KNOWN_COLUMNS: Final[frozenset[str]] = frozenset(CANONICAL_COLUMNS + OPTIONAL_COLUMNS)

STRING_COLUMNS: Final[tuple[str, ...]] = (
    (EVENT_ID, CHANNEL, EVENT_TYPE) + IDENTIFIER_COLUMNS + (ITEM_ID, CATEGORY, TEXT, STORE_ID, QUERY)
    + (COLOR, SIZE, BRAND)
)
NUMERIC_COLUMNS: Final[tuple[str, ...]] = (QUANTITY, PRICE, RATING, DURATION_S)

# ---------------------------------------------------------------------------------------------
# Channels and event types (the one place to extend them)
# ---------------------------------------------------------------------------------------------
CHANNELS: Final[tuple[str, ...]] = (
    "web",
    "app",
    "email",
    "sms",
    "social",
    "store",
    "chat",
    "call_center",
)

VIEW: Final = "view"
SEARCH: Final = "search"
ADD_TO_CART: Final = "add_to_cart"
REMOVE_FROM_CART: Final = "remove_from_cart"
PURCHASE: Final = "purchase"
RETURN: Final = "return"
EMAIL_OPEN: Final = "email_open"
EMAIL_CLICK: Final = "email_click"
SOCIAL_LIKE: Final = "social_like"
TRY_ON: Final = "try_on"
REVIEW: Final = "review"
SUPPORT_MESSAGE: Final = "support_message"

EVENT_TYPES: Final[tuple[str, ...]] = (
    VIEW,
    SEARCH,
    ADD_TO_CART,
    REMOVE_FROM_CART,
    PURCHASE,
    RETURN,
    EMAIL_OPEN,
    EMAIL_CLICK,
    SOCIAL_LIKE,
    TRY_ON,
    REVIEW,
    SUPPORT_MESSAGE,
)
#: Event types that concern one product and so must name it.
ITEM_EVENT_TYPES: Final[frozenset[str]] = frozenset(
    {VIEW, ADD_TO_CART, REMOVE_FROM_CART, PURCHASE, RETURN, TRY_ON, SOCIAL_LIKE}
)
#: Event types that carry free text.
TEXT_EVENT_TYPES: Final[frozenset[str]] = frozenset({REVIEW, SUPPORT_MESSAGE})

# Sentiment labels, shared by the synthetic truth, training and the profile features.
NEGATIVE: Final = "negative"
NEUTRAL: Final = "neutral"
POSITIVE: Final = "positive"
SENTIMENT_LABELS: Final[tuple[str, ...]] = (NEGATIVE, NEUTRAL, POSITIVE)

RATING_MIN: Final = 1
RATING_MAX: Final = 5


def rating_to_sentiment(rating: float) -> str:
    """1-2 negative, 3 neutral, 4-5 positive: the labelling every sentiment model uses."""
    if rating <= 2:
        return NEGATIVE
    if rating < 4:
        return NEUTRAL
    return POSITIVE


# ---------------------------------------------------------------------------------------------
# Keyed hashing of contact details
# ---------------------------------------------------------------------------------------------
HASH_KEY_ENV: Final = "MIRROR_HASH_KEY"
#: Used only when no key is configured (demo and tests); production deployments set MIRROR_HASH_KEY.
DEV_HASH_KEY: Final = "mirror-dev-key-change-me"
HASH_PREFIX: Final = "h:"

_NON_DIGITS = re.compile(r"[^0-9]")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_email(value: str) -> str | None:
    """Lower-case and trim; None when it is not an email address."""
    v = value.strip().lower()
    return v if _EMAIL_RE.match(v) else None


def normalise_phone(value: str) -> str | None:
    """Digits only, keeping a leading '+'; None when fewer than 7 digits remain."""
    v = value.strip()
    digits = _NON_DIGITS.sub("", v)
    if len(digits) < 7 or len(digits) > 15:
        return None
    return ("+" if v.startswith("+") else "") + digits


@dataclass(frozen=True)
class IdentifierHasher:
    """HMAC-SHA256 of normalised contact details; the key never leaves configuration."""

    key: str = field(default=DEV_HASH_KEY, repr=False)

    @classmethod
    def from_env(cls) -> IdentifierHasher:
        return cls(os.environ.get(HASH_KEY_ENV, DEV_HASH_KEY))

    def hash(self, normalised: str) -> str:
        digest = hmac.new(self.key.encode(), normalised.encode(), hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest[:32]

    def is_hashed(self, value: str) -> bool:
        return value.startswith(HASH_PREFIX) and len(value) == len(HASH_PREFIX) + 32


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
ERROR_ROW: Final = "row"
ERROR_FIELD: Final = "field"
ERROR_REASON: Final = "reason"
ERROR_COLUMNS: Final[tuple[str, ...]] = (ERROR_ROW, EVENT_ID, ERROR_FIELD, ERROR_REASON)


@dataclass(frozen=True)
class ValidationResult:
    """Good rows in canonical form, plus one error row per (bad row, field, reason)."""

    valid: pd.DataFrame
    errors: pd.DataFrame

    @property
    def n_rejected(self) -> int:
        return int(self.errors[ERROR_ROW].nunique()) if len(self.errors) else 0

    def error_records(self) -> list[dict[str, object]]:
        return self.errors.to_dict(orient="records")


def _blank(s: pd.Series) -> pd.Series:
    """Missing, or a string of only whitespace (only text can be blank)."""
    na = s.isna()
    if not (pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype)):
        return na
    return na | (s.astype("string").str.strip() == "").fillna(False).astype(bool)


def _as_string(s: pd.Series) -> pd.Series:
    out = s.astype("string").str.strip()
    return out.mask(out == "")


#: Batches up to this many rows are validated row by row (pandas overhead dominates small batches).
FAST_PATH_MAX_ROWS: Final = 32


def validate_events(
    df: pd.DataFrame,
    hasher: IdentifierHasher | None = None,
    *,
    allow_unknown_columns: bool = False,
) -> ValidationResult:
    """Check a batch against the canonical schema and return good rows plus a per-row report.

    Good rows come back with `ts` as UTC, strings stripped, numbers as floats and email/phone
    replaced by their keyed hashes (already-hashed values pass through).  The caller's frame is
    never modified.  Rows are reported by their position in the input (`row`).

    Small batches (up to FAST_PATH_MAX_ROWS rows) take a row-wise path that returns exactly what
    the vectorised path would; input shapes it does not handle fall back to the vectorised path.
    """
    if len(df) <= FAST_PATH_MAX_ROWS:
        result = _validate_rowwise(df, hasher, allow_unknown_columns=allow_unknown_columns)
        if result is not None:
            return result
    return _validate_vectorised(df, hasher, allow_unknown_columns=allow_unknown_columns)


def _validate_vectorised(
    df: pd.DataFrame,
    hasher: IdentifierHasher | None = None,
    *,
    allow_unknown_columns: bool = False,
) -> ValidationResult:
    """The reference implementation: vectorised with pandas, fast for big batches."""
    hasher = hasher or IdentifierHasher.from_env()
    n = len(df)
    errs: list[pd.DataFrame] = []
    src = df.reset_index(drop=True)
    out = pd.DataFrame(index=src.index)

    def report(mask: pd.Series, fld: str, reason: str) -> None:
        idx = np.flatnonzero(mask.to_numpy(dtype=bool, na_value=False))
        if len(idx):
            ev = src[EVENT_ID].iloc[idx] if EVENT_ID in src else pd.Series([None] * len(idx))
            errs.append(
                pd.DataFrame(
                    {
                        ERROR_ROW: idx,
                        EVENT_ID: ev.astype("string").to_numpy(),
                        ERROR_FIELD: fld,
                        ERROR_REASON: reason,
                    }
                )
            )

    unknown = sorted(set(src.columns) - KNOWN_COLUMNS)
    if unknown and not allow_unknown_columns:
        for name in unknown:
            report(src[name].notna(), name, "unknown field")

    for col in REQUIRED_COLUMNS:
        if col not in src:
            report(pd.Series(True, index=src.index), col, "required field is missing")

    def col(name: str) -> pd.Series:
        return src[name] if name in src else pd.Series(pd.NA, index=src.index, dtype="string")

    # strings
    for name in STRING_COLUMNS:
        if name in src:
            s = col(name)
            if pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty", "integer"):
                bad_type = pd.Series(False, index=src.index)
            else:
                is_ok = s.map(lambda v: isinstance(v, (str, int, np.integer)), na_action="ignore")
                bad_type = s.notna() & ~is_ok.eq(True)  # NA maps to NA (a float column when all are NA)
            report(bad_type, name, "must be a string")
            out[name] = _as_string(s.mask(bad_type))
        else:
            out[name] = pd.Series(pd.NA, index=src.index, dtype="string")

    # required
    for name in (EVENT_ID, CHANNEL, EVENT_TYPE):
        if name in src:
            report(out[name].isna() & col(name).notna() | _blank(col(name)), name, "required field is empty")

    # timestamps: timezone-aware only, stored as UTC
    if TS in src:
        ts_raw = col(TS)
        report(_blank(ts_raw), TS, "required field is empty")
        ts = pd.Series(pd.NaT, index=src.index, dtype="datetime64[ns, UTC]")
        present = ~_blank(ts_raw)
        if present.any():
            if isinstance(ts_raw.dtype, pd.DatetimeTZDtype):
                ts[present] = ts_raw[present].dt.tz_convert("UTC")
            elif pd.api.types.is_datetime64_dtype(ts_raw.dtype):
                report(present, TS, "timestamp has no time zone")
            else:
                txt = ts_raw[present].astype("string")
                parsed = pd.to_datetime(txt, utc=True, errors="coerce", format="ISO8601")
                naive = ~txt.str.contains(r"(?:Z|[+-]\d\d:?\d\d)\s*$", regex=True, na=False)
                report(present & parsed.reindex(src.index).isna(), TS, "not an ISO-8601 timestamp")
                report(present & naive.reindex(src.index, fill_value=False) & parsed.reindex(src.index).notna(),
                       TS, "timestamp has no time zone")
                ok = parsed.notna() & ~naive
                ts[ok[ok].index] = parsed[ok]
        out[TS] = ts
    else:
        out[TS] = pd.Series(pd.NaT, index=src.index, dtype="datetime64[ns, UTC]")

    report(out[CHANNEL].notna() & ~out[CHANNEL].isin(CHANNELS), CHANNEL,
           f"unknown channel (expected one of {', '.join(CHANNELS)})")
    report(out[EVENT_TYPE].notna() & ~out[EVENT_TYPE].isin(EVENT_TYPES), EVENT_TYPE,
           "unknown event type")

    # identifiers: at least one
    report(out[list(IDENTIFIER_COLUMNS)].isna().all(axis=1), "identifiers",
           f"at least one of {', '.join(IDENTIFIER_COLUMNS)} is required")

    # contact details: normalise and hash
    for name, norm in ((EMAIL, normalise_email), (PHONE, normalise_phone)):
        s = out[name]
        present = s.notna()
        if present.any():
            vals = s[present]
            already = vals.map(hasher.is_hashed).astype(bool)
            normed = vals.where(already, vals.map(norm))
            bad = normed.isna()
            report(bad.reindex(src.index, fill_value=False), name, f"not a valid {name}")
            hashed = normed.where(already, normed.map(hasher.hash, na_action="ignore"))
            out.loc[present, name] = hashed

    # numbers
    for name in NUMERIC_COLUMNS:
        if name in src:
            raw = col(name)
            num = pd.to_numeric(raw, errors="coerce")
            bad = raw.notna() & ~_blank(raw) & num.isna()
            if pd.api.types.is_object_dtype(raw.dtype):
                bad |= raw.map(lambda v: isinstance(v, bool), na_action="ignore").astype("boolean").fillna(False)
            elif pd.api.types.is_bool_dtype(raw.dtype):
                bad |= raw.notna()
            report(bad, name, "must be a number")
            num = num.where(~bad)
            fin = num.notna() & ~np.isfinite(num.astype(float))
            report(fin, name, "must be finite")
            out[name] = num.where(~fin).astype("float64")
        else:
            out[name] = pd.Series(np.nan, index=src.index, dtype="float64")
    report(out[QUANTITY].notna() & (out[QUANTITY] <= 0), QUANTITY, "must be positive")
    report(out[PRICE].notna() & (out[PRICE] < 0), PRICE, "must not be negative")
    report(out[RATING].notna() & ((out[RATING] < RATING_MIN) | (out[RATING] > RATING_MAX)), RATING,
           f"must be between {RATING_MIN} and {RATING_MAX}")
    report(out[DURATION_S].notna() & (out[DURATION_S] < 0), DURATION_S, "must not be negative")

    # per-type requirements
    report(out[EVENT_TYPE].isin(ITEM_EVENT_TYPES) & out[ITEM_ID].isna(), ITEM_ID,
           "required for this event type")
    report(out[EVENT_TYPE].isin(TEXT_EVENT_TYPES) & out[TEXT].isna() & out[RATING].isna(), TEXT,
           "a review or support message needs text or a rating")

    # duplicate event ids inside the batch: the first wins, later copies are idempotent no-ops,
    # not errors (re-sending the same event changes nothing).
    errors = (
        pd.concat(errs, ignore_index=True)
        if errs
        else pd.DataFrame({c: pd.Series(dtype="object") for c in ERROR_COLUMNS})
    )
    errors = errors.sort_values([ERROR_ROW, ERROR_FIELD], kind="stable").reset_index(drop=True)
    bad_rows = np.zeros(n, dtype=bool)
    if len(errors):
        bad_rows[errors[ERROR_ROW].to_numpy(dtype=int)] = True
    keep = ~bad_rows
    valid = out.loc[keep]
    valid = valid.loc[~valid[EVENT_ID].duplicated(keep="first")]
    cols = [c for c in CANONICAL_COLUMNS if c in valid] + [
        c for c in OPTIONAL_COLUMNS if c in src.columns
    ]
    return ValidationResult(valid=valid[cols].reset_index(drop=True), errors=errors)


# ---------------------------------------------------------------------------------------------
# Row-wise fast path for small batches: same result as _validate_vectorised, without the
# per-column pandas overhead.  Anything it does not handle exactly returns None (vectorised path).
# ---------------------------------------------------------------------------------------------
_TZ_SUFFIX = re.compile(r"(?:Z|[+-][0-9][0-9]:?[0-9][0-9])[\t\n\f\r ]*\Z")
_OBJECT_SCALARS: Final = (str, int, float, type(None), type(pd.NA), np.integer)
_NS_MIN: Final = pd.Timestamp.min.tz_localize("UTC")
_NS_MAX: Final = pd.Timestamp.max.tz_localize("UTC")


class _Unsupported(Exception):
    """An input shape the row-wise path does not reproduce exactly."""


def _na(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def _strip(v: str) -> str:
    if v.isascii():
        return v.strip()
    return str(pd.Series([v], dtype="string").str.strip().iloc[0])  # non-ASCII whitespace: pandas rules


def _values(s: pd.Series, *, allow_timestamps: bool = False) -> list[object]:
    dt = s.dtype
    if isinstance(dt, pd.StringDtype):
        return s.to_numpy(dtype=object).tolist()
    if dt == np.dtype(object):
        vals = s.tolist()
        for v in vals:
            if not isinstance(v, _OBJECT_SCALARS) and not (
                allow_timestamps and isinstance(v, pd.Timestamp) and v is not pd.NaT
            ):
                raise _Unsupported
        return vals
    if dt in (np.dtype("int64"), np.dtype("float64"), np.dtype("bool")):
        return s.tolist()
    raise _Unsupported


def _validate_rowwise(
    df: pd.DataFrame,
    hasher: IdentifierHasher | None = None,
    *,
    allow_unknown_columns: bool = False,
) -> ValidationResult | None:
    """Row-by-row validation of a small batch; None where the input needs the vectorised path."""
    n = len(df)
    names = list(df.columns)
    if n == 0 or not df.columns.is_unique or not all(type(c) is str for c in names):
        return None
    try:
        return _rowwise(df, names, hasher or IdentifierHasher.from_env(), allow_unknown_columns)
    except _Unsupported:
        return None


def _rowwise(
    df: pd.DataFrame, names: list[str], hasher: IdentifierHasher, allow_unknown_columns: bool
) -> ValidationResult:
    n = len(df)
    present = set(names)
    errs: list[tuple[tuple[int, ...], int, str, str]] = []
    rows = range(n)

    def report(stage: tuple[int, ...], i: int, fld: str, reason: str) -> None:
        errs.append((stage, i, fld, reason))

    if not allow_unknown_columns:
        for k, name in enumerate(sorted(present - KNOWN_COLUMNS)):
            for i in np.flatnonzero(df[name].notna().to_numpy(dtype=bool, na_value=False)):
                report((0, k), int(i), name, "unknown field")
    for k, name in enumerate(REQUIRED_COLUMNS):
        if name not in present:
            for i in rows:
                report((1, k), i, name, "required field is missing")

    out: dict[str, list] = {}
    none_col = [None] * n
    for k, name in enumerate(STRING_COLUMNS):
        if name not in present:
            out[name] = none_col
            continue
        col: list[str | None] = []
        for i, v in enumerate(_values(df[name])):
            if _na(v):
                col.append(None)
            elif isinstance(v, str):
                v = _strip(v)
                col.append(v or None)
            elif isinstance(v, (int, np.integer)):
                col.append(str(v) or None)
            else:
                report((2, k), i, name, "must be a string")
                col.append(None)
        out[name] = col

    for k, name in enumerate((EVENT_ID, CHANNEL, EVENT_TYPE)):
        if name in present:
            for i in rows:
                if out[name][i] is None:
                    report((3, k), i, name, "required field is empty")

    ts_ns = np.full(n, np.datetime64("NaT", "ns"))
    if TS in present:
        raw = _values(df[TS], allow_timestamps=True)
        txt_rows: list[int] = []
        txts: list[str] = []
        for i, v in enumerate(raw):
            t = None if _na(v) else (v if isinstance(v, str) else str(v))
            if t is None or not _strip(t):
                report((4, 0), i, TS, "required field is empty")
            else:
                txt_rows.append(i)
                txts.append(t)
        if txts:
            parsed = pd.to_datetime(pd.Series(txts, dtype="string"), utc=True, errors="coerce",
                                    format="ISO8601")
            ok = parsed.notna().to_numpy()
            if ok.any() and (parsed[ok].min() < _NS_MIN or parsed[ok].max() > _NS_MAX):
                raise _Unsupported
            ns = parsed.dt.as_unit("ns").dt.tz_localize(None).to_numpy()
            for j, i in enumerate(txt_rows):
                if not ok[j]:
                    report((4, 1), i, TS, "not an ISO-8601 timestamp")
                elif _TZ_SUFFIX.search(txts[j]) is None:
                    report((4, 2), i, TS, "timestamp has no time zone")
                else:
                    ts_ns[i] = ns[j]

    for i in rows:
        ch = out[CHANNEL][i]
        if ch is not None and ch not in CHANNELS:
            report((5, 0), i, CHANNEL, f"unknown channel (expected one of {', '.join(CHANNELS)})")
        et = out[EVENT_TYPE][i]
        if et is not None and et not in EVENT_TYPES:
            report((5, 1), i, EVENT_TYPE, "unknown event type")
        if all(out[c][i] is None for c in IDENTIFIER_COLUMNS):
            report((5, 2), i, "identifiers", f"at least one of {', '.join(IDENTIFIER_COLUMNS)} is required")

    for k, (name, norm) in enumerate(((EMAIL, normalise_email), (PHONE, normalise_phone))):
        if name not in present:
            continue
        col = list(out[name])
        for i, v in enumerate(col):
            if v is None:
                continue
            if hasher.is_hashed(v):
                continue
            normed = norm(v)
            if normed is None:
                report((5, 3 + k), i, name, f"not a valid {name}")
                col[i] = None
            else:
                col[i] = hasher.hash(normed)
        out[name] = col

    nums: dict[str, np.ndarray] = {}
    for k, name in enumerate(NUMERIC_COLUMNS):
        if name not in present:
            nums[name] = np.full(n, np.nan)
            continue
        s = df[name]
        dt = s.dtype
        if dt == np.dtype("float64") or dt == np.dtype("int64"):
            num = s.to_numpy(dtype="float64")
            bad = [False] * n
        elif dt == np.dtype("bool"):
            num = np.full(n, np.nan)
            bad = [True] * n
        else:
            raw = _values(s)
            conv = pd.to_numeric(s, errors="coerce")
            if not (pd.api.types.is_numeric_dtype(conv.dtype) or pd.api.types.is_bool_dtype(conv.dtype)):
                raise _Unsupported
            num = conv.to_numpy(dtype="float64", na_value=np.nan)
            is_obj = dt == np.dtype(object)
            bad = [
                (not _na(v) and not (isinstance(v, str) and not _strip(v)) and num[i] != num[i])
                or (is_obj and isinstance(v, bool))
                for i, v in enumerate(raw)
            ]
        vals = np.full(n, np.nan)
        for i in rows:
            x = float(num[i])
            if bad[i]:
                report((6, k, 0), i, name, "must be a number")
            elif x != x:
                pass
            elif not np.isfinite(x):
                report((6, k, 1), i, name, "must be finite")
            else:
                vals[i] = x
        nums[name] = vals

    for i in rows:
        q, p, r, d = (nums[c][i] for c in (QUANTITY, PRICE, RATING, DURATION_S))
        if q <= 0:
            report((7, 0), i, QUANTITY, "must be positive")
        if p < 0:
            report((7, 1), i, PRICE, "must not be negative")
        if r < RATING_MIN or r > RATING_MAX:
            report((7, 2), i, RATING, f"must be between {RATING_MIN} and {RATING_MAX}")
        if d < 0:
            report((7, 3), i, DURATION_S, "must not be negative")
        et = out[EVENT_TYPE][i]
        if et in ITEM_EVENT_TYPES and out[ITEM_ID][i] is None:
            report((8, 0), i, ITEM_ID, "required for this event type")
        if et in TEXT_EVENT_TYPES and out[TEXT][i] is None and r != r:
            report((8, 1), i, TEXT, "a review or support message needs text or a rating")

    errors = _rowwise_errors(df, errs)
    bad_rows = {e[1] for e in errs}
    keep: list[int] = []
    seen: set[str | None] = set()
    for i in rows:
        if i in bad_rows:
            continue
        eid = out[EVENT_ID][i]
        if eid in seen:
            continue
        seen.add(eid)
        keep.append(i)

    data: dict[str, object] = {}
    cols = list(CANONICAL_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in present]
    for c in cols:
        if c == TS:
            data[c] = pd.DatetimeIndex(ts_ns[keep]).tz_localize("UTC")
        elif c in NUMERIC_COLUMNS:
            data[c] = nums[c][keep]
        else:
            vals = out[c]
            data[c] = pd.array([vals[i] for i in keep], dtype="string")
    valid = pd.DataFrame(data, index=pd.RangeIndex(len(keep)))
    return ValidationResult(valid=valid, errors=errors)


def _rowwise_errors(df: pd.DataFrame, errs: list[tuple[tuple[int, ...], int, str, str]]) -> pd.DataFrame:
    """The error frame, assembled exactly as the vectorised path assembles it."""
    if not errs:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in ERROR_COLUMNS})
    errs.sort(key=lambda e: (e[0], e[1]))
    pieces: list[pd.DataFrame] = []
    start = 0
    for end in range(1, len(errs) + 1):
        if end < len(errs) and errs[end][0] == errs[start][0]:
            continue
        stage, _, fld, reason = errs[start]
        idx = np.array([e[1] for e in errs[start:end]], dtype=np.intp)
        ev = df[EVENT_ID].iloc[idx] if EVENT_ID in df.columns else pd.Series([None] * len(idx))
        pieces.append(
            pd.DataFrame(
                {
                    ERROR_ROW: idx,
                    EVENT_ID: ev.astype("string").to_numpy(),
                    ERROR_FIELD: fld,
                    ERROR_REASON: reason,
                }
            )
        )
        start = end
    errors = pd.concat(pieces, ignore_index=True)
    return errors.sort_values([ERROR_ROW, ERROR_FIELD], kind="stable").reset_index(drop=True)


def empty_events() -> pd.DataFrame:
    """A zero-row frame with canonical columns and dtypes."""
    data: dict[str, pd.Series] = {}
    for c in CANONICAL_COLUMNS:
        if c == TS:
            data[c] = pd.Series(dtype="datetime64[ns, UTC]")
        elif c in NUMERIC_COLUMNS:
            data[c] = pd.Series(dtype="float64")
        else:
            data[c] = pd.Series(dtype="string")
    return pd.DataFrame(data)


def read_csv_strict(path: str | os.PathLike[str], **kwargs: Any) -> pd.DataFrame:
    """pandas' read_csv, but a row with more fields than the header is an error naming the file, as is any
    other parse failure.

    Why: given such rows (typically an unquoted comma in a text), pandas silently turns the first field
    into the index, so the text column loses its start; a user's file must fail loudly instead.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, index_col=False, **kwargs)
    except (pd.errors.ParserWarning, pd.errors.ParserError) as exc:
        raise ValueError(f"{os.fspath(path)}: rows with more fields than the header ({str(exc).strip()}); "
                         "quote fields that contain the separator") from exc
    except ValueError as exc:  # empty file, not text, bad options: the file is named, never a bare traceback
        raise ValueError(f"{os.fspath(path)}: cannot parse as CSV ({exc})") from exc


def read_table(path: str | os.PathLike[str], **csv_kwargs: Any) -> pd.DataFrame:
    """A parquet file or directory (by its suffix, any case), else a CSV read by `read_csv_strict`."""
    p = os.fspath(path)
    if p.lower().endswith((".parquet", ".pq")) or os.path.isdir(p):
        return pd.read_parquet(p)
    return read_csv_strict(p, **csv_kwargs)


def read_events(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a canonical events file (CSV or parquet) without validating it."""
    return read_table(path, dtype={c: "string" for c in STRING_COLUMNS}, keep_default_na=True)


def write_events(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write canonical events as parquet (or CSV if the name says so)."""
    p = os.fspath(path)
    if p.endswith(".csv"):
        df.to_csv(p, index=False)
    else:
        df.to_parquet(p, index=False)


# ---------------------------------------------------------------------------------------------
# Registered model names: shared by training (which registers) and serving (which loads)
# ---------------------------------------------------------------------------------------------
RECOMMENDER_MODEL: Final = "mirror-recommender"
CHURN_MODEL: Final = "mirror-churn"
PURCHASE_MODEL: Final = "mirror-purchase"
SENTIMENT_MODEL: Final = "mirror-sentiment"
CHAMPION_ALIAS: Final = "champion"


def champion_uri(model_name: str) -> str:
    """The registry URI serving loads: the version currently aliased `champion`."""
    return f"models:/{model_name}@{CHAMPION_ALIAS}"
