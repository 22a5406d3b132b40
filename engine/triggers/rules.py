"""Per-store recall rules: a YAML file validated by pydantic.

``load_rules`` composes the YAML (keeping every node's line), validates it,
checks what pydantic cannot (unique rule ids, known templates, increasing
dormancy steps, known regions) and raises ``RulesError`` — a ``ConfigError`` —
whose message names the line and the field of each problem::

    rules.yaml: line 14, field rules[0].steps[1].after_days: Input should be greater than 0

See ``rules/default.yaml`` for a complete, commented example. Unquoted
``21:00`` is a YAML 1.1 base-60 integer (1260); time fields accept it as
minutes since midnight, so quoting is optional.

>>> rs = load_rules('''
... store_id: demo
... rules:
...   - {id: cart, type: abandoned_cart, after_hours: 4}
... ''')
>>> rs.rules[0].template, rs.quiet_hours.start.isoformat(), rs.region_of("DE")
('abandoned_cart', '21:00:00', 'EU')
>>> try:
...     load_rules("store_id: demo\\nrules:\\n  - {id: r, type: risk, threshold: 1.5}\\n")
... except RulesError as exc:
...     print(exc)
<rules>: line 3, field rules[0].threshold: Input should be less than or equal to 1
"""

from __future__ import annotations

import os
import zoneinfo
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import ConfigError
from engine.events import Channel, StoreId
from engine.triggers.caps import DAY, CapPolicy, Window
from engine.triggers.intent import Offer
from engine.triggers.templates import CATALOG

__all__ = [
    "DEFAULT_REGIONS",
    "AbandonedCartRule",
    "Arm",
    "Caps",
    "ChannelsConfig",
    "Conditions",
    "DormancyRule",
    "DormancyStep",
    "FirstOrderFollowupRule",
    "Holdout",
    "OfferSpec",
    "Offered",
    "OfferTier",
    "Problem",
    "QuietHours",
    "RiskRule",
    "Rule",
    "RuleSet",
    "RulesError",
    "cart_window_misses",
    "load_rules",
]

