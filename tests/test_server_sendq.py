"""A reader far behind a fan-out gets every byte, once, in order.

The hub queues each posted block for each recipient and sends as much as the socket
takes; a socket that takes part of a block leaves the rest queued from where the
kernel stopped. A reader with a tiny receive buffer that falls megabytes behind, then
reads in small pieces, sees that bookkeeping byte for byte: a wrong place to resume
repeats or skips bytes mid-line.
"""

from __future__ import annotations

import socket
import threading

import pytest
from live_server import MODES, WAIT, Peer, joined_peers, kernel_send_buffer, running_server

# Far more than the kernel holds for one connection, so most of it waits in the hub's
# queue and leaves it in many partial sends.
TOTAL = kernel_send_buffer() + (4 << 20)


def _messages() -> list[tuple[bool, bytes]]:
    """(private?, text) pairs of varying length. A /msg between chat lines makes each
    its own block in the reader's queue: thousands of blocks, more than one send
    hands the kernel at once."""
    messages: list[tuple[bool, bytes]] = []
    size = 0
    while size < TOTAL:
        index = len(messages)
        text = b"%d %s" % (index, b"abcdefghij"[index % 10 :] * (1 + index % 97))
        messages.append((index % 3 == 0, text))
        size += len(text) + 20
    return messages


def _read_in_small_pieces(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` lines, read a few hundred bytes at a time."""
    pending = b""
    lines: list[bytes] = []
    while len(lines) < count:
        piece = sock.recv(333)
        if not piece:
            raise EOFError(f"connection closed after {len(lines)} lines")
        *complete, pending = (pending + piece).split(b"\n")
        lines.extend(complete)
    return lines


@pytest.mark.parametrize("mode", MODES)
def test_a_reader_megabytes_behind_a_fan_out_gets_every_byte_once_in_order(mode: str) -> None:
    args = [
        "0", "--host", "127.0.0.1", "--mode", mode, "--sendq", str(16 * TOTAL),
        "--slow-timeout", "60", "--flood-lines", "0", "--flood-bytes", "0",
    ]  # fmt: skip
    messages = _messages()
    with running_server(*args) as srv:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", srv.port))
        raw.settimeout(WAIT)
        reader = Peer(raw)
        reader.expect("* welcome")  # guest1
        sender, watcher = joined_peers(srv, 2)  # guest2, guest3
        reader.expect("* guest3 joined")
        bulk = b"".join(
            (b"/msg guest1 " + text if private else text) + b"\n" for private, text in messages
        )
        sending = threading.Thread(target=sender.send, args=(bulk,), daemon=True)
        sending.start()
        public = [text for private, text in messages if not private]
        # The reader reads nothing until the watcher has it all: by then the reader's
        # share waits in the hub, far past what its socket holds.
        seen = watcher.lines(len(public))
        assert seen == ["<guest2> " + text.decode() for text in public]
        sending.join(WAIT)
        # Its file object never read past the join notice (readline buffers what it
        # read; nothing more had arrived when it returned), so the socket has the rest.
        got = _read_in_small_pieces(raw, len(messages))
        wanted = [
            (b"[private] <guest2> " if private else b"<guest2> ") + text
            for private, text in messages
        ]
        pairs = enumerate(zip(got, wanted, strict=False))
        first_wrong = next((i for i, (line, want) in pairs if line != want), None)
        assert first_wrong is None, (
            f"line {first_wrong}: got {got[first_wrong][:80]!r}, "
            f"wanted {wanted[first_wrong][:80]!r}"
        )
        assert len(got) == len(wanted)  # nothing after the last one either
        for peer in (reader, sender, watcher):
            peer.close()
