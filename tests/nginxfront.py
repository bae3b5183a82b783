"""A real nginx in front of a real `havedane serve`, with the sample deploy/nginx-havedane.conf
as shipped, rendered for loopback: its listen ports, upstream and certificate paths are
replaced (each exactly as often as the sample has it, so a changed sample fails loudly
here rather than being tested half-rendered); every other line is the sample's."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from havedane import pki
from helpers import free_port, require

SAMPLE = Path(__file__).parent.parent / "deploy" / "nginx-havedane.conf"
CERT_DIR = "/etc/letsencrypt/live/havedane.example"


def render_site(site: str, http_port: int, https_port: int, upstream_port: int, cert_dir: Path) -> str:
    """The sample with test ports and paths: loopback only (no `[::]` listeners)."""
    replacements = [
        ("    listen [::]:80;\n", "", 1),
        ("    listen [::]:443 ssl http2;\n", "", 1),
        ("listen 80;", f"listen 127.0.0.1:{http_port};", 1),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;", 1),
        ("proxy_pass http://127.0.0.1:8080;", f"proxy_pass http://127.0.0.1:{upstream_port};", 2),
        (CERT_DIR, str(cert_dir), 2),
    ]
    for old, new, count in replacements:
        assert site.count(old) == count, f"the sample has {site.count(old)} × {old!r}, the test expects {count}"
        site = site.replace(old, new)
    return site


def write_certificate(directory: Path) -> Path:
    """A CA (returned: the clients trust it) and a leaf for havedane.example and 127.0.0.1
    where the sample expects Let's Encrypt's files."""
    ca_key, key = pki.new_key("ecdsa"), pki.new_key("ecdsa")
    ca = pki.make_ca("havedane test CA", ca_key)
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName("havedane.example"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "havedane.example")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki.write_key(directory / "privkey.pem", key)
    (directory / "fullchain.pem").write_bytes(pki.pem(leaf) + pki.pem(ca))
    (directory / "ca.pem").write_bytes(pki.pem(ca))
    return directory / "ca.pem"


def main_conf(directory: Path) -> str:
    """The http context the sample is included into (as Debian's nginx.conf includes
    sites-enabled), with every path in `directory` and an access log of address and status."""
    temp = directory / "temp"
    paths = "".join(
        f"    {kind}_temp_path {temp / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx would hand its workers to `nobody`, who cannot enter pytest's 0700 folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}pid {directory}/nginx.pid;\nworker_processes 1;\nerror_log {directory}/error.log info;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "    log_format havedane '$remote_addr $status $request_method $request_uri';\n"
        f"    access_log {directory}/access.log havedane;\n{paths}"
        f"    include {directory}/site.conf;\n}}\n"
    )


@dataclass
class Nginx:
    """nginx (from the sample) on loopback ports in front of havedane's web port."""

    directory: Path
    upstream_port: int
    http_port: int = 0
    https_port: int = 0
    ca: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)

    def configure(self) -> subprocess.CompletedProcess[str]:
        """Write the configuration; returns what `nginx -t` says about it."""
        self.http_port, self.https_port = free_port(), free_port()
        self.ca = write_certificate(self.directory)
        site = render_site(SAMPLE.read_text(), self.http_port, self.https_port, self.upstream_port, self.directory)
        (self.directory / "site.conf").write_text(site)
        (self.directory / "nginx.conf").write_text(main_conf(self.directory))
        (self.directory / "temp").mkdir(exist_ok=True)
        conf = self.directory / "nginx.conf"
        self.argv = [
            require("nginx"),
            "-p",
            str(self.directory),
            "-e",
            str(self.directory / "error.log"),
            "-c",
            str(conf),
        ]
        return subprocess.run([*self.argv, "-t"], capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 15) -> Nginx:
        self.proc = subprocess.Popen([*self.argv, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.https_port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start:\n" + self.error_log()) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: a fast shutdown (open event streams would hold a graceful one)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text() if path.exists() else ""

    def access_log(self) -> list[tuple[str, int, str, str]]:
        """(client address, status, method, URI) of every request nginx finished."""
        lines = (self.directory / "access.log").read_text().splitlines()
        return [(a, int(s), m, u) for a, s, m, u in (line.split(" ", 3) for line in lines)]

    def client(self, source: str = "127.0.0.1") -> httpx.Client:
        """HTTPS to nginx from `source` (any 127.0.0.x), verifying the test CA."""
        context = ssl.create_default_context(cafile=str(self.ca))
        transport = httpx.HTTPTransport(local_address=source, verify=context)
        return httpx.Client(base_url=f"https://127.0.0.1:{self.https_port}", transport=transport, timeout=10)
