"""Identity resolution: precision/recall against synthetic truth, transitivity, order-independence, guard."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.identity import IdentityConfig, IdentityGraph, LinkResult, resolve_identities
from features.schema import (
    COOKIE_ID,
    CUSTOMER_ID,
    DEVICE_ID,
    EMAIL,
    IDENTIFIER_COLUMNS,
    LOYALTY_ID,
    PROFILE_ID,
)
from features.synthetic import SyntheticConfig, event_person_ids, generate
from training.evaluation import pairwise_precision_recall


def _pid(tok: str) -> str:
    return "p_" + hashlib.sha1(tok.encode()).hexdigest()[:16]


def _frame(rows: list[dict[str, str]]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.array([r.get(c) for r in rows], dtype="string") for c in IDENTIFIER_COLUMNS})


@pytest.fixture(scope="module")
def synthetic():  # type: ignore[no-untyped-def]
    return generate(SyntheticConfig(customers=3000, days=60, seed=11))


def test_precision_recall_against_truth(synthetic) -> None:  # type: ignore[no-untyped-def]
    resolved = resolve_identities(synthetic.events)
    truth = event_person_ids(synthetic)
    assert truth.notna().all()
    precision, recall = pairwise_precision_recall(truth, resolved[PROFILE_ID])
    assert precision >= 0.99 and recall >= 0.99
    assert resolved[PROFILE_ID].nunique() == pytest.approx(truth.nunique(), rel=0.01)
    # the caller's frame is untouched
    assert PROFILE_ID not in synthetic.events.columns


def test_shared_device_guard_protects_precision(synthetic) -> None:  # type: ignore[no-untyped-def]
    truth = event_person_ids(synthetic)
    loose = resolve_identities(synthetic.events, IdentityConfig(max_profiles_per_device=100))
    precision, _ = pairwise_precision_recall(truth, loose[PROFILE_ID])
    assert precision < 0.99  # the planted shared devices merge unrelated persons without the guard


def test_transitive_and_named_by_min_token() -> None:
    ev = _frame([
        {CUSTOMER_ID: "a", COOKIE_ID: "k1"},
        {COOKIE_ID: "k1", EMAIL: "h:" + "0" * 32},
        {EMAIL: "h:" + "0" * 32, LOYALTY_ID: "L9"},
        {LOYALTY_ID: "L8"},
    ])
    out = resolve_identities(ev)
    assert out[PROFILE_ID].iloc[:3].nunique() == 1
    assert out[PROFILE_ID].iloc[3] != out[PROFILE_ID].iloc[0]
    assert out[PROFILE_ID].iloc[0] == _pid(min("customer_id:a", "cookie_id:k1", "email:h:" + "0" * 32, "loyalty_id:L9"))
    assert out[PROFILE_ID].iloc[3] == _pid("loyalty_id:L8")


def test_guard_rule_exactly() -> None:
    rows = [{DEVICE_ID: "tablet", CUSTOMER_ID: c} for c in ("c1", "c2", "c3")]
    three = resolve_identities(_frame(rows))
    assert three[PROFILE_ID].nunique() == 1  # 3 customers on one device: still linked
    four = resolve_identities(_frame([*rows, {DEVICE_ID: "tablet", CUSTOMER_ID: "c4"}, {DEVICE_ID: "tablet"}]))
    assert four[PROFILE_ID].iloc[:4].nunique() == 4  # 4: shared, links nothing
    assert four[PROFILE_ID].iloc[4] == _pid("device_id:tablet")


def test_deterministic_and_order_independent(synthetic) -> None:  # type: ignore[no-untyped-def]
    ev = synthetic.events.iloc[:20000]
    a = resolve_identities(ev)
    perm = np.random.default_rng(0).permutation(len(ev))
    b = resolve_identities(ev.iloc[perm]).loc[a.index]
    assert a[PROFILE_ID].equals(b[PROFILE_ID])


def _records(df: pd.DataFrame) -> list[dict[str, str]]:
    recs = df[list(IDENTIFIER_COLUMNS)].astype(object).to_dict("records")
    return [{k: v for k, v in r.items() if isinstance(v, str)} for r in recs]


def test_incremental_matches_offline(synthetic) -> None:  # type: ignore[no-untyped-def]
    ev = synthetic.events.iloc[:8000]
    offline = resolve_identities(ev)[PROFILE_ID].tolist()
    g = IdentityGraph()
    for r in _records(ev):
        g.observe(r)
    assert [g.lookup(r) for r in _records(ev)] == offline


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from([CUSTOMER_ID, DEVICE_ID, COOKIE_ID, LOYALTY_ID]),
            st.sampled_from(["1", "2", "3", "4", "5", "6"]),
            min_size=1, max_size=3,
        ),
        min_size=1, max_size=25,
    ),
    st.randoms(use_true_random=False),
)
def test_incremental_any_order_equals_offline(rows: list[dict[str, str]], rnd) -> None:  # type: ignore[no-untyped-def]
    cfg = IdentityConfig(max_profiles_per_device=2)
    offline = resolve_identities(_frame(rows), cfg)[PROFILE_ID].tolist()
    order = list(range(len(rows)))
    rnd.shuffle(order)
    g = IdentityGraph(cfg)
    for i in order:
        g.observe(rows[i])
    assert [g.lookup(r) for r in rows] == offline


def test_observe_reports_merges() -> None:
    g = IdentityGraph()
    a = g.observe({COOKIE_ID: "k1"})
    b = g.observe({CUSTOMER_ID: "c1"})
    assert a.profile_id != b.profile_id and a.merged == () and b.merged == ()
    m = g.observe({CUSTOMER_ID: "c1", COOKIE_ID: "k1"})
    assert isinstance(m, LinkResult)
    assert m.profile_id == _pid("cookie_id:k1")  # "cookie_id:k1" < "customer_id:c1"
    assert m.merged == (b.profile_id,)
    assert g.lookup({CUSTOMER_ID: "c1"}) == m.profile_id and len(g) == 1
    assert g.lookup({CUSTOMER_ID: "nobody"}) is None
    with pytest.raises(ValueError, match="unknown identifier"):
        g.observe({"shoe_size": "42"})
    with pytest.raises(ValueError, match="at least one"):
        g.observe({})


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="identifier"):
        resolve_identities(pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="max_profiles_per_device"):
        IdentityConfig(max_profiles_per_device=0)


def test_empty_strings_missing_and_chunked_input_agree() -> None:
    """"" is no identifier; arrow chunking (what concat and parquet give) never changes a profile id."""
    a = _frame([{CUSTOMER_ID: "a", COOKIE_ID: ""}, {COOKIE_ID: ""}, {COOKIE_ID: "k1", CUSTOMER_ID: "a"}])
    b = _frame([{DEVICE_ID: "d", COOKIE_ID: "k1"}, {LOYALTY_ID: "L1"}])
    one = resolve_identities(_frame(_records(a) + _records(b)))
    chunked = resolve_identities(pd.concat([a, b], ignore_index=True))
    assert one[PROFILE_ID].equals(chunked[PROFILE_ID])
    ids = one[PROFILE_ID]
    assert ids.iloc[0] == ids.iloc[2] == ids.iloc[3] == _pid("cookie_id:k1") and pd.isna(ids.iloc[1])
    assert ids.iloc[4] == _pid("loyalty_id:L1")
