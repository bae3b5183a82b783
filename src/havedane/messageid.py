"""The Message-ID of a received message: the one header the receiver keeps.

The email package's header parser costs 25-60 µs for even a two-line header block
(docs/benchmarks.md "The floor"). When the block is plain, every line a `name: value`
header of printable ASCII with no folding and no bare CR or LF, the answer can be read
directly, and it is what the parser would give (compat32: the first Message-ID, its
value without the blanks after the colon, RFC 5322 §2.2 and §3.6.4). Anything else goes
to the parser.
"""

from __future__ import annotations

import email.parser
import email.policy
import re

from havedane.wiretext import clean as text

HEAD_LIMIT = 16384  # bytes of the header block looked at
# A header line as the email package's feed parser recognises one: a field name of
# printable ASCII other than ":" (RFC 5322 §2.2), then ":".
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")


def message_id(content: bytes) -> str | None:
    """The Message-ID header only; everything else in the message is dropped."""
    head = content.split(b"\r\n\r\n", 1)[0][:HEAD_LIMIT]
    plain, value = _plain(head)
    if not plain:
        value = _parsed(head)
    return text(value)[:256] if value else None


def _plain(head: bytes) -> tuple[bool, str | None]:
    """(whether the block is plain, the value read directly if it is)."""
    unfolded = head.replace(b"\r\n", b"")
    if not head.isascii() or b"\n" in unfolded or b"\r" in unfolded:
        return False, None
    found: str | None = None
    for line in head.split(b"\r\n"):
        match = _FIELD.match(line)
        if match is None:
            return False, None  # folding, a line that is no header, an empty block: the parser decides
        if found is None and match.group()[:-1].lower() == b"message-id":
            found = line[match.end() :].lstrip(b" \t").decode("ascii")
    return True, found


def _parsed(head: bytes) -> str | None:
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        value = headers.get("Message-ID")
    except Exception:  # noqa: BLE001 - hostile headers must never break a delivery
        return None
    return str(value) if value else None
