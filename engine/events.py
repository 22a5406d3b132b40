"""The canonical, versioned event types of churnflow, and their wire format.

Every source — store webhooks, the replay loaders, the simulator, delivery
providers — produces these events, and the dataflow consumes nothing else.
Every event carries ``event_id`` (for deduplication: webhooks are retried),
``store_id``, ``customer_id`` and a timezone-aware ``occurred_at``, which is
normalised to UTC.

The wire format is JSON encoded with orjson; money travels as a decimal string
so that no float rounding happens at the edge.

>>> raw = (b'{"type": "order_created", "event_id": "o-1", "store_id": "demo",'
...        b' "customer_id": "42", "occurred_at": "2026-03-01T09:30:00+01:00",'
...        b' "order_id": "1001", "amount": "19.90", "currency": "eur"}')
>>> event = decode_event(raw)
>>> event.occurred_at.isoformat(), event.amount, event.currency
('2026-03-01T08:30:00+00:00', Decimal('19.90'), 'EUR')
>>> decode_event(encode_event(event)) == event
True
>>> decode_event(b'{"type": "order_created"}')
Traceback (most recent call last):
...
engine.events.EventDecodeError: invalid event: order_created.event_id: Field required; ...
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from engine.errors import ChurnflowError

SCHEMA_VERSION: Literal[1] = 1

Channel = Literal["email", "sms", "push", "social", "webhook"]
CHANNELS: tuple[Channel, ...] = ("email", "sms", "push", "social", "webhook")

ORDER_TYPES = frozenset({"order_created", "order_paid", "order_refunded", "order_cancelled"})
BROWSE_TYPES = frozenset(
    {
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "checkout_started",
    }
)
MESSAGE_TYPES = frozenset(
    {
        "message_sent",
        "message_delivered",
        "message_opened",
        "message_clicked",
        "message_bounced",
        "message_unsubscribed",
        "message_complained",
    }
)

# Store ids go into Redis keys as hash tags ``{store}``, so braces and colons
# are not allowed in them.
StoreId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
CustomerId = Annotated[str, Field(min_length=1, max_length=128)]
Money = Annotated[Decimal, Field(allow_inf_nan=False, max_digits=18, decimal_places=6)]
# Counts fit the wire format: orjson refuses integers beyond 64 bits.
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]


class EventDecodeError(ChurnflowError):
    """Raw bytes that are not a valid canonical event; the message says why."""


class _EventBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    store_id: StoreId
    customer_id: CustomerId
    occurred_at: AwareDatetime
    source: Annotated[str, Field(max_length=32)] | None = None
    """Marketplace or system the event came from: shopify, woocommerce, amazon, ..."""

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @property
    def key(self) -> str:
        """The partition key: ``store:customer``."""
        return f"{self.store_id}:{self.customer_id}"

    @property
    def ts(self) -> float:
        """Event time as float seconds since the epoch (the hot path's unit)."""
        return self.occurred_at.timestamp()


class LineItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: Annotated[str, Field(max_length=128)] | None = None
    category: Annotated[str, Field(max_length=128)] | None = None
    quantity: Count = 1
    price: Money = Decimal(0)
    discount_code: Annotated[str, Field(max_length=64)] | None = None


class OrderEvent(_EventBase):
    """An order was created, paid, refunded (``amount`` = refunded sum) or cancelled."""

    type: Literal["order_created", "order_paid", "order_refunded", "order_cancelled"]
    order_id: Annotated[str, Field(min_length=1, max_length=128)]
    amount: Money
    currency: Annotated[str, Field(min_length=3, max_length=3)]
    line_items: tuple[LineItem, ...] = ()
    discount_codes: tuple[str, ...] = ()

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str) -> str:
        if not value.isalpha():
            raise ValueError("currency must be a 3-letter ISO 4217 code")
        return value.upper()

    @field_validator("amount")
    @classmethod
    def _not_negative(cls, value: Decimal) -> Decimal:
        if value < 0:
            raise ValueError("amount must be >= 0 (refunds carry the refunded sum)")
        return value


