"""Risk rules: pure state machines turning positions and time into events."""

from tracker.rules.engine import RuleEngine, RuleSettings
from tracker.rules.kinds import EVENT_TYPES

__all__ = ["EVENT_TYPES", "RuleEngine", "RuleSettings"]
