"""The simulator: a multi-store, cross-border event stream with a known truth.

Every customer follows a BG/NBD-like generative process:

* arrival (the first order) uniform over the simulated window;
* an individual purchase rate ``rate ~ Gamma(rate_shape, 1 / rate_scale_days)``
  per day, modulated by seasonality in the customer's local time (hour of day,
  day of week, and a yearly curve with a summer dip, a Black-Friday peak in late
  November and a pre-Christmas peak) — a non-homogeneous Poisson process drawn
  by thinning;
* after every repeat purchase the customer drops out for good with an individual
  probability ``dropout_p ~ Beta(dropout_a, dropout_b)``; a dropped-out customer
  stops browsing and opens fewer newsletters.

Around the orders: a profile (country, IANA time zone, locale, consent per
channel), a storefront session before every order (page view, sometimes a
search, product views, add to cart for each line item, checkout started),
browse-only sessions while alive (some with an abandoned cart), ``order_paid``
or ``order_cancelled``, refunds days later, newsletters with
sent/delivered/opened/clicked/unsubscribed for a share of the email-consenting
customers, several stores (Shopify, WooCommerce, TikTok Shop), markets,
currencies and time zones. Timestamps carry the customer's local UTC offset,
as platforms send them (``local_offsets=False`` writes UTC).

The recall experiment. The first time a customer has been silent for
``recall_after_days`` (next local 10:00) and can be reached on a consented
channel, a recall is due; the send must leave the whole ``effect_window_days``
inside the window. A share ``holdout`` of these eligible customers is held
out (no message, no effect); the others get a ``message_sent`` with
``rule_id="winback"``. The true effect: with probability ``effect`` a treated
customer places an extra order within the effect window, and is active again
after it (a dropped-out customer comes back, so the recall lowers dropout).
The effect draw is made for holdout customers too, so each eligible customer's
individual effect on "ordered within the window" is known:
``uplift = responded and not baseline_converted``. Its mean over the eligible
customers is the true uplift of the truth file.

Determinism: all randomness comes from ``random.Random`` instances seeded
with ``(seed, customer, aspect)``, so the same configuration gives
byte-identical output, and changing ``effect`` changes nothing but the
responders' streams after their recall order (common random numbers).
No wall clock is read; the window starts at ``start`` 00:00 UTC.

>>> config = SimulationConfig(stores=2, customers=20, days=120, seed=3)
>>> run = simulate(config)
>>> lines = list(run.lines())
>>> len(lines) == run.truth["summary"]["events"] > 20
True
>>> from engine.events import decode_event
>>> decode_event(lines[0]).type
'customer_profile'
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import random
import tempfile
import zoneinfo
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from engine.errors import ChurnflowError
from engine.events import (
    BrowseEvent,
    CustomerProfileEvent,
    EventDecodeError,
    MessageEvent,
    OrderEvent,
    decode_event,
)
from engine.settings import Settings
from engine.triggers.assignment import in_holdout

__all__ = [
    "MARKETS",
    "Market",
    "SimulationConfig",
    "SimulationError",
    "SimulationRun",
    "read_events",
    "recall_rules",
    "simulate",
    "store_ids",
    "write_recall_rules",
    "write_simulation",
]

log = logging.getLogger(__name__)

DAY = 86_400.0
HOUR = 3_600.0
RECALL_RULE_ID = "winback"
CHUNK_CUSTOMERS = 2_000
"""Customers generated per sorted run; more than one run is merged from temp files."""


class SimulationError(ChurnflowError, ValueError):
    """A simulation configuration that cannot be used, or a file that is not a simulation."""


@dataclass(frozen=True)
class Market:
    """Where a customer lives: country, IANA time zone, currency, locale, some first names."""

    country: str
    timezone: str
    currency: str
    locale: str
    weight: float
    first_names: tuple[str, ...]


MARKETS: tuple[Market, ...] = (
    Market("US", "America/New_York", "USD", "en-US", 16, ("Emma", "Liam", "Olivia", "Noah")),
    Market("US", "America/Los_Angeles", "USD", "en-US", 10, ("Ava", "Mason", "Mia", "Ethan")),
    Market("CA", "America/Toronto", "CAD", "en-CA", 5, ("Chloe", "Lucas", "Zoe", "Owen")),
    Market("MX", "America/Mexico_City", "MXN", "es-MX", 5, ("Sofía", "Mateo", "Valentina")),
    Market("BR", "America/Sao_Paulo", "BRL", "pt-BR", 6, ("Ana", "João", "Beatriz", "Pedro")),
    Market("GB", "Europe/London", "GBP", "en-GB", 8, ("Amelia", "Oliver", "Isla", "George")),
    Market("DE", "Europe/Berlin", "EUR", "de-DE", 9, ("Hanna", "Jonas", "Lea", "Felix")),
    Market("FR", "Europe/Paris", "EUR", "fr-FR", 6, ("Léa", "Hugo", "Chloé", "Louis")),
    Market("IN", "Asia/Kolkata", "INR", "en-IN", 7, ("Aarav", "Diya", "Vihaan", "Ananya")),
    Market("SG", "Asia/Singapore", "SGD", "en-SG", 4, ("Wei", "Hui Min", "Arjun", "Siti")),
    Market("VN", "Asia/Ho_Chi_Minh", "VND", "vi-VN", 5, ("Linh", "Minh", "Trang", "Huy")),
    Market("JP", "Asia/Tokyo", "JPY", "ja-JP", 6, ("Yui", "Haruto", "Aoi", "Sota")),
    Market("CN", "Asia/Shanghai", "CNY", "zh-CN", 5, ("Wang Fang", "Li Wei", "Zhang Min")),
    Market("AU", "Australia/Sydney", "AUD", "en-AU", 4, ("Charlotte", "Jack", "Ruby", "Leo")),
)
STORE_HOMES = (0, 6, 9, 5, 11, 4, 13, 8)
"""Home market (index into MARKETS) of store 1, 2, ...: half of a store's customers."""
STORE_SOURCES = ("shopify", "woocommerce", "tiktok")
ZERO_DECIMAL_CURRENCIES = frozenset({"JPY", "VND"})
CATEGORIES = ("apparel", "shoes", "beauty", "home", "electronics", "toys", "sports", "books")
SKUS_PER_CATEGORY = 24
CONSENT_SHARE = {"email": 0.65, "sms": 0.25, "push": 0.3}
SOCIAL_MARKETS = frozenset({"SG", "VN", "IN"})
RECALL_CHANNELS = ("email", "sms", "push", "social")

