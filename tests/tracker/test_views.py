"""views.iso: the one timestamp format of every REST row and live message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from tracker.views import iso


def reference(moment: datetime) -> str:
    """The format as first written: isoformat, milliseconds when any, Z for UTC."""
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


@given(st.datetimes(timezones=st.just(UTC)))
def test_utc_fast_path_is_the_reference_format(moment: datetime) -> None:
    assert iso(moment) == reference(moment)


def test_examples() -> None:
    assert iso(datetime(2026, 11, 29, 23, 0, 5, tzinfo=UTC)) == "2026-11-29T23:00:05Z"
    assert iso(datetime(2026, 11, 29, 23, 0, 5, 123_456, tzinfo=UTC)) == "2026-11-29T23:00:05.123Z"
    assert iso(datetime(5, 1, 2, 3, 4, 5, 999, tzinfo=UTC)) == "0005-01-02T03:04:05.000Z"


def test_other_offsets_keep_their_offset() -> None:
    paris = timezone(timedelta(hours=1))
    assert iso(datetime(2026, 11, 29, 23, 0, 5, 120_000, tzinfo=paris)) == (
        "2026-11-29T23:00:05.120+01:00"
    )
