"""
The HTTP front door end to end on 127.0.0.1 with the real reactor: a Server
and its FrontDoor in a twisted.web Site, a TunnelClient, and a twisted.web
target behind the client.  Downstream HTTP clients are treq (non-persistent
pool) or a raw TCP protocol where the test must control reading; HTTP/2
downstream is curl (treq and Agent speak only HTTP/1.1).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import random
import shutil
import time

import treq
from twisted.internet import defer, reactor, utils
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from remotedialer import Server, TunnelClient, allow_all, allow_patterns
from remotedialer._tap._common import load_ca_file
from remotedialer.frontdoor._resource import FrontDoor
from remotedialer.frontdoor._tls import InsecureTLSPolicy
from remotedialer.server._access import FrontDoorAccess
from remotedialer.server._auth import ClientScope, hash_token
from remotedialer.tunnel._stream import HARD_CAP, PAUSE_THRESHOLD
from tests.support import eventually, listen_tcp, wait

MiB = 1024 * 1024
CHUNK = 64 * 1024


def run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


def chunks(size: int | None, seed: int = 7):
    """Deterministic body chunks of C{size} bytes in all (None: endless)."""
    block = random.Random(seed).randbytes(CHUNK)
    sent = 0
    i = 0
    while size is None or sent < size:
        n = CHUNK if size is None else min(CHUNK, size - sent)
        yield bytes([i % 251]) + block[1:n]
        sent += n
        i += 1


def sha256_of_chunks(size: int) -> str:
    h = hashlib.sha256()
    for chunk in chunks(size):
        h.update(chunk)
    return h.hexdigest()


def make_ca(directory: str, name: str = "test CA", dns_names: tuple[str, ...] = ("localhost",)
            ) -> tuple[str, str, str]:
    """
    A CA and a leaf certificate it signs for 127.0.0.1 and C{dns_names}
    (localhost), in C{directory}: the paths of (CA PEM, leaf PEM, leaf key PEM).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=True, crl_sign=True, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(
            [*(x509.DNSName(n) for n in dns_names), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(directory, f) for f in ("ca.pem", "leaf.pem", "leaf-key.pem"))
    for path, data in zip(paths, [
        ca.public_bytes(serialization.Encoding.PEM),
        leaf.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    ], strict=True):
        with open(path, "wb") as f:
            f.write(data)
    return paths


def tls_server_options(leaf_path: str, key_path: str):
    """
    Server TLS options for a leaf certificate and its key (Site over them
    offers h2 when h2 is installed).
    """
    with open(leaf_path, "rb") as f, open(key_path, "rb") as g:
        return PrivateCertificate.loadPEM(f.read() + g.read()).options()


async def listen_tls(factory, testcase, leaf_path: str, key_path: str):
    endpoint = SSL4ServerEndpoint(reactor, 0, tls_server_options(leaf_path, key_path), interface="127.0.0.1")
    port = await endpoint.listen(factory)
    testcase.addCleanup(port.stopListening)
    return port


# The target, behind the client.


@implementer(IPushProducer)
class _BodyProducer:
    """Writes a body into a twisted.web request as a push producer, honouring pause."""

    def __init__(self, request, size: int | None) -> None:
        self._request = request
        self._chunks = chunks(size)
        self._paused = False
        self.stopped = False
        self.pauses = 0
        self.produced = 0
        self.lost = request.notifyFinish()
        self.lost.addErrback(lambda _: None)
        self.connection_lost = False
        self.lost.addBoth(self._finished)

    def _finished(self, result):
        self.connection_lost = not self._request.finished
        return result

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        if not self._paused:
            self.pauses += 1
        self._paused = True

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        self._paused = False
        reactor.callLater(0, self._produce)

    def stopProducing(self) -> None:
        self.stopped = True
        self._paused = True

    def _produce(self) -> None:
        for _ in range(64):  # then give the reactor a turn
            if self._paused or self.stopped:
                return
            chunk = next(self._chunks, None)
            if chunk is None:
                self._request.unregisterProducer()
                self._request.finish()
                self.stopped = True
                return
            self.produced += len(chunk)
            self._request.write(chunk)
        if not self._paused and not self.stopped:
            reactor.callLater(0, self._produce)


class Streamed(Resource):
    """C{size} bytes (None: endless), streamed with a push producer."""

    isLeaf = True

    def __init__(self, size: int | None) -> None:
        super().__init__()
        self.size = size
        self.producers: list[_BodyProducer] = []

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/octet-stream")
        if self.size is not None:
            request.setHeader(b"Content-Length", str(self.size).encode())
        producer = _BodyProducer(request, self.size)
        self.producers.append(producer)
        producer.start()
        return NOT_DONE_YET


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"X-Target-Header", b"hello-value")
        request.setHeader(b"Content-Type", b"text/plain")
        return b"hello through the front door"


