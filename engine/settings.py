"""churnflow's settings, read from the environment (prefix ``CHURNFLOW_``).

>>> s = Settings(kafka_brokers="127.0.0.1:9092", redis_url="redis://127.0.0.1:6379/0")
>>> s.key_groups, s.horizon_days, s.clock
(128, 90, 'event')
>>> s.brokers
['127.0.0.1:9092']
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the engine, the API and the CLI can be told."""

    model_config = SettingsConfigDict(env_prefix="CHURNFLOW_", extra="ignore")

    # services
    kafka_brokers: str = "127.0.0.1:9092"
    events_topic: str = "events"
    dead_letter_topic: str = "events.dead-letter"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "cf"
    """Prefix of every Redis key (tests use one per test)."""
    run_dir: Path = Path(".run")
    rules_dir: Path = Path("rules")
    """Recall rules: ``<store>.yaml``, else ``default.yaml`` (engine/triggers/rules.py)."""
    recovery_dir: Path | None = None
    """Bytewax recovery store; ``churnflow run`` defaults it to ``run_dir/recovery``."""

    # engine
    key_groups: int = Field(128, ge=1, le=4096)
    """Fixed at deployment; bounds the parallelism of the customer stage."""
    horizon_days: int = Field(90, ge=1)
    """Churn = no order in the next H days."""
    allowed_lateness_s: float = Field(3 * 86400.0, ge=0)
    """The watermark trails the largest event time by this much."""
    checkpoint_days: float = Field(30.0, gt=0)
    """A silent customer gets a prediction point every this many days."""
    max_silent_checkpoints: int = Field(6, ge=0)
    """Bound on the prediction points of one silence."""
    clock: Literal["event", "wall"] = "event"
    """``event``: the watermark moves with event times only (replay, demo);
    ``wall``: idle key groups also advance with the wall clock (production)."""
    base_currency: str = "USD"
    currency_rates: dict[str, float] = Field(
        default_factory=lambda: {
            "USD": 1.0,
            "EUR": 1.08,
            "GBP": 1.27,
            "CAD": 0.73,
            "AUD": 0.66,
            "JPY": 0.0067,
            "CNY": 0.14,
            "INR": 0.012,
            "SGD": 0.74,
            "VND": 0.000039,
            "MXN": 0.055,
            "BRL": 0.18,
        }
    )
    """Units of the base currency per unit of each currency."""
    value_tier_low_max: float = 50.0
    """Spend (base currency) below which a customer is in the ``low`` value tier."""
    value_tier_mid_max: float = 200.0
    """Spend at or above which a customer is in the ``high`` value tier."""
    model: Literal["logreg", "hoeffding_tree", "bagging"] = "logreg"
    """The River estimator after standard scaling (trees explain by the prior's reason)."""
    model_shards: int = Field(1, ge=1)
    """Model stage parallelism: score requests and examples hash to shards."""
    dedup_retention_s: float = Field(30 * 86400.0, ge=0)
    """Event ids are remembered until the watermark is this far past their event time."""
    model_warm_examples: int = Field(500, ge=0)
    """Examples the model must learn before its scores replace the prior."""
    model_prior_weight_examples: float = Field(10_000.0, ge=0)
    """What the fitted prior is worth, in learned examples, in a warm score (0: the
    model alone; see ``engine.models.online.blend``)."""
    epoch_interval_s: float = Field(2.0, gt=0)
    attribution_window_days: int = Field(7, ge=1)
    """Effect tracking: an order this many days after a recall send (or a holdout
    intent's would-be send time) converts it."""
    free_shipping_cost: float = Field(0.0, ge=0)
    """Effect tracking: cost (base currency) of free shipping on one converted order."""
    send_cost: dict[str, float] = Field(default_factory=dict)
    """Effect tracking: cost of one message by channel (base currency); absent: 0."""
    cart_check_hours: float = Field(4.0, ge=0)
    """Hours after an ``add_to_cart`` when the customer stage scores the customer for
    the abandoned-cart rule if nothing else came (0: never); match the rule's hours."""
    redis_batch_size: int = Field(500, ge=1)

    # api
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    demo_api_key: str | None = None
    metrics_token: SecretStr | None = None
    """When set, ``GET /metrics`` needs ``Authorization: Bearer <token>``; unset, it is
    open (a warning at start-up when the API binds a non-loopback host)."""
    rate_limit_per_s: float = Field(50.0, gt=0)
    """Requests per second one API key may make (token bucket refill rate)."""
    rate_limit_burst: int = Field(100, ge=1)
    """Requests one API key may make at once (token bucket size)."""
    webhook_rate_limit_per_s: float = Field(200.0, gt=0)
    """Signed webhook deliveries per second per store."""
    webhook_rate_limit_burst: int = Field(400, ge=1)

    @property
    def brokers(self) -> list[str]:
        return [b.strip() for b in self.kafka_brokers.split(",") if b.strip()]
