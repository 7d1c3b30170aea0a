"""hpackdecode against RFC 7541's own examples and the ``hpack`` library's encoder (the oracle),
and against malformed blocks."""

from __future__ import annotations

import random

import pytest
from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple

from smarter_device_manager.hpackdecode import Decoder, HpackError, huffman


def test_rfc_7541_c4_requests_with_huffman_coding() -> None:
    decoder = Decoder()
    first = bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")
    assert decoder.decode(first) == [(":method", "GET"), (":scheme", "http"), (":path", "/"),
                                     (":authority", "www.example.com")]
    second = bytes.fromhex("828684be5886a8eb10649cbf")
    assert decoder.decode(second)[-1] == ("cache-control", "no-cache")
    third = bytes.fromhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf")
    assert decoder.decode(third) == [(":method", "GET"), (":scheme", "https"),
                                     (":path", "/index.html"), (":authority", "www.example.com"),
                                     ("custom-key", "custom-value")]
    assert decoder.size == 164  # RFC 7541 C.4.3: the table after the third request


def test_rfc_7541_c6_responses_evict_with_a_256_octet_table() -> None:
    decoder = Decoder()
    decoder.decode(bytes.fromhex("3fe101"))  # a size update to 256 (RFC C.5's table size)
    decoder.decode(bytes.fromhex(
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3"))
    decoder.decode(bytes.fromhex("4883640effc1c0bf"))
    third = decoder.decode(bytes.fromhex(
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007"))
    assert third[-1] == ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")
    assert decoder.size == 215  # RFC 7541 C.6.3
    assert [name for name, _ in decoder.dynamic] == ["set-cookie", "content-encoding", "date"]


@pytest.mark.parametrize("seed", range(20))
def test_what_hpacks_encoder_writes_decodes_the_same(seed: int) -> None:
    rng = random.Random(seed)
    encoder, decoder = Encoder(), Decoder()
    names = [":path", ":authority", "content-type", "user-agent", "grpc-timeout", "x-é-custom",
             "te", "grpc-message", "a" * 40]
    for _ in range(60):
        if rng.random() < 0.1:
            encoder.header_table_size = rng.choice([0, 64, 256, 4096])
        headers = []
        for _ in range(rng.randint(1, 8)):
            name = rng.choice(names)
            value = "".join(rng.choice("abc/é%_-09 ~串") for _ in range(rng.randint(0, 30)))
            kind = NeverIndexedHeaderTuple if rng.random() < 0.1 else HeaderTuple
            headers.append(kind(name, value))
        block = encoder.encode(headers, huffman=rng.random() < 0.7)
        assert decoder.decode(block) == [(str(h[0]), str(h[1])) for h in headers]


def test_every_octet_round_trips_through_huffman() -> None:
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    data = bytes(range(256)) * 2
    assert huffman(HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(data)) == data


@pytest.mark.parametrize("block, why", [
    (b"\x80", "no table entry 0"),
    (b"\xbe", "no table entry 62"),
    (b"\xff\xff\xff\xff\xff\x7f", "integer too large"),
    (b"\x3f\xe2\x1f", "above the 4096 allowed"),  # size update to 4097
    (b"\x82\x20", "after a header field"),
    (b"\x00\x85ab", "longer than the header block"),
    (b"\x00\x81\x00\x00", "padding"),  # a Huffman string whose padding is zeros
    (b"\x00\x84\xff\xff\xff\xff\x00", "EOS"),  # EOS (30 ones) inside a string
    (b"\x40", "truncated"),
])
def test_malformed_blocks_are_refused(block: bytes, why: str) -> None:
    with pytest.raises(HpackError, match=why):
        Decoder().decode(block)


def test_a_header_list_beyond_the_limit_is_refused() -> None:
    block = Encoder().encode([("x", "y" * 100)] * 10)
    with pytest.raises(HpackError, match="header list longer than 1000 bytes"):
        Decoder(max_list=1000).decode(block)
