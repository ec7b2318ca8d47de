"""
Dialing a server through an HTTP proxy: the CONNECT handshake, as an
endpoint.  What the proxy gets, and all it gets before the tunnel's own
bytes:

    CONNECT tunnel.example.com:443 HTTP/1.1
    Host: tunnel.example.com:443
    Proxy-Authorization: Basic dXNlcjpwYXNz      (the proxy URL's user:password)

A 2xx answer makes the connection a byte pipe to the server: the protocol
the caller's factory builds is connected to it, and whatever came after
the answer in the same read is that protocol's first data.  TLS to the
server is the caller's: wrapped in C{wrapClientTLS}, this endpoint carries
the handshake end to end, with the server's own name for SNI and for the
certificate check, exactly as without a proxy; the proxy sees only the
CONNECT line and encrypted bytes.

The answer is read with h11 (the head at most C{max_answer} bytes, within
C{timeout} seconds).  Anything but a 2xx answer fails the connect with a
L{ProxyError} saying what the proxy did: C{proxy 10.0.0.9:3128 answered
407 Proxy Authentication Required}, C{... did not answer CONNECT within
30 s}, C{cannot reach proxy 10.0.0.9:3128: connection ... refused}.
"""

from __future__ import annotations

import h11
from twisted.internet import defer
from twisted.internet.address import HostnameAddress
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.client._proxyrule import ProxyURL
from remotedialer.protocol._text import duration, printable
from remotedialer.tunnel._exceptions import ProxyError
from remotedialer.tunnel._logtext import dial_failure_text

__all__ = ["CONNECT_TIMEOUT", "MAX_ANSWER", "ProxyConnectEndpoint"]

#: The longest head of a proxy's answer to CONNECT we read.
MAX_ANSWER = 16 * 1024
#: Seconds a proxy has to answer CONNECT.
CONNECT_TIMEOUT = 30.0


def connect_target(host: str, port: int) -> str:
    """The authority a CONNECT names: C{host:port}, C{[v6]:port}."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Handshake(Protocol):
    """
    The connection to the proxy: sends CONNECT, reads the answer; then
    hands every byte and the end of the connection to the protocol it
    connected through it.
    """

    transport: ITCPTransport  # (the connection to the proxy, once made)

    def __init__(self, connecting: _Connecting) -> None:
        self._connecting = connecting
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=connecting.max_answer)
        self._timer: IDelayedCall | None = None
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        c = self._connecting
        if c.cancelled:  # (while the proxy was being reached)
            self.transport.abortConnection()
            return
        c.handshake = self
        headers = [("Host", c.target)]
        if c.proxy.authorization is not None:
            headers.append(("Proxy-Authorization", c.proxy.authorization))
        request = self._h11.send(h11.Request(method="CONNECT", target=c.target, headers=headers))
        self.transport.write((request or b"") + (self._h11.send(h11.EndOfMessage()) or b""))
        self._timer = c.clock.callLater(c.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        if self._connecting.result.called or self._connecting.cancelled:
            return
        self._h11.receive_data(data)
        self._read_answer()

    def _read_answer(self) -> None:
        proxy = self._connecting.proxy.address
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                if len(self._h11.trailing_data[0]) > self._connecting.max_answer:
                    self.fail(f"proxy {proxy} answered CONNECT with over {self._connecting.max_answer} bytes "
                              "of head")
                else:
                    self.fail(f"proxy {proxy} answered CONNECT with something that is not HTTP")
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                if 200 <= event.status_code < 300:
                    self._open()
                else:
                    reason = printable(event.reason) if event.reason else ""
                    self.fail(f"proxy {proxy} answered {event.status_code} {reason}".rstrip())
                return
            self.fail(f"proxy {proxy} closed the connection without answering CONNECT")
            return

    def _open(self) -> None:
        """2xx: the connection is the server's now."""
        self._stop_timer()
        c = self._connecting
        rest = bytes(self._h11.trailing_data[0])
        inner = c.factory.buildProtocol(HostnameAddress(c.host.encode("utf-8"), c.port))
        if inner is None:
            self.fail("the connection through the proxy was refused by its protocol factory")
            return
        self._inner = inner
        inner.makeConnection(self.transport)
        c.result.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _timed_out(self) -> None:
        self._timer = None
        self.fail(f"proxy {self._connecting.proxy.address} did not answer CONNECT within "
                  f"{duration(self._connecting.timeout)}")

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def fail(self, message: str) -> None:
        """The attempt failed: it fails with C{message}, and the connection to the proxy is dropped."""
        if not self._connecting.result.called and not self._connecting.cancelled:
            self._connecting.result.errback(ProxyError(message))
        self.abort()

    def abort(self) -> None:
        self._stop_timer()
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._inner is not None:
            self._inner.connectionLost(reason)
            return
        self._stop_timer()
        if not self._connecting.result.called and not self._connecting.cancelled:
            self._connecting.result.errback(ProxyError(
                f"proxy {self._connecting.proxy.address} closed the connection without answering CONNECT"))


class _HandshakeFactory(Factory):
    """Builds the one L{_Handshake}; start and stop reach the caller's factory (as endpoints do)."""

    def __init__(self, connecting: _Connecting) -> None:
        self._connecting = connecting

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _Handshake(self._connecting)

    def doStart(self) -> None:
        self._connecting.factory.doStart()

    def doStop(self) -> None:
        self._connecting.factory.doStop()


class _Connecting:
    """One connect through the proxy: what the handshake needs, and its result."""

    def __init__(self, endpoint: ProxyConnectEndpoint, factory: IProtocolFactory) -> None:
        self.clock = endpoint.clock
        self.proxy = endpoint.proxy
        self.host = endpoint.host
        self.port = endpoint.port
        self.target = connect_target(endpoint.host, endpoint.port)
        self.timeout = endpoint.timeout
        self.max_answer = endpoint.max_answer
        self.factory = factory
        self.handshake: _Handshake | None = None
        self.reaching: defer.Deferred[IProtocol] | None = None
        self.cancelled = False
        self.result: defer.Deferred[IProtocol] = defer.Deferred(self._cancel)

    def _cancel(self, result: defer.Deferred[IProtocol]) -> None:
        # (the Deferred then fails with CancelledError)
        self.cancelled = True
        if self.handshake is not None:
            self.handshake.abort()
        elif self.reaching is not None:
            self.reaching.cancel()

    def unreachable(self, failure: Failure) -> None:
        if not self.result.called and not self.cancelled:
            reason = dial_failure_text(failure, self.proxy.host, self.proxy.port)
            self.result.errback(ProxyError(f"cannot reach proxy {self.proxy.address}: {reason}"))


@implementer(IStreamClientEndpoint)
class ProxyConnectEndpoint:
    """
    Connects to C{host}:C{port} through the HTTP proxy C{proxy}, which
    C{proxy_endpoint} reaches (see the module docstring).  The connect
    fires once the proxy has opened the way, with the protocol built by
    the caller's factory; or fails with L{ProxyError}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        proxy_endpoint: IStreamClientEndpoint,
        proxy: ProxyURL,
        host: str,
        port: int,
        *,
        timeout: float = CONNECT_TIMEOUT,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        self.clock = clock
        self.proxy_endpoint = proxy_endpoint
        self.proxy = proxy
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_answer = max_answer

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        connecting = _Connecting(self, protocolFactory)
        reaching = self.proxy_endpoint.connect(_HandshakeFactory(connecting))
        connecting.reaching = reaching
        reaching.addErrback(connecting.unreachable)
        return connecting.result
