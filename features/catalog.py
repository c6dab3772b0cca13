"""The product catalog: items as first-class records (names, category paths, flags, stock).

Why a module of its own: serving names items in reasons, filters sensitive and out-of-stock ones and
links to them, so the catalog is validated like events are (every bad cell is one error row naming
the row, item, field and reason; nothing dropped silently, nothing coerced) and held in memory as an
immutable dict lookup (`Catalog.get` is on the hot path of every recommendation).

Input rules (`validate_catalog`): only `item_id` is required; unknown columns are errors (a typo is
caught); strings are stripped and an empty string is missing; an id appears once per batch (later
copies are errors). Booleans (`sensitive`, `consumable`, `in_stock`) are real booleans in parquet
or JSON, and `true`/`false`/`1`/`0` (any case) as text, which is how CSV writes them; anything else
("yes", the number 1 in a parquet column) is an error. `category` is a path of any depth; any spacing
around ">" is accepted and normalised to " > ". A missing value means "not given": in an update it
keeps what is stored, in an item it is None (an item whose stock is not given counts as in stock).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from features import schema
from features.schema import ERROR_FIELD, ERROR_REASON, ERROR_ROW, read_table

ITEM_ID: Final = schema.ITEM_ID
NAME: Final = "name"
CATEGORY: Final = schema.CATEGORY  # a path of any depth, levels joined by " > " ("Women > Dresses")
BRAND: Final = schema.BRAND
PRICE: Final = schema.PRICE
CURRENCY: Final = "currency"  # ISO 4217, upper case ("EUR")
SENSITIVE: Final = "sensitive"  # explicit flag: never named, never recommended outside what the guard allows
CONSUMABLE: Final = "consumable"
REPLENISH_DAYS: Final = "replenish_days"
IN_STOCK: Final = "in_stock"
URL: Final = "url"
IMAGE_URL: Final = "image_url"

#: Every catalog column, in file order; only ITEM_ID is required.
CATALOG_COLUMNS: Final[tuple[str, ...]] = (
    ITEM_ID, NAME, CATEGORY, BRAND, PRICE, CURRENCY, SENSITIVE, CONSUMABLE, REPLENISH_DAYS, IN_STOCK, URL,
    IMAGE_URL,
)
CATEGORY_SEPARATOR: Final = " > "
TEXT_COLUMNS: Final[tuple[str, ...]] = (ITEM_ID, NAME, CATEGORY, BRAND, CURRENCY, URL, IMAGE_URL)
NUMBER_COLUMNS: Final[tuple[str, ...]] = (PRICE, REPLENISH_DAYS)
BOOL_COLUMNS: Final[tuple[str, ...]] = (SENSITIVE, CONSUMABLE, IN_STOCK)
#: Errors of a catalog batch: one row per (bad row, field, reason); `row` is the position in the input.
CATALOG_ERROR_COLUMNS: Final[tuple[str, ...]] = (ERROR_ROW, ITEM_ID, ERROR_FIELD, ERROR_REASON)
MAX_ID_LENGTH: Final = schema.MAX_ID_LENGTH
MAX_NAME_LENGTH: Final = 300
#: Longest value of each text column (characters, after stripping and normalising): the events' limits
#: (features.schema.MAX_LENGTHS) for the columns events carry too, so an item id, category or brand that
#: fits one fits the other.
MAX_LENGTHS: Final[Mapping[str, int]] = {
    **{c: schema.MAX_LENGTHS[c] for c in (ITEM_ID, CATEGORY, BRAND) if c in schema.MAX_LENGTHS},
    NAME: MAX_NAME_LENGTH,
}

_CURRENCY_RE: Final = r"^[A-Z]{3}$"
_URL_RE: Final = r"^(?i:https?)://[^\s/?#]+(?:[/?#]\S*)?$"
_EMPTY_LEVEL_RE: Final = r"^>|>\s*>|>$"  # on a stripped path: "> a", "a >> b", "a >"
_SEPARATOR_RE: Final = re.compile(r"\s*>\s*")
_NOT_PRINTABLE_ASCII: Final = r"[^\x20-\x7e]"
_TRUE_TEXT: Final = frozenset({"true", "1"})
_FALSE_TEXT: Final = frozenset({"false", "0"})


@dataclass(frozen=True)
class CatalogValidation:
    """Good rows in canonical form (the catalog columns the input gave), plus one error row per
    (bad row, field, reason), in the style of `features.schema.ValidationResult`."""

    valid: pd.DataFrame
    errors: pd.DataFrame

    @property
    def n_rejected(self) -> int:
        return int(self.errors[ERROR_ROW].nunique()) if len(self.errors) else 0

    def error_records(self) -> list[dict[str, object]]:
        return self.errors.to_dict(orient="records")


class CatalogError(ValueError):
    """A catalog frame that did not validate; `errors` is the per-row report."""

    def __init__(self, errors: pd.DataFrame) -> None:
        self.errors = errors
        first = errors.iloc[0]
        super().__init__(f"{errors[ERROR_ROW].nunique()} catalog row(s) rejected; first: "
                         f"row {first[ERROR_ROW]}, {first[ERROR_FIELD]}: {first[ERROR_REASON]}")


def _is_text_value(v: object, allow_int: bool) -> bool:
    if isinstance(v, str):
        return True
    return allow_int and isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _text(s: pd.Series, *, allow_int: bool = False) -> tuple[pd.Series, pd.Series]:
    """Stripped strings (empty -> missing) and the cells that are not text (ints allowed for ids)."""
    kinds = ("string", "empty", "integer") if allow_int else ("string", "empty")
    if isinstance(s.dtype, pd.StringDtype) or pd.api.types.infer_dtype(s, skipna=True) in kinds:
        bad = pd.Series(False, index=s.index)
    else:
        ok = s.map(lambda v: _is_text_value(v, allow_int), na_action="ignore")
        bad = s.notna() & ~ok.eq(True)
    out = s.mask(bad).astype("string").str.strip()
    return out.mask(out == ""), bad


def _number(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """float64 values (NaN when missing) and the cells that are not numbers (booleans are not)."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return pd.Series(np.nan, index=s.index), s.notna()
    bad = pd.Series(False, index=s.index)
    if s.dtype == object:
        def not_a_number(v: object) -> bool:
            return isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, float, np.number))

        bad = s.map(not_a_number, na_action="ignore").fillna(False).astype(bool)
        s = s.mask(bad)
    num = pd.to_numeric(s, errors="coerce")
    blank = s.isna()
    if s.dtype == object or isinstance(s.dtype, pd.StringDtype):
        blank = blank | (s.astype("string").str.strip() == "").fillna(False).astype(bool)
    bad = bad | (~blank & num.isna())
    return pd.Series(num.to_numpy(dtype="float64", na_value=np.nan), index=s.index).where(~bad), bad


