"""Tying a session that sent no MAIL to its test by the host it asked for in SNI.

A DANE sender that refuses our certificate never reaches RCPT, but it asked for the
test's own host in SNI (`<alias>.<probe>.<domain>`: RFC 7672 §8.1, the TLSA base domain).
The receiver sets that alias while the connection is open; here, when the session is
saved, the tie is kept only for a test that exists, is within its retention period and
has room for another session (`[smtp] max_sessions_per_test`, as a RCPT would be
refused). Otherwise the session is saved tied to no test, and a report may still tie
it by client address.
"""

from __future__ import annotations

import dataclasses
import logging

from havedane.config import Config
from havedane.model import Session, Tie
from havedane.quota import Quota
from havedane.store import Store, StoreError

log = logging.getLogger("havedane.receiver")


async def confirm_sni(session: Session, store: Store, quota: Quota, config: Config, now: float) -> Session:
    """The session as it is to be stored: its SNI tie confirmed, or dropped."""
    if session.tied_by is not Tie.SNI or session.alias is None:
        return session
    try:
        test = await store.get_test(session.alias)
        usage = await quota.usage(session.alias) if test is not None else None
    except StoreError as e:
        log.error("session %s: its test not looked up (%s), saved untied", session.id, e)
        return dataclasses.replace(session, alias=None)
    expired = test is not None and test.created < now - config.retention_days * 86400
    if test is None or usage is None or expired or usage.sessions >= config.max_sessions_per_test:
        return dataclasses.replace(session, alias=None)
    usage.sessions += 1  # the session is stored under this test
    return session
