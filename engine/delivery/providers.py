"""Delivery providers: where a rendered recall message is handed over.

* :class:`SmtpProvider` — email over plain SMTP (``smtplib``) to ``host:port``
  (``CHURNFLOW_SMTP_HOST`` / ``CHURNFLOW_SMTP_PORT``). The ``Message-ID`` is
  derived from the idempotency key, so a receiving system can drop a duplicate.
* :class:`WebhookProvider` — sms, push, social and webhook: a JSON ``POST`` to the
  store's endpoint for the channel, signed with the store's delivery secret:
  ``X-Churnflow-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`` (the same
  scheme as the generic inbound webhook), plus ``Idempotency-Key``.

Every failure is a :class:`ProviderError`; ``retryable`` says whether trying
again later can help (connection errors, timeouts, SMTP 4xx, HTTP 408/425/429/5xx)
or not (SMTP 5xx, other HTTP 4xx, no address / endpoint / secret configured).

Per-store configuration lives in Redis (the store is the hash tag)::

    {prefix}:{<store>}:delivery-secret           string: HMAC secret for outbound webhooks
    {prefix}:{<store>}:delivery-endpoint         hash: channel -> URL
    {prefix}:{<store>}:contact:<channel>         hash: customer id -> address (email, ...)

"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Protocol

import orjson
import redis

from engine.errors import ChurnflowError
from engine.triggers.intent import Offer

__all__ = [
    "WEBHOOK_CHANNELS",
    "OutboundMessage",
    "Provider",
    "ProviderError",
    "RedisDirectory",
    "SmtpProvider",
    "WebhookProvider",
    "contact_key",
    "endpoint_key",
    "message_id_for",
    "secret_key",
    "sign_body",
]

WEBHOOK_CHANNELS = ("sms", "push", "social", "webhook")
SIGNATURE_HEADER = "X-Churnflow-Signature"


class ProviderError(ChurnflowError):
    """The provider did not take the message; ``retryable`` says whether to try again."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A rendered recall intent, ready to hand to a provider."""

    idempotency_key: str
    store_id: str
    customer_id: str
    channel: str
    rule_id: str
    template: str
    locale: str
    subject: str
    body: str
    offer: Offer = Offer()
    variant: str | None = None


class Provider(Protocol):
    def send(self, message: OutboundMessage) -> str:
        """Hand the message over; return the provider's message id or raise ProviderError."""
        ...


def message_id_for(idempotency_key: str) -> str:
    """A stable id for the message of one idempotency key."""
    return "cf-" + hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:40]


def sign_body(body: bytes, secret: str) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the raw body under the store's secret."""
    if not secret:
        raise ValueError("refusing to sign with an empty secret")
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


# -- per-store configuration in Redis ------------------------------------------------


def secret_key(prefix: str, store_id: str) -> str:
    """The key.

    >>> secret_key("cf", "demo")
    'cf:{demo}:delivery-secret'
    """
    return f"{prefix}:{{{store_id}}}:delivery-secret"


def endpoint_key(prefix: str, store_id: str) -> str:
    return f"{prefix}:{{{store_id}}}:delivery-endpoint"


def contact_key(prefix: str, store_id: str, channel: str) -> str:
    """The key.

    >>> contact_key("cf", "demo", "email")
    'cf:{demo}:contact:email'
    """
    return f"{prefix}:{{{store_id}}}:contact:{channel}"


def _text(raw: object) -> str | None:
    if raw is None:
        return None
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return text or None


