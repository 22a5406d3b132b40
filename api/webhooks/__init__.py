"""Webhook ingestion, the pure part: signature checks and normalisation.

Store webhooks (Shopify, WooCommerce) and Amazon SP-API notifications are
turned into canonical events (:mod:`engine.events`). Nothing here does I/O:
the HTTP route verifies the signature over the *raw* body with
:mod:`api.webhooks.signing`, parses the JSON with a parser that keeps 64-bit
integers exact (Python's ``json`` and ``orjson`` both do), and hands the result
to ``normalize_shopify`` / ``normalize_woocommerce`` / ``normalize_amazon``.

Every normaliser returns a :class:`NormalizeResult`: the events, the reasons
for anything it deliberately did not turn into an event, and a ``kind``
(``"events"``, ``"ping"`` or ``"ignored"``). Payloads that cannot be used at all
raise a :class:`WebhookError`.

Decisions that hold for every platform:

* **Ids** are kept as exact decimal strings. Shopify's ``admin_graphql_api_id``
  (``gid://shopify/Order/820982911946154508``) wins over the numeric ``id``
  when both are given, because docs samples copied through JavaScript carry
  rounded ``id`` values. A float id at or above 2**53 is rejected.
* **Money** is parsed into ``Decimal`` from strings or numbers, whatever the
  number of decimals (``"20"`` VND, ``"2.000"`` in a 3-decimal store). Shopify
  amounts are taken in the **shop currency** (``*_set.shop_money``, else the
  flat fields, which are shop currency) and the currency is recorded on the
  event.
* **Times** are converted to UTC. WooCommerce ``*_gmt`` fields carry no offset
  and are read as UTC.
* **Guests** (an order without a customer account) are keyed by a hash of the
  lower-cased email, salted with the store id: ``guest-<32 hex>``. The same
  guest gets the same key on every order of that store, and no email address
  enters the event stream. An order with neither a customer nor an email
  (e.g. a Shopify draft order created in the admin) yields no event; the reason
  is in ``skipped``.
* **Event ids** are deterministic so that retries and duplicate deliveries
  dedupe downstream. Lifecycle events are keyed by the entity, not by the
  delivery (``shopify:order:<id>:order_created``), so that the same order seen
  through two deliveries still dedupes; profile snapshots use the delivery id.

>>> parse_money("2.000"), parse_money(499), parse_money("20")
(Decimal('2.000'), Decimal('499'), Decimal('20'))
>>> parse_utc("2017-07-17T13:44:09-04:00").isoformat()
'2017-07-17T17:44:09+00:00'
>>> exact_id(None, "gid://shopify/Order/820982911946154508")
'820982911946154508'
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Literal

from engine.errors import ChurnflowError
from engine.events import Event

__all__ = [
    "CustomerResolver",
    "MalformedPayload",
    "NormalizeResult",
    "UnsupportedTopic",
    "WebhookError",
    "exact_id",
    "guest_customer_id",
    "is_woocommerce_ping",
    "normalize_amazon",
    "normalize_shopify",
    "normalize_woocommerce",
    "parse_money",
    "parse_utc",
    "sign_generic",
    "sign_shopify",
    "sign_woocommerce",
    "verify_generic",
    "verify_shopify",
    "verify_woocommerce",
]


class WebhookError(ChurnflowError):
    """A webhook that fails verification or normalisation; the message says why."""


class UnsupportedTopic(WebhookError):
    """A topic (or notification type) this module does not normalise."""


class MalformedPayload(WebhookError):
    """A body that is not usable: not JSON, a required field missing or of the wrong type."""


ResultKind = Literal["events", "ping", "ignored"]

CustomerResolver = Callable[[str], str | None]
"""Maps a platform order id to the customer id its ``order_created`` was keyed by."""


@dataclass(frozen=True)
class NormalizeResult:
    """What one webhook body normalised to.

    ``events``: canonical events, ready for the topic. ``skipped``: one line per
    part that was deliberately not turned into an event (or was turned into a
    degraded one), saying why. ``kind``: ``"events"`` when there is at least one
    event, ``"ping"`` for a platform's set-up ping (answer 200, do nothing),
    ``"ignored"`` otherwise. ``test``: the platform marked the body as a test
    (Shopify ``"test": true``); the events are produced anyway and the caller
    decides whether test orders count.
    """

    events: list[Event] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kind: ResultKind = "events"
    test: bool = False


def make_result(events: list[Event], skipped: list[str], *, test: bool = False) -> NormalizeResult:
    """A result whose ``kind`` is ``"events"`` if there are events, else ``"ignored"``."""
    return NormalizeResult(
        events=events, skipped=skipped, kind="events" if events else "ignored", test=test
    )


# --------------------------------------------------------------------------- money

_MAX_PLACES = Decimal("0.000001")  # engine.events.Money: decimal_places=6, max_digits=18


def parse_money(value: Any, where: str = "amount") -> Decimal:
    """A money value from a JSON string or number, exactly; raise ``MalformedPayload``.

    Floats go through ``repr`` (so ``89.99`` stays ``89.99``); more than six
    decimals are rounded half-even to six, the engine's precision.

    >>> parse_money(89.99), parse_money(" 1806.38 "), parse_money("-30.00")
    (Decimal('89.99'), Decimal('1806.38'), Decimal('-30.00'))
    >>> parse_money(10 / 3)
    Decimal('3.333333')
    >>> parse_money("12,00")
    Traceback (most recent call last):
    ...
    api.webhooks.MalformedPayload: amount: not a money amount: '12,00'
    """
    if isinstance(value, bool) or value is None:
        raise MalformedPayload(f"{where}: not a money amount: {value!r}")
    try:
        if isinstance(value, Decimal):
            amount = value
        elif isinstance(value, int):
            amount = Decimal(value)
        elif isinstance(value, float):
            amount = Decimal(repr(value))
        elif isinstance(value, str):
            amount = Decimal(value.strip())
        else:
            raise MalformedPayload(f"{where}: not a money amount: {value!r}")
    except InvalidOperation:
        raise MalformedPayload(f"{where}: not a money amount: {value!r}") from None
    if not amount.is_finite():
        raise MalformedPayload(f"{where}: not a finite amount: {value!r}")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -6:
        amount = amount.quantize(_MAX_PLACES, rounding=ROUND_HALF_EVEN)
    if len(amount.as_tuple().digits) > 18:
        raise MalformedPayload(f"{where}: amount too large: {value!r}")
    return amount


def shop_money(obj: Mapping[str, Any], flat_key: str) -> tuple[Decimal, str | None] | None:
    """Shopify: the shop-currency amount of ``flat_key`` and its currency, if present.

    Prefers ``<flat_key>_set.shop_money`` (amount and currency together), else
    the flat field, whose currency is the shop currency (``None`` here).
    """
    money_set = obj.get(f"{flat_key}_set")
    if isinstance(money_set, Mapping):
        shop = money_set.get("shop_money")
        if isinstance(shop, Mapping) and shop.get("amount") not in (None, ""):
            code = shop.get("currency_code") or shop.get("currency")
            return parse_money(shop["amount"], f"{flat_key}_set"), (str(code) if code else None)
    if obj.get(flat_key) not in (None, ""):
        return parse_money(obj[flat_key], flat_key), None
    return None


# --------------------------------------------------------------------------- time


def parse_utc(
    value: Any, where: str = "timestamp", *, naive_is_utc: bool = False
) -> datetime | None:
    """An ISO-8601 string (or epoch seconds) as an aware UTC datetime; ``None`` if empty.

    A string without an offset is refused unless ``naive_is_utc`` (WooCommerce
    ``*_gmt`` fields).

    >>> parse_utc("2023-12-11T04:44:14.751Z").isoformat()
    '2023-12-11T04:44:14.751000+00:00'
    >>> parse_utc("2021-11-30T07:32:10", naive_is_utc=True).isoformat()
    '2021-11-30T07:32:10+00:00'
    >>> parse_utc(1561479335).isoformat()
    '2019-06-25T16:15:35+00:00'
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise MalformedPayload(f"{where}: not a timestamp: {value!r}")
    if isinstance(value, int | float | Decimal):
        return datetime.fromtimestamp(float(value), UTC)
    if not isinstance(value, str):
        raise MalformedPayload(f"{where}: not a timestamp: {value!r}")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedPayload(f"{where}: not an ISO-8601 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        if not naive_is_utc:
            raise MalformedPayload(f"{where}: timestamp without a UTC offset: {value!r}")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def first_time(
    obj: Mapping[str, Any],
    keys: Iterable[str],
    received_at: datetime | None,
    *,
    naive_is_utc: bool = False,
) -> datetime:
    """The first non-empty timestamp among ``keys``, else ``received_at``, else now (UTC)."""
    for key in keys:
        when = parse_utc(obj.get(key), key, naive_is_utc=naive_is_utc)
        if when is not None:
            return when
    if received_at is not None:
        if received_at.tzinfo is None:
            raise MalformedPayload("received_at must be timezone-aware")
        return received_at.astimezone(UTC)
    return datetime.now(UTC)


# --------------------------------------------------------------------------- ids

_EXACT_FLOAT_LIMIT = 2**53


def _gid_suffix(gid: str) -> str | None:
    # gid://shopify/Order/820982911946154508 (optionally ?query)
    tail = gid.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].strip()
    return tail or None


