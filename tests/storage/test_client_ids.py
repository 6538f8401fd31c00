"""Client ids: random, URL-safe, and usable as a command-line argument."""

from __future__ import annotations

import re

from fhirgate.domain.clients import new_client_id


def test_client_ids_are_url_safe_192_bit_values_that_never_look_like_an_option() -> None:
    ids = [new_client_id() for _ in range(5000)]  # ~1 in 64 would start with "-" otherwise
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{31}", client_id) for client_id in ids)
    assert len(set(ids)) == len(ids)
