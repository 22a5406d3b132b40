"""Replay loaders: CDNOW master file and generic CSV / JSONL / Parquet tables."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from engine.events import decode_event
from replay.loaders import (
    CDNOW_CUSTOMERS,
    CDNOW_RECORDS,
    ColumnMapping,
    LoadError,
    cdnow_path,
    iter_encoded,
    load_cdnow,
    load_table,
)


@pytest.fixture(scope="module")
def cdnow() -> list:
    return load_cdnow()


def test_cdnow_counts_and_order(cdnow: list) -> None:
    assert len(cdnow) == CDNOW_RECORDS == 69_659
    assert len({e.customer_id for e in cdnow}) == CDNOW_CUSTOMERS == 23_570
    assert len({e.event_id for e in cdnow}) == len(cdnow)
    keys = [(e.occurred_at, int(e.order_id)) for e in cdnow]
    assert keys == sorted(keys)
    assert cdnow[0].occurred_at == datetime(1997, 1, 1, 12, tzinfo=UTC)
    assert cdnow[-1].occurred_at == datetime(1998, 6, 30, 12, tzinfo=UTC)


def test_cdnow_record_mapping(cdnow: list) -> None:
    first = cdnow[0]  # line 2 of the file: " 00001 19970101  1   11.77"
    assert first.type == "order_created"
    assert first.event_id == "cdnow:2" and first.order_id == "2"
    assert first.customer_id == "00001"
    assert first.store_id == "cdnow" and first.source == "cdnow"
    assert first.amount == Decimal("11.77") and str(first.amount) == "11.77"
    assert first.currency == "USD"
    assert first.line_items[0].quantity == 1
    total = sum((e.amount for e in cdnow), Decimal(0))
    assert total == Decimal("2500315.63")
    assert sum(e.line_items[0].quantity for e in cdnow) == 167_881


def test_cdnow_until_is_inclusive(cdnow: list) -> None:
    until = date(1997, 3, 31)
    part = load_cdnow(until=until, store_id="other")
    expected = [e for e in cdnow if e.occurred_at.date() <= until]
    assert [e.event_id for e in part] == [e.event_id for e in expected]
    assert part[-1].occurred_at.date() == until
    assert {e.store_id for e in part} == {"other"}


def test_cdnow_path_is_the_bundled_file() -> None:
    path = cdnow_path()
    assert path.parts[-3:] == ("lifetimes", "datasets", "CDNOW_master.txt")


def test_cdnow_malformed_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "cdnow.txt"
    path.write_text(
        " customer_id  date number_of_cds  dollar_value\n"
        " 00001 19970101  1   11.77\n"
        "\n"
        " 00002 19970231  1   12.00\n"
    )
    with pytest.raises(LoadError, match=r"cdnow\.txt:4: date '19970231'"):
        load_cdnow(path)
    path.write_text(" 00001 19970101  1   11.77\n 00002 19970102  x   12.00\n")
    with pytest.raises(LoadError, match=r":2: number_of_cds 'x'"):
        load_cdnow(path)
    path.write_text(" 00001 19970101  1\n")
    with pytest.raises(LoadError, match=r":1: expected 4"):
        load_cdnow(path)


def test_cdnow_small_file_without_header_sorted_by_time(tmp_path: Path) -> None:
    path = tmp_path / "cdnow.txt"
    path.write_text(" 00002 19970105 2 5.00\r\n 00001 19970103 1 0.00\r\n 00003 19970103 1 1.5\r\n")
    events = load_cdnow(path)
    assert [e.event_id for e in events] == ["cdnow:2", "cdnow:3", "cdnow:1"]
    assert events[2].amount == Decimal("5.00") and events[2].line_items[0].quantity == 2


MAPPING = ColumnMapping(
    customer_id="cust",
    occurred_at="ts",
    amount="total",
    currency="cur",
    order_id="oid",
    event_type="kind",
)

ROWS = [
    # cust, ts, total, cur, oid, kind
    ("c1", "2026-03-01T10:00:00+01:00", "19.90", "eur", "o1", ""),
    ("c2", "2026-03-01T08:00:00", "5", "USD", "o2", "order_paid"),  # naive -> UTC
    ("c1", "2026-02-28T23:00:00Z", "7.25", "EUR", "o3", "order_created"),
    ("c3", "not a time", "1.00", "EUR", "o4", ""),
    ("c4", "2026-03-02T00:00:00Z", "-3", "EUR", "o5", ""),
    ("c5", "2026-03-02T00:00:00Z", "3", "EUR", "o6", "page_view"),
    ("", "2026-03-02T00:00:00Z", "3", "EUR", "o7", ""),
]


def _check_table_result(result, name: str) -> None:
    events = result.events
    assert [e.order_id for e in events] == ["o3", "o2", "o1"]
    o3, o2, o1 = events
    assert o1.occurred_at == datetime(2026, 3, 1, 9, tzinfo=UTC)
    assert o2.occurred_at == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert o1.amount == Decimal("19.90") and o1.currency == "EUR"
    assert o1.type == "order_created" and o2.type == "order_paid"
    assert o3.amount == Decimal("7.25")
    assert o1.store_id == "shop"
    rows = {row: reason for row, _raw, reason in result.rejected}
    assert len(rows) == 4
    reasons = list(rows.values())
    assert "not a time" in reasons[0]
    assert "amount" in reasons[1]
    assert "page_view" in reasons[2]
    assert "customer_id" in reasons[3]
    assert o1.event_id.startswith(f"{name}:")
    with pytest.raises(LoadError, match="4 rejected"):
        result.raise_if_rejected()


def test_csv_with_mapping(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    lines = ["cust,ts,total,cur,oid,kind"] + [",".join(r) for r in ROWS] + ["c9,x"]
    path.write_text("\n".join(lines) + "\n")
    result = load_table(path, MAPPING, store_id="shop")
    rejected = list(result.rejected)
    assert rejected[-1][0] == 9 and "2 fields" in rejected[-1][2]
    result = type(result)(events=result.events, rejected=rejected[:-1])
    _check_table_result(result, "orders.csv")
    # row numbers are file lines (header = line 1) and feed deterministic ids
    by_order = {e.order_id: e for e in result.events}
    assert [r[0] for r in result.rejected] == [5, 6, 7, 8]
    mapping = ColumnMapping(customer_id="cust", occurred_at="ts", amount="total", currency="cur")
    again = load_table(path, mapping, store_id="shop")  # no type column: all order_created
    ids = {"orders.csv:2", "orders.csv:3", "orders.csv:4", "orders.csv:7"}
    assert {e.event_id for e in again.events} == ids
    assert {e.order_id for e in again.events} == ids
    assert {e.type for e in again.events} == {"order_created"}
    assert by_order["o1"].event_id == "orders.csv:2"
    with pytest.raises(LoadError, match="row 5"):
        load_table(path, MAPPING, store_id="shop", strict=True)


def test_jsonl_with_mapping(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    keys = ("cust", "ts", "total", "cur", "oid", "kind")
    lines = [json.dumps(dict(zip(keys, r, strict=True))) for r in ROWS]
    lines.insert(3, "")  # blank lines are not rows
    lines.append("{not json")
    lines.append("[1, 2]")
    # numbers in JSON stay exact
    lines[0] = lines[0].replace('"19.90"', "19.90")
    path.write_text("\n".join(lines) + "\n")
    result = load_table(path, MAPPING, store_id="shop")
    tail = result.rejected[-2:]
    assert "not JSON" in tail[0][2] and "not a JSON object" in tail[1][2]
    assert tail[0][1] == "{not json"
    _check_table_result(type(result)(result.events, result.rejected[:-2]), "orders.jsonl")
    assert str(result.events[2].amount) == "19.90"


def test_configurable_timezone_format_and_default_currency(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text("who,when,sum,id\n7,01/03/2026 10:30,12.5,e-1\n8,01/03/2026 09:00,1,e-2\n")
    mapping = ColumnMapping(
        customer_id="who",
        occurred_at="when",
        amount="sum",
        default_currency="gbp",
        event_id="id",
        timestamp_format="%d/%m/%Y %H:%M",
        timezone="Europe/Berlin",
        source="woocommerce",
    )
    result = load_table(path, mapping, store_id="shop")
    assert not result.rejected
    assert [e.event_id for e in result.events] == ["e-2", "e-1"]
    assert result.events[1].occurred_at == datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    assert result.events[1].currency == "GBP" and result.events[1].source == "woocommerce"


def test_mapping_and_extension_errors(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="currency"):
        ColumnMapping(customer_id="a", occurred_at="b", amount="c")
    with pytest.raises(LoadError, match="time zone"):
        ColumnMapping(customer_id="a", occurred_at="b", amount="c", currency="d", timezone="Mars")
    with pytest.raises(LoadError, match="unsupported extension"):
        load_table(tmp_path / "x.xlsx", MAPPING, store_id="shop")


def test_parquet_with_mapping(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "cust": ["c1", "c2", "c3"],
            "ts": pa.array(
                [
                    datetime(2026, 3, 1, 9, tzinfo=UTC),
                    datetime(2026, 3, 1, 8, tzinfo=UTC),
                    datetime(2026, 3, 1, 7, tzinfo=UTC),
                ],
                type=pa.timestamp("us", tz="UTC"),
            ),
            "total": pa.array(
                [Decimal("19.90"), Decimal("5.00"), Decimal("-1.00")], type=pa.decimal128(10, 2)
            ),
            "cur": ["EUR", "USD", "EUR"],
            "oid": ["o1", "o2", "o3"],
        }
    )
    path = tmp_path / "orders.parquet"
    pq.write_table(table, path)
    result = load_table(path, MAPPING, store_id="shop")
    assert [e.order_id for e in result.events] == ["o2", "o1"]
    assert result.events[1].amount == Decimal("19.90")
    assert result.events[1].event_id == "orders.parquet:1"
    assert [r[0] for r in result.rejected] == [3]


def test_iter_encoded_round_trips(cdnow: list) -> None:
    sample = cdnow[:50] + cdnow[-50:]
    encoded = list(iter_encoded(sample))
    assert all(isinstance(raw, bytes) for raw in encoded)
    assert [decode_event(raw) for raw in encoded] == sample
