"""
A small HTTP CONNECT proxy for tests, behaving as a corporate proxy does
(Twisted; on any reactor: the real one in tests/system, the simulated
network's in unit tests).

It reads C{CONNECT host:port HTTP/1.1} and its headers; with
C{credentials}, it wants C{Proxy-Authorization: Basic} of them and
answers anything else with C{407 Proxy Authentication Required}; it
resolves the host itself (first through its own C{hosts}: names only the
proxy knows, as in a network whose DNS the agent cannot use), connects,
answers C{200 Connection established} and relays bytes both ways, each
side the other's producer (the portforward idiom).  C{requests} holds the
request line of every CONNECT it was sent, C{authorizations} what came as
C{Proxy-Authorization}.

    proxy = RecordingProxy(reactor, credentials=("agent", "s3cret"), hosts={"tunnel.test": "127.0.0.1"})
    port = await listen_tcp(proxy, self)
"""

from __future__ import annotations

import base64

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

MAX_HEAD = 64 * 1024


class RecordingProxy(Factory):
    def __init__(self, reactor, credentials: tuple[str, str] | None = None,
                 hosts: dict[str, str] | None = None) -> None:
        self.reactor = reactor
        self.credentials = credentials
        self.hosts = dict(hosts or {})
        #: The request line of every CONNECT received ("CONNECT host:port HTTP/1.1").
        self.requests: list[str] = []
        #: The Proxy-Authorization header of each (None: none sent).
        self.authorizations: list[str | None] = []
        #: Connections relayed, and answered 407; connections open now (both sides).
        self.relayed = 0
        self.refused = 0
        self.open = 0

    def buildProtocol(self, addr) -> Protocol:
        return _ClientSide(self)


class _Upstream(Protocol):
    """The proxy's connection to the target."""

    def __init__(self, client_side: _ClientSide) -> None:
        self.client_side = client_side

    def connectionMade(self) -> None:
        self.client_side.proxy.open += 1
        self.client_side.upstream_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.client_side.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:
        self.client_side.proxy.open -= 1
        self.client_side.transport.unregisterProducer()
        self.client_side.transport.loseConnection()


class _ClientSide(Protocol):
    """The client's connection to the proxy: the CONNECT head, then the relay."""

    def __init__(self, proxy: RecordingProxy) -> None:
        self.proxy = proxy
        self.head = b""
        self.rest = b""
        self.upstream: _Upstream | None = None
        self.relaying = False
        self.gone = False

    def connectionMade(self) -> None:
        self.proxy.open += 1

    def dataReceived(self, data: bytes) -> None:
        if self.relaying:
            self.upstream.transport.write(data)
            return
        if self.upstream is not None or self.head.endswith(b"\r\n\r\n"):
            self.rest += data  # (sent before the 200: not how clients behave, but kept)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > MAX_HEAD:
                self.answer(b"431 Request Header Fields Too Large")
            return
        self.head, _, self.rest = self.head.partition(b"\r\n\r\n")
        self.head += b"\r\n\r\n"
        self.request()

    def answer(self, status: bytes, headers: bytes = b"") -> None:
        self.transport.write(b"HTTP/1.1 " + status + b"\r\n" + headers + b"Content-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
        self.transport.loseConnection()

    def request(self) -> None:
        lines = self.head.decode("latin-1").split("\r\n")
        self.proxy.requests.append(lines[0])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        self.proxy.authorizations.append(headers.get("proxy-authorization"))
        method, _, rest = lines[0].partition(" ")
        target, _, _version = rest.partition(" ")
        if method != "CONNECT":
            self.answer(b"405 Method Not Allowed")
            return
        if self.proxy.credentials is not None:
            user, password = self.proxy.credentials
            wanted = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if headers.get("proxy-authorization") != wanted:
                self.proxy.refused += 1
                self.answer(b"407 Proxy Authentication Required",
                            b'Proxy-Authenticate: Basic realm="test"\r\n')
                return
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        address = self.proxy.hosts.get(host, host)
        endpoint = HostnameEndpoint(self.proxy.reactor, address, int(port))
        d = endpoint.connect(Factory.forProtocol(lambda: _Upstream(self)))
        d.addErrback(lambda _: self.answer(b"502 Bad Gateway"))

    def upstream_made(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        if self.gone:  # (the client left while we connected)
            upstream.transport.loseConnection()
            return
        self.relaying = True
        self.proxy.relayed += 1
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.transport.registerProducer(upstream.transport, True)
        upstream.transport.registerProducer(self.transport, True)
        if self.rest:
            upstream.transport.write(self.rest)
            self.rest = b""

    def connectionLost(self, reason: Failure = None) -> None:
        self.proxy.open -= 1
        self.gone = True
        if self.upstream is not None:
            self.upstream.transport.unregisterProducer()
            self.upstream.transport.loseConnection()


def main(argv: list[str] | None = None) -> None:
    """
    Run one on its own, for a manual try, printing each CONNECT line:
    C{python -m tests.connectproxy 127.0.0.1:3128 [user:password]}.
    """
    import sys

    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    argv = sys.argv[1:] if argv is None else argv
    host, _, port = argv[0].rpartition(":")
    credentials = tuple(argv[1].split(":", 1)) if len(argv) > 1 else None
    proxy = RecordingProxy(reactor, credentials)
    seen = proxy.requests

    class Printing(list):
        def append(self, line: str) -> None:
            print(f"proxy: {line}", flush=True)
            super().append(line)

    proxy.requests = Printing(seen)
    TCP4ServerEndpoint(reactor, int(port), interface=host).listen(proxy)
    print(f"proxy: listening on {host}:{port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
