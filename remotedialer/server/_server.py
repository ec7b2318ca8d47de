"""
The server: accepts tunnels from clients (and links from peer servers) and
lets application code dial through them.

Put L{Server.resource} anywhere in a twisted.web tree, and dial with
L{Server.endpoint}, L{Server.agent} or L{Server.open_stream}.  The server is
a MultiService whose children are its outgoing peer links: only peering
needs it started (attach it to your application, or call startService).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import Certificate
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import IResource
from zope.interface import implementer

from remotedialer.client._dialer import ConnectAuthorizer, LocalDialer, deny_all
from remotedialer.client._proxyrule import ProxyRule, proxy_rule
from remotedialer.protocol._flow import FlowLimits
from remotedialer.protocol._limits import SessionLimits
from remotedialer.protocol._text import printable
from remotedialer.server._drain import DRAIN_TIMEOUT, DrainGate, drain
from remotedialer.server._forwarded import TrustedProxies
from remotedialer.server._peering import PeerLink
from remotedialer.server._ratelimit import FailureLimiter
from remotedialer.server._registry import SessionRegistry
from remotedialer.server._resource import Authorizer, TunnelResource, header_authorizer
from remotedialer.tunnel._endpoint import TunnelEndpoint, tunnel_agent
from remotedialer.tunnel._exceptions import ClientNotConnected, ServerDraining
from remotedialer.tunnel._identity import Identity
from remotedialer.tunnel._interfaces import (
    IDialPolicy,
    IPeerObserver,
    ISession,
    ISessionOwner,
    IStreamOpener,
    ITunnelConnection,
)
from remotedialer.tunnel._logtext import address
from remotedialer.tunnel._session import Session, SessionFactory
from remotedialer.tunnel._stream import TunnelStream
from remotedialer.tunnel._tunnellog import tunnel_down, tunnel_up
from remotedialer.tunnel._websocket import (
    IDLE_TIMEOUT,
    PING_INTERVAL,
    check_keepalive,
    server_factory,
)

if TYPE_CHECKING:
    from treq.client import HTTPClient
    from twisted.internet._sslverify import IOpenSSLTrustRoot

#: How long an owner's older session has to answer a ping when a new one
#: arrives, before it counts as half-open and is replaced.
PROBE_TIMEOUT = 5.0
#: Proto prefix separator for dials forwarded to a peer (docs/protocol.md section 5).
PEER_PROTO_SEPARATOR = "::"


@implementer(IDialPolicy)
class _PeerForwardDialer:
    """
    Answers a peer's Connect C{<clientKey>::<proto>} by dialing through our
    own local session of that client -- never onwards to another peer.
    """

    def __init__(self, server: Server) -> None:
        self._server = server

    def endpoint_for(self, proto: str, address: str) -> IStreamClientEndpoint | None:
        client_key, sep, inner_proto = proto.partition(PEER_PROTO_SEPARATOR)
        if not sep:
            return None
        return TunnelEndpoint(_LocalOnly(self._server), client_key, inner_proto, address)


class _LocalOnly:
    def __init__(self, server: Server) -> None:
        self._server = server

    def open_stream(self, client_key: str, proto: str, address: str) -> TunnelStream:
        return self._server.open_stream(client_key, proto, address, local_only=True)


@implementer(ISessionOwner, IPeerObserver, IStreamOpener)
class Server(MultiService):
    """
    A remotedialer server.

    @param authorizer: C{request -> client key} (or None to refuse with 401,
        or raise to refuse with 400; may return a Deferred).  The default is
        the Go example server's: the X-Tunnel-ID header.
    @param client_connect_authorizer: C{(proto, address) -> bool} for dials
        a client makes to targets near the server; by default none is allowed.
    @param peer_id: this server's id when peering; C{peer_token} its token.
        Without both there is no peering.
    @param peer_trust_root: CA to verify peers' wss:// URLs with (default:
        platform trust; unlike Go, peers' certificates are verified).
    @param peer_proxy: the HTTP proxy our links to peers go through, as
        L{TunnelClient}'s C{proxy}: None (the default) reads
        C{HTTPS_PROXY}/C{HTTP_PROXY}/C{NO_PROXY} as Go does; C{""} dials
        direct; a URL, or a L{ProxyRule}.
    @param trace: log every message (CATTLE_TUNNEL_DATA_DEBUG).
    @param ping_interval: seconds between the keepalive pings of our
        outgoing peer links (Go: 5).
    @param idle_timeout: a tunnel or peer link silent this long is dead
        (Go: 60).
    @param session_limits: what one session may cost (L{SessionLimits}).
    @param flow_limits: per-stream Pause/Resume thresholds and hard cap.
    @param auth_limiter: holds failed authentications of each address to
        a budget, never delaying a success (L{FailureLimiter}; the server
        program always uses one).
    @param trusted_proxies: CIDRs (or a L{TrustedProxies}) of the load
        balancers or Ingresses in front, whose C{X-Forwarded-For} names a
        tunnel's caller: the address the limiter, the logs and the
        session's C{remote_addr} see.  Default: nobody's.
    """

    log = Logger()

    def __init__(
        self,
        authorizer: Authorizer = header_authorizer,
        *,
        reactor: IReactorTime | None = None,
        client_connect_authorizer: ConnectAuthorizer = deny_all,
        peer_id: str | None = None,
        peer_token: str | None = None,
        peer_trust_root: IOpenSSLTrustRoot | Certificate | None = None,
        peer_proxy: str | ProxyRule | None = None,
        trace: bool = False,
        ping_interval: float = PING_INTERVAL,
        idle_timeout: float = IDLE_TIMEOUT,
        session_limits: SessionLimits | None = None,
        flow_limits: FlowLimits | None = None,
        auth_limiter: FailureLimiter | None = None,
        trusted_proxies: Iterable[str] | TrustedProxies = (),
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor: IReactorTime = reactor
        self.sessions = SessionRegistry()
        self.peer_id = peer_id
        self.peer_token = peer_token
        self.trace = trace
        #: Keepalive: our outgoing peer links ping this often; any tunnel
        #: silent for idle_timeout is dead.
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self._peer_tokens: dict[str, str] = {}
        self._peer_links: dict[str, PeerLink] = {}
        self._peer_trust_root = peer_trust_root
        self._peer_proxy = peer_proxy
        self._peer_proxies: ProxyRule | None = None  # (read at the first peer: a server without peers
        #                                             does not fail on a proxy variable it never uses)
        self._client_dialer = LocalDialer(reactor, client_connect_authorizer)
        self._peer_dialer = _PeerForwardDialer(self)
        #: Builds this server's sessions, and its peer links' sessions.
        self.session_limits = session_limits if session_limits is not None else SessionLimits()
        self.session_factory = SessionFactory(reactor, trace=trace, limits=flow_limits,
                                              session_limits=self.session_limits)
        # The ping interval must be under the idle timeout only where we ping
        # (peer links, checked as one is added).
        check_keepalive(None, idle_timeout)
        if not ping_interval > 0:
            raise ValueError(f"ping interval must be over 0 s, not {ping_interval}")
        self._websocket_factory = server_factory(self, reactor, idle_timeout, self.session_limits)
        if not isinstance(trusted_proxies, TrustedProxies):
            trusted_proxies = TrustedProxies.parse(trusted_proxies)
        self._resource = TunnelResource(self._websocket_factory, authorizer, lambda: self._peer_tokens,
                                        self._owner_conflict, auth_limiter, trusted_proxies)
        #: Shutting down (L{drain}): no new sessions or streams.
        self.draining = False
        self._drain_waiters: list[defer.Deferred[None]] = []
        self._drain_done = False
        self._gate = DrainGate(self._resource, self)

    @property
    def resource(self) -> IResource:
        """The tunnel's twisted.web resource (the Go example serves it at /connect)."""
        return self._gate

    def _drain_finished(self, _: None) -> None:
        self._drain_done = True
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> defer.Deferred[None]:
        """
        Shut down gracefully (L{remotedialer.server._drain}): refuse new sessions
        and streams, tell peers our clients are leaving, give the streams in
        flight up to C{timeout} seconds, then close the client sessions.
        Fires when done; calling it again waits for the same drain.
        """
        waiter: defer.Deferred[None] = defer.Deferred()
        if self._drain_done:
            waiter.callback(None)
            return waiter
        self._drain_waiters.append(waiter)
        if len(self._drain_waiters) == 1:  # the first caller starts it
            drain(self, timeout).addCallback(self._drain_finished)
        return waiter

    # Dialing through clients.

    def open_stream(
        self, client_key: str, proto: str, address: str, local_only: bool = False
    ) -> TunnelStream:
        """
        Open a stream to C{proto}/C{address} behind C{client_key}: through its
        newest local session, else through a peer that announced it.

        @raise ClientNotConnected: no session reaches the client.
        """
        if self.draining:
            self._refused("draining")
            raise ServerDraining(string="server is shutting down")  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
        session = self.sessions.local_session(client_key)
        if session is not None:
            return session.open_stream(proto, address)
        if not local_only:
            session = self.sessions.peer_session_for(client_key)
            if session is not None:
                return session.open_stream(f"{client_key}{PEER_PROTO_SEPARATOR}{proto}", address)
        self._refused("no_route")
        raise ClientNotConnected(f"failed to find Session for client {client_key}")

    def _refused(self, reason: str) -> None:
        if self.session_factory.observer is not None:
            self.session_factory.observer.stream_refused(None, reason)

    def endpoint(self, client_key: str, proto: str, address: str) -> TunnelEndpoint:
        """An IStreamClientEndpoint reaching C{proto}/C{address} from C{client_key}."""
        return TunnelEndpoint(self, client_key, proto, address)

    def agent(
        self,
        client_key: str,
        pool: HTTPConnectionPool | None = None,
        tls_policy: IPolicyForHTTPS | None = None,
    ) -> Agent:
        """A twisted.web Agent (wrap it in treq.client.HTTPClient for treq) through C{client_key}."""
        return tunnel_agent(self.reactor, self, client_key, pool=pool, tls_policy=tls_policy)

    def has_session(self, client_key: str) -> bool:
        return self.sessions.local_session(client_key) is not None

    def reaches(self, client_key: str) -> bool:
        """A dial for C{client_key} has a route: a local session, or a peer that announced it."""
        return self.has_session(client_key) or self.sessions.peer_session_for(client_key) is not None

    def clients(self) -> list[str]:
        """Client keys connected to this server."""
        return self.sessions.clients()

    # Peers.

    def add_peer(self, peer_id: str, token: str, url: str) -> None:
        """
        Peer with server C{peer_id}: keep a link open to its tunnel C{url}
        (announcing our clients over it) and accept its link presenting
        C{token}.  Changing a peer's token or url replaces its link.
        """
        if not (self.peer_id and self.peer_token):
            raise ValueError("peering needs this server's peer_id and peer_token")
        if not peer_id or "/" in peer_id or peer_id == self.peer_id:
            raise ValueError(f"bad peer id {peer_id!r}")
        link = self._peer_links.get(peer_id)
        if link is not None:
            if link.same_as(token, url):
                return
            self.remove_peer(peer_id)
        if self._peer_proxies is None:
            self._peer_proxies = proxy_rule(self._peer_proxy, source="peer proxy")
        link = PeerLink(self, peer_id, token, url, self._peer_trust_root, self._peer_proxies)
        self._peer_tokens[peer_id] = token
        self._peer_links[peer_id] = link
        link.setServiceParent(self)  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16651

    def remove_peer(self, peer_id: str) -> None:
        """Stop peering with C{peer_id}: its links (both ways) are torn down."""
        self._peer_tokens.pop(peer_id, None)
        link = self._peer_links.pop(peer_id, None)
        if link is not None:
            link.disownServiceParent()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16651
        for session in self.sessions.peer_sessions():
            if session.client_key == peer_id:
                session.lose(Failure(ConnectionLost(f"peer {peer_id} removed")))

    @property
    def peers(self) -> dict[str, str]:
        """Peer id -> tunnel URL of every configured peer."""
        return {peer_id: link.url for peer_id, link in self._peer_links.items()}

    def peer_link(self, peer_id: str) -> PeerLink | None:
        return self._peer_links.get(peer_id)

    @property
    def peer_dialer(self) -> IDialPolicy:
        """Serves a peer's Connect C{<clientKey>::<proto>} through our own local sessions."""
        return self._peer_dialer

    def http_client(self, client_key: str, tls_policy: IPolicyForHTTPS | None = None) -> HTTPClient:
        """
        A C{treq.client.HTTPClient} whose requests go through C{client_key}'s
        tunnel (https verified by C{tls_policy}, default the system trust store).
        """
        from treq.client import HTTPClient

        return HTTPClient(self.agent(client_key, tls_policy=tls_policy))

    # ISessionOwner: called by the WebSocket protocol.

    def session_opened(self, protocol: ITunnelConnection, identity: Identity | None) -> ISession:
        assert identity is not None  # the accepting side: the resource settled it
        session = self.session_factory.session(
            protocol,
            client_key=identity.client_key,
            is_peer=identity.is_peer,
            dialer=self._peer_dialer if identity.is_peer else self._client_dialer,
            listener=self if identity.is_peer else None,
        )
        session.fingerprint = identity.fingerprint
        session.remote_addr = address(protocol.peer_address())
        tunnel_up(self.log, session)
        if not identity.is_peer:
            self._take_over(session)
        self.sessions.add(session)
        return session

    def _owner_conflict(self, identity: Identity) -> str | None:
        """
        One key, one owner: a key held by a live session that another
        credential proved is not given to this one (the same credential, or
        an authorizer that vouches for keys alone, may take over).
        """
        if identity.is_peer or identity.fingerprint is None:
            return None
        for session in self.sessions.local_sessions_of(identity.client_key):
            if not session.closed and session.fingerprint not in (None, identity.fingerprint):
                self.log.warn("refused client {key}: connected already with other credentials",
                              key=printable(identity.client_key))
                return f"client key {identity.client_key} is connected with other credentials"
        return None

    def _take_over(self, session: Session) -> None:
        """
        The newest session of an owner gets the dials at once.  Each older
        one is asked whether it is still alive: one that stays silent (a
        client that reconnected leaves a half-open session behind) is
        replaced -- it drains and ends; one that answers belongs to another
        process with the same credential (two replicas of an agent during a
        rolling update), and both are kept, as Go keeps them, so that the
        two do not take the key from each other in turn.
        """
        timeout = min(PROBE_TIMEOUT, self.idle_timeout / 2)
        for old in self.sessions.local_sessions_of(session.client_key):
            if not old.closed and not old.superseded:
                old.probe(timeout).addCallback(self._probed, old, session)

    def _probed(self, alive: bool, old: Session, new: Session) -> None:
        key = printable(new.client_key)
        if old.closed or old.superseded:
            return
        if alive:
            self.log.warn("client {key}: session {new} opened while session {old} still answers "
                          "(two processes with one credential?): both kept, dials go to the newest",
                          key=key, new=new.session_key, old=old.session_key)
            return
        self.log.info("client {key}: session {new} replaces {old}, silent for {timeout:g} s "
                      "(it ends once its streams have)", key=key, new=new.session_key,
                      old=old.session_key, timeout=min(PROBE_TIMEOUT, self.idle_timeout / 2))
        old.supersede()

    def client_added(self, session: ISession, client_key: str, session_key: int) -> None:
        """A peer announced a client (AddClient)."""
        self.log.info("peer {peer} has client {key}/{session_key}",
                      peer=session.client_key, key=printable(client_key), session_key=session_key)

    def client_removed(self, session: ISession, client_key: str, session_key: int) -> None:
        """A peer's client went away (RemoveClient)."""
        self.log.info("peer {peer} lost client {key}/{session_key}",
                      peer=session.client_key, key=printable(client_key), session_key=session_key)

    def link_failed(self, reason: str, retry_after: float | None = None) -> None:
        """Only dialed WebSockets fail to open; the server's never do."""

    def session_closed(self, session: ISession) -> None:
        ours = cast("Session", session)  # (made by session_opened)
        tunnel_down(self.log, ours)
        self.sessions.remove(ours)
