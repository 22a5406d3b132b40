"""Rules files: the example loads; every kind of mistake names its line and field."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError
from engine.triggers.caps import DAY, Window
from engine.triggers.intent import Offer
from engine.triggers.rules import (
    AbandonedCartRule,
    DormancyRule,
    FirstOrderFollowupRule,
    RiskRule,
    RulesError,
    load_rules,
)

DEFAULT = Path(__file__).resolve().parents[1] / "rules" / "default.yaml"


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(RulesError) as info:
        load_rules(text)
    return [(p.line, p.field, p.message) for p in info.value.problems]


def one(text: str) -> tuple[int, str, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def test_default_rules_file_loads() -> None:
    rs = load_rules(DEFAULT)
    assert rs == load_rules(str(DEFAULT))
    assert rs.store_id == "demo-store"
    assert rs.quiet_hours is not None
    assert (rs.quiet_hours.start, rs.quiet_hours.end) == (time(21), time(9))
    kinds = [type(r) for r in rs.rules]
    assert kinds == [DormancyRule, RiskRule, AbandonedCartRule, FirstOrderFollowupRule]
    winback = rs.rules[0]
    assert isinstance(winback, DormancyRule)
    assert [s.after_days for s in winback.steps] == [30, 60, 90]
    assert winback.steps[0].offer_for(500) == Offer()
    assert winback.steps[1].offer_for(100) == Offer(10)
    assert winback.steps[1].offer_for(150) == Offer(15)
    assert winback.steps[2].offer_for(None) == Offer(20, True)
    policy = rs.cap_policy()
    assert policy.overall[0] == Window(2, 7 * DAY)
    assert policy.per_channel["sms"] == (Window(1, 7 * DAY),)
    assert policy.cooldown("winback") == 14 * DAY
    assert rs.channels.forbidden_sources == ("amazon",)
    assert rs.region_of("sg") == "SEA" and rs.region_of("ZZ") is None
    assert rs.holdout.fraction == 0.1


def test_unquoted_times_are_base_60_integers_in_yaml() -> None:
    rs = load_rules("store_id: s\nquiet_hours: {start: 21:30, end: 07:00}\n")
    assert rs.quiet_hours is not None
    assert (rs.quiet_hours.start, rs.quiet_hours.end) == (time(21, 30), time(7))
    assert load_rules("store_id: s\nquiet_hours: null\n").quiet_hours is None


BASE = """\
store_id: demo
rules:
  - id: winback
    type: dormancy
    steps:
      - after_days: 30
        template: dormancy_1
      - after_days: {after}
        template: {template}
