"""
Request bodies streamed through the front door (remotedialer.server._site) on
loopback: a 64 MiB upload with Content-Length, a chunked one, and one over
HTTP/2 reach the target byte for byte while the front door holds at most
a few chunks of them (nothing is spooled); an upload for an unknown client
is answered before its body is read; a target that stops reading stops the
upload at the caller.
"""

from __future__ import annotations

import hashlib
import os
import shutil

from twisted.internet import defer, reactor, utils
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer import Server, TunnelClient, allow_all
from remotedialer.frontdoor._resource import FrontDoor
from remotedialer.server._access import FrontDoorAccess
from remotedialer.server._site import HELD_BODY, ServerSite, StreamingRequest
from tests.support import eventually, listen_tcp, wait
from tests.system.test_frontdoor import EchoSha, RawHTTP, _h2_available, listen_tls, make_ca, run

MiB = 1024 * 1024


class RecordingSite(ServerSite):
    """A ServerSite that keeps its requests, for the test to look into."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[StreamingRequest] = []
        site = self

        class Recorded(StreamingRequest):
            def __init__(self, *a, **kw) -> None:
                super().__init__(*a, **kw)
                site.requests.append(self)

        self.requestFactory = Recorded


class StopsReading(Protocol):
    """A target that reads nothing after the first bytes, and never answers."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.pauseProducing()


