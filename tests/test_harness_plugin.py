"""The pytest plugin: users write multi-process chat tests with two fixtures."""

from __future__ import annotations

import pytest

from harness.pytest_plugin import Room


def test_two_clients_chat_through_a_real_server(chatbox_room: Room) -> None:
    alice, bob = chatbox_room.join("alice", "bob")
    hi = chatbox_room.say(alice, "hello bob")
    assert chatbox_room.heard(bob, hi)
    back = chatbox_room.say(bob, "hi alice")
    assert chatbox_room.heard(alice, back)
    chatbox_room.expect("bob", ["alice"])
    chatbox_room.expect("alice", ["bob"])
    chatbox_room.assert_delivered()


def test_assert_delivered_reports_a_message_nobody_could_hear(chatbox_room: Room) -> None:
    (alice,) = chatbox_room.join("alice")
    bob = chatbox_room.party("bob")
    chatbox_room.context.sync(bob, [alice])
    lone = chatbox_room.party("carol")  # never joins the room in time to hear anything
    lone.kill()
    chatbox_room.say(alice, "are you there carol")
    chatbox_room.expect("carol", ["alice"])
    with pytest.raises(AssertionError, match="no loss"):
        chatbox_room.assert_delivered()


def test_server_fixture_gives_the_address_clients_use(chatbox_server: object) -> None:
    import socket

    from harness.target import Target

    assert isinstance(chatbox_server, Target)
    with socket.create_connection(
        (chatbox_server.connect_address, chatbox_server.client_port), timeout=5
    ) as s:
        assert s.recv(100).startswith(b"* welcome")