class RedisDirectory:
    """Addresses, endpoints and secrets of each store, read from Redis (see module doc)."""

    def __init__(
        self, client: redis.Redis, prefix: str, *, default_endpoint: str | None = None
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.default_endpoint = default_endpoint

    def address(self, store_id: str, customer_id: str, channel: str = "email") -> str | None:
        return _text(self.client.hget(contact_key(self.prefix, store_id, channel), customer_id))

    def endpoint(self, store_id: str, channel: str) -> str | None:
        found = _text(self.client.hget(endpoint_key(self.prefix, store_id), channel))
        return found or self.default_endpoint

    def secret(self, store_id: str) -> str | None:
        return _text(self.client.get(secret_key(self.prefix, store_id)))

    # setters, for the CLI and tests
    def set_address(
        self, store_id: str, customer_id: str, address: str, channel: str = "email"
    ) -> None:
        self.client.hset(contact_key(self.prefix, store_id, channel), customer_id, address)

    def set_endpoint(self, store_id: str, channel: str, url: str) -> None:
        self.client.hset(endpoint_key(self.prefix, store_id), channel, url)

    def set_secret(self, store_id: str, secret: str) -> None:
        if not secret:
            raise ValueError("refusing to store an empty delivery secret")
        self.client.set(secret_key(self.prefix, store_id), secret.encode("utf-8"))


# -- SMTP ----------------------------------------------------------------------------


class SmtpProvider:
    """Plain SMTP (no TLS, no auth): meant for a local relay / MTA on loopback."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        address_for: Callable[[str, str], str | None],
        timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.address_for = address_for
        self.timeout_s = timeout_s

    def build(self, message: OutboundMessage, recipient: str) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = recipient
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(usegmt=True)
        domain = self.sender.rpartition("@")[2] or "churnflow.invalid"
        mail["Message-ID"] = f"<{message_id_for(message.idempotency_key)}@{domain}>"
        mail["X-Churnflow-Idempotency-Key"] = message.idempotency_key
        mail["Content-Language"] = message.locale
        mail.set_content(message.body)
        return mail

    def send(self, message: OutboundMessage) -> str:
        recipient = self.address_for(message.store_id, message.customer_id)
        if not recipient:
            raise ProviderError("no email address for customer", retryable=False)
        mail = self.build(message, recipient)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                refused = smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            code = min((c for c, _ in exc.recipients.values()), default=550)
            raise ProviderError(f"smtp recipient refused ({code})", retryable=code < 500) from exc
        except smtplib.SMTPResponseException as exc:
            raise ProviderError(
                f"smtp {exc.smtp_code}: {exc.smtp_error!r}", retryable=exc.smtp_code < 500
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise ProviderError(f"smtp: {exc}", retryable=True) from exc
        if refused:
            raise ProviderError(f"smtp refused {sorted(refused)}", retryable=False)
        return str(mail["Message-ID"]).strip("<>")


# -- signed HTTP webhook ------------------------------------------------------------

_RETRYABLE_HTTP = frozenset({408, 425, 429})


class WebhookProvider:
    """POSTs the message as JSON to the store's endpoint for the channel, HMAC-signed."""

    def __init__(
        self,
        *,
        endpoint_for: Callable[[str, str], str | None],
        secret_for: Callable[[str], str | None],
        timeout_s: float = 10.0,
    ) -> None:
        self.endpoint_for = endpoint_for
        self.secret_for = secret_for
        self.timeout_s = timeout_s

    @staticmethod
    def body(message: OutboundMessage) -> bytes:
        return orjson.dumps(
            {
                "idempotency_key": message.idempotency_key,
                "message_id": message_id_for(message.idempotency_key),
                "store_id": message.store_id,
                "customer_id": message.customer_id,
                "channel": message.channel,
                "rule_id": message.rule_id,
                "template": message.template,
                "variant": message.variant,
                "locale": message.locale,
                "subject": message.subject,
                "body": message.body,
                "offer": {
                    "percent_off": message.offer.percent_off,
                    "free_shipping": message.offer.free_shipping,
                    "code": message.offer.code,
                },
            },
            option=orjson.OPT_SORT_KEYS,
        )

    def send(self, message: OutboundMessage) -> str:
        url = self.endpoint_for(message.store_id, message.channel)
        if not url:
            raise ProviderError(f"no {message.channel} endpoint for store", retryable=False)
        secret = self.secret_for(message.store_id)
        if not secret:
            raise ProviderError("no delivery secret for store", retryable=False)
        body = self.body(message)
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "churnflow-delivery/1",
                SIGNATURE_HEADER: sign_body(body, secret),
                "Idempotency-Key": message.idempotency_key,
                "X-Churnflow-Channel": message.channel,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read(65_536)
        except urllib.error.HTTPError as exc:
            code = exc.code
            retryable = code in _RETRYABLE_HTTP or code >= 500
            raise ProviderError(f"http {code}", retryable=retryable) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ProviderError(f"http: {exc}", retryable=True) from exc
        try:
            reply = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            reply = {}
        given = reply.get("id") if isinstance(reply, dict) else None
        return str(given) if given else message_id_for(message.idempotency_key)
