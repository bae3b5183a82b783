"""Grading of every probe of the conformance matrix against every observation."""

from __future__ import annotations

import pytest

from havedane import probes, wording
from havedane.model import Delivery, Outcome, Session, Test, Tls
from havedane.probes import Expect
from havedane.verdict import Grade, Graded, evaluate

DOMAIN = "x.test"
T0 = 1_700_000_000.0
GRACE = 60.0
ALL = probes.CLASSIC + probes.MATRIX
CLIENT = "192.0.2.1"


def delivery(probe: probes.Probe, tls: bool = True, sni: str | None = "tls-host") -> Delivery:
    name = probe.tls_host(DOMAIN, "abc") if sni == "tls-host" else sni
    return Delivery("abc", probe.name, T0 + 1, CLIENT, "mx.sender.example", "a@sender.example",
                    probe.address("abc", DOMAIN), Tls("TLSv1.3", "X", name) if tls else None)  # fmt: skip


def refusal(probe: probes.Probe, sni: bool = True) -> Session:
    tls = Tls("TLSv1.3", "X", probe.tls_host(DOMAIN, "abc") if sni else None) if probe.starttls else None
    chain = (probe.chain.value if probe.chain and sni else "default") if probe.starttls else None
    return Session(
        id="s", started=T0 + 2, ended=T0 + 3, client_ip=CLIENT, client_port=1, local_ip="198.51.100.1", local_port=25,
        helo="mx.sender.example", starttls=probe.starttls, tls=tls, probe=probe.name, alias=None,
        outcome=Outcome.TLS_THEN_LEFT if probe.starttls else Outcome.LEFT, chain=chain,
    )  # fmt: skip


def control_for(probe: probes.Probe) -> Delivery:
    other = probes.CATALOGUE["dont" if probe.name == "do" else "do"]
    return delivery(other)


def graded(probe: probes.Probe, deliveries: list[Delivery], sessions: list[Session], after_grace: bool) -> Grade:
    now = T0 + 1 + (GRACE + 1 if after_grace else 1)
    v = evaluate(ALL, Test("abc", T0), sessions, deliveries, now, GRACE, DOMAIN)
    assert wording.conformance(v).text
    return v.grades[probe.name].grade


def must_deliver(p: probes.Probe) -> bool:
    return p.expect is Expect.DELIVER


@pytest.mark.parametrize("probe", ALL, ids=lambda p: p.name)
def test_delivered_over_tls_with_sni(probe: probes.Probe) -> None:
    got = graded(probe, [control_for(probe), delivery(probe)], [], after_grace=False)
    assert got == (Grade.PASS if must_deliver(probe) else Grade.FAIL)


@pytest.mark.parametrize("probe", ALL, ids=lambda p: p.name)
def test_delivered_in_plaintext(probe: probes.Probe) -> None:
    got = graded(probe, [control_for(probe), delivery(probe, tls=False)], [], after_grace=False)
    if must_deliver(probe):
        # TLS is mandatory wherever signed TLSA exist, usable or not (RFC 7672 §2.2, §3.1.3).
        assert got == (Grade.FAIL if probe.tls_required else Grade.PASS)
    else:
        assert got == Grade.FAIL


@pytest.mark.parametrize("probe", ALL, ids=lambda p: p.name)
def test_delivered_over_tls_without_sni(probe: probes.Probe) -> None:
    got = graded(probe, [control_for(probe), delivery(probe, sni=None)], [], after_grace=False)
    if probe.chain is not None:
        assert got == Grade.INCONCLUSIVE  # it was never shown the chain this probe is about
    elif probe.mx_first is not None:
        assert got == Grade.INCONCLUSIVE  # which MX host took it is unknown
    else:
        assert got == (Grade.PASS if must_deliver(probe) else Grade.FAIL)


@pytest.mark.parametrize("sni", [True, False], ids=["sni", "no-sni"])
@pytest.mark.parametrize("probe", ALL, ids=lambda p: p.name)
def test_refused(probe: probes.Probe, sni: bool) -> None:
    got = graded(probe, [control_for(probe)], [refusal(probe, sni)], after_grace=False)
    if probe.chain is not None and not sni and probe.starttls:
        assert got == Grade.INCONCLUSIVE
    else:
        assert got == (Grade.FAIL if must_deliver(probe) else Grade.PASS)


@pytest.mark.parametrize("probe", ALL, ids=lambda p: p.name)
def test_nothing_within_grace_is_pending(probe: probes.Probe) -> None:
    assert graded(probe, [control_for(probe)], [], after_grace=False) == Grade.PENDING


