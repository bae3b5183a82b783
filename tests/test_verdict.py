"""The verdict for every combination of what can happen at do, dont and wrong."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from havedane import probes, wording
from havedane.model import Delivery, Outcome, Session, Test, Tls
from havedane.verdict import Code, Status, evaluate

DOMAIN = "x.test"
T0 = 1_700_000_000.0
GRACE = 60.0
TLS = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", None)

# What can happen at one probe.
NOTHING, OVER_TLS, PLAINTEXT, REFUSED = "nothing", "tls", "plain", "refused"
EVENTS = (NOTHING, OVER_TLS, PLAINTEXT, REFUSED)


def delivery(probe: str, tls: Tls | None, at: float = T0 + 1) -> Delivery:
    return Delivery(
        "abc", probe, at, "192.0.2.1", "mx.sender.example", "a@sender.example", f"abc@{probe}.{DOMAIN}", tls
    )


def refusal(probe: str) -> Session:
    return Session(
        id=f"s-{probe}", started=T0 + 2, ended=T0 + 3, client_ip="192.0.2.1", client_port=1, local_ip="198.51.100.1",
        local_port=25, helo="mx.sender.example", starttls=True, tls=Tls("TLSv1.3", "X", f"{probe}.{DOMAIN}"),
        probe=probe, alias=None, outcome=Outcome.TLS_THEN_LEFT,
    )  # fmt: skip


def judge(events: dict[str, str], now: float) -> tuple[Code, dict[str, Status], str]:
    deliveries, sessions = [], []
    for probe, event in events.items():
        if event == OVER_TLS:
            deliveries.append(delivery(probe, TLS))
        elif event == PLAINTEXT:
            deliveries.append(delivery(probe, None))
        elif event == REFUSED:
            sessions.append(refusal(probe))
    v = evaluate(probes.CLASSIC, Test("abc", T0), sessions, deliveries, now, GRACE, DOMAIN)
    return v.code, {n: r.status for n, r in v.probes.items()}, wording.summary(v).text


def expected(do: str, dont: str, wrong: str, grace_over: bool) -> Code:
    """The README's rules ("How the verdict is reached"), in order of precedence."""
    anything_delivered = OVER_TLS in (do, dont, wrong) or PLAINTEXT in (do, dont, wrong)
    if do == PLAINTEXT:
        return Code.NO_TLS
    if wrong in (OVER_TLS, PLAINTEXT):
        return Code.DOES_NOT_VALIDATE
    delivered = {do, dont} <= {OVER_TLS, PLAINTEXT} and do == OVER_TLS
    if delivered and (wrong == REFUSED or grace_over):
        return Code.VALIDATES
    if grace_over and anything_delivered:
        return Code.INCOMPLETE
    return Code.PENDING


@pytest.mark.parametrize("grace_over", [False, True], ids=["in-grace", "after-grace"])
@pytest.mark.parametrize("do,dont,wrong", list(itertools.product(EVENTS, repeat=3)))
def test_every_combination(do: str, dont: str, wrong: str, grace_over: bool) -> None:
    now = T0 + 1 + (GRACE + 1 if grace_over else 1)
    code, statuses, summary = judge({"do": do, "dont": dont, "wrong": wrong}, now)
    assert code == expected(do, dont, wrong, grace_over)
    for probe, event in (("do", do), ("dont", dont), ("wrong", wrong)):
        if event in (OVER_TLS, PLAINTEXT):
            assert statuses[probe] == Status.DELIVERED
        elif event == REFUSED:
            assert statuses[probe] == Status.REFUSED
        elif grace_over and (OVER_TLS in (do, dont, wrong) or PLAINTEXT in (do, dont, wrong)):
            assert statuses[probe] == Status.NOT_DELIVERED
        else:
            assert statuses[probe] == Status.PENDING
    assert summary and "None" not in summary


def test_validating_sender_words() -> None:
    code, _, summary = judge({"do": OVER_TLS, "dont": OVER_TLS, "wrong": REFUSED}, T0 + 5)
    assert code == Code.VALIDATES
    assert "192.0.2.1" in summary and "TLSv1.3" in summary
    assert "tied to this test by its client address" in summary
    assert "wrong.x.test" in summary


def test_non_validating_sender_words() -> None:
    code, _, summary = judge({"do": OVER_TLS, "dont": OVER_TLS, "wrong": OVER_TLS}, T0 + 5)
    assert code == Code.DOES_NOT_VALIDATE
    assert "delivered to abc.wrong.x.test, where a DANE-validating server must not deliver" in summary


def test_nothing_yet_is_pending_forever() -> None:
    code, statuses, summary = judge({}, T0 + 10 * GRACE)
    assert code == Code.PENDING and set(statuses.values()) == {Status.PENDING}
    assert "nothing has arrived" in summary


def test_grace_counts_from_the_first_delivery() -> None:
    events = {"do": OVER_TLS, "dont": OVER_TLS}
    assert judge(events, T0 + 1 + GRACE - 0.001)[0] == Code.PENDING
    assert judge(events, T0 + 1 + GRACE)[0] == Code.VALIDATES


def test_refused_session_with_mail_is_not_a_refusal() -> None:
    s = dataclasses.replace(refusal("wrong"), mail_from="a@sender.example")
    v = evaluate(probes.CLASSIC, Test("abc", T0), [s], [delivery("do", TLS)], T0 + 2, GRACE, DOMAIN)
    assert v.probes["wrong"].status == Status.PENDING


def test_staying_away_from_wrong_is_said_plainly_with_what_it_does_not_prove() -> None:
    code, statuses, summary = judge({"do": OVER_TLS, "dont": OVER_TLS}, T0 + 1 + GRACE)
    assert code == Code.VALIDATES and statuses["wrong"] == Status.NOT_DELIVERED
    said = "Nothing arrived for abc.wrong.x.test within 60 seconds of the first delivery, and nothing connected"
    assert said in summary
    assert "does not show that your server checked our certificate" in summary
    assert "It did not deliver where the TLSA records do not match" not in summary
