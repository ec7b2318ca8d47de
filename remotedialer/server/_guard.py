"""
A guard in front of the server's web site: every connection must deliver
the head of its first request (the tunnel upgrade, or a front-door
request) quickly and within bounds, before anything else of ours runs.

Without it a slowloris -- a connection sending one byte every few seconds
-- is held for ever (twisted.web's idle timeout restarts on every byte),
and enough of them exhaust file descriptors and lock real clients out.  The
guard closes a connection whose first request head is not complete within
C{UpgradeLimits.timeout}, answers 431 to one whose head is over
C{header_bytes} or C{max_headers} lines, and closes new connections at once
while C{max_pending} connections are still sending their heads.

The guard holds a connection itself until the head is complete, then
connects the site's own protocol to the real transport and hands it the
head: TLS, HTTP/2 negotiation (the HTTP/2 preface ends with an empty line,
and h2 applies its own limits from there) and Autobahn see the transport
itself.  A site of ours (L{BoundedSite}) is given the guard's limits, so
that its HTTP/1.1 channel applies the same ones, with the same answer, to
every request, the first included (twisted.web's own, smaller limits would
refuse a head the guard let through: L{remotedialer.server._bounds}); later
requests on a kept-alive connection are timed by twisted.web's idle timeout.

On a TLS listener the guard is the listening factory, so it is what TLS
asks which protocols it may negotiate (ALPN): it names the site's (h2 when
installed, and http/1.1), or those within C{alpn} (L{HTTP_1_1_ONLY}).  A
listening factory that names none makes Twisted's ALPN callback select
nothing, and OpenSSL then aborts the handshake of every client offering
ALPN (curl, browsers, kubectl); a client offering none is served either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolNegotiationFactory,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPFactory
from zope.interface import implementer

from remotedialer.protocol._limits import UpgradeLimits
from remotedialer.protocol._text import printable
from remotedialer.server._bounds import head_refusal, plain_answer
from remotedialer.server._h2limit import PREFACE, HeaderBlockLimit
from remotedialer.server._site import BoundedSite
from remotedialer.tunnel._logtext import address

__all__ = ["HTTP_1_1_ONLY", "HeaderGuardFactory"]

#: C{alpn} of a listener that serves HTTP/1.1 only (the admin endpoint).
HTTP_1_1_ONLY: tuple[bytes, ...] = (b"http/1.1",)

_HEAD_END = b"\r\n\r\n"


class _Refused(Protocol):
    """A connection refused while too many others are still sending their heads: closed at once."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]  # (every transport here has it)


class _HeaderGuard(Protocol):
    """
    Holds one connection until its first request head is complete, then
    connects the site's own protocol to the real transport (so TLS, HTTP/2
    negotiation and Autobahn see the transport itself) and only forwards.
    """

    transport: ITCPTransport  # the listening port's connection (TCP or TLS)

    def __init__(self, factory: HeaderGuardFactory, addr: IAddress | None) -> None:
        self.factory = factory
        self._addr = addr
        self._head = bytearray()
        self._pending = True
        self._deadline: IDelayedCall | None = None
        self._site_protocol: IProtocol | None = None
        #: The bound on an HTTP/2 connection's header blocks (None: not HTTP/2).
        self._h2: HeaderBlockLimit | None = None

    def connectionMade(self) -> None:
        self._deadline = self.factory.clock.callLater(self.factory.limits.timeout, self._too_slow)

    def dataReceived(self, data: bytes) -> None:
        if self._site_protocol is not None:
            if self._h2 is not None and self._h2_refused(data):
                return
            self._site_protocol.dataReceived(data)
            return
        if not self._pending:
            return  # refused; the connection is closing
        limits = self.factory.limits
        start = max(0, len(self._head) - len(_HEAD_END) + 1)
        self._head += data
        end = self._head.find(_HEAD_END, start)
        head_size = len(self._head) if end < 0 else end + len(_HEAD_END)
        lines = self._head.count(b"\r\n", 0, head_size)
        if head_size > limits.header_bytes or lines > limits.max_headers + 2:
            self._refuse(head_refusal(limits))
            return
        if end < 0:
            return
        self._settled()
        head, self._head = bytes(self._head), bytearray()
        answer = self.factory.answer_early(head[:end]) if self.factory.early is not None else None
        if answer is not None:
            self._answer(*answer)
            return
        protocol = self.factory.wrapped.buildProtocol(self._addr)
        if protocol is None:
            self.transport.loseConnection()
            return
        self._site_protocol = protocol
        if head.startswith(PREFACE[:16]):
            # HTTP/2: its header blocks are bounded by the same head limit
            # (h2 would hold a CONTINUATION flood whole; see _h2limit).
            self._h2 = HeaderBlockLimit(limits.header_bytes)
            if self._h2_refused(head):
                return
        protocol.makeConnection(self.transport)
        protocol.dataReceived(head)

    def _h2_refused(self, data: bytes) -> bool:
        assert self._h2 is not None
        refused = self._h2.feed(data)
        if refused is None:
            return False
        self.factory.log.info("closed a connection from {addr}: {reason}", addr=_address(self),
                              reason=refused)
        self._h2 = None
        self.transport.abortConnection()
        return True

    def _settled(self) -> None:
        if self._pending:
            self._pending = False
            self.factory.pending -= 1
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _refuse(self, reason: str) -> None:
        self.factory.log.info("refused a request from {addr}: {reason}", addr=_address(self), reason=reason)
        self._settled()
        self.transport.write(plain_answer(431, reason))
        self.transport.loseConnection()

    def _answer(self, code: int, text: str) -> None:
        """Answer now, before the body is read, and close (the body is never taken in)."""
        self.factory.log.info("answered {code} to a request from {addr} before its body: {text}",
                              code=code, addr=_address(self), text=printable(text))
        self.transport.write(plain_answer(code, printable(text, limit=512)))
        self.transport.loseConnection()

    def _too_slow(self) -> None:
        self._deadline = None
        self.factory.log.info("closed a connection from {addr}: no complete request head within {timeout} s",
                              addr=_address(self), timeout=self.factory.limits.timeout)
        self._settled()
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._settled()
        protocol, self._site_protocol = self._site_protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


