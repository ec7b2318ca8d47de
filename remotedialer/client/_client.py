"""
The client: keeps one tunnel open to a server and dials what the server asks.

A twisted.application service; the link (L{WebSocketLink}) redials with
backoff after any loss, refused upgrades included, and logs each failed
attempt with its reason.  Behind an HTTP proxy the tunnel is dialed
through a CONNECT (L{ProxyConnectEndpoint}), chosen per server URL by a
L{ProxyRule}: by default Go's C{HTTPS_PROXY}/C{HTTP_PROXY}/C{NO_PROXY}.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.client._dialer import ConnectAuthorizer, LocalDialer
from remotedialer.client._link import WebSocketLink
from remotedialer.client._proxyconnect import ProxyConnectEndpoint
from remotedialer.client._proxyrule import ProxyRule, ProxyURL, proxy_rule
from remotedialer.protocol._flow import FlowLimits
from remotedialer.protocol._limits import SessionLimits
from remotedialer.protocol._text import printable, public_url
from remotedialer.tunnel._deferred import maybe_deferred
from remotedialer.tunnel._endpoint import TunnelEndpoint
from remotedialer.tunnel._logtext import failure_text
from remotedialer.tunnel._session import Session, SessionFactory
from remotedialer.tunnel._stream import TunnelStream
from remotedialer.tunnel._tunnellog import link_down, link_retry, link_up
from remotedialer.tunnel._websocket import IDLE_TIMEOUT, PING_INTERVAL, TunnelProtocol, client_factory

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot


def endpoint_for_url(
    reactor: IReactorTime,
    url: str,
    tls_options: IOpenSSLClientConnectionCreator | None = None,
    trust_root: IOpenSSLTrustRoot | Certificate | None = None,
    client_certificate: PrivateCertificate | None = None,
    proxy: ProxyURL | None = None,
) -> IStreamClientEndpoint:
    """
    The endpoint for a C{ws://} or C{wss://} URL.  wss always verifies the
    server's certificate for the URL's host: against C{trust_root} (e.g. a
    Certificate loaded from a CA file) or the platform trust store, unless
    C{tls_options} replaces the whole TLS configuration; it presents
    C{client_certificate} to a server that asks for one (mutual TLS).
    Through C{proxy} (see L{ProxyRule.proxy_for}), the connection is an
    HTTP CONNECT to the URL's host and port, and TLS runs inside it, end
    to end, exactly as without the proxy.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    secure = parts.scheme == "wss"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError as e:
        raise ValueError(f"{url!r}: {e}") from None
    endpoint: IStreamClientEndpoint
    if proxy is None:
        endpoint = HostnameEndpoint(reactor, parts.hostname, port, timeout=30)
    else:
        to_proxy = HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=30)
        endpoint = ProxyConnectEndpoint(reactor, to_proxy, proxy, parts.hostname, port)
    if secure:
        if tls_options is None:
            tls_options = optionsForClientTLS(parts.hostname, trustRoot=trust_root,
                                              clientCertificate=client_certificate)
        endpoint = wrapClientTLS(tls_options, endpoint, clock=reactor)
    return endpoint


#: The longest wait between reconnect attempts (the default retry policy).
RETRY_MAX = 10.0


def reconnect_policy(
    max_delay: float = RETRY_MAX, first: float = 1.0, random: Callable[[], float] = _random.random,
) -> Callable[[int], float]:
    """
    Exponential backoff with jitter for the link's redials: retry C{n} waits
    between half and all of C{min(first * 2**(n-1), max_delay)} -- the first
    within C{first} seconds, none past C{max_delay}, and thousands of agents
    that lost one server spread over the whole window instead of coming
    back together (Twisted's backoffPolicy adds at most 1 s, past its cap).
    """
    if not (first > 0 and max_delay > 0):
        raise ValueError(f"reconnect delays must be over 0 s, not {first}/{max_delay}")
    grow = backoffPolicy(initialDelay=first / 2, maxDelay=max_delay, factor=2.0, jitter=lambda: 0.0)

    def policy(attempt: int) -> float:
        delay = grow(attempt)
        return delay / 2 + random() * delay / 2

    return policy


