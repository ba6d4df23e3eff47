"""Every codec in ``protocols.CODECS`` keeps the contract of ``protocols.Codec``.

A new codec is covered by registering it. Its sample stream is its protocol's TCP vectors
back to back (``vectors/<name>.jsonl`` beside /work/shared/PROTOCOLS.md, or TRACKER_VECTORS);
a codec without vectors fails here: add its captured packets first.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocols
from protocols import CODECS, Message, ProtocolError
from tests.protocols.streams import assert_plausible, chunked
from tests.protocols.vectors import load

EXAMPLES = settings(max_examples=300, deadline=None, database=None)


@pytest.fixture(scope="module", params=sorted(CODECS))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def sample(name: str) -> bytes:
    vectors = load(f"{name}.jsonl")
    return b"".join(
        bytes.fromhex(v["data"]) if v["encoding"] == "hex" else v["data"].encode()
        for v in vectors
        if v["transport"] == "tcp"
    )


def run(name: str, chunks: list[bytes]) -> tuple[list[Message], bool]:
    """Messages from feeding ``chunks`` to a fresh codec, and whether it raised ProtocolError."""
    codec = protocols.open(name)
    messages: list[Message] = []
    try:
        for chunk in chunks:
            messages += codec.feed(chunk)
    except ProtocolError:
        return messages, True
    return messages, False


def comparable(messages: list[Message]) -> list[Message]:
    """Replies reduced to whether there is one: they may hold the clock (time requests)."""
    return [replace(m, reply=b"" if m.reply else None) for m in messages]


def test_codec_is_registered_under_its_name(name: str) -> None:
    codec = protocols.open(name)
    assert codec.name == name
    assert not codec.stats


def test_one_byte_at_a_time_decodes_like_all_at_once(name: str, sample: bytes) -> None:
    assert sample, f"no TCP vectors for {name}"
    whole, whole_failed = run(name, [sample])
    bytewise, bytewise_failed = run(name, [bytes([b]) for b in sample])
    assert not whole_failed
    assert not bytewise_failed
    assert whole
    assert comparable(bytewise) == comparable(whole)
    assert_plausible(whole)


def test_endless_garbage_raises_protocol_error(name: str) -> None:
    garbage = b"\xff" * 65_536  # no frame of any protocol; a codec must not buffer it all
    with pytest.raises(ProtocolError):
        protocols.open(name).feed(garbage)
    assert run(name, [garbage[i : i + 1024] for i in range(0, len(garbage), 1024)])[1]


@EXAMPLES
@given(data=st.binary(max_size=4096), cuts=st.lists(st.integers(1, 512), max_size=20))
def test_arbitrary_bytes_raise_only_protocol_error(name: str, data: bytes, cuts: list[int]) -> None:
    messages, failed = run(name, chunked(data, cuts))
    assert_plausible(messages)
    whole, whole_failed = run(name, [data])
    assert whole_failed == failed
    if not failed:
        assert comparable(messages) == comparable(whole)


@EXAMPLES
@given(
    at=st.floats(0, 1),
    garbage=st.binary(min_size=1, max_size=64),
    cuts=st.lists(st.integers(1, 512), max_size=20),
)
def test_garbage_spliced_into_a_stream_raises_only_protocol_error(
    name: str, sample: bytes, at: float, garbage: bytes, cuts: list[int]
) -> None:
    i = int(at * len(sample))
    data = sample[:i] + garbage + sample[i:]
    messages, failed = run(name, chunked(data, cuts))
    assert_plausible(messages)
    whole, whole_failed = run(name, [data])
    assert whole_failed == failed
    if not failed:
        assert comparable(messages) == comparable(whole)
