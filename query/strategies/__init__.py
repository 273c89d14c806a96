"""The acquisition strategies, by the name `query.strategy` gives them. Adding one: a module with
its `STRATEGY` (a query/strategies/base.py `Strategy`), an entry below, and its name in the choices of
`query.strategy` (core/config.py; tests/query/test_strategies.py checks that both lists agree)."""
from __future__ import annotations

from . import bald, entropy, least_confidence, margin, random_regions
from .base import MC_SAMPLES, NOTHING, PREDICTION, Strategy

STRATEGIES: dict[str, Strategy] = {module.STRATEGY.name: module.STRATEGY
                                   for module in (entropy, random_regions, margin, least_confidence, bald)}


def get_strategy(name: str) -> Strategy:
    """The registered strategy called `name`; an unknown name is one line listing the known ones."""
    if name not in STRATEGIES:
        raise ValueError(f"query.strategy: unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "Strategy", "get_strategy", "PREDICTION", "MC_SAMPLES", "NOTHING"]
