"""The catalog as a record: every bad cell one error row (nothing dropped or coerced), CSV and parquet
read as written, category paths normalised, and an immutable lookup with upsert semantics."""

from __future__ import annotations

import dataclasses
import time
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import catalog as c
from features import schema
from features.catalog import Catalog, CatalogError, CatalogItem, read_catalog, validate_catalog


def _errors(frame: pd.DataFrame) -> set[tuple[int, str, str]]:
    """(row, field, reason) of every error of a batch."""
    res = validate_catalog(frame)
    return {(int(r["row"]), r["field"], r["reason"]) for r in res.error_records()}


def test_item_fields_are_the_catalog_columns() -> None:
    assert tuple(f.name for f in dataclasses.fields(CatalogItem)) == c.CATALOG_COLUMNS


def test_every_bad_cell_is_one_error_row_and_good_rows_are_kept() -> None:
    frame = pd.DataFrame({
        c.ITEM_ID: ["ok", "neg", "inf", "word", "cur", "url", "dup", "dup", None, "  "],
        c.PRICE: ["1.5", "-1", "inf", "ten", "2", "2", "3", "4", "5", "6"],
        c.CURRENCY: ["EUR", "EUR", "EUR", "EUR", "eur", "USD", "USD", "USD", "USD", "USD"],
        c.URL: ["https://shop.example/p/1", None, None, None, None, "ftp://shop.example/p", None, None, None, None],
    })
    got = _errors(frame)
    assert got == {
        (1, c.PRICE, "must not be negative"),
        (2, c.PRICE, "must be finite"),
        (3, c.PRICE, "must be a number"),
        (4, c.CURRENCY, "must be an ISO 4217 code (three upper-case letters)"),
        (5, c.URL, "must be an http(s) URL"),
        (7, c.ITEM_ID, "duplicate item_id in this batch (the first row is kept)"),
        (8, c.ITEM_ID, "required field is empty"),
        (9, c.ITEM_ID, "required field is empty"),
    }
    res = validate_catalog(frame)
    assert list(res.valid[c.ITEM_ID]) == ["ok", "dup"]  # the first of the duplicates is kept
    assert res.valid[c.PRICE].tolist() == [1.5, 3.0]
    assert res.n_rejected == 8
    assert set(res.errors.columns) == set(c.CATALOG_ERROR_COLUMNS)


def test_unknown_columns_are_errors_so_a_typo_is_caught() -> None:
    frame = pd.DataFrame({c.ITEM_ID: ["a", "b"], "prcie": [9.5, None]})
    assert _errors(frame) == {(0, "prcie", "unknown field")}
    assert _errors(pd.DataFrame({"sku": ["a"]})) == {(0, "sku", "unknown field"),
                                                      (0, c.ITEM_ID, "required field is missing")}


def test_ids_are_stripped_normalised_bounded_and_free_of_control_and_format_characters() -> None:
    decomposed = unicodedata.normalize("NFD", "café")
    frame = pd.DataFrame({c.ITEM_ID: [" a ", "x" * 257, "zero\u200bwidth", "tab\tinside", decomposed, 17,
                                      "é" * 257]}, dtype=object)
    got = {(r, f) for r, f, _ in _errors(frame)}
    assert got == {(1, c.ITEM_ID), (2, c.ITEM_ID), (3, c.ITEM_ID), (6, c.ITEM_ID)}
    reasons = {r: reason for r, _, reason in _errors(frame)}
    assert reasons[1] == reasons[6] == "longer than 256 characters"  # the same rule with or without non-ASCII
    assert "U+200B" in reasons[2] and "U+0009" in reasons[3]
    # the events' own rules: an id that fits an event fits the catalog, spelt the same (NFC) so lookups match
    assert reasons[2] == schema.value_problems(schema.ITEM_ID, "zero\u200bwidth")[0]
    valid = validate_catalog(frame).valid[c.ITEM_ID].tolist()
    assert valid == ["a", "café", "17"] and valid[1] == unicodedata.normalize("NFC", decomposed)
    assert _errors(pd.DataFrame({c.ITEM_ID: [1.5]})) == {(0, c.ITEM_ID, "must be a string")}
    assert _errors(pd.DataFrame({c.ITEM_ID: ["a", "b"], c.NAME: ["n" * 301, "é" * 301]})) == {
        (0, c.NAME, "longer than 300 characters"), (1, c.NAME, "longer than 300 characters")}
    assert {(r, f) for r, f, _ in _errors(pd.DataFrame({c.ITEM_ID: ["a", "b"], c.NAME: ["ok\x00", "Crème"]}))} == {
        (0, c.NAME)}


