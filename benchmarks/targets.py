"""
The target services, each in its own process:

    python -m benchmarks.targets stream          a TCP payload sink/source
    python -m benchmarks.targets http            GET /big/N[/S] (or /big?size=N&seed=S)
    python -m benchmarks.targets relay --to PORT a plain Twisted TCP relay
    python -m benchmarks.targets echo            echoes every byte, holds the connection

Each listens on 127.0.0.1 (an ephemeral port unless C{--port}), then prints
its readiness line C{{"ready": true, "port": N}} on stdout; stdin EOF or
SIGTERM stops it.

C{stream} speaks a tiny protocol: a header L{HEADER} (op, size, seed), then
for C{U} the client sends C{size} payload bytes and the target answers their
sha256 and closes; for C{D} the target sends the payload and closes.

C{http} answers C{size} bytes of payload C{seed} with a Content-Length; the
body is written by a push producer that honours pause (so a slow reader
slows it down instead of filling its memory).

C{echo} answers every byte it gets and keeps the connection open until the
other side closes it: the target of the scale scenarios (a stream is known
to be open end to end once its first byte came back).

C{relay} is C{twisted.protocols.portforward}: each side the other's producer,
one hop of Python relaying, the baseline that the tunnel is compared with
(with TCP_NODELAY on both sockets, as the tunnel's own relays).
"""

from __future__ import annotations

import argparse
import hashlib
import struct

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from benchmarks.harness import serve_child
from benchmarks.payload import payload_chunks

HEADER = struct.Struct(">cQI")  # op (U or D), size, seed
DIGEST_SIZE = 32


@implementer(IPushProducer)
class PushSender:
    """
    Writes a payload to a consumer (a transport, or a twisted.web request)
    as a push producer: at most L{PER_TURN} bytes per reactor turn, nothing
    while paused.  When the payload is out it unregisters and calls
    C{on_done}.
    """

    PER_TURN = 1024 * 1024

    def __init__(self, consumer, size: int, seed: int, on_done=None) -> None:
        self.consumer = consumer
        self.chunks = payload_chunks(size, seed)
        self.on_done = on_done
        self.sent = 0
        self.paused = False
        self.stopped = False
        self.finished = False
        self.pauses = 0
        self._call = None

    def start(self) -> None:
        self.consumer.registerProducer(self, True)
        self._schedule()

    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        if self._call is None and not (self.paused or self.stopped or self.finished):
            self._call = reactor.callLater(0, self._produce)

    def _produce(self) -> None:
        self._call = None
        budget = self.PER_TURN
        while not (self.paused or self.stopped) and budget > 0:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.finished = True
                self.consumer.unregisterProducer()
                if self.on_done is not None:
                    self.on_done()
                return
            self.consumer.write(chunk)
            self.sent += len(chunk)
            budget -= len(chunk)
        self._schedule()


class StreamTarget(Protocol):
    """The C{stream} role: U (sink, answers the sha256) or D (source)."""

    def connectionMade(self) -> None:
        self.head = b""
        self.mode = None

    def dataReceived(self, data: bytes) -> None:
        if self.mode is None:
            self.head += data
            if len(self.head) < HEADER.size:
                return
            op, size, seed = HEADER.unpack(self.head[:HEADER.size])
            data, self.head = self.head[HEADER.size:], b""
            if op == b"U":
                self.mode = "U"
                self.need = size
                self.hash = hashlib.sha256()
            elif op == b"D":
                self.mode = "D"
                PushSender(self.transport, size, seed, self.transport.loseConnection).start()
                return
            else:
                self.transport.abortConnection()
                return
        if self.mode == "U" and data:
            if len(data) > self.need:  # more than announced: no digest, the sender fails
                self.mode = "X"
                self.transport.abortConnection()
                return
            self.hash.update(data)
            self.need -= len(data)
            if self.need == 0:
                self.mode = "X"
                self.transport.write(self.hash.digest())
                self.transport.loseConnection()


class Echo(Protocol):
    """The C{echo} role."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def big_path(size: int, seed: int = 0) -> str:
    """The path of C{size} bytes of payload C{seed} on the C{http} target."""
    return f"/big/{size}/{seed}"


def http_site():
    """The C{http} role's site: /big/N/S or /big?size=N&seed=S (N bytes of payload S)."""
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    class Big(Resource):
        isLeaf = True

        def render_GET(self, request):
            parts = [p for p in request.postpath if p]
            try:
                size = int(parts[0] if parts else request.args.get(b"size", [b"0"])[0])
                seed = int(parts[1] if len(parts) > 1 else request.args.get(b"seed", [b"0"])[0])
            except ValueError:
                size = -1
            if size < 0:
                request.setResponseCode(400)
                return b"size must be a non-negative integer\n"
            request.setHeader(b"Content-Type", b"application/octet-stream")
            request.setHeader(b"Content-Length", b"%d" % size)
            sender = PushSender(request, size, seed, request.finish)
            request.notifyFinish().addErrback(lambda _: sender.stopProducing())
            sender.start()
            return NOT_DONE_YET

    root = Resource()
    root.putChild(b"big", Big())
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # no access log: wrk makes millions of requests
    return site


def relay_factory(to_port: int):
    """portforward, Nagle off on both sockets as the tunnel's relays have it (a fair latency baseline)."""
    from twisted.protocols import portforward

    class Client(portforward.ProxyClient):
        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            super().connectionMade()

    class ClientFactory(portforward.ProxyClientFactory):
        protocol = Client
        noisy = False

    class Server(portforward.ProxyServer):
        clientProtocolFactory = ClientFactory

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            super().connectionMade()

    factory = portforward.ProxyFactory("127.0.0.1", to_port)
    factory.protocol = Server
    factory.noisy = False
    return factory


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.targets",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["stream", "http", "relay", "echo"])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--to", type=int, help="relay: the port on 127.0.0.1 to relay to")
    args = parser.parse_args(argv)
    if args.role == "stream":
        factory = Factory.forProtocol(StreamTarget)
        factory.noisy = False
    elif args.role == "http":
        factory = http_site()
    elif args.role == "echo":
        factory = Factory.forProtocol(Echo)
        factory.noisy = False
    else:
        if not args.to:
            parser.error("relay needs --to PORT")
        factory = relay_factory(args.to)

    def ready(channel):
        d = TCP4ServerEndpoint(reactor, args.port, backlog=1024, interface="127.0.0.1").listen(factory)
        def failed(f):
            channel.send({"ready": False, "error": f.getErrorMessage()})
            reactor.stop()

        d.addCallbacks(lambda port: channel.send({"ready": True, "port": port.getHost().port}), failed)

    serve_child(ready)


if __name__ == "__main__":
    main()