# Seasonality weights, each normalised to mean 1 below.
_WEEKDAY = (1.05, 1.0, 1.0, 0.95, 0.9, 0.95, 1.15)  # Monday .. Sunday
_HOUR = (
    0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 0.9, 1.1, 1.2, 1.2,
    1.3, 1.2, 1.1, 1.1, 1.2, 1.3, 1.5, 1.7, 1.8, 1.6, 1.1, 0.6,
)  # fmt: skip


def yearly_weight(day_of_year: int) -> float:
    """Unnormalised yearly curve: winter high, summer dip, Black Friday and Christmas peaks.

    >>> yearly_weight(332) > 2 * yearly_weight(200)
    True
    """
    d = day_of_year
    return (
        1.0
        + 0.12 * math.cos(2 * math.pi * (d - 10) / 365.0)
        + 1.0 * math.exp(-0.5 * ((d - 332) / 6.0) ** 2)
        + 0.6 * math.exp(-0.5 * ((d - 350) / 7.0) ** 2)
    )


def _normalised(weights: tuple[float, ...] | list[float]) -> list[float]:
    mean = sum(weights) / len(weights)
    return [w / mean for w in weights]


_WEEKDAY_N = _normalised(_WEEKDAY)
_HOUR_N = _normalised(_HOUR)
_YEAR_N = _normalised([yearly_weight(d) for d in range(1, 367)])


