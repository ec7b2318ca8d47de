"""
An HTTP CONNECT proxy into the clients' networks (C{--connect-proxy-listen}):
C{HTTPS_PROXY=http://foo:TOKEN@127.0.0.1:8124 kubectl get nodes}, or a
kubeconfig's C{proxy-url}, reaches the API server behind client C{foo}.

The client is the proxy user name (C{Proxy-Authorization: Basic}); the
target stays the real C{host:port}, so the tool's TLS (verification, SNI)
runs end to end, untouched.  Tools that cannot send proxy credentials name
the client in the host, C{<host>.<client>.tunnel} (L{remotedialer.server._access}).

twisted.web cannot serve CONNECT (a request cannot take its connection
over through a public API), so this is a protocol of its own: h11 parses
the request head, strictly and within L{UpgradeLimits} (size, header
lines, time to send it, connections still sending one), then the
connection becomes a L{TunnelSplice}.  Answers:

  - C{200 Connection established}, then the tunnel's bytes;
  - 400 a malformed head, 405 a method other than CONNECT, 408 a head not
    sent in time, 431 a head too big;
  - 407 no valid credentials (front-door tokens configured), or no client
    named; 403 a token not for the client named (its scope), a caller
    outside loopback (no tokens configured), or a target that is this
    server's own listener;
  - 502 the client is not connected or its dial failed (the reason given),
    504 the dial timed out.

Every error answer is one line of text/plain, and closes the connection.
"""

from __future__ import annotations

import base64
import binascii
import re
from http import HTTPStatus

import h11
from twisted.internet.interfaces import IProtocolNegotiationFactory
from zope.interface import implementer

from remotedialer.protocol._addresses import split_host_port
from remotedialer.protocol._text import printable
from remotedialer.proxies._handshake import HandshakeFactory, HandshakeSplice
from remotedialer.server._access import Refusal
from remotedialer.server._guard import HTTP_1_1_ONLY
from remotedialer.tunnel._logtext import address

__all__ = ["ConnectProxyFactory", "proxy_credentials"]

#: The realm our 407 answers name.
REALM = b'Basic realm="remotedialer"'

#: Where a request head ends, as h11 finds it (a bare LF ends a line too).
_HEAD_END = re.compile(rb"\n\r?\n")

_REFUSAL_STATUS = {
    "unauthenticated": 407, "no-client": 407, "caller-refused": 403, "client-not-allowed": 403,
    "own-listener": 403,
    "bad-request": 400, "dial-timeout": 504,
}


def proxy_credentials(value: bytes) -> tuple[str | None, bytes]:
    """
    C{(user, password)} of a C{Proxy-Authorization} value: C{Basic}
    (RFC 7617: base64 of C{user:password}, UTF-8), or C{Bearer <token>}
    (as the front door takes it; no user name).  ValueError if malformed.
    """
    scheme, _, rest = value.strip().partition(b" ")
    rest = rest.strip()
    if scheme.lower() == b"basic":
        try:
            decoded = base64.b64decode(rest, validate=True)
        except binascii.Error:
            raise ValueError("Proxy-Authorization: Basic credentials are not base64") from None
        user, sep, password = decoded.partition(b":")
        if not sep:
            raise ValueError("Proxy-Authorization: Basic credentials are not user:password")
        try:
            return user.decode("utf-8"), password
        except UnicodeDecodeError:
            raise ValueError("Proxy-Authorization: the user name is not UTF-8") from None
    if scheme.lower() == b"bearer" and rest:
        return None, rest
    raise ValueError("Proxy-Authorization: use Basic (user name: the client) or Bearer")