def exact_id(value: Any, gid: Any = None, where: str = "id") -> str | None:
    """A platform id as an exact string; the ``gid://`` form wins when given.

    >>> exact_id(820982911946154508)
    '820982911946154508'
    >>> exact_id(820982911946154500, "gid://shopify/Order/820982911946154508")
    '820982911946154508'
    >>> exact_id("c1-f880"), exact_id(0), exact_id(""), exact_id(5.0)
    ('c1-f880', '0', None, '5')
    >>> exact_id(8.209829119461545e17)
    Traceback (most recent call last):
    ...
    api.webhooks.MalformedPayload: id: float id 8.209829119461545e+17 lost precision (>= 2**53)
    """
    if isinstance(gid, str) and gid.startswith("gid://"):
        suffix = _gid_suffix(gid)
        if suffix:
            return suffix
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        number = Decimal(repr(value)) if isinstance(value, float) else value
        if not number.is_finite() or abs(number) >= _EXACT_FLOAT_LIMIT:
            raise MalformedPayload(f"{where}: float id {value!r} lost precision (>= 2**53)")
        if number != number.to_integral_value():
            raise MalformedPayload(f"{where}: id is not an integer: {value!r}")
        return str(int(number))
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("gid://"):
            return _gid_suffix(text)
        return text or None
    raise MalformedPayload(f"{where}: not an id: {value!r}")


