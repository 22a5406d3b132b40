"""Webhook signature checks and normalisation against the real payloads in /work/shared/webhooks.

One test per payload file (parametrised over the folder, so a new file without an
expectation here fails), plus signatures (the algorithm of ``sign.py``), the
WooCommerce ping, guests, decimals, round-trips and malformed input.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from api.webhooks import (
    MalformedPayload,
    NormalizeResult,
    UnsupportedTopic,
    WebhookError,
    guest_customer_id,
    is_woocommerce_ping,
    normalize_amazon,
    normalize_shopify,
    normalize_woocommerce,
    sign_generic,
    verify_generic,
    verify_shopify,
    verify_woocommerce,
)
from engine.errors import ChurnflowError
from engine.events import (
    BrowseEvent,
    CustomerProfileEvent,
    EraseRequest,
    OrderEvent,
    decode_event,
    encode_event,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "webhooks"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared webhook corpus not found at {SHARED}"
)

STORE = "demo-store"
RECEIVED = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LARAVEL = "shopify/orders_create__laravel-shopify__admin-test-notification.json"
LARAVEL_SECRET = "00000000000000000000000000000000"
LARAVEL_SIGNATURE = "hvTE9wpDzMcDnPEuHWvYZ58ElKn5vHs0LomurfNIuUc="  # from sign.py's self-test


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def b64_hmac(secret: str, body: bytes) -> str:
    """sign.py's algorithm: base64(HMAC-SHA256(secret, raw body))."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def resolver(order_id: str) -> str | None:
    # The docs refund references order 820982911946154508 with its id rounded by JS.
    return {"820982911946154500": "115310627314723954"}.get(order_id)


# ------------------------------------------------------------------ per-file expectations


def check_laravel(r: NormalizeResult) -> None:
    (e,) = r.events
    assert isinstance(e, OrderEvent)
    assert e.type == "order_created" and r.kind == "events" and r.test is True
    assert e.order_id == "820982911946154508"
    assert e.customer_id == "115310627314723954"
    assert e.event_id == "shopify:order:820982911946154508:order_created"
    assert e.amount == Decimal("57.98") and str(e.amount) == "57.98"
    assert e.currency == "USD"
    assert e.occurred_at == datetime(2017, 7, 17, 17, 44, 9, tzinfo=UTC)  # -04:00 → UTC
    assert [(li.sku, li.quantity, li.price) for li in e.line_items] == [
        ("706405908216", 1, Decimal("24.99")),
        ("706405907431", 1, Decimal("27.99")),
    ]
    assert e.discount_codes == ()
    assert e.source == "shopify"


def check_draft_no_customer(r: NormalizeResult) -> None:
    assert r.events == [] and r.kind == "ignored"
    (reason,) = r.skipped
    assert "5324830114102" in reason and "no customer and no email" in reason


def check_cancelled(r: NormalizeResult) -> None:
    (e,) = r.events
    assert isinstance(e, OrderEvent) and e.type == "order_cancelled"
    assert e.order_id == "5324790137142" and e.customer_id == "6972527083830"
    assert e.amount == Decimal("1806.38") and e.currency == "USD"
    assert e.occurred_at == datetime(2023, 3, 24, 22, 8, 18, tzinfo=UTC)
    assert e.discount_codes == ()  # the manual discount has code ""
    assert [(li.sku, li.category, li.quantity) for li in e.line_items] == [
        (None, "Snowboard Vendor", 1),
        (None, "Snowboard Vendor", 2),
    ]
    assert any("refunds/create" in s for s in r.skipped)


def check_customer_activepieces(r: NormalizeResult) -> None:
    (e,) = r.events
    assert isinstance(e, CustomerProfileEvent)
    assert e.customer_id == "6972943892790" and e.country == "US" and e.first_name == "John"
    assert e.consent == {"email": False, "sms": False}
    assert e.occurred_at == datetime(2023, 3, 24, 22, 13, 56, tzinfo=UTC)