class _ConnectProxy(HandshakeSplice):
    """One proxy connection: its request head, then a splice (see module docstring)."""

    factory: ConnectProxyFactory

    def __init__(self, factory: HandshakeFactory) -> None:
        super().__init__(factory)
        self._parser = h11.Connection(h11.SERVER, max_incomplete_event_size=factory.limits.header_bytes)
        self._handshaking = True
        #: The head so far, counted here: h11 bounds only a head still incomplete, so
        #: one that arrives whole in one read would pass at any size.
        self._head = bytearray()
        self._counted = False

    def dataReceived(self, data: bytes) -> None:
        if not self._handshaking:
            super().dataReceived(data)  # relayed to the stream
            return
        if not self._pending:
            return  # answered; closing
        if self._head_over(data):
            self._refuse(431, "bad-request", f"request head over {self.factory.limits.header_bytes} bytes")
            return
        self._parser.receive_data(data)
        try:
            event = self._parser.next_event()
            while event is not h11.NEED_DATA and not isinstance(event, h11.Request):
                event = self._parser.next_event()  # (nothing else can come first)
        except h11.RemoteProtocolError as e:
            if e.error_status_hint == 431:
                self._refuse(431, "bad-request",
                             f"request head over {self.factory.limits.header_bytes} bytes")
            elif "Host" in str(e):  # (h11's other texts may hold a repr of the input)
                self._refuse(400, "bad-request", "an HTTP/1.1 request needs a Host header")
            else:
                self._refuse(400, "bad-request",
                             "malformed request head (this proxy takes 'CONNECT host:port HTTP/1.1')")
            return
        if isinstance(event, h11.Request):
            self._settled()
            self._request(event)

    def _head_over(self, data: bytes) -> bool:
        """Whether the request head, with C{data}, is over C{header_bytes} (what follows it not counted)."""
        if self._counted:
            return False
        limit = self.factory.limits.header_bytes
        start = max(0, len(self._head) - 2)
        self._head += data[: limit + 3 - len(self._head)]  # (enough to know)
        end = _HEAD_END.search(self._head, start)
        size = end.end() if end is not None else len(self._head)
        if end is not None:
            self._counted, self._head = True, bytearray()
        return size > limit

    def _request(self, request: h11.Request) -> None:
        limits = self.factory.limits
        if len(request.headers) > limits.max_headers:
            self._refuse(431, "bad-request", f"over {limits.max_headers} header lines")
            return
        if request.method != b"CONNECT":
            self._refuse(405, "bad-request", "this proxy only tunnels: CONNECT host:port "
                                             "(curl: --proxytunnel for http:// URLs)",
                         [(b"Allow", b"CONNECT")])
            return
        credentials = None
        for name, value in request.headers:
            if (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding":
                self._refuse(400, "bad-request", "a CONNECT request has no body")
                return
            if name == b"proxy-authorization":
                credentials = value
        try:
            host, port = split_host_port(request.target.decode("ascii"))
        except ValueError:  # (UnicodeDecodeError is one)
            self._refuse(400, "bad-request", "the CONNECT target must be host:port")
            return
        try:
            user, password = proxy_credentials(credentials) if credentials is not None else (None, None)
        except ValueError as e:
            self._refuse(400, "bad-request", str(e))
            return
        route = self.factory.access.admit(self.transport.getPeer(), password, user, host, port)
        if isinstance(route, Refusal):
            self._refuse(_REFUSAL_STATUS.get(route.reason, 400), route.reason, route.text)
            return
        self._handshaking = False
        self._parser.next_event()  # the request's EndOfMessage: what follows is the tunnel's
        early, _ = self._parser.trailing_data
        self.splice(route, bytes(early))

    def dial_succeeded(self) -> None:
        self.transport.write(self._parser.send(h11.Response(
            status_code=200, headers=[], reason=b"Connection established")))

    def dial_failed(self, reason: str, text: str) -> None:
        assert self.route is not None
        self._answer(_REFUSAL_STATUS.get(reason, 502), f"{self.route}: {text}")

    # Answers.

    def _refuse(self, status: int, reason: str, text: str,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self._settled()
        self.forwarder.refused(reason, text, address(self.transport.getPeer()))
        if status == 407:
            headers = [*(headers or []), (b"Proxy-Authenticate", REALM)]
        self._answer(status, text, headers)

    def _answer(self, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """One line of text/plain with C{status}, then close."""
        body = (" ".join(printable(text, limit=512).split()) + "\n").encode("utf-8")
        head = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Content-Length", b"%d" % len(body)),
                (b"Connection", b"close"), *(headers or [])]
        phrase = HTTPStatus(status).phrase.encode("ascii")
        response = h11.Response(status_code=status, headers=head, reason=phrase)
        try:
            data = self._parser.send(response) + self._parser.send(h11.Data(data=body))
        except h11.LocalProtocolError:  # (a state h11 cannot answer from): the same, by hand
            data = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
            data += b"".join(b"%s: %s\r\n" % pair for pair in head) + b"\r\n" + body
        self.transport.write(data)
        self.transport.loseConnection()

    def too_slow(self, within: str) -> None:
        self._refuse(408, "handshake-timeout", f"no complete request head {within}")


@implementer(IProtocolNegotiationFactory)
class ConnectProxyFactory(HandshakeFactory):
    """
    The CONNECT proxy's listening factory (see module docstring).

    @ivar pending: connections still sending their request head; past
        C{limits.max_pending} new ones are closed at once.
    """

    splice = _ConnectProxy
    handshaking = "sending their request heads"

    def acceptableProtocols(self) -> list[bytes]:
        """
        On a TLS listener (an HTTPS proxy) the one protocol ALPN may pick:
        the proxy speaks HTTP/1.1 (a factory naming none makes Twisted
        abort the handshake of any client that offers ALPN).
        """
        return list(HTTP_1_1_ONLY)

