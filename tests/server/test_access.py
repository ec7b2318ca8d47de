"""
Who may use the front door (FrontDoorAccess): loopback callers only by
default, callers anywhere with a listed bearer token (for the clients of
its scope), or anyone when opened; targets that are the server's own
listeners refused.  The proxies (ProxyAccess) by the same rule.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from remotedialer.server._access import FrontDoorAccess, ProxyAccess, Refusal, Route
from remotedialer.server._auth import ClientScope, hash_token
from remotedialer.server._own import OwnListeners
from tests.protocol.test_addresses import LOOPBACK_SPELLINGS


def request(host: str, proxy_authorization: bytes | None = None, v6: bool = False, client: bytes = b"foo",
            authorization: bytes | None = None) -> DummyRequest:
    r = DummyRequest([client, b"http", b"10.0.0.5:80"])
    r.client = (IPv6Address if v6 else IPv4Address)("TCP", host, 50000)
    if proxy_authorization is not None:
        r.requestHeaders.setRawHeaders(b"Proxy-Authorization", [proxy_authorization])
    if authorization is not None:
        r.requestHeaders.setRawHeaders(b"Authorization", [authorization])
    return r


def scoped_tokens() -> dict[bytes, ClientScope]:
    """As a TokenFile maps them: C{all} for every client, C{bar} for bar and bar-*, C{foo} for foo."""
    return {bytes.fromhex(hash_token("all")): ClientScope(),
            bytes.fromhex(hash_token("bar")): ClientScope(("bar", "bar-*")),
            bytes.fromhex(hash_token("foo")): ClientScope(("foo",))}


class AccessTests(SynchronousTestCase):
    def test_default_loopback_only(self) -> None:
        access = FrontDoorAccess()
        self.assertIsNone(access.refusal(request("127.0.0.1")))
        self.assertIsNone(access.refusal(request("127.5.6.7")))
        self.assertIsNone(access.refusal(request("::1", v6=True)))
        # A dual-stack listener's local IPv4 caller (ipaddress: not loopback before 3.13).
        self.assertIsNone(access.refusal(request("::ffff:127.0.0.1", v6=True)))
        self.assertEqual(access.refusal(request("::ffff:10.1.2.3", v6=True))[0], 403)
        code, text = access.refusal(request("10.1.2.3"))
        self.assertEqual(code, 403)
        self.assertIn("only loopback callers", text)

    def test_open(self) -> None:
        self.assertIsNone(FrontDoorAccess(open=True).refusal(request("203.0.113.9")))

    def test_tokens(self) -> None:
        access = FrontDoorAccess(token_hashes=frozenset({bytes.fromhex(hash_token("t0ken"))}))
        self.assertIsNone(access.refusal(request("203.0.113.9", b"Bearer t0ken")))
        for value in (None, b"Bearer wrong", b"Basic dDBrZW4=", b"Bearer "):
            code, _ = access.refusal(request("203.0.113.9", value))
            self.assertEqual(code, 407, value)
        # With tokens configured, loopback callers need one too.
        self.assertEqual(access.refusal(request("127.0.0.1"))[0], 407)

    def test_nested_into_itself(self) -> None:
        own = OwnListeners()
        own.add("127.0.0.1", 8123)
        access = FrontDoorAccess(own=own)
        for host in ("127.0.0.1", "localhost", "::1", "127.1.1.1", *LOOPBACK_SPELLINGS):
            self.assertTrue(access.nested(host, 8123), host)
        for host, port in (("127.0.0.1", 8125), ("10.0.0.5", 8123), ("kubernetes", 8123)):
            self.assertFalse(access.nested(host, port), host)

    def test_own_listeners_are_shared(self) -> None:
        """A listener that binds after the rule is made (a tcp:0 one) is one of its own at once."""
        access = FrontDoorAccess()
        proxies = ProxyAccess(access)
        self.assertIsInstance(proxies.route("foo", "0x7f.1", 40123), Route)
        access.own.add("127.0.0.1", 40123)
        self.assertTrue(access.nested("2130706433", 40123))
        self.assertEqual(proxies.route("foo", "0x7f.1", 40123),
                         Refusal("own-listener", "the target is this server's own listener"))
        self.assertEqual(proxies.route(None, "0177.0.0.1.foo.tunnel", 40123).reason, "own-listener")


class ScopedTokenTests(SynchronousTestCase):
    """A token line's clients= scope: the one rule for the front door and both proxies."""

    caller = IPv4Address("TCP", "203.0.113.9", 40000)

    def test_front_door_scope(self) -> None:
        access = FrontDoorAccess(token_hashes=scoped_tokens())
        self.assertIsNone(access.refusal(request("203.0.113.9", b"Bearer foo")))
        self.assertIsNone(access.refusal(request("203.0.113.9", b"Bearer all")))
        self.assertIsNone(access.refusal(request("203.0.113.9", b"Bearer bar", client=b"bar-eu")))
        code, text = access.refusal(request("203.0.113.9", b"Bearer bar"))
        self.assertEqual(code, 403)
        self.assertEqual(text, "front door: the token presented is not for this client")
        # No client named: no scope holds it.
        self.assertEqual(access.refusal(request("203.0.113.9", b"Bearer foo", client=b""))[0], 403)

    def test_front_door_token_in_authorization(self) -> None:
        """
        kubectl sends a kubeconfig's user token as Authorization: Bearer: taken
        when there is no Proxy-Authorization, and then never passed on.
        """
        access = FrontDoorAccess(token_hashes=scoped_tokens(), forward_credentials=True)
        kubectl = request("203.0.113.9", authorization=b"Bearer foo")
        self.assertIsNone(access.refusal(kubectl))
        self.assertEqual(access.consumed_header(kubectl), b"authorization")
        self.assertEqual(access.refusal(request("203.0.113.9", authorization=b"Bearer bar")),
                         (403, "front door: the token presented is not for this client"))
        code, text = access.refusal(request("203.0.113.9", authorization=b"Bearer wrong"))
        self.assertEqual(code, 401)  # (kubectl: "You must be logged in to the server")
        self.assertNotIn("wrong", text)
        # Proxy-Authorization, when present, is the front door's: Authorization is the caller's own.
        both = request("203.0.113.9", b"Bearer foo", authorization=b"Bearer for-the-api-server")
        self.assertIsNone(access.refusal(both))
        self.assertIsNone(access.consumed_header(both))
        wrong_proxy_token = request("203.0.113.9", b"Bearer wrong", authorization=b"Bearer foo")
        self.assertEqual(access.refusal(wrong_proxy_token)[0], 407)
        self.assertEqual(access.refusal(request("203.0.113.9", authorization=b"Basic Zm9vOmZvbw=="))[0], 407)
        # Without tokens, Authorization is never ours.
        loopback = FrontDoorAccess(forward_credentials=True)
        self.assertIsNone(loopback.consumed_header(request("127.0.0.1", authorization=b"Bearer foo")))

    def test_proxies_scope(self) -> None:
        proxies = ProxyAccess(FrontDoorAccess(token_hashes=scoped_tokens()))
        self.assertEqual(proxies.admit(self.caller, b"foo", "foo", "10.0.0.5", 6443),
                         Route("foo", "tcp", "10.0.0.5:6443"))
        self.assertEqual(proxies.admit(self.caller, b"foo", None, "10.0.0.5.foo.tunnel", 6443),
                         Route("foo", "tcp", "10.0.0.5:6443"))
        self.assertEqual(proxies.admit(self.caller, b"bar", "bar-1", "10.0.0.5", 6443),
                         Route("bar-1", "tcp", "10.0.0.5:6443"))
        for user, host in (("foo", "10.0.0.5"), (None, "10.0.0.5.foo.tunnel"), ("", "db.foo.tunnel")):
            refused = proxies.admit(self.caller, b"bar", user, host, 6443)
            self.assertEqual(refused, Refusal("client-not-allowed",
                                              "the token presented is not for this client"))
        # The token is judged before the route: a stranger learns nothing of clients.
        self.assertEqual(proxies.admit(self.caller, b"wrong", "foo", "10.0.0.5", 6443).reason,
                         "unauthenticated")
        self.assertEqual(proxies.admit(self.caller, None, None, "10.0.0.5", 6443).reason, "unauthenticated")
        # Authentication alone (SOCKS5's step before the request names a client) passes a scoped token.
        self.assertIsNone(proxies.caller_refusal(self.caller, b"bar"))

    def test_unscoped_configurations_unchanged(self) -> None:
        """Plain digests (no scopes), an open front door, loopback only: as before."""
        plain = ProxyAccess(FrontDoorAccess(token_hashes=frozenset({bytes.fromhex(hash_token("t"))})))
        self.assertIsInstance(plain.admit(self.caller, b"t", "anyone", "10.0.0.5", 22), Route)
        opened = ProxyAccess(FrontDoorAccess(open=True))
        self.assertIsInstance(opened.admit(self.caller, None, "x", "h", 1), Route)
        self.assertEqual(ProxyAccess().admit(self.caller, None, "x", "h", 1).reason, "caller-refused")
        mapped = IPv6Address("TCP", "::ffff:127.0.0.1", 40000)
        self.assertIsInstance(ProxyAccess().admit(mapped, None, "x", "h", 1), Route)
