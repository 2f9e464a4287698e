"""Tab completion's knowledge of names, learned from the lines the server sends."""

from __future__ import annotations

import pytest

from chatbox.client.completion import Completer

# (lines received, names offered afterwards)
LEARNING = [
    (["* welcome guest3; also here: alice, bob"], ["alice", "bob"]),
    (["* welcome guest1; nobody else is here yet"], []),
    (["* welcome me; also here: alice", "* carol joined"], ["alice", "carol"]),
    # Coalesced notices of a connection storm: the named ones are learned.
    (["* bo, cy, di and 37 others joined"], ["bo", "cy", "di"]),
    (["* welcome me; also here: a, b, c", "* a and c left (connection lost)"], ["b"]),
    (["* welcome me; also here: alice", "* alice left (quit)"], []),
    (["* welcome me; also here: alice", "* alice is now known as alicia"], ["alicia"]),
    (["* welcome me; also here: alice", "* here (3): me, alice, dave"], ["alice", "dave"]),
    (["<zed> hi", "[private] <yan> psst"], ["yan", "zed"]),
    (["* welcome guest1; also here: x", "* you are now known as x2"], ["x"]),
    (["<Alice> hi", "<alice> hi again"], ["alice"]),
    (["* alice waves", "! name 'bob' is taken"], []),
    # An action names its author; an imitated leave ("/me left") removes nobody.
    (["* welcome me; also here: bo", "* <amy> waves", "* <bo> left (quit)"], ["amy", "bo"]),
]


@pytest.mark.parametrize(("lines", "names"), LEARNING)
def test_Completer_learns_names_from_server_lines(lines: list[str], names: list[str]) -> None:
    completer = Completer()
    for line in lines:
        completer.learn(line)
    assert completer.names() == names


CANDIDATES = [
    ("/w", "/w", ["/who"]),
    ("/M", "/M", ["/me", "/msg"]),
    ("/msg al", "al", ["alice", "Alfred"]),
    ("hello AL", "AL", ["alice", "Alfred"]),
    ("/msg z", "z", []),
    ("say /w", "/w", []),
]


@pytest.mark.parametrize(("line", "word", "expected"), CANDIDATES)
def test_Completer_offers_commands_first_then_names(
    line: str, word: str, expected: list[str]
) -> None:
    completer = Completer()
    completer.learn("* welcome me; also here: alice, Alfred, bob")
    assert sorted(completer.candidates(line, word)) == sorted(expected)
