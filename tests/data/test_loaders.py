"""Loaders map real data sets onto canonical events: fast tests on tiny hand-written files, slow on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.loaders import (
    CHURN_LABEL,
    CLOTHING_REVIEWS_EPOCH,
    load_clothing_reviews,
    load_movielens,
    load_retailrocket,
    load_telco_churn,
)
from features.schema import (
    ADD_TO_CART,
    CANONICAL_COLUMNS,
    CATEGORY,
    COOKIE_ID,
    CUSTOMER_ID,
    EVENT_ID,
    EVENT_TYPE,
    ITEM_ID,
    PURCHASE,
    RATING,
    REVIEW,
    TEXT,
    TS,
    VIEW,
    validate_events,
)

RR_EVENTS = """timestamp,visitorid,event,itemid,transactionid,datetime
1433193132535,11,view,100,,2015-06-01 21:12:12.535
1433193132535,11,view,100,,2015-06-01 21:12:12.535
1433194696771,12,addtocart,200,,2015-06-01 21:38:16.771
1433194700000,12,transaction,200,4000,2015-06-01 21:38:20.000
"""
RR_CATS = "ItemId,categoryid,parentid\n100,7,1\n"

CLOTHING = """,Clothing ID,Age,Title,Review Text,Rating,Recommended IND,Positive Feedback Count,Division Name,Department Name,Class Name
0,767,33,,Absolutely wonderful,4,1,0,Initmates,Intimate,Intimates
1,1080,34,Great,"Love it,
so pretty",5,1,4,General,Dresses,Dresses
2,1077,60,Meh,,3,0,0,General,Dresses,
"""

ML_DATA = "1\t10\t3\t881250949\n2\t20\t5\t891717742\n"
ML_ITEM = (
    "10|A (1995)|01-Jan-1995||url|0|0|0|0|0|1|0|0|1|0|0|0|0|0|0|0|0|0|0\n"
    "20|B (1995)|01-Jan-1995||url|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)

TELCO = """customerID,gender,tenure,MonthlyCharges,TotalCharges,Churn
A-1,Female,1,29.85,29.85,No
B-2,Male,0,56.95, ,Yes
"""


def _assert_canonical(df: pd.DataFrame) -> None:
    assert list(df.columns) == list(CANONICAL_COLUMNS)
    assert str(df[TS].dtype) == "datetime64[ns, UTC]"
    result = validate_events(df)
    assert result.errors.empty, result.errors.head()
    assert len(result.valid) == len(df)
    assert df[EVENT_ID].is_unique


def test_retailrocket_maps_events_and_categories(tmp_path: Path) -> None:
    (tmp_path / "sample_events.csv").write_text(RR_EVENTS)
    (tmp_path / "item_category.csv").write_text(RR_CATS)
    df = load_retailrocket(tmp_path)
    _assert_canonical(df)
    assert df[EVENT_TYPE].tolist() == [VIEW, VIEW, ADD_TO_CART, PURCHASE]
    assert df[COOKIE_ID].tolist() == ["11", "11", "12", "12"]
    assert df[CATEGORY].tolist()[:2] == ["7", "7"] and df[CATEGORY].isna().tolist()[2:] == [True, True]
    assert df[TS].iloc[0] == pd.Timestamp(1433193132535, unit="ms", tz="UTC")
    # exact duplicate rows are kept as distinct, deterministic events; reloading gives the same ids
    assert df[EVENT_ID].iloc[0] != df[EVENT_ID].iloc[1]
    assert load_retailrocket(tmp_path)[EVENT_ID].tolist() == df[EVENT_ID].tolist()


def test_retailrocket_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sample_events.csv"):
        load_retailrocket(tmp_path)
    (tmp_path / "sample_events.csv").write_text("timestamp,visitorid,event,itemid\n1,2,click,3\n")
    with pytest.raises(ValueError, match="click"):
        load_retailrocket(tmp_path)
    (tmp_path / "sample_events.csv").write_text("timestamp,visitorid,itemid\n1,2,3\n")
    with pytest.raises(ValueError, match="event"):
        load_retailrocket(tmp_path)


def test_clothing_reviews(tmp_path: Path) -> None:
    p = tmp_path / "reviews.csv"
    p.write_text(CLOTHING)
    df = load_clothing_reviews(p)
    _assert_canonical(df)
    assert (df[EVENT_TYPE] == REVIEW).all()
    assert df[TEXT].tolist() == ["Absolutely wonderful", "Great. Love it,\nso pretty", "Meh"]
    assert df[RATING].tolist() == [4.0, 5.0, 3.0]
    assert df[ITEM_ID].tolist() == ["767", "1080", "1077"]
    assert df[CUSTOMER_ID].is_unique
    assert df[CATEGORY].iloc[2] is pd.NA
    assert df[TS].iloc[0] == CLOTHING_REVIEWS_EPOCH and df[TS].is_monotonic_increasing


def test_clothing_reviews_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_clothing_reviews(tmp_path / "nope.csv")
    p = tmp_path / "bad.csv"
    p.write_text("Clothing ID,Title,Review Text,Rating,Class Name\n1,a,b,9,c\n")
    with pytest.raises(ValueError, match="Rating"):
        load_clothing_reviews(p)


def test_movielens(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text(ML_DATA)
    (tmp_path / "u.item").write_bytes(ML_ITEM.encode("latin-1"))
    df = load_movielens(tmp_path)
    _assert_canonical(df)
    assert df[CUSTOMER_ID].tolist() == ["1", "2"]
    assert df[ITEM_ID].tolist() == ["10", "20"]
    assert df[RATING].tolist() == [3.0, 5.0]
    assert df[CATEGORY].iloc[0] == "Comedy"  # first of Comedy, Drama
    assert df[CATEGORY].isna().iloc[1]
    assert df[TS].iloc[0] == pd.Timestamp(881250949, unit="s", tz="UTC")
    with pytest.raises(FileNotFoundError, match="u.data"):
        load_movielens(tmp_path / "missing")


def test_telco(tmp_path: Path) -> None:
    p = tmp_path / "telco.csv"
    p.write_text(TELCO)
    df = load_telco_churn(p)
    assert df[CUSTOMER_ID].tolist() == ["A-1", "B-2"]
    assert df[CHURN_LABEL].tolist() == [0, 1]
    assert df["TotalCharges"].iloc[0] == pytest.approx(29.85) and np.isnan(df["TotalCharges"].iloc[1])
    p.write_text(TELCO.replace(",Yes", ",Maybe"))
    with pytest.raises(ValueError, match="Churn"):
        load_telco_churn(p)


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_retailrocket(shared_data: Path) -> None:
    df = load_retailrocket(shared_data / "retailrocket")
    _assert_canonical(df)
    counts = df[EVENT_TYPE].value_counts()
    assert (counts[VIEW], counts[ADD_TO_CART], counts[PURCHASE]) == (9076, 263, 46)
    assert df[COOKIE_ID].nunique() == 5000
    assert 0.3 < df[CATEGORY].notna().mean() < 0.7  # about half the items are in item_category.csv


@pytest.mark.slow
def test_real_clothing_reviews(shared_data: Path) -> None:
    df = load_clothing_reviews(shared_data / "womens-clothing-reviews" / "Womens Clothing E-Commerce Reviews.csv")
    _assert_canonical(df)
    assert len(df) == 23486
    assert df[RATING].value_counts().sort_index().tolist() == [842, 1565, 2871, 5077, 13131]
    assert df[ITEM_ID].nunique() == 1206
    assert df[TEXT].notna().sum() >= 22641


@pytest.mark.slow
def test_real_movielens(shared_data: Path) -> None:
    df = load_movielens(shared_data / "movielens-100k")
    _assert_canonical(df)
    assert len(df) == 100_000 and df[CUSTOMER_ID].nunique() == 943 and df[ITEM_ID].nunique() == 1682
    assert df[CATEGORY].notna().all()


@pytest.mark.slow
def test_real_telco(shared_data: Path) -> None:
    df = load_telco_churn(shared_data / "telco-churn" / "Telco-Customer-Churn.csv")
    assert df.shape[0] == 7043 and df[CUSTOMER_ID].is_unique
    assert int(df[CHURN_LABEL].sum()) == 1869
    assert int(df["TotalCharges"].isna().sum()) == 11