def check_cart(r: NormalizeResult) -> None:
    assert r.events == [] and r.kind == "ignored"
    (reason,) = r.skipped
    assert reason.startswith("carts/update c1-") and "no customer" in reason


def check_docs_order(r: NormalizeResult) -> None:
    (e,) = r.events
    assert isinstance(e, OrderEvent)
    # "id" is the JS-rounded ...154500; the gid keeps the exact value.
    assert e.order_id == "820982911946154508"
    assert e.customer_id == "115310627314723954"
    assert e.amount == Decimal("404.95") and e.currency == "USD"  # total_price_set.shop_money
    assert e.occurred_at == datetime(2022, 1, 1, 0, 0, tzinfo=UTC)
    assert len(e.line_items) == 5 and e.line_items[0].sku == "SKU2006-001"
    assert r.test is True


def check_docs_refund(r: NormalizeResult) -> None:
    (e,) = r.events
    assert isinstance(e, OrderEvent) and e.type == "order_refunded"
    assert e.event_id == "shopify:refund:890088186047892319:order_refunded"
    assert e.order_id == "820982911946154500"  # damaged upstream, no gid to recover it
    assert e.customer_id == "115310627314723954"  # via resolve_customer
    assert e.amount == Decimal("85.00")  # successful refund transactions 75.00 + 10.00
    assert e.currency == "USD"  # transactions say null: taken from the shop-money sets
    assert e.occurred_at == datetime(2022, 1, 1, 0, 0, tzinfo=UTC)
    assert [li.sku for li in e.line_items][:2] == ["SKU2006-001", "LENS-PROTECT-2YR"]


def check_docs_checkout(r: NormalizeResult) -> None:
    assert [e.type for e in r.events] == ["add_to_cart", "add_to_cart", "checkout_started"]
    assert all(isinstance(e, BrowseEvent) for e in r.events)
    assert {e.customer_id for e in r.events} == {"603851970716743426"}  # gid, not rounded id
    assert len({e.event_id for e in r.events}) == 3  # both lines share one "key"
    cart, _, started = r.events
    assert isinstance(cart, BrowseEvent) and isinstance(started, BrowseEvent)
    assert (cart.sku, cart.category, cart.quantity) == ("IPOD2008PINK", "Apple", 1)
    assert (cart.value, cart.currency) == (Decimal("199.00"), "USD")
    assert (started.value, started.currency) == (Decimal("421.88"), "USD")
    assert started.event_id == "shopify:checkout:123123123:checkout_started"
    assert started.occurred_at == datetime(2022, 1, 1, 0, 0, tzinfo=UTC)


def check_docs_customer(r: NormalizeResult) -> None:
    (e,) = r.events
    assert isinstance(e, CustomerProfileEvent)
    assert e.customer_id == "706405506930370084" and e.country == "CA"
    assert e.consent == {}  # 2026-04 sample: no consent fields at all


def check_redact(r: NormalizeResult) -> None:
    assert all(isinstance(e, EraseRequest) for e in r.events)
    assert [e.customer_id for e in r.events] == [
        "191167",
        guest_customer_id(STORE, "john@example.com"),
    ]
    assert {e.occurred_at for e in r.events} == {RECEIVED}


def check_data_request(r: NormalizeResult) -> None:
    assert r.events == [] and r.kind == "ignored" and "data request" in r.skipped[0]


def check_shop_redact(r: NormalizeResult) -> None:
    assert r.events == [] and r.kind == "ignored" and "954889" in r.skipped[0]


def check_woo_3_decimal(r: NormalizeResult) -> None:
    (e,) = r.events  # pending, unpaid: created only
    assert isinstance(e, OrderEvent) and e.type == "order_created" and e.source == "woocommerce"
    assert e.order_id == "17" and e.customer_id == "1"
    assert str(e.amount) == "2.000" and e.currency == "USD"
    assert e.occurred_at == datetime(2023, 7, 6, 14, 17, 3, tzinfo=UTC)
    (li,) = e.line_items
    assert (li.sku, li.quantity, li.price) == (None, 2, Decimal("1"))


