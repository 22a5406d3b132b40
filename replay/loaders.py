"""Replay loaders: historical order logs turned into canonical ``OrderEvent`` streams.

Two loaders, one error policy each, chosen on purpose:

* :func:`load_cdnow` reads the CDNOW master file bundled with ``lifetimes``. The file
  is a fixed, known data set, so a record that does not parse means the wrong file
  or a damaged copy: the loader raises :class:`LoadError` naming the file and line
  rather than benchmarking on a silently shrunken data set.
* :func:`load_table` reads a seller's own export (CSV, JSONL or Parquet), where a
  few bad rows are normal. Bad rows are collected into ``LoadResult.rejected`` as
  ``(row, raw, reason)`` dead letters; the caller decides (``strict=True`` raises on
  the first one instead, :meth:`LoadResult.raise_if_rejected` raises afterwards).
  Rows never vanish silently: every row is either an event or a dead letter.

Both return events sorted by event time; ties keep file order (stable sort).

>>> events = load_cdnow(until=date(1997, 1, 1))
>>> len(events), events[0].event_id, events[0].occurred_at.isoformat()
(212, 'cdnow:2', '1997-01-01T12:00:00+00:00')
>>> events[0].amount, events[0].line_items[0].quantity
(Decimal('11.77'), 1)
"""

from __future__ import annotations

import csv
import importlib.util
import json
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from engine.errors import ChurnflowError
from engine.events import (
    ORDER_TYPES,
    BrowseEvent,
    CustomerProfileEvent,
    EraseRequest,
    EventDecodeError,
    LineItem,
    MessageEvent,
    OrderEvent,
    encode_event,
    parse_event,
)

__all__ = [
    "ColumnMapping",
    "LoadError",
    "LoadResult",
    "Rejected",
    "cdnow_path",
    "iter_encoded",
    "load_cdnow",
    "load_table",
]

CDNOW_RECORDS = 69_659
CDNOW_CUSTOMERS = 23_570

# CDNOW is a day-granular log (dates, no times). Every record is placed at noon UTC
# of its date: noon is the one instant whose calendar date is the same date in every
# UTC offset from -12:00 to +12:00, so whichever store time zone a consumer uses to
# bucket events into days, the record stays on the day it was logged.
CDNOW_TIME_OF_DAY = time(12, 0, tzinfo=UTC)

Rejected = tuple[int, str, str]
"""A dead letter: (row, raw text, reason). See :func:`load_table` for what ``row`` is."""


class LoadError(ChurnflowError, ValueError):
    """A source file, line or row that cannot be turned into events; says where and why."""


@dataclass(frozen=True)
class LoadResult:
    """Events loaded from a table, sorted by event time, and the rows that were rejected."""

    events: list[OrderEvent]
    rejected: list[Rejected] = field(default_factory=list)

    def raise_if_rejected(self) -> None:
        """Raise :class:`LoadError` describing the first dead letters, if there are any."""
        if self.rejected:
            first = "; ".join(f"row {row}: {reason}" for row, _, reason in self.rejected[:3])
            raise LoadError(f"{len(self.rejected)} rejected row(s): {first}")


# --------------------------------------------------------------------------- CDNOW


def cdnow_path() -> Path:
    """Path of ``lifetimes/datasets/CDNOW_master.txt`` in the installed ``lifetimes``.

    Found through the package's import spec; ``lifetimes.datasets``' own loader is not
    used because it needs ``pkg_resources``.

    >>> cdnow_path().name
    'CDNOW_master.txt'
    """
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or spec.origin is None:
        raise LoadError("the lifetimes package is not installed; it bundles CDNOW_master.txt")
    path = Path(spec.origin).parent / "datasets" / "CDNOW_master.txt"
    if not path.is_file():
        raise LoadError(f"CDNOW master file not found at {path}")
    return path