def _content(name: str, s: pd.Series, report: Callable[[pd.Series, str, str], None]) -> pd.Series:
    """Character and length rules of a text column, the events' own (features.schema.value_problems):
    ids, categories and brands NFC-normalised like the events' values they are matched with; no control
    characters anywhere, no format characters in ids. Only values outside printable ASCII are looked at
    one by one (rare), the lengths of the rest are compared vectorised."""
    odd = s.str.contains(_NOT_PRINTABLE_ASCII, regex=True).fillna(False).astype(bool)
    limit = MAX_LENGTHS.get(name)
    if odd.any():
        if name in schema.NFC_COLUMNS:
            s = s.copy()
            s[odd] = s[odd].map(schema.normalise_id)
        problems = s[odd].map(lambda v: schema.value_problems(name, v))
        for reason in sorted({r for rs in problems for r in rs}):
            report(problems.map(lambda rs, r=reason: r in rs).reindex(s.index, fill_value=False), name, reason)
    if limit is not None:
        by_schema = odd if name in schema.MAX_LENGTHS else pd.Series(False, index=s.index)
        report((s.str.len() > limit).fillna(False).astype(bool) & ~by_schema, name, f"longer than {limit} characters")
    return s


_BAD: Final = object()  # marks a cell that is not a boolean


