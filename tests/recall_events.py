"""For recall tests: a contactable customer's profile, an order, an SMTP provider."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import redis

from engine.delivery.providers import RedisDirectory, SmtpProvider
from engine.events import CustomerProfileEvent, OrderEvent


def contactable(store: str, customer: str, at: datetime, **extra: str) -> CustomerProfileEvent:
    """A customer in Berlin (DE) who consented to email."""
    return CustomerProfileEvent(
        type="customer_profile",
        event_id=f"p-{customer}",
        store_id=store,
        customer_id=customer,
        occurred_at=at,
        country="DE",
        timezone="Europe/Berlin",
        consent={"email": True},
        **extra,
    )


def order(
    store: str, customer: str, n: int, at: datetime, amount: str, currency: str = "USD"
) -> OrderEvent:
    """The customer's order number ``n`` (event and order ids follow from it)."""
    return OrderEvent(
        type="order_created",
        event_id=f"o-{customer}-{n}",
        store_id=store,
        customer_id=customer,
        occurred_at=at,
        order_id=f"{customer}-{n}",
        amount=Decimal(amount),
        currency=currency,
    )


def smtp_provider(client: redis.Redis, prefix: str, port: int) -> SmtpProvider:
    """An SMTP provider for a test server on loopback ``port``, addresses from Redis."""
    directory = RedisDirectory(client, prefix)
    return SmtpProvider(
        "127.0.0.1",
        port,
        sender="shop@example.com",
        address_for=lambda store, customer: directory.address(store, customer),
        timeout_s=5,
    )
