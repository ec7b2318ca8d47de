"""
SOCKS5: the sans-IO handshake (bytes in, events out), checked against an
independent client implementation (socksio) and with hypothesis; then the
Twisted proxy over an in-memory tunnel.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from socksio import socks5
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.protocol._limits import UpgradeLimits
from remotedialer.proxies._socks import (
    MAX_BUFFER,
    Authenticate,
    ConnectRequest,
    Failed,
    Reply,
    Socks5Server,
    State,
)
from remotedialer.proxies._socksproxy import SocksProxyFactory, reply_for
from remotedialer.server._access import FrontDoorAccess, ProxyAccess
from tests.forwarding import (
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

SUCCESS = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,60}[a-z0-9])?", fullmatch=True),
)
ports = st.integers(1, 65535)
credentials = st.tuples(st.binary(min_size=1, max_size=255), st.binary(min_size=0, max_size=255))


def client_bytes(host: str, port: int, user_password: tuple[bytes, bytes] | None) -> bytes:
    """What socksio's SOCKS5 client sends for a CONNECT (all of it, as a pipelining client would)."""
    client = socks5.SOCKS5Connection()
    methods = [socks5.SOCKS5AuthMethod.NO_AUTH_REQUIRED]
    if user_password is not None:
        methods.append(socks5.SOCKS5AuthMethod.USERNAME_PASSWORD)
    client.send(socks5.SOCKS5AuthMethodsRequest(methods))
    data = client.data_to_send()
    if user_password is not None:
        client.receive_data(b"\x05\x02")
        client.send(socks5.SOCKS5UsernamePasswordRequest(*user_password))
        data += client.data_to_send()
        client.receive_data(b"\x01\x00")
    else:
        client.receive_data(b"\x05\x00")
    client.send(socks5.SOCKS5CommandRequest.from_address(socks5.SOCKS5Command.CONNECT, (host, port)))
    return data + client.data_to_send()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def run(machine: Socks5Server, chunks: list[bytes], ok: bool = True) -> list[object]:
    events: list[object] = []
    for chunk in chunks:
        new = machine.receive_data(chunk)
        while new:
            event = new.pop(0)
            events.append(event)
            if isinstance(event, Authenticate):
                new += machine.accept_credentials(ok)
    return events