@functools.lru_cache(maxsize=64)
def _season_table(timezone: str, start_ts: float, hours: int) -> tuple[array[float], float]:
    """Seasonality multiplier of each hour of the window in local time, and the maximum."""
    tz = zoneinfo.ZoneInfo(timezone)
    table = array("d")
    for h in range(hours):
        local = datetime.fromtimestamp(start_ts + h * HOUR + HOUR / 2, tz)
        table.append(
            _WEEKDAY_N[local.weekday()]
            * _HOUR_N[local.hour]
            * _YEAR_N[local.timetuple().tm_yday - 1]
        )
    return table, max(table)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that determines a simulation; two equal configs give identical bytes."""

    stores: int = 3
    customers: int = 1_000
    days: int = 365
    seed: int = 7
    start: date = date(2025, 1, 1)
    effect: float = 0.1
    """True effect: P(extra order within ``effect_window_days`` of a recall | treated)."""
    holdout: float = 0.2
    """Share of recall-eligible customers who get no message (and no effect)."""
    holdout_salt: str | None = None
    """Draw the holdout with churnflow's own assignment (``in_holdout(store, customer,
    salt, holdout)``), so a store whose rules file says ``holdout: {fraction: <holdout>,
    salt: <salt>}`` holds out exactly the simulator's holdout customers and churnflow's
    uplift estimate can be checked against the truth. ``None``: a seeded draw."""
    recall_after_days: float = 30.0
    effect_window_days: float = 7.0
    horizon_days: int = 90
    """The churn horizon written into the truth (benchmarks label with it)."""
    rate_shape: float = 0.6
    rate_scale_days: float = 60.0
    """Purchase rate per day ~ Gamma(rate_shape, scale=1/rate_scale_days); mean 0.01/day."""
    dropout_a: float = 0.8
    dropout_b: float = 2.4
    """Dropout probability after each repeat purchase ~ Beta(a, b); mean 0.25."""
    browse_per_order: float = 1.5
    """Browse-only sessions per expected order while the customer is active."""
    abandon_share: float = 0.35
    refund_share: float = 0.05
    cancel_share: float = 0.02
    newsletter_share: float = 0.5
    """Share of email-consenting customers who get newsletters (message engagement)."""
    newsletter_every_days: float = 14.0
    unsubscribe_share: float = 0.01
    local_offsets: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("stores", 1 <= self.stores <= 1000),
            ("customers", self.customers >= 1),
            ("days", self.days >= 1),
            ("effect", 0.0 <= self.effect <= 1.0),
            ("holdout", 0.0 <= self.holdout <= 1.0),
            ("recall_after_days", self.recall_after_days > 0),
            ("effect_window_days", self.effect_window_days >= 0.5),
            ("horizon_days", self.horizon_days >= 1),
            ("rate_shape", self.rate_shape > 0),
            ("rate_scale_days", self.rate_scale_days > 0),
            ("dropout_a", self.dropout_a > 0),
            ("dropout_b", self.dropout_b > 0),
            ("browse_per_order", self.browse_per_order >= 0),
            ("newsletter_every_days", self.newsletter_every_days >= 1),
        ]
        shares = ("abandon_share", "refund_share", "cancel_share", "newsletter_share")
        checks += [(name, 0.0 <= getattr(self, name) <= 1.0) for name in shares]
        checks.append(("unsubscribe_share", 0.0 <= self.unsubscribe_share <= 1.0))
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise SimulationError(f"invalid simulation setting(s): {', '.join(bad)}")

    @functools.cached_property
    def start_ts(self) -> float:
        return datetime.combine(self.start, dtime(0), tzinfo=UTC).timestamp()

    @functools.cached_property
    def end_ts(self) -> float:
        """The first instant after the window; no event is at or after it."""
        return self.start_ts + self.days * DAY


# --------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class _Product:
    sku: str
    category: str
    price_usd: float


@functools.lru_cache(maxsize=8)
def _catalogue(seed: int) -> tuple[_Product, ...]:
    rng = random.Random(f"{seed}:catalogue")
    return tuple(
        _Product(f"{cat[:3].upper()}-{n:03d}", cat, round(rng.lognormvariate(3.2, 0.7), 2))
        for cat in CATEGORIES
        for n in range(SKUS_PER_CATEGORY)
    )


@functools.lru_cache(maxsize=1)
def _usd_per_unit() -> dict[str, float]:
    """The default exchange table of the engine's settings (units of USD per unit)."""
    rates: dict[str, float] = Settings.model_fields["currency_rates"].get_default(
        call_default_factory=True
    )
    return rates


def local_price(price_usd: float, currency: str) -> Decimal:
    """A USD price in ``currency``, rounded the way the currency is written.

    >>> local_price(19.99, "EUR"), local_price(19.99, "JPY")
    (Decimal('18.51'), Decimal('2984'))
    """
    amount = price_usd / _usd_per_unit()[currency]
    if currency in ZERO_DECIMAL_CURRENCIES:
        return Decimal(round(amount))
    return Decimal(f"{amount:.2f}")


# --------------------------------------------------------------------- one customer

_Pending = tuple[int, int, str, dict[str, Any]]
"""(whole second, rank within the customer, event type, fields) of an event to encode."""


