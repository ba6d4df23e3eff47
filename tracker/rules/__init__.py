"""Risk rules: pure state machines turning positions and time into events."""

from tracker.rules.engine import EVENT_TYPES, RuleEngine, RuleSettings

__all__ = ["EVENT_TYPES", "RuleEngine", "RuleSettings"]