def _bool_value(v: object) -> bool | None:
    """True/False, None for missing, ValueError for anything else (see the module docstring)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str):
        t = v.strip().lower()
        if t in _TRUE_TEXT:
            return True
        if t in _FALSE_TEXT:
            return False
        if t == "":
            return None
    raise ValueError(v)


def _boolean(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Nullable booleans and the cells that are not booleans (numbers in a typed column are not)."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("boolean"), pd.Series(False, index=s.index)
    if pd.api.types.is_numeric_dtype(s.dtype):
        return pd.Series(pd.NA, index=s.index, dtype="boolean"), s.notna()
    if isinstance(s.dtype, pd.StringDtype):
        t = s.str.strip().str.lower()
        yes, no = t.isin(_TRUE_TEXT).fillna(False), t.isin(_FALSE_TEXT).fillna(False)
        bad = (t.notna() & (t != "") & ~yes & ~no).fillna(False).astype(bool)
        out = pd.Series(pd.NA, index=s.index, dtype="boolean")
        out[yes.astype(bool)] = True
        out[no.astype(bool)] = False
        return out, bad

    def parse(v: object) -> object:
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            return None
        try:
            return _bool_value(v)
        except ValueError:
            return _BAD

    vals = [parse(v) for v in s.tolist()]
    bad = pd.Series([v is _BAD for v in vals], index=s.index, dtype=bool)
    return pd.Series([None if v is _BAD else v for v in vals], index=s.index, dtype="boolean"), bad



def validate_catalog(frame: pd.DataFrame) -> CatalogValidation:
    """Check a batch of items and return the good rows plus a per-row report (the input is never modified).

    Good rows come back with the catalog columns the input gave (item_id always), strings stripped
    ("string"), numbers float64, flags nullable "boolean", categories as " > "-joined paths. Every bad
    cell is one error row; a row with any error is left out of `valid`.
    """
    if not frame.columns.is_unique:
        dup = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise ValueError(f"catalog columns given twice: {', '.join(dup)}")
    src = frame.reset_index(drop=True)
    n = len(src)
    errs: list[pd.DataFrame] = []
    raw_ids = (src[ITEM_ID].astype("string") if ITEM_ID in src
               else pd.Series(pd.NA, index=src.index, dtype="string"))

    def report(mask: pd.Series | np.ndarray, fld: str, reason: str) -> None:
        idx = np.flatnonzero(np.asarray(pd.Series(mask).fillna(False), dtype=bool))
        if len(idx):
            errs.append(pd.DataFrame({ERROR_ROW: idx, ITEM_ID: raw_ids.iloc[idx].to_numpy(), ERROR_FIELD: fld,
                                      ERROR_REASON: reason}))

    for col in sorted((c for c in src.columns if c not in CATALOG_COLUMNS), key=str):
        report(src[col].notna(), str(col), "unknown field")

    out: dict[str, pd.Series] = {}
    not_text: dict[str, pd.Series] = {}
    for name in TEXT_COLUMNS:
        if name in src:
            out[name], not_text[name] = _text(src[name], allow_int=name == ITEM_ID)
            report(not_text[name], name, "must be a string")
            if name == CATEGORY:
                cat = out[name]
                report(cat.str.contains(_EMPTY_LEVEL_RE, regex=True), CATEGORY, "empty category level")
                out[name] = cat.str.replace(_SEPARATOR_RE, CATEGORY_SEPARATOR, regex=True)
            out[name] = _content(name, out[name], report)

    if ITEM_ID not in src:
        report(np.ones(n, dtype=bool), ITEM_ID, "required field is missing")
        out[ITEM_ID] = pd.Series(pd.NA, index=src.index, dtype="string")
    else:
        ids = out[ITEM_ID]
        report(ids.isna() & ~not_text[ITEM_ID], ITEM_ID, "required field is empty")
        report(ids.notna() & ids.duplicated(keep="first"), ITEM_ID,
               "duplicate item_id in this batch (the first row is kept)")
    if CURRENCY in out:
        cur = out[CURRENCY]
        report(cur.notna() & ~cur.str.fullmatch(_CURRENCY_RE).fillna(False).astype(bool), CURRENCY,
               "must be an ISO 4217 code (three upper-case letters)")
    for name in (URL, IMAGE_URL):
        if name in out:
            u = out[name]
            report(u.notna() & ~u.str.match(_URL_RE).fillna(False).astype(bool), name,
                   "must be an http(s) URL")

    for name in NUMBER_COLUMNS:
        if name in src:
            num, bad = _number(src[name])
            report(bad, name, "must be a number")
            inf = num.notna() & ~np.isfinite(num)
            report(inf, name, "must be finite")
            out[name] = num.where(~inf)
    if PRICE in out:
        report(out[PRICE] < 0, PRICE, "must not be negative")
    if REPLENISH_DAYS in out:
        report(out[REPLENISH_DAYS] <= 0, REPLENISH_DAYS, "must be positive")

    for name in BOOL_COLUMNS:
        if name in src:
            out[name], bad = _boolean(src[name])
            report(bad, name, "must be true or false (as text: true/false/1/0)")
    if REPLENISH_DAYS in out and CONSUMABLE in out:
        report(out[REPLENISH_DAYS].notna() & out[CONSUMABLE].eq(False).fillna(False).astype(bool),
               REPLENISH_DAYS, "only meaningful for consumable items")

    errors = (pd.concat(errs, ignore_index=True) if errs
              else pd.DataFrame({c: pd.Series(dtype="object") for c in CATALOG_ERROR_COLUMNS}))
    errors = errors.sort_values([ERROR_ROW, ERROR_FIELD], kind="stable").reset_index(drop=True)
    keep = np.ones(n, dtype=bool)
    if len(errors):
        keep[errors[ERROR_ROW].to_numpy(dtype=int)] = False
    cols = [c for c in CATALOG_COLUMNS if c in out]
    valid = pd.DataFrame({c: out[c] for c in cols}, index=src.index).loc[keep].reset_index(drop=True)
    return CatalogValidation(valid=valid, errors=errors)


def read_catalog(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A catalog file as written (CSV: every cell text, only an empty cell missing; parquet: its own types).

    Not validated: pass the frame to `validate_catalog` (or `Catalog.from_frame`, or the store's
    `upsert_items`), which reports every bad cell.
    """
    return read_table(path, dtype="string", keep_default_na=False, na_values=[""])