def check_woo_guest_processing(r: NormalizeResult) -> None:
    created, paid = r.events
    guest = guest_customer_id(STORE, "john.doe@example.com")
    for e in r.events:
        assert isinstance(e, OrderEvent)
        assert e.customer_id == guest and e.order_id == "727"
        assert e.amount == Decimal("29.35") and e.currency == "USD"
    assert created.type == "order_created" and paid.type == "order_paid"
    # date_created is site-local 16:28:02; the _gmt twin is UTC.
    assert created.occurred_at == datetime(2017, 3, 22, 19, 28, 2, tzinfo=UTC)
    assert paid.occurred_at == datetime(2017, 3, 22, 19, 28, 8, tzinfo=UTC)
    assert isinstance(created, OrderEvent)
    assert [(li.sku, li.quantity, li.price) for li in created.line_items] == [
        (None, 2, Decimal("3")),
        ("Bar3", 1, Decimal("12")),
    ]


def check_woo_guest_completed(r: NormalizeResult) -> None:
    (paid,) = r.events  # order.updated: the paid state, keyed by order → dedupes
    assert isinstance(paid, OrderEvent) and paid.type == "order_paid"
    assert paid.event_id == "woocommerce:order:727:order_paid"
    assert paid.customer_id == guest_customer_id(STORE, "john.doe@example.com")


def check_amazon(r: NormalizeResult) -> None:
    (e,) = r.events
    assert isinstance(e, OrderEvent)
    assert (e.type, e.source, e.order_id) == ("order_cancelled", "amazon", "903-8868176-2219830")
    assert e.customer_id == "amazon-order-903-8868176-2219830"
    assert e.event_id == "amazon:order:903-8868176-2219830:order_cancelled"
    assert (e.amount, e.currency) == (Decimal(0), "USD")
    assert e.occurred_at == datetime(2022, 11, 29, 19, 42, 4, 284000, tzinfo=UTC)
    assert [(li.sku, li.quantity) for li in e.line_items] == [("SellerSKUID1", 10)]
    assert any("no prices" in s for s in r.skipped)


def check_vnd(r: NormalizeResult) -> None:
    for e in r.events:
        assert isinstance(e, OrderEvent) and e.currency == "VND"
        assert e.amount == e.amount.to_integral_value()  # "20", not 0.20


Normalizer = Callable[[bytes], NormalizeResult]


def shopify(topic: str) -> Normalizer:
    def run(body: bytes) -> NormalizeResult:
        return normalize_shopify(
            topic,
            json.loads(body),
            store_id=STORE,
            webhook_id="b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            received_at=RECEIVED,
            resolve_customer=resolver,
        )

    return run


def woo(topic: str) -> Normalizer:
    return lambda body: normalize_woocommerce(topic, body, store_id=STORE)


def amazon(body: bytes) -> NormalizeResult:
    return normalize_amazon(json.loads(body), store_id=STORE)