def guest_customer_id(store_id: str, email: Any) -> str | None:
    """The customer key of a guest: a salted hash of the normalised email, or ``None``.

    >>> guest_customer_id("demo", " John.Doe@Example.com ") == guest_customer_id(
    ...     "demo", "john.doe@example.com")
    True
    >>> guest_customer_id("demo", ""), guest_customer_id("demo", None)
    (None, None)
    >>> guest_customer_id("demo", "a@b.c")[:6]
    'guest-'
    """
    if not isinstance(email, str):
        return None
    normalised = email.strip().lower()
    if "@" not in normalised:
        return None
    digest = hashlib.sha256(f"{store_id}\n{normalised}".encode()).hexdigest()
    return f"guest-{digest[:32]}"


def clip(value: Any, limit: int) -> str | None:
    """A stripped, non-empty string cut to ``limit`` characters, else ``None``."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value).strip()
    return text[:limit] or None


def as_mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty mapping."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else an empty list."""
    return value if isinstance(value, list) else []


def quantity(value: Any, where: str = "quantity") -> int:
    """A non-negative item quantity (int, or an integral number/string)."""
    if value is None:
        return 1
    if isinstance(value, bool):
        raise MalformedPayload(f"{where}: not a quantity: {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise MalformedPayload(f"{where}: not a quantity: {value!r}") from None
    if not number.is_finite() or number != number.to_integral_value() or number < 0:
        raise MalformedPayload(f"{where}: not a quantity: {value!r}")
    return int(number)


# Public entry points, re-exported (the submodules import the names above).
from api.webhooks.amazon import normalize_amazon  # noqa: E402
from api.webhooks.shopify import normalize_shopify  # noqa: E402
from api.webhooks.signing import (  # noqa: E402
    sign_generic,
    sign_shopify,
    sign_woocommerce,
    verify_generic,
    verify_shopify,
    verify_woocommerce,
)
from api.webhooks.woocommerce import is_woocommerce_ping, normalize_woocommerce  # noqa: E402
