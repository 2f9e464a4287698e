"""The room's rules - names, routing, notices, order - with a recording postbox, no sockets."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import pytest

from chatbox import protocol
from chatbox.server.room import STORM_HOLD, STORM_HOLD_MAX, Room


class Recorder:
    """Stands in for the hub: remembers what each member would have been sent."""

    def __init__(self) -> None:
        self.sent: dict[int, bytearray] = defaultdict(bytearray)
        self.dismissed: list[int] = []
        self.room: Room | None = None  # whose turn `take` ends, as the hub would

    def post(self, member_ids: Iterable[int], data: bytes) -> None:
        for member_id in member_ids:
            self.sent[member_id] += data

    def dismiss(self, member_id: int) -> None:
        self.dismissed.append(member_id)

    def has_room(self, member_id: int) -> bool:
        return True

    def take(self, member_id: int) -> list[str]:
        """What the member got by the end of the hub's turn."""
        if self.room is not None:
            self.room.end_turn()
        lines = self.sent.pop(member_id, bytearray()).decode().splitlines()
        return lines


@pytest.fixture
def room() -> tuple[Room, Recorder]:
    box = Recorder()
    box.room = Room(box, max_line=50)
    return box.room, box


def joined(room: Room, box: Recorder, count: int) -> None:
    for member_id in range(1, count + 1):
        room.join(member_id)
    for member_id in range(1, count + 1):
        box.take(member_id)


def test_Room_welcomes_newcomer_and_announces_it(room: tuple[Room, Recorder]) -> None:
    r, box = room
    r.join(1)
    assert box.take(1) == ["* welcome guest1; nobody else is here yet"]
    r.join(2)
    assert box.take(2) == ["* welcome guest2; also here: guest1"]
    assert box.take(1) == ["* guest2 joined"]


def test_Room_relays_chat_to_everyone_else_only(room: tuple[Room, Recorder]) -> None:
    r, box = room
    joined(r, box, 3)
    r.receive(1, b"hi\nthere\n")
    assert box.take(2) == ["<guest1> hi", "<guest1> there"]
    assert box.take(3) == ["<guest1> hi", "<guest1> there"]
    assert box.take(1) == []


def test_Room_handles_commands_between_chat_lines_in_order(room: tuple[Room, Recorder]) -> None:
    r, box = room
    joined(r, box, 2)
    r.receive(1, b"a\n/nick alice\nb\n//c\n/me waves\n")
    assert box.take(2) == [
        "<guest1> a",
        "* guest1 is now known as alice",
        "<alice> b",
        "<alice> /c",
        "* <alice> waves",
    ]
    assert box.take(1) == ["* you are now known as alice"]


NICK_ERRORS = [
    ("/nick 9lives", "! invalid name '9lives'"),
    ("/nick GUEST2", "! name 'GUEST2' is taken"),
    ("/nick guest1", "! you are already guest1"),
    ("/nick", "! usage: /nick NAME"),
]


@pytest.mark.parametrize(("line", "error"), NICK_ERRORS)
def test_Room_refuses_bad_nick_to_the_sender_only(
    room: tuple[Room, Recorder], line: str, error: str
) -> None:
    r, box = room
    joined(r, box, 2)
    r.receive(1, line.encode() + b"\n")
    [reply] = box.take(1)
    assert reply.startswith(error)
    assert box.take(2) == []
    assert r.names() == ["guest1", "guest2"]


def test_Room_private_message_reaches_only_its_target(room: tuple[Room, Recorder]) -> None:
    r, box = room
    joined(r, box, 3)
    r.receive(1, b"/msg GUEST3 psst\n/msg nobody hi\n")
    assert box.take(3) == ["[private] <guest1> psst"]
    assert box.take(2) == []
    assert box.take(1) == ["! no such user 'nobody'"]


def test_Room_who_lists_in_joining_order(room: tuple[Room, Recorder]) -> None:
    r, box = room
    joined(r, box, 3)
    r.receive(3, b"/who\n")
    assert box.take(3) == ["* here (3): guest1, guest2, guest3"]


def test_Room_quit_announces_reason_and_ignores_what_follows(
    room: tuple[Room, Recorder],
) -> None:
    r, box = room
    joined(r, box, 2)
    r.receive(1, b"/quit gone fishing\nafter\n")
    assert box.take(2) == ["* guest1 left (gone fishing)"]
    assert box.dismissed == [1]
    r.receive(1, b"late\n")
    assert box.take(2) == []


def test_Room_tells_only_the_sender_its_line_was_too_long(room: tuple[Room, Recorder]) -> None:
    r, box = room
    joined(r, box, 2)
    r.line_too_long(1)
    assert box.take(1) == ["! line too long (max 50 bytes)"]
    assert box.take(2) == []


