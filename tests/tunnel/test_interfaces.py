"""
The plug-in points are zope.interface interfaces, honestly provided; and
the small public API built on them (an ITunnelAuthorizer object as the
server's authorizer, TunnelEndpoint's failure when a protocol cannot start,
Server.http_client).
"""

from __future__ import annotations

from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from remotedialer import LocalDialer, Server, TunnelClient, allow_all
from remotedialer.server._resource import as_tunnel_authorizer
from remotedialer.tunnel._endpoint import TunnelEndpoint
from remotedialer.tunnel._interfaces import (
    IDialPolicy,
    IPeerObserver,
    ISession,
    ISessionObserver,
    ISessionOwner,
    IStreamOpener,
    ITunnelAuthorizer,
)
from tests.memory import SessionPair


class ProvidedTests(SynchronousTestCase):
    def test_server(self) -> None:
        server = Server(reactor=MemoryReactorClock())
        for interface in (ISessionOwner, IPeerObserver, IStreamOpener):
            self.assertTrue(verifyObject(interface, server))

    def test_client_and_peer_link(self) -> None:
        clock = MemoryReactorClock()
        client = TunnelClient("ws://127.0.0.1:9/connect", connect_authorizer=allow_all, reactor=clock)
        self.assertTrue(verifyObject(ISessionOwner, client))
        server = Server(reactor=clock, peer_id="a", peer_token="t")
        server.add_peer("b", "t", "ws://127.0.0.1:9/connect")
        self.assertTrue(verifyObject(ISessionOwner, server.peer_link("b")))
        self.assertTrue(verifyObject(ISessionObserver, server.peer_link("b")))

    def test_dial_policies_and_session(self) -> None:
        self.assertTrue(verifyObject(IDialPolicy, LocalDialer(MemoryReactorClock(), allow_all)))
        self.assertTrue(verifyObject(IDialPolicy, Server(reactor=MemoryReactorClock()).peer_dialer))
        self.assertTrue(verifyObject(ISession, SessionPair().server))


@implementer(ITunnelAuthorizer)
class _TokenAuthorizer:
    def authorize(self, request):
        return "foo" if request.getHeader("Authorization") == "Bearer s3cret" else None


class AuthorizerTests(SynchronousTestCase):
    def test_provider_used_as_is(self) -> None:
        authorizer = _TokenAuthorizer()
        self.assertIs(as_tunnel_authorizer(authorizer), authorizer)

    def test_callable_wrapped(self) -> None:
        wrapped = as_tunnel_authorizer(lambda request: "bar")
        self.assertTrue(verifyObject(ITunnelAuthorizer, wrapped))
        self.assertEqual(wrapped.authorize(DummyRequest([b""])), "bar")

    def test_neither_refused(self) -> None:
        self.assertRaises(TypeError, as_tunnel_authorizer, object())


class _Opener:
    def __init__(self, pair: SessionPair) -> None:
        self.pair = pair

    def open_stream(self, client_key, proto, address):
        return self.pair.server.open_stream(proto, address)


class _RaisesOnConnect(Protocol):
    def connectionMade(self) -> None:
        raise RuntimeError("cannot start")


class _ClosesAtOnce(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"bye")
        self.transport.loseConnection()


class TunnelEndpointTests(SynchronousTestCase):
    def test_protocol_failing_to_start_fails_connect(self) -> None:
        """A connectionMade that raises: connect fails, the stream is closed with the error."""
        pair = SessionPair()
        endpoint = TunnelEndpoint(_Opener(pair), "foo", "tcp", "127.0.0.1:8125")
        failure = self.failureResultOf(endpoint.connect(Factory.forProtocol(_RaisesOnConnect)),
                                       ConnectError)
        self.assertIn("protocol failed to start", str(failure.value))
        self.assertEqual(pair.server.streams, {})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_protocol_closing_at_once_still_connects(self) -> None:
        """A protocol that writes and closes in connectionMade connected all the same (as TCP)."""
        pair = SessionPair()
        endpoint = TunnelEndpoint(_Opener(pair), "foo", "tcp", "127.0.0.1:8125")
        self.successResultOf(endpoint.connect(Factory.forProtocol(_ClosesAtOnce)))
        pair.pump()
        self.assertEqual(pair.client_dialer.endpoints[0].transport.value(), b"bye")


class HTTPClientTests(SynchronousTestCase):
    def test_http_client_is_treq(self) -> None:
        from treq.client import HTTPClient

        client = Server(reactor=MemoryReactorClock()).http_client("foo")
        self.assertIsInstance(client, HTTPClient)
