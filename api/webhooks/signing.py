"""Webhook signatures: HMAC-SHA256 over the raw request body, compared in constant time.

Always verify the bytes exactly as received. Shopify escapes ``/`` and ``&<>``
and WooCommerce escapes every non-ASCII character, so a re-serialised body
never matches.

* Shopify: ``X-Shopify-Hmac-Sha256`` (or ``shopify-hmac-sha256``) =
  base64(HMAC-SHA256(app client secret, body)).
* WooCommerce: ``X-WC-Webhook-Signature`` = base64(HMAC-SHA256(secret, body)),
  where the key is the secret after ``wp_specialchars_decode(secret, ENT_QUOTES)``
  (``&amp;`` in a secret is used as ``&``). The set-up ping carries no
  signature; recognise it with :func:`api.webhooks.is_woocommerce_ping` first.
* Generic signed JSON batches: ``X-Churnflow-Signature: sha256=<hex>`` =
  hex(HMAC-SHA256(secret, body)).

Each ``secret`` may be a single string or several (during a rotation Shopify
keeps signing with the old secret for up to an hour). An empty secret never
verifies anything.

>>> verify_shopify(b'{"a":1}', "qp4uNXX11wmLbKzNeQiIw21f22M0KnO62i1qUXR6hJQ=", "secret")
True
>>> verify_shopify(b'{"a":1}', "qp4uNXX11wmLbKzNeQiIw21f22M0KnO62i1qUXR6hJQ=", ["new", "secret"])
True
>>> verify_shopify(b'{"a": 1}', "qp4uNXX11wmLbKzNeQiIw21f22M0KnO62i1qUXR6hJQ=", "secret")
False
>>> verify_shopify(b'{"a":1}', None, "secret")
False
>>> verify_woocommerce(b'{}', "0p+qRTleuuwO/+DAGR6bM6Yd7348iMli3Xh6e8HutVU=", "a&amp;b")
True
>>> sign_generic(b'{"a":1}', "secret")
'sha256=aa9e2e3575f5d7098b6caccd790888c36d5fdb63342a73bada2d6a51747a8494'
>>> verify_generic(b'{"a":1}', sign_generic(b'{"a":1}', "secret"), "secret")
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence

__all__ = [
    "GENERIC_SIGNATURE_HEADER",
    "SHOPIFY_SIGNATURE_HEADER",
    "SHOPIFY_EVENTS_SIGNATURE_HEADER",
    "WOOCOMMERCE_SIGNATURE_HEADER",
    "sign_generic",
    "sign_shopify",
    "sign_woocommerce",
    "verify_generic",
    "verify_shopify",
    "verify_woocommerce",
    "wp_specialchars_decode",
]

SHOPIFY_SIGNATURE_HEADER = "X-Shopify-Hmac-Sha256"
SHOPIFY_EVENTS_SIGNATURE_HEADER = "shopify-hmac-sha256"
WOOCOMMERCE_SIGNATURE_HEADER = "X-WC-Webhook-Signature"
GENERIC_SIGNATURE_HEADER = "X-Churnflow-Signature"
_GENERIC_PREFIX = "sha256="

Secrets = str | Sequence[str]


def _secrets(secret: Secrets) -> list[str]:
    candidates = [secret] if isinstance(secret, str) else list(secret)
    return [s for s in candidates if isinstance(s, str) and s]


def _digest(key: str, body: bytes) -> bytes:
    return hmac.new(key.encode("utf-8"), body, hashlib.sha256).digest()


def _header_bytes(header: str | None) -> bytes | None:
    if header is None:
        return None
    try:
        return header.strip().encode("ascii")
    except UnicodeEncodeError:
        return None


def _verify_b64(raw_body: bytes, header_b64: str | None, keys: list[str]) -> bool:
    given = _header_bytes(header_b64)
    if not given or not keys:
        return False
    ok = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        expected = base64.b64encode(_digest(key, raw_body))
        ok |= hmac.compare_digest(expected, given)
    return ok


def verify_shopify(raw_body: bytes, header_b64: str | None, secret: Secrets) -> bool:
    """True if ``header_b64`` is the Shopify signature of ``raw_body`` under ``secret``."""
    return _verify_b64(raw_body, header_b64, _secrets(secret))


def wp_specialchars_decode(secret: str) -> str:
    """WordPress ``wp_specialchars_decode($s, ENT_QUOTES)``, as WooCommerce applies it to keys.

    >>> wp_specialchars_decode("a&amp;b&#039;c&quot;&lt;&gt;")
    'a&b\\'c"<>'
    """
    s = re.sub(r"&#0*39;|&#x0*27;", "'", secret, flags=re.I)
    s = re.sub(r"&#0*34;|&#x0*22;", '"', s, flags=re.I)
    s = re.sub(r"&#0*60;|&#x0*3c;", "<", s, flags=re.I)
    s = re.sub(r"&#0*62;|&#x0*3e;", ">", s, flags=re.I)
    s = s.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    s = re.sub(r"&#0*38;|&#x0*26;", "&", s, flags=re.I)
    return s.replace("&amp;", "&")


def verify_woocommerce(
    raw_body: bytes, header_b64: str | None, secret: Secrets, *, decode_secret: bool = True
) -> bool:
    """True if ``header_b64`` is the WooCommerce signature of ``raw_body`` under ``secret``.

    ``decode_secret=False`` uses the secret verbatim (skips ``wp_specialchars_decode``).
    """
    keys = _secrets(secret)
    if decode_secret:
        keys = [wp_specialchars_decode(k) for k in keys]
    return _verify_b64(raw_body, header_b64, keys)


def sign_shopify(body: bytes, secret: str) -> str:
    """The ``X-Shopify-Hmac-Sha256`` value Shopify would send for ``body``.

    >>> sign_shopify(b'{"a":1}', "secret")
    'qp4uNXX11wmLbKzNeQiIw21f22M0KnO62i1qUXR6hJQ='
    """
    if not secret:
        raise ValueError("refusing to sign with an empty secret")
    return base64.b64encode(_digest(secret, body)).decode("ascii")


def sign_woocommerce(body: bytes, secret: str) -> str:
    """The ``X-WC-Webhook-Signature`` WooCommerce would send (key: the decoded secret).

    >>> verify_woocommerce(b"{}", sign_woocommerce(b"{}", "a&amp;b"), "a&amp;b")
    True
    """
    return sign_shopify(body, wp_specialchars_decode(secret))


def sign_generic(body: bytes, secret: str) -> str:
    """The ``X-Churnflow-Signature`` header value for ``body``: ``sha256=<hex>``."""
    if not secret:
        raise ValueError("refusing to sign with an empty secret")
    return _GENERIC_PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_generic(body: bytes, header: str | None, secret: Secrets) -> bool:
    """True if ``header`` (``sha256=<hex>``) is the signature of ``body`` under ``secret``."""
    given = _header_bytes(header)
    keys = _secrets(secret)
    if not given or not keys:
        return False
    prefix, _, hex_part = given.partition(b"=")
    if prefix.lower() != b"sha256" or not hex_part:
        return False
    hex_part = hex_part.lower()
    ok = False
    for key in keys:
        expected = _digest(key, body).hex().encode("ascii")
        ok |= hmac.compare_digest(expected, hex_part)
    return ok
