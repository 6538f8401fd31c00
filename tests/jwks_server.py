"""A scriptable HTTP/1.1 server on 127.0.0.1 for JWKS URL tests: each path answers as told
(status, headers, body, chunked, delayed or stalled) and every request is counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

STALL_SECONDS = 10.0  # a stalled reply gives up after this, whatever the client does


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    delay: float = 0.0  # before the status line
    stall: bool = False  # headers, then a byte now and then, never the whole body


def jwks_reply(*jwks: dict[str, Any], **headers: str) -> Reply:
    body = json.dumps({"keys": list(jwks)}).encode()
    return Reply(body=body, headers={"Content-Type": "application/json", **headers})


class JWKSServer:
    """``async with JWKSServer() as server: server.replies["/jwks.json"] = jwks_reply(...)``."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self.replies: dict[str, Reply] = {}
        self.hits: Counter[str] = Counter()
        self.hosts: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def __aenter__(self) -> JWKSServer:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task: Any = asyncio.current_task()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await self._answer(reader, writer)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            path = request_line.split(" ")[1]
            headers = dict(line.split(": ", 1) for line in lines if ": " in line)
            self.hits[path] += 1
            self.hosts.append(headers.get("Host", headers.get("host", "")))
            await self._write(writer, self.replies.get(path, Reply(status=404)))
        writer.close()

    async def _write(self, writer: asyncio.StreamWriter, reply: Reply) -> None:
        await asyncio.sleep(reply.delay)
        headers = {**reply.headers, "Connection": "close"}
        if reply.chunked:
            headers["Transfer-Encoding"] = "chunked"
        elif reply.stall:
            headers["Content-Length"] = "100000"
        else:
            headers["Content-Length"] = str(len(reply.body))
        head = f"HTTP/1.1 {reply.status} X\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        writer.write(head.encode() + b"\r\n")
        if reply.stall:
            for _ in range(int(STALL_SECONDS / 0.1)):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.1)
        elif reply.chunked:
            for start in range(0, len(reply.body), 4096):
                chunk = reply.body[start : start + 4096]
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(reply.body)
        await writer.drain()
