"""Conversions every backend shares: event frames <-> time-ordered `_Batch` rows, epoch-ns times,
stored rows -> canonical frames, parquet export rows, JSON-able records. No storage here."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features import schema
from features.schema import (
    CANONICAL_COLUMNS,
    COOKIE_ID,
    DEVICE_ID,
    ERROR_ROW,
    EVENT_ID,
    NUMERIC_COLUMNS,
    OPTIONAL_COLUMNS,
    PROFILE_ID,
    STORE_ID,
    TS,
    empty_events,
    normalise_id,
    value_problems,
)
from features.store.model import DECISION_COLUMNS, HOLDOUT, ITEM_IDS, RECOMMENDATION_COLUMNS

# TODO(schema): features.schema is adding TIMEZONE ("timezone", an IANA zone name) to OPTIONAL_COLUMNS; until
# it lands the store keeps the column anyway (filled only by frames that carry it), so profiles know it.
_TIMEZONE: str = getattr(schema, "TIMEZONE", "timezone")
_EVENT_COLUMNS: tuple[str, ...] = CANONICAL_COLUMNS + OPTIONAL_COLUMNS + tuple(
    c for c in (_TIMEZONE,) if c not in OPTIONAL_COLUMNS)
_STORED: tuple[str, ...] = tuple(c for c in _EVENT_COLUMNS if c != TS)  # event_id first; ts is ts_ns
_DEVICE_COLUMNS = (DEVICE_ID, COOKIE_ID)
_NS = 10**9
_SMALL_FRAME = 64  # rows: below this a frame is converted whole (cheaper per call), above column by column


def _to_ns(value: Any) -> int:
    """Seconds since epoch (float), datetime, Timestamp or ISO string -> epoch ns (UTC)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return int(round(float(value) * _NS))
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.as_unit("ns").value)


def _window_ns(window: Any) -> int:
    """A cap window: Timedelta/timedelta, pandas offset string ("24h", "7D") or seconds."""
    if isinstance(window, (int, float, np.integer, np.floating)) and not isinstance(window, bool):
        ns = int(float(window) * _NS)
    else:
        ns = int(pd.Timedelta(window).value)
    if ns <= 0:
        raise ValueError(f"cap window must be positive, got {window!r}")
    return ns


def _store_id(value: Any) -> str:
    """A store id spelt as events spell it (features.schema's rules for STORE_ID), else ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{STORE_ID} must be a non-empty string (or None)")
    problems = value_problems(STORE_ID, value)
    if problems:
        raise ValueError(f"{STORE_ID}: {problems[0]}")
    return normalise_id(value)


def _dt(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / _NS, tz=dt.UTC)



@dataclass(frozen=True, slots=True)
class _Batch:
    """Events as plain Python lists (None where missing), time-ordered: cheap for one event, and
    the same shape for the vectorised bulk path (which makes arrays of the columns it needs)."""

    cols: dict[str, list[Any]]  # every _STORED column
    ts: list[int]  # epoch ns
    at: list[int] = field(default_factory=list)  # each row's position in the frame it came from (frames only)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)  # array() memo

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: Sequence[int]) -> _Batch:
        """Rows idx (ascending); the batch itself when that is every row."""
        if len(idx) == len(self.ts):
            return self
        return _Batch({c: [v[i] for i in idx] for c, v in self.cols.items()}, [self.ts[i] for i in idx],
                      [self.at[i] for i in idx] if self.at else [])

    def row(self, i: int) -> dict[str, Any]:
        """Row i as `schema.event_digest` reads it (ts as epoch ns, None where missing)."""
        return {TS: self.ts[i], **{c: v[i] for c, v in self.cols.items()}}

    def array(self, col: str) -> np.ndarray:
        """The column as an object array, made once per batch (read-only: callers share it)."""
        arr = self._arrays.get(col)
        if arr is None:
            arr = self._arrays[col] = np.empty(len(self.ts), dtype=object)
            arr[:] = self.cols[col]
        return arr

    def present(self, col: str) -> np.ndarray:
        return ~pd.isna(self.array(col))


def _batch_from_frame(ev: pd.DataFrame) -> _Batch:
    """A validated frame as a time-ordered _Batch (stable: equal timestamps keep their order)."""
    if TS not in ev or not isinstance(ev[TS].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"column {TS!r} must be timezone-aware datetimes (validate events first)")
    ns = np.asarray(ev[TS].array.as_unit("ns").asi8)  # validated ts is tz-aware, never missing
    n = len(ns)
    order = None if n < 2 or bool((ns[1:] >= ns[:-1]).all()) else np.argsort(ns, kind="stable")
    cols: dict[str, list[Any]] = {}
    if n <= _SMALL_FRAME:  # one conversion of the whole frame beats one per column (API-sized batches)
        grid = ev.to_numpy(dtype=object)
        by_name = dict(zip(ev.columns, (grid if order is None else grid[order]).T.tolist(), strict=True))
        for c in _STORED:
            vals = by_name.get(c)
            cols[c] = [None if v is pd.NA or v != v else v for v in vals] if vals is not None else [None] * n
    else:
        for c in _STORED:
            if c in ev.columns:
                vals = ev[c].to_numpy(dtype=object, na_value=None)
                cols[c] = (vals if order is None else vals[order]).tolist()
            else:
                cols[c] = [None] * n
    return _Batch(cols, (ns if order is None else ns[order]).tolist(), list(range(n)) if order is None
                  else order.tolist())


def _batch_from_rows(rows: list[tuple[Any, ...]]) -> tuple[_Batch, list[str]]:
    """SQL rows (profile_id, ts_ns, *_STORED) -> (_Batch, profile ids)."""
    if not rows:
        return _Batch({c: [] for c in _STORED}, []), []
    cols = list(zip(*rows, strict=True))
    return _Batch({c: list(cols[j + 2]) for j, c in enumerate(_STORED)}, list(cols[1])), list(cols[0])



def _strings(vals: Sequence[Any]) -> pd.arrays.ArrowStringArray:
    """str/None values -> pandas "string" (Arrow), ~4x faster than pd.array(vals, dtype="string")."""
    return pd.arrays.ArrowStringArray(pa.array(vals, type=pa.string()))


#: The columns of an export file, in `export_events()` order (event_id, ts, the rest, PROFILE_ID) and types.
_EXPORT_SCHEMA = pa.schema(
    [(EVENT_ID, pa.string()), (TS, pa.timestamp("ns", tz="UTC"))]
    + [(c, pa.float64() if c in NUMERIC_COLUMNS else pa.string()) for c in _STORED if c != EVENT_ID]
    + [(PROFILE_ID, pa.string())])


def _arrow_rows(rows: list[tuple[Any, ...]]) -> pa.Table:
    """SQL rows (profile_id, ts_ns, *_STORED) as an Arrow table of _EXPORT_SCHEMA (no pandas in between)."""
    arr = list(zip(*rows, strict=True))
    by_name = {PROFILE_ID: arr[0], TS: arr[1], **{c: arr[j + 2] for j, c in enumerate(_STORED)}}
    return pa.table([pa.array(by_name[f.name], type=pa.int64()).cast(f.type) if f.name == TS
                     else pa.array(by_name[f.name], type=f.type) for f in _EXPORT_SCHEMA], schema=_EXPORT_SCHEMA)


def _by_row(errors: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Error records in row order (stable: the errors of one row keep their order)."""
    return tuple(sorted(errors, key=lambda e: int(e[ERROR_ROW])))


