"""HPACK header decoding (RFC 7541) for ``grpcwire``: what a gRPC peer's header blocks say.

Why not the ``hpack`` library (h2's, which DRA mode still loads): importing it builds its
Huffman decoding table, a 256-state machine of 4,096 tuples that costs 0.4 MiB of a 20 MiB
budget; it logs every header at debug level, which the daemon pays for on every call even with
debug off; and decoding is all device-plugin mode needs of it, since what ``grpcwire`` sends
is encoded without state (RFC 7541 6.2.2). This is the decoder alone: every representation
(indexed, literal with and without indexing, never indexed, dynamic table size update), the
dynamic table with its eviction, Huffman-coded strings with the padding rules, and limits on
the header list a peer may send. ``tests/test_hpackdecode.py`` decodes what ``hpack``'s encoder
writes (the oracle) and refuses malformed blocks as the RFC says.

The two tables are the RFC's: Appendix A (the static table) and Appendix B (the Huffman code).
"""

from __future__ import annotations


class HpackError(Exception):
    """A header block that cannot be decoded: a connection error (COMPRESSION_ERROR)."""


# RFC 7541 Appendix A.
STATIC = (
    (':authority', ''),
    (':method', 'GET'),
    (':method', 'POST'),
    (':path', '/'),
    (':path', '/index.html'),
    (':scheme', 'http'),
    (':scheme', 'https'),
    (':status', '200'),
    (':status', '204'),
    (':status', '206'),
    (':status', '304'),
    (':status', '400'),
    (':status', '404'),
    (':status', '500'),
    ('accept-charset', ''),
    ('accept-encoding', 'gzip, deflate'),
    ('accept-language', ''),
    ('accept-ranges', ''),
    ('accept', ''),
    ('access-control-allow-origin', ''),
    ('age', ''),
    ('allow', ''),
    ('authorization', ''),
    ('cache-control', ''),
    ('content-disposition', ''),
    ('content-encoding', ''),
    ('content-language', ''),
    ('content-length', ''),
    ('content-location', ''),
    ('content-range', ''),
    ('content-type', ''),
    ('cookie', ''),
    ('date', ''),
    ('etag', ''),
    ('expect', ''),
    ('expires', ''),
    ('from', ''),
    ('host', ''),
    ('if-match', ''),
    ('if-modified-since', ''),
    ('if-none-match', ''),
    ('if-range', ''),
    ('if-unmodified-since', ''),
    ('last-modified', ''),
    ('link', ''),
    ('location', ''),
    ('max-forwards', ''),
    ('proxy-authenticate', ''),
    ('proxy-authorization', ''),
    ('range', ''),
    ('referer', ''),
    ('refresh', ''),
    ('retry-after', ''),
    ('server', ''),
    ('set-cookie', ''),
    ('strict-transport-security', ''),
    ('transfer-encoding', ''),
    ('user-agent', ''),
    ('vary', ''),
    ('via', ''),
    ('www-authenticate', ''),
)

# RFC 7541 Appendix B: the code of each symbol (0-255, then EOS = 256), most significant bit
# first, and its length in bits (two digits each).
CODES = (
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
    0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
    0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
    0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
    0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16,
    0x17, 0x18, 0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc,
    0x20, 0xffb, 0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65,
    0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73,
    0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
    0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
    0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7,
    0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc,
    0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee,
    0x7fffe1, 0x7fffe2, 0x7fffe3, 0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6,
    0x7fffe7, 0xffffef, 0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9,
    0x1fffde, 0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
    0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea,
    0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1,
    0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4,
    0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6,
    0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8,
    0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6,
    0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4,
    0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7,
    0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee,
    0x7ffffef, 0x7fffff0, 0x3ffffee, 0x3fffffff,
)
LENGTHS_TEXT = (
    "132328282828282828243028283028282828282828283028282828282828282806101012130608111010081108"
    "060606050505060606060606060708150612101306070707070707070707070707070707070707070707070807"
    "081319131406150506050605060606050707060606050607060505060707070707151114132820222020222222"
    "232223232323232423242422232423232323212223222323242221202222232321232222242122232321212221"
    "232223232022222223222223262620192223222526262627272624251921262727262724212126262827272720"
    "2420212221212322222525242426232627262627272727272827272727272630"
)

