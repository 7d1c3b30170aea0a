"""The optional HTTP listener: ``/healthz``, ``/readyz`` and ``/metrics``.

A few dozen lines of asyncio instead of a web framework: three read-only GET
endpoints do not justify aiohttp's memory on a 512 MiB board
(docs/decisions.md). It reads state; it never changes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Handler = Callable[[], tuple[int, str, str]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_MAX_REQUEST = 8192


class HttpServer:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self._routes = routes
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host or None, port)

    @property
    def port(self) -> int:
        assert isinstance(self._server, asyncio.Server)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            status, ctype, body = self._route(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError):
            writer.close()
            return
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _route(self, head: bytes) -> tuple[int, str, str]:
        parts = head[:_MAX_REQUEST].split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            return 405, "text/plain", "bad request\n"
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", "only GET\n"
        handler = self._routes.get(target.split("?", 1)[0])
        if handler is None:
            return 404, "text/plain", "not found; try /healthz, /readyz or /metrics\n"
        return handler()