def _parse_cdnow_line(fields: list[str]) -> tuple[str, date, int, Decimal]:
    if len(fields) != 4:
        raise ValueError(f"expected 4 whitespace-separated fields, got {len(fields)}")
    customer_id, day, cds, dollars = fields
    if not customer_id.isdigit():
        raise ValueError(f"customer_id {customer_id!r} is not a number")
    if len(day) != 8 or not day.isdigit():
        raise ValueError(f"date {day!r} is not YYYYMMDD")
    try:
        when = date(int(day[:4]), int(day[4:6]), int(day[6:]))
    except ValueError as exc:
        raise ValueError(f"date {day!r}: {exc}") from None
    if not cds.isdigit():
        raise ValueError(f"number_of_cds {cds!r} is not a non-negative integer")
    try:
        amount = Decimal(dollars)
    except InvalidOperation:
        raise ValueError(f"dollar_value {dollars!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"dollar_value {dollars!r} is not a finite amount >= 0")
    return customer_id, when, int(cds), amount


def load_cdnow(
    path: Path | None = None, *, store_id: str = "cdnow", until: date | None = None
) -> list[OrderEvent]:
    """Load the CDNOW master log as one ``order_created`` event per record.

    The file is whitespace separated: ``customer_id date(YYYYMMDD) number_of_cds
    dollar_value``; the copy in ``lifetimes`` starts with a header line, which is
    skipped (only on line 1). Blank lines are skipped; they are not records.

    Each record at physical line ``n`` (1-based, header included) becomes an event with
    ``event_id = "cdnow:n"``, ``order_id = "n"``, ``amount`` = ``dollar_value`` as an
    exact ``Decimal``, currency USD, one line item with ``quantity = number_of_cds``
    (CDNOW has no per-item prices, so ``price`` keeps its default), ``source="cdnow"``,
    and ``occurred_at`` = the record's date at 12:00 UTC (see ``CDNOW_TIME_OF_DAY``).

    ``until`` keeps records dated on or before it (inclusive). Events are sorted by
    ``(occurred_at, line)``. A malformed record raises :class:`LoadError` naming the
    line: the data set is fixed, so a bad record is a broken file, not noise.
    """
    path = cdnow_path() if path is None else Path(path)
    records: list[tuple[date, int, OrderEvent]] = []
    with path.open(encoding="ascii", errors="strict", newline=None) as handle:
        try:
            lines = list(handle)
        except UnicodeDecodeError as exc:
            raise LoadError(f"{path}: not an ASCII text file ({exc})") from None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if number == 1 and fields[0].lower() == "customer_id":
            continue
        try:
            customer_id, when, cds, amount = _parse_cdnow_line(fields)
        except ValueError as exc:
            raise LoadError(f"{path}:{number}: {exc}: {line.strip()!r}") from None
        if until is not None and when > until:
            continue
        event = OrderEvent(
            type="order_created",
            event_id=f"cdnow:{number}",
            store_id=store_id,
            customer_id=customer_id,
            occurred_at=datetime.combine(when, CDNOW_TIME_OF_DAY),
            order_id=str(number),
            amount=amount,
            currency="USD",
            line_items=(LineItem(quantity=cds),),
            source="cdnow",
        )
        records.append((when, number, event))
    records.sort(key=lambda r: (r[0], r[1]))
    return [event for _, _, event in records]


# ------------------------------------------------------------------ generic tables


@dataclass(frozen=True)
class ColumnMapping:
    """Which source column holds which canonical field of an ``OrderEvent``.

    Required: ``customer_id``, ``occurred_at`` and ``amount`` (column names). Optional
    columns fall back to defaults:

    * ``currency`` column, else the constant ``default_currency`` (one of them must be set);
    * ``order_id`` column, else the row's deterministic id (see ``event_id``);
    * ``event_type`` column (values must be order types: ``order_created``,
      ``order_paid``, ``order_refunded``, ``order_cancelled``), else ``default_event_type``;
    * ``event_id`` column, else ``"<prefix>:<row>"`` with prefix = the file name (or
      ``event_id_prefix``), so a replay of the same file gives the same ids.

    Timestamps: strings are ISO 8601 (``datetime.fromisoformat``) unless
    ``timestamp_format`` (``strptime``) is given; native datetimes (Parquet) are used as
    they are; numbers are epoch seconds or milliseconds only if ``epoch_unit`` is set.
    A timestamp without an offset is taken to be in ``timezone`` (an IANA name, default
    UTC); all event times are then normalised to UTC. A bare date is midnight there.
    """

    customer_id: str
    occurred_at: str
    amount: str
    currency: str | None = None
    default_currency: str | None = None
    order_id: str | None = None
    event_type: str | None = None
    default_event_type: str = "order_created"
    event_id: str | None = None
    event_id_prefix: str | None = None
    timestamp_format: str | None = None
    timezone: str = "UTC"
    epoch_unit: Literal["s", "ms"] | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.currency is None and self.default_currency is None:
            raise LoadError("ColumnMapping needs a currency column or a default_currency")
        if self.default_event_type not in ORDER_TYPES:
            raise LoadError(f"default_event_type {self.default_event_type!r} is not an order type")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise LoadError(f"unknown IANA time zone {self.timezone!r}") from exc


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _timestamp(value: Any, mapping: ColumnMapping, tz: tzinfo) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime.combine(value, time(0))
    elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        if mapping.epoch_unit is None:
            raise ValueError(f"numeric timestamp {value!r} but no epoch_unit in the mapping")
        seconds = Decimal(str(value)) / (1000 if mapping.epoch_unit == "ms" else 1)
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=float(seconds))
    elif isinstance(value, str):
        text = value.strip()
        try:
            if mapping.timestamp_format is not None:
                parsed = datetime.strptime(text, mapping.timestamp_format)
            else:
                parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"timestamp {text!r}: {exc}") from None
    else:
        raise ValueError(f"timestamp of unsupported type {type(value).__name__}")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def _amount(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"amount {value!r} is not a number")
    if isinstance(value, float):
        value = repr(value)  # shortest round-trip text, e.g. 19.9 -> "19.9"
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"amount {value!r} is not a number") from None