class Gone(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setResponseCode(404)
        return b"not here\n"


class Hang(Resource):
    """Never answers; records what it was asked and when its connection went."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, dict]] = []
        self.lost: list[defer.Deferred] = []

    def render_GET(self, request):
        self.seen.append((request.uri, dict(request.args)))
        d = request.notifyFinish()
        d.addErrback(lambda _: None)  # the front door gives up on us: expected
        self.lost.append(d)
        return NOT_DONE_YET


class EchoSha(Resource):
    isLeaf = True

    def render_POST(self, request):
        body = request.content.read()
        content_type = request.getHeader(b"Content-Type") or b""
        return b"%s %d %s" % (request.method, len(body), hashlib.sha256(body).hexdigest().encode()) + \
            b" " + content_type


class Short(Resource):
    """Promises 1000 bytes and closes after the head: the body is cut short."""

    isLeaf = True

    def render_GET(self, request):
        transport = request.channel.transport
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc")
        transport.loseConnection()
        return NOT_DONE_YET


class Uri(Resource):
    """Answers with the raw URI it was asked for."""

    isLeaf = True

    def render_GET(self, request):
        return request.uri


BIG = 32 * MiB
HUGE = 256 * MiB


class Credentials(Resource):
    """Says which of the caller's credential headers reached the target."""

    isLeaf = True

    def render_GET(self, request):
        seen = [name for name in (b"authorization", b"cookie", b"x-other")
                if request.getHeader(name) is not None]
        return b",".join(seen)


class Target:
    def __init__(self) -> None:
        self.root = Resource()
        self.big = Streamed(BIG)
        self.huge = Streamed(HUGE)
        self.endless = Streamed(None)
        self.hang = Hang()
        for name, resource in [(b"hello", Hello()), (b"gone", Gone()), (b"big", self.big),
                               (b"huge", self.huge), (b"endless", self.endless),
                               (b"hang", self.hang), (b"echo", EchoSha()),
                               (b"short", Short()), (b"uri", Uri()), (b"credentials", Credentials())]:
            self.root.putChild(name, resource)
        self.port = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"


# The downstream side.


class RawHTTP(Protocol):
    """
    Sends one request and reads the response by hand: head, then body bytes
    counted and hashed; optionally aborts after C{abort_after} bytes.
    """

    def __init__(self, request: bytes, abort_after: int | None = None) -> None:
        self._request = request
        self._abort_after = abort_after
        self.head = b""
        self.body_bytes = 0
        self.received = 0
        self._sha = hashlib.sha256()
        self._in_body = False
        self.done = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if not self._in_body:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            self.head, _, data = self.head.partition(b"\r\n\r\n")
            self._in_body = True
        self.body_bytes += len(data)
        self._sha.update(data)
        if self._abort_after is not None and self.received >= self._abort_after:
            self._abort_after = None
            self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        self.done.callback(None)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def status_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


class FrontDoorTests(TestCase):
    timeout = 180

    async def _setup(self, tls_policy=None, tls_target: bool = False, access=None):
        """
        Server, front door (with C{tls_policy}), target and client "foo".
        With C{tls_target} the target serves HTTPS with a leaf certificate of
        a fresh CA (C{self.ca}); C{self.front_connections} are the front
        door's live downstream connections.
        """
        self.server = Server(reactor=reactor)
        self.root = root = Resource()
        root.putChild(b"connect", self.server.resource)
        self.front_door = FrontDoor(self.server, tls_policy=tls_policy, access=access)
        root.putChild(b"client", self.front_door)
        self.front_factory = WrappingFactory(Site(root))
        self.front = await listen_tcp(self.front_factory, self)
        self.target = Target()
        if tls_target:
            self.ca, leaf, key = make_ca(self.mktemp())
            self.target.port = await listen_tls(Site(self.target.root), self, leaf, key)
        else:
            self.target.port = await listen_tcp(Site(self.target.root), self)
        self.client = TunnelClient(
            f"ws://127.0.0.1:{self.front.getHost().port}/connect",
            headers={"X-Tunnel-ID": "foo"},
            reactor=reactor,
            connect_authorizer=allow_all,
            client_key="foo",
        )
        self.client.startService()
        self.addCleanup(self.client.stopService)
        await self.client.when_connected()
        await eventually(lambda: self.server.has_session("foo"))
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def url(
        self, path: str, client_key: str = "foo", scheme: str = "http", address: str | None = None
    ) -> str:
        address = address or self.target.address
        return f"http://127.0.0.1:{self.front.getHost().port}/client/{client_key}/{scheme}/{address}/{path}"

    def assert_reason(self, response, body: bytes, code: int, *fragments: bytes) -> None:
        """An error answer: C{code}, text/plain, one human-readable line holding C{fragments}."""
        self.assertEqual(response.code, code, body)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"text/plain; charset=utf-8"])
        self.assertTrue(body.endswith(b"\n"), body)
        self.assertNotIn(b"\n", body[:-1])
        for python_text in (b"<", b"Failure", b"Traceback", b"NoneType", b"[(", b"Error("):
            self.assertNotIn(python_text, body)
        for fragment in fragments:
            self.assertIn(fragment, body)

    def raw_request(self, path: str) -> bytes:
        return (f"GET /client/foo/http/{self.target.address}/{path} HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\nConnection: close\r\n\r\n").encode()

    async def _raw(self, protocol: RawHTTP) -> RawHTTP:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.front.getHost().port)
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
        return protocol

    def _server_streams(self):
        session = self.server.sessions.local_session("foo")
        return list(session.streams.values()) if session is not None else []

    def test_get_passes_status_headers_body(self):
        """A GET returns the target's status, its own response header and its body."""

        async def go():
            await self._setup()
            response = await treq.get(self.url("hello"), pool=self.pool)
            body = await response.content()
            self.assertEqual(response.code, 200)
            self.assertEqual(response.headers.getRawHeaders(b"X-Target-Header"), [b"hello-value"])
            self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"text/plain"])
            self.assertEqual(body, b"hello through the front door")

        return run(go())

    def test_streamed_32mib_body(self):
        """A 32 MiB body streamed by the target arrives whole (length and sha256)."""

        async def go():
            await self._setup()
            expected = sha256_of_chunks(BIG)
            response = await treq.get(self.url("big"), pool=self.pool)
            self.assertEqual(response.code, 200)
            self.assertEqual(response.length, BIG)  # Agent keeps Content-Length out of .headers
            body = await response.content()
            self.assertEqual(len(body), BIG)
            self.assertEqual(hashlib.sha256(body).hexdigest(), expected)

        return run(go())

    def test_404_passed_through(self):
        """A 404 from the target (its own body, or twisted.web's for a missing child) stays a 404."""

        async def go():
            await self._setup()
            response = await treq.get(self.url("gone"), pool=self.pool)
            self.assertEqual((response.code, await response.content()), (404, b"not here\n"))
            missing = await treq.get(self.url("no/such/page"), pool=self.pool)
            await missing.content()
            self.assertEqual(missing.code, 404)

        return run(go())

    def test_unknown_client_is_500(self):
        """A client key with no session: 500 with Go's error text."""

        async def go():
            await self._setup()
            response = await treq.get(self.url("hello", client_key="nobody"), pool=self.pool)
            body = await response.content()
            self.assert_reason(response, body, 500, b"failed to find Session for client nobody")

        return run(go())

    def test_timeout(self):
        """
        ?timeout=1 on a target that never answers: 504 after about a second;
        the target saw the other query parameters but not timeout, and its
        connection is closed.
        """

        async def go():
            await self._setup()
            started = time.monotonic()
            response = await treq.get(self.url("hang?x=1&timeout=1&y=two"), pool=self.pool)
            body = await response.content()
            elapsed = time.monotonic() - started
            self.assertEqual((response.code, elapsed < 3.0), (504, True), body)
            self.assert_reason(response, body, 504)
            self.assertTrue(body.startswith(b"timeout waiting for"), body)
            self.assertGreaterEqual(elapsed, 0.9)
            self.assertLess(elapsed, 3.0)
            self.assertEqual(len(self.target.hang.seen), 1)
            uri, args = self.target.hang.seen[0]
            self.assertEqual(uri, b"/hang?x=1&y=two")
            self.assertEqual(args, {b"x": [b"1"], b"y": [b"two"]})
            lost = self.target.hang.lost[0]
            await eventually(lambda: lost.called, timeout=5)
            await eventually(lambda: not self.client.session.streams, timeout=5)

        return run(go())

    def test_post_body_passed_through(self):
        """A POST's body and Content-Type reach the target."""

        async def go():
            await self._setup()
            data = random.Random(3).randbytes(3 * MiB + 17)
            response = await treq.post(self.url("echo"), data=data, pool=self.pool,
                                       headers={b"Content-Type": [b"application/x-test"]})
            body = await response.content()
            self.assertEqual(response.code, 200)
            self.assertEqual(body, b"POST %d %s application/x-test"
                             % (len(data), hashlib.sha256(data).hexdigest().encode()))

        return run(go())

    def test_dropped_reader_stops_upstream(self):
        """
        A downstream reader that goes away mid-body stops the target's producer,
        closes its connection, and the tunnel stream is gone on both ends.
        """

        async def go():
            await self._setup()
            reader = await self._raw(RawHTTP(self.raw_request("endless"), abort_after=4 * MiB))
            await reader.done
            self.assertEqual(reader.status_line, b"HTTP/1.1 200 OK")
            self.assertGreaterEqual(reader.received, 4 * MiB)
            [producer] = self.target.endless.producers
            await eventually(lambda: producer.stopped and producer.lost.called, timeout=5)
            self.assertTrue(producer.connection_lost)
            await eventually(lambda: not self.client.session.streams, timeout=5)
            await eventually(lambda: not self._server_streams(), timeout=5)

        return run(go())

    def test_slow_reader_memory_bound(self):
        """
        A downstream reader that stops reading: the tunnel stream buffers past
        the Pause threshold but stays under HARD_CAP, the target is paused and
        stalls (for a second of watching); once reading resumes the 256 MiB
        arrive whole.
        """

        async def go():
            await self._setup()
            expected = sha256_of_chunks(HUGE)

            class Paused(RawHTTP):
                def connectionMade(self):
                    super().connectionMade()
                    self.transport.pauseProducing()

            reader = await self._raw(Paused(self.raw_request("huge")))
            await eventually(lambda: self.target.huge.producers, timeout=5)
            [producer] = self.target.huge.producers
            peak = 0
            streams_seen = 0

            def buffered_past_pause() -> bool:
                nonlocal peak, streams_seen
                streams = self._server_streams()
                streams_seen = max(streams_seen, len(streams))
                peak = max([peak] + [s.buffered_inbound for s in streams])
                return peak > PAUSE_THRESHOLD and producer.pauses > 0

            # The stream buffers past the Pause threshold and the target is
            # paused (on a loaded machine the bytes may take a while to
            # cross the kernel's buffers: wait for it, within a deadline).
            await eventually(buffered_past_pause, timeout=20, interval=0.005)
            # Then the target stays stalled while the reader is paused.
            produced_before = producer.produced
            started = time.monotonic()
            while time.monotonic() - started < 1.0:
                await wait(0.005)
                buffered_past_pause()
            produced_after = producer.produced
            self.assertEqual(streams_seen, 1)
            self.assertLess(peak, HARD_CAP)
            self.assertEqual(produced_before, produced_after,
                             "target kept producing while the reader was paused")
            self.assertLess(produced_after, 64 * MiB)
            self.assertEqual(reader.body_bytes, 0)
            reader.transport.resumeProducing()
            await reader.done
            self.assertEqual(reader.status_line, b"HTTP/1.1 200 OK")
            self.assertEqual(reader.header(b"Content-Length"), str(HUGE).encode())
            self.assertEqual(reader.body_bytes, HUGE)
            self.assertEqual(reader.sha256, expected)
            # Kept alive for the next request, until the pool lets it go.
            self.assertLessEqual(len(self.client.session.streams), 1)
            self.front_door.pools.close()
            await eventually(lambda: not self.client.session.streams, timeout=5)

        return run(go())

    def test_bad_timeout_is_400(self):
        """A number of seconds out of range is refused before anything is dialed."""

        async def go():
            await self._setup()
            for value in ("-1", "0", "1e9", "-0.5"):
                response = await treq.get(self.url(f"hello?timeout={value}"), pool=self.pool)
                self.assertEqual(response.code, 400, value)
                self.assertIn(b"timeout", await response.content())
            self.assertEqual(self._server_streams(), [])

        return run(go())

    def test_other_timeouts_are_the_targets(self):
        """
        ?timeout= that is not a number of seconds (kubectl adds ?timeout=32s to
        every request) is the target's: passed on untouched; a number is ours
        and is not passed on.
        """

        async def go():
            await self._setup()
            for value in ("32s", "soon", "nan"):
                response = await treq.get(self.url(f"uri?timeout={value}&x=1"), pool=self.pool)
                self.assertEqual(response.code, 200, value)
                self.assertEqual(await response.content(), f"/uri?timeout={value}&x=1".encode())
            response = await treq.get(self.url("uri?timeout=5&x=1"), pool=self.pool)
            self.assertEqual(await response.content(), b"/uri?x=1")

        return run(go())

    def test_path_forwarded_as_sent(self):
        """Percent-escapes in the path reach the target untouched (no query injected)."""

        async def go():
            await self._setup()
            response = await treq.get(self.url("uri/a%3Fb%2Fc%20d?x=1"), pool=self.pool)
            self.assertEqual(response.code, 200)
            self.assertEqual(await response.content(), b"/uri/a%3Fb%2Fc%20d?x=1")

        return run(go())

    def test_body_cut_short_aborts_downstream(self):
        """
        Once the target's head has been passed on, a failed body cuts the
        downstream connection; no error body is written under its headers.
        """

        async def go():
            await self._setup()
            raw = await self._raw(RawHTTP(self.raw_request("short")))
            await raw.done
            self.assertEqual(raw.status_line, b"HTTP/1.1 200 OK")
            self.assertEqual(raw.header(b"Content-Length"), b"1000")
            self.assertLess(raw.body_bytes, 1000)
            self.assertNotIn(b"502", raw.head)

        return run(go())


    def test_head_keeps_the_target_length(self):
        """A HEAD's Content-Length is the target's (what a GET would return), with no body."""

        async def go():
            await self._setup()
            request = (f"HEAD /client/foo/http/{self.target.address}/hello HTTP/1.1\r\n"
                       "Host: 127.0.0.1\r\nConnection: close\r\n\r\n").encode()
            raw = await self._raw(RawHTTP(request))
            await raw.done
            self.assertEqual(raw.status_line, b"HTTP/1.1 200 OK")
            self.assertEqual(raw.header(b"Content-Length"), b"%d" % len(b"hello through the front door"))
            self.assertEqual(raw.body_bytes, 0)

        return run(go())

    def test_bad_target_is_400(self):
        """A target that is not host, host:port or [v6]:port: 400 before anything is dialed."""

        async def go():
            await self._setup()
            for address in ("127.0.0.1:http", "127.0.0.1:0", "::1:80", "a%0d%0aX-Injected:%201", "h%C3%A9st"):
                response = await treq.get(self.url("hello", address=address), pool=self.pool)
                body = await response.content()
                self.assert_reason(response, body, 400, b"bad target")
            self.assertEqual(self._server_streams(), [])

        return run(go())

    # HTTPS targets.

    def test_https_verified_with_ca_file(self):
        """An https target whose certificate the --target-ca-file policy trusts: 200 and its body."""

        async def go():
            await self._setup(tls_target=True)
            # (the CA is made in _setup: build the policy the server flag would, then swap it in)
            policy = BrowserLikePolicyForHTTPS(trustRoot=load_ca_file("target-ca-file", self.ca))
            self.root.putChild(b"client", FrontDoor(self.server, tls_policy=policy))
            response = await treq.get(self.url("hello", scheme="https"), pool=self.pool)
            body = await response.content()
            self.assertEqual((response.code, body), (200, b"hello through the front door"))
            self.assertEqual(response.headers.getRawHeaders(b"X-Target-Header"), [b"hello-value"])

        return run(go())

    def test_https_wrong_ca_is_502(self):
        """
        A certificate neither another CA nor the system trust store vouches
        for: 502 with a one-line reason; nothing is fetched.
        """

        async def go():
            await self._setup(tls_target=True)
            other_ca, _, _ = make_ca(self.mktemp(), "another CA")
            for policy in (BrowserLikePolicyForHTTPS(trustRoot=load_ca_file("target-ca-file", other_ca)),
                           None):  # None: the default, the system trust store
                self.root.putChild(b"client", FrontDoor(self.server, tls_policy=policy))
                response = await treq.get(self.url("hello", scheme="https"), pool=self.pool)
                body = await response.content()
                self.assert_reason(response, body, 502, b"TLS", b"certificate verify failed")
            await eventually(lambda: not self._server_streams(), timeout=5)

        return run(go())

    def test_https_insecure(self):
        """The insecure policy (--target-insecure) fetches from a target no one vouches for."""

        async def go():
            await self._setup(tls_policy=InsecureTLSPolicy(), tls_target=True)
            response = await treq.get(self.url("hello", scheme="https"), pool=self.pool)
            body = await response.content()
            self.assertEqual((response.code, body), (200, b"hello through the front door"))

        return run(go())

    def test_https_insecure_sends_sni(self):
        """The insecure policy still names the host (SNI) for a DNS name, and not for an IP address."""
        from OpenSSL import SSL

        policy = InsecureTLSPolicy()
        for hostname, expected in [(b"kube.example", b"kube.example"), (b"127.0.0.1", None), (b"::1", None)]:
            creator = policy.creatorForNetloc(hostname, 443)
            connection = creator.clientConnectionForTLS(None)
            self.assertIsInstance(connection, SSL.Connection)
            self.assertEqual(connection.get_servername(), expected)
            self.assertEqual(connection.get_context().get_verify_mode(), SSL.VERIFY_NONE)

    # Error answers.

    def test_refused_target_is_502(self):
        """A target port nobody listens on: 502 saying the connection was refused."""

        async def go():
            await self._setup()
            closed = await listen_tcp(Factory.forProtocol(Protocol), self)
            address = f"127.0.0.1:{closed.getHost().port}"
            await closed.stopListening()
            response = await treq.get(self.url("x", address=address), pool=self.pool)
            body = await response.content()
            self.assert_reason(response, body, 502, b"refused")

        return run(go())

    def test_not_allowed_target_is_502(self):
        """A target outside the client's allow-list: 502 with the client's reason."""

        async def go():
            await self._setup()
            narrow = TunnelClient(
                f"ws://127.0.0.1:{self.front.getHost().port}/connect",
                headers={"X-Tunnel-ID": "narrow"}, reactor=reactor, client_key="narrow",
                connect_authorizer=allow_patterns(["tcp/10.255.255.1:1"]),
            )
            narrow.startService()
            self.addCleanup(narrow.stopService)
            await narrow.when_connected()
            await eventually(lambda: self.server.has_session("narrow"))
            response = await treq.get(self.url("hello", client_key="narrow"), pool=self.pool)
            body = await response.content()
            self.assert_reason(response, body, 502, b"not allowed", self.target.address.encode())

        return run(go())

    def test_not_http_target_is_502(self):
        """A target that answers something other than HTTP: 502 saying so (not a parser's repr)."""

        async def go():
            await self._setup()

            class Banner(Protocol):
                def connectionMade(self):
                    self.transport.write(b"SSH-2.0-OpenSSH_9.2\r\n")

            banner = await listen_tcp(Factory.forProtocol(Banner), self)
            banner_address = f"127.0.0.1:{banner.getHost().port}"
            response = await treq.get(self.url("x", address=banner_address), pool=self.pool)
            body = await response.content()
            self.assert_reason(response, body, 502, b"not valid HTTP")

        return run(go())

    def test_endless_response_head_is_502_at_once(self):
        """
        A target answering with header lines without end: 502 as soon as the
        head passes 64 KiB, not at the timeout, and the target's connection
        is closed (nothing keeps being read and buffered).
        """

        async def go():
            await self._setup()
            closed = defer.Deferred()

            class EndlessHead(Protocol):
                """Header lines, 64 KiB a reactor turn, until the connection closes (or 32 MiB)."""

                sent = 0

                def connectionMade(self):
                    self.transport.write(b"HTTP/1.1 200 OK\r\n")
                    self.more()

                def more(self):
                    if self.transport.disconnecting or self.sent > 32 * MiB:
                        return
                    self.transport.write((b"X-A: " + b"a" * 1000 + b"\r\n") * 64)
                    self.sent += 64 * 1007
                    self.call = reactor.callLater(0, self.more)

                def connectionLost(self, reason=None):
                    if self.call.active():
                        self.call.cancel()
                    closed.callback(self.sent)

            target = await listen_tcp(Factory.forProtocol(EndlessHead), self)
            started = time.monotonic()
            response = await treq.get(self.url("x", address=f"127.0.0.1:{target.getHost().port}"),
                                      pool=self.pool)
            body = await response.content()
            self.assertLess(time.monotonic() - started, 5)
            self.assert_reason(response, body, 502, b"response head is over 65536 bytes")
            sent = await closed
            self.assertLess(sent, 32 * MiB)

        return run(go())

    def test_caller_credentials_not_forwarded(self):
        """Authorization and Cookie are the caller's: not sent to the target (other headers are)."""

        async def go():
            await self._setup()
            response = await treq.get(self.url("credentials"), pool=self.pool,
                                      headers={"Authorization": "Bearer caller", "Cookie": "s=1",
                                               "X-Other": "kept"})
            self.assertEqual(await response.content(), b"x-other")

        return run(go())

    def test_scoped_tokens_and_what_reaches_the_target(self):
        """
        Front-door tokens scoped to clients (a tokens file's clients=), with
        --forward-credentials.  A token in Proxy-Authorization leaves the
        caller's Authorization its own (passed on); a token in Authorization
        (kubectl's kubeconfig user token) is consumed: the target sees no
        Authorization.  Another client's token is 403, a wrong token in
        Authorization 401 with WWW-Authenticate.
        """

        async def go():
            tokens = {bytes.fromhex(hash_token("foo-token")): ClientScope(("foo",)),
                      bytes.fromhex(hash_token("bar-token")): ClientScope(("bar", "bar-*"))}
            await self._setup(access=FrontDoorAccess(token_hashes=tokens, forward_credentials=True))

            async def get(headers, client_key="foo"):
                response = await treq.get(self.url("credentials", client_key), pool=self.pool,
                                          headers={"Cookie": "s=1", "X-Other": "kept", **headers})
                return response, await response.content()

            response, body = await get({"Proxy-Authorization": "Bearer foo-token",
                                        "Authorization": "Bearer for-the-api-server"})
            self.assertEqual((response.code, body), (200, b"authorization,cookie,x-other"))
            response, body = await get({"Authorization": "Bearer foo-token"})
            self.assertEqual((response.code, body), (200, b"cookie,x-other"))
            for header in ("Authorization", "Proxy-Authorization"):
                response, body = await get({header: "Bearer bar-token"})
                self.assert_reason(response, body, 403,
                                   b"front door: the token presented is not for this client")
                self.assertNotIn(b"bar", body)
            response, body = await get({"Authorization": "Bearer wrong"})
            self.assert_reason(response, body, 401, b"a valid front-door token is required")
            self.assertEqual(response.headers.getRawHeaders(b"WWW-Authenticate"), [b"Bearer"])
            response, body = await get({})
            self.assert_reason(response, body, 407, b"a valid front-door token is required")
            self.assertEqual(response.headers.getRawHeaders(b"Proxy-Authenticate"), [b"Bearer"])

        return run(go())

    # The front door ends every exchange.

    def test_client_gone_mid_body_aborts_slow_reader(self):
        """
        A reader that has stopped reading, and the tunnel client goes away
        mid-body: the front door aborts the downstream connection at once
        (not waiting for the reader to drain it); the reader then sees a
        truncated body (no last chunk).
        """

        async def go():
            await self._setup()

            class Paused(RawHTTP):
                def connectionMade(self):
                    super().connectionMade()
                    self.transport.pauseProducing()

                def dataReceived(self, data):
                    super().dataReceived(data)
                    self.tail = (getattr(self, "tail", b"") + data)[-16:]

            reader = await self._raw(Paused(self.raw_request("endless")))
            await eventually(lambda: self.target.endless.producers, timeout=5)
            [producer] = self.target.endless.producers
            await eventually(lambda: producer.pauses > 0, timeout=10)  # every buffer on the way is full
            reader_port = reader.transport.getHost().port
            [downstream] = [p for p in self.front_factory.protocols if p.getPeer().port == reader_port]
            lost = defer.Deferred()
            original = downstream.connectionLost
            downstream.connectionLost = lambda reason: (original(reason), lost.callback(time.monotonic()))
            started = time.monotonic()
            await self.client.stopService()
            lost.addTimeout(10, reactor)
            self.assertLess(await lost - started, 1.0)
            reader.transport.resumeProducing()
            await reader.done
            self.assertEqual(reader.status_line, b"HTTP/1.1 200 OK")
            self.assertFalse(getattr(reader, "tail", b"").endswith(b"0\r\n\r\n"))

        return run(go())

    def test_read_until_close_body_cut_is_not_complete(self):
        """
        A body with no length (read until the target closes) whose tunnel
        stream is cut by an error: the reader must see a truncated response
        (no last chunk), not a complete-looking one; a clean close of the
        same body ends it properly.
        """

        async def go():
            await self._setup()
            targets = []

            class UntilClose(Protocol):
                def connectionMade(self):
                    targets.append(self)
                    self.transport.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 1000)

            class Keep(RawHTTP):
                raw = b""

                def dataReceived(self, data):
                    self.raw += data
                    super().dataReceived(data)

            port = await listen_tcp(Factory.forProtocol(UntilClose), self)
            request = (f"GET /client/foo/http/127.0.0.1:{port.getHost().port}/x HTTP/1.1\r\n"
                       "Host: 127.0.0.1\r\nConnection: close\r\n\r\n").encode()
            for clean in (True, False):
                reader = await self._raw(Keep(request))
                # Each predicate is awaited before the loop moves on: bind the
                # current values anyway, as B023 asks.
                await eventually(lambda clean=clean: len(targets) == (1 if clean else 2), timeout=5)
                await eventually(lambda reader=reader: reader.body_bytes >= 1000, timeout=5)
                if clean:
                    targets[-1].transport.loseConnection()
                else:
                    [stream] = self._server_streams()
                    stream.close_with_error("cut")
                await reader.done
                self.assertEqual(reader.status_line, b"HTTP/1.1 200 OK")
                self.assertEqual(reader.raw.endswith(b"0\r\n\r\n"), clean, reader.raw[-20:])

        return run(go())