EXPECTED: dict[str, tuple[Normalizer, Callable[[NormalizeResult], None]]] = {
    LARAVEL: (shopify("orders/create"), check_laravel),
    "shopify/orders_create__activepieces__draft-order-no-customer.json": (
        shopify("orders/create"),
        check_draft_no_customer,
    ),
    "shopify/orders_cancelled__activepieces__discounts-and-refund.json": (
        shopify("orders/cancelled"),
        check_cancelled,
    ),
    "shopify/customers_create__activepieces.json": (
        shopify("customers/create"),
        check_customer_activepieces,
    ),
    "shopify/carts_update__shopifysharp.json": (shopify("carts/update"), check_cart),
    "shopify/carts_update__shopifysharp__line-item-properties.json": (
        shopify("carts/update"),
        check_cart,
    ),
    "shopify/docs_sample_2026-04/orders_create.json": (shopify("orders/create"), check_docs_order),
    "shopify/docs_sample_2026-04/refunds_create.json": (
        shopify("refunds/create"),
        check_docs_refund,
    ),
    "shopify/docs_sample_2026-04/checkouts_create.json": (
        shopify("checkouts/create"),
        check_docs_checkout,
    ),
    "shopify/docs_sample_2026-04/customers_create.json": (
        shopify("customers/create"),
        check_docs_customer,
    ),
    "shopify/docs_sample_2026-04/customers_redact.json": (
        shopify("customers/redact"),
        check_redact,
    ),
    "shopify/docs_sample_2026-04/customers_data_request.json": (
        shopify("customers/data_request"),
        check_data_request,
    ),
    "shopify/docs_sample_2026-04/shop_redact.json": (shopify("shop/redact"), check_shop_redact),
    "woocommerce/order__activepieces__3-decimal-store.json": (
        woo("order.created"),
        check_woo_3_decimal,
    ),
    "woocommerce/order__rest-api-docs-v3__guest-processing.json": (
        woo("order.created"),
        check_woo_guest_processing,
    ),
    "woocommerce/order__rest-api-docs-v3__guest-completed.json": (
        woo("order.updated"),
        check_woo_guest_completed,
    ),
    "amazon_sp_api/ORDER_CHANGE__sp-api-models-schema-example.json": (amazon, check_amazon),
    # Not in the folder (restricted licence); checked if it ever appears.
    "shopify/restricted_license/shopify_refunds_create__pipedream__VND-zero-decimal.json": (
        shopify("refunds/create"),
        lambda r: None if not r.events else check_vnd(r),
    ),
}


def payload_files() -> list[str]:
    if not SHARED.is_dir():
        return []
    return sorted(p.relative_to(SHARED).as_posix() for p in SHARED.rglob("*.json"))


def assert_round_trips(result: NormalizeResult) -> None:
    for event in result.events:
        assert decode_event(encode_event(event)) == event
        assert event.occurred_at.utcoffset() is not None
        assert event.occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@needs_shared
@pytest.mark.parametrize("rel", payload_files() or ["<no files>"])
def test_payload_file(rel: str) -> None:
    if rel == "<no files>":
        pytest.skip(f"no payload files under {SHARED}")
    assert rel in EXPECTED, f"no expectation written for new payload file {rel}"
    normalize, check = EXPECTED[rel]
    result = normalize((SHARED / rel).read_bytes())
    check(result)
    assert_round_trips(result)
    assert result.kind == ("events" if result.events else "ignored")
    assert len({e.event_id for e in result.events}) == len(result.events)


@needs_shared
def test_normalising_twice_gives_the_same_event_ids() -> None:
    for rel in payload_files():
        normalize, _ = EXPECTED[rel]
        body = (SHARED / rel).read_bytes()
        assert [e.event_id for e in normalize(body).events] == [
            e.event_id for e in normalize(body).events
        ]


# ------------------------------------------------------------------ ids, money, guests


def laravel_like(**changes: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "id": 820982911946154508,
        "email": "jon@doe.ca",
        "created_at": "2017-07-17T13:44:09-04:00",
        "processed_at": None,
        "total_price": "57.98",
        "currency": "USD",
        "customer": {"id": 115310627314723954, "email": "john@test.com"},
        "line_items": [],
    }
    order.update(changes)
    return order


def test_big_ids_survive_json_and_orjson_parsing() -> None:
    import orjson

    raw = json.dumps(laravel_like()).encode()
    for parsed in (json.loads(raw), orjson.loads(raw)):
        (e,) = normalize_shopify("orders/create", parsed, store_id=STORE, webhook_id=None).events
        assert isinstance(e, OrderEvent)
        assert (e.order_id, e.customer_id) == ("820982911946154508", "115310627314723954")