class MachineTests(SynchronousTestCase):
    @given(hosts, ports, st.one_of(st.none(), credentials), st.lists(st.integers(0, 2000), max_size=8))
    def test_socksio_handshake_in_any_pieces(self, host, port, user_password, cuts):
        """A real client's handshake, however it is cut, gives the same events and answers."""
        data = client_bytes(host, port, user_password)
        machine = Socks5Server()
        events = run(machine, split(data, cuts))
        expected = [ConnectRequest(host, port)]
        if user_password is not None:
            expected.insert(0, Authenticate(*user_password))
        if ":" in host:
            expected[-1] = ConnectRequest(str(ipaddress.IPv6Address(host)), port)
        self.assertEqual(events, expected)
        machine.reply(Reply.SUCCEEDED)
        self.assertIs(machine.state, State.OPEN)
        out = machine.data_to_send()
        # socksio, as the client, reads our answers.
        client = socks5.SOCKS5Connection()
        client.send(socks5.SOCKS5AuthMethodsRequest([socks5.SOCKS5AuthMethod.NO_AUTH_REQUIRED,
                                                     socks5.SOCKS5AuthMethod.USERNAME_PASSWORD]))
        client.data_to_send()
        method = client.receive_data(out[:2])
        self.assertEqual(method.method, socks5.SOCKS5AuthMethod.USERNAME_PASSWORD if user_password
                         else socks5.SOCKS5AuthMethod.NO_AUTH_REQUIRED)
        self.assertEqual(out[-10:], SUCCESS)

    @given(st.binary(max_size=600), st.lists(st.integers(0, 700), max_size=5))
    def test_any_bytes(self, data, cuts):
        """Any input: no exception, at most one Failed and nothing after it, bounded output."""
        machine = Socks5Server()
        events = []
        for chunk in split(data, cuts):
            if machine.state in (State.OPEN, State.REPLY_PENDING):
                break
            events += run(machine, [chunk], ok=True)
        failed = [i for i, e in enumerate(events) if isinstance(e, Failed)]
        self.assertLessEqual(len(failed), 1)
        if failed:
            self.assertEqual(failed[0], len(events) - 1)
            self.assertIs(machine.state, State.CLOSED)
            self.assertEqual(machine.receive_data(b"more"), [])
        self.assertLess(len(machine.data_to_send()), 200)

    def test_trailing_data_is_the_targets(self):
        machine = Socks5Server()
        events = run(machine, [client_bytes("10.0.0.5", 22, None) + b"SSH-2.0-x\r\n"])
        self.assertEqual(events, [ConnectRequest("10.0.0.5", 22)])
        machine.reply(Reply.SUCCEEDED)
        self.assertEqual(machine.trailing_data(), b"SSH-2.0-x\r\n")

    def _fails(self, data: bytes, answer: bytes, text: str, **kwargs):
        machine = Socks5Server(**kwargs)
        events = run(machine, [data])
        self.assertEqual(events[-1], Failed(text))
        self.assertEqual(machine.data_to_send()[-len(answer):] if answer else machine.data_to_send(), answer)

    def test_refusals(self):
        """Each error gets the RFC's answer where there is one, and a line for the log."""
        self._fails(b"\x05\x01\x00", b"\x05\xff",
                    "no acceptable authentication method (this proxy takes username/password)",
                    allow_no_auth=False)
        self._fails(b"\x05\x01\x80", b"\x05\xff",
                    "no acceptable authentication method (this proxy takes username/password or none)")
        self._fails(b"\x05\x01\x00\x05\x02\x00\x01\x0a\x00\x00\x05\x00\x16",
                    b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00", "command 0x02 not supported (CONNECT only)")
        self._fails(b"\x05\x01\x00\x05\x01\x00\x09", b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00",
                    "address type 0x09 not supported")
        self._fails(b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50", b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00",
                    "the host name is empty or not printable")
        self._fails(b"\x04\x01\x00\x50\x0a\x00\x00\x05\x00", b"\x00\x5b\x00\x00\x00\x00\x00\x00",
                    "a SOCKS4 request (this proxy speaks SOCKS5)")
        self._fails(b"\x05\x01\x02\x02\x01", b"\x01\x01", "bad username/password version 0x02")
        machine = Socks5Server()
        self.assertEqual(run(machine, [b"GET / HTTP/1.1\r\n"]),
                         [Failed("an HTTP request (this proxy speaks SOCKS5)")])
        self.assertIn(b"this is a SOCKS5 proxy, not an HTTP proxy", machine.data_to_send())

    def test_authentication_failure(self):
        machine = Socks5Server()
        data = client_bytes("10.0.0.5", 22, (b"foo", b"bad"))
        self.assertEqual(run(machine, [data], ok=False),
                         [Authenticate(b"foo", b"bad"), Failed("authentication failed")])
        self.assertEqual(machine.data_to_send(), b"\x05\x02\x01\x01")

    def test_buffer_is_bounded(self):
        machine = Socks5Server()
        events = run(machine, [client_bytes("10.0.0.5", 22, None)])
        self.assertEqual(events, [ConnectRequest("10.0.0.5", 22)])
        self.assertEqual(machine.receive_data(b"x" * (MAX_BUFFER + 1)),
                         [Failed(f"over {MAX_BUFFER} bytes sent before the handshake finished")])

    def test_reply_codes(self):
        self.assertEqual(reply_for("client-not-connected", ""), Reply.NETWORK_UNREACHABLE)
        self.assertEqual(reply_for("dial-refused", "connect to tcp/x not allowed"), Reply.NOT_ALLOWED)
        self.assertEqual(reply_for("dial-timeout", "i/o timeout"), Reply.TTL_EXPIRED)
        self.assertEqual(reply_for("dial-failed", "Connection was refused by other side: 111"),
                         Reply.CONNECTION_REFUSED)
        self.assertEqual(reply_for("dial-failed", "dial tcp: lookup x: no such host"), Reply.HOST_UNREACHABLE)
        self.assertEqual(reply_for("dial-failed", "connect: network is unreachable"),
                         Reply.NETWORK_UNREACHABLE)
        self.assertEqual(reply_for("dial-failed", "something else"), Reply.GENERAL_FAILURE)


class SocksProxyTests(SynchronousTestCase):
    def setUp(self):
        self.tunnel = tunnel_with_targets()
        self.forwarder = forwarder(self.tunnel, "socks")
        self.factory = SocksProxyFactory(self.forwarder)
        self.log = LogLines(self)

    def caller(self, data: bytes, host: str = "127.0.0.1"):
        proxy, caller = connect_caller(self.tunnel, self.factory, host)
        caller.transport.write(data)
        self.tunnel.flush()
        return caller

    def test_user_name_names_the_client(self):
        caller = self.caller(client_bytes("10.0.0.6", 22, (b"foo", b"")))
        self.assertEqual(received(caller), b"\x05\x02\x01\x00" + SUCCESS + b"220 hello\r\n")
        self.assertEqual((self.forwarder.stats.streams_total, self.forwarder.stats.streams_open), (1, 1))

    def test_host_suffix_names_the_client(self):
        caller = self.caller(client_bytes("10.0.0.5.foo.tunnel", 6443, None))
        self.assertEqual(received(caller), b"\x05\x00", "no reply before the dial wait")
        self.tunnel.clock.advance(self.forwarder.dial_wait)
        self.tunnel.flush()
        self.assertEqual(received(caller), b"\x05\x00" + SUCCESS)

    def test_data_sent_before_the_reply_is_relayed(self):
        """
        Optimistic data (sent after the request, before our reply: a TLS
        ClientHello pipelined by the caller) reaches the target, in order.
        """
        caller = self.caller(client_bytes("10.0.0.5.foo.tunnel", 6443, None))
        caller.transport.write(b"HELLO-OPTIMISTIC ")
        self.tunnel.flush()
        self.tunnel.clock.advance(self.forwarder.dial_wait)
        self.tunnel.flush()
        caller.transport.write(b"AFTER")
        self.tunnel.flush()
        self.assertEqual(received(caller), b"\x05\x00" + SUCCESS + b"HELLO-OPTIMISTIC AFTER")

    def test_failures_get_reply_codes(self):
        """Refused by the client's rules: 0x02; client not connected: 0x03; no client: 0x02."""
        caller = self.caller(client_bytes("10.9.9.9", 80, (b"foo", b"")))
        self.assertEqual(received(caller)[-10:], b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
        self.assertIsNotNone(caller.reason)
        caller = self.caller(client_bytes("10.0.0.5", 6443, None))
        self.assertEqual(received(caller)[-10:], b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
        caller = self.caller(client_bytes("10.0.0.5", 6443, (b"bar", b"")))
        self.assertEqual(received(caller)[-10:], b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
        self.assertEqual(self.forwarder.stats.failures,
                         {"dial-refused": 1, "no-client": 1, "client-not-connected": 1})

    def test_tokens(self):
        """With tokens: only username/password is offered, and the password must be a token."""
        token = b"t0ken"
        self.factory.access = token_access(token)
        caller = self.caller(client_bytes("10.0.0.6", 22, None))
        self.assertEqual(received(caller), b"\x05\xff")
        caller = self.caller(client_bytes("10.0.0.6", 22, (b"foo", b"wrong")))
        self.assertEqual(received(caller), b"\x05\x02\x01\x01")
        self.assertIsNotNone(caller.reason)
        caller = self.caller(client_bytes("10.0.0.6", 22, (b"foo", token)))
        self.assertEqual(received(caller), b"\x05\x02\x01\x00" + SUCCESS + b"220 hello\r\n")
        self.assertEqual(self.forwarder.stats.failures, {"bad-request": 1, "unauthenticated": 1})
        self.assertEqual(self.log.matching("t0ken"), [])

    def test_token_scoped_to_other_clients(self):
        """
        A token for bar authenticates (it is a token), but its request for a
        target behind foo, by user name or .tunnel host, is not allowed (0x02).
        """
        self.factory.access = scoped_access({b"bar-token": ("bar",), b"foo-token": ("foo",)})
        for request in (client_bytes("10.0.0.6", 22, (b"foo", b"bar-token")),
                        client_bytes("10.0.0.5.foo.tunnel", 6443, (b"", b"bar-token"))):
            caller = self.caller(request)
            self.assertEqual(received(caller), b"\x05\x02\x01\x00" + b"\x05\x02\x00\x01" + bytes(6))
            self.assertIsNotNone(caller.reason)
        caller = self.caller(client_bytes("10.0.0.6", 22, (b"foo", b"foo-token")))
        self.assertEqual(received(caller), b"\x05\x02\x01\x00" + SUCCESS + b"220 hello\r\n")
        self.assertEqual(self.forwarder.stats.failures, {"client-not-allowed": 2})
        self.assertEqual(self.log.matching("bar-token"), [])

    def test_own_listener_is_not_allowed(self):
        """Every spelling of one of the server's own listeners: 0x02 (not allowed by ruleset), no stream."""
        self.factory.access = ProxyAccess(FrontDoorAccess(own=own_listeners(("127.0.0.1", 8123))))
        for host in ("localhost", "::ffff:127.0.0.1", "::1", *LOOPBACK_SPELLINGS):
            caller = self.caller(client_bytes(host, 8123, (b"foo", b"")))
            self.assertEqual(received(caller)[-10:], b"\x05\x02\x00\x01" + bytes(6), host)
            self.assertIsNotNone(caller.reason)
        self.assertEqual(self.forwarder.stats.failures, {"own-listener": 3 + len(LOOPBACK_SPELLINGS)})
        self.assertEqual(self.forwarder.stats.streams_total, 0)

    def test_caller_beyond_loopback(self):
        caller = self.caller(client_bytes("10.0.0.6", 22, (b"foo", b"")), host="192.0.2.1")
        self.assertEqual(received(caller)[-10:], b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
        self.assertEqual(self.forwarder.stats.failures, {"caller-refused": 1})

    def test_garbage_is_closed_and_the_rest_go_on(self):
        good = self.caller(client_bytes("10.0.0.6", 22, (b"foo", b"")))
        bad = self.caller(b"\x05\x02\x00")  # (one method short)
        self.assertEqual(bad.reason, None)
        bad2 = self.caller(b"\x01\x02\x03")
        self.assertIsNotNone(bad2.reason)
        good.transport.write(b"still here")
        self.tunnel.flush()
        self.assertTrue(received(good).endswith(b"220 hello\r\nstill here"))
        self.tunnel.clock.advance(UpgradeLimits().timeout)
        self.tunnel.flush()
        self.assertIsNotNone(bad.reason, "a handshake that never finishes is closed")
        self.assertEqual(self.forwarder.stats.failures, {"bad-request": 1, "handshake-timeout": 1})
        self.assertEqual(self.factory.pending, 0)
