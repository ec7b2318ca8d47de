"""
Every request on a connection to one of the server's sites is bounded as
the guard (L{remotedialer.server._guard}) bounds the first: one set of
limits, one answer for each.

twisted.web's HTTP/1.1 channel has limits of its own, smaller than ours
and answered otherwise: 16 KiB of header lines (a bare 400), 16 KiB for a
line (the connection closed, no answer), 500 headers.  A head the guard
let through (up to C{UpgradeLimits.header_bytes}, 64 KiB) was then refused
by the channel.  L{BoundedHTTPChannel} sets the channel's limits to ours
and counts each head itself, so that a head over them is answered 431 with
the guard's text, on the first request or any later one.

A body's framing is bounded too, where twisted.web waits: a
C{Content-Length} or a chunk size over 2**63-1 bytes (what Go, and most
HTTP implementations, can represent) is answered 400 at once.  Before, a
caller declaring a chunk of 2**112 bytes held its connection and request
until it left; and a C{Content-Length} of over 4,300 digits made
twisted.web's parser raise (Python's limit on converting long numbers).
"""

from __future__ import annotations

from http import HTTPStatus

from twisted.logger import Logger
from twisted.web.http import HTTPChannel

from remotedialer.protocol._limits import UpgradeLimits
from remotedialer.tunnel._logtext import address

__all__ = ["MAX_BODY_LENGTH", "BoundedHTTPChannel", "ChunkSizes", "head_refusal", "plain_answer"]

#: The largest Content-Length or chunk size taken (Go's int64).
MAX_BODY_LENGTH = 2**63 - 1
#: Hex digits of MAX_BODY_LENGTH (a longer size, leading zeros aside, is over it).
_HEX_DIGITS = len(f"{MAX_BODY_LENGTH:x}")
_DEC_DIGITS = len(str(MAX_BODY_LENGTH))
#: twisted.web's bound of a chunk-size line (twisted.web.http.maxChunkSizeLineLength).
_CHUNK_LINE = 1024


def plain_answer(code: int, text: str) -> bytes:
    """A whole HTTP/1.1 answer: C{code}, one line of text/plain, and the connection closes."""
    body = (" ".join(text.split()) + "\n").encode("utf-8")
    try:
        phrase = HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        phrase = b"Error"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (code, phrase, len(body), body))


def head_refusal(limits: UpgradeLimits) -> str:
    """The one text of a 431, from the guard or the channel."""
    return f"request head over {limits.header_bytes} bytes or {limits.max_headers} headers"


def _over(digits: bytes, base_digits: int, base: int) -> bool:
    significant = digits.lstrip(b"0")
    return len(significant) > base_digits or (
        len(significant) == base_digits and int(significant, base) > MAX_BODY_LENGTH)


class ChunkSizes:
    """
    Reads the framing of one chunked body as twisted.web's decoder does
    (RFC 9112 7.1), only to see each chunk's size: L{feed} says when one is
    over L{MAX_BODY_LENGTH}.  What the decoder refuses (a bad size line, a
    chunk without its CRLF) is left to it.  C{done} once the last chunk and
    the trailer are in.
    """

    def __init__(self) -> None:
        self.done = False
        self._state = "size"
        self._line = bytearray()
        self._left = 0

    def feed(self, data: bytes) -> str | None:
        """Take the next bytes of the body; a refusal text if a chunk size is over the bound."""
        view = memoryview(data)
        while view and not self.done:
            if self._state in ("data", "crlf"):
                step = min(self._left, len(view))
                self._left -= step
                view = view[step:]
                if not self._left:
                    if self._state == "data":
                        self._state, self._left = "crlf", 2  # (the decoder checks they are CRLF)
                    else:
                        self._state = "size"
                continue
            # "size" or "trailer": a line, ended by CRLF as the decoder reads it (and
            # looked for within the longest the decoder takes, not the whole read).
            held = len(self._line)
            window = self._line + view[: _CHUNK_LINE + 2 - held]
            end = window.find(b"\r\n")
            if end < 0:
                if len(window) > _CHUNK_LINE + 1:
                    self.done = True  # (the decoder refuses a line this long itself)
                else:
                    self._line = window
                return None
            view = view[end + 2 - held:]
            line, self._line = bytes(window[:end]), bytearray()
            if self._state == "trailer":
                self.done = not line
                continue
            refusal = self._size(line)
            if refusal is not None:
                return refusal
        return None

    def _size(self, line: bytes) -> str | None:
        digits = line.split(b";", 1)[0]
        if not digits or digits.strip(b"0123456789abcdefABCDEF"):
            self.done = True  # not a size: the decoder's to refuse
            return None
        if _over(digits, _HEX_DIGITS, 16):
            return f"chunk size over {MAX_BODY_LENGTH} bytes"
        self._left = int(digits, 16)
        self._state = "data" if self._left else "trailer"
        return None


