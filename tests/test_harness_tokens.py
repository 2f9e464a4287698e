"""Tokens are found whatever a server wraps them in, and damage is never mistaken for a token."""

from __future__ import annotations

import random

import pytest

from harness.tokens import HELLO, Token, clean_payload, make, random_payload, scan

TOKEN = make("p1", 7, "hello world")

# A line as various servers would relay it: the token must be found in each.
DECORATED = [
    TOKEN.encode(),
    "<alice> " + TOKEN.encode(),
    "<user5> " + TOKEN.encode(),
    "[12:00:01] \x1b[1m<bob>\x1b[0m " + TOKEN.encode() + " (edited)",
    "[private] <p1> " + TOKEN.encode(),
]


@pytest.mark.parametrize("line", DECORATED)
def test_scan_finds_token_regardless_of_decoration(line: str) -> None:
    found = scan(line)
    assert found.tokens == [TOKEN]
    assert found.damage == []


def test_scan_finds_several_tokens_in_one_line_in_order() -> None:
    a, b = make("p1", 1, "a"), make("p2", 1, "b")
    assert scan(f"<x> {a.encode()}<y> {b.encode()}").tokens == [a, b]


def test_token_roundtrip_keeps_sender_seq_kind_payload() -> None:
    tok = make("p2", 12, "café naïve 日本", HELLO)
    assert scan(tok.encode()).tokens == [tok]
    assert tok.key == ("p2", 12)


def test_altered_payload_is_damage_not_a_token() -> None:
    line = TOKEN.encode().replace("hello", "jello")
    found = scan(line)
    assert found.tokens == []
    assert [d.reason for d in found.damage] == ["checksum mismatch"]
    assert (found.damage[0].sender, found.damage[0].seq) == ("p1", 7)


def test_token_cut_in_two_is_reported_with_its_sender() -> None:
    text = TOKEN.encode()
    spliced = "<u1> " + text[:15] + "<u1> " + text[15:]
    found = scan(spliced)
    assert found.tokens == []
    assert found.damage and found.damage[0].sender == "p1"


def test_lone_tail_is_attributed_through_known_checksums() -> None:
    tail = TOKEN.encode()[-12:]
    found = scan("<u1> " + tail, {TOKEN.crc: TOKEN.key})
    assert [(d.sender, d.seq) for d in found.damage] == [("p1", 7)]


OTHER = make("p2", 3, "glued on")


@pytest.mark.parametrize(
    ("line", "sender"),
    [
        ("<u1> " + TOKEN.encode() + OTHER.encode()[:16], "p2"),  # a head after a token
        ("<u1> " + OTHER.encode()[-12:] + " " + TOKEN.encode(), "p2"),  # a tail before one
        # A tail whose "~" is the whole token's first character.
        ("<u1> |" + OTHER.crc + TOKEN.encode(), "p2"),
    ],
)
def test_a_piece_of_a_token_beside_a_whole_one_is_damage(line: str, sender: str) -> None:
    found = scan(line, {OTHER.crc: OTHER.key})
    assert found.tokens == [TOKEN]
    assert [d.sender for d in found.damage] == [sender]


def test_plain_chat_text_is_neither_token_nor_damage() -> None:
    found = scan("<alice> the cbx is great | really ~ yes")
    assert found.tokens == []
    # "cbx" alone is not a token head: only "cbx|" is.
    assert found.damage == []


@pytest.mark.parametrize("bad", ["a|b", "a~b", "line\nbreak", "cr\r"])
def test_make_refuses_framing_characters(bad: str) -> None:
    with pytest.raises(ValueError):
        make("p1", 1, bad)
    assert scan(make("p1", 1, clean_payload(bad)).encode()).tokens


def test_random_payloads_are_reproducible_from_the_seed() -> None:
    a = [random_payload(random.Random(5)) for _ in range(3)]
    b = [random_payload(random.Random(5)) for _ in range(3)]
    assert a == b
    assert all(isinstance(Token("p", 1, "m", p).encode(), str) for p in a)