# HTTP/2 downstream (curl), and the tunnel path refusing HTTP/2.


def _h2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


class FrontDoorHTTP2Tests(TestCase):
    """The front door served over TLS, where twisted.web negotiates h2 with curl."""

    timeout = 60

    def setUp(self):
        self.curl = shutil.which("curl")
        if self.curl is None:
            raise SkipTest("curl is not installed")
        if not _h2_available():
            raise SkipTest("h2 is not installed: twisted.web serves HTTP/1.1 only")

    async def _setup(self):
        self.server = Server(reactor=reactor)
        root = Resource()
        root.putChild(b"connect", self.server.resource)
        root.putChild(b"client", FrontDoor(self.server))
        self.ca, leaf, key = make_ca(self.mktemp())
        self.front = await listen_tls(Site(root), self, leaf, key)
        self.target = Target()
        self.target.port = await listen_tcp(Site(self.target.root), self)
        # The tunnel itself needs HTTP/1.1: a second, plain listener for it.
        tunnel_port = await listen_tcp(Site(root), self)
        self.client = TunnelClient(
            f"ws://127.0.0.1:{tunnel_port.getHost().port}/connect", headers={"X-Tunnel-ID": "foo"},
            reactor=reactor, connect_authorizer=allow_all, client_key="foo")
        self.client.startService()
        self.addCleanup(self.client.stopService)
        await self.client.when_connected()
        await eventually(lambda: self.server.has_session("foo"))

    async def curl_h2(self, path: str, *extra: str) -> tuple[int, bytes, str, str, int]:
        """GET over HTTP/2: (status, body, content type, HTTP version, curl's exit code)."""
        body_path = os.path.join(self.mktemp())
        argv = ["--http2", "--silent", "--show-error", "--noproxy", "*", "--max-time", "10",
                "--cacert", self.ca, "--output", body_path,
                "--write-out", "%{http_code} %{http_version} %{content_type}", *extra,
                f"https://127.0.0.1:{self.front.getHost().port}{path}"]
        out, err, code = await utils.getProcessOutputAndValue(self.curl, argv, env={})
        status, version, content_type = [*out.decode().split(" ", 2), "", ""][:3]
        body = b""
        if os.path.exists(body_path):
            with open(body_path, "rb") as f:
                body = f.read()
        return int(status or 0), body, content_type, version, code

    def test_get_over_h2(self):
        """A GET through the front door over HTTP/2 returns the target's body."""

        async def go():
            await self._setup()
            path = f"/client/foo/http/{self.target.address}/hello"
            status, body, _, version, code = await self.curl_h2(path)
            self.assertEqual((status, version, code, body), (200, "2", 0, b"hello through the front door"))

        return run(go())

    def test_unknown_client_over_h2(self):
        """An unknown client over HTTP/2: 500 with Go's text, as text/plain."""

        async def go():
            await self._setup()
            status, body, content_type, version, _ = await self.curl_h2(
                f"/client/nobody/http/{self.target.address}/hello")
            self.assertEqual((status, version), (500, "2"))
            self.assertEqual(content_type, "text/plain; charset=utf-8")
            self.assertEqual(body, b"failed to find Session for client nobody\n")

        return run(go())

    def test_body_cut_short_over_h2(self):
        """A body cut short upstream resets the HTTP/2 stream (curl fails; no hang, no error body)."""

        async def go():
            await self._setup()
            started = time.monotonic()
            path = f"/client/foo/http/{self.target.address}/short"
            status, body, _, version, code = await self.curl_h2(path)
            self.assertLess(time.monotonic() - started, 5.0)
            self.assertNotIn(code, (0, 28))  # 28: curl's own timeout, i.e. the front door hung
            self.assertLess(len(body), 1000)
            self.assertNotIn(b"502", body)

        return run(go())

    def test_tunnel_upgrade_over_h2_refused(self):
        """A tunnel request over HTTP/2 (WebSocket needs HTTP/1.1): a clear 400 at once, no hang."""

        async def go():
            await self._setup()
            status, body, content_type, version, code = await self.curl_h2(
                "/connect", "--header", "X-Tunnel-ID: h2client")
            self.assertEqual((status, version, code), (400, "2", 0))
            self.assertEqual(content_type, "text/plain; charset=utf-8")
            self.assertIn(b"HTTP/1.1", body)
            self.assertFalse(self.server.has_session("h2client"))

        return run(go())


class TunnelUpgradeTests(TestCase):
    timeout = 30

    def test_client_gone_while_authorizing(self):
        """
        The client goes away while a (Deferred) authorizer decides: when it
        says yes, nothing is upgraded and nothing fails.
        """

        async def go():
            pending: list[defer.Deferred] = []
            lost: list[defer.Deferred] = []

            def authorizer(request):
                lost.append(request.notifyFinish())
                lost[-1].addErrback(lambda _: None)
                d = defer.Deferred()
                pending.append(d)
                return d

            server = Server(authorizer, reactor=reactor)
            root = Resource()
            root.putChild(b"connect", server.resource)
            port = await listen_tcp(Site(root), self)
            upgrade = (b"GET /connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\n\r\n")
            raw = RawHTTP(upgrade)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
            await endpoint.connect(Factory.forProtocol(lambda: raw))
            await eventually(lambda: pending, timeout=5)
            raw.transport.loseConnection()
            await raw.done
            await eventually(lambda: lost[0].called, timeout=5)  # the server saw the close
            pending[0].callback("late")
            self.assertEqual(raw.head, b"")
            self.assertFalse(server.has_session("late"))
            self.assertEqual(self.flushLoggedErrors(), [])

        return run(go())
