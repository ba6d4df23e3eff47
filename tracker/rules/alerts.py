"""One alert per rule and vehicle until it clears: the base of the rule engine."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tracker.store import Event, StoredPosition, Unit, Vehicle

if TYPE_CHECKING:
    from tracker.rules.engine import RuleSettings


class AlertRules:
    """``open`` maps (vehicle_id, alert_key) to the event that opened it."""

    settings: RuleSettings
    _vehicle: Callable[[str], Vehicle | None]

    def __init__(self, new_id: Callable[[], str]) -> None:
        self.open: dict[tuple[str, str], Event] = {}
        self._new_id = new_id
        self._overrides: dict[tuple[str, str], RuleSettings] = {}
        self._batch_settings: dict[str, RuleSettings] | None = None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """While a batch is evaluated (synchronously: no vehicle changes meanwhile),
        each vehicle's thresholds are worked out once, not once per rule and fix."""
        self._batch_settings = {}
        try:
            yield
        finally:
            self._batch_settings = None

    def settings_for(self, vehicle_id: str) -> RuleSettings:
        """The global thresholds, with the vehicle's own ``rules`` over them."""
        batch = self._batch_settings
        if batch is not None and (known := batch.get(vehicle_id)) is not None:
            return known
        vehicle = self._vehicle(vehicle_id)
        rules: dict[str, Any] = getattr(vehicle, "rules", None) or {}
        found = self.settings
        if rules:
            key = (vehicle_id, repr(sorted(rules.items())))
            if (cached := self._overrides.get(key)) is None:
                cached = self._overrides[key] = replace(self.settings, **rules)
            found = cached
        if batch is not None:
            batch[vehicle_id] = found
        return found

    def _open(self, vehicle_id: str, key: str, event: Event) -> Event | None:
        if (vehicle_id, key) in self.open:
            return None
        event = with_key(event, key, clears=False)
        self.open[(vehicle_id, key)] = event
        return event

    def _clear(self, vehicle_id: str, key: str, event: Event) -> Event | None:
        if self.open.pop((vehicle_id, key), None) is None:
            return None
        return with_key(event, key, clears=True)

    def _event(
        self,
        kind: str,
        severity: str,
        unit: Unit,
        fix_time: datetime,
        now: datetime,
        *,
        row: StoredPosition | None = None,
        lat: float | None = None,
        lon: float | None = None,
        late: bool = False,
        details: dict[str, Any] | None = None,
    ) -> Event:
        return Event(
            id=self._new_id(),
            type=kind,
            severity=severity,  # type: ignore[arg-type]
            vehicle_id=unit.vehicle_id,
            unique_id=unit.unique_id,
            fix_time=fix_time,
            detected_at=now,
            lat=row.lat if row else lat,
            lon=row.lon if row else lon,
            details=details or {},
            late=late,
        )


def with_key(event: Event, key: str, *, clears: bool) -> Event:
    return replace(event, alert_key=key, clears=clears)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