@pytest.mark.parametrize("probe", ALL, ids=lambda p: p.name)
def test_nothing_after_grace_with_positive_control(probe: probes.Probe) -> None:
    got = graded(probe, [control_for(probe)], [], after_grace=True)
    assert got == (Grade.FAIL if must_deliver(probe) else Grade.PASS)


@pytest.mark.parametrize("bogus", [p for p in ALL if p.control], ids=lambda p: p.name)
def test_bogus_without_positive_control_is_inconclusive(bogus: probes.Probe) -> None:
    # Only dont arrived: the sender may not do DNSSEC at all, so staying away from
    # bogus proves nothing.
    assert graded(bogus, [delivery(probes.CATALOGUE["dont"])], [], after_grace=True) == Grade.INCONCLUSIVE
    assert graded(bogus, [delivery(probes.CATALOGUE["dont"])], [], after_grace=False) == Grade.PENDING
    assert graded(bogus, [], [], after_grace=True) == Grade.PENDING  # no delivery at all: grace never starts
    assert graded(bogus, [delivery(bogus), delivery(probes.CATALOGUE["dont"])], [], after_grace=True) == Grade.FAIL


def test_conformance_names_each_failure_with_its_consequence() -> None:
    rogue, do = probes.CATALOGUE["ta-rogue"], probes.CATALOGUE["do"]
    v = evaluate(ALL, Test("abc", T0), [], [delivery(do), delivery(rogue)], T0 + 2, GRACE, DOMAIN)
    text = wording.conformance(v).text
    assert "ta-rogue.x.test: delivered." in text
    assert "an attacker on the path can read your mail" in text
    # only what is decided is counted (issue 13): do passed, ta-rogue failed, the rest wait
    assert text.startswith("Conforms on 1 of the 2 probes decided so far.")


def test_validating_sender_passes_everything() -> None:
    """What a DANE-validating Postfix 3.7 does, probe by probe (tests/lab/test_matrix_lab.py
    checks it against a real one)."""
    deliveries, sessions = [], []
    for p in ALL:
        if p.expect is Expect.DELIVER:
            deliveries.append(delivery(p, sni=p.tls_host(DOMAIN, "abc") if p.tls_required else None))
        elif p.expect is Expect.REFUSE:
            sessions.append(refusal(p))
    v = evaluate(ALL, Test("abc", T0), sessions, deliveries, T0 + 1 + GRACE + 1, GRACE, DOMAIN)
    assert {n: g.grade for n, g in v.grades.items()} == {p.name: Grade.PASS for p in ALL}
    assert wording.conformance(v).text == f"Conforms on {len(ALL)} of {len(ALL)} probes."
    assert v.code.value == "validates"


def test_plaintext_failure_explains_plaintext() -> None:
    do = probes.CATALOGUE["do"]
    v = evaluate(ALL, Test("abc", T0), [], [delivery(do, tls=False)], T0 + 2, GRACE, DOMAIN)
    g = v.grades["do"]
    proves = wording.proves(v, "do") or ""
    assert g.grade == Grade.FAIL and g.plaintext and g.exposes
    assert "plaintext" in proves and "could not deliver" not in proves


def failed_here(probe: probes.Probe) -> Session:
    """A session whose handshake failed on our side (e.g. no shared cipher): never shown the certificate."""
    return Session(
        id="f", started=T0 + 2, ended=T0 + 3, client_ip=CLIENT, client_port=1, local_ip="198.51.100.1", local_port=25,
        helo="mx.sender.example", starttls=True, tls=None, probe=probe.name, alias=None,
        outcome=Outcome.TLS_FAILED_HERE, error="SSLError: [SSL: NO_SHARED_CIPHER] no shared cipher",
    )  # fmt: skip


@pytest.mark.parametrize("probe", [p for p in ALL if p.starttls], ids=lambda p: p.name)
def test_failure_on_our_side_is_no_evidence(probe: probes.Probe) -> None:
    """Issue 11: "did not deliver" proves nothing when the sender never saw the certificate."""
    got = graded(probe, [control_for(probe)], [failed_here(probe)], after_grace=True)
    assert got == Grade.INCONCLUSIVE
    assert graded(probe, [control_for(probe)], [failed_here(probe)], after_grace=False) == Grade.PENDING


def test_wrong_failed_on_our_side_does_not_make_validates() -> None:
    do, dont, wrong = (probes.CATALOGUE[n] for n in ("do", "dont", "wrong"))
    v = evaluate(ALL, Test("abc", T0), [failed_here(wrong)], [delivery(do), delivery(dont)], T0 + GRACE + 2, GRACE,
                 DOMAIN)  # fmt: skip
    summary = wording.summary(v).text
    assert v.code.value == "incomplete" and "failed on our side" in summary and "NO_SHARED_CIPHER" in summary
    assert v.grades["wrong"].grade is Grade.INCONCLUSIVE


