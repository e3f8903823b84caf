"""Review: the email channel refuses every line separator in a header as the guest's error.

Python's email package treats \\v, \\f, \\x1c-\\x1e, \\x85, U+2028 and U+2029 as line breaks and
raised ValueError on them, which reached the guest as "internal error". A real SMTP server on
loopback receives what is sent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from trapeze.errors import InvalidArgument
from trapeze.monitor.channels import SmtpEmail
from trapeze.policy.specs import ChannelSpec

SEPARATORS = ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\0"]


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture(scope="module")
def mail() -> Iterator[tuple[SmtpEmail, _Inbox]]:
    inbox = _Inbox()
    probe = socket.socket()  # aiosmtpd cannot bind port 0: pick a free port
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    channel = SmtpEmail(ChannelSpec("email", "smtp", "public", host="127.0.0.1", port=port,
                                    sender="review@test.invalid", timeout=5))
    yield channel, inbox
    channel.close()
    controller.stop()


@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(c):04X}" for c in SEPARATORS])
def test_line_separators_in_subject_or_recipient_are_a_clear_error(
        mail: tuple[SmtpEmail, _Inbox], sep: str) -> None:
    channel, inbox = mail
    before = len(inbox.messages)
    with pytest.raises(InvalidArgument, match="'subject' must be a string on one line"):
        channel.send({"to": "a@test.invalid", "subject": f"hi{sep}Bcc: evil@test.invalid",
                      "text": "body"})
    with pytest.raises(InvalidArgument, match="one email address on one line"):
        channel.send({"to": f"a@test.invalid{sep}Bcc: evil@test.invalid", "subject": "hi",
                      "text": "body"})
    assert len(inbox.messages) == before
    # Control: the same message without the separator is delivered.
    assert channel.send({"to": "a@test.invalid", "subject": "hi", "text": "body"})["sent"] == 1
    assert len(inbox.messages) == before + 1


def test_text_that_cannot_be_encoded_is_a_clear_error(mail: tuple[SmtpEmail, _Inbox]) -> None:
    channel, inbox = mail
    before = len(inbox.messages)
    with pytest.raises(InvalidArgument, match="cannot be sent as email"):
        channel.send({"to": "a@test.invalid", "subject": "hi", "text": "lone \udc80 surrogate"})
    assert len(inbox.messages) == before
