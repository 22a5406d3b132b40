"""Amazon SP-API ``ORDER_CHANGE`` notifications → canonical events, ``source="amazon"``.

SP-API has no HTTP webhooks: notifications arrive through SQS (the body is the
notification) or EventBridge (the notification is under ``detail``); both
shapes are accepted. There is nothing to sign-check here.

The notification is thin: no buyer identity and no prices. So

* ``customer_id`` comes from ``resolve_customer(AmazonOrderId)`` when the caller
  can map the order to a buyer (e.g. via the Orders API), else it is the
  pseudo-customer ``amazon-order-<AmazonOrderId>``. Amazon buyers are never
  messaged; ``source="amazon"`` on every event carries that.
* ``amount`` is 0 and the currency is the marketplace's (``XXX`` if unknown);
  line items carry ``SellerSKU`` and quantity with price 0. ``skipped`` says so.
* ``order_cancelled`` when ``OrderStatus`` is ``Canceled`` or the buyer asked to
  cancel (``BuyerRequestedChange`` with a cancel reason or an item flagged
  ``IsBuyerRequestedCancel``), dated ``TimeOfOrderChange``; other buyer
  requests yield nothing; any other change yields ``order_created`` dated
  ``PurchaseDate``. Event ids are keyed by the order
  (``amazon:order:<id>:<type>``), so a cancel request followed by the actual
  cancellation dedupes to one event.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    first_time,
    make_result,
    quantity,
)
from engine.events import LineItem, OrderEvent

__all__ = ["MARKETPLACE_CURRENCY", "normalize_amazon"]

SOURCE = "amazon"

MARKETPLACE_CURRENCY = {
    "ATVPDKIKX0DER": "USD",  # US
    "A2EUQ1WTGCTBG2": "CAD",  # CA
    "A1AM78C64UM0Y8": "MXN",  # MX
    "A2Q3Y263D00KWC": "BRL",  # BR
    "A1F83G8C2ARO7P": "GBP",  # UK
    "A1PA6795UKMFR9": "EUR",  # DE
    "A13V1IB3VIYZZH": "EUR",  # FR
    "APJ6JRA9NG5V4": "EUR",  # IT
    "A1RKKUPIHCS9HS": "EUR",  # ES
    "A1805IZSGTT6HS": "EUR",  # NL
    "AMEN7PMS3EDWL": "EUR",  # BE
    "A1C3SOZRARQ6R3": "PLN",  # PL
    "A2NODRKZP88ZB9": "SEK",  # SE
    "A33AVAJ2PDY3EV": "TRY",  # TR
    "A21TJRUUN4KGV": "INR",  # IN
    "A1VC38T7YXB528": "JPY",  # JP
    "A39IBJ37TRP1C6": "AUD",  # AU
    "A19VAU5U5O7RUS": "SGD",  # SG
    "A2VIGQ35RCS4UG": "AED",  # AE
    "A17E79C6D8DWNP": "SAR",  # SA
    "ARBP9OOSHTCHU": "EGP",  # EG
}


def _is_cancel_request(change: Mapping[str, Any], summary: Mapping[str, Any]) -> bool:
    reason = str(as_mapping(change.get("OrderChangeTrigger")).get("ChangeReason") or "")
    if "cancel" in reason.lower():
        return True
    return any(
        as_mapping(item).get("IsBuyerRequestedCancel") is True
        for item in as_list(summary.get("OrderItems"))
    )


def normalize_amazon(
    payload: Mapping[str, Any],
    *,
    store_id: str,
    resolve_customer: CustomerResolver | None = None,
) -> NormalizeResult:
    """Normalise one SP-API notification (SQS body or EventBridge event) into events.

    >>> r = normalize_amazon({"NotificationType": "ORDER_CHANGE", "Payload": {
    ...     "OrderChangeNotification": {"AmazonOrderId": "903-8868176-2219830",
    ...     "OrderChangeType": "OrderStatusChange",
    ...     "Summary": {"OrderStatus": "Canceled", "MarketplaceId": "ATVPDKIKX0DER"},
    ...     "OrderChangeTrigger": {"TimeOfOrderChange": "2022-11-29T19:42:04.284Z"}}}},
    ...     store_id="demo")
    >>> e = r.events[0]
    >>> e.type, e.customer_id, e.source, e.currency
    ('order_cancelled', 'amazon-order-903-8868176-2219830', 'amazon', 'USD')
    >>> e.occurred_at.isoformat()
    '2022-11-29T19:42:04.284000+00:00'
    """
    if not isinstance(payload, Mapping):
        raise MalformedPayload(f"amazon: body is not a JSON object but {type(payload).__name__}")
    if "NotificationType" not in payload and isinstance(payload.get("detail"), Mapping):
        payload = payload["detail"]  # EventBridge envelope
    kind = payload.get("NotificationType")
    if kind != "ORDER_CHANGE":
        raise UnsupportedTopic(
            f"unsupported Amazon SP-API notification type {kind!r}; supported: ORDER_CHANGE"
        )
    change = as_mapping(as_mapping(payload.get("Payload")).get("OrderChangeNotification"))
    order_id = clip(change.get("AmazonOrderId"), 128)
    if not order_id:
        raise MalformedPayload(
            "amazon ORDER_CHANGE: no Payload.OrderChangeNotification.AmazonOrderId"
        )
    summary = as_mapping(change.get("Summary"))
    trigger = as_mapping(change.get("OrderChangeTrigger"))
    metadata = as_mapping(payload.get("NotificationMetadata"))
    change_type = str(change.get("OrderChangeType") or "")
    status = str(summary.get("OrderStatus") or "")

    if status.lower() == "canceled" or (
        change_type == "BuyerRequestedChange" and _is_cancel_request(change, summary)
    ):
        event_type = "order_cancelled"
        when_keys: tuple[str, ...] = ("TimeOfOrderChange",)
    elif change_type == "BuyerRequestedChange":
        reason = trigger.get("ChangeReason")
        return make_result(
            [], [f"amazon order {order_id}: buyer requested change {reason!r}; no event"]
        )
    else:
        event_type = "order_created"
        when_keys = ("PurchaseDate",)
    # Dates: the trigger/summary date first, then the notification's own times.
    dated = {**summary, **trigger, **metadata, "EventTime": payload.get("EventTime")}
    when = first_time(dated, (*when_keys, "TimeOfOrderChange", "EventTime", "PublishTime"), None)

    skipped = [
        f"amazon order {order_id}: ORDER_CHANGE carries no prices (amount 0; fetch the order "
        "from the Orders API for money)"
    ]
    marketplace = str(summary.get("MarketplaceId") or "")
    currency = MARKETPLACE_CURRENCY.get(marketplace)
    if currency is None:
        skipped.append(
            f"amazon order {order_id}: unknown marketplace {marketplace!r}; currency XXX"
        )
        currency = "XXX"
    customer_id = resolve_customer(order_id) if resolve_customer else None
    if not customer_id:
        customer_id = f"amazon-order-{order_id}"
        skipped.append(
            f"amazon order {order_id}: no buyer identity; keyed by the order ({customer_id})"
        )
    lines = tuple(
        LineItem(
            sku=clip(as_mapping(item).get("SellerSKU"), 128),
            quantity=quantity(as_mapping(item).get("Quantity"), f"OrderItems[{i}].Quantity"),
            price=Decimal(0),
        )
        for i, item in enumerate(as_list(summary.get("OrderItems")))
    )
    event = OrderEvent(
        type=event_type,
        event_id=f"amazon:order:{order_id}:{event_type}",
        store_id=store_id,
        customer_id=customer_id,
        occurred_at=when,
        source=SOURCE,
        order_id=order_id,
        amount=Decimal(0),
        currency=currency,
        line_items=lines,
    )
    return make_result([event], skipped)