class BoundedHTTPChannel(HTTPChannel):
    """
    twisted.web's HTTP/1.1 channel with our limits (C{limits}, set by its
    site; see the module docstring): a head over them answered 431, a
    Content-Length or chunk size over L{MAX_BODY_LENGTH} 400, each at once
    and closing the connection; an answer already under way is cut short
    instead.  C{refused} once it has refused.
    """

    log = Logger()
    limits = UpgradeLimits()
    refused = False
    #: The head being read: its bytes (CRLFs included) and non-empty lines (None: between heads).
    _head_bytes = 0
    _head_lines = 0
    #: The chunked body being read, if any.
    _chunks: ChunkSizes | None = None

    def bound(self, limits: UpgradeLimits) -> None:
        """Apply C{limits}: twisted.web's own are set to them, so that ours answer first."""
        self.limits = limits
        self.MAX_LENGTH = limits.header_bytes
        self.totalHeadersSize = limits.header_bytes
        self.maxHeaders = limits.max_headers

    def lineReceived(self, line: bytes) -> None:
        # (Every head line comes here: as little as can be done.)
        if line:
            self._head_lines += 1
            self._head_bytes += len(line) + 2
            limits = self.limits
            if self._head_bytes > limits.header_bytes or self._head_lines > limits.max_headers + 1:
                self.refuse(431, head_refusal(limits))
                return
        elif self._head_lines:  # the end of a head (its empty line counts, as the guard counts it)
            over = self._head_bytes + 2 > self.limits.header_bytes
            self._head_lines = self._head_bytes = 0
            if over:
                self.refuse(431, head_refusal(self.limits))
                return
        super().lineReceived(line)  # type: ignore[no-untyped-call]  # Twisted's, untyped

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(431, head_refusal(self.limits))

    def headerReceived(self, line: bytes) -> bool:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            value = value.strip(b" \t")
            if value.isdigit() and _over(value, _DEC_DIGITS, 10):
                self.refuse(400, f"Content-Length over {MAX_BODY_LENGTH} bytes")
                return False
        accepted: bool = super().headerReceived(line)  # type: ignore[no-untyped-call]  # Twisted's
        if accepted and name == b"transfer-encoding" and value.strip(b" \t").lower() == b"chunked":
            self._chunks = ChunkSizes()
        return accepted

    def rawDataReceived(self, data: bytes) -> None:
        chunks = self._chunks
        if chunks is not None:
            refusal = chunks.feed(data)
            if refusal is not None:
                self._chunks = None
                self.refuse(400, refusal)
                return
            if chunks.done:
                self._chunks = None
        super().rawDataReceived(data)

    def refuse(self, code: int, text: str) -> None:
        """Answer C{code} with C{text} and close; an answer already started is cut short instead."""
        if self.refused:
            return
        self.refused = True
        self._chunks = None
        transport = self.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return  # (answered, and closing already: an answer given before the body was in)
        self.log.info("refused a request from {addr}: {reason}", addr=address(transport.getPeer()),
                      reason=text)
        requests = self.requests
        if requests and requests[-1].startedWriting:
            transport.abortConnection()  # type: ignore[attr-defined]  # every TCP/TLS transport has it
            return
        transport.write(plain_answer(code, text))
        self.loseConnection()  # type: ignore[no-untyped-call]  # Twisted's, untyped
