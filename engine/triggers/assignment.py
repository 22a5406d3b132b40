"""Deterministic holdout and A/B arm assignment.

Both are functions of their inputs only: SHA-256 over an unambiguous encoding
of the inputs, mapped to a number in ``[0, 1)``. Python's ``hash()`` is salted
per process and is never used, so every process, host and replay agrees.

>>> in_holdout("demo", "42", salt="2026", fraction=0.0), in_holdout("demo", "42", "2026", 1.0)
(False, True)
>>> assign_arm("demo", "42", "winback", [("a", 1.0), ("b", 1.0)], salt="2026") in {"a", "b"}
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["assign_arm", "in_holdout", "unit_hash"]


def unit_hash(*parts: str) -> float:
    """A stable number in ``[0, 1)`` from strings (length-prefixed, so no collisions by joining)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return int.from_bytes(h.digest()[:8], "big") / 2**64


def in_holdout(store: str, customer: str, salt: str, fraction: float) -> bool:
    """Whether the customer belongs to the store's holdout group (``fraction`` of all)."""
    if fraction <= 0:
        return False
    return unit_hash("holdout", salt, store, customer) < fraction


def assign_arm(
    store: str,
    customer: str,
    rule_id: str,
    arms: Sequence[tuple[str, float]],
    salt: str = "",
) -> str:
    """The arm ``(name, weight)`` the customer gets in ``rule_id``'s experiment.

    Independent of the holdout draw (different hash input). Weights need not sum
    to one; zero-weight arms are never chosen. Raises ``ValueError`` if no arm
    has a positive weight.
    """
    total = sum(w for _, w in arms if w > 0)
    if total <= 0:
        raise ValueError("at least one arm needs a positive weight")
    point = unit_hash("arm", salt, store, customer, rule_id) * total
    acc = 0.0
    chosen = ""
    for name, weight in arms:
        if weight <= 0:
            continue
        chosen = name
        acc += weight
        if point < acc:
            return name
    return chosen  # float rounding at the very top end