@pytest.mark.parametrize("sni", ["ABC.EE.X.TEST", "abc.ee.x.test.", "Abc.Ee.X.Test"])
def test_sni_is_compared_as_a_dns_name(sni: str) -> None:
    """Issue 11: the receiver picks the chain case-insensitively; grading follows it."""
    ee = probes.CATALOGUE["ee"]
    assert graded(ee, [control_for(ee), delivery(ee, sni=sni)], [], after_grace=False) == Grade.PASS


def test_grade_follows_the_chain_the_session_recorded() -> None:
    """The chain recorded for the delivering session decides, whatever the SNI's spelling."""
    ee = probes.CATALOGUE["ee"]
    shown = Session(
        id="s1", started=T0, ended=T0 + 1, client_ip=CLIENT, client_port=1, local_ip="198.51.100.1", local_port=25,
        starttls=True, tls=Tls("TLSv1.3", "X", "abc.EE.x.test"), probe="ee", alias="abc",
        rcpts=(ee.address("abc", DOMAIN),), outcome=Outcome.DELIVERED, chain="ee",
    )  # fmt: skip
    d = Delivery("abc", "ee", T0 + 1, CLIENT, "mx", "a@sender.example", ee.address("abc", DOMAIN),
                 Tls("TLSv1.3", "X", "abc.EE.x.test"), session_id="s1")  # fmt: skip
    assert graded(ee, [control_for(ee), d], [shown], after_grace=False) == Grade.PASS
    default = Session(**{**shown.__dict__, "chain": "default"})
    assert graded(ee, [control_for(ee), d], [default], after_grace=False) == Grade.INCONCLUSIVE


# Issue 15's probes, every observation spelled out (not derived from the catalogue): the
# grade and the reason a user reads. ta-notls offers no STARTTLS, so nothing can fail on
# our side there (no handshake), and its refusal is leaving after EHLO.
OBSERVATIONS = ("tls-sni", "tls-no-sni", "plaintext", "refused-sni", "refused-no-sni", "waiting", "nothing", "ours")
NEW_ROWS: dict[str, tuple[tuple[Grade, str] | None, ...]] = {
    "ta-notls": (
        (Grade.FAIL, "delivered"), (Grade.FAIL, "delivered"), (Grade.FAIL, "plaintext"), (Grade.PASS, "refused"),
        (Grade.PASS, "refused"), (Grade.PENDING, "waiting"), (Grade.PASS, "stayed-away"), None,
    ),
    "mixed-ee": (
        (Grade.PASS, "delivered-over-tls"), (Grade.PASS, "delivered-over-tls"), (Grade.FAIL, "plaintext"),
        (Grade.FAIL, "refused"), (Grade.FAIL, "refused"), (Grade.PENDING, "waiting"),
        (Grade.FAIL, "nothing-arrived"), (Grade.INCONCLUSIVE, "failed-here"),
    ),
    "mixed-ta": (
        (Grade.PASS, "delivered-over-tls"), (Grade.PASS, "delivered-over-tls"), (Grade.FAIL, "plaintext"),
        (Grade.FAIL, "refused"), (Grade.FAIL, "refused"), (Grade.PENDING, "waiting"),
        (Grade.FAIL, "nothing-arrived"), (Grade.INCONCLUSIVE, "failed-here"),
    ),
    # Its leaf-only chain is served only for SNI naming the test's host: without SNI the
    # sender saw the default chain, so neither its delivery nor its refusal is evidence.
    "ta-full": (
        (Grade.PASS, "delivered-over-tls"), (Grade.INCONCLUSIVE, "no-sni"), (Grade.FAIL, "plaintext"),
        (Grade.FAIL, "refused"), (Grade.INCONCLUSIVE, "no-sni"), (Grade.PENDING, "waiting"),
        (Grade.FAIL, "nothing-arrived"), (Grade.INCONCLUSIVE, "failed-here"),
    ),
}  # fmt: skip


def observe(probe: probes.Probe, observation: str) -> tuple[list[Delivery], list[Session], bool]:
    """The deliveries and sessions of one observation at `probe` (beside a delivery to the
    control probe, so that the grace period runs), and whether the grace period is over."""
    control = [control_for(probe)]
    return {
        "tls-sni": (control + [delivery(probe)], [], False),
        "tls-no-sni": (control + [delivery(probe, sni=None)], [], False),
        "plaintext": (control + [delivery(probe, tls=False)], [], False),
        "refused-sni": (control, [refusal(probe)], False),
        "refused-no-sni": (control, [refusal(probe, sni=False)], False),
        "waiting": (control, [], False),
        "nothing": (control, [], True),
        "ours": (control, [failed_here(probe)], True),
    }[observation]


