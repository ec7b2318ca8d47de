"""
A bound on the HTTP/2 header blocks a caller sends, read from the frames'
9-byte headers before h2 sees them.

A header block is a HEADERS (or PUSH_PROMISE) frame and the CONTINUATION
frames that follow it until one carries END_HEADERS.  h2 (under Twisted's
HTTP/2 channel) holds a block until its end, however many CONTINUATION
frames it takes: a caller sending one HEADERS frame and then CONTINUATION
frames for ever makes the server hold gigabytes, and the memory stays after
the connection is gone (the "CONTINUATION flood").  L{HeaderBlockLimit}
counts each block's bytes and frames as they pass and refuses the
connection past C{max_bytes} or C{max_frames}: the same head limit the
HTTP/1.1 guard applies (C{UpgradeLimits.header_bytes}).  Nothing is parsed
but frame headers; payloads are skipped by length, so the cost is a few
operations per frame.
"""

from __future__ import annotations

__all__ = ["PREFACE", "HeaderBlockLimit"]

#: What an HTTP/2 connection's caller sends first (RFC 9113 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_HEADERS = 0x1
_PUSH_PROMISE = 0x5
_CONTINUATION = 0x9
_END_HEADERS = 0x4
_FRAME_HEADER = 9


class HeaderBlockLimit:
    """Counts the header blocks of one HTTP/2 connection's inbound frames (see module docstring)."""

    def __init__(self, max_bytes: int, max_frames: int = 64) -> None:
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self._preface = len(PREFACE)  # preface bytes still to skip
        self._header = b""  # a frame header's first bytes, while it is incomplete
        self._skip = 0  # payload bytes of the current frame still to skip
        self._in_block = False
        self._block_bytes = 0
        self._block_frames = 0

    def feed(self, data: bytes) -> str | None:
        """C{data} arrived: None while within the limits, else why the connection is refused."""
        view = memoryview(data)
        if self._preface:
            taken = min(self._preface, len(view))
            self._preface -= taken
            view = view[taken:]
        while view:
            if self._skip:
                taken = min(self._skip, len(view))
                self._skip -= taken
                view = view[taken:]
                continue
            need = _FRAME_HEADER - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) < _FRAME_HEADER:
                return None
            header, self._header = self._header, b""
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            refused = self._frame(kind, flags, length)
            if refused is not None:
                return refused
            self._skip = length
        return None

    def _frame(self, kind: int, flags: int, length: int) -> str | None:
        if kind in (_HEADERS, _PUSH_PROMISE):
            self._in_block, self._block_bytes, self._block_frames = True, 0, 0
        elif kind != _CONTINUATION:
            return None  # (a frame inside a block is h2's protocol error to find)
        if not self._in_block:
            return None
        self._block_bytes += length
        self._block_frames += 1
        if self._block_bytes > self.max_bytes or self._block_frames > self.max_frames:
            return (f"HTTP/2 header block over {self.max_bytes} bytes "
                    f"or {self.max_frames} frames")
        if flags & _END_HEADERS:
            self._in_block = False
        return None