def test_Room_announces_a_lost_connection_and_leaves_the_closing_to_the_hub(
    room: tuple[Room, Recorder],
) -> None:
    r, box = room
    joined(r, box, 2)
    r.leave(1, "connection reset")
    assert box.take(2) == ["* guest1 left (connection reset)"]
    assert box.dismissed == []  # the hub reported it and closes it: nothing comes back
    r.receive(1, b"late\n")
    r.line_too_long(1)
    assert box.take(1) == []
    assert box.take(2) == []


def test_Room_unknown_command_points_to_help(room: tuple[Room, Recorder]) -> None:
    r, box = room
    joined(r, box, 1)
    r.receive(1, b"/frob\n/help\n")
    lines = box.take(1)
    assert lines[0] == "! unknown command '/frob' (try /help)"
    assert any("/msg NAME TEXT" in line for line in lines[1:])


def test_Room_freed_name_can_be_taken_and_guest_names_skip_taken_ones(
    room: tuple[Room, Recorder],
) -> None:
    r, box = room
    joined(r, box, 1)
    r.receive(1, b"/nick guest2\n")
    r.join(2)
    assert r.names() == ["guest2", "guest3"]


def test_Room_close_tells_everyone_and_dismisses_them(room: tuple[Room, Recorder]) -> None:
    r, box = room
    joined(r, box, 2)
    r.close()
    assert box.take(1) == ["* server shutting down"]
    assert box.take(2) == ["* server shutting down"]
    assert sorted(box.dismissed) == [1, 2]
    assert len(r) == 0


def test_Room_welcome_in_a_crowd_names_twenty_and_counts_the_rest(
    room: tuple[Room, Recorder],
) -> None:
    r, box = room
    joined(r, box, 25)
    r.join(26)
    [welcome] = box.take(26)
    names = ", ".join(f"guest{i}" for i in range(1, 21))
    assert welcome == f"* welcome guest26; also here: {names} and 5 more (/who lists everyone)"


def test_Room_coalesces_a_storm_of_joins_into_one_notice_per_member(
    room: tuple[Room, Recorder],
) -> None:
    r, box = room
    joined(r, box, 2)
    for member_id in range(3, 203):  # 200 joins in one hub turn
        r.join(member_id)
    r.end_turn()
    # Those already here get one line that names three and counts the rest.
    assert box.take(1) == ["* guest3, guest4, guest5 and 197 others joined"]
    assert box.take(2) == ["* guest3, guest4, guest5 and 197 others joined"]
    # Each newcomer: its welcome, then one line for exactly those who came after it.
    assert box.take(3)[1:] == ["* guest4, guest5, guest6 and 196 others joined"]
    assert box.take(200)[1:] == ["* guest201 and guest202 joined"]
    assert box.take(201)[1:] == ["* guest202 joined"]
    assert len(box.take(202)) == 1  # the last one gets its welcome alone


def test_Room_coalesced_leaves_keep_their_reason_and_their_order_with_chat(
    room: tuple[Room, Recorder],
) -> None:
    r, box = room
    joined(r, box, 6)
    r.leave(2, "connection lost")
    r.leave(3, "connection lost")
    r.leave(4, "too slow")
    r.receive(5, b"hi\n")
    r.leave(6, "connection lost")
    assert box.take(1) == [
        "* guest2 and guest3 left (connection lost)",
        "* guest4 left (too slow)",
        "<guest5> hi",
        "* guest6 left (connection lost)",
    ]


def test_Room_a_newcomer_that_leaves_in_the_same_turn_is_announced_both_ways(
    room: tuple[Room, Recorder],
) -> None:
    r, box = room
    joined(r, box, 1)
    r.join(2)
    r.join(3)
    r.leave(2, "connection lost")
    assert box.take(1) == ["* guest2 and guest3 joined", "* guest2 left (connection lost)"]


def test_history_replays_the_last_lines_marked_and_to_the_asker_alone(
    room: tuple[Room, Recorder],
) -> None:
    r, box = room
    joined(r, box, 3)
    for i in range(5):
        r.receive(1, f"line {i}\n".encode())
    r.receive(2, b"/me waves\n/msg guest1 secret\n")
    box.sent.clear()
    r.receive(3, b"/history 3\n")
    assert box.take(3) == [
        "* history: the last 3 lines",
        "[history] <guest1> line 3",
        "[history] <guest1> line 4",
        "[history] * <guest2> waves",
        "* end of history",
    ]
    assert box.take(1) == box.take(2) == []
    r.receive(3, b"/history\n")
    assert len(box.take(3)) == 2 + 6  # fewer lines than the default 20: all of them
    r.receive(3, b"/history lots\n")
    assert box.take(3) == ["! usage: /history [N], N from 1 to 500"]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def joiners_heard(lines: list[str]) -> tuple[int, int]:
    """(join notices, joiners they account for: named or counted) in ``lines``."""
    notices = accounted = 0
    for line in lines:
        match = protocol.JOINED_LINE.match(line)
        if match:
            listed, others = protocol.notice_names(match)
            notices += 1
            accounted += len(listed) + others
    return notices, accounted


