"""Attribution (`training.report.attribution_report`, `mirror report attribution`) on a known answer, and
the `position` rule of the events that carry a list's id back."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.schema import (
    POSITION,
    POSITION_RULE,
    RECOMMENDATION_ID,
    IdentifierHasher,
    _validate_rowwise,
    _validate_vectorised,
    validate_events,
)
from features.store import ServedList, SQLiteProfileStore
from training import report
from training.cli import app

HASHER = IdentifierHasher("report-test-key")
T0 = pd.Timestamp("2025-03-01T12:00:00Z")
M, FALLBACK = "mirror-recommender", "popularity-fallback"


def served_frame() -> pd.DataFrame:
    rows = [("r1", M, "3", "home", ("a", "b", "c", "d")), ("r2", M, "3", "home", ("a", "b")),
            ("r3", M, "4", "product", ("x", "y")), ("r4", FALLBACK, None, "home", ())]
    return pd.DataFrame({"recommendation_id": [r[0] for r in rows], "ts": [T0] * len(rows),
                         "profile_id": ["p1", None, "p2", None], "surface": [r[3] for r in rows],
                         "channel": ["web"] * len(rows), "model": [r[1] for r in rows],
                         "model_version": [r[2] for r in rows], "item_ids": [r[4] for r in rows]})


def ev(n: int, rid: str | None, etype: str, item: str, price: float | None = None, qty: float | None = None,
       position: int | None = None) -> dict[str, object]:
    out: dict[str, object] = {"event_id": f"e{n}", "ts": (T0 + pd.Timedelta(minutes=n)).isoformat(),
                              "channel": "web", "event_type": etype, "customer_id": "c1", "item_id": item}
    for key, value in (("recommendation_id", rid), ("price", price), ("quantity", qty), ("position", position)):
        if value is not None:
            out[key] = value
    return out


def events_records() -> list[dict[str, object]]:
    return [
        ev(1, "r1", "view", "a", position=0), ev(2, "r1", "view", "a", position=0),  # one click, twice
        ev(3, "r1", "email_click", "b", position=1), ev(4, "r1", "add_to_cart", "a", position=0),
        ev(5, "r1", "purchase", "a", 10.0, 2), ev(6, "r1", "purchase", "c", 5.0),  # bought without a click
        ev(7, "r2", "view", "b", position=1),
        ev(8, "r3", "purchase", "y", 7.0, 1),
        ev(9, "r-never-served", "view", "a"), ev(10, None, "view", "a"), ev(11, None, "purchase", "a", 99.0),
    ]


def test_known_answer_per_model_version_and_surface() -> None:
    served = served_frame()
    events = validate_events(events_records(), HASHER).valid
    before = (served.copy(), events.copy())
    got = report.attribution_report(served, events)
    pd.testing.assert_frame_equal(served, before[0])
    pd.testing.assert_frame_equal(events, before[1])  # the callers' frames are not touched
    assert tuple(got.columns) == report.ATTRIBUTION_COLUMNS
    rows = {tuple(r[:3]): r[3:] for r in got.itertuples(index=False)}
    assert list(rows) == [(M, "3", "home"), (M, "4", "product"), (FALLBACK, "", "home")]
    lists, shown, clicks, ctr, carts, bought, conversion, revenue = rows[(M, "3", "home")]
    assert (lists, shown, clicks, carts, bought) == (2, 6, 3, 1, 2)
    assert ctr == pytest.approx(3 / 6) and conversion == pytest.approx(1 / 3) and revenue == pytest.approx(25.0)
    lists, shown, clicks, ctr, carts, bought, conversion, revenue = rows[(M, "4", "product")]
    assert (lists, shown, clicks, ctr, carts, bought, revenue) == (1, 2, 0, 0.0, 0, 1, 7.0)
    assert math.isnan(conversion)  # no click to convert
    lists, shown, clicks, ctr, carts, bought, conversion, revenue = rows[(FALLBACK, "", "home")]
    assert (lists, shown, clicks, bought, revenue) == (1, 0, 0, 0, 0.0) and math.isnan(ctr)
    assert got["lists_served"].dtype == "int64" and got["revenue"].dtype == "float64"


def test_nothing_served_and_missing_columns() -> None:
    empty = report.attribution_report(served_frame().iloc[:0], validate_events(events_records(), HASHER).valid)
    assert empty.empty and tuple(empty.columns) == report.ATTRIBUTION_COLUMNS
    with pytest.raises(ValueError, match="events: missing column.*recommendation_id"):
        report.attribution_report(served_frame(), pd.DataFrame({"event_type": [], "item_id": []}))


def test_the_store_keeps_the_id_and_position_with_the_event_and_the_cli_reports(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SQLiteProfileStore(db, HASHER)
    store.append_events(validate_events(events_records(), HASHER).valid, validated=True)
    lists = served_frame()
    store.record_recommendations([ServedList(r.recommendation_id, T0 + pd.Timedelta(days=i), None, r.surface,
                                             r.channel, r.model, r.model_version, r.item_ids)
                                  for i, r in enumerate(lists.itertuples(index=False))])
    kept = store.attributed_events()
    assert kept[RECOMMENDATION_ID].tolist()[:3] == ["r1", "r1", "r1"] and kept[POSITION].tolist()[:3] == [0, 0, 1]
    assert len(kept) == 9  # the two events without an id are not attribution's
    direct = report.attribution_report(store.recommendations(), store.attributed_events())
    store.close()
    out = tmp_path / "attribution.csv"
    res = CliRunner().invoke(app, ["report", "attribution", "--store", str(db), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "mirror-recommender" in res.output and "ctr" in res.output
    written = pd.read_csv(out, keep_default_na=False, na_values=[""], dtype={"model_version": str})
    assert written["clicks"].tolist() == direct["clicks"].tolist() == [3, 0, 0]
    assert written["revenue"].tolist() == [25.0, 7.0, 0.0]
    # --since: lists served from then on (r3 on day 2, r4 on day 3)
    res = CliRunner().invoke(app, ["report", "attribution", "--store", str(db), "--since", "2025-03-03"])
    assert res.exit_code == 0 and "product" in res.output and "home" in res.output and " 3 " not in res.output
    res = CliRunner().invoke(app, ["report", "attribution", "--store", str(db), "--since", "2030-01-01"])
    assert res.exit_code == 0 and "no served lists" in res.output


@pytest.mark.parametrize("args, message", [
    (["--store", "no-such.db"], "store not found"),
    (["--since", "yesterday-ish"], "--since"),
    (["--out", "report.txt"], "--out"),
])
def test_cli_errors_are_one_line_naming_the_option(tmp_path: Path, args: list[str], message: str) -> None:
    db = tmp_path / "s.db"
    SQLiteProfileStore(db, HASHER).close()
    full = ["report", "attribution", *(["--store", str(db)] if "--store" not in args else []), *args]
    res = CliRunner().invoke(app, [a if a != "no-such.db" else str(tmp_path / a) for a in full])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("path", [_validate_rowwise, _validate_vectorised])
def test_position_is_a_non_negative_integer_in_both_validation_paths(path) -> None:
    values = [0, 3, 2.0, -1, 1.5, "2", "x"]
    result = path([ev(n, "r1", "view", "a") | {"position": v} for n, v in enumerate(values)], HASHER)
    bad = dict(zip(result.errors["row"], result.errors["reason"], strict=True))
    assert bad == {3: POSITION_RULE, 4: POSITION_RULE, 6: "must be a number"}
    assert set(result.errors["field"]) == {POSITION}
    assert result.valid[POSITION].tolist() == [0.0, 3.0, 2.0, 2.0]
