"""Money to the store's base currency, as a float for the hot path.

Rates are *units of base per one unit of the currency* (``{"USD": 0.92}`` with
base ``EUR`` means 1 USD = 0.92 EUR). The base currency itself needs no rate.

>>> from decimal import Decimal
>>> to_base(Decimal("10.00"), "USD", {"USD": 0.92}, "EUR")
9.200000000000001
>>> to_base(Decimal("19.90"), "eur", {}, "EUR")
19.9
>>> to_base(Decimal("1"), "GBP", {"USD": 0.92}, "EUR")
Traceback (most recent call last):
...
engine.features.currency.UnknownCurrency: no exchange rate from GBP to EUR
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal

from engine.errors import ConfigError


class UnknownCurrency(ConfigError):
    """An amount in a currency the store has no (usable) exchange rate for."""


def to_base(amount: Decimal, currency: str, rates: Mapping[str, float], base: str) -> float:
    """``amount`` in ``currency`` converted to ``base`` using ``rates``."""
    if currency == base:
        return float(amount)
    code = currency.upper()
    if code == base.upper():
        return float(amount)
    rate = rates.get(code)
    if rate is None:
        raise UnknownCurrency(f"no exchange rate from {code} to {base.upper()}")
    if not (rate > 0.0 and math.isfinite(rate)):
        raise UnknownCurrency(f"unusable exchange rate {rate!r} from {code} to {base.upper()}")
    return float(amount) * rate
