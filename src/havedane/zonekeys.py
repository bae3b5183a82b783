"""The zones' DNSSEC signing keys on disk, for `havedane zone --sign`.

One file per signed zone in DATA_DIR/dnssec (the directory 0700, the file 0600):
the key is made on first use and kept, so the DS at the parent stays valid from
run to run. The keys themselves are made and parsed by havedane.dns.sign.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from havedane.dns import sign


def key_path(key_dir: Path, zone: str) -> Path:
    return key_dir / f"{zone.rstrip('.').lower()}.csk.pem"


def load_or_create(key_dir: Path, zone: str) -> ec.EllipticCurvePrivateKey:
    """The zone's signing key: read from key_dir, or made and stored there on first use
    (sign.SigningKeyError for a file that is there but unusable).

    The key is written to a temporary file and linked into place, so two first runs
    at once end up with one key (and one DS) rather than overwriting each other.
    """
    path = key_path(key_dir, zone)
    if path.exists():
        return sign.load_key(path.read_bytes(), str(path))
    key_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(key_dir, 0o700)
    key = sign.new_key()
    fd, tmp = tempfile.mkstemp(dir=key_dir, prefix=".new-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(sign.key_pem(key))
        os.chmod(tmp, 0o600)
        os.link(tmp, path)
    except FileExistsError:
        return sign.load_key(path.read_bytes(), str(path))
    finally:
        os.unlink(tmp)
    return key


def load_all(key_dir: Path, zones: Iterable[str]) -> dict[str, ec.EllipticCurvePrivateKey]:
    """The key of each zone (see havedane.dns.zone.signed_zones), by zone name."""
    return {zone: load_or_create(key_dir, zone) for zone in zones}
