"""The optional HTTP listener: ``/healthz``, ``/readyz`` and ``/metrics``.

A few dozen lines of asyncio instead of a web framework: three read-only GET
endpoints do not justify aiohttp's memory on a 512 MiB board
(docs/decisions.md). It reads state; it never changes it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

log = logging.getLogger(__name__)

Handler = Callable[[], tuple[int, str, str]]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}
_MAX_REQUEST = 8192
# METHOD SP TARGET SP HTTP/x.y (RFC 9112); anything else is a malformed request.
_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/[0-9]\.[0-9]")


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
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError):
            writer.close()
            return
        writer.write(self._respond(head))
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _respond(self, head: bytes) -> bytes:
        request = _REQUEST_LINE.fullmatch(head[:_MAX_REQUEST].split(b"\r\n", 1)[0].decode("latin-1"))
        method = request.group(1) if request else ""
        extra = ""
        if request is None:
            status, ctype, body = 400, "text/plain", "bad request\n"
        elif method not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain", "only GET and HEAD\n"
            extra = "Allow: GET, HEAD\r\n"
        else:
            handler = self._routes.get(request.group(2).split("?", 1)[0])
            if handler is None:
                status, ctype, body = 404, "text/plain", "not found; try /healthz, /readyz or /metrics\n"
            else:
                status, ctype, body = handler()
        data = body.encode()
        # HEAD: the headers GET would get (Content-Length included), without the body.
        return (f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else data))