class BrowseEvent(_EventBase):
    """Storefront activity: views, searches, cart changes, checkout start."""

    type: Literal[
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "checkout_started",
    ]
    url: Annotated[str, Field(max_length=2048)] | None = None
    sku: Annotated[str, Field(max_length=128)] | None = None
    category: Annotated[str, Field(max_length=128)] | None = None
    query: Annotated[str, Field(max_length=512)] | None = None
    quantity: Count = 1
    value: Money | None = None
    currency: Annotated[str, Field(min_length=3, max_length=3)] | None = None


class MessageEvent(_EventBase):
    """What happened to a message churnflow (or the seller) sent."""

    type: Literal[
        "message_sent",
        "message_delivered",
        "message_opened",
        "message_clicked",
        "message_bounced",
        "message_unsubscribed",
        "message_complained",
    ]
    channel: Channel
    message_id: Annotated[str, Field(max_length=200)] | None = None
    rule_id: Annotated[str, Field(max_length=128)] | None = None
    step: Count | None = None
    """The rule's step (0-based) of a recall message."""
    variant: Annotated[str, Field(max_length=64)] | None = None
    """The A/B arm of a recall message, if its rule runs an experiment."""
    offer_percent_off: Annotated[int, Field(ge=0, le=100)] | None = None
    offer_free_shipping: bool | None = None
    """The offer a recall message made (effect tracking costs it per conversion)."""


class CustomerProfileEvent(_EventBase):
    """Who the customer is and how they may be contacted."""

    type: Literal["customer_profile"]
    country: Annotated[str, Field(min_length=2, max_length=2)] | None = None
    timezone: Annotated[str, Field(max_length=64)] | None = None
    locale: Annotated[str, Field(max_length=35)] | None = None
    first_name: Annotated[str, Field(max_length=100)] | None = None
    consent: dict[Channel, bool] = Field(default_factory=dict)

    @field_validator("country")
    @classmethod
    def _country_upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value


class EraseRequest(_EventBase):
    """GDPR/CCPA erasure: the engine forgets the customer."""

    type: Literal["erase_request"]


Event = Annotated[
    OrderEvent | BrowseEvent | MessageEvent | CustomerProfileEvent | EraseRequest,
    Field(discriminator="type"),
]
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_event(obj: Any) -> Event:
    """Validate an already-parsed JSON object into an event.

    >>> parse_event({"type": "erase_request", "event_id": "e", "store_id": "s",
    ...              "customer_id": "c", "occurred_at": "2026-01-01T00:00:00Z"}).type
    'erase_request'
    """
    try:
        return _EVENT_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise EventDecodeError(f"invalid event: {_describe(exc)}") from None


def decode_event(raw: bytes | str) -> Event:
    """Decode wire bytes into an event; raise ``EventDecodeError`` saying why not."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventDecodeError(f"not a JSON object but {type(obj).__name__}")
    return parse_event(obj)


def encode_event(event: _EventBase) -> bytes:
    """Encode an event to its wire bytes (JSON; money as decimal strings).

    Written by pydantic's own serializer in one step: the same bytes as orjson over
    ``model_dump(mode="json")`` (checked on every CDNOW record and 46,174 simulated events
    of 16 types), in about half the time, which the replay pays once per record.

    >>> from datetime import UTC, datetime
    >>> from decimal import Decimal
    >>> event = OrderEvent(type="order_created", event_id="e1", store_id="s",
    ...     customer_id="Zoë \\x1f", order_id="1", amount=Decimal("9.90"), currency="EUR",
    ...     occurred_at=datetime(1997, 1, 1, 12, tzinfo=UTC))
    >>> encode_event(event) == orjson.dumps(event.model_dump(mode="json"))
    True
    """
    return bytes(type(event).__pydantic_serializer__.to_json(event))