DEFAULT_REGIONS: dict[str, tuple[str, ...]] = {
    # Europe for messaging purposes: EU/EEA plus UK and Switzerland.
    "EU": tuple(
        "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE "
        "IS LI NO CH GB".split()
    ),
    "NA": ("US", "CA"),
    "LATAM": tuple("MX BR AR CL CO PE UY EC BO PY VE CR PA GT DO".split()),
    "SEA": tuple("SG MY TH ID PH VN BN KH LA MM TL".split()),
    "EA": ("JP", "KR", "CN", "TW", "HK", "MO"),
    "OCEANIA": ("AU", "NZ"),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


RuleId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


def _parse_offer(value: Any) -> Any:
    """Shorthand: ``none``, ``10%``, ``free_shipping``, ``20% + free_shipping``."""
    if value is None:
        return {}
    if isinstance(value, str):
        out: dict[str, Any] = {}
        for raw in value.replace("+", " ").split():
            part = raw.strip().lower()
            if part == "none":
                continue
            if part == "free_shipping":
                out["free_shipping"] = True
            elif part.endswith("%") and part[:-1].isdigit():
                out["percent_off"] = int(part[:-1])
            else:
                raise ValueError(
                    f"offer {value!r}: use none, N%, free_shipping or a mapping"
                    " {percent_off, free_shipping, code}"
                )
        return out
    return value


class OfferSpec(_Model):
    percent_off: Annotated[int, Field(ge=0, le=90)] = 0
    free_shipping: bool = False
    code: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    def to_offer(self) -> Offer:
        return Offer(self.percent_off, self.free_shipping, self.code)


OfferField = Annotated[OfferSpec, BeforeValidator(_parse_offer)]


class OfferTier(_Model):
    """From ``min_aov`` (historic average order value) upwards, this offer."""

    min_aov: Annotated[float, Field(ge=0)]
    offer: OfferField


class Offered(_Model):
    offer: OfferField = OfferSpec()
    offer_tiers: tuple[OfferTier, ...] = ()
    """Tiered by average order value; the highest ``min_aov`` not above the customer's wins,
    ``offer`` applies below every tier."""

    def offer_for(self, avg_order_value: float | None) -> Offer:
        best: OfferTier | None = None
        aov = avg_order_value or 0.0
        for tier in self.offer_tiers:
            if tier.min_aov <= aov and (best is None or tier.min_aov > best.min_aov):
                best = tier
        return (best.offer if best else self.offer).to_offer()


class Conditions(_Model):
    """All given conditions must hold (``None`` = no condition)."""

    segments: tuple[str, ...] | None = None
    value_tiers: tuple[str, ...] | None = None
    min_spend: Annotated[float, Field(ge=0)] | None = None
    max_spend: Annotated[float, Field(ge=0)] | None = None
    min_orders: Annotated[int, Field(ge=0)] | None = None
    max_orders: Annotated[int, Field(ge=0)] | None = None
    countries: tuple[Annotated[str, Field(min_length=2, max_length=2)], ...] | None = None
    regions: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    """Where the customer came from (shop system or marketplace), lower case."""

    @field_validator("countries")
    @classmethod
    def _upper(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(v.upper() for v in value)

    @field_validator("sources")
    @classmethod
    def _lower(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(v.lower() for v in value)


class Arm(_Model):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    weight: Annotated[float, Field(ge=0)] = 1.0
    template: str | None = None
    """Use this template instead of the rule's (e.g. another subject line)."""


class _RuleBase(_Model):
    id: RuleId
    enabled: bool = True
    when: Conditions = Conditions()
    cooldown_days: Annotated[float, Field(ge=0)] = 0.0
    channels: tuple[Channel, ...] | None = None
    """Overrides the region's channel preference for this rule."""
    arms: tuple[Arm, ...] = ()


class RiskRule(_RuleBase, Offered):
    """Churn probability at or above ``threshold`` (and, optionally, risen by ``min_rise``
    since the previous score). Fires at most once per silence (keyed on the last order)."""

    type: Literal["risk"]
    threshold: Annotated[float, Field(ge=0, le=1)]
    min_rise: Annotated[float, Field(gt=0, le=1)] | None = None
    template: str = "risk"


class DormancyStep(Offered):
    after_days: Annotated[float, Field(gt=0)]
    template: str


class DormancyRule(_RuleBase):
    """A cadence of steps after N days without an order; an order restarts it."""

    type: Literal["dormancy"]
    steps: Annotated[tuple[DormancyStep, ...], Field(min_length=1)]
    grace_days: Annotated[float, Field(gt=0)] = 14.0
    """A step more than this late (evaluation missed it) is skipped, not sent late."""


class AbandonedCartRule(_RuleBase, Offered):
    type: Literal["abandoned_cart"]
    after_hours: Annotated[float, Field(gt=0)]
    grace_hours: Annotated[float, Field(gt=0)] = 48.0
    template: str = "abandoned_cart"


class FirstOrderFollowupRule(_RuleBase, Offered):
    """Second-purchase nudge ``after_days`` after a customer's first (and only) order."""

    type: Literal["first_order_followup"]
    after_days: Annotated[float, Field(gt=0)]
    grace_days: Annotated[float, Field(gt=0)] = 7.0
    template: str = "first_order_followup"


Rule = Annotated[
    RiskRule | DormancyRule | AbandonedCartRule | FirstOrderFollowupRule,
    Field(discriminator="type"),
]


def _parse_time(value: Any) -> Any:
    # YAML 1.1 reads unquoted 21:00 as the base-60 integer 1260.
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 24 * 60:
            raise ValueError("time must be HH:MM")
        return time(value // 60, value % 60)
    return value


TimeField = Annotated[time, BeforeValidator(_parse_time)]


class QuietHours(_Model):
    """Local wall-clock window; wraps past midnight when ``start > end``."""

    start: TimeField = time(21)
    end: TimeField = time(9)


class CapWindow(_Model):
    max: Annotated[int, Field(ge=0)]
    per_days: Annotated[float, Field(gt=0)]

    def window(self) -> Window:
        return Window(self.max, self.per_days * DAY)


class Caps(_Model):
    overall: tuple[CapWindow, ...] = ()
    """Per customer, across all rules and channels."""
    channels: dict[Channel, tuple[CapWindow, ...]] = {}


class Holdout(_Model):
    fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    salt: Annotated[str, Field(max_length=64)] = ""


class ChannelsConfig(_Model):
    preferences: dict[str, tuple[Channel, ...]] = {}
    """Region → channels in order of preference; the first one consented to wins."""
    default: tuple[Channel, ...] = ("email",)
    """For customers whose region has no preference, and as fallback after it."""
    forbidden_sources: tuple[str, ...] = ("amazon",)
    """Marketplaces whose terms forbid marketing to their buyers: never messaged."""

    @field_validator("forbidden_sources")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.lower() for v in value)


class RuleSet(_Model):
    store_id: StoreId
    version: int = 1
    timezone: str = "UTC"
    """For customers without a known time zone."""
    default_locale: str = "en"
    quiet_hours: QuietHours | None = QuietHours()
    caps: Caps = Caps()
    holdout: Holdout = Holdout()
    channels: ChannelsConfig = ChannelsConfig()
    regions: dict[str, tuple[str, ...]] = {}
    """Region → ISO countries; adds to or replaces ``DEFAULT_REGIONS`` entries."""
    rules: tuple[Rule, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("regions")
    @classmethod
    def _upper_countries(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return {k: tuple(c.upper() for c in v) for k, v in value.items()}

    def all_regions(self) -> dict[str, tuple[str, ...]]:
        return {
            **self.regions,
            **{k: v for k, v in DEFAULT_REGIONS.items() if k not in self.regions},
        }

    def region_of(self, country: str | None) -> str | None:
        if not country:
            return None
        country = country.upper()
        for name, members in self.all_regions().items():
            if country in members:
                return name
        return None

    def cap_policy(self) -> CapPolicy:
        return CapPolicy(
            overall=tuple(w.window() for w in self.caps.overall),
            per_channel={
                ch: tuple(w.window() for w in ws) for ch, ws in self.caps.channels.items()
            },
            cooldowns={r.id: r.cooldown_days * DAY for r in self.rules},
        )


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class Problem:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, field {self.field or '(document)'}: {self.message}"


class RulesError(ConfigError):
    """A rules file that cannot be used; ``problems`` has line, field and message of each."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        shown = "; ".join(str(p) for p in self.problems[:5])
        more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"{source}: {shown}{more}")


_Loc = tuple[int | str, ...]
_TAGS = frozenset({"risk", "dormancy", "abandoned_cart", "first_order_followup"})


def _field_name(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _locate(root: Node, loc: _Loc) -> tuple[int, str]:
    """Line (1-based) and display name of the YAML node a validation location refers to."""
    node: Node | None = root
    line = root.start_mark.line + 1
    shown: list[int | str] = []
    for i, part in enumerate(loc):
        if isinstance(node, MappingNode):
            match = next(
                (
                    (k, v)
                    for k, v in node.value
                    if isinstance(k, ScalarNode) and k.value == str(part)
                ),
                None,
            )
            if match is not None:
                line = match[0].start_mark.line + 1
                node = match[1]
                shown.append(part)
                continue
            if part in _TAGS and i < len(loc) - 1:
                continue  # a discriminated union's tag, not a key in the file
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
            shown.append(part)
            continue
        node = None
        shown.append(part)
    return line, _field_name(shown)


MAX_NODES = 100_000


def _too_big(root: Node) -> bool:
    """Whether the document, with aliases expanded, has more than ``MAX_NODES`` nodes."""
    stack, count = [root], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            return True
        if isinstance(node, MappingNode):
            stack.extend(n for kv in node.value for n in kv)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
    return False


def _duplicate_keys(node: Node, loc: _Loc, seen: set[int]) -> Iterator[tuple[int, str, str]]:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        keys: set[str] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, ScalarNode) else "?"
            if key in keys and key != "<<":
                yield k.start_mark.line + 1, _field_name((*loc, key)), "duplicate key"
            keys.add(key)
            yield from _duplicate_keys(v, (*loc, key), seen)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, i), seen)


def _semantic_problems(rs: RuleSet) -> Iterator[tuple[_Loc, str]]:
    known_templates = set(CATALOG["en"].templates)
    regions = rs.all_regions()
    for region in rs.channels.preferences:
        if region not in regions:
            yield ("channels", "preferences", region), f"unknown region {region!r}"
    seen: dict[str, int] = {}
    for i, rule in enumerate(rs.rules):
        if rule.id in seen:
            yield ("rules", i, "id"), f"duplicate rule id {rule.id!r} (also rules[{seen[rule.id]}])"
        seen.setdefault(rule.id, i)
        for r in rule.when.regions or ():
            if r not in regions:
                yield ("rules", i, "when", "regions"), f"unknown region {r!r}"
        if rule.arms:
            names = [a.name for a in rule.arms]
            if len(set(names)) != len(names):
                yield ("rules", i, "arms"), "arm names must be unique"
            if not any(a.weight > 0 for a in rule.arms):
                yield ("rules", i, "arms"), "at least one arm needs a positive weight"
        for j, arm in enumerate(rule.arms):
            if arm.template is not None and arm.template not in known_templates:
                yield ("rules", i, "arms", j, "template"), f"unknown template {arm.template!r}"
        if isinstance(rule, DormancyRule):
            last = 0.0
            for j, step in enumerate(rule.steps):
                if step.template not in known_templates:
                    yield (
                        ("rules", i, "steps", j, "template"),
                        f"unknown template {step.template!r}",
                    )
                if j and step.after_days <= last:
                    yield (
                        ("rules", i, "steps", j, "after_days"),
                        f"steps must be in increasing after_days ({step.after_days:g} <= {last:g})",
                    )
                last = step.after_days
        elif rule.template not in known_templates:
            yield ("rules", i, "template"), f"unknown template {rule.template!r}"


def _read(path_or_text: str | os.PathLike[str]) -> tuple[str, str]:
    if isinstance(path_or_text, os.PathLike) or (
        "\n" not in path_or_text and path_or_text.endswith((".yaml", ".yml"))
    ):
        path = Path(path_or_text)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ConfigError(f"cannot read rules file {path}: {exc.strerror or exc}") from None
    return path_or_text, "<rules>"


def load_rules(path_or_text: str | os.PathLike[str]) -> RuleSet:
    """Load and validate a rules file (a path, or YAML text containing a newline).

    Raises ``RulesError`` (a ``ConfigError``) naming line and field of each problem.
    """
    text, source = _read(path_or_text)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None and _too_big(root):
            raise RulesError(source, [Problem(1, "", "document too large (alias bomb?)")])
        # before constructing: merge keys (<<) are flattened into the nodes in place
        dups = [Problem(*d) for d in _duplicate_keys(root, (), set())] if root else []
        if dups:
            raise RulesError(source, dups)
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RulesError(source, [Problem(line, "", f"YAML syntax: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise RulesError(source, [Problem(1, "", f"YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if root is None or not isinstance(root, MappingNode) or not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else 1
        raise RulesError(source, [Problem(line, "", "the rules file must be a YAML mapping")])
    try:
        ruleset = RuleSet.model_validate(data)
    except ValidationError as exc:
        problems = []
        errors = exc.errors(include_url=False)
        child_locs = [tuple(e["loc"]) for e in errors]
        for err in errors:
            loc: _Loc = tuple(err["loc"])
            if err["type"] == "too_short" and any(
                len(c) > len(loc) and c[: len(loc)] == loc for c in child_locs
            ):
                continue  # a container "too short" only because its items failed
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "type")
            line, name = _locate(root, loc)
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(Problem(line, name, msg))
        raise RulesError(source, problems) from None
    semantic = [Problem(*_locate(root, loc), msg) for loc, msg in _semantic_problems(ruleset)]
    if semantic:
        raise RulesError(source, semantic)
    return ruleset


def cart_window_misses(rules: RuleSet, check_hours: float) -> list[str]:
    """The enabled abandoned-cart rules that a cart check ``check_hours`` after the cart
    opened cannot fire (outside ``after_hours`` .. ``after_hours + grace_hours``).

    >>> rs = load_rules("store_id: s\\nrules:\\n  - {id: cart, type: abandoned_cart, "
    ...                 "after_hours: 6, grace_hours: 12}\\n")
    >>> cart_window_misses(rs, 6), cart_window_misses(rs, 18)
    ([], [])
    >>> cart_window_misses(rs, 4)
    ["rule 'cart' fires 6..18 hours after the cart opened, not at 4"]
    """
    return [
        f"rule {rule.id!r} fires {rule.after_hours:g}..{rule.after_hours + rule.grace_hours:g}"
        f" hours after the cart opened, not at {check_hours:g}"
        for rule in rules.rules
        if isinstance(rule, AbandonedCartRule)
        and rule.enabled
        and not rule.after_hours <= check_hours <= rule.after_hours + rule.grace_hours
    ]
