"""Shopify webhook bodies → canonical events.

=======================  ==========================================================
topic                    events
=======================  ==========================================================
orders/create            ``order_created`` (at ``processed_at``, else ``created_at``)
orders/paid              ``order_paid`` (at ``updated_at``)
orders/cancelled         ``order_cancelled`` (at ``cancelled_at``), amount = order total;
                         nested ``refunds[]`` are left to refunds/create
refunds/create           ``order_refunded``, amount = successful refund transactions;
                         the body has no customer, so ``resolve_customer`` (order id →
                         customer id) must attribute it, else it is skipped
checkouts/create|update  one ``add_to_cart`` per line + one ``checkout_started``,
                         keyed by the checkout token (create and updates dedupe)
carts/create|update      nothing: cart bodies carry no customer or email
customers/create|update  ``customer_profile`` (country, locale, first name, consent)
customers/redact         ``erase_request`` for the customer id and for the guest key
                         of the email (guest orders are keyed by email hash)
customers/data_request   nothing (answered by the app, not by the event stream)
shop/redact              nothing here; the route erases the whole store
                         (:func:`api.routes.privacy.redact_store`)
=======================  ==========================================================

Amounts are in the shop currency (``*_set.shop_money``, else the flat fields,
which Shopify documents as shop currency); the currency is on the event.
Orders without a customer are keyed by the email's guest hash, or skipped when
there is no email either (draft orders created in the admin). Test orders
(``"test": true``) are normalised and flagged with ``NormalizeResult.test``.

>>> r = normalize_shopify("carts/update", {"id": "c1-f8", "token": "c1-f8"}, store_id="demo",
...                       webhook_id=None)
>>> r.kind, r.events, r.skipped
('ignored', [], ['carts/update c1-f8: Shopify cart webhooks carry no customer or email'])
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from api.webhooks import (
    CustomerResolver,
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
    quantity,
    shop_money,
)
from engine.events import (
    BrowseEvent,
    Channel,
    CustomerProfileEvent,
    EraseRequest,
    Event,
    LineItem,
    OrderEvent,
)

__all__ = ["SHOPIFY_TOPICS", "canonical_topic", "normalize_shopify"]

SOURCE = "shopify"

SHOPIFY_TOPICS = frozenset(
    {
        "orders/create",
        "orders/paid",
        "orders/cancelled",
        "refunds/create",
        "checkouts/create",
        "checkouts/update",
        "carts/create",
        "carts/update",
        "customers/create",
        "customers/update",
        "customers/redact",
        "customers/data_request",
        "shop/redact",
    }
)

# email/sms_marketing_consent.state → may we market on that channel?
_CONSENT_STATES = {
    "subscribed": True,
    "not_subscribed": False,
    "unsubscribed": False,
    "pending": False,  # double opt-in not confirmed yet
    "redacted": False,
    "invalid": False,
}


def canonical_topic(topic: str) -> str:
    """``orders/create``; also accepts ``ORDERS_CREATE`` (the GraphQL enum form)."""
    text = (topic or "").strip()
    if "/" not in text and "_" in text:
        resource, _, action = text.partition("_")
        text = f"{resource}/{action}"
    return text.lower()


def normalize_shopify(
    topic: str,
    payload: Mapping[str, Any],
    *,
    store_id: str,
    webhook_id: str | None = None,
    received_at: datetime | None = None,
    resolve_customer: CustomerResolver | None = None,
) -> NormalizeResult:
    """Normalise one Shopify webhook body (already parsed, ints exact) into events.

    ``webhook_id`` is ``X-Shopify-Webhook-Id``; ``received_at`` (e.g.
    ``X-Shopify-Triggered-At``) dates bodies that carry no timestamp of their
    own (GDPR requests, customers with null ``updated_at``); ``resolve_customer``
    maps an order id to its customer id for refunds/create.
    Raises ``UnsupportedTopic`` for other topics and ``MalformedPayload`` for
    bodies that cannot be used.
    """
    name = canonical_topic(topic)
    if name not in SHOPIFY_TOPICS:
        raise UnsupportedTopic(
            f"unsupported Shopify topic {topic!r}; supported: {', '.join(sorted(SHOPIFY_TOPICS))}"
        )
    if not isinstance(payload, Mapping):
        raise MalformedPayload(f"{name}: body is not a JSON object but {type(payload).__name__}")
    ctx = _Ctx(name, store_id, webhook_id, received_at)
    if name in ("orders/create", "orders/paid", "orders/cancelled"):
        return ctx.order(payload)
    if name == "refunds/create":
        return ctx.refund(payload, resolve_customer)
    if name in ("checkouts/create", "checkouts/update"):
        return ctx.checkout(payload)
    if name in ("carts/create", "carts/update"):
        cart = exact_id(payload.get("token"), where="token") or exact_id(payload.get("id"))
        return make_result([], [f"{name} {cart}: Shopify cart webhooks carry no customer or email"])
    if name in ("customers/create", "customers/update"):
        return ctx.profile(payload)
    if name == "customers/redact":
        return ctx.redact(payload)
    if name == "customers/data_request":
        return make_result(
            [], [f"{name}: data requests are answered by the app, not by the event stream"]
        )
    # shop/redact
    return make_result(
        [],
        [
            f"{name} shop {exact_id(payload.get('shop_id'))}: store-level erasure is store "
            "offboarding, not a per-customer event"
        ],
    )


_ORDER_TOPIC_TYPE = {
    "orders/create": ("order_created", ("processed_at", "created_at")),
    "orders/paid": ("order_paid", ("updated_at", "processed_at", "created_at")),
    "orders/cancelled": ("order_cancelled", ("cancelled_at", "updated_at", "created_at")),
}


class _Ctx:
    def __init__(
        self, topic: str, store_id: str, webhook_id: str | None, received_at: datetime | None
    ) -> None:
        self.topic = topic
        self.store_id = store_id
        self.webhook_id = (webhook_id or "").strip() or None
        self.received_at = received_at

    # ------------------------------------------------------------------ helpers

    def _customer(self, payload: Mapping[str, Any]) -> str | None:
        """The customer id of an order/checkout: account id, else guest key of the email."""
        customer = as_mapping(payload.get("customer"))
        cid = exact_id(
            customer.get("id"), customer.get("admin_graphql_api_id"), where="customer.id"
        )
        if cid:
            return cid
        for email in (
            payload.get("email"),
            payload.get("contact_email"),
            customer.get("email"),
            as_mapping(payload.get("billing_address")).get("email"),
        ):
            guest = guest_customer_id(self.store_id, email)
            if guest:
                return guest
        return None

    def _shop_currency(self, payload: Mapping[str, Any]) -> str | None:
        for key in ("total_price", "subtotal_price", "total_line_items_price"):
            money = shop_money(payload, key)
            if money and money[1]:
                return money[1]
        currency = payload.get("currency")
        return str(currency) if currency else None

    def _line_items(self, payload: Mapping[str, Any], lines: list[Any]) -> tuple[LineItem, ...]:
        applications = as_list(payload.get("discount_applications"))
        items = []
        for i, raw in enumerate(lines):
            li = as_mapping(raw)
            price = shop_money(li, "price")
            code = None
            for alloc in as_list(li.get("discount_allocations")):
                index = as_mapping(alloc).get("discount_application_index")
                if isinstance(index, int) and 0 <= index < len(applications):
                    app = as_mapping(applications[index])
                    if app.get("type") == "discount_code" and clip(app.get("code"), 64):
                        code = clip(app.get("code"), 64)
                        break
            items.append(
                LineItem(
                    sku=clip(li.get("sku"), 128),
                    category=clip(li.get("product_type"), 128) or clip(li.get("vendor"), 128),
                    quantity=quantity(li.get("quantity"), f"line_items[{i}].quantity"),
                    price=price[0] if price else Decimal(0),
                    discount_code=code,
                )
            )
        return tuple(items)

    # ------------------------------------------------------------------ orders

    def order(self, payload: Mapping[str, Any]) -> NormalizeResult:
        event_type, time_keys = _ORDER_TOPIC_TYPE[self.topic]
        test = payload.get("test") is True
        order_id = exact_id(payload.get("id"), payload.get("admin_graphql_api_id"))
        if not order_id:
            raise MalformedPayload(f"{self.topic}: order has no id")
        skipped: list[str] = []
        customer_id = self._customer(payload)
        if customer_id is None:
            skipped.append(
                f"{self.topic} order {order_id}: no customer and no email "
                "(e.g. a draft order from the admin); not attributable to a customer"
            )
            return make_result([], skipped, test=test)
        total = shop_money(payload, "total_price")
        if total is None:
            raise MalformedPayload(f"{self.topic} order {order_id}: no total_price")
        amount, currency = total
        currency = currency or self._shop_currency(payload)
        if not currency:
            raise MalformedPayload(f"{self.topic} order {order_id}: no currency")
        if amount < 0:
            raise MalformedPayload(f"{self.topic} order {order_id}: negative total {amount}")
        codes = []
        for dc in as_list(payload.get("discount_codes")):
            code = clip(as_mapping(dc).get("code"), 64)
            if code and code not in codes:
                codes.append(code)
        if self.topic == "orders/cancelled" and as_list(payload.get("refunds")):
            skipped.append(
                f"{self.topic} order {order_id}: {len(payload['refunds'])} nested refund(s) "
                "left to refunds/create"
            )
        event = OrderEvent(
            type=event_type,
            event_id=f"shopify:order:{order_id}:{event_type}",
            store_id=self.store_id,
            customer_id=customer_id,
            occurred_at=first_time(payload, time_keys, self.received_at),
            source=SOURCE,
            order_id=order_id,
            amount=amount,
            currency=currency,
            line_items=self._line_items(payload, as_list(payload.get("line_items"))),
            discount_codes=tuple(codes),
        )
        return make_result([event], skipped, test=test)

    # ------------------------------------------------------------------ refunds

    def refund(
        self, payload: Mapping[str, Any], resolve_customer: CustomerResolver | None
    ) -> NormalizeResult:
        refund_id = exact_id(payload.get("id"), payload.get("admin_graphql_api_id"))
        order_id = exact_id(payload.get("order_id"), where="order_id")
        if not order_id:
            raise MalformedPayload(f"{self.topic}: refund {refund_id} has no order_id")
        refund_key = refund_id or self.webhook_id
        if not refund_key:
            raise MalformedPayload(f"{self.topic}: refund has no id and no webhook id")
        customer_id = resolve_customer(order_id) if resolve_customer else None
        if not customer_id:
            why = "not found by resolve_customer" if resolve_customer else "no resolve_customer"
            return make_result(
                [],
                [
                    f"{self.topic} refund {refund_key} of order {order_id}: the body carries no "
                    f"customer and the order's customer is unknown ({why})"
                ],
            )
        skipped: list[str] = []
        shop_currency = self._refund_shop_currency(payload)
        amount = Decimal(0)
        currency = shop_currency
        counted = 0
        for i, raw in enumerate(as_list(payload.get("transactions"))):
            tx = as_mapping(raw)
            if tx.get("kind") != "refund" or tx.get("status") not in (None, "success"):
                continue
            money = shop_money(tx, "amount")
            if money is None:
                continue
            tx_amount, tx_currency = money
            tx_currency = tx_currency or (str(tx["currency"]) if tx.get("currency") else None)
            tx_currency = tx_currency or shop_currency
            if currency and tx_currency and tx_currency.upper() != currency.upper():
                skipped.append(
                    f"{self.topic} refund {refund_key}: transaction {i} is in {tx_currency}, "
                    f"not the shop currency {currency}; not converted, not counted"
                )
                continue
            currency = currency or tx_currency
            amount += abs(tx_amount)
            counted += 1
        if counted == 0:
            skipped.append(
                f"{self.topic} refund {refund_key}: no successful refund transaction; amount 0"
            )
        lines = []
        for raw in as_list(payload.get("refund_line_items")):
            rli = as_mapping(raw)
            li = dict(as_mapping(rli.get("line_item")))
            li["quantity"] = rli.get("quantity", li.get("quantity"))
            lines.append(li)
        event = OrderEvent(
            type="order_refunded",
            event_id=f"shopify:refund:{refund_key}:order_refunded",
            store_id=self.store_id,
            customer_id=customer_id,
            occurred_at=first_time(payload, ("processed_at", "created_at"), self.received_at),
            source=SOURCE,
            order_id=order_id,
            amount=amount,
            currency=currency or "XXX",
            line_items=self._line_items(payload, lines),
        )
        return make_result([event], skipped)

    def _refund_shop_currency(self, payload: Mapping[str, Any]) -> str | None:
        for raw in as_list(payload.get("refund_line_items")):
            rli = as_mapping(raw)
            for key in ("subtotal", "total_tax"):
                money = shop_money(rli, key)
                if money and money[1]:
                    return money[1]
        for raw in as_list(payload.get("transactions")):
            money = shop_money(as_mapping(raw), "amount")
            if money and money[1]:
                return money[1]
        return None

    # ------------------------------------------------------------------ checkouts

    def checkout(self, payload: Mapping[str, Any]) -> NormalizeResult:
        token = (
            exact_id(payload.get("token"), where="token")
            or exact_id(payload.get("cart_token"), where="cart_token")
            or exact_id(payload.get("id"))
        )
        if not token:
            raise MalformedPayload(f"{self.topic}: checkout has no token")
        customer_id = self._customer(payload)
        if customer_id is None:
            return make_result(
                [], [f"{self.topic} checkout {token}: no customer and no email; not attributable"]
            )
        skipped: list[str] = []
        shop_currency = self._shop_currency(payload)
        presentment = payload.get("presentment_currency")
        # Checkout flat amounts are only trusted as shop money when nothing says otherwise.
        priced = not (
            presentment and shop_currency and str(presentment).upper() != shop_currency.upper()
        )
        if not priced:
            skipped.append(
                f"{self.topic} checkout {token}: presentment {presentment} != shop "
                f"{shop_currency}; values omitted"
            )
        keys = ("created_at",) if self.topic == "checkouts/create" else ("updated_at",)
        when = first_time(payload, (*keys, "created_at"), self.received_at)
        common: dict[str, Any] = {
            "store_id": self.store_id,
            "customer_id": customer_id,
            "occurred_at": when,
            "source": SOURCE,
        }
        events: list[Event] = []
        for i, raw in enumerate(as_list(payload.get("line_items"))):
            li = as_mapping(raw)
            qty = quantity(li.get("quantity"), f"line_items[{i}].quantity")
            value = None
            if priced:
                line_price = shop_money(li, "line_price")
                unit = shop_money(li, "price")
                if line_price:
                    value = line_price[0]
                elif unit:
                    value = unit[0] * qty
            events.append(
                BrowseEvent(
                    type="add_to_cart",
                    event_id=f"shopify:checkout:{token}:add_to_cart:{i}",
                    sku=clip(li.get("sku"), 128),
                    category=clip(li.get("product_type"), 128) or clip(li.get("vendor"), 128),
                    quantity=qty,
                    value=value,
                    currency=shop_currency if value is not None else None,
                    **common,
                )
            )
        total = shop_money(payload, "total_price") if priced else None
        events.append(
            BrowseEvent(
                type="checkout_started",
                event_id=f"shopify:checkout:{token}:checkout_started",
                value=total[0] if total else None,
                currency=(total[1] or shop_currency) if total else None,
                **common,
            )
        )
        return make_result(events, skipped)

    # ------------------------------------------------------------------ customers

    def profile(self, payload: Mapping[str, Any]) -> NormalizeResult:
        customer_id = exact_id(
            payload.get("id"), payload.get("admin_graphql_api_id"), where="customer.id"
        )
        if not customer_id:
            raise MalformedPayload(f"{self.topic}: customer has no id")
        address = as_mapping(payload.get("default_address"))
        if not address:
            addresses = [as_mapping(a) for a in as_list(payload.get("addresses"))]
            defaults = [a for a in addresses if a.get("default")] or addresses
            address = defaults[0] if defaults else {}
        country = clip(address.get("country_code"), 2)
        consent: dict[Channel, bool] = {}
        email_state = as_mapping(payload.get("email_marketing_consent")).get("state")
        if isinstance(email_state, str) and email_state.lower() in _CONSENT_STATES:
            consent["email"] = _CONSENT_STATES[email_state.lower()]
        elif isinstance(payload.get("accepts_marketing"), bool):
            consent["email"] = payload["accepts_marketing"]
        sms_state = as_mapping(payload.get("sms_marketing_consent")).get("state")
        if isinstance(sms_state, str) and sms_state.lower() in _CONSENT_STATES:
            consent["sms"] = _CONSENT_STATES[sms_state.lower()]
        fields: dict[str, Any] = {
            "country": country if country and len(country) == 2 and country.isalpha() else None,
            "locale": clip(payload.get("locale"), 35),
            "first_name": clip(payload.get("first_name"), 100),
            "consent": consent,
        }
        when = first_time(payload, ("updated_at", "created_at"), self.received_at)
        if self.webhook_id:
            suffix = self.webhook_id
        else:
            material = repr((sorted(fields.items()), when.isoformat())).encode()
            suffix = hashlib.sha256(material).hexdigest()[:16]
        event = CustomerProfileEvent(
            type="customer_profile",
            event_id=f"shopify:customer:{customer_id}:customer_profile:{suffix}",
            store_id=self.store_id,
            customer_id=customer_id,
            occurred_at=when,
            source=SOURCE,
            **fields,
        )
        return make_result([event], [])

    def redact(self, payload: Mapping[str, Any]) -> NormalizeResult:
        customer = as_mapping(payload.get("customer"))
        keys = []
        cid = exact_id(customer.get("id"), customer.get("admin_graphql_api_id"), "customer.id")
        if cid:
            keys.append(cid)
        guest = guest_customer_id(self.store_id, customer.get("email"))
        if guest:
            keys.append(guest)
        if not keys:
            raise MalformedPayload(f"{self.topic}: neither customer.id nor customer.email given")
        when = first_time(payload, (), self.received_at)
        events: list[Event] = [
            EraseRequest(
                type="erase_request",
                event_id=f"shopify:customer:{key}:erase_request",
                store_id=self.store_id,
                customer_id=key,
                occurred_at=when,
                source=SOURCE,
            )
            for key in keys
        ]
        return make_result(events, [])
