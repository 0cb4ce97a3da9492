"""Master pseudonymisation key and per-domain keys (SPEC §6), served by a `KeyProvider`.

The master key is given as hex (where it is read from, the environment or a key file that must not be
readable by group or others, is the orchestration's: pipelines.orchestration.settings). Domain keys are
derived, never stored:
    domain key = HKDF-SHA256(master, salt = empty, info = "sem-privacy/<domain>/v<version>", length 32).
Error messages name where the key was looked for, never the key itself.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipelines.private import private_dir

# 128 bits is the floor for an HMAC key; the demo key is 256 bits.
MIN_KEY_BYTES = 16
DEMO_KEY_BYTES = 32


class SecretKey(bytes):
    """Key bytes whose repr never shows them (tracebacks and debuggers print arguments)."""

    def __repr__(self) -> str:
        return f"<secret key, {len(self)} bytes>"


class PseudonymisationKeyError(RuntimeError):
    """The master key is missing, malformed or too exposed: nothing may be pseudonymised or published."""


def parse_hex_key(text: str, origin: str) -> bytes:
    """Decode a hex master key; `origin` says where it came from for the error message."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise PseudonymisationKeyError(f"{origin}: the pseudonymisation key is not valid hex") from None
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymisationKeyError(
            f"{origin}: the pseudonymisation key is {len(key)} bytes, at least {MIN_KEY_BYTES} are required"
        )
    return SecretKey(key)


def read_key_file(path: Path) -> bytes:
    """Read a hex key file, refusing one that group or others may read or write (must be 0600 or 0400)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PseudonymisationKeyError(
            f"no pseudonymisation key: the key file {path} does not exist (`make demo` creates a local one)"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PseudonymisationKeyError(
            f"{path}: the key file has rights {stat.S_IMODE(mode):04o}; it must be readable by its owner "
            f"only (chmod 600 {path})"
        )
    return parse_hex_key(path.read_text(encoding="ascii", errors="replace"), str(path))


def ensure_demo_key(path: Path) -> Path:
    """Create a random 256-bit key file with rights 0600 unless a valid one is already there."""
    if path.exists():
        read_key_file(path)
        return path
    private_dir(path.parent)
    # O_EXCL + mode at creation: the key is never readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(DEMO_KEY_BYTES) + "\n")
    return path


def domain_info(domain: str, version: int) -> bytes:
    return f"sem-privacy/{domain}/v{version}".encode()


def derive_domain_key(master: bytes, domain: str, version: int) -> bytes:
    """HKDF-SHA256 with an empty salt and info "sem-privacy/<domain>/v<version>", 32 bytes."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=domain_info(domain, version))
    return SecretKey(hkdf.derive(master))


@dataclass(frozen=True, repr=False)
class KeyProvider:
    """The master key and the key version: derives any domain's key on demand (HKDF, never stored)."""

    master: bytes
    version: int = 1

    def __post_init__(self) -> None:
        if self.version < 1:
            raise PseudonymisationKeyError("the key version must be at least 1")

    def __repr__(self) -> str:
        return f"KeyProvider(<secret key>, version={self.version})"

    def domain_key(self, domain: str) -> bytes:
        return derive_domain_key(self.master, domain, self.version)

    def domain_keys(self, domains: list[str]) -> dict[str, bytes]:
        return {domain: self.domain_key(domain) for domain in domains}