@pytest.fixture
def storm_room() -> tuple[Room, Recorder, Clock]:
    box, clock = Recorder(), Clock()
    box.room = Room(box, max_line=50, hold=STORM_HOLD, clock=clock)
    return box.room, box, clock


def test_Room_a_storm_over_many_turns_costs_each_member_a_few_notices_and_loses_none(
    storm_room: tuple[Room, Recorder, Clock],
) -> None:
    """1,000 joins, 64 a hub turn (what the hub accepts per turn), 1 ms apart: a run per
    turn would send the first member 16 lines, and the room O(N²/64) in all. The runs
    double instead: a handful of lines each, and every joiner accounted for exactly once."""
    r, box, clock = storm_room
    joined(r, box, 2)
    storm = 1000
    for first in range(3, 3 + storm, 64):
        clock.now += 0.001
        for member_id in range(first, min(first + 64, 3 + storm)):
            r.join(member_id)
        due = r.end_turn()
        assert due is None or clock.now < due
    clock.now += STORM_HOLD_MAX
    assert r.end_turn() is None  # the last run went out when it was due
    for member_id in (1, 2):
        notices, accounted = joiners_heard(box.take(member_id))
        assert accounted == storm
        assert notices <= 10, f"{notices} notices for {storm} joiners"
    total_lines = 0
    for member_id in range(3, 3 + storm):
        lines = box.take(member_id)
        assert lines[0].startswith("* welcome")
        notices, accounted = joiners_heard(lines[1:])
        assert accounted == 2 + storm - member_id, member_id  # everyone after it, once
        total_lines += len(lines)
    assert total_lines <= 4 * storm  # O(N): a welcome and a few notices each


def test_Room_a_lone_join_after_a_quiet_spell_goes_out_with_its_turn(
    storm_room: tuple[Room, Recorder, Clock],
) -> None:
    r, box, clock = storm_room
    joined(r, box, 5)
    clock.now += 1.0
    r.join(6)
    assert r.end_turn() is None
    assert box.take(1) == ["* guest6 joined"]


def test_Room_a_held_run_goes_out_when_due(storm_room: tuple[Room, Recorder, Clock]) -> None:
    """A join soon after a run of several (a storm may be on) waits, at most the hold."""
    r, box, clock = storm_room
    joined(r, box, 5)
    clock.now += 0.01
    r.join(6)
    due = r.end_turn()
    assert due == pytest.approx(clock.now + STORM_HOLD)
    assert box.sent.get(1, b"") == b""
    clock.now = due
    assert r.end_turn() is None
    assert box.take(1) == ["* guest6 joined"]


def test_Room_a_held_run_goes_out_before_anything_else(
    storm_room: tuple[Room, Recorder, Clock],
) -> None:
    r, box, clock = storm_room
    joined(r, box, 5)
    clock.now += 0.01
    r.join(6)
    assert r.end_turn() is not None
    r.receive(2, b"hello\n")
    assert box.take(1) == ["* guest6 joined", "<guest2> hello"]
    assert box.take(6)[1:] == ["<guest2> hello"]


def test_Room_people_arriving_one_by_one_are_each_announced_at_once(
    storm_room: tuple[Room, Recorder, Clock],
) -> None:
    """Each joins once the last was announced (a few ms later): no storm, no waiting."""
    r, box, clock = storm_room
    r.join(1)
    r.end_turn()
    for member_id in range(2, 12):
        clock.now += 0.002
        r.join(member_id)
        assert r.end_turn() is None
        assert box.take(1)[-1:] == [f"* guest{member_id} joined"]


def test_Room_a_held_leave_run_is_told_before_the_server_shuts_down(
    storm_room: tuple[Room, Recorder, Clock],
) -> None:
    r, box, clock = storm_room
    joined(r, box, 5)
    clock.now += 0.01
    r.leave(5, "connection lost")
    assert r.end_turn() is not None
    r.close()
    assert box.take(1) == ["* guest5 left (connection lost)", "* server shutting down"]


def test_Room_a_storm_trickling_in_one_join_a_turn_still_costs_few_notices(
    storm_room: tuple[Room, Recorder, Clock],
) -> None:
    """300 joins 20 ms apart, each in a turn of its own (a loaded machine forking
    workers one by one): a run per turn would send the first member 300 lines."""
    r, box, clock = storm_room
    joined(r, box, 2)
    for member_id in range(3, 303):
        clock.now += 0.02
        r.join(member_id)
        r.end_turn()
    clock.now += STORM_HOLD_MAX
    r.end_turn()
    notices, accounted = joiners_heard(box.take(1))
    assert accounted == 300
    assert notices <= 25, f"{notices} notices for 300 joiners"
    for member_id in range(3, 303):
        assert joiners_heard(box.take(member_id))[1] == 302 - member_id
