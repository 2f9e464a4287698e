"""The kernel's half of admission: connection attempts from blocked addresses dropped
before they are connections.

A refused connection still costs the hub an accept and a close (and the machine a TCP
handshake and a wake-up of the hub) each time; one address churning thousands a second
takes a share of the CPU everyone else's lines need. So an address that `Admission`
blocks (one that keeps on connecting after it was told it is too fast, or has too many)
is handed to the kernel: a classic BPF socket filter on the listening socket drops its
SYNs, the first packet of a connection, so no handshake happens and the hub never hears
of it. A client that connects anyway sees no answer and retries (the kernel's SYN
retransmission, after 1 s, 3 s, 7 s ...); once the block has expired, a retry gets in.

Only pure SYNs (SYN set, ACK not) are dropped: accepted sockets inherit the listener's
filter, and to an established connection of the same address (one admitted before it
churned) the filter lets everything through. IPv4 addresses are matched whole, IPv6
ones by their /64 (what `Admission` counts); on an IPv6 listener an IPv4 client comes in
as an IPv4 packet and is matched as one.

Linux only (``SO_ATTACH_FILTER``); elsewhere, or if the kernel refuses the program, the
filter is off and refusals go on costing what they did (logged once).
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
from collections.abc import Sequence

log = logging.getLogger("chatbox.synfilter")

SO_ATTACH_FILTER = 26  # from <asm-generic/socket.h>; the socket module lacks them
SO_DETACH_FILTER = 27

# At most this many addresses are dropped at once (two instructions each, well inside
# the kernel's 4,096); past that the newest are, and the rest refused as before.
MAX_BLOCKED = 512

# Classic BPF opcodes (<linux/filter.h>).
_LD_B_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_ALU_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_ALU_RSH_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
_RET_K = 0x06  # BPF_RET | BPF_K
# A socket filter sees the packet from the TCP header on; the IP header is at this
# (negative) offset.
_NET = -0x100000
_TCP_FLAGS = 13  # offset of the flags byte in the TCP header
_SYN, _ACK = 0x02, 0x10

Key = tuple[int, int]  # (4, address) or (6, the address's top 64 bits), as in admission


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def program(keys: Sequence[Key], family: int) -> list[bytes]:
    """The filter's instructions: drop a pure SYN from any of ``keys``, pass the rest.

    Each comparison is followed by its own ``ret 0`` (drop), so no jump is longer than
    one instruction (classic BPF's conditional jumps reach 255 at most)."""
    v4 = [k for version, k in keys if version == 4]
    v6 = [k for version, k in keys if version == 6] if family == socket.AF_INET6 else []
    v4_part = [_insn(_LD_W_ABS, 0, 0, _NET + 12)]
    for address in v4:
        v4_part += [_insn(_JEQ_K, 0, 1, address), _insn(_RET_K, 0, 0, 0)]
    v6_part: list[bytes] = []
    for prefix in v6:
        v6_part += [
            _insn(_LD_W_ABS, 0, 0, _NET + 8),
            _insn(_JEQ_K, 0, 3, prefix >> 32),
            _insn(_LD_W_ABS, 0, 0, _NET + 12),
            _insn(_JEQ_K, 0, 1, prefix & 0xFFFFFFFF),
            _insn(_RET_K, 0, 0, 0),
        ]
    accept = _insn(_RET_K, 0, 0, 0xFFFFFFFF)
    version: list[bytes] = []
    if family == socket.AF_INET6:
        # The IP version (the first nibble) picks the part: 4 falls through to the IPv4
        # part, anything else jumps over it.
        version = [
            _insn(_LD_B_ABS, 0, 0, _NET),
            _insn(_ALU_RSH_K, 0, 0, 4),
            _insn(_JEQ_K, 1, 0, 4),
            _insn(_JA, 0, 0, len(v4_part) + 1),
        ]
    after_head = len(version) + len(v4_part) + 1 + len(v6_part)
    head = [
        _insn(_LD_B_ABS, 0, 0, _TCP_FLAGS),
        _insn(_ALU_AND_K, 0, 0, _SYN | _ACK),
        _insn(_JEQ_K, 1, 0, _SYN),  # a pure SYN goes on; anything else is let through
        _insn(_JA, 0, 0, after_head),
    ]
    return [*head, *version, *v4_part, _insn(_JA, 0, 0, len(v6_part)), *v6_part, accept]


class SynFilter:
    """The listener's filter, set to drop the SYNs of the addresses given to `drop`."""

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self._family = listener.family
        self.enabled = sys.platform.startswith("linux") and self._family in (
            socket.AF_INET,
            socket.AF_INET6,
        )
        self._attached = False

    def drop(self, keys: Sequence[Key]) -> None:
        """From now on drop the SYNs of ``keys`` (and of no other address)."""
        if not self.enabled:
            return
        try:
            if keys:
                self._attach(program(keys[-MAX_BLOCKED:], self._family))
                self._attached = True
            elif self._attached:
                self._listener.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
                self._attached = False
        except OSError as exc:
            # The addresses are refused by the hub as before, at the cost of an accept.
            log.warning("cannot drop connection attempts in the kernel: %s", exc.strerror)
            self.enabled = False

    def _attach(self, instructions: list[bytes]) -> None:
        import ctypes  # here: only a server that blocks someone pays for the import

        code = b"".join(instructions)
        # struct sock_fprog: the count, and a pointer to the instructions (the kernel
        # copies them during the call).
        buffer = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("HP", len(instructions), ctypes.addressof(buffer))
        self._listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
