"""
A bound on the response heads the front door reads from targets.

h11 (the front door's response parser, L{remotedialer.frontdoor._upstream}) holds a
head until its empty line has arrived, and parses a complete one of any
size, so a target (or the tunnel client in front of it) answering with an
endless stream of header lines, or with one huge head, would make the
server buffer it all.  L{HeadLimit} counts the bytes of each head before
they reach the parser (nothing is parsed here: it looks for line ends
only): past C{head_bytes} bytes or C{max_headers} lines the head is
refused and the connection aborted, with L{ResponseHeadTooLarge} (a 502
with that text) as its reason.  A head whose first bytes are not
C{HTTP/} is refused at once, too: a parser waiting for an empty line that
a non-HTTP service never sends would wait for the request's timeout.

The count is re-armed for every response on a kept-alive connection (by
L{HeadLimit.arm}, called as each request goes out: the connection is then
quiescent, so the next bytes are a new response), and after an
informational (1xx) head, which another head follows (but for a 101: what
follows it is the protocol switched to).  It sits above TLS,
so it sees plaintext.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost

__all__ = ["HeadLimit", "NOT_HTTP", "ResponseHeadTooLarge"]

_HEAD_END = b"\r\n\r\n"
_PREFIX = b"HTTP/"

#: Why a head that does not start as an HTTP response is refused.
NOT_HTTP = "the target's answer is not valid HTTP"


class ResponseHeadTooLarge(ConnectionLost):
    """The target's response head was over the front door's limits."""

    def __str__(self) -> str:
        return " ".join(str(arg) for arg in self.args)


class HeadLimit:
    """Counts one connection's response heads (see module docstring)."""

    def __init__(self, head_bytes: int = 64 * 1024, max_headers: int = 100) -> None:
        self.head_bytes = head_bytes
        self.max_headers = max_headers
        self.arm()

    def arm(self) -> None:
        """The next bytes received start a response head: count it."""
        self.counting = True
        self._seen = 0
        self._lines = 0
        self._tail = b""
        self._start = b""  # the head's first bytes: its protocol name and status code

    def feed(self, data: bytes) -> str | None:
        """
        C{data} was received: None while the heads in it are within the
        limits (or past the head: body bytes are not counted), else why the
        head is refused (the connection must then be aborted).
        """
        while self.counting:
            scan = self._tail + data
            end = scan.find(_HEAD_END)
            head_part = len(data) if end < 0 else end + len(_HEAD_END) - len(self._tail)
            if len(self._start) < 12:
                self._start += data[:12 - len(self._start)]
                if not _PREFIX.startswith(self._start[:len(_PREFIX)]):
                    self.counting = False
                    return NOT_HTTP
            self._seen += head_part
            head_end = end + 2 if end >= 0 else len(scan)
            self._lines += scan.count(b"\r\n", 0, head_end) - self._tail.count(b"\r\n")
            if self._seen > self.head_bytes or self._lines > self.max_headers + 1:
                self.counting = False
                return (f"the target's response head is over {self.head_bytes} bytes "
                        f"or {self.max_headers} headers")
            if end < 0:
                self._tail = scan[-3:]
                return None
            self.counting = False
            if self._start[9:10] == b"1" and self._start[9:12] != b"101":
                # "HTTP/1.1 1xx": informational, another head follows (in the rest of data, maybe);
                # after a 101, the protocol switched to.
                data = data[head_part:]
                self.arm()
                if not data:
                    return None
        return None
