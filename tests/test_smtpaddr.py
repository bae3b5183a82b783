"""The plain-path shortcut reads MAIL FROM / RCPT TO exactly as aiosmtpd's parser does."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP

from havedane.smtpaddr import plain_path

PATHS = [
    "<a@b.c>",
    "<a@b.c> SIZE=10 BODY=8BITMIME",
    "<a@b.c>\tSMTPUTF8",
    "<a@b.c>x",
    "<a.b+c@d-e.f>",
    "<Abc!#$%&'*+-/=?^_`{|}~@Example.TEST>",
    "<a@b.c> (comment) SIZE=1",
    "<a@b.c>(comment)",
    "<a@b.c.>",
    "<a..b@c>",
    "<.a@c>",
    '<"a b"@c>',
    "<a@[1.2.3.4]>",
    "< a@b>",
    "<a@b >",
    "<a(c)@b>",
    "<@x:a@b>",
    "<a@b",
    "<>",
    "<é@b.c>",
    "a@b.c",
    "<a@b@c>",
    "<a b@c>",
]


class Handler:
    pass


@pytest.mark.parametrize("arg", PATHS)
def test_a_plain_path_is_read_as_aiosmtpd_reads_it(arg: str) -> None:
    plain = plain_path(arg)
    if plain is not None:
        assert plain == SMTP(Handler())._getaddr(arg)


def test_the_usual_paths_take_the_shortcut() -> None:
    assert plain_path("<bench@do.x.test>") == ("bench@do.x.test", "")
    assert plain_path("<a.b@c.d> SIZE=100") == ("a.b@c.d", "SIZE=100")
    for arg in ('<"a b"@c>', "<a@[1.2.3.4]>", "<a(c)@b>", "<>", "<é@b.c>", "<a@b.c> (x)"):
        assert plain_path(arg) is None
