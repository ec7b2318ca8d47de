"""
A bound on the response heads the front door reads from targets.

twisted.web's HTTP client parses a response's status line and headers with
no limit on their total size or count, so a target (or the tunnel client in
front of it) that answers with an endless stream of header lines would make
the server buffer them all.  This wraps each connection the front door's
Agent makes: the bytes before the first empty line (the head) are counted,
and past C{head_bytes} or C{max_headers} lines the connection is aborted
and the request fails with L{ResponseHeadTooLarge} (a 502 with that text).

The count is re-armed for every response on a reused (kept-alive)
connection: by L{_HeadLimit.begin}, which the front door's connection pool
calls each time it hands the connection out for a request (the connection
is then quiescent, so the next bytes are a new response), and after an
informational (1xx) head, which another head follows.  The wrapper sits
above TLS, so it sees plaintext.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from remotedialer._interfaces import IFlowTransport

__all__ = ["HeadLimitedEndpointFactory", "HeadLimitedConnection", "ResponseHeadTooLarge"]

_HEAD_END = b"\r\n\r\n"


class ResponseHeadTooLarge(ConnectionLost):
    """The target's response head was over the front door's limits."""

    def __str__(self) -> str:
        return " ".join(str(arg) for arg in self.args)


class _HeadLimit(ProtocolWrapper):
    factory: _HeadLimitFactory
    transport: IFlowTransport  # a TunnelStream, or TLS over one

    def __init__(self, factory: _HeadLimitFactory, wrapped: IProtocol) -> None:
        super().__init__(factory, wrapped)
        self._too_large: str | None = None
        #: Hears why the connection ended (the current request's, see begin).
        self.on_lost = factory.on_lost
        #: Requests begun on this connection (over 1: it was reused).
        self.requests = 0
        self._arm()

    def _arm(self) -> None:
        """The next bytes received start a response head: count it."""
        self._seen = 0
        self._lines = 0
        self._tail = b""
        self._start = b""  # the head's first bytes, for its status code
        self._counting = True

    def begin(self, on_lost: Callable[[Failure], object] | None = None) -> None:
        """A request is about to be sent on this (quiescent) connection: count its response's head."""
        self.requests += 1
        self.on_lost = on_lost
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        while self._counting:
            limits = self.factory
            scan = self._tail + data
            end = scan.find(_HEAD_END)
            head_part = len(data) if end < 0 else end + len(_HEAD_END) - len(self._tail)
            if len(self._start) < 12:
                self._start += data[:12 - len(self._start)]
            self._seen += head_part
            head_end = end + 2 if end >= 0 else len(scan)
            self._lines += scan.count(b"\r\n", 0, head_end) - self._tail.count(b"\r\n")
            if self._seen > limits.head_bytes or self._lines > limits.max_headers + 1:
                self._too_large = (f"the target's response head is over {limits.head_bytes} bytes "
                                   f"or {limits.max_headers} headers")
                self._counting = False
                self.transport.abortConnection()
                return
            if end < 0:
                self._tail = scan[-3:]
                break
            self._counting = False
            if self._start[9:10] == b"1":
                # "HTTP/1.1 1xx": informational, another head follows (in the rest of data, maybe).
                rest = data[head_part:]
                super().dataReceived(data[:head_part])  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
                self._arm()
                data = rest
                if not data:
                    return
        super().dataReceived(data)  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._too_large is not None:
            reason = Failure(ResponseHeadTooLarge(self._too_large))
        if self.on_lost is not None:
            self.on_lost(reason)
        self.factory.connection_lost(self)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653


class _HeadLimitFactory(WrappingFactory[_HeadLimit]):
    protocol = _HeadLimit

    def __init__(self, wrapped: IProtocolFactory, head_bytes: int, max_headers: int,
                 on_lost: Callable[[Failure], object] | None = None) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        self.head_bytes = head_bytes
        self.max_headers = max_headers
        self.on_lost = on_lost
        #: Told of each connection's end (a pool keeping count of its connections).
        self.on_connection_lost: Callable[[_HeadLimit], object] | None = None

    def connection_lost(self, connection: _HeadLimit) -> None:
        if self.on_connection_lost is not None:
            self.on_connection_lost(connection)


@implementer(IStreamClientEndpoint)
class _HeadLimitedEndpoint:
    def __init__(self, endpoint: IStreamClientEndpoint, head_bytes: int, max_headers: int,
                 on_lost: Callable[[Failure], object] | None,
                 on_connection_lost: Callable[[_HeadLimit], object] | None = None,
                 on_begin: Callable[[_HeadLimit], object] | None = None) -> None:
        self._endpoint = endpoint
        #: Told which connection this endpoint's request goes out on (by a pool).
        self.on_begin = on_begin
        self._head_bytes = head_bytes
        self._max_headers = max_headers
        #: Why the connection of this endpoint's request ended (see HeadLimitedEndpointFactory).
        self.on_lost = on_lost
        self._on_connection_lost = on_connection_lost

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = _HeadLimitFactory(protocolFactory, self._head_bytes, self._max_headers, self.on_lost)
        factory.on_connection_lost = self._on_connection_lost

        def unwrapped(wrapper: IProtocol) -> IProtocol:
            return cast(_HeadLimit, wrapper).wrappedProtocol  # what our factory built

        return self._endpoint.connect(factory).addCallback(unwrapped)


@implementer(IAgentEndpointFactory)
class HeadLimitedEndpointFactory:
    """
    Wraps C{inner}'s endpoints so that response heads are bounded (see
    module docstring).  C{on_lost} hears why each connection really ended:
    for a body read until the connection closes, twisted.web reports any
    end as possible data loss, so only this tells a complete body from one
    cut short by an error.
    """

    def __init__(self, inner: IAgentEndpointFactory, head_bytes: int = 64 * 1024,
                 max_headers: int = 100, on_lost: Callable[[Failure], object] | None = None,
                 on_connection_lost: Callable[[_HeadLimit], object] | None = None,
                 on_begin: Callable[[_HeadLimit], object] | None = None) -> None:
        self._inner = inner
        self._on_begin = on_begin
        self._head_bytes = head_bytes
        self._max_headers = max_headers
        self._on_lost = on_lost
        self._on_connection_lost = on_connection_lost

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return _HeadLimitedEndpoint(self._inner.endpointForURI(uri), self._head_bytes, self._max_headers,
                                    self._on_lost, self._on_connection_lost, self._on_begin)


#: A connection of a HeadLimitedEndpointFactory's endpoints (its HTTP client protocol's transport).
HeadLimitedConnection = _HeadLimit