@pytest.mark.parametrize(
    ("name", "observation", "want"),
    [(n, o, w) for n, row in NEW_ROWS.items() for o, w in zip(OBSERVATIONS, row, strict=True) if w is not None],
)
def test_issue_15_probes_graded_for_every_observation(name: str, observation: str, want: tuple[Grade, str]) -> None:
    probe = probes.CATALOGUE[name]
    deliveries, sessions, after_grace = observe(probe, observation)
    now = T0 + 1 + (GRACE + 1 if after_grace else 1)
    v = evaluate(ALL, Test("abc", T0), sessions, deliveries, now, GRACE, DOMAIN)
    g = v.grades[name]
    assert (g.grade, g.reason.value) == want
    # A failure that hands mail to an attacker (delivered where TLS or a refusal was due) is a flaw.
    assert g.exposes == (want[1] in ("plaintext", "delivered"))
    if g.grade is Grade.FAIL:
        assert name in wording.conformance(v).text  # the page's table names the row and says why


FALLBACK = [p for p in ALL if p.mx_first is not None]


def at_first(probe: probes.Probe, outcome: Outcome = Outcome.TLS_THEN_LEFT) -> Session:
    """A session at the MX host to skip, named in SNI (tied to no test by name)."""
    first = probe.first_mx_host(DOMAIN)
    return Session(
        id="m", started=T0 + 0.5, ended=T0 + 0.7, client_ip=CLIENT, client_port=1, local_ip="198.51.100.1",
        local_port=25, helo="mx.sender.example", starttls=True, tls=Tls("TLSv1.3", "X", first), probe=probe.name,
        alias=None, outcome=outcome, chain="default",
    )  # fmt: skip


def fallback_grade(
    probe: probes.Probe, deliveries: list[Delivery], sessions: list[Session], after_grace: bool
) -> tuple[Graded, str]:
    now = T0 + 1 + (GRACE + 1 if after_grace else 1)
    v = evaluate(ALL, Test("abc", T0), sessions, [control_for(probe), *deliveries], now, GRACE, DOMAIN)
    return v.grades[probe.name], wording.reason(v, probe.name)


@pytest.mark.parametrize("probe", FALLBACK, ids=lambda p: p.name)
def test_fallback_skips_the_first_mx_then_delivers(probe: probes.Probe) -> None:
    """What a DANE sender does (RFC 7672 §2.2): leaves the host that fails authentication,
    delivers through the next. The refusal at the first host is no refusal of the probe."""
    g, _ = fallback_grade(probe, [delivery(probe)], [at_first(probe)], after_grace=False)
    assert g.grade is Grade.PASS
    g, _ = fallback_grade(probe, [], [at_first(probe)], after_grace=False)
    assert g.grade is Grade.PENDING  # the next MX host may still be tried


@pytest.mark.parametrize("probe", FALLBACK, ids=lambda p: p.name)
def test_fallback_through_the_first_mx_fails(probe: probes.Probe) -> None:
    first = probe.first_mx_host(DOMAIN)
    g, why = fallback_grade(probe, [delivery(probe, sni=first)], [], after_grace=False)
    assert (g.grade, g.exposes) == (Grade.FAIL, True) and f"through {first}" in why


@pytest.mark.parametrize("probe", FALLBACK, ids=lambda p: p.name)
def test_fallback_deferring_the_whole_message_fails(probe: probes.Probe) -> None:
    """A sender that leaves the first MX host and never tries the second: it fails (mail
    waits while a correct MX host is there), but it exposes nothing."""
    g, why = fallback_grade(probe, [], [at_first(probe)], after_grace=True)
    assert (g.grade, g.exposes) == (Grade.FAIL, False) and "never delivered through" in why


@pytest.mark.parametrize("probe", FALLBACK, ids=lambda p: p.name)
def test_fallback_without_sni_is_inconclusive(probe: probes.Probe) -> None:
    """No SNI, one listener address: which MX host took the mail is unknown."""
    g, why = fallback_grade(probe, [delivery(probe, sni=None)], [], after_grace=True)
    assert g.grade is Grade.INCONCLUSIVE and "SNI" in why
    g, _ = fallback_grade(probe, [delivery(probe, tls=False)], [], after_grace=True)
    assert (g.grade, g.exposes) == (Grade.FAIL, True)  # TLS is mandatory at both