def _address(protocol: _HeaderGuard) -> str:
    return address(protocol.transport.getPeer())


@implementer(IProtocolNegotiationFactory)
class HeaderGuardFactory(Factory):
    """
    Guards C{wrapped} (a twisted.web Site) as the module docstring says.
    C{pending} is how many connections are still sending their first
    request head.  C{alpn}, if given, bounds the protocols TLS may
    negotiate to those of the site within it (L{acceptableProtocols}).
    """

    log = Logger()
    noisy = False  # the listening port logs "... starting on <port>"

    def __init__(self, wrapped: HTTPFactory, limits: UpgradeLimits | None = None,
                 clock: IReactorTime | None = None,
                 early: Callable[[bytes, bytes], tuple[int, str] | None] | None = None,
                 name: str = "HTTP listener", alpn: Sequence[bytes] | None = None) -> None:
        #: What its listening port's log lines call it ("<name> starting on 8123").
        self.name = name
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.wrapped = wrapped
        self.clock: IReactorTime = clock
        self.limits = limits if limits is not None else UpgradeLimits()
        if isinstance(wrapped, BoundedSite):
            wrapped.limits = self.limits  # one set of limits for every request (see module docstring)
        self.pending = 0
        self._refusing = False
        #: C{early(method, path)} may answer a request that carries a body
        #: before the body is read: C{(status, text)}, or None to go on.
        self.early = early
        #: The protocols TLS may negotiate are the site's within these (None: all the site's).
        self.alpn = tuple(alpn) if alpn is not None else None
        if self.alpn is not None and not self.acceptableProtocols():
            raise ValueError(f"the site speaks none of the protocols {list(self.alpn)}")

    def logPrefix(self) -> str:
        return self.name

    def acceptableProtocols(self) -> list[bytes]:
        """
        What a TLS listener in front of the guard may negotiate (ALPN), most
        preferred first: the site's own protocols (twisted.web's Site: h2 if
        installed, http/1.1), or http/1.1 if it names none (the guard itself
        speaks HTTP/1.1), within C{alpn} if given.
        """
        site = IProtocolNegotiationFactory(self.wrapped, None)
        protocols = list(site.acceptableProtocols()) if site is not None else list(HTTP_1_1_ONLY)
        if self.alpn is not None:
            protocols = [protocol for protocol in protocols if protocol in self.alpn]
        return protocols

    def answer_early(self, head: bytes) -> tuple[int, str] | None:
        """The early answer for a request head with a body, if C{early} has one."""
        lines = head.split(b"\r\n")
        request_line = lines[0].split(b" ")
        if len(request_line) != 3 or self.early is None:
            return None
        has_body = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length" and value not in (b"", b"0"):
                has_body = True
            elif name == b"transfer-encoding":
                has_body = True
        if not has_body:
            return None
        return self.early(request_line[0], request_line[1])

    def startFactory(self) -> None:
        self.wrapped.doStart()

    def stopFactory(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if self.pending >= self.limits.max_pending:
            if not self._refusing:
                self._refusing = True
                self.log.warn("{pending} connections are still sending their request heads (the limit): "
                              "refusing new ones", pending=self.pending)
            # A protocol that closes at once, not None: a TLS listener wraps
            # what this returns, and None there is a traceback per connection.
            return _Refused()
        self._refusing = False
        self.pending += 1
        return _HeaderGuard(self, addr)
