"""grpcwire, device-plugin mode's HTTP/2 and gRPC, against other implementations and bad peers.

The peers are real: grpcio (gRPC's C core, the reference implementation, whose HPACK uses
Huffman coding and a dynamic table as grpc-go's does) as client and as server, over real unix
sockets; and a raw socket speaking HTTP/2 frame by frame for what no well-behaved client sends
(a bad preface, oversized frames, compressed messages, header blocks split over CONTINUATION,
a tiny flow-control window). grpclib's client (h2) talks to it in every end-to-end test.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from aiorun import run
from hpack import Encoder

from smarter_device_manager import grpcwire
from smarter_device_manager.grpcwire import Call, Channel, RpcError, Server, Status


class Raw:
    """A message that is its bytes."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> Raw:
        return cls(data)


class Service:
    """Handlers exercising every way a call can end."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        self.calls = 0

    async def Echo(self, call: Call) -> None:
        self.calls += 1
        request = await call.recv_message()
        await call.send_message(Raw(request.data[::-1]))

    async def Fail(self, call: Call) -> None:
        raise RpcError(Status.FAILED_PRECONDITION, "gone: /dev/ttyUSB0 — 串口 100% unplugged\n")

    async def Crash(self, call: Call) -> None:
        raise ValueError("a bug")

    async def Stream(self, call: Call) -> None:
        request = await call.recv_message()
        count, size = struct.unpack(">II", request.data)
        for i in range(count):
            await call.send_message(Raw(bytes([i % 256]) * size))

    async def Hang(self, call: Call) -> None:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


METHODS = {f"/test.Service/{name}": (name, Raw) for name in ("Echo", "Fail", "Crash", "Stream", "Hang")}


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[Server, Service, str]]:
    service = Service()
    server = Server(service, METHODS)
    path = str(tmp_path / "s.sock")
    await server.start(path=path)
    try:
        yield server, service, path
    finally:
        server.close()
        await server.wait_closed()


def raw(data: bytes) -> bytes:
    return data


def unary(channel: grpc.aio.Channel, name: str) -> Any:
    return channel.unary_unary(f"/test.Service/{name}", request_serializer=raw,
                               response_deserializer=raw)


# --- grpcio's client against our server -------------------------------------------------------

def test_grpcio_client_makes_many_calls_on_one_connection(tmp_path: Path) -> None:
    """3,000 calls of 100 bytes: 300 KB through a 64 KB window, so our WINDOW_UPDATEs work."""
    async def scenario() -> None:
        async with serving(tmp_path) as (server, service, path), \
                grpc.aio.insecure_channel(f"unix://{path}") as channel:
            echo = unary(channel, "Echo")
            for i in range(3000):
                payload = i.to_bytes(4, "big") * 25
                assert await echo(payload) == payload[::-1]
            assert service.calls == 3000
            assert len(server.connections) == 1
    run(scenario())


def test_grpcio_client_gets_the_status_and_the_message_as_sent(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, _service, path), \
                grpc.aio.insecure_channel(f"unix://{path}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(channel, "Fail")(b"")
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert info.value.details() == "gone: /dev/ttyUSB0 — 串口 100% unplugged\n"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(channel, "Nope")(b"")
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "/test.Service/Nope" in str(info.value.details())
            assert await unary(channel, "Echo")(b"ab") == b"ba"  # the connection is fine
    run(scenario())


def test_a_handler_bug_is_internal_and_the_server_goes_on(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, _service, path), \
                grpc.aio.insecure_channel(f"unix://{path}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(channel, "Crash")(b"")
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert await unary(channel, "Echo")(b"xy") == b"yx"
    run(scenario())
    assert "handler of /test.Service/Crash failed" in caplog.text and "ValueError: a bug" in caplog.text


def test_grpcio_client_receives_large_streamed_messages_within_its_windows(tmp_path: Path) -> None:
    """20 messages of 200 KB: each is split at the frame size and waits for window updates."""
    async def scenario() -> None:
        async with serving(tmp_path) as (_, _service, path), \
                grpc.aio.insecure_channel(f"unix://{path}") as channel:
            stream = channel.unary_stream("/test.Service/Stream", request_serializer=raw,
                                          response_deserializer=raw)
            got = [message async for message in stream(struct.pack(">II", 20, 200_000))]
            assert [len(m) for m in got] == [200_000] * 20
            assert all(m == bytes([i]) * 200_000 for i, m in enumerate(got))
    run(scenario())


async def hanging(channel: grpc.aio.Channel, service: Service) -> Any:
    """A server-streaming call whose handler waits for ever, once that handler runs."""
    call = channel.unary_stream("/test.Service/Hang", request_serializer=raw,
                                response_deserializer=raw)(b"")
    await asyncio.wait_for(service.started.wait(), 10)
    return call


def test_a_client_cancelling_a_call_cancels_its_handler(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (server, service, path), \
                grpc.aio.insecure_channel(f"unix://{path}") as channel:
            call = await hanging(channel, service)
            call.cancel()
            await asyncio.wait_for(service.cancelled.wait(), 10)
            assert await unary(channel, "Echo")(b"12") == b"21"
            [connection] = server.connections
            assert not connection.streams  # the reset stream is forgotten
    run(scenario())


def test_closing_the_server_ends_its_calls_and_connections(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (server, service, path), \
                grpc.aio.insecure_channel(f"unix://{path}") as channel:
            call = await hanging(channel, service)
            server.close()
            await asyncio.wait_for(service.cancelled.wait(), 10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call.read(), 10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not server.connections
    run(scenario())


# --- our client against grpcio's server --------------------------------------------------------

class GrpcioEcho(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: Any) -> Any:
        method = details.method

        async def echo(request: bytes, context: Any) -> bytes:
            return request[::-1] * (100_000 if request == b"big" else 1)

        async def fail(request: bytes, context: Any) -> bytes:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet busy — 忙")
            return b""

        handlers: dict[str, Callable[[bytes, Any], Awaitable[bytes]]] = {
            "/v1beta1.Registration/Register": echo, "/x/Fail": fail}
        if method not in handlers:
            return None
        return grpc.unary_unary_rpc_method_handler(handlers[method])


@asynccontextmanager
async def grpcio_server(path: str) -> AsyncIterator[grpc.aio.Server]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((GrpcioEcho(),))
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    try:
        yield server
    finally:
        await server.stop(None)


def test_our_channel_calls_a_grpcio_server(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = str(tmp_path / "kubelet.sock")
        async with grpcio_server(path):
            channel = Channel(path)
            try:
                for i in range(500):  # requests beyond the server's first window
                    payload = str(i).encode() * 40
                    reply = await channel.unary("/v1beta1.Registration/Register", Raw(payload), Raw)
                    assert reply.data == payload[::-1]
                big = await channel.unary("/v1beta1.Registration/Register", Raw(b"big"), Raw)
                assert big.data == b"gib" * 100_000  # 300 KB answer: we acknowledge as we read
                with pytest.raises(RpcError) as info:
                    await channel.unary("/x/Fail", Raw(b""), Raw)
                assert info.value.status == Status.UNAVAILABLE
                assert info.value.message == "kubelet busy — 忙"
                with pytest.raises(RpcError) as info:
                    await channel.unary("/x/Missing", Raw(b""), Raw)
                assert info.value.status == Status.UNIMPLEMENTED
            finally:
                channel.close()
    run(scenario())


def test_our_channel_keeps_within_the_servers_concurrent_streams(tmp_path: Path) -> None:
    """A thousand resources register at once over one connection: a server allowing 10 calls
    at a time gets at most 10, and every call succeeds (none refused)."""
    running, most = 0, 0

    async def slow(request: bytes, context: Any) -> bytes:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return request

    class Slow(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(slow)

    async def scenario() -> None:
        path = str(tmp_path / "kubelet.sock")
        server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 10)])
        server.add_generic_rpc_handlers((Slow(),))
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        channel = Channel(path)
        try:
            await channel.unary("/x/Warm", Raw(b"0"), Raw)  # the server's SETTINGS have arrived
            replies = await asyncio.gather(*(channel.unary("/x/Slow", Raw(str(i).encode()), Raw)
                                             for i in range(100)))
            assert [r.data for r in replies] == [str(i).encode() for i in range(100)]
            assert most <= 10
        finally:
            channel.close()
            await server.stop(None)
    run(scenario())


def test_our_channel_without_a_server_raises_an_os_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        channel = Channel(str(tmp_path / "none.sock"))
        with pytest.raises(OSError):
            await channel.unary("/v1beta1.Registration/Register", Raw(b""), Raw)
    run(scenario())


def test_our_channel_reconnects_after_the_server_restarts(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = str(tmp_path / "kubelet.sock")
        channel = Channel(path)
        try:
            async with grpcio_server(path):
                assert (await channel.unary("/v1beta1.Registration/Register", Raw(b"1"), Raw)).data == b"1"
            with pytest.raises((OSError, grpcwire.WireError)):
                await channel.unary("/v1beta1.Registration/Register", Raw(b"2"), Raw)
            async with grpcio_server(path):
                assert (await channel.unary("/v1beta1.Registration/Register", Raw(b"3"), Raw)).data == b"3"
        finally:
            channel.close()
    run(scenario())


# --- a raw peer: what well-behaved clients never send ------------------------------------------

class RawPeer:
    """One HTTP/2 client connection driven frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = Encoder()

    @classmethod
    async def open(cls, path: str, preface: bytes = grpcwire.PREFACE,
                   settings: bytes = b"") -> RawPeer:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(preface + grpcwire.frame(grpcwire.SETTINGS, 0, 0, settings))
        return cls(reader, writer)

    def send(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self.writer.write(grpcwire.frame(kind, flags, stream_id, payload))

    def headers(self, method: str) -> bytes:
        return bytes(self.encoder.encode([(":method", "POST"), (":scheme", "http"),
                                          (":path", f"/test.Service/{method}"),
                                          (":authority", "localhost"),
                                          ("content-type", "application/grpc"), ("te", "trailers")]))

    async def frame(self) -> tuple[int, int, int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(9), 10)
        length = int.from_bytes(head[:3], "big")
        payload = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return head[3], head[4], int.from_bytes(head[5:], "big") & 0x7FFFFFFF, payload

    async def until(self, kind: int, flags: int | None = None) -> tuple[int, int, int, bytes]:
        while True:
            found = await self.frame()
            if found[0] == kind and (flags is None or found[1] & flags == flags):
                return found

    async def closed(self) -> bool:
        try:
            while await asyncio.wait_for(self.reader.read(65536), 10):
                pass
        except ConnectionResetError:
            pass
        return True


def decoded(decoder: Any, block: bytes) -> list[tuple[str, str]]:
    return [(str(name), str(value)) for name, value in decoder.decode(block)]


def test_a_peer_without_the_preface_is_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, _service, path):
            peer = await RawPeer.open(path, preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await peer.closed()
    run(scenario())


def test_ping_is_answered_and_settings_acknowledged(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, _service, path):
            peer = await RawPeer.open(path)
            kind, flags, _, payload = await peer.frame()
            assert (kind, flags) == (grpcwire.SETTINGS, 0)  # the server's preface
            assert struct.pack(">HI", grpcwire.S_ENABLE_PUSH, 0) in payload
            await peer.until(grpcwire.SETTINGS, grpcwire.ACK)
            peer.send(grpcwire.PING, 0, 0, b"12345678")
            assert (await peer.until(grpcwire.PING))[1:] == (grpcwire.ACK, 0, b"12345678")
    run(scenario())


def test_an_oversized_frame_is_a_connection_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (server, _service, path):
            peer = await RawPeer.open(path)
            peer.send(grpcwire.DATA, 0, 1, b"x" * 20000)
            _, _, _, payload = await peer.until(grpcwire.GOAWAY)
            assert struct.unpack(">II", payload[:8])[1] == grpcwire.FRAME_SIZE_ERROR
            assert await peer.closed()
            assert not server.connections
    run(scenario())


def test_header_block_over_continuation_frames_and_bad_messages(tmp_path: Path) -> None:
    """A header block in three pieces is one request; a compressed message, a body that is
    not one message and undecodable headers get a status or GOAWAY, not a crash."""
    async def scenario() -> None:
        async with serving(tmp_path) as (_, service, path):
            peer = await RawPeer.open(path)
            block = peer.headers("Echo")
            third = len(block) // 3
            peer.send(grpcwire.HEADERS, 0, 1, block[:third])
            peer.send(grpcwire.CONTINUATION, 0, 1, block[third:2 * third])
            peer.send(grpcwire.CONTINUATION, grpcwire.END_HEADERS, 1, block[2 * third:])
            peer.send(grpcwire.DATA, grpcwire.END_STREAM, 1, grpcwire.grpc_message(b"abc"))
            _, _, stream_id, payload = await peer.until(grpcwire.DATA)
            assert (stream_id, payload) == (1, grpcwire.grpc_message(b"cba"))
            trailers = await peer.until(grpcwire.HEADERS, grpcwire.END_STREAM)
            assert ("grpc-status", "0") in decoded(peer_decoder, trailers[3])
            for stream_id, body, status in ((3, b"\x01" + struct.pack(">I", 1) + b"z", "12"),
                                            (5, b"\x00\x00", "3"),
                                            (7, grpcwire.grpc_message(b"a") * 2, "3")):
                peer.send(grpcwire.HEADERS, grpcwire.END_HEADERS, stream_id, peer.headers("Echo"))
                peer.send(grpcwire.DATA, grpcwire.END_STREAM, stream_id, body)
                answer = await peer.until(grpcwire.HEADERS, grpcwire.END_STREAM)
                assert answer[2] == stream_id
                assert ("grpc-status", status) in decoded(peer_decoder, answer[3])
            assert service.calls == 1
            peer.send(grpcwire.HEADERS, grpcwire.END_HEADERS | grpcwire.END_STREAM, 9, b"\xff\xff\xff")
            _, _, _, payload = await peer.until(grpcwire.GOAWAY)
            assert struct.unpack(">II", payload[:8])[1] == grpcwire.COMPRESSION_ERROR

    from hpack import Decoder
    peer_decoder = Decoder()
    run(scenario())


def test_headers_for_a_call_already_ended_are_ignored(tmp_path: Path) -> None:
    """Trailers a client sends after we ended its call (here: refused, unknown method) are not a
    connection error; the next call on the connection is answered."""
    async def scenario() -> None:
        async with serving(tmp_path) as (_, _service, path):
            peer = await RawPeer.open(path)
            peer.send(grpcwire.HEADERS, grpcwire.END_HEADERS, 1, peer.headers("Nope"))
            peer.send(grpcwire.DATA, grpcwire.END_STREAM, 1, grpcwire.grpc_message(b""))
            ended = await peer.until(grpcwire.HEADERS, grpcwire.END_STREAM)
            assert ("grpc-status", "12") in decoded(peer_decoder, ended[3])
            peer.send(grpcwire.HEADERS, grpcwire.END_HEADERS | grpcwire.END_STREAM, 1,
                      bytes(peer.encoder.encode([("x-trailer", "late")])))
            peer.send(grpcwire.HEADERS, grpcwire.END_HEADERS, 3, peer.headers("Echo"))
            peer.send(grpcwire.DATA, grpcwire.END_STREAM, 3, grpcwire.grpc_message(b"ok"))
            _, _, stream_id, payload = await peer.until(grpcwire.DATA)
            assert (stream_id, payload) == (3, grpcwire.grpc_message(b"ko"))

    from hpack import Decoder
    peer_decoder = Decoder()
    run(scenario())


def test_a_tiny_window_gets_the_answer_in_pieces_as_it_opens(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, _service, path):
            peer = await RawPeer.open(path, settings=struct.pack(">HI", grpcwire.S_INITIAL_WINDOW_SIZE, 16))
            peer.send(grpcwire.HEADERS, grpcwire.END_HEADERS, 1, peer.headers("Echo"))
            peer.send(grpcwire.DATA, grpcwire.END_STREAM, 1, grpcwire.grpc_message(b"0123456789" * 5))
            received = b""
            while len(received) < 55:
                _, _, _, payload = await peer.until(grpcwire.DATA)
                assert len(payload) <= 16
                received += payload
                peer.send(grpcwire.WINDOW_UPDATE, 0, 1, struct.pack(">I", len(payload)))
            assert received == grpcwire.grpc_message(b"9876543210" * 5)
            await peer.until(grpcwire.HEADERS, grpcwire.END_STREAM)
    run(scenario())


def test_status_messages_are_percent_encoded_both_ways() -> None:
    text = "100% gone — 串口\n"
    encoded = grpcwire._percent(text)
    assert all(0x20 <= b <= 0x7E for b in encoded) and b"100%25 gone" in encoded
    assert grpcwire._unpercent(encoded.decode()) == text
    assert grpcwire._unpercent("50%zz %4") == "50%zz %4"  # not an escape: kept as it is
