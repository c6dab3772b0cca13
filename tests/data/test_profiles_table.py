"""The profile table on generated and real events: invariants, store agreement, RetailRocket counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.profiles import FEATURE_COLUMNS, build_profiles
from features.schema import CHANNEL, EVENT_ID, EVENT_TYPE, IDENTIFIER_COLUMNS, PROFILE_ID, PURCHASE, TS

synthetic = pytest.importorskip("features.synthetic")


def truth_profiles(events: pd.DataFrame, identities: pd.DataFrame) -> pd.Series:
    """Oracle profile id per event: the true person of its first identifier (no resolver needed)."""
    out = pd.Series(pd.NA, index=events.index, dtype="string")
    for col in IDENTIFIER_COLUMNS:
        ids = identities[identities["identifier_type"] == col]
        lookup = pd.Series(ids["person_id"].to_numpy(), index=ids["identifier_value"].astype(str).to_numpy())
        lookup = lookup[~lookup.index.duplicated()]
        hit = events[col].astype("string").map(lookup)
        out = out.fillna(hit.astype("string"))
    return out


@pytest.fixture(scope="module")
def data():  # small: a few hundred customers
    return synthetic.generate(synthetic.SyntheticConfig(customers=300, days=60, seed=3))


@pytest.fixture(scope="module")
def events(data) -> pd.DataFrame:
    ev = data.events
    pids = truth_profiles(ev, data.truth["identities"])
    return ev.assign(**{PROFILE_ID: pids})[pids.notna().to_numpy()]


def test_synthetic_profile_table_invariants(events: pd.DataFrame) -> None:
    as_of = events[TS].min() + pd.Timedelta(days=45)
    p = build_profiles(events, as_of)
    before = events[events[TS] < as_of]
    assert p[PROFILE_ID].is_unique and set(p[PROFILE_ID]) == set(before[PROFILE_ID])
    assert not p[list(FEATURE_COLUMNS)].isna().any().any()
    assert p["n_events"].sum() == len(before)
    assert p["n_purchase"].sum() == (before["event_type"] == PURCHASE).sum()
    assert (p["tenure_days"] >= p["days_since_last_event"]).all()
    assert (p["days_since_last_event"] > 0).all() and (p["tenure_days"] <= 45).all()
    bought = p[p["n_orders"] >= 2]
    assert len(bought) and (bought["purchase_cadence_days"] < 45).all()


def test_store_matches_offline_build_on_synthetic(events: pd.DataFrame, tmp_path: Path) -> None:
    from features.store import SQLiteProfileStore

    store = SQLiteProfileStore(tmp_path / "s.db")
    sample = events[events[PROFILE_ID].isin(sorted(events[PROFILE_ID].unique())[:40])]
    res = store.load_events(sample.drop(columns=[PROFILE_ID]), batch_size=2_000, progress=False)
    assert res.accepted == len(sample)
    as_of = sample[TS].max() + pd.Timedelta(seconds=1)
    pids = list(res.profile_ids)
    # default consent: rows are built from the consented sources only (no store, social, pixels, feedback)
    from features.consent import DEFAULT_PURPOSES, SOURCE_PURPOSES, source_of, usable_sources

    stored = store.events_for(pids)
    ok = usable_sources(DEFAULT_PURPOSES)
    consented = stored[[source_of(t, c) in ok for t, c in zip(stored[EVENT_TYPE], stored[CHANNEL], strict=True)]]
    with_events = sorted(consented[PROFILE_ID].unique())
    default = store.features_for(with_events, as_of)
    pd.testing.assert_frame_equal(default, build_profiles(consented, as_of))
    assert len(consented) < len(stored)  # the synthetic people do visit stores
    # every source granted: the offline build of everything
    for pid in pids:
        for purpose in SOURCE_PURPOSES:
            store.set_consent(pid, purpose, True)
    online = store.features_for(pids, as_of)
    pd.testing.assert_frame_equal(online, build_profiles(stored, as_of))
    # every stored event is there exactly once
    assert sorted(store.export_events()[EVENT_ID]) == sorted(sample[EVENT_ID])
    assert np.isclose(online["n_events"].sum(), len(sample))


@pytest.mark.slow
def test_retailrocket_sample_profiles(shared_data: Path) -> None:
    from features.loaders import load_retailrocket

    ev = load_retailrocket(shared_data / "retailrocket")
    ev = ev.assign(**{PROFILE_ID: "rr_" + ev["cookie_id"].astype(str)})
    as_of = ev[TS].max() + pd.Timedelta(seconds=1)
    p = build_profiles(ev, as_of)
    assert len(p) == ev["cookie_id"].nunique()
    assert p["n_purchase"].sum() == (ev["event_type"] == PURCHASE).sum() == 46
    assert p["n_events"].sum() == len(ev) == 9_385
    assert not p[list(FEATURE_COLUMNS)].isna().any().any()
