"""A network namespace of the lab's own, and ways to act inside it.

`ip netns exec` execs the command after entering the namespace, so the PID that
Popen returns is the server's own: teardown signals exactly what it started.
The test process itself stays outside; its sockets into the lab (HTTP to the
web app, SMTP to a Postfix) are made by one worker thread that has entered the
namespace with setns(2), which moves only the calling thread.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; every wait in the lab is bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"lab: {what} not within {timeout:g} s")
        time.sleep(interval)


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Netns:
    def __init__(self, prefix: str = "havedane-lab") -> None:
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self.etc = Path("/etc/netns") / self.name
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    def create(self, resolver: str) -> None:
        """The namespace with loopback up, and its own resolv.conf (bind-mounted by
        `ip netns exec` over /etc/resolv.conf), so no lab process sees the host's DNS.
        `trust-ad`: glibc passes the resolver's AD bit on only when told to."""
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=10)
        self.run(["ip", "link", "set", "lo", "up"])
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text(f"nameserver {resolver}\noptions trust-ad timeout:2 attempts:2\n")

    def delete(self) -> None:
        if self._thread is not None:
            # Every call made on it has its own timeout; do not wait on a stuck one here.
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None
        subprocess.run(["ip", "netns", "delete", self.name], check=False, timeout=10, capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], timeout: float = 20, env: Mapping[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(argv), capture_output=True, text=True, timeout=timeout, env=_env(env), check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"lab: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}")
        return proc

    def popen(self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                self.argv(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_env(env)
            )

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        """Run `fn` on the thread that lives in the namespace (sockets it opens are in the lab)."""
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=self.name, initializer=_enter, initargs=(f"/run/netns/{self.name}",)
            )
        return self._thread.submit(fn).result(timeout=timeout)


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    return env


def stop(proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """SIGTERM the process we started, SIGKILL it if it does not go in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