def split_category(path: str) -> tuple[str, ...]:
    """Levels of a category path, any spacing around ">" (ValueError on an empty level)."""
    levels = tuple(level.strip() for level in _SEPARATOR_RE.split(path.strip()))
    if not all(levels):
        raise ValueError(f"empty category level in {path!r}")
    return levels


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One item; None means the catalog does not say (an item whose stock is not given counts as in stock)."""

    item_id: str
    name: str | None = None
    category: str | None = None  # normalised path, levels joined by CATEGORY_SEPARATOR
    brand: str | None = None
    price: float | None = None
    currency: str | None = None
    sensitive: bool | None = None
    consumable: bool | None = None
    replenish_days: float | None = None
    in_stock: bool | None = None
    url: str | None = None
    image_url: str | None = None

    @property
    def category_path(self) -> tuple[str, ...]:
        return tuple(self.category.split(CATEGORY_SEPARATOR)) if self.category else ()

    @property
    def leaf_category(self) -> str | None:
        return self.category.rsplit(CATEGORY_SEPARATOR, 1)[-1] if self.category else None


_FLOAT_FIELDS: Final = frozenset(NUMBER_COLUMNS)
_BOOL_FIELDS: Final = frozenset(BOOL_COLUMNS)


def column_values(valid: pd.DataFrame) -> list[list[Any]]:
    """A validated frame as one list of Python values per catalog column, in CATALOG_COLUMNS order (None
    where missing or not given; floats, bools and strings, never numpy scalars): the one conversion the
    in-memory catalog and the store share."""
    out: list[list[Any]] = []
    for c in CATALOG_COLUMNS:
        if c not in valid.columns:
            out.append([None] * len(valid))
        elif c in _FLOAT_FIELDS:
            out.append([None if v != v else float(v) for v in valid[c].to_numpy(dtype="float64").tolist()])
        elif c in _BOOL_FIELDS:
            out.append([None if v is None else bool(v)
                        for v in valid[c].astype("boolean").to_numpy(dtype=object, na_value=None).tolist()])
        else:
            vals = valid[c].to_numpy(dtype=object, na_value=None)
            out.append([None if v is None else str(v) for v in vals])
    return out


class Catalog:
    """Immutable in-memory lookup of items by id (`get` is one dict lookup).

    Build it with `from_frame`, `empty` or `merged`; the constructor takes items already checked.
    """

    __slots__ = ("_items", "_prefix_index")

    def __init__(self, items: Iterable[CatalogItem] = ()) -> None:
        d: dict[str, CatalogItem] = {}
        for it in items:
            if it.item_id in d:
                raise ValueError(f"item {it.item_id!r} given twice")
            d[it.item_id] = it
        self._items: Mapping[str, CatalogItem] = d
        self._prefix_index: dict[tuple[str, ...], tuple[str, ...]] | None = None

    @classmethod
    def empty(cls) -> Catalog:
        return cls()

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, validated: bool = False) -> Catalog:
        """From a catalog frame; validated=True: it is already `validate_catalog(...).valid`.

        Raises CatalogError (with the per-row report) when a row does not validate.
        """
        if not validated:
            frame = _checked(frame)
        return cls(CatalogItem(*row) for row in zip(*column_values(frame), strict=True))

    def merged(self, updates: pd.DataFrame, *, validated: bool = False) -> Catalog:
        """Upsert: a row replaces the fields it gives (non-missing); fields it does not give are kept."""
        if not validated:
            updates = _checked(updates)
        items = dict(self._items)
        for row in zip(*column_values(updates), strict=True):
            item_id = row[0]
            old = items.get(item_id)
            if old is None:
                items[item_id] = CatalogItem(*row)
            else:
                given = {c: v for c, v in zip(CATALOG_COLUMNS, row, strict=True) if v is not None}
                items[item_id] = dataclasses.replace(old, **given)
        return Catalog(items.values())

    def get(self, item_id: str) -> CatalogItem | None:
        return self._items.get(item_id)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[CatalogItem]:
        return iter(self._items.values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and dict(self._items) == dict(other._items)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking equality; not meant as a dict key

    def __repr__(self) -> str:
        return f"Catalog({len(self)} items)"

    def to_frame(self) -> pd.DataFrame:
        """Every item with every catalog column, in the dtypes `validate_catalog` returns."""
        items = list(self._items.values())
        data: dict[str, Any] = {}
        for c in CATALOG_COLUMNS:
            vals = [getattr(it, c) for it in items]
            if c in _FLOAT_FIELDS:
                data[c] = pd.array([np.nan if v is None else v for v in vals], dtype="float64")
            elif c in _BOOL_FIELDS:
                data[c] = pd.array(vals, dtype="boolean")
            else:
                data[c] = pd.array(vals, dtype="string")
        return pd.DataFrame(data)

    def item_ids_in(self, category_prefix: str | Sequence[str]) -> tuple[str, ...]:
        """Items whose category path starts with these levels ("Women" holds "Women > Dresses", not
        "Womenswear"); levels compare exactly (case included). In catalog order."""
        levels = (split_category(category_prefix) if isinstance(category_prefix, str)
                  else tuple(str(x).strip() for x in category_prefix))
        if not levels or not all(levels):
            raise ValueError("a category prefix needs at least one non-empty level")
        index = self._prefix_index
        if index is None:
            acc: dict[tuple[str, ...], list[str]] = {}
            for it in self._items.values():
                path = it.category_path
                for depth in range(1, len(path) + 1):
                    acc.setdefault(path[:depth], []).append(it.item_id)
            index = self._prefix_index = {k: tuple(v) for k, v in acc.items()}
        return index.get(levels, ())


def _checked(frame: pd.DataFrame) -> pd.DataFrame:
    result = validate_catalog(frame)
    if len(result.errors):
        raise CatalogError(result.errors)
    return result.valid


__all__ = [
    "BOOL_COLUMNS", "BRAND", "CATALOG_COLUMNS", "CATALOG_ERROR_COLUMNS", "CATEGORY", "CATEGORY_SEPARATOR",
    "CONSUMABLE", "CURRENCY", "Catalog", "CatalogError", "CatalogItem", "CatalogValidation", "IMAGE_URL",
    "IN_STOCK", "ITEM_ID", "MAX_ID_LENGTH", "MAX_LENGTHS", "MAX_NAME_LENGTH", "NAME", "NUMBER_COLUMNS", "PRICE",
    "REPLENISH_DAYS", "SENSITIVE", "TEXT_COLUMNS", "URL", "column_values", "read_catalog", "split_category",
    "validate_catalog",
]