class UploadTests(TestCase):
    timeout = 120

    def setUp(self):
        self.curl = shutil.which("curl")
        if self.curl is None:
            raise SkipTest("curl is not installed")

    async def _setup(self, tls: bool = False, access: FrontDoorAccess | None = None):
        self.server = Server(reactor=reactor)
        root = Resource()
        root.putChild(b"connect", self.server.resource)
        root.putChild(b"client", FrontDoor(self.server, access=access))
        self.site = RecordingSite(root, stream_prefixes=(b"/client/",))
        self.front = await listen_tcp(self.site, self)
        if tls:
            self.ca, leaf, key = make_ca(self.mktemp())
            self.front_tls = await listen_tls(self.site, self, leaf, key)
        target_root = Resource()
        target_root.putChild(b"echo", EchoSha())
        self.target = await listen_tcp(Site(target_root), self)
        client = TunnelClient(f"ws://127.0.0.1:{self.front.getHost().port}/connect",
                              headers={"X-Tunnel-ID": "foo"}, reactor=reactor,
                              connect_authorizer=allow_all, client_key="foo")
        client.startService()
        self.addCleanup(client.stopService)
        await client.when_connected()
        await eventually(lambda: self.server.has_session("foo"))

    def body_file(self, size: int) -> tuple[str, str]:
        path = self.mktemp()
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            block = os.urandom(MiB)
            for i in range(size // MiB):
                chunk = bytes([i & 0xFF]) + block[1:]
                digest.update(chunk)
                f.write(chunk)
        return path, digest.hexdigest()

    async def run_curl(self, url: str, *extra: str) -> tuple[int, bytes]:
        argv = ["--silent", "--show-error", "--noproxy", "*", "--max-time", "60",
                "--write-out", "\n%{http_code}", *extra, url]
        out, err, code = await utils.getProcessOutputAndValue(self.curl, argv, env={})
        #: curl's exit code and error output, for the tests that look at them.
        self.curl_exit, self.curl_err = code, err
        body, _, status = out.rpartition(b"\n")
        return int(status or 0), body

    async def upload(self, size: int, *extra: str, tls: bool = False) -> None:
        await self._setup(tls=tls)
        path, digest = self.body_file(size)
        target = f"127.0.0.1:{self.target.getHost().port}"
        if tls:
            base = f"https://127.0.0.1:{self.front_tls.getHost().port}"
            extra = ("--cacert", self.ca, *extra)
        else:
            base = f"http://127.0.0.1:{self.front.getHost().port}"
        status, body = await self.run_curl(f"{base}/client/foo/http/{target}/echo",
                                       "--data-binary", f"@{path}", "-H", "Content-Type: x/y", *extra)
        self.assertEqual((status, body), (200, b"POST %d %s x/y" % (size, digest.encode())))
        [request] = [r for r in self.site.requests if r.body_producer is not None]
        self.assertEqual(request.body_producer.received, size)  # every byte through it, none spooled
        self.assertTrue(request.body_producer.complete)
        self.assertLessEqual(request.body_producer.peak_held, HELD_BODY + MiB)

    def test_upload_64mib_content_length(self):
        """64 MiB with Content-Length over HTTP/1.1: whole at the target, never held whole."""
        return run(self.upload(64 * MiB, "--http1.1"))

    def test_upload_chunked(self):
        """A chunked upload (no Content-Length) over HTTP/1.1."""
        return run(self.upload(8 * MiB, "--http1.1", "-H", "Transfer-Encoding: chunked"))

    def test_upload_over_h2(self):
        """The same over HTTP/2 (the body arrives through the same request API)."""
        if not _h2_available():
            raise SkipTest("h2 is not installed")
        return run(self.upload(8 * MiB, "--http2", tls=True))

    async def unread_upload(self, key: str, access: FrontDoorAccess | None = None) -> RawHTTP:
        """A 64 MiB upload's head alone, on a connection's first request (no guard in front here)."""
        await self._setup(access=access)
        target = f"127.0.0.1:{self.target.getHost().port}"
        head = (f"POST /client/{key}/http/{target}/echo HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {64 * MiB}\r\n\r\n").encode()
        reader = RawHTTP(head)
        from twisted.internet.endpoints import TCP4ClientEndpoint
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.front.getHost().port).connect(
            Factory.forProtocol(lambda: reader))
        await reader.done.addTimeout(10, reactor)  # the front door closed the connection
        return reader

    def test_unauthorised_answered_before_body(self):
        """An upload without the front door's token: 407 at once, the connection closed unread."""

        async def go():
            reader = await self.unread_upload("foo", FrontDoorAccess(token_hashes=frozenset()))
            self.assertEqual(reader.status_line, b"HTTP/1.1 407 Proxy Authentication Required")

        return run(go())

    def test_unknown_client_answered_before_body(self):
        """An upload for an unknown client: 500 at once, the connection closed, no body byte needed."""

        async def go():
            await self._setup()
            target = f"127.0.0.1:{self.target.getHost().port}"
            # A first request on the connection, so no guard of the first head could be what answers.
            head = (f"POST /client/nobody/http/{target}/echo HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Length: {64 * MiB}\r\n\r\n").encode()
            reader = RawHTTP(head)
            from twisted.internet.endpoints import TCP4ClientEndpoint
            await TCP4ClientEndpoint(reactor, "127.0.0.1", self.front.getHost().port).connect(
                Factory.forProtocol(lambda: reader))
            await reader.done.addTimeout(10, reactor)
            self.assertEqual(reader.status_line, b"HTTP/1.1 500 Internal Server Error")
            # (done fired: the front door closed the connection; no body byte was ever sent)

        return run(go())

    def test_target_not_reading_stops_the_caller(self):
        """A target that stops reading: the front door stops reading the caller (bounded, not spooled)."""

        async def go():
            await self._setup()
            factory = Factory.forProtocol(StopsReading)
            stuck = await listen_tcp(factory, self)
            path, _ = self.body_file(96 * MiB)
            url = (f"http://127.0.0.1:{self.front.getHost().port}/client/foo/http/"
                   f"127.0.0.1:{stuck.getHost().port}/x?timeout=3")
            done = defer.ensureDeferred(self.run_curl(url, "--http1.1", "--data-binary", f"@{path}"))
            await eventually(lambda: any(r.body_producer for r in self.site.requests), timeout=5)
            [request] = [r for r in self.site.requests if r.body_producer is not None]
            await wait(1.0)
            received = request.body_producer.received
            await wait(0.5)
            self.assertEqual(request.body_producer.received, received)  # stopped
            self.assertLess(received, 64 * MiB)
            status, body = await done
            self.assertIn(status, (502, 504), body)  # the target never answers: an error, not a hang

        return run(go())

    def test_unknown_client_over_h2(self):
        """Over HTTP/2: an upload for an unknown client gets its 500 at once; its body is dropped."""
        if not _h2_available():
            raise SkipTest("h2 is not installed")

        async def go():
            await self._setup(tls=True)
            path, _ = self.body_file(32 * MiB)
            target = f"127.0.0.1:{self.target.getHost().port}"
            status, body = await self.run_curl(
                f"https://127.0.0.1:{self.front_tls.getHost().port}/client/nobody/http/{target}/echo",
                # (curl stops sending when answered before the end of its
                # upload, ending its stream short of its Content-Length: a
                # protocol error to h2, which would end the connection.)
                "--http2", "--cacert", self.ca, "--data-binary", f"@{path}", "--max-time", "10")
            self.assertEqual((status, body), (500, b"failed to find Session for client nobody\n"))
            self.assertEqual(self.curl_exit, 0, self.curl_err)  # a whole answer, not a timeout
            [request] = [r for r in self.site.requests if r.body_producer is not None]
            self.assertLessEqual(request.body_producer.peak_held, HELD_BODY + MiB)

        return run(go())
