"""Phone numbers normalise to E.164 whatever their formatting, in the deployment's region (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.schema import (
    CUSTOMER_ID,
    DEFAULT_PHONE_REGION,
    PHONE,
    PHONE_REGION_ENV,
    IdentifierHasher,
    _validate_rowwise,
    _validate_vectorised,
    normalise_phone,
    validate_events,
)
from features.store import SQLiteProfileStore

HASHER = IdentifierHasher("phone-test-key")
SAME_NUMBER = ("+1 (415) 555-0100", "415-555-0100", "00 1 415 555 0100", "011 1 415 555 0100", "(415) 555 0100",
               "+14155550100", "1-415-555-0100", "415.555.0100 ext. 12")
NOT_NUMBERS = ("555-0100", "12", "0123456789012345678", "call me", "+", "+999 12345", "x" * 200)


def _event(n: int, phone: object) -> dict[str, object]:
    return {"event_id": f"e{n}", "ts": "2024-05-01T00:00:00Z", "channel": "store", "event_type": "purchase",
            "item_id": "i1", "phone": phone}


@pytest.mark.parametrize("path", [_validate_rowwise, _validate_vectorised])
def test_every_formatting_of_one_number_is_one_hash_in_both_validation_paths(path) -> None:
    result = path([_event(n, p) for n, p in enumerate(SAME_NUMBER)], HASHER)
    assert result.errors.empty
    assert set(result.valid[PHONE]) == {HASHER.hash("+14155550100")}


@pytest.mark.parametrize("path", [_validate_rowwise, _validate_vectorised])
def test_a_number_that_is_none_is_an_error_naming_the_field(path) -> None:
    result = path([_event(n, p) for n, p in enumerate(NOT_NUMBERS)] + [_event(99, "+1 415 555 0100")], HASHER)
    assert result.errors["field"].tolist() == [PHONE] * len(NOT_NUMBERS)
    assert result.errors["row"].tolist() == list(range(len(NOT_NUMBERS)))
    assert set(result.errors["reason"]) == {"not a valid phone"} and len(result.valid) == 1


def test_national_formats_are_read_in_the_configured_region(monkeypatch: pytest.MonkeyPatch) -> None:
    uk = IdentifierHasher("phone-test-key", "gb")
    assert uk.phone_region == "GB"
    assert uk.normalise_phone("020 7946 0958") == uk.normalise_phone("+44 20 7946 0958") == "+442079460958"
    assert HASHER.normalise_phone("020 7946 0958") is None  # in the US that is no number
    assert normalise_phone("415-555-0100", "GB") != normalise_phone("415-555-0100", "US")
    # the region comes from configuration when the hasher is made, never at import
    monkeypatch.setenv(PHONE_REGION_ENV, "FR")
    assert IdentifierHasher.from_env().phone_region == "FR"
    assert IdentifierHasher.from_env().normalise_phone("06 12 34 56 78") == "+33612345678"
    monkeypatch.delenv(PHONE_REGION_ENV)
    assert IdentifierHasher.from_env().phone_region == DEFAULT_PHONE_REGION
    monkeypatch.setenv(PHONE_REGION_ENV, "Atlantis")
    with pytest.raises(ValueError, match=PHONE_REGION_ENV):
        IdentifierHasher.from_env()


def test_a_store_finds_the_customer_by_any_formatting(tmp_path: Path) -> None:
    store = SQLiteProfileStore(tmp_path / "s.db", HASHER)
    valid = validate_events([{**_event(1, "+1 (415) 555-0100"), CUSTOMER_ID: "c1"}], HASHER).valid
    pid = store.append_events(valid, validated=True).profile_ids[0]
    assert {store.resolve({PHONE: p}) for p in SAME_NUMBER} == {pid}
    assert store.resolve({PHONE: "555-0100"}) is None
    assert store.resolve_many(PHONE, ["415 555 0100", "nope"]) == {"415 555 0100": pid, "nope": None}
    stored = store.events_for([pid])[PHONE].tolist()
    assert stored == [HASHER.hash("+14155550100")] and "415" not in stored[0]


def test_pre_hashed_numbers_pass_through_unchanged() -> None:
    hashed = HASHER.hash("+14155550100")
    out = validate_events(pd.DataFrame([_event(1, hashed)]), HASHER)
    assert out.errors.empty and out.valid[PHONE].tolist() == [hashed]
