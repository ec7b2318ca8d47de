"""
Test fixtures on real loopback sockets: a tunnel server in a twisted.web
site, a client service, and small target services (sink, source, echo).
"""

from __future__ import annotations

import functools
import hashlib

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer import Server, TunnelClient, allow_all


def wait(seconds: float) -> defer.Deferred:
    return defer.Deferred.fromCoroutine(_sleep(seconds))


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.01):
    """Wait until C{predicate()} is true (fail after C{timeout} seconds)."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        await wait(interval)
        waited += interval


class TunnelHarness:
    """A server on 127.0.0.1 and clients connected to it, torn down by the test."""

    def __init__(self, testcase, **server_kwargs) -> None:
        self.testcase = testcase
        self.server = Server(reactor=reactor, **server_kwargs)
        self.port = None
        self.clients: list[TunnelClient] = []

    async def start(self, port: int = 0) -> None:
        root = Resource()
        root.putChild(b"connect", self.server.resource)
        self.port = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(Site(root))
        self.testcase.addCleanup(self.stop_listening)

    async def stop_listening(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port.getHost().port}/connect"

    async def connect_client(self, client_key: str = "foo", **kwargs) -> TunnelClient:
        kwargs.setdefault("connect_authorizer", allow_all)
        headers = {"X-Tunnel-ID": client_key, **kwargs.pop("headers", {})}
        client = TunnelClient(self.url, headers=headers, reactor=reactor, client_key=client_key, **kwargs)
        client.startService()
        self.testcase.addCleanup(client.stopService)
        self.clients.append(client)
        await client.when_connected()
        await eventually(lambda: self.server.has_session(client_key))
        return client


class Collector(Protocol):
    """Collects what it receives; C{done} fires with the bytes on close."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.received = 0
        self.done = defer.Deferred()
        self.reason = None

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)

    def connectionLost(self, reason=None) -> None:
        self.reason = reason
        self.done.callback(b"".join(self.chunks))


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Payload:
    """
    Deterministic pseudo-random bytes, made chunk by chunk, with their
    sha256 (hashed chunk by chunk, once asked: the 1 GiB sources of the
    forwarder tests never are).
    """

    def __init__(self, size: int, seed: int = 0, chunk: int = 256 * 1024) -> None:
        self.size = size
        self._seed = seed
        self._chunk = chunk

    @functools.cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def chunks(self):
        block = hashlib.sha256(str(self._seed).encode()).digest() * (self._chunk // 32)
        sent = 0
        i = 0
        while sent < self.size:
            n = min(self._chunk, self.size - sent)
            yield bytes([i % 251]) + block[1:n] if n > 1 else bytes([i % 251])
            sent += n
            i += 1


class SendPayload(Protocol):
    """
    Writes a payload as a push producer would (honouring pause), then
    closes; on C{clock} (a test clock), else the global reactor.
    """

    def __init__(self, payload: Payload, clock=None, close: bool = True) -> None:
        self._chunks = payload.chunks()
        self._clock = clock if clock is not None else reactor
        self._paused = False
        self._close = close
        self.pauses = 0

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        if not self._paused:
            self.pauses += 1
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._clock.callLater(0, self._produce)

    def _produce(self) -> None:
        while not self._paused and self._chunks is not None:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._chunks = None
                self.transport.unregisterProducer()
                self.sent()
                return
            self.transport.write(chunk)

    def sent(self) -> None:
        """All of the payload is written."""
        if self._close:
            self.transport.loseConnection()

    def stopProducing(self) -> None:
        self._paused = True


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def listen_tcp(factory: Factory, testcase):
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    testcase.addCleanup(port.stopListening)
    return port


def self_signed_certificate(directory: str, hostname: str = "localhost") -> tuple[str, str]:
    """Write a self-signed certificate for C{hostname} and 127.0.0.1; return (cert, key) paths."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


#: The headers of a WebSocket opening handshake (RFC 6455 4.1), for
#: requests built by hand that must reach the tunnel's authorizer.
HANDSHAKE = {
    b"Connection": b"Upgrade",
    b"Upgrade": b"websocket",
    b"Sec-WebSocket-Version": b"13",
    b"Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==",
}


def add_handshake(request) -> None:
    """Make C{request} (a DummyRequest) a WebSocket opening handshake."""
    for name, value in HANDSHAKE.items():
        request.requestHeaders.setRawHeaders(name, [value])