_EOS = 256
# (length, code) -> symbol: a canonical code, so a prefix is a symbol as soon as it is in here.
_DECODE = {(int(LENGTHS_TEXT[2 * i:2 * i + 2]), code): i for i, code in enumerate(CODES)}
_MIN_LENGTH = 5


def huffman(data: bytes) -> bytes:
    """The octets Huffman-coded in ``data`` (RFC 7541 5.2): EOS inside, or padding that is
    longer than 7 bits or not all ones, is an error."""
    out = bytearray()
    code = length = 0
    table = _DECODE
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            if length >= _MIN_LENGTH:
                symbol = table.get((length, code))
                if symbol is not None:
                    if symbol == _EOS:
                        raise HpackError("EOS inside a Huffman-coded string")
                    out.append(symbol)
                    code = length = 0
                elif length > 30:
                    raise HpackError("not a Huffman code")
    if length > 7 or code != (1 << length) - 1:
        raise HpackError("bad padding after a Huffman-coded string")
    return bytes(out)


class Decoder:
    """One connection's decoder: its dynamic table lives as long as the connection."""

    __slots__ = ("dynamic", "max_list", "max_size", "size", "table_limit")

    def __init__(self, table_limit: int = 4096, max_list: int = 65536) -> None:
        self.dynamic: list[tuple[str, str]] = []  # newest first: index 62 is dynamic[0]
        self.size = 0
        self.table_limit = table_limit  # what our SETTINGS_HEADER_TABLE_SIZE allows
        self.max_size = table_limit  # what the peer's encoder last set (a size update)
        self.max_list = max_list

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        listed = 0
        pos, end = 0, len(block)
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field
                index, pos = _integer(block, pos, 7)
                header = self._entry(index)
            elif first & 0x40:  # literal with incremental indexing
                header, pos = self._literal(block, pos, 6)
                self._add(header)
            elif first & 0x20:  # dynamic table size update
                if headers:
                    raise HpackError("a table size update after a header field")
                size, pos = _integer(block, pos, 5)
                if size > self.table_limit:
                    raise HpackError(f"table size {size} above the {self.table_limit} allowed")
                self.max_size = size
                self._evict()
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                header, pos = self._literal(block, pos, 4)
            listed += len(header[0]) + len(header[1]) + 32
            if listed > self.max_list:
                raise HpackError(f"header list longer than {self.max_list} bytes")
            headers.append(header)
        return headers

    def _entry(self, index: int) -> tuple[str, str]:
        if 0 < index <= len(STATIC):
            return STATIC[index - 1]
        if len(STATIC) < index <= len(STATIC) + len(self.dynamic):
            return self.dynamic[index - len(STATIC) - 1]
        raise HpackError(f"no table entry {index}")

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[tuple[str, str], int]:
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return (name, value), pos

    def _add(self, header: tuple[str, str]) -> None:
        size = _octets(header)
        if size > self.max_size:  # RFC 7541 4.4: an entry larger than the table empties it
            self.dynamic.clear()
            self.size = 0
            return
        self.dynamic.insert(0, header)
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            self.size -= _octets(self.dynamic.pop())


def _octets(header: tuple[str, str]) -> int:
    """An entry's size in the table (RFC 7541 4.1)."""
    return (len(header[0].encode("utf-8", "surrogateescape"))
            + len(header[1].encode("utf-8", "surrogateescape")) + 32)


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """An integer with a ``prefix``-bit prefix at ``pos`` (RFC 7541 5.1); and where it ends."""
    limit = (1 << prefix) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block):
            raise HpackError("truncated integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if value > 0x7FFFFFFF:  # no index, length or size here needs more than 31 bits
            raise HpackError("integer too large")
        if not byte & 0x80:
            return value, pos
        shift += 7


def _string(block: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(block):
        raise HpackError("truncated header block")
    coded = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    if pos + length > len(block):
        raise HpackError("string longer than the header block")
    raw = block[pos:pos + length]
    if coded:
        raw = huffman(raw)
    # surrogateescape: bytes that are not UTF-8 come back exactly when encoded again, so
    # the table's sizes (in octets) stay those of the peer's table
    return raw.decode("utf-8", "surrogateescape"), pos + length