def test_category_paths_any_spacing_normalised_and_empty_levels_rejected() -> None:
    frame = pd.DataFrame({c.ITEM_ID: ["a", "b", "c", "d", "e"],
                          c.CATEGORY: ["Women>Dresses", "  Women  >   Dresses > Maxi ", "Shoes", "Women >> Dresses",
                                       "> Women"]})
    res = validate_catalog(frame)
    assert res.valid[c.CATEGORY].tolist() == ["Women > Dresses", "Women > Dresses > Maxi", "Shoes"]
    assert {(r, f) for r, f, _ in _errors(frame)} == {(3, c.CATEGORY), (4, c.CATEGORY)}
    item = Catalog.from_frame(frame.iloc[:3]).get("b")
    assert item.category_path == ("Women", "Dresses", "Maxi") and item.leaf_category == "Maxi"
    assert CatalogItem("x").category_path == () and CatalogItem("x").leaf_category is None


def test_booleans_as_written_in_csv_and_real_booleans_in_parquet(tmp_path: Path) -> None:
    csv = tmp_path / "items.csv"
    csv.write_text("item_id,name,sensitive,in_stock,consumable,replenish_days,price\n"
                   "a,Alpha,true,1,TRUE,30,9.99\n"
                   "b,Beta,False,0,,,\n"
                   "c,NA,yes,true,false,,1\n"
                   "d,,0,2,1,0,0\n")
    raw = read_catalog(csv)
    assert raw[c.NAME].tolist()[:3] == ["Alpha", "Beta", "NA"]  # only an empty cell is missing
    res = validate_catalog(raw)
    assert {(r, f) for r, f, _ in _errors(raw)} == {(2, c.SENSITIVE), (3, c.IN_STOCK), (3, c.REPLENISH_DAYS)}
    assert res.valid[c.ITEM_ID].tolist() == ["a", "b"]
    a, b = Catalog.from_frame(res.valid, validated=True).get("a"), Catalog.from_frame(raw.iloc[:2]).get("b")
    assert (a.sensitive, a.in_stock, a.consumable, a.replenish_days, a.price) == (True, True, True, 30.0, 9.99)
    assert (b.sensitive, b.in_stock, b.consumable, b.replenish_days, b.price) == (False, False, None, None, None)

    parquet = tmp_path / "items.parquet"
    pd.DataFrame({c.ITEM_ID: ["a", "b"], c.SENSITIVE: [True, False], c.PRICE: [1.0, 2.0]}).to_parquet(parquet)
    assert _errors(read_catalog(parquet)) == set()
    assert pd.api.types.is_bool_dtype(read_catalog(parquet).dtypes[c.SENSITIVE])
    numbers = pd.DataFrame({c.ITEM_ID: ["a", "b"], c.IN_STOCK: [1, 0]})  # a number is not a boolean
    assert _errors(numbers) == {(0, c.IN_STOCK, "must be true or false (as text: true/false/1/0)"),
                                (1, c.IN_STOCK, "must be true or false (as text: true/false/1/0)")}
    mixed = pd.DataFrame({c.ITEM_ID: ["a", "b", "c"], c.IN_STOCK: [True, "false", 1]}, dtype=object)
    assert _errors(mixed) == {(2, c.IN_STOCK, "must be true or false (as text: true/false/1/0)")}
    assert _errors(pd.DataFrame({c.ITEM_ID: ["a"], c.PRICE: [True]}, dtype=object)) == {
        (0, c.PRICE, "must be a number")}


def test_replenishment_only_for_consumables() -> None:
    frame = pd.DataFrame({c.ITEM_ID: ["soap", "sofa", "feed"], c.CONSUMABLE: [True, False, None],
                          c.REPLENISH_DAYS: [30.0, 400.0, 14.0]})
    assert _errors(frame) == {(1, c.REPLENISH_DAYS, "only meaningful for consumable items")}


