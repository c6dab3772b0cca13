"""Map the real data sets in ``shared/data`` onto Mirror's canonical event record.

Each loader takes a path and reads only what is there: nothing is downloaded.  Output event frames
are already in canonical form (``ts`` as ``datetime64[ns, UTC]``, ``string`` columns, float64
numbers) and pass :func:`features.schema.validate_events` with zero errors.  Event ids are derived
from the row content, so loading the same file twice yields the same ids (appending is idempotent).

Choices made here, so that downstream code can rely on them:

* RetailRocket ``visitorid`` becomes ``cookie_id``: the visitors are anonymous website sessions
  (hashed cookie ids), not logged-in customers, so no customer id is invented for them.
  ``transaction`` maps to ``purchase`` with quantity 1; the data set carries no prices.
* Clothing reviews have no timestamps and no reviewer ids: each row gets its own customer id
  (``cr-<row>``) and a timestamp of :data:`CLOTHING_REVIEWS_EPOCH` plus one minute per row, so file
  order is preserved.
* MovieLens ratings are ``review`` events with a rating and no text.  They were collected in 1997-98,
  before the schema's default earliest accepted time, so validate them with
  ``EventLimits(earliest=MOVIELENS_EARLIEST)``.

Each data set also yields a catalog frame (``load_*_catalog``) that passes
:func:`features.catalog.validate_catalog`: only the fields the source really has are filled; no name,
price or flag is invented.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from features import catalog
from features.schema import (
    ADD_TO_CART,
    CANONICAL_COLUMNS,
    CATEGORY,
    CHANNEL,
    COOKIE_ID,
    CUSTOMER_ID,
    EVENT_ID,
    EVENT_TYPE,
    ITEM_ID,
    NUMERIC_COLUMNS,
    PURCHASE,
    QUANTITY,
    RATING,
    REVIEW,
    TEXT,
    TS,
    VIEW,
    read_csv_strict,
)

#: RetailRocket event names -> canonical event types.
RETAILROCKET_EVENTS: Final[dict[str, str]] = {
    "view": VIEW,
    "addtocart": ADD_TO_CART,
    "transaction": PURCHASE,
}
#: The full export is preferred; the small sample is the fallback (see shared/data SOURCE.md).
RETAILROCKET_EVENT_FILES: Final[tuple[str, ...]] = ("events.csv", "sample_events.csv")
RETAILROCKET_ITEM_CATEGORY_FILE: Final = "item_category.csv"
RETAILROCKET_CATEGORY_TREE_FILE: Final = "category_tree.csv"

#: Clothing reviews carry no dates; the data set was published on 2018-02-04, so reviews are
#: placed just before it, one minute apart in file order.
CLOTHING_REVIEWS_EPOCH: Final = pd.Timestamp("2018-01-01T00:00:00Z")

MOVIELENS_GENRES: Final[tuple[str, ...]] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)

#: A validation floor that admits MovieLens-100k (collected from 1997-09-19), which predates the schema's
#: default earliest accepted time.
MOVIELENS_EARLIEST: Final = pd.Timestamp("1997-09-01T00:00:00Z")
#: The top level of every MovieLens catalog path ("Movies > Comedy").
MOVIELENS_ROOT: Final = "Movies"
#: u.item writes "unknown" for a missing title and has a genre flag named "unknown": both mean "not known".
MOVIELENS_UNKNOWN: Final = "unknown"
#: Clothing reviews' category levels, top first.
CLOTHING_CATEGORY_LEVELS: Final[tuple[str, ...]] = ("Division Name", "Department Name", "Class Name")

#: Telco churn: the label column and the id column as Mirror names them.
CHURN_LABEL: Final = "churn"

WEB: Final = "web"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _require_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


def _require_columns(df: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}")


def _numeric(s: pd.Series, name: str, path: Path, *, allow_missing: bool = False) -> pd.Series:
    """Coerce to numbers, refusing (not silently dropping) rows that are not numbers."""
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() & (s.notna() if allow_missing else True)
    if bool(np.any(bad)):
        rows = np.flatnonzero(np.asarray(bad))[:5].tolist()
        raise ValueError(f"{path}: column {name!r} has non-numeric or missing values (rows {rows} ...)")
    return num


def _row_ids(prefix: str, frame: pd.DataFrame) -> pd.Series:
    """Deterministic ids from row content; exact duplicate rows get an occurrence suffix."""
    h = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    hexed = pd.Series([f"{prefix}{v:016x}" for v in h.tolist()], index=frame.index, dtype="string")
    occ = pd.Series(h, index=frame.index).groupby(h).cumcount()
    if (occ > 0).any():
        hexed = hexed.where(occ == 0, hexed + "-" + occ.astype("string"))
    return hexed


def _canonical(data: dict[str, object], n: int) -> pd.DataFrame:
    """Assemble canonical columns with canonical dtypes; absent ones are all-missing."""
    out: dict[str, pd.Series] = {}
    for c in CANONICAL_COLUMNS:
        v = data.get(c)
        if c == TS:
            s = pd.Series(v).reset_index(drop=True)
            out[c] = s.astype("datetime64[ns, UTC]")
        elif c in NUMERIC_COLUMNS:
            out[c] = (pd.Series(np.nan, index=range(n), dtype="float64") if v is None
                      else pd.Series(v).reset_index(drop=True).astype("float64"))
        else:
            out[c] = (pd.Series(pd.NA, index=range(n), dtype="string") if v is None
                      else pd.Series(v).reset_index(drop=True).astype("string"))
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------
# RetailRocket
# ---------------------------------------------------------------------------------------------
def load_retailrocket(data_dir: Path) -> pd.DataFrame:
    """RetailRocket events as canonical view/add_to_cart/purchase events on the web channel.

    Reads ``events.csv`` when present, otherwise ``sample_events.csv``.  ``category`` comes from
    ``item_category.csv`` (the leaf category id) where the item is known, else missing.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"RetailRocket directory not found: {data_dir}")
    path = next((data_dir / f for f in RETAILROCKET_EVENT_FILES if (data_dir / f).is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"no RetailRocket events file in {data_dir} (looked for {', '.join(RETAILROCKET_EVENT_FILES)})"
        )
    raw = read_csv_strict(path, usecols=lambda c: c in {"timestamp", "visitorid", "event", "itemid", "transactionid"})
    _require_columns(raw, ("timestamp", "visitorid", "event", "itemid"), path)
    ts_ms = _numeric(raw["timestamp"], "timestamp", path).astype("int64")
    visitor = _numeric(raw["visitorid"], "visitorid", path).astype("int64")
    item = _numeric(raw["itemid"], "itemid", path).astype("int64")
    event = raw["event"].astype("string").str.strip()
    etype = event.map(RETAILROCKET_EVENTS)
    unknown = etype.isna()
    if unknown.any():
        vals = sorted(set(event[unknown].fillna("<missing>").tolist()))[:5]
        raise ValueError(f"{path}: unknown event value(s) {vals}; expected {sorted(RETAILROCKET_EVENTS)}")

    category = pd.Series(pd.NA, index=raw.index, dtype="string")
    cat_path = data_dir / RETAILROCKET_ITEM_CATEGORY_FILE
    if cat_path.is_file():
        cats = read_csv_strict(cat_path)
        _require_columns(cats, ("ItemId", "categoryid"), cat_path)
        lookup = pd.Series(cats["categoryid"].astype("int64").astype(str).to_numpy(),
                           index=cats["ItemId"].astype("int64").to_numpy())
        lookup = lookup[~lookup.index.duplicated(keep="first")]
        category = pd.Series(item.map(lookup), index=raw.index).astype("string")

    key = pd.DataFrame({"t": ts_ms, "v": visitor, "e": event, "i": item})
    n = len(raw)
    return _canonical(
        {
            EVENT_ID: _row_ids("rr-", key),
            TS: pd.to_datetime(ts_ms, unit="ms", utc=True),
            CHANNEL: pd.Series(WEB, index=raw.index),
            EVENT_TYPE: etype,
            COOKIE_ID: visitor.astype(str),
            ITEM_ID: item.astype(str),
            CATEGORY: category,
            QUANTITY: np.where(etype.to_numpy() == PURCHASE, 1.0, np.nan),
        },
        n,
    )


def _category_paths(tree: pd.DataFrame, path: Path) -> dict[int, str]:
    """categoryid -> its path from the root ("root > ... > categoryid"), walking ``parentid`` up."""
    ids = _numeric(tree["categoryid"], "categoryid", path).astype("int64")
    parents = _numeric(tree["parentid"], "parentid", path, allow_missing=True)
    if ids.duplicated().any():
        raise ValueError(f"{path}: categoryid listed more than once: {sorted(set(ids[ids.duplicated()]))[:5]}")
    parent = {int(c): (None if pd.isna(p) else int(p)) for c, p in zip(ids, parents, strict=True)}
    out: dict[int, str] = {}
    for start in parent:
        chain: list[int] = []
        node: int | None = start
        while node is not None and node not in out:
            if node not in parent:
                raise ValueError(f"{path}: category {node} (parent of {chain[-1]}) is not in the tree")
            if node in chain:
                raise ValueError(f"{path}: category {node} is its own ancestor")
            chain.append(node)
            node = parent[node]
        prefix = out[node] if node is not None else None
        for c in reversed(chain):
            prefix = str(c) if prefix is None else f"{prefix}{catalog.CATEGORY_SEPARATOR}{c}"
            out[c] = prefix
    return out


def load_retailrocket_catalog(data_dir: Path) -> pd.DataFrame:
    """RetailRocket items as catalog records: ``item_id`` and ``category``, nothing else.

    ``item_category.csv`` gives each item's leaf category id; ``category_tree.csv`` is walked up to the
    root, so the category is the path of category ids from root to leaf ("1482 > 1224 > 213").  The data
    set has no category names (its item properties are hashed, and not in shared/data), no item names,
    prices or flags, so none are filled in.  An item or parent whose category is not in the tree, or a
    cycle in the tree, is an error naming the file.
    """
    data_dir = Path(data_dir)
    item_path = _require_file(data_dir / RETAILROCKET_ITEM_CATEGORY_FILE)
    tree_path = _require_file(data_dir / RETAILROCKET_CATEGORY_TREE_FILE)
    tree = read_csv_strict(tree_path)
    _require_columns(tree, ("categoryid", "parentid"), tree_path)
    paths = _category_paths(tree, tree_path)
    raw = read_csv_strict(item_path, usecols=lambda c: c in {"ItemId", "categoryid"})
    _require_columns(raw, ("ItemId", "categoryid"), item_path)
    pairs = pd.DataFrame({"item": _numeric(raw["ItemId"], "ItemId", item_path).astype("int64"),
                          "cat": _numeric(raw["categoryid"], "categoryid", item_path).astype("int64")})
    pairs = pairs.drop_duplicates()
    if pairs["item"].duplicated().any():
        dup = sorted(set(pairs.loc[pairs["item"].duplicated(), "item"].tolist()))[:5]
        raise ValueError(f"{item_path}: items with more than one categoryid: {dup}")
    category = pairs["cat"].map(paths)
    if category.isna().any():
        unknown = sorted(set(pairs.loc[category.isna(), "cat"].tolist()))[:5]
        raise ValueError(f"{item_path}: categoryid not in {tree_path.name}: {unknown}")
    return pd.DataFrame({
        catalog.ITEM_ID: pairs["item"].astype(str).astype("string").to_numpy(),
        catalog.CATEGORY: category.astype("string").to_numpy(),
    }).astype("string")


# ---------------------------------------------------------------------------------------------
# Women's clothing reviews
# ---------------------------------------------------------------------------------------------
def load_clothing_reviews(csv_path: Path) -> pd.DataFrame:
    """Clothing reviews as canonical review events: text = title + ". " + review, with rating."""
    path = _require_file(csv_path)
    raw = read_csv_strict(path)
    _require_columns(raw, ("Clothing ID", "Title", "Review Text", "Rating", "Class Name"), path)
    n = len(raw)
    rating = _numeric(raw["Rating"], "Rating", path)
    if ((rating < 1) | (rating > 5)).any():
        raise ValueError(f"{path}: column 'Rating' has values outside 1..5")
    item = _numeric(raw["Clothing ID"], "Clothing ID", path).astype("int64").astype(str)
    title = raw["Title"].astype("string").str.strip().mask(lambda s: s == "")
    body = raw["Review Text"].astype("string").str.strip().mask(lambda s: s == "")
    text = (title + ". " + body).fillna(body).fillna(title)
    # row number in the file (the unnamed first column when present, else position)
    first = raw.columns[0]
    row = (pd.to_numeric(raw[first], errors="coerce") if str(first).startswith("Unnamed") else None)
    row_no = (row if row is not None and row.notna().all() and row.is_unique
              else pd.Series(np.arange(n), index=raw.index)).astype("int64")
    ts = CLOTHING_REVIEWS_EPOCH + pd.to_timedelta(np.arange(n), unit="min")
    return _canonical(
        {
            EVENT_ID: "cr-" + row_no.astype(str),
            TS: pd.Series(ts),
            CHANNEL: pd.Series(WEB, index=raw.index),
            EVENT_TYPE: pd.Series(REVIEW, index=raw.index),
            CUSTOMER_ID: "cr-" + row_no.astype(str),
            ITEM_ID: item,
            CATEGORY: raw["Class Name"].astype("string").str.strip(),
            TEXT: text,
            RATING: rating,
        },
        n,
    )


def load_clothing_catalog(csv_path: Path) -> pd.DataFrame:
    """Clothing items as catalog records: ``item_id`` (Clothing ID) and ``category``.

    The category is ``Division Name > Department Name > Class Name`` as written (the data's own
    "Initmates" spelling is kept).  The file has one row per review, and 196 items are filed under more
    than one path (mostly "General" and "General Petite" divisions): an item takes its most frequent
    full path, the earliest in the file on a tie.  Rows with a level missing name no path; an item with
    no full path at all has no category.  The data set has no item names, prices or flags.
    """
    path = _require_file(csv_path)
    raw = read_csv_strict(path)
    _require_columns(raw, ("Clothing ID", *CLOTHING_CATEGORY_LEVELS), path)
    item = _numeric(raw["Clothing ID"], "Clothing ID", path).astype("int64").astype(str)
    levels = [raw[c].astype("string").str.strip().mask(lambda x: x == "") for c in CLOTHING_CATEGORY_LEVELS]
    full = pd.concat(levels, axis=1).notna().all(axis=1)
    joined = levels[0].str.cat(levels[1:], sep=catalog.CATEGORY_SEPARATOR)
    rows = pd.DataFrame({"item": item, "path": joined, "row": np.arange(len(raw))}).loc[full]
    counts = rows.groupby(["item", "path"], sort=False).agg(n=("row", "size"), first=("row", "min")).reset_index()
    best = (counts.sort_values(["n", "first"], ascending=[False, True], kind="stable")
            .drop_duplicates("item").set_index("item")["path"])
    items = item.drop_duplicates()
    return pd.DataFrame({
        catalog.ITEM_ID: items.to_numpy(),
        catalog.CATEGORY: items.map(best).to_numpy(),
    }).astype("string")


# ---------------------------------------------------------------------------------------------
# MovieLens 100k
# ---------------------------------------------------------------------------------------------
def _movielens_categories(item_path: Path) -> pd.Series:
    """item_id -> first genre flagged in u.item (latin-1, ``|``-separated)."""
    cols = ["movie_id", "title", "release", "video_release", "url", *MOVIELENS_GENRES]
    items = read_csv_strict(item_path, sep="|", header=None, names=cols, encoding="latin-1")
    flags = items[list(MOVIELENS_GENRES)].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy() > 0
    first = np.where(flags.any(axis=1), flags.argmax(axis=1), -1)
    genre = np.array(MOVIELENS_GENRES, dtype=object)[np.maximum(first, 0)]
    genre = np.where(first >= 0, genre, None)
    ids = _numeric(items["movie_id"], "movie_id", item_path).astype("int64")
    return pd.Series(genre, index=ids.to_numpy())


def load_movielens_catalog(data_dir: Path) -> pd.DataFrame:
    """MovieLens-100k movies (u.item) as catalog records: ``item_id``, ``name`` (the title, with its
    year) and ``category`` "Movies > <first genre flagged>".

    u.item's "unknown" title and "unknown" genre flag mean not known: such a movie has no name, and
    one flagged only "unknown" (or nothing) is filed under "Movies".  Release dates are not catalog
    fields; the IMDb links are not the retailer's product pages, so ``url`` stays empty.
    """
    data_dir = Path(data_dir)
    path = _require_file(data_dir / "u.item")
    cols = ["movie_id", "title", "release", "video_release", "url", *MOVIELENS_GENRES]
    raw = read_csv_strict(path, sep="|", header=None, names=cols, encoding="latin-1", dtype={"title": "string"})
    ids = _numeric(raw["movie_id"], "movie_id", path).astype("int64")
    if ids.duplicated().any():
        raise ValueError(f"{path}: movie_id listed more than once: {sorted(set(ids[ids.duplicated()]))[:5]}")
    genres = [g for g in MOVIELENS_GENRES if g != MOVIELENS_UNKNOWN]
    flags = pd.concat([_numeric(raw[g], g, path) for g in genres], axis=1).to_numpy()
    if not np.isin(flags, (0, 1)).all():
        raise ValueError(f"{path}: genre flags must be 0 or 1")
    first = np.where(flags.any(axis=1), flags.argmax(axis=1), -1)
    leaf = np.array(genres, dtype=object)[np.maximum(first, 0)]
    category = np.where(first >= 0, MOVIELENS_ROOT + catalog.CATEGORY_SEPARATOR + leaf, MOVIELENS_ROOT)
    title = raw["title"].str.strip()
    name = title.mask((title == "") | (title.str.lower() == MOVIELENS_UNKNOWN))
    return pd.DataFrame({
        catalog.ITEM_ID: ids.astype(str).to_numpy(),
        catalog.NAME: name.to_numpy(),
        catalog.CATEGORY: category,
    }).astype("string")


def load_movielens(data_dir: Path) -> pd.DataFrame:
    """MovieLens-100k ratings as canonical review events with rating, customer id and first genre."""
    data_dir = Path(data_dir)
    path = _require_file(data_dir / "u.data")
    raw = read_csv_strict(path, sep="\t", header=None, names=["user_id", "item_id", "rating", "unix_ts"])
    if raw.shape[1] != 4 or raw["unix_ts"].isna().all():
        raise ValueError(f"{path}: expected 4 tab-separated columns user_id, item_id, rating, unix_ts")
    user = _numeric(raw["user_id"], "user_id", path).astype("int64").astype(str)
    item_num = _numeric(raw["item_id"], "item_id", path).astype("int64")
    rating = _numeric(raw["rating"], "rating", path)
    if ((rating < 1) | (rating > 5)).any():
        raise ValueError(f"{path}: column 'rating' has values outside 1..5")
    secs = _numeric(raw["unix_ts"], "unix_ts", path).astype("int64")
    item_path = data_dir / "u.item"
    category = (pd.Series(item_num.map(_movielens_categories(item_path)), index=raw.index)
                if item_path.is_file() else pd.Series(pd.NA, index=raw.index))
    key = pd.DataFrame({"u": user, "i": item_num, "t": secs})
    return _canonical(
        {
            EVENT_ID: _row_ids("ml-", key),
            TS: pd.to_datetime(secs, unit="s", utc=True),
            CHANNEL: pd.Series(WEB, index=raw.index),
            EVENT_TYPE: pd.Series(REVIEW, index=raw.index),
            CUSTOMER_ID: user,
            ITEM_ID: item_num.astype(str),
            CATEGORY: category,
            RATING: rating,
        },
        len(raw),
    )


# ---------------------------------------------------------------------------------------------
# Telco churn
# ---------------------------------------------------------------------------------------------
def load_telco_churn(csv_path: Path) -> pd.DataFrame:
    """IBM Telco churn as a feature table: one row per ``customer_id``, label ``churn`` in {0, 1}.

    Other columns keep their original names; ``TotalCharges`` blanks (tenure 0) become NaN.
    """
    path = _require_file(csv_path)
    raw = read_csv_strict(path, dtype={"customerID": "string", "TotalCharges": "string"})
    _require_columns(raw, ("customerID", "Churn", "TotalCharges"), path)
    out = raw.rename(columns={"customerID": CUSTOMER_ID, "Churn": CHURN_LABEL})
    if out[CUSTOMER_ID].isna().any() or out[CUSTOMER_ID].duplicated().any():
        raise ValueError(f"{path}: customerID must be present and unique")
    label = out[CHURN_LABEL].astype("string").str.strip().str.lower()
    mapped = label.map({"yes": 1, "no": 0, "1": 1, "0": 0})
    if mapped.isna().any():
        bad = sorted(set(label[mapped.isna()].fillna("<missing>").tolist()))[:5]
        raise ValueError(f"{path}: column 'Churn' must be Yes/No, found {bad}")
    out[CHURN_LABEL] = mapped.astype("int64")
    total = out["TotalCharges"].astype("string").str.strip()
    num = pd.to_numeric(total.mask(total == ""), errors="coerce")
    bad = total.notna() & (total != "") & num.isna()
    if bad.any():
        raise ValueError(f"{path}: column 'TotalCharges' has non-numeric values (rows {np.flatnonzero(bad)[:5].tolist()})")
    out["TotalCharges"] = num.astype("float64")
    return out.reset_index(drop=True)
