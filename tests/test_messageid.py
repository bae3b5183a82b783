"""The Message-ID read directly from a plain header block is the one the email parser reads."""

from __future__ import annotations

import email.parser
import email.policy

import pytest

from havedane.messageid import message_id
from havedane.wiretext import clean


def parser_reads(content: bytes) -> str | None:
    """What the receiver kept before the shortcut: the email package's reading (compat32)."""
    head = content.split(b"\r\n\r\n", 1)[0][:16384]
    value = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head).get("Message-ID")
    return clean(str(value))[:256] if value else None


HEADS = [
    b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody",
    b"Message-Id:<a@b>\r\n\r\n",
    b"MESSAGE-ID: \t <a@b> \r\nMessage-ID: <second@b>\r\n\r\n",
    b"Subject: x\r\n\r\nMessage-ID: <in-body@b>\r\n",
    b"Message-ID:\r\n <folded@b>\r\n\r\n",
    b"Subject: x\r\n folded\r\nMessage-ID: <a@b>\r\n\r\n",
    b"From sender Mon Jan  1\r\nMessage-ID: <a@b>\r\n\r\n",
    b"not a header\r\nMessage-ID: <a@b>\r\n\r\n",
    b"Message-ID: <a@b>\nSubject: bare LF\r\n\r\n",
    b"Message-ID: <a@b>\rSubject: bare CR\r\n\r\n",
    b"Message-ID: <\xc3\xa9@b>\r\n\r\n",
    b"Message-ID: <\xff@b>\r\n\r\n",
    b"Message-ID:\r\n\r\n",
    b"Message-ID: \x00<a@b>\r\n\r\n",
    b"\r\n\r\nMessage-ID: <a@b>",
    b"",
    b"Message-ID: <" + b"x" * 300 + b"@b>\r\n\r\n",
    b"Subject: " + b"y" * 20000 + b"\r\nMessage-ID: <a@b>\r\n\r\n",
    b"Message-ID : <space-before-colon@b>\r\n\r\n",
    b"Subject: x\r\nMessage-ID: <no-blank-line@b>",
]


@pytest.mark.parametrize("content", HEADS)
def test_the_message_id_is_the_one_the_email_parser_reads(content: bytes) -> None:
    assert message_id(content) == parser_reads(content)


def test_a_plain_message_id_is_read() -> None:
    assert message_id(b"Subject: x\r\nMessage-ID: <b@bench.example>\r\n\r\nhello\r\n") == "<b@bench.example>"