def test_input_frame_is_never_modified() -> None:
    frame = pd.DataFrame({c.ITEM_ID: [" a ", "b"], c.CATEGORY: ["X>Y", None], c.IN_STOCK: ["true", "0"],
                          c.PRICE: ["1", "x"]}, index=[10, 20])
    before = frame.copy(deep=True)
    validate_catalog(frame)
    Catalog.from_frame(frame.iloc[:1])
    Catalog.empty().merged(frame.iloc[:1])
    pd.testing.assert_frame_equal(frame, before)


def test_catalog_lookup_round_trip_and_upsert_semantics() -> None:
    base = Catalog.from_frame(pd.DataFrame({
        c.ITEM_ID: ["a", "b"], c.NAME: ["Alpha", "Beta"], c.CATEGORY: ["Women > Dresses", "Men > Shoes"],
        c.PRICE: [10.0, 20.0], c.CURRENCY: ["EUR", "EUR"], c.IN_STOCK: [True, None]}))
    assert len(base) == 2 and "a" in base and "z" not in base and base.get("z") is None
    assert base.get("b").in_stock is None  # not given: not claimed either way
    assert Catalog.from_frame(base.to_frame()) == base
    assert list(base.to_frame().columns) == list(c.CATALOG_COLUMNS)

    # a price feed: only id and price; the other fields keep their values; a new id is added
    feed = pd.DataFrame({c.ITEM_ID: ["a", "n"], c.PRICE: [12.5, 3.0], c.NAME: [None, "New"]})
    after = base.merged(feed)
    assert after.get("a") == dataclasses.replace(base.get("a"), price=12.5)
    assert after.get("n") == CatalogItem("n", name="New", price=3.0)
    assert after.get("b") == base.get("b") and len(after) == 3
    assert base.get("a").price == 10.0  # the original is unchanged (immutable)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.get("a").price = 1.0  # type: ignore[misc]

    with pytest.raises(CatalogError) as bad:
        base.merged(pd.DataFrame({c.ITEM_ID: ["a", "b"], c.PRICE: [1.0, -2.0]}))
    assert bad.value.errors[["row", "field"]].values.tolist() == [[1, c.PRICE]]
    assert Catalog.empty() == Catalog.from_frame(pd.DataFrame({c.ITEM_ID: pd.Series(dtype="string")}))


def test_items_in_a_category_prefix_by_whole_levels() -> None:
    cat = Catalog.from_frame(pd.DataFrame({
        c.ITEM_ID: ["d1", "d2", "s1", "w1", "x"],
        c.CATEGORY: ["Women > Dresses > Maxi", "Women > Dresses", "Women > Shoes", "Womenswear", None]}))
    assert cat.item_ids_in("Women") == ("d1", "d2", "s1")
    assert cat.item_ids_in("Women>Dresses") == ("d1", "d2")
    assert cat.item_ids_in(("Women", "Dresses", "Maxi")) == ("d1",)
    assert cat.item_ids_in("Wom") == () and cat.item_ids_in("women") == ()
    with pytest.raises(ValueError):
        cat.item_ids_in(" > ")


def test_validation_of_a_large_batch_is_vectorised() -> None:
    n = 100_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        c.ITEM_ID: [f"sku-{i}" for i in range(n)], c.NAME: [f"Item {i}" for i in range(n)],
        c.CATEGORY: np.where(rng.random(n) < 0.5, "Women>Dresses", "Men > Shoes"), c.BRAND: "Acme",
        c.PRICE: rng.random(n).round(2).astype(str), c.CURRENCY: "EUR", c.SENSITIVE: "false",
        c.CONSUMABLE: "true", c.REPLENISH_DAYS: "30", c.IN_STOCK: np.where(rng.random(n) < 0.9, "1", "0"),
        c.URL: "https://shop.example/p", c.IMAGE_URL: "https://img.example/p.jpg"}).astype("string")
    frame.loc[n - 1, c.PRICE] = "-1"
    t0 = time.perf_counter()
    res = validate_catalog(frame)
    elapsed = time.perf_counter() - t0
    assert len(res.valid) == n - 1 and res.errors[["row", "field"]].values.tolist() == [[n - 1, c.PRICE]]
    assert elapsed < 2.0, f"validating {n} rows took {elapsed:.2f} s"
