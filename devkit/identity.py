"""Request identity: the Restate server signs every request it sends to a service, and the
service serves only signed requests.

`generate` makes an ed25519 key pair with openssl: the server gets the private key (PEM
file) through its `[worker.invoker] request-identity-private-key-pem-file` option, the
service gets the public key as `publickeyv1_<base58 of the raw 32-byte key>` in its
IDENTITY_KEYS variable (read by every pattern's `__main__.py`).
"""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devkit import DevError

# restate-server's option, as an environment variable (RESTATE_ + path, `__` between levels)
SERVER_SETTING = "RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE"
SERVICE_SETTING = "IDENTITY_KEYS"

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# DER SubjectPublicKeyInfo of an ed25519 key: this 12-byte header, then the 32-byte key
_ED25519_SPKI_HEADER = bytes.fromhex("302a300506032b6570032100")


def base58(data: bytes) -> str:
    """Bitcoin-alphabet base58, leading zero bytes as '1's."""
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, rest = divmod(number, 58)
        digits = _BASE58[rest] + digits
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + digits


@dataclass(frozen=True)
class KeyPair:
    private_pem: Path
    public_key: str  # publickeyv1_...

    def server_settings(self) -> dict[str, str]:
        return {SERVER_SETTING: str(self.private_pem)}

    def service_settings(self) -> dict[str, str]:
        return {SERVICE_SETTING: self.public_key}


def _openssl(*args: str) -> bytes:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DevError("request identity needs openssl (to make an ed25519 key pair)")
    result = subprocess.run([openssl, *args], capture_output=True, timeout=30, check=False)
    if result.returncode != 0:
        raise DevError(f"openssl {' '.join(args)} failed: {result.stderr.decode().strip()}")
    return result.stdout


def public_key(private_pem: Path) -> str:
    """The `publickeyv1_...` form of the public half of an ed25519 PEM private key."""
    der = _openssl("pkey", "-in", str(private_pem), "-pubout", "-outform", "DER")
    if len(der) != 44 or not der.startswith(_ED25519_SPKI_HEADER):
        raise DevError(f"{private_pem} is not an ed25519 private key")
    return "publickeyv1_" + base58(der[len(_ED25519_SPKI_HEADER) :])


def generate(folder: Path) -> KeyPair:
    """A fresh key pair; the private key is written to `folder`/private.pem (mode 0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    private_pem = folder / "private.pem"
    private_pem.unlink(missing_ok=True)
    private_pem.touch(mode=0o600)
    _openssl("genpkey", "-algorithm", "ed25519", "-out", str(private_pem))
    return KeyPair(private_pem, public_key(private_pem))
