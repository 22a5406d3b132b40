"""``CHURNFLOW_CART_CHECK_HOURS`` must lie in every abandoned-cart rule's window.

The customer stage scores a customer ``cart_check_hours`` after an
``add_to_cart``; the cart rule fires only ``after_hours`` to ``after_hours +
grace_hours`` after the cart opened. A check outside that window never lets the
rule fire, so building the flow (start-up: ``engine.live.get_flow``, the replay
harness) fails with a ``ConfigError`` naming the file, the rule and the window.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bytewax.testing import TestingSink, TestingSource

from engine.errors import ConfigError
from engine.flow import FlowSinks, build_flow
from engine.settings import Settings
from engine.triggers.rules import cart_window_misses, load_rules
from engine.triggers.stage import RulesBook

CART_RULES = """
store_id: {store}
rules:
  - {{id: {rule}, type: abandoned_cart, after_hours: 6, grace_hours: {grace:g}{extra}}}
  - {{id: winback, type: dormancy, steps: [{{after_days: 30, template: dormancy_1}}]}}
"""


def write_rules(
    rules_dir: Path, store: str, rule: str = "cart", grace: float = 12, extra: str = ""
) -> Path:
    path = rules_dir / f"{store}.yaml"
    path.write_text(CART_RULES.format(store=store, rule=rule, grace=grace, extra=extra))
    load_rules(path)  # a file that does not load would be skipped by the check
    return path


def flow_with(rules_dir: Path, cart_check_hours: float) -> None:
    settings = Settings(rules_dir=rules_dir, key_groups=1, cart_check_hours=cart_check_hours)
    sinks = FlowSinks(redis=TestingSink([]), dead_letter=TestingSink([]), recalls=TestingSink([]))
    build_flow(TestingSource([]), sinks, settings)


@pytest.mark.parametrize(
    ("hours", "fires"),
    [(5.99, False), (6, True), (10, True), (18, True), (18.01, False), (48, False)],
)
def test_the_window_is_after_hours_to_after_plus_grace_inclusive(
    tmp_path: Path, hours: float, fires: bool
) -> None:
    rules = load_rules(write_rules(tmp_path, "shop"))
    assert (cart_window_misses(rules, hours) == []) is fires


@pytest.mark.parametrize("hours", [6.0, 12.0, 18.0, 0.0])
def test_a_check_inside_the_window_or_no_cart_timer_builds_the_flow(
    tmp_path: Path, hours: float
) -> None:
    write_rules(tmp_path, "shop")
    flow_with(tmp_path, hours)


@pytest.mark.parametrize("hours", [4.0, 20.0])
def test_a_check_outside_the_window_fails_naming_file_rule_and_window(
    tmp_path: Path, hours: float
) -> None:
    write_rules(tmp_path, "default", rule="cart")
    path = write_rules(tmp_path, "shop2", rule="late-cart", grace=2)
    with pytest.raises(ConfigError) as caught:
        flow_with(tmp_path, 17.0)  # inside default's 6..18, outside shop2's 6..8
    message = str(caught.value)
    assert str(path) in message and "'late-cart'" in message and "6..8 hours" in message
    assert "default.yaml" not in message
    with pytest.raises(ConfigError, match=r"default\.yaml: rule 'cart' fires 6\.\.18 hours"):
        flow_with(tmp_path, hours)


def test_a_disabled_cart_rule_is_not_checked(tmp_path: Path) -> None:
    write_rules(tmp_path, "shop", extra=", enabled: false")
    flow_with(tmp_path, 2.0)
    RulesBook(tmp_path).check_cart_hours(2.0)


def test_the_shipped_default_rules_fit_the_default_setting() -> None:
    rules_dir = Path(__file__).resolve().parent.parent / "rules"
    RulesBook(rules_dir).check_cart_hours(Settings().cart_check_hours)
    with pytest.raises(ConfigError, match="rule 'cart' fires 4..52 hours"):
        RulesBook(rules_dir).check_cart_hours(3.0)


def test_start_up_fails_before_the_flow_runs(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``engine.live.get_flow`` (what ``churnflow run`` starts) with the real services."""
    from engine.live import get_flow

    write_rules(tmp_path, "shop")
    for name, value in (
        ("KAFKA_BROKERS", settings.kafka_brokers),
        ("REDIS_URL", settings.redis_url),
        ("KEY_PREFIX", settings.key_prefix),
        ("EVENTS_TOPIC", settings.events_topic),
        ("DEAD_LETTER_TOPIC", settings.dead_letter_topic),
        ("RULES_DIR", str(tmp_path)),
        ("CART_CHECK_HOURS", "30"),
    ):
        monkeypatch.setenv(f"CHURNFLOW_{name}", value)
    with pytest.raises(ConfigError, match=r"shop\.yaml: rule 'cart' fires 6\.\.18 hours"):
        get_flow()
    monkeypatch.setenv("CHURNFLOW_CART_CHECK_HOURS", "8")
    assert get_flow() is not None