def _jsonable(value: Any) -> Any:
    """Plain JSON types: datetimes as ISO 8601, records (named tuples) as objects, sets sorted, NaN/NA null."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "_asdict"):
        return _jsonable(value._asdict())
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame's rows as dicts of plain values (missing values None; `_jsonable` turns times into text)."""
    cols = {c: [None if v is pd.NA or (isinstance(v, float) and v != v) else v for v in frame[c].tolist()]
            for c in frame.columns}
    return [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def _served_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Served-list rows (recommendation_id, ts_ns, profile_id, surface, channel, model, model_version,
    item_ids JSON) as a typed frame in RECOMMENDATION_COLUMNS order."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(RECOMMENDATION_COLUMNS)
    data: dict[str, Any] = {c: pd.array(list(v), dtype="string") for c, v in zip(RECOMMENDATION_COLUMNS, cols,
                                                                               strict=True)}
    data[TS] = pd.DatetimeIndex(np.asarray(cols[1], dtype=np.int64).view("M8[ns]"), tz="UTC")
    items = pd.Series([tuple(json.loads(v)) for v in cols[-1]], dtype=object)
    data[ITEM_IDS] = items
    return pd.DataFrame(data)[list(RECOMMENDATION_COLUMNS)]


def _decision_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Decision-log rows (in DECISION_COLUMNS order, ts as epoch ns) as a typed frame."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(DECISION_COLUMNS)
    data: dict[str, Any] = {c: pd.array(list(v), dtype="string") for c, v in zip(DECISION_COLUMNS, cols, strict=True)}
    data[HOLDOUT] = np.array(cols[DECISION_COLUMNS.index(HOLDOUT)], dtype=bool)
    data[TS] = pd.DatetimeIndex(np.asarray(cols[DECISION_COLUMNS.index(TS)], dtype=np.int64).view("M8[ns]"), tz="UTC")
    return pd.DataFrame(data)[list(DECISION_COLUMNS)]


def _frame(rows: list[tuple[Any, ...]], cols: list[str]) -> pd.DataFrame:
    """Rows (profile_id, ts_ns, *cols) -> canonical dtypes, PROFILE_ID last."""
    if not rows:
        out = empty_events()
        for c in _EVENT_COLUMNS:
            if c not in out:
                out[c] = pd.Series(dtype="float64" if c in NUMERIC_COLUMNS else "string")
        out[PROFILE_ID] = pd.Series(dtype="string")
        return out
    arr = list(zip(*rows, strict=True))
    data: dict[str, Any] = {}
    data[TS] = pd.DatetimeIndex(np.asarray(arr[1], dtype=np.int64).view("M8[ns]"), tz="UTC")
    for j, c in enumerate(cols):
        vals = arr[j + 2]
        data[c] = np.array(vals, dtype="float64") if c in NUMERIC_COLUMNS else _strings(vals)  # None -> NaN/NA
    data[PROFILE_ID] = _strings(arr[0])
    order = [c for c in (EVENT_ID,) if c in cols] + [TS] + [c for c in cols if c != EVENT_ID] + [PROFILE_ID]
    return pd.DataFrame(data)[order]

