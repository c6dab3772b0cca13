"""Loaders map real data sets onto canonical events: fast tests on tiny hand-written files, slow on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import catalog
from features.catalog import validate_catalog
from features.loaders import (
    CHURN_LABEL,
    CLOTHING_REVIEWS_EPOCH,
    MOVIELENS_EARLIEST,
    load_clothing_catalog,
    load_clothing_reviews,
    load_movielens,
    load_movielens_catalog,
    load_retailrocket,
    load_retailrocket_catalog,
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
    EventLimits,
    validate_events,
)

#: MovieLens predates the schema's default earliest time (2000): its events are checked against a floor
#: that admits them.
MOVIELENS_LIMITS = EventLimits(earliest=MOVIELENS_EARLIEST)

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


def _assert_canonical(df: pd.DataFrame, limits: EventLimits | None = None) -> None:
    assert list(df.columns) == list(CANONICAL_COLUMNS)
    assert str(df[TS].dtype) == "datetime64[ns, UTC]"
    result = validate_events(df, limits=limits)
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
    _assert_canonical(df, MOVIELENS_LIMITS)
    assert not validate_events(df).errors.empty  # 1997: before the default earliest, hence the floor
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
# catalogs
# ---------------------------------------------------------------------------------------------
def _assert_catalog(df: pd.DataFrame) -> None:
    checked = validate_catalog(df)
    assert checked.errors.empty, checked.errors.head()
    assert len(checked.valid) == len(df) and df[catalog.ITEM_ID].is_unique


RR_TREE = "categoryid,parentid\n9,7\n7,1\n1,\n2,\n"
RR_ITEMS = "ItemId,categoryid,parentid\n100,9,7\n101,7,1\n102,2,\n"


def test_retailrocket_catalog_walks_the_tree_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "category_tree.csv").write_text(RR_TREE)
    (tmp_path / "item_category.csv").write_text(RR_ITEMS)
    df = load_retailrocket_catalog(tmp_path)
    _assert_catalog(df)
    assert list(df.columns) == [catalog.ITEM_ID, catalog.CATEGORY]  # no names in the data: none invented
    assert dict(zip(df[catalog.ITEM_ID], df[catalog.CATEGORY], strict=True)) == {
        "100": "1 > 7 > 9", "101": "1 > 7", "102": "2"}


@pytest.mark.parametrize("tree, items, match", [
    (RR_TREE, "ItemId,categoryid\n100,55\n", "categoryid not in category_tree.csv: \\[55\\]"),
    ("categoryid,parentid\n9,7\n7,9\n", "ItemId,categoryid\n100,9\n", "its own ancestor"),
    ("categoryid,parentid\n9,8\n", "ItemId,categoryid\n100,9\n", "category 8 \\(parent of 9\\)"),
    (RR_TREE, "ItemId,categoryid\n100,9\n100,7\n", "more than one categoryid: \\[100\\]"),
])
def test_retailrocket_catalog_errors(tmp_path: Path, tree: str, items: str, match: str) -> None:
    with pytest.raises(FileNotFoundError, match="item_category.csv"):
        load_retailrocket_catalog(tmp_path)
    (tmp_path / "category_tree.csv").write_text(tree)
    (tmp_path / "item_category.csv").write_text(items)
    with pytest.raises(ValueError, match=match):
        load_retailrocket_catalog(tmp_path)


ML_ITEM_CATALOG = ML_ITEM + "30|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"


def test_movielens_catalog(tmp_path: Path) -> None:
    (tmp_path / "u.item").write_bytes(ML_ITEM_CATALOG.encode("latin-1"))
    df = load_movielens_catalog(tmp_path)
    _assert_catalog(df)
    assert df[catalog.ITEM_ID].tolist() == ["10", "20", "30"]
    assert df[catalog.NAME].tolist()[:2] == ["A (1995)", "B (1995)"] and df[catalog.NAME].isna().tolist()[2]
    # the first genre flagged (Comedy before Drama); no genre, or only "unknown": the root alone
    assert df[catalog.CATEGORY].tolist() == ["Movies > Comedy", "Movies", "Movies"]
    (tmp_path / "u.item").write_bytes(ML_ITEM.replace("|0|0|0|0|0|1|", "|0|0|0|0|0|2|", 1).encode("latin-1"))
    with pytest.raises(ValueError, match="genre flags"):
        load_movielens_catalog(tmp_path)
    with pytest.raises(FileNotFoundError, match="u.item"):
        load_movielens_catalog(tmp_path / "missing")


CLOTHING_CATALOG = """Clothing ID,Division Name,Department Name,Class Name
5,General,Dresses,Dresses
5,General Petite,Dresses,Dresses
5,General Petite,Dresses,Dresses
6,General,Tops,Knits
6,General Petite,Tops,Knits
7,,,
7,General,Tops,
8,Initmates,Intimate,Intimates
"""


def test_clothing_catalog_takes_each_items_most_frequent_path(tmp_path: Path) -> None:
    p = tmp_path / "reviews.csv"
    p.write_text(CLOTHING_CATALOG)
    df = load_clothing_catalog(p)
    _assert_catalog(df)
    assert list(df.columns) == [catalog.ITEM_ID, catalog.CATEGORY]
    got = dict(zip(df[catalog.ITEM_ID], df[catalog.CATEGORY].astype(object), strict=True))
    assert got == {
        "5": "General Petite > Dresses > Dresses",  # two rows against one
        "6": "General > Tops > Knits",  # a tie: the earlier row
        "7": pd.NA,  # no full path at all
        "8": "Initmates > Intimate > Intimates",  # the data's own spelling
    }
    with pytest.raises(ValueError, match="Class Name"):
        p.write_text("Clothing ID,Division Name,Department Name\n1,a,b\n")
        load_clothing_catalog(p)


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
    _assert_canonical(df, MOVIELENS_LIMITS)
    assert len(df) == 100_000 and df[CUSTOMER_ID].nunique() == 943 and df[ITEM_ID].nunique() == 1682
    assert df[CATEGORY].notna().all()


@pytest.mark.slow
def test_real_telco(shared_data: Path) -> None:
    df = load_telco_churn(shared_data / "telco-churn" / "Telco-Customer-Churn.csv")
    assert df.shape[0] == 7043 and df[CUSTOMER_ID].is_unique
    assert int(df[CHURN_LABEL].sum()) == 1869
    assert int(df["TotalCharges"].isna().sum()) == 11


@pytest.mark.slow
def test_real_retailrocket_catalog(shared_data: Path) -> None:
    folder = shared_data / "retailrocket"
    df = load_retailrocket_catalog(folder)
    _assert_catalog(df)
    assert len(df) == 229_256
    # each path ends at the item's own category, starts at one of the tree's 25 roots, and follows the tree
    pairs = pd.read_csv(folder / "item_category.csv")
    leaf = df[catalog.CATEGORY].str.rsplit(" > ", n=1).str[-1]
    assert (leaf.astype(int).to_numpy() == pairs["categoryid"].to_numpy()).all()
    tree = pd.read_csv(folder / "category_tree.csv")
    roots = set(tree.loc[tree["parentid"].isna(), "categoryid"].astype(str))
    assert set(df[catalog.CATEGORY].str.split(" > ").str[0]) <= roots
    parent = dict(zip(tree["categoryid"], tree["parentid"], strict=True))
    levels = df[catalog.CATEGORY].iloc[:2000].str.split(" > ")
    assert all(parent[int(b)] == int(a) for lv in levels for a, b in zip(lv, lv[1:], strict=False))


@pytest.mark.slow
def test_real_movielens_catalog(shared_data: Path) -> None:
    df = load_movielens_catalog(shared_data / "movielens-100k")
    _assert_catalog(df)
    assert len(df) == 1682 and df[catalog.NAME].notna().sum() == 1681  # movie 267 is titled "unknown"
    assert df.set_index(catalog.ITEM_ID).loc["1", catalog.NAME] == "Toy Story (1995)"
    assert df[catalog.CATEGORY].str.startswith("Movies").all()
    assert df.set_index(catalog.ITEM_ID).loc["1", catalog.CATEGORY] == "Movies > Animation"


@pytest.mark.slow
def test_real_clothing_catalog(shared_data: Path) -> None:
    df = load_clothing_catalog(shared_data / "womens-clothing-reviews" / "Womens Clothing E-Commerce Reviews.csv")
    _assert_catalog(df)
    assert len(df) == 1206  # the Clothing IDs of the reviews
    assert int(df[catalog.CATEGORY].isna().sum()) == 7  # the 7 items whose only rows lack every level
    assert (df[catalog.CATEGORY].dropna().str.count(" > ") == 2).all()
