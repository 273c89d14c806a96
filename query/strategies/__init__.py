"""The acquisition strategies, by the name `query.strategy` gives them. Adding one: a module with
a `Strategy` subclass (query/strategies/base.py), an entry below, and its name in the choices of
`query.strategy` (core/config.py; tests/test_acquisition.py checks that both lists agree)."""
from __future__ import annotations

from .bald import Bald
from .base import MC_SAMPLES, NOTHING, PREDICTION, Strategy
from .entropy import Entropy
from .least_confidence import LeastConfidence
from .margin import Margin
from .random_regions import Random

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Entropy(), Random(), Margin(), LeastConfidence(), Bald())}


def get_strategy(name: str) -> Strategy:
    """The registered strategy called `name`; an unknown name is one line listing the known ones."""
    if name not in STRATEGIES:
        raise ValueError(f"query.strategy: unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "Strategy", "get_strategy", "PREDICTION", "MC_SAMPLES", "NOTHING"]
