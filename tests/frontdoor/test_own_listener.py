"""
The front door refuses targets that are the server's own listeners, in
any spelling and with the scheme's default port (a target written without
its port), before any stream is opened: 403, one line.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from remotedialer.frontdoor._resource import FrontDoor
from remotedialer.server._access import FrontDoorAccess
from remotedialer.server._server import Server
from tests.protocol.test_addresses import LOOPBACK_SPELLINGS
from tests.server.test_own import listeners

REFUSED = b"front door: the target is this server's own listener\n"


def front_door_request(scheme: str, host_port: str) -> DummyRequest:
    path = [b"foo", scheme.encode(), host_port.encode(), b"status"]
    request = DummyRequest(path)
    request.prepath = [b"client"]
    request.uri = b"/client/" + b"/".join(path)
    request.channel = None
    request.client = IPv4Address("TCP", "127.0.0.1", 50000)
    return request


class OwnListenerTests(SynchronousTestCase):
    def setUp(self):
        clock = Clock()
        self.server = Server(lambda request: "foo", reactor=clock)
        access = FrontDoorAccess(own=listeners(("127.0.0.1", 8123), ("0.0.0.0", 443), ("127.0.0.1", 80)))
        self.front_door = FrontDoor(self.server, reactor=clock, access=access)

    def render(self, scheme: str, host_port: str) -> tuple[int, object]:
        request = front_door_request(scheme, host_port)
        result = self.front_door.render(request)
        return request.responseCode, result

    def test_refused_in_every_spelling(self):
        for host in ("localhost", "[::1]", "[::ffff:127.0.0.1]", *LOOPBACK_SPELLINGS):
            target = f"[{host}]:8123" if ":" in host and not host.startswith("[") else f"{host}:8123"
            with self.subTest(target=target):
                self.assertEqual(self.render("http", target), (403, REFUSED))

    def test_default_ports(self):
        """A target without a port is the scheme's port: https 443, http 80."""
        for scheme, host_port in [("https", "localhost"), ("https", "0x7f.1"), ("https", "192.0.2.10"),
                                  ("http", "127.1"), ("http", "[::1]"), ("https", "node-1.")]:
            with self.subTest(target=f"{scheme}://{host_port}"):
                self.assertEqual(self.render(scheme, host_port), (403, REFUSED))

    def test_other_targets_go_on(self):
        """Another target is fetched (here: no session for foo, so the answer is Go's 500)."""
        request = front_door_request("http", "10.0.0.5:8123")
        request.startedWriting = False
        self.assertEqual(self.front_door.render(request), NOT_DONE_YET)
        self.assertEqual(request.responseCode, 500)
        self.assertEqual(b"".join(request.written), b"failed to find Session for client foo\n")