def _row_to_event(
    row: Mapping[str, Any],
    number: int,
    mapping: ColumnMapping,
    *,
    store_id: str,
    prefix: str,
    tz: tzinfo,
) -> OrderEvent:
    def column(name: str, what: str) -> Any:
        if name not in row:
            raise ValueError(f"missing column {name!r} ({what})")
        value = row[name]
        if _is_missing(value):
            raise ValueError(f"empty {what} (column {name!r})")
        return value

    event_type = mapping.default_event_type
    if mapping.event_type is not None and not _is_missing(row.get(mapping.event_type)):
        event_type = _text(row[mapping.event_type])
    if event_type not in ORDER_TYPES:
        raise ValueError(f"event type {event_type!r} is not an order type")
    row_id = f"{prefix}:{number}"
    obj: dict[str, Any] = {
        "type": event_type,
        "event_id": (_text(column(mapping.event_id, "event_id")) if mapping.event_id else row_id),
        "store_id": store_id,
        "customer_id": _text(column(mapping.customer_id, "customer_id")),
        "occurred_at": _timestamp(column(mapping.occurred_at, "occurred_at"), mapping, tz),
        "order_id": (_text(column(mapping.order_id, "order_id")) if mapping.order_id else row_id),
        "amount": _amount(column(mapping.amount, "amount")),
        "currency": (
            _text(column(mapping.currency, "currency"))
            if mapping.currency
            else mapping.default_currency
        ),
    }
    if mapping.source is not None:
        obj["source"] = mapping.source
    try:
        event = parse_event(obj)
    except EventDecodeError as exc:
        raise ValueError(str(exc)) from None
    assert isinstance(event, OrderEvent)
    return event


_Row = tuple[int, dict[str, Any] | str, str]
"""(row number, the row's fields or why they could not be read, raw text)."""


def _read_csv(path: Path) -> Iterator[_Row]:
    """(line where the record starts, row, raw text) for each data row of a CSV file."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        header = [name.strip() for name in header]
        start = reader.line_num + 1
        for values in reader:
            raw = ",".join(values)
            if not values or all(not v.strip() for v in values):
                start = reader.line_num + 1
                continue
            if len(values) != len(header):
                yield start, f"{len(values)} fields, the header has {len(header)}", raw
            else:
                yield start, dict(zip(header, values, strict=True)), raw
            start = reader.line_num + 1


def _read_jsonl(path: Path) -> Iterator[_Row]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text, parse_float=Decimal)
            except json.JSONDecodeError as exc:
                yield number, f"not JSON: {exc}", text
                continue
            if not isinstance(obj, dict):
                yield number, f"not a JSON object but {type(obj).__name__}", text
                continue
            yield number, obj, text


def _read_parquet(path: Path) -> Iterator[_Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LoadError(f"{path}: reading Parquet needs pyarrow, which is not installed") from None
    table = pq.read_table(path)
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row, repr(row)


_READERS = {
    ".csv": _read_csv,
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".parquet": _read_parquet,
    ".pq": _read_parquet,
}


def load_table(
    path: Path | str, mapping: ColumnMapping, *, store_id: str, strict: bool = False
) -> LoadResult:
    """Load order events from a CSV, JSONL or Parquet file, chosen by the file extension.

    Columns are mapped to canonical fields by ``mapping`` (see :class:`ColumnMapping`).
    Rows that cannot be mapped or fail event validation become dead letters in
    ``LoadResult.rejected`` as ``(row, raw, reason)`` — or, with ``strict=True``, raise
    :class:`LoadError` at the first one. ``row`` is the 1-based line where the record
    starts for CSV (header = line 1) and JSONL, and the 1-based row number for Parquet;
    it is also the ``<row>`` of deterministic event ids. Blank lines are not rows.
    Events are sorted by ``occurred_at``; ties keep file order.
    """
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise LoadError(f"{path}: unsupported extension {path.suffix!r} (csv, jsonl, parquet)")
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    tz = zoneinfo.ZoneInfo(mapping.timezone)
    prefix = mapping.event_id_prefix or path.name
    events: list[OrderEvent] = []
    rejected: list[Rejected] = []
    for number, row, raw in reader(path):
        try:
            if isinstance(row, str):
                raise ValueError(row)
            event = _row_to_event(row, number, mapping, store_id=store_id, prefix=prefix, tz=tz)
        except ValueError as exc:
            if strict:
                raise LoadError(f"{path}: row {number}: {exc}") from None
            rejected.append((number, raw, str(exc)))
            continue
        events.append(event)
    events.sort(key=lambda e: e.occurred_at)
    return LoadResult(events=events, rejected=rejected)


def iter_encoded(
    events: Iterable[OrderEvent | BrowseEvent | MessageEvent | CustomerProfileEvent | EraseRequest],
) -> Iterator[bytes]:
    """Wire bytes of each event, in order (``engine.events.encode_event``).

    >>> from engine.events import decode_event
    >>> first = load_cdnow(until=date(1997, 1, 1))[:1]
    >>> [decode_event(raw) for raw in iter_encoded(first)] == first
    True
    """
    for event in events:
        yield encode_event(event)
