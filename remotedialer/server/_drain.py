"""
Graceful drain: a server leaving (a rolling update, a scale-down) lets the
work in flight finish and sends its clients elsewhere, instead of cutting
every transfer.

L{Server.drain} (called by the server program's stopService, which twistd
runs on SIGTERM and whose Deferred the reactor waits for before it stops):

  1. refuse what is new: tunnel upgrades and front-door requests get 503
     (L{DrainGate}; the listener stays open, so a client that still finds
     this server hears why), and new dials through the server fail
     (L{ServerDraining}), a peer's forwarded dials included;
  2. tell every peer, over our links to them, RemoveClient for each of our
     client sessions, so that their dials stop coming here;
  3. wait for the streams in flight (ours, and those peers forward through
     us) to end, at most C{timeout} seconds;
  4. close the client sessions with a WebSocket close, code 1001 "going
     away" and the reason "server is shutting down" (which the clients
     log, Go's too); a client that has not answered the close within
     C{CLOSE_HANDSHAKE_TIMEOUT} seconds is aborted.  The clients
     reconnect, to another server of the group (a client given several
     URLs moves to the next; one behind a load-balanced URL gets a live
     replica).

The Deferred fires once the sessions have gone (or a second after a
silent client's close was aborted); the caller then stops listening and
exits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from remotedialer.protocol._text import duration
from remotedialer.tunnel._websocket import CLOSE_HANDSHAKE_TIMEOUT

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from remotedialer.server._peering import PeerLink
    from remotedialer.server._registry import SessionRegistry
    from remotedialer.tunnel._session import Session


class Drainable(Protocol):
    """What a drain needs of the server it drains (L{remotedialer.server._server.Server} is one)."""

    draining: bool
    reactor: IReactorTime
    sessions: SessionRegistry

    @property
    def peers(self) -> dict[str, str]: ...

    def peer_link(self, peer_id: str) -> PeerLink | None: ...

    def drain(self, timeout: float = ...) -> defer.Deferred[None]: ...

__all__ = ["DRAIN_TIMEOUT", "DrainGate", "DrainOnStop", "Drainable", "drain"]

#: How long in-flight streams may take to finish (Kubernetes' default
#: grace period is 30 s: give it a little more in the pod spec).
DRAIN_TIMEOUT = 30.0
#: How often the drain looks whether the streams have ended.
CHECK_INTERVAL = 0.1
#: Why the sessions are closed: the clients' log lines say it.
SHUTTING_DOWN = "server is shutting down"
#: After the sessions are told to close, how long to wait for them to be
#: gone (a client that does not answer the close is aborted before that).
CLOSE_WAIT = CLOSE_HANDSHAKE_TIMEOUT + 1.0

log = Logger()


class DrainGate(Resource):
    """C{inner} (a leaf resource), answering 503 while C{server} drains."""

    isLeaf = True

    def __init__(self, inner: IResource, server: Drainable) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        self._inner = inner
        self._server = server

    def render(self, request: Request) -> Any:
        if not self._server.draining:
            return self._inner.render(request)
        request.setResponseCode(503)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Connection", b"close")
        request.setHeader(b"Retry-After", b"1")
        return SHUTTING_DOWN.encode("ascii")


def _sessions(server: Drainable) -> list[Session]:
    """Every session of the server: its clients', peers' links in, and its own links out."""
    sessions = server.sessions.local_sessions() + server.sessions.peer_sessions()
    for peer_id in server.peers:
        link = server.peer_link(peer_id)
        if link is not None and link.session is not None:
            sessions.append(link.session)
    return sessions


def _streams(server: Drainable) -> int:
    return sum(session.stream_count for session in _sessions(server) if not session.closed)


def drain(server: Drainable, timeout: float = DRAIN_TIMEOUT) -> defer.Deferred[None]:
    """See the module docstring; L{Server.drain} calls this once."""
    clock = server.reactor
    started = clock.seconds()
    server.draining = True
    clients = [s for s in server.sessions.local_sessions() if not s.closed]
    log.info("draining: new tunnels and streams refused; {streams} streams in flight on {sessions} client "
             "sessions get up to {timeout:g} s to finish", streams=_streams(server), sessions=len(clients),
             timeout=timeout)
    _tell_peers(server)
    done: defer.Deferred[None] = defer.Deferred()

    def check() -> None:
        left = _streams(server)
        waited = clock.seconds() - started
        if left and waited < timeout:
            return
        poll.stop()
        if left:
            log.warn("drain: {streams} streams still open after {timeout:g} s; ending them", streams=left,
                     timeout=timeout)
        else:
            log.info("drain: streams finished in {waited_text}", waited=round(waited, 3),
                     waited_text=duration(waited))
        _close_clients(server)
        _wait_closed(server, done)

    poll = LoopingCall(check)
    poll.clock = clock
    poll.start(CHECK_INTERVAL, now=True)
    return done


def _tell_peers(server: Drainable) -> None:
    """RemoveClient for each client session, over every link to a peer that is up."""
    for peer_id in server.peers:
        link = server.peer_link(peer_id)
        if link is None or link.session is None:
            continue
        for session in server.sessions.local_sessions():
            link.session.announce_client(session.client_key, session.session_key, False)
        log.info("drain: told peer {peer} our clients are leaving", peer=peer_id)


def _close_clients(server: Drainable) -> None:
    for session in server.sessions.local_sessions():
        if not session.closed:
            session.close(SHUTTING_DOWN)


def _wait_closed(server: Drainable, done: defer.Deferred[None]) -> None:
    """Fire C{done} once the client sessions are gone, or after L{CLOSE_WAIT} seconds."""
    clock = server.reactor
    deadline = clock.seconds() + CLOSE_WAIT

    def check() -> None:
        if server.sessions.local_sessions() and clock.seconds() < deadline:
            return
        poll.stop()
        done.callback(None)

    poll = LoopingCall(check)
    poll.clock = clock
    poll.start(CHECK_INTERVAL, now=True)


class DrainOnStop(MultiService):
    """
    A program's top service: on stop, the server drains first, and only then
    are the children (listeners, peer links) stopped.  MultiService stops
    its children all at once, so the wait has to be here, above them.
    """

    server: Drainable
    drain_timeout: float = DRAIN_TIMEOUT

    def stopService(self) -> defer.Deferred[None]:
        stop_children = super().stopService

        def drained(_: object) -> defer.Deferred[None]:
            return defer.maybeDeferred(stop_children)

        return self.server.drain(self.drain_timeout).addBoth(drained)
