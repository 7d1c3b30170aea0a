"""The HTTP listener as a client sees it, byte for byte: status lines, headers, bodies."""

from __future__ import annotations

import asyncio

import pytest

from smarter_device_manager.http import HttpServer

OK_BODY = "ok\n"


async def exchange(request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``request`` raw; return the status line, the headers and the body."""
    server = HttpServer({"/healthz": lambda: (200, "text/plain", OK_BODY)})
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 30)  # the server closes when done
        writer.close()
    finally:
        await server.stop()
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


def ask(request: bytes) -> tuple[str, dict[str, str], bytes]:
    return asyncio.run(exchange(request))


@pytest.mark.parametrize("request_line", [
    b"GARBAGE", b"GET /healthz", b"GET /healthz HTTP/1.1 extra", b"GET /healthz FTP/1.0",
    b"GET  /healthz HTTP/1.1", b"", b"G(T /healthz HTTP/1.1", b"GET /healthz HTTP/1",
])
def test_a_malformed_request_is_400(request_line: bytes) -> None:
    status, headers, body = ask(request_line + b"\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.1 400 Bad Request"
    assert body == b"bad request\n" and headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS"])
def test_other_methods_are_405_with_allow(method: bytes) -> None:
    status, headers, _ = ask(method + b" /healthz HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 405 Method Not Allowed"
    assert headers["Allow"] == "GET, HEAD"


def test_get_has_the_body_and_head_only_its_headers() -> None:
    status, headers, body = ask(b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == ("HTTP/1.1 200 OK", OK_BODY.encode())
    assert headers == {"Content-Type": "text/plain", "Content-Length": "3", "Connection": "close"}
    head_status, head_headers, head_body = ask(b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert (head_status, head_headers) == (status, headers), "the headers GET would get"
    assert head_body == b""
    status, headers, body = ask(b"HEAD /nope HTTP/1.0\r\n\r\n")
    assert status == "HTTP/1.1 404 Not Found" and int(headers["Content-Length"]) > 0
    assert body == b""
