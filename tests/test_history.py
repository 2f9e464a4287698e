"""The single server's history (chatbox.server.history): places, bounds, the SQLite file."""

from __future__ import annotations

from pathlib import Path

from chatbox import protocol
from chatbox.server.history import History, SqliteStore


def test_since_gives_the_lines_after_a_place_up_to_another() -> None:
    history = History()
    for text in (b"a\n", b"b\nc\n", b"d\n"):
        history.remember(text)
    assert history.since(history.position(1), upto=2) == ([b"b\n", b"c\n"], True)
    assert history.since(history.position(3), upto=3) == ([], True)


def test_a_place_of_another_history_replays_all_kept_as_incomplete() -> None:
    history = History()
    history.remember(b"a\n")
    assert history.since("0ther.0", upto=1) == ([b"a\n"], False)


def test_a_place_older_than_what_is_kept_is_said_to_be_incomplete() -> None:
    history = History(max_lines=2)
    for text in (b"a\n", b"b\n", b"c\n"):
        history.remember(text)
    assert history.since(history.position(0), upto=3) == ([b"b\n", b"c\n"], False)
    assert history.recent(10) == [b"b\n", b"c\n"]


def test_a_bound_by_lines_cuts_into_the_oldest_block() -> None:
    history = History(max_lines=3)
    history.remember(b"a\nb\nc\n")
    history.remember(b"d\n")
    assert history.recent(10) == [b"b\n", b"c\n", b"d\n"]


def test_a_resume_replays_at_most_resume_max_lines() -> None:
    history = History()
    history.remember(b"x\n" * (protocol.RESUME_MAX + 5))
    lines, complete = history.since(history.position(0), upto=1)
    assert (len(lines), complete) == (protocol.RESUME_MAX, False)


def test_the_file_keeps_blocks_and_epoch_for_the_next_start(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "h.db"))
    first = History(store=store)
    store.start()
    first.remember(b"a\n")
    first.remember(b"b\n")
    first.end_turn()
    store.stop()
    store = SqliteStore(str(tmp_path / "h.db"))
    again = History(store=store)
    store.stop()
    assert (again.epoch, again.last_seq) == (first.epoch, 2)
    assert again.recent(5) == [b"a\n", b"b\n"]
    assert again.since(first.position(1), upto=2) == ([b"b\n"], True)