def test_float_id_from_a_lossy_parser_is_rejected() -> None:
    with pytest.raises(MalformedPayload, match="precision"):
        normalize_shopify(
            "orders/create", laravel_like(id=8.209829119461545e17), store_id=STORE, webhook_id=None
        )


def test_shop_currency_is_used_when_presentment_differs() -> None:
    order = laravel_like(
        currency="USD",
        presentment_currency="EUR",
        total_price="57.98",
        total_price_set={
            "shop_money": {"amount": "57.98", "currency_code": "USD"},
            "presentment_money": {"amount": "53.10", "currency_code": "EUR"},
        },
    )
    (e,) = normalize_shopify("orders/create", order, store_id=STORE, webhook_id=None).events
    assert isinstance(e, OrderEvent) and (e.amount, e.currency) == (Decimal("57.98"), "USD")


def test_zero_decimal_currency_amounts() -> None:
    refund = {
        "id": 1,
        "order_id": 2,
        "processed_at": "2024-05-01T10:00:00+07:00",
        "transactions": [
            {"kind": "refund", "status": "success", "amount": "20", "currency": "VND"},
            {"kind": "refund", "status": "failure", "amount": "99", "currency": "VND"},
        ],
        "refund_line_items": [],
    }
    (e,) = normalize_shopify(
        "refunds/create", refund, store_id=STORE, webhook_id=None, resolve_customer=lambda o: "7"
    ).events
    assert isinstance(e, OrderEvent)
    assert (str(e.amount), e.currency) == ("20", "VND")
    assert e.occurred_at == datetime(2024, 5, 1, 3, 0, tzinfo=UTC)


def test_refund_without_resolver_is_skipped_with_a_reason() -> None:
    r = normalize_shopify(
        "refunds/create", {"id": 1, "order_id": 2}, store_id=STORE, webhook_id=None
    )
    assert r.events == [] and r.kind == "ignored" and "no customer" in r.skipped[0]


def test_shopify_guest_order_is_keyed_by_email_hash() -> None:
    order = laravel_like(customer=None, email="Guest@Example.com")
    (e,) = normalize_shopify("orders/paid", order, store_id=STORE, webhook_id=None).events
    assert isinstance(e, OrderEvent) and e.type == "order_paid"
    assert e.customer_id == guest_customer_id(STORE, "guest@example.com")
    assert "example" not in e.customer_id.lower()  # no email in the key


def test_woocommerce_guest_without_email_is_skipped() -> None:
    body = json.dumps(
        {"id": 5, "customer_id": 0, "billing": {"email": ""}, "total": "1.00", "currency": "EUR"}
    ).encode()
    r = normalize_woocommerce("order.created", body, store_id=STORE)
    assert r.events == [] and r.kind == "ignored" and "guest" in r.skipped[0]


def test_woocommerce_refunds_and_cancellation() -> None:
    body = json.dumps(
        {
            "id": 9,
            "customer_id": 3,
            "status": "cancelled",
            "currency": "EUR",
            "total": "10.50",
            "date_created_gmt": "2024-01-01T10:00:00",
            "date_modified_gmt": "2024-01-02T10:00:00",
            "refunds": [{"id": 44, "reason": "", "total": "-4.25"}],
            "line_items": [{"sku": "A", "quantity": 1, "price": 10.5}],
        }
    ).encode()
    r = normalize_woocommerce("order.updated", body, store_id=STORE)
    assert [e.type for e in r.events] == ["order_cancelled", "order_refunded"]
    refund = r.events[1]
    assert isinstance(refund, OrderEvent)
    assert (
        refund.amount == Decimal("4.25")
        and refund.event_id == "woocommerce:refund:44:order_refunded"
    )
    assert refund.occurred_at == datetime(2024, 1, 2, 10, 0, tzinfo=UTC)
    assert_round_trips(r)


