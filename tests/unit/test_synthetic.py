"""The synthetic generator: canonical output, determinism, and the planted structure checked against truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import catalog, schema
from features.catalog import CATALOG_COLUMNS, read_catalog, validate_catalog
from features.schema import (
    CATEGORY,
    CHANNEL,
    COLOR,
    EMAIL,
    EVENT_ID,
    EVENT_TYPE,
    IDENTIFIER_COLUMNS,
    ITEM_ID,
    NEGATIVE,
    PHONE,
    PROFILE_ID,
    PURCHASE,
    RATING,
    RETURN,
    REVIEW,
    TEXT,
    TS,
    VIEW,
    IdentifierHasher,
    rating_to_sentiment,
    validate_events,
)
from features.synthetic import (
    COMPLEMENT_ITEM_ID,
    COMPLEMENTS,
    IDENTIFIER_TYPE,
    IDENTIFIER_VALUE,
    IDENTITIES,
    ITEM_COLORS,
    LABEL,
    PERSON_ID,
    PERSONS,
    REPLENISH_DAYS,
    REPLENISHMENT,
    SENTIMENT,
    SHARED_DEVICES,
    SyntheticConfig,
    SyntheticData,
    event_person_ids,
    generate,
    read,
    write,
)

CONFIG = SyntheticConfig(customers=800, days=90, seed=3)


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(CONFIG)


@pytest.fixture(scope="module")
def with_person(data: SyntheticData) -> pd.DataFrame:
    return data.events.assign(person=event_person_ids(data))


def test_events_are_canonical(data: SyntheticData) -> None:
    ev = data.events
    result = validate_events(ev)
    assert result.errors.empty, result.errors.head()
    assert len(result.valid) == len(ev) > 10 * CONFIG.customers
    assert ev[EVENT_ID].is_unique
    assert str(ev[TS].dtype) == "datetime64[ns, UTC]"
    start = CONFIG.start_ts
    assert start == pd.Timestamp("2025-01-01", tz="UTC")  # the default when neither start nor end is pinned
    assert ev[TS].min() >= start and ev[TS].max() < start + pd.Timedelta(days=CONFIG.days)
    hasher = IdentifierHasher.from_env()
    for col in (EMAIL, PHONE):
        vals = ev[col].dropna()
        assert len(vals) and vals.map(hasher.is_hashed).all()
    assert data.items["name"].notna().all() and data.items[ITEM_ID].is_unique


def test_deterministic_for_a_seed() -> None:
    small = SyntheticConfig(customers=120, days=30, seed=5)
    a, b = generate(small), generate(small)
    pd.testing.assert_frame_equal(a.events, b.events)
    for name in a.truth:
        pd.testing.assert_frame_equal(a.truth[name], b.truth[name])
    c = generate(SyntheticConfig(customers=120, days=30, seed=6))
    assert not c.events[TS].equals(a.events[TS])


def test_every_event_has_a_true_person_and_identifiers_are_not_shared(data: SyntheticData,
                                                                      with_person: pd.DataFrame) -> None:
    assert with_person["person"].notna().all()
    ids = data.truth[IDENTITIES]
    assert not ids.duplicated([IDENTIFIER_TYPE, IDENTIFIER_VALUE]).any()
    # every identifier value in the events is in the truth (shared devices in their own table)
    shared = set(data.truth[SHARED_DEVICES][IDENTIFIER_VALUE])
    for col in IDENTIFIER_COLUMNS:
        known = set(ids.loc[ids[IDENTIFIER_TYPE] == col, IDENTIFIER_VALUE]) | shared
        assert set(data.events[col].dropna()) <= known
    # fragmentation: many events carry one identifier only, some carry two
    n_ids = data.events[list(IDENTIFIER_COLUMNS)].notna().sum(axis=1)
    assert (n_ids == 1).mean() > 0.4 and (n_ids >= 2).mean() > 0.1
    # planted shared devices are used by more persons than the identity guard allows
    per_device = data.truth[SHARED_DEVICES].groupby(IDENTIFIER_VALUE)[PERSON_ID].nunique()
    assert len(per_device) >= 1 and (per_device > 3).all()


def test_category_preferences(data: SyntheticData, with_person: pd.DataFrame) -> None:
    persons = data.truth[PERSONS].set_index(PERSON_ID)
    views = with_person.loc[with_person[EVENT_TYPE] == VIEW, ["person", CATEGORY]]
    pref = persons["preferred_categories"].map(set)
    in_pref = [c in pref[p] for p, c in zip(views["person"], views[CATEGORY], strict=True)]
    assert np.mean(in_pref) > 0.8
    assert persons["preferred_categories"].map(len).between(1, 3).all()


def test_complements_are_bought_after(data: SyntheticData, with_person: pd.DataFrame) -> None:
    buys = with_person.loc[with_person[EVENT_TYPE] == PURCHASE, ["person", ITEM_ID, TS]]
    comp = data.truth[COMPLEMENTS]
    x = buys.merge(comp, on=ITEM_ID)
    y = buys.rename(columns={ITEM_ID: COMPLEMENT_ITEM_ID, TS: "ts_y"})
    j = x.merge(y, on=["person", COMPLEMENT_ITEM_ID], how="left")
    lag = (j["ts_y"] - j[TS]).dt.total_seconds() / 86400
    j["hit"] = lag.between(0.5, 14.5)
    followed = j.groupby(["person", ITEM_ID, TS])["hit"].any()
    assert len(followed) > 50
    # planted with probability 0.7, thinned only for churners near their end
    assert followed.mean() > 0.5


def test_replenishment_cadence(data: SyntheticData, with_person: pd.DataFrame) -> None:
    truth = data.truth[REPLENISHMENT].set_index(ITEM_ID)[REPLENISH_DAYS]
    buys = with_person.loc[(with_person[EVENT_TYPE] == PURCHASE) & with_person[ITEM_ID].isin(truth.index)]
    buys = buys.sort_values(TS)
    gap = buys.groupby(["person", ITEM_ID])[TS].diff().dt.total_seconds() / 86400
    ratio = (gap / buys[ITEM_ID].map(truth).astype(float)).dropna()
    assert len(ratio) > 30
    assert 0.9 < ratio.median() < 1.1


def test_churners_stop_and_fade(data: SyntheticData, with_person: pd.DataFrame) -> None:
    persons = data.truth[PERSONS].set_index(PERSON_ID)
    rate = persons["churned"].mean()
    assert 0.1 < rate < 0.3
    churned = persons.loc[persons["churned"]]
    day = (churned["churn_date"] - CONFIG.start_ts).dt.days
    assert day.between(0.5 * CONFIG.days, 0.95 * CONFIG.days).all()
    ev = with_person.join(persons["churn_date"], on="person")
    assert not (ev["churn_date"].notna() & (ev[TS] >= ev["churn_date"])).any()
    # fading: the 3 weeks before churn are quieter than the 3 weeks before that
    before = (ev["churn_date"] - ev[TS]).dt.total_seconds() / 86400
    last, prior = before.between(0, 21).sum(), before.between(21, 42).sum()
    assert last < 0.75 * prior


def test_reviews_follow_experience(data: SyntheticData) -> None:
    ev = data.events
    sent = data.truth[SENTIMENT].set_index(EVENT_ID)[LABEL]
    reviews = ev.loc[ev[EVENT_TYPE] == REVIEW]
    assert reviews[TEXT].notna().all()
    labels = reviews[EVENT_ID].map(sent)
    assert labels.notna().all()
    assert (reviews[RATING].map(rating_to_sentiment) == labels).all()
    # a review written after the person returned that item is negative (joined through the true person,
    # since returns carry store/web identifiers)
    person = event_person_ids(data)
    rets = ev.loc[ev[EVENT_TYPE] == RETURN, [ITEM_ID, TS]].assign(person=person).rename(columns={TS: "ts_ret"})
    revs = reviews[[EVENT_ID, ITEM_ID, TS]].assign(person=person[reviews.index], neg=(labels == NEGATIVE).to_numpy())
    j = revs.merge(rets, on=["person", ITEM_ID], how="left")
    after = (j["ts_ret"] < j[TS]).groupby(j[EVENT_ID]).any()
    neg = revs.set_index(EVENT_ID)["neg"].reindex(after.index)
    assert after.sum() > 5
    assert neg[after].mean() > 0.75 and neg[~after].mean() < 0.35
    # the texts vary: many distinct reviews, and sentiment words differ by label
    assert reviews[TEXT].nunique() > 0.5 * len(reviews)


def test_write_read_roundtrip(tmp_path: Path) -> None:
    d = generate(SyntheticConfig(customers=60, days=20, seed=1))
    write(d, tmp_path / "out")
    back = read(tmp_path / "out")
    pd.testing.assert_frame_equal(back.events, d.events)
    assert set(back.truth) == set(d.truth)
    pd.testing.assert_frame_equal(back.items, d.items)
    # items.parquet is a catalog file as `mirror catalog load` reads it
    checked = validate_catalog(read_catalog(tmp_path / "out" / "items.parquet"))
    assert checked.errors.empty and len(checked.valid) == len(d.items)
    with pytest.raises(FileNotFoundError, match="events.parquet"):
        read(tmp_path / "missing")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"customers": 0}, "customers"), ({"days": 3}, "days"), ({"churn_rate": 1.5}, "churn_rate"),
     ({"start": "not a date"}, "start"), ({"items": 5}, "items"), ({"end": "soon"}, "end"),
     ({"end": "2025-03-01T12:00"}, "end must be a date"),
     ({"start": "2025-01-01", "end": "2025-03-01"}, "not both"), ({"out_of_stock_share": 2.0}, "out_of_stock_share")],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the catalog record, the data's end date and the events' time zones
# ---------------------------------------------------------------------------------------------
def test_items_are_a_valid_catalog(data: SyntheticData) -> None:
    items = data.items
    assert tuple(items.columns) == CATALOG_COLUMNS
    checked = validate_catalog(items)
    assert checked.errors.empty, checked.errors.head()
    assert len(checked.valid) == len(items) == CONFIG.n_items
    for col in (catalog.NAME, catalog.CATEGORY, catalog.BRAND, catalog.PRICE, catalog.URL, catalog.IMAGE_URL):
        assert items[col].notna().all(), col
    assert (items[catalog.CURRENCY] == "USD").all()
    assert items[catalog.URL].str.startswith("https://shop.example/").all() and items[catalog.URL].is_unique
    assert items[catalog.IMAGE_URL].str.startswith("https://shop.example/").all()
    # one-level category paths: the names planted truth uses
    assert not items[catalog.CATEGORY].str.contains(">").any()
    persons_cats = {c for cats in data.truth[PERSONS]["preferred_categories"] for c in cats}
    assert persons_cats <= set(items[catalog.CATEGORY])
    # explicit sensitivity: health and intimates; baby is left to the guard's milder life-event tier
    flagged = set(items.loc[items[catalog.SENSITIVE], catalog.CATEGORY])
    assert flagged == {"health", "intimates"}
    assert not items.loc[items[catalog.CATEGORY] == "baby", catalog.SENSITIVE].any()
    # replenishment only for consumables, and the same intervals the events were planted with
    assert (items[catalog.REPLENISH_DAYS].notna() == items[catalog.CONSUMABLE]).all()
    truth = data.truth[REPLENISHMENT].set_index(ITEM_ID)[REPLENISH_DAYS]
    cons = items.loc[items[catalog.CONSUMABLE]].set_index(ITEM_ID)[catalog.REPLENISH_DAYS]
    pd.testing.assert_series_equal(cons, truth, check_names=False, check_index_type=False)
    # a small seeded share is out of stock
    assert 0 < (~items[catalog.IN_STOCK]).mean() < 0.1


def test_colour_is_truth_not_catalog(data: SyntheticData) -> None:
    colors = data.truth[ITEM_COLORS]
    assert COLOR not in data.items.columns
    assert colors[ITEM_ID].tolist() == data.items[ITEM_ID].tolist() and colors[COLOR].notna().all()


def test_added_fields_leave_the_events_of_a_seed_unchanged() -> None:
    """Stock and time zones draw from their own streams: changing them changes nothing else."""
    base = SyntheticConfig(customers=150, days=30, seed=4)
    a = generate(base)
    b = generate(SyntheticConfig(customers=150, days=30, seed=4, out_of_stock_share=0.5, timezone_share=0.0))
    keep = [c for c in a.events.columns if c != getattr(schema, "TIMEZONE", None)]
    pd.testing.assert_frame_equal(a.events[keep], b.events[keep])
    for name in a.truth:
        pd.testing.assert_frame_equal(a.truth[name], b.truth[name])
    other = [c for c in CATALOG_COLUMNS if c != catalog.IN_STOCK]
    pd.testing.assert_frame_equal(a.items[other], b.items[other])
    assert (~b.items[catalog.IN_STOCK]).mean() > 0.3


def test_end_pins_the_last_day() -> None:
    cfg = SyntheticConfig(customers=80, days=20, seed=2, end="2025-03-01")
    assert cfg.start_ts == pd.Timestamp("2025-02-09", tz="UTC")
    assert cfg.end_ts == pd.Timestamp("2025-03-01", tz="UTC")
    ts = generate(cfg).events[TS]
    assert ts.min() >= cfg.start_ts and ts.max() < cfg.end_ts
    assert ts.max() > cfg.end_ts - pd.Timedelta(days=2)  # the data run up to the end, not just before it
    pinned = generate(SyntheticConfig(customers=80, days=20, seed=2, start="2025-02-09"))
    pd.testing.assert_frame_equal(pinned.events, generate(cfg).events)


def test_web_and_app_events_carry_the_persons_time_zone(data: SyntheticData, with_person: pd.DataFrame) -> None:
    tz_col = getattr(schema, "TIMEZONE", None)
    if tz_col is None:
        pytest.skip("features.schema has no TIMEZONE column yet")
    ev = with_person
    has = ev[tz_col].notna()
    web_app = ev[CHANNEL].isin(["web", "app"])
    assert not (has & ~web_app).any()
    assert 0.4 < has[web_app].mean() < 0.8  # a share (timezone_share = 0.6), not every event
    planted = data.truth[PERSONS].set_index(PERSON_ID)["timezone"]
    assert (ev.loc[has, tz_col] == ev.loc[has, "person"].map(planted)).all()
    assert validate_events(data.events).errors.empty


# ---------------------------------------------------------------------------------------------
# journeys: return reasons, declared preferences, past decisions with planted effects
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def journeys() -> SyntheticData:
    return generate(SyntheticConfig(customers=1200, days=60, seed=7, journeys=True))


def test_journeys_are_off_by_default_and_add_only_their_own_events() -> None:
    from features.synthetic import JOURNEY_TABLES

    base = SyntheticConfig(customers=150, days=30, seed=4)
    a = generate(base)
    b = generate(SyntheticConfig(customers=150, days=30, seed=4, journeys=True))
    assert not set(JOURNEY_TABLES) & set(a.truth) and set(JOURNEY_TABLES) <= set(b.truth)
    old = b.events.loc[~b.events[EVENT_ID].str.contains("-j")].reset_index(drop=True)
    cols = list(a.events.columns)
    pd.testing.assert_frame_equal(old[cols], a.events)  # the history is the same; the journeys come on top
    for name in a.truth:
        pd.testing.assert_frame_equal(a.truth[name], b.truth[name])


def test_journey_events_are_canonical_and_declared_preferences_are_true(journeys: SyntheticData) -> None:
    from features.synthetic import DECLARED_PREFERENCES, RETURN_REASON_TRUTH

    ev = journeys.events
    assert validate_events(ev).errors.empty and ev[EVENT_ID].is_unique and ev[TS].is_monotonic_increasing
    person = event_person_ids(journeys)
    persons = journeys.truth[PERSONS].set_index(PERSON_ID)
    prefs = ev.loc[ev[EVENT_TYPE] == schema.PREFERENCE].assign(person=person)
    declared = journeys.truth[DECLARED_PREFERENCES]
    assert len(prefs) == len(declared) > 100
    for key, truth_col in ((schema.PREFERRED_CHANNEL, "preferred_channel"), (schema.DECLARED_TIMEZONE, "timezone")):
        rows = prefs.loc[prefs[schema.PREFERENCE_KEY] == key]
        assert len(rows) and (rows[schema.PREFERENCE_VALUE] == rows["person"].map(persons[truth_col])).all()
    interests = prefs.loc[prefs[schema.PREFERENCE_KEY] == schema.INTEREST]
    assert all(c in persons.at[p, "preferred_categories"] for p, c in zip(interests["person"],
                                                                           interests[schema.PREFERENCE_VALUE],
                                                                           strict=True))
    # every return has a reason, fit reasons follow the person's planted fit
    rets = ev.loc[ev[EVENT_TYPE] == RETURN]
    assert rets[schema.RETURN_REASON].notna().all() and ev.loc[ev[EVENT_TYPE] != RETURN, schema.RETURN_REASON].isna().all()
    reasons = journeys.truth[RETURN_REASON_TRUTH]
    small = reasons.loc[reasons["size_fit"] == "runs_small", schema.RETURN_REASON]
    assert (small == "too_small").mean() > 0.5 and (reasons.loc[reasons["size_fit"] == "runs_large",
                                                                 schema.RETURN_REASON] == "too_small").mean() == 0


def test_planted_decisions_have_a_holdout_and_effects_that_differ_by_customer(journeys: SyntheticData) -> None:
    from features.identity import resolve_identities
    from features.store import DECISION_COLUMNS
    from features.synthetic import (
        CONVERSION_EFFECT,
        DECISIONS,
        EFFECT,
        PLANTED_ACTIONS,
        RESPONDED,
        TRIED_ON_OFFER,
        UPLIFT,
    )
    from serving import nba

    log, effects = journeys.truth[DECISIONS], journeys.truth[UPLIFT]
    assert tuple(log.columns) == DECISION_COLUMNS and log["decision_id"].is_unique and len(log) > 300
    assert set(PLANTED_ACTIONS) == set(log["action"]) and set(PLANTED_ACTIONS) <= set(nba.ACTION_CHANNELS) | {
        TRIED_ON_OFFER}
    assert 0.2 < log["holdout"].mean() < 0.4
    assert (effects[EFFECT] < 0).mean() > 0.1 and (effects[EFFECT] > 0.1).mean() > 0.2  # some harmed, some helped
    assert (effects[CONVERSION_EFFECT].abs() <= effects[EFFECT].abs() + 1e-12).all()
    # the decisions' profile ids are the ones identity resolution gives the events
    ev = resolve_identities(journeys.events).assign(person=event_person_ids(journeys))
    pid_of = ev.drop_duplicates(PROFILE_ID).set_index(PROFILE_ID)["person"]
    assert (log[PROFILE_ID].map(pid_of) == effects[PERSON_ID]).all()
    # treated responses happen at the planted rate (base + effect), held-out ones at the base rate
    treated = ~effects["holdout"]
    from features.synthetic import BASE_RATE

    gap = effects.loc[treated, RESPONDED].mean() - (effects.loc[treated, BASE_RATE] + effects.loc[treated, EFFECT]).mean()
    assert abs(gap) < 0.03
    # some responses echo their decision id, never a held-out one
    echoed = set(journeys.events[schema.DECISION_ID].dropna())
    assert echoed and echoed <= set(log.loc[~log["holdout"], "decision_id"])
    # planted responses fall inside the window
    buys = ev.loc[ev[schema.DECISION_ID].notna()].set_index(schema.DECISION_ID)[TS]
    lag = (buys - log.set_index("decision_id")[TS].reindex(buys.index)).dt.total_seconds() / 86400
    assert lag.between(0, 7).all()