"""


def test_bad_value_names_line_and_field() -> None:
    line, field, msg = one(BASE.format(after=-5, template="dormancy_2"))
    assert (line, field) == (8, "rules[0].steps[1].after_days")
    assert "greater than 0" in msg


def test_message_text_names_source_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "store.yaml"
    path.write_text(BASE.format(after="soon", template="dormancy_2"))
    with pytest.raises(ConfigError, match=r"store\.yaml: line 8, field rules\[0\]\.steps\[1\]\."):
        load_rules(path)


def test_unknown_template_and_order_of_steps() -> None:
    found = problems(BASE.format(after=20, template="dormancy_9"))
    assert (9, "rules[0].steps[1].template", "unknown template 'dormancy_9'") in found
    assert any(p[:2] == (8, "rules[0].steps[1].after_days") and "increasing" in p[2] for p in found)


def test_missing_field_points_at_the_rule() -> None:
    text = "store_id: demo\nrules:\n  - id: r\n    type: risk\n    min_rise: 0.1\n"
    assert one(text)[:2] == (3, "rules[0].threshold")


def test_unknown_key_points_at_the_key() -> None:
    text = (
        "store_id: demo\nrules:\n  - id: c\n    type: abandoned_cart\n"
        "    after_hours: 4\n    afterhours: 5\n"
    )
    line, field, msg = one(text)
    assert (line, field) == (6, "rules[0].afterhours")
    assert "Extra inputs" in msg


def test_unknown_rule_type() -> None:
    line, field, msg = one("store_id: demo\nrules:\n  - id: x\n    type: birthday\n")
    assert (line, field) == (4, "rules[0].type")
    assert "birthday" in msg


def test_duplicate_rule_ids() -> None:
    text = (
        "store_id: demo\nrules:\n"
        "  - {id: a, type: abandoned_cart, after_hours: 1}\n"
        "  - {id: a, type: abandoned_cart, after_hours: 2}\n"
    )
    line, field, msg = one(text)
    assert (line, field) == (4, "rules[1].id") and "duplicate" in msg


def test_duplicate_yaml_key() -> None:
    assert one("store_id: demo\ntimezone: UTC\ntimezone: Europe/Berlin\n")[:2] == (3, "timezone")


def test_yaml_syntax_error_names_line() -> None:
    line, field, msg = one("store_id: demo\nrules: []\nfoo: bar: baz\n")
    assert line == 3 and "YAML syntax" in msg


def test_not_a_mapping_and_empty() -> None:
    assert "mapping" in one("- a\n- b\n")[2]
    assert "mapping" in one("\n# nothing\n")[2]


def test_caps_channel_and_timezone_and_region_checks() -> None:
    text = (
        "store_id: demo\n"
        "timezone: Mars/Olympus\n"
        "caps:\n"
        "  channels:\n"
        "    fax: [{max: 1, per_days: 7}]\n"
        "channels:\n"
        "  preferences:\n"
        "    MOON: [email]\n"
    )
    found = problems(text)
    fields = {(line, field) for line, field, _ in found}
    assert (2, "timezone") in fields
    assert any(line == 5 and field.startswith("caps.channels.fax") for line, field in fields)
    # semantic checks only run once the schema is valid
    found = problems("store_id: demo\nchannels:\n  preferences:\n    MOON: [email]\n")
    assert found == [(4, "channels.preferences.MOON", "unknown region 'MOON'")]


def test_bad_offer_shorthand() -> None:
    text = (
        "store_id: demo\nrules:\n"
        "  - {id: f, type: first_order_followup, after_days: 7,\n     offer: lots}\n"
    )
    line, field, msg = one(text)
    assert (line, field) == (4, "rules[0].offer") and "lots" in msg


def test_arms_checks() -> None:
    text = (
        "store_id: demo\nrules:\n  - id: c\n    type: abandoned_cart\n    after_hours: 4\n"
        "    arms:\n      - {name: a, weight: 0}\n      - {name: b, weight: 0, template: zz}\n"
    )
    found = problems(text)
    assert (6, "rules[0].arms", "at least one arm needs a positive weight") in found
    assert (8, "rules[0].arms[1].template", "unknown template 'zz'") in found


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules(str(tmp_path / "nope.yaml"))


# A property: corrupt one field of one rule in a generated file; the error names that line.
FIELDS = {
    "risk": ("threshold", "0.5", "7"),
    "abandoned_cart": ("after_hours", "4", "-1"),
    "first_order_followup": ("after_days", "10", "x"),
    "dormancy_step": ("after_days", "30", "0"),
}


def render_rule(i: int, kind: str, value: str) -> list[str]:
    name, _, _ = FIELDS[kind]
    if kind == "dormancy_step":
        return [
            f"  - id: r{i}",
            "    type: dormancy",
            "    cooldown_days: 3",
            "    steps:",
            f"      - {name}: {value}",
            "        template: dormancy_1",
        ]
    return [f"  - id: r{i}", f"    type: {kind}", "    cooldown_days: 3", f"    {name}: {value}"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=6), st.data())
def test_errors_name_line_and_field(kinds: list[str], data: st.DataObject) -> None:
    bad = data.draw(st.integers(0, len(kinds) - 1))
    lines = ["store_id: demo", "# comment", "rules:"]
    expected_line = 0
    for i, kind in enumerate(kinds):
        name, good, wrong = FIELDS[kind]
        chunk = render_rule(i, kind, wrong if i == bad else good)
        if i == bad:
            offset = next(j for j, text in enumerate(chunk) if f"{name}:" in text)
            expected_line = len(lines) + offset + 1
        lines += chunk
    found = problems("\n".join(lines) + "\n")
    name = FIELDS[kinds[bad]][0]
    field = (
        f"rules[{bad}].steps[0].{name}" if kinds[bad] == "dormancy_step" else f"rules[{bad}].{name}"
    )
    assert [(line, f) for line, f, _ in found] == [(expected_line, field)]


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    line, field, msg = one("\n".join(["store_id: demo", *lines]) + "\n")
    assert "too large" in msg


def test_aliases_and_merge_keys_work() -> None:
    text = (
        "store_id: demo\n"
        "x-defaults: &defaults {type: abandoned_cart, cooldown_days: 2}\n"
        "rules:\n"
        "  - <<: *defaults\n"
        "    id: cart\n"
        "    after_hours: 3\n"
    )
    # extra top-level keys are rejected, so anchors live inside a known field instead
    assert one(text)[:2] == (2, "x-defaults")
    rs = load_rules(
        "store_id: demo\nrules:\n  - &cart {id: cart, type: abandoned_cart, after_hours: 3}\n"
        "  - <<: *cart\n    id: cart2\n"
    )
    assert [r.id for r in rs.rules] == ["cart", "cart2"]
