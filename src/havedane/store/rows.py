"""Rows of the sessions and deliveries tables, read back into the store's values.

Both stores select the same columns in the same order (SESSION_COLUMNS,
DELIVERY_COLUMNS); only how a list of recipients is stored differs (JSON text in
SQLite, text[] in PostgreSQL), so the caller decodes that one column.
"""

from __future__ import annotations

from typing import Any

from havedane.model import Delivery, Outcome, Session, Tls

SESSION_COLUMNS = (
    "id, started, ended, client_ip, client_port, local_ip, local_port, helo, starttls, tls_version, "
    "tls_cipher, sni, mail_from, rcpts, probe, alias, outcome, error, chain"
)
DELIVERY_COLUMNS = (
    "alias, probe, received_at, client_ip, helo, mail_from, rcpt, tls_version, tls_cipher, sni, "
    "session_id, size, message_id"
)


def bounded_deliveries(mark: str) -> str:
    """Of one test's deliveries, per probe: the newest (parameter 2) and the first of each
    kind (plaintext, or TLS with a given SNI; parameter 3 kinds at most), oldest first.
    What the verdict rests on (the first delivery, any in plaintext, the SNI) stays in."""
    return f"""
    SELECT id, {DELIVERY_COLUMNS} FROM (
        SELECT *, SUM(CASE WHEN first_of_kind = 1 THEN 1 ELSE 0 END) OVER (PARTITION BY probe ORDER BY id) AS kinds
        FROM (
            SELECT id, {DELIVERY_COLUMNS},
                ROW_NUMBER() OVER (PARTITION BY probe ORDER BY id DESC) AS newest,
                ROW_NUMBER() OVER (PARTITION BY probe, tls_version IS NULL, sni ORDER BY id) AS first_of_kind
            FROM deliveries WHERE alias = {mark}
        ) AS ranked
    ) AS counted
    WHERE newest <= {mark} OR (first_of_kind = 1 AND kinds <= {mark})
    ORDER BY id"""


def merge_sessions(newest: list[Session], without_mail: list[Session]) -> list[Session]:
    """The two halves of a bounded read of sessions, oldest first, each once."""
    by_id = {s.id: s for s in without_mail + newest}
    return sorted(by_id.values(), key=lambda s: (s.started, s.id))


def tls_from(version: str | None, cipher: str | None, sni: str | None) -> Tls | None:
    return Tls(version, cipher or "", sni) if version else None


def session_from_row(row: tuple[Any, ...], rcpts: list[str]) -> Session:
    """A session from a row of SESSION_COLUMNS; `rcpts` is column 13, decoded."""
    return Session(
        id=row[0],
        started=row[1],
        ended=row[2],
        client_ip=row[3],
        client_port=row[4],
        local_ip=row[5],
        local_port=row[6],
        helo=row[7],
        starttls=bool(row[8]),
        tls=tls_from(row[9], row[10], row[11]),
        mail_from=row[12],
        rcpts=tuple(rcpts),
        probe=row[14],
        alias=row[15],
        outcome=Outcome(row[16]),
        error=row[17],
        chain=row[18],
    )


def delivery_from_row(row: tuple[Any, ...]) -> Delivery:
    """A delivery from a row of `id, ` + DELIVERY_COLUMNS."""
    return Delivery(
        id=row[0],
        alias=row[1],
        probe=row[2],
        received_at=row[3],
        client_ip=row[4],
        helo=row[5],
        mail_from=row[6],
        rcpt=row[7],
        tls=tls_from(row[8], row[9], row[10]),
        session_id=row[11],
        size=row[12],
        message_id=row[13],
    )
