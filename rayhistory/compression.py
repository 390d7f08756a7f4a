"""Bounded, streamed decompression of objects read from storage (pure functions, no I/O).

Anything in the history store can be damaged or crafted: a gzip object of a few hundred KB can inflate to
hundreds of MB. `gunzip` and `zlib_inflate` inflate a chunk at a time (zlib's `max_length`) and stop as
soon as the output passes its cap, so a reader's memory is bounded by the cap, never by what the data
claims. Two caps, whichever is smaller:

- `max_bytes`: the most one object may inflate to;
- `max_ratio`: the most it may inflate to per compressed byte (gzip's best on real Ray events is about
  11x; 1000x is only reached by data made to inflate). Outputs up to `ratio_floor` bytes are never refused
  by the ratio alone: a tiny object may compress very well and costs nothing.

Everything that is not whole, valid data (an empty object, a truncated stream, a bad checksum, trailing
garbage) raises `InflateError`; going past a cap raises its subclass `InflateLimitExceeded`. The message is
the reason a caller records (e.g. in a snapshot's objects_corrupt).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

GZIP_WBITS = zlib.MAX_WBITS | 16  # gzip header and trailer
ZLIB_WBITS = zlib.MAX_WBITS  # zlib header and trailer (zlib.compress)
CHUNK = 1 << 20  # bytes of output per step, and of input fed per step


class InflateError(ValueError):
    """Not whole, valid compressed data."""


class InflateLimitExceeded(InflateError):
    """The data inflates past a cap; nothing past the cap was kept."""


@dataclass(frozen=True)
class InflateLimits:
    max_bytes: int = 256 << 20
    max_ratio: float = 100.0
    ratio_floor: int = 1 << 20

    def limit_for(self, compressed_bytes: int) -> int:
        """The most `compressed_bytes` of input may inflate to."""
        by_ratio = max(self.ratio_floor, int(self.max_ratio * compressed_bytes))
        return min(self.max_bytes, by_ratio)


DEFAULT_LIMITS = InflateLimits()


def gunzip(data: bytes, limits: InflateLimits = DEFAULT_LIMITS) -> bytes:
    """gzip.decompress, bounded: every member of a multi-member stream, CRC and length checked."""
    return inflate(data, GZIP_WBITS, limits, multi_member=True)


def zlib_inflate(data: bytes, limits: InflateLimits = DEFAULT_LIMITS) -> bytes:
    """zlib.decompress, bounded."""
    return inflate(data, ZLIB_WBITS, limits)


def inflate(data: bytes, wbits: int, limits: InflateLimits = DEFAULT_LIMITS, multi_member: bool = False,
            chunk: int = CHUNK) -> bytes:
    if not data:
        raise InflateError("empty object (0 bytes)")
    limit = limits.limit_for(len(data))
    view = memoryview(data)
    out: list[bytes] = []
    total = 0
    pos = 0
    members = 0
    while True:
        d = zlib.decompressobj(wbits)
        members += 1
        while not d.eof:
            if d.unconsumed_tail:
                piece = d.unconsumed_tail
            elif pos < len(view):
                piece = view[pos:pos + chunk]
                pos += len(piece)
            else:
                raise InflateError(f"truncated: the stream ends after {total} inflated bytes")
            try:
                produced = d.decompress(piece, min(chunk, limit - total + 1))
            except zlib.error as exc:
                raise InflateError(f"not valid compressed data: {exc}") from None
            total += len(produced)
            if total > limit:
                raise InflateLimitExceeded(_over(limit, limits, len(data)))
            if produced:
                out.append(produced)
        rest = d.unused_data + bytes(view[pos:])
        if not rest or not rest.strip(b"\0"):  # gzip tools may pad with zeros
            break
        if not multi_member:
            raise InflateError(f"{len(rest)} bytes of trailing data after the compressed stream")
        view, pos = memoryview(rest), 0
    return b"".join(out)


def _over(limit: int, limits: InflateLimits, compressed: int) -> str:
    if limit >= limits.max_bytes:
        return f"inflates past the cap of {limits.max_bytes} bytes ({compressed} bytes compressed)"
    return (f"inflates past {limit} bytes, {limits.max_ratio:g}x its {compressed} compressed bytes "
            f"(the inflate ratio cap)")
