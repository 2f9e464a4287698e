"""The worker-to-hub channel: what a worker writes, the hub reads back as the same events."""

from __future__ import annotations

import pytest

from chatbox import protocol
from chatbox.server.channel import ChannelReader, Ended, LineDropped, encode_event, end_note

# (what the worker writes, what the hub's reader yields)
STREAMS = [
    ([b"a\nb\n"], [protocol.Lines(b"a\nb\n")]),
    ([encode_event(protocol.LineTooLong(50))], [LineDropped()]),
    ([end_note(reset=False)], [Ended("connection closed")]),
    ([end_note(reset=True)], [Ended("connection reset")]),
    ([b"\x00frob\n"], [Ended("connection lost")]),
    (
        [b"a\n", encode_event(protocol.LineTooLong(50)), b"b\nc\n", end_note(reset=False)],
        [
            protocol.Lines(b"a\n"),
            LineDropped(),
            protocol.Lines(b"b\nc\n"),
            Ended("connection closed"),
        ],
    ),
]


@pytest.mark.parametrize(("writes", "events"), STREAMS)
def test_ChannelReader_yields_what_the_worker_wrote_in_order(
    writes: list[bytes], events: list[object]
) -> None:
    assert ChannelReader().feed(b"".join(writes)) == events


def _joined(events: list[object]) -> list[object]:
    """EVENTS with neighbouring `Lines` merged: how lines are batched is not a promise."""
    merged: list[object] = []
    for event in events:
        if isinstance(event, protocol.Lines) and merged and isinstance(merged[-1], protocol.Lines):
            merged[-1] = protocol.Lines(merged[-1].block + event.block)
        else:
            merged.append(event)
    return merged


def test_ChannelReader_gives_the_same_events_however_the_stream_is_split() -> None:
    writes, events = STREAMS[-1]
    stream = b"".join(writes)
    for cut in range(len(stream) + 1):
        reader = ChannelReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert _joined(got) == events, cut


def test_a_client_cannot_forge_a_note_with_a_nul() -> None:
    # A client that sends what a worker's note looks like must be relayed as text (its
    # NUL made U+FFFD), never taken for its own disconnection or anyone else's.
    decoded = protocol.LineDecoder().feed(b"\x00closed\n\x00toolong\n")
    stream = b"".join(encode_event(event) for event in decoded)
    [event] = ChannelReader().feed(stream)
    assert event == protocol.Lines("\ufffdclosed\n\ufffdtoolong\n".encode())
