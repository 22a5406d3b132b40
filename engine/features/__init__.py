"""Customer state and features: fold events into a ``CustomerState``, read
``feature_vector(state, t)``; ``to_base`` converts money to the base currency.
"""

from engine.features.currency import UnknownCurrency, to_base
from engine.features.state import CustomerState
from engine.features.vector import FEATURE_NAMES, feature_vector, profile_attributes

__all__ = [
    "FEATURE_NAMES",
    "CustomerState",
    "UnknownCurrency",
    "feature_vector",
    "profile_attributes",
    "to_base",
]
