"""Behind a reverse proxy: ``FHIRGATE_FORWARDED_ALLOW_IPS`` makes ``X-Forwarded-For`` the
client address, so failed-authentication throttling counts each client apart; without it the
header is ignored (a client could otherwise pick its own address and dodge the throttle)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from fhirgate.oauth.throttle import WINDOW
from tests.test_quickstart import run, start_served


def room_in_the_window(seconds: float = 10.0) -> None:
    """Failures are counted per fixed one-minute window, in the served process (its clock
    cannot be pinned from here): wait, if need be, for a window with ``seconds`` left, so that
    no boundary restarts the count halfway through the attempts."""
    left = WINDOW - time.time() % WINDOW
    if left < seconds:
        time.sleep(left + 0.1)


def secret_client(env: dict[str, str]) -> tuple[str, str]:
    created = json.loads(
        run(env, "clients", "create", "--auth", "client_secret_basic", "--name", "c", "--json")
    )
    return created["client_id"], created["client_secret"]


GRANT = {"grant_type": "client_credentials", "scope": "system/*.rs"}


def token_status(base: str, client_id: str, secret: str, forwarded_for: str) -> int:
    answer = httpx.post(
        f"{base}/oauth2/token",
        data=GRANT,
        auth=(client_id, secret),
        headers={"X-Forwarded-For": forwarded_for},
    )
    return answer.status_code


def test_forwarded_addresses_are_throttled_apart_when_the_proxy_is_trusted(
    tmp_path: Path,
) -> None:
    with start_served(
        tmp_path, FHIRGATE_FORWARDED_ALLOW_IPS="127.0.0.1", FHIRGATE_AUTH_FAILURE_LIMIT="2"
    ) as served:
        cid, secret = secret_client(served.env)
        room_in_the_window()
        attacker = [token_status(served.base, cid, "wrong", "198.51.100.7") for _ in range(3)]
        assert attacker == [401, 401, 429]
        assert token_status(served.base, cid, secret, "198.51.100.7") == 429
        assert token_status(served.base, cid, secret, "203.0.113.9") == 200


def test_forwarded_for_is_ignored_without_a_trusted_proxy(tmp_path: Path) -> None:
    with start_served(tmp_path, FHIRGATE_AUTH_FAILURE_LIMIT="2") as served:
        cid, secret = secret_client(served.env)
        room_in_the_window()
        attacker = [token_status(served.base, cid, "wrong", "198.51.100.7") for _ in range(3)]
        assert attacker == [401, 401, 429]
        # a made-up X-Forwarded-For does not give the attacker a fresh address
        assert token_status(served.base, cid, secret, "203.0.113.9") == 429
