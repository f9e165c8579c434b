"""Bounded stream decoding: how large a stream becomes once decoded, never inflating past a cap.

Only the general-purpose filters are decoded (Flate, LZW, RunLength, ASCIIHex, ASCII85). An image
filter (DCT, JPX, JBIG2, CCITTFax) or an unknown one ends the chain: neither qpdf nor pyHanko
decodes those while stamping. Predictors never enlarge data and are ignored, and LZW is read with
the default ``/EarlyChange 1``. Data a filter cannot decode ends the chain too, so a corrupt
stream counts with the size it reached: the question here is size, not correctness.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Callable, Sequence


class DecodeLimitExceeded(Exception):
    """A filter produced more bytes than allowed."""


def _flate(data: bytes, cap: int) -> bytes:
    out = zlib.decompressobj().decompress(data, cap + 1)
    if len(out) > cap:
        raise DecodeLimitExceeded
    return out


def _lzw(data: bytes, cap: int) -> bytes:
    clear, end = 256, 257
    table = [bytes((i,)) for i in range(256)] + [b"", b""]
    out = bytearray()
    width, buffer, bits, previous = 9, 0, 0, b""
    for byte in data:
        buffer, bits = (buffer << 8) | byte, bits + 8
        while bits >= width:
            bits -= width
            code, buffer = buffer >> bits, buffer & ((1 << bits) - 1)
            if code == clear:
                del table[258:]
                width, previous = 9, b""
                continue
            if code == end:
                return bytes(out)
            if code < len(table):
                entry = table[code]
            elif code == len(table) and previous:
                entry = previous + previous[:1]
            else:
                raise ValueError("invalid LZW code")
            if previous and len(table) < 4096:
                table.append(previous + entry[:1])
            out += entry
            if len(out) > cap:
                raise DecodeLimitExceeded
            previous = entry
            if len(table) + 1 >= 1 << width and width < 12:
                width += 1
    return bytes(out)


def _run_length(data: bytes, cap: int) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data) and data[i] != 128:
        length = data[i]
        if length < 128:
            out += data[i + 1:i + 2 + length]
            i += length + 2
        else:
            out += data[i + 1:i + 2] * (257 - length)
            i += 2
        if len(out) > cap:
            raise DecodeLimitExceeded
    return bytes(out)


def _ascii_hex(data: bytes, cap: int) -> bytes:
    digits = b"".join(data.split(b">", 1)[0].split())
    return binascii.unhexlify(digits + b"0" * (len(digits) % 2))


def _ascii85(data: bytes, cap: int) -> bytes:
    text = b"".join(data.split(b"~>", 1)[0].split()).removeprefix(b"<~")
    if len(text) + 4 * text.count(b"z") > cap:  # an upper bound: 5 characters make 4 bytes, "z" makes 4
        raise DecodeLimitExceeded
    return base64.a85decode(text)


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "/FlateDecode": _flate, "/Fl": _flate,
    "/LZWDecode": _lzw, "/LZW": _lzw,
    "/RunLengthDecode": _run_length, "/RL": _run_length,
    "/ASCIIHexDecode": _ascii_hex, "/AHx": _ascii_hex,
    "/ASCII85Decode": _ascii85, "/A85": _ascii85,
}


def decoded_size(raw: bytes, filters: Sequence[str], cap: int) -> int:
    """Size of ``raw`` decoded through ``filters`` (first applied first); DecodeLimitExceeded past ``cap``."""
    data = raw
    for name in filters:
        decoder = _DECODERS.get(name)
        if decoder is None:
            break
        try:
            data = decoder(data, cap)
        except (zlib.error, ValueError):
            break
    if len(data) > cap:  # data left undecoded counts too
        raise DecodeLimitExceeded
    return len(data)