def test_woocommerce_float_line_price_is_exact() -> None:
    body = (
        b'{"id": 1, "customer_id": 2, "currency": "KWD", "total": "0.300",'
        b' "date_created_gmt": "2024-01-01T00:00:00",'
        b' "line_items": [{"sku": "x", "quantity": 3, "price": 0.1}]}'
    )
    (e,) = normalize_woocommerce("order.created", body, store_id=STORE).events
    assert isinstance(e, OrderEvent) and e.line_items[0].price == Decimal("0.1")
    assert str(e.amount) == "0.300"


# ------------------------------------------------------------------ ping, topics, malformed


def test_woocommerce_ping_is_a_ping() -> None:
    for body in (b"webhook_id=12", b"webhook_id=12\n"):
        assert is_woocommerce_ping(body)
        r = normalize_woocommerce("", body, store_id=STORE)
        assert (r.kind, r.events) == ("ping", [])
    assert not is_woocommerce_ping(b'{"id": 1}')
    assert not is_woocommerce_ping(b"webhook_id=abc")


def test_unknown_topics_raise_clear_errors() -> None:
    with pytest.raises(UnsupportedTopic, match="orders/updated"):
        normalize_shopify("orders/updated", {}, store_id=STORE, webhook_id=None)
    with pytest.raises(UnsupportedTopic, match="product.created"):
        normalize_woocommerce("product.created", b"{}", store_id=STORE)
    with pytest.raises(UnsupportedTopic, match="FEED_PROCESSING_FINISHED"):
        normalize_amazon({"NotificationType": "FEED_PROCESSING_FINISHED"}, store_id=STORE)
    assert issubclass(UnsupportedTopic, WebhookError) and issubclass(WebhookError, ChurnflowError)


def test_graphql_enum_topic_names_are_accepted() -> None:
    r = normalize_shopify("ORDERS_CREATE", laravel_like(), store_id=STORE, webhook_id=None)
    assert r.events[0].type == "order_created"


def test_malformed_bodies_raise_malformed_payload() -> None:
    with pytest.raises(MalformedPayload, match="not JSON"):
        normalize_woocommerce("order.created", b"{not json", store_id=STORE)
    with pytest.raises(MalformedPayload, match="not a JSON object"):
        normalize_woocommerce("order.created", b"[1]", store_id=STORE)
    with pytest.raises(MalformedPayload, match="date_created_gmt"):
        normalize_woocommerce(
            "order.created",
            b'{"id": 1, "customer_id": 2, "total": "1", "currency": "USD",'
            b' "date_created": "2024-01-01T00:00:00"}',
            store_id=STORE,
        )
    with pytest.raises(MalformedPayload, match="total"):
        normalize_shopify(
            "orders/create", laravel_like(total_price="1,00"), store_id=STORE, webhook_id=None
        )
    with pytest.raises(MalformedPayload, match="customer"):
        normalize_shopify("customers/redact", {"shop_id": 1}, store_id=STORE, webhook_id=None)


def test_amazon_eventbridge_envelope_and_resolver() -> None:
    notification = {
        "NotificationType": "ORDER_CHANGE",
        "EventTime": "2024-03-01T12:00:00.000Z",
        "Payload": {
            "OrderChangeNotification": {
                "AmazonOrderId": "111-2222222-3333333",
                "OrderChangeType": "OrderStatusChange",
                "Summary": {
                    "OrderStatus": "Unshipped",
                    "MarketplaceId": "A1PA6795UKMFR9",
                    "PurchaseDate": "2024-03-01T11:00:00.000Z",
                },
            }
        },
    }
    r = normalize_amazon(
        {"detail-type": "ORDER_CHANGE", "detail": notification},
        store_id=STORE,
        resolve_customer=lambda order: "buyer-9",
    )
    (e,) = r.events
    assert isinstance(e, OrderEvent)
    assert (e.type, e.customer_id, e.currency) == ("order_created", "buyer-9", "EUR")
    assert e.occurred_at == datetime(2024, 3, 1, 11, 0, tzinfo=UTC)


