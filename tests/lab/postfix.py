"""A real Postfix instance of the lab's own: its own config and queue directories,
its master run in the foreground (so its PID is ours to stop), its log in a file."""

from __future__ import annotations

import os
import pwd
import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from .netns import Netns, stop, wait_until

MASTER = "/usr/lib/postfix/sbin/master"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {name}.sender.test
mydomain = sender.test
myorigin = $myhostname
mydestination =
relayhost =
local_transport = error:no local delivery in the lab
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = no
# Pitfall: inet_interfaces must name configured addresses; the smtpd service is
# pinned to {address}:25 in master.cf instead.
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
# No syslog in the lab: Postfix logs to a file through its postlog service.
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
smtp_bind_address = {address}
smtp_host_lookup = dns
smtp_address_preference = ipv4
smtp_dns_support_level = {dns_support}
smtp_tls_security_level = {tls_level}
smtp_tls_loglevel = 1
smtp_tls_session_cache_database =
# The default probe asks for the root's NS, which the lab resolver refuses.
dnssec_probe = ns:{zone}
smtp_connect_timeout = 5s
# One attempt per test: a retry would be one more session at the receiver (the
# tests delete what is left in the queue).
queue_run_delay = 1h
minimal_backoff_time = 1h
maximal_backoff_time = 1h
delay_warning_time = 0
"""

MASTER_CF = """\
{address}:25 inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

STATUS = re.compile(r"postfix/\w+\[\d+\]: (?P<qid>[0-9A-Za-z]+): to=<(?P<rcpt>[^>]+)>, (?:orig_to=<[^>]*>, )?"
                    r"(?:relay=(?P<relay>[^,]+), )?.*?dsn=(?P<dsn>[\d.]+), "
                    r"status=(?P<status>\w+) \((?P<reason>.*)\)$", re.M)  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    rcpt: str
    dsn: str
    status: str
    reason: str
    relay: str = ""  # host[address]:port it talked to, or "none" (never connected)


@dataclass
class Sent:
    """One message injected into the instance, and what became of each recipient."""

    queue_id: str
    log_offset: int
    outcomes: dict[str, Outcome] = field(default_factory=dict)


class Postfix:
    def __init__(self, ns: Netns, directory: Path, name: str, address: str, zone: str, dane: bool) -> None:
        self.ns, self.dir, self.name, self.address, self.zone, self.dane = ns, directory, name, address, zone, dane
        self.log_file = directory / "maillog"

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Daemons run as `postfix` and must reach their queue through every parent.
        os.chmod(self.dir, 0o755)
        # The queue belongs to root (Postfix makes its subdirectories), the data
        # directory to the mail owner.
        (self.dir / "spool").mkdir(mode=0o755, exist_ok=True)
        (self.dir / "data").mkdir(mode=0o700, exist_ok=True)
        owner = pwd.getpwnam("postfix")
        os.chown(self.dir / "data", owner.pw_uid, owner.pw_gid)
        main = MAIN_CF.format(
            dir=self.dir,
            name=self.name,
            address=self.address,
            zone=self.zone,
            dns_support="dnssec" if self.dane else "enabled",
            tls_level="dane" if self.dane else "may",
        )
        (self.dir / "main.cf").write_text(main)
        (self.dir / "master.cf").write_text(MASTER_CF.format(address=self.address))
        # Postfix waits until its config files are over a second old: backdate them.
        past = time.time() - 10
        for f in ("main.cf", "master.cf"):
            os.utime(self.dir / f, (past, past))
        self.log_file.touch()

    def command(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """A postfix command for this instance. `script` gives it a terminal, the only
        place its fatal errors go when there is no syslog."""
        line = " ".join(argv)
        return self.ns.run(["script", "-qec", line, "/dev/null"], timeout=timeout, env={"MAIL_CONFIG": str(self.dir)})

    @contextmanager
    def running(self) -> Iterator[Postfix]:
        self.write_config()
        self.command("postfix", "-c", str(self.dir), "check")
        proc = self.ns.popen([MASTER, "-c", str(self.dir), "-s"], self.dir / "master.log")
        try:
            wait_until(lambda: self._accepts(proc), 15, f"postfix {self.name} listening on {self.address}:25")
            yield self
        finally:
            stop(proc, timeout=10)

    def _accepts(self, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            master = (self.dir / "master.log").read_text()
            raise RuntimeError(f"lab: postfix {self.name} exited {proc.returncode}:\n{master}{self.log()[-2000:]}")

        def banner() -> bool:
            try:
                with socket.create_connection((self.address, 25), timeout=1) as s:
                    return s.recv(64).startswith(b"220")
            except OSError:
                return False

        return self.ns.call(banner)

    def log(self, offset: int = 0) -> str:
        with open(self.log_file, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")

    def send(self, sender: str, recipients: list[str], subject: str) -> Sent:
        """Submit one message over SMTP to the instance's smtpd, as a user's client would."""
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = sender, ", ".join(recipients), subject
        msg.set_content("A test message from the havedane lab.\n")
        offset = self.log_file.stat().st_size

        def submit() -> str:
            with smtplib.SMTP(self.address, 25, local_hostname="client.sender.test", timeout=10) as smtp:
                smtp.ehlo()
                code, reply = smtp.mail(sender)
                assert code == 250, reply
                for rcpt in recipients:
                    code, reply = smtp.rcpt(rcpt)
                    assert code == 250, (rcpt, reply)
                code, reply = smtp.data(msg.as_bytes())
                assert code == 250, reply
                return reply.decode()

        reply = self.ns.call(submit)
        found = re.search(r"queued as (\w+)", reply)
        assert found, reply
        return Sent(found.group(1), offset)

    def wait_outcomes(self, sent: Sent, count: int, timeout: float = 30) -> dict[str, Outcome]:
        """Wait for a final or deferral status line for `count` recipients of `sent`."""

        def collect() -> dict[str, Outcome] | None:
            for m in STATUS.finditer(self.log(sent.log_offset)):
                if m["qid"] == sent.queue_id:
                    sent.outcomes[m["rcpt"]] = Outcome(m["rcpt"], m["dsn"], m["status"], m["reason"], m["relay"] or "")
            return sent.outcomes if len(sent.outcomes) >= count else None

        return wait_until(collect, timeout, f"postfix {self.name}: status of {count} recipients of {sent.queue_id}")

    def delete_deferred(self) -> None:
        """A deferred message would be retried, each retry another session at the receiver."""
        self.command("postsuper", "-c", str(self.dir), "-d", "ALL", "deferred")

    def finger(self, host: str, resolv_conf: Path | None = None) -> str:
        """posttls-finger at level dane with this instance's settings: what it logs.

        With `resolv_conf`, it asks that resolver instead of the lab's: a private mount
        namespace gets that file bind-mounted over /etc/resolv.conf, as `ip netns exec`
        itself does for the lab's."""
        argv = ["posttls-finger", "-c", "-l", "dane", "-L", "summary,certmatch", "-t", "5", "-T", "5", host]
        if resolv_conf is not None:
            script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(resolv_conf), *argv]
        proc = self.ns.run(argv, env={"MAIL_CONFIG": str(self.dir)}, timeout=30, check=False)
        return proc.stdout + proc.stderr
