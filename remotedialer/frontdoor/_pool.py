"""
The front door's kept-alive connections: one pool per client key.

Opening a tunnel stream (and, at the client, a target connection) for every
small request costs more than the request itself, so the front door keeps
idle connections as any HTTP agent does.  The same host:port behind two
clients is two different machines, so every client key has a pool of its
own, and within it the idle connections of each target
C{(scheme, host, port)}.

A pool is bounded (at most C{max_idle} idle connections per target: the
oldest is closed to make room; each closed after C{idle_timeout} s idle,
by one timer per pool rather than one per connection, so that handing a
connection out and taking it back costs no timer), hands out the most
recently used connection first (the rest can time out when load drops),
lives only while it has connections or dials under way, and is retired
when its client's sessions change (a session added: a reconnect that replaces the old
session, which can only drain once nothing idles on it; a session
removed): its idle connections are closed, and connections still busy on
it are closed once their response is done.  With C{max_idle} 0 nothing is
kept: every request says C{Connection: close}, on a new stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.frontdoor._upstream import UpstreamConnection
from remotedialer.tunnel._interfaces import ISession, ISessionObserver

if TYPE_CHECKING:
    from remotedialer.server._registry import SessionRegistry

__all__ = ["IDLE_TIMEOUT", "MAX_IDLE", "ClientPool", "ClientPools", "Target"]

#: Idle connections kept per client and target (Go's http.Transport keeps 2;
#: more here, because a new stream costs us more than it costs Go).
MAX_IDLE = 128
#: Seconds an idle connection is kept (Go's http.Transport: 90).
IDLE_TIMEOUT = 90.0

#: A target, as connections are pooled: (scheme, host, port).
Target = tuple[str, str, int]


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: ClientPool, target: Target, head_bytes: int, max_headers: int) -> None:
        self._args = (pool, target, head_bytes, max_headers)

    def buildProtocol(self, addr: IAddress | None) -> UpstreamConnection:
        return UpstreamConnection(*self._args)


class ClientPool:
    """The connections of one client key (see module docstring)."""

    def __init__(self, reactor: IReactorTime, owner: ClientPools, client_key: str) -> None:
        self.client_key = client_key
        #: Requests may be kept alive (C{max_idle} over 0).
        self.persistent = owner.max_idle > 0
        self.retired = False
        #: Every live connection, busy or idle.
        self.connections: set[UpstreamConnection] = set()
        #: Dials under way (the pool is kept while any is: its connection will be ours).
        self.dialing = 0
        self._idle: dict[Target, list[UpstreamConnection]] = {}  # oldest first
        self._reactor = reactor
        self._owner = owner
        self._reaper: IDelayedCall | None = None

    def take(self, target: Target) -> UpstreamConnection | None:
        """An idle connection to C{target} (the most recently used), or None."""
        idle = self._idle.get(target)
        while idle:
            connection = idle.pop()
            if not connection.closed and not getattr(connection.transport, "disconnecting", False):
                return connection
        return None

    def connect(self, target: Target, endpoint: IStreamClientEndpoint, head_bytes: int,
                max_headers: int) -> Deferred[UpstreamConnection]:
        """A new connection to C{target} through C{endpoint}."""
        factory = _ConnectionFactory(self, target, head_bytes, max_headers)

        def connected(connection: UpstreamConnection) -> UpstreamConnection:
            self.dialing -= 1
            if not connection.closed:
                self.connections.add(connection)
            else:
                self._forget_if_empty()
            return connection

        def failed(reason: Failure) -> Failure:
            self.dialing -= 1
            self._forget_if_empty()  # one that never had a connection is not kept for ever
            return reason

        self.dialing += 1
        d: Deferred[UpstreamConnection] = endpoint.connect(factory)  # type: ignore[assignment]  # what our factory builds
        return d.addCallbacks(connected, failed)

    def _forget_if_empty(self) -> None:
        """Without connections or dials under way the pool goes (a new one is made when needed)."""
        if not self.connections and not self.dialing:
            self._stop_reaper()
            self._owner.forget(self)

    def release(self, connection: UpstreamConnection) -> None:
        """C{connection}'s response is complete: keep it for the next request, or close it."""
        if self.retired or not self.persistent or connection.closed:
            connection.transport.loseConnection()
            return
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self._owner.max_idle:
            idle.pop(0).transport.loseConnection()
        connection.idle_since = self._reactor.seconds()
        idle.append(connection)
        if self._reaper is None:
            self._reaper = self._reactor.callLater(self._owner.idle_timeout, self._reap)

    def _reap(self) -> None:
        """Close the connections idle for C{idle_timeout}; come back for the next one due."""
        self._reaper = None
        now = self._reactor.seconds()
        timeout = self._owner.idle_timeout
        due = None
        for idle in list(self._idle.values()):
            while idle and idle[0].idle_since + timeout <= now:
                idle.pop(0).transport.loseConnection()
            if idle:
                due = min(due if due is not None else idle[0].idle_since, idle[0].idle_since)
        if due is not None:
            self._reaper = self._reactor.callLater(max(0.0, due + timeout - now), self._reap)

    def connection_lost(self, connection: UpstreamConnection) -> None:
        self.connections.discard(connection)
        idle = self._idle.get(connection.key)
        if idle is not None and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.key]
        self._forget_if_empty()

    def retire(self) -> None:
        """No new requests here; close what idles now, and what finishes later (L{release})."""
        self.retired = True
        self._stop_reaper()
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.transport.loseConnection()

    def _stop_reaper(self) -> None:
        if self._reaper is not None:
            if self._reaper.active():
                self._reaper.cancel()
            self._reaper = None


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

    def session_added(self, session: ISession) -> None:
        self.retire(session.client_key)

    def session_removed(self, session: ISession) -> None:
        self.retire(session.client_key)
