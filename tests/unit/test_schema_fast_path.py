"""The row-wise fast path of validate_events returns exactly what the vectorised path returns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import schema
from features.schema import (
    FAST_PATH_MAX_ROWS,
    EventLimits,
    IdentifierHasher,
    _validate_rowwise,
    _validate_vectorised,
    validate_events,
)

HASHER = IdentifierHasher("test-key")
PRE_HASHED = HASHER.hash("a@b.co")
#: One fixed window for both paths (the default takes the clock): 2000-01-01 .. 2024-06-02.
LIMITS = EventLimits(now="2024-06-01T00:00:00Z")

_missing = st.sampled_from([None, np.nan, pd.NA, "", "   ", "\t"])
_junk = st.sampled_from([1.5, math.inf, -math.inf, True, False, 0, 7, np.int64(3), "x", " y ", 2**70, -(2**64)])
# characters and lengths the content rules look at: control, format (zero-width, bidi, BOM, soft hyphen),
# line breaks (free text keeps them), composed/decomposed (NFC), and values around the length limits
_odd = st.sampled_from([
    "a\x00b", "\x07bell", "\u200bc1", "c\u200d1", "c\u202e1", "\u2066c\u2069", "\ufeffc", "soft\u00adhy",
    "e\u0301", "\u00e9", "Cafe\u0301", "tab\tx", "line\nx", "cr\r\nx", "\x85nel", "\u00a0nb", "\U000e0041",
    "x" * 100, "x" * 101, "y" * 256, "y" * 257, "z" * 300, "z" * 301, "q" * 1001, "\u00e9" * 256,
    "e\u0301" * 200,
])


def _text(words: list[str]) -> st.SearchStrategy[object]:
    return st.one_of(
        st.sampled_from(words),
        st.sampled_from(words).map(lambda w: f"  {w} "),
        _missing,
        _junk,
        _odd,
        st.text(max_size=6),
    )


_ts = st.one_of(
    st.sampled_from([
        "2024-01-01T00:00:00Z", "2024-03-05T10:11:12.123+02:00", "2024-03-05 10:11:12+0100",
        "2024-03-05T10:11:12.123456789-05:30", "2024-01-01T00:00:00", "2024-01-01", "not a date",
        "2024-02-30T00:00:00Z", " 2024-01-01T00:00:00Z ", "2024-01-01T00:00:00Z\n", "5",
        # the window (LIMITS) and beyond pandas' nanosecond range
        "1500-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "1677-09-21T00:12:43Z", "1999-12-31T23:59:59.999999999Z",
        "2000-01-01T00:00:00Z", "2000-01-01T01:00:00+01:00", "2024-06-02T00:00:00Z", "2024-06-02T00:00:00.000001Z",
        "2024-06-02T00:00:00.000000001Z", "2262-04-12T00:00:00Z", "3000-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
    ]),
    st.sampled_from([pd.Timestamp("2024-01-01T12:00:00", tz="Europe/Paris"), pd.Timestamp("2024-01-01"),
                     pd.Timestamp("1500-01-01", tz="UTC"), pd.Timestamp("2100-01-01", tz="UTC")]),
    _missing,
    _junk,
)
_email = st.sampled_from(["A@Example.com", " a@b.co ", "not-an-email", "a@b", PRE_HASHED, "h:123"])
_phone = st.sampled_from(["+1 (555) 123-4567", "555-1234", "12", "0123456789012345678", PRE_HASHED])
_num = st.one_of(
    st.sampled_from([1, 2, 0, -1, 3.5, 5, 6, "2", " 4.5 ", "abc", "", "  ", "inf", "nan", True, None,
                     10**400, -(10**400), 2**70, "1e400", b"1", np.True_, np.float32(2.5)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10, 10),
)

FIELDS: dict[str, st.SearchStrategy[object]] = {
    "event_id": _text(["e1", "e2", "e3"]),
    "ts": _ts,
    "channel": _text(["web", "app", "store", "fax"]),
    "event_type": _text(["view", "search", "purchase", "review", "support_message", "teleport"]),
    "customer_id": _text(["c1", "c2"]),
    "email": st.one_of(_email, _missing, _junk),
    "phone": st.one_of(_phone, _missing, _junk),
    "loyalty_id": _text(["l1"]),
    "device_id": _text(["d1"]),
    "cookie_id": _text(["k1"]),
    "item_id": _text(["i1", "i2"]),
    "category": _text(["shoes"]),
    "quantity": _num,
    "price": _num,
    "text": _text(["great", "bad"]),
    "rating": _num,
    "store_id": _text(["s1"]),
    "query": _text(["red shoes"]),
    "color": _text(["red"]),
    "size": _text(["M"]),
    "brand": _text(["acme"]),
    "duration_s": _num,
    "position": _num,
    "timezone": _text(["Europe/Paris", "UTC", "America/Argentina/Buenos_Aires", "Mars/Olympus", "localtime",
                       "europe/paris", "../etc/passwd", "America", "Factory"]),
    "mystery": _text(["?"]),
    "identifiers": _text(["x"]),
}
COMMON = ("event_id", "ts", "channel", "event_type", "customer_id", "item_id")


@st.composite
def records(draw: st.DrawFn) -> list[dict[str, object]]:
    n = draw(st.integers(1, FAST_PATH_MAX_ROWS))
    cols = [c for c in FIELDS if draw(st.booleans() if c not in COMMON else st.sampled_from([True] * 5 + [False]))]
    out = []
    for _ in range(n):
        rec = {}
        for c in cols:
            if draw(st.integers(0, 9)) == 0:
                continue  # key absent from this record
            rec[c] = draw(FIELDS[c])
        out.append(rec)
    if n > 1 and draw(st.booleans()):
        out[-1] = dict(out[0])  # a duplicate event
        if draw(st.booleans()) and cols:  # ... or a conflicting one: same id, one field changed
            c = draw(st.sampled_from(cols))
            out[-1][c] = draw(FIELDS[c])
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.integers(0, n - 1))] = {}  # an empty record
    return out


def assert_same(df: pd.DataFrame | list[object], allow_unknown: bool = False) -> None:
    expected = _validate_vectorised(df.copy(), HASHER, allow_unknown_columns=allow_unknown, limits=LIMITS)
    got = validate_events(df, HASHER, allow_unknown_columns=allow_unknown, limits=LIMITS)
    pd.testing.assert_frame_equal(got.valid, expected.valid)
    pd.testing.assert_frame_equal(got.errors, expected.errors)
    assert got.duplicates == expected.duplicates


def _build(recs: list[dict[str, object]], explicit: bool) -> pd.DataFrame | None:
    try:
        df = pd.DataFrame(recs)
        if explicit:
            dtypes = {c: ("float64" if c in schema.NUMERIC_COLUMNS else "string") for c in df.columns}
            df = df.astype(dtypes)
    except (TypeError, ValueError, OverflowError):
        return None
    return df


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records(), st.booleans(), st.booleans())
def test_fast_path_equals_vectorised(recs: list[dict[str, object]], explicit: bool, allow_unknown: bool) -> None:
    df = _build(recs, explicit)
    if df is None:
        return
    assert_same(df, allow_unknown)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records(), st.booleans(), st.data())
def test_fast_path_equals_vectorised_on_records(recs: list[dict[str, object]], allow_unknown: bool,
                                                data: st.DataObject) -> None:
    """The same for records (what the API passes): NaN is a value there, and {} a row."""
    events: list[object] = list(recs)
    for _ in range(data.draw(st.integers(0, 2))):  # JSON NaN, a non-object entry
        i = data.draw(st.integers(0, len(events) - 1))
        if data.draw(st.booleans()) or not isinstance(events[i], dict):
            events[i] = data.draw(st.sampled_from(["not a record", None]))
        else:
            events[i] = {**recs[i], data.draw(st.sampled_from(["price", "customer_id", "ts", "mystery"])): math.nan}
    assert_same(events, allow_unknown)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_fast_path_equals_vectorised_good_rows(recs: list[dict[str, object]]) -> None:
    base = {"event_id": "e", "ts": "2024-01-01T00:00:00Z", "channel": "web", "event_type": "view",
            "customer_id": "c", "item_id": "i"}
    fixed = [{**base, **{k: v for k, v in r.items() if k not in COMMON}, "event_id": f"e{i % 5}"}
             for i, r in enumerate(recs)]
    assert_same(pd.DataFrame(fixed))


def test_records_take_the_fast_path() -> None:
    """Records (the API's input) are validated row by row, not sent to the vectorised path."""
    recs = [{"event_id": "e1", "ts": "2024-01-01T00:00:00Z", "channel": "web", "event_type": "view",
             "customer_id": "c", "item_id": "i", "price": 2, "timezone": "Europe/Paris"}, {}]
    fast = _validate_rowwise(recs, HASHER, limits=LIMITS)
    assert fast is not None and len(fast.valid) == 1 and fast.errors["field"].tolist() == ["record"]
    assert_same(recs)


def test_known_answer_good_row() -> None:
    df = pd.DataFrame([{"event_id": " e1 ", "ts": "2024-01-01T01:00:00+01:00", "channel": "web",
                        "event_type": "purchase", "email": "A@B.co", "item_id": "i1", "quantity": 2,
                        "price": 9.5}])
    r = validate_events(df, HASHER)
    assert r.errors.empty
    row = r.valid.iloc[0]
    assert row["event_id"] == "e1"
    assert row["ts"] == pd.Timestamp("2024-01-01T00:00:00", tz="UTC")
    assert row["email"] == HASHER.hash("a@b.co")
    assert r.valid["ts"].dtype == "datetime64[ns, UTC]"
    assert_same(df)


def test_known_answer_errors() -> None:
    df = pd.DataFrame([
        {"event_id": "e1", "ts": "2024-01-01T00:00:00", "channel": "fax", "event_type": "view",
         "customer_id": "c", "quantity": 0, "zzz": 1},
        {"event_id": "e2", "ts": "nope", "channel": "web", "event_type": "review", "email": "bad"},
    ])
    r = validate_events(df, HASHER)
    assert r.valid.empty
    assert list(zip(r.errors["row"], r.errors["field"], r.errors["reason"], strict=True)) == [
        (0, "channel", "unknown channel (expected one of web, app, email, sms, social, store, chat, call_center)"),
        (0, "item_id", "required for this event type"),
        (0, "quantity", "must be positive"),
        (0, "ts", "timestamp has no time zone"),
        (0, "zzz", "unknown field"),
        (1, "email", "not a valid email"),
        (1, "text", "a review or support message needs text or a rating"),
        (1, "ts", "not an ISO-8601 timestamp"),
    ]
    assert_same(df)


def test_duplicates_first_wins() -> None:
    """An identical repeat is a duplicate (the first copy counts); the same id with other content is a
    conflict, reported against the first row."""
    rec = {"event_id": "e1", "ts": "2024-01-01T00:00:00Z", "channel": "web", "event_type": "search",
           "customer_id": "c"}
    df = pd.DataFrame([rec, {**rec, "event_id": " e1 "}, {**rec, "customer_id": "other"}])
    r = validate_events(df, HASHER, limits=LIMITS)
    assert len(r.valid) == 1 and r.valid["customer_id"].iloc[0] == "c"
    assert r.duplicates == ((1, "e1"),)
    assert list(zip(r.errors["row"], r.errors["field"], r.errors["reason"], strict=True)) == [
        (2, "event_id", "conflicts with row 0: same event_id, different content")]
    assert_same(df)


@pytest.mark.parametrize(
    "df",
    [
        pd.DataFrame({"event_id": pd.Categorical(["e1"]), "ts": ["2024-01-01T00:00:00Z"]}),
        pd.DataFrame({"event_id": ["e1"], "ts": pd.to_datetime(["2024-01-01T00:00:00Z"])}),
        pd.DataFrame({"event_id": ["e1"], "ts": pd.to_datetime(["2024-01-01T00:00:00"])}),
    ],
)
def test_unusual_dtypes_fall_back(df: pd.DataFrame) -> None:
    assert _validate_rowwise(df, HASHER) is None
    assert_same(df)