@dataclass
class _Customer:
    """One customer's fixed traits and the events generated for them so far."""

    config: SimulationConfig
    index: int
    customer_id: str
    store_id: str
    source: str
    market: Market
    currency: str
    tz: zoneinfo.ZoneInfo
    season: array[float]
    season_peak: float
    favourites: tuple[str, ...]
    pending: list[_Pending] = field(default_factory=list)

    def emit(self, ts: float, event_type: str, **fields: Any) -> None:
        """Queue an event at ``ts`` (whole seconds); events at or after the window end are cut.

        The rank keeps causal order among events of the same second.
        """
        second = int(ts)
        if second < self.config.end_ts:
            self.pending.append((second, len(self.pending), event_type, fields))

    def season_at(self, ts: float) -> float:
        return self.season[int((ts - self.config.start_ts) // HOUR)]

    def rng(self, aspect: str) -> random.Random:
        """An independent random stream for one aspect of this customer."""
        return random.Random(f"{self.config.seed}:{self.index}:{aspect}")


def _arrivals(
    rng: random.Random, c: _Customer, after: float, until: float, rate: float
) -> Iterator[float]:
    """A Poisson process of ``rate``/day × seasonality in ``(after, until)``, by thinning."""
    peak = rate * c.season_peak
    if peak <= 0:
        return
    t = after
    while True:
        t += rng.expovariate(peak) * DAY
        if t >= until:
            return
        if rng.random() * c.season_peak < c.season_at(t):
            yield t


def _purchases(
    rng: random.Random, c: _Customer, after: float, rate: float, dropout_p: float
) -> tuple[list[float], float | None]:
    """Repeat purchases after ``after``; after each the customer drops out with ``dropout_p``.

    Returns (purchase times, dropout time or ``None`` if still active at the window end).
    """
    times: list[float] = []
    for t in _arrivals(rng, c, after, c.config.end_ts, rate):
        times.append(t)
        if rng.random() < dropout_p:
            return times, t
    return times, None


def _next_local(ts: float, tz: zoneinfo.ZoneInfo, hour: int, minute: int) -> float:
    """The first local ``hour:minute`` at or after ``ts``.

    >>> berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    >>> ts = datetime(2025, 3, 1, 12, 0, tzinfo=UTC).timestamp()
    >>> _iso(_next_local(ts, berlin, 10, 5))
    '2025-03-02T09:05:00Z'
    """
    local = datetime.fromtimestamp(ts, tz)
    candidate = datetime.combine(local.date(), dtime(hour, minute), tzinfo=tz)
    if candidate.timestamp() < ts:
        candidate = datetime.combine(local.date() + timedelta(days=1), dtime(hour, minute), tz)
    return candidate.timestamp()


def _iso(ts: float | None) -> str | None:
    """UTC ISO 8601 with ``Z``, as the truth file writes times."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _pick_products(rng: random.Random, c: _Customer, n: int) -> list[_Product]:
    catalogue = _catalogue(c.config.seed)
    picks = []
    for _ in range(n):
        category = rng.choice(c.favourites) if rng.random() < 0.7 else rng.choice(CATEGORIES)
        base = CATEGORIES.index(category) * SKUS_PER_CATEGORY
        picks.append(catalogue[base + rng.randrange(SKUS_PER_CATEGORY)])
    return picks


def _url(c: _Customer, path: str) -> str:
    return f"https://{c.store_id}.example/{c.market.locale.lower()}/{path}"


def _session(
    rng: random.Random,
    c: _Customer,
    end: int,
    carted: list[tuple[_Product, int]],
    checkout: bool,
) -> None:
    """A storefront session that ends before ``end``: views, maybe a search, carts, checkout."""
    viewed = [p for p, _ in carted] + _pick_products(rng, c, rng.randint(0, 2))
    searched = rng.random() < 0.4
    n = 1 + searched + (not viewed) + len(viewed) + len(carted) + checkout
    stamps = iter(sorted(rng.sample(range(end - rng.randint(5 * 60, 40 * 60), end - 10), n)))
    c.emit(next(stamps), "page_view", url=_url(c, ""))
    if searched:
        category = viewed[0].category if viewed else rng.choice(c.favourites)
        c.emit(next(stamps), "search", query=category, category=category)
    if not viewed:
        c.emit(next(stamps), "page_view", url=_url(c, f"collections/{rng.choice(CATEGORIES)}"))
    for product in viewed:
        c.emit(
            next(stamps),
            "product_view",
            url=_url(c, f"products/{product.sku.lower()}"),
            sku=product.sku,
            category=product.category,
            value=local_price(product.price_usd, c.currency),
            currency=c.currency,
        )
    total = Decimal(0)
    for product, quantity in carted:
        value = local_price(product.price_usd, c.currency) * quantity
        total += value
        c.emit(
            next(stamps),
            "add_to_cart",
            sku=product.sku,
            category=product.category,
            quantity=quantity,
            value=value,
            currency=c.currency,
        )
    if checkout:
        c.emit(next(stamps), "checkout_started", value=total, currency=c.currency)


def _browse(rng: random.Random, c: _Customer, end: float) -> None:
    """A browse-only session; some leave an abandoned cart (and a started checkout)."""
    if rng.random() < c.config.abandon_share:
        product = _pick_products(rng, c, 1)[0]
        _session(rng, c, int(end), [(product, 1)], checkout=rng.random() < 0.4)
    else:
        _session(rng, c, int(end), [], checkout=False)


def _order(rng: random.Random, c: _Customer, ts: float, number: int) -> None:
    """The session before it, the order, then paid or cancelled, maybe a refund days later."""
    order_ts = int(ts)
    n_items = 1 + (rng.random() < 0.35) + (rng.random() < 0.1)
    items = [
        (p, 1 if rng.random() < 0.8 else rng.randint(2, 3)) for p in _pick_products(rng, c, n_items)
    ]
    _session(rng, c, order_ts, items, checkout=True)
    line_items = [
        {
            "sku": p.sku,
            "category": p.category,
            "quantity": q,
            "price": local_price(p.price_usd, c.currency),
        }
        for p, q in items
    ]
    amount = sum((local_price(p.price_usd, c.currency) * q for p, q in items), Decimal(0))
    codes: tuple[str, ...] = ()
    if number == 0 and rng.random() < 0.2:
        codes = ("WELCOME10",)
        amount = (amount * Decimal("0.9")).quantize(amount)
    money = {"order_id": f"{c.customer_id}-o{number}", "amount": amount, "currency": c.currency}
    c.emit(order_ts, "order_created", **money, line_items=line_items, discount_codes=codes)
    cancelled = rng.random() < c.config.cancel_share
    refunded = rng.random() < c.config.refund_share
    paid_after, refund_days, partial = rng.randint(5, 300), rng.uniform(2, 20), rng.random() < 0.3
    if cancelled:
        c.emit(order_ts + paid_after, "order_cancelled", **money)
        return
    c.emit(order_ts + paid_after, "order_paid", **money)
    if refunded:
        refund = (amount / 2).quantize(amount) if partial else amount
        c.emit(order_ts + refund_days * DAY, "order_refunded", **{**money, "amount": refund})


def _message(
    rng: random.Random,
    c: _Customer,
    sent: float,
    ids: dict[str, Any],
    open_p: float,
    click_p: float,
    open_before: float | None = None,
    can_bounce: bool = True,
) -> None:
    """sent → delivered (or bounced) → maybe opened → maybe clicked (before ``open_before``)."""
    bounced = can_bounce and rng.random() < 0.03
    opened, clicked = rng.random() < open_p, rng.random() < click_p
    delivered = int(sent) + rng.randint(5, 120)
    open_share, click_after = rng.uniform(0.05, 1.0), rng.randint(5, 180)
    c.emit(sent, "message_sent", **ids)
    if bounced:
        c.emit(delivered, "message_bounced", **ids)
        return
    c.emit(delivered, "message_delivered", **ids)
    if not opened:
        return
    latest = open_before if open_before is not None else delivered + 2 * DAY
    opened_at = delivered + 1 + open_share * max(0.0, latest - delivered - 200)
    c.emit(opened_at, "message_opened", **ids)
    if clicked:
        c.emit(opened_at + click_after, "message_clicked", **ids)


@dataclass
class _Recall:
    send_at: float
    channel: str
    treated: bool
    responded: bool
    """The effect draw (made for holdout customers too: their counterfactual)."""
    order_at: float
    """When the extra order happens if the customer is treated and responds."""
    baseline_converted: bool
    """Whether the customer orders within the effect window without any effect."""


def _recall_opportunity(
    c: _Customer, orders: list[float], reachable: Callable[[float], str | None]
) -> _Recall | None:
    """The first silence of ``recall_after_days`` that leaves the whole effect window inside.

    All draws (minute, group, response, timing) are made for every customer, so
    they never depend on the outcome of other draws.
    """
    config = c.config
    rng = c.rng("recall")
    minute, group_u, response_u = rng.randrange(60), rng.random(), rng.random()
    if config.holdout_salt is None:
        treated = group_u >= config.holdout
    else:
        held = in_holdout(c.store_id, c.customer_id, config.holdout_salt, config.holdout)
        treated = not held
    window = config.effect_window_days * DAY
    offset = rng.uniform(2 * HOUR, window - HOUR)
    for k, order_ts in enumerate(orders):
        send_at = _next_local(order_ts + config.recall_after_days * DAY, c.tz, 10, minute)
        if send_at + window > config.end_ts:
            return None
        if k + 1 < len(orders) and send_at >= orders[k + 1]:
            continue
        channel = reachable(send_at)
        if channel is None:
            return None
        return _Recall(
            send_at=send_at,
            channel=channel,
            treated=treated,
            responded=response_u < config.effect,
            order_at=send_at + offset,
            baseline_converted=any(send_at < t <= send_at + window for t in orders),
        )
    return None


def _make_customer(config: SimulationConfig, index: int, rng: random.Random) -> _Customer:
    store = rng.choices(range(config.stores), [1.0 / (k + 1) for k in range(config.stores)])[0]
    home = STORE_HOMES[store % len(STORE_HOMES)]
    if rng.random() < 0.5:
        market = MARKETS[home]
    else:
        market = rng.choices(MARKETS, [m.weight for m in MARKETS])[0]
    # every third store charges in its home currency only; the others localise prices
    currency = MARKETS[home].currency if store % 3 == 2 else market.currency
    season, season_peak = _season_table(market.timezone, config.start_ts, config.days * 24)
    return _Customer(
        config=config,
        index=index,
        customer_id=f"c{index + 1:07d}",
        store_id=f"sim-{store + 1}",
        source=STORE_SOURCES[store % len(STORE_SOURCES)],
        market=market,
        currency=currency,
        tz=zoneinfo.ZoneInfo(market.timezone),
        season=season,
        season_peak=season_peak,
        favourites=tuple(rng.sample(CATEGORIES, 2)),
    )


def _newsletters(c: _Customer, arrival: float) -> tuple[list[float], float | None]:
    """Newsletter send times from a week after arrival, and when the customer unsubscribes."""
    rng = c.rng("newsletters")
    sends: list[float] = []
    t = arrival + 7 * DAY
    while t < c.config.end_ts:
        send_at = _next_local(t, c.tz, 10, rng.randrange(60))
        if send_at >= c.config.end_ts:
            break
        sends.append(send_at)
        if rng.random() < c.config.unsubscribe_share:
            return sends, send_at + rng.uniform(0.5 * HOUR, DAY)
        t += c.config.newsletter_every_days * DAY
    return sends, None


def _simulate_customer(config: SimulationConfig, index: int) -> tuple[_Customer, dict[str, Any]]:
    """All events of one customer (in ``pending``) and their truth record."""
    traits = random.Random(f"{config.seed}:{index}:traits")
    c = _make_customer(config, index, traits)
    rate = traits.gammavariate(config.rate_shape, 1.0 / config.rate_scale_days)
    dropout_p = traits.betavariate(config.dropout_a, config.dropout_b)
    arrival = config.start_ts + traits.uniform(HOUR, config.days * DAY - HOUR)
    consent = {channel: traits.random() < share for channel, share in CONSENT_SHARE.items()}
    if c.market.country in SOCIAL_MARKETS:
        consent["social"] = traits.random() < 0.3
    first_name = traits.choice(c.market.first_names)
    newsletter = consent["email"] and traits.random() < config.newsletter_share

    repeat, baseline_dropout = _purchases(c.rng("orders"), c, arrival, rate, dropout_p)
    baseline = [arrival, *repeat]
    sends, unsubscribed_at = _newsletters(c, arrival) if newsletter else ([], None)

    def reachable(ts: float) -> str | None:
        for channel in RECALL_CHANNELS:
            revoked = channel == "email" and unsubscribed_at is not None and unsubscribed_at <= ts
            if consent.get(channel) and not revoked:
                return channel
        return None

    recall = _recall_opportunity(c, baseline, reachable)
    orders, dropout_at = baseline, baseline_dropout
    active = [(arrival, baseline_dropout if baseline_dropout is not None else config.end_ts)]
    if recall is not None and recall.treated and recall.responded:
        # the extra order; afterwards the customer is active again (a dropout is undone)
        r = recall.order_at
        more, dropout_at = _purchases(c.rng("after-recall"), c, r, rate, dropout_p)
        orders = [t for t in baseline if t <= r] + [r, *more]
        active = [(arrival, min(active[0][1], r)), (r, dropout_at or config.end_ts)]

    def is_active(ts: float) -> bool:
        return any(a <= ts < b for a, b in active)

    c.emit(
        arrival - 45 * 60,
        "customer_profile",
        country=c.market.country,
        timezone=c.market.timezone,
        locale=c.market.locale,
        first_name=first_name,
        consent=consent,
    )
    for number, ts in enumerate(orders):
        _order(c.rng(f"order-{number}"), c, ts, number)
    browse_rng = c.rng("browse")
    for a, b in active:
        for ts in _arrivals(browse_rng, c, a, b, rate * config.browse_per_order):
            _browse(browse_rng, c, ts)
    engage = c.rng("engagement")
    for k, send_at in enumerate(sends):
        ids = {"channel": "email", "message_id": f"{c.customer_id}-n{k}", "rule_id": None}
        up = is_active(send_at)
        _message(engage, c, send_at, ids, 0.45 if up else 0.08, 0.35 if up else 0.1,
                 can_bounce=unsubscribed_at is None or k + 1 < len(sends))  # fmt: skip
    if unsubscribed_at is not None:
        ids = {"channel": "email", "message_id": f"{c.customer_id}-n{len(sends) - 1}"}
        c.emit(unsubscribed_at, "message_unsubscribed", **ids, rule_id=None)
    if recall is not None and recall.treated:
        ids = {"channel": recall.channel, "message_id": f"{c.customer_id}-r0",
               "rule_id": RECALL_RULE_ID}  # fmt: skip
        if recall.responded:
            _message(c.rng("recall-message"), c, recall.send_at, ids, 0.85, 0.75,
                     open_before=recall.order_at - 45 * 60)  # fmt: skip
        else:
            _message(c.rng("recall-message"), c, recall.send_at, ids, 0.3, 0.1)

    truth = {
        "store_id": c.store_id,
        "customer_id": c.customer_id,
        "country": c.market.country,
        "timezone": c.market.timezone,
        "locale": c.market.locale,
        "currency": c.currency,
        "rate_per_day": rate,
        "dropout_p": dropout_p,
        "first_order_at": _iso(arrival),
        "orders": len(orders),
        "last_order_at": _iso(orders[-1]),
        "churned": dropout_at is not None,
        "dropout_at": _iso(dropout_at),
        "consent": consent,
        "newsletter": newsletter,
        "unsubscribed_at": _iso(unsubscribed_at),
        "recall": None if recall is None else _recall_truth(config, recall, baseline_dropout),
    }
    return c, truth


def _recall_truth(
    config: SimulationConfig, recall: _Recall, baseline_dropout: float | None
) -> dict[str, Any]:
    extra = recall.treated and recall.responded
    return {
        "group": "treated" if recall.treated else "holdout",
        "send_at": _iso(recall.send_at),
        "channel": recall.channel,
        "responded": recall.responded,
        "recall_order_at": _iso(recall.order_at) if extra else None,
        "revived": extra and baseline_dropout is not None and baseline_dropout <= recall.order_at,
        "baseline_converted": recall.baseline_converted,
        "converted": recall.baseline_converted or extra,
        "uplift": int(recall.responded and not recall.baseline_converted),
    }


# --------------------------------------------------------------------- encoding

_MODELS: dict[str, type[Any]] = {
    **{t: OrderEvent for t in ("order_created", "order_paid", "order_refunded", "order_cancelled")},
    **{
        t: BrowseEvent
        for t in (
            "page_view",
            "product_view",
            "search",
            "add_to_cart",
            "remove_from_cart",
            "checkout_started",
        )
    },  # fmt: skip
    **{
        t: MessageEvent
        for t in (
            "message_sent",
            "message_delivered",
            "message_opened",
            "message_clicked",
            "message_bounced",
            "message_unsubscribed",
        )
    },  # fmt: skip
    "customer_profile": CustomerProfileEvent,
}
_KEY = "{:011d}{:09d}{:06d} "
_KEY_LEN = 27
"""Fixed-width sort key (event second, customer index, sequence) in front of a run line."""


def _encode_customer(c: _Customer, counts: Counter[str]) -> list[bytes]:
    """The customer's events as sort-keyed wire lines, in (event time, causal rank) order.

    Each line is what ``engine.events.encode_event`` writes for the validated event,
    with ``occurred_at`` in the customer's local offset when ``local_offsets`` is set.
    """
    c.pending.sort(key=lambda p: (p[0], p[1]))
    out = []
    for seq, (second, _rank, event_type, fields) in enumerate(c.pending):
        when = datetime.fromtimestamp(second, UTC)
        event = _MODELS[event_type](
            type=event_type,
            event_id=f"{c.customer_id}-{seq}",
            store_id=c.store_id,
            customer_id=c.customer_id,
            occurred_at=when,
            source=c.source,
            **fields,
        )
        obj = event.model_dump(mode="json", exclude_defaults=False)
        if c.config.local_offsets:
            obj["occurred_at"] = when.astimezone(c.tz).isoformat()
        out.append(_KEY.format(second, c.index, seq).encode() + orjson.dumps(obj))
        counts[event_type] += 1
    return out


def _summary(
    config: SimulationConfig, customers: list[dict[str, Any]], counts: Counter[str]
) -> dict[str, Any]:
    recalls = [c["recall"] for c in customers if c["recall"] is not None]
    treated = [r for r in recalls if r["group"] == "treated"]
    holdout = [r for r in recalls if r["group"] == "holdout"]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    treated_rate = mean([r["converted"] for r in treated])
    holdout_rate = mean([r["converted"] for r in holdout])
    return {
        "customers": len(customers),
        "events": sum(counts.values()),
        "events_by_type": dict(sorted(counts.items())),
        "orders": sum(c["orders"] for c in customers),
        "churned": sum(c["churned"] for c in customers),
        "eligible": len(recalls),
        "treated": len(treated),
        "holdout": len(holdout),
        "responders_treated": sum(r["responded"] for r in treated),
        "effect": config.effect,
        "response_rate_treated": mean([r["responded"] for r in treated]),
        "baseline_conversion_rate": mean([r["baseline_converted"] for r in recalls]),
        "true_uplift": mean([r["uplift"] for r in recalls]),
        "true_uplift_treated": mean([r["uplift"] for r in treated]),
        "treated_conversion_rate": treated_rate,
        "holdout_conversion_rate": holdout_rate,
        "observed_uplift": (
            None if treated_rate is None or holdout_rate is None else treated_rate - holdout_rate
        ),
    }


@dataclass
class SimulationRun:
    """A generated simulation: its truth, and its events as sorted runs to merge.

    Use as a context manager (or call :meth:`close`) to remove the temporary runs.
    """

    config: SimulationConfig
    truth: dict[str, Any]
    _memory: list[bytes] | None
    _tmp: tempfile.TemporaryDirectory[str] | None
    _paths: list[Path]

    def lines(self) -> Iterator[bytes]:
        """Every event's wire bytes (no newline), sorted by (event time, customer, sequence)."""
        if self._memory is not None:
            for keyed in self._memory:
                yield keyed[_KEY_LEN:]
            return
        handles = [path.open("rb") for path in self._paths]
        try:
            for keyed in heapq.merge(*handles):
                yield keyed[_KEY_LEN:-1]
        finally:
            for handle in handles:
                handle.close()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SimulationRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def simulate(
    config: SimulationConfig, progress: Callable[[int], None] | None = None
) -> SimulationRun:
    """Generate every customer; the events come out of :meth:`SimulationRun.lines`.

    Customers are generated ``CHUNK_CUSTOMERS`` at a time; each chunk is sorted and,
    when there is more than one, spilled to a temporary file, so memory stays bounded
    by a chunk and the truth. ``progress`` is called with the customers done per chunk.
    """
    counts: Counter[str] = Counter()
    truths: list[dict[str, Any]] = []
    runs: list[list[bytes]] = []
    tmp: tempfile.TemporaryDirectory[str] | None = None
    paths: list[Path] = []
    spill = config.customers > CHUNK_CUSTOMERS
    if spill:
        tmp = tempfile.TemporaryDirectory(prefix="churnflow-sim-")
    try:
        for first in range(0, config.customers, CHUNK_CUSTOMERS):
            chunk: list[bytes] = []
            last = min(first + CHUNK_CUSTOMERS, config.customers)
            for index in range(first, last):
                customer, truth = _simulate_customer(config, index)
                chunk.extend(_encode_customer(customer, counts))
                truths.append(truth)
            chunk.sort()
            if tmp is not None:
                path = Path(tmp.name) / f"run-{len(paths):05d}"
                with path.open("wb") as handle:
                    handle.writelines(keyed + b"\n" for keyed in chunk)
                paths.append(path)
            else:
                runs.append(chunk)
            if progress is not None:
                progress(last - first)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    truth = {
        "config": {**asdict(config), "start": config.start.isoformat()},
        "window": {"start": _iso(config.start_ts), "end": _iso(config.end_ts)},
        "horizon_days": config.horizon_days,
        "definitions": {
            "churned": "the customer dropped out (after a repeat purchase, probability "
            "dropout_p) before the window end and was not brought back by a recall; "
            "dropout_at is the last order, no order follows it",
            "recall": "first silence of recall_after_days with a consented channel whose "
            "effect window ends inside the window; holdout customers get no message",
            "uplift": "1 if the customer ordered within effect_window_days of send_at "
            "only because of the recall (responded and not baseline_converted), else 0; "
            "true_uplift is its mean over eligible customers",
        },
        "summary": _summary(config, truths, counts),
        "customers": truths,
    }
    return SimulationRun(config, truth, None if spill else (runs[0] if runs else []), tmp, paths)


_RECALL_RULES = """store_id: {store}
timezone: UTC
quiet_hours: null
caps:
  overall:
    - {{max: 1, per_days: 3650}}
holdout: {{fraction: {holdout}, salt: "{salt}"}}
channels:
  default: [{channels}]
rules:
  - id: {rule}
    type: dormancy
    when: {{min_orders: 1}}
    steps:
      - {{after_days: {after_days}, template: dormancy_1}}
"""


def store_ids(config: SimulationConfig) -> list[str]:
    """The simulated stores' ids.

    >>> store_ids(SimulationConfig(stores=2))
    ['sim-1', 'sim-2']
    """
    return [f"sim-{n}" for n in range(1, config.stores + 1)]


def recall_rules(config: SimulationConfig, store_id: str) -> str:
    """The simulator's recall experiment as a churnflow rules file for one store.

    One ``winback`` dormancy step after ``recall_after_days``, once per customer (a
    cap of one message in ten years: the simulator recalls a customer once), on the
    first consented channel in the simulator's order, with the simulator's holdout
    fraction and salt — with ``holdout_salt`` set, churnflow then holds out exactly
    the simulator's holdout customers.

    >>> text = recall_rules(SimulationConfig(holdout=0.3, holdout_salt="s"), "sim-1")
    >>> "fraction: 0.3, salt: 's'" in text.replace(chr(34), chr(39))
    True
    >>> "after_days: 30.0" in text
    True
    """
    if config.holdout_salt is None:
        raise SimulationError("recall_rules needs a holdout_salt (else the groups differ)")
    return _RECALL_RULES.format(
        store=store_id,
        holdout=config.holdout,
        salt=config.holdout_salt,
        channels=", ".join(RECALL_CHANNELS),
        rule=RECALL_RULE_ID,
        after_days=config.recall_after_days,
    )


def write_recall_rules(config: SimulationConfig, rules_dir: Path) -> None:
    """:func:`recall_rules` of every simulated store, as ``<store>.yaml`` in ``rules_dir``."""
    for store in store_ids(config):
        (rules_dir / f"{store}.yaml").write_text(recall_rules(config, store))


def write_simulation(
    config: SimulationConfig,
    out: Path | None,
    truth_out: Path | None,
    progress: Callable[[int], None] | None = None,
) -> SimulationRun:
    """Simulate, write the JSONL events to ``out`` and the truth JSON to ``truth_out``.

    The returned run can still produce its lines (e.g. to Kafka); close it when done.
    """
    run = simulate(config, progress)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as handle:
            handle.writelines(line + b"\n" for line in run.lines())
    if truth_out is not None:
        truth_out.parent.mkdir(parents=True, exist_ok=True)
        truth_out.write_bytes(orjson.dumps(run.truth))
    return run


def read_events(path: Path) -> list[Any]:
    """Decode a JSONL file of canonical events (a simulation), strictly, in file order."""
    events = []
    with Path(path).open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                events.append(decode_event(line))
            except EventDecodeError as exc:
                raise SimulationError(f"{path}:{number}: {exc}") from None
    return events