def test_customer_consent_states() -> None:
    customer = {
        "id": 5,
        "updated_at": "2024-01-01T00:00:00+05:30",
        "locale": "fr-CA",
        "email_marketing_consent": {"state": "subscribed"},
        "sms_marketing_consent": None,
        "default_address": {"country_code": "ca"},
    }
    r = normalize_shopify("customers/update", customer, store_id=STORE, webhook_id="w-1")
    (e,) = r.events
    assert isinstance(e, CustomerProfileEvent)
    assert e.consent == {"email": True} and e.locale == "fr-CA" and e.country == "CA"
    assert e.event_id == "shopify:customer:5:customer_profile:w-1"
    assert e.occurred_at == datetime(2023, 12, 31, 18, 30, tzinfo=UTC)
    legacy = {"id": 6, "updated_at": None, "accepts_marketing": True}
    (e2,) = normalize_shopify(
        "customers/update", legacy, store_id=STORE, webhook_id=None, received_at=RECEIVED
    ).events
    assert isinstance(e2, CustomerProfileEvent)
    assert e2.consent == {"email": True} and e2.occurred_at == RECEIVED


# ------------------------------------------------------------------ signatures


@needs_shared
def test_shopify_signature_vector_from_sign_py() -> None:
    body = (SHARED / LARAVEL).read_bytes()
    assert b64_hmac(LARAVEL_SECRET, body) == LARAVEL_SIGNATURE
    assert verify_shopify(body, LARAVEL_SIGNATURE, LARAVEL_SECRET)
    assert verify_shopify(body, f"  {LARAVEL_SIGNATURE}\n", LARAVEL_SECRET)
    assert verify_shopify(body, LARAVEL_SIGNATURE, ["rotated-new-secret", LARAVEL_SECRET])
    assert not verify_shopify(body, LARAVEL_SIGNATURE, "wrong-secret")
    assert not verify_shopify(body + b" ", LARAVEL_SIGNATURE, LARAVEL_SECRET)
    # Re-serialised JSON is a different byte string: it must not verify.
    reserialised = json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert not verify_shopify(reserialised, LARAVEL_SIGNATURE, LARAVEL_SECRET)


@pytest.mark.parametrize("header", [None, "", "not base64 at all", "hvTE9wpDzMcD", "é"])
def test_shopify_bad_or_missing_header(header: str | None) -> None:
    assert not verify_shopify(b'{"id": 1}', header, LARAVEL_SECRET)


def test_shopify_hex_signature_is_not_accepted() -> None:
    body = b'{"id": 1}'
    hex_sig = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert not verify_shopify(body, hex_sig, "s3cret")
    assert verify_shopify(body, b64_hmac("s3cret", body), "s3cret")
    assert not verify_shopify(body, b64_hmac("", body), "")  # empty secret never verifies


@needs_shared
@pytest.mark.parametrize(
    "rel",
    [
        "woocommerce/order__rest-api-docs-v3__guest-processing.json",
        "woocommerce/order__activepieces__3-decimal-store.json",
    ],
)
def test_woocommerce_signature(rel: str) -> None:
    body = (SHARED / rel).read_bytes()
    header = b64_hmac("wc&secret", body)
    assert verify_woocommerce(body, header, "wc&amp;secret")  # wp_specialchars_decode'd key
    assert verify_woocommerce(body, header, "wc&secret")
    assert not verify_woocommerce(body, header, "wc&amp;secret", decode_secret=False)
    assert not verify_woocommerce(body, None, "wc&secret")
    assert not verify_woocommerce(body, b64_hmac("other", body), "wc&secret")


