"""
The front door's kept-alive connections: one HTTPConnectionPool per client key.

Opening a tunnel stream (and, at the client, a target connection) for every
small request costs more than the request itself, so the front door keeps
idle connections as any HTTP agent does.  twisted.web's pool keys its
connections by (scheme, host, port) only, and the same host:port behind two
clients is two different machines: sharing one pool would send client A's
request down client B's tunnel.  So every client key has a pool of its own
(the front door's TLS policy is one for all, and the pool's own key holds
the scheme).

A pool is bounded (at most C{max_idle} idle connections per target, each
closed after C{idle_timeout} s), lives only while it has connections, and
is retired when its client's sessions change (a session added: a reconnect
that replaces the old session, which can only drain once nothing idles on
it; a session removed): its idle connections are closed, and connections
still busy on it are closed once their response is done.

Each connection handed out is told that a request begins on it
(L{HeadLimitedConnection.begin}), so the response-head limit counts every
response and the connection's end is reported to the request using it.
twisted.web's own retry of a failed request on a reused connection is off
(its wrapper hides the connection); L{FrontDoor} retries such a request
itself.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from remotedialer._headlimit import HeadLimitedConnection
from remotedialer._interfaces import ISessionObserver

if TYPE_CHECKING:
    from twisted.web._newclient import HTTP11ClientProtocol

    from remotedialer._registry import SessionRegistry
    from remotedialer._session import Session

#: Idle connections kept per client and target (Go's http.Transport keeps 2;
#: more here, because a new stream costs us more than it costs Go).
MAX_IDLE = 128
#: Seconds an idle connection is kept (Go's http.Transport: 90).
IDLE_TIMEOUT = 90.0


class ClientPool(HTTPConnectionPool):
    """The pool of one client key (see module docstring)."""

    retryAutomatically = False

    def __init__(self, reactor: IReactorTime, owner: ClientPools, client_key: str) -> None:
        # (Twisted's pool cannot keep 0 idle connections: it must not be persistent then.)
        super().__init__(reactor, persistent=owner.max_idle > 0)  # type: ignore[no-untyped-call]  # Twisted's
        self.maxPersistentPerHost = owner.max_idle
        self.cachedConnectionTimeout = owner.idle_timeout  # type: ignore[assignment]  # any seconds do
        self.client_key = client_key
        self.retired = False
        self.connections: set[HeadLimitedConnection] = set()
        self._reactor = reactor
        self._owner = owner

    def getConnection(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[HTTP11ClientProtocol]:
        d: Deferred[HTTP11ClientProtocol] = super().getConnection(key, endpoint)

        def begin(protocol: HTTP11ClientProtocol) -> HTTP11ClientProtocol:
            connection = protocol.transport
            if isinstance(connection, HeadLimitedConnection):
                self.connections.add(connection)
                connection.begin(getattr(endpoint, "on_lost", None))
                on_begin = getattr(endpoint, "on_begin", None)
                if on_begin is not None:
                    on_begin(connection)
            return protocol

        def failed(reason: Failure) -> Failure:
            if not self.connections:  # it never had one: do not keep it for ever
                self._owner.forget(self)
            return reason

        return d.addCallbacks(begin, failed)

    def connection_lost(self, connection: HeadLimitedConnection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._owner.forget(self)

    def retire(self) -> None:
        """No new requests here; close what idles now, and what finishes later (L{request_done})."""
        self.retired = True
        self.closeCachedConnections()  # type: ignore[no-untyped-call]  # Twisted's, untyped

    def request_done(self) -> None:
        """A response read through this pool is complete (its connection, if kept, is idle again)."""
        if self.retired:
            # Its connection went back to the pool just before: close it,
            # from the reactor (we are inside the HTTP client's own bookkeeping).
            self._reactor.callLater(0, self.closeCachedConnections)


@implementer(ISessionObserver)
class ClientPools:
    """The front door's pools, one per client key, retired as sessions come and go."""

    def __init__(self, reactor: IReactorTime, sessions: SessionRegistry | None,
                 max_idle: int = MAX_IDLE, idle_timeout: float = IDLE_TIMEOUT) -> None:
        if max_idle < 0:
            raise ValueError(f"idle connections must be 0 or more, not {max_idle}")
        if not idle_timeout > 0:
            raise ValueError(f"idle timeout must be over 0 s, not {idle_timeout}")
        self._reactor = reactor
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._pools: dict[str, ClientPool] = {}
        if sessions is not None:
            sessions.observe(self)

    def __len__(self) -> int:
        return len(self._pools)

    def pool_for(self, client_key: str) -> ClientPool:
        pool = self._pools.get(client_key)
        if pool is None:
            pool = self._pools[client_key] = ClientPool(self._reactor, self, client_key)
        return pool

    def forget(self, pool: ClientPool) -> None:
        if self._pools.get(pool.client_key) is pool:
            del self._pools[pool.client_key]

    def retire(self, client_key: str) -> None:
        pool = self._pools.pop(client_key, None)
        if pool is not None:
            pool.retire()

    def close(self) -> None:
        """Close every idle connection (the server is stopping)."""
        for key in list(self._pools):
            self.retire(key)

    # ISessionObserver

    def session_added(self, session: Session) -> None:
        self.retire(session.client_key)

    def session_removed(self, session: Session) -> None:
        self.retire(session.client_key)
