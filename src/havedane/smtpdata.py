"""Reading the text of a message after DATA (RFC 5321 §4.1.1.4) in memory near its size.

aiosmtpd 1.4.6's `SMTP.smtp_DATA` keeps every line as a bytearray of its own in a list
until the final dot: a line costs ~88 octets of Python objects, so 1 MiB of blank lines
cost ~44 MiB per connection. This reads exactly as it does (line by line up to CRLF
from the same StreamReader, whose limit is `line_length_limit`) and keeps the same
answers, but appends to one bytearray:

- only CRLF . CRLF ends the text (RFC 5321 §4.1.1.4): a "." line after a bare LF or CR,
  or the tail of an overlong line, does not (SMTP smuggling);
- a line longer than `line_limit` octets with its CRLF (RFC 5321 §4.5.3.1.6, 1000, plus
  one for the transparent dot) makes it TOO_LONG (500), more than `size_limit` octets in
  all TOO_MUCH (552); either way the text is read to its end before the answer
  (RFC 5321 §4.2.5), and dropped as soon as it is known to be refused;
- a leading dot is removed from each line (transparency, RFC 5321 §4.5.2).
"""

from __future__ import annotations

import asyncio
import enum


class Text(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too-long"  # 500 Line too long
    TOO_MUCH = "too-much"  # 552 Too much mail data


async def read_text(reader: asyncio.StreamReader, size_limit: int | None, line_limit: int) -> tuple[Text, bytes]:
    """Read up to and including the line "." and return (state, the unstuffed text);
    the text is empty unless the state is NOMINAL."""
    text = bytearray()
    state = Text.NOMINAL
    size = 0  # octets of text read, as sent (before unstuffing, without the final ".")
    partial = 0  # octets of the current line read so far, when it outgrew the reader's limit
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as e:
            # No CRLF within the reader's limit: the line is too long. Take what was
            # looked at and go on reading to the end of the text.
            if state is Text.NOMINAL:
                state = Text.TOO_LONG
            line = await reader.read(e.consumed)
        if not partial and line == b".\r\n":
            break
        size += len(line)
        if state is Text.NOMINAL and size_limit and size > size_limit:
            state = Text.TOO_MUCH
        if line.endswith(b"\r\n"):
            if state is Text.NOMINAL and partial + len(line) > line_limit:
                state = Text.TOO_LONG
            if state is Text.NOMINAL:
                text += memoryview(line)[1:] if line.startswith(b".") else line
            partial = 0
        else:
            partial += len(line)
        if state is not Text.NOMINAL and text:
            text.clear()  # refused: nothing more is kept
    return state, bytes(text)
