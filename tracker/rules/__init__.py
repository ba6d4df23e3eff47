"""Risk rules: pure state machines turning positions and time into events."""

from tracker.rules.engine import RuleEngine, RuleSettings

__all__ = ["RuleEngine", "RuleSettings"]
