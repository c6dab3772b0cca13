"""Strict event input: nothing malformed is stored, nothing valid is lost, every rejection names the field.

Each test here holds one finding of the red team against `validate_events`; both the row-wise fast path
(small batches) and the vectorised path (big ones) are exercised where they differ in code.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata

import numpy as np
import pandas as pd
import pytest

from features import schema as s

HASHER = s.IdentifierHasher("strict-test-key")
NOW = pd.Timestamp("2025-06-01T12:00:00Z")
LIMITS = s.EventLimits(now=NOW)
#: more rows than the fast path takes: the same checks through the vectorised path
BIG = s.FAST_PATH_MAX_ROWS + 8


def _row(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {s.EVENT_ID: "e1", s.TS: "2025-01-01T10:00:00Z", s.CHANNEL: "web",
                               s.EVENT_TYPE: s.VIEW, s.CUSTOMER_ID: "c1", s.ITEM_ID: "i1"}
    base.update(kw)
    return base


def _validate(events: object, **kw: object) -> s.ValidationResult:
    return s.validate_events(events, HASHER, limits=LIMITS, **kw)


def _both(bad: dict[str, object]) -> list[pd.DataFrame]:
    """One bad row beside good ones, small (fast path) and big (vectorised path): bad row is row 1."""
    small = [_row(event_id="g0"), {**_row(event_id="bad"), **bad}, _row(event_id="g2")]
    big = small + [_row(event_id=f"g{i}") for i in range(3, BIG)]
    return [pd.DataFrame(small), pd.DataFrame(big)]


def _errors(res: s.ValidationResult) -> list[tuple[int, str, str]]:
    return list(zip(res.errors["row"], res.errors["field"], res.errors["reason"], strict=True))


# -- control and format characters --------------------------------------------------------------
ID_CASES = [
    (col, ch, cat)
    for col in (s.CUSTOMER_ID, s.EVENT_ID, s.ITEM_ID, s.STORE_ID, s.LOYALTY_ID, s.DEVICE_ID, s.COOKIE_ID)
    for ch, cat in (("\x00", "control"), ("\x1f", "control"), ("\x7f", "control"), ("\u200b", "format"),
                    ("\u200d", "format"), ("\u202e", "format"), ("\u2066", "format"), ("\ufeff", "format"),
                    ("\u00ad", "format"))
]


@pytest.mark.parametrize(("column", "char", "category"), ID_CASES)
def test_control_and_format_characters_in_ids_are_rejected_naming_the_field(column, char, category):
    for df in _both({column: f"x{char}1"}):
        res = _validate(df)
        assert _errors(res) == [(1, column, f"contains disallowed character U+{ord(char):04X} ({category})")]
        assert len(res.valid) == len(df) - 1 and "bad" not in set(res.valid[s.EVENT_ID])


@pytest.mark.parametrize("column", [s.TEXT, s.QUERY])
def test_free_text_keeps_line_breaks_and_tabs_but_not_other_control_characters(column):
    kept = "first line\nsecond\tcolumn\r\nthird \u200b zero-width is fine in text"
    kind = s.REVIEW if column == s.TEXT else s.SEARCH
    for df in _both({s.EVENT_TYPE: kind, column: kept}):
        res = _validate(df)
        assert res.errors.empty
        assert res.valid.loc[res.valid[s.EVENT_ID] == "bad", column].iloc[0] == kept
    for ch in ("\x00", "\x07", "\x1b", "\x85"):
        for df in _both({s.EVENT_TYPE: kind, column: f"great{ch}shoes"}):
            assert _errors(_validate(df)) == [(1, column, f"contains disallowed character U+{ord(ch):04X} (control)")]


@pytest.mark.parametrize("column", [s.CATEGORY, s.COLOR, s.SIZE, s.BRAND])
def test_attributes_refuse_control_characters(column):
    for df in _both({column: "red\x00"}):
        assert _errors(_validate(df)) == [(1, column, "contains disallowed character U+0000 (control)")]


def test_lone_surrogates_are_a_row_error_not_a_crash():
    """pandas cannot even hold these in a string column; the rest of the batch is kept."""
    for n in (3, BIG):
        recs = [_row(event_id=f"g{i}") for i in range(n)]
        recs[1] = _row(event_id="bad", customer_id="a\ud800b")
        for events in (recs, pd.DataFrame({k: pd.Series([r[k] for r in recs], dtype=object) for k in recs[0]})):
            res = _validate(events)
            assert _errors(res)[0] == (1, s.CUSTOMER_ID, "contains disallowed character U+D800 (surrogate)")
            assert set(res.errors["row"]) == {1} and len(res.valid) == n - 1


# -- NFC normalisation ---------------------------------------------------------------------------
def test_composed_and_decomposed_identifiers_are_one_customer():
    composed, decomposed = "Ren\u00e9e", "Rene\u0301e"
    assert composed != decomposed and unicodedata.normalize("NFC", decomposed) == composed
    for n in (2, BIG):
        recs = [_row(event_id=f"e{i}", customer_id=decomposed if i % 2 else composed, item_id=decomposed)
                for i in range(n)]
        res = _validate(recs)
        assert res.errors.empty
        assert set(res.valid[s.CUSTOMER_ID]) == {composed} and set(res.valid[s.ITEM_ID]) == {composed}
    a = _validate([_row(customer_id=None, email="ren\u00e9e@example.com")]).valid[s.EMAIL].iloc[0]
    b = _validate([_row(customer_id=None, email="rene\u0301e@example.com")]).valid[s.EMAIL].iloc[0]
    assert a == b and s.normalise_id(f"  {decomposed} ") == composed
    text = "cafe\u0301 was great"  # free text is kept as sent
    assert _validate([_row(event_type=s.REVIEW, text=text, customer_id=decomposed)]).valid[s.TEXT].iloc[0] == text


def test_event_ids_are_normalised_so_a_resend_is_a_duplicate():
    res = _validate([_row(event_id="caf\u00e9-1"), _row(event_id="cafe\u0301-1")])
    assert res.errors.empty and res.valid[s.EVENT_ID].tolist() == ["caf\u00e9-1"]
    assert res.duplicates == ((1, "caf\u00e9-1"),)


# -- length limits ------------------------------------------------------------------------------
LIMIT_CASES = [
    (s.EVENT_ID, 256), (s.CUSTOMER_ID, 256), (s.LOYALTY_ID, 256), (s.DEVICE_ID, 256), (s.COOKIE_ID, 256),
    (s.ITEM_ID, 256), (s.CATEGORY, 300), (s.TEXT, 10_000), (s.QUERY, 1_000), (s.STORE_ID, 100),
    (s.COLOR, 100), (s.SIZE, 100), (s.BRAND, 100),
]


@pytest.mark.parametrize(("column", "limit"), LIMIT_CASES)
def test_every_string_has_a_length_limit_named_in_the_error(column, limit):
    assert s.MAX_LENGTHS[column] == limit
    extra = {s.EVENT_TYPE: s.REVIEW} if column == s.TEXT else {}
    for df in _both({**extra, column: "x" * limit}):
        assert _validate(df).errors.empty  # the limit itself is allowed
    for df in _both({**extra, column: "x" * (limit + 1)}):
        res = _validate(df)
        assert _errors(res) == [(1, column, f"longer than {limit} characters")]
        assert len(res.valid) == len(df) - 1


def test_length_counts_characters_after_normalising():
    """256 decomposed "é" are 512 code points as sent, 256 characters as stored: allowed."""
    res = _validate([_row(customer_id="e\u0301" * 256)])
    assert res.errors.empty and len(res.valid[s.CUSTOMER_ID].iloc[0]) == 256


def test_a_huge_email_is_refused_before_hashing():
    res = _validate([_row(customer_id=None, email="a" * 300 + "@example.com")])
    assert _errors(res) == [(0, s.EMAIL, "longer than 256 characters")]


# -- timestamps ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ts", ["1500-01-01T00:00:00Z", "1677-09-21T00:12:43Z", "1999-12-31T23:59:59Z",
                                "0001-01-01T00:00:00+00:00"])
def test_timestamps_before_the_window_are_a_row_error_and_the_batch_is_kept(ts):
    for df in _both({s.TS: ts}):
        res = _validate(df)
        assert _errors(res) == [(1, s.TS, "before 2000-01-01T00:00:00+00:00 (the earliest time accepted)")]
        assert len(res.valid) == len(df) - 1


@pytest.mark.parametrize("ts", ["2262-04-12T00:00:00Z", "3000-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                                "2025-06-02T12:00:00.000001Z", "2025-06-03T00:00:00+02:00"])
def test_timestamps_more_than_a_day_ahead_are_a_row_error(ts):
    for df in _both({s.TS: ts}):
        res = _validate(df)
        assert _errors(res) == [(1, s.TS, "more than 1 day in the future")]
        assert len(res.valid) == len(df) - 1


def test_typed_timestamps_outside_nanosecond_range_are_row_errors():
    """A tz-aware column pandas keeps in microseconds (years 1500 and 3000): no crash, per-row errors."""
    n = BIG
    ts = pd.Series([pd.Timestamp("2025-01-01T10:00:00Z")] * n).astype("datetime64[us, UTC]")
    ts.iloc[1], ts.iloc[2] = pd.Timestamp("1500-01-01", tz="UTC"), pd.Timestamp("3000-01-01", tz="UTC")
    df = pd.DataFrame([_row(event_id=f"e{i}") for i in range(n)]).assign(ts=ts)
    res = _validate(df)
    assert [(r, f) for r, f, _ in _errors(res)] == [(1, s.TS), (2, s.TS)]
    assert len(res.valid) == n - 2 and str(res.valid[s.TS].dtype) == "datetime64[ns, UTC]"


def test_default_window_follows_the_clock():
    now = pd.Timestamp.now(tz="UTC")
    soon, later = now + pd.Timedelta(hours=1), now + pd.Timedelta(days=2)
    res = s.validate_events([_row(ts=soon.isoformat()), _row(event_id="e2", ts=later.isoformat())], HASHER)
    assert res.valid[s.EVENT_ID].tolist() == ["e1"] and _errors(res) == [(1, s.TS, "more than 1 day in the future")]


def test_event_limits_are_validated_and_frozen():
    lim = s.EventLimits(earliest="2010-01-01T00:00:00+01:00", max_ahead="2h", now="2025-01-01T00:00:00Z")
    assert lim.earliest == pd.Timestamp("2009-12-31T23:00:00Z") and lim.max_ahead == pd.Timedelta(hours=2)
    assert lim.window() == (pd.Timestamp("2009-12-31T23:00:00Z"), pd.Timestamp("2025-01-01T02:00:00Z"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        lim.max_ahead = pd.Timedelta(0)  # type: ignore[misc]
    with pytest.raises(ValueError, match="earliest must have a time zone"):
        s.EventLimits(earliest="2000-01-01")
    with pytest.raises(ValueError, match="max_ahead must be zero or more"):
        s.EventLimits(max_ahead=pd.Timedelta(hours=-1))
    far = pd.Timedelta(days=365 * 250)  # a valid Timedelta, but now + 250 years is past pandas' 2262
    with pytest.raises(ValueError, match="max_ahead: .* is past"):
        s.EventLimits(max_ahead=far)
    with pytest.raises(ValueError, match="earliest .* is after now"):
        s.EventLimits(earliest="2030-01-01T00:00:00Z", now="2025-01-01T00:00:00Z")
    with pytest.raises(ValueError, match="between"):
        s.EventLimits(earliest="1500-01-01T00:00:00Z")
    with pytest.raises(TypeError, match="earliest"):
        s.EventLimits(earliest=946684800)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_ahead"):
        s.EventLimits(max_ahead=86400)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_ahead: not a duration"):
        s.EventLimits(max_ahead="soon")


def test_window_edges_are_inclusive_and_one_tick_past_is_out():
    for ts in ("2000-01-01T00:00:00Z", "2025-06-02T12:00:00Z", "2025-06-02T14:00:00+02:00"):
        for df in _both({s.TS: ts}):
            res = _validate(df)
            assert res.errors.empty, ts
            assert res.valid.loc[res.valid[s.EVENT_ID] == "bad", s.TS].iloc[0] == pd.Timestamp(ts)
    for ts in ("1999-12-31T23:59:59.999999999Z", "2025-06-02T12:00:00.000000001Z"):
        for df in _both({s.TS: ts}):
            assert [(r, f) for r, f, _ in _errors(_validate(df))] == [(1, s.TS)], ts


def test_a_custom_window_is_applied():
    lim = s.EventLimits(earliest="2024-01-01T00:00:00Z", max_ahead=pd.Timedelta(0), now="2025-01-01T00:00:00Z")
    res = s.validate_events([_row(ts="2023-12-31T23:59:59Z"), _row(event_id="e2", ts="2025-01-01T00:00:01Z"),
                             _row(event_id="e3", ts="2025-01-01T00:00:00Z")], HASHER, limits=lim)
    assert res.valid[s.EVENT_ID].tolist() == ["e3"]
    assert _errors(res) == [(0, s.TS, "before 2024-01-01T00:00:00+00:00 (the earliest time accepted)"),
                            (1, s.TS, "more than 0 seconds in the future")]


# -- numbers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("column", [s.PRICE, s.QUANTITY, s.RATING, s.DURATION_S])
def test_nan_and_infinities_in_records_are_row_errors_and_null_stays_missing(column):
    """A JSON NaN is a value (an error), not a missing one; null is missing, which is fine."""
    for n in (5, BIG):
        recs = [_row(event_id=f"g{i}") for i in range(n)]
        for i, value in ((1, math.nan), (2, math.inf), (3, -math.inf)):
            recs[i] = _row(event_id=f"bad{i}", **{column: value})
        recs[4] = _row(event_id="null", **{column: None})
        res = _validate(recs)
        assert _errors(res) == [(i, column, "must be finite") for i in (1, 2, 3)]
        assert len(res.valid) == n - 3 and res.valid.loc[res.valid[s.EVENT_ID] == "null", column].isna().all()


def test_booleans_and_other_non_numbers_are_not_numbers():
    values = [True, False, np.True_, b"1", [1], {"v": 1}]
    for n in (len(values) + 1, BIG):
        recs = [_row(event_id=f"g{i}", quantity=1) for i in range(n)]
        for i, value in enumerate(values, start=1):
            recs[i][s.QUANTITY] = value
        res = _validate(recs)
        assert _errors(res) == [(i, s.QUANTITY, "must be a number") for i in range(1, len(values) + 1)]


@pytest.mark.parametrize("column", [
    pd.Series([1 + 2j] * BIG),
    pd.Series(pd.to_datetime(["2025-01-01"] * BIG)),
    pd.Series(pd.to_timedelta([90] * BIG, unit="s")),
])
def test_typed_columns_that_are_not_numbers_are_not_read_as_numbers(column):
    """pandas would read these as their real part or as nanoseconds: each is an error, not a coercion."""
    df = pd.DataFrame([_row(event_id=f"e{i}") for i in range(BIG)]).assign(duration_s=column)
    res = _validate(df)
    assert _errors(res) == [(i, s.DURATION_S, "must be a number") for i in range(BIG)]


def test_an_int_beyond_float_range_is_an_error_not_a_crash():
    for n in (2, BIG):
        recs = [_row(event_id=f"g{i}") for i in range(n)]
        recs[1][s.PRICE] = 10**400
        assert _errors(_validate(recs)) == [(1, s.PRICE, "must be finite")]


def test_booleans_and_huge_ints_are_not_identifiers():
    values = [True, np.False_, 2**70, -(2**63) - 1]
    for n in (len(values) + 1, BIG):
        recs = [_row(event_id=f"g{i}") for i in range(n)]
        for i, value in enumerate(values, start=1):
            recs[i] = _row(event_id=f"bad{i}", customer_id=value, device_id="d1")
        res = _validate(recs)
        assert _errors(res) == [(i, s.CUSTOMER_ID, "must be a string") for i in range(1, len(values) + 1)]
    res = _validate([_row(customer_id=12345)])  # an integer id is still its decimal text
    assert res.errors.empty and res.valid[s.CUSTOMER_ID].iloc[0] == "12345"


# -- empty records ------------------------------------------------------------------------------
@pytest.mark.parametrize("empty", [{}, {s.EVENT_ID: None, s.PRICE: None}, {s.CUSTOMER_ID: "  ", s.TEXT: ""}])
def test_an_empty_record_is_one_row_error(empty):
    for n in (1, 3, BIG):
        recs = [_row(event_id=f"g{i}") for i in range(n)]
        recs[n // 2] = empty
        res = _validate(recs)
        assert _errors(res) == [(n // 2, s.RECORD_FIELD, "empty event: no field has a value")]
        assert len(res.valid) == n - 1


def test_an_empty_frame_row_is_one_row_error():
    res = _validate(pd.DataFrame([{}, {}]))
    assert _errors(res) == [(0, "record", "empty event: no field has a value"),
                            (1, "record", "empty event: no field has a value")]


def test_a_record_that_is_not_an_object_is_a_row_error():
    res = _validate([_row(), "view", None])
    assert [(r, f) for r, f, _ in _errors(res)] == [(1, "record"), (2, "record")]
    assert res.valid[s.EVENT_ID].tolist() == ["e1"]


# -- duplicates and conflicts -------------------------------------------------------------------
def test_same_id_with_other_content_is_a_conflict_naming_the_first_row():
    for n in (3, BIG):
        recs = [_row(event_id=f"g{i}") for i in range(n)]
        recs[0] = _row(event_id="x", price=5)
        recs[2] = _row(event_id="x", price=6)
        res = _validate(recs)
        assert _errors(res) == [(2, s.EVENT_ID, "conflicts with row 0: same event_id, different content")]
        assert res.valid.loc[res.valid[s.EVENT_ID] == "x", s.PRICE].tolist() == [5.0]
        assert res.duplicates == ()


def test_identical_repeats_are_duplicates_even_when_spelled_differently():
    """Same content in canonical form (stripped, hashed email, number as text): a re-send, not a conflict."""
    first = _row(event_id="x", customer_id=None, email="Ann@Example.com", price=5)
    again = _row(event_id=" x ", customer_id=None, email=" ann@example.com ", price="5")
    for n in (3, BIG):
        recs = [first, again] + [_row(event_id=f"g{i}") for i in range(2, n)]
        res = _validate(recs)
        assert res.errors.empty and res.duplicates == ((1, "x"),)
        assert len(res.valid) == n - 1


def test_a_bad_first_copy_does_not_count():
    """The first VALID copy is the one kept; a later identical one is its duplicate."""
    recs = [_row(event_id="x", channel="fax"), _row(event_id="x"), _row(event_id="x"),
            _row(event_id="x", item_id="other")]
    res = _validate(recs)
    assert _errors(res) == [(0, s.CHANNEL, res.errors["reason"].iloc[0]),
                            (3, s.EVENT_ID, "conflicts with row 1: same event_id, different content")]
    assert res.duplicates == ((2, "x"),) and len(res.valid) == 1


def test_event_digest_matches_a_stored_copy_and_sees_every_field():
    row = _validate([_row(price=9.5, color="red")]).valid.iloc[0]
    stored = {c: row[c] for c in row.index}
    stored[s.TS] = int(row[s.TS].value)  # as a store keeps it: ns since the epoch, NaN for no number
    stored[s.QUANTITY] = float("nan")
    assert s.event_digest(row) == s.event_digest(stored) == s.event_digest({**stored, s.TIMEZONE: None})
    for col, other in ((s.PRICE, 9.75), (s.COLOR, "blue"), (s.TS, stored[s.TS] + 1), (s.TIMEZONE, "UTC")):
        assert s.event_digest({**stored, col: other}) != s.event_digest(stored), col


# -- time zone column ---------------------------------------------------------------------------
def test_timezone_is_an_optional_string_column():
    assert s.TIMEZONE == "timezone"
    assert s.TIMEZONE in s.OPTIONAL_COLUMNS and s.TIMEZONE in s.STRING_COLUMNS
    assert s.TIMEZONE not in s.CANONICAL_COLUMNS


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/Argentina/Buenos_Aires", "UTC", "Asia/Kolkata"])
def test_known_time_zones_are_kept(zone):
    for df in _both({s.TIMEZONE: f" {zone} "}):
        res = _validate(df)
        assert res.errors.empty
        assert res.valid.loc[res.valid[s.EVENT_ID] == "bad", s.TIMEZONE].iloc[0] == zone


@pytest.mark.parametrize("zone", ["Mars/Olympus", "europe/paris", "localtime", "Factory", "../etc/passwd",
                                  "America", "/usr/share/zoneinfo/UTC", "Europe/Paris\x00", "+02:00"])
def test_unknown_time_zones_are_a_row_error_naming_the_field(zone):
    for df in _both({s.TIMEZONE: zone}):
        res = _validate(df)
        assert (1, s.TIMEZONE, "unknown time zone (expected an IANA name such as Europe/Paris)") in _errors(res)
        assert set(res.errors["row"]) == {1} and set(res.errors["field"]) == {s.TIMEZONE}


def test_timezone_column_only_in_output_when_sent():
    assert s.TIMEZONE not in _validate([_row()]).valid.columns
    assert _validate([_row(timezone=None)]).valid[s.TIMEZONE].isna().all()


# -- helpers for other callers ------------------------------------------------------------------
def test_value_problems_and_is_time_zone():
    assert s.value_problems(s.CUSTOMER_ID, " c1 ") == ()
    assert s.value_problems(s.CUSTOMER_ID, "c\u200b1") == ("contains disallowed character U+200B (format)",)
    assert s.value_problems(s.QUERY, "q" * 1001) == ("longer than 1000 characters",)
    assert s.is_time_zone("Europe/Paris") and not s.is_time_zone("Europe/Atlantis")


def test_caller_frame_is_not_modified():
    df = pd.DataFrame({k: pd.Series([v, v], dtype=object) for k, v in _row().items()})
    df.loc[1, s.CUSTOMER_ID] = "a\ud800"
    df.loc[0, s.ITEM_ID] = "e\u0301"
    before = df.copy()
    _validate(df)
    pd.testing.assert_frame_equal(df, before)
