"""The users of a 1upHealth-style application, for whom it gets delegated access."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_USER_NUMBER", "AppUser", "UserPage", "validate_app_user_id"]

#: ``oneup_user_id`` is a 32-bit integer column: a larger number names no user.
MAX_USER_NUMBER = 2**31 - 1
#: Printable characters without controls; 1upHealth's examples are plain identifiers.
_APP_USER_ID = re.compile(r"[^\x00-\x1f\x7f]{1,255}")


def validate_app_user_id(value: str) -> str:
    """An ``app_user_id`` as stored: 1-255 characters, no control characters, not blank."""
    if not _APP_USER_ID.fullmatch(value) or not value.strip():
        raise ValueError("app_user_id must be 1-255 printable characters")
    return value


@dataclass(frozen=True, slots=True)
class AppUser:
    oneup_user_id: int
    client_id: str
    app_user_id: str
    active: bool

    def describe(self) -> dict[str, Any]:
        """The user as 1upHealth's API shows one."""
        return {
            "oneup_user_id": self.oneup_user_id,
            "app_user_id": self.app_user_id,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class UserPage:
    users: Sequence[AppUser]
    total: int
