"""Validation of the canonical event schema: bad rows reported by row, field and reason; good rows kept."""

import pandas as pd

from features import schema as s


def _row(**kw):
    base = {s.EVENT_ID: "e1", s.TS: "2025-01-01T10:00:00Z", s.CHANNEL: "web", s.EVENT_TYPE: s.VIEW,
            s.CUSTOMER_ID: "c1", s.ITEM_ID: "i1"}
    base.update(kw)
    return base


def test_good_rows_kept_and_bad_rows_reported_by_field():
    df = pd.DataFrame([
        _row(),
        _row(event_id="e2", ts="2025-01-01T10:00:00"),
        _row(event_id="e3", channel="fax"),
        _row(event_id="e4", price="ten"),
        _row(event_id="e5", customer_id=None),
    ])
    res = s.validate_events(df)
    assert list(res.valid[s.EVENT_ID]) == ["e1"]
    got = {(r["row"], r["field"]) for r in res.error_records()}
    assert got == {(1, s.TS), (2, s.CHANNEL), (3, s.PRICE), (4, "identifiers")}


def test_timestamps_stored_as_utc():
    res = s.validate_events(pd.DataFrame([_row(ts="2025-01-01T12:00:00+02:00")]))
    assert res.valid[s.TS].iloc[0] == pd.Timestamp("2025-01-01T10:00:00Z")


def test_email_and_phone_are_hashed_never_raw():
    df = pd.DataFrame([_row(customer_id=None, email="  Ann@Example.COM", phone="+1 (555) 123-4567")])
    res = s.validate_events(df, s.IdentifierHasher("k"))
    row = res.valid.iloc[0]
    assert "example" not in row[s.EMAIL].lower() and "555" not in row[s.PHONE]
    # normalisation: the same address in another spelling hashes the same
    again = s.validate_events(pd.DataFrame([_row(customer_id=None, email="ann@example.com")]), s.IdentifierHasher("k"))
    assert again.valid.iloc[0][s.EMAIL] == row[s.EMAIL]
    other_key = s.validate_events(pd.DataFrame([_row(customer_id=None, email="ann@example.com")]), s.IdentifierHasher("k2"))
    assert other_key.valid.iloc[0][s.EMAIL] != row[s.EMAIL]


def test_duplicate_event_ids_are_idempotent_not_errors():
    res = s.validate_events(pd.DataFrame([_row(), _row()]))
    assert len(res.valid) == 1 and len(res.errors) == 0


def test_caller_frame_not_mutated():
    df = pd.DataFrame([_row(email="A@B.com")])
    before = df.copy()
    s.validate_events(df)
    pd.testing.assert_frame_equal(df, before)


def test_read_csv_strict_keeps_quoted_separators_and_refuses_extra_fields(tmp_path):
    """Quoted commas stay in the text; a row with more fields than the header is an error naming the file
    (pandas alone would turn the first field into the index and silently cut the text)."""
    import pytest

    good = tmp_path / "good.csv"
    pd.DataFrame({"text": ["awful, fell apart", "love it"], "n": [1, 2]}).to_csv(good, index=False)
    df = s.read_csv_strict(good)
    assert df["text"].tolist() == ["awful, fell apart", "love it"] and df.index.tolist() == [0, 1]
    for name, body in (("every_row.csv", "text\nawful, fell apart\nlove it, fits\n"),
                       ("one_row.csv", "text,n\nlove it,1\nawful, fell apart,2\n")):
        bad = tmp_path / name
        bad.write_text(body)
        with pytest.raises(ValueError, match=f"{name}.*more fields than the header"):
            s.read_csv_strict(bad)
    with pytest.raises(ValueError, match="every_row.csv"):
        s.read_events(tmp_path / "every_row.csv")


def test_read_table_reads_parquet_by_suffix_in_any_case_and_csv_otherwise(tmp_path):
    """One reader for events files and feature tables: parquet by suffix (.parquet/.PQ/...), else strict CSV."""
    frame = pd.DataFrame({"customer_id": ["a", "b"], "churn": [0, 1]})
    for name in ("t.parquet", "T.PARQUET", "t.pq"):
        frame.to_parquet(tmp_path / name)
        pd.testing.assert_frame_equal(s.read_table(tmp_path / name), frame)
    frame.to_csv(tmp_path / "t.csv", index=False)
    pd.testing.assert_frame_equal(s.read_table(tmp_path / "t.csv"), frame)