class _ClientOpener:
    """The client as a stream opener for L{TunnelEndpoint} (the key is unused)."""

    def __init__(self, client: TunnelClient) -> None:
        self._client = client

    def open_stream(self, client_key: str, proto: str, address: str) -> TunnelStream:
        return self._client.open_stream(proto, address)


@implementer(IStreamClientEndpoint)
class _ServerRotation:
    """
    Connects to one of several server URLs: the same one while it works,
    the next after a failed attempt or a lost tunnel (failover to another
    server of an HA group), each directly or through its proxy.  Autobahn's
    factory is told which URL it speaks to.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        urls: list[str],
        tls_options: IOpenSSLClientConnectionCreator | None,
        trust_root: IOpenSSLTrustRoot | Certificate | None,
        websocket_factory: WebSocketClientFactory,
        headers: dict[str, str],
        client_certificate: PrivateCertificate | None = None,
        proxies: ProxyRule | None = None,
    ) -> None:
        proxies = proxies if proxies is not None else ProxyRule()
        #: Each URL, the proxy it is dialed through (None: direct), its endpoint.
        self.targets = [
            (url, proxy, endpoint_for_url(reactor, url, tls_options, trust_root, client_certificate, proxy))
            for url, proxy in ((url, proxies.proxy_for(url)) for url in urls)
        ]
        self._index = 0
        self._factory = websocket_factory
        self._headers = headers
        #: The URL of the latest attempt.
        self.attempted = urls[0]

    @property
    def url(self) -> str:
        return self.targets[self._index][0]

    def rotate(self) -> None:
        self._index = (self._index + 1) % len(self.targets)

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        url, _, endpoint = self.targets[self._index]
        self.attempted = url
        self._factory.setSessionParameters(url=url, headers=self._headers)
        d = endpoint.connect(protocolFactory)

        def failed(failure: Failure) -> Failure:
            self.rotate()
            return failure

        return d.addErrback(failed)


class TunnelClient(WebSocketLink):
    """
    Connects to C{url} (or the first of several server URLs that answers,
    moving to the next when a tunnel is lost) and serves the server's dials
    under C{connect_authorizer(proto, address)}.

    @param headers: sent with the upgrade (e.g. C{X-Tunnel-ID}).
    @param trust_root: CA to verify wss:// servers with (default: platform
        trust); C{tls_options} replaces the TLS configuration outright.
    @param client_certificate: our certificate and key, for a server that
        authenticates clients by mutual TLS.
    @param proxy: the HTTP proxy to dial through: None (the default) reads
        C{HTTPS_PROXY}/C{HTTP_PROXY}/C{NO_PROXY} as Go does; C{""} dials
        direct; a proxy URL is used for every server URL but the hosts
        C{NO_PROXY} names; or a L{ProxyRule}.  ValueError for a proxy URL
        that cannot be used (e.g. C{https://}).
    @param on_connect: called with the L{Session} each time the tunnel
        opens; may return a Deferred; a failure drops the tunnel (and it is
        retried, with backoff).
    @param ping_interval: seconds between our keepalive pings (Go: 5).
    @param idle_timeout: a tunnel silent this long is dead (Go: 60).
    @param session_limits: what the tunnel may cost us (L{SessionLimits}).
    @param flow_limits: per-stream Pause/Resume thresholds and hard cap.
    """

    def __init__(
        self,
        url: str | list[str],
        *,
        connect_authorizer: ConnectAuthorizer,
        headers: dict[str, str] | None = None,
        reactor: IReactorTime | None = None,
        tls_options: IOpenSSLClientConnectionCreator | None = None,
        trust_root: IOpenSSLTrustRoot | Certificate | None = None,
        on_connect: Callable[[Session], object] | None = None,
        retry_policy: Callable[[int], float] | None = None,
        trace: bool = False,
        client_key: str = "",
        ping_interval: float = PING_INTERVAL,
        idle_timeout: float = IDLE_TIMEOUT,
        session_limits: SessionLimits | None = None,
        flow_limits: FlowLimits | None = None,
        client_certificate: PrivateCertificate | None = None,
        proxy: str | ProxyRule | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("no server URL")
        headers = dict(headers or {})
        factory = client_factory(self, urls[0], headers, reactor, ping_interval, idle_timeout,
                                 session_limits)
        self._rotation = _ServerRotation(reactor, urls, tls_options, trust_root, factory, headers,
                                         client_certificate, proxy_rule(proxy))
        super().__init__(
            reactor,
            self._rotation,
            factory,
            # Exponential, with jitter, first retry within a second, capped
            # at 10 s (Go's client retries every 5 s: staying away half a
            # minute after a server restart is too long).
            retry_policy or reconnect_policy(),
        )
        self._dialer = LocalDialer(reactor, connect_authorizer)
        self._on_connect = on_connect
        #: Builds the tunnel's sessions (its C{observer} hears their traffic: metrics).
        self.session_factory = SessionFactory(reactor, trace=trace, limits=flow_limits,
                                              session_limits=session_limits)
        self._client_key = client_key
        self._waiters: list[defer.Deferred[Session]] = []
        self._ready = False

    @property
    def url(self) -> str:
        """The server URL in use (or to be tried next)."""
        return self._rotation.url

    @property
    def client_key(self) -> str:
        """The key our sessions carry (the server knows us by X-Tunnel-ID or our certificate)."""
        return self._client_key

    @property
    def ready(self) -> bool:
        """The tunnel is open and the on-connect hook has finished: the server can dial us."""
        return self.session is not None and self._ready

    def startService(self) -> None:
        for url, proxy, _ in self._rotation.targets:
            if proxy is not None:
                self.log.info("tunnel to {url}: through proxy {proxy} ({source})", url=public_url(url),
                              proxy=str(proxy), source=proxy.source)
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(ConnectionError("client stopped"))
        return super().stopService()

    def when_connected(self) -> defer.Deferred[Session]:
        """Fires with the L{Session} once the tunnel is open (and the on-connect hook done)."""
        if self.session is not None and self._ready:
            return defer.succeed(self.session)
        d: defer.Deferred[Session] = defer.Deferred()
        self._waiters.append(d)
        return d

    def open_stream(self, proto: str, address: str) -> TunnelStream:
        """Dial the server's side (only works where the server allows client dials)."""
        if self.session is None:
            raise ConnectionError("tunnel is not connected")
        return self.session.open_stream(proto, address)

    def endpoint(self, proto: str, address: str) -> IStreamClientEndpoint:
        """
        An endpoint reaching C{proto}/C{address} on the server's side through
        the tunnel (where the server allows client dials); wrap it with
        L{wrapClientTLS} for TLS.
        """
        return TunnelEndpoint(_ClientOpener(self), self._client_key, proto, address)

    # The link.

    def make_session(self, protocol: TunnelProtocol) -> Session:
        return self.session_factory.session(
            protocol,
            client_key=self._client_key,
            dials_as_client=True,
            dialer=self._dialer,
        )

    def link_opened(self, session: Session, protocol: TunnelProtocol) -> None:
        link_up(self.log, session, self.url)
        self._ready = False
        if self._on_connect is None:
            self._ready_now(session)
            return

        def hook_failed(failure: Failure) -> None:
            # Not ready: the attempt counts as failed, so the retry backs
            # off (the drop moves on to the next server).
            self.log.failure("on-connect hook failed; dropping the tunnel", failure)
            self.attempt_failed(f"on-connect hook failed: {printable(failure_text(failure))}")
            protocol.drop()

        d = maybe_deferred(self._on_connect, session)
        d.addCallbacks(lambda _: self._ready_now(session), hook_failed)

    def _ready_now(self, session: Session) -> None:
        if self.session is not session:
            return
        self._ready = True
        self.tunnel_usable()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(session)

    def link_closed(self, session: Session) -> None:
        link_down(self.log, session, self.url)
        if self.running:
            self._rotation.rotate()

    def link_failed(self, reason: str, retry_after: float | None = None) -> None:
        self._rotation.rotate()  # (before the retry is logged: it says where it goes next)
        super().link_failed(reason, retry_after)

    @property
    def attempted_url(self) -> str:
        return self._rotation.attempted

    def retrying(self, url: str, reason: str, wait: float) -> None:
        link_retry(self.log, url, reason, wait, client_key=self._client_key, next_url=self.url)
