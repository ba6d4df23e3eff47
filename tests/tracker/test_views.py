"""views.iso: the one timestamp format of every REST row and live message, and
views.iso_text, the same format from a track row's UTC text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from tracker.views import iso, iso_text


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


def utc_texts(moment: datetime) -> list[str]:
    """A UTC time as a ``TrackRow`` may hold it: as Python prints it (SQLite's
    rows), and with the fraction's trailing zeros cut, as PostgreSQL prints it."""
    python = str(moment.replace(tzinfo=None))
    return [python, python.rstrip("0") if moment.microsecond else python]


@given(st.datetimes(timezones=st.just(UTC)))
def test_iso_text_is_iso(moment: datetime) -> None:
    for text in utc_texts(moment):
        assert iso_text(text) == iso(moment), text


def test_iso_text_examples() -> None:
    assert iso_text("2026-11-29 23:00:05") == "2026-11-29T23:00:05Z"
    assert iso_text("2026-11-29 23:00:05.12") == "2026-11-29T23:00:05.120Z"
    assert iso_text("2026-11-29 23:00:05.000999") == "2026-11-29T23:00:05.000Z"
    assert iso_text("2026-11-29 23:00:05.123456") == "2026-11-29T23:00:05.123Z"
