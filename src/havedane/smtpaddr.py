"""The path of MAIL FROM and RCPT TO, read without the email package when it is plain.

aiosmtpd 1.4.6 reads every path with the email package's header parser (`get_angle_addr`),
which builds a token tree for RFC 5322's whole grammar: about 40-90 µs per address, four
times a message, a tenth of a bare aiosmtpd's CPU per delivery (py-spy, docs/benchmarks.md
"The floor"). Nearly every path a sender gives is `<local@domain>` with both sides plain
dot-atoms (RFC 5321 §4.1.2: Dot-string "@" Domain); for those the answer is the text
itself. Anything else (quoted local parts, address literals, comments, source routes,
non-ASCII, null paths) goes to aiosmtpd's reading, unchanged.
"""

from __future__ import annotations

import re

# RFC 5322 §3.2.3 atext; dot-atom-text = 1*atext *("." 1*atext)
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
# The parser also takes the blanks after ">" (CFWS): the parameters follow without them.
_PLAIN = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>[ \t]*")


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) of `<local@domain> params` when both sides are plain
    dot-atoms, as aiosmtpd's `_getaddr` would read it; None when it needs the parser."""
    match = _PLAIN.match(arg)
    if match is None:
        return None
    rest = arg[match.end() :]
    if rest.startswith("("):  # a comment: the parser would skip it
        return None
    return match.group(1), rest
