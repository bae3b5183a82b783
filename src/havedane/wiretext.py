"""Text from the wire as text every part can hold: the one place it is cleaned.

SMTP is 8-bit: a client may send bytes that are not UTF-8 (RFC 5321 §2.4 asks for
US-ASCII, RFC 6531 allows UTF-8, nothing stops the rest). aiosmtpd, and Python for
the arguments Postfix passes to `havedane deliver`, keep such bytes as lone
surrogates (surrogateescape, PEP 383), which neither SQLite, PostgreSQL, JSON nor an
SMTP reply can encode. NUL is legal in SMTP text but not in PostgreSQL's text type.
The receiver, the Postfix bridge and both store backends clean through here, so the
same input is the same stored value everywhere.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def clean(value: str) -> str:
    """`value` as valid Unicode without NUL: a byte that is not UTF-8 (a surrogate
    escape), a surrogate that stands for no byte and NUL each become U+FFFD."""
    if value.isascii() and "\x00" not in value:  # the usual case, at no cost
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate outside U+DC80..U+DCFF: no byte it stands for
        raw = value.encode("utf-8", "surrogatepass")  # its three bytes, each invalid UTF-8
    return raw.decode("utf-8", "replace").replace("\x00", REPLACEMENT)


def clean_optional(value: str | None) -> str | None:
    return None if value is None else clean(value)


def decode(raw: bytes) -> str:
    """Bytes from the wire (a header line) as clean text."""
    return raw.decode("utf-8", "replace").replace("\x00", REPLACEMENT)
