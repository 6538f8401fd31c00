"""The token server of tests/sdk/token_server.py, on a real TCP port for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.sdk.token_server import TokenServer, serving


@pytest.fixture(scope="session")
def started_token_server() -> Iterator[TokenServer]:
    state = TokenServer()
    with serving(state.app()) as url:
        state.url = url
        yield state


@pytest.fixture
def server(started_token_server: TokenServer) -> TokenServer:
    """The started token server, its state reset for this test."""
    started_token_server.reset()
    return started_token_server