def test_generic_signature() -> None:
    body = b'[{"type": "page_view"}]'
    header = sign_generic(body, "k")
    assert header == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert verify_generic(body, header, "k")
    assert verify_generic(body, header.upper().replace("SHA256=", "sha256="), "k")
    assert not verify_generic(body, header, "other")
    assert not verify_generic(body + b"\n", header, "k")
    assert not verify_generic(body, None, "k")
    assert not verify_generic(body, header.removeprefix("sha256="), "k")
    assert not verify_generic(body, "sha1=" + header.removeprefix("sha256="), "k")
    with pytest.raises(ValueError):
        sign_generic(body, "")


def test_discount_code_reaches_the_line_it_discounted() -> None:
    order = laravel_like(
        discount_codes=[{"code": "WINBACK10", "amount": "2.50", "type": "fixed_amount"}],
        discount_applications=[
            {"type": "manual", "value": "1.0"},
            {"type": "discount_code", "code": "WINBACK10", "value": "2.5"},
        ],
        line_items=[
            {"sku": "A", "quantity": 1, "price": "10.00", "product_type": "Hats", "vendor": "V"},
            {
                "sku": "B",
                "quantity": 2,
                "price": "5.00",
                "vendor": "V",
                "discount_allocations": [{"amount": "2.50", "discount_application_index": 1}],
            },
        ],
    )
    (e,) = normalize_shopify("orders/create", order, store_id=STORE, webhook_id=None).events
    assert isinstance(e, OrderEvent) and e.discount_codes == ("WINBACK10",)
    assert [(li.category, li.discount_code) for li in e.line_items] == [
        ("Hats", None),
        ("V", "WINBACK10"),
    ]


def test_checkout_update_without_customer_and_presentment_currency() -> None:
    base = {"token": "t1", "created_at": "2024-01-01T00:00:00Z", "currency": "USD"}
    r = normalize_shopify("checkouts/update", base, store_id=STORE, webhook_id=None)
    assert r.events == [] and r.kind == "ignored" and "no customer" in r.skipped[0]
    foreign = {
        **base,
        "updated_at": "2024-01-01T01:00:00-05:00",
        "presentment_currency": "EUR",
        "email": "x@y.z",
        "total_price": "9.00",
        "line_items": [{"sku": "S", "quantity": 1, "price": "9.00"}],
    }
    r = normalize_shopify("checkouts/update", foreign, store_id=STORE, webhook_id=None)
    assert [e.type for e in r.events] == ["add_to_cart", "checkout_started"]
    for e in r.events:
        assert isinstance(e, BrowseEvent) and e.value is None and e.currency is None
        assert e.occurred_at == datetime(2024, 1, 1, 6, 0, tzinfo=UTC)
    assert "values omitted" in r.skipped[0]


def test_redact_with_string_id_or_email_only() -> None:
    body = {"shop_id": "954889", "customer": {"id": "191167"}, "orders_to_redact": ["1"]}
    r = normalize_shopify(
        "customers/redact", body, store_id=STORE, webhook_id=None, received_at=RECEIVED
    )
    assert [e.customer_id for e in r.events] == ["191167"]
    email_only = {"shop_id": 1, "customer": {"email": "a@b.c"}}
    r = normalize_shopify(
        "customers/redact", email_only, store_id=STORE, webhook_id=None, received_at=RECEIVED
    )
    assert [e.customer_id for e in r.events] == [guest_customer_id(STORE, "a@b.c")]


def test_woocommerce_customer_profile() -> None:
    body = json.dumps(
        {
            "id": 25,
            "date_created_gmt": "2024-02-02T10:00:00",
            "date_modified_gmt": "2024-02-03T10:00:00",
            "first_name": "Ana",
            "billing": {"country": "pt"},
        }
    ).encode()
    (e,) = normalize_woocommerce("customer.updated", body, store_id=STORE).events
    assert isinstance(e, CustomerProfileEvent)
    assert (e.customer_id, e.country, e.first_name) == ("25", "PT", "Ana")
    assert e.occurred_at == datetime(2024, 2, 3, 10, 0, tzinfo=UTC)
