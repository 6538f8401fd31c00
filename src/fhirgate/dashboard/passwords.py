"""Dashboard passwords: argon2id (RFC 9106), and the rules a new password must meet.

Only the dashboard's people have passwords; API clients use secrets or keys, whose checks must cost
microseconds (docs/security.md#client-secrets-rfc-6749-231). argon2-cffi's defaults are RFC 9106's
second recommended option (argon2id, t=3, 64 MiB, p=4). NIST SP 800-63B §5.1.1.2 shapes the rules: a
length floor, a generous ceiling (which also bounds the hashing work an attacker can ask for), no
composition rules.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["MAX_LENGTH", "MIN_LENGTH", "PasswordRejected", "hash_password", "verify_password"]

MIN_LENGTH = 12
MAX_LENGTH = 256
_HASHER = PasswordHasher()
#: Verified when the account does not exist, so an unknown email costs what a wrong password
#: does (no account enumeration by timing).
_DECOY = _HASHER.hash("a decoy password nobody has")


class PasswordRejected(ValueError):
    """A new password that breaks a rule; the message says which."""


def hash_password(password: str, email: str) -> str:
    """The argon2id PHC string of a new password that meets the rules."""
    if len(password) < MIN_LENGTH:
        raise PasswordRejected(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordRejected(f"a password has at most {MAX_LENGTH} characters")
    if password.strip().casefold() == email.strip().casefold():
        raise PasswordRejected("the password must not be the email address")
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (``None``: no such account — still hashed)."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(stored or _DECOY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False
