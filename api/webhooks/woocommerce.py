"""WooCommerce webhook bodies (REST API v3 shape) → canonical events.

The body is given as raw bytes because WooCommerce's set-up **ping** is not
JSON: when a webhook is saved WooCommerce POSTs ``webhook_id=<id>``
(form-encoded, no ``X-WC-Webhook-*`` headers, no signature) and reports a
delivery error unless it gets HTTP 200. It comes back as ``kind="ping"``.

=========================  ========================================================
topic                      events
=========================  ========================================================
order.created              ``order_created`` (at ``date_created_gmt``), plus
                           ``order_paid`` if ``date_paid_gmt`` is set, plus the
                           cancellation/refunds below
order.updated / .restored  ``order_paid`` if paid, ``order_cancelled`` if status is
                           ``cancelled``, one ``order_refunded`` per ``refunds[]``
                           entry (or for the whole total if status is ``refunded``
                           and no refund is listed); nothing else
order.deleted              nothing (only ``{"id": …}`` is sent)
customer.created|updated   ``customer_profile`` (billing country, first name)
customer.deleted           nothing (deleting an account is not an erasure request)
=========================  ========================================================

WooCommerce resends the whole order on every change, so event ids are keyed
by the order (or refund) id and repeated deliveries dedupe. ``customer_id: 0``
is a guest: keyed by the hash of ``billing.email`` (see :mod:`api.webhooks`).
Times come from the ``*_gmt`` twins, which carry no offset and are UTC; the
plain fields are site-local and ignored. Money strings are padded to the
store's decimals (``"2.000"``) and ``line_items[].price`` is a JSON number; both
are parsed exactly (floats are read as ``Decimal``).

>>> r = normalize_woocommerce("", b"webhook_id=12", store_id="demo")
>>> r.kind, r.events
('ping', [])
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from api.webhooks import (
    MalformedPayload,
    NormalizeResult,
    UnsupportedTopic,
    as_list,
    as_mapping,
    clip,
    exact_id,
    first_time,
    guest_customer_id,
    make_result,
    parse_money,
    parse_utc,
    quantity,
)
from engine.events import CustomerProfileEvent, Event, LineItem, OrderEvent

__all__ = ["WOOCOMMERCE_TOPICS", "is_woocommerce_ping", "normalize_woocommerce"]

SOURCE = "woocommerce"

WOOCOMMERCE_TOPICS = frozenset(
    {
        "order.created",
        "order.updated",
        "order.restored",
        "order.deleted",
        "customer.created",
        "customer.updated",
        "customer.deleted",
    }
)


def _ping_webhook_id(body: bytes) -> str | None:
    text = body.strip()
    if not text.startswith(b"webhook_id=") or len(text) > 64:
        return None
    try:
        form = parse_qs(text.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    values = form.get("webhook_id", [])
    if set(form) != {"webhook_id"} or len(values) != 1 or not values[0].isdigit():
        return None
    return values[0]


def is_woocommerce_ping(body: bytes) -> bool:
    """True for WooCommerce's unsigned set-up ping, ``webhook_id=<digits>`` (form-encoded).

    >>> is_woocommerce_ping(b"webhook_id=12"), is_woocommerce_ping(b'{"webhook_id": 12}')
    (True, False)
    >>> is_woocommerce_ping(b"webhook_id=12&x=1"), is_woocommerce_ping(b"webhook_id=")
    (False, False)
    """
    return _ping_webhook_id(body) is not None


def normalize_woocommerce(topic: str, body: bytes, *, store_id: str) -> NormalizeResult:
    """Normalise one WooCommerce delivery (raw body, ``X-WC-Webhook-Topic``) into events.

    The ping is recognised before anything else, whatever ``topic`` says (it
    comes without headers). Raises ``UnsupportedTopic`` for other topics and
    ``MalformedPayload`` for bodies that cannot be used.
    """
    ping_id = _ping_webhook_id(body)
    if ping_id is not None:
        return NormalizeResult(
            events=[], skipped=[f"woocommerce ping for webhook {ping_id}"], kind="ping"
        )
    name = (topic or "").strip().lower()
    if name not in WOOCOMMERCE_TOPICS:
        raise UnsupportedTopic(
            f"unsupported WooCommerce topic {topic!r}; supported: "
            f"{', '.join(sorted(WOOCOMMERCE_TOPICS))} (and the webhook_id= ping)"
        )
    try:
        payload = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPayload(f"{name}: body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedPayload(f"{name}: body is not a JSON object but {type(payload).__name__}")
    if name == "order.deleted":
        return make_result([], [f"{name} {exact_id(payload.get('id'))}: deletion, no event"])
    if name == "customer.deleted":
        return make_result(
            [], [f"{name} {exact_id(payload.get('id'))}: account deletion is not an erasure"]
        )
    if name.startswith("customer."):
        return _profile(name, payload, store_id)
    return _order(name, payload, store_id)


def _utc(payload: Mapping[str, Any], key: str) -> datetime | None:
    return parse_utc(payload.get(key), key, naive_is_utc=True)


def _order(topic: str, payload: Mapping[str, Any], store_id: str) -> NormalizeResult:
    order_id = exact_id(payload.get("id"))
    if not order_id:
        raise MalformedPayload(f"{topic}: order has no id")
    billing = as_mapping(payload.get("billing"))
    account = exact_id(payload.get("customer_id"), where="customer_id")
    customer_id = account if account and account != "0" else None
    customer_id = customer_id or guest_customer_id(store_id, billing.get("email"))
    status = str(payload.get("status") or "").lower()
    if customer_id is None:
        return make_result(
            [], [f"{topic} order {order_id}: guest order without a billing email; not attributable"]
        )
    created = _utc(payload, "date_created_gmt")
    if created is None:
        raise MalformedPayload(
            f"{topic} order {order_id}: no date_created_gmt (the plain date_created is "
            "site-local time without an offset)"
        )
    currency = clip(payload.get("currency"), 3)
    if not currency:
        raise MalformedPayload(f"{topic} order {order_id}: no currency")
    total = parse_money(payload.get("total"), "total")
    if total < 0:
        raise MalformedPayload(f"{topic} order {order_id}: negative total {total}")
    codes = []
    for raw in as_list(payload.get("coupon_lines")):
        code = clip(as_mapping(raw).get("code"), 64)
        if code and code not in codes:
            codes.append(code)
    lines = tuple(
        _line_item(i, raw, codes) for i, raw in enumerate(as_list(payload.get("line_items")))
    )
    common: dict[str, Any] = {
        "store_id": store_id,
        "customer_id": customer_id,
        "source": SOURCE,
        "order_id": order_id,
        "currency": currency,
        "line_items": lines,
        "discount_codes": tuple(codes),
    }
    modified = first_time(
        payload, ("date_modified_gmt", "date_created_gmt"), created, naive_is_utc=True
    )
    events: list[Event] = []
    skipped: list[str] = []
    if topic == "order.created":
        if status == "checkout-draft":
            return make_result([], [f"{topic} order {order_id}: checkout draft, not an order"])
        events.append(
            OrderEvent(
                type="order_created",
                event_id=f"woocommerce:order:{order_id}:order_created",
                occurred_at=created,
                amount=total,
                **common,
            )
        )
    paid = _utc(payload, "date_paid_gmt")
    if paid is not None:
        events.append(
            OrderEvent(
                type="order_paid",
                event_id=f"woocommerce:order:{order_id}:order_paid",
                occurred_at=paid,
                amount=total,
                **common,
            )
        )
    if status == "cancelled":
        events.append(
            OrderEvent(
                type="order_cancelled",
                event_id=f"woocommerce:order:{order_id}:order_cancelled",
                occurred_at=modified,
                amount=total,
                **common,
            )
        )
    refunds = [as_mapping(r) for r in as_list(payload.get("refunds"))]
    for i, refund in enumerate(refunds):
        refund_id = exact_id(refund.get("id"), where=f"refunds[{i}].id")
        if not refund_id:
            skipped.append(f"{topic} order {order_id}: refunds[{i}] has no id")
            continue
        events.append(
            OrderEvent(
                type="order_refunded",
                event_id=f"woocommerce:refund:{refund_id}:order_refunded",
                occurred_at=modified,
                amount=abs(parse_money(refund.get("total"), f"refunds[{i}].total")),
                **{**common, "line_items": (), "discount_codes": ()},
            )
        )
    if status == "refunded" and not refunds:
        events.append(
            OrderEvent(
                type="order_refunded",
                event_id=f"woocommerce:order:{order_id}:order_refunded",
                occurred_at=modified,
                amount=total,
                **common,
            )
        )
    if not events:
        skipped.append(f"{topic} order {order_id} status {status or '?'}: nothing to emit")
    return make_result(events, skipped)


def _line_item(index: int, raw: Any, coupons: list[str]) -> LineItem:
    li = as_mapping(raw)
    qty = quantity(li.get("quantity"), f"line_items[{index}].quantity")
    if li.get("price") not in (None, ""):
        price = parse_money(li.get("price"), f"line_items[{index}].price")
    elif li.get("subtotal") not in (None, "") and qty:
        price = parse_money(parse_money(li["subtotal"]) / qty, f"line_items[{index}].subtotal")
    else:
        price = Decimal(0)
    discounted = False
    if li.get("subtotal") not in (None, "") and li.get("total") not in (None, ""):
        discounted = parse_money(li["total"]) < parse_money(li["subtotal"])
    return LineItem(
        sku=clip(li.get("sku"), 128),
        category=None,  # the order body names products, not categories
        quantity=qty,
        price=price,
        # WooCommerce does not say which coupon discounted which line; only when
        # there is exactly one coupon can a discounted line be attributed to it.
        discount_code=coupons[0] if discounted and len(coupons) == 1 else None,
    )


def _profile(topic: str, payload: Mapping[str, Any], store_id: str) -> NormalizeResult:
    customer_id = exact_id(payload.get("id"))
    if not customer_id or customer_id == "0":
        raise MalformedPayload(f"{topic}: customer has no id")
    billing = as_mapping(payload.get("billing"))
    country = clip(billing.get("country"), 2) or clip(
        as_mapping(payload.get("shipping")).get("country"), 2
    )
    when = first_time(payload, ("date_modified_gmt", "date_created_gmt"), None, naive_is_utc=True)
    event = CustomerProfileEvent(
        type="customer_profile",
        event_id=f"woocommerce:customer:{customer_id}:customer_profile:{when.isoformat()}",
        store_id=store_id,
        customer_id=customer_id,
        occurred_at=when,
        source=SOURCE,
        country=country if country and len(country) == 2 and country.isalpha() else None,
        first_name=clip(payload.get("first_name"), 100) or clip(billing.get("first_name"), 100),
    )
    return make_result([event], [])
