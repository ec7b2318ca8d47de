"""
The HTTP CONNECT proxy over an in-memory tunnel: request heads parsed by
h11 within limits, the access rules, every answer, and the splice.
"""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from remotedialer.protocol._limits import UpgradeLimits
from remotedialer.proxies._connectproxy import ConnectProxyFactory, proxy_credentials
from remotedialer.server._access import FrontDoorAccess, ProxyAccess
from tests.forwarding import (
    TARGET,
    LogLines,
    connect_caller,
    forwarder,
    received,
    scoped_access,
    token_access,
    tunnel_with_targets,
)
from tests.protocol.test_addresses import LOOPBACK_SPELLINGS
from tests.server.test_own import listeners as own_listeners

TOKEN = b"s3cret-token"


def basic(user: str, password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user.encode() + b":" + password)


def connect_head(target: str = TARGET, *headers: bytes) -> bytes:
    lines = [b"CONNECT %s HTTP/1.1" % target.encode(), b"Host: %s" % target.encode(), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class ProxyCredentialsTests(SynchronousTestCase):
    @given(st.text(st.characters(blacklist_characters=":", blacklist_categories=("Cs",))),
           st.binary())
    def test_basic_round_trip(self, user, password):
        """Whatever user (UTF-8, no colon) and password a tool encodes, we decode the same."""
        self.assertEqual(proxy_credentials(basic(user, password)), (user, password))

    def test_bearer(self):
        self.assertEqual(proxy_credentials(b"Bearer tok"), (None, b"tok"))

    def test_malformed(self):
        for value in [b"Basic !!!", b"Basic " + base64.b64encode(b"nocolon"), b"Digest x",
                      b"Basic " + base64.b64encode(b"\xff:pw"), b"Bearer"]:
            with self.assertRaises(ValueError):
                proxy_credentials(value)


class ConnectProxyTests(SynchronousTestCase):
    def setUp(self):
        self.tunnel = tunnel_with_targets()
        self.forwarder = forwarder(self.tunnel)
        self.factory = ConnectProxyFactory(self.forwarder)
        self.log = LogLines(self)

    def test_alpn_http_1_1(self):
        """On a TLS listener (an HTTPS proxy) ALPN may pick http/1.1, what the proxy speaks, only."""
        verifyObject(IProtocolNegotiationFactory, self.factory)
        self.assertEqual(self.factory.acceptableProtocols(), [b"http/1.1"])

    def caller(self, data: bytes = b"", host: str = "127.0.0.1"):
        proxy, caller = connect_caller(self.tunnel, self.factory, host)
        if data:
            caller.transport.write(data)
        self.tunnel.flush()
        return proxy, caller

    def wait_dial(self):
        self.tunnel.clock.advance(self.forwarder.dial_wait)
        self.tunnel.flush()

    def assertAnswer(self, caller, status: bytes, text: bytes):
        data = received(caller)
        self.assertTrue(data.startswith(b"HTTP/1.1 " + status), data)
        self.assertTrue(data.endswith(b"\r\n\r\n" + text + b"\n"), data)
        self.assertIsNotNone(caller.reason, "the connection is closed")

    def test_connect_through_tunnel(self):
        """200 once the dial wait passes; then bytes go both ways; the counters follow."""
        _, caller = self.caller(connect_head(TARGET, b"Proxy-Authorization: " + basic("foo", b"")))
        self.assertEqual(received(caller), b"", "no answer before the dial wait")
        self.wait_dial()
        self.assertEqual(received(caller), b"HTTP/1.1 200 Connection established\r\n\r\n")
        caller.transport.write(b"ping")
        self.tunnel.flush()
        self.assertTrue(received(caller).endswith(b"ping"))
        stats = self.forwarder.stats
        self.assertEqual((stats.connections, stats.streams_total, stats.streams_open), (1, 1, 1))
        caller.transport.loseConnection()
        self.tunnel.flush()
        self.assertEqual(stats.streams_open, 0)
        self.assertEqual(self.tunnel.streams, (0, 0))
        self.assertEqual(stats.failures, {})

    def test_target_speaking_first_answers_at_once(self):
        """The target's first bytes prove the dial: 200 at once, before those bytes."""
        _, caller = self.caller(connect_head("10.0.0.6:22", b"Proxy-Authorization: " + basic("foo", b"")))
        self.assertEqual(received(caller), b"HTTP/1.1 200 Connection established\r\n\r\n220 hello\r\n")
        self.assertEqual(self.tunnel.clock.getDelayedCalls(), [], "no dial wait left behind")

    def test_bytes_after_the_head_reach_the_target(self):
        """A caller that sends its first bytes with the head (no wait for 200) loses none."""
        _, caller = self.caller(connect_head(TARGET, b"Proxy-Authorization: " + basic("foo", b""))
                                + b"early bytes")
        self.wait_dial()
        self.assertEqual(received(caller), b"HTTP/1.1 200 Connection established\r\n\r\nearly bytes")

    def test_host_suffix_names_the_client(self):
        """Without credentials, <host>.<client>.tunnel names the client; the host dialed is <host>."""
        _, caller = self.caller(connect_head("10.0.0.6.foo.tunnel:22"))
        self.assertTrue(received(caller).endswith(b"\r\n\r\n220 hello\r\n"), received(caller))

    def test_no_client_named(self):
        _, caller = self.caller(connect_head(TARGET))
        self.assertAnswer(caller, b"407 ", b"no client named: use the proxy user name <client>, "
                                           b"or the host <host>.<client>.tunnel")
        self.assertIn(b"Proxy-Authenticate: Basic realm=\"remotedialer\"", received(caller))
        self.assertEqual(self.forwarder.stats.failures, {"no-client": 1})

    def test_dial_refused_by_the_client(self):
        """The client's dial rules refuse: 502 with its reason, counted as dial-refused."""
        _, caller = self.caller(connect_head("10.9.9.9:80", b"Proxy-Authorization: " + basic("foo", b"")))
        self.assertAnswer(caller, b"502 Bad Gateway",
                          b"foo:tcp/10.9.9.9:80: connect to tcp/10.9.9.9:80 not allowed")
        self.assertEqual(self.forwarder.stats.failures, {"dial-refused": 1})
        self.assertEqual(self.tunnel.streams, (0, 0))

    def test_client_not_connected(self):
        self.tunnel.disconnect()
        _, caller = self.caller(connect_head(TARGET, b"Proxy-Authorization: " + basic("foo", b"")))
        self.assertAnswer(caller, b"502 Bad Gateway",
                          b"foo:tcp/10.0.0.5:6443: failed to find Session for client foo")
        self.assertEqual(self.forwarder.stats.failures, {"client-not-connected": 1})

    def test_dial_timeout_is_504(self):
        proxy, caller = self.caller(connect_head(TARGET, b"Proxy-Authorization: " + basic("foo", b"")))
        proxy.peer.transport.close_with_error("dial tcp 10.0.0.5:6443: i/o timeout")
        self.tunnel.flush()
        self.assertAnswer(caller, b"504 Gateway Timeout",
                          b"foo:tcp/10.0.0.5:6443: dial tcp 10.0.0.5:6443: i/o timeout")
        self.assertEqual(self.forwarder.stats.failures, {"dial-timeout": 1})

    def test_tokens(self):
        """With front-door tokens the proxy password must be one: 407 otherwise."""
        self.factory.access = token_access(TOKEN)
        for credentials in [b"", b"Proxy-Authorization: " + basic("foo", b"wrong")]:
            _, caller = self.caller(connect_head(TARGET, *filter(None, [credentials])))
            self.assertAnswer(caller, b"407 Proxy Authentication Required",
                              b"a valid proxy password (a front-door token) is required")
        _, caller = self.caller(connect_head("10.0.0.6:22", b"Proxy-Authorization: " + basic("foo", TOKEN)))
        self.assertTrue(received(caller).startswith(b"HTTP/1.1 200 "))
        _, caller = self.caller(connect_head("10.0.0.6.foo.tunnel:22", b"Proxy-Authorization: Bearer "
                                             + TOKEN))
        self.assertTrue(received(caller).startswith(b"HTTP/1.1 200 "))
        self.assertEqual(self.forwarder.stats.failures, {"unauthenticated": 2})
        self.assertEqual(self.log.matching("s3cret"), [], "no token in a log line")

    def test_token_scoped_to_other_clients(self):
        """
        A token whose tokens-file line names other clients (clients=bar,bar-*)
        gets 403 for foo, by user name or .tunnel host, in one line naming
        neither the token nor its clients; the same token passes for foo's
        own token holder.
        """
        self.factory.access = scoped_access({b"bar-token": ("bar", "bar-*"), b"foo-token": ("foo",)})
        for head in (connect_head(TARGET, b"Proxy-Authorization: " + basic("foo", b"bar-token")),
                     connect_head("10.0.0.5.foo.tunnel:6443", b"Proxy-Authorization: Bearer bar-token"),
                     connect_head("10.0.0.5.foo.tunnel:6443",
                                  b"Proxy-Authorization: " + basic("", b"bar-token"))):
            _, caller = self.caller(head)
            self.assertAnswer(caller, b"403 Forbidden", b"the token presented is not for this client")
            self.assertNotIn(b"bar", received(caller))
        own = b"Proxy-Authorization: " + basic("foo", b"foo-token")
        _, caller = self.caller(connect_head("10.0.0.6:22", own))
        self.assertTrue(received(caller).startswith(b"HTTP/1.1 200 "))
        self.assertEqual(self.forwarder.stats.failures, {"client-not-allowed": 3})
        self.assertEqual(self.log.matching("bar-token"), [], "no token in a log line")

    def test_callers_beyond_loopback(self):
        """No tokens configured: only loopback callers, as the front door; --frontdoor-open: anyone."""
        _, caller = self.caller(connect_head(TARGET, b"Proxy-Authorization: " + basic("foo", b"")),
                                host="192.0.2.7")
        self.assertAnswer(caller, b"403 Forbidden", b"only loopback callers are served "
                                                    b"(configure front-door tokens, or open it)")
        self.factory.access = ProxyAccess(FrontDoorAccess(open=True))
        _, caller = self.caller(connect_head("10.0.0.6:22", b"Proxy-Authorization: " + basic("foo", b"")),
                                host="192.0.2.7")
        self.assertTrue(received(caller).startswith(b"HTTP/1.1 200 "))

    def test_own_listener(self):
        """Every spelling of an own listener's address: 403, one line; the tunnel untouched."""
        self.factory.access = ProxyAccess(FrontDoorAccess(own=own_listeners(("127.0.0.1", 8123))))
        for host in ("localhost", "::1", *LOOPBACK_SPELLINGS):
            target = f"[{host}]:8123" if ":" in host and not host.startswith("[") else f"{host}:8123"
            _, caller = self.caller(connect_head(target, b"Proxy-Authorization: " + basic("foo", b"")))
            self.assertAnswer(caller, b"403 Forbidden", b"the target is this server's own listener")
        self.assertEqual(self.tunnel.messages, [])

    def test_malformed_heads(self):
        """Bad input: one line saying what is wrong, the connection closed, the tunnel untouched."""
        _, good = self.caller(connect_head("10.0.0.6:22", b"Proxy-Authorization: " + basic("foo", b"")))
        cases = [
            (b"GARBAGE\r\n\r\n", b"400 Bad Request",
             b"malformed request head (this proxy takes 'CONNECT host:port HTTP/1.1')"),
            (b"GET http://10.0.0.5/ HTTP/1.1\r\nHost: 10.0.0.5\r\n\r\n", b"405 Method Not Allowed",
             b"this proxy only tunnels: CONNECT host:port (curl: --proxytunnel for http:// URLs)"),
            (connect_head("10.0.0.5"), b"400 Bad Request", b"the CONNECT target must be host:port"),
            (b"CONNECT 10.0.0.5:6443 HTTP/1.1\r\n\r\n", b"400 Bad Request",
             b"an HTTP/1.1 request needs a Host header"),
            (connect_head(TARGET, b"Proxy-Authorization: Basic !!"), b"400 Bad Request",
             b"Proxy-Authorization: Basic credentials are not base64"),
            (connect_head(TARGET, b"Content-Length: 5"), b"400 Bad Request",
             b"a CONNECT request has no body"),
            (b"CONNECT " + b"x" * 70000, b"431 Request Header Fields Too Large",
             b"request head over 65536 bytes"),
            (connect_head(TARGET, *[b"X-%d: y" % i for i in range(101)]),
             b"431 Request Header Fields Too Large",
             b"over 100 header lines"),
        ]
        for data, status, text in cases:
            _, caller = self.caller(data)
            self.assertAnswer(caller, status, text)
        self.assertEqual(self.forwarder.stats.failures, {"bad-request": len(cases)})
        good.transport.write(b"still here")
        self.tunnel.flush()
        self.assertTrue(received(good).endswith(b"220 hello\r\nstill here"))
        self.assertEqual(self.log.matching("bytearray"), [], "no repr in a log line")

    def test_head_size_counted_whole(self):
        """
        A complete head over the limit is 431 however it arrives: h11 bounds
        only a head still incomplete, so a 70 KiB head in one read was
        answered 200 and dialed.  At the limit it is taken, with the bytes after it.
        """
        auth = b"Proxy-Authorization: " + basic("foo", b"")
        base = connect_head(TARGET, auth, b"X-Pad: ")
        limit = UpgradeLimits().header_bytes
        for name, data, over in [
                ("70 KiB at once", connect_head(TARGET, auth, b"X-Pad: " + b"p" * 70000), True),
                ("70 KiB, bare LF line ends", connect_head(TARGET, auth, b"X-Pad: " + b"p" * 70000)
                 .replace(b"\r\n", b"\n"), True),
                ("one byte over",
                 connect_head(TARGET, auth, b"X-Pad: " + b"p" * (limit + 1 - len(base))), True),
                ("at the limit, then early bytes",
                 connect_head(TARGET, auth, b"X-Pad: " + b"p" * (limit - len(base))) + b"e" * 70000, False)]:
            _, caller = self.caller(data)
            if over:
                self.assertAnswer(caller, b"431 Request Header Fields Too Large",
                                  b"request head over 65536 bytes")
            else:
                self.wait_dial()
                self.assertTrue(received(caller).startswith(b"HTTP/1.1 200 Connection established"), name)
        self.assertEqual(self.forwarder.stats.failures, {"bad-request": 3})

    def test_head_in_pieces_counted(self):
        _, caller = self.caller(connect_head(TARGET, b"Proxy-Authorization: " + basic("foo", b""))[:-2])
        for _ in range(8):
            caller.transport.write(b"X-Pad: " + b"p" * 9000 + b"\r\n")
            self.tunnel.flush()
        caller.transport.write(b"\r\n")
        self.tunnel.flush()
        self.assertAnswer(caller, b"431 Request Header Fields Too Large", b"request head over 65536 bytes")

    def test_slow_head_is_408(self):
        _, caller = self.caller(b"CONNECT 10.0.0.5:6443 HTTP/1.1\r\n")
        self.tunnel.clock.advance(UpgradeLimits().timeout)
        self.tunnel.flush()
        self.assertAnswer(caller, b"408 Request Timeout", b"no complete request head within 10 s")
        self.assertEqual(self.factory.pending, 0)
        self.assertEqual(self.forwarder.stats.failures, {"handshake-timeout": 1})

    def test_too_many_pending_heads(self):
        """Past max_pending connections still sending heads, new ones are closed at once."""
        self.factory.limits = UpgradeLimits(max_pending=2)
        self.caller(b"CONNECT ")
        self.caller(b"CONNECT ")
        proxy, _ = self.caller()
        self.assertIsNone(proxy)
        self.assertEqual(self.forwarder.stats.failures, {"too-many-handshakes": 1})

    def test_refusals_are_logged_throttled(self):
        """A flood of bad requests makes a bounded amount of log."""
        for _ in range(50):
            self.caller(connect_head(TARGET))
        self.assertEqual(len(self.log.matching("no client named")), 5)


class ConnectHeadPropertyTests(SynchronousTestCase):
    """Whatever arrives, in whatever pieces: one clear answer, or a wait; never an exception."""

    def _feed(self, chunks: list[bytes]):
        tunnel = tunnel_with_targets()
        fwd = forwarder(tunnel, dial_wait=0)
        _, caller = connect_caller(tunnel, ConnectProxyFactory(fwd))
        for chunk in chunks:
            caller.transport.write(chunk)
            tunnel.flush()
        return fwd, caller

    @given(st.lists(st.binary(max_size=300), max_size=6))
    def test_any_bytes(self, chunks):
        fwd, caller = self._feed(chunks)
        data = received(caller)
        if data:
            self.assertRegex(data, rb"\AHTTP/1\.1 [1-5]\d\d [A-Za-z -]+\r\n")
            if not data.startswith(b"HTTP/1.1 200 "):
                self.assertTrue(data.endswith(b"\n"))
                self.assertEqual(data.count(b"\r\n\r\n"), 1)
                self.assertNotIn(b"bytearray", data)
        else:
            self.assertIsNone(caller.reason, "closed without an answer")
        self.assertLessEqual(sum(fwd.stats.failures.values()), 1)

    @given(st.lists(st.integers(0, 200), max_size=6))
    def test_a_head_in_any_pieces(self, cuts):
        head = connect_head("10.0.0.6:22", b"Proxy-Authorization: " + basic("foo", b"")) + b"early"
        points = sorted({c % (len(head) + 1) for c in cuts})
        chunks = [head[a:b] for a, b in zip([0, *points], [*points, len(head)], strict=True)]
        _, caller = self._feed(chunks)
        self.assertEqual(received(caller), b"HTTP/1.1 200 Connection established\r\n\r\n220 hello\r\nearly")
